//! Property tests: random topologies and random frame streams against a model.
//!
//! The model re-derives each decision from the rules in `vlan.rs` and the OVS `NORMAL`
//! semantics with the simplest data structures (a `HashMap` learning table without caps or
//! ageing), and the switch must agree frame by frame. On top of that, the invariants the
//! issue names are asserted directly, independently of the model:
//! - no frame leaves on a port that is not a member of its VLAN, and it leaves tagged exactly
//!   when that port sends the VLAN tagged;
//! - no frame returns to its ingress port;
//! - after a source is learned, a unicast to it goes to exactly one port;
//! - counters add up: every frame is counted once on ingress, and is either dropped once or
//!   sent (or MTU-dropped) once per destination.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
struct Topo {
    modes: Vec<VlanMode>,
    mtus: Vec<u32>,
}

fn vlan_mode() -> impl Strategy<Value = VlanMode> {
    prop_oneof![
        (1u16..=4).prop_map(|v| VlanMode::access(VlanId::new(v).unwrap())),
        (proptest::collection::btree_set(1u16..=4, 1..=3), proptest::option::of((1u16..=4, any::<bool>()))).prop_map(
            |(set, native)| {
                let mut vlans = VlanSet::new();
                for v in set {
                    vlans.insert(VlanId::new(v).unwrap());
                }
                VlanMode::Trunk {
                    vlans,
                    native: native.map(|(v, tagged)| Native { vid: VlanId::new(v).unwrap(), tagged }),
                }
            }
        ),
    ]
}

fn topo() -> impl Strategy<Value = Topo> {
    (2usize..=8)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(vlan_mode(), n),
                proptest::collection::vec(prop_oneof![Just(1500u32), Just(1000), Just(9000)], n),
            )
        })
        .prop_map(|(modes, mtus)| Topo { modes, mtus })
}

/// One generated frame: ingress port, source/destination choice, tag, length.
#[derive(Debug, Clone)]
struct Gen {
    port: usize,
    src: u8,
    dst: u8,
    tag: Option<u16>,
    payload: usize,
    truncate: Option<usize>,
    gso: bool,
}

fn gen_frame() -> impl Strategy<Value = Gen> {
    (
        0usize..8,
        0u8..30,
        0u8..34,
        prop_oneof![4 => Just(None), 4 => (0u16..=5).prop_map(Some), 1 => Just(Some(4095))],
        prop_oneof![8 => 0usize..100, 1 => 900usize..1100, 1 => 1400usize..1600],
        prop_oneof![20 => Just(None), 1 => (0usize..20).prop_map(Some)],
        prop_oneof![9 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(port, src, dst, tag, payload, truncate, gso)| Gen {
            port,
            src,
            dst,
            tag,
            payload,
            truncate,
            gso,
        })
}

/// Stations: MACs 0..24 belong to no port in particular (any port may send from any of them,
/// so moves happen); 24..27 are bad sources; destinations 30..34 are broadcast, multicast,
/// link-local and an unknown unicast.
fn src_mac(n: u8) -> MacAddr {
    match n {
        0..=23 => MacAddr([0x52, 0x54, 0, 0, 0, n]),
        24 => MacAddr::BROADCAST,
        25 => MacAddr::ZERO,
        _ => MacAddr([0x33, 0x33, 0, 0, 0, n]),
    }
}

fn dst_mac(n: u8) -> MacAddr {
    match n {
        0..=29 => src_mac(n.min(23)),
        30 => MacAddr::BROADCAST,
        31 => MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]),
        32 => MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x0e]),
        _ => MacAddr([0x52, 0x54, 0xff, 0, 0, 1]),
    }
}

fn build(g: &Gen) -> Vec<u8> {
    let repr = EthernetRepr {
        dst: dst_mac(g.dst),
        src: src_mac(g.src),
        tci: g.tag.map(|vid| Tci::new(2, false, vid)),
        ethertype: wire::ETHERTYPE_IPV4,
    };
    let mut b = vec![0x5au8; repr.header_len() + g.payload];
    repr.emit(&mut b);
    if let Some(t) = g.truncate {
        b.truncate(t);
    }
    b
}

/// The model's verdict on one frame.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Drop(DropReason),
    /// Destinations (before MTU) with how the frame leaves: `None` untagged, `Some(vid)`.
    To(u16, Vec<(usize, Option<u16>)>),
}

struct Model {
    topo: Topo,
    fdb: HashMap<(u16, MacAddr), usize>,
}

impl Model {
    fn members(&self, port: usize, vlan: u16) -> Option<Option<u16>> {
        match &self.topo.modes[port] {
            VlanMode::Access { vlan: a } => (a.get() == vlan).then_some(None),
            VlanMode::Trunk { vlans, native } => {
                if let Some(n) = native {
                    if n.vid.get() == vlan {
                        return Some(if n.tagged { Some(vlan) } else { None });
                    }
                }
                vlans.contains_raw(vlan).then_some(Some(vlan))
            }
        }
    }

    fn verdict(&mut self, port: usize, bytes: &[u8]) -> Verdict {
        use DropReason::*;
        if bytes.len() < 14 {
            return Verdict::Drop(Runt);
        }
        let tagged = bytes[12] == 0x81 && bytes[13] == 0x00;
        if tagged && bytes.len() < 18 {
            return Verdict::Drop(TruncatedTag);
        }
        let dst = MacAddr::from_slice(&bytes[0..6]).unwrap();
        let src = MacAddr::from_slice(&bytes[6..12]).unwrap();
        if src.0[0] & 1 == 1 || src == MacAddr::ZERO {
            return Verdict::Drop(BadSource);
        }
        if dst.0[..5] == [0x01, 0x80, 0xc2, 0, 0] && dst.0[5] < 0x10 {
            return Verdict::Drop(LinkLocal);
        }
        let vid = tagged.then(|| u16::from_be_bytes([bytes[14], bytes[15]]) & 0xfff);
        let vlan = match (vid, &self.topo.modes[port]) {
            (Some(4095), _) => return Verdict::Drop(ReservedVid),
            (None | Some(0), VlanMode::Access { vlan }) => vlan.get(),
            (Some(_), VlanMode::Access { .. }) => return Verdict::Drop(VlanNotAllowed),
            (None | Some(0), VlanMode::Trunk { native: Some(n), .. }) => n.vid.get(),
            (None | Some(0), VlanMode::Trunk { native: None, .. }) => return Verdict::Drop(UntaggedOnTrunk),
            (Some(v), VlanMode::Trunk { vlans, native }) => {
                if vlans.contains_raw(v) || native.is_some_and(|n| n.vid.get() == v) {
                    v
                } else {
                    return Verdict::Drop(VlanNotAllowed);
                }
            }
        };
        self.fdb.insert((vlan, src), port);
        if dst.0[0] & 1 == 0 {
            if let Some(&q) = self.fdb.get(&(vlan, dst)) {
                if q == port {
                    return Verdict::Drop(SamePort);
                }
                let t = self.members(q, vlan).expect("learned port is a member");
                return Verdict::To(vlan, vec![(q, t)]);
            }
        }
        let targets: Vec<_> = (0..self.topo.modes.len())
            .filter(|q| *q != port)
            .filter_map(|q| self.members(q, vlan).map(|t| (q, t)))
            .collect();
        if targets.is_empty() {
            Verdict::Drop(NoDestination)
        } else {
            Verdict::To(vlan, targets)
        }
    }
}

fn run(topo: Topo, frames: Vec<Gen>, burst: usize) -> Result<(), TestCaseError> {
    let n = topo.modes.len();
    let mut sw = Switch::default();
    let ids: Vec<PortId> = topo
        .modes
        .iter()
        .zip(&topo.mtus)
        .map(|(m, mtu)| sw.add_port(PortConfig { mode: m.clone(), mtu: *mtu, ..Default::default() }))
        .collect();
    let mut model = Model { topo: topo.clone(), fdb: HashMap::new() };
    let mut plan = BurstPlan::new();
    let mut want_tx = vec![0u64; n];
    let mut want_drops = vec![[0u64; DropReason::COUNT]; n];
    let mut fanout_total = 0u64;
    let frames: Vec<(usize, Vec<u8>, bool)> = frames.iter().map(|g| (g.port % n, build(g), g.gso)).collect();
    let mut i = 0;
    while i < frames.len() {
        // A burst: consecutive frames from the same port, at most `burst`.
        let port = frames[i].0;
        let mut j = i;
        while j < frames.len() && frames[j].0 == port && j - i < burst {
            j += 1;
        }
        let chunk = &frames[i..j];
        let infos: Vec<FrameInfo<'_>> = chunk
            .iter()
            .map(|(_, b, gso)| FrameInfo { head: &b[..b.len().min(18)], len: b.len(), gso: *gso && b.len() >= 18 })
            .collect();
        sw.ingress_burst(ids[port], infos.iter().copied(), Duration::ZERO, &mut plan);

        // Per frame: the set of (port, action) the plan sends it to.
        let mut got: Vec<Vec<(usize, TagAction)>> = vec![Vec::new(); chunk.len()];
        for (dest, list) in plan.destinations() {
            prop_assert!(dest != ids[port], "frame sent back to its ingress port");
            let mut seen = BTreeSet::new();
            for e in list {
                prop_assert!(seen.insert(e.frame), "frame {} twice to port {dest}", e.frame);
                got[e.frame].push((dest.index(), e.action));
            }
        }
        for (k, (_, bytes, _)) in chunk.iter().enumerate() {
            let info = infos[k];
            let verdict = model.verdict(port, bytes);
            match verdict {
                Verdict::Drop(r) => {
                    prop_assert!(got[k].is_empty(), "dropped ({r:?}) frame was sent to {:?}", got[k]);
                    want_drops[port][r as usize] += 1;
                }
                Verdict::To(vlan, targets) => {
                    fanout_total += targets.len() as u64;
                    let mut expect = Vec::new();
                    for (q, tag) in &targets {
                        let out_len = match (tag.is_some(), bytes[12] == 0x81 && bytes[13] == 0) {
                            (true, false) => bytes.len() + 4,
                            (false, true) => bytes.len() - 4,
                            _ => bytes.len(),
                        };
                        let hdr = if tag.is_some() { 18 } else { 14 };
                        if !info.gso && out_len > model.topo.mtus[*q] as usize + hdr {
                            want_drops[*q][DropReason::Mtu as usize] += 1;
                        } else {
                            want_tx[*q] += 1;
                            expect.push(*q);
                        }
                    }
                    let mut got_ports: Vec<usize> = got[k].iter().map(|(q, _)| *q).collect();
                    got_ports.sort();
                    expect.sort();
                    prop_assert_eq!(&got_ports, &expect, "frame {:?} vlan {}", bytes.get(..18), vlan);
                    // Learned unicast: exactly one port.
                    let dst = MacAddr::from_slice(&bytes[..6]).unwrap();
                    if !dst.is_multicast() && targets.len() == 1 && model.fdb.contains_key(&(vlan, dst)) {
                        prop_assert!(got_ports.len() <= 1);
                    }
                    // Membership and tagging on the wire, checked on the bytes.
                    for (q, action) in &got[k] {
                        let tagging = model.topo.modes[*q].egress(VlanId::new(vlan).unwrap());
                        prop_assert!(tagging.is_some(), "port {q} not in VLAN {vlan}");
                        let mut out = vec![0u8; bytes.len() + 4];
                        let len = action.splice().copy(bytes, &mut out).expect("splice");
                        let f = EthernetFrame::new_checked(&out[..len]).unwrap();
                        match tagging {
                            Some(EgressTagging::Untagged) => prop_assert_eq!(f.tci(), None),
                            _ => prop_assert_eq!(f.tci().map(|t| t.vid()), Some(vlan)),
                        }
                        prop_assert_eq!(f.payload(), &bytes[if bytes[12] == 0x81 { 18 } else { 14 }..]);
                    }
                }
            }
        }
        i = j;
    }
    // Counters add up, per port and in total.
    let mut rx = 0;
    let mut tx = 0;
    let mut mtu_drops = 0;
    for (p, id) in ids.iter().enumerate() {
        let c = sw.counters(*id).unwrap();
        rx += c.rx_packets;
        tx += c.tx_packets;
        mtu_drops += c.dropped(DropReason::Mtu);
        prop_assert_eq!(c.tx_packets, want_tx[p], "tx of port {}", p);
        prop_assert_eq!(c.drops, want_drops[p], "drops of port {}", p);
    }
    prop_assert_eq!(rx, frames.len() as u64);
    prop_assert_eq!(tx + mtu_drops, fanout_total);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn switch_agrees_with_model(
        topo in topo(),
        frames in proptest::collection::vec(gen_frame(), 1..300),
        burst in prop_oneof![Just(1usize), Just(4), Just(32)],
    ) {
        run(topo, frames, burst)?;
    }

    /// Whatever bytes arrive, the switch does not panic, never reflects a frame, and counts it.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..50),
        topo in topo(),
    ) {
        let mut sw = Switch::default();
        let ids: Vec<PortId> = topo.modes.iter().map(|m| sw.add_port(PortConfig { mode: m.clone(), ..Default::default() })).collect();
        let mut plan = BurstPlan::new();
        for (k, b) in bytes.iter().enumerate() {
            let p = ids[k % ids.len()];
            sw.ingress_burst(p, [FrameInfo::whole(b)], Duration::from_secs(k as u64), &mut plan);
            for (d, _) in plan.destinations() {
                prop_assert!(d != p);
            }
        }
        let rx: u64 = ids.iter().map(|i| sw.counters(*i).unwrap().rx_packets).sum();
        prop_assert_eq!(rx, bytes.len() as u64);
    }
}
