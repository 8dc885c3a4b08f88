//! Burst access to a split virtqueue's rings.
//!
//! `virtio-queue` keeps each queue's state (addresses, size, next indices, EVENT_IDX) and is
//! what the protocol handler configures; this module reads and writes the rings themselves
//! for the datapath, a burst at a time, the way DPDK's vhost library does:
//! - the three rings are translated to host slices once per burst (not once per access);
//! - the driver's available index is read once per burst, not once per chain (every read of
//!   a line the other side is writing is a cache miss);
//! - used elements are written as chains complete, and the used index is published once
//!   per burst, followed by one notification decision.
//!
//! (`virtio-queue` 0.18's `pop_descriptor_chain` re-reads the available index for every
//! chain and `add_used` publishes the used index for every element; that alone cost about a
//! third of the datapath's time per frame.)
//!
//! Everything read from the rings is guest input, checked the way DPDK's vhost library and
//! QEMU's virtio core check it:
//! - ring positions are taken modulo the queue size; an available index more than the queue
//!   size ahead of ours, or a chain head outside the descriptor table, is a [`RingError`]:
//!   the queue is broken and the device needs a reset (nothing more is taken from it);
//! - a chain is a [`ChainError`] (the chain is handed back unused, the queue goes on) when a
//!   descriptor index is out of range, a descriptor has length zero, the chain has more than
//!   [`MAX_CHAIN_BUFS`] buffers or more than the queue size (a loop), or an indirect table is
//!   empty, not a multiple of 16 bytes, longer than the queue, outside guest memory, chained
//!   or nested;
//! - every buffer address is checked by the caller before use.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::device::Memory;

use virtio_bindings::virtio_ring as vr;

const F_NEXT: u16 = vr::VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = vr::VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = vr::VRING_DESC_F_INDIRECT as u16;
const AVAIL_F_NO_INTERRUPT: u16 = vr::VRING_AVAIL_F_NO_INTERRUPT as u16;
const USED_F_NO_NOTIFY: u16 = vr::VRING_USED_F_NO_NOTIFY as u16;

pub use crate::sys::gmem::Span;
use crate::sys::gmem::Table;

/// Guest address -> host span, remembering the region of the last lookup: a guest has one
/// or a few regions, and a burst touches the same one over and over, so most lookups are two
/// compares instead of a search of the region list.
pub struct Xlate<'m> {
    mem: &'m Memory,
    start: u64,
    whole: Option<Span<'m>>,
}

impl<'m> Xlate<'m> {
    pub fn new(mem: &'m Memory) -> Xlate<'m> {
        Xlate { mem, start: 0, whole: None }
    }

    pub fn mem(&self) -> &'m Memory {
        self.mem
    }

    /// `len` bytes at guest address `addr`, if they are all inside one region.
    #[inline]
    pub fn slice(&mut self, addr: u64, len: usize) -> Option<Span<'m>> {
        if let Some(w) = &self.whole {
            if let Some(s) = addr.checked_sub(self.start).and_then(|off| w.sub(usize::try_from(off).ok()?, len)) {
                return Some(s);
            }
        }
        self.miss(addr, len)
    }

    #[cold]
    fn miss(&mut self, addr: u64, len: usize) -> Option<Span<'m>> {
        let r = self.mem.find_region(GuestAddress(addr))?;
        let whole = Span::of_region(r)?;
        self.whole = Some(whole);
        self.start = r.start_addr().0;
        whole.sub((addr - self.start) as usize, len)
    }
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// Most buffers one chain may have (direct or indirect). Guests use far fewer: Linux at most
/// `MAX_SKB_FRAGS` + 2 (19, or 47 on kernels built with more fragments), DPDK one per mbuf
/// segment.
pub const MAX_CHAIN_BUFS: usize = 128;

/// Why a chain could not be walked. The chain is lost; the queue goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor index out of range")]
    BadIndex,
    #[error("descriptor chain longer than the queue (a loop) or than {MAX_CHAIN_BUFS} buffers")]
    TooLong,
    #[error("bad indirect descriptor table")]
    BadIndirect,
    #[error("zero-length descriptor")]
    ZeroLength,
}

/// Why a queue cannot be used any more: the driver broke the ring itself. The device needs
/// a reset (the frontend sets the ring up again, or reconnects); until then it is not
/// serviced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("the driver moved the available index from {next} to {avail}, more than the queue size {size} ahead")]
    AvailIndex { avail: u16, next: u16, size: u16 },
    #[error("the driver made descriptor {head} available, outside the table of {size}")]
    BadHead { head: u16, size: u16 },
    #[error("a ring of the queue is not inside guest memory")]
    BadRingAddress,
    #[error("the guest memory file was truncated under vmnetd (SIGBUS caught)")]
    MemoryTruncated,
}

/// A split-ring descriptor (virtio 1.2 §2.7.5), copied out of guest memory in one read.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    #[inline]
    fn from_bytes(b: [u8; 16]) -> Desc {
        let w0 = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let w1 = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        Desc { addr: w0, len: w1 as u32, flags: (w1 >> 32) as u16, next: (w1 >> 48) as u16 }
    }

    /// Descriptor at byte `off` of an (indirect) table.
    #[inline]
    fn read(table: &Span<'_>, off: usize) -> Option<Desc> {
        table.read_array(off).map(Desc::from_bytes)
    }
}

/// The rings of one queue, mapped for a burst.
pub struct Ring<'m> {
    mem: &'m Memory,
    /// The descriptor table, the available ring's entries and the used ring's elements,
    /// checked once here; positions are taken modulo the size by [`Table`].
    descs: Table<'m, 16>,
    avail_ring: Table<'m, 2>,
    used_ring: Table<'m, 8>,
    avail: Span<'m>,
    used: Span<'m>,
    size: u16,
    event_idx: bool,
}

impl<'m> Ring<'m> {
    /// `None` when the queue is not ready or a ring is not inside one memory region.
    pub fn new(q: &Queue, mem: &'m Memory) -> Option<Ring<'m>> {
        let size = q.size();
        if !q.ready() || size == 0 || !size.is_power_of_two() {
            return None;
        }
        let n = usize::from(size);
        let mut x = Xlate::new(mem);
        let desc = x.slice(q.desc_table(), 16 * n)?;
        let avail = x.slice(q.avail_ring(), 6 + 2 * n)?;
        let used = x.slice(q.used_ring(), 6 + 8 * n)?;
        // The alignments the atomic ring fields need in host memory (virtio 2.7 asks for 2
        // and 4; it also asks 16 of the descriptor table, which is only read unaligned here,
        // so a driver that places it less strictly keeps working, as it did before).
        let aligned = |s: &Span<'_>, a: usize| (s.as_ptr() as usize) % a == 0;
        if !aligned(&avail, 2) || !aligned(&used, 4) {
            return None;
        }
        Some(Ring {
            mem,
            descs: Table::new(desc, n)?,
            avail_ring: Table::new(avail.sub(4, 2 * n)?, n)?,
            used_ring: Table::new(used.sub(4, 8 * n)?, n)?,
            avail,
            used,
            size,
            event_idx: q.event_idx_enabled(),
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// The driver's available index.
    pub fn avail_idx(&self) -> u16 {
        self.avail.load_u16(2, Ordering::Acquire).unwrap_or(0)
    }

    /// The chain head at available position `pos`.
    pub fn avail_head(&self, pos: u16) -> u16 {
        self.avail_ring.load_u16(usize::from(pos), Ordering::Relaxed)
    }

    /// Descriptor `i` of the table, when `i` is inside it.
    #[inline]
    fn desc_at(&self, i: u16) -> Option<Desc> {
        (i < self.size).then(|| Desc::from_bytes(self.descs.read16(usize::from(i))))
    }

    /// Walks the chain that starts at descriptor `head`, calling `f` for each buffer;
    /// returns how many buffers it had. `f` returning false stops the walk early.
    pub fn walk(&self, head: u16, mut f: impl FnMut(Buf) -> bool) -> Result<usize, ChainError> {
        let limit = usize::from(self.size).min(MAX_CHAIN_BUFS);
        let mut idx = head;
        let mut n = 0usize;
        loop {
            if idx >= self.size {
                return Err(ChainError::BadIndex);
            }
            n += 1;
            if n > limit {
                return Err(ChainError::TooLong);
            }
            let d = self.desc_at(idx).ok_or(ChainError::BadIndex)?;
            if d.flags & F_INDIRECT != 0 {
                // An indirect descriptor is the whole chain (it may not be chained itself).
                if d.flags & F_NEXT != 0 || n != 1 {
                    return Err(ChainError::BadIndirect);
                }
                return self.walk_indirect(d, f);
            }
            if d.len == 0 {
                return Err(ChainError::ZeroLength);
            }
            if !f(Buf { addr: d.addr, len: d.len, write: d.flags & F_WRITE != 0 }) {
                return Ok(n);
            }
            if d.flags & F_NEXT == 0 {
                return Ok(n);
            }
            idx = d.next;
        }
    }

    fn walk_indirect(&self, table: Desc, mut f: impl FnMut(Buf) -> bool) -> Result<usize, ChainError> {
        let len = table.len as usize;
        if len == 0 || len % 16 != 0 || len / 16 > usize::from(self.size) {
            return Err(ChainError::BadIndirect);
        }
        let count = len / 16;
        let limit = count.min(MAX_CHAIN_BUFS);
        let t = Xlate::new(self.mem).slice(table.addr, len).ok_or(ChainError::BadIndirect)?;
        let mut idx = 0usize;
        let mut n = 0usize;
        loop {
            if idx >= count {
                return Err(ChainError::BadIndirect);
            }
            n += 1;
            if n > limit {
                return Err(ChainError::TooLong);
            }
            let d = Desc::read(&t, 16 * idx).ok_or(ChainError::BadIndirect)?;
            if d.flags & F_INDIRECT != 0 {
                return Err(ChainError::BadIndirect);
            }
            if d.len == 0 {
                return Err(ChainError::ZeroLength);
            }
            if !f(Buf { addr: d.addr, len: d.len, write: d.flags & F_WRITE != 0 }) {
                return Ok(n);
            }
            if d.flags & F_NEXT == 0 {
                return Ok(n);
            }
            idx = usize::from(d.next);
        }
    }

    /// Descriptor `i` of the table.
    #[inline]
    pub fn desc(&self, i: u16) -> Option<Buf> {
        let d = self.desc_at(i)?;
        Some(Buf { addr: d.addr, len: d.len, write: d.flags & F_WRITE != 0 })
    }

    /// The chain at `head` when it is one plain, non-empty descriptor (no next, not
    /// indirect): the common case the fast paths take. Anything else goes through
    /// [`Ring::walk`], which also reports what is wrong with it.
    #[inline]
    pub fn single(&self, head: u16) -> Option<Buf> {
        let d = self.desc_at(head)?;
        (d.flags & (F_NEXT | F_INDIRECT) == 0 && d.len != 0).then_some(Buf {
            addr: d.addr,
            len: d.len,
            write: d.flags & F_WRITE != 0,
        })
    }

    /// Address of the first buffer of the chain at `head`, when it is a plain descriptor.
    pub fn first_buf(&self, head: u16) -> Option<u64> {
        let d = self.desc_at(head)?;
        (d.flags & F_INDIRECT == 0).then_some(d.addr)
    }

    /// Writes the used element at used position `pos` (not yet visible to the driver).
    pub fn put_used(&self, pos: u16, id: u16, len: u32) {
        self.used_ring.store_u32_pair(usize::from(pos), u32::from(id), len, Ordering::Relaxed);
    }

    /// Makes used elements up to `idx` visible to the driver.
    pub fn publish_used(&self, idx: u16) {
        self.used.store_u16(2, idx, Ordering::Release);
    }

    /// After publishing used elements from `old` to `new`: whether the driver wants an
    /// interrupt (EVENT_IDX's `used_event`, else the NO_INTERRUPT flag).
    pub fn needs_interrupt(&self, old: u16, new: u16) -> bool {
        if old == new {
            return false;
        }
        fence(Ordering::SeqCst);
        if self.event_idx {
            let off = 4 + 2 * usize::from(self.size);
            let ev = self.avail.load_u16(off, Ordering::Relaxed).unwrap_or(0);
            // vring_need_event(event, new, old)
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = self.avail.load_u16(0, Ordering::Relaxed).unwrap_or(0);
            flags & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Tells the driver whether to kick us when it adds buffers (EVENT_IDX: at `next_avail`,
    /// else the NO_NOTIFY flag). When enabling, returns whether buffers arrived meanwhile.
    pub fn set_kicks(&self, on: bool, next_avail: u16) -> bool {
        if self.event_idx {
            if on {
                let off = 4 + 8 * usize::from(self.size);
                self.used.store_u16(off, next_avail, Ordering::Relaxed);
            }
        } else {
            let flags = self.used.load_u16(0, Ordering::Relaxed).unwrap_or(0);
            let flags = if on { flags & !USED_F_NO_NOTIFY } else { flags | USED_F_NO_NOTIFY };
            self.used.store_u16(0, flags, Ordering::Relaxed);
        }
        if !on {
            return false;
        }
        fence(Ordering::SeqCst);
        self.avail_idx() != next_avail
    }
}

pub use crate::sys::arch::{prefetch_read, prefetch_write};

/// Chains the driver made available beyond `next_avail`, or why its index is impossible
/// (more than the queue size ahead: a broken or hostile driver).
pub fn pending(ring: &Ring<'_>, next_avail: u16) -> Result<u16, RingError> {
    let avail = ring.avail_idx();
    let n = avail.wrapping_sub(next_avail);
    if n <= ring.size() {
        Ok(n)
    } else {
        Err(RingError::AvailIndex { avail, next: next_avail, size: ring.size() })
    }
}
