//! The built-in bridge carrying real traffic between network namespaces, a QEMU guest, and
//! captures, checked with ping, tcpdump, tshark and raw AF_PACKET readers.
#![cfg(feature = "root-tests")]

use std::time::Duration;

use vmnetd_tests::guest::{initramfs, Guest};
use vmnetd_tests::topo::{read_pcap, Ns, Tcpdump};
use vmnetd_tests::*;

fn rawframe() -> &'static str {
    env!("CARGO_BIN_EXE_rawframe")
}

fn port_state(d: &Daemon, bridge: &str, port: &str) -> String {
    let list = d.cli(&["--json", "port", "list", bridge]).json();
    list.as_array().unwrap().iter().find(|p| p["name"] == port).map(state_of).unwrap_or_default()
}

#[test]
fn three_namespaces_vlans_isolate_and_fdb_shows_them() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (a, b, c) = (Ns::new("a"), Ns::new("b"), Ns::new("c"));
        // A through a veth netdev port, B and C through internal ports moved into their netns.
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--vlan", "10"]).ok();
        d.cli(&["port", "add", "br0", "pb", "--internal", "--ifname", "ib", "--vlan", "10"]).ok();
        b.adopt("ib", Some("10.0.0.2/24"));
        d.cli(&["port", "add", "br0", "pc", "--internal", "--ifname", "ic", "--vlan", "20"]).ok();
        c.adopt("ic", Some("10.0.0.3/24"));

        let cap = Tcpdump::start(&c, "ic", &dir.path().join("c.pcap"));
        assert!(a.ping("10.0.0.2", 5), "A and B share VLAN 10");
        assert!(b.ping("10.0.0.1", 3));
        assert!(!a.ping("10.0.0.3", 2), "C is on VLAN 20");
        assert!(!b.ping("10.0.0.3", 2));
        assert!(!c.ping("10.0.0.1", 2));
        let seen = {
            let mut cap = cap;
            cap.stop()
        };
        let (mac_a, mac_b, mac_c) = (a.mac("eth0"), b.mac("ib"), c.mac("ic"));
        for line in &seen {
            assert!(!line.contains(&mac_a) && !line.contains(&mac_b), "C received a frame of VLAN 10: {line}");
        }
        assert!(seen.iter().any(|l| l.contains(&mac_c)), "the capture on C saw nothing at all:\n{seen:#?}");

        let fdb = d.cli(&["--json", "fdb", "show", "br0", "--vlan", "20"]).json();
        let rows = fdb.as_array().unwrap();
        assert!(rows.iter().any(|r| r["mac"] == mac_c.as_str() && r["port"] == "pc" && r["vlan"] == 20), "{fdb}");
        assert!(rows.iter().all(|r| r["vlan"] == 20));
        let all = d.cli(&["fdb", "show", "br0"]).ok().to_owned();
        assert!(all.contains(&mac_a) && all.contains(&mac_b) && all.contains(&mac_c), "{all}");
        // Counters: C dropped nothing it should have delivered; its VLAN had no other member.
        let st = d.cli(&["--json", "stats", "br0", "pc"]).json();
        assert!(st[0]["counters"]["drops"]["no_destination"].as_u64().unwrap() > 0, "{st}");
        let st = d.cli(&["--json", "stats", "br0", "pa"]).json();
        assert!(st[0]["counters"]["rx_packets"].as_u64().unwrap() >= 8, "{st}");
        d.cli(&["fdb", "flush", "br0"]).ok();
        assert_eq!(d.cli(&["--json", "fdb", "show", "br0"]).json().as_array().unwrap().len(), 0);
    });
}

#[test]
fn trunk_carries_tagged_vlans_and_native_untagged() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (t, a, c, n) = (Ns::new("t"), Ns::new("a"), Ns::new("c"), Ns::new("n"));
        t.veth("vt", "eth0", Some("10.0.1.9/24"));
        a.veth("va", "eth0", Some("10.0.10.1/24"));
        c.veth("vc", "eth0", Some("10.0.20.1/24"));
        n.veth("vn", "eth0", Some("10.0.1.1/24"));
        d.cli(&["port", "add", "br0", "trunk", "--netdev", "vt", "--trunk", "10,20", "--native", "1"]).ok();
        d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--vlan", "10"]).ok();
        d.cli(&["port", "add", "br0", "pc", "--netdev", "vc", "--vlan", "20"]).ok();
        d.cli(&["port", "add", "br0", "pn", "--netdev", "vn", "--vlan", "1"]).ok();

        // The native VLAN is plain untagged traffic: N and T ping each other.
        assert!(n.ping("10.0.1.9", 3), "native VLAN 1 reaches the trunk untagged");

        // A and C ask for addresses nobody has: their ARP broadcasts cross the trunk tagged.
        let mut cap = Tcpdump::start(&t, "eth0", &dir.path().join("t.pcap"));
        let _ = a.ping("10.0.10.99", 1);
        let _ = c.ping("10.0.20.99", 1);
        let _ = n.ping("10.0.1.99", 1);
        let lines = cap.stop();
        let (ma, mc, mn) = (a.mac("eth0"), c.mac("eth0"), n.mac("eth0"));
        let find =
            |mac: &str| lines.iter().filter(|l| l.contains(mac) && l.contains("ARP")).cloned().collect::<Vec<_>>();
        let la = find(&ma);
        assert!(!la.is_empty() && la.iter().all(|l| l.contains("vlan 10")), "A's frames on the trunk: {la:#?}");
        let lc = find(&mc);
        assert!(!lc.is_empty() && lc.iter().all(|l| l.contains("vlan 20")), "C's frames on the trunk: {lc:#?}");
        let ln = find(&mn);
        assert!(!ln.is_empty() && ln.iter().all(|l| !l.contains("vlan")), "native frames must be untagged: {ln:#?}");
        // tshark reads the same capture and sees the 802.1Q headers.
        let ts =
            run("tshark", ["-r", cap.file.to_str().unwrap(), "-Y", "vlan.id == 10", "-T", "fields", "-e", "eth.src"]);
        assert!(ts.ok().contains(&ma), "tshark: {}", ts.stdout);

        // The other way: a frame tagged 10 sent into the trunk reaches A untagged, one tagged
        // 30 (not carried) reaches nobody and is counted.
        let recv_a = a.spawn(rawframe(), &["recv", "eth0", "3"]);
        let recv_c = c.spawn(rawframe(), &["recv", "eth0", "3"]);
        std::thread::sleep(Duration::from_millis(500));
        let src = "020000000009";
        let tagged10 = format!("ffffffffffff{src}8100000a88b5{}", "00".repeat(46));
        let tagged30 = format!("ffffffffffff{src}8100001e88b5{}", "00".repeat(46));
        t.exec(rawframe(), &["send", "eth0", &tagged10, &tagged30]).ok();
        let got_a = String::from_utf8_lossy(&recv_a.wait_with_output().unwrap().stdout).into_owned();
        let got_c = String::from_utf8_lossy(&recv_c.wait_with_output().unwrap().stdout).into_owned();
        assert!(got_a.contains("vlan=none src=02:00:00:00:00:09"), "A: {got_a}");
        assert!(!got_c.contains("02:00:00:00:00:09"), "C: {got_c}");
        let st = d.cli(&["--json", "stats", "br0", "trunk"]).json();
        assert_eq!(st[0]["counters"]["drops"]["vlan_not_allowed"], 1, "{st}");
    });
}

/// A broadcast frame of ethertype 0x88b5 (local experimental) from `src` (12 hex digits).
fn bcast(src: &str, fill: &str) -> String {
    format!("ffffffffffff{src}88b5{}", fill.repeat(46))
}

#[test]
fn capture_writes_pcap_that_tcpdump_and_tshark_read() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        a.veth("va", "eth0", None);
        b.veth("vb", "eth0", None);
        d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--vlan", "5"]).ok();
        d.cli(&["port", "add", "br0", "pb", "--netdev", "vb", "--trunk", "5"]).ok();
        let file = dir.path().join("pb.pcap");
        let mut cap = std::process::Command::new(bin("vmnetd"))
            .args(["capture", "br0", "pb", "-c", "6", "-w", file.to_str().unwrap()])
            .env("VMNETD_SOCKET", &d.socket)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Three frames from A leave on the trunk tagged 5; three untagged ones B sends are
        // captured as received (and dropped: the trunk has no native VLAN).
        let (fa, fb) = (bcast("02000000000a", "aa"), bcast("02000000000b", "bb"));
        a.exec(rawframe(), &["send", "eth0", &fa, &fa, &fa]).ok();
        b.exec(rawframe(), &["send", "eth0", &fb, &fb, &fb]).ok();
        assert!(wait_child(&mut cap, Duration::from_secs(20)).success());
        let lines = read_pcap(&file);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        let from_a: Vec<_> = lines.iter().filter(|l| l.contains("02:00:00:00:00:0a >")).collect();
        let from_b: Vec<_> = lines.iter().filter(|l| l.contains("02:00:00:00:00:0b >")).collect();
        assert_eq!((from_a.len(), from_b.len()), (3, 3), "{lines:#?}");
        assert!(from_a.iter().all(|l| l.contains("vlan 5")), "{lines:#?}");
        assert!(from_b.iter().all(|l| !l.contains("vlan")), "{lines:#?}");
        let ts = run("tshark", ["-r", file.to_str().unwrap(), "-T", "fields", "-e", "eth.src", "-e", "vlan.id"]);
        let tagged_a = ts.ok().lines().filter(|l| l.starts_with("02:00:00:00:00:0a") && l.ends_with("\t5")).count();
        assert_eq!(tagged_a, 3, "tshark: {}", ts.stdout);
        let st = d.cli(&["--json", "stats", "br0", "pb"]).json();
        assert_eq!(st[0]["counters"]["drops"]["untagged_on_trunk"], 3, "{st}");

        // Without -w: one line per frame.
        let mut txt = std::process::Command::new(bin("vmnetd"))
            .args(["capture", "br0", "pa", "-c", "2"])
            .env("VMNETD_SOCKET", &d.socket)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        a.exec(rawframe(), &["send", "eth0", &fa, &fa]).ok();
        assert!(wait_child(&mut txt, Duration::from_secs(20)).success());
        let mut out = String::new();
        std::io::Read::read_to_string(&mut txt.stdout.take().unwrap(), &mut out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            out.lines().all(|l| l.contains(" rx 02:00:00:00:00:0a > ff:ff:ff:ff:ff:ff") && l.contains("0x88b5")),
            "{out}"
        );
        // A capture on a port that does not exist is refused in one line.
        assert!(d.cli(&["capture", "br0", "nope", "-c", "1"]).failed_one_line().contains("has no port nope"));
    });
}

#[test]
fn removing_ports_or_stopping_the_daemon_keeps_the_rest() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (a, b, c) = (Ns::new("a"), Ns::new("b"), Ns::new("c"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        c.veth("vc", "eth0", Some("10.0.0.3/24"));
        d.cli(&["port", "add", "br0", "pa", "--netdev", "va"]).ok();
        d.cli(&["port", "add", "br0", "pb", "--netdev", "vb"]).ok();
        assert!(a.ping("10.0.0.2", 2));
        // A steady ping A->B while port C and an internal port come and go.
        let pinger = a.spawn("ping", &["-q", "-c", "60", "-i", "0.05", "-W", "1", "10.0.0.2"]);
        for i in 0..5 {
            d.cli(&["port", "add", "br0", "pc", "--netdev", "vc"]).ok();
            d.cli(&["port", "add", "br0", "pi", "--internal", "--ifname", &format!("vi{i}")]).ok();
            d.cli(&["port", "del", "br0", "pc"]).ok();
            d.cli(&["port", "del", "br0", "pi"]).ok();
            assert!(!link_exists(&format!("vi{i}")), "port del removes the internal port's TAP");
        }
        let out = pinger.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("60 received"), "frames were lost while other ports changed: {text}");

        // An internal port moved into a namespace is still removed with its port.
        d.cli(&["port", "add", "br0", "pm", "--internal", "--ifname", "vm0"]).ok();
        c.adopt("vm0", None);
        d.cli(&["port", "del", "br0", "pm"]).ok();
        assert!(wait_until(Duration::from_secs(5), || !c.exec("ip", &["link", "show", "vm0"]).success()));

        // Stopping the daemon leaves every kernel device in place.
        d.cli(&["port", "add", "br0", "pi", "--internal", "--ifname", "vi"]).ok();
        assert_eq!(d.stop(), Some(0));
        for dev in ["va", "vb", "vc", "vi"] {
            assert!(link_exists(dev), "{dev} was torn down with the daemon");
        }
        assert!(link_details("vi").contains("persist on"));
        // And the next start picks everything up again.
        d.restart();
        assert!(wait_until(Duration::from_secs(10), || a.ping("10.0.0.2", 1)));
        assert_eq!(port_state(&d, "br0", "pi"), "up");
    });
}

#[test]
fn ports_persist_and_reattach_when_their_interface_returns() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br1", "--ageing", "60", "--max-macs", "100"]).ok();
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        d.cli(&["port", "add", "br1", "pa", "--netdev", "va", "--vlan", "7", "--mac", &a.mac("eth0")]).ok();
        d.cli(&["port", "add", "br1", "pb", "--netdev", "vb", "--vlan", "7"]).ok();
        assert!(a.ping("10.0.0.2", 2));
        d.kill();
        d.restart();
        let br = d.cli(&["--json", "bridge", "list"]).json();
        assert_eq!(
            (br[0]["name"].as_str(), br[0]["ageing"].as_u64(), br[0]["max_macs"].as_u64()),
            (Some("br1"), Some(60), Some(100))
        );
        let ports = d.cli(&["--json", "port", "list"]).json();
        assert_eq!(ports.as_array().unwrap().len(), 2);
        assert_eq!(ports[0]["vlan"]["vlan"], 7);
        assert!(a.ping("10.0.0.2", 2), "traffic flows after a restart");
        // The declared MAC is a static entry.
        let fdb = d.cli(&["--json", "fdb", "show", "br1"]).json();
        assert!(fdb.as_array().unwrap().iter().any(|r| r["static"] == true && r["port"] == "pa"), "{fdb}");

        // The veth of B disappears: the port waits; a new one with the same name comes back.
        ip("link del vb");
        assert!(
            wait_until(Duration::from_secs(10), || port_state(&d, "br1", "pb") != "up"),
            "{}",
            port_state(&d, "br1", "pb")
        );
        b.veth("vb", "eth1", Some("10.0.0.2/24"));
        assert!(wait_until(Duration::from_secs(10), || port_state(&d, "br1", "pb") == "up"));
        // B has a new MAC now; A must forget the old one.
        a.ip("neigh flush all");
        assert!(wait_until(Duration::from_secs(10), || a.ping("10.0.0.2", 1)), "port re-attached");
    });
}

#[test]
fn bad_bridge_and_port_input_is_refused_in_one_line() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        ip("link add vx type veth peer name vy");
        ip("link add kbr type bridge");
        ip("link add vz type veth peer name vw");
        ip("link set vz master kbr");
        d.cli(&["port", "add", "br0", "px", "--netdev", "vx"]).ok();
        let state = std::fs::read_to_string(Daemon::state_dir(dir.path()).join("state.json")).unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["port", "add", "nobr", "p", "--netdev", "vy"], "No bridge nobr"),
            (&["port", "add", "br0", "p", "--netdev", "nosuch0"], "No interface nosuch0"),
            (&["port", "add", "br0", "p", "--netdev", "lo"], "loopback"),
            (&["port", "add", "br0", "p", "--netdev", "vz"], "already a port of kernel device kbr"),
            (&["port", "add", "br0", "p2", "--netdev", "vx"], "vx is already port px of bridge br0"),
            (&["port", "add", "br0", "px", "--netdev", "vy"], "already has a port px"),
            (&["port", "add", "br0", "p", "--internal", "--ifname", "vy"], "vy exists already"),
            (&["port", "add", "br0", "p", "--netdev", "vy", "--vlan", "4095"], "VLAN id 4095 is out of range"),
            (&["port", "add", "br0", "p", "--netdev", "vy", "--vlan", "0"], "out of range"),
            (&["port", "add", "br0", "p", "--netdev", "vy", "--trunk", "10-5"], "descending"),
            (&["port", "add", "br0", "p", "--netdev", "vy", "--native", "3"], "--trunk"),
            (&["port", "add", "br0", "p", "--netdev", "vy", "--lock-mac"], "--mac"),
            (&["port", "add", "br0", "p", "--netdev", "vy", "--mac", "01:00:5e:00:00:01"], "not a unicast"),
            (&["port", "add", "br0", "p"], "required"),
            (&["port", "del", "br0", "nope"], "has no port nope"),
            (&["bridge", "add", "br0", "--max-macs", "5"], "already exists with other settings"),
            (&["bridge", "add", "bad/name"], "contains '/'"),
            (&["bridge", "del", "br0"], "has 1 port(s); remove them first or add --force"),
            (&["bridge", "del", "nobr"], "No bridge nobr"),
            (&["fdb", "show", "nobr"], "No bridge nobr"),
            (&["stats", "br0", "nope"], "has no port nope"),
        ];
        for (args, want) in cases {
            let o = d.cli(args);
            let line = o.failed_one_line();
            assert!(line.contains(want), "{args:?}: {line:?} lacks {want:?}");
        }
        assert_eq!(std::fs::read_to_string(Daemon::state_dir(dir.path()).join("state.json")).unwrap(), state);
        assert_eq!(port_state(&d, "br0", "px"), "up");
        d.cli(&["bridge", "del", "br0", "--force"]).ok();
        assert!(link_exists("vx"), "a netdev port's interface is not vmnetd's to delete");
    });
}

#[test]
fn large_segments_cross_internal_and_veth_ports_whole() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        d.cli(&["port", "add", "br0", "pa", "--internal", "--ifname", "ia"]).ok();
        a.adopt("ia", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        d.cli(&["port", "add", "br0", "pb", "--netdev", "vb"]).ok();
        let mut server = b.spawn("iperf3", &["-s", "-1", "-B", "10.0.0.2"]);
        std::thread::sleep(Duration::from_millis(500));
        let file = dir.path().join("pa.pcap");
        let mut cap = std::process::Command::new(bin("vmnetd"))
            .args(["capture", "br0", "pa", "-c", "200", "-w", file.to_str().unwrap()])
            .env("VMNETD_SOCKET", &d.socket)
            .spawn()
            .unwrap();
        let client = a.exec("iperf3", &["-c", "10.0.0.2", "-t", "2", "-J"]);
        let _ = server.kill();
        let _ = server.wait();
        assert!(client.success(), "iperf3 through the bridge failed: {}{}", client.stdout, client.stderr);
        let _ = wait_child(&mut cap, Duration::from_secs(30));
        let lines = read_pcap(&file);
        let biggest = lines
            .iter()
            .filter_map(|l| l.split("length ").nth(1)?.split(':').next()?.trim().parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        assert!(biggest > 1514, "TCP segments were cut to MTU size on the internal port (largest frame {biggest})");
        let bps = serde_json::from_str::<serde_json::Value>(&client.stdout).unwrap()["end"]["sum_received"]
            ["bits_per_second"]
            .as_f64()
            .unwrap();
        eprintln!("TCP through the built-in bridge: {:.2} Gbit/s, largest frame {biggest} bytes", bps / 1e9);
    });
}

#[test]
fn qemu_guest_on_a_tap_owned_by_nobody_pings_a_namespace() {
    // Fetch the guest kernel before entering a namespace without a route to the mirror.
    vmnetd_tests::guest::guest_dir();
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        d.cli(&["mktap", "gtap0", "--user", "nobody", "--vnet-hdr"]).ok();
        d.cli(&["port", "add", "br0", "guest", "--netdev", "gtap0", "--vlan", "10"]).ok();
        let a = Ns::new("a");
        a.veth("va", "eth0", Some("10.0.10.1/24"));
        d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--vlan", "10"]).ok();
        let initrd = initramfs(
            dir.path(),
            "g1",
            "ip link set eth0 up\nip addr add 10.0.10.2/24 dev eth0\nping -c 3 -W 5 10.0.10.1 && echo PING-OK || echo PING-FAIL\n",
        );
        let args: Vec<String> = [
            "-netdev",
            "tap,id=n0,ifname=gtap0,script=no,downscript=no,vhost=off,vnet_hdr=on",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:10:02",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // QEMU runs as the TAP's owner, with no privileges.
        let mut g = Guest::boot("g1", &initrd, &args, Some(65534));
        let out = g.wait_done(Duration::from_secs(120));
        assert!(out.contains("PING-OK"), "guest could not ping the namespace:\n{out}");
        let fdb = d.cli(&["fdb", "show", "br0"]).ok().to_owned();
        assert!(fdb.contains("52:54:00:00:10:02") && fdb.contains("guest"), "{fdb}");
    });
}

/// Each netdev I/O (`--io tpacket`, the default's choice, and `--io mmsg`) carries the same
/// traffic: a VLAN tag the kernel moved into the skb comes back on a trunk, jumbo frames fit
/// the ring's slots (sized from the MTU at attach), and TCP's 64 KiB GSO frames, longer than
/// any slot, cross whole (the ring's copy path in, its send-only socket out). `port list`
/// shows the mode; a Linux bridge refuses `--io`.
#[test]
fn netdev_io_modes_carry_tags_jumbo_frames_and_gso_whole() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (a, b, t) = (Ns::new("a"), Ns::new("b"), Ns::new("t"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        t.veth("vt", "eth0", None);
        for (ns, outer) in [(&a, "va"), (&b, "vb"), (&t, "vt")] {
            ip(&format!("link set {outer} mtu 9000"));
            ns.ip("link set eth0 mtu 9000");
        }
        let mut server = b.spawn("iperf3", &["-s", "-B", "10.0.0.2"]);
        for io in ["tpacket", "mmsg"] {
            d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--io", io, "--vlan", "10"]).ok();
            d.cli(&["port", "add", "br0", "pb", "--netdev", "vb", "--io", io, "--vlan", "10"]).ok();
            d.cli(&["port", "add", "br0", "pt", "--netdev", "vt", "--io", io, "--trunk", "10"]).ok();
            let list = d.cli(&["--json", "port", "list", "br0"]).json();
            for p in list.as_array().unwrap() {
                assert_eq!(p["io"], io, "{p}");
            }
            assert!(d.cli(&["port", "list"]).ok().contains(&format!("va ({io})")));

            assert!(a.ping("10.0.0.2", 3), "{io}: ping");
            let jumbo = a.exec("ping", &["-c", "2", "-W", "2", "-s", "8900", "-M", "do", "10.0.0.2"]);
            assert!(jumbo.success(), "{io}: 8928-byte frames: {}", jumbo.stdout);

            // A frame tagged 10 from the trunk (veth moves the tag into the skb: it comes back
            // from the ring's slot header or PACKET_AUXDATA) reaches A untagged.
            let recv_a = a.spawn(env!("CARGO_BIN_EXE_rawframe"), &["recv", "eth0", "3"]);
            std::thread::sleep(Duration::from_millis(500));
            let tagged = format!("ffffffffffff0200000000098100000a88b5{}", "00".repeat(46));
            t.exec(env!("CARGO_BIN_EXE_rawframe"), &["send", "eth0", &tagged]).ok();
            let got = String::from_utf8_lossy(&recv_a.wait_with_output().unwrap().stdout).into_owned();
            assert!(got.contains("vlan=none src=02:00:00:00:00:09"), "{io}: A got {got}");

            let before = d.cli(&["--json", "stats", "br0", "pa"]).json();
            let client = a.exec("iperf3", &["-c", "10.0.0.2", "-t", "1", "-J"]);
            assert!(client.success(), "{io}: iperf3: {}{}", client.stdout, client.stderr);
            let after = d.cli(&["--json", "stats", "br0", "pa"]).json();
            let delta =
                |k: &str| after[0]["counters"][k].as_u64().unwrap() - before[0]["counters"][k].as_u64().unwrap();
            let (frames, bytes) = (delta("rx_packets"), delta("rx_bytes"));
            // Segments of up to 64 KiB crossed whole: far more than a slot per frame.
            assert!(frames > 0 && bytes / frames > 16384, "{io}: {frames} frames, {bytes} bytes");
            let st = d.cli(&["--json", "stats", "br0"]).json();
            for p in st.as_array().unwrap() {
                let drops = &p["counters"]["drops"];
                assert!(drops.get("rx_error").is_none() && drops.get("tx_error").is_none(), "{io}: {p}");
            }
            for p in ["pa", "pb", "pt"] {
                d.cli(&["port", "del", "br0", p]).ok();
            }
        }
        let _ = server.kill();
        let _ = server.wait();

        d.cli(&["bridge", "add", "lbr", "--kind", "linux"]).ok();
        let o = d.cli(&["port", "add", "lbr", "p", "--netdev", "va", "--io", "tpacket"]);
        assert!(!o.success() && o.stderr.contains("--io tpacket"), "{}", o.stderr);
    });
}

/// `--io xdp`: an XDP program on each veth redirects frames into an AF_XDP socket (copy mode:
/// veth has no zero-copy, and the daemon falls back to it by itself). Pings and a tagged
/// frame from a trunk cross; TCP works although the peers' stacks offload their checksums
/// (XDP hands over bytes only: vmnetd recognises the pseudo-header seed and passes the frame
/// on as partial) and no frame is dropped as bad. `port list` shows the mode; the program is
/// on the interface while the port exists and gone when it is deleted, and when the daemon
/// is killed (the BPF link dies with it). An MTU whose frames do not fit a page is refused
/// with the reason.
#[test]
fn netdev_xdp_mode_carries_frames_and_leaves_no_program_behind() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (a, b, t) = (Ns::new("a"), Ns::new("b"), Ns::new("t"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        t.veth("vt", "eth0", None);
        let has_prog = |dev: &str| ip(&format!("link show {dev}")).contains("prog/xdp");
        let add = |d: &Daemon| {
            d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--io", "xdp", "--vlan", "10"]).ok();
            d.cli(&["port", "add", "br0", "pb", "--netdev", "vb", "--io", "xdp", "--vlan", "10"]).ok();
            d.cli(&["port", "add", "br0", "pt", "--netdev", "vt", "--io", "xdp", "--trunk", "10"]).ok();
        };
        add(&d);
        let list = d.cli(&["--json", "port", "list", "br0"]).json();
        for p in list.as_array().unwrap() {
            assert_eq!(p["io"], "xdp copy", "{p}");
        }
        assert!(d.cli(&["port", "list"]).ok().contains("va (xdp copy)"));
        assert!(has_prog("va") && has_prog("vb") && has_prog("vt"), "{}", ip("link show"));

        assert!(a.ping("10.0.0.2", 3), "ping through xdp ports");
        // A frame tagged 10 from the trunk (the tag is in the frame XDP sees) reaches A
        // untagged.
        let recv_a = a.spawn(env!("CARGO_BIN_EXE_rawframe"), &["recv", "eth0", "3"]);
        std::thread::sleep(Duration::from_millis(500));
        let tagged = format!("ffffffffffff0200000000098100000a88b5{}", "00".repeat(46));
        t.exec(env!("CARGO_BIN_EXE_rawframe"), &["send", "eth0", &tagged]).ok();
        let got = String::from_utf8_lossy(&recv_a.wait_with_output().unwrap().stdout).into_owned();
        assert!(got.contains("vlan=none src=02:00:00:00:00:09"), "A got {got}");
        // A tag the sending kernel keeps in the skb, not in the bytes (as a VLAN device on a
        // NIC with transmit VLAN offload does): XDP does not see it, so the program asks the
        // device and passes the frame to the socket, which reads the tag. T's ARP request,
        // tagged 10 that way, reaches A on VLAN 10.
        t.ip("link set eth0 address 02:00:00:00:00:0c");
        t.ip("addr add 10.0.0.3/24 dev eth0");
        let recv_a = a.spawn(env!("CARGO_BIN_EXE_rawframe"), &["recv", "eth0", "3"]);
        let mut tagger = t.spawn(env!("CARGO_BIN_EXE_rawframe"), &["hwtag", "eth0", "10", "5"]);
        std::thread::sleep(Duration::from_millis(700));
        let _ = t.exec("ping", &["-c", "2", "-i", "0.3", "-W", "1", "10.0.0.1"]);
        let got = String::from_utf8_lossy(&recv_a.wait_with_output().unwrap().stdout).into_owned();
        let _ = tagger.kill();
        let _ = tagger.wait();
        assert!(got.contains("vlan=none src=02:00:00:00:00:0c") && got.contains("type=0x0806"), "A got {got}");
        assert!(!d.log_text().contains("cannot see VLAN tags"), "this kernel has the VLAN-tag kfunc");

        // The server must be listening before the client connects (iperf3 -J exits 0 on
        // "connection refused").
        let mut server = b.spawn("iperf3", &["-s", "-1", "-B", "10.0.0.2"]);
        assert!(
            wait_until(Duration::from_secs(10), || b.exec("ss", &["-Hltn", "sport = :5201"]).stdout.contains("5201")),
            "iperf3 server not listening"
        );
        let client = a.exec("iperf3", &["-c", "10.0.0.2", "-t", "1", "-J"]);
        let _ = server.kill();
        let _ = server.wait();
        assert!(client.success(), "iperf3: {}{}", client.stdout, client.stderr);
        let sent = serde_json::from_str::<serde_json::Value>(&client.stdout).unwrap()["end"]["sum_received"]["bytes"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            sent > 1 << 20,
            "TCP moved only {sent} bytes:\n{}\n{}\n{}",
            client.stdout,
            d.cli(&["--json", "stats", "br0"]).stdout,
            d.log_text().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        let st = d.cli(&["--json", "stats", "br0"]).json();
        for p in st.as_array().unwrap() {
            let drops = &p["counters"]["drops"];
            assert!(drops.get("rx_error").is_none() && drops.get("tx_error").is_none(), "{p}");
            assert!(p["counters"]["rx_packets"].as_u64().unwrap() > 0, "{p}");
        }

        // A link flap takes the port down; the edge re-attached in its place gets the queue
        // and the program (the old one let go of them when it failed).
        ip("link set va down");
        std::thread::sleep(Duration::from_millis(500));
        ip("link set va up");
        assert!(
            wait_until(Duration::from_secs(20), || a.ping("10.0.0.2", 1)),
            "no ping after a link flap:\n{}\n{}",
            d.cli(&["port", "list"]).stdout,
            d.log_text().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        assert!(d.cli(&["port", "list"]).ok().contains("va (xdp copy)"));
        assert!(has_prog("va"));

        // Deleting a port takes its program off; killing the daemon takes the others off.
        d.cli(&["port", "del", "br0", "pt"]).ok();
        assert!(!has_prog("vt"), "{}", ip("link show vt"));
        d.kill();
        assert!(wait_until(Duration::from_secs(5), || !has_prog("va") && !has_prog("vb")), "{}", ip("link show"));

        // Back up, the daemon restores the ports in xdp mode; then an MTU past a page is
        // refused with the reason.
        d.restart();
        assert!(wait_until(Duration::from_secs(10), || has_prog("va") && has_prog("vb")), "{}", ip("link show"));
        assert!(a.ping("10.0.0.2", 3), "ping after the restart");
        ip("link set vt mtu 9000");
        let o = d.cli(&["port", "add", "br0", "pt", "--netdev", "vt", "--io", "xdp"]);
        let why = format!("{}{}", o.stderr, d.cli(&["port", "list"]).stdout);
        assert!(why.contains("AF_XDP"), "{why}");
    });
}
