//! Traffic between two namespaces for the benchmarks (`bench-bridge`, `bench-vxlan`): client
//! A at 10.0.0.1 and B at 10.0.0.2, each on its `eth0`.

use std::time::Duration;

use crate::topo::Ns;

/// Packets `dev` in `ns` has received.
pub fn rx_packets(ns: &Ns, dev: &str) -> u64 {
    let out = ns.exec("ip", &["-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

/// iperf3 A -> B; Gbit/s received.
pub fn tcp(a: &Ns, b: &Ns, secs: u32) -> f64 {
    let mut server = b.spawn("iperf3", &["-s", "-1", "-B", "10.0.0.2"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = a.exec("iperf3", &["-c", "10.0.0.2", "-t", &secs.to_string(), "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e9
}

/// 64-byte frames A -> B for `secs`; (sent Mpps, received Mpps).
pub fn pps(a: &Ns, b: &Ns, secs: u32) -> (f64, f64) {
    let (ma, mb) = (a.mac("eth0").replace(':', ""), b.mac("eth0").replace(':', ""));
    // Ethernet + IPv4 (10.0.0.1 -> 10.0.0.2, UDP to port 9 "discard") + 18 bytes: 60 bytes,
    // 64 on the wire. The IPv4 header checksum must be right: with br_netfilter the Linux
    // bridge validates it.
    let ip_hdr: [u16; 10] = [0x4500, 0x002e, 0, 0x4000, 0x4011, 0, 0x0a00, 0x0001, 0x0a00, 0x0002];
    let sum: u32 = ip_hdr.iter().map(|w| u32::from(*w)).sum();
    let csum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    let frame =
        format!("{mb}{ma}08004500002e000040004011{csum:04x}0a0000010a000002d4310009001a0000{}", "00".repeat(18));
    let before = rx_packets(b, "eth0");
    let out = a.exec(crate::bin("rawframe").to_str().unwrap(), &["flood", "eth0", &secs.to_string(), &frame]);
    std::thread::sleep(Duration::from_millis(200));
    let got = rx_packets(b, "eth0") - before;
    let sent: u64 = out.ok().trim().parse().unwrap();
    (sent as f64 / secs as f64 / 1e6, got as f64 / secs as f64 / 1e6)
}
