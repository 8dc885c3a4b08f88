//! The hook binary, called as libvirt calls it (`NAME OP SUBOP -`, domain XML on stdin) with
//! the XML libvirt 9.0 really sent at each phase, against a real daemon in a private network
//! namespace. The same flow with libvirtd itself is in `libvirt_e2e.rs`.
#![cfg(feature = "root-tests")]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use vmnetd_tests::*;

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../libvirt-hook/tests/fixtures").join(name);
    read(&p)
}

/// The captured domain with its sockets moved into `dir`.
fn phase_xml(phase: &str, dir: &Path) -> String {
    fixture(&format!("mixed-{phase}.xml")).replace("/tmp/cap1-", &format!("{}/cap1-", dir.display()))
}

/// Runs the hook like libvirt does; `socket` is the daemon's control socket.
fn hook(socket: &Path, args: [&str; 3], xml: &str) -> Out {
    let mut c = Command::new(bin("vmnetd-libvirt-hook"));
    c.args(args)
        .arg("-")
        .env("VMNETD_SOCKET", socket)
        // The host's own hook config must not leak in.
        .env("VMNETD_LIBVIRT_HOOK_CONFIG", "/nonexistent/vmnetd-libvirt-hook.toml")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn hook");
    // The hook may exit without reading (phases with nothing to do): ignore EPIPE.
    let _ = child.stdin.take().unwrap().write_all(xml.as_bytes());
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        what: format!("vmnetd-libvirt-hook {}", args.join(" ")),
    }
}

fn ports(d: &Daemon) -> Vec<Value> {
    d.cli(&["--json", "port", "list"]).json().as_array().unwrap().clone()
}

/// `bridge/name vlan` of every port, sorted.
fn summary(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = ports(d)
        .iter()
        .map(|p| {
            format!(
                "{}/{} {} {}",
                p["bridge"].as_str().unwrap(),
                p["name"].as_str().unwrap(),
                p["kind"]["type"].as_str().unwrap(),
                serde_json::to_string(&p["vlan"]).unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

fn setup(dir: &Path) -> Daemon {
    let d = Daemon::start(dir);
    d.cli(&["bridge", "add", "vmnet0"]).ok();
    d.cli(&["bridge", "add", "lvbr0", "--kind", "linux"]).ok();
    d
}

#[test]
fn every_phase_as_libvirt_calls_it() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let d = setup(dir.path());
        let sock = d.socket.clone();

        // prepare: both vhost-user ports, the pre-made TAP and its port.
        hook(&sock, ["cap1", "prepare", "begin"], &phase_xml("prepare-begin", dir.path())).ok();
        let ps = ports(&d);
        assert_eq!(ps.len(), 3, "{ps:#?}");
        for p in &ps {
            assert_eq!(p["external_ids"]["vm-name"], "cap1", "{p}");
            assert_eq!(p["external_ids"]["vm-uuid"], "6b902e29-56ee-425e-b46a-d98040ae021f");
        }
        let by_mac = |m: &str| ps.iter().find(|p| p["external_ids"]["attached-mac"] == m).unwrap().clone();
        let a = by_mac("52:54:00:77:00:01");
        // QEMU is the client on a: vmnetd listens, socket owned by the qemu user, 0660.
        assert_eq!(a["kind"]["mode"], "server");
        assert_eq!(a["vlan"], serde_json::json!({"mode": "access", "vlan": 10}));
        let meta = std::fs::metadata(dir.path().join("cap1-a.sock")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (64055, 0o660));
        let b = by_mac("52:54:00:77:00:02");
        assert_eq!(b["kind"]["mode"], "client", "QEMU is the server on b");
        assert_eq!(b["vlan"]["native"]["vid"], 1);
        let t = by_mac("52:54:00:77:00:03");
        assert_eq!((t["name"].as_str(), t["lock_mac"].as_bool()), (Some("lvtap0"), Some(true)));
        assert!(link_exists("lvtap0"));
        let taps = d.cli(&["--json", "tap", "list"]).json();
        assert_eq!(taps[0]["external_ids"]["created-by"], "vmnetd-libvirt-hook", "{taps}");

        // Again (libvirt retries a start): nothing changes, the listening socket is the same.
        let before = summary(&d);
        hook(&sock, ["cap1", "prepare", "begin"], &phase_xml("prepare-begin", dir.path())).ok();
        assert_eq!(summary(&d), before);
        assert_eq!(std::fs::metadata(dir.path().join("cap1-a.sock")).unwrap().ino(), meta.ino());

        // start: nothing to do, stdin not even read.
        hook(&sock, ["cap1", "start", "begin"], "not xml at all").ok();

        // started: libvirt made vnet3 on lvbr0; the metadata puts it on VLAN 20, which this
        // kernel cannot do (no bridge VLAN filtering): refused, so libvirt stops the domain
        // rather than run it on the wrong VLAN.
        ip("tuntap add vnet3 mode tap");
        ip("link set vnet3 master lvbr0");
        let o = hook(&sock, ["cap1", "started", "begin"], &phase_xml("started-begin", dir.path()));
        let line = o.failed_one_line();
        assert!(line.starts_with("vmnetd: domain cap1: This kernel has no bridge VLAN filtering"), "{line}");
        // Without a VLAN for it, a Linux bridge interface needs nothing from vmnetd.
        let no_vlan =
            phase_xml("started-begin", dir.path()).replace(" bridge=\"lvbr0\" vlan=\"20\"", " bridge=\"lvbr0\"");
        hook(&sock, ["cap1", "started", "begin"], &no_vlan).ok();
        assert_eq!(summary(&d), before);

        // reconnect (libvirtd restarted): idempotent, and never fatal for the running VM —
        // the VLAN it cannot set is a warning.
        let o = hook(&sock, ["cap1", "reconnect", "begin"], &phase_xml("reconnect-begin", dir.path()));
        assert!(o.success(), "{o:?}");
        assert!(o.stderr.contains("no bridge VLAN filtering"), "{o:?}");
        assert_eq!(summary(&d), before);
        hook(&sock, ["cap1", "reconnect", "begin"], &no_vlan.replace("started", "reconnect")).ok();
        assert_eq!(summary(&d), before);

        hook(&sock, ["cap1", "stopped", "end"], &phase_xml("stopped-end", dir.path())).ok();
        assert_eq!(summary(&d), before, "stopped changes nothing; release does");

        // release: every port and the TAP made for the domain go; the bridges stay.
        hook(&sock, ["cap1", "release", "end"], &phase_xml("release-end", dir.path())).ok();
        assert!(ports(&d).is_empty(), "{:#?}", ports(&d));
        assert!(!link_exists("lvtap0"));
        assert!(!dir.path().join("cap1-a.sock").exists());
        assert_eq!(d.cli(&["--json", "bridge", "list"]).json().as_array().unwrap().len(), 2);
        ip("link del vnet3");
    });
}

#[test]
fn leftovers_are_replaced_and_hand_made_ports_respected() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let d = setup(dir.path());
        let sock = d.socket.clone();
        let x = phase_xml("prepare-begin", dir.path());
        hook(&sock, ["cap1", "prepare", "begin"], &x).ok();
        // No release came (libvirtd died); the next start has another VLAN for a.
        let x11 = x.replace(
            "mac=\"52:54:00:77:00:01\" bridge=\"vmnet0\" vlan=\"10\"",
            "mac=\"52:54:00:77:00:01\" bridge=\"vmnet0\" vlan=\"11\"",
        );
        assert_ne!(x, x11);
        hook(&sock, ["cap1", "prepare", "begin"], &x11).ok();
        let s = summary(&d);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().any(|p| p.contains("\"vlan\":11")), "{s:?}");
        hook(&sock, ["cap1", "release", "end"], &x11).ok();
        assert!(ports(&d).is_empty());

        // A TAP and port the admin declared by hand: used when they match...
        d.cli(&["mktap", "lvtap0"]).ok();
        d.cli(&["port", "add", "vmnet0", "mine", "--netdev", "lvtap0", "--vlan", "10"]).ok();
        hook(&sock, ["cap1", "prepare", "begin"], &x).ok();
        assert_eq!(ports(&d).len(), 3);
        // ...kept at release...
        hook(&sock, ["cap1", "release", "end"], &x).ok();
        assert_eq!(summary(&d), vec!["vmnet0/mine netdev {\"mode\":\"access\",\"vlan\":10}".to_owned()]);
        assert!(link_exists("lvtap0"));
        // ...and refused, saying why, when the domain wants something else.
        let x30 = x.replace("vlan=\"10\" lock-mac", "vlan=\"30\" lock-mac");
        let o = hook(&sock, ["cap1", "prepare", "begin"], &x30);
        let line = o.failed_one_line();
        assert!(
            line.contains("interface lvtap0 is already port mine of bridge vmnet0 (access 10), but the domain wants it on vmnet0 (access 30)"),
            "{line}"
        );
        d.cli(&["port", "del", "vmnet0", "mine"]).ok();
        hook(&sock, ["cap1", "release", "end"], &x).ok();
        d.cli(&["rmtap", "lvtap0"]).ok();
    });
}

#[test]
fn refusals_are_one_line_and_only_where_libvirt_must_stop() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let nosock = dir.path().join("no-daemon.sock");
        let x = phase_xml("prepare-begin", dir.path());

        // No daemon: a domain that uses vmnetd cannot start...
        let o = hook(&nosock, ["cap1", "prepare", "begin"], &x);
        assert!(o.failed_one_line().starts_with("vmnetd: domain cap1: vmnetd daemon is not running"), "{o:?}");
        // ...one that does not, starts; release never fails.
        let start = x.find("<metadata").unwrap();
        let end = x.find("</metadata>").unwrap() + "</metadata>".len();
        let plain = format!("{}{}", &x[..start], &x[end..]);
        let o = hook(&nosock, ["cap1", "prepare", "begin"], &plain);
        assert!(o.success() && o.stderr.is_empty(), "{o:?}");
        let o = hook(&nosock, ["cap1", "release", "end"], &x);
        assert!(o.success() && o.stderr.is_empty(), "{o:?}");

        let d = setup(dir.path());
        let sock = d.socket.clone();
        let cases = [
            (x.replace("</devices>", "</devics>"), "malformed domain XML at line"),
            ("<network><name>n</name></network>".to_owned(), "not a libvirt domain"),
            (
                x.replace("vlan=\"10\" lock-mac", "vlan=\"4095\" lock-mac"),
                "VLAN id 4095 is out of range (valid VLANs are 1-4094)",
            ),
            (x.replace("trunk=\"10,20\"", "trunk=\"10,5000\""), "VLAN id 5000 is out of range"),
            (
                x.replace("bridge=\"vmnet0\" vlan=\"10\" lock", "bridge=\"nosuch\" vlan=\"10\" lock"),
                "vmnetd has no bridge nosuch",
            ),
            (x.replace("52:54:00:77:00:04", "52:54:00:77:00:03"), "two interfaces have MAC 52:54:00:77:00:03"),
            (x.replace("<access mode='shared'/>", ""), "needs guest memory shared with vmnetd"),
        ];
        for (input, want) in &cases {
            let o = hook(&sock, ["cap1", "prepare", "begin"], input);
            let line = o.failed_one_line();
            assert!(line.starts_with("vmnetd: domain ") && line.contains(want), "want {want:?}: {line}");
            // Nothing half-done is left behind.
            assert!(ports(&d).is_empty(), "{want}: {:#?}", ports(&d));
            // The same input at release or reconnect is a warning, never a failure.
            for (op, sub) in [("release", "end"), ("reconnect", "begin")] {
                let o = hook(&sock, ["cap1", op, sub], input);
                assert!(o.success(), "{op} {want}: {o:?}");
            }
        }
        // A failure half-way (a's socket path is taken by a file; b, the TAP and its port
        // were made before it): everything this call made is taken back.
        let a_start = x.find("<interface type='vhostuser'>").unwrap();
        let a_end = a_start + x[a_start..].find("</interface>").unwrap() + "</interface>".len();
        let mut late_a = x.clone();
        let a = late_a[a_start..a_end].to_owned();
        late_a.replace_range(a_start..a_end, "");
        let at = late_a.find("<serial").unwrap();
        late_a.insert_str(at, &a);
        std::fs::write(dir.path().join("cap1-a.sock"), "not a socket").unwrap();
        let o = hook(&sock, ["cap1", "prepare", "begin"], &late_a);
        assert!(o.failed_one_line().contains("cap1-a.sock"), "{o:?}");
        assert!(ports(&d).is_empty(), "{:#?}", ports(&d));
        assert!(!link_exists("lvtap0"));
        assert_eq!(d.cli(&["--json", "tap", "list"]).json(), serde_json::json!([]));
        std::fs::remove_file(dir.path().join("cap1-a.sock")).unwrap();

        // Calls with nothing to do succeed whatever comes on stdin.
        for (op, sub) in
            [("migrate", "begin"), ("restore", "begin"), ("stopped", "end"), ("attach", "begin"), ("new-op", "x")]
        {
            assert!(hook(&sock, ["cap1", op, sub], "\u{0}garbage").success(), "{op}");
        }
    });
}

/// `cap1` as domain number `n`: own name, UUID, MACs and sockets; vhost-user only.
fn nth_domain(dir: &Path, n: u32, phase: &str) -> String {
    let mut x = phase_xml(phase, dir)
        .replace("cap1", &format!("cap{n}"))
        .replace("6b902e29-56ee-425e-b46a-d98040ae021f", &format!("6b902e29-56ee-425e-b46a-{n:012}"))
        .replace("52:54:00:77:00:", &format!("52:54:00:77:{n:02x}:"));
    // Only the two vhost-user interfaces: the TAP and bridge ones name host devices.
    for kind in ["ethernet", "bridge"] {
        let start = x.find(&format!("<interface type='{kind}'>")).unwrap();
        let end = start + x[start..].find("</interface>").unwrap() + "</interface>".len();
        x.replace_range(start..end, "");
    }
    x
}

#[test]
fn concurrent_hooks_for_different_domains_do_not_race() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let d = setup(dir.path());
        let sock = d.socket.clone();
        const N: u32 = 12;
        let run_all = |phase: &str, op: [&'static str; 2], which: &[u32]| {
            std::thread::scope(|s| {
                let hs: Vec<_> = which
                    .iter()
                    .map(|&n| {
                        let x = nth_domain(dir.path(), n, phase);
                        let sock = sock.clone();
                        s.spawn(move || hook(&sock, [&format!("cap{n}"), op[0], op[1]], &x))
                    })
                    .collect();
                for h in hs {
                    h.join().unwrap().ok();
                }
            })
        };
        let all: Vec<u32> = (1..=N).collect();
        run_all("prepare-begin", ["prepare", "begin"], &all);
        assert_eq!(ports(&d).len(), 2 * N as usize);
        // Releasing the even ones leaves exactly the odd ones.
        let even: Vec<u32> = all.iter().copied().filter(|n| n % 2 == 0).collect();
        run_all("release-end", ["release", "end"], &even);
        let left: Vec<String> =
            ports(&d).iter().map(|p| p["external_ids"]["vm-name"].as_str().unwrap().to_owned()).collect();
        assert_eq!(left.len(), N as usize);
        assert!(left.iter().all(|n| n[3..].parse::<u32>().unwrap() % 2 == 1), "{left:?}");
        let odd: Vec<u32> = all.iter().copied().filter(|n| n % 2 == 1).collect();
        run_all("release-end", ["release", "end"], &odd);
        assert!(ports(&d).is_empty());
    });
}
