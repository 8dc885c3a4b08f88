//! The daemon's state and request handling. One [`Core`] behind one async mutex serialises
//! every change, so a declaration is checked, applied, persisted and acknowledged as a unit.

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;

use crate::api::{ApiError, ErrorKind, Op, RmTap, Source, Status, TapInfo, TapSpec};
use crate::config::Config;
use crate::netlink::Netlink;
use crate::state::{State, Store};
use crate::tap::{self, Policy, TapDecl};

use super::Paths;

pub struct Core {
    pub nl: Netlink,
    pub dp: std::sync::Arc<crate::datapath::DatapathHandle>,
    pub config_bridges: Vec<crate::state::BridgeDecl>,
    pub config_ports: Vec<crate::state::PortDecl>,
    pub store: Store,
    pub state: State,
    /// Config-file declarations, resolved at start.
    pub config_taps: Vec<TapDecl>,
    pub config_origin: String,
    pub paths: Paths,
    pub started: Instant,
    /// `VMNETD_TEST_HOOKS=1` at start: the test-only requests are served.
    pub test_hooks: bool,
    /// What non-root callers may hold.
    pub limits: UserLimits,
    /// Networks: config declarations, running dnsmasqs, the programs they use.
    pub nets: super::networks::NetRuntime,
    /// Flow rules and mirrors from the config file.
    pub policy: super::policy::PolicyConfig,
    /// The config file's declarations as they run (what `apply` compares a new file with).
    pub config: Config,
    /// The config the daemon reads at start (a path, or "embedded default").
    pub startup_config: String,
}

#[cfg(test)]
impl Core {
    /// A core with no declarations, its state under `dir` (for unit tests).
    pub fn for_tests(nl: Netlink, dp: std::sync::Arc<crate::datapath::DatapathHandle>, dir: &std::path::Path) -> Core {
        let store = Store::open(&dir.join("state")).expect("state dir");
        Core {
            nl,
            dp,
            config_bridges: Vec::new(),
            config_ports: Vec::new(),
            store,
            state: State::new(),
            config_taps: Vec::new(),
            config_origin: "test".into(),
            paths: Paths { state_dir: dir.join("state"), run_dir: dir.to_owned(), socket: dir.join("vmnetd.sock") },
            started: Instant::now(),
            test_hooks: false,
            limits: UserLimits { max_ports_per_user: 64 },
            nets: Default::default(),
            policy: Default::default(),
            config: Config::default(),
            startup_config: "test".into(),
        }
    }
}

/// Quotas of non-root control-socket callers (`[control]`).
#[derive(Debug, Clone, Copy)]
pub struct UserLimits {
    pub max_ports_per_user: usize,
}

fn api<E: std::error::Error + 'static>(kind: ErrorKind) -> impl Fn(E) -> ApiError {
    move |e| ApiError::from_chain(kind, &e)
}

fn tap_err(e: tap::Error) -> ApiError {
    ApiError::from_chain(e.kind(), &e)
}

fn to_value<T: Serialize>(v: T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(api(ErrorKind::Internal))
}

impl Core {
    /// Resolves the config's declarations and re-applies them and the recorded ones: existing
    /// devices are adopted, vanished ones re-created. A declaration that cannot be applied is
    /// logged and kept (it is retried at the next start); it never stops the others.
    pub async fn restore(&mut self, config: &Config) {
        for spec in &config.taps {
            // Config::parse guarantees a name.
            let Some(name) = spec.name.clone() else {
                continue;
            };
            match TapDecl::from_spec(spec, name.clone()) {
                Ok(mut decl) => {
                    if let Ok(Some(link)) = self.nl.link(&name).await {
                        decl.created = tap::is_ours(None, &link);
                    }
                    match tap::ensure(&self.nl, &decl, Policy::Restore).await {
                        Ok(tap::Outcome::Created) => {
                            decl.created = true;
                            log::info!("tap {name}: created (config)");
                        }
                        Ok(tap::Outcome::Adopted) => log::info!("tap {name}: present (config)"),
                        Err(e) => log::error!("tap {name}: {}", crate::api::error_chain(&e)),
                    }
                    self.config_taps.push(decl);
                }
                Err(e) => log::error!("tap {name} in {}: {}", self.config_origin, crate::api::error_chain(&e)),
            }
        }
        let config_names: HashSet<String> = self.config_taps.iter().map(|t| t.name.to_string()).collect();
        let before = self.state.taps.len();
        self.state.taps.retain(|t| {
            let clash = config_names.contains(t.name.as_str());
            if clash {
                log::warn!(
                    "tap {}: declared in {} too; the config file's declaration is used",
                    t.name,
                    self.config_origin
                );
            }
            !clash
        });
        for decl in &mut self.state.taps {
            match tap::ensure(&self.nl, decl, Policy::Restore).await {
                Ok(tap::Outcome::Created) => {
                    log::info!("tap {}: re-created", decl.name);
                    decl.created = true;
                }
                Ok(tap::Outcome::Adopted) => log::debug!("tap {}: present", decl.name),
                Err(e) => log::error!("tap {}: {}", decl.name, crate::api::error_chain(&e)),
            }
        }
        if self.state.taps.len() != before || self.state.taps.iter().any(|t| t.created) {
            if let Err(e) = self.store.save(&self.state) {
                log::error!("{}", crate::api::error_chain(&e));
            }
        }
    }

    /// Runs one request for `caller`, after checking that the caller may make it.
    pub async fn handle(&mut self, op: Op, caller: &super::authz::Caller) -> Result<serde_json::Value, ApiError> {
        let op = self.authorize(op, caller)?;
        match op {
            Op::Status => to_value(self.status()),
            Op::Mktap(spec) => to_value(self.mktap(spec).await?),
            Op::Rmtap(rm) => to_value(self.rmtap(rm).await?),
            Op::TapList => to_value(self.tap_list().await?),
            Op::BridgeAdd(spec) => to_value(self.bridge_add(spec).await?),
            Op::BridgeDel(req) => to_value(self.bridge_del(req).await?),
            Op::BridgeList => to_value(self.bridge_list().await?),
            Op::PortAdd(spec) => to_value(self.port_add(*spec, caller).await?),
            Op::PortDel(req) => to_value(self.port_del(req).await?),
            Op::PortList(req) => to_value(self.port_list(req).await?),
            Op::FdbShow(req) => to_value(self.fdb_show(req).await?),
            Op::FdbFlush(req) => to_value(self.fdb_flush(req).await?),
            Op::Stats(req) => to_value(self.stats(req).await?),
            Op::NetworkAdd(spec) => to_value(self.network_add(*spec).await?),
            Op::NetworkDel(req) => to_value(self.network_del(req).await?),
            Op::NetworkList => to_value(self.network_list()?),
            Op::NetworkShow(req) => to_value(self.network_show(req)?),
            Op::NetworkLeases(req) => to_value(self.network_leases(req)?),
            Op::LeaseAdd(req) => to_value(self.lease_add(req).await?),
            Op::LeaseDel(req) => to_value(self.lease_del(req).await?),
            Op::ForwardAdd(req) => to_value(self.forward_add(req).await?),
            Op::ForwardDel(req) => to_value(self.forward_del(req).await?),
            Op::FlowAdd(req) => to_value(self.flow_add(req).await?),
            Op::FlowDel(req) => to_value(self.flow_del(req).await?),
            Op::FlowReplace(req) => to_value(self.flow_replace(req).await?),
            Op::FlowShow(req) => to_value(self.flow_show(req).await?),
            Op::Trace(req) => to_value(self.trace(req).await?),
            Op::MirrorAdd(req) => to_value(self.mirror_add(req).await?),
            Op::MirrorDel(req) => to_value(self.mirror_del(req).await?),
            Op::MirrorList(req) => to_value(self.mirror_list(req).await?),
            Op::DatapathStats => to_value(self.datapath_stats().await?),
            Op::ConfigDump(req) => to_value(self.config_dump(req)?),
            Op::Apply(req) => to_value(self.apply(req).await?),
            Op::Capture(_) => {
                Err(ApiError::new(ErrorKind::BadRequest, "capture is served by the connection, not here"))
            }
            Op::DebugPanic => {
                if !self.test_hooks {
                    return Err(ApiError::new(
                        ErrorKind::PermissionDenied,
                        "Test hooks are off (start the daemon with VMNETD_TEST_HOOKS=1 to enable them)",
                    ));
                }
                log::warn!("debug-panic requested: making the datapath thread panic");
                self.dp
                    .call(|_| panic!("datapath panic requested through the test hook"))
                    .await
                    .map_err(api(ErrorKind::Internal))?;
                Ok(serde_json::Value::Null)
            }
        }
    }

    pub(crate) fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: crate::api::PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.paths.socket.display().to_string(),
            state_dir: self.paths.state_dir.display().to_string(),
            run_dir: self.paths.run_dir.display().to_string(),
            config: self.config_origin.clone(),
            taps: self.config_taps.len() + self.state.taps.len(),
            bridges: self.config_bridges.len() + self.state.bridges.len(),
            ports: self.config_ports.len() + self.state.ports.len(),
        }
    }

    fn config_tap(&self, name: &str) -> Option<&TapDecl> {
        self.config_taps.iter().find(|t| t.name.as_str() == name)
    }

    async fn info(&self, decl: &TapDecl, source: Source) -> Result<TapInfo, ApiError> {
        let link = self.nl.link(&decl.name).await.map_err(api(ErrorKind::Internal))?;
        Ok(decl.info(link.as_ref(), source))
    }

    async fn mktap(&mut self, spec: TapSpec) -> Result<TapInfo, ApiError> {
        let name = match &spec.name {
            Some(n) => n.clone(),
            None => {
                let taken: HashSet<String> =
                    self.config_taps.iter().chain(&self.state.taps).map(|t| t.name.to_string()).collect();
                tap::pick_free_name(&self.nl, &taken).await.map_err(tap_err)?
            }
        };
        let mut decl = TapDecl::from_spec(&spec, name.clone()).map_err(tap_err)?;
        if let Some(existing) = self.config_tap(name.as_str()) {
            return if same_declaration(existing, &decl) {
                self.info(existing, Source::Config).await
            } else {
                Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("{name} is declared in {} with other settings; change it there", self.config_origin),
                ))
            };
        }
        if let Some(existing) = self.state.tap(name.as_str()) {
            if !same_declaration(existing, &decl) {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("{name} is already declared with other settings; `vmnetd rmtap {name}` first"),
                ));
            }
            // Idempotent: make sure it is there (it may have been deleted by hand).
            let existing = existing.clone();
            let outcome = tap::ensure(&self.nl, &existing, Policy::Restore).await.map_err(tap_err)?;
            if outcome == tap::Outcome::Created && !existing.created {
                if let Some(t) = self.state.taps.iter_mut().find(|t| t.name == name) {
                    t.created = true;
                }
                self.store.save(&self.state).map_err(api(ErrorKind::Internal))?;
            }
            let d = self.state.tap(name.as_str()).cloned().unwrap_or(existing);
            return self.info(&d, Source::State).await;
        }
        let outcome = tap::ensure(&self.nl, &decl, Policy::Declare).await.map_err(tap_err)?;
        decl.created = match outcome {
            tap::Outcome::Created => true,
            // A device left by an earlier run (created, then the daemon died before recording
            // it) still carries vmnetd's mark.
            tap::Outcome::Adopted => match self.nl.link(&name).await {
                Ok(Some(l)) => tap::is_ours(None, &l),
                _ => false,
            },
        };
        self.state.taps.push(decl.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.taps.pop();
            if outcome == tap::Outcome::Created {
                if let Err(e2) = tap::remove(&self.nl, &name, Some(&decl), true).await {
                    log::error!("rollback of {name}: {}", crate::api::error_chain(&e2));
                }
            }
            return Err(ApiError::from_chain(ErrorKind::Internal, &e));
        }
        log::info!(
            "tap {name}: {} (owner {}, group {})",
            if decl.created { "created" } else { "adopted" },
            decl.owner.as_ref().map_or("-".to_owned(), |p| p.to_string()),
            decl.group.as_ref().map_or("-".to_owned(), |p| p.to_string()),
        );
        self.info(&decl, Source::State).await
    }

    async fn rmtap(&mut self, rm: RmTap) -> Result<TapInfo, ApiError> {
        let name = rm.name;
        if self.config_tap(name.as_str()).is_some() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("{name} is declared in {}; remove it there", self.config_origin),
            ));
        }
        let decl = self.state.tap(name.as_str()).cloned();
        let info = match &decl {
            Some(d) => self.info(d, Source::State).await?,
            None => {
                let link = self.nl.link(&name).await.map_err(api(ErrorKind::Internal))?;
                let link = existing_tap(&name, link).map_err(tap_err)?;
                undeclared_info(&name, &link)
            }
        };
        tap::remove(&self.nl, &name, decl.as_ref(), rm.force).await.map_err(tap_err)?;
        if decl.is_some() {
            self.state.taps.retain(|t| t.name != name);
            self.store.save(&self.state).map_err(api(ErrorKind::Internal))?;
        }
        log::info!("tap {name}: removed");
        Ok(info)
    }

    pub(crate) async fn tap_list(&self) -> Result<Vec<TapInfo>, ApiError> {
        let links = self.nl.links().await.map_err(api(ErrorKind::Internal))?;
        let find = |n: &str| links.iter().find(|l| l.name == n);
        let mut out: Vec<TapInfo> = self
            .config_taps
            .iter()
            .map(|d| d.info(find(d.name.as_str()), Source::Config))
            .chain(self.state.taps.iter().map(|d| d.info(find(d.name.as_str()), Source::State)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Two declarations of the same TAP say the same thing (whether vmnetd created it aside).
fn same_declaration(a: &TapDecl, b: &TapDecl) -> bool {
    let ids = |p: &Option<crate::users::Principal>| p.as_ref().map(|p| p.id);
    a.name == b.name
        && a.mode == b.mode
        && ids(&a.owner) == ids(&b.owner)
        && ids(&a.group) == ids(&b.group)
        && a.multi_queue == b.multi_queue
        && a.vnet_hdr == b.vnet_hdr
        && a.mtu == b.mtu
        && a.mac == b.mac
        && a.external_ids == b.external_ids
}

/// A TAP that exists but that vmnetd has no declaration for.
pub fn undeclared_info(name: &crate::ifname::IfName, link: &crate::netlink::Link) -> TapInfo {
    let tun = link.tun.clone().unwrap_or_default();
    let principal =
        |id: Option<u32>, f: fn(u32) -> Option<String>| id.map(|id| crate::users::Principal { id, name: f(id) });
    TapInfo {
        name: name.clone(),
        mode: tun.mode.unwrap_or_default(),
        owner: principal(tun.owner, crate::users::user_name),
        group: principal(tun.group, crate::users::group_name),
        multi_queue: tun.multi_queue,
        vnet_hdr: tun.vnet_hdr,
        mtu: link.mtu,
        mac: link.mac,
        created: tap::is_ours(None, link),
        source: Source::None,
        present: true,
        queues_attached: link.tap_queues_attached(),
        external_ids: Default::default(),
    }
}

/// The link of an existing TAP/TUN named `name`, or why there is none.
pub fn existing_tap(
    name: &crate::ifname::IfName,
    link: Option<crate::netlink::Link>,
) -> Result<crate::netlink::Link, tap::Error> {
    match link {
        None => Err(tap::Error::NoSuchTap(name.clone())),
        Some(l) if !l.is_tun() => {
            Err(tap::Error::NotTun(name.clone(), l.kind.clone().unwrap_or_else(|| "physical or unknown".to_owned())))
        }
        Some(l) => Ok(l),
    }
}
