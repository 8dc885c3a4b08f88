//! Surviving a frontend that truncates the file behind guest memory.
//!
//! Guest memory is a shared mapping of a file the frontend owns (a memfd, a hugetlbfs or
//! tmpfs file). vmnetd checks the file's size before mapping it, but a frontend can shrink
//! it afterwards (an unsealed memfd, any hugetlbfs file): the next access to a page past the
//! new end raises SIGBUS, which would kill the daemon and every VM's network with it.
//!
//! So every guest-memory mapping is registered here, and a SIGBUS handler looks the faulting
//! address up: inside a registered mapping, it replaces the whole mapping with anonymous
//! zero-filled memory (`mmap(MAP_FIXED)`, same range, so the owner's later `munmap` still
//! matches), marks the registration poisoned and returns; the faulting instruction runs
//! again and reads or writes the anonymous page. The owner sees [`Registration::poisoned`]
//! and stops using the device. A SIGBUS anywhere else goes to the handler that was there
//! before (Rust's stack-overflow handler, or the default action: the process dies).
//!
//! The handler only does async-signal-safe things: atomic loads and stores, and the `mmap`
//! and `sigaction` system calls.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Registrations at once: up to 8 regions (`VHOST_MEMORY_BASELINE_NREGIONS`) per device,
/// twice that while a device's memory is replaced, for a thousand devices. (The table is
/// static: a signal handler cannot follow one that grows. 512 KiB, touched only as used.)
const SLOTS: usize = 16384;

struct Slot {
    /// Odd while the slot is being changed (a seqlock: the handler retries).
    seq: AtomicU32,
    start: AtomicUsize,
    /// 0: free.
    len: AtomicUsize,
    poisoned: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot =
    Slot { seq: AtomicU32::new(0), start: AtomicUsize::new(0), len: AtomicUsize::new(0), poisoned: AtomicU32::new(0) };
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Serialises registering and dropping (the handler never takes it).
static WRITERS: Mutex<()> = Mutex::new(());
/// Bumped whenever a mapping is poisoned: one load tells the datapath nothing happened.
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// The SIGBUS action before ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A registered guest-memory mapping; dropping it forgets the mapping.
#[derive(Debug)]
pub struct Registration {
    slot: usize,
}

/// Why a mapping could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("too many guest memory mappings ({SLOTS})")]
    Full,
    #[error("cannot install the SIGBUS handler: errno {0}")]
    Install(i32),
}

/// Installs the handler (once per process).
pub fn install() -> Result<(), Error> {
    static DONE: OnceLock<Result<(), Error>> = OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: sigaction with a zeroed struct filled in below; `handler` has the
        // SA_SIGINFO signature; the old action is written to a local we own.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = handler as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &new, &mut old) != 0 {
                return Err(Error::Install(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)));
            }
            let _ = PREVIOUS.set(old);
        }
        Ok(())
    })
}

/// Registers the mapping `[start, start + len)`.
pub fn register(start: *const u8, len: usize) -> Result<Registration, Error> {
    install()?;
    let _w = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
    let slot = TABLE.iter().position(|s| s.len.load(Ordering::Relaxed) == 0).ok_or(Error::Full)?;
    let s = &TABLE[slot];
    s.seq.fetch_add(1, Ordering::AcqRel);
    s.start.store(start as usize, Ordering::Relaxed);
    s.poisoned.store(0, Ordering::Relaxed);
    s.len.store(len.max(1), Ordering::Relaxed);
    s.seq.fetch_add(1, Ordering::AcqRel);
    Ok(Registration { slot })
}

impl Registration {
    /// Whether a SIGBUS hit this mapping (it is now anonymous memory: the file shrank).
    pub fn poisoned(&self) -> bool {
        TABLE[self.slot].poisoned.load(Ordering::Acquire) != 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _w = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
        let s = &TABLE[self.slot];
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.len.store(0, Ordering::Relaxed);
        s.start.store(0, Ordering::Relaxed);
        s.seq.fetch_add(1, Ordering::AcqRel);
    }
}

/// Changes whenever some mapping is poisoned.
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// The registered mapping containing `addr`, read consistently.
fn lookup(addr: usize) -> Option<(usize, usize, usize)> {
    for (i, s) in TABLE.iter().enumerate() {
        loop {
            let seq = s.seq.load(Ordering::Acquire);
            if seq % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let (start, len) = (s.start.load(Ordering::Relaxed), s.len.load(Ordering::Relaxed));
            if s.seq.load(Ordering::Acquire) != seq {
                continue;
            }
            if len != 0 && addr >= start && addr - start < len {
                return Some((i, start, len));
            }
            break;
        }
    }
    None
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some((slot, start, len)) = lookup(addr) {
        // SAFETY: the range is a guest-memory mapping this process made and registered; it
        // is replaced by private anonymous memory of the same size, which its owner unmaps
        // later exactly as it would have unmapped the file mapping.
        let r = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            TABLE[slot].poisoned.store(1, Ordering::Release);
            EPOCH.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
    // Not ours: what would have happened without us.
    match PREVIOUS.get() {
        Some(prev) if prev.sa_flags & libc::SA_SIGINFO != 0 && prev.sa_sigaction > 1 => {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                // SAFETY: an SA_SIGINFO action's sa_sigaction is such a function.
                unsafe { std::mem::transmute(prev.sa_sigaction) };
            f(sig, info, ctx);
        }
        Some(prev) if prev.sa_sigaction > 1 => {
            // SAFETY: a plain handler's sa_handler is an `extern "C" fn(c_int)`.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
            f(sig);
        }
        _ => {
            // Default action: reset and return; the fault repeats and the process dies of
            // SIGBUS as it would have.
            // SAFETY: sigaction with a zeroed struct (SIG_DFL).
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// A shared mapping of a memfd that is then truncated: the access that would have been
    /// a SIGBUS reads zeros, and the registration says what happened.
    #[test]
    fn truncated_file_mapping_is_replaced_not_fatal() {
        let fd = nix::sys::memfd::memfd_create("sigbus-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        let mut f = std::fs::File::from(fd);
        let len = 4 * 4096;
        f.write_all(&vec![7u8; len]).unwrap();
        // SAFETY: a fresh shared mapping of a file we own, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as *mut u8;
        let reg = register(base, len).unwrap();
        let before = epoch();
        // SAFETY: inside the mapping.
        assert_eq!(unsafe { std::ptr::read_volatile(base.add(3 * 4096)) }, 7);
        f.set_len(4096).unwrap();
        // SAFETY: inside the mapping; past the file's new end, so it faults, and the handler
        // replaces the mapping.
        let v = unsafe { std::ptr::read_volatile(base.add(3 * 4096)) };
        assert_eq!(v, 0);
        // SAFETY: as above: the replaced mapping is writable.
        unsafe { std::ptr::write_volatile(base.add(2 * 4096), 1) };
        assert!(reg.poisoned());
        assert!(epoch() > before);
        drop(reg);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
    }
}
