//! What vmnetd must hold for a domain at a given hook phase: pure, so every rule is unit-tested
//! without a daemon.
//!
//! Rules (DESIGN §5):
//! - `vhostuser` with vmnetd metadata → a vhost-user port on a built-in bridge at `prepare`, in
//!   the opposite role to QEMU's, its socket owned by the qemu user. Refused without shared
//!   guest memory.
//! - `ethernet` with metadata: `<target managed='no'>` → the TAP (made if missing) and its
//!   port at `prepare`; a TAP libvirt makes → its port at `started`.
//! - `bridge` (and `network` once libvirt names its bridge) on a vmnetd Linux bridge with a
//!   VLAN → the VLAN of the `vnetN` tap at `started`. On a vmnetd built-in bridge: refused,
//!   with the way out (`translate`), since libvirt cannot enslave a TAP to it.
//! - Everything else is left alone: interfaces without metadata, bridges vmnetd does not know.
//!
//! Every port made for an interface carries the interface's isolation (`<port isolated>` or
//! the metadata's `isolated='yes'`) and its `<bandwidth>` as vmnetd policers (see
//! [`crate::bandwidth`]).

use std::path::{Path, PathBuf};

use vmnetd_api::ifname::IfName;
use vmnetd_api::proto::{BridgeKind, ExternalIds, PortKind, PortSpec, TapSpec, VhostMode};
use vmnetd_api::{MacAddr, VlanMode};

use crate::bandwidth::Policer;
use crate::domain::{Domain, Interface, Sharing};

/// The hook phases that change something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `prepare begin`: before QEMU starts; resources QEMU opens must exist. Also `migrate
    /// begin`, on a live migration's destination host, before libvirt starts the incoming
    /// QEMU: the ports are made from the incoming XML exactly as at `prepare` (a failure
    /// aborts the migration, with the guest still running on its source).
    Prepare,
    /// `started begin`: QEMU runs; libvirt's TAPs exist and carry names.
    Started,
    /// `release end`: the domain is gone; remove what was made for it.
    Release,
    /// `reconnect begin`: libvirtd restarted and found the domain running.
    Reconnect,
    /// Every other call (`start`, `stopped`, `restore`, `attach`...): nothing to do.
    Other,
}

impl Phase {
    pub fn from_args(op: &str, sub: &str) -> Phase {
        match (op, sub) {
            ("prepare", "begin") | ("migrate", "begin") => Phase::Prepare,
            ("started", "begin") => Phase::Started,
            ("release", "end") => Phase::Release,
            ("reconnect", "begin") => Phase::Reconnect,
            _ => Phase::Other,
        }
    }
}

/// What the daemon and the host say, gathered once per call.
#[derive(Debug, Clone)]
pub struct Facts {
    pub bridges: Vec<(String, BridgeKind)>,
    pub run_dir: PathBuf,
    /// `USER:GROUP` QEMU runs as when the domain does not say (qemu.conf, or libvirt-qemu).
    pub qemu_owner: String,
}

impl Facts {
    fn bridge(&self, name: &str) -> Option<BridgeKind> {
        self.bridges.iter().find(|(n, _)| n == name).map(|&(_, k)| k)
    }
}

/// One thing the domain needs from vmnetd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Make this TAP unless a TAP of that name is declared or exists.
    pub tap: Option<TapSpec>,
    pub port: PortSpec,
    /// Make this directory (owned by `.1`) for a socket QEMU creates.
    pub socket_dir: Option<(PathBuf, String)>,
    /// The port's interface must be the TAP libvirt made for this interface (checked before
    /// anything changes).
    pub libvirt_tap: Option<(IfName, MacAddr)>,
    /// What of the interface's XML vmnetd does not apply (`<bandwidth>` `peak`, `floor`), one
    /// line each: the hook reports them as warnings, the domain starts.
    pub notes: Vec<String>,
}

/// `path` if it names a plain file directly inside `dir` (lexically: absolute, no `.` or
/// `..`, no deeper directory, not a hidden name).
pub fn confined_socket(path: Option<&str>, dir: &Path) -> Option<PathBuf> {
    let p = Path::new(path?);
    let name = p.file_name()?.to_str()?;
    let plain = p.is_absolute()
        && p.components().skip(1).all(|c| matches!(c, std::path::Component::Normal(_)))
        && p.parent() == Some(dir)
        && !name.starts_with('.')
        && !path?.ends_with('/');
    plain.then(|| p.to_owned())
}

/// The MAC libvirt gives the host side of a TAP it makes for a guest with `mac`: the
/// guest's with the first byte 0xFE (0xFA if it already was 0xFE), so the bridge never
/// takes the guest's address; the guest's own with `macTableManager='libvirt'`.
pub fn libvirt_tap_macs(mac: MacAddr) -> [MacAddr; 2] {
    let mut o = mac.octets();
    o[0] = if o[0] == 0xfe { 0xfa } else { 0xfe };
    [MacAddr(o), mac]
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// Labels on everything the hook creates, so `release` finds exactly that.
pub const ID_VM: &str = "vm-uuid";
pub const ID_NAME: &str = "vm-name";
pub const ID_MAC: &str = "attached-mac";
pub const ID_BY: &str = "created-by";
pub const CREATOR: &str = "vmnetd-libvirt-hook";

pub fn external_ids(d: &Domain, mac: MacAddr) -> ExternalIds {
    let mut ids = ExternalIds::new();
    ids.insert(ID_VM.into(), d.key().to_owned());
    ids.insert(ID_NAME.into(), d.name.chars().take(256).collect());
    ids.insert(ID_MAC.into(), mac.to_string());
    ids.insert(ID_BY.into(), CREATOR.into());
    ids
}

/// True for what the hook made for the domain keyed `key`.
pub fn is_ours(ids: &ExternalIds, key: &str) -> bool {
    ids.get(ID_BY).map(String::as_str) == Some(CREATOR) && ids.get(ID_VM).map(String::as_str) == Some(key)
}

/// FNV-1a, 64 bit: stable across builds and hosts (unlike std's hasher).
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(b"\0") {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Name of the vhost-user port of (domain, MAC): `lv` + 8 hex digits, stable across calls.
pub fn vhost_port_name(domain: &str, mac: MacAddr) -> IfName {
    let h = fnv64(&[domain.as_bytes(), &mac.octets()]);
    IfName::new(&format!("lv{:08x}", (h >> 32) ^ (h & 0xffff_ffff))).expect("10 ASCII characters")
}

/// The directory under the run dir where QEMU-created sockets of a domain live.
pub fn domain_socket_dir(run_dir: &Path, domain: &str) -> PathBuf {
    let safe = !domain.is_empty()
        && domain.len() <= 40
        && !domain.starts_with('.')
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    let leaf = if safe { domain.to_owned() } else { format!("dom-{:016x}", fnv64(&[domain.as_bytes()])) };
    run_dir.join("libvirt").join(leaf)
}

/// Both VLAN sources agree, or only one speaks.
fn merge_vlan(i: &Interface, meta: Option<&VlanMode>) -> Result<Option<VlanMode>, PlanError> {
    let xml = i.vlan.as_ref().map(|v| &v.mode);
    match (xml, meta) {
        (Some(a), Some(b)) if a != b => {
            Err(PlanError(format!("{}: <vlan> says {a} but the vmnetd metadata says {b}; keep one", i.label())))
        }
        (a, b) => Ok(a.or(b).cloned()),
    }
}

/// Whether a port is isolated: `<port isolated>` (`xml`) and the metadata's `isolated=`
/// (`meta`) agree, or only one speaks.
pub fn merge_isolated(xml: Option<bool>, meta: bool) -> Result<bool, String> {
    match xml {
        Some(false) if meta => {
            Err("<port isolated='no'/> but the vmnetd metadata says isolated='yes'; keep one".into())
        }
        xml => Ok(xml.unwrap_or(false) || meta),
    }
}

/// Isolation and policing of the port made for an interface.
#[derive(Debug, Default)]
struct PortPolicy {
    isolated: bool,
    /// What the port sends the bridge: the guest's traffic, libvirt's `<outbound>`.
    ingress: Option<Policer>,
    /// What the bridge sends the port: traffic to the guest, libvirt's `<inbound>`.
    egress: Option<Policer>,
    notes: Vec<String>,
}

/// The [`PortPolicy`] of interface `i`, `meta_isolated` being its metadata's `isolated=`. A
/// `<bandwidth>` vmnetd cannot apply refuses the interface rather than starting the guest
/// without the limit it was given. (On `ethernet` and kernel-bridge TAPs libvirt applies
/// `<bandwidth>` with tc as well: the same limits, twice.)
fn port_policy(i: &Interface, meta_isolated: bool) -> Result<PortPolicy, PlanError> {
    let label = i.label();
    let isolated = merge_isolated(i.isolated, meta_isolated).map_err(|m| PlanError(format!("{label}: {m}")))?;
    let Some(bw) = &i.bandwidth else { return Ok(PortPolicy { isolated, ..Default::default() }) };
    let p = bw.policing().map_err(|m| PlanError(format!("{label}: {m}")))?;
    Ok(PortPolicy {
        isolated,
        ingress: p.from_guest,
        egress: p.to_guest,
        notes: p.ignored.iter().map(|n| format!("{label}: {n}")).collect(),
    })
}

fn ifname(s: &str, what: &str) -> Result<IfName, PlanError> {
    IfName::new(s).map_err(|e| PlanError(format!("{what}: {e}")))
}

/// The ports (and TAPs, directories) the domain needs at `phase`. Only `Prepare`, `Started`
/// and `Reconnect` need anything.
pub fn plan(d: &Domain, phase: Phase, f: &Facts) -> Result<Vec<Want>, PlanError> {
    if !matches!(phase, Phase::Prepare | Phase::Started | Phase::Reconnect) {
        return Ok(Vec::new());
    }
    let early = matches!(phase, Phase::Prepare | Phase::Reconnect);
    let late = matches!(phase, Phase::Started | Phase::Reconnect);
    let mut out = Vec::new();
    for i in &d.interfaces {
        let meta = i.mac.and_then(|m| d.metadata.port(m));
        let label = i.label();
        match i.kind.as_str() {
            "vhostuser" => {
                let Some(meta) = meta else { continue };
                if !early {
                    continue;
                }
                let mac = meta.mac;
                let bridge = meta_bridge(meta.bridge.as_deref(), &label)?;
                match f.bridge(&bridge) {
                    Some(BridgeKind::Builtin) => {}
                    Some(BridgeKind::Linux) => {
                        return Err(PlanError(format!(
                            "{label}: bridge {bridge} is a Linux bridge; vhost-user ports need a vmnetd built-in bridge"
                        )))
                    }
                    None => return Err(unknown_bridge(&bridge, &label)),
                }
                if d.memory != Sharing::Shared {
                    return Err(PlanError(format!(
                        "{label} is vhost-user, which needs guest memory shared with vmnetd: add \
                         <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking> \
                         to the domain (vmnetd-libvirt-hook translate does this)"
                    )));
                }
                let dir = domain_socket_dir(&f.run_dir, &d.name);
                let path = confined_socket(i.source.path.as_deref(), &dir).ok_or_else(|| {
                    PlanError(format!(
                        "{label}: the vhost-user socket must be a file directly in {}/ (no '..', no other \
                         directory); `vmnetd-libvirt-hook translate` puts it there",
                        dir.display()
                    ))
                })?;
                // QEMU's role on the socket decides ours.
                let mode = match i.source.mode.as_deref() {
                    Some("server") => VhostMode::Client,
                    _ => VhostMode::Server,
                };
                let queues = i.queues.unwrap_or(1);
                if queues > vmnetd_max_queues() {
                    return Err(PlanError(format!(
                        "{label}: <driver queues='{queues}'> is more than vmnetd offers ({})",
                        vmnetd_max_queues()
                    )));
                }
                // Who QEMU runs as comes from the host's configuration (qemu.conf), never from
                // the domain XML: its <seclabel> is written by whoever defines the domain.
                let owner = f.qemu_owner.clone();
                // QEMU as the server creates its socket in the domain's directory, which the
                // hook makes; vmnetd as the server makes the directory itself.
                let socket_dir = (mode == VhostMode::Client).then(|| (dir.clone(), owner.clone()));
                let pol = port_policy(i, meta.isolated)?;
                out.push(Want {
                    tap: None,
                    port: PortSpec {
                        bridge: ifname(&bridge, &label)?,
                        name: vhost_port_name(&d.name, mac),
                        kind: PortKind::VhostUser {
                            path,
                            mode,
                            owner: (mode == VhostMode::Server).then_some(owner),
                            queues,
                        },
                        vlan: merge_vlan(i, meta.vlan.as_ref())?.unwrap_or_default(),
                        macs: vec![mac],
                        lock_mac: meta.lock_mac,
                        isolated: pol.isolated,
                        ingress_rate_kbit: pol.ingress.map(|p| p.rate_kbit),
                        ingress_burst_kb: pol.ingress.and_then(|p| p.burst_kb),
                        egress_rate_kbit: pol.egress.map(|p| p.rate_kbit),
                        egress_burst_kb: pol.egress.and_then(|p| p.burst_kb),
                        external_ids: external_ids(d, mac),
                    },
                    socket_dir,
                    libvirt_tap: None,
                    notes: pol.notes,
                });
            }
            "ethernet" => {
                let Some(meta) = meta else { continue };
                let mac = meta.mac;
                let bridge = meta_bridge(meta.bridge.as_deref(), &label)?;
                let kind = f.bridge(&bridge).ok_or_else(|| unknown_bridge(&bridge, &label))?;
                let wanted_now = if i.unmanaged_target { early } else { late };
                if !wanted_now {
                    continue;
                }
                let Some(dev) = i.target.as_deref() else {
                    if i.unmanaged_target {
                        return Err(PlanError(format!("{label}: <target managed='no'> needs dev='TAPNAME'")));
                    }
                    continue;
                };
                let dev = ifname(dev, &label)?;
                let tap = i.unmanaged_target.then(|| TapSpec {
                    name: Some(dev.clone()),
                    multi_queue: i.queues.unwrap_or(1) > 1,
                    external_ids: external_ids(d, mac),
                    ..Default::default()
                });
                let builtin = kind == BridgeKind::Builtin;
                let libvirt_tap = (!i.unmanaged_target).then(|| (dev.clone(), i.mac.unwrap_or(mac)));
                let pol = port_policy(i, meta.isolated)?;
                out.push(Want {
                    tap,
                    port: PortSpec {
                        bridge: ifname(&bridge, &label)?,
                        name: dev.clone(),
                        kind: PortKind::Netdev { ifname: dev, io: Default::default() },
                        vlan: merge_vlan(i, meta.vlan.as_ref())?.unwrap_or_default(),
                        macs: if builtin { vec![mac] } else { Vec::new() },
                        lock_mac: builtin && meta.lock_mac,
                        isolated: pol.isolated,
                        ingress_rate_kbit: pol.ingress.map(|p| p.rate_kbit),
                        ingress_burst_kb: pol.ingress.and_then(|p| p.burst_kb),
                        egress_rate_kbit: pol.egress.map(|p| p.rate_kbit),
                        egress_burst_kb: pol.egress.and_then(|p| p.burst_kb),
                        external_ids: external_ids(d, mac),
                    },
                    socket_dir: None,
                    libvirt_tap,
                    notes: pol.notes,
                });
            }
            "bridge" | "network" => {
                // A `network` interface names its bridge only once libvirt resolved it.
                let Some(sb) = i.source.bridge.as_deref() else { continue };
                if let Some(mb) = meta.and_then(|m| m.bridge.as_deref()) {
                    if mb != sb {
                        return Err(PlanError(format!(
                            "{label} is on bridge {sb} but the vmnetd metadata says bridge {mb}"
                        )));
                    }
                }
                let vlan = merge_vlan(i, meta.and_then(|m| m.vlan.as_ref()))?;
                match f.bridge(sb) {
                    Some(BridgeKind::Builtin) => {
                        return Err(PlanError(format!(
                            "{label}: {sb} is a vmnetd built-in bridge, not a kernel bridge libvirt can put a TAP on; \
                             convert the domain with `virsh dumpxml {name} | vmnetd-libvirt-hook translate > new.xml && \
                             virsh define new.xml` (vhost-user), or use type='ethernet' with vmnetd metadata",
                            name = d.name
                        )))
                    }
                    Some(BridgeKind::Linux) => {
                        // Without a VLAN, libvirt's own enslaving is all there is to do.
                        let Some(vlan) = vlan else { continue };
                        if !late {
                            continue;
                        }
                        let Some(dev) = i.target.as_deref() else {
                            return Err(PlanError(format!("{label}: libvirt did not name its TAP (<target dev>)")));
                        };
                        let dev = ifname(dev, &label)?;
                        let dev_for_check = dev.clone();
                        let Some(mac) = i.mac else {
                            return Err(PlanError(format!("{label}: libvirt did not give it a MAC")));
                        };
                        // On a kernel bridge libvirt sets both itself (the port's isolated
                        // flag, tc on its TAP); the declaration says them too, so it describes
                        // the port as the kernel has it.
                        let pol = port_policy(i, meta.is_some_and(|m| m.isolated))?;
                        out.push(Want {
                            tap: None,
                            port: PortSpec {
                                bridge: ifname(sb, &label)?,
                                name: dev.clone(),
                                kind: PortKind::Netdev { ifname: dev, io: Default::default() },
                                vlan,
                                macs: Vec::new(),
                                lock_mac: false,
                                isolated: pol.isolated,
                                ingress_rate_kbit: pol.ingress.map(|p| p.rate_kbit),
                                ingress_burst_kb: pol.ingress.and_then(|p| p.burst_kb),
                                egress_rate_kbit: pol.egress.map(|p| p.rate_kbit),
                                egress_burst_kb: pol.egress.and_then(|p| p.burst_kb),
                                external_ids: external_ids(d, mac),
                            },
                            socket_dir: None,
                            libvirt_tap: Some((dev_for_check, mac)),
                            notes: pol.notes,
                        });
                    }
                    None if meta.is_some_and(|m| m.vlan.is_some()) => {
                        return Err(PlanError(format!(
                            "{label}: bridge {sb} is not a vmnetd bridge, so vmnetd cannot set its VLAN; \
                             declare it with `vmnetd bridge add {sb} --kind linux`"
                        )))
                    }
                    None => {}
                }
            }
            other => {
                if meta.is_some() {
                    return Err(PlanError(format!(
                        "{label}: type '{other}' cannot be a vmnetd port (use vhostuser, ethernet or bridge)"
                    )));
                }
            }
        }
    }
    Ok(out)
}

fn vmnetd_max_queues() -> u16 {
    vmnetd_api::proto::MAX_QUEUE_PAIRS
}

fn meta_bridge(b: Option<&str>, label: &str) -> Result<String, PlanError> {
    b.map(str::to_owned)
        .ok_or_else(|| PlanError(format!("{label}: the vmnetd metadata for it needs bridge='NAME' (a vmnetd bridge)")))
}

fn unknown_bridge(b: &str, label: &str) -> PlanError {
    PlanError(format!("{label}: vmnetd has no bridge {b} (see `vmnetd bridge list`)"))
}

/// Whether the domain could need vmnetd at all: any metadata entry matching an interface,
/// or a `bridge`/`network` interface (which may be on a vmnetd bridge). A domain that
/// cannot is left alone without talking to the daemon.
pub fn may_need_daemon(d: &Domain) -> bool {
    d.interfaces.iter().any(|i| {
        i.mac.is_some_and(|m| d.metadata.port(m).is_some())
            || (matches!(i.kind.as_str(), "bridge" | "network") && i.source.bridge.is_some())
    })
}

/// Whether the domain surely needs the daemon: some interface carries vmnetd metadata.
pub fn needs_daemon(d: &Domain) -> bool {
    d.interfaces.iter().any(|i| i.mac.is_some_and(|m| d.metadata.port(m).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain;

    fn facts() -> Facts {
        Facts {
            bridges: vec![("vmnet0".into(), BridgeKind::Builtin), ("lvbr0".into(), BridgeKind::Linux)],
            run_dir: "/run/vmnetd".into(),
            qemu_owner: "64055:64055".into(),
        }
    }

    /// A domain with shared memory, one interface (MAC ..:01) and vmnetd metadata for it, on
    /// the interface's bridge.
    fn dom(iface: &str, meta_attrs: &str) -> Domain {
        let bridge = if iface.contains("'lvbr0'") { "lvbr0" } else { "vmnet0" };
        let x = format!(
            "<domain type='kvm'><name>d1</name><uuid>u-1</uuid>\
             <metadata><v:ports xmlns:v='urn:vmnetd:libvirt:1'>\
             <v:port mac='52:54:00:00:00:01' bridge='{bridge}' {meta_attrs}/></v:ports></metadata>\
             <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\
             <devices>{iface}</devices></domain>"
        );
        domain::parse(&x).unwrap_or_else(|e| panic!("{x}: {e}")).0
    }

    fn vhost(extra: &str) -> String {
        format!(
            "<interface type='vhostuser'><mac address='52:54:00:00:00:01'/>\
             <source type='unix' path='/run/vmnetd/libvirt/d1/a.sock' mode='server'/>{extra}</interface>"
        )
    }

    /// A `bridge` interface on the vmnetd Linux bridge, as libvirt sends it at `started`.
    fn on_linux_bridge(extra: &str) -> String {
        format!(
            "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='lvbr0'/>\
             <target dev='vnet3'/><vlan><tag id='20'/></vlan>{extra}</interface>"
        )
    }

    fn one(d: &Domain, phase: Phase) -> Result<Want, PlanError> {
        let mut w = plan(d, phase, &facts())?;
        assert_eq!(w.len(), 1, "{w:?}");
        Ok(w.remove(0))
    }

    #[test]
    fn port_isolated_yes_no_absent() {
        let isolated = |port: &str| one(&dom(&vhost(port), ""), Phase::Prepare).map(|w| w.port.isolated);
        assert!(isolated("<port isolated='yes'/>").unwrap());
        assert!(!isolated("<port isolated='no'/>").unwrap());
        assert!(!isolated("").unwrap());
        // On a kernel bridge too (where libvirt itself also sets the kernel's flag).
        let d = dom(&on_linux_bridge("<port isolated='yes'/>"), "");
        assert!(one(&d, Phase::Started).unwrap().port.isolated);
        let d = dom(&on_linux_bridge(""), "");
        assert!(!one(&d, Phase::Started).unwrap().port.isolated);
    }

    #[test]
    fn isolated_from_the_metadata_and_conflicts() {
        // libvirt refuses <port isolated='yes'/> on vhost-user: the metadata says it there.
        let w = one(&dom(&vhost(""), "isolated='yes'"), Phase::Prepare).unwrap();
        assert!(w.port.isolated);
        let w = one(&dom(&vhost("<port isolated='yes'/>"), "isolated='yes'"), Phase::Prepare).unwrap();
        assert!(w.port.isolated);
        let e = one(&dom(&vhost("<port isolated='no'/>"), "isolated='yes'"), Phase::Prepare).unwrap_err().0;
        assert!(e.contains("interface 52:54:00:00:00:01: <port isolated='no'/> but the vmnetd metadata"), "{e}");
    }

    #[test]
    fn bandwidth_becomes_the_ports_policers() {
        let bw = "<bandwidth><inbound average='1000' burst='1000'/><outbound average='1000'/></bandwidth>";
        let w = one(&dom(&vhost(bw), ""), Phase::Prepare).unwrap();
        // <inbound> is what the guest receives: what the bridge sends the port (egress).
        assert_eq!((w.port.egress_rate_kbit, w.port.egress_burst_kb), (Some(8192), Some(1024)));
        // <outbound> is what the guest sends: what the port sends the bridge (ingress).
        assert_eq!((w.port.ingress_rate_kbit, w.port.ingress_burst_kb), (Some(8192), None));
        assert!(w.notes.is_empty(), "{:?}", w.notes);

        let w = one(&dom(&vhost("<bandwidth><outbound average='10' burst='10'/></bandwidth>"), ""), Phase::Prepare)
            .unwrap();
        assert_eq!((w.port.ingress_rate_kbit, w.port.ingress_burst_kb), (Some(82), Some(11)));
        assert_eq!((w.port.egress_rate_kbit, w.port.egress_burst_kb), (None, None));

        let w = one(&dom(&vhost(""), ""), Phase::Prepare).unwrap();
        assert_eq!(
            (w.port.ingress_rate_kbit, w.port.ingress_burst_kb, w.port.egress_rate_kbit, w.port.egress_burst_kb),
            (None, None, None, None)
        );
    }

    #[test]
    fn bandwidth_on_every_kind_of_port() {
        let bw = "<bandwidth><inbound average='125'/></bandwidth>";
        let eth = format!(
            "<interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='tap9' managed='no'/>{bw}</interface>"
        );
        let w = one(&dom(&eth, ""), Phase::Prepare).unwrap();
        assert_eq!(w.port.egress_rate_kbit, Some(1024));
        let w = one(&dom(&on_linux_bridge(bw), ""), Phase::Started).unwrap();
        assert_eq!(w.port.egress_rate_kbit, Some(1024));
    }

    #[test]
    fn peak_and_floor_are_notes_not_failures() {
        let bw = "<bandwidth><inbound average='1000' peak='2000' floor='10'/></bandwidth>";
        let w = one(&dom(&vhost(bw), ""), Phase::Prepare).unwrap();
        assert_eq!(w.port.egress_rate_kbit, Some(8192));
        assert_eq!(w.notes.len(), 2, "{:?}", w.notes);
        assert!(w.notes.iter().all(|n| n.starts_with("interface 52:54:00:00:00:01: <bandwidth><inbound ")));
        assert!(w.notes[0].contains("peak='2000'> ignored"), "{:?}", w.notes);
        assert!(w.notes[1].contains("floor='10'> ignored"), "{:?}", w.notes);
    }

    #[test]
    fn bad_bandwidth_refuses_the_port() {
        for (bw, want) in [
            ("<inbound average='0'/>", "<bandwidth><inbound average='0'> is no rate"),
            ("<outbound average='1000' burst='0'/>", "burst='0'> is an empty bucket"),
            ("<outbound average='lots'/>", "is not a whole number"),
            ("<inbound average='18446744073709551615'/>", "more than vmnetd polices"),
            ("<inbound average='99999999999999999999'/>", "is too large"),
        ] {
            let d = dom(&vhost(&format!("<bandwidth>{bw}</bandwidth>")), "");
            let e = plan(&d, Phase::Prepare, &facts()).unwrap_err().0;
            assert!(e.starts_with("interface 52:54:00:00:00:01: "), "{e}");
            assert!(e.contains(want), "{bw}: {e}");
        }
    }

    #[test]
    fn bandwidth_of_interfaces_vmnetd_does_not_manage_is_not_checked() {
        // libvirt reads average='0' as "no limit"; a domain vmnetd does not manage never
        // fails because of what vmnetd would refuse.
        let x = "<domain type='kvm'><name>d2</name><devices>\
                 <interface type='bridge'><mac address='52:54:00:00:00:09'/><source bridge='virbr0'/>\
                 <target dev='vnet0'/><bandwidth><inbound average='0'/></bandwidth></interface>\
                 </devices></domain>";
        let (d, _) = domain::parse(x).unwrap();
        for phase in [Phase::Prepare, Phase::Started, Phase::Reconnect] {
            assert!(plan(&d, phase, &facts()).unwrap().is_empty());
        }
        // Nor on a vmnetd Linux bridge without a VLAN: libvirt does all there is to do.
        let x = x.replace("virbr0", "lvbr0");
        let (d, _) = domain::parse(&x).unwrap();
        assert!(plan(&d, Phase::Started, &facts()).unwrap().is_empty());
    }
}
