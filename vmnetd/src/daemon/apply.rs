//! `vmnetd apply FILE`, `vmnetd config dump` and SIGHUP: the config file's declarations
//! changed while the daemon runs, with the least disruption.
//!
//! The daemon keeps the [`Config`] its config-file declarations came from. `apply` parses the
//! new file, compares it with that one object by object ([`plan`], pure), and runs the
//! difference as a list of [`Action`]s: removals first (mirrors and rules, networks, ports,
//! bridges, TAPs), then additions in dependency order (TAPs, bridges, ports, networks, rules,
//! mirrors). What did not change is never touched. A port whose VLANs, addresses, isolation
//! or policers changed is reconfigured in place on a built-in bridge (its edge, and a
//! vhost-user guest behind it, stay connected); other changes remove and add the object
//! again (`!` in the plan). Every action done is remembered with its inverse; if one fails,
//! the inverses run in reverse order and the daemon is back where it was.
//!
//! Runtime declarations (CLI, libvirt hook) are left alone. A file that declares an object
//! the runtime already declares the same way takes it over (no change in the system); one
//! that declares it differently is refused before anything changes. So is removing a bridge
//! that runtime ports or networks still use.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::api::{
    ApiError, ApplyReq, ApplyResult, BridgeKind, BridgeSpec, ConfigDump, ConfigDumpReq, ErrorKind, PlanStep, PortSpec,
    TapSpec,
};
use crate::config::{Config, NetworkConfig};
use crate::state::{BridgeDecl, PortDecl};
use crate::tap::{self, Policy, TapDecl};
use vmnetd_api::policy::MirrorSpec;

use super::core::Core;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidArgument, msg)
}

fn conflict(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Conflict, msg)
}

fn internal<E: std::error::Error + 'static>(e: E) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

/// One change to the running system, and what undoes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    AddTap(TapSpec),
    DelTap(TapSpec),
    AddBridge(BridgeSpec),
    DelBridge(BridgeSpec),
    AddPort(Box<PortSpec>),
    DelPort(Box<PortSpec>),
    /// In place where the backend can, else detach and attach.
    ChangePort(Box<PortSpec>, Box<PortSpec>),
    /// A built-in bridge's learning-table limits (old, new), in place.
    ChangeBridge(BridgeSpec, BridgeSpec),
    AddNetwork(Box<NetworkConfig>),
    DelNetwork(Box<NetworkConfig>),
    /// A bridge's config rules become these (old, new).
    Flows(String, Vec<String>, Vec<String>),
    /// A bridge's config mirrors become these (old, new).
    Mirrors(String, Vec<MirrorSpec>, Vec<MirrorSpec>),
    BusyPoll(u32, u32),
    /// A runtime declaration becomes the file's (nothing changes in the system).
    Adopt(Kind, String),
    /// The inverse of [`Action::Adopt`].
    Unadopt(Kind, String),
}

/// What an [`Action::Adopt`] moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tap,
    Bridge,
    Port,
}

impl Action {
    pub fn inverse(&self) -> Action {
        use Action::*;
        match self.clone() {
            AddTap(s) => DelTap(s),
            DelTap(s) => AddTap(s),
            AddBridge(s) => DelBridge(s),
            DelBridge(s) => AddBridge(s),
            AddPort(s) => DelPort(s),
            DelPort(s) => AddPort(s),
            ChangePort(a, b) => ChangePort(b, a),
            ChangeBridge(a, b) => ChangeBridge(b, a),
            AddNetwork(n) => DelNetwork(n),
            DelNetwork(n) => AddNetwork(n),
            Flows(b, old, new) => Flows(b, new, old),
            Mirrors(b, old, new) => Mirrors(b, new, old),
            BusyPoll(a, b) => BusyPoll(b, a),
            Adopt(k, n) => Unadopt(k, n),
            Unadopt(k, n) => Adopt(k, n),
        }
    }
}

/// What the runtime layer declares (names only), for [`plan`].
#[derive(Debug, Default, Clone)]
pub struct Runtime {
    pub taps: BTreeMap<String, TapSpec>,
    pub bridges: BTreeMap<String, BridgeSpec>,
    /// By `bridge/port`.
    pub ports: BTreeMap<String, PortSpec>,
    pub networks: BTreeMap<String, String>,
    /// Bridges whose rules were changed at runtime (the file's `[[flow]]`s do not apply).
    pub flow_overrides: BTreeSet<String>,
    pub mirrors: BTreeSet<String>,
}

fn step(op: char, object: impl Into<String>, detail: impl Into<String>) -> PlanStep {
    PlanStep { op, object: object.into(), detail: detail.into() }
}

fn port_key(p: &PortSpec) -> String {
    format!("{}/{}", p.bridge, p.name)
}

fn tap_name(t: &TapSpec) -> String {
    t.name.as_ref().map(|n| n.to_string()).unwrap_or_default()
}

/// What differs between two declarations of a port, `field old -> new` each.
fn port_diff(a: &PortSpec, b: &PortSpec) -> (Vec<String>, bool) {
    let mut d = Vec::new();
    let mut in_place = true;
    if a.kind != b.kind {
        d.push(format!("kind {} -> {}", describe_kind(a), describe_kind(b)));
        in_place = false;
    }
    if a.vlan != b.vlan {
        d.push(format!("vlan {} -> {}", a.vlan, b.vlan));
    }
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let pairs = [
        ("macs", format!("{:?}", a.macs), format!("{:?}", b.macs)),
        ("lock_mac", a.lock_mac.to_string(), b.lock_mac.to_string()),
        ("isolated", a.isolated.to_string(), b.isolated.to_string()),
        ("ingress_rate_kbit", opt(a.ingress_rate_kbit), opt(b.ingress_rate_kbit)),
        ("ingress_burst_kb", opt(a.ingress_burst_kb), opt(b.ingress_burst_kb)),
        ("egress_rate_kbit", opt(a.egress_rate_kbit), opt(b.egress_rate_kbit)),
        ("egress_burst_kb", opt(a.egress_burst_kb), opt(b.egress_burst_kb)),
        ("external_ids", format!("{:?}", a.external_ids), format!("{:?}", b.external_ids)),
    ];
    for (k, x, y) in pairs {
        if x != y {
            d.push(format!("{k} {x} -> {y}"));
        }
    }
    (d, in_place)
}

fn describe_kind(p: &PortSpec) -> String {
    serde_json::to_string(&p.kind).unwrap_or_else(|_| p.kind.type_name().to_owned())
}

/// The difference between the running config layer `old` and `new`, as plan lines and the
/// actions that make it, in the order they run. Refuses what cannot be applied.
pub fn plan(old: &Config, new: &Config, rt: &Runtime) -> Result<(Vec<PlanStep>, Vec<Action>), ApiError> {
    let mut shown = Vec::new();
    let (mut dels, mut adds, mut changes, mut adopts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());

    // Settings: busy polling changes at once; the rest is read at start.
    if old.datapath.busy_poll_us != new.datapath.busy_poll_us {
        shown.push(step(
            '~',
            "setting datapath.busy_poll_us",
            format!("{} -> {}", old.datapath.busy_poll_us, new.datapath.busy_poll_us),
        ));
        changes.push(Action::BusyPoll(old.datapath.busy_poll_us, new.datapath.busy_poll_us));
    }
    let restart_only = [
        ("daemon", toml::to_string(&old.daemon).ok() != toml::to_string(&new.daemon).ok()),
        ("datapath.cpu", old.datapath.cpu != new.datapath.cpu),
        ("control", old.control != new.control),
        ("tools", old.tools != new.tools),
        ("metrics", old.metrics != new.metrics),
    ];
    for (what, differs) in restart_only {
        if differs {
            shown.push(step('*', format!("setting {what}"), "(takes effect at the next restart)"));
        }
    }

    // Bridges (first: a replaced bridge takes its ports with it).
    let old_b: BTreeMap<String, &BridgeSpec> = old.bridges.iter().map(|b| (b.name.to_string(), b)).collect();
    let new_b: BTreeMap<String, &BridgeSpec> = new.bridges.iter().map(|b| (b.name.to_string(), b)).collect();
    let mut gone_bridges = BTreeSet::new();
    let mut remade_bridges = BTreeSet::new();
    for (name, spec) in &old_b {
        match new_b.get(name) {
            None => {
                gone_bridges.insert(name.clone());
                shown.push(step('-', format!("bridge {name}"), ""));
                dels.push(Action::DelBridge((*spec).clone()));
            }
            // A built-in bridge's learning-table limits change in place.
            Some(n) if n != spec && n.kind == BridgeKind::Builtin && spec.kind == BridgeKind::Builtin => {
                let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                let mut d = Vec::new();
                if n.ageing != spec.ageing {
                    d.push(format!("ageing {} -> {}", opt(spec.ageing.map(u64::from)), opt(n.ageing.map(u64::from))));
                }
                if n.max_macs != spec.max_macs {
                    d.push(format!(
                        "max_macs {} -> {}",
                        opt(spec.max_macs.map(|m| m as u64)),
                        opt(n.max_macs.map(|m| m as u64))
                    ));
                }
                if n.stp != spec.stp {
                    d.push(format!("stp {:?} -> {:?} (not used by built-in bridges)", spec.stp, n.stp));
                }
                shown.push(step('~', format!("bridge {name}"), d.join(", ")));
                changes.push(Action::ChangeBridge((*spec).clone(), (*n).clone()));
            }
            Some(n) if n != spec => {
                remade_bridges.insert(name.clone());
                shown.push(step('!', format!("bridge {name}"), "(its ports are re-attached)"));
                dels.push(Action::DelBridge((*spec).clone()));
                adds.push(Action::AddBridge((*n).clone()));
            }
            Some(_) => {}
        }
    }
    for (name, spec) in &new_b {
        if old_b.contains_key(name) {
            continue;
        }
        match rt.bridges.get(name) {
            Some(r) if r == *spec => {
                shown.push(step('~', format!("bridge {name}"), "(declared at runtime; now the file's)"));
                adopts.push(Action::Adopt(Kind::Bridge, name.clone()));
            }
            Some(_) => {
                return Err(conflict(format!(
                    "Bridge {name} is declared at runtime with other settings; `vmnetd bridge del {name}` first"
                )))
            }
            None => {
                shown.push(step('+', format!("bridge {name}"), spec.kind.to_string()));
                adds.push(Action::AddBridge((*spec).clone()));
            }
        }
    }
    for b in gone_bridges.iter().chain(&remade_bridges) {
        if let Some(p) = rt.ports.values().find(|p| p.bridge.as_str() == b) {
            return Err(conflict(format!(
                "Bridge {b} has port {} declared at runtime; remove it first (`vmnetd port del {b} {}`)",
                p.name, p.name
            )));
        }
        if let Some(n) = rt.networks.iter().find(|(_, br)| *br == b).map(|(n, _)| n) {
            return Err(conflict(format!("Bridge {b} carries network {n} declared at runtime; remove it first")));
        }
    }
    let bridge_known = |b: &str| new_b.contains_key(b) || rt.bridges.contains_key(b);

    // Ports.
    let old_p: BTreeMap<String, &PortSpec> = old.ports.iter().map(|p| (port_key(p), p)).collect();
    let new_p: BTreeMap<String, &PortSpec> = new.ports.iter().map(|p| (port_key(p), p)).collect();
    for p in new.ports.iter() {
        if !bridge_known(p.bridge.as_str()) {
            return Err(bad(format!("Port {} is on bridge {}, which is not declared", p.name, p.bridge)));
        }
        super::bridges::validate_port(p)?;
    }
    for (key, spec) in &old_p {
        let remade = remade_bridges.contains(spec.bridge.as_str());
        match new_p.get(key) {
            None => {
                shown.push(step('-', format!("port {key}"), ""));
                dels.push(Action::DelPort(Box::new((*spec).clone())));
            }
            Some(n) if remade => {
                dels.push(Action::DelPort(Box::new((*spec).clone())));
                adds.push(Action::AddPort(Box::new((*n).clone())));
                if n != spec {
                    shown.push(step('!', format!("port {key}"), port_diff(spec, n).0.join(", ")));
                }
            }
            Some(n) if n != spec => {
                let (diff, in_place) = port_diff(spec, n);
                shown.push(step(if in_place { '~' } else { '!' }, format!("port {key}"), diff.join(", ")));
                changes.push(Action::ChangePort(Box::new((*spec).clone()), Box::new((*n).clone())));
            }
            Some(_) => {}
        }
    }
    for (key, spec) in &new_p {
        if old_p.contains_key(key) {
            continue;
        }
        match rt.ports.get(key) {
            Some(r) if r == *spec => {
                shown.push(step('~', format!("port {key}"), "(declared at runtime; now the file's)"));
                adopts.push(Action::Adopt(Kind::Port, key.clone()));
            }
            Some(_) => {
                return Err(conflict(format!(
                    "Port {key} is declared at runtime with other settings; `vmnetd port del {} {}` first",
                    spec.bridge, spec.name
                )))
            }
            None => {
                shown.push(step('+', format!("port {key}"), format!("{} {}", spec.kind.type_name(), spec.vlan)));
                adds.push(Action::AddPort(Box::new((*spec).clone())));
            }
        }
    }

    // TAPs.
    let old_t: BTreeMap<String, &TapSpec> = old.taps.iter().map(|t| (tap_name(t), t)).collect();
    let new_t: BTreeMap<String, &TapSpec> = new.taps.iter().map(|t| (tap_name(t), t)).collect();
    for (name, spec) in &old_t {
        match new_t.get(name) {
            None => {
                shown.push(step('-', format!("tap {name}"), ""));
                dels.push(Action::DelTap((*spec).clone()));
            }
            Some(n) if n != spec => {
                shown.push(step('!', format!("tap {name}"), "(deleted and created again)"));
                dels.push(Action::DelTap((*spec).clone()));
                adds.push(Action::AddTap((*n).clone()));
            }
            Some(_) => {}
        }
    }
    for (name, spec) in &new_t {
        if old_t.contains_key(name) {
            continue;
        }
        match rt.taps.get(name) {
            Some(r) if r == *spec => {
                shown.push(step('~', format!("tap {name}"), "(declared at runtime; now the file's)"));
                adopts.push(Action::Adopt(Kind::Tap, name.clone()));
            }
            Some(_) => {
                return Err(conflict(format!(
                    "TAP {name} is declared at runtime with other settings; `vmnetd rmtap {name}` first"
                )))
            }
            None => {
                shown.push(step(
                    '+',
                    format!("tap {name}"),
                    spec.user.clone().map(|u| format!("user {u}")).unwrap_or_default(),
                ));
                adds.push(Action::AddTap((*spec).clone()));
            }
        }
    }

    // Networks: a change is a removal and an addition (its gateway, dnsmasq and table).
    let old_n: BTreeMap<String, &NetworkConfig> = old.networks.iter().map(|n| (n.name.to_string(), n)).collect();
    let new_n: BTreeMap<String, &NetworkConfig> = new.networks.iter().map(|n| (n.name.to_string(), n)).collect();
    for n in &new.networks {
        if !bridge_known(n.bridge.as_str()) {
            return Err(bad(format!("Network {} is on bridge {}, which is not declared", n.name, n.bridge)));
        }
    }
    for (name, spec) in &old_n {
        let remade = remade_bridges.contains(spec.bridge.as_str());
        match new_n.get(name) {
            None => {
                shown.push(step('-', format!("network {name}"), ""));
                dels.push(Action::DelNetwork(Box::new((*spec).clone())));
            }
            Some(n) if n != spec || remade => {
                shown.push(step('!', format!("network {name}"), "(gateway, dnsmasq and NAT set up again)"));
                dels.push(Action::DelNetwork(Box::new((*spec).clone())));
                adds.push(Action::AddNetwork(Box::new((*n).clone())));
            }
            Some(_) => {}
        }
    }
    for (name, spec) in &new_n {
        if old_n.contains_key(name) {
            continue;
        }
        if rt.networks.contains_key(name) {
            return Err(conflict(format!(
                "Network {name} is declared at runtime; `vmnetd network del {name}` first, or leave it out of the file"
            )));
        }
        shown.push(step('+', format!("network {name}"), format!("on {}", spec.bridge)));
        adds.push(Action::AddNetwork(Box::new((*spec).clone())));
    }

    // Rules and mirrors, per bridge.
    let rules = |c: &Config| super::policy::PolicyConfig::from_config(c).flows;
    let (old_r, new_r) = (rules(old), rules(new));
    for f in &new.flows {
        crate::switch::flow::parse_rule(&f.rule)
            .map_err(|e| bad(format!("[[flow]] of bridge {}: rule {:?}: {e}", f.bridge, f.rule)))?;
    }
    let bridges: BTreeSet<&String> = old_r.keys().chain(new_r.keys()).collect();
    for b in bridges {
        let (o, n) = (old_r.get(b).cloned().unwrap_or_default(), new_r.get(b).cloned().unwrap_or_default());
        if !new_b.contains_key(b.as_str()) && !rt.bridges.contains_key(b.as_str()) {
            if !n.is_empty() {
                return Err(bad(format!("[[flow]] for bridge {b}, which is not declared")));
            }
            continue; // its bridge goes, and its rules with it
        }
        if o != n || (remade_bridges.contains(b) && !n.is_empty()) {
            let note = if rt.flow_overrides.contains(b) {
                " (changed at runtime: the runtime rules stay in force)"
            } else {
                ""
            };
            shown.push(step('~', format!("flows {b}"), format!("{} -> {} rules{note}", o.len(), n.len())));
            changes.push(Action::Flows(b.clone(), o, n));
        }
    }
    let mirrors = |c: &Config| -> BTreeMap<String, Vec<MirrorSpec>> {
        c.mirrors.iter().fold(BTreeMap::new(), |mut m, s| {
            m.entry(s.bridge.to_string()).or_insert_with(Vec::new).push(s.clone());
            m
        })
    };
    let (old_m, new_m) = (mirrors(old), mirrors(new));
    for m in &new.mirrors {
        m.validate()?;
        if !bridge_known(m.bridge.as_str()) {
            return Err(bad(format!("Mirror {} is on bridge {}, which is not declared", m.name, m.bridge)));
        }
        if rt.mirrors.contains(&format!("{}/{}", m.bridge, m.name)) {
            return Err(conflict(format!("Mirror {} of {} is declared at runtime; remove it first", m.name, m.bridge)));
        }
    }
    let bridges: BTreeSet<&String> = old_m.keys().chain(new_m.keys()).collect();
    for b in bridges {
        let (o, n) = (old_m.get(b).cloned().unwrap_or_default(), new_m.get(b).cloned().unwrap_or_default());
        let reinstall = remade_bridges.contains(b) && !n.is_empty();
        if o == n && !reinstall {
            continue;
        }
        for m in &o {
            match n.iter().find(|x| x.name == m.name) {
                None => shown.push(step('-', format!("mirror {b}/{}", m.name), "")),
                Some(x) if x != m => shown.push(step('!', format!("mirror {b}/{}", m.name), "")),
                _ => {}
            }
        }
        for m in n.iter().filter(|m| !o.iter().any(|x| x.name == m.name)) {
            shown.push(step('+', format!("mirror {b}/{}", m.name), ""));
        }
        if new_b.contains_key(b.as_str()) || rt.bridges.contains_key(b.as_str()) {
            changes.push(Action::Mirrors(b.clone(), o, n));
        }
    }

    // Order: removals (networks first, bridges and TAPs last), adoptions, additions and
    // changes (TAPs and bridges first, so a changed port may use a TAP or bridge the file
    // adds), rules and mirrors.
    let rank = |a: &Action| match a {
        Action::DelNetwork(_) => 0,
        Action::DelPort(_) => 1,
        Action::DelBridge(_) => 2,
        Action::DelTap(_) => 3,
        Action::AddTap(_) => 10,
        Action::AddBridge(_) => 11,
        Action::ChangePort(..) => 12,
        Action::AddPort(_) => 13,
        Action::AddNetwork(_) => 14,
        _ => 5,
    };
    // Rules and mirrors follow ports by name (the datapath resolves them as ports come and
    // go): they change last, when every port they name is there.
    let policy_last: Vec<Action> =
        changes.iter().filter(|a| matches!(a, Action::Flows(..) | Action::Mirrors(..))).cloned().collect();
    let (ports, others): (Vec<Action>, Vec<Action>) = changes
        .into_iter()
        .filter(|a| !matches!(a, Action::Flows(..) | Action::Mirrors(..)))
        .partition(|a| matches!(a, Action::ChangePort(..)));
    adds.extend(ports);
    dels.sort_by_key(rank);
    adds.sort_by_key(rank);
    let mut actions = dels;
    actions.extend(adopts);
    actions.extend(others);
    actions.extend(adds);
    actions.extend(policy_last);
    Ok((shown, actions))
}

impl Core {
    pub async fn datapath_stats(&self) -> Result<crate::api::DatapathStats, ApiError> {
        self.dp.call(|dp| dp.load.stats(dp.now())).await.map_err(internal)
    }

    /// What the runtime layer declares, for [`plan`].
    fn runtime(&self) -> Runtime {
        Runtime {
            taps: self.state.taps.iter().map(|t| (t.name.to_string(), tap_spec(t))).collect(),
            bridges: self.state.bridges.iter().map(|b| (b.spec.name.to_string(), b.spec.clone())).collect(),
            ports: self
                .state
                .ports
                .iter()
                .filter(|p| !p.spec.external_ids.contains_key(crate::network::NETWORK_LABEL))
                .map(|p| (port_key(&p.spec), p.spec.clone()))
                .collect(),
            networks: self
                .state
                .networks
                .iter()
                .map(|n| (n.spec.name.to_string(), n.spec.bridge.to_string()))
                .collect(),
            flow_overrides: self.state.flows.keys().cloned().collect(),
            mirrors: self.state.mirrors.iter().map(|m| format!("{}/{}", m.bridge, m.name)).collect(),
        }
    }

    pub fn config_dump(&self, req: ConfigDumpReq) -> Result<ConfigDump, ApiError> {
        let mut c = self.config.clone();
        if req.all {
            c.taps.extend(self.state.taps.iter().map(tap_spec));
            c.bridges.extend(self.state.bridges.iter().map(|b| b.spec.clone()));
            c.ports.extend(
                self.state
                    .ports
                    .iter()
                    .filter(|p| !p.spec.external_ids.contains_key(crate::network::NETWORK_LABEL))
                    .map(|p| p.spec.clone()),
            );
            c.networks.extend(self.state.networks.iter().map(|n| {
                let s = &n.spec;
                NetworkConfig {
                    name: s.name.clone(),
                    bridge: s.bridge.clone(),
                    vlan: s.vlan,
                    // What was resolved (an `auto` subnet stays where it is).
                    subnet: vmnetd_api::net::SubnetSpec::Cidr(n.subnet),
                    gateway: s.gateway,
                    nat: s.nat,
                    dhcp: s.dhcp.is_some(),
                    dhcp_range: s.dhcp.as_ref().and_then(|d| d.range),
                    dns: s.dns,
                    domain: s.domain.clone(),
                    ipv6: s.ipv6,
                    leases: n.leases.clone(),
                    forwards: n.forwards.clone(),
                }
            }));
            for (b, rules) in &self.state.flows {
                c.flows.retain(|f| f.bridge.as_str() != b);
                for r in rules {
                    c.flows.push(super::policy::FlowConfig { bridge: b.parse().map_err(internal)?, rule: r.clone() });
                }
            }
            c.mirrors.extend(self.state.mirrors.iter().cloned());
        }
        let body = toml::to_string(&c).map_err(internal)?;
        let origin: String = self.config_origin.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        let head = if req.all {
            format!(
                "# vmnetd {}: the running configuration (from {origin}) and the runtime declarations\n# (CLI, libvirt hook). Applied, the file takes over the runtime TAPs, bridges and ports;\n# runtime networks and mirrors must be removed first.\n\n",
                env!("CARGO_PKG_VERSION")
            )
        } else {
            format!(
                "# vmnetd {}: the running configuration (from {origin}).\n# `vmnetd apply` takes this file back.\n\n",
                env!("CARGO_PKG_VERSION")
            )
        };
        Ok(ConfigDump { toml: head + &body })
    }

    /// `vmnetd apply`: see the module's comment.
    pub async fn apply(&mut self, req: ApplyReq) -> Result<ApplyResult, ApiError> {
        let new = Config::parse(&req.text, &req.origin).map_err(|e| bad(crate::api::error_chain(&e)))?;
        let (shown, actions) = plan(&self.config, &new, &self.runtime())?;
        if req.dry_run || actions.is_empty() {
            let applied = !req.dry_run;
            if applied {
                self.adopt_config(new, &req.origin);
            }
            let note = if applied { self.restart_note(&req.origin) } else { None };
            return Ok(ApplyResult { plan: shown, applied, note });
        }
        let mut done: Vec<Action> = Vec::new();
        for a in &actions {
            log::info!("apply: {a:?}");
            if let Err(e) = self.run_action(a).await {
                log::error!("apply from {}: {}: {}; rolling back", req.origin, describe(a), e.message);
                for d in done.iter().rev() {
                    let inv = d.inverse();
                    if let Err(e2) = self.run_action(&inv).await {
                        log::error!("apply rollback: {}: {}", describe(&inv), e2.message);
                    }
                }
                if let Err(e2) = self.store.save(&self.state) {
                    log::error!("apply rollback: {}", crate::api::error_chain(&e2));
                }
                return Err(ApiError::new(
                    e.kind,
                    format!(
                        "{}: {}; nothing was changed (the steps before it were rolled back)",
                        describe(a),
                        e.message
                    ),
                ));
            }
            done.push(a.clone());
        }
        self.adopt_config(new, &req.origin);
        self.store.save(&self.state).map_err(internal)?;
        for s in &shown {
            tracing::info!(origin = %req.origin, change = %s, "apply from {}: {s}", req.origin);
        }
        Ok(ApplyResult { plan: shown, applied: true, note: self.restart_note(&req.origin) })
    }

    /// Changes from a file the daemon does not read at start last until the next restart.
    fn restart_note(&self, origin: &str) -> Option<String> {
        (origin != self.startup_config).then(|| {
            format!(
                "the daemon reads {} at start, not {origin}: copy the file there to keep this configuration across restarts",
                self.startup_config
            )
        })
    }

    fn adopt_config(&mut self, new: Config, origin: &str) {
        self.policy = super::policy::PolicyConfig::from_config(&new);
        self.config = new;
        self.config_origin = origin.to_owned();
    }

    /// One action, against the config layer; `cfg` is the config it comes from.
    async fn run_action(&mut self, a: &Action) -> Result<(), ApiError> {
        let cx = self.ctx();
        match a {
            Action::BusyPoll(_, us) => {
                let d = Duration::from_micros(u64::from(*us));
                self.dp.call(move |dp| dp.set_busy_poll(d)).await.map_err(internal)?;
            }
            Action::AddTap(spec) => {
                let name = spec.name.clone().ok_or_else(|| bad("a [[tap]] without a name"))?;
                let mut decl =
                    TapDecl::from_spec(spec, name.clone()).map_err(|e| ApiError::from_chain(e.kind(), &e))?;
                let outcome = tap::ensure(&self.nl, &decl, Policy::Declare)
                    .await
                    .map_err(|e| ApiError::from_chain(e.kind(), &e))?;
                decl.created = match outcome {
                    tap::Outcome::Created => true,
                    tap::Outcome::Adopted => matches!(self.nl.link(&name).await, Ok(Some(l)) if tap::is_ours(None, &l)),
                };
                self.config_taps.push(decl);
            }
            Action::DelTap(spec) => {
                let name = spec.name.clone().ok_or_else(|| bad("a [[tap]] without a name"))?;
                let decl = self.config_taps.iter().find(|t| t.name == name).cloned();
                if let Some(d) = &decl {
                    tap::remove(&self.nl, &name, Some(d), false)
                        .await
                        .map_err(|e| ApiError::from_chain(e.kind(), &e))?;
                }
                self.config_taps.retain(|t| t.name != name);
            }
            Action::AddBridge(spec) => {
                super::bridges::validate_bridge(spec)?;
                let created = crate::bridge::backend(spec.kind).create(&cx, spec).await?;
                self.config_bridges.push(BridgeDecl { spec: spec.clone(), created });
                // A new switch is empty: its rules (runtime or file) and mirrors go back in.
                if spec.kind == BridgeKind::Builtin {
                    self.reinstall_policy(&spec.name).await;
                }
            }
            Action::ChangeBridge(_, new) => {
                super::bridges::validate_bridge(new)?;
                let (name, cfg) = (new.name.to_string(), crate::bridge::builtin::switch_config(new));
                let found = self
                    .dp
                    .call(move |dp| {
                        let now = dp.now();
                        dp.bridge_mut(&name).map(|b| b.switch.set_fdb_config(cfg.fdb, now)).is_some()
                    })
                    .await
                    .map_err(internal)?;
                if !found {
                    return Err(conflict(format!("bridge {} is not in the datapath", new.name)));
                }
                if let Some(b) = self.config_bridges.iter_mut().find(|b| b.spec.name == new.name) {
                    b.spec = new.clone();
                }
            }
            Action::DelBridge(spec) => {
                if let Some(decl) = self.config_bridges.iter().find(|b| b.spec.name == spec.name).cloned() {
                    crate::bridge::backend(decl.spec.kind).destroy(&cx, &decl).await;
                }
                self.config_bridges.retain(|b| b.spec.name != spec.name);
            }
            Action::AddPort(spec) => {
                let backend = self.backend(&spec.bridge)?;
                backend.check_port(spec)?;
                let decl = self.attach_new_port(spec, None).await?;
                self.config_ports.push(decl);
            }
            Action::DelPort(spec) => {
                let key = |p: &PortDecl| p.spec.bridge == spec.bridge && p.spec.name == spec.name;
                if let Some(decl) = self.config_ports.iter().find(|p| key(p)).cloned() {
                    if let Ok(b) = self.backend(&spec.bridge) {
                        b.detach(&cx, &decl).await;
                    }
                }
                self.config_ports.retain(|p| !key(p));
            }
            Action::ChangePort(old, new) => {
                let key = |p: &PortDecl| p.spec.bridge == old.bridge && p.spec.name == old.name;
                let Some(cur) = self.config_ports.iter().find(|p| key(p)).cloned() else {
                    return Err(conflict(format!("port {}/{} is not running", old.bridge, old.name)));
                };
                let backend = self.backend(&new.bridge)?;
                backend.check_port(new)?;
                let mut next = cur.clone();
                next.spec = (**new).clone();
                let mut labels_only = (**old).clone();
                labels_only.external_ids = new.external_ids.clone();
                if labels_only == **new {
                    // Labels only: nothing in the system changes.
                    if let Some(p) = self.config_ports.iter_mut().find(|p| key(p)) {
                        *p = next;
                    }
                    return Ok(());
                }
                if !backend.reconfigure(&cx, &cur, &next).await? {
                    backend.detach(&cx, &cur).await;
                    self.config_ports.retain(|p| !key(p));
                    match self.attach_new_port(new, None).await {
                        Ok(decl) => self.config_ports.push(decl),
                        Err(e) => {
                            // Put the old port back before the rollback of the earlier steps.
                            if let Err(e2) = backend.attach(&cx, &cur, Policy::Restore).await {
                                log::error!("port {}/{}: cannot re-attach: {}", old.bridge, old.name, e2.message);
                            }
                            self.config_ports.push(cur);
                            return Err(e);
                        }
                    }
                    return Ok(());
                }
                if let Some(p) = self.config_ports.iter_mut().find(|p| key(p)) {
                    *p = next;
                }
            }
            Action::AddNetwork(nc) => self.add_config_network(nc).await?,
            Action::DelNetwork(nc) => self.del_config_network(nc).await?,
            Action::Flows(bridge, _, rules) => {
                let b: crate::ifname::IfName = bridge.parse().map_err(internal)?;
                let builtin = self.bridge_decl(bridge).is_some_and(|(d, _)| d.spec.kind == BridgeKind::Builtin);
                if builtin && !self.state.flows.contains_key(bridge) {
                    // All or nothing in the datapath; the config's rules change only after.
                    self.set_config_flows(&b, rules).await?;
                }
                if rules.is_empty() {
                    self.policy.flows.remove(bridge);
                } else {
                    self.policy.flows.insert(bridge.clone(), rules.clone());
                }
            }
            Action::Mirrors(bridge, _, specs) => {
                let before = self.policy.mirrors.clone();
                self.policy.mirrors.retain(|m| m.bridge.as_str() != bridge);
                self.policy.mirrors.extend(specs.iter().cloned());
                let b: crate::ifname::IfName = bridge.parse().map_err(internal)?;
                if self.bridge_decl(bridge).is_some_and(|(d, _)| d.spec.kind == BridgeKind::Builtin) {
                    if let Err(e) = self.set_config_mirrors(&b).await {
                        self.policy.mirrors = before;
                        let _ = self.set_config_mirrors(&b).await;
                        return Err(e);
                    }
                }
            }
            Action::Adopt(kind, name) => self.move_decl(*kind, name, true),
            Action::Unadopt(kind, name) => self.move_decl(*kind, name, false),
        }
        Ok(())
    }

    /// A re-created built-in bridge's rules (the runtime's if changed at runtime, else the
    /// file's) and mirrors, back into its new switch. Failures are logged (as at start).
    async fn reinstall_policy(&mut self, bridge: &crate::ifname::IfName) {
        let texts = match self.state.flows.get(bridge.as_str()) {
            Some(t) => t.clone(),
            None => self.policy.flows.get(bridge.as_str()).cloned().unwrap_or_default(),
        };
        if !texts.is_empty() {
            if let Err(e) = self.restore_flows(bridge, &texts).await {
                log::error!("bridge {bridge}: rules not installed again: {}", e.message);
            }
        }
        if let Err(e) = self.push_bridge_mirrors(bridge).await {
            log::error!("bridge {bridge}: mirrors not installed again: {}", e.message);
        }
    }

    /// Moves a declaration between the runtime layer and the config layer (`to_config`).
    fn move_decl(&mut self, kind: Kind, name: &str, to_config: bool) {
        fn take<T: Clone>(from: &mut Vec<T>, f: impl Fn(&T) -> bool) -> Option<T> {
            let i = from.iter().position(f)?;
            Some(from.remove(i))
        }
        match kind {
            Kind::Tap => {
                let (from, to) = if to_config {
                    (&mut self.state.taps, &mut self.config_taps)
                } else {
                    (&mut self.config_taps, &mut self.state.taps)
                };
                if let Some(t) = take(from, |t| t.name.as_str() == name) {
                    to.push(t);
                }
            }
            Kind::Bridge => {
                let (from, to) = if to_config {
                    (&mut self.state.bridges, &mut self.config_bridges)
                } else {
                    (&mut self.config_bridges, &mut self.state.bridges)
                };
                if let Some(b) = take(from, |b| b.spec.name.as_str() == name) {
                    to.push(b);
                }
            }
            Kind::Port => {
                let (from, to) = if to_config {
                    (&mut self.state.ports, &mut self.config_ports)
                } else {
                    (&mut self.config_ports, &mut self.state.ports)
                };
                if let Some(p) = take(from, |p| port_key(&p.spec) == name) {
                    to.push(p);
                }
            }
        }
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::AddTap(t) => format!("adding tap {}", tap_name(t)),
        Action::DelTap(t) => format!("removing tap {}", tap_name(t)),
        Action::AddBridge(b) => format!("adding bridge {}", b.name),
        Action::DelBridge(b) => format!("removing bridge {}", b.name),
        Action::AddPort(p) => format!("adding port {}", port_key(p)),
        Action::DelPort(p) => format!("removing port {}", port_key(p)),
        Action::ChangePort(p, _) => format!("changing port {}", port_key(p)),
        Action::ChangeBridge(b, _) => format!("changing bridge {}", b.name),
        Action::AddNetwork(n) => format!("adding network {}", n.name),
        Action::DelNetwork(n) => format!("removing network {}", n.name),
        Action::Flows(b, ..) => format!("setting the flow rules of {b}"),
        Action::Mirrors(b, ..) => format!("setting the mirrors of {b}"),
        Action::BusyPoll(..) => "setting datapath.busy_poll_us".into(),
        Action::Adopt(_, n) | Action::Unadopt(_, n) => format!("taking over {n}"),
    }
}

/// A TAP declaration as the spec a config file would have.
fn tap_spec(t: &TapDecl) -> TapSpec {
    let who =
        |p: &Option<crate::users::Principal>| p.as_ref().map(|p| p.name.clone().unwrap_or_else(|| p.id.to_string()));
    TapSpec {
        name: Some(t.name.clone()),
        mode: t.mode,
        user: who(&t.owner),
        group: who(&t.group),
        multi_queue: t.multi_queue,
        vnet_hdr: t.vnet_hdr,
        mtu: t.mtu,
        mac: t.mac,
        external_ids: t.external_ids.clone(),
    }
}

#[cfg(test)]
mod tests;
