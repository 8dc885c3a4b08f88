//! The hook itself: `NAME OP SUBOP EXTRA`, domain XML on stdin.
//!
//! Contract with libvirt: exit 0 lets the domain go on; a non-zero exit at `prepare`,
//! `start` or `started` stops it, and libvirt shows our one stderr line to the user. So:
//! - calls that change nothing (`start`, `stopped`, `restore`, ...) return at once, without
//!   reading the XML or talking to the daemon;
//! - `migrate begin` (a live migration's destination) is `prepare`: the ports exist before
//!   the incoming QEMU starts. It prints nothing on stdout: libvirt would take what it
//!   prints as a replacement for the incoming domain XML. On the source, `release` removes
//!   the ports once the domain has left; nothing is removed under a running domain;
//! - a domain without anything vmnetd manages never fails, even with the daemon down;
//! - `release` and `reconnect` never fail: a failure at `reconnect` kills a running VM, and
//!   nothing in vmnetd's state makes a running guest unable to work (a lost port comes back
//!   on the next `reconnect` or start); problems are reported on stderr, which libvirt logs;
//! - the hook never calls libvirt (libvirtd waits for the hook: it would deadlock).
//!
//! Concurrent hooks for different domains do not race: every change is one atomic daemon
//! request on resources named and labelled per domain, and the daemon serialises requests.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmnetd_api::client::{self, Client};
use vmnetd_api::ifname::IfName;
use vmnetd_api::net::{HostName, LeaseAdd, NetName, NetworkInfo};
use vmnetd_api::proto::{
    BridgeInfo, Op, PortInfo, PortKind, PortListReq, PortRef, PortSpec, RmTap, Status, TapInfo, TapSpec,
};

use crate::config::HookConfig;
use crate::domain::{self, Domain};
use crate::plan::{self, Facts, Phase, PlanError, Want};

/// How long one daemon request may take before the hook gives up (libvirt waits for us).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One change to make, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    DelPort(PortRef),
    AddTap(TapSpec),
    MakeDir(PathBuf, String),
    AddPort(Box<PortSpec>),
}

/// A port as declared, comparable with a [`PortSpec`] (isolation and policers included, so
/// a changed `<bandwidth>` replaces the port).
fn same(info: &PortInfo, spec: &PortSpec) -> bool {
    info.bridge == spec.bridge
        && info.name == spec.name
        && info.kind == spec.kind
        && info.vlan == spec.vlan
        && info.macs == spec.macs
        && info.lock_mac == spec.lock_mac
        && info.isolated == spec.isolated
        && info.ingress_rate_kbit == spec.ingress_rate_kbit
        && info.ingress_burst_kb == spec.ingress_burst_kb
        && info.egress_rate_kbit == spec.egress_rate_kbit
        && info.egress_burst_kb == spec.egress_burst_kb
        && info.external_ids == spec.external_ids
}

/// What the port stands on: a kernel interface or a socket path.
fn resource(kind: &PortKind) -> Option<String> {
    match kind {
        PortKind::Netdev { ifname, .. } => Some(format!("interface {ifname}")),
        PortKind::VhostUser { path, .. } => Some(format!("socket {}", path.display())),
        PortKind::Internal { .. } | PortKind::Vxlan { .. } => None,
    }
}

/// Turns wants into steps against what the daemon has. `tap_exists` says whether a kernel
/// device of that name exists (an undeclared TAP is used as it is, never adopted).
pub fn reconcile(
    key: &str,
    phase: Phase,
    wants: &[Want],
    ports: &[PortInfo],
    taps: &[TapInfo],
    tap_exists: &dyn Fn(&IfName) -> bool,
) -> Result<Vec<Step>, PlanError> {
    let mut steps = Vec::new();
    let del = |p: &PortInfo| Step::DelPort(PortRef { bridge: p.bridge.clone(), name: p.name.clone() });
    let mut gone: Vec<(IfName, IfName)> = Vec::new();
    if phase == Phase::Prepare {
        // The domain is not running: anything still labelled for it is a leftover of a run
        // whose `release` never came (libvirtd crashed, host lost power).
        for p in ports.iter().filter(|p| plan::is_ours(&p.external_ids, key)) {
            if !wants.iter().any(|w| same(p, &w.port)) {
                steps.push(del(p));
                gone.push((p.bridge.clone(), p.name.clone()));
            }
        }
    }
    for w in wants {
        let live = |p: &&PortInfo| !gone.iter().any(|(b, n)| *b == p.bridge && *n == p.name);
        if let Some(t) = &w.tap {
            let name = t.name.as_ref().expect("planned TAPs are named");
            if !taps.iter().any(|x| &x.name == name) {
                if tap_exists(name) {
                    // Only TAPs the hook makes or that vmnetd declares become ports: never an
                    // existing interface (a NIC, another VM's TAP) named by domain XML.
                    return Err(PlanError(format!(
                        "{name} exists and is not a TAP declared in vmnetd; the hook only adds TAPs it creates \
                         or that vmnetd declares (vmnetd mktap {name} --user ...)"
                    )));
                }
                steps.push(Step::AddTap(t.clone()));
            }
        }
        if let Some((dir, owner)) = &w.socket_dir {
            steps.push(Step::MakeDir(dir.clone(), owner.clone()));
        }
        let spec = &w.port;
        let res = resource(&spec.kind);
        let by_name = ports.iter().filter(live).find(|p| p.bridge == spec.bridge && p.name == spec.name);
        let by_res = ports.iter().filter(live).find(|p| resource(&p.kind) == res && res.is_some());
        // A port a non-root user added is theirs: never taken over for a domain (they could
        // capture or remove it), whatever it looks like.
        if let Some(p) = by_name.or(by_res).filter(|p| p.creator.is_some()) {
            return Err(PlanError(format!(
                "port {} of bridge {} ({}) was added by uid {}, not by root; refusing to use it for a domain",
                p.name,
                p.bridge,
                res.clone().unwrap_or_default(),
                p.creator.unwrap_or_default()
            )));
        }
        let replace = match (by_name, by_res) {
            (Some(p), _) if same(p, spec) => continue,
            (Some(p), _) if plan::is_ours(&p.external_ids, key) => Some(p),
            (Some(p), _) => {
                return Err(PlanError(format!(
                "bridge {} already has a port {} that was not made for this domain; remove it (vmnetd port del {} {})",
                p.bridge, p.name, p.bridge, p.name
            )))
            }
            (None, Some(p)) if plan::is_ours(&p.external_ids, key) => Some(p),
            (None, Some(p)) => {
                // Declared by hand: fine when it already is what the domain asks for.
                if p.bridge == spec.bridge && p.vlan == spec.vlan {
                    continue;
                }
                return Err(PlanError(format!(
                    "{} is already port {} of bridge {} ({}), but the domain wants it on {} ({}); \
                     remove that port or change the domain's vmnetd metadata",
                    res.unwrap_or_default(),
                    p.name,
                    p.bridge,
                    p.vlan,
                    spec.bridge,
                    spec.vlan
                )));
            }
            (None, None) => None,
        };
        if let Some(p) = replace {
            steps.push(del(p));
            gone.push((p.bridge.clone(), p.name.clone()));
        }
        steps.push(Step::AddPort(Box::new(spec.clone())));
    }
    Ok(steps)
}

/// The result of one hook call.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0; lines go to stderr as warnings (libvirt logs them).
    Ok(Vec<String>),
    /// Exit 1: libvirt refuses the domain and shows the line.
    Refuse(String),
}

fn connect(socket: &Path) -> client::Result<Client> {
    let mut c = Client::connect(socket)?;
    c.set_timeout(CALL_TIMEOUT)?;
    Ok(c)
}

/// Runs one hook call. `xml` is read only when the phase needs it.
pub fn run(name: &str, op: &str, sub: &str, xml: &mut dyn Read, cfg: &HookConfig) -> Outcome {
    let phase = Phase::from_args(op, sub);
    if phase == Phase::Other {
        return Outcome::Ok(Vec::new());
    }
    let mut text = String::new();
    // libvirt writes the XML and closes the pipe; cap what we take from a broken caller.
    if let Err(e) = xml.take(crate::xml::MAX_INPUT as u64 + 1).read_to_string(&mut text) {
        return fail(phase, name, format!("cannot read the domain XML on stdin: {e}"));
    }
    let d = match domain::parse(&text) {
        Ok((d, _)) => d,
        Err(e) => return fail(phase, name, e.to_string()),
    };
    if phase == Phase::Release {
        return Outcome::Ok(release(&d, cfg));
    }
    if !plan::may_need_daemon(&d) {
        return Outcome::Ok(Vec::new());
    }
    let mut c = match connect(&cfg.socket) {
        Ok(c) => c,
        // Nothing here surely is vmnetd's: a plain bridge domain starts without vmnetd.
        Err(e) if e.is_not_running() && !plan::needs_daemon(&d) => return Outcome::Ok(Vec::new()),
        Err(e) => return fail(phase, &d.name, vmnetd_api::proto::error_chain(&e)),
    };
    match ensure(&mut c, &d, phase, cfg) {
        Ok(notes) => Outcome::Ok(notes.into_iter().map(|n| format!("vmnetd: domain {}: {n}", d.name)).collect()),
        Err(e) => fail(phase, &d.name, e),
    }
}

/// A failure: refused where libvirt should stop the domain, a warning elsewhere.
fn fail(phase: Phase, domain: &str, msg: String) -> Outcome {
    let line = format!("vmnetd: domain {domain}: {msg}");
    match phase {
        Phase::Prepare | Phase::Started => Outcome::Refuse(line),
        _ => Outcome::Ok(vec![line]),
    }
}

fn err_str(e: client::Error) -> String {
    vmnetd_api::proto::error_chain(&e)
}

/// Brings the daemon to what the domain needs at `phase`. Returns the wants' notes (what of
/// the XML vmnetd does not apply), for warnings.
fn ensure(c: &mut Client, d: &Domain, phase: Phase, cfg: &HookConfig) -> Result<Vec<String>, String> {
    let status: Status = c.call(Op::Status).map_err(err_str)?;
    let bridges: Vec<BridgeInfo> = c.call(Op::BridgeList).map_err(err_str)?;
    let facts = Facts {
        bridges: bridges.iter().map(|b| (b.name.to_string(), b.kind)).collect(),
        run_dir: PathBuf::from(&status.run_dir),
        qemu_owner: numeric_owner(&cfg.qemu_owner())?,
    };
    let wants = plan::plan(d, phase, &facts).map_err(|e| e.0)?;
    if wants.is_empty() && phase != Phase::Prepare {
        return Ok(Vec::new());
    }
    let notes: Vec<String> = wants.iter().flat_map(|w| w.notes.iter().cloned()).collect();
    for w in &wants {
        if let Some((dev, mac)) = &w.libvirt_tap {
            check_libvirt_tap(dev, *mac)?;
        }
    }
    let ports: Vec<PortInfo> = c.call(Op::PortList(PortListReq::default())).map_err(err_str)?;
    let taps: Vec<TapInfo> =
        if wants.iter().any(|w| w.tap.is_some()) { c.call(Op::TapList).map_err(err_str)? } else { Vec::new() };
    // In the hook's own network namespace (sysfs may show another one).
    let exists = |n: &IfName| nix::net::if_::if_nametoindex(n.as_str()).is_ok();
    let steps = reconcile(d.key(), phase, &wants, &ports, &taps, &exists).map_err(|e| e.0)?;
    let mut added_ports = Vec::new();
    let mut added_taps = Vec::new();
    let res = (|| {
        for s in steps {
            match s {
                Step::DelPort(r) => {
                    let _: PortInfo = c.call(Op::PortDel(r)).map_err(err_str)?;
                }
                Step::AddTap(t) => {
                    let info: TapInfo = c.call(Op::Mktap(t)).map_err(err_str)?;
                    added_taps.push(info.name);
                }
                Step::MakeDir(dir, owner) => make_socket_dir(&facts.run_dir, &dir, &owner)?,
                Step::AddPort(p) => {
                    let r = PortRef { bridge: p.bridge.clone(), name: p.name.clone() };
                    let _: PortInfo = c.call(Op::PortAdd(p)).map_err(err_str)?;
                    added_ports.push(r);
                }
            }
        }
        if phase == Phase::Prepare {
            leases(c, d)?;
        }
        Ok(())
    })();
    if res.is_err() && phase != Phase::Reconnect {
        // The domain will not start: take back what this call added, so a refused start
        // leaves nothing behind even if libvirt never calls `release`.
        for r in added_ports.into_iter().rev() {
            let _ = c.call::<PortInfo>(Op::PortDel(r));
        }
        for name in added_taps {
            let _ = c.call::<TapInfo>(Op::Rmtap(RmTap { name, force: false }));
        }
    }
    res.map(|()| notes)
}

/// The static DHCP leases `<vmnetd:port ip='…'>` asks for, on `network='…'` or else on the one
/// vmnetd network whose subnet holds the address, named after the domain (its first port on
/// each network) when the domain's name is a valid host name. Idempotent in the daemon; kept
/// when the domain stops, as libvirt keeps a network's `<host>` entries.
fn leases(c: &mut Client, d: &Domain) -> Result<(), String> {
    let wanted: Vec<(&domain::MetaPort, Ipv4Addr)> =
        d.metadata.ports.iter().filter_map(|p| p.ip.map(|ip| (p, ip))).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let nets: Vec<NetworkInfo> = c.call(Op::NetworkList).map_err(err_str)?;
    let host = d.name.parse::<HostName>().ok();
    let mut named: Vec<NetName> = Vec::new();
    for (p, ip) in wanted {
        let net = match &p.network {
            Some(n) => n.clone(),
            None => {
                let holding: Vec<&NetworkInfo> = nets.iter().filter(|n| n.subnet.is_host(ip)).collect();
                match holding.as_slice() {
                    [one] => one.spec.name.clone(),
                    [] => {
                        return Err(format!("port {}: no vmnetd network holds {ip} (see `vmnetd network list`)", p.mac))
                    }
                    _ => {
                        return Err(format!(
                            "port {}: several vmnetd networks hold {ip}; name one with network='…'",
                            p.mac
                        ))
                    }
                }
            }
        };
        let name = if named.contains(&net) { None } else { host.clone() };
        named.push(net.clone());
        let req = LeaseAdd { network: net, mac: p.mac, ip, name };
        let _: NetworkInfo =
            c.call(Op::LeaseAdd(req)).map_err(|e| format!("port {}: static lease {ip}: {}", p.mac, err_str(e)))?;
    }
    Ok(())
}

/// `USER:GROUP` as `UID:GID`, so the same owner reads the same however it was named (the DAC
/// label says `+64055:+64055`, qemu.conf says `libvirt-qemu`).
fn numeric_owner(owner: &str) -> Result<String, String> {
    let (u, g) = owner.split_once(':').unwrap_or((owner, owner));
    let uid = vmnetd_api::users::resolve_user(u).map_err(|e| format!("the qemu user: {e}"))?.id;
    let gid = vmnetd_api::users::resolve_group(g).map_err(|e| format!("the qemu group: {e}"))?.id;
    Ok(format!("{uid}:{gid}"))
}

/// Checks that `dev` is the TAP libvirt made for the interface with guest MAC `mac`: a
/// TUN/TAP device whose address is the one libvirt gives such a TAP. So a `<target dev>` in
/// domain XML cannot put a host NIC or another VM's TAP on a bridge.
fn check_libvirt_tap(dev: &IfName, mac: vmnetd_api::MacAddr) -> Result<(), String> {
    let facts = crate::link::query(dev.as_str()).map_err(|e| format!("cannot look at {dev}: {e}"))?;
    let Some(f) = facts else {
        return Err(format!("libvirt's TAP {dev} does not exist"));
    };
    if !f.is_tun {
        return Err(format!("{dev} is not a TAP device; refusing to make it a port"));
    }
    let addr = f.mac.map(vmnetd_api::MacAddr);
    if !addr.is_some_and(|a| plan::libvirt_tap_macs(mac).contains(&a)) {
        return Err(format!(
            "{dev} is not the TAP libvirt made for the interface with MAC {mac} (its address is {}); refusing",
            addr.map_or("unknown".into(), |a| a.to_string())
        ));
    }
    Ok(())
}

/// A domain's socket directory, `RUN_DIR/libvirt/LEAF`: QEMU (running as `owner`) creates its
/// server socket there. Made root-owned `RUN_DIR/libvirt` first; nothing on the way may be
/// a symlink, and everything is done through directory fds, so nothing outside
/// `RUN_DIR/libvirt/LEAF` is ever created, chowned or chmodded.
fn make_socket_dir(run_dir: &Path, dir: &Path, owner: &str) -> Result<(), String> {
    let (u, g) = owner.split_once(':').unwrap_or((owner, owner));
    let uid = vmnetd_api::users::resolve_user(u).map_err(|e| e.to_string())?.id;
    let gid = vmnetd_api::users::resolve_group(g).map_err(|e| e.to_string())?.id;
    let leaf = confined_leaf(run_dir, dir)?;
    let base = crate::safedir::open_libvirt_dir(run_dir, true).map_err(|e| e.to_string())?;
    let d = crate::safedir::make_subdir(&base, &leaf).map_err(|e| format!("{}: {e}", dir.display()))?;
    crate::safedir::give(&d, uid, gid, 0o750).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The leaf of `dir` when it is exactly `RUN_DIR/libvirt/LEAF`.
fn confined_leaf(run_dir: &Path, dir: &Path) -> Result<String, String> {
    let base = run_dir.join("libvirt");
    match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(leaf)) if p == base && !leaf.starts_with('.') => Ok(leaf.to_owned()),
        _ => Err(format!("{} is not a directory in {}; refusing", dir.display(), base.display())),
    }
}

/// Removes every port and TAP labelled for the domain, and its socket directory.
fn release(d: &Domain, cfg: &HookConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut warn = |m: String| warnings.push(format!("vmnetd: domain {}: {m}", d.name));
    let mut c = match connect(&cfg.socket) {
        Ok(c) => c,
        Err(e) if e.is_not_running() => return Vec::new(),
        Err(e) => {
            warn(err_str(e));
            return warnings;
        }
    };
    let key = d.key();
    match c.call::<Vec<PortInfo>>(Op::PortList(PortListReq::default())) {
        Ok(ports) => {
            for p in ports.into_iter().filter(|p| plan::is_ours(&p.external_ids, key)) {
                if let Err(e) = c.call::<PortInfo>(Op::PortDel(PortRef { bridge: p.bridge, name: p.name.clone() })) {
                    warn(format!("cannot remove port {}: {}", p.name, err_str(e)));
                }
            }
        }
        Err(e) => warn(err_str(e)),
    }
    match c.call::<Vec<TapInfo>>(Op::TapList) {
        Ok(taps) => {
            for t in taps.into_iter().filter(|t| plan::is_ours(&t.external_ids, key)) {
                if let Err(e) = c.call::<TapInfo>(Op::Rmtap(RmTap { name: t.name.clone(), force: false })) {
                    warn(format!("cannot remove TAP {}: {}", t.name, err_str(e)));
                }
            }
        }
        Err(e) => warn(err_str(e)),
    }
    if let Ok(st) = c.call::<Status>(Op::Status) {
        let run_dir = Path::new(&st.run_dir);
        let dir = plan::domain_socket_dir(run_dir, &d.name);
        let r = confined_leaf(run_dir, &dir).and_then(|leaf| {
            crate::safedir::remove_socket_dir(run_dir, &leaf)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))
        });
        if let Err(e) = r {
            warn(e);
        }
    }
    warnings
}
