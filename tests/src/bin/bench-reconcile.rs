//! Benchmark driver (run by `bench/reconcile.sh`): what keeping a Linux bridge's ports in
//! place costs. N TAPs are ports of one Linux bridge; then, per daemon build given:
//! - idle: netlink requests the daemon makes in a quiet window (counted with strace);
//! - flap: one port is released from the bridge (`ip link set tX nomaster`, as a script or
//!   a crashed tool would), and the time until the daemon has enslaved it again, and the
//!   netlink requests that cost, over several flaps (medians).
//!
//! `bench-reconcile [--ports N] [--flaps K] [--idle SECS] LABEL=/path/to/vmnetd ...`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmnetd::api::{BridgeKind, BridgeSpec, Op, PortKind, PortSpec};
use vmnetd::ifname::IfName;
use vmnetd_tests::{in_netns, test_dir, Daemon};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Counts the netlink requests (sendto/sendmsg on any socket; the daemon's only sockets that
/// send while idle are netlink ones) process `pid` makes while `f` runs.
fn count_syscalls<R>(pid: u32, f: impl FnOnce() -> R) -> (R, u64) {
    let out = std::env::temp_dir().join(format!("bench-reconcile-strace-{pid}"));
    let mut st = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=sendto,sendmsg", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (apt-get install strace)");
    std::thread::sleep(Duration::from_millis(500));
    let r = f();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.id() as i32), nix::sys::signal::Signal::SIGINT);
    let _ = st.wait();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    // strace -c: "% time seconds usecs/call calls errors syscall".
    let calls = text
        .lines()
        .filter(|l| l.ends_with("sendto") || l.ends_with("sendmsg"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3).and_then(|c| c.parse::<u64>().ok())
        })
        .sum();
    (r, calls)
}

fn enslaved(dev: &str) -> bool {
    let o = Command::new("ip").args(["-o", "link", "show", "dev", dev]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).contains(" master lbr0 ")
}

struct Report {
    label: String,
    idle_requests_per_min: f64,
    flap_ms: f64,
    flap_requests: f64,
}

fn bench(label: &str, binary: &Path, ports: usize, flaps: usize, idle: u64) -> Report {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start_binary(dir.path(), binary, &[], &[]);
        // N TAPs in one `ip -batch`.
        let batch = dir.path().join("taps.batch");
        let mut f = std::fs::File::create(&batch).unwrap();
        for i in 0..ports {
            writeln!(f, "tuntap add t{i} mode tap").unwrap();
        }
        drop(f);
        let o = Command::new("ip").arg("-batch").arg(&batch).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut c = d.client();
        let br = BridgeSpec {
            name: IfName::new("lbr0").unwrap(),
            kind: BridgeKind::Linux,
            ageing: None,
            max_macs: None,
            stp: None,
        };
        let _: serde_json::Value = c.call(Op::BridgeAdd(br)).unwrap();
        let t0 = Instant::now();
        for i in 0..ports {
            let n = IfName::new(&format!("t{i}")).unwrap();
            let spec = PortSpec {
                bridge: IfName::new("lbr0").unwrap(),
                name: n.clone(),
                kind: PortKind::Netdev { ifname: n, io: Default::default() },
                vlan: Default::default(),
                macs: Vec::new(),
                lock_mac: false,
                isolated: false,
                ingress_rate_kbit: None,
                ingress_burst_kb: None,
                egress_rate_kbit: None,
                egress_burst_kb: None,
                external_ids: Default::default(),
            };
            let _: serde_json::Value = c.call(Op::PortAdd(Box::new(spec))).unwrap();
        }
        eprintln!("{label}: {ports} ports added in {:.1} s", t0.elapsed().as_secs_f64());
        let pid = d.pid().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let ((), idle_calls) = count_syscalls(pid, || std::thread::sleep(Duration::from_secs(idle)));
        let mut times = Vec::new();
        let mut reqs = Vec::new();
        for k in 0..flaps {
            let dev = format!("t{}", (k * 97 + ports / 2) % ports);
            let (ms, calls) = count_syscalls(pid, || {
                let t = Instant::now();
                let o = Command::new("ip").args(["link", "set", &dev, "nomaster"]).output().unwrap();
                assert!(o.status.success());
                while !enslaved(&dev) {
                    assert!(t.elapsed() < Duration::from_secs(20), "{label}: {dev} never re-enslaved");
                    std::thread::sleep(Duration::from_millis(5));
                }
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                // What else the repair costs comes within the next moment.
                std::thread::sleep(Duration::from_millis(500));
                ms
            });
            times.push(ms);
            reqs.push(calls as f64);
        }
        drop(c);
        Report {
            label: label.to_owned(),
            idle_requests_per_min: idle_calls as f64 * 60.0 / idle as f64,
            flap_ms: median(times),
            flap_requests: median(reqs),
        }
    })
}

fn main() {
    let mut ports = 1000usize;
    let mut flaps = 5usize;
    let mut idle = 30u64;
    let mut builds: Vec<(String, PathBuf)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ports" => ports = args.next().and_then(|v| v.parse().ok()).expect("--ports N"),
            "--flaps" => flaps = args.next().and_then(|v| v.parse().ok()).expect("--flaps K"),
            "--idle" => idle = args.next().and_then(|v| v.parse().ok()).expect("--idle SECS"),
            b => {
                let (l, p) = b.split_once('=').expect("LABEL=/path/to/vmnetd");
                builds.push((l.to_owned(), PathBuf::from(p)));
            }
        }
    }
    if builds.is_empty() {
        builds.push(("this".into(), vmnetd_tests::bin("vmnetd")));
    }
    let reports: Vec<Report> = builds.iter().map(|(l, p)| bench(l, p, ports, flaps, idle)).collect();
    println!("\nLinux bridge with {ports} ports; {flaps} flaps (one port released), medians:\n");
    println!("{:<10} {:>18} {:>16} {:>22}", "build", "idle requests/min", "flap repaired", "requests per flap");
    for r in &reports {
        println!("{:<10} {:>18.0} {:>13.0} ms {:>22.0}", r.label, r.idle_requests_per_min, r.flap_ms, r.flap_requests);
    }
}
