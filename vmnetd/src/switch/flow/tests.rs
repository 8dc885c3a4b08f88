//! Unit tests: the parser's errors and round trips, key extraction on crafted frames, the
//! classifier's ordering, counters, timeouts and trace.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::switch::port::PortId;

fn ok(s: &str) -> FlowRule {
    parse_rule(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The error for `s`, checking it names `token`.
fn bad(s: &str, token: &str) -> String {
    let e = parse_rule(s).expect_err(s);
    assert_eq!(e.token, token, "{s}: {e}");
    e.to_string()
}

fn port(name: &str) -> Option<PortId> {
    name.strip_prefix("vm").and_then(|n| n.parse().ok()).map(PortId::from_index)
}

const SEC: Nanos = 1_000_000_000;

#[test]
fn parses_the_issue_example() {
    let r = ok("priority=100, in_port=vm1,arp,arp_tpa=10.0.0.2 actions=output:vm2");
    assert_eq!(r.priority, 100);
    assert_eq!(r.matches.in_port.as_deref(), Some("vm1"));
    assert_eq!(r.matches.dl_type, Some(ETH_TYPE_ARP));
    assert_eq!(r.matches.nw_dst, Some(Masked { value: Ipv4Addr::new(10, 0, 0, 2), mask: Ipv4Addr::BROADCAST }));
    assert_eq!(r.actions, vec![Action::Output("vm2".into())]);
    assert_eq!(r.to_string(), "priority=100,arp,in_port=vm1,arp_tpa=10.0.0.2 actions=output:vm2");
}

#[test]
fn round_trips() {
    for s in [
        "actions=drop",
        "actions=NORMAL",
        "priority=0,cookie=0xabc,idle_timeout=10,hard_timeout=60,ip,nw_src=10.0.0.0/8,nw_dst=192.168.0.1/255.255.0.255 actions=FLOOD",
        "tcp,dl_vlan=0xffff,dl_src=52:54:00:00:00:01,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,tp_src=0x100/0xff00,tp_dst=80 actions=mod_vlan_vid:10,output:vm1,output:vm2",
        "udp6,ipv6_src=fe80::/64,ipv6_dst=2001:db8::1,tp_dst=53 actions=strip_vlan,NORMAL",
        "icmp,dl_vlan=4095,icmp_type=8 actions=drop",
        "icmp6 actions=drop",
        "ipv6,nw_proto=47 actions=drop",
        "ip,nw_proto=47 actions=drop",
        "dl_type=0x88cc actions=drop",
        "priority=65535,in_port=tap-a.b@c:0 actions=output:x",
    ] {
        let r = ok(s);
        assert_eq!(r.to_string(), s, "printed form of {s}");
        assert_eq!(ok(&r.to_string()), r);
    }
}

#[test]
fn normalizes() {
    // Shorthand spelled out, bits outside masks cleared, zero masks are wildcards, arp_*
    // and nw_* are one field, empty actions = drop, separators are commas and/or spaces.
    let cases = [
        ("dl_type=0x0800,nw_proto=6 actions=normal", "tcp actions=NORMAL"),
        ("ip nw_src=10.1.2.3/8  actions=", "ip,nw_src=10.0.0.0/8 actions=drop"),
        ("ip,nw_src=10.1.2.3/0 actions=drop", "ip actions=drop"),
        ("arp,nw_src=1.2.3.4 actions=drop", "arp,arp_spa=1.2.3.4 actions=drop"),
        ("tcp,tp_dst=0x1234/0 actions=drop", "tcp actions=drop"),
        (
            "dl_src=ff:ff:ff:ff:ff:ff/01:00:00:00:00:00 actions=drop",
            "dl_src=01:00:00:00:00:00/01:00:00:00:00:00 actions=drop",
        ),
        ("priority=32768,cookie=0,table=0 actions=flood", "actions=FLOOD"),
        ("ip,nw_dst=10.0.0.1/255.255.255.255 actions=drop", "ip,nw_dst=10.0.0.1 actions=drop"),
    ];
    for (input, printed) in cases {
        assert_eq!(ok(input).to_string(), printed, "{input}");
    }
}

#[test]
fn rejects_with_the_offending_token() {
    bad("in_port=vm1", "in_port=vm1");
    assert!(bad("bogus=1 actions=drop", "bogus=1").contains("unknown field"));
    bad("ipx actions=drop", "ipx");
    assert!(bad("tcp,nw_proto=6 actions=drop", "nw_proto=6").contains("already set (by `tcp`)"));
    bad("ip,arp actions=drop", "arp");
    bad("dl_src=00:00:00:00:00:01,dl_src=00:00:00:00:00:02 actions=drop", "dl_src=00:00:00:00:00:02");
    bad("arp,nw_src=1.1.1.1,arp_spa=1.1.1.1 actions=drop", "arp_spa=1.1.1.1");
    // Prerequisites.
    assert!(bad("nw_src=10.0.0.1 actions=drop", "nw_src=10.0.0.1").contains("needs `ip` or `arp`"));
    bad("ipv6,nw_dst=10.0.0.1 actions=drop", "nw_dst=10.0.0.1");
    bad("ip,arp_tpa=10.0.0.1 actions=drop", "arp_tpa=10.0.0.1");
    bad("ip,tp_dst=80 actions=drop", "tp_dst=80");
    bad("icmp,tp_dst=80 actions=drop", "tp_dst=80");
    bad("tcp,icmp_type=8 actions=drop", "icmp_type=8");
    bad("icmp6,icmp_type=128 actions=drop", "icmp_type=128");
    bad("ip,ipv6_src=::1 actions=drop", "ipv6_src=::1");
    bad("arp,nw_proto=1 actions=drop", "nw_proto=1");
    // Ranges and syntax.
    assert!(bad("priority=65536 actions=drop", "priority=65536").contains("out of range"));
    bad("priority=-1 actions=drop", "priority=-1");
    bad("priority= actions=drop", "priority=");
    bad("cookie=0x10000000000000000 actions=drop", "cookie=0x10000000000000000");
    bad("dl_vlan=4096 actions=drop", "dl_vlan=4096");
    bad("dl_type=0x0500 actions=drop", "dl_type=0x0500");
    bad("dl_type=0x8100 actions=drop", "dl_type=0x8100");
    bad("ip,nw_src=10.0.0.0/33 actions=drop", "nw_src=10.0.0.0/33");
    bad("ip,nw_src=10.0.0 actions=drop", "nw_src=10.0.0");
    bad("ipv6,ipv6_dst=::1/129 actions=drop", "ipv6_dst=::1/129");
    bad("dl_dst=00:00:00:00:00 actions=drop", "dl_dst=00:00:00:00:00");
    bad("tcp,tp_src=65536 actions=drop", "tp_src=65536");
    bad("tcp,tp_src=+5 actions=drop", "tp_src=+5");
    bad("table=1 actions=drop", "table=1");
    bad("in_port= actions=drop", "in_port=");
    bad("in_port=a/b actions=drop", "in_port=a/b");
    // Actions.
    assert!(bad("actions=drop,output:vm1", "drop").contains("only action"));
    bad("actions=output:vm1,drop", "drop");
    bad("actions=output", "output");
    bad("actions=output:", "output:");
    bad("actions=mod_vlan_vid:0", "mod_vlan_vid:0");
    bad("actions=mod_vlan_vid:4095", "mod_vlan_vid:4095");
    bad("actions=strip_vlan:1", "strip_vlan:1");
    bad("actions=resubmit(,1)", "resubmit(");
    bad("actions=drop ip", "ip");
    bad("actions=drop,drop", "drop");
    // Bounds.
    let many = vec!["output:vm1"; MAX_ACTIONS + 1].join(",");
    assert!(bad(&format!("actions={many}"), "output:vm1").contains("more than"));
    assert!(parse_rule(&format!("actions={}", vec!["output:vm1"; MAX_ACTIONS].join(","))).is_ok());
    let long = format!("in_port={} actions=drop", "a".repeat(MAX_RULE_LEN));
    assert!(parse_rule(&long).unwrap_err().reason.contains("more than"));
    bad(&format!("in_port={} actions=drop", "a".repeat(MAX_PORT_NAME + 1)), &format!("in_port={}", "a".repeat(65)));
}

#[test]
fn parse_match_for_trace() {
    let m = parse_match("in_port=vm1,tcp,nw_dst=10.0.0.2,tp_dst=22").unwrap();
    assert_eq!(m.to_string(), "tcp,in_port=vm1,nw_dst=10.0.0.2,tp_dst=22");
    assert_eq!(parse_match("priority=1").unwrap_err().token, "priority=1");
    assert!(parse_match("ip actions=drop").is_err());
    assert_eq!(parse_match("").unwrap(), Match::default());
}

// ---- key extraction ------------------------------------------------------------------------

const SRC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const DST: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

fn eth(tag: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST);
    f.extend_from_slice(&SRC);
    if let Some(t) = tag {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&t.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, frag: u16, options: usize, l4: &[u8]) -> Vec<u8> {
    let ihl = 20 + options;
    let mut h = vec![0u8; ihl];
    h[0] = 0x40 | (ihl / 4) as u8;
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 0, 0, 1]);
    h[16..20].copy_from_slice(&[10, 0, 0, 2]);
    h.extend_from_slice(l4);
    h
}

fn ports(src: u16, dst: u16, len: usize) -> Vec<u8> {
    let mut l4 = vec![0u8; len];
    l4[0..2].copy_from_slice(&src.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.to_be_bytes());
    l4
}

#[test]
fn extracts_tcp_over_tagged_ipv4() {
    let f = eth(Some(0x2000 | 10), ETH_TYPE_IP, &ipv4(IPPROTO_TCP, 0, 4, &ports(1234, 80, 20)));
    let k = FlowKey::extract(Some(PortId::from_index(3)), &f);
    let e = k.eth.unwrap();
    assert_eq!((e.src, e.dst, e.tci, e.dl_type), (MacAddr(SRC), MacAddr(DST), Some(0x2000 | 10), ETH_TYPE_IP));
    assert_eq!(k.nw, Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))));
    assert_eq!(k.nw_proto, Some(IPPROTO_TCP));
    assert_eq!(k.tp, Some((1234, 80)));
    assert_eq!(
        k.to_string(),
        "in_port=3,dl_vlan=10,dl_vlan_pcp=1,dl_src=52:54:00:00:00:01,dl_dst=52:54:00:00:00:02,dl_type=0x0800,\
         nw_src=10.0.0.1,nw_dst=10.0.0.2,nw_proto=6,tp_src=1234,tp_dst=80"
    );
    // A TCP header cut short has no ports; every prefix of the frame extracts.
    let short = &f[..f.len() - 1];
    assert_eq!(FlowKey::extract(None, short).tp, None);
    for n in 0..f.len() {
        let k = FlowKey::extract(None, &f[..n]);
        assert_eq!(k.eth.is_some(), n >= 18, "{n}");
        assert_eq!(k.nw.is_some(), n >= 18 + 24, "{n}");
    }
}

#[test]
fn extracts_udp_icmp_and_fragments() {
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IP, &ipv4(IPPROTO_UDP, 0, 0, &ports(68, 67, 8))));
    assert_eq!((k.eth.unwrap().tci, k.tp), (None, Some((68, 67))));
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IP, &ipv4(IPPROTO_ICMP, 0, 0, &[8, 0, 0, 0])));
    assert_eq!((k.icmp_type, k.tp), (Some(8), None));
    // A later fragment has no L4 fields; the first (MF set, offset 0) has them.
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IP, &ipv4(IPPROTO_UDP, 185, 0, &ports(1, 2, 8))));
    assert_eq!((k.nw_proto, k.tp), (Some(IPPROTO_UDP), None));
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IP, &ipv4(IPPROTO_UDP, 0x2000, 0, &ports(1, 2, 8))));
    assert_eq!(k.tp, Some((1, 2)));
}

#[test]
fn rejects_bad_ipv4_headers() {
    let mut p = ipv4(IPPROTO_TCP, 0, 0, &ports(1, 2, 20));
    p[0] = 0x44; // IHL 4 < 5
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IP, &p));
    assert_eq!((k.nw, k.nw_proto, k.tp), (None, None, None));
    assert_eq!(k.eth.unwrap().dl_type, ETH_TYPE_IP);
    p[0] = 0x4f; // IHL 15: 60 bytes, more than there is
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IP, &p[..40]));
    assert_eq!(k.nw, None);
    p[0] = 0x65; // version 6 in an IPv4 ethertype
    assert_eq!(FlowKey::extract(None, &eth(None, ETH_TYPE_IP, &p)).nw, None);
}

#[test]
fn extracts_ipv6_arp_and_others() {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[6] = IPPROTO_UDP;
    h[8..24].copy_from_slice(&Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets());
    h[24..40].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
    h.extend_from_slice(&ports(546, 547, 8));
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IPV6, &h));
    assert_eq!(k.ipv6.unwrap().1, "2001:db8::2".parse::<Ipv6Addr>().unwrap());
    assert_eq!((k.nw_proto, k.tp, k.nw), (Some(IPPROTO_UDP), Some((546, 547)), None));
    // An extension header (hop-by-hop) is not walked: no ports.
    h[6] = 0;
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_IPV6, &h));
    assert_eq!((k.nw_proto, k.tp), (Some(0), None));

    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&SRC);
    arp.extend_from_slice(&[10, 0, 0, 1]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 0, 0, 2]);
    let k = FlowKey::extract(None, &eth(None, ETH_TYPE_ARP, &arp));
    assert_eq!(k.nw, Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))));
    assert!(k.to_string().contains("arp_spa=10.0.0.1,arp_tpa=10.0.0.2"));
    arp[5] = 16; // not IPv4 addresses
    assert_eq!(FlowKey::extract(None, &eth(None, ETH_TYPE_ARP, &arp)).nw, None);

    // 802.3 length field; runts and truncated tags have no L2 fields.
    assert_eq!(FlowKey::extract(None, &eth(None, 100, &[0; 100])).eth.unwrap().dl_type, 0x05ff);
    assert_eq!(FlowKey::extract(None, &[0u8; 13]).eth, None);
    assert_eq!(FlowKey::extract(None, &eth(Some(5), ETH_TYPE_IP, &[])[..16]).eth, None);
    assert_eq!(FlowKey::extract(Some(PortId::from_index(1)), &[]).in_port, Some(PortId::from_index(1)));
}

// ---- classifier ----------------------------------------------------------------------------

fn add(c: &mut Classifier, s: &str) -> RuleId {
    c.insert(ok(s), &port, 0).unwrap()
}

fn tcp_key(in_port: usize, dst: [u8; 4], tp_dst: u16) -> FlowKey {
    let mut p = ipv4(IPPROTO_TCP, 0, 0, &ports(40000, tp_dst, 20));
    p[16..20].copy_from_slice(&dst);
    FlowKey::extract(Some(PortId::from_index(in_port)), &eth(None, ETH_TYPE_IP, &p))
}

#[test]
fn priority_then_installation_order() {
    let mut c = Classifier::new();
    assert!(c.is_empty());
    assert_eq!(c.lookup(&tcp_key(1, [10, 0, 0, 2], 80)), None);
    let g0 = c.generation();
    let low = add(&mut c, "priority=1 actions=NORMAL");
    let web = add(&mut c, "priority=100,tcp,tp_dst=80 actions=output:vm2");
    let net = add(&mut c, "priority=100,ip,nw_dst=10.0.0.0/24 actions=output:vm3");
    let ssh = add(&mut c, "priority=200,in_port=vm1,tcp,tp_dst=22 actions=drop");
    assert!(c.generation() > g0);
    assert_eq!(c.len(), 4);
    assert_eq!(c.n_subtables(), 4);
    let id = |k: &FlowKey| c.lookup(k).map(|r| r.id);
    assert_eq!(id(&tcp_key(1, [10, 0, 0, 2], 80)), Some(web), "tie: installed first");
    assert_eq!(id(&tcp_key(1, [10, 0, 0, 2], 443)), Some(net));
    assert_eq!(id(&tcp_key(1, [10, 0, 1, 2], 443)), Some(low));
    assert_eq!(id(&tcp_key(1, [10, 0, 0, 2], 22)), Some(ssh));
    assert_eq!(id(&tcp_key(2, [10, 0, 0, 2], 22)), Some(net));
    assert_eq!(id(&FlowKey::default()), Some(low), "a match-all rule matches even an empty key");

    // Removing the earlier of the tie makes the later one win; the generation moves.
    let g = c.generation();
    assert_eq!(c.remove(web).unwrap().id, web);
    assert!(c.generation() > g);
    assert_eq!(c.lookup(&tcp_key(1, [10, 0, 0, 2], 80)).unwrap().id, net);
    assert_eq!(c.remove(web), None);
    let gone = c.retain(|r| r.rule.priority != 1);
    assert_eq!(gone.len(), 1);
    assert_eq!(c.lookup(&tcp_key(1, [10, 0, 1, 2], 443)), None);
    assert_eq!(c.rules().iter().map(|r| r.id).collect::<Vec<_>>(), vec![net, ssh]);
    c.clear();
    assert!(c.is_empty() && c.n_subtables() == 0);
}

#[test]
fn same_match_and_priority_replaces() {
    let mut c = Classifier::new();
    let a = add(&mut c, "priority=5,ip actions=output:vm1");
    c.classify(&tcp_key(0, [1, 1, 1, 1], 1), 100, 7);
    let b = add(&mut c, "priority=5,dl_type=0x0800 actions=output:vm2");
    assert_ne!(a, b);
    assert_eq!(c.len(), 1);
    let r = c.lookup(&tcp_key(0, [1, 1, 1, 1], 1)).unwrap();
    assert_eq!(
        (r.id, r.actions.clone(), r.stats.n_packets),
        (b, vec![ResolvedAction::Output(PortId::from_index(2))], 0)
    );
    add(&mut c, "priority=6,ip actions=output:vm1");
    assert_eq!(c.len(), 2);
}

#[test]
fn install_errors_leave_things_unchanged() {
    let mut c = Classifier::new();
    add(&mut c, "actions=drop");
    let g = c.generation();
    assert_eq!(c.insert(ok("in_port=eth0 actions=drop"), &port, 0), Err(InstallError::UnknownPort("eth0".into())));
    assert_eq!(c.insert(ok("actions=output:nope"), &port, 0), Err(InstallError::UnknownPort("nope".into())));
    let bad_set = vec![ok("priority=1 actions=drop"), ok("actions=output:nope")];
    assert!(c.replace_all(bad_set, &port, 0).is_err());
    assert_eq!((c.len(), c.generation()), (1, g));
    c.replace_all(vec![ok("priority=1 actions=drop"), ok("priority=2,ip actions=flood")], &port, 0).unwrap();
    assert_eq!((c.len(), c.generation()), (2, g + 1));
}

#[test]
fn vlan_and_mac_masks() {
    let mut c = Classifier::new();
    let untagged = add(&mut c, "priority=3,dl_vlan=0xffff actions=drop");
    let v10 = add(&mut c, "priority=2,dl_vlan=10 actions=drop");
    let mcast = add(&mut c, "priority=1,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=drop");
    let key = |tag: Option<u16>, dst: [u8; 6]| {
        let mut f = eth(tag, 0x88cc, &[0; 46]);
        f[..6].copy_from_slice(&dst);
        FlowKey::extract(None, &f)
    };
    let id = |k: &FlowKey| c.lookup(k).map(|r| r.id);
    assert_eq!(id(&key(None, DST)), Some(untagged));
    assert_eq!(id(&key(Some(0xe000 | 10), DST)), Some(v10), "PCP bits do not matter");
    assert_eq!(id(&key(Some(0x1000 | 10), DST)), Some(v10), "nor DEI");
    assert_eq!(id(&key(Some(11), DST)), None);
    assert_eq!(id(&key(Some(11), [0x33, 0x33, 0, 0, 0, 1])), Some(mcast));
    // VLAN 0 (priority tag) is tagged, not untagged.
    assert_eq!(id(&key(Some(0), DST)), None);
}

#[test]
fn counters_and_timeouts() {
    let mut c = Classifier::new();
    let idle = c.insert(ok("priority=2,idle_timeout=10,tcp actions=drop"), &port, 5 * SEC).unwrap();
    let hard = c.insert(ok("priority=1,hard_timeout=30,idle_timeout=20 actions=drop"), &port, 5 * SEC).unwrap();
    assert_eq!(c.next_expiry(), Some(15 * SEC));
    let k = tcp_key(0, [1, 2, 3, 4], 1);
    for t in [6, 12, 14] {
        assert_eq!(c.classify(&k, 60, t * SEC).unwrap().id, idle);
    }
    let s = c.get(idle).unwrap().stats;
    assert_eq!((s.n_packets, s.n_bytes, s.installed_at, s.last_used), (3, 180, 5 * SEC, 14 * SEC));
    assert_eq!((s.idle_age(20 * SEC), s.duration(20 * SEC)), (6, 15.0));
    assert!(c.record(hard, 10, 1000, 20 * SEC));
    assert!(!c.record(RuleId(99), 1, 1, 0));
    let g = c.generation();
    assert!(c.expire(23 * SEC).is_empty());
    assert_eq!(c.generation(), g, "counting and expiring nothing change nothing");
    assert_eq!(c.expire(24 * SEC).iter().map(|r| r.id).collect::<Vec<_>>(), vec![idle]);
    assert_eq!(c.next_expiry(), Some(35 * SEC), "hard timeout before idle (20 + 20 s)");
    assert_eq!(c.expire(35 * SEC).len(), 1);
    assert!(c.is_empty());
    assert_eq!(c.next_expiry(), None);
}

#[test]
fn traces() {
    let mut c = Classifier::new();
    add(&mut c, "priority=100,cookie=0x2a,in_port=vm1,arp,arp_tpa=10.0.0.2 actions=output:vm2,output:vm3");
    add(&mut c, "priority=50,in_port=vm1,ip actions=drop");
    let name = |p: PortId| format!("vm{p}");
    let m = parse_match("in_port=vm1,arp,arp_tpa=10.0.0.2").unwrap();
    let k = key_from_match(&m, port("vm1"));
    let t = c.trace(&k);
    let hit = t.matched.as_ref().unwrap();
    assert_eq!((hit.priority, hit.cookie), (100, 0x2a));
    let out = t.render(&name);
    assert!(out.starts_with("Flow: in_port=vm1,dl_vlan=0xffff,"), "{out}");
    assert!(out.contains("arp_spa=0.0.0.0,arp_tpa=10.0.0.2"), "{out}");
    assert!(
        out.contains(" 0. arp,in_port=vm1,arp_tpa=10.0.0.2, priority 100, cookie 0x2a\n    output:vm2,output:vm3\n"),
        "{out}"
    );
    assert!(out.ends_with("Datapath actions: output:vm2,output:vm3\n"), "{out}");

    let t = c.trace(&key_from_match(&parse_match("in_port=vm1,tcp,tp_dst=80").unwrap(), port("vm1")));
    assert_eq!(t.verdict, Verdict::Drop);
    assert_eq!(t.datapath_actions(&name), "drop");

    let t = c.trace(&key_from_match(&parse_match("ipv6").unwrap(), port("vm1")));
    assert_eq!((t.matched.as_ref(), &t.verdict), (None, &Verdict::NoMatch));
    assert!(t.to_string().contains("No match (2 rules in 2 subtables).\n    NORMAL"), "{t}");
    // Tracing counts nothing.
    assert!(c.rules().iter().all(|r| r.stats.n_packets == 0));
}

#[test]
fn key_from_match_round_trips_through_a_frame_key() {
    let m = parse_match("tcp6,dl_vlan=7,ipv6_dst=2001:db8::9,tp_src=1").unwrap();
    let k = key_from_match(&m, None);
    assert_eq!(k.eth.unwrap().tci, Some(7));
    assert_eq!(k.tp, Some((1, 0)));
    assert_eq!(k.ipv6.unwrap().1, "2001:db8::9".parse::<Ipv6Addr>().unwrap());
    let k = key_from_match(&parse_match("icmp,icmp_type=3").unwrap(), None);
    assert_eq!((k.icmp_type, k.nw_proto), (Some(3), Some(1)));
}
