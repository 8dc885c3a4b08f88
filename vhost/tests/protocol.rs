//! The vhost-user protocol end to end, in process: vmnetd's device (server and client mode)
//! against the crate's own virtio-net driver over a real Unix socket and memfd memory, with a
//! stand-in datapath that echoes every transmitted frame back into the receive queue.

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestAddressSpace;
use vmnetd_vhost::device::Shared;
use vmnetd_vhost::driver::{Config, Driver};
use vmnetd_vhost::queue::{complete_tx, pop_tx, Part, RxScratch, RxWriter};
use vmnetd_vhost::server::{Endpoint, Mode, Server};
use vmnetd_vhost::virtio_net::{features, VnetHdr};

/// Echoes TX frames of pair 0 into RX of pair 0 until `stop`; counts refused chains.
fn echo(shared: Arc<Shared>, stop: Arc<AtomicBool>, bad: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            {
                let mut st = shared.lock();
                let hl = st.hdr_len();
                let mrg = st.has(features::MRG_RXBUF);
                if st.vrings[0].active() && st.vrings[1].active() {
                    st.vrings[1].clear_kick();
                    let mem = st.mem.memory();
                    let mut segs = Vec::new();
                    let mut frames = Vec::new();
                    let _ = pop_tx(&mut st.vrings[1].queue, &mem, hl, 64, &mut segs, |h, r, _| {
                        frames.push((h, r.copied()))
                    });
                    let (rx, tx) = st.vrings.split_at_mut(1);
                    let mut scratch = RxScratch::default();
                    let mut w = RxWriter::new(&mut rx[0].queue, &mem, mrg, hl, &mut scratch);
                    for (_, r) in &frames {
                        match r {
                            Ok(f) => {
                                let mut parts = vec![Part::Bytes(&f.head[..usize::from(f.head_len)])];
                                for s in &segs[f.first_seg as usize..(f.first_seg + u32::from(f.nsegs)) as usize] {
                                    parts.push(Part::Guest(&mem, *s));
                                }
                                let _ = w.write(&f.vnet, &parts);
                            }
                            Err(_) => {
                                bad.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    let notify = w.finish();
                    let heads: Vec<u16> = frames.iter().map(|(h, _)| *h).collect();
                    let tx_notify = complete_tx(&mut tx[0].queue, &mem, &heads);
                    if notify {
                        rx[0].signal();
                    }
                    if tx_notify {
                        tx[0].signal();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn frame(n: u8, len: usize) -> Vec<u8> {
    let mut f = vec![n; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, n]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn wait(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn server_mode_negotiates_echoes_and_survives_bad_input_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0.sock");
    let shared = Shared::new("p0", 2).unwrap();
    let mut server =
        Server::start(shared.clone(), Endpoint { path: path.clone(), mode: Mode::Server, owner: None, peer_uid: None })
            .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicU64::new(0));
    let dp = echo(shared.clone(), stop.clone(), bad.clone());

    let mut d = Driver::connect(&path, &Config::default()).unwrap();
    assert_eq!(d.acked & features::MRG_RXBUF, features::MRG_RXBUF);
    assert!(wait(|| shared.lock().vrings[1].active()));
    {
        let st = shared.lock();
        assert!(st.connected && st.has(features::RING_EVENT_IDX) && st.has(features::VERSION_1));
        assert_eq!(st.vrings.len(), 5, "2 pairs + control queue");
    }
    // Frames of every size a switch sees come back byte for byte.
    let frames: Vec<Vec<u8>> =
        [14usize, 60, 61, 1514, 2000].iter().enumerate().map(|(i, l)| frame(i as u8, *l)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    assert_eq!(d.send(0, &VnetHdr::default(), &refs), 5);
    let got = d.recv_n(0, 5, Duration::from_secs(5));
    assert_eq!(got.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(), frames);
    assert!(wait(|| d.tx_pending(0) == 0), "transmit buffers handed back");

    // A descriptor pointing outside guest memory: refused and counted, nothing else breaks.
    assert!(d.send_raw_desc(0, 0x7fff_0000_0000, 100, 0), "transmit ring full");
    assert!(d.send_raw_desc(0, 0, 4, 0), "transmit ring full"); // shorter than the header
    assert!(wait(|| bad.load(Ordering::SeqCst) == 2));
    assert!(wait(|| d.tx_pending(0) == 0), "bad chains are handed back too");
    assert_eq!(d.send(0, &VnetHdr::default(), &refs[..1]), 1);
    assert_eq!(d.recv_n(0, 1, Duration::from_secs(5)).len(), 1);

    // The frontend vanishes: the device forgets it and waits for the next one.
    drop(d);
    assert!(wait(|| !shared.lock().connected));
    assert!(!shared.lock().vrings[1].active());
    let mut d = Driver::connect(&path, &Config::default()).unwrap();
    assert!(wait(|| shared.lock().vrings[1].active()));
    assert_eq!(d.send(0, &VnetHdr::default(), &refs[1..2]), 1);
    assert_eq!(d.recv_n(0, 1, Duration::from_secs(5))[0].1, frames[1]);

    // Features outside the offer are refused.
    assert!(d.frontend_set_features_check(features::OFFERED | (1 << 41)).is_err());

    stop.store(true, Ordering::SeqCst);
    dp.join().unwrap();
    server.stop();
    assert!(!path.exists(), "server mode removes its socket");
}

#[test]
fn client_mode_keeps_retrying_until_the_frontend_listens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qemu.sock");
    let shared = Shared::new("c0", 1).unwrap();
    let server =
        Server::start(shared.clone(), Endpoint { path: path.clone(), mode: Mode::Client, owner: None, peer_uid: None })
            .unwrap();
    // Nobody listens for a while; vmnetd keeps trying.
    std::thread::sleep(Duration::from_millis(700));
    assert!(!shared.lock().connected);
    let l = UnixListener::bind(&path).unwrap();
    let (s, _) = l.accept().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dp = echo(shared.clone(), stop.clone(), Arc::new(AtomicU64::new(0)));
    let mut d = Driver::from_stream(s, &Config::default()).unwrap();
    assert!(wait(|| shared.lock().vrings[1].active()));
    let f = frame(9, 100);
    assert_eq!(d.send(0, &VnetHdr::default(), &[&f]), 1);
    assert_eq!(d.recv_n(0, 1, Duration::from_secs(5))[0].1, f);
    // The frontend restarts: vmnetd reconnects by itself.
    drop(d);
    let (s, _) = l.accept().unwrap();
    let mut d = Driver::from_stream(s, &Config::default()).unwrap();
    assert!(wait(|| shared.lock().vrings[1].active()));
    assert_eq!(d.send(0, &VnetHdr::default(), &[&f]), 1);
    assert_eq!(d.recv_n(0, 1, Duration::from_secs(5))[0].1, f);
    stop.store(true, Ordering::SeqCst);
    dp.join().unwrap();
    drop(server);
}

fn memfd(len: u64) -> std::fs::File {
    let f = std::fs::File::from(nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap());
    f.set_len(len).unwrap();
    f
}

/// Live migration on one server socket: a second frontend (the destination QEMU) connects
/// while the first runs the guest and sets its rings up without disturbing it; when the
/// first stops its rings (GET_VRING_BASE, with an index consistent with the used ring), the
/// second takes the device over, and the first one's close changes nothing. The dirty log is
/// taken (and answered), and a log too small for the guest's memory is refused by closing
/// the connection (the frontend would otherwise wait for an answer forever).
#[test]
fn a_second_frontend_takes_over_when_the_first_stops_and_logs_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let shared = Shared::new("m", 1).unwrap();
    let mut server =
        Server::start(shared.clone(), Endpoint { path: path.clone(), mode: Mode::Server, owner: None, peer_uid: None })
            .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicU64::new(0));
    let dp = echo(shared.clone(), stop.clone(), bad.clone());
    let f = [frame(1, 60)];
    let refs: Vec<&[u8]> = f.iter().map(|f| f.as_slice()).collect();

    let mut src = Driver::connect(&path, &Config::default()).unwrap();
    assert!(wait(|| shared.lock().vrings[1].active()));
    assert_eq!(src.send(0, &VnetHdr::default(), &refs), 1);
    assert_eq!(src.recv_n(0, 1, Duration::from_secs(5)).len(), 1);

    // Migration starts: the log is taken, LOG_ALL acked, used rings logged.
    let log = memfd(src.log_bytes());
    src.start_logging(&log).unwrap();
    assert!(wait(|| shared.lock().dirty_log().is_some()));
    assert!(wait(|| shared.lock().vrings[1].log_used.is_some()));

    // The destination connects and sets up while the source runs: the source keeps going.
    let mut dst = Driver::connect(&path, &Config::default()).unwrap();
    assert_eq!(shared.open_connections(), 2);
    assert_eq!(src.send(0, &VnetHdr::default(), &refs), 1);
    assert_eq!(src.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(shared.lock().connections, 2);

    // The source stops: every ring's index is the used ring's (nothing in flight); the
    // destination then owns the device and exchanges frames.
    assert!(wait(|| src.tx_pending(0) == 0));
    let bases = src.stop_rings().unwrap();
    assert_eq!(bases[0] as u16, src.used_idx(0));
    assert_eq!(bases[1] as u16, src.used_idx(1));
    assert!(wait(|| shared.lock().vrings[1].active()));
    assert!(shared.lock().dirty_log().is_none(), "the destination does not log");
    assert_eq!(dst.send(0, &VnetHdr::default(), &refs), 1);
    assert_eq!(dst.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
    drop(src);
    assert!(wait(|| shared.open_connections() == 1));
    assert!(shared.lock().connected && shared.lock().vrings[1].active());
    assert_eq!(dst.send(0, &VnetHdr::default(), &refs), 1);
    assert_eq!(dst.recv_n(0, 1, Duration::from_secs(5)).len(), 1);

    // A frontend that stops its rings without migrating (a suspended or rebooting guest)
    // keeps its port: another connection waits until it goes away.
    let mut other = Driver::connect(&path, &Config::default()).unwrap();
    assert!(wait(|| shared.open_connections() == 2));
    dst.stop_rings().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!shared.lock().vrings[1].active(), "the other connection did not take the port");
    drop(dst);
    assert!(wait(|| shared.lock().vrings[1].active()), "the owner gone, the waiting one takes over");
    assert_eq!(other.send(0, &VnetHdr::default(), &refs), 1);
    assert_eq!(other.recv_n(0, 1, Duration::from_secs(5)).len(), 1);

    // A log that does not cover the guest's memory: refused, the connection closed (the
    // frontend gets an error, not a hang), and the next frontend is served as usual.
    let small = memfd(8);
    assert!(other.set_log(&small, 8, 0).is_err());
    assert!(wait(|| shared.open_connections() == 0 && !shared.lock().connected));
    let mut again = Driver::connect(&path, &Config::default()).unwrap();
    assert!(wait(|| shared.lock().vrings[1].active()));
    // Offsets past the file, and a file that is not memory, are refused the same way.
    let log = memfd(again.log_bytes());
    assert!(again.set_log(&log, again.log_bytes(), 4096).is_err());
    let mut again = Driver::connect(&path, &Config::default()).unwrap();
    let disk = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    disk.as_file().set_len(again.log_bytes()).unwrap();
    assert!(again.set_log(disk.as_file(), again.log_bytes(), 0).is_err());
    let mut again = Driver::connect(&path, &Config::default()).unwrap();
    assert!(wait(|| shared.lock().vrings[1].active()));
    assert_eq!(again.send(0, &VnetHdr::default(), &refs), 1);
    assert_eq!(again.recv_n(0, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(bad.load(Ordering::SeqCst), 0);

    stop.store(true, Ordering::SeqCst);
    dp.join().unwrap();
    server.stop();
}
