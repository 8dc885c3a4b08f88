//! The switch decision on arbitrary port configurations and frame streams: no panics, no
//! frame back to its ingress port or to a non-member port, and every frame counted.
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
}

#[derive(Debug, Arbitrary)]
struct Input {
    ports: Vec<Port>,
    ageing_secs: u8,
    max_entries: u8,
    frames: Vec<(u8, u16, bool, Vec<u8>)>,
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
        }));
    }
    if ids.is_empty() {
        return;
    }
    let mut plan = BurstPlan::new();
    let mut now = Duration::ZERO;
    let mut sent = 0u64;
    for (p, dt, gso, bytes) in &input.frames {
        now += Duration::from_millis(u64::from(*dt));
        let port = ids[usize::from(*p) % ids.len()];
        let info = FrameInfo { head: bytes, len: bytes.len(), gso: *gso };
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
            assert!(sw.port(d).unwrap().mode.egress(v).is_some(), "non-member egress");
        }
        if *dt > 60_000 {
            sw.expire(now);
        }
    }
    let rx: u64 = ids.iter().map(|i| sw.counters(*i).unwrap().rx_packets).sum();
    assert_eq!(rx, sent);
});
