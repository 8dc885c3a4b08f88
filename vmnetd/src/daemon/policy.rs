//! Flow rules, `trace` and mirrors of built-in bridges: validation against the declared
//! ports, the datapath's tables, and persistence.
//!
//! Rules and mirrors name ports; a name must be a port declared on the bridge when a rule
//! or mirror is added (as `ovs-ofctl` refuses unknown ports). The datapath resolves names
//! to the ports attached at the moment and again whenever ports come or go, so a port that
//! is re-created (a VM restarted) is followed by name.
//!
//! Persistence: a bridge's rule set (its rules without timeouts, in their printed form) is
//! kept in the state once it is changed at runtime; until then the config file's `[[flow]]`
//! entries for that bridge are its rules. Mirrors from the config file (`[[mirror]]`) stay
//! as declared; mirrors added at runtime are kept in the state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{ApiError, BridgeKind, BridgeRef, ErrorKind, PortListReq, Source};
use crate::ifname::IfName;
use crate::switch::flow::{self, actions_to_string, parse_match, parse_rule, Action, FlowRule, Installed, Match};
use crate::switch::{MacAddr, PortId};
use vmnetd_api::policy::{
    FlowChange, FlowDel, FlowInfo, FlowMod, MirrorInfo, MirrorRef, MirrorSpec, TraceInfo, TraceReq, MAX_MIRRORS,
    MAX_RULES_PER_REQUEST,
};

use super::core::Core;

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

fn gone(e: crate::datapath::Gone) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

/// `[[flow]]` in the config file: one rule of a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub bridge: IfName,
    pub rule: String,
}

/// Policy from the config file.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    pub flows: BTreeMap<String, Vec<String>>,
    pub mirrors: Vec<MirrorSpec>,
}

impl PolicyConfig {
    /// A config file's `[[flow]]` rules, by bridge in file order, and its mirrors.
    pub fn from_config(c: &crate::config::Config) -> PolicyConfig {
        let mut flows: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in &c.flows {
            flows.entry(f.bridge.to_string()).or_default().push(f.rule.clone());
        }
        PolicyConfig { flows, mirrors: c.mirrors.clone() }
    }
}

/// Parses rules, each error naming its rule.
fn parse_rules(rules: &[String]) -> Result<Vec<FlowRule>, ApiError> {
    if rules.len() > MAX_RULES_PER_REQUEST {
        return Err(err(ErrorKind::InvalidArgument, format!("{} rules; at most {MAX_RULES_PER_REQUEST}", rules.len())));
    }
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            parse_rule(r).map_err(|e| {
                let which = if rules.len() > 1 { format!("rule {}: ", i + 1) } else { String::new() };
                err(ErrorKind::InvalidArgument, format!("{which}{e}"))
            })
        })
        .collect()
}

/// The port names a rule uses.
fn rule_ports(r: &FlowRule) -> impl Iterator<Item = &str> {
    r.matches.in_port.as_deref().into_iter().chain(r.actions.iter().filter_map(|a| match a {
        Action::Output(p) => Some(p.as_str()),
        _ => None,
    }))
}

/// What is persisted of a rule set: rules without timeouts, printed.
fn persistent(c: &flow::Classifier) -> Vec<String> {
    c.rules()
        .into_iter()
        .filter(|r| r.rule.idle_timeout == 0 && r.rule.hard_timeout == 0)
        .map(|r| r.rule.to_string())
        .collect()
}

/// Whether rule `r` names at least `filter`'s fields with its values (`flow del` without
/// `--strict`, as `ovs-ofctl del-flows`).
fn narrower(r: &Match, filter: &Match) -> bool {
    fn f<T: PartialEq>(rule: &Option<T>, filter: &Option<T>) -> bool {
        filter.is_none() || rule == filter
    }
    f(&r.in_port, &filter.in_port)
        && f(&r.dl_src, &filter.dl_src)
        && f(&r.dl_dst, &filter.dl_dst)
        && f(&r.dl_vlan, &filter.dl_vlan)
        && f(&r.dl_type, &filter.dl_type)
        && f(&r.nw_src, &filter.nw_src)
        && f(&r.nw_dst, &filter.nw_dst)
        && f(&r.ipv6_src, &filter.ipv6_src)
        && f(&r.ipv6_dst, &filter.ipv6_dst)
        && f(&r.nw_proto, &filter.nw_proto)
        && f(&r.tp_src, &filter.tp_src)
        && f(&r.tp_dst, &filter.tp_dst)
        && f(&r.icmp_type, &filter.icmp_type)
}

fn flow_info(r: &Installed, now: u64) -> FlowInfo {
    FlowInfo {
        cookie: r.rule.cookie,
        duration_secs: r.stats.duration(now),
        table: 0,
        priority: r.rule.priority,
        n_packets: r.stats.n_packets,
        n_bytes: r.stats.n_bytes,
        idle_age_secs: r.stats.idle_age(now),
        idle_timeout: r.rule.idle_timeout,
        hard_timeout: r.rule.hard_timeout,
        matches: r.rule.matches.to_string(),
        actions: actions_to_string(&r.rule.actions),
    }
}

impl Core {
    /// A declared built-in bridge, or why not.
    fn builtin(&self, bridge: &IfName) -> Result<(), ApiError> {
        match self.bridge_decl(bridge.as_str()) {
            None => Err(err(ErrorKind::NotFound, format!("No bridge {bridge}"))),
            Some((b, _)) if b.spec.kind != BridgeKind::Builtin => Err(err(
                ErrorKind::Unsupported,
                format!("Bridge {bridge} is a Linux bridge; flow rules, trace and mirrors need a built-in bridge"),
            )),
            Some(_) => Ok(()),
        }
    }

    fn check_port_names<'a>(&self, bridge: &IfName, names: impl IntoIterator<Item = &'a str>) -> Result<(), ApiError> {
        for n in names {
            if self.port_decl(bridge.as_str(), n).is_none() {
                return Err(err(ErrorKind::NotFound, format!("No port {n} on bridge {bridge}")));
            }
        }
        Ok(())
    }

    /// Saves a bridge's rule set after a change.
    async fn persist_flows(&mut self, bridge: &IfName) -> Result<(), ApiError> {
        let name = bridge.to_string();
        let texts = self
            .dp
            .call(move |dp| dp.bridge(&name).map(|b| persistent(b.switch.flows())).unwrap_or_default())
            .await
            .map_err(gone)?;
        self.state.flows.insert(bridge.to_string(), texts);
        self.store.save(&self.state).map_err(|e| ApiError::from_chain(ErrorKind::Internal, &e))
    }

    /// Runs `f` on the bridge's flow table in the datapath (all or nothing, see
    /// [`crate::datapath::Bridge::change_flows`]); its error is a conflict.
    async fn change_flows<R: Send + 'static>(
        &self,
        bridge: &IfName,
        f: impl FnOnce(&mut flow::Classifier, &dyn Fn(&str) -> Option<PortId>, u64) -> Result<R, String> + Send + 'static,
    ) -> Result<R, ApiError> {
        let name = bridge.to_string();
        self.dp
            .call(move |dp| {
                let now = dp.now();
                let br = dp.bridge_mut(&name).ok_or_else(|| format!("bridge {name} is not in the datapath"))?;
                br.change_flows(now, f)
            })
            .await
            .map_err(gone)?
            .map_err(|e| err(ErrorKind::Conflict, e))
    }

    pub async fn flow_add(&mut self, req: FlowMod) -> Result<FlowChange, ApiError> {
        self.builtin(&req.bridge)?;
        let rules = parse_rules(&req.rules)?;
        self.check_port_names(&req.bridge, rules.iter().flat_map(rule_ports))?;
        let change = self
            .change_flows(&req.bridge, |c, resolve, t| {
                let before = c.len();
                let added = rules.len();
                for r in rules {
                    c.insert(r, resolve, t).map_err(|e| e.to_string())?;
                }
                Ok(FlowChange { added, removed: before + added - c.len(), rules: c.len() })
            })
            .await?;
        self.persist_flows(&req.bridge).await?;
        log::info!("bridge {}: {} rule(s) added ({} installed)", req.bridge, change.added, change.rules);
        Ok(change)
    }

    pub async fn flow_replace(&mut self, req: FlowMod) -> Result<FlowChange, ApiError> {
        self.builtin(&req.bridge)?;
        let rules = parse_rules(&req.rules)?;
        self.check_port_names(&req.bridge, rules.iter().flat_map(rule_ports))?;
        let change = self
            .change_flows(&req.bridge, |c, resolve, t| {
                let before = c.len();
                let added = rules.len();
                c.replace_all(rules, resolve, t).map_err(|e| e.to_string())?;
                Ok(FlowChange { added, removed: before, rules: c.len() })
            })
            .await?;
        self.persist_flows(&req.bridge).await?;
        log::info!("bridge {}: rule set replaced ({} rules)", req.bridge, change.rules);
        Ok(change)
    }

    pub async fn flow_del(&mut self, req: FlowDel) -> Result<FlowChange, ApiError> {
        self.builtin(&req.bridge)?;
        // The filter is a match with optional priority and cookie.
        let filter = match &req.filter {
            None => None,
            Some(f) => {
                let m = parse_match(f).map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
                let meta = parse_rule(&format!("{f} actions=drop")).ok();
                let named = |k: &str| f.split(|c: char| c == ',' || c.is_ascii_whitespace()).any(|t| t.starts_with(k));
                let priority = meta.as_ref().filter(|_| named("priority=")).map(|r| r.priority);
                let cookie = meta.as_ref().filter(|_| named("cookie=")).map(|r| r.cookie);
                Some((m, priority, cookie))
            }
        };
        if req.strict && filter.is_none() {
            return Err(err(ErrorKind::InvalidArgument, "--strict needs a rule's match"));
        }
        let strict = req.strict;
        let change = self
            .change_flows(&req.bridge, move |c, _, _| {
                let gone = c.retain(|r| match &filter {
                    None => false,
                    Some((m, prio, cookie)) => {
                        let hit = if strict {
                            r.rule.matches == *m && r.rule.priority == prio.unwrap_or(flow::DEFAULT_PRIORITY)
                        } else {
                            narrower(&r.rule.matches, m)
                        };
                        !(hit && cookie.is_none_or(|k| k == r.rule.cookie))
                    }
                });
                Ok(FlowChange { added: 0, removed: gone.len(), rules: c.len() })
            })
            .await?;
        self.persist_flows(&req.bridge).await?;
        log::info!("bridge {}: {} rule(s) removed", req.bridge, change.removed);
        Ok(change)
    }

    pub async fn flow_show(&self, req: BridgeRef) -> Result<Vec<FlowInfo>, ApiError> {
        self.builtin(&req.bridge)?;
        let name = req.bridge.to_string();
        self.dp
            .call(move |dp| {
                let now = crate::switch::fdb::nanos(dp.now());
                dp.bridge(&name)
                    .map(|b| b.switch.flows().rules().into_iter().map(|r| flow_info(r, now)).collect())
                    .unwrap_or_default()
            })
            .await
            .map_err(gone)
    }

    pub async fn trace(&self, req: TraceReq) -> Result<TraceInfo, ApiError> {
        self.builtin(&req.bridge)?;
        let m = parse_match(&req.flow).map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
        let Some(in_port) = m.in_port.clone() else {
            return Err(err(ErrorKind::InvalidArgument, "the flow needs in_port=PORT"));
        };
        self.check_port_names(&req.bridge, [in_port.as_str()])?;
        let name = req.bridge.to_string();
        self.dp
            .call(move |dp| {
                let now = dp.now();
                let br = dp.bridge(&name).ok_or_else(|| format!("bridge {name} is not in the datapath"))?;
                let id = br.port_id(&in_port).ok_or_else(|| format!("port {in_port} is not attached"))?;
                let mut key = flow::key_from_match(&m, Some(id));
                // A frame needs a source; the trace of one without gets a neutral one.
                if let Some(e) = key.eth.as_mut() {
                    if m.dl_src.is_none() {
                        e.src = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
                    }
                }
                let frame = key.to_frame();
                let t = br.switch.trace(id, &frame, now);
                let pname = |p: PortId| br.port(p).map_or_else(|| "(none)".to_owned(), |x| x.name.clone());
                Ok(TraceInfo {
                    text: t.render(&pname),
                    rule: t.flow.as_ref().and_then(|f| f.matched.as_ref()).map(|r| r.rule.to_string()),
                    outputs: t.outputs.iter().map(|(p, _)| pname(*p)).collect(),
                    drop: match t.decision {
                        crate::switch::Decision::Drop(r) => Some(r.name().to_owned()),
                        _ => None,
                    },
                })
            })
            .await
            .map_err(gone)?
            .map_err(|e: String| err(ErrorKind::NotFound, e))
    }

    /// Whether a rule or mirror of `bridge` (declared or installed) names port `name`.
    pub(crate) fn policy_names_port(&self, bridge: &str, name: &str) -> bool {
        let rules = self.state.flows.get(bridge).or_else(|| self.policy.flows.get(bridge));
        let in_rules = rules.is_some_and(|texts| {
            texts.iter().filter_map(|t| parse_rule(t).ok()).any(|r| rule_ports(&r).any(|p| p == name))
        });
        in_rules
            || self.mirror_decls(bridge).iter().any(|(m, _)| {
                m.select_src.iter().chain(&m.select_dst).chain(&m.output_port).any(|p| p.as_str() == name)
            })
    }

    /// The mirrors of a bridge (config and state), as declared.
    fn mirror_decls(&self, bridge: &str) -> Vec<(MirrorSpec, Source)> {
        self.mirror_decls_of(Some(bridge))
    }

    /// The mirrors of one bridge, or of all (config first, then state).
    fn mirror_decls_of(&self, bridge: Option<&str>) -> Vec<(MirrorSpec, Source)> {
        self.policy
            .mirrors
            .iter()
            .map(|m| (m.clone(), Source::Config))
            .chain(self.state.mirrors.iter().map(|m| (m.clone(), Source::State)))
            .filter(|(m, _)| bridge.is_none_or(|b| m.bridge.as_str() == b))
            .collect()
    }

    async fn push_mirrors(&self, bridge: &IfName) -> Result<(), ApiError> {
        let specs: Vec<MirrorSpec> =
            self.mirror_decls(bridge.as_str()).into_iter().map(|(m, _)| m).take(MAX_MIRRORS).collect();
        let name = bridge.to_string();
        self.dp
            .call(move |dp| {
                if let Some(b) = dp.bridge_mut(&name) {
                    b.set_mirrors(specs);
                }
            })
            .await
            .map_err(gone)
    }

    pub async fn mirror_add(&mut self, spec: MirrorSpec) -> Result<MirrorInfo, ApiError> {
        spec.validate()?;
        self.builtin(&spec.bridge)?;
        let ports = spec.select_src.iter().chain(&spec.select_dst).chain(&spec.output_port).map(|p| p.as_str());
        self.check_port_names(&spec.bridge, ports)?;
        let existing = self.mirror_decls(spec.bridge.as_str());
        if let Some((m, source)) = existing.iter().find(|(m, _)| m.name == spec.name) {
            if *m == spec {
                return Ok(MirrorInfo { spec, packets: 0, bytes: 0, source: *source });
            }
            return Err(err(ErrorKind::Conflict, format!("Mirror {} exists with other settings", spec.name)));
        }
        if existing.len() >= MAX_MIRRORS {
            return Err(err(ErrorKind::Conflict, format!("Bridge {} has {MAX_MIRRORS} mirrors already", spec.bridge)));
        }
        if let Some(o) = &spec.output_port {
            if let Some((m, _)) = existing.iter().find(|(m, _)| m.output_port.as_ref() == Some(o)) {
                return Err(err(ErrorKind::Conflict, format!("Port {o} is already the output of mirror {}", m.name)));
            }
            if existing.iter().any(|(m, _)| m.select_src.contains(o) || m.select_dst.contains(o)) {
                return Err(err(ErrorKind::Conflict, format!("Port {o} is selected by another mirror")));
            }
        }
        self.state.mirrors.push(spec.clone());
        if let Err(e) = self.store.save(&self.state) {
            self.state.mirrors.pop();
            return Err(ApiError::from_chain(ErrorKind::Internal, &e));
        }
        self.push_mirrors(&spec.bridge).await?;
        log::info!("bridge {}: mirror {} added", spec.bridge, spec.name);
        Ok(MirrorInfo { spec, packets: 0, bytes: 0, source: Source::State })
    }

    pub async fn mirror_del(&mut self, req: MirrorRef) -> Result<MirrorInfo, ApiError> {
        let decls = self.mirror_decls(req.bridge.as_str());
        let Some((spec, source)) = decls.into_iter().find(|(m, _)| m.name == req.name) else {
            return Err(err(ErrorKind::NotFound, format!("No mirror {} on bridge {}", req.name, req.bridge)));
        };
        if source == Source::Config {
            return Err(err(
                ErrorKind::Conflict,
                format!("Mirror {} is declared in {}; remove it there", req.name, self.config_origin),
            ));
        }
        let info = self
            .mirror_list(PortListReq { bridge: Some(req.bridge.clone()) })
            .await?
            .into_iter()
            .find(|m| m.spec.name == req.name);
        self.state.mirrors.retain(|m| !(m.bridge == req.bridge && m.name == req.name));
        self.store.save(&self.state).map_err(|e| ApiError::from_chain(ErrorKind::Internal, &e))?;
        self.push_mirrors(&req.bridge).await?;
        log::info!("bridge {}: mirror {} removed", req.bridge, req.name);
        Ok(info.unwrap_or(MirrorInfo { spec, packets: 0, bytes: 0, source }))
    }

    pub async fn mirror_list(&self, req: PortListReq) -> Result<Vec<MirrorInfo>, ApiError> {
        let decls = self.mirror_decls_of(req.bridge.as_ref().map(|b| b.as_str()));
        let keys: Vec<(String, String)> = decls.iter().map(|(m, _)| (m.bridge.to_string(), m.name.clone())).collect();
        let counts = self
            .dp
            .call(move |dp| {
                keys.iter()
                    .map(|(b, n)| {
                        dp.bridge(b)
                            .and_then(|br| br.switch.mirrors().iter().find(|m| m.cfg.name == *n))
                            .map_or((0, 0), |m| (m.counters.packets, m.counters.bytes))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(gone)?;
        Ok(decls
            .into_iter()
            .zip(counts)
            .map(|((spec, source), (packets, bytes))| MirrorInfo { spec, packets, bytes, source })
            .collect())
    }

    /// `apply`: a bridge's config-file rules become `texts` (all or nothing).
    pub(crate) async fn set_config_flows(&self, bridge: &IfName, texts: &[String]) -> Result<(), ApiError> {
        let rules = parse_rules(texts)?;
        self.check_port_names(bridge, rules.iter().flat_map(rule_ports))?;
        self.change_flows(bridge, |c, resolve, t| c.replace_all(rules, resolve, t).map_err(|e| e.to_string())).await
    }

    /// Rules back into a bridge's switch, without checking that the ports they name exist
    /// (the datapath follows names as ports come), as at start.
    pub(crate) async fn restore_flows(&self, bridge: &IfName, texts: &[String]) -> Result<(), ApiError> {
        let rules = texts.iter().filter_map(|t| parse_rule(t).ok()).collect::<Vec<_>>();
        self.change_flows(bridge, |c, resolve, t| c.replace_all(rules, resolve, t).map_err(|e| e.to_string())).await
    }

    /// The bridge's mirrors (config and runtime) to the datapath, as they are declared.
    pub(crate) async fn push_bridge_mirrors(&self, bridge: &IfName) -> Result<(), ApiError> {
        self.push_mirrors(bridge).await
    }

    /// `apply`: the bridge's mirrors (config and runtime) to the datapath again.
    pub(crate) async fn set_config_mirrors(&self, bridge: &IfName) -> Result<(), ApiError> {
        let decls = self.mirror_decls(bridge.as_str());
        // The file's mirrors name declared ports (runtime ones were checked when added).
        for (m, _) in decls.iter().filter(|(_, s)| *s == Source::Config) {
            let ports = m.select_src.iter().chain(&m.select_dst).chain(&m.output_port).map(|p| p.as_str());
            self.check_port_names(bridge, ports)?;
        }
        self.push_mirrors(bridge).await
    }

    /// Installs the declared rules and mirrors of every built-in bridge (at start). A rule
    /// that no longer parses is logged and skipped.
    pub async fn restore_policy(&mut self) {
        let bridges: Vec<IfName> = self
            .config_bridges
            .iter()
            .chain(&self.state.bridges)
            .filter(|b| b.spec.kind == BridgeKind::Builtin)
            .map(|b| b.spec.name.clone())
            .collect();
        for b in bridges {
            let texts = match self.state.flows.get(b.as_str()) {
                Some(t) => t.clone(),
                None => self.policy.flows.get(b.as_str()).cloned().unwrap_or_default(),
            };
            let mut rules = Vec::new();
            for t in &texts {
                match parse_rule(t) {
                    Ok(r) => rules.push(r),
                    Err(e) => log::error!("bridge {b}: rule {t:?} skipped: {e}"),
                }
            }
            if !rules.is_empty() {
                let n = rules.len();
                let r = self
                    .change_flows(&b, |c, resolve, t| c.replace_all(rules, resolve, t).map_err(|e| e.to_string()))
                    .await;
                match r {
                    Ok(()) => log::info!("bridge {b}: {n} flow rule(s) installed"),
                    Err(e) => log::error!("bridge {b}: flow rules not installed: {}", e.message),
                }
            }
            let bad: Vec<String> = self
                .policy
                .mirrors
                .iter()
                .filter(|m| m.bridge == b)
                .filter_map(|m| m.validate().err().map(|e| format!("mirror {}: {}", m.name, e.message)))
                .collect();
            for e in &bad {
                log::error!("bridge {b} in {}: {e}", self.config_origin);
            }
            self.policy.mirrors.retain(|m| m.bridge != b || m.validate().is_ok());
            if self.mirror_decls(b.as_str()).len() > MAX_MIRRORS {
                log::error!("bridge {b}: more than {MAX_MIRRORS} mirrors; the first {MAX_MIRRORS} are used");
            }
            if !self.mirror_decls(b.as_str()).is_empty() {
                if let Err(e) = self.push_mirrors(&b).await {
                    log::error!("bridge {b}: mirrors: {}", e.message);
                }
            }
        }
    }
}
