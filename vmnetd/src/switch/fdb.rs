//! The learning table (forwarding database): (VLAN, MAC) → port.
//!
//! # Design
//!
//! **Key.** A learned address belongs to one VLAN: the same MAC may live on different ports
//! in different VLANs (independent VLAN learning, IEEE 802.1Q §8.8). The key packs the VID
//! into the top 16 bits of a `u64` above the 48-bit MAC, so a lookup hashes one word. The
//! hash is foldhash with a per-table random seed: a guest choosing source MACs cannot
//! predict bucket collisions and slow the table down (the HashDoS that a fixed hash invites).
//!
//! **Ageing.** Every entry records when its source was last seen, in time passed in by the
//! caller (`now`, a monotonic `Duration` since any fixed epoch); the table never reads a
//! clock. An entry older than the ageing time (default 300 s, as OVS and the Linux bridge)
//! is invisible to [`Fdb::lookup`] at once and reclaimed by [`Fdb::expire`], which the owner
//! calls periodically (a linear sweep; tables are small).
//!
//! **Caps and fairness.** Two limits bound memory and stop one port from crowding out the
//! others (a guest sending from random source MACs, the classic CAM-table overflow):
//! - a per-port cap: a port at its cap that learns a new address evicts *its own* least
//!   recently used entry;
//! - a bridge-wide cap: when the table is full, the entry evicted comes from the port that
//!   holds the most entries (OVS `mac_learning` "fairness"), which for a flooding port is
//!   itself. So a port flooding random source MACs can only evict other ports' entries once
//!   it holds fewer than they do — never, in practice.
//!
//! Least recently used is approximated with the CLOCK algorithm per port: each port keeps a
//! FIFO of its entries; a refresh sets the entry's `referenced` bit; eviction pops the front,
//! gives a referenced entry a second chance (clear the bit, push to the back) and evicts the
//! first unreferenced one. Refreshes cost one bit write, evictions are amortised O(1). Queue
//! slots of entries that moved or were flushed are recognised by a generation number and
//! dropped lazily; a queue is compacted when stale slots outnumber live ones.
//!
//! **Static entries** (a port's declared MAC, `--mac`) never age, are never evicted, do not
//! count against the caps, and do not move: a frame from a static MAC on another port is
//! refused by the switch (port security), not learned.
//!
//! **Moves.** A learned MAC seen on another port in the same VLAN moves there at once (a VM
//! migrated, or a link failed over); moves are counted so flapping is visible.
//!
//! **Thread-safety.** None inside: `Fdb` is plain data owned by one [`super::Switch`], whose
//! owner (the datapath thread) decides how to share it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::mac::MacAddr;
use super::port::PortId;
use super::vlan::VlanId;

type Key = u64;

#[inline]
fn key(vlan: VlanId, mac: MacAddr) -> Key {
    let [v0, v1] = vlan.get().to_be_bytes();
    let m = mac.0;
    u64::from_be_bytes([v0, v1, m[0], m[1], m[2], m[3], m[4], m[5]])
}

fn unkey(k: Key) -> (VlanId, MacAddr) {
    let b = k.to_be_bytes();
    // Keys are only ever made by `key()` from a valid VlanId.
    let vlan = VlanId::new(u16::from_be_bytes([b[0], b[1]])).unwrap_or(VlanId::DEFAULT);
    (vlan, MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbConfig {
    pub ageing: Duration,
    /// Most learned entries in the whole table.
    pub max_entries: usize,
}

pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_ENTRIES: usize = 8192;

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig { ageing: DEFAULT_AGEING, max_entries: DEFAULT_MAX_ENTRIES }
    }
}

/// Time inside the table: nanoseconds since the caller's epoch (cheaper than `Duration`).
pub(crate) type Nanos = u64;

#[inline]
pub(crate) fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    last_seen: Nanos,
    gen: u32,
    referenced: bool,
    is_static: bool,
}

#[derive(Debug, Default, Clone)]
struct PortTable {
    /// Live learned entries of this port.
    count: usize,
    /// CLOCK queue of (key, generation); may hold stale slots.
    queue: VecDeque<(Key, u32)>,
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Known on this port already; its age was reset.
    Refreshed,
    /// Newly learned. `evicted`: the port that lost an entry to make room, if any.
    New { evicted: Option<PortId> },
    /// Moved here from another port.
    Moved { from: PortId, evicted: Option<PortId> },
    /// The address is a static entry of another port: not learned.
    StaticElsewhere(PortId),
    /// A static entry of this very port.
    Static,
    /// The per-port cap is zero: this port learns nothing.
    Disabled,
}

/// One row of `vmnetd fdb show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub vlan: VlanId,
    pub mac: MacAddr,
    pub port: PortId,
    /// Time since last seen (zero for static entries).
    pub age: Duration,
    pub is_static: bool,
}

#[derive(Debug, Clone)]
pub struct Fdb {
    map: HashMap<Key, Entry, foldhash::fast::RandomState>,
    ports: Vec<PortTable>,
    learned: usize,
    cfg: FdbConfig,
    ageing: Nanos,
    gen: u32,
}

impl Fdb {
    pub fn new(cfg: FdbConfig) -> Fdb {
        Fdb {
            map: HashMap::with_capacity_and_hasher(
                cfg.max_entries.min(1 << 16),
                foldhash::fast::RandomState::default(),
            ),
            ports: Vec::new(),
            learned: 0,
            cfg,
            ageing: nanos(cfg.ageing),
            gen: 0,
        }
    }

    pub fn config(&self) -> FdbConfig {
        self.cfg
    }

    pub fn set_config(&mut self, cfg: FdbConfig, now: Duration) {
        self.cfg = cfg;
        self.ageing = nanos(cfg.ageing);
        while self.learned > self.cfg.max_entries {
            if self.evict_fair(nanos(now)).is_none() {
                break;
            }
        }
    }

    fn table(&mut self, port: PortId) -> &mut PortTable {
        let i = port.index();
        if self.ports.len() <= i {
            self.ports.resize_with(i + 1, PortTable::default);
        }
        &mut self.ports[i]
    }

    /// Learned (non-static) entries of `port`.
    pub fn port_count(&self, port: PortId) -> usize {
        self.ports.get(port.index()).map_or(0, |t| t.count)
    }

    /// Learned entries in the table.
    pub fn len(&self) -> usize {
        self.learned
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[inline]
    fn alive(&self, e: &Entry, now: Nanos) -> bool {
        e.is_static || now.saturating_sub(e.last_seen) < self.ageing
    }

    /// The port `mac` was learned on in `vlan`, if the entry has not aged out.
    pub fn lookup(&self, vlan: VlanId, mac: MacAddr, now: Duration) -> Option<PortId> {
        self.lookup_ns(vlan, mac, nanos(now))
    }

    #[inline]
    pub(crate) fn lookup_ns(&self, vlan: VlanId, mac: MacAddr, now: Nanos) -> Option<PortId> {
        self.lookup_raw(vlan, mac.to_u64(), now)
    }

    /// Lookup by a MAC given as the low 48 bits of a `u64` (see [`MacAddr::to_u64`]).
    #[inline]
    pub(crate) fn lookup_raw(&self, vlan: VlanId, mac48: u64, now: Nanos) -> Option<PortId> {
        match self.map.get(&((u64::from(vlan.get()) << 48) | mac48)) {
            Some(e) if self.alive(e, now) => Some(e.port),
            _ => None,
        }
    }

    /// Records that `mac` was seen as a source on `port` in `vlan`. `port_max` is the port's
    /// cap on learned entries (0: the port does not learn).
    pub fn learn(&mut self, vlan: VlanId, mac: MacAddr, port: PortId, port_max: usize, now: Duration) -> Learn {
        self.learn_ns(vlan, mac, port, port_max, nanos(now))
    }

    #[inline]
    pub(crate) fn learn_ns(&mut self, vlan: VlanId, mac: MacAddr, port: PortId, port_max: usize, now: Nanos) -> Learn {
        let k = key(vlan, mac);
        let ageing = self.ageing;
        if let Some(e) = self.map.get_mut(&k) {
            if e.is_static {
                return if e.port == port { Learn::Static } else { Learn::StaticElsewhere(e.port) };
            }
            let fresh = now.saturating_sub(e.last_seen) < ageing;
            if e.port == port {
                e.last_seen = now;
                e.referenced = true;
                return if fresh { Learn::Refreshed } else { Learn::New { evicted: None } };
            }
            // Move: drop it from the old port, then learn it anew below.
            let from = e.port;
            self.remove_key(k);
            if port_max == 0 {
                return Learn::Disabled;
            }
            let evicted = self.make_room(port, port_max, now);
            self.insert_learned(k, port, now);
            return if fresh { Learn::Moved { from, evicted } } else { Learn::New { evicted } };
        }
        if port_max == 0 {
            return Learn::Disabled;
        }
        let evicted = self.make_room(port, port_max, now);
        self.insert_learned(k, port, now);
        Learn::New { evicted }
    }

    fn insert_learned(&mut self, k: Key, port: PortId, now: Nanos) {
        self.gen = self.gen.wrapping_add(1);
        let gen = self.gen;
        self.map.insert(k, Entry { port, last_seen: now, gen, referenced: false, is_static: false });
        let t = self.table(port);
        t.count += 1;
        t.queue.push_back((k, gen));
        self.learned += 1;
    }

    /// Frees a slot for a new entry on `port`: its own LRU entry if it is at its cap, else the
    /// fairest victim if the table is full. Returns the port that lost an entry.
    fn make_room(&mut self, port: PortId, port_max: usize, now: Nanos) -> Option<PortId> {
        if self.port_count(port) >= port_max {
            return self.evict_from(port, now).map(|_| port);
        }
        if self.learned >= self.cfg.max_entries {
            return self.evict_fair(now);
        }
        None
    }

    /// Evicts from the port with the most learned entries.
    fn evict_fair(&mut self, now: Nanos) -> Option<PortId> {
        let victim = self
            .ports
            .iter()
            .enumerate()
            .max_by_key(|(_, t)| t.count)
            .filter(|(_, t)| t.count > 0)
            .map(|(i, _)| PortId::from_index(i))?;
        self.evict_from(victim, now).map(|_| victim)
    }

    /// CLOCK eviction of one learned entry of `port`; an aged-out one goes first for free.
    fn evict_from(&mut self, port: PortId, now: Nanos) -> Option<Key> {
        let ageing = self.ageing;
        let limit = 2 * self.ports.get(port.index())?.queue.len() + 1;
        for _ in 0..limit {
            let (k, gen) = self.ports[port.index()].queue.pop_front()?;
            let Some(e) = self.map.get_mut(&k) else {
                continue;
            };
            if e.gen != gen || e.port != port || e.is_static {
                continue; // stale slot
            }
            let aged = now.saturating_sub(e.last_seen) >= ageing;
            if e.referenced && !aged {
                e.referenced = false;
                self.ports[port.index()].queue.push_back((k, gen));
                continue;
            }
            self.map.remove(&k);
            self.ports[port.index()].count -= 1;
            self.learned -= 1;
            return Some(k);
        }
        None
    }

    fn remove_key(&mut self, k: Key) -> Option<Entry> {
        let e = self.map.remove(&k)?;
        if !e.is_static {
            let port = e.port;
            self.table(port).count -= 1;
            self.learned -= 1;
            // Keep queues from filling with stale slots.
            let t = &mut self.ports[port.index()];
            if t.queue.len() > 2 * t.count + 64 {
                let map = &self.map;
                t.queue.retain(|(k, g)| map.get(k).is_some_and(|x| x.gen == *g && x.port == port && !x.is_static));
            }
        }
        Some(e)
    }

    /// Adds (or replaces with) a static entry.
    pub fn add_static(&mut self, vlan: VlanId, mac: MacAddr, port: PortId) {
        let k = key(vlan, mac);
        self.remove_key(k);
        self.map.insert(k, Entry { port, last_seen: 0, gen: 0, referenced: false, is_static: true });
    }

    /// Removes a static entry; learned entries are left alone.
    pub fn remove_static(&mut self, vlan: VlanId, mac: MacAddr) -> bool {
        let k = key(vlan, mac);
        if self.map.get(&k).is_some_and(|e| e.is_static) {
            self.map.remove(&k);
            true
        } else {
            false
        }
    }

    /// Removes entries matching `pred(vlan, port, is_static)`; returns how many went per port.
    fn remove_where(&mut self, mut pred: impl FnMut(VlanId, PortId, bool) -> bool) -> usize {
        let keys: Vec<Key> =
            self.map.iter().filter(|(k, e)| pred(unkey(**k).0, e.port, e.is_static)).map(|(k, _)| *k).collect();
        for k in &keys {
            self.remove_key(*k);
        }
        keys.len()
    }

    /// Forgets every learned entry (static ones stay), as `vmnetd fdb flush`.
    pub fn flush_learned(&mut self) -> usize {
        let n = self.remove_where(|_, _, st| !st);
        for t in &mut self.ports {
            t.queue.clear();
        }
        n
    }

    /// Forgets the entries learned on a port; its static ones stay (the guest behind it
    /// left: frames to its addresses flood until they are learned where it went).
    pub fn flush_learned_port(&mut self, port: PortId) -> usize {
        let n = self.remove_where(|_, p, st| p == port && !st);
        if let Some(t) = self.ports.get_mut(port.index()) {
            t.queue.clear();
        }
        n
    }

    /// Forgets every entry of a port, static ones included (the port is going away).
    pub fn flush_port(&mut self, port: PortId) -> usize {
        let n = self.remove_where(|_, p, _| p == port);
        if let Some(t) = self.ports.get_mut(port.index()) {
            t.queue.clear();
        }
        n
    }

    /// Forgets the learned entries of a port in VLANs it is no longer a member of.
    pub fn flush_port_vlans(&mut self, port: PortId, keep: impl Fn(VlanId) -> bool) -> usize {
        self.remove_where(|v, p, st| p == port && !st && !keep(v))
    }

    /// Reclaims aged-out entries, calling `on_aged(port)` for each.
    pub fn expire(&mut self, now: Duration, mut on_aged: impl FnMut(PortId)) {
        let (now, ageing) = (nanos(now), self.ageing);
        let keys: Vec<Key> = self
            .map
            .iter()
            .filter(|(_, e)| !e.is_static && now.saturating_sub(e.last_seen) >= ageing)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(e) = self.remove_key(k) {
                on_aged(e.port);
            }
        }
    }

    /// Live entries, in no particular order.
    pub fn entries(&self, now: Duration) -> impl Iterator<Item = FdbEntry> + '_ {
        let now = nanos(now);
        self.map.iter().filter(move |(_, e)| self.alive(e, now)).map(move |(k, e)| {
            let (vlan, mac) = unkey(*k);
            FdbEntry {
                vlan,
                mac,
                port: e.port,
                age: if e.is_static { Duration::ZERO } else { Duration::from_nanos(now.saturating_sub(e.last_seen)) },
                is_static: e.is_static,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u16) -> VlanId {
        VlanId::new(n).unwrap()
    }
    fn m(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
    }
    fn p(n: usize) -> PortId {
        PortId::from_index(n)
    }
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn key_roundtrip() {
        let (vl, mac) = unkey(key(v(4094), m(0xdead_beef)));
        assert_eq!((vl, mac), (v(4094), m(0xdead_beef)));
    }

    #[test]
    fn learn_lookup_refresh_and_age() {
        let mut f = Fdb::new(FdbConfig { ageing: S(300), max_entries: 100 });
        assert_eq!(f.learn(v(10), m(1), p(0), 10, S(0)), Learn::New { evicted: None });
        assert_eq!(f.lookup(v(10), m(1), S(1)), Some(p(0)));
        // Independent VLAN learning: another VLAN knows nothing.
        assert_eq!(f.lookup(v(20), m(1), S(1)), None);
        assert_eq!(f.learn(v(10), m(1), p(0), 10, S(200)), Learn::Refreshed);
        // Refreshed at 200 s, so alive at 499 s and gone at 500 s.
        assert_eq!(f.lookup(v(10), m(1), S(499)), Some(p(0)));
        assert_eq!(f.lookup(v(10), m(1), S(500)), None);
        let mut aged = vec![];
        f.expire(S(500), |port| aged.push(port));
        assert_eq!(aged, vec![p(0)]);
        assert_eq!((f.len(), f.port_count(p(0))), (0, 0));
    }

    #[test]
    fn moves_are_reported_and_counted() {
        let mut f = Fdb::new(FdbConfig::default());
        f.learn(v(1), m(1), p(0), 10, S(0));
        assert_eq!(f.learn(v(1), m(1), p(1), 10, S(1)), Learn::Moved { from: p(0), evicted: None });
        assert_eq!(f.lookup(v(1), m(1), S(1)), Some(p(1)));
        assert_eq!((f.port_count(p(0)), f.port_count(p(1)), f.len()), (0, 1, 1));
    }

    /// A guest migrated away from port 0: what was learned there goes (frames to it flood
    /// until it is learned where it went); the port's static entries and other ports' stay.
    #[test]
    fn flushing_a_port_s_learned_entries_keeps_its_statics_and_other_ports() {
        let mut f = Fdb::new(FdbConfig::default());
        f.learn(v(1), m(1), p(0), 10, S(0));
        f.learn(v(2), m(2), p(0), 10, S(0));
        f.learn(v(1), m(3), p(1), 10, S(0));
        f.add_static(v(1), m(4), p(0));
        assert_eq!(f.flush_learned_port(p(0)), 2);
        assert_eq!((f.lookup(v(1), m(1), S(1)), f.lookup(v(2), m(2), S(1))), (None, None));
        assert_eq!(f.lookup(v(1), m(3), S(1)), Some(p(1)));
        assert_eq!(f.lookup(v(1), m(4), S(1)), Some(p(0)));
        assert_eq!(f.port_count(p(0)), 0);
        f.learn(v(1), m(1), p(2), 10, S(2));
        assert_eq!(f.lookup(v(1), m(1), S(2)), Some(p(2)));
    }

    #[test]
    fn per_port_cap_evicts_own_lru() {
        let mut f = Fdb::new(FdbConfig { ageing: S(300), max_entries: 1000 });
        for i in 0..3 {
            f.learn(v(1), m(i), p(0), 3, S(u64::from(i)));
        }
        // m(0) is used again, so m(1) is the least recently used.
        f.learn(v(1), m(0), p(0), 3, S(5));
        assert_eq!(f.learn(v(1), m(9), p(0), 3, S(6)), Learn::New { evicted: Some(p(0)) });
        assert_eq!(f.port_count(p(0)), 3);
        assert_eq!(f.lookup(v(1), m(1), S(6)), None);
        assert!(f.lookup(v(1), m(0), S(6)).is_some());
        assert!(f.lookup(v(1), m(2), S(6)).is_some());
    }

    #[test]
    fn flooding_port_cannot_evict_other_ports() {
        // Bridge cap 100, per-port cap 100: port 0 floods 10 000 random sources while ports
        // 1..=4 hold 10 entries each.
        let mut f = Fdb::new(FdbConfig { ageing: S(300), max_entries: 100 });
        for port in 1..=4 {
            for i in 0..10 {
                f.learn(v(1), m(port * 1000 + i), p(port as usize), 100, S(0));
            }
        }
        for i in 0..10_000 {
            f.learn(v(1), m(1_000_000 + i), p(0), 100, S(1));
        }
        assert_eq!(f.len(), 100);
        for port in 1..=4 {
            assert_eq!(f.port_count(p(port)), 10, "port {port} lost entries");
            for i in 0..10 {
                assert_eq!(f.lookup(v(1), m(port as u32 * 1000 + i), S(2)), Some(p(port)));
            }
        }
        assert_eq!(f.port_count(p(0)), 60);
    }

    #[test]
    fn static_entries_do_not_age_move_or_count() {
        let mut f = Fdb::new(FdbConfig { ageing: S(10), max_entries: 2 });
        f.add_static(v(5), m(7), p(3));
        assert_eq!(f.learn(v(5), m(7), p(1), 10, S(0)), Learn::StaticElsewhere(p(3)));
        assert_eq!(f.learn(v(5), m(7), p(3), 10, S(0)), Learn::Static);
        assert_eq!(f.len(), 0);
        f.expire(S(1000), |_| panic!("static aged"));
        assert_eq!(f.lookup(v(5), m(7), S(1000)), Some(p(3)));
        assert_eq!(f.flush_learned(), 0);
        assert!(f.remove_static(v(5), m(7)));
        assert_eq!(f.lookup(v(5), m(7), S(1000)), None);
    }

    #[test]
    fn zero_cap_port_does_not_learn() {
        let mut f = Fdb::new(FdbConfig::default());
        assert_eq!(f.learn(v(1), m(1), p(0), 0, S(0)), Learn::Disabled);
        assert!(f.is_empty());
    }

    #[test]
    fn flushes() {
        let mut f = Fdb::new(FdbConfig::default());
        for i in 0..5 {
            f.learn(v(1), m(i), p(0), 100, S(0));
            f.learn(v(2), m(i), p(1), 100, S(0));
        }
        f.add_static(v(1), m(99), p(0));
        assert_eq!(f.flush_port_vlans(p(0), |vl| vl != v(1)), 5);
        assert_eq!(f.flush_port(p(0)), 1);
        assert_eq!(f.flush_learned(), 5);
        assert!(f.is_empty());
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn lowering_the_cap_evicts() {
        let mut f = Fdb::new(FdbConfig { ageing: S(300), max_entries: 10 });
        for i in 0..10 {
            f.learn(v(1), m(i), p(0), 100, S(0));
        }
        f.set_config(FdbConfig { ageing: S(300), max_entries: 4 }, S(1));
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn stale_queue_slots_are_compacted() {
        let mut f = Fdb::new(FdbConfig::default());
        // A MAC flapping between two ports forever must not grow the queues.
        for i in 0..10_000u64 {
            f.learn(v(1), m(1), p((i % 2) as usize), 100, S(i));
        }
        assert!(f.ports.iter().all(|t| t.queue.len() <= 2 * t.count + 65));
    }
}
