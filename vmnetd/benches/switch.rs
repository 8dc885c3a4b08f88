//! Decision rate of the switch core on 64-byte frames across 8 ports, in bursts of 32, as the
//! datapath calls it. Throughput is reported in frames (elements) per second: Melem/s = Mpps
//! on one core.
//!
//! - `learned`: every destination known, each frame of a burst to a different port.
//! - `learned_tagged`: the same from a trunk port to access ports (a tag pop per frame).
//! - `flood`: broadcast, so each frame fans out to 7 ports.
//! - `learning_churn`: every frame from a new source (learning and eviction on each frame).
//! - `rules_N`: `learned` with N flow rules installed, the frames matching only the lowest
//!   priority one (`actions=normal`), so every other mask's subtable is probed; frames differ
//!   in their destination, so the per-burst memo misses on each (the classifier's own cost).
//!   `rules_N_one_flow`: every frame of the burst alike (the memo's case, as a bulk flow).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmnetd::switch::wire::ETHERTYPE_IPV4;
use vmnetd::switch::*;

const BURST: usize = 32;
const PORTS: usize = 8;

fn mac(n: usize) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, (n >> 8) as u8, n as u8])
}

fn frame(dst: MacAddr, src: MacAddr, vid: Option<u16>) -> Vec<u8> {
    let repr = EthernetRepr { dst, src, tci: vid.map(|v| Tci::new(0, false, v)), ethertype: ETHERTYPE_IPV4 };
    let mut b = vec![0u8; 64];
    repr.emit(&mut b);
    b
}

fn setup(first_port: VlanMode) -> (Switch, Vec<PortId>) {
    let mut sw = Switch::default();
    let v10 = VlanId::new(10).unwrap();
    let mut ids = vec![sw.add_port(PortConfig { mode: first_port, ..Default::default() })];
    for _ in 1..PORTS {
        ids.push(sw.add_port(PortConfig { mode: VlanMode::access(v10), ..Default::default() }));
    }
    // Every port's station says hello once, so all are learned.
    let mut plan = BurstPlan::new();
    for (i, id) in ids.iter().enumerate() {
        let vid = (i == 0 && matches!(sw.port(*id).unwrap().mode, VlanMode::Trunk { .. })).then_some(10);
        let f = frame(MacAddr::BROADCAST, mac(i), vid);
        sw.ingress_burst(*id, [FrameInfo::whole(&f)], Duration::ZERO, &mut plan);
    }
    (sw, ids)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch");
    g.throughput(Throughput::Elements(BURST as u64));
    let now = Duration::from_secs(1);

    for (name, mode, vid) in [
        ("learned", VlanMode::access(VlanId::new(10).unwrap()), None),
        ("learned_tagged", VlanMode::Trunk { vlans: "10".parse().unwrap(), native: None }, Some(10)),
    ] {
        let (mut sw, ids) = setup(mode);
        let frames: Vec<Vec<u8>> = (0..BURST).map(|k| frame(mac(1 + k % (PORTS - 1)), mac(0), vid)).collect();
        let mut plan = BurstPlan::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                sw.ingress_burst(ids[0], frames.iter().map(|f| FrameInfo::whole(f)), now, &mut plan);
                black_box(&plan);
            })
        });
    }

    let (mut sw, ids) = setup(VlanMode::access(VlanId::new(10).unwrap()));
    let frames: Vec<Vec<u8>> = (0..BURST).map(|_| frame(MacAddr::BROADCAST, mac(0), None)).collect();
    let mut plan = BurstPlan::new();
    g.bench_function("flood", |b| {
        b.iter(|| {
            sw.ingress_burst(ids[0], frames.iter().map(|f| FrameInfo::whole(f)), now, &mut plan);
            black_box(&plan);
        })
    });

    let (mut sw, ids) = setup(VlanMode::access(VlanId::new(10).unwrap()));
    let mut next = 1000usize;
    let mut frames: Vec<Vec<u8>> = (0..BURST).map(|_| frame(mac(1), mac(0), None)).collect();
    g.bench_function("learning_churn", |b| {
        b.iter(|| {
            for f in frames.iter_mut() {
                next = (next + 1) % 60_000 + 1000;
                f[6..12].copy_from_slice(&mac(next).0);
            }
            sw.ingress_burst(ids[0], frames.iter().map(|f| FrameInfo::whole(f)), now, &mut plan);
            black_box(&plan);
        })
    });
    for n in [0usize, 10, 1000] {
        for one_flow in [false, true] {
            let (mut sw, ids) = setup(VlanMode::access(VlanId::new(10).unwrap()));
            let resolve = |name: &str| name.strip_prefix('p').and_then(|i| i.parse().ok()).map(PortId::from_index);
            let rules = rules(n);
            if !rules.is_empty() {
                sw.flow_replace(rules, &resolve, Duration::ZERO).expect("rules install");
            }
            let frames: Vec<Vec<u8>> =
                (0..BURST).map(|k| frame(mac(1 + if one_flow { 0 } else { k % (PORTS - 1) }), mac(0), None)).collect();
            let mut plan = BurstPlan::new();
            let name = format!("rules_{n}{}", if one_flow { "_one_flow" } else { "" });
            g.bench_function(&name, |b| {
                b.iter(|| {
                    sw.ingress_burst(ids[0], frames.iter().map(|f| FrameInfo::whole(f)), now, &mut plan);
                    black_box(&plan);
                })
            });
        }
    }
    g.finish();
}

/// N rules, the benchmark's frames matching only the last (lowest priority): five shapes of
/// non-matching rules (five masks), as bench/vhost.sh installs.
fn rules(n: usize) -> Vec<flow::FlowRule> {
    let mut out = Vec::new();
    for i in 0..n.saturating_sub(1) {
        let (hi, lo) = (i / 250 % 250, i % 250 + 1);
        let r = match i % 5 {
            0 => format!("priority=100,ip,nw_dst=10.99.{hi}.{lo} actions=drop"),
            1 => format!("priority=100,tcp,tp_dst={} actions=drop", 10000 + i),
            2 => format!("priority=100,dl_src=02:99:00:00:{hi:02x}:{lo:02x} actions=drop"),
            3 => format!("priority=100,arp,arp_tpa=10.98.{hi}.{lo} actions=drop"),
            _ => format!("priority=100,in_port=p1,ip,nw_src=10.97.{hi}.{lo} actions=drop"),
        };
        out.push(flow::parse_rule(&r).expect("bench rule"));
    }
    if n > 0 {
        out.push(flow::parse_rule("priority=1,in_port=p0 actions=normal").expect("bench rule"));
    }
    out
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
