//! The only place in `vmnetd` with `unsafe` code: thin, checked wrappers around the ioctls and
//! socket calls that no safe crate covers (TUN/TAP configuration, AF_PACKET rings).
//!
//! Every wrapper validates its inputs before the syscall, wraps raw fds in `OwnedFd`/`File`
//! at once, and returns an error naming the request that failed.
#![allow(unsafe_code)]

pub mod iov;
pub mod packet;
pub mod tap;
pub mod tpacket;
pub mod udp;
pub mod xdp;

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// A syscall's return value, or the error it left in `errno`, named by `what`.
pub(crate) fn check<T: Copy + Into<i64>>(ret: T, what: &str) -> io::Result<T> {
    if ret.into() < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

/// setsockopt(2) with a value of type `T` (an int, or the `repr(C)` struct the option
/// takes).
pub(crate) fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `val` is a live value of the type the option takes (callers pass what the
    // option is documented to take), its size is passed, and the fd is open.
    let ret = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (val as *const T).cast(), size_of::<T>() as libc::socklen_t)
    };
    check(ret, what).map(drop)
}

/// Sets a socket's receive and send buffers to `bytes` each, best effort: past
/// `net.core.rmem_max`/`wmem_max` with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (the daemon has
/// `CAP_NET_ADMIN`), else capped by them.
pub(crate) fn set_buffers(fd: BorrowedFd<'_>, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, capped) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if setsockopt(fd, libc::SOL_SOCKET, force, &v, "SO_*BUFFORCE").is_err() {
            let _ = setsockopt(fd, libc::SOL_SOCKET, capped, &v, "SO_*BUF");
        }
    }
}

/// A socket's pending error (`SO_ERROR`, which reading clears): `ENETDOWN` once its
/// interface is gone or down.
pub(crate) fn take_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: pointers to a live `c_int` and its length; checked.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    check(ret, "SO_ERROR")?;
    Ok((v != 0).then(|| io::Error::from_raw_os_error(v)))
}

/// `CAP_NET_ADMIN`, from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;

/// Whether this process holds `CAP_NET_ADMIN` in its effective set.
///
/// Read from `/proc/self/status` (`CapEff`), which needs no syscall of our own. Creating TAPs,
/// bridges and AF_PACKET sockets all need it, and checking first turns the kernel's bare
/// `EPERM` into a message that says what is missing.
pub fn has_cap_net_admin() -> io::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))?;
    let bits = u64::from_str_radix(cap_eff.trim(), 16)
        .map_err(|e| io::Error::other(format!("bad CapEff in /proc/self/status: {e}")))?;
    Ok(bits & (1 << CAP_NET_ADMIN) != 0)
}

/// A mapping (of a socket's rings, or anonymous), unmapped on drop: what AF_XDP and
/// `TPACKET_V2` map.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

impl Mapping {
    pub(crate) fn new(len: usize, fd: Option<(BorrowedFd<'_>, libc::off_t)>, what: &str) -> io::Result<Mapping> {
        let (flags, raw, off) = match fd {
            Some((fd, off)) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd(), off),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
        };
        // SAFETY: a fresh mapping of `len` bytes, of a socket's ring (at the offset that
        // names it) or anonymous; checked.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, raw, off) };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mmap of {what}: {e}")));
        }
        Ok(Mapping { ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this mapping; nothing refers to it after drop (its owners,
        // `Xsk` and `tpacket::Rings`, drop whatever points into it with it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cap_check_reads_proc() {
        // Whatever the answer, it must be readable on Linux.
        super::has_cap_net_admin().unwrap();
    }
}
