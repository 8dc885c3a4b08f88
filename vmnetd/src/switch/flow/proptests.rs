//! Property tests: the classifier agrees with a naive reference (every rule checked field by
//! field, best by priority then installation order) over random rules, removals and keys;
//! printed rules parse back to themselves; extraction and parsing never panic.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;
use crate::switch::port::PortId;

fn resolve(name: &str) -> Option<PortId> {
    name.strip_prefix('p').and_then(|n| n.parse().ok()).map(PortId::from_index)
}

const MACS: [&str; 4] = ["52:54:00:00:00:01", "52:54:00:00:00:02", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff"];
const MAC_MASKS: [&str; 3] = ["", "/01:00:00:00:00:00", "/ff:ff:ff:00:00:00"];
const V4: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.1.1"];
const V4_MASKS: [&str; 4] = ["", "/24", "/8", "/255.0.255.0"];
const V6: [&str; 3] = ["fe80::1", "fe80::2", "2001:db8::1"];
const V6_MASKS: [&str; 3] = ["", "/64", "/ffff::ffff"];
const PORTS: [u16; 3] = [22, 80, 443];
const KINDS: [&str; 11] = ["", "ip", "arp", "ipv6", "tcp", "udp", "icmp", "tcp6", "udp6", "icmp6", "dl_type=0x88cc"];

/// Optional source and destination choices.
type Pair<T> = (Option<T>, Option<T>);

/// Raw choices for one rule; `text` keeps those its kind allows.
#[derive(Debug, Clone)]
struct RawRule {
    priority: u16,
    kind: usize,
    in_port: Option<u8>,
    dl_src: Option<(usize, usize)>,
    dl_dst: Option<(usize, usize)>,
    dl_vlan: Option<u16>,
    nw: Pair<(usize, usize)>,
    v6: Pair<(usize, usize)>,
    proto: Option<u8>,
    tp: Pair<(usize, bool)>,
    icmp_type: Option<u8>,
    actions: Vec<String>,
}

impl RawRule {
    fn text(&self) -> String {
        let mut t = vec![format!("priority={}", self.priority)];
        let kind = KINDS[self.kind];
        if !kind.is_empty() {
            t.push(kind.to_owned());
        }
        if let Some(p) = self.in_port {
            t.push(format!("in_port=p{p}"));
        }
        if let Some((v, m)) = self.dl_src {
            t.push(format!("dl_src={}{}", MACS[v], MAC_MASKS[m]));
        }
        if let Some((v, m)) = self.dl_dst {
            t.push(format!("dl_dst={}{}", MACS[v], MAC_MASKS[m]));
        }
        if let Some(v) = self.dl_vlan {
            t.push(format!("dl_vlan={v}"));
        }
        if matches!(kind, "ip" | "tcp" | "udp" | "icmp" | "arp") {
            let (a, b) = if kind == "arp" { ("arp_spa", "arp_tpa") } else { ("nw_src", "nw_dst") };
            if let Some((v, m)) = self.nw.0 {
                t.push(format!("{a}={}{}", V4[v], V4_MASKS[m]));
            }
            if let Some((v, m)) = self.nw.1 {
                t.push(format!("{b}={}{}", V4[v], V4_MASKS[m]));
            }
        }
        if matches!(kind, "ipv6" | "tcp6" | "udp6" | "icmp6") {
            if let Some((v, m)) = self.v6.0 {
                t.push(format!("ipv6_src={}{}", V6[v], V6_MASKS[m]));
            }
            if let Some((v, m)) = self.v6.1 {
                t.push(format!("ipv6_dst={}{}", V6[v], V6_MASKS[m]));
            }
        }
        if let (Some(p), "ip" | "ipv6") = (self.proto, kind) {
            t.push(format!("nw_proto={p}"));
        }
        if matches!(kind, "tcp" | "udp" | "tcp6" | "udp6") {
            for (name, tp) in [("tp_src", self.tp.0), ("tp_dst", self.tp.1)] {
                if let Some((v, masked)) = tp {
                    let m = if masked { "/0xff00" } else { "" };
                    t.push(format!("{name}={}{m}", PORTS[v]));
                }
            }
        }
        if let (Some(i), "icmp") = (self.icmp_type, kind) {
            t.push(format!("icmp_type={i}"));
        }
        let actions = if self.actions.is_empty() { "drop".to_owned() } else { self.actions.join(",") };
        format!("{} actions={actions}", t.join(","))
    }
}

fn masked_choice(n: usize, m: usize) -> impl Strategy<Value = Option<(usize, usize)>> {
    proptest::option::of((0..n, 0..m))
}

fn raw_rule() -> impl Strategy<Value = RawRule> {
    let action = prop_oneof![
        Just("NORMAL".to_owned()),
        Just("FLOOD".to_owned()),
        Just("strip_vlan".to_owned()),
        (0u8..4).prop_map(|p| format!("output:p{p}")),
        (1u16..=4094).prop_map(|v| format!("mod_vlan_vid:{v}")),
    ];
    (
        (
            prop_oneof![Just(0u16), Just(1), Just(2), Just(100), Just(32768), Just(65535)],
            0..KINDS.len(),
            proptest::option::weighted(0.3, 0u8..4),
            masked_choice(MACS.len(), MAC_MASKS.len()),
            masked_choice(MACS.len(), MAC_MASKS.len()),
            proptest::option::weighted(0.3, prop_oneof![Just(0xffffu16), Just(10), Just(20)]),
        ),
        (
            (masked_choice(V4.len(), V4_MASKS.len()), masked_choice(V4.len(), V4_MASKS.len())),
            (masked_choice(V6.len(), V6_MASKS.len()), masked_choice(V6.len(), V6_MASKS.len())),
            proptest::option::of(prop_oneof![Just(1u8), Just(6), Just(17), Just(47), Just(58)]),
            (
                proptest::option::of((0..PORTS.len(), any::<bool>())),
                proptest::option::of((0..PORTS.len(), any::<bool>())),
            ),
            proptest::option::of(prop_oneof![Just(0u8), Just(8)]),
            proptest::collection::vec(action, 0..4),
        ),
    )
        .prop_map(
            |((priority, kind, in_port, dl_src, dl_dst, dl_vlan), (nw, v6, proto, tp, icmp_type, actions))| RawRule {
                priority,
                kind,
                in_port,
                dl_src,
                dl_dst,
                dl_vlan,
                nw,
                v6,
                proto,
                tp,
                icmp_type,
                actions,
            },
        )
}

/// Keys over the same small domains (plus noise), fields present independently of each
/// other, so that rules hit and miss on every field.
fn key() -> impl Strategy<Value = FlowKey> {
    let mac = prop_oneof![
        (0..MACS.len()).prop_map(|i| MACS[i].parse::<MacAddr>().unwrap()),
        any::<[u8; 6]>().prop_map(MacAddr)
    ];
    let v4 = prop_oneof![
        (0..V4.len()).prop_map(|i| V4[i].parse::<Ipv4Addr>().unwrap()),
        any::<u32>().prop_map(Ipv4Addr::from)
    ];
    let v6 = prop_oneof![
        (0..V6.len()).prop_map(|i| V6[i].parse::<Ipv6Addr>().unwrap()),
        any::<u128>().prop_map(Ipv6Addr::from)
    ];
    let port = prop_oneof![(0..PORTS.len()).prop_map(|i| PORTS[i]), Just(0x50aa), any::<u16>()];
    let eth = (
        mac.clone(),
        mac,
        proptest::option::of(prop_oneof![Just(10u16), Just(20), Just(0x3000 | 10), Just(0), any::<u16>()]),
        prop_oneof![Just(ETH_TYPE_IP), Just(ETH_TYPE_ARP), Just(ETH_TYPE_IPV6), Just(0x88cc)],
    )
        .prop_map(|(src, dst, tci, dl_type)| key::EthKey { src, dst, tci, dl_type });
    (
        proptest::option::weighted(0.9, (0usize..4).prop_map(PortId::from_index)),
        proptest::option::weighted(0.95, eth),
        proptest::option::of(prop_oneof![Just(1u8), Just(6), Just(17), Just(47), Just(58)]),
        proptest::option::of((v4.clone(), v4)),
        proptest::option::of((v6.clone(), v6)),
        proptest::option::of((port.clone(), port)),
        proptest::option::of(prop_oneof![Just(0u8), Just(8), any::<u8>()]),
    )
        .prop_map(|(in_port, eth, nw_proto, nw, ipv6, tp, icmp_type)| FlowKey {
            in_port,
            eth,
            nw_proto,
            nw,
            ipv6,
            tp,
            icmp_type,
        })
}

/// The reference: does `m` (in-port resolved to `in_port`) match `k`? Field by field.
fn naive_matches(m: &Match, in_port: Option<PortId>, k: &FlowKey) -> bool {
    fn mac_ok(x: &Option<Masked<MacAddr>>, v: Option<MacAddr>) -> bool {
        x.is_none_or(|x| v.is_some_and(|v| v.to_u64() & x.mask.to_u64() == x.value.to_u64()))
    }
    fn v4_ok(x: &Option<Masked<Ipv4Addr>>, v: Option<Ipv4Addr>) -> bool {
        x.is_none_or(|x| v.is_some_and(|v| u32::from(v) & u32::from(x.mask) == u32::from(x.value)))
    }
    fn v6_ok(x: &Option<Masked<Ipv6Addr>>, v: Option<Ipv6Addr>) -> bool {
        x.is_none_or(|x| v.is_some_and(|v| u128::from(v) & u128::from(x.mask) == u128::from(x.value)))
    }
    fn tp_ok(x: &Option<Masked<u16>>, v: Option<u16>) -> bool {
        x.is_none_or(|x| v.is_some_and(|v| v & x.mask == x.value))
    }
    let e = k.eth;
    in_port.is_none_or(|p| k.in_port == Some(p))
        && m.dl_type.is_none_or(|t| e.is_some_and(|e| e.dl_type == t))
        && m.dl_vlan.is_none_or(|v| {
            e.is_some_and(|e| match (v, e.tci) {
                (VLAN_NONE, t) => t.is_none(),
                (v, Some(t)) => t & 0x0fff == v,
                (_, None) => false,
            })
        })
        && mac_ok(&m.dl_src, e.map(|e| e.src))
        && mac_ok(&m.dl_dst, e.map(|e| e.dst))
        && v4_ok(&m.nw_src, k.nw.map(|n| n.0))
        && v4_ok(&m.nw_dst, k.nw.map(|n| n.1))
        && v6_ok(&m.ipv6_src, k.ipv6.map(|n| n.0))
        && v6_ok(&m.ipv6_dst, k.ipv6.map(|n| n.1))
        && m.nw_proto.is_none_or(|p| k.nw_proto == Some(p))
        && tp_ok(&m.tp_src, k.tp.map(|t| t.0))
        && tp_ok(&m.tp_dst, k.tp.map(|t| t.1))
        && m.icmp_type.is_none_or(|t| k.icmp_type == Some(t))
}

#[derive(Debug, Clone)]
enum Op {
    Add(Box<RawRule>),
    /// Remove the n-th live rule (modulo their number).
    Remove(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![4 => raw_rule().prop_map(|r| Op::Add(Box::new(r))), 1 => any::<usize>().prop_map(Op::Remove)],
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn classifier_agrees_with_naive_reference(ops in ops(), keys in proptest::collection::vec(key(), 1..48)) {
        let mut c = Classifier::new();
        // (id, priority, match, in-port) in installation order.
        let mut reference: Vec<(RuleId, u16, Match, Option<PortId>)> = Vec::new();
        let mut generation = c.generation();
        for op in &ops {
            match op {
                Op::Add(raw) => {
                    let text = raw.text();
                    let rule = parse_rule(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                    let in_port = rule.matches.in_port.as_deref().and_then(resolve);
                    let (prio, m) = (rule.priority, rule.matches.clone());
                    let id = c.insert(rule, &resolve, 0).unwrap();
                    // Same match and priority replaces.
                    reference.retain(|r| !(r.1 == prio && r.2 == m && r.3 == in_port));
                    reference.push((id, prio, m, in_port));
                }
                Op::Remove(n) => {
                    if reference.is_empty() {
                        continue;
                    }
                    let (id, ..) = reference.remove(n % reference.len());
                    prop_assert!(c.remove(id).is_some());
                }
            }
            prop_assert!(c.generation() > generation);
            generation = c.generation();
            prop_assert_eq!(c.len(), reference.len());
        }
        // Keys from the rules themselves hit something; random keys mostly miss.
        let mut all_keys = keys.clone();
        for (_, _, m, p) in &reference {
            all_keys.push(key_from_match(m, *p));
        }
        for k in &all_keys {
            let want = reference
                .iter()
                .filter(|r| naive_matches(&r.2, r.3, k))
                .fold(None::<&(RuleId, u16, Match, Option<PortId>)>, |best, r| match best {
                    Some(b) if b.1 >= r.1 => Some(b),
                    _ => Some(r),
                })
                .map(|r| r.0);
            let got = c.lookup(k).map(|r| r.id);
            prop_assert_eq!(got, want, "key {}", k);
            if let Some(id) = got {
                prop_assert!(c.get(id).unwrap().matches(k));
            }
            prop_assert_eq!(c.trace(k).matched.map(|m| m.id), want);
        }
        // Counters add up: every classified key counted once on the rule it hit.
        let hits = all_keys.iter().filter(|k| c.classify(k, 64, 1).is_some()).count() as u64;
        let counted: u64 = c.rules().iter().map(|r| r.stats.n_packets).sum();
        prop_assert_eq!(counted, hits);
        prop_assert_eq!(c.rules().iter().map(|r| r.stats.n_bytes).sum::<u64>(), hits * 64);
    }

    #[test]
    fn printed_rules_parse_back(raw in raw_rule(), cookie in any::<u64>(), idle in any::<u16>(), hard in any::<u16>()) {
        let text = format!("cookie={cookie:#x},idle_timeout={idle},hard_timeout={hard},{}", raw.text());
        let rule = parse_rule(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!((rule.cookie, rule.idle_timeout, rule.hard_timeout), (cookie, idle, hard));
        let printed = rule.to_string();
        let again = parse_rule(&printed).map_err(|e| TestCaseError::fail(format!("{printed}: {e}")))?;
        prop_assert_eq!(&again, &rule);
        prop_assert_eq!(again.to_string(), printed);
        prop_assert_eq!(parse_match(&rule.matches.to_string()).unwrap(), rule.matches);
    }

    #[test]
    fn parser_never_panics(tokens in proptest::collection::vec(
        prop_oneof![
            Just("ip".to_owned()), Just("tcp".to_owned()), Just("arp".to_owned()), Just("actions=".to_owned()),
            Just(",".to_owned()), Just(" ".to_owned()), Just("drop".to_owned()), Just("=".to_owned()), Just("/".to_owned()),
            Just("nw_src=".to_owned()), Just("tp_dst=".to_owned()), Just("output:".to_owned()), Just("0x".to_owned()),
            "[a-z_:0-9./=, ]{0,12}",
            any::<String>(),
        ],
        0..16,
    )) {
        let s: String = tokens.concat();
        if let Ok(r) = parse_rule(&s) {
            let printed = r.to_string();
            prop_assert_eq!(parse_rule(&printed), Ok(r), "{}", printed);
        }
        let _ = parse_match(&s);
    }

    #[test]
    fn extraction_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..128), tagged in any::<bool>(), et in 0usize..4) {
        // Random bytes, and random bytes behind a plausible header.
        let _ = FlowKey::extract(None, &bytes);
        let mut f = vec![0u8; 12];
        if tagged {
            f.extend_from_slice(&[0x81, 0, 0, 5]);
        }
        let t = [ETH_TYPE_IP, ETH_TYPE_ARP, ETH_TYPE_IPV6, 0x0042][et];
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(&bytes);
        let k = FlowKey::extract(None, &f);
        prop_assert!(k.eth.is_some());
        prop_assert!(k.tp.is_none() || k.nw_proto.is_some());
        prop_assert!(k.nw.is_none() || k.ipv6.is_none());
    }

    /// The datapath's direct packing agrees with the key's on any bytes.
    #[test]
    fn direct_words_agree_with_the_key(bytes in proptest::collection::vec(any::<u8>(), 0..128), tagged in any::<bool>(), et in 0usize..4, port in 0usize..5, ihl in 0u8..16, proto in 0usize..5) {
        let p = PortId::from_index(port);
        prop_assert_eq!(FlowKey::words_of(p, &bytes), FlowKey::extract(Some(p), &bytes).words());
        let mut f = vec![0u8; 12];
        if tagged {
            f.extend_from_slice(&[0x81, 0, 0xa0, 5]);
        }
        let t = [ETH_TYPE_IP, ETH_TYPE_ARP, ETH_TYPE_IPV6, 0x0042][et];
        f.extend_from_slice(&t.to_be_bytes());
        let at = f.len();
        f.extend_from_slice(&bytes);
        // Plausible IPv4 / IPv6 / ARP starts, so the deeper branches run.
        if f.len() > at + 10 {
            let pr = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6, 47][proto];
            match t {
                ETH_TYPE_IP => { f[at] = 0x40 | ihl; f[at + 9] = pr; f[at + 6] &= 0xc0 * (proto as u8 & 1); }
                ETH_TYPE_IPV6 => { f[at] = 0x60; f[at + 6] = pr; }
                ETH_TYPE_ARP => f[at..at + 6].copy_from_slice(&[0, 1, 8, 0, 6, 4]),
                _ => {}
            }
        }
        let w = FlowKey::words_of(p, &f);
        prop_assert_eq!(w, FlowKey::extract(Some(p), &f).words());
        // The memo's short comparison is plain equality on every key words_of makes: against
        // itself, against the key of the untouched random bytes, and against this key with
        // one bit of one word flipped.
        let other = FlowKey::words_of(p, &bytes);
        prop_assert!(FlowKey::same_words(&w, &w));
        prop_assert_eq!(FlowKey::same_words(&w, &other), w == other);
        for i in 0..w.0.len() {
            let mut x = w;
            x.0[i] ^= 1 << ((port * 7 + i) % 64);
            // A flipped bit in an IPv6 word of a key without F_IP6 (bit 4 of word 2) breaks the
            // invariant words_of keeps (zero there): not a key it can make.
            if i < 5 || w.0[2] & (1 << 4) != 0 {
                prop_assert!(!FlowKey::same_words(&w, &x));
            }
        }
    }
}
