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
                    let _ = pop_tx(&mut st.vrings[1].queue, &mem, hl, 64, &mut segs, |h, r, _| frames.push((h, r)));
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
