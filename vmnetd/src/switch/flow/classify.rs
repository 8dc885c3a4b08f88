//! [`Classifier`]: the installed rules and the lookup of the rule a frame hits.
//!
//! Tuple-space search, as OVS's dpcls: rules are grouped into subtables by their mask (the
//! set of bits they match on); each subtable is a hash table from masked value to the rules
//! with that value, best first. A lookup masks the key once per subtable and probes it.
//! Subtables are kept in decreasing order of the highest priority they hold, so the search
//! stops at the first subtable that cannot beat the best match found so far. With no rules,
//! [`Classifier::is_empty`] is one load, and [`Classifier::lookup`] returns at once.
//! A lookup costs at most one probe per distinct mask; a per-flow cache in front of it (as
//! OVS's EMC) can key on the frame's [`FlowKey`] and invalidate on [`Classifier::generation`].
//!
//! Time is always passed in ([`Nanos`] on any monotonic clock of the caller's choice), never
//! read here. Every change bumps [`Classifier::generation`], for caches in front of it.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use super::key::{match_words, FlowKey, Words};
use super::parse::actions_to_string;
use super::*;
use crate::switch::port::PortId;

/// Nanoseconds on the caller's monotonic clock.
pub type Nanos = u64;

/// Most rules one classifier holds.
pub const MAX_RULES: usize = 65536;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A rule's identity: its installation sequence number (earlier installed = smaller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u64);

/// An action with its port resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolvedAction {
    Normal,
    Flood,
    Output(PortId),
    ModVlanVid(u16),
    StripVlan,
}

/// A rule's counters and times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub n_packets: u64,
    pub n_bytes: u64,
    pub installed_at: Nanos,
    /// The last hit, or the installation if never hit (what `idle_age` counts from).
    pub last_used: Nanos,
}

impl RuleStats {
    /// Seconds since installation (`duration` in `ovs-ofctl dump-flows`).
    pub fn duration(&self, now: Nanos) -> f64 {
        now.saturating_sub(self.installed_at) as f64 / NANOS_PER_SEC as f64
    }
    /// Whole seconds since the last hit or the installation (`idle_age`).
    pub fn idle_age(&self, now: Nanos) -> u64 {
        now.saturating_sub(self.last_used) / NANOS_PER_SEC
    }
}

/// An installed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub id: RuleId,
    /// The rule as given, port names and all (what `flow show` prints).
    pub rule: FlowRule,
    pub in_port: Option<PortId>,
    /// `rule.actions` with ports resolved, in the same order; empty = drop.
    pub actions: Vec<ResolvedAction>,
    pub stats: RuleStats,
    value: Words,
    mask: Words,
}

impl Installed {
    /// When the rule expires if not hit again (idle) or at all (hard), if ever.
    pub fn expires_at(&self) -> Option<Nanos> {
        let secs = |s: u16| u64::from(s) * NANOS_PER_SEC;
        let idle =
            (self.rule.idle_timeout != 0).then(|| self.stats.last_used.saturating_add(secs(self.rule.idle_timeout)));
        let hard =
            (self.rule.hard_timeout != 0).then(|| self.stats.installed_at.saturating_add(secs(self.rule.hard_timeout)));
        match (idle, hard) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the rule matches `key` (by its own value and mask).
    pub fn matches(&self, key: &FlowKey) -> bool {
        key.words().and(&self.mask) == self.value
    }
}

/// Why a rule cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error("unknown port {0:?}")]
    UnknownPort(String),
    #[error("too many rules (at most {MAX_RULES})")]
    TooManyRules,
}

/// A multiplicative hasher for packed keys (written a word at a time), with a final mix so
/// that the low bits (the bucket index) depend on every input bit. Keys come from rules an
/// administrator installs, not from the network, so flooding is not a concern.
#[derive(Default)]
pub(crate) struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

type WordMap<V> = HashMap<Words, V, BuildHasherDefault<WordHasher>>;

/// The rules sharing one mask.
#[derive(Debug, Clone)]
struct Subtable {
    mask: Words,
    max_priority: u16,
    /// Masked value → (priority, id) of its rules, best first (priority descending, then
    /// installation order). A value holds one rule per priority and match (two rules whose
    /// port names resolve alike, both detached, share a value).
    buckets: WordMap<Vec<(u16, RuleId)>>,
}

impl Subtable {
    fn recompute_max(&mut self) {
        self.max_priority = self.buckets.values().filter_map(|v| v.first()).map(|e| e.0).max().unwrap_or(0);
    }
}

/// The port of names that resolve to nothing: no frame comes from it, nothing goes to it.
pub const NO_PORT: PortId = PortId::NONE;

fn resolve_action<E>(a: &Action, port: &dyn Fn(&str) -> Result<PortId, E>) -> Result<ResolvedAction, E> {
    Ok(match a {
        Action::Normal => ResolvedAction::Normal,
        Action::Flood => ResolvedAction::Flood,
        Action::Output(p) => ResolvedAction::Output(port(p)?),
        Action::ModVlanVid(v) => ResolvedAction::ModVlanVid(*v),
        Action::StripVlan => ResolvedAction::StripVlan,
    })
}

/// `a` beats `b`: higher priority, or equal priority and installed earlier.
#[inline]
fn better(a: (u16, RuleId), b: (u16, RuleId)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The installed rules of one bridge.
#[derive(Debug, Default, Clone)]
pub struct Classifier {
    rules: HashMap<RuleId, Installed, BuildHasherDefault<WordHasher>>,
    /// Rules by priority and match as written: what a new rule replaces.
    by_match: HashMap<(u16, Match), RuleId>,
    /// Decreasing `max_priority`.
    subtables: Vec<Subtable>,
    generation: u64,
    next_id: u64,
}

impl Classifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// No rule installed: the datapath can skip the classifier entirely.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Bumped on every change of the rule set or of a rule's actions (not on counters).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of distinct masks (subtables a lookup may probe).
    pub fn n_subtables(&self) -> usize {
        self.subtables.len()
    }

    #[inline]
    pub fn get(&self, id: RuleId) -> Option<&Installed> {
        self.rules.get(&id)
    }

    /// The rules in installation order.
    pub fn rules(&self) -> Vec<&Installed> {
        let mut v: Vec<&Installed> = self.rules.values().collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// Installs `rule`, resolving its port names with `resolve`, at time `now`. A rule with
    /// the same match and priority as an installed one replaces it (as `ovs-ofctl
    /// add-flow` does): it gets a new id and fresh counters.
    pub fn insert(
        &mut self,
        rule: FlowRule,
        resolve: &dyn Fn(&str) -> Option<PortId>,
        now: Nanos,
    ) -> Result<RuleId, InstallError> {
        let port = |name: &str| resolve(name).ok_or_else(|| InstallError::UnknownPort(name.to_owned()));
        let in_port = rule.matches.in_port.as_deref().map(port).transpose()?;
        let actions =
            rule.actions.iter().map(|a| resolve_action(a, &port)).collect::<Result<Vec<_>, InstallError>>()?;
        let (value, mask) = match_words(&rule.matches, in_port);
        let replaced = self.by_match.get(&(rule.priority, rule.matches.clone())).copied();
        if replaced.is_none() && self.rules.len() >= MAX_RULES {
            return Err(InstallError::TooManyRules);
        }
        if let Some(old) = replaced {
            self.remove_quiet(old);
        }
        let id = RuleId(self.next_id);
        self.next_id += 1;
        let stats = RuleStats { installed_at: now, last_used: now, ..RuleStats::default() };
        self.place(Installed { id, rule, in_port, actions, stats, value, mask }, true);
        self.generation += 1;
        Ok(id)
    }

    /// Files an installed rule into its subtable.
    fn place(&mut self, r: Installed, sort: bool) {
        let (id, priority, value, mask) = (r.id, r.rule.priority, r.value, r.mask);
        self.by_match.insert((priority, r.rule.matches.clone()), id);
        self.rules.insert(id, r);
        let st = match self.subtables.iter().position(|s| s.mask == mask) {
            Some(i) => &mut self.subtables[i],
            None => {
                self.subtables.push(Subtable { mask, max_priority: priority, buckets: WordMap::default() });
                self.subtables.last_mut().expect("just pushed")
            }
        };
        let bucket = st.buckets.entry(value).or_default();
        let at = bucket.partition_point(|e| better(*e, (priority, id)));
        bucket.insert(at, (priority, id));
        st.max_priority = st.max_priority.max(priority);
        if sort {
            self.sort_subtables();
        }
    }

    /// Resolves every rule's port names again (ports came, went or were re-created with
    /// other ids), keeping each rule's id, counters and times. A name `resolve` does not
    /// know becomes [`NO_PORT`]: an `in_port` no frame has, an output that sends nothing.
    pub fn reresolve(&mut self, resolve: &dyn Fn(&str) -> Option<PortId>) {
        let port = |n: &str| resolve(n).unwrap_or(NO_PORT);
        let mut all: Vec<Installed> = self.rules.drain().map(|(_, r)| r).collect();
        all.sort_by_key(|r| r.id);
        self.subtables.clear();
        for mut r in all {
            r.in_port = r.rule.matches.in_port.as_deref().map(port);
            r.actions = r
                .rule
                .actions
                .iter()
                .map(|a| resolve_action(a, &|n| Ok::<_, ()>(port(n))).unwrap_or(ResolvedAction::Normal))
                .collect();
            (r.value, r.mask) = match_words(&r.rule.matches, r.in_port);
            // Two rules that differed only by a port name that now resolves the same way
            // keep both (the earlier wins lookups), as they were installed.
            self.place(r, false);
        }
        self.sort_subtables();
        self.generation += 1;
    }

    fn sort_subtables(&mut self) {
        // Stable, so equal maxima keep their order; lookups check all subtables that tie.
        self.subtables.sort_by_key(|s| std::cmp::Reverse(s.max_priority));
    }

    /// Removes a rule without bumping the generation.
    fn remove_quiet(&mut self, id: RuleId) -> Option<Installed> {
        let r = self.rules.remove(&id)?;
        self.by_match.remove(&(r.rule.priority, r.rule.matches.clone()));
        if let Some(i) = self.subtables.iter().position(|s| s.mask == r.mask) {
            let st = &mut self.subtables[i];
            if let Some(b) = st.buckets.get_mut(&r.value) {
                b.retain(|e| e.1 != id);
                if b.is_empty() {
                    st.buckets.remove(&r.value);
                }
            }
            if st.buckets.is_empty() {
                self.subtables.remove(i);
            } else if st.max_priority == r.rule.priority {
                st.recompute_max();
                self.sort_subtables();
            }
        }
        Some(r)
    }

    /// Removes one rule.
    pub fn remove(&mut self, id: RuleId) -> Option<Installed> {
        let r = self.remove_quiet(id)?;
        self.generation += 1;
        Some(r)
    }

    /// Removes the rules `keep` refuses (e.g. `flow del` by cookie or match); returns them.
    pub fn retain(&mut self, mut keep: impl FnMut(&Installed) -> bool) -> Vec<Installed> {
        let ids: Vec<RuleId> = self.rules().into_iter().filter(|r| !keep(r)).map(|r| r.id).collect();
        let out: Vec<Installed> = ids.into_iter().filter_map(|id| self.remove_quiet(id)).collect();
        if !out.is_empty() {
            self.generation += 1;
        }
        out
    }

    pub fn clear(&mut self) {
        if !self.rules.is_empty() {
            self.rules.clear();
            self.by_match.clear();
            self.subtables.clear();
            self.generation += 1;
        }
    }

    /// Swaps in a whole rule set at once (`flow replace`): either every rule installs, or
    /// nothing changes. Later rules with the same match and priority replace earlier ones.
    pub fn replace_all(
        &mut self,
        rules: Vec<FlowRule>,
        resolve: &dyn Fn(&str) -> Option<PortId>,
        now: Nanos,
    ) -> Result<(), InstallError> {
        let mut next = Classifier { next_id: self.next_id, ..Classifier::default() };
        for r in rules {
            next.insert(r, resolve, now)?;
        }
        next.generation = self.generation + 1;
        *self = next;
        Ok(())
    }

    /// The best rule matching `key`: highest priority, then earliest installed.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<&Installed> {
        if self.rules.is_empty() {
            return None;
        }
        self.lookup_id(&key.words()).and_then(|id| self.rules.get(&id))
    }

    #[inline]
    pub(crate) fn lookup_id(&self, w: &Words) -> Option<RuleId> {
        let mut best: Option<(u16, RuleId)> = None;
        for st in &self.subtables {
            if let Some((p, _)) = best {
                if st.max_priority < p {
                    break;
                }
            }
            if let Some(&c) = st.buckets.get(&w.and(&st.mask)).and_then(|b| b.first()) {
                if best.is_none_or(|b| better(c, b)) {
                    best = Some(c);
                }
            }
        }
        best.map(|b| b.1)
    }

    /// [`Classifier::lookup`] and count the hit: one packet of `bytes` bytes at `now`.
    pub fn classify(&mut self, key: &FlowKey, bytes: u64, now: Nanos) -> Option<&Installed> {
        if self.rules.is_empty() {
            return None;
        }
        let id = self.lookup_id(&key.words())?;
        self.record(id, 1, bytes, now);
        self.rules.get(&id)
    }

    /// Counts `packets` hits totalling `bytes` on rule `id` at `now` (for a datapath that
    /// looks up once per burst or per cached flow); false if the rule is gone.
    pub fn record(&mut self, id: RuleId, packets: u64, bytes: u64, now: Nanos) -> bool {
        match self.rules.get_mut(&id) {
            Some(r) => {
                r.stats.n_packets = r.stats.n_packets.saturating_add(packets);
                r.stats.n_bytes = r.stats.n_bytes.saturating_add(bytes);
                r.stats.last_used = r.stats.last_used.max(now);
                true
            }
            None => false,
        }
    }

    /// Removes and returns the rules whose idle or hard timeout has passed at `now`.
    pub fn expire(&mut self, now: Nanos) -> Vec<Installed> {
        if self.rules.values().all(|r| r.expires_at().is_none_or(|t| t > now)) {
            return Vec::new();
        }
        self.retain(|r| r.expires_at().is_none_or(|t| t > now))
    }

    /// The earliest time a rule expires (when to call [`Classifier::expire`] next).
    pub fn next_expiry(&self) -> Option<Nanos> {
        self.rules.values().filter_map(|r| r.expires_at()).min()
    }

    /// What the rules do with `key`, without counting anything.
    pub fn trace(&self, key: &FlowKey) -> Trace {
        let matched = self.lookup(key).map(|r| TraceRule {
            id: r.id,
            priority: r.rule.priority,
            cookie: r.rule.cookie,
            rule: r.rule.clone(),
            n_packets: r.stats.n_packets,
        });
        let verdict = match self.lookup(key) {
            None => Verdict::NoMatch,
            Some(r) if r.actions.is_empty() => Verdict::Drop,
            Some(r) => Verdict::Actions(r.actions.clone()),
        };
        Trace { key: *key, n_rules: self.rules.len(), n_subtables: self.subtables.len(), matched, verdict }
    }
}

/// The rule a trace hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRule {
    pub id: RuleId,
    pub priority: u16,
    pub cookie: u64,
    pub rule: FlowRule,
    pub n_packets: u64,
}

/// What the flow table decides for a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule matched: the frame takes the normal L2 pipeline (as if `actions=NORMAL`).
    NoMatch,
    /// The matching rule drops the frame.
    Drop,
    /// The matching rule's actions, ports resolved (may include `Normal`).
    Actions(Vec<ResolvedAction>),
}

/// A structured `trace` answer; `Display` renders it like `ovs-appctl ofproto/trace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub key: FlowKey,
    pub n_rules: usize,
    pub n_subtables: usize,
    pub matched: Option<TraceRule>,
    pub verdict: Verdict,
}

impl Trace {
    /// The trace as text, with `port` naming ports in the flow line.
    pub fn render(&self, port: &dyn Fn(PortId) -> String) -> String {
        let mut s = format!("Flow: {}\n\n", self.key.render(port));
        match &self.matched {
            Some(m) => {
                s += &format!(" 0. {}, priority {}, cookie 0x{:x}\n", m.rule.matches, m.priority, m.cookie);
                s += &format!("    {}\n", actions_to_string(&m.rule.actions));
            }
            None => {
                s += &format!(" 0. No match ({} rules in {} subtables).\n", self.n_rules, self.n_subtables);
                s += "    NORMAL\n";
            }
        }
        s += "\nFinal flow: unchanged\n";
        s += &format!("Datapath actions: {}\n", self.datapath_actions(port));
        s
    }

    /// The verdict as one line: `drop`, `NORMAL` or the resolved action list.
    pub fn datapath_actions(&self, port: &dyn Fn(PortId) -> String) -> String {
        match &self.verdict {
            Verdict::NoMatch => "NORMAL".to_owned(),
            Verdict::Drop => "drop".to_owned(),
            Verdict::Actions(a) => a
                .iter()
                .map(|a| match a {
                    ResolvedAction::Normal => "NORMAL".to_owned(),
                    ResolvedAction::Flood => "FLOOD".to_owned(),
                    ResolvedAction::Output(p) => format!("output:{}", port(*p)),
                    ResolvedAction::ModVlanVid(v) => format!("mod_vlan_vid:{v}"),
                    ResolvedAction::StripVlan => "strip_vlan".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|p| p.to_string()))
    }
}
