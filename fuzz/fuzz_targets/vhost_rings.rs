//! The datapath's ring code on arbitrary guest memory: descriptor tables, indirect tables,
//! available rings and indices all come from the fuzzer. Taking a transmit burst, writing
//! frames into receive chains (from bytes and from another "guest"'s memory) and handing
//! chains back must never panic, never take more chains than the burst or the queue holds,
//! never describe a frame longer than the cap, and never write outside the chains' buffers
//! (every access is checked against guest memory by construction; here the bounds of what
//! is reported are checked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmnetd_vhost::device::Memory;
use vmnetd_vhost::queue::{complete_tx, pop_tx, Part, RxScratch, RxWriter, Seg, MAX_FRAME, MAX_SEGS};
use vmnetd_vhost::ring::Xlate;

const MEM: usize = 64 * 1024;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    size_log2: u8,
    event_idx: bool,
    mrg: bool,
    legacy_hdr: bool,
    next_avail: u16,
    next_used: u16,
    /// Ring addresses, as offsets into memory (some will not fit: the queue is then unusable).
    desc: u16,
    avail: u16,
    used: u16,
    max: u8,
    /// Frames to write into the receive queue (lengths; contents do not matter).
    rx: Vec<(u16, u16)>,
    /// Guest memory contents.
    mem: Vec<u8>,
}

fn queue(i: &Input, mem: &Memory) -> Option<Queue> {
    let size = 1u16 << (i.size_log2 % 9); // 1..=256
    let mut q = Queue::new(256).ok()?;
    q.set_size(size);
    q.try_set_desc_table_address(GuestAddress(u64::from(i.desc) & !15)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(u64::from(i.avail) & !1)).ok()?;
    q.try_set_used_ring_address(GuestAddress(u64::from(i.used) & !3)).ok()?;
    q.set_event_idx(i.event_idx);
    q.set_next_avail(i.next_avail);
    q.set_next_used(i.next_used);
    q.set_ready(true);
    let _ = mem;
    Some(q)
}

fuzz_target!(|i: Input| {
    let mem = Memory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = i.mem.len().min(MEM);
    mem.write_slice(&i.mem[..n], GuestAddress(0)).unwrap();
    let hl = if i.legacy_hdr { 10 } else { 12 };
    let Some(mut q) = queue(&i, &mem) else { return };
    let size = usize::from(q.size());

    // Transmit.
    let max = usize::from(i.max).max(1);
    let mut segs: Vec<Seg> = Vec::new();
    let mut heads = Vec::new();
    let r = pop_tx(&mut q, &mem, hl, max, &mut segs, |h, f, segs| {
        assert!(usize::from(h) < size, "head {h} outside a table of {size}");
        heads.push(h);
        if let Ok(f) = f {
            assert!(f.len as usize <= MAX_FRAME, "frame of {} bytes", f.len);
            assert!(usize::from(f.nsegs) <= MAX_SEGS);
            let tail: u64 = segs[f.first_seg as usize..f.first_seg as usize + usize::from(f.nsegs)]
                .iter()
                .map(|s| {
                    assert!(mem.check_range(GuestAddress(s.addr), s.len as usize), "segment outside memory");
                    u64::from(s.len)
                })
                .sum();
            assert_eq!(tail + u64::from(f.head_len), u64::from(f.len));
        }
    });
    assert!(heads.len() <= max.min(size), "{} chains from a burst of {max}", heads.len());
    if let Ok(n) = r {
        assert_eq!(n, heads.len());
    }
    complete_tx(&mut q, &mem, &heads);

    // Receive, on the same memory and rings (the fuzzer's ring serves both).
    let other = Memory::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
    let mut scratch = RxScratch::default();
    let mut w = RxWriter::new(&mut q, &mem, i.mrg, hl, &mut scratch);
    w.prefetch(usize::from(i.max));
    let bytes = vec![0xa5u8; 70_000];
    for (a, b) in i.rx.iter().take(64) {
        let (a, b) = (usize::from(*a) % 9000, usize::from(*b) % 5000);
        // Odd sizes take the usual frame's path (a head and one span of guest memory).
        let span = Xlate::new(&other).slice(0, b.min(4096));
        match span {
            Some(t) if a % 2 == 1 => {
                let _ = w.write_head_tail(&Default::default(), &bytes[..a], t);
            }
            _ => {
                let parts = [Part::Bytes(&bytes[..a]), Part::Guest(&other, Seg { addr: 0, len: b as u32 })];
                let _ = w.write(&Default::default(), &parts);
            }
        }
        if w.broken().is_some() {
            break;
        }
    }
    let _ = w.finish();
});
