//! Benchmark driver (run by `bench/bridge.sh`): the same two-namespace topology joined by
//! (a) vmnetd's built-in bridge and (b) a kernel Linux bridge, measured in one run:
//! TCP throughput with iperf3, and 64-byte frame rate with a raw AF_PACKET generator.
//! Prints medians of several runs and the ratios vmnetd / Linux bridge.
//!
//! `bench-bridge [RUNS] [SECS]` (default 3 runs of 5 s).

use std::time::Duration;

use vmnetd_tests::topo::Ns;
use vmnetd_tests::{in_netns, ip, test_dir, Daemon};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn rx_packets(ns: &Ns, dev: &str) -> u64 {
    let out = ns.exec("ip", &["-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

/// iperf3 A -> B; Gbit/s received.
fn tcp(a: &Ns, b: &Ns, secs: u32) -> f64 {
    let mut server = b.spawn("iperf3", &["-s", "-1", "-B", "10.0.0.2"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = a.exec("iperf3", &["-c", "10.0.0.2", "-t", &secs.to_string(), "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e9
}

/// 64-byte frames A -> B for `secs`; (sent Mpps, received Mpps).
fn pps(a: &Ns, b: &Ns, secs: u32) -> (f64, f64) {
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
    let out = a.exec(vmnetd_tests::bin("rawframe").to_str().unwrap(), &["flood", "eth0", &secs.to_string(), &frame]);
    std::thread::sleep(Duration::from_millis(200));
    let got = rx_packets(b, "eth0") - before;
    let sent: u64 = out.ok().trim().parse().unwrap();
    (sent as f64 / secs as f64 / 1e6, got as f64 / secs as f64 / 1e6)
}

struct Result {
    tcp: f64,
    pps_sent: f64,
    pps_recv: f64,
}

fn measure(a: &Ns, b: &Ns, runs: usize, secs: u32) -> Result {
    assert!(a.ping("10.0.0.2", 2), "no connectivity");
    let tcp = median((0..runs).map(|_| tcp(a, b, secs)).collect());
    let p: Vec<(f64, f64)> = (0..runs).map(|_| pps(a, b, secs)).collect();
    Result { tcp, pps_sent: median(p.iter().map(|x| x.0).collect()), pps_recv: median(p.iter().map(|x| x.1).collect()) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let secs: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    in_netns(|| {
        let dir = test_dir();
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));

        // (b) Linux bridge.
        ip("link add kbr type bridge");
        ip("link set kbr up");
        ip("link set va master kbr");
        ip("link set vb master kbr");
        ip("link set va up");
        ip("link set vb up");
        let linux = measure(&a, &b, runs, secs);
        ip("link del kbr");

        // (a) vmnetd's built-in bridge, same veths.
        let d = Daemon::start_with(dir.path(), &[]);
        d.cli(&["bridge", "add", "br0"]).ok();
        d.cli(&["port", "add", "br0", "pa", "--netdev", "va"]).ok();
        d.cli(&["port", "add", "br0", "pb", "--netdev", "vb"]).ok();
        a.ip("neigh flush all");
        let ours = measure(&a, &b, runs, secs);

        println!("bridge benchmark: {runs} runs of {secs} s each, medians; A -> B between two network namespaces over veth pairs");
        println!("                        {:>14} {:>14} {:>8}", "vmnetd builtin", "linux bridge", "ratio");
        println!("TCP (iperf3) Gbit/s     {:>14.2} {:>14.2} {:>8.2}", ours.tcp, linux.tcp, ours.tcp / linux.tcp);
        println!(
            "64-byte frames Mpps     {:>14.3} {:>14.3} {:>8.2}",
            ours.pps_recv,
            linux.pps_recv,
            ours.pps_recv / linux.pps_recv
        );
        println!("  (generator offered    {:>14.3} {:>14.3} Mpps)", ours.pps_sent, linux.pps_sent);
        let st = d.cli(&["stats", "br0"]);
        println!("{}", st.stdout);
    });
}
