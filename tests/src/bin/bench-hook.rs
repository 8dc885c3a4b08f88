//! Benchmark driver (run by `bench/hook.sh`): how long libvirt waits for the hook. Runs the
//! release build of `vmnetd-libvirt-hook` N times per call type, as libvirt does (a new
//! process, domain XML on stdin), against a daemon in a private network namespace, with the
//! XML libvirt 9.0 sent (fixtures). Prints medians and p90s next to the cost of spawning
//! `/bin/true` (the floor for any hook) and DESIGN §5's 100 ms budget.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmnetd_tests::{bin, in_netns, test_dir, Daemon};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn call(socket: &Path, prog: &Path, args: &[&str], xml: &str) -> Duration {
    let t = Instant::now();
    let mut c = Command::new(prog)
        .args(args)
        .env("VMNETD_SOCKET", socket)
        .env("VMNETD_LIBVIRT_HOOK_CONFIG", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let _ = c.stdin.take().unwrap().write_all(xml.as_bytes());
    let o = c.wait_with_output().unwrap();
    let el = t.elapsed();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    el
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "vmnet0"]).ok();
        d.cli(&["bridge", "add", "lvbr0", "--kind", "linux"]).ok();
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../libvirt-hook/tests/fixtures");
        let load = |f: &str| {
            std::fs::read_to_string(fx.join(f))
                .unwrap()
                .replace("/tmp/cap1-", &format!("{}/cap1-", dir.path().display()))
        };
        let (prep, rel) = (load("mixed-prepare-begin.xml"), load("mixed-release-end.xml"));
        let start = load("mixed-start-begin.xml");
        let plain = {
            let a = prep.find("<metadata").unwrap();
            let b = prep.find("</metadata>").unwrap() + "</metadata>".len();
            format!("{}{}", &prep[..a], &prep[b..])
        };
        let hook = bin("vmnetd-libvirt-hook");
        let t = Path::new("/bin/true");
        let s = &d.socket;
        let mut rows: Vec<(&str, Vec<Duration>)> = Vec::new();
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut release = Vec::new();
        let mut other = Vec::new();
        let mut none = Vec::new();
        let mut floor = Vec::new();
        for _ in 0..n {
            cold.push(call(s, &hook, &["cap1", "prepare", "begin", "-"], &prep));
            warm.push(call(s, &hook, &["cap1", "prepare", "begin", "-"], &prep));
            other.push(call(s, &hook, &["cap1", "start", "begin", "-"], &start));
            release.push(call(s, &hook, &["cap1", "release", "end", "-"], &rel));
            none.push(call(s, &hook, &["cap1", "prepare", "begin", "-"], &plain));
            floor.push(call(s, t, &[], ""));
        }
        rows.push(("prepare: 2 vhost-user ports + TAP + port created", cold));
        rows.push(("prepare again: all in place (idempotent)", warm));
        rows.push(("release: 3 ports + TAP removed", release));
        rows.push(("start: nothing to do", other));
        rows.push(("prepare: domain without vmnetd", none));
        let mut floor_m = floor.clone();
        let f = pct(&mut floor_m, 0.5);
        println!("hook: {n} calls each, release build, XML as libvirt 9.0 sent it");
        println!("spawning /bin/true: median {:.2} ms", f.as_secs_f64() * 1e3);
        for (what, mut v) in rows {
            let (m, p90) = (pct(&mut v, 0.5), pct(&mut v, 0.9));
            println!(
                "{what}: median {:.2} ms, p90 {:.2} ms; {:.1}x /bin/true; {:.1}% of the 100 ms budget",
                m.as_secs_f64() * 1e3,
                p90.as_secs_f64() * 1e3,
                m.as_secs_f64() / f.as_secs_f64(),
                m.as_secs_f64() * 1e3
            );
        }
    });
}
