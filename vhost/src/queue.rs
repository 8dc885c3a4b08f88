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

use crate::device::Memory;
use crate::ring::{self, ChainError, Ring, RingError, Xlate};
use crate::sys::dirtylog::DirtyLog;
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
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Pops up to `max` chains from `queue` (reading the available index once). `out` gets each
/// chain's head index, either the frame (its tail segments appended to `segs`, which `out`
/// also gets, to look at or to take back) or why it was refused. Either way the chain is
/// consumed: the caller hands it back with [`complete_tx`] once done with the frame.
/// Returns how many chains, or why the queue is broken (the chains before the break were
/// still taken and given to `out`; nothing after it is).
pub fn pop_tx(
    queue: &mut Queue,
    mem: &Memory,
    hdr_len: usize,
    max: usize,
    segs: &mut Vec<Seg>,
    mut out: impl FnMut(u16, Result<&TxFrame, TxError>, &mut Vec<Seg>),
) -> Result<usize, RingError> {
    let ring = Ring::new(queue, mem).ok_or(RingError::BadRingAddress)?;
    let start = queue.next_avail();
    let avail = ring::pending(&ring, start)?;
    let n = usize::from(avail).min(max);
    let mut x = Xlate::new(mem);
    // First the whole burst's buffers are requested (their first two lines: the header and
    // the frame's head), so the misses overlap instead of coming one frame at a time.
    for k in 0..n {
        let head = ring.avail_head(start.wrapping_add(k as u16));
        if let Some(s) = ring.first_buf(head).and_then(|a| x.slice(a, 128)) {
            let p = s.as_ptr();
            ring::prefetch_read(p);
            ring::prefetch_read(p.wrapping_add(64));
        }
    }
    for k in 0..n {
        let head = ring.avail_head(start.wrapping_add(k as u16));
        if head >= ring.size() {
            // Not a chain we could hand back: the ring itself is broken.
            queue.set_next_avail(start.wrapping_add(k as u16));
            return Err(RingError::BadHead { head, size: ring.size() });
        }
        let first_seg = segs.len();
        let r = parse_tx(&ring, head, &mut x, hdr_len, segs, first_seg);
        if r.is_err() {
            segs.truncate(first_seg);
        }
        // Lent, not moved: the frame is copied once, by whoever keeps it.
        out(head, r.as_ref().map_err(|e| *e), segs);
    }
    queue.set_next_avail(start.wrapping_add(n as u16));
    Ok(n)
}

fn parse_tx(
    ring: &Ring<'_>,
    head: u16,
    x: &mut Xlate<'_>,
    hdr_len: usize,
    segs: &mut Vec<Seg>,
    first_seg: usize,
) -> Result<TxFrame, TxError> {
    // The common case: one descriptor with the header and at least the decision bytes.
    if let Some(b) = ring.single(head) {
        let len = b.len as usize;
        if !b.write && len >= hdr_len + HEAD_LEN && len <= MAX_FRAME + hdr_len {
            let s = x.slice(b.addr, len).ok_or(TxError::BadAddress)?;
            // Fixed-size reads, plain loads: the header's first 10 bytes (the same in both of
            // its forms; num_buffers means nothing on transmit) and the decision bytes.
            let (Some(hdr), Some(head_bytes)) =
                (s.read_array::<{ crate::virtio_net::HDR_LEN_LEGACY }>(0), s.read_array::<HEAD_LEN>(hdr_len))
            else {
                return Err(TxError::BadAddress);
            };
            let rest = len - hdr_len - HEAD_LEN;
            if rest > 0 {
                segs.push(Seg { addr: b.addr + (hdr_len + HEAD_LEN) as u64, len: rest as u32 });
            }
            return Ok(TxFrame {
                head_index: head,
                vnet: VnetHdr::parse(&hdr).unwrap_or_default(),
                len: (len - hdr_len) as u32,
                head: head_bytes,
                head_len: HEAD_LEN as u8,
                first_seg: first_seg as u32,
                nsegs: u16::from(rest > 0),
            });
        }
    }
    let mut hdr = [0u8; crate::virtio_net::HDR_LEN];
    let mut head_bytes = [0u8; HEAD_LEN];
    let (mut hdr_got, mut head_got, mut total) = (0usize, 0usize, 0usize);
    let mut err = None;
    let walked = ring.walk(head, |b| {
        let r = (|| {
            if b.write {
                return Err(TxError::WritableDescriptor);
            }
            let (mut addr, mut len) = (b.addr, b.len as usize);
            let slice = x.slice(addr, len).ok_or(TxError::BadAddress)?;
            total += len;
            if total > MAX_FRAME + hdr_len {
                return Err(TxError::TooLong(total.saturating_sub(hdr_len)));
            }
            let mut at = 0usize;
            // The header first...
            if hdr_got < hdr_len {
                let n = len.min(hdr_len - hdr_got);
                if !slice.read_to(&mut hdr[hdr_got..hdr_got + n]) {
                    return Err(TxError::BadAddress);
                }
                hdr_got += n;
                at += n;
                len -= n;
            }
            // ...then the bytes the switch decides on...
            if len > 0 && head_got < HEAD_LEN {
                let n = len.min(HEAD_LEN - head_got);
                if !slice.sub(at, n).is_some_and(|h| h.read_to(&mut head_bytes[head_got..head_got + n])) {
                    return Err(TxError::BadAddress);
                }
                head_got += n;
                at += n;
                len -= n;
            }
            addr += at as u64;
            // ...and the rest stays where it is.
            if len > 0 {
                if segs.len() - first_seg >= MAX_SEGS {
                    return Err(TxError::TooManySegments);
                }
                segs.push(Seg { addr, len: len as u32 });
            }
            Ok(())
        })();
        match r {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    walked.map_err(TxError::Chain)?;
    if hdr_got < hdr_len {
        return Err(TxError::TooShort(total));
    }
    Ok(TxFrame {
        head_index: head,
        vnet: VnetHdr::parse(&hdr).unwrap_or_default(),
        len: (total - hdr_len) as u32,
        head: head_bytes,
        head_len: head_got as u8,
        first_seg: first_seg as u32,
        nsegs: (segs.len() - first_seg) as u16,
    })
}

/// Hands transmit chains back to the driver: their used elements, then the used index once.
/// Returns whether the driver wants an interrupt.
pub fn complete_tx(queue: &mut Queue, mem: &Memory, heads: &[u16]) -> bool {
    if heads.is_empty() {
        return false;
    }
    let Some(ring) = Ring::new(queue, mem) else { return false };
    let old = queue.next_used();
    let mut pos = old;
    for &h in heads {
        ring.put_used(pos, h, 0);
        pos = pos.wrapping_add(1);
    }
    ring.publish_used(pos);
    queue.set_next_used(pos);
    ring.needs_interrupt(old, pos)
}

/// A source of frame bytes for [`RxWriter::write`].
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Bytes(&'a [u8]),
    /// Bytes in (another) guest's memory.
    Guest(&'a Memory, Seg),
    /// Bytes in (another) guest's memory, already translated (see [`Xlate`]).
    Slice(ring::Span<'a>),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::Guest(_, s) => s.len as usize,
            Part::Slice(s) => s.len(),
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
    #[error(transparent)]
    Broken(#[from] RingError),
}

/// A popped receive chain: its buffers are `RxScratch::descs[first..first + n]`.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    first: u32,
    n: u16,
    cap: usize,
}

/// Buffers an [`RxWriter`] reuses from burst to burst (so writing allocates nothing).
#[derive(Debug, Default)]
pub struct RxScratch {
    chains: Vec<RxChain>,
    descs: Vec<(u64, u32)>,
}

/// Writes frames into a receive queue, a burst at a time: chains are taken with one read of
/// the available index (read again only when they run out), used elements are written as
/// frames complete, and the used index is published once, by [`RxWriter::finish`] (or on
/// drop), which also says whether the driver wants an interrupt.
pub struct RxWriter<'a> {
    ring: Option<Ring<'a>>,
    queue: &'a mut Queue,
    /// Translations into this guest's memory.
    x: Xlate<'a>,
    mrg: bool,
    hdr_len: usize,
    s: &'a mut RxScratch,
    next_avail: u16,
    avail_end: u16,
    next_used: u16,
    old_used: u16,
    done: bool,
    /// The driver broke the ring: nothing more is taken from it.
    broken: Option<RingError>,
    /// The frontend's dirty log while it migrates the guest: every byte range written into
    /// a buffer is marked there, right after it is written.
    log: Option<&'a DirtyLog>,
    pub written: usize,
}

impl<'a> RxWriter<'a> {
    pub fn new(queue: &'a mut Queue, mem: &'a Memory, mrg: bool, hdr_len: usize, s: &'a mut RxScratch) -> Self {
        let ring = Ring::new(queue, mem);
        let next_avail = queue.next_avail();
        let next_used = queue.next_used();
        let mut broken = None;
        let avail_end = match &ring {
            Some(r) => match ring::pending(r, next_avail) {
                Ok(n) => next_avail.wrapping_add(n),
                Err(e) => {
                    broken = Some(e);
                    next_avail
                }
            },
            None => {
                if queue.ready() {
                    broken = Some(RingError::BadRingAddress);
                }
                next_avail
            }
        };
        s.chains.clear();
        s.descs.clear();
        RxWriter {
            ring,
            queue,
            x: Xlate::new(mem),
            mrg,
            hdr_len,
            s,
            next_avail,
            avail_end,
            next_used,
            old_used: next_used,
            done: false,
            broken,
            log: None,
            written: 0,
        }
    }

    /// Marks every buffer byte this writer writes in `log` (a migrating guest's; see
    /// [`crate::device::DevState::dirty_log`]). The used ring is the caller's to mark
    /// ([`crate::device::Vring::log_used`]), after [`RxWriter::finish`].
    pub fn with_log(mut self, log: Option<&'a DirtyLog>) -> Self {
        self.log = log;
        self
    }

    #[inline]
    fn logged(&self, addr: u64, len: usize) {
        if let Some(l) = self.log {
            l.mark(addr, len as u64);
        }
    }

    /// Why the ring cannot be used, once the driver broke it.
    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }

    /// Pops the next chain; `Ok(false)` when the ring is empty.
    fn pop_chain(&mut self) -> Result<bool, RxError> {
        if let Some(e) = self.broken {
            return Err(RxError::Broken(e));
        }
        let Some(ring) = &self.ring else { return Ok(false) };
        if self.next_avail == self.avail_end {
            // Out of what we saw: look once more.
            let more = match ring::pending(ring, self.next_avail) {
                Ok(n) => n,
                Err(e) => {
                    self.broken = Some(e);
                    return Err(RxError::Broken(e));
                }
            };
            if more == 0 {
                return Ok(false);
            }
            self.avail_end = self.next_avail.wrapping_add(more);
        }
        let head = ring.avail_head(self.next_avail);
        if head >= ring.size() {
            let e = RingError::BadHead { head, size: ring.size() };
            self.broken = Some(e);
            return Err(RxError::Broken(e));
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        let first = self.s.descs.len();
        // The common case: one writable buffer (its address is checked when it is written).
        if let Some(b) = ring.single(head) {
            if !b.write {
                self.refuse_chain(head, first);
                return Err(RxError::BadChain);
            }
            self.s.descs.push((b.addr, b.len));
            self.s.chains.push(RxChain { head, first: first as u32, n: 1, cap: b.len as usize });
            return Ok(true);
        }
        let mut cap = 0usize;
        let mut bad = false;
        let x = &mut self.x;
        let descs = &mut self.s.descs;
        let walked = ring.walk(head, |b| {
            if !b.write || x.slice(b.addr, b.len as usize).is_none() {
                bad = true;
                return false;
            }
            cap += b.len as usize;
            descs.push((b.addr, b.len));
            true
        });
        if bad || walked.is_err() {
            self.s.descs.truncate(first);
            self.refuse_chain(head, first);
            return Err(RxError::BadChain);
        }
        let n = (self.s.descs.len() - first) as u16;
        self.s.chains.push(RxChain { head, first: first as u32, n, cap });
        Ok(true)
    }

    /// A chain that cannot take a frame: given back empty (the driver sees a zero-length
    /// buffer and moves on), after the chains taken before it for the same frame, which the
    /// caller hands back with [`RxWriter::consume_empty`]: used elements stay in avail order
    /// (VIRTIO_F_IN_ORDER).
    fn refuse_chain(&mut self, head: u16, first: usize) {
        self.s.chains.push(RxChain { head, first: first as u32, n: 0, cap: 0 });
    }

    /// Prefetches the first buffers of the next `n` available chains (nothing is taken).
    pub fn prefetch(&mut self, n: usize) {
        let Some(ring) = &self.ring else { return };
        // What the available index said when the writer was made: reading it again would be
        // one more miss on a line the driver keeps writing.
        let avail = self.avail_end.wrapping_sub(self.next_avail).min(n.min(usize::from(u16::MAX)) as u16);
        for k in 0..avail {
            let head = ring.avail_head(self.next_avail.wrapping_add(k));
            if let Some(addr) = ring.first_buf(head) {
                // Two lines: the header and a minimum-size frame already straddle them.
                if let Some(s) = self.x.slice(addr, 128) {
                    let p = s.as_ptr();
                    ring::prefetch_write(p);
                    ring::prefetch_write(p.wrapping_add(64));
                }
            }
        }
    }

    fn put_used(&mut self, head: u16, len: u32) {
        if let Some(r) = &self.ring {
            r.put_used(self.next_used, head, len);
            self.next_used = self.next_used.wrapping_add(1);
        }
    }

    /// Writes one frame made of `parts` (the virtio-net header `hdr` is prepended).
    pub fn write(&mut self, hdr: &VnetHdr, parts: &[Part<'_>]) -> Result<(), RxError> {
        let frame_len: usize = parts.iter().map(Part::len).sum();
        let need = self.hdr_len + frame_len;
        if let Some(r) = self.write_one_buffer(hdr, parts, need) {
            return r;
        }
        let mut cap = 0;
        while cap < need {
            if !self.mrg && !self.s.chains.is_empty() {
                break;
            }
            match self.pop_chain() {
                Ok(true) => cap += self.s.chains.last().map_or(0, |c| c.cap),
                Ok(false) => {
                    self.rollback();
                    return Err(RxError::NoBuffers);
                }
                Err(e @ RxError::Broken(_)) => {
                    self.rollback();
                    return Err(e);
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
        if self.s.chains.len() == 1 && self.s.chains[0].n == 1 {
            return self.write_flat(hdr, parts, need);
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
        let n = self.s.chains.len() as u16;
        if !self.write_header(hdr, if self.mrg { n } else { 1 }) {
            self.consume_empty();
            return Err(RxError::BadChain);
        }
        // Account what each chain holds: the header counts in the first.
        let mut left = need;
        for i in 0..self.s.chains.len() {
            let c = self.s.chains[i];
            let w = left.min(c.cap);
            left -= w;
            self.put_used(c.head, w as u32);
        }
        self.s.chains.clear();
        self.s.descs.clear();
        self.written += 1;
        Ok(())
    }

    /// [`RxWriter::write`] for the most common frame: its copied head (the bytes the switch
    /// decided on) and one span of the sending guest's memory after it. When the next chain
    /// is one buffer that holds it all, the two copies and the header go straight in, without
    /// a list of parts; otherwise as `write`.
    #[inline]
    pub fn write_head_tail(&mut self, hdr: &VnetHdr, head: &[u8], tail: ring::Span<'_>) -> Result<(), RxError> {
        let hl = self.hdr_len;
        let need = hl + head.len() + tail.len();
        if let Some(r) = self.one_buffer(need, |d| head_tail_into(d, hl, hdr, head, &tail)) {
            return r;
        }
        self.write(hdr, &[Part::Bytes(head), Part::Slice(tail)])
    }

    /// The common case of [`RxWriter::write`], taken without the scratch lists: the next
    /// chain is one writable buffer that holds the whole frame, and nothing else is popped.
    /// `None` when that is not the case (nothing taken; the general path decides).
    #[inline]
    fn write_one_buffer(&mut self, hdr: &VnetHdr, parts: &[Part<'_>], need: usize) -> Option<Result<(), RxError>> {
        let hl = self.hdr_len;
        self.one_buffer(need, |d| fill(d, hl, hdr, parts))
    }

    /// Takes the next chain if it is one writable buffer of at least `need` bytes and has
    /// `fill` write the frame (header included) into its first `need` bytes. `None` when the
    /// next chain is not like that (nothing taken).
    #[inline(always)]
    fn one_buffer(
        &mut self,
        need: usize,
        fill: impl FnOnce(&ring::Span<'_>) -> Result<(), RxError>,
    ) -> Option<Result<(), RxError>> {
        if self.broken.is_some() || self.next_avail == self.avail_end || !self.s.chains.is_empty() {
            return None;
        }
        let ring = self.ring.as_ref()?;
        let head = ring.avail_head(self.next_avail);
        let b = ring.single(head)?;
        if !b.write || (b.len as usize) < need {
            return None;
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        let Some(d) = self.x.slice(b.addr, need) else {
            self.put_used(head, 0);
            return Some(Err(RxError::BadChain));
        };
        let r = fill(&d);
        // Also after a failed copy: part of the buffer may have been written.
        self.logged(b.addr, need);
        if let Err(e) = r {
            self.put_used(head, 0);
            return Some(Err(e));
        }
        self.put_used(head, need as u32);
        self.written += 1;
        Some(Ok(()))
    }

    /// [`RxWriter::write`] when the frame fits the first buffer of the one chain popped: one
    /// translation, then straight copies.
    fn write_flat(&mut self, hdr: &VnetHdr, parts: &[Part<'_>], need: usize) -> Result<(), RxError> {
        let c = self.s.chains[0];
        let (addr, _) = self.s.descs[c.first as usize];
        let Some(d) = self.x.slice(addr, need) else {
            self.consume_empty();
            return Err(RxError::BadChain);
        };
        let r = fill(&d, self.hdr_len, hdr, parts);
        self.logged(addr, need);
        if let Err(e) = r {
            self.consume_empty();
            return Err(e);
        }
        self.put_used(c.head, need as u32);
        self.s.chains.clear();
        self.s.descs.clear();
        self.written += 1;
        Ok(())
    }

    /// Writes the virtio-net header at the start of the first chain. When the first buffer
    /// holds it (always, in practice), as two stores of values built in registers: a header
    /// assembled on the stack and copied would be reloaded right after its bytes were stored,
    /// and that reload stalls behind the stores of the frame still waiting for their lines.
    fn write_header(&mut self, hdr: &VnetHdr, num_buffers: u16) -> bool {
        let first = self.s.chains.first().map(|c| self.s.descs[c.first as usize]);
        if let Some((addr, _)) = first.filter(|&(_, l)| l as usize >= self.hdr_len) {
            if let Some(d) = self.x.slice(addr, self.hdr_len) {
                let ok = header_into(&d, self.hdr_len, hdr, num_buffers);
                self.logged(addr, self.hdr_len);
                return ok;
            }
        }
        let bytes = hdr.to_bytes(num_buffers);
        let mut hc = Cursor { chain: 0, desc: 0, off: 0 };
        let hl = self.hdr_len;
        self.copy_bytes_at(&mut hc, &bytes[..hl]).is_ok()
    }

    /// Puts the popped (unused) chains back at the head of the ring.
    fn rollback(&mut self) {
        self.next_avail = self.next_avail.wrapping_sub(self.s.chains.len() as u16);
        self.s.chains.clear();
        self.s.descs.clear();
    }

    /// Returns the popped chains to the driver with nothing in them.
    fn consume_empty(&mut self) {
        for i in 0..self.s.chains.len() {
            let h = self.s.chains[i].head;
            self.put_used(h, 0);
        }
        self.s.chains.clear();
        self.s.descs.clear();
    }

    fn copy_part(&mut self, cur: &mut Cursor, p: &Part<'_>) -> Result<(), RxError> {
        match p {
            Part::Bytes(b) => self.copy_bytes_at(cur, b),
            Part::Slice(s) => {
                let mut at = 0;
                while at < s.len() {
                    let (daddr, room) = self.room(cur).ok_or(RxError::BadChain)?;
                    let n = room.min(s.len() - at);
                    let src = s.sub(at, n).ok_or(RxError::BadSource)?;
                    let d = self.x.slice(daddr, n).ok_or(RxError::BadChain)?;
                    src.copy_to(&d);
                    self.logged(daddr, n);
                    at += n;
                    cur.off += n;
                }
                Ok(())
            }
            Part::Guest(src, seg) => {
                let mut src_x = Xlate::new(src);
                let mut addr = seg.addr;
                let mut left = seg.len as usize;
                while left > 0 {
                    let (daddr, room) = self.room(cur).ok_or(RxError::BadChain)?;
                    let n = room.min(left);
                    let s = src_x.slice(addr, n).ok_or(RxError::BadSource)?;
                    let d = self.x.slice(daddr, n).ok_or(RxError::BadChain)?;
                    s.copy_to(&d);
                    self.logged(daddr, n);
                    addr += n as u64;
                    left -= n;
                    cur.off += n;
                }
                Ok(())
            }
        }
    }

    fn copy_bytes_at(&mut self, cur: &mut Cursor, mut b: &[u8]) -> Result<(), RxError> {
        while !b.is_empty() {
            let (daddr, room) = self.room(cur).ok_or(RxError::BadChain)?;
            let n = room.min(b.len());
            self.x.slice(daddr, n).ok_or(RxError::BadChain)?.write_from(&b[..n]);
            self.logged(daddr, n);
            b = &b[n..];
            cur.off += n;
        }
        Ok(())
    }

    /// Where the cursor points and how many bytes fit before the descriptor ends.
    fn room(&self, cur: &mut Cursor) -> Option<(u64, usize)> {
        loop {
            let c = self.s.chains.get(cur.chain)?;
            if cur.desc < usize::from(c.n) {
                let (addr, len) = self.s.descs[c.first as usize + cur.desc];
                if cur.off < len as usize {
                    return Some((addr + cur.off as u64, len as usize - cur.off));
                }
                cur.off -= len as usize;
                cur.desc += 1;
            } else {
                cur.chain += 1;
                cur.desc = 0;
            }
        }
    }

    fn publish(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.done = true;
        self.queue.set_next_avail(self.next_avail);
        self.queue.set_next_used(self.next_used);
        match &self.ring {
            Some(r) if self.next_used != self.old_used => {
                r.publish_used(self.next_used);
                r.needs_interrupt(self.old_used, self.next_used)
            }
            _ => false,
        }
    }

    /// Makes everything written visible to the driver. Returns whether it wants an interrupt.
    pub fn finish(mut self) -> bool {
        self.publish()
    }
}

impl Drop for RxWriter<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}

/// Fills one buffer `d` that holds the whole frame: the parts after the header, then the
/// header (a frame in one buffer has `num_buffers` 1).
#[inline]
fn fill(d: &ring::Span<'_>, hdr_len: usize, hdr: &VnetHdr, parts: &[Part<'_>]) -> Result<(), RxError> {
    let mut at = hdr_len;
    for p in parts {
        let n = p.len();
        let dst = d.sub(at, n).ok_or(RxError::BadChain)?;
        let copied = match p {
            Part::Bytes(b) => dst.write_from(b),
            Part::Guest(src, seg) => Xlate::new(src).slice(seg.addr, n).ok_or(RxError::BadSource)?.copy_to(&dst),
            Part::Slice(s) => s.copy_to(&dst),
        };
        if !copied {
            return Err(RxError::BadChain);
        }
        at += n;
    }
    if !header_into(d, hdr_len, hdr, 1) {
        return Err(RxError::BadChain);
    }
    Ok(())
}

/// Fills one buffer `d` with a frame made of `head` and `tail` (see
/// [`RxWriter::write_head_tail`]).
#[inline(always)]
fn head_tail_into(
    d: &ring::Span<'_>,
    hl: usize,
    hdr: &VnetHdr,
    head: &[u8],
    tail: &ring::Span<'_>,
) -> Result<(), RxError> {
    let copied = d.sub(hl, head.len()).is_some_and(|h| h.write_from(head))
        && d.sub(hl + head.len(), tail.len()).is_some_and(|t| tail.copy_to(&t))
        && header_into(d, hl, hdr, 1);
    if copied {
        Ok(())
    } else {
        Err(RxError::BadChain)
    }
}

/// Writes the virtio-net header at the start of `d` as two stores of values built in
/// registers (see [`RxWriter::write_header`]).
#[inline]
fn header_into(d: &ring::Span<'_>, hdr_len: usize, hdr: &VnetHdr, num_buffers: u16) -> bool {
    let w0 = u64::from(hdr.flags)
        | u64::from(hdr.gso_type) << 8
        | u64::from(hdr.hdr_len) << 16
        | u64::from(hdr.gso_size) << 32
        | u64::from(hdr.csum_start) << 48;
    let w1 = u32::from(hdr.csum_offset) | u32::from(num_buffers) << 16;
    d.write_u64_le(0, w0)
        && match hdr_len {
            crate::virtio_net::HDR_LEN => d.write_u32_le(8, w1),
            // The legacy 10-byte header has no num_buffers.
            _ => d.write_u16_le(8, w1 as u16),
        }
}

/// A position in the popped chains: chain, descriptor, offset in the descriptor.
struct Cursor {
    chain: usize,
    desc: usize,
    off: usize,
}

/// Re-arms notifications on a queue after draining it (EVENT_IDX aware). Returns true when
/// more buffers arrived meanwhile, so the caller should drain again.
pub fn enable_notification(queue: &mut Queue, mem: &Memory) -> bool {
    queue.enable_notification(mem).unwrap_or(false)
}

pub fn disable_notification(queue: &mut Queue, mem: &Memory) {
    let _ = queue.disable_notification(mem);
}

/// Marks a split ring's used ring at `gpa` (of `size` entries) dirty: flags, index, every
/// element and `avail_event` (a few pages at most).
#[inline]
pub fn log_used_ring(log: &DirtyLog, gpa: u64, size: u16) {
    log.mark(gpa, 6 + 8 * u64::from(size));
}

/// Whether the driver has made buffers available that we have not taken yet.
pub fn has_available(queue: &Queue, mem: &Memory) -> bool {
    queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire).map(|i| i.0 != queue.next_avail()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{ChainError, RingError};
    use crate::virtio_net::{F_NEEDS_CSUM, GSO_TCPV4, HDR_LEN};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor as Desc;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;
    use vm_memory::GuestAddress;

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
        pop_tx(q, m, HDR_LEN, 32, &mut segs, |h, r, _| out.push((h, r.copied()))).expect("ring usable");
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
        complete_tx(&mut q, &m, &[out[0].0]);
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
        let heads: Vec<u16> = out.iter().map(|(h, _)| *h).collect();
        complete_tx(&mut q, &m, &heads);
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

    #[test]
    fn test_tx_zero_length_and_oversized_indirect_chains_are_refused() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        put_frame(&m, 0x1000, &VnetHdr::default(), 60);
        // An indirect table of 17 entries on a queue of 16.
        for i in 0..17u64 {
            m.write_obj(d(0x1000, 72, NEXT, (i + 1) as u16), GuestAddress(0x8000 + 16 * i)).unwrap();
        }
        let descs = [
            // 0: zero length (QEMU: "zero sized buffers are not allowed").
            d(0x1000, 0, 0, 0),
            // 1: indirect, longer than the queue.
            d(0x8000, 17 * 16, VRING_DESC_F_INDIRECT as u16, 0),
            // 2: indirect, not a multiple of 16 bytes.
            d(0x8000, 24, VRING_DESC_F_INDIRECT as u16, 0),
            // 3: indirect with an empty buffer inside.
            d(0x9000, 32, VRING_DESC_F_INDIRECT as u16, 0),
        ];
        m.write_obj(d(0x1000, 12, NEXT, 1), GuestAddress(0x9000)).unwrap();
        m.write_obj(d(0x100c, 0, 0, 0), GuestAddress(0x9010)).unwrap();
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, segs) = pop_all(&mut q, &m);
        let errs: Vec<_> = out.iter().map(|(_, r)| r.unwrap_err()).collect();
        assert_eq!(
            errs,
            vec![
                TxError::Chain(ChainError::ZeroLength),
                TxError::Chain(ChainError::BadIndirect),
                TxError::Chain(ChainError::BadIndirect),
                TxError::Chain(ChainError::ZeroLength),
            ]
        );
        assert!(segs.is_empty());
    }

    #[test]
    fn test_tx_chain_longer_than_the_cap_is_refused() {
        let m = mem();
        // A queue of 256: a 200-buffer chain is shorter than the queue but over the cap.
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 256);
        let n = 200u16;
        let descs: Vec<RawDescriptor> =
            (0..n).map(|i| d(0x1000 + u64::from(i), 1, if i + 1 < n { NEXT } else { 0 }, i + 1)).collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, _) = pop_all(&mut q, &m);
        // The transmit side's segment cap (64) stops it first.
        assert_eq!(out[0].1.unwrap_err(), TxError::TooManySegments);
        // The ring walker's own cap: a receive chain of 200 writable buffers.
        let rvq = MockSplitQueue::create(&m, GuestAddress(0x20_0000), 256);
        let bufs: Vec<(u64, u32)> = (0..200u64).map(|i| (0x1000 + 16 * i, 16)).collect();
        rx_chain(&rvq, 0, &bufs);
        rx_chain(&rvq, 200, &[(0x8000, 2048)]);
        let mut rq: Queue = rvq.create_queue().unwrap();
        let mut sc = RxScratch::default();
        let mut w = RxWriter::new(&mut rq, &m, true, HDR_LEN, &mut sc);
        assert_eq!(w.write(&VnetHdr::default(), &[Part::Bytes(&[1; 60])]), Err(RxError::BadChain));
        w.write(&VnetHdr::default(), &[Part::Bytes(&[1; 60])]).unwrap();
        drop(w);
        assert_eq!(Ring::new(&rq, &m).unwrap().walk(0, |_| true), Err(ChainError::TooLong));
    }

    #[test]
    fn test_impossible_avail_index_or_head_breaks_the_queue() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        put_frame(&m, 0x1000, &VnetHdr::default(), 60);
        vq.add_desc_chains(&[d(0x1000, 72, 0, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        // The driver claims 1000 chains on a queue of 16.
        vq.avail().idx().store(1000);
        let mut segs = Vec::new();
        let mut n = 0;
        let r = pop_tx(&mut q, &m, HDR_LEN, 32, &mut segs, |_, _, _| n += 1);
        assert_eq!(r, Err(RingError::AvailIndex { avail: 1000, next: 0, size: 16 }));
        assert_eq!(n, 0, "nothing taken from a broken ring");
        assert_eq!(q.next_avail(), 0);
        // A head outside the table: the chains before it are taken, not it.
        vq.avail().idx().store(2);
        vq.avail().ring().ref_at(1).unwrap().store(99);
        let r = pop_tx(&mut q, &m, HDR_LEN, 32, &mut segs, |_, _, _| n += 1);
        assert_eq!(r, Err(RingError::BadHead { head: 99, size: 16 }));
        assert_eq!((n, q.next_avail()), (1, 1));
        // The receive side says so too.
        let rvq = MockSplitQueue::create(&m, GuestAddress(0x20_0000), 16);
        let mut rq: Queue = rvq.create_queue().unwrap();
        rvq.avail().idx().store(40);
        let mut sc = RxScratch::default();
        let mut w = RxWriter::new(&mut rq, &m, true, HDR_LEN, &mut sc);
        let e = w.write(&VnetHdr::default(), &[Part::Bytes(&[1; 60])]).unwrap_err();
        assert_eq!(e, RxError::Broken(RingError::AvailIndex { avail: 40, next: 0, size: 16 }));
        assert!(w.broken().is_some());
        assert!(!w.finish());
    }

    #[test]
    fn test_rx_zero_length_buffer_is_handed_back_empty() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        vq.add_desc_chains(&[d(0x2000, 0, WRITE, 0)], 0).unwrap();
        rx_chain(&vq, 1, &[(0x3000, 2048)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut sc = RxScratch::default();
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc);
        assert_eq!(w.write(&VnetHdr::default(), &[Part::Bytes(&[1; 60])]), Err(RxError::BadChain));
        w.write(&VnetHdr::default(), &[Part::Bytes(&[1; 60])]).unwrap();
        drop(w);
        assert_eq!((used(&vq, 0), used(&vq, 1)), ((0, 0), (1, 72)));
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

    /// VIRTIO_F_IN_ORDER is offered: every chain, refused ones included, is used in the
    /// order it was made available, with one used element per chain (what DPDK's in-order
    /// transmit cleanup counts on), on transmit and on (mergeable) receive.
    #[test]
    fn test_in_order_use_one_element_per_chain() {
        assert_ne!(crate::virtio_net::features::OFFERED & crate::virtio_net::features::IN_ORDER, 0);
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        put_frame(&m, 0x1000, &VnetHdr::default(), 60);
        put_frame(&m, 0x2000, &VnetHdr::default(), 200);
        // Chains at heads 0 (one descriptor), 1 (two), 3 (refused: writable), 4 (one).
        let descs = [
            d(0x1000, (HDR_LEN + 60) as u32, 0, 0),
            d(0x2000, HDR_LEN as u32, NEXT, 2),
            d(0x2000 + HDR_LEN as u64, 200, 0, 0),
            d(0x1000, 72, WRITE, 0),
            d(0x1000, (HDR_LEN + 60) as u32, 0, 0),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (out, _) = pop_all(&mut q, &m);
        let heads: Vec<u16> = out.iter().map(|(h, _)| *h).collect();
        assert_eq!(heads, [0, 1, 3, 4]);
        assert!(out[2].1.is_err());
        complete_tx(&mut q, &m, &heads);
        assert_eq!(vq.used().idx().load(), 4);
        let ids: Vec<u32> = (0..4).map(|i| used(&vq, i).0).collect();
        assert_eq!(ids, [0, 1, 3, 4]);

        // Receive: a 3000-byte frame over 2048-byte chains at heads 0 and 2 (two buffers
        // each), then a small one: used elements 0, 2, 4 in that order.
        let mut sc = RxScratch::default();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x4000, 1024), (0x4400, 1024)]);
        rx_chain(&vq, 2, &[(0x5000, 1024), (0x5400, 1024)]);
        rx_chain(&vq, 4, &[(0x6000, 2048)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let big = vec![7u8; 3000];
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc);
        w.write(&VnetHdr::default(), &[Part::Bytes(&big)]).unwrap();
        w.write(&VnetHdr::default(), &[Part::Bytes(&big[..60])]).unwrap();
        assert!(w.broken().is_none());
        drop(w);
        assert_eq!(vq.used().idx().load(), 3);
        let ids: Vec<u32> = (0..3).map(|i| used(&vq, i).0).collect();
        assert_eq!(ids, [0, 2, 4]);
        assert_eq!(used(&vq, 0).1 + used(&vq, 1).1, (HDR_LEN + 3000) as u32);

        // A frame that takes chains 0 and 1 and then meets a refused one (read-only) at 2:
        // all three come back empty, in avail order (not 2, 0, 1).
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x4000, 1024)]);
        rx_chain(&vq, 1, &[(0x5000, 1024)]);
        vq.add_desc_chains(&[d(0x6000, 1024, 0, 0)], 2).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc);
        assert_eq!(w.write(&VnetHdr::default(), &[Part::Bytes(&big)]), Err(RxError::BadChain));
        drop(w);
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!((0..3).map(|i| used(&vq, i)).collect::<Vec<_>>(), [(0, 0), (1, 0), (2, 0)]);
    }

    #[test]
    fn test_rx_frame_into_one_chain() {
        let m = mem();
        let mut sc0 = RxScratch::default();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x2000, 2048)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let frame: Vec<u8> = (0..100u8).collect();
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc0);
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
    fn test_rx_interrupts_follow_used_event_and_no_interrupt() {
        // (EVENT_IDX, used_event or NO_INTERRUPT flag, frames written) -> interrupt wanted.
        // Three frames move the used index 0 -> 3: the driver asked to hear about entry
        // `used_event`, so 0, 1 and 2 ring the bell and 3 (not yet reached) does not.
        for (event_idx, value, want) in [
            (true, 0u16, true),
            (true, 2, true),
            (true, 3, false),
            (true, 9, false),
            (false, 0, true),
            (false, 1, false),
        ] {
            let m = mem();
            let mut sc0 = RxScratch::default();
            let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
            for i in 0..3u16 {
                rx_chain(&vq, i, &[(0x2000 + 0x1000 * u64::from(i), 2048)]);
            }
            let mut q: Queue = vq.create_queue().unwrap();
            // The mock packs the used ring right after the avail ring, with no room for
            // used_event: move the used ring out of the way.
            let used_at = 0x20_0000u64;
            q.set_used_ring_address(Some(used_at as u32), Some(0));
            q.set_event_idx(event_idx);
            if event_idx {
                // used_event sits after the avail ring's 16 entries.
                m.write_obj(value.to_le(), GuestAddress(vq.avail_addr().0 + 4 + 2 * 16)).unwrap();
            } else {
                m.write_obj(value.to_le(), vq.avail_addr()).unwrap();
            }
            let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc0);
            for _ in 0..3 {
                w.write(&VnetHdr::default(), &[Part::Bytes(&[0xab; 60])]).unwrap();
            }
            assert_eq!(w.finish(), want, "event_idx {event_idx}, value {value}");
            let idx: u16 = m.read_obj(GuestAddress(used_at + 2)).unwrap();
            assert_eq!(idx, 3, "one publish covers the burst");
        }
    }

    #[test]
    fn test_rx_mergeable_buffers_span_chains() {
        let m = mem();
        let mut sc0 = RxScratch::default();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        // Three chains of 1000 bytes (the second made of two descriptors).
        rx_chain(&vq, 0, &[(0x2000, 1000)]);
        rx_chain(&vq, 1, &[(0x3000, 600), (0x4000, 400)]);
        rx_chain(&vq, 3, &[(0x5000, 1000)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let frame: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc0);
        w.write(&VnetHdr::default(), &[Part::Bytes(&frame)]).unwrap();
        assert!(w.finish(), "no EVENT_IDX: every burst interrupts");
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

    /// Guest memory as bytes, page by page.
    fn pages(m: &Memory) -> Vec<Vec<u8>> {
        (0..0x40_0000u64 / 4096)
            .map(|p| {
                let mut b = vec![0u8; 4096];
                m.read_slice(&mut b, GuestAddress(p * 4096)).unwrap();
                b
            })
            .collect()
    }

    /// Pages that differ between two snapshots.
    fn changed(a: &[Vec<u8>], b: &[Vec<u8>]) -> Vec<u64> {
        (0..a.len()).filter(|&i| a[i] != b[i]).map(|i| i as u64).collect()
    }

    fn log_for(m: &Memory) -> (std::fs::File, DirtyLog) {
        use vm_memory::GuestMemoryBackend;
        let size = m.last_addr().0 / 4096 / 8 + 1;
        let f =
            std::fs::File::from(nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap());
        f.set_len(size).unwrap();
        let log = DirtyLog::map(&f, 0, size).unwrap();
        (f, log)
    }

    /// Migration: while a dirty log is set, every page the device writes is marked —
    /// receive buffers (one buffer, chains of descriptors straddling pages, mergeable
    /// buffers across chains, large frames over several pages, a write that fails part-way),
    /// used elements, the used index and the notification fields (EVENT_IDX), and transmit
    /// completions. Checked by diffing all of guest memory before and after against the log:
    /// a page written and not marked would reach the destination stale.
    #[test]
    fn test_every_page_written_is_logged() {
        let m = mem();
        let (_f, log) = log_for(&m);
        let mut sc = RxScratch::default();
        let rxq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        rx_chain(&rxq, 0, &[(0x2000, 1000)]);
        rx_chain(&rxq, 1, &[(0x3f00, 600), (0x6ff0, 400)]);
        rx_chain(&rxq, 3, &[(0x9000, 1000)]);
        rx_chain(&rxq, 4, &[(0xc800, 12000)]);
        rx_chain(&rxq, 5, &[(0x2_0000, 2048)]);
        // A frame whose second part's source is outside the sending guest's memory: it fails
        // part-way, after its first part was written.
        rx_chain(&rxq, 6, &[(0x3_0ff0, 2048)]);
        let mut q: Queue = rxq.create_queue().unwrap();
        q.set_event_idx(true);
        let txq = MockSplitQueue::create(&m, GuestAddress(0x20_0000), 16);
        put_frame(&m, 0x1_0000, &VnetHdr::default(), 60);
        txq.add_desc_chains(&[d(0x1_0000, (HDR_LEN + 60) as u32, 0, 0)], 0).unwrap();
        let mut tq: Queue = txq.create_queue().unwrap();
        tq.set_event_idx(true);

        let before = pages(&m);
        let src = {
            let s = Memory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
            s.write_slice(&[7u8; 3000], GuestAddress(0x100)).unwrap();
            s
        };
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc).with_log(Some(&log));
        w.write(&VnetHdr::default(), &[Part::Bytes(&[1; 60])]).unwrap();
        w.write(&VnetHdr::default(), &[Part::Bytes(&[2; 700]), Part::Guest(&src, Seg { addr: 0x100, len: 800 })])
            .unwrap();
        w.write(&VnetHdr::default(), &[Part::Bytes(&[3; 11000])]).unwrap();
        w.write(&VnetHdr::default(), &[Part::Bytes(&[4; 60])]).unwrap();
        let bad = [Part::Bytes(&[5; 100]), Part::Guest(&src, Seg { addr: 0xfff0, len: 100 })];
        assert_eq!(w.write(&VnetHdr::default(), &bad), Err(RxError::BadSource));
        w.finish();
        let _ = enable_notification(&mut q, &m);
        log_used_ring(&log, rxq.used_addr().0, 16);

        let (popped, _) = pop_all(&mut tq, &m);
        disable_notification(&mut tq, &m);
        complete_tx(&mut tq, &m, &[popped[0].0]);
        let _ = enable_notification(&mut tq, &m);
        log_used_ring(&log, txq.used_addr().0, 16);

        let after = pages(&m);
        let written = changed(&before, &after);
        for want in [0x2, 0x3, 0x4, 0x6, 0x7, 0x9, 0xc, 0xd, 0xe, 0xf, 0x20, 0x30, 0x31, 0x100, 0x200] {
            assert!(written.contains(&want), "page {want:#x} written (test setup): {written:x?}");
        }
        let unlogged: Vec<u64> = written.iter().copied().filter(|&p| !log.is_dirty(p)).collect();
        assert!(unlogged.is_empty(), "pages written and not logged: {unlogged:#x?} (written: {written:#x?})");
        assert_eq!(log.out_of_range(), 0);

        // Without a log nothing is marked, and the same writes still work.
        let (_f2, log2) = log_for(&m);
        rx_chain(&rxq, 7, &[(0x3_8000, 1000)]);
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc);
        w.write(&VnetHdr::default(), &[Part::Bytes(&[6; 60])]).unwrap();
        w.finish();
        assert!((0..0x400).all(|p| !log2.is_dirty(p)));
    }

    #[test]
    fn test_rx_without_mergeable_too_small_is_not_consumed() {
        let m = mem();
        let mut sc0 = RxScratch::default();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x2000, 1000)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let big = vec![7u8; 1500];
        let mut w = RxWriter::new(&mut q, &m, false, HDR_LEN, &mut sc0);
        assert_eq!(w.write(&VnetHdr::default(), &[Part::Bytes(&big)]), Err(RxError::TooBig));
        // A small frame still fits the chain that was put back.
        w.write(&VnetHdr::default(), &[Part::Bytes(&big[..60])]).unwrap();
        assert_eq!(used(&vq, 0), (0, 72));
    }

    #[test]
    fn test_rx_no_buffers_and_read_only_descriptor() {
        let m = mem();
        let mut sc0 = RxScratch::default();
        let mut sc1 = RxScratch::default();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x10_0000), 16);
        let mut q: Queue = vq.create_queue().unwrap();
        let f = [1u8; 60];
        assert_eq!(
            RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc0).write(&VnetHdr::default(), &[Part::Bytes(&f)]),
            Err(RxError::NoBuffers)
        );
        // A read-only descriptor in a receive chain: refused, handed back empty.
        vq.add_desc_chains(&[d(0x2000, 2048, 0, 0)], 0).unwrap();
        rx_chain(&vq, 1, &[(0x3000, 2048)]);
        let mut w = RxWriter::new(&mut q, &m, true, HDR_LEN, &mut sc1);
        assert_eq!(w.write(&VnetHdr::default(), &[Part::Bytes(&f)]), Err(RxError::BadChain));
        assert_eq!(used(&vq, 0), (0, 0));
        w.write(&VnetHdr::default(), &[Part::Bytes(&f)]).unwrap();
        assert_eq!(used(&vq, 1), (1, 72));
    }

    #[test]
    fn test_rx_copies_straight_from_another_guest() {
        let (src, dst) = (mem(), mem());
        let mut sc0 = RxScratch::default();
        let mut sc1 = RxScratch::default();
        let payload: Vec<u8> = (0..300u16).map(|i| (i * 7) as u8).collect();
        src.write_slice(&payload, GuestAddress(0x9000)).unwrap();
        let vq = MockSplitQueue::create(&dst, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x2000, 4096)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let head = [0xaau8; 18];
        let mut w = RxWriter::new(&mut q, &dst, true, HDR_LEN, &mut sc0);
        w.write(&VnetHdr::default(), &[Part::Bytes(&head), Part::Guest(&src, Seg { addr: 0x9000, len: 300 })]).unwrap();
        let mut got = vec![0u8; 318];
        dst.read_slice(&mut got, GuestAddress(0x2000 + HDR_LEN as u64)).unwrap();
        assert_eq!(&got[..18], &head);
        assert_eq!(&got[18..], &payload[..]);
        drop(w);
        // A source segment outside the source's memory is refused.
        rx_chain(&vq, 1, &[(0x3000, 4096)]);
        let mut w = RxWriter::new(&mut q, &dst, true, HDR_LEN, &mut sc1);
        assert_eq!(
            w.write(&VnetHdr::default(), &[Part::Guest(&src, Seg { addr: 0x7000_0000, len: 10 })]),
            Err(RxError::BadSource)
        );
    }

    /// `write_head_tail`, the receive path of the usual frame: straight into one buffer that
    /// holds it, spread over mergeable buffers when none does, and a read-only buffer
    /// refused and handed back empty, all as `write` would.
    #[test]
    fn test_rx_head_and_tail_into_one_buffer_or_many() {
        let (src, dst) = (mem(), mem());
        let mut sc = RxScratch::default();
        let payload: Vec<u8> = (0..300u16).map(|i| (i * 7) as u8).collect();
        src.write_slice(&payload, GuestAddress(0x9000)).unwrap();
        let tail = Xlate::new(&src).slice(0x9000, 300).unwrap();
        let head = [0xaau8; 18];
        let vq = MockSplitQueue::create(&dst, GuestAddress(0x10_0000), 16);
        rx_chain(&vq, 0, &[(0x2000, 4096)]);
        rx_chain(&vq, 1, &[(0x3000, 200)]);
        rx_chain(&vq, 2, &[(0x4000, 200)]);
        vq.add_desc_chains(&[d(0x5000, 2048, 0, 0)], 3).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut w = RxWriter::new(&mut q, &dst, true, HDR_LEN, &mut sc);
        let hdr = VnetHdr { flags: 2, ..Default::default() };
        // One buffer.
        w.write_head_tail(&hdr, &head, tail).unwrap();
        // Two small ones: the general path.
        w.write_head_tail(&hdr, &head, tail).unwrap();
        // Read-only.
        assert_eq!(w.write_head_tail(&hdr, &head, tail), Err(RxError::BadChain));
        assert_eq!(w.written, 2);
        assert!(w.finish());
        assert_eq!((used(&vq, 0), used(&vq, 1), used(&vq, 2), used(&vq, 3)), ((0, 330), (1, 200), (2, 130), (3, 0)));
        let mut want = head.to_vec();
        want.extend(&payload);
        let mut got = vec![0u8; 330];
        dst.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(&got[..HDR_LEN], &hdr.to_bytes(1));
        assert_eq!(&got[HDR_LEN..], &want[..]);
        let mut hdr2 = [0u8; HDR_LEN];
        dst.read_slice(&mut hdr2, GuestAddress(0x3000)).unwrap();
        assert_eq!(hdr2, hdr.to_bytes(2));
        let mut got = Vec::new();
        for (a, l) in [(0x3000 + HDR_LEN as u64, 188), (0x4000, 130)] {
            let mut b = vec![0u8; l];
            dst.read_slice(&mut b, GuestAddress(a)).unwrap();
            got.extend(b);
        }
        assert_eq!(got, want);
    }
}
