//! Hostile peers against the real daemon: a guest sending malformed offload requests, a
//! frontend handing over fds that are not eventfds or draining its own kicks, shrinking its
//! memory file, planting huge indirect tables, spinning its available index, or listening
//! with a full backlog. After each, two other guests on the same bridge still exchange
//! frames and `vmnetd status` answers within a second; the daemon never panics.
#![cfg(feature = "root-tests")]

use std::path::Path;
use std::time::{Duration, Instant};

use vhost::VhostBackend;
use vmnetd_tests::*;
use vmnetd_vhost::driver::{Config, Driver};
use vmnetd_vhost::virtio_net::{features, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0x20, n]
}

fn frame(dst: [u8; 6], src: [u8; 6], len: usize, n: u8) -> Vec<u8> {
    let mut f = vec![n; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn connect(path: &Path, cfg: &Config) -> Driver {
    connect_vhost(path, cfg, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"))
}

fn port(d: &Daemon, name: &str) -> serde_json::Value {
    let list = d.cli(&["--json", "port", "list"]).json();
    list.as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap()
}

fn drops(d: &Daemon, name: &str) -> serde_json::Value {
    d.cli(&["--json", "stats", "br0", name]).json()[0]["counters"]["drops"].clone()
}

/// A daemon with a bridge and two well-behaved guests, `ok1` and `ok2`, on VLAN 10; hostile
/// ports are added by each test.
struct Rig {
    d: Daemon,
    run: std::path::PathBuf,
    ok1: Driver,
    ok2: Driver,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(env: &[(&str, &str)]) -> Rig {
        let dir = test_dir();
        let d = Daemon::start_env(dir.path(), &[], env);
        d.cli(&["bridge", "add", "br0"]).ok();
        for p in ["ok1", "ok2"] {
            d.cli(&["port", "add", "br0", p, "--vhost-user", &format!("{p}.sock"), "--vlan", "10"]).ok();
        }
        let run = dir.path().join("run");
        let ok1 = connect(&run.join("ok1.sock"), &Config::default());
        let ok2 = connect(&run.join("ok2.sock"), &Config::default());
        assert!(wait_until(Duration::from_secs(5), || state_of(&port(&d, "ok2")) == "up (1/1 queue pairs)"));
        Rig { d, run, ok1, ok2, _dir: dir }
    }

    fn add(&self, name: &str, extra: &[&str]) {
        let sock = format!("{name}.sock");
        let mut args = vec!["port", "add", "br0", name, "--vhost-user", &sock];
        args.extend_from_slice(extra);
        self.d.cli(&args).ok();
    }

    /// The two good guests still talk (both ways, a few frames), and `status` answers
    /// within a second, and the daemon did not panic.
    #[track_caller]
    fn healthy(&mut self, after: &str) {
        let t = Instant::now();
        let o = self.d.cli(&["status"]);
        assert!(o.success(), "{after}: status failed: {o:?}\n{}", self.d.log_text());
        assert!(t.elapsed() < Duration::from_secs(1), "{after}: status took {:?}", t.elapsed());
        for (from, to, n) in [(1u8, 2u8, 11u8), (2, 1, 12)] {
            let f = frame(mac(to), mac(from), 200, n);
            let (tx, rx) = if from == 1 { (&mut self.ok1, &mut self.ok2) } else { (&mut self.ok2, &mut self.ok1) };
            assert_eq!(tx.send(0, &VnetHdr::default(), &[&f, &f, &f]), 3, "{after}");
            // Other frames (floods from the hostile port's tests) may be there too.
            let mut seen = 0;
            let end = Instant::now() + Duration::from_secs(5);
            while seen < 3 && Instant::now() < end {
                let mut got = Vec::new();
                rx.recv(0, &mut got);
                seen += got.iter().filter(|g| g.1 == f).count();
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(seen, 3, "{after}: ok{from} -> ok{to}\n{}", self.d.cli(&["stats"]).stdout);
        }
        assert!(self.d.is_running(), "{after}: the daemon died\n{}", self.d.log_text());
        assert!(!self.d.log_text().contains("panicked"), "{after}: a panic in the log");
    }
}

/// A TCP/IPv4 frame from `src` to `dst` with `payload` bytes and TCP data offset `doff`.
fn tcp4(dst: [u8; 6], src: [u8; 6], payload: usize, doff: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(dst);
    f.extend(src);
    f.extend([0x08, 0x00]);
    let tot = (20 + 20 + payload) as u16;
    f.extend([0x45, 0, (tot >> 8) as u8, tot as u8, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend([0x13, 0x88, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 0, doff << 4, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| i as u8));
    f
}

fn tso(mss: u16, hdr_len: u16) -> VnetHdr {
    VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len, gso_size: mss, csum_start: 34, csum_offset: 16 }
}

/// The frames of the report (TSO toward a guest that takes no TSO: software segmentation)
/// and their relatives: each is dropped and counted as `bad_gso` on the sender's port; a
/// good TSO frame sent after them is cut into valid segments.
#[test]
fn malformed_gso_frames_are_dropped_and_counted() {
    require_root().unwrap();
    in_netns(|| {
        let mut rig = Rig::new(&[]);
        rig.add("bad", &["--vlan", "10"]);
        rig.add("sink", &["--vlan", "10"]);
        let tso_cfg = Config {
            features: Config::default().features | features::HOST_TSO4 | features::CSUM,
            buf_len: 8192,
            ..Default::default()
        };
        let mut bad = connect(&rig.run.join("bad.sock"), &tso_cfg);
        // The sink takes neither TSO nor checksum offload: frames must be cut for it.
        let sink_cfg = Config { features: Config::default().features & !features::GUEST_CSUM, ..Default::default() };
        let mut sink = connect(&rig.run.join("sink.sock"), &sink_cfg);
        assert!(wait_until(Duration::from_secs(5), || state_of(&port(&rig.d, "sink")) == "up (1/1 queue pairs)"));
        // The sink's address is learned, so every frame goes to it alone.
        sink.send(0, &VnetHdr::default(), &[&frame([0xff; 6], mac(9), 60, 0)]);
        assert_eq!(bad.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
        let cases: Vec<(&str, Vec<u8>, VnetHdr)> = vec![
            ("data offset 0", tcp4(mac(9), mac(8), 3000, 0), tso(1448, 54)),
            ("data offset 1", tcp4(mac(9), mac(8), 3000, 1), tso(1448, 54)),
            ("data offset 15 past the frame", tcp4(mac(9), mac(8), 20, 15)[..70].to_vec(), tso(1448, 54)),
            ("MSS 1", tcp4(mac(9), mac(8), 3000, 5), tso(1, 54)),
            ("MSS above the frame", tcp4(mac(9), mac(8), 1000, 5), tso(2000, 54)),
            ("hdr_len past the frame", tcp4(mac(9), mac(8), 100, 5), tso(1448, 5000)),
            (
                "checksum offset past the frame",
                tcp4(mac(9), mac(8), 100, 5),
                VnetHdr { flags: F_NEEDS_CSUM, csum_start: 150, csum_offset: 16, ..Default::default() },
            ),
            ("headers longer than the frame", tcp4(mac(9), mac(8), 0, 5)[..40].to_vec(), tso(1448, 54)),
            ("UFO, never offered", tcp4(mac(9), mac(8), 3000, 5), VnetHdr { gso_type: 3, ..tso(1448, 54) }),
        ];
        for (what, f, vnet) in &cases {
            assert_eq!(bad.send(0, vnet, &[f.as_slice()]), 1, "{what}");
        }
        let n = cases.len() as u64;
        assert!(
            wait_until(Duration::from_secs(5), || drops(&rig.d, "bad")["bad_gso"] == n),
            "{}",
            drops(&rig.d, "bad")
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut got = Vec::new();
        sink.recv(0, &mut got);
        assert!(got.is_empty(), "{} malformed frame(s) reached the sink", got.len());
        // A good TSO frame: 3000 bytes at MSS 1000 -> three valid segments.
        let good = tcp4(mac(9), mac(8), 3000, 5);
        assert_eq!(bad.send(0, &tso(1000, 54), &[&good]), 1);
        let segs = sink.recv_n(0, 3, Duration::from_secs(5));
        assert_eq!(segs.len(), 3, "{}", drops(&rig.d, "sink"));
        assert!(
            segs.iter().all(|s| s.1.len() == 54 + 1000),
            "{:?}",
            segs.iter().map(|s| s.1.len()).collect::<Vec<_>>()
        );
        rig.healthy("malformed GSO frames");
    });
}

/// Kick and call fds must be eventfds: a pipe is refused (the frontend gets the error with
/// REPLY_ACK), and nothing else is disturbed.
#[test]
fn non_eventfd_kick_and_call_fds_are_refused() {
    require_root().unwrap();
    in_netns(|| {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let mut rig = Rig::new(&[]);
        rig.add("bad", &["--vlan", "10"]);
        let mut bad = connect(&rig.run.join("bad.sock"), &Config::default());
        for what in ["kick", "call"] {
            let (r, _w) = nix::unistd::pipe().unwrap();
            // SAFETY: `r` is an open fd we own; the EventFd takes it over (and closes it).
            let fake = unsafe { vmm_sys_util::eventfd::EventFd::from_raw_fd(r.into_raw_fd()) };
            let f = bad.frontend();
            f.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
            let res = if what == "kick" { f.set_vring_kick(1, &fake) } else { f.set_vring_call(1, &fake) };
            f.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::empty());
            assert!(res.is_err(), "a pipe as the {what} fd was accepted");
        }
        assert!(rig.d.wait_log("not an eventfd", Duration::from_secs(5)));
        rig.healthy("non-eventfd fds");
    });
}

/// A frontend that reads its own kick eventfd (a blocking one, too), racing the daemon for
/// every kick: the daemon reads kicks without blocking, so it never waits on it.
#[test]
fn a_frontend_draining_its_own_kicks_cannot_block_the_datapath() {
    require_root().unwrap();
    in_netns(|| {
        let mut rig = Rig::new(&[]);
        rig.add("bad", &["--vlan", "10"]);
        let mut bad = connect(&rig.run.join("bad.sock"), &Config::default());
        let kick = vmm_sys_util::eventfd::EventFd::new(0).unwrap(); // blocking
        let drain = kick.try_clone().unwrap();
        let waker = kick.try_clone().unwrap();
        bad.replace_kick(1, kick).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        // Its own reader: with a blocking eventfd, this thread sleeps in read() whenever
        // the counter is 0, exactly where an unguarded daemon would sleep too.
        let drainer = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = drain.read();
            }
        });
        let f = frame([0xff; 6], mac(7), 100, 7);
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            bad.send(0, &VnetHdr::default(), &[&f]);
            std::thread::sleep(Duration::from_millis(1));
        }
        rig.healthy("a frontend draining its kicks");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        waker.write(1).unwrap();
        drop(bad);
        drainer.join().unwrap();
    });
}

/// The frontend shrinks its memory file after handing it over: the daemon's accesses to
/// the lost pages would be SIGBUS; the guard catches them, the port is failed until it is
/// set up again, and everything else goes on.
#[test]
fn a_truncated_memfd_fails_only_its_port() {
    require_root().unwrap();
    in_netns(|| {
        let mut rig = Rig::new(&[]);
        rig.add("bad", &["--vlan", "10"]);
        let bad = connect(&rig.run.join("bad.sock"), &Config::default());
        assert!(wait_until(Duration::from_secs(5), || state_of(&port(&rig.d, "bad")) == "up (1/1 queue pairs)"));
        bad.memfd().set_len(0).unwrap();
        // Broadcasts from ok1 now land in bad's (gone) receive buffers. (The test process
        // must not touch `bad`'s memory either from here on.)
        let f = frame([0xff; 6], mac(1), 100, 3);
        for _ in 0..10 {
            rig.ok1.send(0, &VnetHdr::default(), &[&f]);
            rig.ok2.recv_n(0, 1, Duration::from_secs(5));
        }
        assert!(
            wait_until(Duration::from_secs(5), || rig.d.log_text().contains("guest memory file was truncated")),
            "{}",
            rig.d.log_text()
        );
        let st = port(&rig.d, "bad");
        assert!(state_of(&st).contains("needs reset"), "{st}");
        rig.healthy("a truncated memfd");
        std::mem::forget(bad); // its Drop would touch the truncated memory
    });
}

/// An indirect table longer than the queue, then a 64 KiB one, then a chain of zero-length
/// descriptors: each chain is refused and counted; the guest's next good frame goes through.
#[test]
fn huge_indirect_tables_and_empty_descriptors_are_refused() {
    require_root().unwrap();
    in_netns(|| {
        let mut rig = Rig::new(&[]);
        rig.add("bad", &["--vlan", "10"]);
        let mut bad = connect(&rig.run.join("bad.sock"), &Config::default());
        const INDIRECT: u16 = 4;
        assert!(bad.send_raw_desc(0, 0, 257 * 16, INDIRECT)); // queue size 256
        assert!(bad.send_raw_desc(0, 0, 65536, INDIRECT));
        assert!(bad.send_raw_desc(0, 0, 0, 0));
        assert!(
            wait_until(Duration::from_secs(5), || drops(&rig.d, "bad")["rx_error"] == 3),
            "{}",
            drops(&rig.d, "bad")
        );
        let f = frame(mac(2), mac(5), 100, 5);
        assert_eq!(bad.send(0, &VnetHdr::default(), &[&f]), 1);
        assert_eq!(rig.ok2.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
        rig.healthy("huge indirect tables");
    });
}

/// A driver that keeps moving its available index far beyond the queue: the queue is
/// broken (needs a reset), said once in the log, and not serviced any more; the daemon
/// neither spins on it nor floods its log.
#[test]
fn a_spinning_avail_index_breaks_only_that_queue() {
    require_root().unwrap();
    in_netns(|| {
        let mut rig = Rig::new(&[]);
        rig.add("bad", &["--vlan", "10"]);
        let mut bad = connect(&rig.run.join("bad.sock"), &Config::default());
        let end = Instant::now() + Duration::from_secs(2);
        let mut idx = 1000u16;
        while Instant::now() < end {
            bad.corrupt_avail_idx(1, idx);
            bad.corrupt_avail_idx(0, idx.wrapping_add(7));
            idx = idx.wrapping_add(977);
            std::thread::sleep(Duration::from_micros(200));
        }
        let st = port(&rig.d, "bad");
        assert!(state_of(&st).contains("needs reset"), "{st}");
        let log = rig.d.log_text();
        let said = log.matches("needs a reset").count();
        assert!((1..=3).contains(&said), "{said} log lines about the broken queues");
        // Its broken queues cost nothing: the daemon is idle with the frontend still there.
        let pid = rig.d.pid().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let t0 = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(1));
        assert!(cpu_ticks(pid) - t0 < 20, "the daemon keeps working on a broken queue");
        rig.healthy("a spinning avail index");
        // The frontend sets the device up again (a new connection): the port works again.
        drop(bad);
        let mut again = connect(&rig.run.join("bad.sock"), &Config::default());
        assert!(wait_until(Duration::from_secs(5), || state_of(&port(&rig.d, "bad")) == "up (1/1 queue pairs)"));
        let f = frame(mac(2), mac(6), 100, 6);
        assert_eq!(again.send(0, &VnetHdr::default(), &[&f]), 1);
        assert_eq!(rig.ok2.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
    });
}

/// A client-mode port whose frontend listens but never accepts, with its backlog full:
/// connecting never blocks, so adding and removing that port, and every other request,
/// stay quick.
#[test]
fn a_frontend_with_a_full_backlog_blocks_nothing() {
    require_root().unwrap();
    in_netns(|| {
        use nix::sys::socket::{bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        use std::os::fd::AsRawFd;
        let mut rig = Rig::new(&[]);
        let path = rig.run.join("stuck.sock");
        let l = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(l.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&l, Backlog::new(0).unwrap()).unwrap();
        // Fill the backlog: connect until the kernel says it would block.
        let mut held = Vec::new();
        for _ in 0..64 {
            let c = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK, None).unwrap();
            match connect(c.as_raw_fd(), &UnixAddr::new(&path).unwrap()) {
                Ok(()) => held.push(c),
                Err(_) => break,
            }
        }
        let t = Instant::now();
        rig.d.cli(&["port", "add", "br0", "stuck", "--vhost-user", path.to_str().unwrap(), "--mode", "client"]).ok();
        assert!(t.elapsed() < Duration::from_secs(2), "port add took {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
        rig.healthy("a full backlog");
        let t = Instant::now();
        rig.d.cli(&["port", "list"]).ok();
        rig.d.cli(&["port", "del", "br0", "stuck"]).ok();
        assert!(t.elapsed() < Duration::from_secs(2), "port list + del took {:?}", t.elapsed());
        rig.healthy("removing the stuck port");
        drop(held);
    });
}

/// Fail-stop: a panic on the datapath thread ends the process (non-zero, by SIGABRT), so the
/// service manager restarts it; after the restart a client-mode guest is reconnected and
/// frames flow again.
#[test]
fn a_datapath_panic_stops_the_daemon_and_a_restart_resumes() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start_env(dir.path(), &[], &[("VMNETD_TEST_HOOKS", "1")]);
        d.cli(&["bridge", "add", "br0"]).ok();
        // A guest whose QEMU is the socket's server (vmnetd reconnects), and one vmnetd serves.
        let sock = dir.path().join("guest-a.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        d.cli(&["port", "add", "br0", "ca", "--vhost-user", sock.to_str().unwrap(), "--mode", "client"]).ok();
        d.cli(&["port", "add", "br0", "sb", "--vhost-user", "sb.sock"]).ok();
        let (s, _) = l.accept().unwrap();
        let mut a = Driver::from_stream(s, &Config::default()).unwrap();
        let mut b = connect(&dir.path().join("run/sb.sock"), &Config::default());
        assert!(wait_until(Duration::from_secs(5), || state_of(&port(&d, "ca")) == "up (1/1 queue pairs)"));
        let f = frame([0xff; 6], mac(1), 80, 1);
        assert_eq!(a.send(0, &VnetHdr::default(), &[&f]), 1);
        assert_eq!(b.recv_n(0, 1, Duration::from_secs(5)).len(), 1);

        // Without the test hook the request is refused; with it, the datapath panics.
        let mut c = d.client();
        let _ = c.call::<serde_json::Value>(vmnetd::api::Op::DebugPanic);
        let st = d
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("daemon still running after a datapath panic\n{}", d.log_text()));
        assert!(!st.success(), "{st}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGABRT), "{st}");
        assert!(d.log_text().contains("panic on thread vmnetd-dp"), "{}", d.log_text());

        // The service manager's restart: the client-mode guest gets its connection back.
        drop(a);
        d.restart();
        let (s, _) = l.accept().unwrap();
        let mut a = Driver::from_stream(s, &Config::default()).unwrap();
        let mut b = connect(&dir.path().join("run/sb.sock"), &Config::default());
        assert!(wait_until(Duration::from_secs(5), || state_of(&port(&d, "ca")) == "up (1/1 queue pairs)"));
        assert_eq!(a.send(0, &VnetHdr::default(), &[&f]), 1);
        assert_eq!(b.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
        // And a daemon started without the hook refuses the request.
        d.stop();
        d.env.clear();
        d.restart();
        let o = d.client().call::<serde_json::Value>(vmnetd::api::Op::DebugPanic);
        assert!(format!("{o:?}").contains("Test hooks are off"), "{o:?}");
        assert!(d.is_running());
    });
}

/// A port on a TAP vmnetd does not manage (libvirt's `vnetN`) follows that device, not its
/// name: when the TAP goes and another with the same name comes (the next VM's), the stale
/// port does not attach to it, on either bridge kind. A TAP vmnetd declares (and re-makes)
/// is followed by name. Names with '%' are refused.
#[test]
fn a_stale_port_never_captures_the_next_tap_of_the_same_name() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        d.cli(&["bridge", "add", "lbr0", "--kind", "linux"]).ok();
        ip("tuntap add vnet3 mode tap");
        ip("tuntap add vnet4 mode tap");
        d.cli(&["port", "add", "br0", "vm-a", "--netdev", "vnet3"]).ok();
        d.cli(&["port", "add", "lbr0", "vm-b", "--netdev", "vnet4"]).ok();
        assert_eq!(state_of(&port(&d, "vm-a")), "up");
        // The VMs stop; their TAPs go; the next VMs get the same names.
        ip("link del vnet3");
        ip("link del vnet4");
        ip("tuntap add vnet3 mode tap");
        ip("tuntap add vnet4 mode tap");
        // The reconciler runs every 2 s: give it a few rounds.
        std::thread::sleep(Duration::from_secs(5));
        let a = port(&d, "vm-a");
        assert!(state_of(&a).contains("another interface now"), "{a}");
        let b = port(&d, "vm-b");
        assert!(state_of(&b).contains("another interface now"), "{b}");
        assert!(!link_details("vnet4").contains("master lbr0"), "the new vnet4 was enslaved");
        // A daemon restart does not change that.
        let mut d = d;
        d.stop();
        d.restart();
        std::thread::sleep(Duration::from_secs(3));
        assert!(state_of(&port(&d, "vm-a")).contains("another interface now"));
        assert!(!link_details("vnet4").contains("master lbr0"));
        // Removing the stale port and adding it again binds it to the new device.
        d.cli(&["port", "del", "br0", "vm-a"]).ok();
        d.cli(&["port", "add", "br0", "vm-a", "--netdev", "vnet3"]).ok();
        assert_eq!(state_of(&port(&d, "vm-a")), "up");
        // A TAP vmnetd declares is re-made by vmnetd and followed by name.
        d.cli(&["mktap", "vmtap7"]).ok();
        d.cli(&["port", "add", "br0", "own", "--netdev", "vmtap7"]).ok();
        ip("link del vmtap7");
        d.stop();
        d.restart();
        assert!(wait_until(Duration::from_secs(8), || state_of(&port(&d, "own")) == "up"), "{}", port(&d, "own"));
        // The kernel's name template is not a name.
        let o = d.cli(&["mktap", "tap%d"]);
        assert!(o.failed_one_line().contains("'%'"), "{o:?}");
        ip("link del vnet3");
        ip("link del vnet4");
    });
}

/// Root makes a server-mode socket in a directory its owner controls: the owner cannot
/// redirect it with a symlink, neither in the path nor at the socket's name, and nothing
/// outside is created, chowned or replaced.
#[test]
fn a_socket_owner_cannot_redirect_where_vmnetd_makes_its_socket() {
    require_root().unwrap();
    in_netns(|| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        // nobody's own directory, and a victim directory of root's.
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(victim.join("passwd"), "keep").unwrap();
        let untouched = |what: &str| {
            let m = std::fs::metadata(&victim).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o700), "{what}");
            let names: Vec<_> = std::fs::read_dir(&victim).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, vec![std::ffi::OsString::from("passwd")], "{what}");
            assert_eq!(std::fs::read_to_string(victim.join("passwd")).unwrap(), "keep", "{what}");
        };
        // 1. A symlink the owner planted in the path.
        std::os::unix::fs::symlink(&victim, home.join("vm")).unwrap();
        let sock = home.join("vm/sub/vm.sock");
        let o = d.cli(&["port", "add", "br0", "p1", "--vhost-user", sock.to_str().unwrap(), "--owner", "nobody"]);
        assert!(o.failed_one_line().contains("symlink in a directory others can change"), "{o:?}");
        untouched("symlink in the path");
        // 2. A symlink at the socket's own name.
        std::os::unix::fs::symlink(victim.join("passwd"), home.join("vm.sock")).unwrap();
        let sock = home.join("vm.sock");
        let o = d.cli(&["port", "add", "br0", "p2", "--vhost-user", sock.to_str().unwrap(), "--owner", "nobody"]);
        assert!(o.failed_one_line().contains("is not a socket"), "{o:?}");
        untouched("symlink at the name");
        // 3. Symlinks root made in directories only root can change are followed (like
        //    /var/run -> /run): a port through one works.
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("alias")).unwrap();
        let sock = dir.path().join("alias/ok.sock");
        d.cli(&["port", "add", "br0", "p3", "--vhost-user", sock.to_str().unwrap(), "--owner", "nobody"]).ok();
        let m = std::fs::metadata(real.join("ok.sock")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (65534, 0o660));
        // 4. Removing the port removes its socket only if it is still the one vmnetd made.
        std::fs::remove_file(real.join("ok.sock")).unwrap();
        std::fs::write(real.join("ok.sock"), "someone else's").unwrap();
        d.cli(&["port", "del", "br0", "p3"]).ok();
        assert_eq!(std::fs::read_to_string(real.join("ok.sock")).unwrap(), "someone else's");
    });
}
