//! Directories under `RUN_DIR/libvirt/`, handled as root without ever following a link.
//!
//! The hook runs as root and makes, chowns and empties per-domain socket directories whose
//! names come from domain XML and whose contents come from QEMU (running as another user).
//! Every step goes through a directory fd opened with symlinks refused, so no path in the
//! XML and nothing planted in a directory can make it touch anything outside
//! `RUN_DIR/libvirt/<domain>/`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

/// Opens the directory `path` (relative, `a/b/c`) beneath `dir`, one component at a time,
/// each with `O_NOFOLLOW`: no symlink anywhere on the way is followed and `..` never
/// climbs out (what `openat2`'s `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH` promise, on every
/// kernel).
fn open_beneath(dir: &OwnedFd, path: &str) -> nix::Result<OwnedFd> {
    let mut fd: Option<OwnedFd> = None;
    for name in path.split('/') {
        if name.is_empty() || name == "." || name == ".." {
            return Err(Errno::EXDEV);
        }
        let next = nix::fcntl::openat(
            fd.as_ref().unwrap_or(dir),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?;
        fd = Some(next);
    }
    fd.ok_or(Errno::EXDEV)
}

fn err(what: String, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens `RUN_DIR/libvirt` (making it, root-owned 0755, when `create`): neither it nor the
/// run dir may be reached through a symlink that changes while we look, and it must be
/// root's and writable only by root. `Ok(None)`-like `NotFound` when absent and not created.
pub fn open_libvirt_dir(run_dir: &Path, create: bool) -> io::Result<OwnedFd> {
    let canonical = std::fs::canonicalize(run_dir).map_err(|e| err(run_dir.display().to_string(), e))?;
    let root: OwnedFd = std::fs::File::open("/")?.into();
    let rel = canonical.strip_prefix("/").unwrap_or(&canonical);
    let run = if rel.as_os_str().is_empty() {
        root
    } else {
        let rel = rel.to_str().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        open_beneath(&root, rel).map_err(|e| err(canonical.display().to_string(), e))?
    };
    let what = || run_dir.join("libvirt").display().to_string();
    if create {
        match mkdirat(&run, "libvirt", Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(err(what(), e)),
        }
    }
    let d = open_beneath(&run, "libvirt").map_err(|e| match e {
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is a symlink or not a directory; refusing to use it", what()),
        ),
        e => err(what(), e),
    })?;
    let st = fstat(&d).map_err(|e| err(what(), e))?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} must be root's and writable only by root; refusing to use it", what()),
        ));
    }
    Ok(d)
}

/// Opens (making it if missing, 0700 until [`give`]) the directory `leaf` in `base`; a
/// symlink there is refused.
pub fn make_subdir(base: &OwnedFd, leaf: &str) -> io::Result<OwnedFd> {
    match mkdirat(base, leaf, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_beneath(base, leaf).map_err(|e| match e {
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => {
            io::Error::new(io::ErrorKind::PermissionDenied, "a symlink or not a directory; refusing to use it")
        }
        e => e.into(),
    })
}

/// Gives an open directory to `uid:gid` with `mode`.
pub fn give(d: &OwnedFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    fchown(d, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    fchmod(d, Mode::from_bits_truncate(mode))?;
    Ok(())
}

/// Removes the sockets in `RUN_DIR/libvirt/LEAF`, then the directory if it is empty. Other
/// entries (and symlinks) stay; a missing directory is fine.
pub fn remove_socket_dir(run_dir: &Path, leaf: &str) -> io::Result<()> {
    let base = match open_libvirt_dir(run_dir, false) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let d = match open_beneath(&base, leaf) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "a symlink or not a directory; left alone"))
        }
        Err(e) => return Err(e.into()),
    };
    // The directory's entries, read through its fd (not its name).
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd()))?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_socket()) {
            unlinkat(&d, e.file_name().as_os_str(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    match unlinkat(&base, leaf, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOTEMPTY) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
