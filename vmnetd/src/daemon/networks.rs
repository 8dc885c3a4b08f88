//! Networks as declarations: the requests (`network add/del/list/show/leases`, `network
//! lease add/del`, `network forward add/del`), restoring them at start, and their
//! supervision (dnsmasq restarts, the nftables table put back, gateway addresses re-added).
//!
//! `network add` checks everything it can before changing anything (names, the bridge, the
//! subnet against every route and address of the host and every other network, the
//! gateway's interface, the programs it needs), then makes the gateway, its addresses and
//! forwarding, dnsmasq, and the nftables table, recording each step; a failure undoes the
//! steps made, so nothing is left half-made. `network del` removes exactly what was made.
//! A restarted daemon adopts what is there: the gateway port and its TAP (restored with the
//! ports), addresses (added only if missing), the table (rebuilt whole, never duplicated);
//! a dnsmasq left running by the previous daemon is replaced by a new one on the same lease
//! file, so leases survive.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::api::{ApiError, BridgeKind, ErrorKind, PortKind, PortSpec, Source};
use crate::config::{Config, ToolsSection};
use crate::ifname::IfName;
use crate::network::dnsmasq::{self, Files, Instance};
use crate::network::{self, host, nft, NetworkDecl, NETWORK_LABEL};
use crate::state::{PortDecl, ResolvedNet};
use crate::switch::{VlanId, VlanMode};
use crate::tap::Policy;
use vmnetd_api::net::{
    Forward, ForwardAdd, ForwardDel, Ipv4Cidr, Lease, LeaseAdd, LeaseDel, NetName, NetworkInfo, NetworkRef,
    NetworkSpec, StaticLease,
};
use vmnetd_api::MacAddr;

use super::core::Core;

/// How often the supervisor re-checks everything (a lost notification, a removed address).
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// A dnsmasq that exits within this long of its start is restarted after this long.
const RESTART_BACKOFF: Duration = Duration::from_secs(5);

/// What the supervisor hears about.
#[derive(Debug)]
pub enum NetEvent {
    /// A dnsmasq the daemon started exited (network, pid).
    DnsmasqExited(String, u32),
    /// Restart a network's dnsmasq (after a back-off).
    RestartDnsmasq(String),
    /// Something changed in nftables.
    NftChanged,
}

/// The networks' runtime: config declarations, running dnsmasqs, tools.
#[derive(Default)]
pub struct NetRuntime {
    /// The config file's networks, resolved.
    pub config: Vec<NetworkDecl>,
    pub dnsmasq: HashMap<String, (Instance, Instant)>,
    pub tools: ToolsSection,
    pub events: Option<UnboundedSender<NetEvent>>,
    /// Rules vmnetd's table should have in the kernel (`None`: no table).
    pub expected_rules: Option<usize>,
    /// Spreads ULA prefixes per host (`/etc/machine-id`, else the state dir's path).
    pub seed: Vec<u8>,
}

impl NetRuntime {
    pub fn new(tools: ToolsSection, state_dir: &Path) -> NetRuntime {
        let seed = std::fs::read("/etc/machine-id").unwrap_or_else(|_| state_dir.display().to_string().into_bytes());
        NetRuntime { tools, seed, ..Default::default() }
    }
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

fn internal<E: std::error::Error + 'static>(e: E) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

/// Where a bare program name of `[tools]` is looked for: system directories only, never the
/// daemon's `PATH` (a root daemon must not run whatever a relative or user-writable `PATH`
/// entry offers).
const TOOL_DIRS: [&str; 6] = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A program of `[tools]`: an absolute path that exists, or a name found in [`TOOL_DIRS`].
pub fn find_tool(p: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |c: &Path| std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if p.components().count() > 1 || p.is_absolute() {
        return (p.is_absolute() && exec(p)).then(|| p.to_owned());
    }
    TOOL_DIRS.iter().map(|d| Path::new(d).join(p)).find(|c| exec(c))
}

/// A step `network add` made, undone if a later one fails.
enum Undo {
    /// The gateway port (declared in the state).
    Port(Box<PortDecl>),
    Addr(u32, IpAddr, u8),
    /// Forwarding switched on for a Linux bridge.
    Forwarding(String),
}

/// The gateway's internal port on a built-in bridge.
fn gateway_port(decl: &NetworkDecl) -> PortSpec {
    let ifname = decl.spec.name.gateway_ifname();
    PortSpec {
        bridge: decl.spec.bridge.clone(),
        name: ifname,
        kind: PortKind::Internal { ifname: None },
        vlan: VlanMode::access(decl.spec.vlan.unwrap_or(VlanId::DEFAULT)),
        macs: Vec::new(),
        lock_mac: false,
        isolated: false,
        ingress_rate_kbit: None,
        ingress_burst_kb: None,
        egress_rate_kbit: None,
        egress_burst_kb: None,
        external_ids: [(NETWORK_LABEL.to_owned(), decl.spec.name.to_string())].into_iter().collect(),
    }
}

impl Core {
    pub(crate) fn network_decls(&self) -> impl Iterator<Item = (&NetworkDecl, Source)> {
        self.nets
            .config
            .iter()
            .map(|n| (n, Source::Config))
            .chain(self.state.networks.iter().map(|n| (n, Source::State)))
    }

    fn network_decl(&self, name: &NetName) -> Result<(NetworkDecl, Source), ApiError> {
        self.network_decls()
            .find(|(n, _)| &n.spec.name == name)
            .map(|(n, s)| (n.clone(), s))
            .ok_or_else(|| err(ErrorKind::NotFound, format!("No network {name}")))
    }

    /// The network using `bridge`, if any (a bridge with a network cannot be removed).
    pub(crate) fn network_on_bridge(&self, bridge: &IfName) -> Option<NetName> {
        self.network_decls().find(|(n, _)| &n.spec.bridge == bridge).map(|(n, _)| n.spec.name.clone())
    }

    fn bridge_kind(&self, bridge: &IfName) -> Result<BridgeKind, ApiError> {
        self.bridge_decl(bridge.as_str())
            .map(|(b, _)| b.spec.kind)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("No bridge {bridge}")))
    }

    fn files(&self, name: &NetName) -> Files {
        Files::new(&self.paths.run_dir, &self.paths.state_dir, name.as_str())
    }

    fn tool(&self, which: &str) -> Result<PathBuf, ApiError> {
        let p = if which == "nft" { &self.nets.tools.nft } else { &self.nets.tools.dnsmasq };
        find_tool(p).ok_or_else(|| {
            err(
                ErrorKind::Unsupported,
                format!(
                    "{} is not installed (package {}; or set [tools] {which} in {})",
                    p.display(),
                    if which == "nft" { "nftables" } else { "dnsmasq-base" },
                    self.config_origin
                ),
            )
        })
    }

    /// The table's view of every network that needs rules.
    fn nft_nets(&self) -> Vec<nft::NetRules> {
        self.network_decls()
            .filter(|(n, _)| n.needs_nft())
            .filter_map(|(n, _)| {
                let kind = self.bridge_kind(&n.spec.bridge).ok()?;
                Some(nft::NetRules {
                    name: n.spec.name.to_string(),
                    iface: n.interface(kind).to_string(),
                    subnet: n.subnet,
                    nat: n.spec.nat,
                    forwards: n.forwards.clone(),
                })
            })
            .collect()
    }

    /// Makes vmnetd's table what the networks need (or removes it).
    async fn apply_nft(&mut self) -> Result<(), ApiError> {
        let nets = self.nft_nets();
        if nets.is_empty() && self.nets.expected_rules.is_none() {
            return Ok(());
        }
        let bin = match self.tool("nft") {
            Ok(b) => b,
            // Nothing to install, and no nft to remove a table with: there is none.
            Err(_) if nets.is_empty() => {
                self.nets.expected_rules = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let uplinks = self.state.uplink_forwarding.clone();
        nft::apply(&bin, &nets, &uplinks).await.map_err(internal)?;
        self.nets.expected_rules = (!nets.is_empty()).then(|| nft::rules(&nets, &uplinks).len());
        Ok(())
    }

    /// Puts the table back if something removed or changed it. Returns whether it did.
    async fn check_nft(&mut self) -> bool {
        let Some(expected) = self.nets.expected_rules else { return false };
        let Ok(bin) = self.tool("nft") else { return false };
        let present = nft::present_rules(&bin).await;
        if present == Some(expected) {
            return false;
        }
        match self.apply_nft().await {
            Ok(()) => log::warn!(
                "nftables table inet {} was {} (ruleset flushed or edited by something else); re-installed it",
                nft::TABLE,
                match present {
                    None => "removed".to_owned(),
                    Some(n) => format!("changed ({n} rules instead of {expected})"),
                }
            ),
            Err(e) => {
                log::error!("nftables table inet {} is gone and cannot be re-installed: {}", nft::TABLE, e.message)
            }
        }
        true
    }

    /// The gateway: its interface (an internal port on a built-in bridge, the bridge itself
    /// on a Linux bridge) up, with the gateway address (and the ULA one), forwarding on. Each
    /// change is pushed on `undo`. `in_state`: a runtime network (its port is recorded in the
    /// state; a config network's among the config's ports).
    async fn ensure_gateway(
        &mut self,
        decl: &mut NetworkDecl,
        kind: BridgeKind,
        in_state: bool,
        undo: &mut Vec<Undo>,
    ) -> Result<(), ApiError> {
        let iface = decl.interface(kind);
        if kind == BridgeKind::Builtin {
            let spec = gateway_port(decl);
            if self.port_decl(spec.bridge.as_str(), spec.name.as_str()).is_none() {
                let cx = self.ctx();
                let backend = crate::bridge::backend(kind);
                let mut pd = PortDecl::new(spec, false);
                pd.created = backend.attach(&cx, &pd, Policy::Declare).await?;
                if in_state {
                    self.state.ports.push(pd.clone());
                    undo.push(Undo::Port(Box::new(pd)));
                } else {
                    self.config_ports.push(pd);
                }
            }
        }
        let link = self
            .nl
            .link(&iface)
            .await
            .map_err(internal)?
            .ok_or_else(|| err(ErrorKind::NotFound, format!("The gateway interface {iface} is missing")))?;
        if !link.up {
            self.nl
                .set_link(link.index, &crate::netlink::LinkChange { up: Some(true), ..Default::default() })
                .await
                .map_err(internal)?;
        }
        let v4 = IpAddr::V4(decl.gateway);
        if host::ensure_addr(&self.nl, link.index, v4, decl.subnet.prefix_len()).await.map_err(internal)? {
            undo.push(Undo::Addr(link.index, v4, decl.subnet.prefix_len()));
        }
        if let Some(p) = decl.ipv6 {
            host::enable_ipv6(&iface).map_err(internal)?;
            let v6 = host::v6(p);
            if host::ensure_addr(&self.nl, link.index, v6, 64).await.map_err(internal)? {
                undo.push(Undo::Addr(link.index, v6, 64));
            }
        }
        if decl.needs_nft() {
            let was = host::enable_forwarding(iface.as_str()).map_err(internal)?;
            if kind == BridgeKind::Linux && decl.prior_forwarding.is_none() {
                decl.prior_forwarding = Some(was);
                if !was {
                    undo.push(Undo::Forwarding(iface.to_string()));
                }
            }
            self.ensure_uplinks().await;
        }
        Ok(())
    }

    /// Forwarding on the interfaces holding default routes, while a network needs it.
    async fn ensure_uplinks(&mut self) {
        let ours: Vec<String> = self
            .network_decls()
            .filter_map(|(n, _)| self.bridge_kind(&n.spec.bridge).ok().map(|k| n.interface(k).to_string()))
            .collect();
        let Ok(idx) = host::default_route_interfaces(&self.nl).await else { return };
        let mut changed = false;
        for i in idx {
            let Ok(Some(l)) = self.nl.link_by_index(i).await else { continue };
            if ours.contains(&l.name) {
                continue;
            }
            match host::enable_forwarding(&l.name) {
                Ok(false) => {
                    log::info!("forwarding on uplink {} switched on (NAT'd networks' replies come in there)", l.name);
                    if !self.state.uplink_forwarding.contains(&l.name) {
                        self.state.uplink_forwarding.push(l.name.clone());
                        changed = true;
                    }
                }
                Ok(true) => {}
                Err(e) => log::warn!("uplink {}: {}", l.name, crate::api::error_chain(&e)),
            }
        }
        if changed {
            if let Err(e) = self.store.save(&self.state) {
                log::error!("{}", crate::api::error_chain(&e));
            }
        }
    }

    /// Switches uplink forwarding back off when no network needs it any more.
    fn release_uplinks(&mut self) {
        if self.network_decls().any(|(n, _)| n.needs_nft()) {
            return;
        }
        for name in std::mem::take(&mut self.state.uplink_forwarding) {
            if let Err(e) = host::write_flag(&host::sysctl_path("ipv4", &name, "forwarding"), false) {
                log::warn!("uplink {name}: {}", crate::api::error_chain(&e));
            } else {
                log::info!("forwarding on uplink {name} switched back off");
            }
        }
    }

    async fn undo(&mut self, steps: Vec<Undo>) {
        for step in steps.into_iter().rev() {
            match step {
                Undo::Port(pd) => {
                    let pd = *pd;
                    if let Ok(b) = self.backend(&pd.spec.bridge) {
                        b.detach(&self.ctx(), &pd).await;
                    }
                    self.state.ports.retain(|p| !(p.spec.bridge == pd.spec.bridge && p.spec.name == pd.spec.name));
                }
                Undo::Addr(index, ip, len) => {
                    if let Err(e) = host::del_addr(&self.nl, index, ip, len).await {
                        log::error!("undo: {}", crate::api::error_chain(&e));
                    }
                }
                Undo::Forwarding(ifname) => {
                    let _ = host::write_flag(&host::sysctl_path("ipv4", &ifname, "forwarding"), false);
                }
            }
        }
    }

    /// Makes the network's dnsmasq run on its current files (restarted if its config
    /// changed, told to re-read its static leases otherwise), or stops it if the network
    /// needs none.
    async fn ensure_dnsmasq(&mut self, decl: &NetworkDecl, kind: BridgeKind) -> Result<(), ApiError> {
        let name = decl.spec.name.to_string();
        let files = self.files(&decl.spec.name);
        if !decl.needs_dnsmasq() {
            self.stop_dnsmasq(&name).await;
            return Ok(());
        }
        let bin = self.tool("dnsmasq")?;
        let changed = dnsmasq::write_files(decl, kind, &files).map_err(internal)?;
        let running = self.nets.dnsmasq.get(&name).is_some_and(|(i, _)| !*i.exited.borrow());
        if running && !changed {
            if let Some((i, _)) = self.nets.dnsmasq.get(&name) {
                dnsmasq::reload(i);
            }
            return Ok(());
        }
        self.stop_dnsmasq(&name).await;
        dnsmasq::stop_stale(&files).await;
        let events = self.nets.events.clone();
        let n2 = name.clone();
        let inst = dnsmasq::start(&bin, &name, &files, move |pid| {
            if let Some(tx) = events {
                let _ = tx.send(NetEvent::DnsmasqExited(n2, pid));
            }
        })
        .await
        .map_err(|e| ApiError::from_chain(ErrorKind::Internal, &e))?;
        log::info!("network {name}: dnsmasq {} started", inst.pid);
        self.nets.dnsmasq.insert(name, (inst, Instant::now()));
        Ok(())
    }

    async fn stop_dnsmasq(&mut self, name: &str) {
        if let Some((mut inst, _)) = self.nets.dnsmasq.remove(name) {
            dnsmasq::stop(&mut inst).await;
            log::info!("network {name}: dnsmasq {} stopped", inst.pid);
        }
    }

    /// Everything the host's routes, addresses and other networks occupy.
    async fn taken_subnets(&self, except: Option<&NetName>) -> Result<Vec<(Ipv4Cidr, String)>, ApiError> {
        let mut out: Vec<(Ipv4Cidr, String)> = host::taken_v4(&self.nl)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|c| (c, format!("a route or address of the host ({c})")))
            .collect();
        for (n, _) in self.network_decls() {
            if Some(&n.spec.name) != except {
                out.push((n.subnet, format!("network {} ({})", n.spec.name, n.subnet)));
            }
        }
        Ok(out)
    }

    pub async fn network_add(&mut self, spec: NetworkSpec) -> Result<NetworkInfo, ApiError> {
        if let Ok((existing, source)) = self.network_decl(&spec.name) {
            if existing.spec == spec {
                return self.network_info(&existing, source);
            }
            return Err(err(ErrorKind::Conflict, format!("Network {} already exists with other settings", spec.name)));
        }
        let kind = self.bridge_kind(&spec.bridge)?;
        let vid = spec.vlan.unwrap_or(VlanId::DEFAULT);
        for (n, _) in self.network_decls() {
            if n.spec.bridge == spec.bridge
                && (kind == BridgeKind::Linux || n.spec.vlan.unwrap_or(VlanId::DEFAULT) == vid)
            {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("Bridge {} already has network {} in VLAN {vid}", spec.bridge, n.spec.name),
                ));
            }
        }
        if kind == BridgeKind::Builtin {
            let gw = spec.name.gateway_ifname();
            if self.port_decls().any(|(p, _)| crate::bridge::port_ifname(&p.spec).as_ref() == Some(&gw)) {
                return Err(err(ErrorKind::Conflict, format!("{gw} is already a port")));
            }
            if self.nl.link(&gw).await.map_err(internal)?.is_some() {
                return Err(err(ErrorKind::Conflict, format!("Interface {gw} exists already and is not vmnetd's")));
            }
        }
        let taken = self.taken_subnets(None).await?;
        let subnet = match network::fixed_subnet(&spec) {
            Some(c) => {
                if let Some((_, what)) = taken.iter().find(|(t, _)| !t.is_default() && t.overlaps(&c)) {
                    return Err(err(ErrorKind::Conflict, format!("Subnet {c} overlaps {what}")));
                }
                c
            }
            None => {
                let cidrs: Vec<Ipv4Cidr> = taken.iter().map(|(c, _)| *c).collect();
                network::pick_auto(&cidrs)
                    .ok_or_else(|| err(ErrorKind::Conflict, "No free RFC 1918 /24 is left for --subnet auto"))?
            }
        };
        let mut decl = network::resolve(&spec, subnet, kind, &self.nets.seed)?;
        // The programs it needs, before anything changes.
        if decl.needs_dnsmasq() {
            self.tool("dnsmasq")?;
        }
        if decl.needs_nft() {
            self.tool("nft")?;
        }
        let mut undo = Vec::new();
        let res = self.bring_up(&mut decl, kind, &mut undo).await;
        if let Err(e) = res {
            self.stop_dnsmasq(spec.name.as_str()).await;
            dnsmasq::remove_files(&self.files(&spec.name), true);
            self.state.networks.retain(|n| n.spec.name != spec.name);
            self.undo(undo).await;
            if let Err(e2) = self.apply_nft().await {
                log::error!("network {}: rollback of the nftables table: {}", spec.name, e2.message);
            }
            self.release_uplinks();
            // A step may have saved the state with this network's pieces in it (its gateway
            // port, an uplink): save what is true now.
            if let Err(e2) = self.store.save(&self.state) {
                log::error!("network {}: rollback: {}", spec.name, crate::api::error_chain(&e2));
            }
            return Err(e);
        }
        log::info!(
            "network {}: added on {} ({}, gateway {}{}{}{})",
            spec.name,
            decl.interface(kind),
            decl.subnet,
            decl.gateway,
            if spec.nat { ", nat" } else { "" },
            if spec.dhcp.is_some() { ", dhcp" } else { "" },
            if spec.dns { ", dns" } else { "" },
        );
        self.network_info(&decl, Source::State)
    }

    /// `network add` after the checks: every step, recorded in `undo`.
    async fn bring_up(
        &mut self,
        decl: &mut NetworkDecl,
        kind: BridgeKind,
        undo: &mut Vec<Undo>,
    ) -> Result<(), ApiError> {
        self.ensure_gateway(decl, kind, true, undo).await?;
        self.ensure_dnsmasq(decl, kind).await?;
        self.state.networks.push(decl.clone());
        self.apply_nft().await?;
        self.store.save(&self.state).map_err(internal)
    }

    pub async fn network_del(&mut self, req: NetworkRef) -> Result<NetworkInfo, ApiError> {
        let (decl, source) = self.network_decl(&req.name)?;
        if source == Source::Config {
            return Err(err(
                ErrorKind::Conflict,
                format!("Network {} is declared in {}; remove it there", req.name, self.config_origin),
            ));
        }
        let info = self.network_info(&decl, source)?;
        let kind = self.bridge_kind(&decl.spec.bridge)?;
        self.stop_dnsmasq(req.name.as_str()).await;
        self.state.networks.retain(|n| n.spec.name != req.name);
        if let Err(e) = self.apply_nft().await {
            log::error!("network {}: {} (the periodic check retries)", req.name, e.message);
            // Never equal to what the kernel holds: the next check re-applies the table.
            self.nets.expected_rules = Some(usize::MAX);
        }
        let iface = decl.interface(kind);
        match kind {
            BridgeKind::Builtin => {
                let spec = gateway_port(&decl);
                if let Some((pd, _)) = self.port_decl(spec.bridge.as_str(), spec.name.as_str()) {
                    let pd = pd.clone();
                    self.backend(&pd.spec.bridge)?.detach(&self.ctx(), &pd).await;
                    self.state.ports.retain(|p| !(p.spec.bridge == pd.spec.bridge && p.spec.name == pd.spec.name));
                }
            }
            BridgeKind::Linux => {
                if let Ok(Some(link)) = self.nl.link(&iface).await {
                    let mut addrs = vec![(IpAddr::V4(decl.gateway), decl.subnet.prefix_len())];
                    if let Some(p) = decl.ipv6 {
                        addrs.push((host::v6(p), 64));
                    }
                    for (ip, len) in addrs {
                        if let Err(e) = host::del_addr(&self.nl, link.index, ip, len).await {
                            log::error!("network {}: {}", req.name, crate::api::error_chain(&e));
                        }
                    }
                    if decl.prior_forwarding == Some(false) {
                        let _ = host::write_flag(&host::sysctl_path("ipv4", iface.as_str(), "forwarding"), false);
                    }
                }
            }
        }
        dnsmasq::remove_files(&self.files(&req.name), true);
        self.release_uplinks();
        self.store.save(&self.state).map_err(internal)?;
        log::info!("network {}: removed", req.name);
        Ok(info)
    }

    /// `apply`: sets up a network the config file now declares (as `network add`, with its
    /// leases and forwards; all or nothing), then files it as the config's.
    pub(crate) async fn add_config_network(&mut self, nc: &crate::config::NetworkConfig) -> Result<(), ApiError> {
        let name = nc.name.clone();
        self.network_add(nc.spec()).await?;
        let mut res = Ok(());
        for l in &nc.leases {
            let req = LeaseAdd { network: name.clone(), mac: l.mac, ip: l.ip, name: l.name.clone() };
            if let Err(e) = self.lease_add(req).await {
                res = Err(e);
                break;
            }
        }
        for f in &nc.forwards {
            if res.is_err() {
                break;
            }
            let req = ForwardAdd { network: name.clone(), proto: f.proto, host_port: f.host_port, to: f.to };
            if let Err(e) = self.forward_add(req).await {
                res = Err(e);
            }
        }
        if let Err(e) = res {
            if let Err(e2) = self.network_del(NetworkRef { name: name.clone() }).await {
                log::error!("network {name}: undoing a failed apply: {}", e2.message);
            }
            return Err(e);
        }
        let Some(i) = self.state.networks.iter().position(|n| n.spec.name == name) else {
            return Ok(());
        };
        let decl = self.state.networks.remove(i);
        self.move_gateway_ports(&name, true);
        self.state.config_networks.insert(
            name.to_string(),
            ResolvedNet {
                subnet: decl.subnet,
                ipv6: decl.ipv6,
                prior_forwarding: decl.prior_forwarding,
                leases: Vec::new(),
            },
        );
        self.nets.config.push(decl);
        self.store.save(&self.state).map_err(internal)
    }

    /// Moves network `name`'s gateway port to the config layer (`to_config`) or to the
    /// runtime layer, as its network moves (`apply`).
    fn move_gateway_ports(&mut self, name: &NetName, to_config: bool) {
        let gateway = |p: &PortDecl| p.spec.external_ids.get(NETWORK_LABEL).map(String::as_str) == Some(name.as_str());
        let (from, to) = if to_config {
            (&mut self.state.ports, &mut self.config_ports)
        } else {
            (&mut self.config_ports, &mut self.state.ports)
        };
        to.extend(from.iter().filter(|p| gateway(p)).cloned());
        from.retain(|p| !gateway(p));
    }

    /// `apply`: takes down a network the config file no longer declares (as `network del`).
    pub(crate) async fn del_config_network(&mut self, nc: &crate::config::NetworkConfig) -> Result<(), ApiError> {
        let name = nc.name.clone();
        let Some(i) = self.nets.config.iter().position(|n| n.spec.name == name) else {
            return Ok(());
        };
        let decl = self.nets.config.remove(i);
        self.move_gateway_ports(&name, false);
        let resolved = self.state.config_networks.remove(name.as_str());
        self.state.networks.push(decl);
        if let Err(e) = self.network_del(NetworkRef { name: name.clone() }).await {
            // Back to the config's, as it was.
            if let Some(i) = self.state.networks.iter().position(|n| n.spec.name == name) {
                let decl = self.state.networks.remove(i);
                self.move_gateway_ports(&name, true);
                self.nets.config.push(decl);
            }
            if let Some(r) = resolved {
                self.state.config_networks.insert(name.to_string(), r);
            }
            return Err(e);
        }
        Ok(())
    }

    fn network_info(&self, decl: &NetworkDecl, source: Source) -> Result<NetworkInfo, ApiError> {
        let kind = self.bridge_kind(&decl.spec.bridge)?;
        let pid =
            self.nets.dnsmasq.get(decl.spec.name.as_str()).filter(|(i, _)| !*i.exited.borrow()).map(|(i, _)| i.pid);
        Ok(NetworkInfo {
            spec: decl.spec.clone(),
            subnet: decl.subnet,
            gateway: decl.gateway,
            interface: decl.interface(kind),
            dhcp_range: decl.dhcp_range(),
            ipv6_prefix: decl.ipv6.map(|p| format!("{p}/64")),
            leases: decl.leases.clone(),
            forwards: decl.forwards.clone(),
            dnsmasq_pid: pid,
            source,
        })
    }

    pub fn network_list(&self) -> Result<Vec<NetworkInfo>, ApiError> {
        let decls: Vec<(NetworkDecl, Source)> = self.network_decls().map(|(n, s)| (n.clone(), s)).collect();
        decls.iter().map(|(n, s)| self.network_info(n, *s)).collect()
    }

    pub fn network_show(&self, req: NetworkRef) -> Result<NetworkInfo, ApiError> {
        let (d, s) = self.network_decl(&req.name)?;
        self.network_info(&d, s)
    }

    pub fn network_leases(&self, req: NetworkRef) -> Result<Vec<Lease>, ApiError> {
        let (decl, _) = self.network_decl(&req.name)?;
        let text = std::fs::read_to_string(self.files(&req.name).leases()).unwrap_or_default();
        let mut out: Vec<Lease> = network::leases::parse(&text)
            .into_iter()
            .filter(|l| decl.subnet.contains(l.ip))
            .map(|l| Lease {
                is_static: decl.leases.iter().any(|s| s.mac == l.mac && s.ip == l.ip),
                mac: l.mac,
                ip: l.ip,
                hostname: l.hostname,
                expires: l.expires,
                active: true,
            })
            .collect();
        for s in &decl.leases {
            if !out.iter().any(|l| l.mac == s.mac) {
                out.push(Lease {
                    mac: s.mac,
                    ip: s.ip,
                    hostname: s.name.clone(),
                    expires: None,
                    is_static: true,
                    active: false,
                });
            }
        }
        out.sort_by_key(|l| u32::from(l.ip));
        Ok(out)
    }

    /// A runtime network, for a change (config networks change in the config file).
    fn state_network(&self, name: &NetName) -> Result<NetworkDecl, ApiError> {
        let (d, source) = self.network_decl(name)?;
        if source == Source::Config {
            return Err(err(
                ErrorKind::Conflict,
                format!("Network {name} is declared in {}; change it there", self.config_origin),
            ));
        }
        Ok(d)
    }

    /// Replaces a runtime network's declaration, applies `apply`, persists; puts the old
    /// one back if a step fails.
    async fn change_network(&mut self, new: NetworkDecl, nft_too: bool) -> Result<NetworkInfo, ApiError> {
        let name = new.spec.name.clone();
        let kind = self.bridge_kind(&new.spec.bridge)?;
        let Some(i) = self.state.networks.iter().position(|n| n.spec.name == name) else {
            return Err(err(ErrorKind::NotFound, format!("No network {name}")));
        };
        let old = std::mem::replace(&mut self.state.networks[i], new.clone());
        let mut res = Ok(());
        if nft_too {
            res = self.apply_nft().await;
        }
        if res.is_ok() {
            res = self.ensure_dnsmasq(&new, kind).await;
        }
        if res.is_ok() {
            res = self.store.save(&self.state).map_err(internal);
        }
        if let Err(e) = res {
            self.state.networks[i] = old.clone();
            if nft_too {
                let _ = self.apply_nft().await;
            }
            let _ = self.ensure_dnsmasq(&old, kind).await;
            return Err(e);
        }
        self.network_info(&new, Source::State)
    }

    pub async fn lease_add(&mut self, req: LeaseAdd) -> Result<NetworkInfo, ApiError> {
        if self.network_decl(&req.network)?.1 == Source::Config {
            return self.config_lease_change(&req.network, req.mac, Some(req.lease())).await;
        }
        let mut d = self.state_network(&req.network)?;
        let lease = req.lease();
        network::check_lease(&d, &lease)?;
        if d.leases.contains(&lease) {
            return self.network_info(&d, Source::State);
        }
        d.leases.retain(|l| l.mac != lease.mac);
        d.leases.push(lease);
        let info = self.change_network(d, false).await?;
        log::info!("network {}: static lease {} -> {}", req.network, req.mac, req.ip);
        Ok(info)
    }

    /// Adds (`Some`) or removes (`None`) the runtime static lease of `mac` on a network the
    /// config file declares: kept in the state beside the file's declaration, which is
    /// never changed (a lease the file declares cannot be replaced or removed here).
    async fn config_lease_change(
        &mut self,
        name: &NetName,
        mac: MacAddr,
        lease: Option<StaticLease>,
    ) -> Result<NetworkInfo, ApiError> {
        let (old, _) = self.network_decl(name)?;
        let runtime: Vec<StaticLease> =
            self.state.config_networks.get(name.as_str()).map(|r| r.leases.clone()).unwrap_or_default();
        let from_file = old.leases.iter().any(|l| l.mac == mac && !runtime.contains(l));
        if from_file {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "The static lease of {mac} on network {name} is declared in {}; change it there",
                    self.config_origin
                ),
            ));
        }
        let mut new = old.clone();
        match &lease {
            Some(l) => {
                network::check_lease(&old, l)?;
                if old.leases.contains(l) {
                    return self.network_info(&old, Source::Config);
                }
                new.leases.retain(|x| x.mac != mac);
                new.leases.push(l.clone());
            }
            None => {
                if !runtime.iter().any(|l| l.mac == mac) {
                    return Err(err(ErrorKind::NotFound, format!("Network {name} has no static lease for {mac}")));
                }
                new.leases.retain(|x| x.mac != mac);
            }
        }
        let kind = self.bridge_kind(&new.spec.bridge)?;
        self.ensure_dnsmasq(&new, kind).await?;
        let Some(r) = self.state.config_networks.get_mut(name.as_str()) else {
            let _ = self.ensure_dnsmasq(&old, kind).await;
            return Err(err(ErrorKind::Internal, format!("Network {name} was not set up from the config file")));
        };
        r.leases.retain(|x| x.mac != mac);
        r.leases.extend(lease.clone());
        if let Err(e) = self.store.save(&self.state) {
            if let Some(r) = self.state.config_networks.get_mut(name.as_str()) {
                r.leases = runtime;
            }
            let _ = self.ensure_dnsmasq(&old, kind).await;
            return Err(internal(e));
        }
        if let Some(d) = self.nets.config.iter_mut().find(|d| &d.spec.name == name) {
            *d = new.clone();
        }
        match &lease {
            Some(l) => log::info!("network {name}: static lease {mac} -> {}", l.ip),
            None => log::info!("network {name}: static lease of {mac} removed"),
        }
        self.network_info(&new, Source::Config)
    }

    pub async fn lease_del(&mut self, req: LeaseDel) -> Result<NetworkInfo, ApiError> {
        if self.network_decl(&req.network)?.1 == Source::Config {
            return self.config_lease_change(&req.network, req.mac, None).await;
        }
        let mut d = self.state_network(&req.network)?;
        let before = d.leases.len();
        d.leases.retain(|l| l.mac != req.mac);
        if d.leases.len() == before {
            return Err(err(
                ErrorKind::NotFound,
                format!("Network {} has no static lease for {}", req.network, req.mac),
            ));
        }
        self.change_network(d, false).await
    }

    pub async fn forward_add(&mut self, req: ForwardAdd) -> Result<NetworkInfo, ApiError> {
        let mut d = self.state_network(&req.network)?;
        let f = req.forward();
        if d.forwards.contains(&f) {
            return self.network_info(&d, Source::State);
        }
        network::check_forward(&d, &f)?;
        for (n, _) in self.network_decls() {
            if let Some(o) = n.forwards.iter().find(|o| o.proto == f.proto && o.host_port == f.host_port) {
                return Err(err(
                    ErrorKind::Conflict,
                    format!(
                        "{} port {} is already forwarded to {} (network {})",
                        f.proto, f.host_port, o.to, n.spec.name
                    ),
                ));
            }
        }
        self.tool("nft")?;
        let first = !d.needs_nft();
        d.forwards.push(f);
        if first {
            // Replies come back through the host: it forwards for this network from now on.
            let kind = self.bridge_kind(&d.spec.bridge)?;
            let mut undo = Vec::new();
            if let Err(e) = self.ensure_gateway(&mut d, kind, true, &mut undo).await {
                self.undo(undo).await;
                return Err(e);
            }
        }
        let info = self.change_network(d, true).await?;
        log::info!("network {}: forward {} {} -> {}", req.network, f.proto, f.host_port, f.to);
        Ok(info)
    }

    pub async fn forward_del(&mut self, req: ForwardDel) -> Result<NetworkInfo, ApiError> {
        let mut d = self.state_network(&req.network)?;
        let before = d.forwards.len();
        d.forwards.retain(|f| !(f.proto == req.proto && f.host_port == req.host_port));
        if d.forwards.len() == before {
            return Err(err(
                ErrorKind::NotFound,
                format!("Network {} has no forward of {} port {}", req.network, req.proto, req.host_port),
            ));
        }
        let info = self.change_network(d, true).await?;
        self.release_uplinks();
        Ok(info)
    }

    /// Re-applies every network at start (after bridges and ports): config networks first
    /// (resolved as recorded), then runtime ones. A failure is logged; the declaration
    /// stays and is retried by the supervisor.
    pub async fn restore_networks(&mut self, config: &Config) {
        let mut config_decls = Vec::new();
        let state_names: Vec<NetName> = self.state.networks.iter().map(|n| n.spec.name.clone()).collect();
        for nc in &config.networks {
            let spec = nc.spec();
            if state_names.contains(&spec.name) {
                log::warn!(
                    "network {}: declared in {} too; the config file's declaration is used",
                    spec.name,
                    self.config_origin
                );
                self.state.networks.retain(|n| n.spec.name != spec.name);
            }
            let Ok(kind) = self.bridge_kind(&spec.bridge) else {
                log::error!("network {} in {}: no bridge {}", spec.name, self.config_origin, spec.bridge);
                continue;
            };
            let recorded = self.state.config_networks.get(spec.name.as_str()).cloned();
            let subnet = match (network::fixed_subnet(&spec), &recorded) {
                (Some(c), _) => Some(c),
                (None, Some(r)) => Some(r.subnet),
                (None, None) => {
                    let taken: Vec<Ipv4Cidr> = match self.taken_subnets(Some(&spec.name)).await {
                        Ok(t) => t
                            .into_iter()
                            .map(|(c, _)| c)
                            .chain(config_decls.iter().map(|d: &NetworkDecl| d.subnet))
                            .collect(),
                        Err(e) => {
                            log::error!("network {}: {}", spec.name, e.message);
                            continue;
                        }
                    };
                    network::pick_auto(&taken)
                }
            };
            let Some(subnet) = subnet else {
                log::error!("network {}: no free subnet", spec.name);
                continue;
            };
            let mut decl = match network::resolve(&spec, subnet, kind, &self.nets.seed) {
                Ok(d) => d,
                Err(e) => {
                    log::error!("network {} in {}: {}", spec.name, self.config_origin, e.message);
                    continue;
                }
            };
            if let Some(r) = &recorded {
                decl.prior_forwarding = r.prior_forwarding;
            } else if network::fixed_subnet(&spec).is_some() {
                // A fixed subnet that collides with the host (not with ourselves): skipped.
                let gw = self.nl.link(&decl.interface(kind)).await.ok().flatten();
                let ours = match &gw {
                    Some(l) => host::addresses(&self.nl)
                        .await
                        .unwrap_or_default()
                        .iter()
                        .any(|a| a.index == l.index && a.ip == IpAddr::V4(decl.gateway)),
                    None => false,
                };
                if !ours {
                    if let Ok(t) = self.taken_subnets(Some(&spec.name)).await {
                        if let Some((_, what)) = t.iter().find(|(c, _)| !c.is_default() && c.overlaps(&subnet)) {
                            log::error!(
                                "network {} in {}: subnet {subnet} overlaps {what}; not set up",
                                spec.name,
                                self.config_origin
                            );
                            continue;
                        }
                    }
                }
            }
            for l in &nc.leases {
                if decl.leases.iter().any(|o| o.mac == l.mac) {
                    log::error!(
                        "network {} in {}: two leases for {}; the first is kept",
                        spec.name,
                        self.config_origin,
                        l.mac
                    );
                    continue;
                }
                match network::check_lease(&decl, l) {
                    Ok(()) => decl.leases.push(l.clone()),
                    Err(e) => {
                        log::error!("network {} in {}: lease {}: {}", spec.name, self.config_origin, l.mac, e.message)
                    }
                }
            }
            // Runtime leases of a config network (the file's own leases win on a MAC).
            for l in recorded.as_ref().map(|r| r.leases.as_slice()).unwrap_or_default() {
                if decl.leases.iter().any(|c| c.mac == l.mac) {
                    continue;
                }
                match network::check_lease(&decl, l) {
                    Ok(()) => decl.leases.push(l.clone()),
                    Err(e) => log::error!("network {}: runtime lease {}: {}", spec.name, l.mac, e.message),
                }
            }
            for f in &nc.forwards {
                let same = |o: &Forward| o.proto == f.proto && o.host_port == f.host_port;
                let taken = decl.forwards.iter().any(same)
                    || config_decls.iter().chain(self.state.networks.iter()).any(|n| n.forwards.iter().any(same));
                if taken {
                    log::error!(
                        "network {} in {}: {} port {} is forwarded twice; the first declaration is kept",
                        spec.name,
                        self.config_origin,
                        f.proto,
                        f.host_port
                    );
                    continue;
                }
                match network::check_forward(&decl, f) {
                    Ok(()) => decl.forwards.push(*f),
                    Err(e) => log::error!(
                        "network {} in {}: forward {}: {}",
                        spec.name,
                        self.config_origin,
                        f.host_port,
                        e.message
                    ),
                }
            }
            config_decls.push(decl);
        }
        self.nets.config = config_decls;
        let all: Vec<(NetworkDecl, bool)> = self
            .nets
            .config
            .iter()
            .map(|d| (d.clone(), false))
            .chain(self.state.networks.iter().map(|d| (d.clone(), true)))
            .collect();
        for (mut decl, in_state) in all {
            let name = decl.spec.name.clone();
            let Ok(kind) = self.bridge_kind(&decl.spec.bridge) else {
                log::error!("network {name}: no bridge {}", decl.spec.bridge);
                continue;
            };
            let mut undo = Vec::new();
            if let Err(e) = self.ensure_gateway(&mut decl, kind, in_state, &mut undo).await {
                log::error!("network {name}: {} (will retry)", e.message);
            }
            if let Err(e) = self.ensure_dnsmasq(&decl, kind).await {
                log::error!("network {name}: {} (will retry)", e.message);
            }
            if in_state {
                if let Some(d) = self.state.networks.iter_mut().find(|n| n.spec.name == name) {
                    d.prior_forwarding = decl.prior_forwarding;
                }
            } else {
                let leases =
                    self.state.config_networks.get(name.as_str()).map(|r| r.leases.clone()).unwrap_or_default();
                self.state.config_networks.insert(
                    name.to_string(),
                    ResolvedNet {
                        subnet: decl.subnet,
                        ipv6: decl.ipv6,
                        prior_forwarding: decl.prior_forwarding,
                        // Only those still in force (the file may have taken a MAC since).
                        leases: leases.into_iter().filter(|l| decl.leases.contains(l)).collect(),
                    },
                );
            }
            log::info!(
                "network {name}: {} on {} ({})",
                if in_state { "restored" } else { "set up (config)" },
                decl.interface(kind),
                decl.subnet
            );
        }
        let names: Vec<String> = self.nets.config.iter().map(|d| d.spec.name.to_string()).collect();
        self.state.config_networks.retain(|n, _| names.contains(n));
        // A table left by the previous daemon is replaced whole: never a duplicate rule.
        self.nets.expected_rules = self.nets.expected_rules.or(Some(0));
        if let Err(e) = self.apply_nft().await {
            log::error!("nftables: {} (will retry)", e.message);
        }
        if let Err(e) = self.store.save(&self.state) {
            log::error!("{}", crate::api::error_chain(&e));
        }
    }

    /// The periodic check: gateways (addresses removed by hand, a re-made interface),
    /// dnsmasqs that are not running, the table.
    async fn check_networks(&mut self) {
        let all: Vec<(NetworkDecl, bool)> =
            self.network_decls().map(|(d, s)| (d.clone(), s == Source::State)).collect();
        for (mut decl, in_state) in all {
            let Ok(kind) = self.bridge_kind(&decl.spec.bridge) else { continue };
            let mut undo = Vec::new();
            if let Err(e) = self.ensure_gateway(&mut decl, kind, in_state, &mut undo).await {
                log::warn!("network {}: {}", decl.spec.name, e.message);
            }
            for u in &undo {
                if let Undo::Addr(_, ip, len) = u {
                    log::warn!("network {}: address {ip}/{len} was missing; re-added", decl.spec.name);
                }
            }
            let down = self.nets.dnsmasq.get(decl.spec.name.as_str()).is_none_or(|(i, _)| *i.exited.borrow());
            if decl.needs_dnsmasq() && down {
                if let Err(e) = self.ensure_dnsmasq(&decl, kind).await {
                    log::error!("network {}: {}", decl.spec.name, e.message);
                }
            }
        }
        self.check_nft().await;
    }
}

/// Starts the networks' supervisor: it restarts dnsmasqs that exit, puts vmnetd's table
/// back when something removes it, and re-checks everything every 30 s.
pub fn spawn_supervisor(
    core: Arc<tokio::sync::Mutex<Core>>,
    tx: UnboundedSender<NetEvent>,
    rx: UnboundedReceiver<NetEvent>,
) {
    let tx2 = tx.clone();
    if let Err(e) = nft::watch(move || {
        let _ = tx2.send(NetEvent::NftChanged);
    }) {
        log::warn!("cannot listen for nftables changes ({e}); vmnetd's table is checked every 30 s only");
    }
    tokio::spawn(supervise(core, tx, rx));
}

async fn supervise(
    core: Arc<tokio::sync::Mutex<Core>>,
    tx: UnboundedSender<NetEvent>,
    mut rx: UnboundedReceiver<NetEvent>,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => core.lock().await.check_networks().await,
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                match ev {
                    NetEvent::NftChanged => {
                        // One check for a burst of changes (a ruleset reload is many).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        while let Ok(NetEvent::NftChanged) = rx.try_recv() {}
                        core.lock().await.check_nft().await;
                    }
                    NetEvent::DnsmasqExited(name, pid) => {
                        let mut c = core.lock().await;
                        let Some((inst, started)) = c.nets.dnsmasq.get(&name) else { continue };
                        if inst.pid != pid {
                            continue;
                        }
                        let soon = started.elapsed() < RESTART_BACKOFF;
                        c.nets.dnsmasq.remove(&name);
                        log::error!("network {name}: dnsmasq {pid} exited; restarting it{}", if soon { " in 5 s" } else { "" });
                        if soon {
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(RESTART_BACKOFF).await;
                                let _ = tx.send(NetEvent::RestartDnsmasq(name));
                            });
                        } else {
                            drop(c);
                            let _ = tx.send(NetEvent::RestartDnsmasq(name));
                        }
                    }
                    NetEvent::RestartDnsmasq(name) => {
                        let mut c = core.lock().await;
                        let Ok(n) = name.parse::<NetName>() else { continue };
                        let Ok((decl, _)) = c.network_decl(&n) else { continue };
                        let Ok(kind) = c.bridge_kind(&decl.spec.bridge) else { continue };
                        if c.nets.dnsmasq.contains_key(&name) {
                            continue;
                        }
                        if let Err(e) = c.ensure_dnsmasq(&decl, kind).await {
                            log::error!("network {name}: {} (retrying in 30 s)", e.message);
                        }
                    }
                }
            }
        }
    }
}
