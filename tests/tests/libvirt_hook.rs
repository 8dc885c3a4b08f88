//! The hook binary, called as libvirt calls it (`NAME OP SUBOP -`, domain XML on stdin) with
//! the XML libvirt 9.0 really sent at each phase, against a real daemon in a private network
//! namespace. The same flow with libvirtd itself is in `libvirt_e2e.rs`.
#![cfg(feature = "root-tests")]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value;
use vmnetd_tests::*;

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../libvirt-hook/tests/fixtures").join(name);
    read(&p)
}

/// The captured domain with its sockets moved into its socket directory under the test
/// daemon's run dir (`DIR/run/libvirt/cap1/`), the only place the hook accepts them.
fn phase_xml(phase: &str, dir: &Path) -> String {
    fixture(&format!("mixed-{phase}.xml")).replace("/tmp/cap1-", &format!("{}/run/libvirt/cap1/", dir.display()))
}

/// Where the hook's socket of interface `x` ("a" or "b") of cap1 is.
fn sock_path(dir: &Path, x: &str) -> std::path::PathBuf {
    dir.join(format!("run/libvirt/cap1/{x}.sock"))
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
        libvirt_hook(&sock, ["cap1", "prepare", "begin"], &phase_xml("prepare-begin", dir.path())).ok();
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
        let meta = std::fs::metadata(sock_path(dir.path(), "a")).unwrap();
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
        libvirt_hook(&sock, ["cap1", "prepare", "begin"], &phase_xml("prepare-begin", dir.path())).ok();
        assert_eq!(summary(&d), before);
        assert_eq!(std::fs::metadata(sock_path(dir.path(), "a")).unwrap().ino(), meta.ino());

        // start: nothing to do, stdin not even read.
        libvirt_hook(&sock, ["cap1", "start", "begin"], "not xml at all").ok();

        // started: libvirt made vnet3 on lvbr0; the metadata puts it on VLAN 20, which this
        // kernel cannot do (no bridge VLAN filtering): refused, so libvirt stops the domain
        // rather than run it on the wrong VLAN.
        ip("tuntap add vnet3 mode tap");
        // The host-side address libvirt gives the TAP of the guest MAC 52:54:00:77:00:04.
        ip("link set vnet3 address fe:54:00:77:00:04");
        ip("link set vnet3 master lvbr0");
        let o = libvirt_hook(&sock, ["cap1", "started", "begin"], &phase_xml("started-begin", dir.path()));
        let line = o.failed_one_line();
        assert!(line.starts_with("vmnetd: domain cap1: This kernel has no bridge VLAN filtering"), "{line}");
        // Without a VLAN for it, a Linux bridge interface needs nothing from vmnetd.
        let no_vlan =
            phase_xml("started-begin", dir.path()).replace(" bridge=\"lvbr0\" vlan=\"20\"", " bridge=\"lvbr0\"");
        libvirt_hook(&sock, ["cap1", "started", "begin"], &no_vlan).ok();
        assert_eq!(summary(&d), before);

        // reconnect (libvirtd restarted): idempotent, and never fatal for the running VM —
        // the VLAN it cannot set is a warning.
        let o = libvirt_hook(&sock, ["cap1", "reconnect", "begin"], &phase_xml("reconnect-begin", dir.path()));
        assert!(o.success(), "{o:?}");
        assert!(o.stderr.contains("no bridge VLAN filtering"), "{o:?}");
        assert_eq!(summary(&d), before);
        libvirt_hook(&sock, ["cap1", "reconnect", "begin"], &no_vlan.replace("started", "reconnect")).ok();
        assert_eq!(summary(&d), before);

        libvirt_hook(&sock, ["cap1", "stopped", "end"], &phase_xml("stopped-end", dir.path())).ok();
        assert_eq!(summary(&d), before, "stopped changes nothing; release does");

        // release: every port and the TAP made for the domain go; the bridges stay.
        libvirt_hook(&sock, ["cap1", "release", "end"], &phase_xml("release-end", dir.path())).ok();
        assert!(ports(&d).is_empty(), "{:#?}", ports(&d));
        assert!(!link_exists("lvtap0"));
        assert!(!sock_path(dir.path(), "a").exists());
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
        libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x).ok();
        // No release came (libvirtd died); the next start has another VLAN for a.
        let x11 = x.replace(
            "mac=\"52:54:00:77:00:01\" bridge=\"vmnet0\" vlan=\"10\"",
            "mac=\"52:54:00:77:00:01\" bridge=\"vmnet0\" vlan=\"11\"",
        );
        assert_ne!(x, x11);
        libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x11).ok();
        let s = summary(&d);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().any(|p| p.contains("\"vlan\":11")), "{s:?}");
        libvirt_hook(&sock, ["cap1", "release", "end"], &x11).ok();
        assert!(ports(&d).is_empty());

        // A TAP and port the admin declared by hand: used when they match...
        d.cli(&["mktap", "lvtap0"]).ok();
        d.cli(&["port", "add", "vmnet0", "mine", "--netdev", "lvtap0", "--vlan", "10"]).ok();
        libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x).ok();
        assert_eq!(ports(&d).len(), 3);
        // ...kept at release...
        libvirt_hook(&sock, ["cap1", "release", "end"], &x).ok();
        assert_eq!(summary(&d), vec!["vmnet0/mine netdev {\"mode\":\"access\",\"vlan\":10}".to_owned()]);
        assert!(link_exists("lvtap0"));
        // ...and refused, saying why, when the domain wants something else.
        let x30 = x.replace("vlan=\"10\" lock-mac", "vlan=\"30\" lock-mac");
        let o = libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x30);
        let line = o.failed_one_line();
        assert!(
            line.contains("interface lvtap0 is already port mine of bridge vmnet0 (access 10), but the domain wants it on vmnet0 (access 30)"),
            "{line}"
        );
        d.cli(&["port", "del", "vmnet0", "mine"]).ok();
        libvirt_hook(&sock, ["cap1", "release", "end"], &x).ok();
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
        let o = libvirt_hook(&nosock, ["cap1", "prepare", "begin"], &x);
        assert!(o.failed_one_line().starts_with("vmnetd: domain cap1: vmnetd daemon is not running"), "{o:?}");
        // ...one that does not, starts; release never fails.
        let start = x.find("<metadata").unwrap();
        let end = x.find("</metadata>").unwrap() + "</metadata>".len();
        let plain = format!("{}{}", &x[..start], &x[end..]);
        let o = libvirt_hook(&nosock, ["cap1", "prepare", "begin"], &plain);
        assert!(o.success() && o.stderr.is_empty(), "{o:?}");
        let o = libvirt_hook(&nosock, ["cap1", "release", "end"], &x);
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
            let o = libvirt_hook(&sock, ["cap1", "prepare", "begin"], input);
            let line = o.failed_one_line();
            assert!(line.starts_with("vmnetd: domain ") && line.contains(want), "want {want:?}: {line}");
            // Nothing half-done is left behind.
            assert!(ports(&d).is_empty(), "{want}: {:#?}", ports(&d));
            // The same input at release or reconnect is a warning, never a failure.
            for (op, sub) in [("release", "end"), ("reconnect", "begin")] {
                let o = libvirt_hook(&sock, ["cap1", op, sub], input);
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
        std::fs::create_dir_all(sock_path(dir.path(), "a").parent().unwrap()).unwrap();
        std::fs::write(sock_path(dir.path(), "a"), "not a socket").unwrap();
        let o = libvirt_hook(&sock, ["cap1", "prepare", "begin"], &late_a);
        assert!(o.failed_one_line().contains("cap1/a.sock"), "{o:?}");
        assert!(ports(&d).is_empty(), "{:#?}", ports(&d));
        assert!(!link_exists("lvtap0"));
        assert_eq!(d.cli(&["--json", "tap", "list"]).json(), serde_json::json!([]));
        std::fs::remove_file(sock_path(dir.path(), "a")).unwrap();

        // Calls with nothing to do succeed whatever comes on stdin.
        for (op, sub) in [("restore", "begin"), ("stopped", "end"), ("attach", "begin"), ("new-op", "x")] {
            assert!(libvirt_hook(&sock, ["cap1", op, sub], "\u{0}garbage").success(), "{op}");
        }
        // A live migration's destination: `migrate begin` makes the ports from the incoming
        // XML as `prepare` does, and prints nothing (libvirt would take it as new XML); a
        // broken XML aborts the migration.
        let before = ports(&d).len();
        let o = libvirt_hook(&sock, ["cap7", "migrate", "begin"], &nth_domain(dir.path(), 7, "prepare-begin"));
        assert!(o.success() && o.stdout.is_empty(), "{o:?}");
        assert_eq!(ports(&d).len(), before + 2, "{:#?}", ports(&d));
        assert!(!libvirt_hook(&sock, ["cap8", "migrate", "begin"], "\u{0}garbage").success());
        // Once the domain has left (the source's `release`), its ports go.
        libvirt_hook(&sock, ["cap7", "release", "end"], &nth_domain(dir.path(), 7, "release-end")).ok();
        assert_eq!(ports(&d).len(), before);
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
                        s.spawn(move || libvirt_hook(&sock, [&format!("cap{n}"), op[0], op[1]], &x))
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

/// Domain XML is written by whoever defines the domain: paths and device names in it must
/// not make the root hook touch anything outside `RUN_DIR/libvirt/<domain>/`, nor make a
/// host interface a port.
#[test]
fn hostile_domain_xml_touches_nothing_outside_the_domain_directory() {
    require_root().unwrap();
    in_netns(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = test_dir();
        let d = setup(dir.path());
        let sock = d.socket.clone();
        let x = phase_xml("prepare-begin", dir.path());
        let cap1 = dir.path().join("run/libvirt/cap1");
        // A directory the attacker wants chowned to the qemu user, and a file to delete.
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::net::UnixListener::bind(victim.join("keep.sock")).unwrap();
        let untouched = |what: &str| {
            let m = std::fs::metadata(&victim).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, 0, 0o700), "{what}: victim dir changed");
            assert!(victim.join("keep.sock").exists(), "{what}: victim socket removed");
        };
        // 1. A socket path that climbs out of the domain's directory with `..`, and one
        //    elsewhere altogether: refused, one line, nothing made.
        let dotdot = format!("{}/../../../victim/x.sock", cap1.display());
        for path in [dotdot.as_str(), "/tmp/x/x.sock", &format!("{}/sub/x.sock", cap1.display())] {
            let bad = x.replace(&format!("{}/b.sock", cap1.display()), path);
            assert_ne!(bad, x);
            let o = libvirt_hook(&sock, ["cap1", "prepare", "begin"], &bad);
            let line = o.failed_one_line();
            assert!(line.contains("must be a file directly in") && line.contains("/libvirt/cap1/"), "{line}");
            assert!(ports(&d).is_empty(), "{path}");
            untouched(path);
        }
        assert!(!Path::new("/tmp/x").exists());
        // 2. The domain's directory replaced by a symlink to the victim: refused, the victim
        //    is neither chowned nor emptied, at prepare or at release.
        std::fs::create_dir_all(cap1.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &cap1).unwrap();
        let o = libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x);
        assert!(o.failed_one_line().contains("symlink"), "{o:?}");
        untouched("symlinked domain dir");
        let o = libvirt_hook(&sock, ["cap1", "release", "end"], &x);
        assert!(o.success(), "{o:?}");
        untouched("release through a symlink");
        std::fs::remove_file(&cap1).unwrap();
        // 3. RUN_DIR/libvirt itself a symlink: refused the same way.
        let libvirt = cap1.parent().unwrap().to_owned();
        std::fs::remove_dir(&libvirt).unwrap();
        std::os::unix::fs::symlink(&victim, &libvirt).unwrap();
        let o = libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x);
        assert!(o.failed_one_line().contains("symlink"), "{o:?}");
        untouched("symlinked libvirt dir");
        std::fs::remove_file(&libvirt).unwrap();
        // 4. A symlink QEMU (or anyone) left inside the domain's directory: release removes
        //    sockets only, and only in there.
        libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x).ok();
        std::os::unix::fs::symlink(victim.join("keep.sock"), cap1.join("evil.sock")).unwrap();
        libvirt_hook(&sock, ["cap1", "release", "end"], &x).ok();
        untouched("release with a planted symlink");
        assert!(ports(&d).is_empty());

        // 5. <target dev='eth0' managed='no'> on an ethernet interface: eth0 is a host
        //    interface, not a TAP vmnetd declared: refused, eth0 is no port.
        ip("link add eth0 type veth peer name eth0p");
        let eth0 = x.replace("dev='lvtap0'", "dev='eth0'");
        assert_ne!(eth0, x);
        let o = libvirt_hook(&sock, ["cap1", "prepare", "begin"], &eth0);
        let line = o.failed_one_line();
        assert!(line.contains("eth0 exists and is not a TAP declared in vmnetd"), "{line}");
        assert!(ports(&d).is_empty(), "{:#?}", ports(&d));
        // 6. The same for a TAP libvirt makes (<target dev> filled in at started): the
        //    device must be the domain's TAP, not a NIC, not another VM's TAP.
        libvirt_hook(&sock, ["cap1", "prepare", "begin"], &x).ok();
        let n = ports(&d).len();
        let started = phase_xml("started-begin", dir.path());
        assert!(started.contains("<target dev='vnet3'/>"));
        let o = libvirt_hook(
            &sock,
            ["cap1", "started", "begin"],
            &started.replace("<target dev='vnet3'/>", "<target dev='eth0'/>"),
        );
        assert!(o.failed_one_line().contains("eth0 is not a TAP device"), "{o:?}");
        ip("tuntap add vnet9 mode tap");
        ip("link set vnet9 master lvbr0");
        let o = libvirt_hook(
            &sock,
            ["cap1", "started", "begin"],
            &started.replace("<target dev='vnet3'/>", "<target dev='vnet9'/>"),
        );
        assert!(o.failed_one_line().contains("vnet9 is not the TAP libvirt made for the interface with MAC"), "{o:?}");
        assert_eq!(ports(&d).len(), n);
        libvirt_hook(&sock, ["cap1", "release", "end"], &x).ok();
        ip("link del vnet9");
        ip("link del eth0");
    });
}
