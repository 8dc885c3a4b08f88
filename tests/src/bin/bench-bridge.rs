//! Benchmark driver (run by `bench/bridge.sh`): the same two-namespace topology joined by
//! (a) a kernel Linux bridge and (b) vmnetd's built-in bridge with each netdev I/O
//! (`--io tpacket`, the default, and `--io mmsg`), measured in one run, in interleaved
//! rounds (each round measures every backend once, so the machine's drift hits all alike):
//! TCP throughput with iperf3, and 64-byte frame rate with a raw AF_PACKET generator.
//! Prints medians over the rounds, the ratios vmnetd / Linux bridge (median of the per-round
//! ratios, with their range), and the cores the daemon and the whole machine used.
//!
//! `bench-bridge [ROUNDS] [SECS]` (default 3 rounds of 5 s); `ONLY=tcp` or `ONLY=pps` runs one
//! half, `BACKENDS=linux,tpacket,mmsg` chooses the backends (the first is the anchor).

use std::time::Instant;

use vmnetd_tests::topo::Ns;
use vmnetd_tests::traffic::{pps, tcp};
use vmnetd_tests::{cpu_ticks, in_netns, ip, test_dir, Daemon};

/// Median, min and max of a series.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// Busy clock ticks of the whole machine so far (`/proc/stat`).
fn machine_busy() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<u64> = s.lines().next().unwrap().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    f.iter().take(8).sum::<u64>() - f[3] - f.get(4).copied().unwrap_or(0)
}

#[derive(Default)]
struct Series {
    tcp: Vec<f64>,
    pps: Vec<f64>,
    offered: Vec<f64>,
    /// During the 64-byte runs: cores the daemon used, cores the machine used.
    daemon_cores: Vec<f64>,
    machine_cores: Vec<f64>,
}

fn measure(a: &Ns, b: &Ns, secs: u32, daemon: Option<u32>, s: &mut Series) {
    assert!(a.ping("10.0.0.2", 2), "no connectivity");
    let only = std::env::var("ONLY").unwrap_or_default();
    if only != "pps" {
        s.tcp.push(tcp(a, b, secs));
    }
    if only != "tcp" {
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        let (m0, d0, t0) = (machine_busy(), daemon.map(cpu_ticks), Instant::now());
        let (sent, got) = pps(a, b, secs);
        let el = t0.elapsed().as_secs_f64();
        s.machine_cores.push((machine_busy() - m0) as f64 / hz / el);
        if let (Some(p), Some(d0)) = (daemon, d0) {
            s.daemon_cores.push((cpu_ticks(p) - d0) as f64 / hz / el);
        }
        s.offered.push(sent);
        s.pps.push(got);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let secs: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let backends: Vec<String> = std::env::var("BACKENDS")
        .unwrap_or_else(|_| "linux,tpacket,mmsg".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    in_netns(|| {
        let dir = test_dir();
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        ip("link set va up");
        ip("link set vb up");
        let d = Daemon::start_with(dir.path(), &[]);
        d.cli(&["bridge", "add", "br0"]).ok();
        let mut series: Vec<Series> = backends.iter().map(|_| Series::default()).collect();
        for round in 0..rounds {
            for (i, backend) in backends.iter().enumerate() {
                eprintln!("round {}/{rounds}: {backend}", round + 1);
                a.ip("neigh flush all");
                if backend == "linux" {
                    ip("link add kbr type bridge");
                    ip("link set kbr up");
                    ip("link set va master kbr");
                    ip("link set vb master kbr");
                    measure(&a, &b, secs, None, &mut series[i]);
                    ip("link del kbr");
                } else {
                    d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--io", backend]).ok();
                    d.cli(&["port", "add", "br0", "pb", "--netdev", "vb", "--io", backend]).ok();
                    let list = d.cli(&["port", "list"]);
                    assert!(list.ok().contains(&format!("va ({backend}")), "port list: {}", list.stdout);
                    measure(&a, &b, secs, d.pid(), &mut series[i]);
                    d.cli(&["port", "del", "br0", "pa"]).ok();
                    d.cli(&["port", "del", "br0", "pb"]).ok();
                }
            }
        }

        println!(
            "bridge benchmark: {rounds} rounds of {secs} s, medians [min-max]; A -> B between two network \
             namespaces over veth pairs"
        );
        let anchor = &series[0];
        let ratios = |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p / q).collect() };
        let fmt = |(m, lo, hi): (f64, f64, f64), prec: usize| {
            if m.is_nan() {
                "-".to_owned() // nothing measured (the Linux bridge has no daemon)
            } else {
                format!("{m:.prec$} [{lo:.prec$}-{hi:.prec$}]")
            }
        };
        // With ONLY=tcp or ONLY=pps, the half not run is left out.
        let (tcp, pps) = (!anchor.tcp.is_empty(), !anchor.pps.is_empty());
        for (name, s) in backends.iter().zip(&series) {
            let mut line = format!("{name:>8}:");
            if tcp {
                line += &format!(" TCP {} Gbit/s", fmt(spread(&s.tcp), 2));
            }
            if pps {
                line += &format!(
                    "{} 64 B {} Mpps (offered {} Mpps; daemon {} cores, machine {} cores)",
                    if tcp { "," } else { "" },
                    fmt(spread(&s.pps), 3),
                    fmt(spread(&s.offered), 3),
                    fmt(spread(&s.daemon_cores), 2),
                    fmt(spread(&s.machine_cores), 2),
                );
            }
            if !std::ptr::eq(s, anchor) {
                line += " ";
                if tcp {
                    line += &format!(" TCP {}x", fmt(spread(&ratios(&s.tcp, &anchor.tcp)), 2));
                }
                if pps {
                    line += &format!(
                        "{} 64 B {}x",
                        if tcp { "," } else { "" },
                        fmt(spread(&ratios(&s.pps, &anchor.pps)), 2)
                    );
                }
                line += &format!(" {}", backends[0]);
            }
            println!("{line}");
        }
    });
}
