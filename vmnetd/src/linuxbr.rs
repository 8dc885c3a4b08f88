//! Linux bridges through rtnetlink: create or adopt a bridge, enslave and release ports, and
//! per-port VLANs through bridge VLAN filtering — what OVS's `tag=`/`trunks=` do, on the
//! kernel bridge. Each netlink request names its iproute2 equivalent; the VLAN requests are
//! checked byte for byte against iproute2's (`tests/fixtures/iproute2`).
//!
//! VLAN rules (the leak CNI and netavark users hit is the default VLAN 1 that the kernel puts
//! on every new port): an access port gets exactly its VID as PVID + untagged, and loses
//! VLAN 1; a trunk gets its VIDs tagged, and its native VLAN as PVID (untagged unless
//! `:tagged`). Filtering is switched on for the bridge when a port first needs a VLAN.
//!
//! Kernels without `CONFIG_BRIDGE_VLAN_FILTERING` answer EOPNOTSUPP to that switch. vmnetd
//! finds out before it touches the port, and refuses with a message that names the option
//! and points to the built-in bridge, leaving nothing half-configured.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    AfSpecBridge, BridgeStpState, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoKind, LinkAttribute,
    LinkExtentMask, LinkInfo, LinkMessage,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkBridgeVlan, LinkUnspec};

use crate::api::BridgeSpec;
use crate::ifname::IfName;
use crate::netlink::{self, Link, LinkChange, Netlink};
use crate::switch::VlanMode;

/// The kernel option a bridge needs for VLANs.
pub const VLAN_FILTERING_OPTION: &str = "CONFIG_BRIDGE_VLAN_FILTERING";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "This kernel has no bridge VLAN filtering ({VLAN_FILTERING_OPTION} is not set): Linux bridge {bridge} cannot put {port} on {vlan}; \
         nothing was changed. Use a built-in bridge for VLANs: vmnetd bridge add NAME --kind builtin"
    )]
    NoVlanFiltering { bridge: IfName, port: IfName, vlan: String },
    #[error("{0} exists and is not a bridge (it is a {1} device)")]
    NotABridge(IfName, String),
    #[error("No interface {0}")]
    NoSuchLink(IfName),
    #[error("{port} is already a port of {owner}; release it first (ip link set {port} nomaster)")]
    EnslavedElsewhere { port: IfName, owner: String },
    #[error("Cannot {what}")]
    Netlink {
        what: String,
        #[source]
        source: netlink::Error,
    },
}

impl Error {
    pub fn kind(&self) -> crate::api::ErrorKind {
        use crate::api::ErrorKind;
        match self {
            Error::NoVlanFiltering { .. } => ErrorKind::Unsupported,
            Error::NotABridge(..) | Error::EnslavedElsewhere { .. } => ErrorKind::Conflict,
            Error::NoSuchLink(_) => ErrorKind::NotFound,
            Error::Netlink { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn nl_err(what: impl Into<String>) -> impl FnOnce(netlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

fn rt_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what: what.clone(), source: netlink::Error::Request { what, source } }
}

/// One `bridge vlan add|del dev PORT vid LO[-HI] [pvid] [untagged]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanCmd {
    pub add: bool,
    pub lo: u16,
    pub hi: u16,
    pub pvid: bool,
    pub untagged: bool,
}

impl std::fmt::Display for VlanCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bridge vlan {} dev PORT vid {}", if self.add { "add" } else { "del" }, self.lo)?;
        if self.hi != self.lo {
            write!(f, "-{}", self.hi)?;
        }
        if self.pvid {
            f.write_str(" pvid")?;
        }
        if self.untagged {
            f.write_str(" untagged")?;
        }
        Ok(())
    }
}

pub use crate::api::KernelVlan;

/// The request for one [`VlanCmd`] on port `ifindex` (RTM_SETLINK to add, RTM_DELLINK to
/// delete, family AF_BRIDGE, `IFLA_AF_SPEC` with one `IFLA_BRIDGE_VLAN_INFO`, or a
/// RANGE_BEGIN/RANGE_END pair), as iproute2 builds it.
pub fn vlan_message(ifindex: u32, cmd: &VlanCmd) -> LinkMessage {
    let mut flags = BridgeVlanInfoFlags::empty();
    if cmd.pvid {
        flags |= BridgeVlanInfoFlags::Pvid;
    }
    if cmd.untagged {
        flags |= BridgeVlanInfoFlags::Untagged;
    }
    let b = LinkBridgeVlan::new(ifindex);
    if cmd.lo == cmd.hi {
        b.vlan(cmd.lo, flags).build()
    } else {
        b.vlan_range_start(cmd.lo, flags).vlan_range_end(cmd.hi, flags).build()
    }
}

/// `ip link set dev BRIDGE type bridge vlan_filtering 1|0` (RTM_NEWLINK on the index).
pub fn vlan_filtering_message(bridge_index: u32, on: bool) -> LinkMessage {
    LinkMessageBuilderExt::bridge_change(bridge_index)
        .set_info_data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)]))
        .build()
}

struct LinkMessageBuilderExt;
impl LinkMessageBuilderExt {
    fn bridge_change(index: u32) -> rtnetlink::LinkMessageBuilder<LinkBridge> {
        rtnetlink::LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge).index(index)
    }
}

/// The VLANs a mode wants on a port, as the kernel would list them.
pub fn desired_vlans(mode: &VlanMode) -> Vec<KernelVlan> {
    let mut out = Vec::new();
    match mode {
        VlanMode::Access { vlan } => out.push(KernelVlan { vid: vlan.get(), pvid: true, untagged: true }),
        VlanMode::Trunk { vlans, native } => {
            for v in vlans.iter() {
                if native.is_some_and(|n| n.vid == v) {
                    continue;
                }
                out.push(KernelVlan { vid: v.get(), pvid: false, untagged: false });
            }
            if let Some(n) = native {
                out.push(KernelVlan { vid: n.vid.get(), pvid: true, untagged: !n.tagged });
            }
        }
    }
    out.sort_by_key(|k| k.vid);
    out
}

/// The commands that turn `current` into what `mode` wants: additions first (so the port
/// keeps a PVID throughout), then deletions; consecutive VIDs with the same flags become
/// one range, as `bridge vlan add dev X vid 20-30` does.
pub fn plan_vlans(mode: &VlanMode, current: &[KernelVlan]) -> Vec<VlanCmd> {
    let want = desired_vlans(mode);
    let adds: Vec<KernelVlan> = want.iter().filter(|w| !current.contains(w)).copied().collect();
    let dels: Vec<KernelVlan> = current
        .iter()
        .filter(|c| !want.iter().any(|w| w.vid == c.vid))
        .map(|c| KernelVlan { vid: c.vid, pvid: false, untagged: false })
        .collect();
    let mut cmds = ranges(&adds, true);
    cmds.extend(ranges(&dels, false));
    cmds
}

fn ranges(vlans: &[KernelVlan], add: bool) -> Vec<VlanCmd> {
    let mut out: Vec<VlanCmd> = Vec::new();
    for v in vlans {
        // A PVID is a single VID; never part of a range.
        match out.last_mut() {
            Some(c) if !v.pvid && !c.pvid && c.hi + 1 == v.vid && c.untagged == v.untagged => c.hi = v.vid,
            _ => out.push(VlanCmd { add, lo: v.vid, hi: v.vid, pvid: v.pvid, untagged: v.untagged }),
        }
    }
    out
}

/// Whether VLAN filtering is on for `bridge` (from its `IFLA_INFO_DATA`).
pub async fn filtering_enabled(nl: &Netlink, bridge: u32) -> Result<bool> {
    let mut s = nl.handle().link().get().match_index(bridge).execute();
    let msg = s.try_next().await.map_err(rt_err(format!("read bridge #{bridge}")))?;
    Ok(msg.is_some_and(|m| {
        m.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
                LinkInfo::Data(InfoData::Bridge(d)) => d.iter().any(|x| matches!(x, InfoBridge::VlanFiltering(true))),
                _ => false,
            }),
            _ => false,
        })
    }))
}

/// Turns VLAN filtering on for `bridge` unless it is on; EOPNOTSUPP becomes
/// [`Error::NoVlanFiltering`] (nothing changed).
pub async fn ensure_filtering(nl: &Netlink, bridge: &Link, port: &IfName, mode: &VlanMode) -> Result<()> {
    if filtering_enabled(nl, bridge.index).await? {
        return Ok(());
    }
    match nl.handle().link().change(vlan_filtering_message(bridge.index, true)).execute().await {
        Ok(()) => {
            log::info!("Linux bridge {}: VLAN filtering switched on", bridge.name);
            Ok(())
        }
        Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::EOPNOTSUPP) => {
            Err(Error::NoVlanFiltering {
                bridge: IfName::new(&bridge.name).unwrap_or_else(|_| port.clone()),
                port: port.clone(),
                vlan: mode.to_string(),
            })
        }
        Err(e) => Err(rt_err(format!("switch on VLAN filtering on {}", bridge.name))(e)),
    }
}

/// The VLANs the kernel has on every bridge port (`bridge vlan show`), by ifindex: one dump.
pub async fn all_port_vlans(nl: &Netlink) -> Result<std::collections::HashMap<u32, Vec<KernelVlan>>> {
    let mut s = nl.handle().link().get().set_filter_mask(AddressFamily::Bridge, vec![LinkExtentMask::Brvlan]).execute();
    let mut out: std::collections::HashMap<u32, Vec<KernelVlan>> = std::collections::HashMap::new();
    while let Some(msg) = s.try_next().await.map_err(rt_err("dump bridge VLANs"))? {
        let v = out.entry(msg.header.index).or_default();
        for a in &msg.attributes {
            if let LinkAttribute::AfSpecBridge(specs) = a {
                for sp in specs {
                    if let AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }) = sp {
                        v.push(KernelVlan {
                            vid: *vid,
                            pvid: flags.contains(BridgeVlanInfoFlags::Pvid),
                            untagged: flags.contains(BridgeVlanInfoFlags::Untagged),
                        });
                    }
                }
            }
        }
        v.sort_by_key(|k| k.vid);
    }
    Ok(out)
}

/// The VLANs the kernel has on port `ifindex` (`bridge vlan show dev PORT`).
pub async fn port_vlans(nl: &Netlink, ifindex: u32) -> Result<Vec<KernelVlan>> {
    Ok(all_port_vlans(nl).await?.remove(&ifindex).unwrap_or_default())
}

/// Applies `mode` to port `ifindex` (whose bridge filters VLANs).
pub async fn apply_vlans(nl: &Netlink, port: &IfName, ifindex: u32, mode: &VlanMode) -> Result<()> {
    let current = port_vlans(nl, ifindex).await?;
    for cmd in plan_vlans(mode, &current) {
        let msg = vlan_message(ifindex, &cmd);
        let what = cmd.to_string().replace("PORT", port.as_str());
        let r = if cmd.add {
            nl.handle().link().set(msg).execute().await
        } else {
            nl.handle().link().del_with_message(msg).execute().await
        };
        r.map_err(rt_err(what))?;
    }
    Ok(())
}

/// Makes bridge `spec.name` exist: adopts an existing bridge (applying only the options the
/// spec sets) or creates it (`ip link add NAME type bridge [ageing_time ..] [stp_state ..]`,
/// then `ip link set NAME up`). Returns (ifindex, created).
pub async fn create_or_adopt(nl: &Netlink, spec: &BridgeSpec) -> Result<(u32, bool)> {
    let name = &spec.name;
    let with_opts = |mut b: rtnetlink::LinkMessageBuilder<LinkBridge>| {
        if let Some(a) = spec.ageing {
            // Centiseconds, as the kernel keeps it.
            b = b.ageing_time(a.saturating_mul(100));
        }
        if let Some(stp) = spec.stp {
            b = b.stp_state(if stp { BridgeStpState::KernelStp } else { BridgeStpState::Disabled });
        }
        if let Some(m) = spec.max_macs {
            b = b.fdb_max_learned(u32::try_from(m).unwrap_or(u32::MAX));
        }
        b
    };
    if let Some(link) = nl.link(name).await.map_err(nl_err(format!("look up {name}")))? {
        if link.kind.as_deref() != Some("bridge") {
            return Err(Error::NotABridge(name.clone(), link.kind.unwrap_or_else(|| "physical".into())));
        }
        if spec.ageing.is_some() || spec.stp.is_some() || spec.max_macs.is_some() {
            let msg = with_opts(LinkMessageBuilderExt::bridge_change(link.index)).build();
            nl.handle().link().change(msg).execute().await.map_err(rt_err(format!("set options of bridge {name}")))?;
        }
        if !link.up {
            nl.set_link(link.index, &LinkChange { up: Some(true), ..Default::default() })
                .await
                .map_err(nl_err(format!("bring {name} up")))?;
        }
        return Ok((link.index, false));
    }
    let msg = with_opts(LinkBridge::new(name.as_str())).up().build();
    nl.handle().link().add(msg).execute().await.map_err(rt_err(format!("create bridge {name}")))?;
    let link = nl
        .link(name)
        .await
        .map_err(nl_err(format!("look up {name}")))?
        .ok_or_else(|| Error::NoSuchLink(name.clone()))?;
    Ok((link.index, true))
}

/// `ip link set dev PORT master BRIDGE up`.
pub async fn enslave(nl: &Netlink, port: &Link, bridge: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(port.index).controller(bridge).up().build();
    nl.handle().link().set(msg).execute().await.map_err(rt_err(format!("enslave {}", port.name)))
}

/// `ip link set dev PORT type bridge_slave isolated on|off` (`IFLA_BRPORT_ISOLATED`: an
/// isolated port forwards only to ports that are not isolated).
pub async fn set_isolated(nl: &Netlink, port: u32, on: bool) -> Result<()> {
    let msg = rtnetlink::LinkBridgePort::new(port)
        .append_info_data(netlink_packet_route::link::InfoBridgePort::Isolated(on))
        .build();
    // RTM_NEWLINK: the kernel reads bridge-port data only there (as iproute2 sends it).
    nl.handle().link().set_port(msg).execute().await.map_err(rt_err(format!("set isolated on port #{port}")))
}

/// What a kernel vxlan device is made with.
#[derive(Debug, Clone)]
pub struct VxlanDev<'a> {
    pub name: &'a IfName,
    pub vni: u32,
    pub local: Option<std::net::IpAddr>,
    pub remotes: &'a [std::net::IpAddr],
    pub group: Option<std::net::IpAddr>,
    /// The underlay interface (for a group).
    pub dev: Option<u32>,
    pub dstport: u16,
}

/// `ip link add NAME type vxlan id VNI [local A] [group G dev IF] dstport P learning`, then
/// for each remote `bridge fdb append 00:00:00:00:00:00 dev NAME dst R` (head-end
/// replication of broadcast and unknown unicast). A remote that cannot be added deletes the
/// device again: all or nothing.
pub async fn create_vxlan(nl: &Netlink, d: &VxlanDev<'_>) -> Result<Link> {
    use std::net::IpAddr;
    let mut b = rtnetlink::LinkVxlan::new(d.name.as_str(), d.vni).port(d.dstport).learning(true);
    match d.local {
        Some(IpAddr::V4(a)) => b = b.local(a),
        Some(IpAddr::V6(a)) => b = b.local6(a),
        None => {}
    }
    match d.group {
        Some(IpAddr::V4(g)) => b = b.group(g),
        Some(IpAddr::V6(g)) => b = b.group6(g),
        None => {}
    }
    if let Some(i) = d.dev {
        b = b.dev(i);
    }
    let name = d.name;
    nl.handle().link().add(b.build()).execute().await.map_err(rt_err(format!("create vxlan device {name}")))?;
    let link = nl
        .link(name)
        .await
        .map_err(nl_err(format!("look up {name}")))?
        .ok_or_else(|| Error::NoSuchLink(name.clone()))?;
    for r in d.remotes {
        if let Err(e) = append_remote(nl, link.index, *r).await {
            let _ = nl.delete_link(link.index).await;
            return Err(e);
        }
    }
    Ok(link)
}

/// `bridge fdb append 00:00:00:00:00:00 dev VXLAN dst REMOTE` (NTF_SELF, NLM_F_APPEND: one
/// all-zero entry per remote).
async fn append_remote(nl: &Netlink, ifindex: u32, remote: std::net::IpAddr) -> Result<()> {
    use futures::StreamExt;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
    use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
    let mut req = nl.handle().neighbours().add_bridge(ifindex, &[0; 6]).destination(remote);
    let m = req.message_mut();
    m.header.flags = NeighbourFlags::Own;
    m.header.state = NeighbourState::Permanent;
    let mut msg = NetlinkMessage::from(netlink_packet_route::RouteNetlinkMessage::NewNeighbour(m.clone()));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
    let what = format!("add remote {remote} to vxlan #{ifindex}");
    let mut handle = nl.handle().clone();
    let mut resp = handle.request(msg).map_err(rt_err(what.clone()))?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(e) = m.payload {
            if e.code.is_some() {
                return Err(rt_err(what)(rtnetlink::Error::NetlinkError(e)));
            }
        }
    }
    Ok(())
}

/// `ip link set dev PORT nomaster`.
pub async fn release(nl: &Netlink, port: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(port).nocontroller().build();
    nl.handle().link().set(msg).execute().await.map_err(rt_err(format!("release port #{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
    use netlink_packet_route::RouteNetlinkMessage;

    /// The bytes of an iproute2 request from a fixture, and the request we build.
    fn fixture(name: &str) -> (String, Vec<u8>) {
        let path = format!("{}/tests/fixtures/iproute2/{name}.hex", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let cmd = lines.next().unwrap().trim_start_matches("# ").to_owned();
        let hex = lines.next().unwrap();
        let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        (cmd, bytes)
    }

    /// Our request as it goes on the wire, with iproute2's sequence number so the two compare.
    fn ours(payload: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
        let mut h = NetlinkHeader::default();
        h.flags = NLM_F_REQUEST | NLM_F_ACK;
        h.sequence_number = seq;
        let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(payload));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    fn seq(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[8], b[9], b[10], b[11]])
    }

    fn check(name: &str, cmd: VlanCmd) {
        let (what, want) = fixture(name);
        let msg = vlan_message(7, &cmd);
        let payload = if cmd.add { RouteNetlinkMessage::SetLink(msg) } else { RouteNetlinkMessage::DelLink(msg) };
        let got = ours(payload, seq(&want));
        assert_eq!(got, want, "request for `{what}` differs from iproute2's");
        assert_eq!(cmd.to_string().replace("PORT", "tap0"), what);
    }

    #[test]
    fn vlan_requests_match_iproute2_byte_for_byte() {
        let c = |add, lo, hi, pvid, untagged| VlanCmd { add, lo, hi, pvid, untagged };
        check("access_pvid_untagged", c(true, 10, 10, true, true));
        check("del_default", c(false, 1, 1, false, false));
        check("trunk_single", c(true, 20, 20, false, false));
        check("trunk_range", c(true, 20, 30, false, false));
        check("native_tagged", c(true, 1, 1, true, false));
        check("del_range", c(false, 20, 30, false, false));
    }

    #[test]
    fn vlan_filtering_request_matches_iproute2() {
        let (what, want) = fixture("vlan_filtering");
        let mut got = ours(RouteNetlinkMessage::NewLink(vlan_filtering_message(20, true)), seq(&want));
        // The one difference: rtnetlink sends IFLA_INFO_KIND as "bridge\0" (nla_len 11),
        // iproute2 as "bridge" (nla_len 10); the kernel reads both with nla_strscpy, and the
        // attribute is padded to 12 bytes either way.
        assert_eq!(&got[36..40], &[11, 0, 1, 0], "IFLA_INFO_KIND header");
        got[36] = 10;
        assert_eq!(got, want, "request for `{what}` differs from iproute2's");
    }

    fn kv(vid: u16, pvid: bool, untagged: bool) -> KernelVlan {
        KernelVlan { vid, pvid, untagged }
    }

    #[test]
    fn access_port_gets_its_vid_and_loses_vlan_1() {
        let mode = VlanMode::access(crate::switch::VlanId::new(10).unwrap());
        let cmds: Vec<String> = plan_vlans(&mode, &[kv(1, true, true)]).iter().map(ToString::to_string).collect();
        assert_eq!(cmds, ["bridge vlan add dev PORT vid 10 pvid untagged", "bridge vlan del dev PORT vid 1"]);
        // Already right: nothing to do.
        assert!(plan_vlans(&mode, &[kv(10, true, true)]).is_empty());
    }

    #[test]
    fn trunk_with_native_and_ranges() {
        let mode: VlanMode =
            VlanMode::Trunk { vlans: "10,20-30,40".parse().unwrap(), native: Some("1".parse().unwrap()) };
        let cmds: Vec<String> = plan_vlans(&mode, &[kv(1, true, true), kv(25, false, true), kv(99, false, false)])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            cmds,
            [
                "bridge vlan add dev PORT vid 10",
                "bridge vlan add dev PORT vid 20-30",
                "bridge vlan add dev PORT vid 40",
                "bridge vlan del dev PORT vid 99",
            ]
        );
        let tagged: VlanMode =
            VlanMode::Trunk { vlans: "5".parse().unwrap(), native: Some("7:tagged".parse().unwrap()) };
        assert_eq!(desired_vlans(&tagged), vec![kv(5, false, false), kv(7, true, false)]);
        let cmds: Vec<String> = plan_vlans(&tagged, &[kv(1, true, true)]).iter().map(ToString::to_string).collect();
        assert_eq!(
            cmds,
            ["bridge vlan add dev PORT vid 5", "bridge vlan add dev PORT vid 7 pvid", "bridge vlan del dev PORT vid 1"]
        );
    }
}
