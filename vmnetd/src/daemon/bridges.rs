//! Bridges and ports as declarations: validation, opening the edges, handing them to the
//! datapath, persistence, and re-attaching ports whose interface comes back.
//!
//! A port is declared once and stays declared: if its interface is missing (a TAP not yet
//! made, a NIC renamed), or its edge fails later (the interface was deleted and re-made), the
//! port is shown as `missing`/`down` and re-attached by [`Core::reconcile`] as soon as the
//! interface is there again. Adding or removing a port never touches the other ports.

use std::collections::HashSet;

use crate::api::{
    ApiError, BridgeDel, BridgeInfo, BridgeKind, BridgeRef, BridgeSpec, Counters, ErrorKind, FdbRow, FdbShowReq,
    Flushed, PortInfo, PortKind, PortListReq, PortRef, PortSpec, PortStats, Source, StatsReq, VhostInfo, VhostMode,
};
use crate::datapath::PortState;
use crate::ifname::IfName;
use crate::linuxbr::{self, KernelVlan};
use crate::netlink::LinkChange;
use crate::ports::{Edge, InternalPort, NetdevPort, VhostPort};
use crate::state::{BridgeDecl, PortDecl};
use crate::switch::{FdbConfig, PortConfig, SwitchConfig, VlanMode};
use crate::tap::{self, Policy, TapDecl};

use super::core::Core;

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

fn gone(e: crate::datapath::Gone) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

fn lb_err(e: linuxbr::Error) -> ApiError {
    ApiError::from_chain(e.kind(), &e)
}

fn internal<E: std::error::Error + 'static>(e: E) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

/// What `port list` shows for a declaration, before the live parts (counters, kernel VLANs,
/// vhost-user state) are filled in.
fn port_info_base(decl: &PortDecl, source: Source, state: String) -> PortInfo {
    PortInfo {
        bridge: decl.spec.bridge.clone(),
        name: decl.spec.name.clone(),
        kind: decl.spec.kind.clone(),
        vlan: decl.spec.vlan.clone(),
        macs: decl.spec.macs.clone(),
        lock_mac: decl.spec.lock_mac,
        ifname: port_ifname(&decl.spec),
        state,
        source,
        counters: None,
        kernel_vlans: None,
        vhost: None,
        external_ids: decl.spec.external_ids.clone(),
        creator: decl.creator,
    }
}

/// The kernel interface behind a port.
pub fn port_ifname(spec: &PortSpec) -> Option<IfName> {
    match &spec.kind {
        PortKind::Netdev { ifname } => Some(ifname.clone()),
        PortKind::Internal { ifname } => Some(ifname.clone().unwrap_or_else(|| spec.name.clone())),
        PortKind::VhostUser { .. } => None,
    }
}

/// What a port occupies that no other port may: its interface, or its socket.
fn port_resource(spec: &PortSpec) -> String {
    match (&spec.kind, port_ifname(spec)) {
        (PortKind::VhostUser { path, .. }, _) => format!("socket {}", path.display()),
        (_, Some(i)) => i.to_string(),
        (_, None) => String::new(),
    }
}

/// The interface of a netdev or internal port (vhost-user ports have none).
fn iface(spec: &PortSpec) -> Result<IfName, ApiError> {
    port_ifname(spec).ok_or_else(|| err(ErrorKind::InvalidArgument, format!("Port {} has no interface", spec.name)))
}

fn switch_config(spec: &BridgeSpec) -> SwitchConfig {
    let d = FdbConfig::default();
    SwitchConfig {
        fdb: FdbConfig {
            ageing: spec.ageing.map_or(d.ageing, |s| std::time::Duration::from_secs(u64::from(s))),
            max_entries: spec.max_macs.unwrap_or(d.max_entries),
        },
    }
}

/// Refuses to attach a port to an interface other than the one it was declared on (same
/// name, another device: the next VM's `vnetN`).
fn same_interface(decl: &PortDecl, link: &crate::netlink::Link) -> Result<(), ApiError> {
    match decl.attached {
        Some(a) if a.ifindex != link.index => Err(err(
            ErrorKind::Conflict,
            format!(
                "{} is another interface now (ifindex {}; port {} was declared on ifindex {}): not attached; \
                 remove the port if it is stale",
                link.name, link.index, decl.spec.name, a.ifindex
            ),
        )),
        _ => Ok(()),
    }
}

/// MTU of a vhost-user port: its guest's is not negotiated, and a guest with mergeable
/// buffers takes any frame, so none is enforced on the way in.
const VHOST_MTU: u32 = 65_000;

/// `USER[:GROUP]` to uid and gid (the group defaults to the user's primary group).
pub(crate) fn resolve_owner(spec: &str) -> Result<(u32, u32), ApiError> {
    let invalid = |e: crate::users::Error| ApiError::from_chain(ErrorKind::InvalidArgument, &e);
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = crate::users::resolve_user(u).map_err(invalid)?;
    let gid = match g {
        Some(g) => crate::users::resolve_group(g).map_err(invalid)?.id,
        None => crate::users::primary_group(user.id).map_or(user.id, |p| p.id),
    };
    Ok((user.id, gid))
}

fn validate_bridge(spec: &BridgeSpec) -> Result<(), ApiError> {
    if spec.max_macs == Some(0) {
        return Err(err(ErrorKind::InvalidArgument, "--max-macs must be at least 1"));
    }
    if spec.ageing == Some(0) {
        return Err(err(ErrorKind::InvalidArgument, "--ageing must be at least 1 second"));
    }
    Ok(())
}

fn validate_port(spec: &PortSpec) -> Result<(), ApiError> {
    crate::api::validate_external_ids(&spec.external_ids)?;
    if let VlanMode::Trunk { vlans, native } = &spec.vlan {
        if vlans.is_empty() && native.is_none() {
            return Err(err(ErrorKind::InvalidArgument, "A trunk must carry at least one VLAN"));
        }
    }
    if let Some(m) = spec.macs.iter().find(|m| !m.is_unicast()) {
        return Err(err(ErrorKind::InvalidArgument, format!("MAC {m} is not a unicast address")));
    }
    if spec.lock_mac && spec.macs.is_empty() {
        return Err(err(ErrorKind::InvalidArgument, "--lock-mac needs the port's address (--mac)"));
    }
    if let PortKind::VhostUser { queues, path, .. } = &spec.kind {
        if !(1..=vmnetd_vhost::device::MAX_QUEUE_PAIRS).contains(queues) {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("--queues {queues} is out of range (1-{})", vmnetd_vhost::device::MAX_QUEUE_PAIRS),
            ));
        }
        if path.as_os_str().is_empty() {
            return Err(err(ErrorKind::InvalidArgument, "--vhost-user needs a socket path"));
        }
    }
    Ok(())
}

impl Core {
    pub(crate) fn bridge_decl(&self, name: &str) -> Option<(&BridgeDecl, Source)> {
        self.config_bridges
            .iter()
            .map(|b| (b, Source::Config))
            .chain(self.state.bridges.iter().map(|b| (b, Source::State)))
            .find(|(b, _)| b.spec.name.as_str() == name)
    }

    pub(crate) fn port_decls(&self) -> impl Iterator<Item = (&PortDecl, Source)> {
        self.config_ports.iter().map(|p| (p, Source::Config)).chain(self.state.ports.iter().map(|p| (p, Source::State)))
    }

    fn port_decl(&self, bridge: &str, name: &str) -> Option<(&PortDecl, Source)> {
        self.port_decls().find(|(p, _)| p.spec.bridge.as_str() == bridge && p.spec.name.as_str() == name)
    }

    /// Re-creates the declared bridges and ports (config first, then state). Failures are
    /// logged and leave the declaration in place, to be retried by [`Core::reconcile`].
    pub async fn restore_bridges(&mut self, config: &crate::config::Config) {
        for spec in &config.bridges {
            self.config_bridges.push(BridgeDecl { spec: spec.clone(), created: false });
        }
        let names: HashSet<String> = self.config_bridges.iter().map(|b| b.spec.name.to_string()).collect();
        let origin = self.config_origin.clone();
        self.state.bridges.retain(|b| {
            let clash = names.contains(b.spec.name.as_str());
            if clash {
                log::warn!("bridge {}: declared in {origin} too; the config file's declaration is used", b.spec.name);
            }
            !clash
        });
        let bridges: Vec<BridgeSpec> =
            self.config_bridges.iter().chain(&self.state.bridges).map(|b| b.spec.clone()).collect();
        for spec in bridges {
            match self.start_bridge(&spec).await {
                Ok(true) => {
                    // A kernel bridge that vanished (a reboot) was made again: it is ours.
                    for b in self.config_bridges.iter_mut().chain(self.state.bridges.iter_mut()) {
                        if b.spec.name == spec.name {
                            b.created = true;
                        }
                    }
                    log::info!("bridge {}: created", spec.name);
                }
                Ok(false) => {}
                Err(e) => log::error!("bridge {}: {}", spec.name, e.message),
            }
        }
        for spec in &config.ports {
            if self.bridge_decl(spec.bridge.as_str()).is_none() {
                log::error!("port {} in {}: no bridge {}", spec.name, self.config_origin, spec.bridge);
                continue;
            }
            self.config_ports.push(PortDecl::new(spec.clone(), false));
        }
        let keys: HashSet<(String, String)> =
            self.config_ports.iter().map(|p| (p.spec.bridge.to_string(), p.spec.name.to_string())).collect();
        self.state.ports.retain(|p| !keys.contains(&(p.spec.bridge.to_string(), p.spec.name.to_string())));
        let ports: Vec<PortDecl> = self.port_decls().map(|(p, _)| p.clone()).collect();
        for decl in ports {
            let (spec, created) = (&decl.spec, decl.created);
            match self.attach(&decl, Policy::Restore).await {
                Ok(made) => {
                    if made && !created {
                        self.mark_port_created(spec);
                    }
                    log::info!("port {} of {}: attached", spec.name, spec.bridge);
                }
                Err(e) => log::warn!("port {} of {}: {} (will retry)", spec.name, spec.bridge, e.message),
            }
        }
        if let Err(e) = self.store.save(&self.state) {
            log::error!("{}", crate::api::error_chain(&e));
        }
    }

    fn mark_port_created(&mut self, spec: &PortSpec) {
        for p in self.config_ports.iter_mut().chain(self.state.ports.iter_mut()) {
            if p.spec.bridge == spec.bridge && p.spec.name == spec.name {
                p.created = true;
            }
        }
    }

    /// Makes a declared bridge exist (in the datapath or the kernel). Returns whether a
    /// kernel bridge was created now (rather than adopted).
    async fn start_bridge(&mut self, spec: &BridgeSpec) -> Result<bool, ApiError> {
        match spec.kind {
            BridgeKind::Builtin => {
                let (name, cfg) = (spec.name.to_string(), switch_config(spec));
                self.dp
                    .call(move |dp| {
                        if dp.bridge_index(&name).is_none() {
                            dp.add_bridge(&name, cfg);
                        }
                    })
                    .await
                    .map_err(gone)?;
                Ok(false)
            }
            BridgeKind::Linux => {
                let (_, created) = linuxbr::create_or_adopt(&self.nl, spec).await.map_err(lb_err)?;
                Ok(created)
            }
        }
    }

    fn bridge_kind(&self, name: &IfName) -> Option<BridgeKind> {
        self.bridge_decl(name.as_str()).map(|(b, _)| b.spec.kind)
    }

    pub async fn bridge_add(&mut self, spec: BridgeSpec) -> Result<BridgeInfo, ApiError> {
        validate_bridge(&spec)?;
        if let Some((existing, source)) = self.bridge_decl(spec.name.as_str()) {
            if existing.spec == spec {
                return self.bridge_info(&existing.clone(), source).await;
            }
            return Err(err(ErrorKind::Conflict, format!("Bridge {} already exists with other settings", spec.name)));
        }
        let created = self.start_bridge(&spec).await?;
        let decl = BridgeDecl { spec: spec.clone(), created: created || spec.kind == BridgeKind::Builtin };
        self.state.bridges.push(decl.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.bridges.pop();
            self.stop_bridge(&decl).await;
            return Err(internal(e));
        }
        log::info!("bridge {} ({}): {}", spec.name, spec.kind, if decl.created { "added" } else { "adopted" });
        self.bridge_info(&decl, Source::State).await
    }

    pub async fn bridge_del(&mut self, req: BridgeDel) -> Result<BridgeInfo, ApiError> {
        let Some((decl, source)) = self.bridge_decl(req.name.as_str()) else {
            return Err(err(ErrorKind::NotFound, format!("No bridge {}", req.name)));
        };
        if source == Source::Config {
            return Err(err(
                ErrorKind::Conflict,
                format!("Bridge {} is declared in {}; remove it there", req.name, self.config_origin),
            ));
        }
        let decl = decl.clone();
        let info = self.bridge_info(&decl, source).await?;
        let ports: Vec<PortSpec> =
            self.port_decls().filter(|(p, _)| p.spec.bridge == req.name).map(|(p, _)| p.spec.clone()).collect();
        if !ports.is_empty() && !req.force {
            return Err(err(
                ErrorKind::Conflict,
                format!("Bridge {} has {} port(s); remove them first or add --force", req.name, ports.len()),
            ));
        }
        if self.config_ports.iter().any(|p| p.spec.bridge == req.name) {
            return Err(err(
                ErrorKind::Conflict,
                format!("Bridge {} has ports declared in {}", req.name, self.config_origin),
            ));
        }
        for p in ports {
            self.port_del(PortRef { bridge: p.bridge, name: p.name }).await?;
        }
        self.stop_bridge(&decl).await;
        self.state.bridges.retain(|b| b.spec.name != req.name);
        self.store.save(&self.state).map_err(internal)?;
        log::info!("bridge {}: removed", req.name);
        Ok(info)
    }

    /// Takes a bridge away: out of the datapath, or (a kernel bridge vmnetd created) deleted.
    /// A Linux bridge vmnetd adopted stays.
    async fn stop_bridge(&self, decl: &BridgeDecl) {
        let name = decl.spec.name.to_string();
        match decl.spec.kind {
            BridgeKind::Builtin => {
                let _ = self.dp.call(move |dp| dp.remove_bridge(&name).map(drop)).await;
            }
            BridgeKind::Linux if decl.created => {
                if let Ok(Some(l)) = self.nl.link(&decl.spec.name).await {
                    if let Err(e) = self.nl.delete_link(l.index).await {
                        log::warn!("bridge {name}: cannot delete it: {}", crate::api::error_chain(&e));
                    }
                }
            }
            BridgeKind::Linux => log::info!("bridge {name}: adopted, so left in place"),
        }
    }

    async fn bridge_info(&self, decl: &BridgeDecl, source: Source) -> Result<BridgeInfo, ApiError> {
        let name = decl.spec.name.to_string();
        let fdb_entries = self
            .dp
            .call(move |dp| {
                let now = dp.now();
                dp.bridge(&name).map_or(0, |b| b.switch.fdb().entries(now).count())
            })
            .await
            .map_err(gone)?;
        let cfg = switch_config(&decl.spec);
        Ok(BridgeInfo {
            name: decl.spec.name.clone(),
            kind: decl.spec.kind,
            ports: self.port_decls().filter(|(p, _)| p.spec.bridge == decl.spec.name).count(),
            fdb_entries,
            ageing: cfg.fdb.ageing.as_secs() as u32,
            max_macs: cfg.fdb.max_entries,
            source,
            created: decl.created,
        })
    }

    pub async fn bridge_list(&self) -> Result<Vec<BridgeInfo>, ApiError> {
        let decls: Vec<(BridgeDecl, Source)> = self
            .config_bridges
            .iter()
            .map(|b| (b.clone(), Source::Config))
            .chain(self.state.bridges.iter().map(|b| (b.clone(), Source::State)))
            .collect();
        let mut out = Vec::new();
        for (d, s) in decls {
            out.push(self.bridge_info(&d, s).await?);
        }
        Ok(out)
    }

    /// Opens a port's edge and hands it to the datapath. Returns whether vmnetd created the
    /// kernel device (an internal TAP).
    async fn attach(&self, decl: &PortDecl, policy: Policy) -> Result<bool, ApiError> {
        let spec = &decl.spec;
        if self.bridge_kind(&spec.bridge) == Some(BridgeKind::Linux) {
            self.attach_linux(decl).await?;
            return Ok(false);
        }
        let (edge, mtu, created) = self.open_edge(decl, policy).await?;
        let cfg = PortConfig {
            mode: spec.vlan.clone(),
            mtu,
            macs: spec.macs.clone(),
            lock_macs: spec.lock_mac,
            ..Default::default()
        };
        let (bridge, name) = (spec.bridge.to_string(), spec.name.to_string());
        let res = self
            .dp
            .call(move |dp| {
                if dp.bridge(&bridge).and_then(|b| b.port_id(&name)).is_some() {
                    dp.replace_edge(&bridge, &name, edge)
                } else {
                    dp.add_port(&bridge, &name, edge, cfg).map(drop)
                }
            })
            .await
            .map_err(gone)?;
        res.map_err(|e| {
            ApiError::new(ErrorKind::Internal, format!("Cannot add port {} to the datapath: {e}", spec.name))
        })?;
        Ok(created)
    }

    /// Enslaves a netdev to a Linux bridge with its VLANs. When the port needs VLANs and the
    /// kernel cannot filter them, refuses before changing anything; a VLAN step that fails
    /// after enslaving releases the port again.
    async fn attach_linux(&self, decl: &PortDecl) -> Result<(), ApiError> {
        let spec = &decl.spec;
        let ifname =
            match &spec.kind {
                PortKind::Netdev { ifname } => ifname,
                PortKind::Internal { .. } => return Err(err(
                    ErrorKind::Unsupported,
                    "Internal ports belong to built-in bridges; on a Linux bridge, give the bridge itself an address",
                )),
                PortKind::VhostUser { .. } => {
                    return Err(err(
                        ErrorKind::Unsupported,
                        "vhost-user ports need a built-in bridge (the kernel bridge has no vhost-user backend here)",
                    ))
                }
            };
        let br = self
            .nl
            .link(&spec.bridge)
            .await
            .map_err(internal)?
            .ok_or_else(|| err(ErrorKind::NotFound, format!("Linux bridge {} does not exist", spec.bridge)))?;
        let link = self
            .nl
            .link(ifname)
            .await
            .map_err(internal)?
            .ok_or_else(|| err(ErrorKind::NotFound, format!("No interface {ifname}")))?;
        if link.name == "lo" || link.index == br.index {
            return Err(err(ErrorKind::InvalidArgument, format!("{ifname} cannot be a port of {}", spec.bridge)));
        }
        same_interface(decl, &link)?;
        let enslaved = link.controller == Some(br.index);
        if let (false, Some(c)) = (enslaved, link.controller) {
            let owner = self.nl.link_by_index(c).await.ok().flatten().map_or(c.to_string(), |l| l.name);
            return Err(lb_err(linuxbr::Error::EnslavedElsewhere { port: ifname.clone(), owner }));
        }
        let filtering = linuxbr::filtering_enabled(&self.nl, br.index).await.map_err(lb_err)?;
        let needs_vlans = spec.vlan != VlanMode::default();
        if needs_vlans {
            linuxbr::ensure_filtering(&self.nl, &br, ifname, &spec.vlan).await.map_err(lb_err)?;
        }
        if !enslaved {
            linuxbr::enslave(&self.nl, &link, br.index).await.map_err(lb_err)?;
        }
        if needs_vlans || filtering {
            if let Err(e) = linuxbr::apply_vlans(&self.nl, ifname, link.index, &spec.vlan).await {
                if !enslaved {
                    let _ = linuxbr::release(&self.nl, link.index).await;
                }
                return Err(lb_err(e));
            }
        }
        Ok(())
    }

    /// Opens the I/O edge of a port: an AF_PACKET socket on a netdev, or the TAP of an
    /// internal port (created if missing). Returns the edge, the interface MTU, and whether
    /// the TAP was created now.
    async fn open_edge(&self, decl: &PortDecl, policy: Policy) -> Result<(Edge, u32, bool), ApiError> {
        let spec = &decl.spec;
        if let PortKind::VhostUser { path, mode, owner, queues } = &spec.kind {
            return self
                .open_vhost(spec, path, *mode, owner.as_deref(), *queues, decl.creator)
                .map(|e| (e, VHOST_MTU, false));
        }
        let ifname = iface(spec)?;
        match &spec.kind {
            PortKind::VhostUser { .. } => unreachable!("handled above"),
            PortKind::Netdev { .. } => {
                let link = self
                    .nl
                    .link(&ifname)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("No interface {ifname}")))?;
                if link.name == "lo" {
                    return Err(err(ErrorKind::InvalidArgument, "The loopback interface cannot be a bridge port"));
                }
                same_interface(decl, &link)?;
                if let Some(c) = link.controller {
                    let owner = self.nl.link_by_index(c).await.ok().flatten().map_or(c.to_string(), |l| l.name);
                    return Err(err(
                        ErrorKind::Conflict,
                        format!("{ifname} is already a port of kernel device {owner}; release it first (ip link set {ifname} nomaster)"),
                    ));
                }
                if !link.up {
                    self.nl
                        .set_link(link.index, &LinkChange { up: Some(true), ..Default::default() })
                        .await
                        .map_err(internal)?;
                }
                let port = NetdevPort::open(ifname.clone(), link.index).map_err(|e| {
                    err(ErrorKind::Internal, format!("Cannot open an AF_PACKET socket on {ifname}: {e}"))
                })?;
                Ok((Edge::Netdev(port), link.mtu.unwrap_or(1500), false))
            }
            PortKind::Internal { .. } => {
                let decl = TapDecl {
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
                if let Some(link) = self.nl.link(&ifname).await.map_err(internal)? {
                    if policy == Policy::Declare && !tap::is_ours(None, &link) {
                        return Err(err(
                            ErrorKind::Conflict,
                            format!("{ifname} exists already; an internal port needs a new interface name (--ifname)"),
                        ));
                    }
                }
                let outcome = tap::ensure(&self.nl, &decl, Policy::Restore)
                    .await
                    .map_err(|e| ApiError::from_chain(e.kind(), &e))?;
                let port =
                    InternalPort::open(ifname.clone()).map_err(|e| ApiError::from_chain(ErrorKind::Internal, &e))?;
                let mtu = self.nl.link(&ifname).await.ok().flatten().and_then(|l| l.mtu).unwrap_or(1500);
                Ok((Edge::Internal(port), mtu, outcome == tap::Outcome::Created))
            }
        }
    }

    /// The socket path of a vhost-user port: relative paths are in the run dir.
    pub(crate) fn vhost_path(&self, path: &std::path::Path) -> std::path::PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.paths.run_dir.join(path)
        }
    }

    /// A spec with its socket path made absolute (to compare ports).
    fn resolved(&self, spec: &PortSpec) -> PortSpec {
        let mut s = spec.clone();
        if let PortKind::VhostUser { path, .. } = &mut s.kind {
            *path = self.vhost_path(path);
        }
        s
    }

    /// The identity a new netdev port is bound to: the interface's index, when it is a TAP
    /// vmnetd does not declare (libvirt's `vnetN`, a TAP made by hand). NICs, veths and
    /// vmnetd's own TAPs (re-made by vmnetd after a reboot) are followed by name.
    async fn identity(&self, spec: &PortSpec) -> Result<Option<crate::state::Attached>, ApiError> {
        let PortKind::Netdev { ifname } = &spec.kind else { return Ok(None) };
        if self.config_taps.iter().chain(&self.state.taps).any(|t| &t.name == ifname) {
            return Ok(None);
        }
        Ok(match self.nl.link(ifname).await.map_err(internal)? {
            Some(l) if l.is_tun() => Some(crate::state::Attached { ifindex: l.index }),
            _ => None,
        })
    }

    /// Starts a vhost-user port's device and socket.
    fn open_vhost(
        &self,
        spec: &PortSpec,
        path: &std::path::Path,
        mode: VhostMode,
        owner: Option<&str>,
        queues: u16,
        creator: Option<u32>,
    ) -> Result<Edge, ApiError> {
        let path = self.vhost_path(path);
        let owner = owner.map(resolve_owner).transpose()?;
        if mode == VhostMode::Server {
            // A live socket there belongs to someone (a frontend in server mode, say).
            if vmnetd_vhost::server::listening(&path) {
                return Err(err(
                    ErrorKind::Conflict,
                    format!(
                        "{} is in use by another process (is the frontend listening there? then use --mode client)",
                        path.display()
                    ),
                ));
            }
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
        Ok(Edge::Vhost(VhostPort::new(shared, server)))
    }

    pub async fn port_add(&mut self, spec: PortSpec, caller: &super::authz::Caller) -> Result<PortInfo, ApiError> {
        validate_port(&spec)?;
        if self.bridge_decl(spec.bridge.as_str()).is_none() {
            return Err(err(ErrorKind::NotFound, format!("No bridge {}", spec.bridge)));
        }
        if let Some((existing, source)) = self.port_decl(spec.bridge.as_str(), spec.name.as_str()) {
            if existing.spec == spec {
                let d = existing.clone();
                return self.port_info(&d, source).await;
            }
            return Err(err(
                ErrorKind::Conflict,
                format!("Bridge {} already has a port {} with other settings", spec.bridge, spec.name),
            ));
        }
        let res = port_resource(&self.resolved(&spec));
        if let Some((other, _)) = self.port_decls().find(|(p, _)| port_resource(&self.resolved(&p.spec)) == res) {
            return Err(err(
                ErrorKind::Conflict,
                format!("{res} is already port {} of bridge {}", other.spec.name, other.spec.bridge),
            ));
        }
        let mut decl = PortDecl::new(spec.clone(), false);
        decl.creator = (!caller.is_root()).then_some(caller.uid);
        decl.attached = self.identity(&spec).await?;
        decl.created = self.attach(&decl, Policy::Declare).await?;
        self.state.ports.push(decl.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.ports.pop();
            self.detach(&spec, decl.created).await;
            return Err(internal(e));
        }
        log::info!("port {} of {}: added ({}, {})", spec.name, spec.bridge, spec.kind.type_name(), spec.vlan);
        self.port_info(&decl, Source::State).await
    }

    /// Takes a port out of the datapath; deletes the TAP of an internal port vmnetd made.
    /// A Linux bridge port is released (`ip link set PORT nomaster`).
    async fn detach(&self, spec: &PortSpec, created: bool) {
        if self.bridge_kind(&spec.bridge) == Some(BridgeKind::Linux) {
            let Some(ifname) = port_ifname(spec) else { return };
            if let (Ok(Some(br)), Ok(Some(link))) = (self.nl.link(&spec.bridge).await, self.nl.link(&ifname).await) {
                if link.controller == Some(br.index) {
                    if let Err(e) = linuxbr::release(&self.nl, link.index).await {
                        log::warn!("port {}: {}", spec.name, crate::api::error_chain(&e));
                    }
                }
            }
            return;
        }
        let (bridge, name) = (spec.bridge.to_string(), spec.name.to_string());
        let removed = self.dp.call(move |dp| dp.remove_port(&bridge, &name)).await.ok().flatten();
        match (removed, created) {
            (Some(port), true) => {
                if let Edge::Internal(tap) = &port.edge {
                    // Works wherever the TAP is now (even moved into another namespace):
                    // without persistence, the device goes away with our queue.
                    if let Err(e) = tap.unpersist() {
                        log::warn!("port {}: cannot delete its TAP: {e}", spec.name);
                    }
                }
            }
            (Some(port), false) => {
                // A vhost-user port stops its connection thread (a short wait): not here.
                let _ = tokio::task::spawn_blocking(move || drop(port)).await;
            }
            (None, true) => {
                // Not attached (missing): delete by name if it is here.
                if let Some(ifname) = port_ifname(spec) {
                    let _ = tap::remove(&self.nl, &ifname, None, true).await;
                }
            }
            (None, false) => {}
        }
    }

    pub async fn port_del(&mut self, req: PortRef) -> Result<PortInfo, ApiError> {
        let Some((decl, source)) = self.port_decl(req.bridge.as_str(), req.name.as_str()) else {
            return Err(err(ErrorKind::NotFound, format!("Bridge {} has no port {}", req.bridge, req.name)));
        };
        if source == Source::Config {
            return Err(err(
                ErrorKind::Conflict,
                format!("Port {} is declared in {}; remove it there", req.name, self.config_origin),
            ));
        }
        let decl = decl.clone();
        let info = self.port_info(&decl, source).await?;
        self.detach(&decl.spec, decl.created).await;
        self.state.ports.retain(|p| !(p.spec.bridge == req.bridge && p.spec.name == req.name));
        self.store.save(&self.state).map_err(internal)?;
        log::info!("port {} of {}: removed", req.name, req.bridge);
        Ok(info)
    }

    /// A Linux bridge port as the kernel has it: enslaved or not, and its VLANs.
    async fn linux_port_state(&self, spec: &PortSpec) -> (String, Option<Vec<KernelVlan>>) {
        let Some(ifname) = port_ifname(spec) else {
            return ("missing: no interface".into(), None);
        };
        let Ok(Some(br)) = self.nl.link(&spec.bridge).await else {
            return (format!("missing: Linux bridge {} does not exist", spec.bridge), None);
        };
        let Ok(Some(link)) = self.nl.link(&ifname).await else {
            return (format!("missing: no interface {ifname}"), None);
        };
        if link.controller != Some(br.index) {
            return (format!("detached: {ifname} is not a port of {}", spec.bridge), None);
        }
        if !linuxbr::filtering_enabled(&self.nl, br.index).await.unwrap_or(false) {
            return ("up".into(), None);
        }
        let vlans = linuxbr::port_vlans(&self.nl, link.index).await.unwrap_or_default();
        let drift = vlans != linuxbr::desired_vlans(&spec.vlan);
        (if drift { "up (vlan drift)".into() } else { "up".into() }, Some(vlans))
    }

    /// Why a port bound to an interface's identity is not attached although an interface of
    /// that name exists: it is another device now.
    async fn identity_changed(&self, decl: &PortDecl) -> Option<String> {
        let a = decl.attached?;
        let name = port_ifname(&decl.spec)?;
        let link = self.nl.link(&name).await.ok().flatten()?;
        (link.index != a.ifindex).then(|| {
            format!(
                "{name} is another interface now (ifindex {}; the port was declared on ifindex {})",
                link.index, a.ifindex
            )
        })
    }

    async fn port_info(&self, decl: &PortDecl, source: Source) -> Result<PortInfo, ApiError> {
        if self.bridge_kind(&decl.spec.bridge) == Some(BridgeKind::Linux) {
            let (mut state, kernel_vlans) = self.linux_port_state(&decl.spec).await;
            if state.starts_with("detached") {
                if let Some(why) = self.identity_changed(decl).await {
                    state = format!("detached: {why}");
                }
            }
            return Ok(PortInfo { kernel_vlans, ..port_info_base(decl, source, state) });
        }
        let (bridge, name) = (decl.spec.bridge.to_string(), decl.spec.name.to_string());
        let live = self
            .dp
            .call(move |dp| {
                let b = dp.bridge(&bridge)?;
                let id = b.port_id(&name)?;
                let port = b.port(id)?;
                Some((port.state.clone(), b.switch.counters(id).map(Counters::from), port.vhost().cloned()))
            })
            .await
            .map_err(gone)?;
        let mut vhost = None;
        let (state, counters) = match live {
            Some((PortState::Up, c, Some(dev))) => {
                let info = self.vhost_info(&decl.spec, &dev);
                let st = match (info.connected, info.queue_pairs_active, &info.needs_reset) {
                    (false, _, _) => "waiting for frontend".to_owned(),
                    (true, _, Some(why)) => format!("needs reset: {why}"),
                    (true, 0, None) => "connected, setting up".to_owned(),
                    (true, n, None) => format!("up ({n}/{} queue pairs)", info.queue_pairs_max),
                };
                vhost = Some(info);
                (st, c)
            }
            Some((PortState::Up, c, None)) => ("up".to_owned(), c),
            Some((PortState::Down(why), c, _)) => match self.identity_changed(decl).await {
                Some(changed) => (format!("down: {changed}"), c),
                None => (format!("down: {why}"), c),
            },
            None => match self.identity_changed(decl).await {
                Some(why) => (format!("missing: {why}"), None),
                None => (format!("missing: {} not attached", port_resource(&decl.spec)), None),
            },
        };
        Ok(PortInfo { counters, vhost, ..port_info_base(decl, source, state) })
    }

    fn vhost_info(&self, spec: &PortSpec, dev: &vmnetd_vhost::device::Shared) -> VhostInfo {
        let st = dev.lock();
        let (path, mode) = match &spec.kind {
            PortKind::VhostUser { path, mode, .. } => (self.vhost_path(path), *mode),
            _ => (Default::default(), VhostMode::Server),
        };
        VhostInfo {
            socket: path.display().to_string(),
            mode,
            connected: st.connected,
            features: vmnetd_vhost::virtio_net::features::names(st.acked_features)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            queue_pairs_active: st.active_pair_indices().count(),
            queue_pairs_max: dev.queue_pairs,
            guest_mac: st.guest_mac.map(crate::switch::MacAddr),
            needs_reset: st.needs_reset(),
        }
    }

    pub async fn port_list(&self, req: PortListReq) -> Result<Vec<PortInfo>, ApiError> {
        if let Some(b) = &req.bridge {
            if self.bridge_decl(b.as_str()).is_none() {
                return Err(err(ErrorKind::NotFound, format!("No bridge {b}")));
            }
        }
        let decls: Vec<(PortDecl, Source)> = self
            .port_decls()
            .filter(|(p, _)| req.bridge.as_ref().is_none_or(|b| &p.spec.bridge == b))
            .map(|(p, s)| (p.clone(), s))
            .collect();
        let mut out = Vec::new();
        for (d, s) in decls {
            out.push(self.port_info(&d, s).await?);
        }
        Ok(out)
    }

    fn builtin(&self, bridge: &IfName) -> Result<(), ApiError> {
        match self.bridge_decl(bridge.as_str()) {
            None => Err(err(ErrorKind::NotFound, format!("No bridge {bridge}"))),
            Some((b, _)) if b.spec.kind != BridgeKind::Builtin => Err(err(
                ErrorKind::Unsupported,
                format!("{bridge} is a Linux bridge; see `bridge fdb show br {bridge}`"),
            )),
            Some(_) => Ok(()),
        }
    }

    pub async fn fdb_show(&self, req: FdbShowReq) -> Result<Vec<FdbRow>, ApiError> {
        self.builtin(&req.bridge)?;
        let name = req.bridge.to_string();
        let mut rows = self
            .dp
            .call(move |dp| {
                let now = dp.now();
                let Some(b) = dp.bridge(&name) else {
                    return Vec::new();
                };
                b.switch
                    .fdb()
                    .entries(now)
                    .filter(|e| req.vlan.is_none_or(|v| v == e.vlan))
                    .map(|e| FdbRow {
                        vlan: e.vlan,
                        mac: e.mac,
                        port: b.port_name(e.port).to_owned(),
                        age_secs: e.age.as_secs(),
                        is_static: e.is_static,
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(gone)?;
        rows.sort_by_key(|r| (r.vlan, r.mac));
        Ok(rows)
    }

    pub async fn fdb_flush(&self, req: BridgeRef) -> Result<Flushed, ApiError> {
        self.builtin(&req.bridge)?;
        let name = req.bridge.to_string();
        let flushed =
            self.dp.call(move |dp| dp.bridge_mut(&name).map_or(0, |b| b.switch.flush_fdb())).await.map_err(gone)?;
        Ok(Flushed { flushed })
    }

    pub async fn stats(&self, req: StatsReq) -> Result<Vec<PortStats>, ApiError> {
        if let Some(b) = &req.bridge {
            if self.bridge_decl(b.as_str()).is_none() {
                return Err(err(ErrorKind::NotFound, format!("No bridge {b}")));
            }
            if let Some(p) = &req.port {
                if self.port_decl(b.as_str(), p.as_str()).is_none() {
                    return Err(err(ErrorKind::NotFound, format!("Bridge {b} has no port {p}")));
                }
            }
        }
        let decls: Vec<PortSpec> = self
            .port_decls()
            .filter(|(p, _)| req.bridge.as_ref().is_none_or(|b| &p.spec.bridge == b))
            .filter(|(p, _)| req.port.as_ref().is_none_or(|n| &p.spec.name == n))
            .map(|(p, _)| p.spec.clone())
            .collect();
        let wanted: Vec<(String, String)> = decls.iter().map(|p| (p.bridge.to_string(), p.name.to_string())).collect();
        let counters = self
            .dp
            .call(move |dp| {
                wanted
                    .iter()
                    .map(|(b, p)| {
                        dp.bridge(b)
                            .and_then(|br| br.port_id(p).and_then(|id| br.switch.counters(id)))
                            .map(Counters::from)
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(gone)?;
        Ok(decls
            .into_iter()
            .zip(counters)
            .map(|(p, counters)| PortStats { bridge: p.bridge, port: p.name, counters })
            .collect())
    }

    /// Starts a capture on a built-in bridge port.
    pub async fn start_capture(
        &self,
        req: &crate::api::CaptureReq,
        sink: crate::datapath::capture::Sink,
        caller: &super::authz::Caller,
    ) -> Result<(), ApiError> {
        self.builtin(&req.bridge)?;
        if self.port_decl(req.bridge.as_str(), req.port.as_str()).is_none() {
            return Err(err(ErrorKind::NotFound, format!("Bridge {} has no port {}", req.bridge, req.port)));
        }
        self.own_existing_port(req.bridge.as_str(), req.port.as_str(), caller)?;
        let (b, p) = (req.bridge.to_string(), req.port.to_string());
        let ok = self.dp.call(move |dp| dp.add_capture(&b, &p, sink)).await.map_err(gone)?;
        if !ok {
            return Err(err(ErrorKind::NotFound, format!("Port {} is not attached (missing interface)", req.port)));
        }
        Ok(())
    }

    /// Re-attaches ports whose edge failed or whose interface was missing. Called
    /// periodically; quiet when there is nothing to do.
    pub async fn reconcile(&mut self) {
        let Ok(present) = self
            .dp
            .call(|dp| {
                let mut up = HashSet::new();
                for b in dp.bridges() {
                    for p in b.ports.iter().flatten() {
                        if p.state == PortState::Up {
                            up.insert((b.name.clone(), p.name.clone()));
                        }
                    }
                }
                up
            })
            .await
        else {
            return;
        };
        let todo: Vec<PortDecl> = self
            .port_decls()
            .filter(|(p, _)| {
                self.bridge_decl(p.spec.bridge.as_str()).is_some_and(|(b, _)| b.spec.kind == BridgeKind::Builtin)
                    && !present.contains(&(p.spec.bridge.to_string(), p.spec.name.to_string()))
            })
            .map(|(p, _)| p.clone())
            .collect();
        // Linux bridge ports: re-enslave an interface that came back (a TAP re-made after a
        // reboot, a libvirt vnetN) and put its VLANs back if they drifted.
        let linux: Vec<PortDecl> = self
            .port_decls()
            .filter(|(p, _)| self.bridge_kind(&p.spec.bridge) == Some(BridgeKind::Linux))
            .map(|(p, _)| p.clone())
            .collect();
        for decl in linux {
            let spec = &decl.spec;
            let (state, _) = self.linux_port_state(spec).await;
            if state.starts_with("detached") || state.ends_with("(vlan drift)") {
                match self.attach_linux(&decl).await {
                    Ok(()) => log::info!("port {} of {}: re-attached to the Linux bridge", spec.name, spec.bridge),
                    Err(e) => log::debug!("port {} of {}: {}", spec.name, spec.bridge, e.message),
                }
            }
        }
        let mut changed = false;
        for decl in todo {
            let spec = &decl.spec;
            // A netdev port waits for its interface; it is not created.
            if matches!(spec.kind, PortKind::Netdev { .. })
                && !matches!(self.nl.link(&iface(spec).unwrap_or_else(|_| spec.name.clone())).await, Ok(Some(_)))
            {
                continue;
            }
            match self.attach(&decl, Policy::Restore).await {
                Ok(made) => {
                    log::info!("port {} of {}: re-attached", spec.name, spec.bridge);
                    if made && !decl.created {
                        self.mark_port_created(spec);
                        changed = true;
                    }
                }
                Err(e) => log::debug!("port {} of {}: {}", spec.name, spec.bridge, e.message),
            }
        }
        if changed {
            if let Err(e) = self.store.save(&self.state) {
                log::error!("{}", crate::api::error_chain(&e));
            }
        }
    }
}
