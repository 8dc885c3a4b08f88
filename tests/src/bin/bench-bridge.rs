//! Benchmark driver (run by `bench/bridge.sh`): the same two-namespace topology joined by
//! (a) vmnetd's built-in bridge and (b) a kernel Linux bridge, measured in one run:
//! TCP throughput with iperf3, and 64-byte frame rate with a raw AF_PACKET generator.
//! Prints medians of several runs and the ratios vmnetd / Linux bridge.
//!
//! `bench-bridge [RUNS] [SECS]` (default 3 runs of 5 s).

use vmnetd_tests::topo::Ns;
use vmnetd_tests::traffic::{pps, tcp};
use vmnetd_tests::{in_netns, ip, test_dir, Daemon};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
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
