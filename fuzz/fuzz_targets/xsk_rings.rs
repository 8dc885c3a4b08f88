//! An AF_XDP socket's rings with a hostile kernel (`vmnetd::sys::xdp::Xsk::anonymous`, whose
//! kernel side the input plays): any receive descriptors, completions and producer indexes,
//! between our receives and sends. Never panics; every frame copied out lies in one receive
//! chunk, and no transmit chunk is handed out while the kernel still holds it.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmnetd::sys::iov::IoPart;
use vmnetd::sys::xdp::{Geometry, RxFrame, Xsk};

#[derive(Arbitrary, Debug)]
enum Op {
    /// The kernel produces a receive descriptor (`addr` near a chunk, or anywhere).
    Receive { chunk: u16, off: u16, len: u16, wild: Option<u64> },
    /// The kernel sets the receive producer to anything.
    RxProducer(u32),
    /// We take up to `n` frames and publish.
    Drain(u8),
    /// We send `n` frames of `len` bytes.
    Send { n: u8, len: u16 },
    /// The kernel takes what we sent, completing some of it (or any address).
    Complete { take: bool, wild: Option<u64> },
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (jumbo, ops) = input;
    let Some(geo) = Geometry::for_mtu(if jumbo { 3000 } else { 1500 }) else { return };
    let mut x = Xsk::anonymous(geo);
    x.kernel().take_fills();
    let mut buf = vec![0u8; geo.chunk];
    let mut sent = Vec::new();
    for op in ops.into_iter().take(512) {
        match op {
            Op::Receive { chunk, off, len, wild } => {
                let addr = wild.unwrap_or(u64::from(chunk) * geo.chunk as u64 + u64::from(off));
                x.kernel().receive(addr, u32::from(len), &[0x5a; 64]);
            }
            Op::RxProducer(v) => x.kernel().set_rx_producer(v),
            Op::Drain(n) => {
                for _ in 0..n {
                    match x.rx_next(&mut buf) {
                        None => break,
                        Some(RxFrame::Frame { len }) => assert!(len <= geo.max_frame() + 256 && len <= buf.len()),
                        Some(RxFrame::Bad { .. }) => {}
                    }
                }
                x.rx_commit();
            }
            Op::Send { n, len } => {
                let frame = vec![0xa5; usize::from(len) % (geo.chunk + 1)];
                for _ in 0..n % 64 {
                    if !x.tx_push(&[IoPart::Bytes(&frame)]) {
                        break;
                    }
                }
                let _ = x.tx_flush();
            }
            Op::Complete { take, wild } => {
                if take {
                    sent.extend(x.kernel().take_sent().into_iter().map(|(d, _)| d.addr));
                }
                match wild {
                    Some(a) => x.kernel().complete(a),
                    None => {
                        if let Some(a) = sent.pop() {
                            x.kernel().complete(a);
                        }
                    }
                }
            }
        }
    }
    // Whatever happened, the fill ring names only receive chunks, at their starts.
    for a in x.kernel().take_fills() {
        assert!(a % geo.chunk as u64 == 0 && a < (geo.rx * geo.chunk) as u64, "{a}");
    }
});
