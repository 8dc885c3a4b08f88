//! Scatter lists that may point into guest memory.
//!
//! A frame leaving for the kernel (a TAP, an AF_PACKET socket) is its virtio-net header, its
//! output head (our copy) and its tail — which, for a frame from a vhost-user guest, lies in
//! that guest's memory. Making a `&[u8]` of guest memory would be unsound (the guest may write
//! it at any time), so guest pieces are carried as [`GuestPart`]s built from vm-memory's
//! `VolatileSlice`, and handed to the kernel as raw `iovec`s: the kernel copies them, no Rust
//! reference to guest memory is ever made.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// A piece of guest memory, valid for `'a` (the borrow of the guest memory it came from).
#[derive(Debug, Clone, Copy)]
pub struct GuestPart<'a> {
    ptr: *const u8,
    len: usize,
    _life: PhantomData<&'a ()>,
}

impl<'a> GuestPart<'a> {
    /// From a volatile slice of guest memory; the part lives no longer than the slice's borrow.
    pub fn new<B: vm_memory::bitmap::BitmapSlice>(s: &vm_memory::VolatileSlice<'a, B>) -> GuestPart<'a> {
        GuestPart { ptr: s.ptr_guard().as_ptr(), len: s.len(), _life: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One piece of an output frame.
#[derive(Debug, Clone, Copy)]
pub enum IoPart<'a> {
    Bytes(&'a [u8]),
    Guest(GuestPart<'a>),
}

impl IoPart<'_> {
    pub fn len(&self) -> usize {
        match self {
            IoPart::Bytes(b) => b.len(),
            IoPart::Guest(g) => g.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the first `n` bytes of the part (at most all of it) to `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `n` bytes and not overlap the part.
    pub(crate) unsafe fn copy_to(&self, dst: *mut u8, n: usize) {
        let (src, len) = match self {
            IoPart::Bytes(b) => (b.as_ptr(), b.len()),
            IoPart::Guest(g) => (g.ptr, g.len),
        };
        // SAFETY: the source is a borrowed slice or guest memory valid for `'a` (see
        // `GuestPart`), read as raw bytes with no reference made; the destination is the
        // caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n.min(len)) }
    }

    pub(crate) fn iovec(&self) -> libc::iovec {
        match self {
            IoPart::Bytes(b) => libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() },
            IoPart::Guest(g) => libc::iovec { iov_base: g.ptr as *mut libc::c_void, iov_len: g.len },
        }
    }
}

/// `recvmmsg(2)` without waiting: how many messages arrived (0 when none was waiting).
///
/// # Safety
/// Every header of `msgs` must point at iovecs, and any name and control buffer, valid for
/// writes of their given lengths for the whole call.
pub(crate) unsafe fn recvmmsg(fd: BorrowedFd<'_>, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: `msgs` is a valid array of its length; what its headers point at is the
    // caller's promise. The return value is checked.
    let ret = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
    }
    Ok(ret as usize)
}

/// `sendmmsg(2)` without waiting: how many messages the kernel took; "no room" (`EAGAIN`,
/// `ENOBUFS`) is 0, other errors are returned.
///
/// # Safety
/// Every header of `msgs` must point at iovecs, and any name and control buffer, valid for
/// reads of their given lengths for the whole call.
pub(crate) unsafe fn sendmmsg(fd: BorrowedFd<'_>, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: `msgs` is a valid array of its length; what its headers point at is the
    // caller's promise. The return value is checked.
    let ret =
        unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(ret as usize)
}

/// `writev(2)` of one frame's parts; `Ok(false)` when the peer has no room (EAGAIN).
pub fn writev<F: AsFd>(fd: &F, parts: &[IoPart<'_>]) -> io::Result<bool> {
    let iov: Vec<libc::iovec> = parts.iter().map(IoPart::iovec).collect();
    // SAFETY: every iovec points to memory that stays valid for the call: `Bytes` parts are
    // borrowed slices, `Guest` parts come from volatile slices whose borrow outlives `parts`.
    // writev only reads them. The fd is borrowed and open. The return value is checked.
    let ret = unsafe { libc::writev(fd.as_fd().as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(false) } else { Err(e) };
    }
    Ok(true)
}
