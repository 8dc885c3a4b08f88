//! vhost-user ports through the daemon, with the in-process virtio-net driver of the
//! `vmnetd-vhost` crate playing the guests (real QEMU and DPDK frontends are in
//! `vhost_peers.rs`).
#![cfg(feature = "root-tests")]

use std::time::Duration;

use vmnetd_tests::topo::Ns;
use vmnetd_tests::*;
use vmnetd_vhost::driver::{Config, Driver};
use vmnetd_vhost::virtio_net::{features, VnetHdr};

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0x10, n]
}

/// An Ethernet frame of `len` bytes, ethertype 0x88b5, filled with `n`.
fn frame(dst: [u8; 6], src: [u8; 6], len: usize, n: u8) -> Vec<u8> {
    let mut f = vec![n; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn state(d: &Daemon, port: &str) -> serde_json::Value {
    let list = d.cli(&["--json", "port", "list"]).json();
    list.as_array().unwrap().iter().find(|p| p["name"] == port).cloned().unwrap()
}

fn connect(path: &std::path::Path, cfg: &Config) -> Driver {
    connect_vhost(path, cfg, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn guests_exchange_frames_within_a_vlan_and_never_across() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let run = dir.path().join("run");
        for (p, v) in [("va", "10"), ("vb", "10"), ("vc", "20")] {
            d.cli(&["port", "add", "br0", p, "--vhost-user", &format!("{p}.sock"), "--vlan", v]).ok();
        }
        assert_eq!(state_of(&state(&d, "va")), "waiting for frontend");
        let cfg = Config::default();
        let mut a = connect(&run.join("va.sock"), &cfg);
        let mut b = connect(&run.join("vb.sock"), &cfg);
        let mut c = connect(&run.join("vc.sock"), &cfg);
        assert!(wait_until(Duration::from_secs(5), || state_of(&state(&d, "vc")) == "up (1/1 queue pairs)"));
        let info = state(&d, "va")["vhost"].clone();
        assert_eq!(info["connected"], true);
        assert!(info["features"].as_array().unwrap().iter().any(|f| f == "mrg_rxbuf"), "{info}");
        assert_eq!(info["socket"], run.join("va.sock").display().to_string());

        // A broadcast from A reaches B, not C.
        let bc = frame([0xff; 6], mac(1), 60, 1);
        assert_eq!(a.send(0, &VnetHdr::default(), &[&bc]), 1);
        let got = b.recv_n(0, 1, Duration::from_secs(5));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, bc);
        // B answers by unicast (A is learned now); big and small frames alike.
        let sizes = [60usize, 1514, 2000];
        let replies: Vec<Vec<u8>> = sizes.iter().map(|l| frame(mac(1), mac(2), *l, 2)).collect();
        let refs: Vec<&[u8]> = replies.iter().map(|f| f.as_slice()).collect();
        assert_eq!(b.send(0, &VnetHdr::default(), &refs), 3);
        let got = a.recv_n(0, 3, Duration::from_secs(5));
        assert_eq!(got.iter().map(|x| x.1.clone()).collect::<Vec<_>>(), replies);
        std::thread::sleep(Duration::from_millis(200));
        let mut none = Vec::new();
        c.recv(0, &mut none);
        assert!(none.is_empty(), "C on VLAN 20 received {} frame(s)", none.len());
        let fdb = d.cli(&["--json", "fdb", "show", "br0"]).json();
        assert!(fdb.as_array().unwrap().iter().any(|r| r["port"] == "va" && r["vlan"] == 10));
        let st = d.cli(&["--json", "stats", "br0", "vc"]).json();
        assert_eq!(st[0]["counters"]["tx_packets"], 0, "{st}");
    });
}

#[test]
fn bad_descriptors_are_counted_and_the_guest_vanishing_keeps_the_rest() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let run = dir.path().join("run");
        for p in ["va", "vb"] {
            d.cli(&["port", "add", "br0", p, "--vhost-user", &format!("{p}.sock")]).ok();
        }
        let cfg = Config::default();
        let mut a = connect(&run.join("va.sock"), &cfg);
        let mut b = connect(&run.join("vb.sock"), &cfg);
        // Out of guest memory, shorter than the header, device-writable: refused, counted.
        assert!(a.send_raw_desc(0, 0x7fff_0000_0000, 128, 0), "transmit ring full");
        assert!(a.send_raw_desc(0, 0, 4, 0), "transmit ring full");
        assert!(a.send_raw_desc(0, 0, 128, 2), "transmit ring full");
        assert!(wait_until(Duration::from_secs(5), || {
            d.cli(&["--json", "stats", "br0", "va"]).json()[0]["counters"]["drops"]["rx_error"] == 3
        }));
        assert!(wait_until(Duration::from_secs(5), || a.tx_pending(0) == 0), "refused chains are handed back");
        // Traffic still flows.
        let f = frame([0xff; 6], mac(1), 100, 7);
        assert_eq!(a.send(0, &VnetHdr::default(), &[&f]), 1);
        assert_eq!(b.recv_n(0, 1, Duration::from_secs(5))[0].1, f);
        // A vanishes: its port waits; B is unaffected; A comes back.
        drop(a);
        assert!(wait_until(Duration::from_secs(5), || state_of(&state(&d, "va")) == "waiting for frontend"));
        assert_eq!(state_of(&state(&d, "vb")), "up (1/1 queue pairs)");
        let mut a = connect(&run.join("va.sock"), &cfg);
        assert!(wait_until(Duration::from_secs(5), || state_of(&state(&d, "va")) == "up (1/1 queue pairs)"));
        let g = frame([0xff; 6], mac(2), 100, 8);
        assert_eq!(b.send(0, &VnetHdr::default(), &[&g]), 1);
        let got = a.recv_n(0, 1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "{}\n{}", d.cli(&["stats"]).stdout, d.cli(&["port", "list"]).stdout);
        assert_eq!(got[0].1, g);
        assert!(!d.log_text().contains("panicked"));
        // Removing the port closes its socket.
        d.cli(&["port", "del", "br0", "va"]).ok();
        assert!(!run.join("va.sock").exists());
    });
}

#[test]
fn guests_talk_to_namespaces_and_gso_is_cut_for_a_guest_without_tso() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let ns = Ns::new("n");
        ns.veth("vn", "eth0", Some("10.0.0.1/24"));
        d.cli(&["port", "add", "br0", "pn", "--netdev", "vn"]).ok();
        d.cli(&["port", "add", "br0", "g", "--vhost-user", "g.sock"]).ok();
        // A guest that acks neither GUEST_TSO4 nor GUEST_CSUM.
        let cfg = Config {
            features: features::VERSION_1
                | features::MRG_RXBUF
                | features::RING_EVENT_IDX
                | features::PROTOCOL_FEATURES,
            ..Default::default()
        };
        let mut g = connect(&dir.path().join("run/g.sock"), &cfg);
        // The guest asks who has 10.0.0.1; the namespace answers through the bridge.
        let gm = mac(9);
        let mut arp = vec![0xff; 6];
        arp.extend(gm);
        arp.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend(gm);
        arp.extend([10, 0, 0, 2]);
        arp.extend([0; 6]);
        arp.extend([10, 0, 0, 1]);
        arp.resize(60, 0);
        assert_eq!(g.send(0, &VnetHdr::default(), &[&arp]), 1);
        let got = g.recv_n(0, 1, Duration::from_secs(5));
        assert!(!got.is_empty(), "no ARP reply");
        assert_eq!(&got[0].1[12..14], &[0x08, 0x06]);
        assert_eq!(&got[0].1[..6], &gm, "reply addressed to the guest");
        let nsmac: Vec<u8> = ns.mac("eth0").split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();

        // A 5000-byte TCP segment leaves the namespace as one GSO frame; the guest gets
        // MSS-sized frames with correct checksums.
        let payload = 5000usize;
        let mut f = gm.to_vec();
        f.extend(&nsmac);
        f.extend([0x08, 0x00]);
        let tot = (20 + 20 + payload) as u16;
        f.extend([0x45, 0, (tot >> 8) as u8, tot as u8, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let ipc = vmnetd::datapath::offload::csum_fold(vmnetd::datapath::offload::csum_add(0, &f[14..34]));
        f[24..26].copy_from_slice(&ipc.to_be_bytes());
        f.extend([0x13, 0x88, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend((0..payload).map(|i| (i % 253) as u8));
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        ns.exec(bin("rawframe").to_str().unwrap(), &["send-gso", "eth0", "1400", &hex]).ok();
        let segs = g.recv_n(0, 4, Duration::from_secs(5));
        assert_eq!(segs.len(), 4, "5000 bytes at MSS 1400 make 4 frames");
        let mut data = Vec::new();
        for (h, s) in &segs {
            assert_eq!(h.gso_type, 0, "no GSO toward this guest");
            assert_eq!(h.flags, 0, "no partial checksum toward this guest");
            assert!(s.len() <= 14 + 20 + 20 + 1400);
            use vmnetd::datapath::offload::{csum_add, csum_fold};
            assert_eq!(csum_fold(csum_add(0, &s[14..34])), 0, "IPv4 header checksum");
            let l4 = &s[34..];
            let pseudo = csum_add(csum_add(0, &s[26..34]), &[0, 6]).wrapping_add(l4.len() as u32);
            assert_eq!(csum_fold(csum_add(pseudo, l4)), 0, "TCP checksum");
            data.extend_from_slice(&s[54..]);
        }
        assert_eq!(data, &f[54..]);
    });
}

#[test]
fn client_mode_connects_to_a_listening_frontend_and_retries() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let sock = dir.path().join("qemu-a.sock");
        d.cli(&["port", "add", "br0", "ca", "--vhost-user", sock.to_str().unwrap(), "--mode", "client"]).ok();
        d.cli(&["port", "add", "br0", "sb", "--vhost-user", "sb.sock"]).ok();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(state_of(&state(&d, "ca")), "waiting for frontend");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut a = Driver::from_stream(s, &Config::default()).unwrap();
        let mut b = connect(&dir.path().join("run/sb.sock"), &Config::default());
        assert!(wait_until(Duration::from_secs(5), || state_of(&state(&d, "ca")) == "up (1/1 queue pairs)"));
        let f = frame([0xff; 6], mac(3), 80, 3);
        assert_eq!(a.send(0, &VnetHdr::default(), &[&f]), 1);
        assert_eq!(b.recv_n(0, 1, Duration::from_secs(5))[0].1, f);
    });
}

#[test]
fn bad_vhost_port_input_is_refused() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        d.cli(&["bridge", "add", "lbr", "--kind", "linux"]).ok();
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        d.cli(&["port", "add", "br0", "p1", "--vhost-user", "p1.sock"]).ok();
        let long = format!("/tmp/{}", "x".repeat(120));
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec!["--vhost-user".into(), "p1.sock".into()], "is already port p1"),
            (vec!["--vhost-user".into(), dir.path().join("plain").display().to_string()], "is not a socket"),
            (vec!["--vhost-user".into(), long], "longer than a Unix socket address"),
            (vec!["--vhost-user".into(), "q.sock".into(), "--queues".into(), "17".into()], "out of range (1-16)"),
            (vec!["--vhost-user".into(), "q.sock".into(), "--owner".into(), "no-such-user-x".into()], "Unknown user"),
            (
                vec!["--vhost-user".into(), "q.sock".into(), "--owner".into(), "nobody:no-such-group-x".into()],
                "Unknown group",
            ),
            (vec!["--vhost-user".into(), "q.sock".into(), "--mode".into(), "peer".into()], "invalid value 'peer'"),
        ];
        for (extra, want) in cases {
            let mut args = vec!["port".to_string(), "add".into(), "br0".into(), "p2".into()];
            args.extend(extra);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = d.cli(&refs);
            assert!(o.failed_one_line().contains(want), "{args:?}: {}", o.stderr);
        }
        let o = d.cli(&["port", "add", "lbr", "p3", "--vhost-user", "p3.sock"]);
        assert!(o.failed_one_line().contains("vhost-user ports need a built-in bridge"));
        // Owner and mode of a server socket.
        d.cli(&["port", "add", "br0", "p4", "--vhost-user", "own/p4.sock", "--owner", "nobody"]).ok();
        let m = std::fs::metadata(dir.path().join("run/own/p4.sock")).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!((m.uid(), m.permissions().mode() & 0o777), (65534, 0o660));
        // The directory made for it is root's (its owner cannot plant anything in it), and
        // its owner's group may reach the socket.
        let dm = std::fs::metadata(dir.path().join("run/own")).unwrap();
        assert_eq!((dm.uid(), dm.gid(), dm.permissions().mode() & 0o777), (0, 65534, 0o750));
    });
}

#[test]
fn multiqueue_pairs_carry_frames() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        d.cli(&["port", "add", "br0", "mq", "--vhost-user", "mq.sock", "--queues", "2"]).ok();
        d.cli(&["port", "add", "br0", "sq", "--vhost-user", "sq.sock"]).ok();
        let run = dir.path().join("run");
        let mut m = connect(&run.join("mq.sock"), &Config { pairs: 2, ..Default::default() });
        let mut s = connect(&run.join("sq.sock"), &Config::default());
        assert!(wait_until(Duration::from_secs(5), || state_of(&state(&d, "mq")) == "up (2/2 queue pairs)"));
        // Frames sent on the second pair's transmit queue cross too.
        let f = frame([0xff; 6], mac(5), 64, 5);
        assert_eq!(m.send(1, &VnetHdr::default(), &[&f, &f]), 2);
        assert_eq!(s.recv_n(0, 2, Duration::from_secs(5)).len(), 2);
        // And frames toward the multiqueue guest arrive on one of its pairs.
        let g = frame([0xff; 6], mac(6), 64, 6);
        assert_eq!(s.send(0, &VnetHdr::default(), &[&g]), 1);
        let got: usize = (0..50)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                let mut v = Vec::new();
                m.recv(0, &mut v) + m.recv(1, &mut v)
            })
            .sum();
        assert_eq!(got, 1);
        // More queue pairs than the port offers are refused by the frontend's device.
        let o = d.cli(&["--json", "port", "list", "br0"]).json();
        assert_eq!(o[0]["vhost"]["queue_pairs_max"], 2);
    });
}

#[test]
fn bursts_larger_than_rings_arrive_whole_with_and_without_busy_polling() {
    // 0: sleep on kicks at once; 20 ms: poll between bursts, then fall back to kicks.
    for busy_poll_us in [0u32, 20_000] {
        in_netns(|| {
            let dir = test_dir();
            let cfg_file = dir.path().join("vmnetd.toml");
            std::fs::write(&cfg_file, format!("[datapath]\nbusy_poll_us = {busy_poll_us}\n")).unwrap();
            let d = Daemon::start_with(dir.path(), &["--config", cfg_file.to_str().unwrap()]);
            d.cli(&["bridge", "add", "br0"]).ok();
            for p in ["va", "vb"] {
                d.cli(&["port", "add", "br0", p, "--vhost-user", &format!("{p}.sock"), "--vlan", "10"]).ok();
            }
            let run = dir.path().join("run");
            let cfg = Config::default(); // 256-entry rings
            let mut a = connect(&run.join("va.sock"), &cfg);
            let mut b = connect(&run.join("vb.sock"), &cfg);
            assert!(wait_until(Duration::from_secs(5), || state_of(&state(&d, "vb")) == "up (1/1 queue pairs)"));
            // Learn both, then A sends 5000 numbered frames to B, as many at a time as its
            // 256-entry ring takes (more than one burst of the datapath), each batch received
            // in full before the next: no frame may wait for a notification that never comes.
            let vnet = VnetHdr::default();
            b.send(0, &vnet, &[&frame(mac(1), mac(2), 60, 0)]);
            assert_eq!(a.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
            let total = 5000usize;
            let frames: Vec<Vec<u8>> =
                (0..total).map(|i| frame(mac(2), mac(1), 60 + i % 1400, (i % 251) as u8)).collect();
            let (mut sent, mut got) = (0usize, Vec::new());
            while sent < total {
                let chunk: Vec<&[u8]> = frames[sent..(sent + 300).min(total)].iter().map(|f| f.as_slice()).collect();
                let n = a.send(0, &vnet, &chunk);
                assert!(n > 0, "busy_poll_us={busy_poll_us}: A's ring stays full after {sent} frames");
                sent += n;
                let end = std::time::Instant::now() + Duration::from_secs(10);
                while got.len() < sent && std::time::Instant::now() < end {
                    b.recv(0, &mut got);
                }
                assert_eq!(got.len(), sent, "busy_poll_us={busy_poll_us}: {} of {sent} arrived", got.len());
            }
            assert!(got.iter().zip(&frames).all(|(g, f)| &g.1 == f), "busy_poll_us={busy_poll_us}: frames differ");
            let st = d.cli(&["--json", "stats", "br0", "vb"]).json();
            assert_eq!(st[0]["counters"]["tx_packets"], total as u64, "{st}");
            // Quiet: past the polling budget the datapath sleeps; a single frame still gets
            // through (the guest's kick wakes it) and the daemon uses (almost) no CPU.
            std::thread::sleep(Duration::from_millis(300));
            let pid = d.pid().unwrap();
            let t0 = cpu_ticks(pid);
            std::thread::sleep(Duration::from_secs(2));
            let idle = cpu_ticks(pid) - t0;
            assert!(idle < 40, "busy_poll_us={busy_poll_us}: {idle} ticks of CPU in 2 s of quiet: still polling");
            a.send(0, &vnet, &[&frame(mac(2), mac(1), 60, 7)]);
            assert_eq!(b.recv_n(0, 1, Duration::from_secs(5)).len(), 1, "busy_poll_us={busy_poll_us}: woken by kick");
        });
    }
}

/// A migration's switch-over on one socket: the source frontend logs and stops its rings, a
/// second frontend (the destination) takes the port over. Frames that arrive for the guest in
/// between are held by the port and reach the destination's rings first, in order; queues
/// show up in `port list`.
#[test]
fn frames_sent_during_a_switch_over_are_held_and_delivered_to_the_destination() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        for p in ["g", "peer"] {
            d.cli(&["port", "add", "br0", p, "--vhost-user", &format!("{p}.sock"), "--vlan", "10"]).ok();
        }
        let run = dir.path().join("run");
        let cfg = Config::default();
        let mut src = connect(&run.join("g.sock"), &cfg);
        let mut peer = connect(&run.join("peer.sock"), &cfg);
        assert!(wait_until(Duration::from_secs(5), || state_of(&state(&d, "peer")) == "up (1/1 queue pairs)"));
        // G is learned on its port; the queues are visible.
        assert_eq!(src.send(0, &VnetHdr::default(), &[&frame([0xff; 6], mac(1), 60, 1)]), 1);
        assert_eq!(peer.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
        let queues = state(&d, "g")["vhost"]["queues"].clone();
        assert_eq!(queues[1]["name"], "tx0", "{queues}");
        assert_eq!(queues[1]["next_avail"], 1, "{queues}");
        assert_eq!(queues[1]["avail_idx"], 1, "{queues}");

        // The source migrates: logs, then stops its rings.
        let log =
            std::fs::File::from(nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap());
        log.set_len(src.log_bytes()).unwrap();
        src.start_logging(&log).unwrap();
        src.stop_rings().unwrap();
        // The peer keeps sending to G: held, not dropped.
        let sent: Vec<Vec<u8>> = (0..3).map(|n| frame(mac(1), mac(2), 100 + n, 10 + n as u8)).collect();
        let refs: Vec<&[u8]> = sent.iter().map(|f| f.as_slice()).collect();
        assert_eq!(peer.send(0, &VnetHdr::default(), &refs), 3);
        std::thread::sleep(Duration::from_millis(100));
        let c = d.cli(&["--json", "stats", "br0", "g"]).json();
        assert_eq!(c[0]["counters"]["drops"]["no_room"].as_u64().unwrap_or(0), 0, "{c}");

        // The destination connects to the same socket and starts: the held frames come first.
        let mut dst = connect(&run.join("g.sock"), &cfg);
        let got = dst.recv_n(0, 3, Duration::from_secs(5));
        assert_eq!(got.into_iter().map(|x| x.1).collect::<Vec<_>>(), sent);
        // And traffic goes on as usual.
        let more = frame(mac(1), mac(2), 80, 20);
        assert_eq!(peer.send(0, &VnetHdr::default(), &[&more]), 1);
        assert_eq!(dst.recv_n(0, 1, Duration::from_secs(5))[0].1, more);
        drop(src);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(peer.send(0, &VnetHdr::default(), &[&more]), 1);
        assert_eq!(dst.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
        let c = d.cli(&["--json", "stats", "br0", "g"]).json();
        assert_eq!(c[0]["counters"]["tx_packets"], 5, "{c}");
        assert!(!d.log_text().contains("panicked"));
    });
}
