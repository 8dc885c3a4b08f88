//! The full pipeline of the built-in bridge: flow rules, mirrors, port isolation and ingress
//! policing, around the normal L2 pipeline. Pure logic, like the rest of the switch.
//!
//! A bridge without any of these takes the plain pipeline of [`Switch::decide`]; the first
//! rule, mirror, isolated or policed port switches it to this one ([`Switch::refresh`]).
//!
//! Order, per frame:
//! 1. admission, as always: counted as received; runts, truncated tags, bad sources and VLAN
//!    membership refused; locked MACs checked; frames received on a mirror's output port
//!    dropped (that port only sends copies, as in OVS);
//! 2. ingress policing (a token bucket on the port, with the clock passed in);
//! 3. the flow table ([`flow::Classifier`]), keyed on the frame's first [`FLOW_HEAD`] bytes;
//!    no matching rule means `NORMAL`;
//! 4. the rule's actions in order. VLANs stay closed: every output, `flood` and `NORMAL`
//!    alike, goes only to ports that are members of the frame's VLAN, tagged or not as
//!    that port's mode says; `mod_vlan_vid:V` is the one way a rule moves a frame to
//!    another VLAN (for the actions after it); `strip_vlan` restricts the actions after it
//!    to ports that carry the frame's VLAN untagged. An isolated port's frames never reach
//!    another isolated port. Learning happens only under `NORMAL` (a frame a rule drops
//!    teaches the table nothing);
//! 5. mirrors: a copy of every frame a selected port received (whatever became of it) or
//!    was sent, tagged with its VLAN, to the mirror's output port or VLAN; at most one copy
//!    per output port and frame.

use super::flow::{key::FlowKey, ResolvedAction, MAX_ACTIONS};
use super::*;

/// How many of a frame's first bytes the flow key is taken from: an Ethernet header with a
/// tag (18), an IPv4 header with options (60) and a TCP header (20) fit; an edge hands the
/// switch at least `min(len, FLOW_HEAD)` bytes of every frame while the bridge has rules
/// ([`Switch::wants_deep_heads`]).
pub const FLOW_HEAD: usize = 128;

/// Where a mirror's copies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOutput {
    /// To one port, which then sends nothing else.
    Port(PortId),
    /// To every member port of a VLAN, tagged with it (remote SPAN).
    Vlan(VlanId),
}

/// A mirror's selection and output, ports resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    pub name: String,
    /// Frames these ports receive.
    pub select_src: Vec<PortId>,
    /// Frames sent to these ports.
    pub select_dst: Vec<PortId>,
    /// Only frames of these VLANs (all when `None`). With neither port list, every port.
    pub select_vlan: Option<VlanSet>,
    pub output: MirrorOutput,
}

impl MirrorConfig {
    fn selects_all_ports(&self) -> bool {
        self.select_src.is_empty() && self.select_dst.is_empty()
    }
}

/// Copies a mirror made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorCounters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub cfg: MirrorConfig,
    pub counters: MirrorCounters,
}

/// What [`Switch::trace`] found: the decision and why.
#[derive(Debug, Clone)]
pub struct PipelineTrace {
    pub in_port: PortId,
    /// The ingress VLAN classification, or why the frame is refused before any rule.
    pub vlan: Result<VlanId, DropReason>,
    /// The flow table's part (`None`: the bridge has no rules).
    pub flow: Option<flow::Trace>,
    /// The destination's forwarding-table entry in the frame's VLAN, for a unicast
    /// destination: `(mac, port it was learned on)`.
    pub fdb: Option<(MacAddr, Option<PortId>)>,
    pub decision: Decision,
    /// Where copies would go, with their tag actions (mirror copies included).
    pub outputs: Vec<(PortId, TagAction)>,
    /// Mirrors that would copy the frame.
    pub mirrors: Vec<String>,
}

impl PipelineTrace {
    /// The trace as text, like `ovs-appctl ofproto/trace`, with `port` naming ports.
    pub fn render(&self, port: &dyn Fn(PortId) -> String) -> String {
        let mut s = String::new();
        match &self.flow {
            Some(t) => {
                s += &t.render(port);
                s.truncate(s.trim_end().len());
                // The flow trace's own last lines are superseded by the pipeline's.
                if let Some(i) = s.find("\nFinal flow:") {
                    s.truncate(i);
                }
                s += "\n";
            }
            None => s += &format!("Flow: in_port={}\n 0. No flow rules: NORMAL\n", port(self.in_port)),
        }
        s += "\n";
        match self.vlan {
            Ok(v) => s += &format!("Ingress: VLAN {v}\n"),
            Err(r) => s += &format!("Ingress: dropped ({})\n", r.name()),
        }
        if let Some((mac, found)) = self.fdb {
            match found {
                Some(p) => s += &format!("FDB: {mac} learned on {}\n", port(p)),
                None => s += &format!("FDB: {mac} unknown\n"),
            }
        }
        let verdict = match self.decision {
            Decision::Drop(r) => format!("drop ({})", r.name()),
            Decision::Unicast { port: p, .. } => format!("unicast to {}", port(p)),
            Decision::Flood { vlan, .. } => format!("flood in VLAN {vlan}"),
            Decision::Outputs { vlan, outputs } => format!("{outputs} output(s), VLAN {vlan}"),
        };
        s += &format!("Decision: {verdict}\n");
        for m in &self.mirrors {
            s += &format!("Mirror: {m}\n");
        }
        let outs: Vec<String> = self.outputs.iter().map(|(p, a)| format!("{}{}", port(*p), tag_note(*a))).collect();
        s += &format!("Datapath actions: {}\n", if outs.is_empty() { "drop".to_owned() } else { outs.join(",") });
        s
    }
}

fn tag_note(a: TagAction) -> String {
    match a {
        TagAction::Keep => String::new(),
        TagAction::Pop => " (pop tag)".to_owned(),
        TagAction::Push(t) => format!(" (push VLAN {})", t.vid()),
        TagAction::SetTci(t) => format!(" (set VLAN {})", t.vid()),
    }
}

/// The burst's last flow lookup: frames of a burst mostly belong to one flow, so a frame
/// whose key equals the previous one's reuses its rule and actions (the rules cannot change
/// within a burst: the control plane runs between bursts). Like OVS's exact-match cache,
/// for one entry.
#[derive(Debug, Clone)]
pub(super) struct FlowMemo {
    pub(super) valid: bool,
    words: flow::key::Words,
    rule: Option<flow::RuleId>,
    acts: [ResolvedAction; MAX_ACTIONS],
    n: usize,
    /// No rule matched, or the rule's only action is `normal`.
    normal: bool,
}

impl Default for FlowMemo {
    fn default() -> Self {
        FlowMemo {
            valid: false,
            words: flow::key::Words([0; flow::key::WORDS]),
            rule: None,
            acts: [ResolvedAction::Normal; MAX_ACTIONS],
            n: 0,
            normal: false,
        }
    }
}

/// Entries of the exact-match cache (a power of two).
const EMC_SIZE: usize = 4096;

/// An exact-match cache in front of the classifier, as OVS's EMC: a flow key's rule,
/// found by the key's hash, valid while the rules have not changed since (`epoch`). Many
/// flows at once (frames of a burst to many destinations) then cost one hash and compare
/// each instead of a probe per subtable.
#[derive(Debug, Clone, Default)]
pub(super) struct Emc {
    slots: Vec<(flow::key::Words, Option<flow::RuleId>, u64)>,
    /// Bumped by every change of the rules; 0 is never valid.
    pub(super) epoch: u64,
}

impl Emc {
    #[inline]
    fn slot(w: &flow::key::Words) -> usize {
        let h = w.0.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, x| (h ^ x).wrapping_mul(0xff51_afd7_ed55_8ccd));
        (h ^ (h >> 29)) as usize & (EMC_SIZE - 1)
    }

    #[inline]
    fn get(&self, w: &flow::key::Words) -> Option<Option<flow::RuleId>> {
        let (k, r, e) = self.slots.get(Self::slot(w))?;
        // Slots start at epoch 0, the cache's at 1 (bumped before any lookup).
        (*e == self.epoch && FlowKey::same_words(k, w)).then_some(*r)
    }

    fn put(&mut self, w: flow::key::Words, r: Option<flow::RuleId>) {
        if self.slots.is_empty() {
            self.slots = vec![(flow::key::Words([0; flow::key::WORDS]), None, 0); EMC_SIZE];
        }
        self.slots[Self::slot(&w)] = (w, r, self.epoch);
    }
}

/// One destination's outcome in the full pipeline.
enum Out {
    Sent,
    /// Decided and counted at the port (an MTU drop there).
    Counted,
    NotMember,
    Isolated,
}

impl Switch {
    /// Recomputes whether frames need the full pipeline. Called after every change of
    /// rules, mirrors or port settings.
    pub(super) fn refresh(&mut self) {
        let outputs: Vec<PortId> = self
            .mirrors
            .iter()
            .filter_map(|m| match m.cfg.output {
                MirrorOutput::Port(p) => Some(p),
                MirrorOutput::Vlan(_) => None,
            })
            .collect();
        let mut special = false;
        for (i, p) in self.ports.iter_mut().enumerate() {
            if let Some(p) = p {
                p.mirror_out = outputs.contains(&PortId::from_index(i));
                special |= p.cfg.isolated || p.cfg.policer.is_some() || p.cfg.egress_policer.is_some() || p.mirror_out;
            }
        }
        self.slow = special || !self.flows.is_empty() || !self.mirrors.is_empty();
        // Whatever changed, cached lookups are forgotten.
        self.emc.epoch += 1;
        self.fmemo.valid = false;
        self.flows_only = !special && self.mirrors.is_empty() && !self.flows.is_empty();
    }

    /// The flow table's verdict for a frame, through the burst's memo, counting the hit:
    /// `Some(true)` if it is plain NORMAL (no rule matched, or the rule's only action is
    /// `normal`), `Some(false)` for anything else (the actions are in the memo), `None` if
    /// the frame is too short to look up (the full pipeline refuses it).
    #[inline(always)]
    pub(super) fn flow_lookup(
        &mut self,
        in_port: PortId,
        f: &FrameInfo<'_>,
        now: fdb::Nanos,
        memo: &mut BurstMemo,
    ) -> Option<bool> {
        let head = &f.head[..f.head.len().min(f.len)];
        if head.len() < f.len.min(FLOW_HEAD) {
            return None;
        }
        let w = FlowKey::words_of(in_port, &head[..head.len().min(FLOW_HEAD)]);
        if !(self.fmemo.valid && FlowKey::same_words(&self.fmemo.words, &w)) {
            let rule = match self.emc.get(&w) {
                Some(r) => r,
                None => {
                    let r = self.flows.lookup_id(&w);
                    self.emc.put(w, r);
                    r
                }
            };
            let m = &mut self.fmemo;
            (m.valid, m.words, m.rule, m.n) = (true, w, rule, 1);
            m.acts[0] = ResolvedAction::Normal;
            if let Some(r) = rule.and_then(|id| self.flows.get(id)) {
                m.n = r.actions.len().min(MAX_ACTIONS);
                m.acts[..m.n].copy_from_slice(&r.actions[..m.n]);
            }
            m.normal = m.n == 1 && m.acts[0] == ResolvedAction::Normal;
        }
        if let Some(id) = self.fmemo.rule {
            self.hit(memo, id, f.len, now);
        }
        Some(self.fmemo.normal)
    }

    /// The edges must hand the switch at least `min(len, FLOW_HEAD)` bytes of each frame.
    #[inline]
    pub fn wants_deep_heads(&self) -> bool {
        !self.flows.is_empty()
    }

    pub fn flows(&self) -> &flow::Classifier {
        &self.flows
    }

    /// Swaps in a flow table (made from a copy of [`Switch::flows`]).
    pub fn set_flows(&mut self, flows: flow::Classifier) {
        self.flows = flows;
        self.refresh();
    }

    /// Installs a rule (see [`flow::Classifier::insert`]).
    pub fn flow_insert(
        &mut self,
        rule: flow::FlowRule,
        resolve: &dyn Fn(&str) -> Option<PortId>,
        now: Duration,
    ) -> Result<flow::RuleId, flow::InstallError> {
        let r = self.flows.insert(rule, resolve, fdb::nanos(now));
        self.refresh();
        r
    }

    /// Removes the rules `keep` refuses; returns them.
    pub fn flow_retain(&mut self, keep: impl FnMut(&flow::Installed) -> bool) -> Vec<flow::Installed> {
        let out = self.flows.retain(keep);
        self.refresh();
        out
    }

    /// Swaps in a whole rule set, or changes nothing.
    pub fn flow_replace(
        &mut self,
        rules: Vec<flow::FlowRule>,
        resolve: &dyn Fn(&str) -> Option<PortId>,
        now: Duration,
    ) -> Result<(), flow::InstallError> {
        let r = self.flows.replace_all(rules, resolve, fdb::nanos(now));
        self.refresh();
        r
    }

    /// Resolves the rules' port names again (ports came or went).
    pub fn flow_reresolve(&mut self, resolve: &dyn Fn(&str) -> Option<PortId>) {
        if !self.flows.is_empty() {
            self.flows.reresolve(resolve);
            self.refresh();
        }
    }

    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    /// Sets the mirrors; one that keeps its name keeps its counters.
    pub fn set_mirrors(&mut self, cfgs: Vec<MirrorConfig>) {
        let old = std::mem::take(&mut self.mirrors);
        self.mirrors = cfgs
            .into_iter()
            .map(|cfg| {
                let counters = old.iter().find(|m| m.cfg.name == cfg.name).map(|m| m.counters).unwrap_or_default();
                Mirror { cfg, counters }
            })
            .collect();
        self.refresh();
    }

    /// What the switch would do with `frame` arriving on `in_port` at `now`, and why,
    /// without sending, learning or counting anything.
    pub fn trace(&self, in_port: PortId, frame: &[u8], now: Duration) -> PipelineTrace {
        let n = fdb::nanos(now);
        let vlan = self.ingress_vlan(in_port, frame);
        let flow = (!self.flows.is_empty())
            .then(|| self.flows.trace(&FlowKey::extract(Some(in_port), &frame[..frame.len().min(FLOW_HEAD)])));
        let fdb = match (vlan, frame.len() >= ETH_HLEN) {
            (Ok(v), true) => {
                let dst = MacAddr::u64_at(frame, 0);
                (dst >> 40 & 1 == 0).then(|| (MacAddr::from_u64(dst), self.fdb.lookup_raw(v, dst, n)))
            }
            _ => None,
        };
        // The decision itself is made by the datapath's own code, on a copy.
        let mut sim = self.clone();
        sim.slow = true;
        sim.fmemo.valid = false;
        let mut plan = BurstPlan::new();
        let mut memo = BurstMemo::default();
        // A trace learns nothing (as ofproto/trace): the source counts as learned already.
        if let (Ok(v), true) = (vlan, frame.len() >= ETH_HLEN) {
            memo.src = vlan_mac_key(v, MacAddr::u64_at(frame, 6));
        }
        let decision = sim.decide(in_port, 0, &FrameInfo::whole(frame), n, &mut plan, &mut memo);
        let outputs = plan.destinations().flat_map(|(p, l)| l.iter().map(move |e| (p, e.action))).collect();
        let mirrors = sim
            .mirrors
            .iter()
            .zip(&self.mirrors)
            .filter(|(a, b)| a.counters.packets != b.counters.packets)
            .map(|(a, _)| a.cfg.name.clone())
            .collect();
        PipelineTrace { in_port, vlan, flow, fdb, decision, outputs, mirrors }
    }

    /// The VLAN `frame` is classified into on `in_port`, or why it is refused first.
    fn ingress_vlan(&self, in_port: PortId, frame: &[u8]) -> Result<VlanId, DropReason> {
        let cfg = self.port(in_port).ok_or(DropReason::RxError)?;
        ingress_vlan_of(&cfg.mode, head_tci(frame)?)
    }

    /// Adds the hits of the burst's last rule to its counters.
    pub(super) fn flush_hits(&mut self, memo: &mut BurstMemo, now: fdb::Nanos) {
        if let Some((id, packets, bytes)) = memo.hits.take() {
            self.flows.record(id, packets, bytes, now);
        }
    }

    #[inline]
    fn hit(&mut self, memo: &mut BurstMemo, id: flow::RuleId, len: usize, now: fdb::Nanos) {
        match &mut memo.hits {
            Some((last, p, b)) if *last == id => {
                *p += 1;
                *b += len as u64;
            }
            _ => {
                self.flush_hits(memo, now);
                memo.hits = Some((id, 1, len as u64));
            }
        }
    }

    /// The full pipeline for one frame (see the module documentation). Out of line, so the
    /// plain pipeline stays small.
    /// `looked_up`: [`Switch::flow_lookup`] ran for this frame already (its verdict is in
    /// the memo).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide_slow(
        &mut self,
        in_port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        now: fdb::Nanos,
        plan: &mut BurstPlan,
        memo: &mut BurstMemo,
        looked_up: bool,
    ) -> Decision {
        self.outs.clear();
        self.clock = now;
        let (d, vlan, in_tci) = self.pipeline(in_port, idx, f, now, plan, memo, looked_up);
        if let (Some(v), false) = (vlan, self.mirrors.is_empty()) {
            self.mirror(in_port, idx, f, v, in_tci, plan);
        }
        d
    }

    #[allow(clippy::too_many_arguments)]
    fn pipeline(
        &mut self,
        in_port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        now: fdb::Nanos,
        plan: &mut BurstPlan,
        memo: &mut BurstMemo,
        looked_up: bool,
    ) -> (Decision, Option<VlanId>, Option<Tci>) {
        let drop = |s: &mut Switch, r: DropReason, vlan: Option<VlanId>, tci: Option<Tci>| {
            s.count_drop(in_port, r);
            (Decision::Drop(r), vlan, tci)
        };
        let Some(Some(st)) = self.ports.get_mut(in_port.index()) else {
            return (Decision::Drop(DropReason::RxError), None, None);
        };
        st.counters.rx_packets += 1;
        st.counters.rx_bytes += f.len as u64;
        let head = &f.head[..f.head.len().min(f.len)];
        let in_tci = match head_tci(head) {
            Ok(t) => t,
            Err(r) => return drop(self, r, None, None),
        };
        if st.mirror_out {
            return drop(self, DropReason::MirrorPort, None, in_tci);
        }
        let src48 = MacAddr::u64_at(head, 6);
        if src48 >> 40 & 1 != 0 || src48 == 0 {
            return drop(self, DropReason::BadSource, None, in_tci);
        }
        let vlan = match ingress_vlan_of(&st.cfg.mode, in_tci) {
            Ok(v) => v,
            Err(r) => return drop(self, r, None, in_tci),
        };
        if st.cfg.lock_macs && !st.cfg.macs.contains(&MacAddr::from_u64(src48)) {
            return drop(self, DropReason::MacLocked, Some(vlan), in_tci);
        }
        if let Some(p) = st.cfg.policer {
            if !st.bucket.take(&p, f.len, now) {
                return drop(self, DropReason::Policed, Some(vlan), in_tci);
            }
        }
        let isolated = st.cfg.isolated;
        let mut n = 1;
        if looked_up {
            n = self.fmemo.n;
        } else if !self.flows.is_empty() {
            // Fail closed: a rule must never miss a frame for want of its bytes.
            match self.flow_lookup(in_port, f, now, memo) {
                None => return drop(self, DropReason::RxError, Some(vlan), in_tci),
                Some(_) => n = self.fmemo.n,
            }
        } else {
            self.fmemo.acts[0] = ResolvedAction::Normal;
        }
        let only_normal = n == 1 && self.fmemo.acts[0] == ResolvedAction::Normal;
        let (mut cur, mut untag, mut outputs) = (vlan, false, 0u32);
        let mut why = DropReason::Policy;
        for i in 0..n {
            match self.fmemo.acts[i] {
                ResolvedAction::Normal => {
                    match self.normal(in_port, idx, f, cur, in_tci, untag, isolated, now, plan, memo) {
                        Ok((k, d)) => {
                            if only_normal {
                                return (d, Some(vlan), in_tci);
                            }
                            outputs += k;
                        }
                        Err(r) => why = r,
                    }
                }
                ResolvedAction::Flood => {
                    let (k, iso) = self.flood_slow(in_port, idx, f, cur, in_tci, untag, isolated, plan);
                    outputs += k;
                    if k == 0 {
                        why = if iso { DropReason::Isolated } else { DropReason::NoDestination };
                    }
                }
                ResolvedAction::Output(p) => {
                    if p == in_port || plan.has(p, idx) {
                        continue;
                    }
                    match self.egress_slow(p, idx, cur, in_tci, f, untag, isolated, plan) {
                        Out::Sent | Out::Counted => outputs += 1,
                        Out::Isolated => why = DropReason::Isolated,
                        Out::NotMember => {}
                    }
                }
                ResolvedAction::ModVlanVid(v) => {
                    if let Some(v) = VlanId::new(v) {
                        (cur, untag) = (v, false);
                    }
                }
                ResolvedAction::StripVlan => untag = true,
            }
        }
        if outputs == 0 {
            return drop(self, why, Some(vlan), in_tci);
        }
        (Decision::Outputs { vlan: cur, outputs }, Some(vlan), in_tci)
    }

    /// `NORMAL`: learn the source, forward to where the destination was learned, or flood.
    /// Returns the copies made and the decision, or why none was.
    #[allow(clippy::too_many_arguments)]
    fn normal(
        &mut self,
        in_port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        vlan: VlanId,
        in_tci: Option<Tci>,
        untag: bool,
        isolated: bool,
        now: fdb::Nanos,
        plan: &mut BurstPlan,
        memo: &mut BurstMemo,
    ) -> Result<(u32, Decision), DropReason> {
        let dst = MacAddr::u64_at(f.head, 0);
        if dst & !0xf == 0x0180_c200_0000 {
            return Err(DropReason::LinkLocal);
        }
        let src48 = MacAddr::u64_at(f.head, 6);
        self.learn(in_port, vlan, src48, now, memo)?;
        if dst >> 40 & 1 == 0 {
            if let Some(port) = self.lookup_dst(memo, vlan, dst, now) {
                if port == in_port {
                    return Err(DropReason::SamePort);
                }
                if plan.has(port, idx) {
                    return Ok((0, Decision::Unicast { vlan, port, action: TagAction::Keep }));
                }
                match self.egress_slow(port, idx, vlan, in_tci, f, untag, isolated, plan) {
                    Out::Sent | Out::Counted => {
                        let action =
                            plan.out.get(port.index()).and_then(|l| l.last()).map_or(TagAction::Keep, |e| e.action);
                        return Ok((1, Decision::Unicast { vlan, port, action }));
                    }
                    Out::Isolated => return Err(DropReason::Isolated),
                    Out::NotMember => {}
                }
            }
        }
        let (k, iso) = self.flood_slow(in_port, idx, f, vlan, in_tci, untag, isolated, plan);
        if k == 0 {
            return Err(if iso { DropReason::Isolated } else { DropReason::NoDestination });
        }
        if let Some(Some(p)) = self.ports.get_mut(in_port.index()) {
            p.counters.rx_flooded += 1;
        }
        Ok((k, Decision::Flood { vlan, in_tci }))
    }

    /// Every member of `vlan` but the ingress port. Returns the copies made, and whether
    /// isolation stopped any.
    #[allow(clippy::too_many_arguments)]
    fn flood_slow(
        &mut self,
        in_port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        vlan: VlanId,
        in_tci: Option<Tci>,
        untag: bool,
        isolated: bool,
        plan: &mut BurstPlan,
    ) -> (u32, bool) {
        let v = usize::from(vlan.get());
        let (mut k, mut iso) = (0, false);
        for i in 0..self.flood[v].len() {
            let port = self.flood[v][i];
            if port == in_port || plan.has(port, idx) {
                continue;
            }
            match self.egress_slow(port, idx, vlan, in_tci, f, untag, isolated, plan) {
                Out::Sent | Out::Counted => k += 1,
                Out::Isolated => iso = true,
                Out::NotMember => {}
            }
        }
        (k, iso)
    }

    /// One copy of frame `idx` of `vlan` to `port`, if the port may have it.
    #[allow(clippy::too_many_arguments)]
    fn egress_slow(
        &mut self,
        port: PortId,
        idx: usize,
        vlan: VlanId,
        in_tci: Option<Tci>,
        f: &FrameInfo<'_>,
        untag: bool,
        isolated: bool,
        plan: &mut BurstPlan,
    ) -> Out {
        let Some(Some(st)) = self.ports.get_mut(port.index()) else {
            return Out::NotMember;
        };
        if st.mirror_out {
            return Out::NotMember;
        }
        let Some(tagging) = st.cfg.mode.egress(vlan) else {
            return Out::NotMember;
        };
        if untag && tagging == EgressTagging::Tagged {
            return Out::NotMember;
        }
        if isolated && st.cfg.isolated {
            return Out::Isolated;
        }
        let action = tag_action(tagging, vlan, in_tci);
        let out_len = len_after(f.len, action);
        if !f.gso && !fits_mtu(&st.cfg, out_len, tagging == EgressTagging::Tagged) {
            // Not sent: a mirror selecting the port's output does not copy it.
            st.counters.drop(DropReason::Mtu);
            return Out::Counted;
        }
        if let Some(p) = st.cfg.egress_policer {
            if !st.egress_bucket.take(&p, out_len, self.clock) {
                st.counters.drop(DropReason::EgressPoliced);
                return Out::Counted;
            }
        }
        st.counters.tx_packets += 1;
        st.counters.tx_bytes += out_len as u64;
        plan.push(port, Egress { frame: idx, action });
        self.outs.push(port);
        Out::Sent
    }

    /// Copies frame `idx` (of `vlan`, received on `in_port`) for every mirror that selects it.
    fn mirror(
        &mut self,
        in_port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        vlan: VlanId,
        in_tci: Option<Tci>,
        plan: &mut BurstPlan,
    ) {
        for m in 0..self.mirrors.len() {
            let cfg = &self.mirrors[m].cfg;
            if cfg.select_vlan.as_ref().is_some_and(|s| !s.contains(vlan)) {
                continue;
            }
            let selected = cfg.selects_all_ports()
                || cfg.select_src.contains(&in_port)
                || cfg.select_dst.iter().any(|p| self.outs.contains(p));
            if !selected {
                continue;
            }
            let output = cfg.output;
            let (mut packets, mut bytes) = (0u64, 0u64);
            match output {
                MirrorOutput::Port(p) => {
                    let action = tag_action(EgressTagging::Tagged, vlan, in_tci);
                    if p != in_port && !plan.has(p, idx) && self.copy_to(p, idx, f, action, plan) {
                        packets += 1;
                        bytes += len_after(f.len, action) as u64;
                    }
                }
                MirrorOutput::Vlan(v) => {
                    let vi = usize::from(v.get());
                    for i in 0..self.flood[vi].len() {
                        let p = self.flood[vi][i];
                        let Some(t) = self.port(p).and_then(|c| c.mode.egress(v)) else { continue };
                        // The copy carries the output VLAN, not its own.
                        let action = match (t, in_tci) {
                            (EgressTagging::Untagged, _) => tag_action(t, v, in_tci),
                            (EgressTagging::Tagged, Some(tci)) => TagAction::SetTci(tci.with_vid(v.get())),
                            (EgressTagging::Tagged, None) => TagAction::Push(Tci::new(0, false, v.get())),
                        };
                        if p != in_port && !plan.has(p, idx) && self.copy_to(p, idx, f, action, plan) {
                            packets += 1;
                            bytes += len_after(f.len, action) as u64;
                        }
                    }
                }
            }
            let c = &mut self.mirrors[m].counters;
            c.packets += packets;
            c.bytes += bytes;
        }
    }

    /// A mirror copy to `port`: no MTU check (the copy may carry a tag the frame had not),
    /// counted as sent by the port.
    fn copy_to(
        &mut self,
        port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        action: TagAction,
        plan: &mut BurstPlan,
    ) -> bool {
        let Some(Some(st)) = self.ports.get_mut(port.index()) else { return false };
        st.counters.tx_packets += 1;
        st.counters.tx_bytes += len_after(f.len, action) as u64;
        plan.push(port, Egress { frame: idx, action });
        true
    }
}
