//! Tests of the full pipeline: flow rules in the switch, isolation, policing, mirrors, trace,
//! and the properties "policy never lets a frame out of its VLAN" and "counters add up".

use proptest::prelude::*;

use super::flow::parse_rule;
use super::*;

fn v(n: u16) -> VlanId {
    VlanId::new(n).unwrap()
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

const BCAST: MacAddr = MacAddr([0xff; 6]);

/// An IPv4/TCP (or ARP) frame: dst, src, tag, and for TCP the destination address and port.
fn tcp(dst: MacAddr, src: MacAddr, vid: Option<u16>, nw_dst: [u8; 4], tp_dst: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    if let Some(vid) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&nw_dst);
    f.extend_from_slice(&ip);
    let mut t = [0u8; 20];
    t[..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&tp_dst.to_be_bytes());
    t[12] = 0x50;
    f.extend_from_slice(&t);
    f.resize(f.len().max(60), 0);
    f
}

fn arp_request(src: MacAddr, tpa: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&BCAST.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

/// A switch with ports named by their index, all built from `cfgs`.
fn switch(cfgs: Vec<PortConfig>) -> (Switch, Vec<PortId>) {
    let mut s = Switch::default();
    let ids = cfgs.into_iter().map(|c| s.add_port(c)).collect();
    (s, ids)
}

fn names(n: &str) -> Option<PortId> {
    n.strip_prefix('p').and_then(|i| i.parse().ok()).map(PortId::from_index)
}

fn rule(s: &mut Switch, text: &str) {
    s.flow_insert(parse_rule(text).unwrap(), &names, Duration::ZERO).unwrap();
}

/// One frame through the burst path: the (port, action) pairs it went to.
fn send(s: &mut Switch, port: PortId, frame: &[u8], now: Duration) -> Vec<(PortId, TagAction)> {
    let mut plan = BurstPlan::new();
    s.ingress_burst(port, [FrameInfo::whole(frame)], now, &mut plan);
    plan.destinations().flat_map(|(p, l)| l.iter().map(move |e| (p, e.action))).collect()
}

fn dests(s: &mut Switch, port: PortId, frame: &[u8]) -> Vec<usize> {
    let mut d: Vec<usize> = send(s, port, frame, Duration::ZERO).into_iter().map(|(p, _)| p.index()).collect();
    d.sort();
    d
}

fn access(n: u16) -> PortConfig {
    PortConfig { mode: VlanMode::access(v(n)), ..Default::default() }
}

#[test]
fn isolated_ports_talk_only_to_ports_that_are_not() {
    let iso = PortConfig { isolated: true, ..access(1) };
    let (mut s, p) = switch(vec![iso.clone(), iso, access(1)]);
    // Broadcast from an isolated port reaches only the uplink.
    assert_eq!(dests(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80)), vec![2]);
    // From the uplink, both.
    assert_eq!(dests(&mut s, p[2], &tcp(BCAST, mac(3), None, [10, 0, 0, 2], 80)), vec![0, 1]);
    // p1 learned; unicast p0 -> p1 is refused.
    dests(&mut s, p[1], &tcp(BCAST, mac(2), None, [10, 0, 0, 2], 80));
    assert_eq!(dests(&mut s, p[0], &tcp(mac(2), mac(1), None, [10, 0, 0, 2], 80)), Vec::<usize>::new());
    assert_eq!(s.counters(p[0]).unwrap().dropped(DropReason::Isolated), 1);
    // A rule's output cannot cross isolation either.
    rule(&mut s, "in_port=p0 actions=output:p1");
    assert_eq!(dests(&mut s, p[0], &tcp(mac(2), mac(1), None, [10, 0, 0, 2], 80)), Vec::<usize>::new());
    assert_eq!(s.counters(p[0]).unwrap().dropped(DropReason::Isolated), 2);
}

#[test]
fn policer_holds_a_port_to_its_rate() {
    // 8 Mbit/s = 1 MB/s with a 100 KB bucket; 1500-byte frames offered at 10 MB/s for 2 s.
    let cfg = PortConfig { policer: Some(Policer::new(8000, Some(100))), ..access(1) };
    let (mut s, p) = switch(vec![cfg, access(1)]);
    let f = tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80);
    let mut big = f.clone();
    big.resize(1500, 0);
    let mut passed = 0u64;
    let mut t = 0u64;
    while t < 2_000_000_000 {
        passed += send(&mut s, p[0], &big, Duration::from_nanos(t)).len() as u64 * 1500;
        t += 150_000;
    }
    let want = 2_000_000 + 100_000;
    assert!(passed.abs_diff(want) <= 3000, "passed {passed}, expected about {want}");
    let c = s.counters(p[0]).unwrap();
    assert_eq!(c.rx_packets, 2_000_000_000 / 150_000 + 1);
    assert_eq!(c.dropped(DropReason::Policed) * 1500 + passed, c.rx_bytes);
}

#[test]
fn egress_policer_counts_on_the_egress_port() {
    let cfg = PortConfig { egress_policer: Some(Policer::new(8, Some(1))), mtu: 65000, ..access(1) };
    let (mut s, p) = switch(vec![access(1), cfg]);
    let mut big = tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80);
    big.resize(40_000, 0);
    // The minimum bucket holds one 64 KiB frame: the first passes, the second is dropped.
    assert_eq!(dests(&mut s, p[0], &big), vec![1]);
    assert_eq!(dests(&mut s, p[0], &big), Vec::<usize>::new());
    assert_eq!(s.counters(p[1]).unwrap().dropped(DropReason::EgressPoliced), 1);
}

#[test]
fn drop_rule_counts_and_normal_still_works() {
    let (mut s, p) = switch(vec![access(1), access(1), access(1)]);
    rule(&mut s, "priority=100,in_port=p0,tcp,tp_dst=22 actions=drop");
    assert_eq!(dests(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 22)), Vec::<usize>::new());
    assert_eq!(dests(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80)), vec![1, 2]);
    // From another port, port 22 passes.
    assert_eq!(dests(&mut s, p[1], &tcp(BCAST, mac(2), None, [10, 0, 0, 2], 22)), vec![0, 2]);
    let r = &s.flows().rules()[0];
    assert_eq!((r.stats.n_packets, r.stats.n_bytes), (1, 60));
    assert_eq!(s.counters(p[0]).unwrap().dropped(DropReason::Policy), 1);
    // A dropped frame teaches the table nothing.
    let mut s2 = switch(vec![access(1), access(1)]).0;
    rule(&mut s2, "in_port=p0 actions=drop");
    dests(&mut s2, PortId::from_index(0), &tcp(BCAST, mac(9), None, [10, 0, 0, 2], 80));
    assert_eq!(s2.fdb().entries(Duration::ZERO).count(), 0);
}

#[test]
fn arp_rule_sends_requests_to_one_port() {
    let (mut s, p) = switch(vec![access(1), access(1), access(1)]);
    rule(&mut s, "priority=100,in_port=p0,arp,arp_tpa=10.0.0.2 actions=output:p2");
    assert_eq!(dests(&mut s, p[0], &arp_request(mac(1), [10, 0, 0, 2])), vec![2]);
    assert_eq!(dests(&mut s, p[0], &arp_request(mac(1), [10, 0, 0, 3])), vec![1, 2]);
    // Several outputs, NORMAL after an output: one copy per port.
    rule(&mut s, "priority=200,in_port=p0,arp,arp_tpa=10.0.0.9 actions=output:p2,output:p1,normal,output:p2");
    assert_eq!(dests(&mut s, p[0], &arp_request(mac(1), [10, 0, 0, 9])), vec![1, 2]);
}

#[test]
fn outputs_stay_in_the_vlan_unless_a_rule_moves_the_frame() {
    let trunk =
        PortConfig { mode: VlanMode::Trunk { vlans: "10,20".parse().unwrap(), native: None }, ..Default::default() };
    let (mut s, p) = switch(vec![access(10), access(20), trunk]);
    rule(&mut s, "in_port=p0,tcp actions=output:p1,output:p2");
    // p1 is in VLAN 20: not delivered. p2 carries 10 tagged: a tag is pushed.
    assert_eq!(
        send(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80), Duration::ZERO),
        vec![(p[2], TagAction::Push(Tci::new(0, false, 10)))]
    );
    // mod_vlan_vid moves it to VLAN 20: p1 (untagged) and p2 (tagged 20).
    rule(&mut s, "priority=40000,in_port=p0,tcp actions=mod_vlan_vid:20,output:p1,output:p2");
    let out = send(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80), Duration::ZERO);
    assert_eq!(out, vec![(p[1], TagAction::Keep), (p[2], TagAction::Push(Tci::new(0, false, 20)))]);
    // strip_vlan: only ports carrying the VLAN untagged.
    rule(&mut s, "priority=50000,in_port=p2,tcp actions=strip_vlan,output:p0,output:p1");
    let out = send(&mut s, p[2], &tcp(BCAST, mac(3), Some(10), [10, 0, 0, 2], 80), Duration::ZERO);
    assert_eq!(out, vec![(p[0], TagAction::Pop)]);
}

#[test]
fn rules_need_the_deep_head_and_fail_closed_without_it() {
    let (mut s, p) = switch(vec![access(1), access(1)]);
    assert!(!s.wants_deep_heads());
    rule(&mut s, "tcp,tp_dst=22 actions=drop");
    assert!(s.wants_deep_heads());
    let f = tcp(BCAST, mac(1), None, [10, 0, 0, 2], 22);
    let mut plan = BurstPlan::new();
    // Only the 18-byte head of a 60-byte frame: refused, not let through.
    s.ingress_burst(p[0], [FrameInfo { head: &f[..18], len: f.len(), gso: false }], Duration::ZERO, &mut plan);
    assert!(plan.is_empty());
    assert_eq!(s.counters(p[0]).unwrap().dropped(DropReason::RxError), 1);
}

#[test]
fn mirrors_copy_both_directions_with_the_vlan_tag_and_dropped_frames_too() {
    let (mut s, p) = switch(vec![access(10), access(10), access(10), access(10)]);
    s.set_mirrors(vec![MirrorConfig {
        name: "m".into(),
        select_src: vec![p[0]],
        select_dst: vec![p[0]],
        select_vlan: None,
        output: MirrorOutput::Port(p[3]),
    }]);
    let tag10 = TagAction::Push(Tci::new(0, false, 10));
    // p0 -> broadcast: p1, p2 and a tagged copy to p3.
    let out = send(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80), Duration::ZERO);
    assert_eq!(out, vec![(p[1], TagAction::Keep), (p[2], TagAction::Keep), (p[3], tag10)]);
    // p1 -> p0 (learned): the copy of what p0 is sent.
    let out = send(&mut s, p[1], &tcp(mac(1), mac(2), None, [10, 0, 0, 1], 80), Duration::ZERO);
    assert_eq!(out, vec![(p[0], TagAction::Keep), (p[3], tag10)]);
    // p2 -> p1: not selected.
    let out = send(&mut s, p[2], &tcp(mac(2), mac(3), None, [10, 0, 0, 1], 80), Duration::ZERO);
    assert_eq!(out, vec![(p[1], TagAction::Keep)]);
    // The mirror port sends nothing else and takes nothing.
    assert_eq!(dests(&mut s, p[3], &tcp(BCAST, mac(4), None, [10, 0, 0, 1], 80)), Vec::<usize>::new());
    assert_eq!(s.counters(p[3]).unwrap().dropped(DropReason::MirrorPort), 1);
    // A frame from p0 a rule drops is still copied.
    rule(&mut s, "in_port=p0,tcp,tp_dst=22 actions=drop");
    let out = send(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 22), Duration::ZERO);
    assert_eq!(out, vec![(p[3], tag10)]);
    assert_eq!(s.mirrors()[0].counters.packets, 3);
}

#[test]
fn trace_agrees_with_the_datapath_and_changes_nothing() {
    let (mut s, p) = switch(vec![access(1), access(1), access(1)]);
    rule(&mut s, "priority=100,in_port=p0,arp,arp_tpa=10.0.0.2 actions=output:p2");
    let f = arp_request(mac(1), [10, 0, 0, 2]);
    let before = s.counters(p[0]).cloned();
    let t = s.trace(p[0], &f, Duration::ZERO);
    assert_eq!(s.counters(p[0]).cloned(), before);
    assert_eq!(s.flows().rules()[0].stats.n_packets, 0);
    assert_eq!(t.outputs, send(&mut s, p[0], &f, Duration::ZERO));
    let text = t.render(&|p| format!("p{}", p.index()));
    assert!(text.contains("priority 100"), "{text}");
    assert!(text.contains("Datapath actions: p2"), "{text}");
    // With no rules: NORMAL, the FDB says where.
    let (mut s, p) = switch(vec![access(1), access(1)]);
    send(&mut s, p[1], &tcp(BCAST, mac(2), None, [10, 0, 0, 2], 80), Duration::ZERO);
    let t = s.trace(p[0], &tcp(mac(2), mac(1), None, [10, 0, 0, 2], 80), Duration::ZERO);
    assert_eq!(t.fdb, Some((mac(2), Some(p[1]))));
    assert!(matches!(t.decision, Decision::Unicast { .. }));
}

#[test]
fn rules_follow_ports_by_name() {
    let (mut s, p) = switch(vec![access(1), access(1), access(1)]);
    rule(&mut s, "in_port=p0 actions=output:p2");
    // Port p2 goes away: the rule sends nothing (the frame is dropped by policy).
    s.flow_reresolve(&|n| Some(if n == "p2" { PortId::NONE } else { names(n).unwrap() }));
    assert_eq!(dests(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80)), Vec::<usize>::new());
    // And comes back.
    s.flow_reresolve(&names);
    assert_eq!(dests(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80)), vec![2]);
    assert_eq!(s.flows().rules()[0].stats.n_packets, 2, "counters survive re-resolution");
}

// ---- properties ---------------------------------------------------------------------------

fn mode() -> impl Strategy<Value = VlanMode> {
    prop_oneof![
        (1u16..4).prop_map(|n| VlanMode::access(v(n))),
        (proptest::collection::vec(1u16..4, 1..3), proptest::option::of(1u16..4)).prop_map(|(vs, native)| {
            let mut set = VlanSet::new();
            for x in vs {
                set.insert(v(x));
            }
            VlanMode::Trunk { vlans: set, native: native.map(|n| Native { vid: v(n), tagged: false }) }
        }),
    ]
}

fn rule_text(n_ports: usize) -> impl Strategy<Value = String> {
    let port = move || (0..n_ports).prop_map(|i| format!("p{i}"));
    let matches = prop_oneof![
        Just(String::new()),
        port().prop_map(|p| format!("in_port={p},")),
        (1u16..4).prop_map(|x| format!("dl_vlan={x},")),
        (0u16..4).prop_map(|x| format!("tcp,tp_dst={},", 20 + x)),
        (2u8..5).prop_map(|x| format!("ip,nw_dst=10.0.0.{x},")),
        Just("arp,".to_owned()),
    ];
    let action = prop_oneof![
        Just("normal".to_owned()),
        Just("flood".to_owned()),
        port().prop_map(|p| format!("output:{p}")),
        Just("strip_vlan".to_owned()),
    ];
    (0u16..4, matches, proptest::collection::vec(action, 0..4)).prop_map(|(prio, m, acts)| {
        let acts = if acts.is_empty() { "drop".to_owned() } else { acts.join(",") };
        format!("{m}priority={} actions={acts}", 100 + prio)
    })
}

#[derive(Debug, Clone)]
struct In {
    port: usize,
    dst: u8,
    src: u8,
    vid: Option<u16>,
    tp: u16,
    nw: u8,
    arp: bool,
}

fn input(n_ports: usize) -> impl Strategy<Value = In> {
    (0..n_ports, 0u8..5, 1u8..5, proptest::option::of(0u16..4), 20u16..24, 2u8..5, any::<bool>())
        .prop_map(|(port, dst, src, vid, tp, nw, arp)| In { port, dst, src, vid, tp, nw, arp })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the rules, a frame leaves only by ports of its VLAN, tagged or not as the
    /// port's mode says; and every frame is dropped once at ingress or counted once per
    /// destination.
    #[test]
    fn policy_keeps_vlans_closed_and_counters_add_up(
        modes in proptest::collection::vec(mode(), 2..5),
        iso in proptest::collection::vec(any::<bool>(), 5),
        rules in proptest::collection::vec(rule_text(4), 0..6),
        inputs in proptest::collection::vec(input(4), 1..24),
    ) {
        let n = modes.len();
        let cfgs: Vec<PortConfig> = modes.iter().zip(&iso).map(|(m, i)| PortConfig { mode: m.clone(), isolated: *i, ..Default::default() }).collect();
        let (mut s, ids) = switch(cfgs.clone());
        for r in &rules {
            let _ = s.flow_insert(parse_rule(r).unwrap(), &|name| Some(names(name).filter(|p| p.index() < n).unwrap_or(PortId::NONE)), Duration::ZERO);
        }
        let (mut sent, mut ingress_drops) = (0u64, 0u64);
        for x in &inputs {
            let port = ids[x.port % n];
            let dst = if x.dst == 0 { BCAST } else { mac(x.dst) };
            let f = if x.arp { arp_request(mac(x.src), [10, 0, 0, x.nw]) } else { tcp(dst, mac(x.src), x.vid, [10, 0, 0, x.nw], x.tp) };
            let before: u64 = (0..n).map(|i| s.counters(ids[i]).unwrap().rx_drops()).sum();
            let out = send(&mut s, port, &f, Duration::ZERO);
            let after: u64 = (0..n).map(|i| s.counters(ids[i]).unwrap().rx_drops()).sum();
            prop_assert!(after - before <= 1);
            prop_assert!(out.is_empty() || after == before, "a frame both dropped and sent");
            ingress_drops += after - before;
            sent += out.len() as u64;
            let in_cfg = &cfgs[x.port % n];
            let in_tci = x.vid.filter(|_| !x.arp).map(|vid| Tci::new(0, false, vid));
            let Ingress::Vlan(vlan) = in_cfg.mode.classify(in_tci.map(Tci::vid)) else {
                prop_assert!(out.is_empty());
                continue;
            };
            for (p, action) in out {
                prop_assert!(p != port, "sent back to its ingress port");
                let cfg = &cfgs[p.index()];
                prop_assert!(!(cfg.isolated && in_cfg.isolated), "isolated to isolated");
                let tagging = cfg.mode.egress(vlan);
                prop_assert!(tagging.is_some(), "port {} is not in VLAN {}", p, vlan);
                // strip_vlan may only narrow to untagged carriers; otherwise the port's mode.
                prop_assert_eq!(action, tag_action(tagging.unwrap(), vlan, in_tci));
            }
        }
        let tx: u64 = (0..n).map(|i| s.counters(ids[i]).unwrap().tx_packets + s.counters(ids[i]).unwrap().tx_drops()).sum();
        prop_assert_eq!(tx, sent);
        let rx: u64 = (0..n).map(|i| s.counters(ids[i]).unwrap().rx_packets).sum();
        prop_assert_eq!(rx, inputs.len() as u64);
        prop_assert!(ingress_drops <= rx);
    }
}

#[test]
fn trace_frames_carry_their_key() {
    for m in [
        "in_port=p0,dl_src=52:54:00:00:00:01,dl_dst=ff:ff:ff:ff:ff:ff",
        "in_port=p0,dl_vlan=10,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_src=1,tp_dst=22",
        "in_port=p1,udp,nw_dst=192.168.1.1,tp_dst=53",
        "in_port=p1,icmp,icmp_type=8,nw_dst=10.1.1.1",
        "in_port=p0,arp,arp_spa=10.0.0.1,arp_tpa=10.0.0.2",
        "in_port=p0,tcp6,ipv6_dst=fd00::1,tp_dst=443",
        "in_port=p0,dl_type=0x88cc",
    ] {
        let m = flow::parse_match(m).unwrap();
        let key = flow::key_from_match(&m, names(m.in_port.as_deref().unwrap()));
        let f = key.to_frame();
        assert_eq!(flow::FlowKey::extract(key.in_port, &f), key, "{m}");
    }
}

/// Two rules that differ only by port name stay two rules while both ports are detached
/// (their names resolve alike): a drop rule is never replaced by another port's rule.
#[test]
fn rules_of_detached_ports_do_not_replace_each_other() {
    let (mut s, p) = switch(vec![access(1), access(1)]);
    let none = |_: &str| Some(PortId::NONE);
    s.flow_insert(parse_rule("priority=100,in_port=vmA actions=drop").unwrap(), &none, Duration::ZERO).unwrap();
    s.flow_insert(parse_rule("priority=100,in_port=vmB actions=normal").unwrap(), &none, Duration::ZERO).unwrap();
    assert_eq!(s.flows().len(), 2);
    // vmA comes back as p0: its drop rule applies.
    s.flow_reresolve(&|n| Some(if n == "vmA" { p[0] } else { PortId::NONE }));
    assert_eq!(dests(&mut s, p[0], &tcp(BCAST, mac(1), None, [10, 0, 0, 2], 80)), Vec::<usize>::new());
    // The same text again does replace.
    s.flow_insert(parse_rule("priority=100,in_port=vmA actions=drop").unwrap(), &none, Duration::ZERO).unwrap();
    assert_eq!(s.flows().len(), 2);
}
