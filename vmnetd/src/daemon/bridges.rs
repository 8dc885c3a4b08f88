//! Bridges and ports as declarations: validation, persistence, and the requests that show
//! them. What a declaration becomes in the system is the business of its bridge's backend
//! ([`crate::bridge`]); nothing here depends on the kind of a bridge.
//!
//! A port is declared once and stays declared: if its interface is missing (a TAP not yet
//! made, a NIC renamed), or its edge fails later (the interface was deleted and re-made), the
//! port shows it (`missing`, `down`) and the reconciler ([`super::reconcile`]) re-attaches it
//! as soon as the interface is there again. Adding or removing a port never touches the
//! other ports.

use std::collections::HashSet;

use crate::api::{
    ApiError, BridgeDel, BridgeInfo, BridgeRef, BridgeSpec, Counters, ErrorKind, FdbRow, FdbShowReq, Flushed, PortInfo,
    PortKind, PortListReq, PortRef, PortSpec, PortStats, Source, StatsReq,
};
use crate::bridge::{self, port_ifname, port_resource, BridgeBackend, Ctx, PortView};
use crate::ifname::IfName;
use crate::state::{BridgeDecl, PortDecl};
use crate::switch::VlanMode;
use crate::tap::Policy;

use super::core::Core;

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

fn internal<E: std::error::Error + 'static>(e: E) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

/// What `port list` shows for a declaration and its view.
fn port_info(decl: &PortDecl, source: Source, view: PortView) -> PortInfo {
    PortInfo {
        bridge: decl.spec.bridge.clone(),
        name: decl.spec.name.clone(),
        kind: decl.spec.kind.clone(),
        vlan: decl.spec.vlan.clone(),
        macs: decl.spec.macs.clone(),
        lock_mac: decl.spec.lock_mac,
        isolated: decl.spec.isolated,
        ingress_rate_kbit: decl.spec.ingress_rate_kbit,
        ingress_burst_kb: decl.spec.ingress_burst_kb,
        egress_rate_kbit: decl.spec.egress_rate_kbit,
        egress_burst_kb: decl.spec.egress_burst_kb,
        ifname: port_ifname(&decl.spec),
        status: view.status,
        source,
        counters: view.counters,
        kernel_vlans: view.kernel_vlans,
        vhost: view.vhost,
        vxlan: view.vxlan,
        io: view.io,
        external_ids: decl.spec.external_ids.clone(),
        creator: decl.creator,
    }
}

pub(crate) fn validate_bridge(spec: &BridgeSpec) -> Result<(), ApiError> {
    if spec.max_macs == Some(0) {
        return Err(err(ErrorKind::InvalidArgument, "--max-macs must be at least 1"));
    }
    if spec.ageing == Some(0) {
        return Err(err(ErrorKind::InvalidArgument, "--ageing must be at least 1 second"));
    }
    Ok(())
}

pub(crate) fn validate_port(spec: &PortSpec) -> Result<(), ApiError> {
    crate::api::validate_external_ids(&spec.external_ids)?;
    if let VlanMode::Trunk { vlans, native } = &spec.vlan {
        if vlans.is_empty() && native.is_none() {
            return Err(err(ErrorKind::InvalidArgument, "A trunk must carry at least one VLAN"));
        }
    }
    if let Some(m) = spec.macs.iter().find(|m| !m.is_unicast()) {
        return Err(err(ErrorKind::InvalidArgument, format!("MAC {m} is not a unicast address")));
    }
    for (what, rate) in [("--ingress-rate", spec.ingress_rate_kbit), ("--egress-rate", spec.egress_rate_kbit)] {
        if let Some(r) = rate {
            if !(1..=400_000_000).contains(&r) {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!("{what} {r} kbit/s is out of range (1-400000000)"),
                ));
            }
        }
    }
    for (what, b) in [("--ingress-burst", spec.ingress_burst_kb), ("--egress-burst", spec.egress_burst_kb)] {
        if b.is_some_and(|b| b > 1 << 32) {
            return Err(err(ErrorKind::InvalidArgument, format!("{what} is too large")));
        }
    }
    if spec.lock_mac && spec.macs.is_empty() {
        return Err(err(ErrorKind::InvalidArgument, "--lock-mac needs the port's address (--mac)"));
    }
    if let PortKind::Vxlan { .. } = &spec.kind {
        validate_vxlan(spec)?;
    }
    if let PortKind::VhostUser { queues, path, .. } = &spec.kind {
        let max = crate::api::MAX_QUEUE_PAIRS;
        if !(1..=max).contains(queues) {
            return Err(err(ErrorKind::InvalidArgument, format!("--queues {queues} is out of range (1-{max})")));
        }
        if path.as_os_str().is_empty() {
            return Err(err(ErrorKind::InvalidArgument, "--vhost-user needs a socket path"));
        }
    }
    Ok(())
}

/// A tunnel port's addresses, VNIs and VLANs: one family, real remotes, a VNI per VLAN.
fn validate_vxlan(spec: &PortSpec) -> Result<(), ApiError> {
    let PortKind::Vxlan { vni, vni_map, local, remotes, group, dev, dstport } = &spec.kind else {
        return Ok(());
    };
    let bad = |m: String| Err(err(ErrorKind::InvalidArgument, m));
    let max = crate::vxlan::MAX_VNI;
    match (vni, vni_map.is_empty()) {
        (Some(_), false) => return bad("Give either --vni (one VLAN) or --vni-map (a trunk), not both".into()),
        (None, true) => return bad("A VXLAN port needs --vni N (or --vni-map VID:VNI,... for a trunk)".into()),
        _ => {}
    }
    if let Some(v) = vni.filter(|v| *v > max) {
        return bad(format!("VNI {v} is out of range (0-{max})"));
    }
    if *dstport == 0 {
        return bad("--dstport must not be 0".into());
    }
    if !vni_map.is_empty() {
        let mut vlans = crate::switch::VlanSet::new();
        let mut vnis = HashSet::new();
        for m in vni_map {
            if m.vni > max {
                return bad(format!("VNI {} is out of range (0-{max})", m.vni));
            }
            if vlans.contains(m.vlan) || !vnis.insert(m.vni) {
                return bad(format!("--vni-map maps VLAN {} or VNI {} twice", m.vlan, m.vni));
            }
            vlans.insert(m.vlan);
        }
        match &spec.vlan {
            VlanMode::Trunk { vlans: t, native: None } if *t == vlans => {}
            _ => {
                return bad(format!(
                    "A tunnel with --vni-map is a trunk of exactly the mapped VLANs (--trunk {}, no --native)",
                    vni_map.iter().map(|m| m.vlan.to_string()).collect::<Vec<_>>().join(",")
                ))
            }
        }
    } else if matches!(spec.vlan, VlanMode::Trunk { .. }) {
        return bad("A tunnel with one --vni carries one VLAN (--vlan VID); map a trunk with --vni-map".into());
    }
    if remotes.is_empty() && group.is_none() {
        return bad("A VXLAN port needs --remote A[,B...] or --group ADDR --dev IF (where to send broadcasts)".into());
    }
    if remotes.len() > 1024 {
        return bad("At most 1024 remotes".into());
    }
    let family = local.or(*group).or(remotes.first().copied()).map(|a| a.is_ipv6());
    let mut seen = HashSet::new();
    for r in remotes {
        if r.is_unspecified() || r.is_multicast() || r.is_loopback() && local.is_none_or(|l| !l.is_loopback()) {
            return bad(format!("{r} cannot be a remote VTEP"));
        }
        if Some(r.is_ipv6()) != family {
            return bad("The local address, remotes and group must all be IPv4 or all IPv6".into());
        }
        if Some(*r) == *local {
            return bad(format!("{r} is the local address"));
        }
        if !seen.insert(*r) {
            return bad(format!("Remote {r} is given twice"));
        }
    }
    if let Some(g) = group {
        if !g.is_multicast() {
            return bad(format!("--group {g} is not a multicast address"));
        }
        if dev.is_none() {
            return bad("--group needs --dev (the underlay interface to join it on)".into());
        }
        if Some(g.is_ipv6()) != family {
            return bad("The local address, remotes and group must all be IPv4 or all IPv6".into());
        }
    }
    if let Some(l) = local {
        if l.is_multicast() || l.is_unspecified() {
            return bad(format!("--local {l} must be a unicast address of this host"));
        }
        if Some(l.is_ipv6()) != family {
            return bad("The local address, remotes and group must all be IPv4 or all IPv6".into());
        }
    }
    Ok(())
}

impl Core {
    /// The handles bridge backends work with (cheap clones; usable without the lock).
    pub fn ctx(&self) -> Ctx {
        let taps: Vec<(IfName, Option<u32>)> = self
            .config_taps
            .iter()
            .chain(&self.state.taps)
            .map(|t| (t.name.clone(), t.owner.as_ref().map(|o| o.id)))
            .collect();
        Ctx { nl: self.nl.clone(), dp: self.dp.clone(), run_dir: self.paths.run_dir.clone(), taps: taps.into() }
    }

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

    pub(crate) fn port_decl(&self, bridge: &str, name: &str) -> Option<(&PortDecl, Source)> {
        self.port_decls().find(|(p, _)| p.spec.bridge.as_str() == bridge && p.spec.name.as_str() == name)
    }

    /// The backend of a declared bridge.
    pub(crate) fn backend(&self, bridge: &IfName) -> Result<&'static dyn BridgeBackend, ApiError> {
        self.bridge_decl(bridge.as_str())
            .map(|(b, _)| bridge::backend(b.spec.kind))
            .ok_or_else(|| err(ErrorKind::NotFound, format!("No bridge {bridge}")))
    }

    /// Re-creates the declared bridges and ports (config first, then state). Failures are
    /// logged and leave the declaration in place, to be retried by the reconciler.
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
        let cx = self.ctx();
        let bridges: Vec<BridgeSpec> =
            self.config_bridges.iter().chain(&self.state.bridges).map(|b| b.spec.clone()).collect();
        for spec in bridges {
            match bridge::backend(spec.kind).create(&cx, &spec).await {
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
        // Rules and mirrors are in place before the first port carries a frame.
        self.restore_policy().await;
        let ports: Vec<PortDecl> = self.port_decls().map(|(p, _)| p.clone()).collect();
        for decl in ports {
            let spec = &decl.spec;
            let Ok(backend) = self.backend(&spec.bridge) else { continue };
            match backend.attach(&cx, &decl, Policy::Restore).await {
                Ok(made) => {
                    if made && !decl.created {
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

    pub(crate) fn mark_port_created(&mut self, spec: &PortSpec) {
        for p in self.config_ports.iter_mut().chain(self.state.ports.iter_mut()) {
            if p.spec.bridge == spec.bridge && p.spec.name == spec.name {
                p.created = true;
            }
        }
    }

    pub async fn bridge_add(&mut self, spec: BridgeSpec) -> Result<BridgeInfo, ApiError> {
        validate_bridge(&spec)?;
        if let Some((existing, source)) = self.bridge_decl(spec.name.as_str()) {
            if existing.spec == spec {
                return self.bridge_info(&existing.clone(), source).await;
            }
            return Err(err(ErrorKind::Conflict, format!("Bridge {} already exists with other settings", spec.name)));
        }
        let cx = self.ctx();
        let backend = bridge::backend(spec.kind);
        let created = backend.create(&cx, &spec).await?;
        let decl = BridgeDecl { spec: spec.clone(), created };
        self.state.bridges.push(decl.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.bridges.pop();
            backend.destroy(&cx, &decl).await;
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
        if let Some(net) = self.network_on_bridge(&req.name) {
            return Err(err(
                ErrorKind::Conflict,
                format!("Bridge {} carries network {net}; `vmnetd network del {net}` first", req.name),
            ));
        }
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
        bridge::backend(decl.spec.kind).destroy(&self.ctx(), &decl).await;
        self.state.bridges.retain(|b| b.spec.name != req.name);
        // Its rules and mirrors go with it: a new bridge of that name starts clean.
        self.state.flows.remove(req.name.as_str());
        self.state.mirrors.retain(|m| m.bridge != req.name);
        self.store.save(&self.state).map_err(internal)?;
        log::info!("bridge {}: removed", req.name);
        Ok(info)
    }

    async fn bridge_info(&self, decl: &BridgeDecl, source: Source) -> Result<BridgeInfo, ApiError> {
        let fdb_entries = bridge::backend(decl.spec.kind).fdb_entries(&self.ctx(), &decl.spec.name).await?;
        let (ageing, max_macs) = bridge::builtin::limits(&decl.spec);
        Ok(BridgeInfo {
            name: decl.spec.name.clone(),
            kind: decl.spec.kind,
            ports: self.port_decls().filter(|(p, _)| p.spec.bridge == decl.spec.name).count(),
            fdb_entries,
            ageing,
            max_macs,
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

    /// A spec with its socket path made absolute (to compare ports).
    fn resolved(&self, spec: &PortSpec) -> PortSpec {
        let mut s = spec.clone();
        if let PortKind::VhostUser { path, .. } = &mut s.kind {
            *path = self.paths.run_dir.join(&*path);
        }
        s
    }

    pub async fn port_add(&mut self, spec: PortSpec, caller: &super::authz::Caller) -> Result<PortInfo, ApiError> {
        validate_port(&spec)?;
        let backend = self.backend(&spec.bridge)?;
        backend.check_port(&spec)?;
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
        let cx = self.ctx();
        let decl = self.attach_new_port(&spec, (!caller.is_root()).then_some(caller.uid)).await?;
        self.state.ports.push(decl.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.ports.pop();
            backend.detach(&cx, &decl).await;
            return Err(internal(e));
        }
        tracing::info!(
            bridge = %spec.bridge,
            port = %spec.name,
            vm_name = spec.external_ids.get("vm-name").map(String::as_str),
            "port {} of {}: added ({}, {})",
            spec.name,
            spec.bridge,
            spec.kind.type_name(),
            spec.vlan
        );
        self.port_info(&decl, Source::State).await
    }

    /// Attaches a port no declaration has yet (checked by the caller: valid, its bridge
    /// takes it, the name is free): refuses a resource another port holds.
    pub(crate) async fn attach_new_port(&self, spec: &PortSpec, creator: Option<u32>) -> Result<PortDecl, ApiError> {
        let res = port_resource(&self.resolved(spec));
        if let Some((other, _)) = self.port_decls().find(|(p, _)| port_resource(&self.resolved(&p.spec)) == res) {
            return Err(err(
                ErrorKind::Conflict,
                format!("{res} is already port {} of bridge {}", other.spec.name, other.spec.bridge),
            ));
        }
        let backend = self.backend(&spec.bridge)?;
        let cx = self.ctx();
        let mut decl = PortDecl::new(spec.clone(), false);
        decl.creator = creator;
        decl.attached = bridge::identity_of(&cx, spec).await?;
        decl.created = backend.attach(&cx, &decl, Policy::Declare).await?;
        Ok(decl)
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
        if let Some(net) = decl.spec.external_ids.get(crate::network::NETWORK_LABEL) {
            return Err(err(
                ErrorKind::Conflict,
                format!("Port {} is the gateway of network {net}; `vmnetd network del {net}` removes it", req.name),
            ));
        }
        let info = self.port_info(&decl, source).await?;
        self.backend(&decl.spec.bridge)?.detach(&self.ctx(), &decl).await;
        self.state.ports.retain(|p| !(p.spec.bridge == req.bridge && p.spec.name == req.name));
        self.store.save(&self.state).map_err(internal)?;
        tracing::info!(
            bridge = %req.bridge,
            port = %req.name,
            vm_name = decl.spec.external_ids.get("vm-name").map(String::as_str),
            "port {} of {}: removed",
            req.name,
            req.bridge
        );
        Ok(info)
    }

    async fn port_info(&self, decl: &PortDecl, source: Source) -> Result<PortInfo, ApiError> {
        let mut infos = self.port_infos(vec![(decl.clone(), source)]).await?;
        infos.pop().ok_or_else(|| err(ErrorKind::Internal, "no view of the port"))
    }

    /// Views of ports, asked of each bridge's backend once for all of its ports.
    pub(crate) async fn port_infos(&self, decls: Vec<(PortDecl, Source)>) -> Result<Vec<PortInfo>, ApiError> {
        let cx = self.ctx();
        let mut bridges: Vec<IfName> = Vec::new();
        for (d, _) in &decls {
            if !bridges.contains(&d.spec.bridge) {
                bridges.push(d.spec.bridge.clone());
            }
        }
        let mut views: Vec<Option<PortView>> = vec![None; decls.len()];
        for b in bridges {
            let idx: Vec<usize> = (0..decls.len()).filter(|&i| decls[i].0.spec.bridge == b).collect();
            let these: Vec<PortDecl> = idx.iter().map(|&i| decls[i].0.clone()).collect();
            let vs = self.backend(&b)?.views(&cx, &these).await?;
            for (i, v) in idx.into_iter().zip(vs) {
                views[i] = Some(v);
            }
        }
        decls
            .into_iter()
            .zip(views)
            .map(|((d, s), v)| {
                let v = v.ok_or_else(|| err(ErrorKind::Internal, "no view of a port"))?;
                Ok(port_info(&d, s, v))
            })
            .collect()
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
        self.port_infos(decls).await
    }

    pub async fn fdb_show(&self, req: FdbShowReq) -> Result<Vec<FdbRow>, ApiError> {
        self.backend(&req.bridge)?.fdb(&self.ctx(), &req.bridge, req.vlan).await
    }

    pub async fn fdb_flush(&self, req: BridgeRef) -> Result<Flushed, ApiError> {
        let flushed = self.backend(&req.bridge)?.flush_fdb(&self.ctx(), &req.bridge).await?;
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
        let decls: Vec<(PortDecl, Source)> = self
            .port_decls()
            .filter(|(p, _)| req.bridge.as_ref().is_none_or(|b| &p.spec.bridge == b))
            .filter(|(p, _)| req.port.as_ref().is_none_or(|n| &p.spec.name == n))
            .map(|(p, s)| (p.clone(), s))
            .collect();
        Ok(self
            .port_infos(decls)
            .await?
            .into_iter()
            .map(|i| PortStats {
                bridge: i.bridge,
                port: i.name,
                counters: i.counters.unwrap_or_else(Counters::default),
                vxlan: i.vxlan,
            })
            .collect())
    }

    /// Starts a capture on a port.
    pub async fn start_capture(
        &self,
        req: &crate::api::CaptureReq,
        sink: crate::datapath::capture::Sink,
        caller: &super::authz::Caller,
    ) -> Result<(), ApiError> {
        let backend = self.backend(&req.bridge)?;
        let Some((decl, _)) = self.port_decl(req.bridge.as_str(), req.port.as_str()) else {
            return Err(err(ErrorKind::NotFound, format!("Bridge {} has no port {}", req.bridge, req.port)));
        };
        self.own_existing_port(req.bridge.as_str(), req.port.as_str(), caller)?;
        backend.capture(&self.ctx(), decl, sink).await
    }
}
