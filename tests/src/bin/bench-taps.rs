//! Benchmark driver (run by `bench/taps.sh`): creates and removes N persistent TAPs through a
//! daemon in a private network namespace and prints per-TAP medians.
//!
//! `bench-taps [N]` (default 1000). Each mktap includes the daemon's durable state write.

use std::time::{Duration, Instant};

use vmnetd::api::{Op, RmTap, TapInfo, TapSpec};
use vmnetd::ifname::IfName;
use vmnetd_tests::{in_netns, test_dir, Daemon};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        let mut c = d.client();
        let mut create = Vec::with_capacity(n);
        let mut remove = Vec::with_capacity(n);
        let t0 = Instant::now();
        for i in 0..n {
            let spec = TapSpec {
                name: Some(IfName::new(&format!("bt{i}")).unwrap()),
                user: Some("nobody".into()),
                vnet_hdr: true,
                ..Default::default()
            };
            let t = Instant::now();
            let _: TapInfo = c.call(Op::Mktap(spec)).expect("mktap");
            create.push(t.elapsed());
        }
        for i in 0..n {
            let rm = RmTap { name: IfName::new(&format!("bt{i}")).unwrap(), force: false };
            let t = Instant::now();
            let _: TapInfo = c.call(Op::Rmtap(rm)).expect("rmtap");
            remove.push(t.elapsed());
        }
        let total = t0.elapsed();
        // The same work done by iproute2 (one `ip` process per TAP), for scale.
        let mut ip_create = Vec::with_capacity(n);
        let mut ip_remove = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            vmnetd_tests::ip(&format!("tuntap add dev it{i} mode tap user nobody vnet_hdr"));
            ip_create.push(t.elapsed());
            // vmnetd brings its TAPs up; do the same (untimed) so removal costs compare.
            vmnetd_tests::ip(&format!("link set it{i} up"));
        }
        for i in 0..n {
            let t = Instant::now();
            vmnetd_tests::ip(&format!("link del it{i}"));
            ip_remove.push(t.elapsed());
        }
        println!("taps: {n} created and removed through the daemon in {:.2} s", total.as_secs_f64());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for (what, ours, theirs) in [("create", &mut create, &mut ip_create), ("remove", &mut remove, &mut ip_remove)] {
            let (m, p90) = (pct(ours, 0.5), pct(ours, 0.9));
            let im = pct(theirs, 0.5);
            println!(
                "{what} per TAP: vmnetd median {:.3} ms (p90 {:.3} ms, incl. durable state write); iproute2 median {:.3} ms; ratio vmnetd/iproute2 {:.2}",
                ms(m),
                ms(p90),
                ms(im),
                m.as_secs_f64() / im.as_secs_f64()
            );
        }
    });
}
