//! Tests of the switch core: a table-driven VLAN matrix, forwarding and learning behaviour,
//! drops by reason, and counters. Property tests are in `proptests.rs`.

use super::*;

const T0: Duration = Duration::ZERO;

fn v(n: u16) -> VlanId {
    VlanId::new(n).unwrap()
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn access(n: u16) -> VlanMode {
    VlanMode::access(v(n))
}

fn trunk(set: &str, native: Option<&str>) -> VlanMode {
    VlanMode::Trunk { vlans: set.parse().unwrap(), native: native.map(|n| n.parse().unwrap()) }
}

fn port(mode: VlanMode) -> PortConfig {
    PortConfig { mode, ..Default::default() }
}

/// The tag a test frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    None,
    Vid(u16),
    /// VID 0 with PCP 5.
    Priority,
}

fn frame(dst: MacAddr, src: MacAddr, tag: Tag, payload: usize) -> Vec<u8> {
    let tci = match tag {
        Tag::None => None,
        Tag::Vid(vid) => Some(Tci::new(3, false, vid)),
        Tag::Priority => Some(Tci::new(5, false, 0)),
    };
    let repr = EthernetRepr { dst, src, tci, ethertype: wire::ETHERTYPE_IPV4 };
    let mut b = vec![0xabu8; repr.header_len() + payload];
    repr.emit(&mut b);
    b
}

/// The frame as it leaves: its bytes after the tag action.
fn egress_bytes(input: &[u8], action: TagAction) -> Vec<u8> {
    let mut out = vec![0u8; input.len() + 4];
    let n = action.splice().copy(input, &mut out).unwrap();
    out.truncate(n);
    out
}

/// What the egress port sees: no frame, an untagged frame, or one tagged with a VID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Nothing,
    Untagged,
    Tagged(u16),
}

/// How a frame `tag` arriving on a port of mode `m` is classified (written out by hand from
/// the table in `vlan.rs`, independently of `VlanMode::classify`).
fn expected_ingress(m: &str, tag: Tag) -> Result<u16, DropReason> {
    use DropReason::*;
    match (m, tag) {
        (_, Tag::Vid(4095)) => Err(ReservedVid),
        ("access10", Tag::None | Tag::Priority) => Ok(10),
        ("access10", Tag::Vid(_)) => Err(VlanNotAllowed),
        ("access20", Tag::None | Tag::Priority) => Ok(20),
        ("access20", Tag::Vid(_)) => Err(VlanNotAllowed),
        ("trunk10,20", Tag::None | Tag::Priority) => Err(UntaggedOnTrunk),
        ("trunk10,20", Tag::Vid(x)) if x == 10 || x == 20 => Ok(x),
        ("trunk10,20", Tag::Vid(_)) => Err(VlanNotAllowed),
        ("trunk20+n10", Tag::None | Tag::Priority) => Ok(10),
        ("trunk20+n10", Tag::Vid(x)) if x == 10 || x == 20 => Ok(x),
        ("trunk20+n10", Tag::Vid(_)) => Err(VlanNotAllowed),
        ("trunk20+n10t", Tag::None | Tag::Priority) => Ok(10),
        ("trunk20+n10t", Tag::Vid(x)) if x == 10 || x == 20 => Ok(x),
        ("trunk20+n10t", Tag::Vid(_)) => Err(VlanNotAllowed),
        _ => unreachable!("{m} {tag:?}"),
    }
}

/// How a port of mode `m` sends a frame of VLAN `vlan` (again by hand).
fn expected_egress(m: &str, vlan: u16) -> Seen {
    match (m, vlan) {
        ("access10", 10) | ("access20", 20) => Seen::Untagged,
        ("trunk10,20", 10 | 20) => Seen::Tagged(vlan),
        ("trunk20+n10", 10) => Seen::Untagged,
        ("trunk20+n10", 20) => Seen::Tagged(20),
        ("trunk20+n10t", 10 | 20) => Seen::Tagged(vlan),
        _ => Seen::Nothing,
    }
}

fn mode(m: &str) -> VlanMode {
    match m {
        "access10" => access(10),
        "access20" => access(20),
        "trunk10,20" => trunk("10,20", None),
        "trunk20+n10" => trunk("20", Some("10")),
        "trunk20+n10t" => trunk("20", Some("10:tagged")),
        _ => unreachable!(),
    }
}

const MODES: [&str; 5] = ["access10", "access20", "trunk10,20", "trunk20+n10", "trunk20+n10t"];
const TAGS: [Tag; 6] = [Tag::None, Tag::Vid(10), Tag::Vid(20), Tag::Vid(30), Tag::Priority, Tag::Vid(4095)];

#[test]
fn vlan_matrix_every_ingress_mode_tag_and_egress_mode() {
    let mut checked = 0;
    for in_mode in MODES {
        for tag in TAGS {
            for out_mode in MODES {
                let mut sw = Switch::default();
                let a = sw.add_port(port(mode(in_mode)));
                let b = sw.add_port(port(mode(out_mode)));
                let input = frame(MacAddr::BROADCAST, mac(1), tag, 46);
                let mut plan = BurstPlan::new();
                sw.ingress_burst(a, [FrameInfo::whole(&input)], T0, &mut plan);
                let sent: Vec<_> = plan.destinations().collect();
                let what = format!("{in_mode} {tag:?} -> {out_mode}");
                match expected_ingress(in_mode, tag) {
                    Err(reason) => {
                        assert!(sent.is_empty(), "{what}: forwarded");
                        assert_eq!(sw.counters(a).unwrap().dropped(reason), 1, "{what}: not counted as {reason:?}");
                    }
                    Ok(vlan) => {
                        let want = expected_egress(out_mode, vlan);
                        let seen = match sent.as_slice() {
                            [] => Seen::Nothing,
                            [(p, list)] => {
                                assert_eq!((*p, list.len()), (b, 1), "{what}");
                                let out = egress_bytes(&input, list[0].action);
                                let f = EthernetFrame::new_checked(&out[..]).unwrap();
                                // The payload survives untouched, whatever the tag did.
                                assert_eq!(f.payload(), &input[input.len() - 46..], "{what}");
                                assert_eq!(f.ethertype(), wire::ETHERTYPE_IPV4, "{what}");
                                match f.tci() {
                                    None => Seen::Untagged,
                                    Some(t) => {
                                        // A priority-tagged frame keeps its priority.
                                        if tag == Tag::Priority {
                                            assert_eq!(t.pcp(), 5, "{what}");
                                        }
                                        Seen::Tagged(t.vid())
                                    }
                                }
                            }
                            more => panic!("{what}: sent to {more:?}"),
                        };
                        assert_eq!(seen, want, "{what}");
                        if want == Seen::Nothing {
                            assert_eq!(sw.counters(a).unwrap().dropped(DropReason::NoDestination), 1, "{what}");
                        }
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * 6 * 5);
}

#[test]
fn learned_unicast_goes_to_one_port_unknown_floods_never_back() {
    let mut sw = Switch::default();
    let p: Vec<PortId> = (0..4).map(|_| sw.add_port(port(access(10)))).collect();
    let mut plan = BurstPlan::new();
    // Unknown destination: flood to all but the ingress port.
    let f1 = frame(mac(2), mac(1), Tag::None, 46);
    sw.ingress_burst(p[0], [FrameInfo::whole(&f1)], T0, &mut plan);
    let dests: Vec<PortId> = plan.destinations().map(|(p, _)| p).collect();
    assert_eq!(dests, vec![p[1], p[2], p[3]]);
    // Now mac(1) is known on p0: the reply is unicast there.
    let f2 = frame(mac(1), mac(2), Tag::None, 46);
    assert_eq!(
        sw.ingress(p[2], FrameInfo::whole(&f2), T0),
        Decision::Unicast { vlan: v(10), port: p[0], action: TagAction::Keep }
    );
    // Both known: unicast back, one port.
    sw.ingress_burst(p[0], [FrameInfo::whole(&f1)], T0, &mut plan);
    assert_eq!(plan.destinations().map(|(p, _)| p).collect::<Vec<_>>(), vec![p[2]]);
    // Destination learned on the ingress port itself: dropped, not reflected.
    let f3 = frame(mac(1), mac(3), Tag::None, 46);
    assert_eq!(sw.ingress(p[0], FrameInfo::whole(&f3), T0), Decision::Drop(DropReason::SamePort));
    // Multicast floods even though nothing is "learned" for it.
    let f4 = frame("01:00:5e:00:00:01".parse().unwrap(), mac(2), Tag::None, 46);
    assert!(matches!(sw.ingress(p[2], FrameInfo::whole(&f4), T0), Decision::Flood { .. }));
}

#[test]
fn vlans_are_separate_learning_domains() {
    let mut sw = Switch::default();
    let a10 = sw.add_port(port(access(10)));
    let b10 = sw.add_port(port(access(10)));
    let c20 = sw.add_port(port(access(20)));
    let t = sw.add_port(port(trunk("10,20", None)));
    let mut plan = BurstPlan::new();
    // mac(1) in VLAN 10 on a10; the same MAC in VLAN 20 on the trunk.
    sw.ingress(a10, FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(1), Tag::None, 46)), T0);
    sw.ingress(t, FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(1), Tag::Vid(20), 46)), T0);
    // From c20 to mac(1): VLAN 20's entry (the trunk), pushed tag 20.
    let d = sw.ingress(c20, FrameInfo::whole(&frame(mac(1), mac(3), Tag::None, 46)), T0);
    assert_eq!(d, Decision::Unicast { vlan: v(20), port: t, action: TagAction::Push(Tci::new(0, false, 20)) });
    // From b10 to mac(1): VLAN 10's entry (a10).
    sw.ingress_burst(b10, [FrameInfo::whole(&frame(mac(1), mac(4), Tag::None, 46))], T0, &mut plan);
    assert_eq!(plan.destinations().map(|(p, _)| p).collect::<Vec<_>>(), vec![a10]);
    let entries: Vec<_> = sw.fdb().entries(T0).filter(|e| e.mac == mac(1)).map(|e| (e.vlan.get(), e.port)).collect();
    assert_eq!(entries.len(), 2);
    assert!(entries.contains(&(10, a10)) && entries.contains(&(20, t)));
}

#[test]
fn bad_frames_are_dropped_with_named_counters() {
    let mut sw = Switch::default();
    let a = sw.add_port(port(access(1)));
    let _b = sw.add_port(port(access(1)));
    let good = frame(mac(9), mac(1), Tag::None, 46);
    let tagged = frame(mac(9), mac(1), Tag::Vid(1), 46);
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (good[..13].to_vec(), DropReason::Runt),
        (vec![], DropReason::Runt),
        (tagged[..17].to_vec(), DropReason::TruncatedTag),
        (frame(mac(9), MacAddr::BROADCAST, Tag::None, 46), DropReason::BadSource),
        (frame(mac(9), "01:00:5e:00:00:01".parse().unwrap(), Tag::None, 46), DropReason::BadSource),
        (frame(mac(9), MacAddr::ZERO, Tag::None, 46), DropReason::BadSource),
        (frame("01:80:c2:00:00:00".parse().unwrap(), mac(1), Tag::None, 46), DropReason::LinkLocal),
        (frame("01:80:c2:00:00:0e".parse().unwrap(), mac(1), Tag::None, 46), DropReason::LinkLocal),
        (frame(mac(9), mac(1), Tag::Vid(4095), 46), DropReason::ReservedVid),
        (tagged.clone(), DropReason::VlanNotAllowed),
    ];
    for (bytes, reason) in &cases {
        assert_eq!(sw.ingress(a, FrameInfo::whole(bytes), T0), Decision::Drop(*reason), "{reason:?}");
    }
    let c = sw.counters(a).unwrap();
    assert_eq!(c.rx_packets, cases.len() as u64);
    assert_eq!(c.rx_drops(), cases.len() as u64);
    assert_eq!(c.dropped(DropReason::Runt), 2);
    assert_eq!(c.dropped(DropReason::BadSource), 3);
    // Nothing bad was learned.
    assert!(sw.fdb().is_empty());
    // A lone port in its VLAN: accepted but nowhere to go.
    let mut sw = Switch::default();
    let lone = sw.add_port(port(access(7)));
    sw.add_port(port(access(8)));
    assert_eq!(sw.ingress(lone, FrameInfo::whole(&good), T0), Decision::Drop(DropReason::NoDestination));
}

#[test]
fn egress_mtu_is_enforced_after_the_tag_action_and_gso_is_exempt() {
    let mut sw = Switch::default();
    let a = sw.add_port(port(access(10)));
    let t = sw.add_port(PortConfig { mode: trunk("10", None), mtu: 1500, ..Default::default() });
    let small = sw.add_port(PortConfig { mode: access(10), mtu: 1000, ..Default::default() });
    let mut plan = BurstPlan::new();
    // 1514-byte untagged frame: fits the trunk (1518 once tagged), not the 1000-MTU port.
    let f = frame(MacAddr::BROADCAST, mac(1), Tag::None, 1500);
    sw.ingress_burst(a, [FrameInfo::whole(&f)], T0, &mut plan);
    assert_eq!(plan.destinations().map(|(p, _)| p).collect::<Vec<_>>(), vec![t]);
    assert_eq!(sw.counters(small).unwrap().dropped(DropReason::Mtu), 1);
    // One byte more: too big for both.
    let f = frame(MacAddr::BROADCAST, mac(1), Tag::None, 1501);
    sw.ingress_burst(a, [FrameInfo::whole(&f)], T0, &mut plan);
    assert!(plan.is_empty());
    assert_eq!(sw.counters(t).unwrap().dropped(DropReason::Mtu), 1);
    // A 64 KiB GSO frame passes: it leaves as MTU-sized segments.
    let f = frame(MacAddr::BROADCAST, mac(1), Tag::None, 65000);
    let info = FrameInfo { head: &f[..18], len: f.len(), gso: true };
    sw.ingress_burst(a, [info], T0, &mut plan);
    assert_eq!(plan.destinations().count(), 2);
}

#[test]
fn mac_lock_and_static_addresses() {
    let mut sw = Switch::default();
    let vm = sw.add_port(PortConfig { mode: access(10), macs: vec![mac(1)], lock_macs: true, ..Default::default() });
    let other = sw.add_port(port(access(10)));
    // The declared MAC is known before the VM says anything: no flooding to reach it.
    assert_eq!(
        sw.ingress(other, FrameInfo::whole(&frame(mac(1), mac(2), Tag::None, 46)), T0),
        Decision::Unicast { vlan: v(10), port: vm, action: TagAction::Keep }
    );
    // The VM may send only from its MAC.
    let spoof = frame(mac(2), mac(66), Tag::None, 46);
    assert_eq!(sw.ingress(vm, FrameInfo::whole(&spoof), T0), Decision::Drop(DropReason::MacLocked));
    assert!(matches!(
        sw.ingress(vm, FrameInfo::whole(&frame(mac(2), mac(1), Tag::None, 46)), T0),
        Decision::Unicast { .. }
    ));
    // Another port claiming the VM's MAC is refused and does not steal it.
    assert_eq!(
        sw.ingress(other, FrameInfo::whole(&frame(mac(9), mac(1), Tag::None, 46)), T0),
        Decision::Drop(DropReason::SourceIsStaticElsewhere)
    );
    assert_eq!(sw.fdb().lookup(v(10), mac(1), T0), Some(vm));
    // Static entries are shown as such and survive a flush.
    assert_eq!(sw.flush_fdb(), 1);
    assert!(sw.fdb().entries(T0).any(|e| e.mac == mac(1) && e.is_static));
}

#[test]
fn ageing_moves_and_port_removal() {
    let mut sw = Switch::new(SwitchConfig { fdb: FdbConfig { ageing: Duration::from_secs(10), max_entries: 100 } });
    let a = sw.add_port(port(access(1)));
    let b = sw.add_port(port(access(1)));
    let c = sw.add_port(port(access(1)));
    sw.ingress(a, FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(1), Tag::None, 46)), T0);
    assert_eq!(sw.fdb().lookup(v(1), mac(1), Duration::from_secs(9)), Some(a));
    // The station moves to b.
    sw.ingress(b, FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(1), Tag::None, 46)), Duration::from_secs(1));
    assert_eq!(sw.fdb().lookup(v(1), mac(1), Duration::from_secs(2)), Some(b));
    assert_eq!(sw.counters(b).unwrap().moved_in, 1);
    // It ages out 10 s after it was last seen: traffic to it floods again.
    let d = sw.ingress(c, FrameInfo::whole(&frame(mac(1), mac(3), Tag::None, 46)), Duration::from_secs(11));
    assert!(matches!(d, Decision::Flood { .. }));
    sw.expire(Duration::from_secs(30));
    assert_eq!(sw.counters(b).unwrap().aged, 1);
    // Removing a port forgets what it learned and stops flooding to it.
    sw.ingress(a, FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(5), Tag::None, 46)), Duration::from_secs(31));
    sw.remove_port(a);
    assert_eq!(sw.fdb().lookup(v(1), mac(5), Duration::from_secs(31)), None);
    let mut plan = BurstPlan::new();
    sw.ingress_burst(
        c,
        [FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(3), Tag::None, 46))],
        Duration::from_secs(31),
        &mut plan,
    );
    assert_eq!(plan.destinations().map(|(p, _)| p).collect::<Vec<_>>(), vec![b]);
    // Its id is reused.
    assert_eq!(sw.add_port(port(access(1))), a);
}

#[test]
fn reconfiguring_a_port_forgets_vlans_it_left() {
    let mut sw = Switch::default();
    let t = sw.add_port(port(trunk("10,20", None)));
    let x = sw.add_port(port(trunk("10,20", None)));
    sw.ingress(t, FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(1), Tag::Vid(10), 46)), T0);
    sw.ingress(t, FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(1), Tag::Vid(20), 46)), T0);
    assert!(sw.reconfigure_port(t, port(trunk("20", None))));
    assert_eq!(sw.fdb().lookup(v(10), mac(1), T0), None);
    assert_eq!(sw.fdb().lookup(v(20), mac(1), T0), Some(t));
    let mut plan = BurstPlan::new();
    sw.ingress_burst(x, [FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(2), Tag::Vid(10), 46))], T0, &mut plan);
    assert!(plan.is_empty(), "t left VLAN 10");
}

#[test]
fn burst_plan_groups_frames_per_destination_in_order() {
    let mut sw = Switch::default();
    let p: Vec<PortId> = (0..3).map(|_| sw.add_port(port(access(1)))).collect();
    // Teach the switch mac(11) on p1 and mac(12) on p2.
    sw.ingress(p[1], FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(11), Tag::None, 46)), T0);
    sw.ingress(p[2], FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(12), Tag::None, 46)), T0);
    let frames = [
        frame(mac(11), mac(1), Tag::None, 46),
        frame(mac(12), mac(1), Tag::None, 46),
        frame(mac(11), mac(1), Tag::None, 46),
        frame(MacAddr::BROADCAST, mac(1), Tag::None, 46),
        frame(mac(12), MacAddr::ZERO, Tag::None, 46),
    ];
    let mut plan = BurstPlan::new();
    sw.ingress_burst(p[0], frames.iter().map(|f| FrameInfo::whole(f)), T0, &mut plan);
    let got: Vec<(PortId, Vec<usize>)> =
        plan.destinations().map(|(p, l)| (p, l.iter().map(|e| e.frame).collect())).collect();
    assert_eq!(got, vec![(p[1], vec![0, 2, 3]), (p[2], vec![1, 3])]);
    // Reusing the plan clears it.
    sw.ingress_burst(p[0], std::iter::empty(), T0, &mut plan);
    assert!(plan.is_empty());
}

#[test]
fn a_burst_sees_what_its_own_earlier_frames_taught_the_table() {
    let mut sw = Switch::default();
    let p: Vec<PortId> = (0..3).map(|_| sw.add_port(port(access(1)))).collect();
    sw.ingress(p[1], FrameInfo::whole(&frame(MacAddr::BROADCAST, mac(11), Tag::None, 46)), T0);
    let frames = [
        // To mac(11), known on p1.
        frame(mac(11), mac(1), Tag::None, 46),
        frame(mac(11), mac(1), Tag::None, 46),
        // mac(11) now speaks from p0: it moves here...
        frame(mac(1), mac(11), Tag::None, 46),
        // ...so frames to it are no longer sent to p1 (they would come back to p0: dropped).
        frame(mac(11), mac(1), Tag::None, 46),
        // To mac(12), unknown: flooded; then mac(12) appears on p0 and the next is dropped.
        frame(mac(12), mac(1), Tag::None, 46),
        frame(mac(1), mac(12), Tag::None, 46),
        frame(mac(12), mac(1), Tag::None, 46),
    ];
    let mut plan = BurstPlan::new();
    sw.ingress_burst(p[0], frames.iter().map(|f| FrameInfo::whole(f)), T0, &mut plan);
    let got: Vec<(PortId, Vec<usize>)> =
        plan.destinations().map(|(p, l)| (p, l.iter().map(|e| e.frame).collect())).collect();
    assert_eq!(got, vec![(p[1], vec![0, 1, 4]), (p[2], vec![4])]);
    // 3 and 6, and 2 and 5 (addressed to mac(1), which lives on p0 since frame 0).
    assert_eq!(sw.counters(p[0]).unwrap().dropped(DropReason::SamePort), 4);
}

#[test]
fn edge_failures_adjust_counters() {
    let mut sw = Switch::default();
    let a = sw.add_port(port(access(1)));
    let b = sw.add_port(port(access(1)));
    let f = frame(MacAddr::BROADCAST, mac(1), Tag::None, 46);
    sw.ingress(a, FrameInfo::whole(&f), T0);
    assert_eq!(sw.counters(b).unwrap().tx_packets, 1);
    sw.record_tx_failure(b, DropReason::NoRoom, 1, f.len() as u64);
    let c = sw.counters(b).unwrap();
    assert_eq!((c.tx_packets, c.tx_bytes, c.dropped(DropReason::NoRoom)), (0, 0, 1));
    sw.record_rx_error(a, 100);
    assert_eq!(sw.counters(a).unwrap().dropped(DropReason::RxError), 1);
}
