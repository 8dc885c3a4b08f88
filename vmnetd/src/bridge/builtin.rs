//! The built-in bridge: vmnetd's userspace switch on the datapath thread. A port is an edge
//! ([`crate::ports`]): an AF_PACKET socket on a netdev, an internal TAP, a vhost-user
//! device.

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::api::{
    ApiError, BridgeSpec, Counters, ErrorKind, FdbRow, PortKind, PortSpec, PortStatus, QueuePairs, VhostInfo, VhostMode,
};
use crate::datapath::capture::Sink;
use crate::datapath::PortState;
use crate::ifname::IfName;
use crate::netlink::LinkChange;
use crate::ports::{EdgeState, InternalPort, NetdevPort, PortEdge, VhostPort, VhostState, VxlanPort};
use crate::state::{BridgeDecl, PortDecl};
use crate::switch::{FdbConfig, Policer, PortConfig, SwitchConfig, VlanId};
use crate::tap::{self, Policy, TapDecl};
use crate::vxlan;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{err, gone, identity, internal, port_ifname, port_resource, same_interface, BridgeBackend, Ctx, PortView};

/// MTU of a vhost-user port: its guest's is not negotiated, and a guest with mergeable
/// buffers takes any frame, so none is enforced on the way in.
const VHOST_MTU: u32 = 65_000;

#[derive(Debug, Default)]
pub struct Builtin;

pub(crate) fn switch_config(spec: &BridgeSpec) -> SwitchConfig {
    let d = FdbConfig::default();
    SwitchConfig {
        fdb: FdbConfig {
            ageing: spec.ageing.map_or(d.ageing, |s| std::time::Duration::from_secs(u64::from(s))),
            max_entries: spec.max_macs.unwrap_or(d.max_entries),
        },
    }
}

/// The ageing time and MAC cap a built-in bridge runs with.
pub fn limits(spec: &BridgeSpec) -> (u32, usize) {
    let c = switch_config(spec);
    (c.fdb.ageing.as_secs() as u32, c.fdb.max_entries)
}

/// What the datapath says of one port.
struct Live {
    state: PortState,
    counters: Option<Counters>,
    edge: EdgeState,
}

impl Builtin {
    /// Opens the I/O edge of a port: an AF_PACKET socket on a netdev, the TAP of an internal
    /// port (created if missing), or a vhost-user device and its socket. Returns the edge,
    /// the interface MTU, and whether the TAP was created now.
    async fn open_edge(cx: &Ctx, decl: &PortDecl, policy: Policy) -> Result<(Box<dyn PortEdge>, u32, bool), ApiError> {
        let spec = &decl.spec;
        match &spec.kind {
            PortKind::VhostUser { path, mode, owner, queues } => {
                let edge = open_vhost(cx, spec, path, *mode, owner.as_deref(), *queues, decl.creator)?;
                Ok((Box::new(edge), VHOST_MTU, false))
            }
            PortKind::Netdev { ifname, io } => {
                let link = cx
                    .nl
                    .link(ifname)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("No interface {ifname}")))?;
                if link.name == "lo" {
                    return Err(err(ErrorKind::InvalidArgument, "The loopback interface cannot be a bridge port"));
                }
                same_interface(decl, &link)?;
                if let Some(c) = link.controller {
                    let owner = cx.nl.link_by_index(c).await.ok().flatten().map_or(c.to_string(), |l| l.name);
                    return Err(err(
                        ErrorKind::Conflict,
                        format!("{ifname} is already a port of kernel device {owner}; release it first (ip link set {ifname} nomaster)"),
                    ));
                }
                if !link.up {
                    cx.nl
                        .set_link(link.index, &LinkChange { up: Some(true), ..Default::default() })
                        .await
                        .map_err(internal)?;
                }
                // The interface stays in the host's stack (AF_PACKET does not take frames from
                // it): with the default arp_ignore=0 the host would answer ARP for its other
                // addresses (a network's gateway on this bridge) here too, with this
                // interface's MAC, and the guest's traffic would enter the host on a port
                // instead of the gateway. Answer only for addresses of this interface. Only on
                // virtual links (TAPs, veths: made for VMs and namespaces); a host NIC's ARP
                // behaviour is the admin's and is left alone.
                if link.kind.is_some() {
                    let arp = crate::network::host::sysctl_path("ipv4", ifname.as_str(), "arp_ignore");
                    if let Err(e) = std::fs::write(&arp, "1\n") {
                        log::debug!("{arp}: {e}");
                    }
                }
                let port =
                    NetdevPort::open(ifname.clone(), link.index, link.mtu.unwrap_or(1500), *io).map_err(|e| {
                        err(ErrorKind::Internal, format!("Cannot open an AF_PACKET socket on {ifname}: {e}"))
                    })?;
                Ok((Box::new(port), link.mtu.unwrap_or(1500), false))
            }
            PortKind::Internal { .. } => {
                let ifname = port_ifname(spec).unwrap_or_else(|| spec.name.clone());
                let tap = TapDecl {
                    name: ifname.clone(),
                    mode: crate::sys::tap::Mode::Tap,
                    owner: None,
                    group: None,
                    multi_queue: false,
                    vnet_hdr: true,
                    mtu: None,
                    mac: spec.macs.first().copied(),
                    created: false,
                    external_ids: Default::default(),
                };
                if let Some(link) = cx.nl.link(&ifname).await.map_err(internal)? {
                    if policy == Policy::Declare && !tap::is_ours(None, &link) {
                        return Err(err(
                            ErrorKind::Conflict,
                            format!("{ifname} exists already; an internal port needs a new interface name (--ifname)"),
                        ));
                    }
                }
                let outcome =
                    tap::ensure(&cx.nl, &tap, Policy::Restore).await.map_err(|e| ApiError::from_chain(e.kind(), &e))?;
                let port =
                    InternalPort::open(ifname.clone()).map_err(|e| ApiError::from_chain(ErrorKind::Internal, &e))?;
                let mtu = cx.nl.link(&ifname).await.ok().flatten().and_then(|l| l.mtu).unwrap_or(1500);
                Ok((Box::new(port), mtu, outcome == tap::Outcome::Created))
            }
            PortKind::Vxlan { .. } => {
                let (edge, mtu) = open_vxlan(cx, spec).await?;
                Ok((Box::new(edge), mtu, false))
            }
        }
    }

    /// What the datapath knows of these ports (one call for all).
    async fn live(cx: &Ctx, decls: &[PortDecl]) -> Result<Vec<Option<Live>>, ApiError> {
        let wanted: Vec<(String, String)> =
            decls.iter().map(|d| (d.spec.bridge.to_string(), d.spec.name.to_string())).collect();
        cx.dp
            .call(move |dp| {
                wanted
                    .iter()
                    .map(|(b, p)| {
                        let br = dp.bridge(b)?;
                        let id = br.port_id(p)?;
                        let port = br.port(id)?;
                        Some(Live {
                            state: port.state.clone(),
                            counters: br.switch.counters(id).map(Counters::from),
                            edge: port.edge_state(),
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(gone)
    }
}

/// Starts a vhost-user port's device and socket.
fn open_vhost(
    cx: &Ctx,
    spec: &PortSpec,
    path: &std::path::Path,
    mode: VhostMode,
    owner: Option<&str>,
    queues: u16,
    creator: Option<u32>,
) -> Result<VhostPort, ApiError> {
    let path = cx.socket_path(path);
    let owner = owner.map(super::resolve_owner).transpose()?;
    // A live socket there belongs to someone (a frontend in server mode, say).
    if mode == VhostMode::Server && vmnetd_vhost::server::listening(&path) {
        return Err(err(
            ErrorKind::Conflict,
            format!(
                "{} is in use by another process (is the frontend listening there? then use --mode client)",
                path.display()
            ),
        ));
    }
    let shared = vmnetd_vhost::device::Shared::new(spec.name.as_str(), queues).map_err(internal)?;
    let mode = match mode {
        VhostMode::Server => vmnetd_vhost::server::Mode::Server,
        VhostMode::Client => vmnetd_vhost::server::Mode::Client,
    };
    // A client-mode port a non-root user added talks only to a frontend running as them.
    let ep = vmnetd_vhost::server::Endpoint { path, mode, owner, peer_uid: creator };
    let server = vmnetd_vhost::server::Server::start(shared.clone(), ep).map_err(|e| {
        let kind = match &e {
            vmnetd_vhost::server::Error::NotASocket(_) => ErrorKind::Conflict,
            vmnetd_vhost::server::Error::PathTooLong(..) | vmnetd_vhost::server::Error::BadPath(_) => {
                ErrorKind::InvalidArgument
            }
            _ => ErrorKind::Internal,
        };
        ApiError::from_chain(kind, &e)
    })?;
    Ok(VhostPort::new(shared, server))
}

/// Opens a tunnel port: its socket bound (and group joined), its MTU from the underlay.
/// Returns the edge and the inner MTU the switch enforces.
async fn open_vxlan(cx: &Ctx, spec: &PortSpec) -> Result<(VxlanPort, u32), ApiError> {
    let PortKind::Vxlan { vni, vni_map, local, remotes, group, dev, dstport } = &spec.kind else {
        return Err(err(ErrorKind::Internal, "not a tunnel"));
    };
    let map = match vni {
        Some(v) => vxlan::VniMap::Single(*v),
        None => {
            let mut m: Vec<(VlanId, u32)> = vni_map.iter().map(|m| (m.vlan, m.vni)).collect();
            m.sort();
            vxlan::VniMap::Vlans(m)
        }
    };
    let v6 = local.or(*group).or(remotes.first().copied()).is_some_and(|a| a.is_ipv6());
    let any = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let mut dev_link = None;
    if let Some(d) = dev {
        let l = cx
            .nl
            .link(d)
            .await
            .map_err(internal)?
            .ok_or_else(|| err(ErrorKind::NotFound, format!("No interface {d}")))?;
        dev_link = Some(l);
    }
    let group = match (group, &dev_link) {
        (Some(g), Some(l)) => Some((*g, l.index)),
        (Some(_), None) => return Err(err(ErrorKind::InvalidArgument, "--group needs --dev (the underlay interface)")),
        (None, _) => None,
    };
    // A multicast tunnel listens on the wildcard address: datagrams to the group are not
    // addressed to the local unicast address.
    let bind_ip = if group.is_some() { any } else { local.unwrap_or(any) };
    let underlay_mtu = match (&dev_link, remotes.first()) {
        (Some(l), _) => l.mtu.unwrap_or(1500) as usize,
        (None, Some(r)) => match crate::sys::udp::path_mtu(*r) {
            Ok(m) if m >= 576 => m,
            Ok(_) | Err(_) => {
                log::warn!("port {}: no route to {r} yet; assuming an underlay MTU of 1500", spec.name);
                1500
            }
        },
        (None, None) => 1500,
    };
    let tunnel = vxlan::Tunnel::new(map, remotes.clone(), group.is_some(), std::time::Duration::from_secs(300));
    let setup = crate::ports::vxlan::Setup { tunnel, bind: SocketAddr::new(bind_ip, *dstport), group, underlay_mtu };
    let port = VxlanPort::open(setup).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            // Another tunnel on the same socket carries one of these VNIs.
            err(ErrorKind::Conflict, e.to_string())
        } else if e.kind() == std::io::ErrorKind::AddrInUse {
            err(
                ErrorKind::Conflict,
                format!(
                    "UDP port {dstport} on {bind_ip} is in use by another program (the kernel's vxlan module, say), \
                     or by a tunnel bound to another local address; give the same --local as the other tunnels, \
                     or another --dstport"
                ),
            )
        } else if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            err(ErrorKind::InvalidArgument, format!("{bind_ip} is not an address of this host (--local)"))
        } else {
            err(ErrorKind::Internal, format!("Cannot open the tunnel's UDP socket on {bind_ip}:{dstport}: {e}"))
        }
    })?;
    let inner = crate::ports::vxlan::max_inner(underlay_mtu, v6);
    if inner < 68 + 14 {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!("The underlay MTU {underlay_mtu} leaves no room for frames"),
        ));
    }
    log::info!(
        "port {}: VXLAN on {bind_ip}:{dstport}, underlay MTU {underlay_mtu}: inner frames up to {} bytes (MTU {})",
        spec.name,
        inner,
        inner - 14
    );
    if inner - 14 < 1500 {
        log::warn!(
            "port {}: the underlay MTU {underlay_mtu} carries inner packets of at most {} bytes: give the VMs \
             and hosts on this bridge an MTU of {} (or raise the underlay's to {}); longer frames are dropped \
             (counted as `mtu`)",
            spec.name,
            inner - 14,
            inner - 14,
            underlay_mtu + 1500 - (inner - 14)
        );
    }
    Ok((port, (inner - 14) as u32))
}

fn vhost_view(cx: &Ctx, spec: &PortSpec, v: &VhostState) -> (PortStatus, VhostInfo) {
    let (socket, mode) = match &spec.kind {
        PortKind::VhostUser { path, mode, .. } => (cx.socket_path(path), *mode),
        _ => (Default::default(), VhostMode::Server),
    };
    let info = VhostInfo {
        socket: socket.display().to_string(),
        mode,
        connected: v.connected,
        connections: v.connections,
        features: vmnetd_vhost::virtio_net::features::names(v.acked_features).into_iter().map(str::to_owned).collect(),
        queue_pairs_active: v.pairs_active,
        queue_pairs_max: v.pairs_max,
        guest_mac: v.guest_mac.map(crate::switch::MacAddr),
        needs_reset: v.needs_reset.clone(),
        queues: v.queues.clone(),
    };
    let status = match (v.connected, v.pairs_active, &v.needs_reset) {
        (false, _, _) => PortStatus::WaitingForFrontend,
        (true, _, Some(why)) => PortStatus::NeedsReset { reason: why.clone() },
        (true, 0, None) => PortStatus::SettingUp,
        (true, n, None) => PortStatus::Up { queue_pairs: Some(QueuePairs { active: n, max: v.pairs_max }) },
    };
    (status, info)
}

impl BridgeBackend for Builtin {
    fn create<'a>(&'a self, cx: &'a Ctx, spec: &'a BridgeSpec) -> BoxFuture<'a, Result<bool, ApiError>> {
        async move {
            let (name, cfg) = (spec.name.to_string(), switch_config(spec));
            cx.dp
                .call(move |dp| {
                    if dp.bridge_index(&name).is_none() {
                        dp.add_bridge(&name, cfg);
                    }
                })
                .await
                .map_err(gone)?;
            // vmnetd's own switch: always made by vmnetd.
            Ok(true)
        }
        .boxed()
    }

    fn destroy<'a>(&'a self, cx: &'a Ctx, decl: &'a BridgeDecl) -> BoxFuture<'a, ()> {
        async move {
            let name = decl.spec.name.to_string();
            if let Ok(Some((_, ports))) = cx.dp.call(move |dp| dp.remove_bridge(&name)).await {
                release(ports.into_iter().filter_map(|p| p.into_edge()).map(|e| (e, false)).collect()).await;
            }
        }
        .boxed()
    }

    fn check_port(&self, _spec: &PortSpec) -> Result<(), ApiError> {
        Ok(())
    }

    fn attach<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl, policy: Policy) -> BoxFuture<'a, Result<bool, ApiError>> {
        async move {
            let spec = &decl.spec;
            let (edge, mtu, created) = Self::open_edge(cx, decl, policy).await?;
            let cfg = PortConfig {
                mode: spec.vlan.clone(),
                mtu,
                macs: spec.macs.clone(),
                lock_macs: spec.lock_mac,
                isolated: spec.isolated,
                policer: spec.ingress_rate_kbit.map(|r| Policer::new(r, spec.ingress_burst_kb)),
                egress_policer: spec.egress_rate_kbit.map(|r| Policer::new(r, spec.egress_burst_kb)),
                ..Default::default()
            };
            let (bridge, name) = (spec.bridge.to_string(), spec.name.to_string());
            let res = cx
                .dp
                .call(move |dp| {
                    if dp.bridge(&bridge).and_then(|b| b.port_id(&name)).is_some() {
                        dp.replace_edge(&bridge, &name, edge)
                    } else {
                        dp.add_port(&bridge, &name, edge, cfg).map(|_| None)
                    }
                })
                .await
                .map_err(gone)?;
            match res {
                Ok(old) => {
                    if let Some(old) = old {
                        release(vec![(old, false)]).await;
                    }
                    Ok(created)
                }
                Err(e) => Err(err(ErrorKind::Internal, format!("Cannot add port {} to the datapath: {e}", spec.name))),
            }
        }
        .boxed()
    }

    fn reconfigure<'a>(
        &'a self,
        cx: &'a Ctx,
        old: &'a PortDecl,
        new: &'a PortDecl,
    ) -> BoxFuture<'a, Result<bool, ApiError>> {
        async move {
            // The edge is made from the kind (a tunnel's VNIs follow its VLANs): a new kind,
            // or any change to a tunnel, is a new edge.
            if old.spec.kind != new.spec.kind || matches!(new.spec.kind, PortKind::Vxlan { .. }) {
                return Ok(false);
            }
            let spec = new.spec.clone();
            let (bridge, name) = (spec.bridge.to_string(), spec.name.to_string());
            cx.dp
                .call(move |dp| {
                    let Some(br) = dp.bridge_mut(&bridge) else { return false };
                    // Not attached now (its interface is missing): the declaration is all
                    // there is to change; the reconciler attaches it as declared.
                    let Some(id) = br.port_id(&name) else { return true };
                    let Some(cur) = br.switch.port(id).cloned() else { return false };
                    let cfg = PortConfig {
                        mode: spec.vlan.clone(),
                        macs: spec.macs.clone(),
                        lock_macs: spec.lock_mac,
                        isolated: spec.isolated,
                        policer: spec.ingress_rate_kbit.map(|r| Policer::new(r, spec.ingress_burst_kb)),
                        egress_policer: spec.egress_rate_kbit.map(|r| Policer::new(r, spec.egress_burst_kb)),
                        ..cur
                    };
                    br.switch.reconfigure_port(id, cfg)
                })
                .await
                .map_err(gone)
        }
        .boxed()
    }

    fn detach<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl) -> BoxFuture<'a, ()> {
        async move {
            let spec = &decl.spec;
            let (bridge, name) = (spec.bridge.to_string(), spec.name.to_string());
            let removed = cx.dp.call(move |dp| dp.remove_port(&bridge, &name)).await.ok().flatten();
            match removed.and_then(|p| p.into_edge()) {
                Some(edge) => release(vec![(edge, decl.created)]).await,
                None if decl.created => {
                    // Not attached (missing): delete by name if it is here.
                    if let Some(ifname) = port_ifname(spec) {
                        let _ = tap::remove(&cx.nl, &ifname, None, true).await;
                    }
                }
                None => {}
            }
        }
        .boxed()
    }

    fn views<'a>(&'a self, cx: &'a Ctx, decls: &'a [PortDecl]) -> BoxFuture<'a, Result<Vec<PortView>, ApiError>> {
        async move {
            let live = Self::live(cx, decls).await?;
            // Interfaces are looked at only for ports that are not attached or are down.
            let names: Vec<IfName> = decls
                .iter()
                .zip(&live)
                .filter(|(_, l)| !matches!(l, Some(Live { state: PortState::Up, .. })))
                .filter_map(|(d, _)| port_ifname(&d.spec))
                .collect();
            let links = super::links_named(cx, &names).await?;
            let link = |n: &IfName| links.get(n.as_str());
            let mut out = Vec::with_capacity(decls.len());
            for (decl, live) in decls.iter().zip(live) {
                let moved = port_ifname(&decl.spec).and_then(|n| link(&n)).and_then(|l| identity(decl, l).err());
                let view = match live {
                    Some(Live { state: PortState::Up, counters, edge: EdgeState::Vhost(v) }) => {
                        let (status, info) = vhost_view(cx, &decl.spec, &v);
                        PortView {
                            status,
                            counters,
                            vhost: Some(info),
                            ..PortView::of(PortStatus::Up { queue_pairs: None })
                        }
                    }
                    Some(Live { state: PortState::Up, counters, edge: EdgeState::Vxlan(v) }) => {
                        // The tunnel's own drops (datagrams it did not take) join the port's.
                        let counters = counters.map(|mut c| {
                            for (name, n) in &v.drops {
                                *c.drops.entry((*name).to_owned()).or_default() += n;
                            }
                            c
                        });
                        PortView { counters, vxlan: Some(v.info), ..PortView::of(PortStatus::Up { queue_pairs: None }) }
                    }
                    Some(Live { state: PortState::Up, counters, edge: EdgeState::Netdev(io) }) => {
                        PortView { counters, io: Some(io), ..PortView::of(PortStatus::Up { queue_pairs: None }) }
                    }
                    Some(Live { state: PortState::Up, counters, edge: EdgeState::Up }) => {
                        PortView { counters, ..PortView::of(PortStatus::Up { queue_pairs: None }) }
                    }
                    Some(Live { state: PortState::Down(why), counters, .. }) => {
                        PortView { counters, ..PortView::of(moved.unwrap_or(PortStatus::Down { reason: why })) }
                    }
                    None => PortView::of(moved.unwrap_or_else(|| PortStatus::Missing {
                        reason: format!("{} not attached", port_resource(&decl.spec)),
                    })),
                };
                out.push(view);
            }
            Ok(out)
        }
        .boxed()
    }

    fn fdb<'a>(
        &'a self,
        cx: &'a Ctx,
        bridge: &'a IfName,
        vlan: Option<VlanId>,
    ) -> BoxFuture<'a, Result<Vec<FdbRow>, ApiError>> {
        async move {
            let name = bridge.to_string();
            let mut rows = cx
                .dp
                .call(move |dp| {
                    let now = dp.now();
                    let Some(b) = dp.bridge(&name) else {
                        return Vec::new();
                    };
                    b.switch
                        .fdb()
                        .entries(now)
                        .filter(|e| vlan.is_none_or(|v| v == e.vlan))
                        .map(|e| FdbRow {
                            vlan: e.vlan,
                            mac: e.mac,
                            port: b.port_name(e.port).to_owned(),
                            age_secs: e.age.as_secs(),
                            is_static: e.is_static,
                            remote: b
                                .port(e.port)
                                .and_then(|p| p.edge())
                                .and_then(|edge| edge.remote_of(e.vlan, e.mac.0)),
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(gone)?;
            rows.sort_by_key(|r| (r.vlan, r.mac));
            Ok(rows)
        }
        .boxed()
    }

    fn flush_fdb<'a>(&'a self, cx: &'a Ctx, bridge: &'a IfName) -> BoxFuture<'a, Result<usize, ApiError>> {
        async move {
            let name = bridge.to_string();
            cx.dp.call(move |dp| dp.bridge_mut(&name).map_or(0, |b| b.switch.flush_fdb())).await.map_err(gone)
        }
        .boxed()
    }

    fn capture<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl, sink: Sink) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            let (b, p) = (decl.spec.bridge.to_string(), decl.spec.name.to_string());
            let ok = cx.dp.call(move |dp| dp.add_capture(&b, &p, sink)).await.map_err(gone)?;
            if !ok {
                return Err(err(
                    ErrorKind::NotFound,
                    format!("Port {} is not attached (missing interface)", decl.spec.name),
                ));
            }
            Ok(())
        }
        .boxed()
    }

    fn fdb_entries<'a>(&'a self, cx: &'a Ctx, bridge: &'a IfName) -> BoxFuture<'a, Result<usize, ApiError>> {
        async move {
            let name = bridge.to_string();
            cx.dp
                .call(move |dp| {
                    let now = dp.now();
                    dp.bridge(&name).map_or(0, |b| b.switch.fdb().entries(now).count())
                })
                .await
                .map_err(gone)
        }
        .boxed()
    }

    fn needs_repair(&self, status: &PortStatus) -> bool {
        matches!(status, PortStatus::Down { .. } | PortStatus::Missing { .. })
    }
}

/// Lets removed edges go: a vhost-user device stops its socket and connection thread, an
/// internal TAP vmnetd made is deleted. Off the async runtime's threads.
async fn release(edges: Vec<(Box<dyn PortEdge>, bool)>) {
    if edges.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for (e, delete) in edges {
            e.release(delete);
        }
    })
    .await;
}
