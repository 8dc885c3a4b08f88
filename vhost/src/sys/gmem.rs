//! Guest memory as the datapath touches it: checked spans, raw copies.
//!
//! A [`Span`] is a range of one mapped guest-memory region, checked against the region when
//! it is made (by [`crate::ring::Xlate`] or [`Span::sub`]) and borrowed from the memory map
//! (`'m`), so it can neither point outside the mapping nor outlive it. Everything done
//! through it is bounds-checked against its length, and no Rust reference to guest memory is
//! ever made except to atomics (interior-mutable, so shared writers are allowed; a guest may
//! still access the same bytes with other sizes or non-atomically, outside Rust's model, as
//! with `vm-memory` and DPDK; within this process no location is accessed both ways): the
//! guest may write that memory at any time, so bytes are copied with
//! `ptr::copy` (what `vm-memory` does for larger copies and DPDK for all of them), ring
//! fields are read and written with atomic loads and stores, and anything decided on is
//! copied into our own memory first and read once (no double fetch).
//!
//! Why not `vm-memory`'s `VolatileSlice` here: every access through it re-checks bounds in
//! several layers and copies small buffers byte- or word-wise through a generic alignment
//! dispatch; on the per-frame path that was about a third of the datapath's instructions.
//!
//! A truncated memory file turns an access into SIGBUS; [`super::sigbus`] maps zero pages in
//! place and the queue is stopped, so a span stays a valid address range for its borrow.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use vm_memory::GuestRegionMmap;

/// `len` bytes of guest memory at host address `ptr`, inside one mapping borrowed for `'m`.
#[derive(Debug, Clone, Copy)]
pub struct Span<'m> {
    ptr: NonNull<u8>,
    len: usize,
    _mem: PhantomData<&'m ()>,
}

impl<'m> Span<'m> {
    /// A whole mapped region of guest memory, for as long as it is borrowed.
    pub fn of_region(r: &'m GuestRegionMmap<()>) -> Option<Span<'m>> {
        Some(Span { ptr: NonNull::new(r.as_ptr())?, len: r.size(), _mem: PhantomData })
    }

    /// Our own buffer seen as a span (tests and fuzz targets).
    pub fn of_buf(b: &'m mut [u8]) -> Span<'m> {
        Span { ptr: NonNull::from(&mut b[..]).cast(), len: b.len(), _mem: PhantomData }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of the first byte: for prefetch hints and kernel scatter lists only.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The `len` bytes at `off`, if they are inside this span.
    #[inline]
    pub fn sub(&self, off: usize, len: usize) -> Option<Span<'m>> {
        if off > self.len || len > self.len - off {
            return None;
        }
        // SAFETY: off <= self.len, so the result stays inside (or one past) this span.
        let ptr = unsafe { self.ptr.add(off) };
        Some(Span { ptr, len, _mem: PhantomData })
    }

    /// Copies the span's first `dst.len()` bytes out; false (nothing copied) if it is shorter.
    #[inline]
    pub fn read_to(&self, dst: &mut [u8]) -> bool {
        if dst.len() > self.len {
            return false;
        }
        // SAFETY: the source is inside the mapping (checked above and when the span was made),
        // the destination is our own buffer; `copy` tolerates any overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr(), dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` to the start of the span; false (nothing copied) if it does not fit.
    #[inline]
    pub fn write_from(&self, src: &[u8]) -> bool {
        if src.len() > self.len {
            return false;
        }
        // SAFETY: as in `read_to`, the other way.
        unsafe { std::ptr::copy(src.as_ptr(), self.ptr.as_ptr(), src.len()) };
        true
    }

    /// Copies this whole span to the start of `dst` (another guest's memory, or the same);
    /// false if it does not fit.
    #[inline]
    pub fn copy_to(&self, dst: &Span<'_>) -> bool {
        if self.len > dst.len {
            return false;
        }
        // SAFETY: both ranges are inside mappings that outlive the call; `copy` is a memmove,
        // so a guest that makes them overlap gets garbage, never undefined behaviour of ours.
        unsafe { std::ptr::copy(self.ptr.as_ptr(), dst.ptr.as_ptr(), self.len) };
        true
    }

    /// Writes `v` (little-endian) at `off`, unaligned.
    #[inline]
    pub fn write_u64_le(&self, off: usize, v: u64) -> bool {
        self.write_from_at(off, &v.to_le_bytes())
    }

    /// Writes `v` (little-endian) at `off`, unaligned.
    #[inline]
    pub fn write_u32_le(&self, off: usize, v: u32) -> bool {
        self.write_from_at(off, &v.to_le_bytes())
    }

    /// Writes `v` (little-endian) at `off`, unaligned.
    #[inline]
    pub fn write_u16_le(&self, off: usize, v: u16) -> bool {
        self.write_from_at(off, &v.to_le_bytes())
    }

    #[inline]
    fn write_from_at<const N: usize>(&self, off: usize, b: &[u8; N]) -> bool {
        if off > self.len || N > self.len - off {
            return false;
        }
        // SAFETY: inside the span (checked); an unaligned write of a local array.
        unsafe { std::ptr::write_unaligned(self.ptr.as_ptr().add(off).cast::<[u8; N]>(), *b) };
        true
    }

    /// The `N` bytes at `off`, copied out in one read.
    #[inline]
    pub fn read_array<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > self.len || N > self.len - off {
            return None;
        }
        // SAFETY: inside the span (checked); an unaligned read into a local array.
        Some(unsafe { std::ptr::read_unaligned(self.ptr.as_ptr().add(off).cast::<[u8; N]>()) })
    }

    /// Atomic load of the little-endian u16 at `off` (which must be 2-byte aligned in host
    /// memory; `None` if it is not, or outside the span).
    #[inline]
    pub fn load_u16(&self, off: usize, order: Ordering) -> Option<u16> {
        self.atomic_u16(off).map(|a| u16::from_le(a.load(order)))
    }

    /// Atomic store of `v` as a little-endian u16 at `off` (2-byte aligned).
    #[inline]
    pub fn store_u16(&self, off: usize, v: u16, order: Ordering) -> bool {
        self.atomic_u16(off).map(|a| a.store(v.to_le(), order)).is_some()
    }

    /// Atomic store of `v` as a little-endian u32 at `off` (4-byte aligned).
    #[inline]
    pub fn store_u32(&self, off: usize, v: u32, order: Ordering) -> bool {
        if off > self.len || 4 > self.len - off {
            return false;
        }
        let p = self.ptr.as_ptr().wrapping_add(off);
        if (p as usize) % 4 != 0 {
            return false;
        }
        // SAFETY: inside the span and 4-byte aligned (both checked); the memory is shared
        // with the guest, which is what atomics are for.
        let a = unsafe { AtomicU32::from_ptr(p.cast()) };
        a.store(v.to_le(), order);
        true
    }

    #[inline]
    fn atomic_u16(&self, off: usize) -> Option<&AtomicU16> {
        if off > self.len || 2 > self.len - off {
            return None;
        }
        let p = self.ptr.as_ptr().wrapping_add(off);
        if (p as usize) % 2 != 0 {
            return None;
        }
        // SAFETY: inside the span and 2-byte aligned (both checked); the returned reference
        // lives no longer than `&self`, and the span no longer than the mapping.
        Some(unsafe { AtomicU16::from_ptr(p.cast()) })
    }
}

/// `n` (a power of two) elements of `S` bytes at the start of a span, checked once when made
/// (length, and alignment to `S` or 4 bytes, whichever is less): an element index is taken modulo `n`, so every
/// access lands inside the span without a check per access. For ring tables, whose
/// positions are free-running indices and whose heads come from the guest.
#[derive(Debug, Clone, Copy)]
pub struct Table<'m, const S: usize> {
    ptr: NonNull<u8>,
    mask: usize,
    _mem: PhantomData<&'m ()>,
}

impl<'m, const S: usize> Table<'m, S> {
    /// What the element accesses need: u16 loads for 2-byte elements, u32 stores for 8-byte
    /// ones; 16-byte elements (descriptors) are only read unaligned.
    const ALIGN: usize = match S {
        2 => 2,
        16 => 1,
        _ => 4,
    };

    /// The first `n * S` bytes of `span` as a table; `None` if `n` is not a power of two,
    /// the span is too short, or its start is not aligned to `S` or 4 bytes.
    pub fn new(span: Span<'m>, n: usize) -> Option<Self> {
        const { assert!(S.is_power_of_two() && S >= 2) };
        if !n.is_power_of_two() {
            return None;
        }
        if n.checked_mul(S)? > span.len || (span.ptr.as_ptr() as usize) % Self::ALIGN != 0 {
            return None;
        }
        Some(Table { ptr: span.ptr, mask: n - 1, _mem: PhantomData })
    }

    #[inline]
    fn at(&self, i: usize) -> *mut u8 {
        // Inside the table: (i & mask) < n and n * S bytes were checked to be in the span.
        self.ptr.as_ptr().wrapping_add((i & self.mask) * S)
    }

    /// Atomic load of the little-endian u16 that starts element `i`.
    #[inline]
    pub fn load_u16(&self, i: usize, order: Ordering) -> u16 {
        const { assert!(S < 16) };
        // SAFETY: element i (masked) is inside the span; it starts a multiple of S (>= 2)
        // bytes from a start aligned to ALIGN >= 2 that divides S: 2-byte aligned.
        let a = unsafe { AtomicU16::from_ptr(self.at(i).cast()) };
        u16::from_le(a.load(order))
    }

    /// Atomic stores of two little-endian u32s into element `i` (bytes 0..4 and 4..8).
    #[inline]
    pub fn store_u32_pair(&self, i: usize, a: u32, b: u32, order: Ordering) {
        const { assert!(S >= 8 && S < 16) };
        let p = self.at(i);
        // SAFETY: as in load_u16: S >= 8 bytes of element i are inside the span, and with
        // S >= 8, ALIGN is 4, so both words are 4-byte aligned.
        unsafe {
            AtomicU32::from_ptr(p.cast()).store(a.to_le(), order);
            AtomicU32::from_ptr(p.wrapping_add(4).cast()).store(b.to_le(), order);
        }
    }

    /// Element `i`'s first 16 bytes, copied out in one read.
    #[inline]
    pub fn read16(&self, i: usize) -> [u8; 16] {
        const { assert!(S >= 16) };
        // SAFETY: S >= 16 bytes of element i (masked) are inside the span; an unaligned read
        // into a local array.
        unsafe { std::ptr::read_unaligned(self.at(i).cast::<[u8; 16]>()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_never_reach_past_their_end() {
        let mut buf = vec![0u8; 64];
        let s = Span::of_buf(&mut buf);
        assert!(s.sub(60, 4).is_some() && s.sub(60, 5).is_none() && s.sub(65, 0).is_none());
        assert!(s.sub(usize::MAX, 2).is_none() && s.sub(2, usize::MAX).is_none());
        let t = s.sub(8, 8).unwrap();
        assert!(!t.write_from(&[1u8; 9]) && t.write_from(&[1u8; 8]));
        assert!(t.write_u64_le(0, 7) && !t.write_u64_le(1, 7) && !t.write_u16_le(usize::MAX, 1));
        assert_eq!(t.read_array::<8>(0), Some(7u64.to_le_bytes()));
        assert!(t.read_array::<9>(0).is_none());
        let mut out = [0u8; 9];
        assert!(!t.read_to(&mut out) && t.read_to(&mut out[..8]));
        assert!(t.store_u16(2, 0x1234, Ordering::Relaxed) && !t.store_u16(7, 1, Ordering::Relaxed));
        assert_eq!(t.load_u16(2, Ordering::Relaxed), Some(0x1234));
        // Misaligned atomics are refused, not made.
        let base = s.as_ptr() as usize;
        let odd = if base % 2 == 0 { 1 } else { 0 };
        assert!(s.load_u16(odd, Ordering::Relaxed).is_none());
        assert!(s.sub(0, 4).unwrap().copy_to(&s.sub(32, 4).unwrap()) && !s.copy_to(&t));
    }

    #[test]
    fn tables_wrap_indices_and_refuse_bad_shapes() {
        let mut buf = vec![0u64; 32];
        let s = Span::of_buf(bytemuck_free(&mut buf));
        assert!(Table::<8>::new(s, 3).is_none(), "not a power of two");
        assert!(Table::<8>::new(s, 64).is_none(), "longer than the span");
        assert!(Table::<8>::new(s.sub(2, 200).unwrap(), 16).is_none(), "misaligned");
        assert!(Table::<2>::new(s.sub(1, 200).unwrap(), 16).is_none(), "misaligned");
        let t = Table::<8>::new(s, 32).unwrap();
        t.store_u32_pair(33, 7, 9, Ordering::Relaxed);
        assert_eq!(t.load_u16(1, Ordering::Relaxed), 7, "index 33 is element 1 of 32");
        let d = Table::<16>::new(s, 16).unwrap();
        assert_eq!(&d.read16(16)[..8], &[0u8; 8], "index 16 wraps to element 0");
        assert_eq!(d.read16(0)[8], 7);
    }

    fn bytemuck_free(v: &mut [u64]) -> &mut [u8] {
        let len = std::mem::size_of_val(v);
        // SAFETY: u64s are plain bytes; same allocation, same lifetime.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) }
    }
}
