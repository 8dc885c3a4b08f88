//! vhost-user ports against real frontends: DPDK's testpmd (virtio-user) in both socket
//! modes, and QEMU guests (TCG, a Debian cloud kernel, a busybox initramfs).
#![cfg(feature = "root-tests")]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmnetd_tests::guest::{initramfs, script_up, tap_args, vhost_user_args, Guest};
use vmnetd_tests::topo::Ns;
use vmnetd_tests::*;

/// An interactive dpdk-testpmd with one virtio-user port.
struct Testpmd {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Testpmd {
    fn start(prefix: &str, vdev: &str, fwd: &str) -> Testpmd {
        let mut child = Command::new("dpdk-testpmd")
            .args(["-l", "0,1", "--no-huge", "-m", "256", "--no-pci", "--file-prefix", prefix, "--vdev", vdev])
            .args(["--", "-i", "--total-num-mbufs=2048"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dpdk-testpmd (package dpdk)");
        let out = Arc::new(Mutex::new(String::new()));
        for s in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for l in std::io::BufReader::new(s).lines().map_while(Result::ok) {
                    out.lock().unwrap().push_str(&(l + "\n"));
                }
            });
        }
        let mut t = Testpmd { child, out };
        t.cmd(&format!("set fwd {fwd}"));
        t.cmd("start");
        t
    }

    fn cmd(&mut self, c: &str) {
        let _ = writeln!(self.child.stdin.as_mut().unwrap(), "{c}");
    }

    /// Stops forwarding, quits, and returns (RX-packets, TX-packets) of port 0.
    fn stop(mut self) -> (u64, u64, String) {
        self.cmd("stop");
        self.cmd("quit");
        let _ = wait_child(&mut self.child, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(200));
        let out = self.out.lock().unwrap().clone();
        let num = |key: &str| -> u64 {
            out.lines()
                .filter(|l| l.contains(key))
                .filter_map(|l| l.split(key).nth(1)?.split_whitespace().next()?.parse().ok())
                .next_back()
                .unwrap_or_else(|| panic!("no {key} in testpmd output:\n{out}"))
        };
        (num("RX-packets:"), num("TX-packets:"), out)
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stats(d: &Daemon, port: &str) -> serde_json::Value {
    d.cli(&["--json", "stats", "br0", port]).json()[0]["counters"].clone()
}

fn port_state(d: &Daemon, port: &str) -> String {
    let list = d.cli(&["--json", "port", "list"]).json();
    list.as_array().unwrap().iter().find(|p| p["name"] == port).map(state_of).unwrap()
}

#[test]
fn dpdk_testpmd_exchanges_frames_in_server_and_client_mode() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let run = dir.path().join("run");
        // Server mode: vmnetd listens on both sockets.
        d.cli(&["port", "add", "br0", "pa", "--vhost-user", "a.sock"]).ok();
        d.cli(&["port", "add", "br0", "pb", "--vhost-user", "b.sock"]).ok();
        // Client mode: a third testpmd listens (server=1) and vmnetd connects to it.
        let csock = dir.path().join("tp-c.sock");
        d.cli(&["port", "add", "br0", "pc", "--vhost-user", csock.to_str().unwrap(), "--mode", "client"]).ok();

        let rx_b = Testpmd::start(
            "vmb",
            &format!("net_virtio_user0,path={},mac=02:00:00:00:00:0b", run.join("b.sock").display()),
            "rxonly",
        );
        let rx_c = Testpmd::start(
            "vmc",
            &format!("net_virtio_user0,path={},server=1,mac=02:00:00:00:00:0c", csock.display()),
            "rxonly",
        );
        assert!(
            wait_until(Duration::from_secs(30), || port_state(&d, "pb").starts_with("up")
                && port_state(&d, "pc").starts_with("up")),
            "pb: {}, pc: {}",
            port_state(&d, "pb"),
            port_state(&d, "pc")
        );
        let tx_a = Testpmd::start(
            "vma",
            &format!("net_virtio_user0,path={},mac=02:00:00:00:00:0a", run.join("a.sock").display()),
            "txonly",
        );
        assert!(wait_until(Duration::from_secs(30), || stats(&d, "pa")["rx_packets"].as_u64().unwrap() > 10_000));
        // Stop A's generator but keep its device open until vmnetd has drained what is still in
        // its TX ring: frames left in a ring when the frontend quits are lost with it, and on a
        // 2-core CI box three spinning testpmds can starve the datapath thread for a while.
        let mut tx_a = tx_a;
        tx_a.cmd("stop");
        let mut last = u64::MAX;
        assert!(wait_until(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(300));
            let now = stats(&d, "pa")["rx_packets"].as_u64().unwrap();
            std::mem::replace(&mut last, now) == now
        }));
        let (_, a_tx, _) = tx_a.stop();
        std::thread::sleep(Duration::from_millis(500));
        let (b_rx, _, out_b) = rx_b.stop();
        let (c_rx, _, _) = rx_c.stop();
        let (pa, pb, pc) = (stats(&d, "pa"), stats(&d, "pb"), stats(&d, "pc"));
        eprintln!("testpmd A sent {a_tx}, B received {b_rx}, C received {c_rx}; vmnetd: pa {pa}, pb {pb}, pc {pc}");
        // Every frame A's testpmd counted as sent was received by vmnetd...
        assert_eq!(pa["rx_packets"].as_u64().unwrap(), a_tx);
        // ...and every frame vmnetd says it delivered, B's and C's testpmd counted.
        assert_eq!(pb["tx_packets"].as_u64().unwrap(), b_rx, "{out_b}");
        assert_eq!(pc["tx_packets"].as_u64().unwrap(), c_rx);
        // Flooded to both (unknown destination): delivered + no-room drops = sent, per port.
        for p in [&pb, &pc] {
            let no_room = p["drops"]["no_room"].as_u64().unwrap_or(0);
            assert_eq!(p["tx_packets"].as_u64().unwrap() + no_room, a_tx, "{p}");
        }
        assert!(b_rx > 0 && c_rx > 0);
        // The frontends went away; the ports wait for the next ones.
        assert!(wait_until(Duration::from_secs(10), || port_state(&d, "pa") == "waiting for frontend"));
    });
}

fn guest_net(d: &Daemon, port: &str, extra: &[&str]) {
    let sock = format!("{port}.sock");
    let mut args = vec!["port", "add", "br0", port, "--vhost-user", &sock, "--owner", "nobody"];
    args.extend_from_slice(extra);
    d.cli(&args).ok();
}

#[test]
fn three_qemu_guests_vlan_10_talks_vlan_20_does_not() {
    vmnetd_tests::guest::guest_dir();
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let run = dir.path().join("run");
        guest_net(&d, "ga", &["--vlan", "10"]);
        guest_net(&d, "gb", &["--vlan", "10"]);
        guest_net(&d, "gc", &["--vlan", "20"]);
        let keep = "sleep 600\n";
        let b_init = initramfs(dir.path(), "gb", &(script_up("10.0.10.2/24") + keep));
        let c_init = initramfs(
            dir.path(),
            "gc",
            &(script_up("10.0.10.3/24")
                + "sleep 2\nping -c 3 -W 1 10.0.10.2 && echo C-B-OK || echo C-B-FAIL\necho C-DONE\n"
                + keep),
        );
        let mut b = Guest::boot(
            "gb",
            &b_init,
            &vhost_user_args("0", &run.join("gb.sock"), false, "52:54:00:00:10:02"),
            Some(65534),
        );
        let mut c = Guest::boot(
            "gc",
            &c_init,
            &vhost_user_args("0", &run.join("gc.sock"), false, "52:54:00:00:20:03"),
            Some(65534),
        );
        b.wait_for("GUEST-READY", Duration::from_secs(180));
        c.wait_for("GUEST-READY", Duration::from_secs(180));
        let a_init = initramfs(
            dir.path(),
            "ga",
            &(script_up("10.0.10.1/24")
                + "for i in $(seq 60); do ping -c 1 -W 1 10.0.10.2 >/dev/null && break; done\n"
                + "ping -c 3 -W 2 10.0.10.2 && echo A-B-OK || echo A-B-FAIL\n"
                + "ping -c 3 -W 1 10.0.10.3 && echo A-C-OK || echo A-C-FAIL\n"),
        );
        let mut a = Guest::boot(
            "ga",
            &a_init,
            &vhost_user_args("0", &run.join("ga.sock"), false, "52:54:00:00:10:01"),
            Some(65534),
        );
        let out = a.wait_done(Duration::from_secs(240));
        assert!(out.contains("A-B-OK"), "A could not ping B on VLAN 10:\n{out}");
        assert!(out.contains("A-C-FAIL"), "A reached C across VLANs:\n{out}");
        let out = c.wait_for("C-DONE", Duration::from_secs(240));
        assert!(out.contains("C-B-FAIL"), "C reached B across VLANs:\n{out}");
        // None of VLAN 10's frames went to C's port.
        let st = d.cli(&["--json", "stats", "br0", "gc"]).json();
        assert_eq!(st[0]["counters"]["tx_packets"], 0, "{st}");
        // B is still running: its port shows what its virtio-net driver negotiated.
        let list = d.cli(&["--json", "port", "list"]).json();
        let gb = list.as_array().unwrap().iter().find(|p| p["name"] == "gb").unwrap();
        assert_eq!(state_of(gb), "up (1/1 queue pairs)", "{gb}");
        let feats = gb["vhost"]["features"].as_array().unwrap();
        for want in ["mrg_rxbuf", "event_idx", "version_1", "guest_tso4", "guest_csum"] {
            assert!(feats.iter().any(|f| f == want), "{want} not negotiated: {gb}");
        }
        drop((a, b, c));
    });
}

/// Time from `t` to the first ping reply on the guest's console after it.
fn resume_after(g: &Guest, t: Instant, limit: Duration) -> Option<Duration> {
    let end = Instant::now() + limit;
    loop {
        if let Some((at, _)) = g.lines_after(t).into_iter().find(|(_, l)| l.contains("bytes from 10.0.10.2")) {
            return Some(at.duration_since(t));
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn guests_survive_vmnetd_restarts_in_client_mode_and_pings_resume_within_2s() {
    vmnetd_tests::guest::guest_dir();
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (sa, sb) = (dir.path().join("qa.sock"), dir.path().join("qb.sock"));
        // QEMU listens (server=on), vmnetd connects: the guests do not depend on vmnetd running.
        let b_init = initramfs(dir.path(), "rb", &(script_up("10.0.10.2/24") + "sleep 600\n"));
        let a_init = initramfs(dir.path(), "ra", &(script_up("10.0.10.1/24") + "ping -i 0.2 10.0.10.2\n"));
        let mut b = Guest::boot("rb", &b_init, &vhost_user_args("0", &sb, true, "52:54:00:00:10:02"), None);
        let mut a = Guest::boot("ra", &a_init, &vhost_user_args("0", &sa, true, "52:54:00:00:10:01"), None);
        d.cli(&["port", "add", "br0", "ra", "--vhost-user", sa.to_str().unwrap(), "--mode", "client", "--vlan", "10"])
            .ok();
        d.cli(&["port", "add", "br0", "rb", "--vhost-user", sb.to_str().unwrap(), "--mode", "client", "--vlan", "10"])
            .ok();
        b.wait_for("GUEST-READY", Duration::from_secs(180));
        a.wait_for("bytes from 10.0.10.2", Duration::from_secs(240));
        for how in ["SIGTERM", "SIGKILL"] {
            if how == "SIGTERM" {
                assert_eq!(d.stop(), Some(0));
            } else {
                d.kill();
            }
            std::thread::sleep(Duration::from_secs(2));
            assert!(a.is_running() && b.is_running(), "a guest died with vmnetd ({how})");
            d.restart();
            let ready = Instant::now();
            let took = resume_after(&a, ready, Duration::from_secs(20));
            eprintln!("pings resumed {took:?} after vmnetd restarted ({how})");
            let took = took.unwrap_or_else(|| panic!("pings never resumed after {how}:\n{}", a.output()));
            assert!(took < Duration::from_secs(2), "pings resumed only after {took:?} ({how})");
        }
    });
}

#[test]
fn vhost_guest_pings_a_tap_guest_and_a_namespace_on_one_bridge() {
    vmnetd_tests::guest::guest_dir();
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let run = dir.path().join("run");
        guest_net(&d, "gv", &[]);
        d.cli(&["mktap", "ttap0", "--user", "nobody", "--vnet-hdr"]).ok();
        d.cli(&["port", "add", "br0", "gt", "--netdev", "ttap0"]).ok();
        d.cli(&["port", "add", "br0", "host", "--internal", "--ifname", "vh0"]).ok();
        let ns = Ns::new("h");
        ns.adopt("vh0", Some("10.0.0.3/24"));
        let t_init = initramfs(dir.path(), "gt", &(script_up("10.0.0.2/24") + "sleep 600\n"));
        let mut t = Guest::boot("gt", &t_init, &tap_args("0", "ttap0", "52:54:00:00:00:02"), Some(65534));
        t.wait_for("GUEST-READY", Duration::from_secs(180));
        let v_init = initramfs(
            dir.path(),
            "gv",
            &(script_up("10.0.0.1/24")
                + "for i in $(seq 60); do ping -c 1 -W 1 10.0.0.2 >/dev/null && break; done\n"
                + "ping -c 3 -W 2 10.0.0.2 && echo V-TAP-OK || echo V-TAP-FAIL\n"
                + "ping -c 3 -W 2 10.0.0.3 && echo V-NS-OK || echo V-NS-FAIL\n"
                + "echo V-DONE\nsleep 600\n"),
        );
        let mut v = Guest::boot(
            "gv",
            &v_init,
            &vhost_user_args("0", &run.join("gv.sock"), false, "52:54:00:00:00:01"),
            Some(65534),
        );
        let out = v.wait_for("V-DONE", Duration::from_secs(240));
        assert!(out.contains("V-TAP-OK"), "vhost-user guest could not reach the TAP guest:\n{out}");
        assert!(out.contains("V-NS-OK"), "vhost-user guest could not reach the namespace:\n{out}");
        assert!(ns.ping("10.0.0.1", 2), "namespace to vhost-user guest");
    });
}
