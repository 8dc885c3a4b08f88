//! Descriptor chains <-> frames.
//!
//! TX: [`pop_tx`] takes chains from a transmit queue and turns each into a [`TxFrame`]: the
//! virtio-net header and the first bytes of the frame copied out (the part a switch decides
//! on), and the rest as guest-memory segments to copy later. RX: [`RxWriter`] writes frames
//! into receive chains, spreading one frame over several chains with mergeable buffers.
//!
//! Every guest address is checked against the memory map before it is used; a chain that
//! points outside guest memory, has the wrong direction, is too short for the header, or
//! loops (bounded by `virtio-queue`) is reported as an error and its frame dropped — the
//! backend never reads or writes outside guest memory and never panics on guest input.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::device::Memory;
use crate::virtio_net::VnetHdr;

/// Bytes of a frame copied out at TX for the decision: Ethernet header + 802.1Q tag.
pub const HEAD_LEN: usize = 18;
/// Longest frame accepted from a guest: a 64 KiB GSO super-frame with a tag.
pub const MAX_FRAME: usize = 65536 + 4;
/// Most guest segments one frame may have.
pub const MAX_SEGS: usize = 64;

/// A piece of a frame in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
}

/// A frame taken from a transmit queue.
#[derive(Debug, Clone, Copy)]
pub struct TxFrame {
    pub head_index: u16,
    pub vnet: VnetHdr,
    /// Frame length (without the virtio-net header).
    pub len: u32,
    pub head: [u8; HEAD_LEN],
    pub head_len: u8,
    /// The frame's bytes after the head: `segs[first_seg..first_seg + nsegs]`.
    pub first_seg: u32,
    pub nsegs: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("transmit chain has a device-writable descriptor")]
    WritableDescriptor,
    #[error("transmit chain of {0} bytes is shorter than the virtio-net header")]
    TooShort(usize),
    #[error("transmit frame of {0} bytes is too long")]
    TooLong(usize),
    #[error("descriptor points outside guest memory")]
    BadAddress,
    #[error("frame has more than {MAX_SEGS} segments")]
    TooManySegments,
}

/// Pops up to `max` chains from `queue`. `out` gets each chain's head index and either the
/// frame (its tail segments appended to `segs`) or why it was refused. Either way the chain
/// is consumed: the caller marks it used once done with the frame. Returns how many chains.
pub fn pop_tx(
    queue: &mut Queue,
    mem: &Memory,
    hdr_len: usize,
    max: usize,
    segs: &mut Vec<Seg>,
    mut out: impl FnMut(u16, Result<TxFrame, TxError>),
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        n += 1;
        let head_index = chain.head_index();
        let first_seg = segs.len();
        let r = parse_tx(chain, mem, hdr_len, segs, first_seg).map(|f| TxFrame { head_index, ..f });
        if r.is_err() {
            segs.truncate(first_seg);
        }
        out(head_index, r);
    }
    n
}

fn parse_tx<I>(
    chain: I,
    mem: &Memory,
    hdr_len: usize,
    segs: &mut Vec<Seg>,
    first_seg: usize,
) -> Result<TxFrame, TxError>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut hdr = [0u8; crate::virtio_net::HDR_LEN];
    let mut head = [0u8; HEAD_LEN];
    let (mut hdr_got, mut head_got, mut total) = (0usize, 0usize, 0usize);
    for desc in chain {
        if desc.is_write_only() {
            return Err(TxError::WritableDescriptor);
        }
        let (mut addr, mut len) = (desc.addr().0, desc.len() as usize);
        if !mem.check_range(desc.addr(), len) {
            return Err(TxError::BadAddress);
        }
        total += len;
        if total > MAX_FRAME + hdr_len {
            return Err(TxError::TooLong(total.saturating_sub(hdr_len)));
        }
        // The header first...
        if hdr_got < hdr_len {
            let n = len.min(hdr_len - hdr_got);
            mem.read_slice(&mut hdr[hdr_got..hdr_got + n], GuestAddress(addr)).map_err(|_| TxError::BadAddress)?;
            hdr_got += n;
            addr += n as u64;
            len -= n;
        }
        // ...then the bytes the switch decides on...
        if len > 0 && head_got < HEAD_LEN {
            let n = len.min(HEAD_LEN - head_got);
            mem.read_slice(&mut head[head_got..head_got + n], GuestAddress(addr)).map_err(|_| TxError::BadAddress)?;
            head_got += n;
            addr += n as u64;
            len -= n;
        }
        // ...and the rest stays where it is.
        if len > 0 {
            if segs.len() - first_seg >= MAX_SEGS {
                return Err(TxError::TooManySegments);
            }
            segs.push(Seg { addr, len: len as u32 });
        }
    }
    if hdr_got < hdr_len {
        return Err(TxError::TooShort(total));
    }
    Ok(TxFrame {
        head_index: 0,
        vnet: VnetHdr::parse(&hdr).unwrap_or_default(),
        len: (total - hdr_len) as u32,
        head,
        head_len: head_got as u8,
        first_seg: first_seg as u32,
        nsegs: (segs.len() - first_seg) as u16,
    })
}

/// Returns a transmit chain to the driver.
pub fn complete_tx(queue: &mut Queue, mem: &Memory, head_index: u16) -> bool {
    queue.add_used(mem, head_index, 0).is_ok()
}

/// A source of frame bytes for [`RxWriter::write`].
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Bytes(&'a [u8]),
    /// Bytes in (another) guest's memory.
    Guest(&'a Memory, Seg),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::Guest(_, s) => s.len as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    #[error("no receive buffers")]
    NoBuffers,
    #[error("frame does not fit the guest's receive buffer (no mergeable buffers)")]
    TooBig,
    #[error("receive chain is not device-writable or points outside guest memory")]
    BadChain,
    #[error("source segment is outside guest memory")]
    BadSource,
}

/// A writable receive chain.
struct RxChain {
    head: u16,
    descs: Vec<(u64, u32)>,
    cap: usize,
    written: u32,
}

/// Writes frames into a receive queue. Used elements are published frame by frame; the
/// caller signals the driver once per burst with [`RxWriter::needs_notification`].
pub struct RxWriter<'a> {
    queue: &'a mut Queue,
    mem: &'a Memory,
    mrg: bool,
    hdr_len: usize,
    chains: Vec<RxChain>,
    spare: Vec<Vec<(u64, u32)>>,
    pub written: usize,
}

impl<'a> RxWriter<'a> {
    pub fn new(queue: &'a mut Queue, mem: &'a Memory, mrg: bool, hdr_len: usize) -> Self {
        RxWriter { queue, mem, mrg, hdr_len, chains: Vec::new(), spare: Vec::new(), written: 0 }
    }

    /// Pops the next chain; `Ok(None)` when the ring is empty.
    fn pop_chain(&mut self) -> Result<Option<RxChain>, RxError> {
        let Some(chain) = self.queue.pop_descriptor_chain(self.mem) else {
            return Ok(None);
        };
        let head = chain.head_index();
        let mut descs = self.spare.pop().unwrap_or_default();
        descs.clear();
        let mut cap = 0usize;
        let mut bad = false;
        for d in chain {
            if !d.is_write_only() || !self.mem.check_range(d.addr(), d.len() as usize) {
                bad = true;
                break;
            }
            cap += d.len() as usize;
            descs.push((d.addr().0, d.len()));
        }
        let c = RxChain { head, descs, cap, written: 0 };
        if bad {
            // Give it back empty: the driver sees a zero-length buffer and moves on.
            let _ = self.queue.add_used(self.mem, c.head, 0);
            self.spare.push(c.descs);
            return Err(RxError::BadChain);
        }
        Ok(Some(c))
    }

    /// Writes one frame made of `parts` (the virtio-net header `hdr` is prepended).
    pub fn write(&mut self, hdr: &VnetHdr, parts: &[Part<'_>]) -> Result<(), RxError> {
        let frame_len: usize = parts.iter().map(Part::len).sum();
        let need = self.hdr_len + frame_len;
        let mut cap = 0;
        while cap < need {
            if !self.mrg && !self.chains.is_empty() {
                break;
            }
            match self.pop_chain() {
                Ok(Some(c)) => {
                    cap += c.cap;
                    self.chains.push(c);
                }
                Ok(None) => {
                    self.rollback();
                    return Err(RxError::NoBuffers);
                }
                Err(e) => {
                    self.consume_empty();
                    return Err(e);
                }
            }
        }
        if cap < need {
            self.rollback();
            return Err(RxError::TooBig);
        }
        // The frame after the header.
        let mut cursor = Cursor { chain: 0, desc: 0, off: self.hdr_len };
        for p in parts {
            if let Err(e) = self.copy_part(&mut cursor, p) {
                self.consume_empty();
                return Err(e);
            }
        }
        // The header last: only now is the number of buffers known.
        let n = self.chains.len() as u16;
        let bytes = hdr.to_bytes(if self.mrg { n } else { 1 });
        let mut hc = Cursor { chain: 0, desc: 0, off: 0 };
        if self.copy_bytes_at(&mut hc, &bytes[..self.hdr_len]).is_err() {
            self.consume_empty();
            return Err(RxError::BadChain);
        }
        // Account what each chain holds: the header counts in the first.
        let mut left = need;
        for c in &mut self.chains {
            let w = left.min(c.cap);
            c.written = w as u32;
            left -= w;
        }
        for c in self.chains.drain(..) {
            let _ = self.queue.add_used(self.mem, c.head, c.written);
            self.spare.push(c.descs);
        }
        self.written += 1;
        Ok(())
    }

    /// Puts the popped (unused) chains back at the head of the ring.
    fn rollback(&mut self) {
        let n = self.chains.len() as u16;
        let next = self.queue.next_avail().wrapping_sub(n);
        self.queue.set_next_avail(next);
        for c in self.chains.drain(..) {
            self.spare.push(c.descs);
        }
    }

    /// Returns the popped chains to the driver with nothing in them.
    fn consume_empty(&mut self) {
        for c in self.chains.drain(..) {
            let _ = self.queue.add_used(self.mem, c.head, 0);
            self.spare.push(c.descs);
        }
    }

    fn copy_part(&self, cur: &mut Cursor, p: &Part<'_>) -> Result<(), RxError> {
        match p {
            Part::Bytes(b) => self.copy_bytes_at(cur, b),
            Part::Guest(src, seg) => {
                let mut addr = seg.addr;
                let mut left = seg.len as usize;
                while left > 0 {
                    let (daddr, room) = self.room(cur).ok_or(RxError::BadChain)?;
                    let n = room.min(left);
                    let s = src.get_slice(GuestAddress(addr), n).map_err(|_| RxError::BadSource)?;
                    let d = self.mem.get_slice(GuestAddress(daddr), n).map_err(|_| RxError::BadChain)?;
                    s.copy_to_volatile_slice(d);
                    addr += n as u64;
                    left -= n;
                    cur.off += n;
                }
                Ok(())
            }
        }
    }

    fn copy_bytes_at(&self, cur: &mut Cursor, mut b: &[u8]) -> Result<(), RxError> {
        while !b.is_empty() {
            let (daddr, room) = self.room(cur).ok_or(RxError::BadChain)?;
            let n = room.min(b.len());
            self.mem.write_slice(&b[..n], GuestAddress(daddr)).map_err(|_| RxError::BadChain)?;
            b = &b[n..];
            cur.off += n;
        }
        Ok(())
    }

    /// Where the cursor points and how many bytes fit before the descriptor ends.
    fn room(&self, cur: &mut Cursor) -> Option<(u64, usize)> {
        loop {
            let c = self.chains.get(cur.chain)?;
            match c.descs.get(cur.desc) {
                Some(&(addr, len)) if cur.off < len as usize => {
                    return Some((addr + cur.off as u64, len as usize - cur.off));
                }
                Some(&(_, len)) => {
                    cur.off -= len as usize;
                    cur.desc += 1;
                }
                None => {
                    cur.chain += 1;
                    cur.desc = 0;
                }
            }
        }
    }

    /// Whether the driver wants an interrupt for what was used (EVENT_IDX aware).
    pub fn needs_notification(&mut self) -> bool {
        self.written > 0 && self.queue.needs_notification(self.mem).unwrap_or(true)
    }
}

/// A position in the popped chains: chain, descriptor, offset in the descriptor.
struct Cursor {
    chain: usize,
    desc: usize,
    off: usize,
}

/// Whether the driver wants an interrupt after used buffers were added to `queue`.
pub fn needs_notification(queue: &mut Queue, mem: &Memory) -> bool {
    queue.needs_notification(mem).unwrap_or(true)
}

/// Re-arms notifications on a queue after draining it (EVENT_IDX aware). Returns true when
/// more buffers arrived meanwhile, so the caller should drain again.
pub fn enable_notification(queue: &mut Queue, mem: &Memory) -> bool {
    queue.enable_notification(mem).unwrap_or(false)
}

pub fn disable_notification(queue: &mut Queue, mem: &Memory) {
    let _ = queue.disable_notification(mem);
}

/// Whether the driver has made buffers available that we have not taken yet.
pub fn has_available(queue: &Queue, mem: &Memory) -> bool {
    queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire).map(|i| i.0 != queue.next_avail()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_net::{F_NEEDS_CSUM, GSO_TCPV4, HDR_LEN};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor as Desc;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Desc::new(addr, len, flags, next))
    }

    /// A frame of `len` bytes whose byte i is i as u8, after a header with `vnet`.
    fn put_frame(m: &Memory, at: u64, vnet: &VnetHdr, len: usize) -> Vec<u8> {
        let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
        m.write_slice(&vnet.to_bytes(0), GuestAddress(at)).unwrap();
        m.write_slice(&frame, GuestAddress(at + HDR_LEN as u64)).unwrap();
        frame
    }

    type Popped = Vec<(u16, Result<TxFrame, TxError>)>;

    fn pop_all(q: &mut Queue, m: &Memory) -> (Popped, Vec<Seg>) {
        let mut segs = Vec::new();
        let mut out = Vec::new();
        pop_tx(q, m, HDR_LEN, 32, &mut segs, |h, r| out.push((h, r)));
        (out, segs)
    }

    fn gather(m: &Memory, f: &TxFrame, segs: &[Seg]) -> Vec<u8> {
        let mut v = f.head[..usize::from(f.head_len)].to_vec();
        for s in &segs[f.first_seg as usize..(f.first_seg + u32::from(f.nsegs)) as usize] {
            let mut b = vec![0u8; s.len as usize];
            m.read_slice(&mut b, GuestAddress(s.addr)).unwrap();
            v.extend_from_slice(&b);
        }
        v
    }

    #[test]
    fn test_tx_one_descriptor_frame() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let frame = put_frame(&m, 0x1000, &vnet, 1514);
        vq.add_desc_chains(&[d(0x1000, (HDR_LEN + 1514) as u32, 0, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, segs) = pop_all(&mut q, &m);
        assert_eq!(out.len(), 1);
        let f = out[0].1.unwrap();
        assert_eq!((f.len, f.vnet, f.head_len), (1514, vnet, HEAD_LEN as u8));
        assert_eq!(gather(&m, &f, &segs), frame);
        assert!(complete_tx(&mut q, &m, out[0].0));
        assert_eq!(vq.used().idx().load(), 1);
    }

    #[test]
    fn test_tx_header_and_frame_spread_over_descriptors() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        let frame = put_frame(&m, 0x1000, &VnetHdr::default(), 200);
        // Header split 5 + 7; the frame in pieces of 10, 90 and 100 bytes (the 18-byte head
        // straddles the first two).
        let descs = [
            d(0x1000, 5, NEXT, 1),
            d(0x1005, 7, NEXT, 2),
            d(0x100c, 10, NEXT, 3),
            d(0x1016, 90, NEXT, 4),
            d(0x1070, 100, 0, 0),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, segs) = pop_all(&mut q, &m);
        let f = out[0].1.unwrap();
        assert_eq!(f.len, 200);
        assert_eq!(gather(&m, &f, &segs), frame);
    }

    #[test]
    fn test_tx_indirect_chain() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        let frame = put_frame(&m, 0x1000, &VnetHdr::default(), 60);
        // An indirect table of two descriptors at 0x8000.
        m.write_obj(d(0x1000, HDR_LEN as u32, NEXT, 1), GuestAddress(0x8000)).unwrap();
        m.write_obj(d(0x1000 + HDR_LEN as u64, 60, 0, 0), GuestAddress(0x8010)).unwrap();
        vq.add_desc_chains(&[d(0x8000, 32, VRING_DESC_F_INDIRECT as u16, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, segs) = pop_all(&mut q, &m);
        assert_eq!(gather(&m, &out[0].1.unwrap(), &segs), frame);
    }

    #[test]
    fn test_tx_bad_chains_are_refused_not_followed() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        put_frame(&m, 0x1000, &VnetHdr::default(), 60);
        let descs = [
            // 0: device-writable in a TX chain.
            d(0x1000, 72, WRITE, 0),
            // 1: too short for the header.
            d(0x1000, 8, 0, 0),
            // 2: outside guest memory.
            d(0x7fff_0000, 72, 0, 0),
            // 3: straddles the end of guest memory.
            d(0x3f_fff0, 72, 0, 0),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, segs) = pop_all(&mut q, &m);
        let errs: Vec<_> = out.iter().map(|(_, r)| r.unwrap_err()).collect();
        assert_eq!(
            errs,
            vec![TxError::WritableDescriptor, TxError::TooShort(8), TxError::BadAddress, TxError::BadAddress]
        );
        assert!(segs.is_empty());
        // They are still handed back, so the driver does not leak them.
        for (h, _) in out {
            assert!(complete_tx(&mut q, &m, h));
        }
        assert_eq!(vq.used().idx().load(), 4);
    }

    #[test]
    fn test_tx_descriptor_loop_terminates() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        put_frame(&m, 0x1000, &VnetHdr::default(), 60);
        // 0 -> 1 -> 0 -> ... forever, if nobody stops it.
        vq.desc_table().store(0, d(0x1000, 40, NEXT, 1)).unwrap();
        vq.desc_table().store(1, d(0x1000, 40, NEXT, 0)).unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, _) = pop_all(&mut q, &m);
        assert_eq!(out.len(), 1, "one chain consumed, whatever its verdict");
    }

    #[test]
    fn test_tx_empty_ring_and_big_frame() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(pop_all(&mut q, &m).0.len(), 0);
        // Over 64 KiB + tag: refused.
        vq.add_desc_chains(&[d(0, (MAX_FRAME + HDR_LEN + 1) as u32, 0, 0)], 0).unwrap();
        let (out, _) = pop_all(&mut q, &m);
        assert_eq!(out[0].1.unwrap_err(), TxError::TooLong(MAX_FRAME + 1));
    }

    fn rx_chain(vq: &MockSplitQueue<'_, Memory>, at: u16, bufs: &[(u64, u32)]) {
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, (a, l))| {
                let last = i + 1 == bufs.len();
                d(*a, *l, WRITE | if last { 0 } else { NEXT }, at + i as u16 + 1)
            })
            .collect();
        vq.add_desc_chains(&descs, at).unwrap();
    }

    fn used(vq: &MockSplitQueue<'_, Memory>, i: u16) -> (u32, u32) {
        let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
        (e.id(), e.len())
    }

    #[test]
    fn test_rx_frame_into_one_chain() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x2000, 2048)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let frame: Vec<u8> = (0..100u8).collect();
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN);
        let vnet = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..Default::default() };
        w.write(&vnet, &[Part::Bytes(&frame[..18]), Part::Bytes(&frame[18..])]).unwrap();
        assert_eq!(used(&vq, 0), (0, (HDR_LEN + 100) as u32));
        let mut hdr = [0u8; HDR_LEN];
        m.read_slice(&mut hdr, GuestAddress(0x2000)).unwrap();
        assert_eq!(VnetHdr::parse(&hdr).unwrap(), vnet);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
        let mut got = vec![0u8; 100];
        m.read_slice(&mut got, GuestAddress(0x2000 + HDR_LEN as u64)).unwrap();
        assert_eq!(got, frame);
    }

    #[test]
    fn test_rx_mergeable_buffers_span_chains() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        // Three chains of 1000 bytes (the second made of two descriptors).
        rx_chain(&vq, 0, &[(0x2000, 1000)]);
        rx_chain(&vq, 1, &[(0x3000, 600), (0x4000, 400)]);
        rx_chain(&vq, 3, &[(0x5000, 1000)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let frame: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN);
        w.write(&VnetHdr::default(), &[Part::Bytes(&frame)]).unwrap();
        assert!(w.needs_notification());
        assert_eq!((used(&vq, 0), used(&vq, 1), used(&vq, 2)), ((0, 1000), (1, 1000), (3, 512)));
        let mut hdr = [0u8; HDR_LEN];
        m.read_slice(&mut hdr, GuestAddress(0x2000)).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
        // Reassemble what the driver would.
        let mut got = Vec::new();
        for (a, l) in [(0x2000 + 12, 988), (0x3000, 600), (0x4000, 400), (0x5000, 512)] {
            let mut b = vec![0u8; l];
            m.read_slice(&mut b, GuestAddress(a)).unwrap();
            got.extend(b);
        }
        assert_eq!(got, frame);
    }

    #[test]
    fn test_rx_without_mergeable_too_small_is_not_consumed() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x2000, 1000)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let big = vec![7u8; 1500];
        let mut w = RxWriter::new(&mut q, &m, false, HDR_LEN);
        assert_eq!(w.write(&VnetHdr::default(), &[Part::Bytes(&big)]), Err(RxError::TooBig));
        // A small frame still fits the chain that was put back.
        w.write(&VnetHdr::default(), &[Part::Bytes(&big[..60])]).unwrap();
        assert_eq!(used(&vq, 0), (0, 72));
    }

    #[test]
    fn test_rx_no_buffers_and_read_only_descriptor() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        let mut q: Queue = vq.create_queue().unwrap();
        let f = [1u8; 60];
        assert_eq!(
            RxWriter::new(&mut q, &m, true, HDR_LEN).write(&VnetHdr::default(), &[Part::Bytes(&f)]),
            Err(RxError::NoBuffers)
        );
        // A read-only descriptor in a receive chain: refused, handed back empty.
        vq.add_desc_chains(&[d(0x2000, 2048, 0, 0)], 0).unwrap();
        rx_chain(&vq, 1, &[(0x3000, 2048)]);
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN);
        assert_eq!(w.write(&VnetHdr::default(), &[Part::Bytes(&f)]), Err(RxError::BadChain));
        assert_eq!(used(&vq, 0), (0, 0));
        w.write(&VnetHdr::default(), &[Part::Bytes(&f)]).unwrap();
        assert_eq!(used(&vq, 1), (1, 72));
    }

    #[test]
    fn test_rx_copies_straight_from_another_guest() {
        let (src, dst) = (mem(), mem());
        let payload: Vec<u8> = (0..300u16).map(|i| (i * 7) as u8).collect();
        src.write_slice(&payload, GuestAddress(0x9000)).unwrap();
        let vq = MockSplitQueue::create(&dst, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x2000, 4096)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let head = [0xaau8; 18];
        let mut w = RxWriter::new(&mut q, &dst, true, HDR_LEN);
        w.write(&VnetHdr::default(), &[Part::Bytes(&head), Part::Guest(&src, Seg { addr: 0x9000, len: 300 })]).unwrap();
        let mut got = vec![0u8; 318];
        dst.read_slice(&mut got, GuestAddress(0x2000 + HDR_LEN as u64)).unwrap();
        assert_eq!(&got[..18], &head);
        assert_eq!(&got[18..], &payload[..]);
        // A source segment outside the source's memory is refused.
        rx_chain(&vq, 1, &[(0x3000, 4096)]);
        let mut w = RxWriter::new(&mut q, &dst, true, HDR_LEN);
        assert_eq!(
            w.write(&VnetHdr::default(), &[Part::Guest(&src, Seg { addr: 0x7000_0000, len: 10 })]),
            Err(RxError::BadSource)
        );
    }
}
