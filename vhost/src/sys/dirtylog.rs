//! The dirty-page log of a migrating guest: a bitmap the frontend shares with us
//! (`VHOST_USER_SET_LOG_BASE`, protocol feature `LOG_SHMFD`), one bit per 4 KiB page of guest
//! physical memory, bit `p % 8` of byte `p / 8` for page `p`. While the frontend has
//! `VHOST_F_LOG_ALL` acked, the backend sets the bit of every page it writes into (receive
//! buffers, used rings); the frontend repeatedly takes the bits (an atomic exchange per word)
//! and copies those pages again. A page written and not marked reaches the destination stale.
//!
//! Marks are atomic ORs with release ordering, *after* the write they describe: if the
//! frontend takes the bits between our write and our mark, it copies the page in a later
//! round; if it took them between a mark and a write, the write would be lost. The final
//! round comes after `GET_VRING_BASE`, which waits for the datapath's burst to end, and every
//! mark of a burst is made inside it.
//!
//! The log is frontend input like everything else: the file must be memory (a memfd, tmpfs or
//! hugetlbfs file) that holds the mapped range, the size is capped, a mark outside the log is
//! dropped and counted (never written), and the mapping is registered with the SIGBUS guard,
//! so a frontend that shrinks the file afterwards costs it its log, not the daemon.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::sigbus;

/// Guest page size the log counts in (`VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 4096;

/// Largest log accepted: 256 MiB covers 8 TiB of guest memory.
pub const MAX_LOG_BYTES: u64 = 256 << 20;

/// A mapped dirty log.
pub struct DirtyLog {
    /// The mapping (from the page-aligned offset below the log's start).
    map: *mut libc::c_void,
    map_len: usize,
    /// The log's first byte, inside `map`.
    log: *const AtomicU8,
    /// Bytes of log.
    len: u64,
    /// Marks dropped because they fell outside the log.
    out_of_range: AtomicU64,
    /// Dropped before the mapping goes (its address range may be reused at once).
    guard: Option<sigbus::Registration>,
}

// SAFETY: the mapping is shared memory that is only ever accessed through atomics, and it
// lives (mapped) until the `DirtyLog` is dropped.
unsafe impl Send for DirtyLog {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for DirtyLog {}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog").field("bytes", &self.len).finish()
    }
}

impl DirtyLog {
    /// Maps `size` bytes of `file` at `offset` as a log, after checking them.
    pub fn map(file: &File, offset: u64, size: u64) -> Result<DirtyLog, String> {
        use nix::sys::statfs::{fstatfs, TMPFS_MAGIC};
        if size == 0 {
            return Err("empty log".into());
        }
        if size > MAX_LOG_BYTES {
            return Err(format!("a log of {size} bytes is larger than the {MAX_LOG_BYTES} bytes allowed"));
        }
        let end = offset.checked_add(size).ok_or("log offset and size wrap around")?;
        let st = nix::sys::stat::fstat(file).map_err(|e| format!("fstat: {e}"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err("the log fd is not a regular file".into());
        }
        let file_size = u64::try_from(st.st_size).unwrap_or(0);
        if end > file_size {
            return Err(format!(
                "a log of {size} bytes at offset {offset} is past the end of its {file_size}-byte file"
            ));
        }
        let fs = fstatfs(file).map_err(|e| format!("fstatfs: {e}"))?.filesystem_type();
        // A memfd or tmpfs file (what QEMU sends): small pages, so the mapping's length is
        // what we unmap. hugetlbfs (huge-page lengths) is refused.
        if fs != TMPFS_MAGIC {
            return Err(format!("the log is not a memfd or tmpfs file (filesystem type {:#x})", fs.0));
        }
        // mmap wants an offset aligned to the host's page.
        // SAFETY: sysconf has no preconditions.
        let host_page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let aligned = offset & !(host_page - 1);
        let delta = offset - aligned;
        let map_len = usize::try_from(size + delta).map_err(|_| "log too large")?;
        let off = libc::off_t::try_from(aligned).map_err(|_| "log offset too large")?;
        // SAFETY: a fresh shared mapping of a file we checked holds the range; nothing else
        // in this process refers to the address range the kernel picks.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let guard = match sigbus::register(map.cast::<u8>().cast_const(), map_len) {
            Ok(g) => g,
            Err(e) => {
                // SAFETY: the mapping made above, not shared with anyone yet.
                unsafe { libc::munmap(map, map_len) };
                return Err(format!("SIGBUS guard: {e}"));
            }
        };
        Ok(DirtyLog {
            map,
            map_len,
            // `delta < 4096 <= map_len`: inside the mapping.
            log: map.cast::<u8>().wrapping_add(delta as usize).cast::<AtomicU8>().cast_const(),
            len: size,
            out_of_range: AtomicU64::new(0),
            guard: Some(guard),
        })
    }

    /// Bytes of log.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the log is empty (it never is: [`DirtyLog::map`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Guest physical addresses below this have a bit in the log.
    pub fn covers(&self) -> u64 {
        self.len.saturating_mul(8 * LOG_PAGE)
    }

    /// Marks dropped because they were outside the log.
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range.load(Ordering::Relaxed)
    }

    /// Marks every page of `[gpa, gpa + len)` dirty (after the caller wrote them).
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            if byte >= self.len {
                self.out_of_range.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The bits of this byte the range covers, at once.
            let lo = page % 8;
            let hi = (last - page + lo).min(7);
            let bits = ((0xffu16 << lo) & (0xffu16 >> (7 - hi))) as u8;
            // SAFETY: `byte < len`, and the log's `len` bytes are mapped until drop.
            unsafe { (*self.log.add(byte as usize)).fetch_or(bits, Ordering::Release) };
            page += hi - lo + 1;
        }
    }

    /// Whether page `page`'s bit is set (tests and checks).
    pub fn is_dirty(&self, page: u64) -> bool {
        let byte = page / 8;
        if byte >= self.len {
            return false;
        }
        // SAFETY: as in `mark`.
        let b = unsafe { (*self.log.add(byte as usize)).load(Ordering::Acquire) };
        b & (1 << (page % 8)) != 0
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // The registration first: once unmapped, the range may be mapped (and registered)
        // again by someone else.
        self.guard = None;
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> File {
        let fd = nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        let f = File::from(fd);
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn marks_set_the_bits_of_every_page_touched_and_nothing_else() {
        let f = memfd(64);
        let log = DirtyLog::map(&f, 0, 64).unwrap();
        log.mark(0, 1);
        log.mark(3 * 4096 + 4000, 200); // pages 3 and 4
        log.mark(10 * 4096, 9 * 4096); // pages 10..=18
        let dirty: Vec<u64> = (0..512).filter(|&p| log.is_dirty(p)).collect();
        assert_eq!(dirty, [0, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
        assert_eq!(log.out_of_range(), 0);
        log.mark(512 * 4096, 1);
        log.mark(u64::MAX - 10, 100);
        assert_eq!(log.out_of_range(), 2);
        assert_eq!(log.covers(), 512 * 4096);
    }

    #[test]
    fn an_offset_log_is_mapped_at_its_offset() {
        let f = memfd(8192 + 16);
        let log = DirtyLog::map(&f, 8192 + 8, 8).unwrap();
        log.mark(9 * 4096, 1);
        let mut b = [0u8; 16];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut b, 8192).unwrap();
        assert_eq!(b[9], 0b10);
    }

    #[test]
    fn bad_logs_are_refused() {
        let f = memfd(64);
        assert!(DirtyLog::map(&f, 0, 0).is_err());
        assert!(DirtyLog::map(&f, 0, 65).is_err());
        assert!(DirtyLog::map(&f, 60, 8).is_err());
        assert!(DirtyLog::map(&f, u64::MAX - 3, 8).is_err());
        assert!(DirtyLog::map(&f, 0, MAX_LOG_BYTES + 1).is_err());
        let disk = tempfile::tempfile().unwrap();
        disk.set_len(64).unwrap();
        let e = DirtyLog::map(&disk, 0, 64);
        // /tmp may itself be tmpfs; a disk file is refused where it is not.
        if let Err(e) = e {
            assert!(e.contains("not a memfd"), "{e}");
        }
    }
}
