//! Benchmark driver (run by `bench/vxlan.sh`): two hosts joined by a routed underlay (a router
//! namespace, veths of MTU 1600), client A behind host 1 and client B behind host 2 on one L2
//! segment (10.0.0.1/24 <-> 10.0.0.2/24) through a VXLAN tunnel between the hosts, measured in
//! one run over (a) the kernel: a vxlan device (VNI 100) and a Linux bridge on each host, and
//! (b) vmnetd: one daemon per host, a built-in bridge and a built-in tunnel port (VNI 100 as
//! access VLAN 10). TCP throughput with iperf3 and 64-byte frame rate with the raw AF_PACKET
//! generator, A -> B, as `bench-bridge` measures them. Prints medians, the min-max spread over
//! the runs, the ratios vmnetd / kernel, and where the CPU went.
//!
//! `bench-vxlan [RUNS] [SECS]` (default 3 runs of 5 s).

use std::time::{Duration, Instant};

use vmnetd_tests::topo::Ns;
use vmnetd_tests::traffic::{pps, tcp};
use vmnetd_tests::underlay::{client, daemon_in, vtep, Underlay};
use vmnetd_tests::{cpu_ticks, in_netns, test_dir, wait_until, Daemon};

/// Median, min and max of a series.
#[derive(Clone, Copy)]
struct Spread {
    med: f64,
    lo: f64,
    hi: f64,
}

fn spread(v: &[f64]) -> Spread {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Spread { med: s[s.len() / 2], lo: s[0], hi: s[s.len() - 1] }
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, clock ticks).
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<u64> = s.lines().next().unwrap().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let total: u64 = f.iter().take(8).sum();
    let idle = f[3] + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU over one measurement: cores the machine was busy (kernel softirq work included), and
/// cores each vmnetd daemon used.
#[derive(Default, Clone)]
struct Cpu {
    machine: Vec<f64>,
    daemons: Vec<Vec<f64>>,
}

/// Runs `f` and records the CPU it took.
fn with_cpu<R>(cpu: &mut Cpu, pids: &[u32], f: impl FnOnce() -> R) -> R {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let (m0, d0) = (machine_ticks().0, pids.iter().map(|p| cpu_ticks(*p)).collect::<Vec<_>>());
    let t0 = Instant::now();
    let r = f();
    let el = t0.elapsed().as_secs_f64();
    cpu.machine.push((machine_ticks().0 - m0) as f64 / hz / el);
    cpu.daemons.resize(pids.len(), Vec::new());
    for (i, p) in pids.iter().enumerate() {
        cpu.daemons[i].push((cpu_ticks(*p) - d0[i]) as f64 / hz / el);
    }
    r
}

struct Measured {
    tcp: Vec<f64>,
    sent: Vec<f64>,
    recv: Vec<f64>,
    tcp_cpu: Cpu,
    pps_cpu: Cpu,
}

fn measure(a: &Ns, b: &Ns, runs: usize, secs: u32, pids: &[u32]) -> Measured {
    assert!(wait_until(Duration::from_secs(10), || a.ping("10.0.0.2", 1)), "no connectivity");
    assert!(a.ping("10.0.0.2", 2), "no connectivity");
    let (mut tcp_cpu, mut pps_cpu) = (Cpu::default(), Cpu::default());
    let tcp = (0..runs).map(|_| with_cpu(&mut tcp_cpu, pids, || tcp(a, b, secs))).collect();
    let p: Vec<(f64, f64)> = (0..runs).map(|_| with_cpu(&mut pps_cpu, pids, || pps(a, b, secs))).collect();
    Measured { tcp, sent: p.iter().map(|x| x.0).collect(), recv: p.iter().map(|x| x.1).collect(), tcp_cpu, pps_cpu }
}

fn row(what: &str, ours: &[f64], kernel: &[f64], prec: usize) {
    let (o, k) = (spread(ours), spread(kernel));
    let range = |s: Spread| format!("{:.p$}-{:.p$}", s.lo, s.hi, p = prec);
    println!(
        "{what:<22} {:>10.p$} {:>15} {:>10.p$} {:>15} {:>7.2}",
        o.med,
        range(o),
        k.med,
        range(k),
        o.med / k.med,
        p = prec
    );
}

fn cpu_rows(what: &str, ours: &Cpu, kernel: &Cpu) {
    let m = |c: &Cpu| spread(&c.machine).med;
    let daemons: Vec<String> = ours.daemons.iter().map(|d| format!("{:.2}", spread(d).med)).collect();
    println!(
        "  {what:<8} machine busy {:>5.2} cores (kernel) {:>5.2} cores (vmnetd); vmnetd daemons h1, h2: {} cores",
        m(kernel),
        m(ours),
        daemons.join(", ")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let secs: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    in_netns(|| {
        let u = Underlay::new(2, 1600);
        let (h1, h2) = (u.host(1), u.host(2));
        // A behind host 1 (its veth there: `ca`), B behind host 2 (`cb`).
        let a = client(h1, "a", "ca", "10.0.0.1/24");
        let b = client(h2, "b", "cb", "10.0.0.2/24");

        // (a) The kernel: vxlan device + Linux bridge per host.
        for (n, h, c) in [(1, h1, "ca"), (2, h2, "cb")] {
            h.ip(&format!("link add kvx type vxlan id 100 local {} dstport 4789 learning", vtep(n)));
            h.exec("bridge", &["fdb", "append", "00:00:00:00:00:00", "dev", "kvx", "dst", &vtep(3 - n)]).ok();
            h.ip("link add kbr type bridge");
            h.ip("link set kvx master kbr");
            h.ip(&format!("link set {c} master kbr"));
            h.ip("link set kvx up");
            h.ip("link set kbr up");
        }
        let kernel = measure(&a, &b, runs, secs, &[]);
        for h in [h1, h2] {
            h.ip("link del kbr");
            h.ip("link del kvx");
        }

        // (b) vmnetd: a daemon per host, built-in bridge and tunnel, same clients.
        let (dir1, dir2) = (test_dir(), test_dir());
        let daemons: Vec<Daemon> = [(1, h1, dir1.path(), "ca"), (2, h2, dir2.path(), "cb")]
            .into_iter()
            .map(|(n, h, dir, c)| {
                let d = daemon_in(h, dir);
                d.cli(&["bridge", "add", "br0"]).ok();
                d.cli(&["port", "add", "br0", "pc", "--netdev", c, "--vlan", "10"]).ok();
                let (local, remote) = (vtep(n), vtep(3 - n));
                let tunnel = format!("port add br0 vx --vxlan --vni 100 --vlan 10 --local {local} --remote {remote}");
                d.cli(&tunnel.split_whitespace().collect::<Vec<_>>()).ok();
                d
            })
            .collect();
        a.ip("neigh flush all");
        b.ip("neigh flush all");
        let pids: Vec<u32> = daemons.iter().map(|d| d.pid().expect("daemon running")).collect();
        let ours = measure(&a, &b, runs, secs, &pids);

        println!(
            "vxlan benchmark: {runs} runs of {secs} s each; A -> B, two namespaces behind two hosts joined by a routed \
             underlay (MTU 1600), one VXLAN segment (VNI 100)"
        );
        println!("{:<22} {:>10} {:>15} {:>10} {:>15} {:>7}", "", "vmnetd", "(min-max)", "kernel", "(min-max)", "ratio");
        row("TCP (iperf3) Gbit/s", &ours.tcp, &kernel.tcp, 2);
        row("64-byte frames Mpps", &ours.recv, &kernel.recv, 3);
        row("  (generator offered)", &ours.sent, &kernel.sent, 3);
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("CPU, medians over the runs ({cores} cores = the whole machine):");
        cpu_rows("TCP", &ours.tcp_cpu, &kernel.tcp_cpu);
        cpu_rows("64-byte", &ours.pps_cpu, &kernel.pps_cpu);
        for (i, d) in daemons.iter().enumerate() {
            println!("h{}: {}", i + 1, d.cli(&["stats", "br0"]).stdout);
        }
    });
}
