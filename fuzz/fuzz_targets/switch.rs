//! The switch decision on arbitrary port configurations, flow rules, isolation, policers and
//! frame streams: no panics, no frame back to its ingress port, none to a port outside its
//! VLAN unless a rule moved it (`mod_vlan_vid`) or it is a mirror copy, never isolated to
//! isolated, every frame counted; `trace` never panics and changes nothing.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmnetd::switch::*;

#[derive(Debug, Arbitrary)]
struct Port {
    access: Option<u16>,
    trunk: Vec<u16>,
    native: Option<(u16, bool)>,
    mtu: u16,
    max_macs: u8,
    lock: Option<[u8; 6]>,
    isolated: bool,
    policer: Option<(u16, u16)>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    ports: Vec<Port>,
    ageing_secs: u8,
    max_entries: u8,
    /// Rule texts (port names `p0`..`p15`).
    rules: Vec<String>,
    /// A mirror: selected source port, output port.
    mirror: Option<(u8, u8)>,
    frames: Vec<(u8, u16, bool, Vec<u8>)>,
}

fn resolve(name: &str) -> Option<PortId> {
    name.strip_prefix('p')?.parse::<usize>().ok().filter(|i| *i < 16).map(PortId::from_index)
}

fn vid(v: u16) -> VlanId {
    VlanId::new(v % 4094 + 1).unwrap()
}

fuzz_target!(|input: Input| {
    let mut sw = Switch::new(SwitchConfig {
        fdb: FdbConfig { ageing: Duration::from_secs(u64::from(input.ageing_secs)), max_entries: usize::from(input.max_entries) },
    });
    let mut ids = Vec::new();
    for p in input.ports.iter().take(16) {
        let mode = match p.access {
            Some(a) => VlanMode::access(vid(a)),
            None => {
                let mut vlans = VlanSet::new();
                for v in p.trunk.iter().take(64) {
                    vlans.insert(vid(*v));
                }
                VlanMode::Trunk { vlans, native: p.native.map(|(v, tagged)| Native { vid: vid(v), tagged }) }
            }
        };
        ids.push(sw.add_port(PortConfig {
            mode,
            mtu: u32::from(p.mtu),
            max_macs: usize::from(p.max_macs),
            macs: p.lock.map(|m| vec![MacAddr(m)]).unwrap_or_default(),
            lock_macs: p.lock.is_some(),
            isolated: p.isolated,
            policer: p.policer.map(|(r, b)| Policer::new(u64::from(r), Some(u64::from(b)))),
            egress_policer: None,
        }));
    }
    if ids.is_empty() {
        return;
    }
    let mut moves = false;
    for text in input.rules.iter().take(32) {
        if let Ok(r) = flow::parse_rule(text) {
            moves |= r.actions.iter().any(|a| matches!(a, flow::Action::ModVlanVid(_)));
            let _ = sw.flow_insert(r, &|n| Some(resolve(n).unwrap_or(PortId::NONE)), Duration::ZERO);
        }
    }
    let mut mirror_out = None;
    if let Some((src, out)) = input.mirror {
        let (src, out) = (ids[usize::from(src) % ids.len()], ids[usize::from(out) % ids.len()]);
        mirror_out = Some(out);
        sw.set_mirrors(vec![MirrorConfig {
            name: "m".into(),
            select_src: vec![src],
            select_dst: vec![src],
            select_vlan: None,
            output: MirrorOutput::Port(out),
        }]);
    }
    let mut plan = BurstPlan::new();
    let mut now = Duration::ZERO;
    let mut sent = 0u64;
    for (p, dt, gso, bytes) in &input.frames {
        now += Duration::from_millis(u64::from(*dt));
        let port = ids[usize::from(*p) % ids.len()];
        let info = FrameInfo { head: bytes, len: bytes.len(), gso: *gso };
        let before = sw.counters(port).cloned();
        let _ = sw.trace(port, bytes, now).render(&|p| p.to_string());
        assert_eq!(sw.counters(port).cloned(), before, "trace counted");
        sw.ingress_burst(port, [info], now, &mut plan);
        sent += 1;
        let vlan = EthernetFrame::new_checked(&bytes[..]).ok().and_then(|f| {
            match sw.port(port).unwrap().mode.classify(f.tci().map(|t| t.vid())) {
                Ingress::Vlan(v) => Some(v),
                _ => None,
            }
        });
        for (d, list) in plan.destinations() {
            assert_ne!(d, port, "reflected");
            assert_eq!(list.len(), 1);
            let v = vlan.expect("a forwarded frame has a VLAN");
            if Some(d) != mirror_out && !moves {
                assert!(sw.port(d).unwrap().mode.egress(v).is_some(), "non-member egress");
                assert!(!(sw.port(d).unwrap().isolated && sw.port(port).unwrap().isolated), "isolated to isolated");
            }
        }
        if *dt > 60_000 {
            sw.expire(now);
        }
    }
    let rx: u64 = ids.iter().map(|i| sw.counters(*i).unwrap().rx_packets).sum();
    assert_eq!(rx, sent);
});
