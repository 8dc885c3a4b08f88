//! A seeded simulation of stations on a 5-port switch over a virtual clock, checked by
//! snapshot (smoltcp's `tests/netsim.rs` idea): any change in forwarding, learning, ageing or
//! counting shows up as a readable diff of `snapshots/*.snap`.

use std::fmt::Write;

use super::*;

/// A small deterministic generator (SplitMix64), so the run is identical everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn seeded_five_port_simulation() {
    let mut sw = Switch::new(SwitchConfig { fdb: FdbConfig { ageing: Duration::from_secs(60), max_entries: 8 } });
    let v = |n| VlanId::new(n).unwrap();
    let ports = [
        ("vm-a", VlanMode::access(v(10))),
        ("vm-b", VlanMode::access(v(10))),
        ("vm-c", VlanMode::access(v(20))),
        (
            "uplink",
            VlanMode::Trunk { vlans: "10,20".parse().unwrap(), native: Some(Native { vid: v(1), tagged: false }) },
        ),
        ("host", VlanMode::access(v(1))),
    ];
    let ids: Vec<PortId> = ports
        .iter()
        .map(|(_, m)| sw.add_port(PortConfig { mode: m.clone(), max_macs: 4, ..Default::default() }))
        .collect();
    // Stations: (port index, MAC, tag they send with).
    let stations: Vec<(usize, MacAddr, Option<u16>)> = vec![
        (0, "52:54:00:00:00:0a".parse().unwrap(), None),
        (1, "52:54:00:00:00:0b".parse().unwrap(), None),
        (2, "52:54:00:00:00:0c".parse().unwrap(), None),
        (3, "02:00:00:00:10:01".parse().unwrap(), Some(10)),
        (3, "02:00:00:00:20:01".parse().unwrap(), Some(20)),
        (3, "02:00:00:00:01:01".parse().unwrap(), None),
        (4, "52:54:00:00:00:99".parse().unwrap(), None),
    ];
    let mut rng = Rng(0x766d_6e65_7464);
    let mut now = Duration::ZERO;
    let mut log = String::new();
    let mut plan = BurstPlan::new();
    for step in 0..400 {
        now += Duration::from_millis(rng.below(2000));
        let (p, src, tag) = stations[rng.below(stations.len() as u64) as usize];
        let dst = match rng.below(10) {
            0 => MacAddr::BROADCAST,
            1 => MacAddr([0x52, 0x54, 0xee, 0, 0, rng.below(50) as u8]), // random, from "outside"
            _ => stations[rng.below(stations.len() as u64) as usize].1,
        };
        // The uplink sometimes floods random sources (a misbehaving segment).
        let src = if p == 3 && rng.below(8) == 0 { MacAddr([0x02, 0x66, 0, 0, 0, rng.below(200) as u8]) } else { src };
        let repr = EthernetRepr { dst, src, tci: tag.map(|t| Tci::new(0, false, t)), ethertype: wire::ETHERTYPE_ARP };
        let mut b = vec![0u8; repr.header_len() + 46];
        repr.emit(&mut b);
        sw.ingress_burst(ids[p], [FrameInfo::whole(&b)], now, &mut plan);
        if step % 20 == 0 {
            sw.expire(now);
        }
        if step % 100 == 99 {
            let mut fdb: Vec<_> = sw.fdb().entries(now).collect();
            fdb.sort_by_key(|e| (e.vlan, e.mac));
            writeln!(log, "t={:>6.1}s fdb:", now.as_secs_f64()).unwrap();
            for e in fdb {
                writeln!(
                    log,
                    "  vlan {:>2} {} -> {} (age {}s)",
                    e.vlan,
                    e.mac,
                    ports[e.port.index()].0,
                    e.age.as_secs()
                )
                .unwrap();
            }
        }
    }
    writeln!(log, "counters:").unwrap();
    for (i, (name, _)) in ports.iter().enumerate() {
        let c = sw.counters(ids[i]).unwrap();
        writeln!(
            log,
            "  {name:<6} rx {:>3} tx {:>3} flooded {:>3} learned {:>3} evicted {:>3} aged {:>3} moved {:>2} drops {:?}",
            c.rx_packets,
            c.tx_packets,
            c.rx_flooded,
            c.learned,
            c.evicted,
            c.aged,
            c.moved_in,
            c.drop_list()
        )
        .unwrap();
    }
    insta::assert_snapshot!(log);
}
