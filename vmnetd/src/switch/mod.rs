//! The built-in bridge's switching core: pure logic — no I/O, no clock, no locks, no unsafe.
//!
//! Given a frame that arrived on a port, [`Switch`] decides where it goes and how its VLAN tag
//! changes on the way ([`TagAction`]), the way Open vSwitch's `NORMAL` action does: classify
//! the frame into a VLAN by the ingress port's mode, learn its source, forward to the port the
//! destination was learned on, or flood within the VLAN (never back to the ingress port).
//! The port edges (TAP, AF_PACKET, vhost-user) own the threads and the bytes; they call
//! [`Switch::ingress_burst`] with a burst of frame heads and apply the per-destination plan
//! while they copy.
//!
//! - [`wire`]: Ethernet/802.1Q views; [`mac`]: `MacAddr`; [`vlan`]: VLAN ids, sets, modes.
//! - [`fdb`]: the learning table (ageing, caps, fairness, static entries).
//! - [`port`]: `PortId`, `PortConfig`, counters and drop reasons.

pub mod fdb;
pub mod flow;
pub mod policy;
pub mod port;
pub mod wire;

// MAC addresses and VLAN modes are value types of the protocol (`vmnetd-api`).
pub use vmnetd_api::{mac, vlan};

use std::time::Duration;

pub use fdb::{Fdb, FdbConfig, FdbEntry, Learn};
pub use mac::{MacAddr, MacParseError};
pub use policy::{Mirror, MirrorConfig, MirrorOutput, PipelineTrace, FLOW_HEAD};
pub use port::{Bucket, DropReason, Policer, PortConfig, PortCounters, PortId};
pub use vlan::{EgressTagging, Ingress, Native, VlanError, VlanId, VlanMode, VlanSet};
pub use wire::{EthernetFrame, EthernetRepr, Splice, TagAction, Tci, WireError};

use wire::{ETHERTYPE_VLAN, ETH_HLEN, HEAD_LEN, TAG_OFFSET, VLAN_HLEN};

/// What an edge tells the switch about one frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo<'a> {
    /// The first `min(len, 18)` bytes of the frame (more is fine).
    pub head: &'a [u8],
    /// Length of the whole frame (without any virtio-net header).
    pub len: usize,
    /// A GSO super-frame (from a vnet header): exempt from the MTU check, since it leaves
    /// as MTU-sized segments.
    pub gso: bool,
}

impl<'a> FrameInfo<'a> {
    /// A frame whose bytes are all in `bytes`.
    pub fn whole(bytes: &'a [u8]) -> Self {
        FrameInfo { head: bytes, len: bytes.len(), gso: false }
    }
}

/// Where one frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    /// To exactly one port.
    Unicast {
        vlan: VlanId,
        port: PortId,
        action: TagAction,
    },
    /// To every member of `vlan` but the ingress port: see [`Switch::flood_targets`].
    Flood {
        vlan: VlanId,
        in_tci: Option<Tci>,
    },
    /// Where flow rules, isolation or mirrors sent it: `outputs` copies, listed in the plan.
    Outputs {
        vlan: VlanId,
        outputs: u32,
    },
}

/// One frame of a burst for one destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    /// Index of the frame in the burst passed to [`Switch::ingress_burst`].
    pub frame: usize,
    pub action: TagAction,
}

/// What one burst's decisions remember from the previous frame: frames of a burst usually
/// share a source (learned once per burst) and a destination (looked up once until learning
/// changes the table).
/// Keys are `vid << 48 | mac` (never 0: a VLAN id is at least 1), 0 meaning none: one
/// compare per frame.
#[derive(Debug, Default)]
struct BurstMemo {
    src: u64,
    dst: u64,
    dst_port: Option<PortId>,
    /// The hits of the burst's last rule not yet added to its counters.
    hits: Option<(flow::RuleId, u64, u64)>,
}

#[inline]
fn vlan_mac_key(vlan: VlanId, mac48: u64) -> u64 {
    u64::from(vlan.get()) << 48 | mac48
}

/// The output of [`Switch::ingress_burst`]: per-destination lists of frames, reused across
/// bursts so the steady state allocates nothing.
#[derive(Debug, Default)]
pub struct BurstPlan {
    out: Vec<Vec<Egress>>,
    touched: Vec<PortId>,
}

impl BurstPlan {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        for p in self.touched.drain(..) {
            self.out[p.index()].clear();
        }
    }

    #[inline]
    fn push(&mut self, port: PortId, e: Egress) {
        let i = port.index();
        if self.out.len() <= i {
            self.out.resize_with(i + 1, Vec::new);
        }
        let list = &mut self.out[i];
        if list.is_empty() {
            self.touched.push(port);
        }
        list.push(e);
    }

    /// Destinations in the order they were first used, each with its frames in burst order.
    pub fn destinations(&self) -> impl Iterator<Item = (PortId, &[Egress])> {
        self.touched.iter().map(|p| (*p, self.out[p.index()].as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }

    /// Whether frame `idx` is already the last one listed for `port` (one copy per port).
    #[inline]
    fn has(&self, port: PortId, idx: usize) -> bool {
        self.out.get(port.index()).and_then(|l| l.last()).is_some_and(|e| e.frame == idx)
    }
}

#[derive(Debug, Clone)]
struct PortState {
    cfg: PortConfig,
    counters: PortCounters,
    /// The policers' tokens (when `cfg.policer`, `cfg.egress_policer` are set).
    bucket: Bucket,
    egress_bucket: Bucket,
    /// The port is a mirror's output: it sends copies and nothing else.
    mirror_out: bool,
}

enum EgressOutcome {
    Send(TagAction),
    /// Counted as an MTU drop on the egress port.
    Dropped(TagAction),
    NotMember,
}

/// The switch configuration that is not per port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchConfig {
    pub fdb: FdbConfig,
}

/// An L2 learning switch with VLANs.
#[derive(Debug, Clone)]
pub struct Switch {
    ports: Vec<Option<PortState>>,
    fdb: Fdb,
    /// Member ports of each VLAN, indexed by VID (0 and 4095 always empty).
    flood: Vec<Vec<PortId>>,
    /// Flow rules, looked at before the normal pipeline.
    flows: flow::Classifier,
    mirrors: Vec<Mirror>,
    /// Rules, mirrors, isolated or policed ports exist: frames take the full pipeline
    /// ([`policy`]); otherwise the plain L2 one, which is not slowed by any of it.
    slow: bool,
    /// The ports the current frame went to (for mirrors selecting by destination).
    outs: Vec<PortId>,
    /// The current frame's time (for egress policers).
    clock: fdb::Nanos,
    /// The burst's last flow lookup (see [`policy::FlowMemo`]).
    fmemo: policy::FlowMemo,
    /// Rules are the only thing that makes the bridge `slow`.
    flows_only: bool,
    emc: policy::Emc,
}

/// The tag change for a frame of `vlan` that came in with `in_tci` and leaves `tagging`.
#[inline]
pub fn tag_action(tagging: EgressTagging, vlan: VlanId, in_tci: Option<Tci>) -> TagAction {
    match (tagging, in_tci) {
        (EgressTagging::Untagged, None) => TagAction::Keep,
        (EgressTagging::Untagged, Some(_)) => TagAction::Pop,
        (EgressTagging::Tagged, Some(t)) if t.vid() == vlan.get() => TagAction::Keep,
        // Priority-tagged (VID 0) in, tagged out: keep the priority, set the VID.
        (EgressTagging::Tagged, Some(t)) => TagAction::SetTci(t.with_vid(vlan.get())),
        (EgressTagging::Tagged, None) => TagAction::Push(Tci::new(0, false, vlan.get())),
    }
}

/// The 802.1Q tag of a frame head (the bytes at hand, at most the frame), or why the
/// head is refused: shorter than an Ethernet header, or ending inside its tag.
#[inline(always)]
fn head_tci(head: &[u8]) -> Result<Option<Tci>, DropReason> {
    if head.len() < ETH_HLEN {
        return Err(DropReason::Runt);
    }
    let frame = EthernetFrame::new_unchecked(head);
    if frame.outer_ethertype() != ETHERTYPE_VLAN {
        return Ok(None);
    }
    if head.len() < TAG_OFFSET + VLAN_HLEN + 2 {
        return Err(DropReason::TruncatedTag);
    }
    Ok(frame.tci())
}

/// The VLAN a port in `mode` puts a frame tagged `tci` in, or why it refuses it.
#[inline(always)]
fn ingress_vlan_of(mode: &VlanMode, tci: Option<Tci>) -> Result<VlanId, DropReason> {
    match mode.classify(tci.map(Tci::vid)) {
        Ingress::Vlan(v) => Ok(v),
        Ingress::NotMember => Err(DropReason::VlanNotAllowed),
        Ingress::UntaggedOnTrunk => Err(DropReason::UntaggedOnTrunk),
        Ingress::ReservedVid => Err(DropReason::ReservedVid),
    }
}

/// Length of a frame of `len` bytes after `action`.
#[inline]
fn len_after(len: usize, action: TagAction) -> usize {
    match action {
        TagAction::Keep | TagAction::SetTci(_) => len,
        TagAction::Push(_) => len + VLAN_HLEN,
        TagAction::Pop => len - VLAN_HLEN,
    }
}

/// Whether a frame of `len` bytes (as it leaves, tagged or not) fits the port's MTU.
#[inline]
fn fits_mtu(cfg: &PortConfig, len: usize, tagged_out: bool) -> bool {
    let hdr = if tagged_out { HEAD_LEN } else { ETH_HLEN };
    len <= cfg.mtu as usize + hdr
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new(SwitchConfig::default())
    }
}

impl Switch {
    pub fn new(cfg: SwitchConfig) -> Switch {
        Switch {
            ports: Vec::new(),
            fdb: Fdb::new(cfg.fdb),
            flood: vec![Vec::new(); 4096],
            flows: flow::Classifier::new(),
            mirrors: Vec::new(),
            slow: false,
            outs: Vec::new(),
            clock: 0,
            fmemo: policy::FlowMemo::default(),
            flows_only: false,
            emc: policy::Emc::default(),
        }
    }

    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    pub fn set_fdb_config(&mut self, cfg: FdbConfig, now: Duration) {
        let mut evicted = Vec::new();
        // Evictions by a lower cap are counted on the ports that lost entries.
        let before: Vec<usize> = (0..self.ports.len()).map(|i| self.fdb.port_count(PortId::from_index(i))).collect();
        self.fdb.set_config(cfg, now);
        for (i, b) in before.into_iter().enumerate() {
            let after = self.fdb.port_count(PortId::from_index(i));
            if after < b {
                evicted.push((i, b - after));
            }
        }
        for (i, n) in evicted {
            if let Some(Some(p)) = self.ports.get_mut(i) {
                p.counters.evicted += n as u64;
            }
        }
    }

    /// Adds a port and returns its id (the lowest free one).
    pub fn add_port(&mut self, cfg: PortConfig) -> PortId {
        let i = self.ports.iter().position(Option::is_none).unwrap_or_else(|| {
            self.ports.push(None);
            self.ports.len() - 1
        });
        let id = PortId::from_index(i);
        self.ports[i] = Some(PortState {
            cfg,
            counters: PortCounters::default(),
            bucket: Bucket::default(),
            egress_bucket: Bucket::default(),
            mirror_out: false,
        });
        self.install_statics(id);
        self.rebuild_flood();
        self.refresh();
        id
    }

    /// Removes a port and forgets every address learned on it.
    pub fn remove_port(&mut self, id: PortId) -> Option<PortConfig> {
        let st = self.ports.get_mut(id.index())?.take()?;
        self.fdb.flush_port(id);
        self.rebuild_flood();
        self.refresh();
        Some(st.cfg)
    }

    /// Changes a port's configuration; addresses learned in VLANs it left are forgotten.
    pub fn reconfigure_port(&mut self, id: PortId, cfg: PortConfig) -> bool {
        let Some(Some(st)) = self.ports.get_mut(id.index()) else {
            return false;
        };
        if st.cfg.policer != cfg.policer {
            st.bucket = Bucket::default();
        }
        if st.cfg.egress_policer != cfg.egress_policer {
            st.egress_bucket = Bucket::default();
        }
        let old = std::mem::replace(&mut st.cfg, cfg);
        // Port security newly on (or other addresses): what the port learned before is not
        // trusted any more.
        let relock = st.cfg.lock_macs && (!old.lock_macs || old.macs != st.cfg.macs);
        for v in old.mode.members().iter() {
            for m in &old.macs {
                self.fdb.remove_static(v, *m);
            }
        }
        if relock {
            self.fdb.flush_port(id);
        }
        let members = self.port(id).map(|c| c.mode.members()).unwrap_or_default();
        self.fdb.flush_port_vlans(id, |v| members.contains(v));
        self.install_statics(id);
        self.rebuild_flood();
        self.refresh();
        true
    }

    fn install_statics(&mut self, id: PortId) {
        let Some(cfg) = self.port(id) else { return };
        let members = cfg.mode.members();
        let macs = cfg.macs.clone();
        for v in members.iter() {
            for m in &macs {
                self.fdb.add_static(v, *m, id);
            }
        }
    }

    fn rebuild_flood(&mut self) {
        for list in &mut self.flood {
            list.clear();
        }
        for (i, p) in self.ports.iter().enumerate() {
            let Some(p) = p else { continue };
            for v in p.cfg.mode.members().iter() {
                self.flood[usize::from(v.get())].push(PortId::from_index(i));
            }
        }
    }

    pub fn port(&self, id: PortId) -> Option<&PortConfig> {
        self.ports.get(id.index())?.as_ref().map(|p| &p.cfg)
    }

    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortConfig)> {
        self.ports.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (PortId::from_index(i), &p.cfg)))
    }

    pub fn counters(&self, id: PortId) -> Option<&PortCounters> {
        self.ports.get(id.index())?.as_ref().map(|p| &p.counters)
    }

    /// Clears a port's counters (e.g. when the port is re-created).
    pub fn reset_counters(&mut self, id: PortId) {
        if let Some(Some(p)) = self.ports.get_mut(id.index()) {
            p.counters = PortCounters::default();
        }
    }

    /// Member ports of `vlan` that a frame from `except` floods to, with their tag actions.
    pub fn flood_targets(
        &self,
        vlan: VlanId,
        except: PortId,
        in_tci: Option<Tci>,
    ) -> impl Iterator<Item = (PortId, TagAction)> + '_ {
        self.flood[usize::from(vlan.get())].iter().filter(move |p| **p != except).filter_map(move |p| {
            let cfg = self.port(*p)?;
            let t = cfg.mode.egress(vlan)?;
            Some((*p, tag_action(t, vlan, in_tci)))
        })
    }

    /// An edge could not deliver `frames` frames (`bytes` bytes) it was handed for `port`.
    pub fn record_tx_failure(&mut self, port: PortId, reason: DropReason, frames: u64, bytes: u64) {
        if let Some(Some(p)) = self.ports.get_mut(port.index()) {
            let c = &mut p.counters;
            c.tx_packets = c.tx_packets.saturating_sub(frames);
            c.tx_bytes = c.tx_bytes.saturating_sub(bytes);
            c.drops[reason as usize] += frames;
        }
    }

    /// An edge could not read a frame offered on `port` (it never reached a decision).
    pub fn record_rx_error(&mut self, port: PortId, len: usize) {
        self.record_rx_drop(port, DropReason::RxError, len);
    }

    /// A frame offered on `port` was refused by its edge before the decision (`reason`).
    pub fn record_rx_drop(&mut self, port: PortId, reason: DropReason, len: usize) {
        if let Some(Some(p)) = self.ports.get_mut(port.index()) {
            p.counters.rx_packets += 1;
            p.counters.rx_bytes += len as u64;
            p.counters.drop(reason);
        }
    }

    /// Reclaims aged-out learned entries and counts them on their ports; removes flow rules
    /// whose timeouts passed (returned).
    pub fn expire(&mut self, now: Duration) -> Vec<flow::Installed> {
        let gone = if self.flows.is_empty() { Vec::new() } else { self.flows.expire(fdb::nanos(now)) };
        if !gone.is_empty() {
            self.refresh();
        }
        self.expire_fdb(now);
        gone
    }

    fn expire_fdb(&mut self, now: Duration) {
        let ports = &mut self.ports;
        self.fdb.expire(now, |port| {
            if let Some(Some(p)) = ports.get_mut(port.index()) {
                p.counters.aged += 1;
            }
        });
    }

    /// Forgets every learned address (static ones stay). Returns how many.
    /// Forgets the addresses learned on port `id` (its static ones stay): the guest behind it
    /// migrated away, and frames to it must flood (reaching the port it went to) rather than
    /// follow a stale entry until it speaks again.
    pub fn forget_learned(&mut self, id: PortId) -> usize {
        self.fdb.flush_learned_port(id)
    }

    pub fn flush_fdb(&mut self) -> usize {
        self.fdb.flush_learned()
    }

    /// The ingress half of a decision: checks, VLAN classification and learning.
    /// `Ok((vlan, tci, dst))` or the reason to drop.
    #[inline]
    fn classify(
        &mut self,
        in_port: PortId,
        f: &FrameInfo<'_>,
        now: fdb::Nanos,
        memo: &mut BurstMemo,
    ) -> Result<(VlanId, Option<Tci>, u64), DropReason> {
        let Some(Some(st)) = self.ports.get_mut(in_port.index()) else {
            return Err(DropReason::RxError);
        };
        st.counters.rx_packets += 1;
        st.counters.rx_bytes += f.len as u64;
        let head = &f.head[..f.head.len().min(f.len)];
        let tci = head_tci(head)?;
        // Addresses as 48-bit integers straight from the frame: one load each.
        let dst = MacAddr::u64_at(head, 0);
        let src48 = MacAddr::u64_at(head, 6);
        if src48 >> 40 & 1 != 0 || src48 == 0 {
            return Err(DropReason::BadSource);
        }
        // 01:80:c2:00:00:0X
        if dst & !0xf == 0x0180_c200_0000 {
            return Err(DropReason::LinkLocal);
        }
        let src = MacAddr::from_u64(src48);
        let vlan = ingress_vlan_of(&st.cfg.mode, tci)?;
        if st.cfg.lock_macs && !st.cfg.macs.contains(&src) {
            return Err(DropReason::MacLocked);
        }
        // The burst's frames usually share their source: learned once.
        if memo.src != vlan_mac_key(vlan, src48) {
            let max = st.cfg.max_macs;
            self.learn_with(in_port, vlan, src48, max, now, memo)?;
        }
        Ok((vlan, tci, dst))
    }

    /// Learns `src48` in `vlan` on `in_port` (unless it is the burst's last source).
    #[inline]
    fn learn(
        &mut self,
        in_port: PortId,
        vlan: VlanId,
        src48: u64,
        now: fdb::Nanos,
        memo: &mut BurstMemo,
    ) -> Result<(), DropReason> {
        if memo.src == vlan_mac_key(vlan, src48) {
            return Ok(());
        }
        let max = self.port(in_port).map_or(0, |c| c.max_macs);
        self.learn_with(in_port, vlan, src48, max, now, memo)
    }

    #[inline(never)]
    fn learn_with(
        &mut self,
        in_port: PortId,
        vlan: VlanId,
        src48: u64,
        max: usize,
        now: fdb::Nanos,
        memo: &mut BurstMemo,
    ) -> Result<(), DropReason> {
        let src_key = vlan_mac_key(vlan, src48);
        if memo.src != src_key {
            match self.fdb.learn_ns(vlan, MacAddr::from_u64(src48), in_port, max, now) {
                Learn::Refreshed | Learn::Static | Learn::Disabled => {}
                Learn::New { evicted } => {
                    self.count_learn(in_port, evicted, false);
                }
                Learn::Moved { evicted, .. } => {
                    self.count_learn(in_port, evicted, true);
                }
                Learn::StaticElsewhere(_) => return Err(DropReason::SourceIsStaticElsewhere),
            }
            memo.src = src_key;
            // Learning may have changed the table: forget the remembered lookup.
            memo.dst = 0;
        }
        Ok(())
    }

    /// The port unicast `dst` was learned on in `vlan`, through the burst's memo.
    #[inline(always)]
    fn lookup_dst(&self, memo: &mut BurstMemo, vlan: VlanId, dst: u64, now: fdb::Nanos) -> Option<PortId> {
        let dst_key = vlan_mac_key(vlan, dst);
        if memo.dst == dst_key {
            return memo.dst_port;
        }
        let port = self.fdb.lookup_raw(vlan, dst, now);
        (memo.dst, memo.dst_port) = (dst_key, port);
        port
    }

    fn count_learn(&mut self, port: PortId, evicted: Option<PortId>, moved: bool) {
        if let Some(Some(p)) = self.ports.get_mut(port.index()) {
            p.counters.learned += 1;
            if moved {
                p.counters.moved_in += 1;
            }
        }
        if let Some(e) = evicted {
            if let Some(Some(p)) = self.ports.get_mut(e.index()) {
                p.counters.evicted += 1;
            }
        }
    }

    fn count_drop(&mut self, port: PortId, r: DropReason) {
        if let Some(Some(p)) = self.ports.get_mut(port.index()) {
            p.counters.drop(r);
        }
    }

    /// Decides how a frame of `vlan` leaves `port` and counts it there.
    #[inline]
    fn egress_to(&mut self, port: PortId, vlan: VlanId, in_tci: Option<Tci>, f: &FrameInfo<'_>) -> EgressOutcome {
        let Some(Some(st)) = self.ports.get_mut(port.index()) else {
            return EgressOutcome::NotMember;
        };
        let Some(tagging) = st.cfg.mode.egress(vlan) else {
            return EgressOutcome::NotMember;
        };
        let action = tag_action(tagging, vlan, in_tci);
        let out_len = len_after(f.len, action);
        if !f.gso && !fits_mtu(&st.cfg, out_len, tagging == EgressTagging::Tagged) {
            st.counters.drop(DropReason::Mtu);
            return EgressOutcome::Dropped(action);
        }
        st.counters.tx_packets += 1;
        st.counters.tx_bytes += out_len as u64;
        EgressOutcome::Send(action)
    }

    /// Decides on one frame from `in_port`, counting it as [`Switch::ingress_burst`] does.
    /// For [`Decision::Flood`] the destinations are [`Switch::flood_targets`] minus any port
    /// whose MTU the frame exceeds (counted there as an `mtu` drop).
    pub fn ingress(&mut self, in_port: PortId, f: FrameInfo<'_>, now: Duration) -> Decision {
        let mut plan = BurstPlan::new();
        let mut memo = BurstMemo::default();
        self.fmemo.valid = false;
        let d = self.decide(in_port, 0, &f, fdb::nanos(now), &mut plan, &mut memo);
        self.flush_hits(&mut memo, fdb::nanos(now));
        d
    }

    /// Decides on a burst of frames from one port. Afterwards `plan` lists, per destination
    /// port, the frames (by index in `frames`) to send there and the tag action for each.
    /// Frames that are dropped appear nowhere; their reason is counted on the right port.
    pub fn ingress_burst<'a>(
        &mut self,
        in_port: PortId,
        frames: impl IntoIterator<Item = FrameInfo<'a>>,
        now: Duration,
        plan: &mut BurstPlan,
    ) {
        plan.clear();
        let now = fdb::nanos(now);
        let mut memo = BurstMemo::default();
        self.fmemo.valid = false;
        for (i, f) in frames.into_iter().enumerate() {
            self.decide(in_port, i, &f, now, plan, &mut memo);
        }
        self.flush_hits(&mut memo, now);
    }

    #[inline(always)]
    fn decide(
        &mut self,
        in_port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        now: fdb::Nanos,
        plan: &mut BurstPlan,
        memo: &mut BurstMemo,
    ) -> Decision {
        if self.slow {
            // A bridge with rules and nothing else special: a frame whose rule says NORMAL
            // (or that no rule matches) takes the plain pipeline below.
            let looked_up = if self.flows_only {
                match self.flow_lookup(in_port, f, now, memo) {
                    Some(true) => false,
                    Some(false) => true,
                    None => return self.decide_slow(in_port, idx, f, now, plan, memo, false),
                }
            } else {
                false
            };
            if looked_up || !self.flows_only {
                return self.decide_slow(in_port, idx, f, now, plan, memo, looked_up);
            }
        }
        let (vlan, in_tci, dst) = match self.classify(in_port, f, now, memo) {
            Ok(x) => x,
            Err(r) => {
                self.count_drop(in_port, r);
                return Decision::Drop(r);
            }
        };
        if dst >> 40 & 1 == 0 {
            if let Some(port) = self.lookup_dst(memo, vlan, dst, now) {
                if port == in_port {
                    self.count_drop(in_port, DropReason::SamePort);
                    return Decision::Drop(DropReason::SamePort);
                }
                match self.egress_to(port, vlan, in_tci, f) {
                    EgressOutcome::Send(action) => {
                        plan.push(port, Egress { frame: idx, action });
                        return Decision::Unicast { vlan, port, action };
                    }
                    EgressOutcome::Dropped(action) => return Decision::Unicast { vlan, port, action },
                    // Learned in a VLAN the port has since left: treat as unknown.
                    EgressOutcome::NotMember => {}
                }
            }
        }
        self.flood(in_port, idx, f, vlan, in_tci, plan)
    }

    fn flood(
        &mut self,
        in_port: PortId,
        idx: usize,
        f: &FrameInfo<'_>,
        vlan: VlanId,
        in_tci: Option<Tci>,
        plan: &mut BurstPlan,
    ) -> Decision {
        let v = usize::from(vlan.get());
        let mut any = false;
        for k in 0..self.flood[v].len() {
            let port = self.flood[v][k];
            if port == in_port {
                continue;
            }
            match self.egress_to(port, vlan, in_tci, f) {
                EgressOutcome::Send(action) => {
                    any = true;
                    plan.push(port, Egress { frame: idx, action });
                }
                EgressOutcome::Dropped(_) => any = true,
                EgressOutcome::NotMember => {}
            }
        }
        if !any {
            self.count_drop(in_port, DropReason::NoDestination);
            return Decision::Drop(DropReason::NoDestination);
        }
        if let Some(Some(p)) = self.ports.get_mut(in_port.index()) {
            p.counters.rx_flooded += 1;
        }
        Decision::Flood { vlan, in_tci }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod netsim;
