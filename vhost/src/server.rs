//! The vhost-user socket of a port, and the thread that serves its frontend.
//!
//! - `server` mode: vmnetd listens on the socket (QEMU: `-chardev socket,path=...,reconnect=1`).
//!   The socket is created 0660 and owned by the port's owner, so a QEMU running as that
//!   user (or as libvirt-qemu) can connect; a stale socket left by a killed vmnetd is
//!   replaced. Several frontends may be connected at once (at most
//!   [`MAX_CONNECTIONS`]): a live migration's destination QEMU connects to the same socket
//!   while the source still runs, and the port follows whichever runs the guest (see
//!   [`crate::device::Shared::connect`]).
//! - `client` mode: the frontend listens (QEMU `server=on`), vmnetd connects, and keeps
//!   retrying with backoff (100 ms doubling to 2 s), forever: a guest survives a vmnetd
//!   restart, and vmnetd survives a QEMU restart. Connecting never blocks (a frontend whose
//!   listen backlog is full is retried like one that is not there yet).
//!
//! When a frontend goes away (or breaks the protocol), the device forgets what it set up and
//! the port waits for the next connection; nothing else is affected.
//!
//! The socket file is made as root in directories other users may control, so it is made
//! without following anything they could plant: the directory is opened once (symlinks in
//! its path refused if they change while it is opened), missing directories are created
//! root-owned (group: the owner's, mode 0750), the socket is bound in a fresh private
//! directory inside it, given to its owner there with no-follow calls, and renamed into
//! place (replacing only a stale socket, never following or replacing anything else). It
//! is removed on stop only if it is still the socket this server made.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::poll::PollTimeout;
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode as FileMode, SFlag};
use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use vhost::vhost_user::{BackendReqHandler, Error as VuError};

use crate::device::{Handler, Shared, MAX_CONNECTIONS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Server,
    Client,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub path: PathBuf,
    pub mode: Mode,
    /// uid and gid that get the socket (and a directory created for it).
    pub owner: Option<(u32, u32)>,
    /// Client mode: talk only to a frontend running as this uid (checked with
    /// `SO_PEERCRED` on every connection), for ports a non-root user declared.
    pub peer_uid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Socket path {0} is longer than a Unix socket address allows ({1} bytes max)")]
    PathTooLong(PathBuf, usize),
    #[error("Socket path {0} must be absolute, without '.' or '..' components, and name a file")]
    BadPath(PathBuf),
    #[error("{0} exists and is not a socket; vmnetd will not replace it")]
    NotASocket(PathBuf),
    #[error("Cannot create socket directory {0}")]
    Dir(PathBuf, #[source] io::Error),
    #[error("Cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("Cannot give {0} to its owner")]
    Chown(PathBuf, #[source] io::Error),
    #[error("Cannot start the connection thread")]
    Thread(#[source] io::Error),
}

/// The open connections' sockets, by connection id (shut down on stop).
type Conns = Arc<Mutex<Vec<(u64, UnixStream)>>>;

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_PATH: usize = 107;

/// The socket file a server made: its directory (held open) and name, and its identity.
#[derive(Debug)]
struct Placed {
    dir: OwnedFd,
    name: OsString,
    dev: u64,
    ino: u64,
}

impl Placed {
    /// Removes the socket, if what has its name is still the one we made.
    fn remove(&self) {
        if let Ok(st) = fstatat(&self.dir, self.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            if st.st_dev == self.dev && st.st_ino == self.ino {
                let _ = unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// The running socket of one port. Dropping it (or [`Server::stop`]) ends the connection
/// and lets the thread finish (without waiting for it) and, in server mode, removes the
/// socket file.
pub struct Server {
    stop: Arc<AtomicBool>,
    conn: Conns,
    endpoint: Endpoint,
    placed: Option<Placed>,
    /// Written on stop: wakes the thread out of `accept`'s poll or a reconnect back-off at
    /// once (a port removal should not wait for a timer).
    wake: UnixStream,
    stopped: bool,
}

/// Checks a socket path: absolute, only normal components, a file name, short enough.
pub fn check_path(path: &Path) -> Result<(), Error> {
    if path.as_os_str().len() > MAX_PATH {
        return Err(Error::PathTooLong(path.to_owned(), MAX_PATH));
    }
    let normal = path.is_absolute()
        && path.components().skip(1).all(|c| matches!(c, Component::Normal(_)))
        && path.file_name().is_some()
        && !path.as_os_str().as_bytes().ends_with(b"/");
    if !normal {
        return Err(Error::BadPath(path.to_owned()));
    }
    Ok(())
}

/// Opens the directory `name` (one path component, never `..`) in `dir`, refusing a
/// symlink. Plain `openat` with `O_NOFOLLOW` is exact for a single component, and works
/// where `openat2` does not (kernels before 5.6, valgrind).
fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    if name.as_bytes().contains(&b'/') || name == ".." {
        return Err(nix::errno::Errno::EINVAL);
    }
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
}

/// A directory only root can change: root's, not writable by group or others. Symlinks in
/// it were put there by root, and nobody else can swap them.
fn trusted(dir: &OwnedFd) -> bool {
    nix::sys::stat::fstat(dir).is_ok_and(|st| st.st_uid == 0 && st.st_mode & 0o022 == 0)
}

/// Most symlinks followed while opening one socket directory.
const MAX_LINKS: usize = 16;

/// Opens the directory `dir` component by component from `/`, holding each directory's fd:
/// a symlink is followed only where it sits in a directory only root can change (so
/// `/var/run -> /run` is fine, a link a user planted in their own directory is refused),
/// and nothing swapped in while we walk can redirect us. Missing directories are created
/// root-owned, group `gid`, 0750 (0755 without an owner), so an owner can reach a socket in
/// them but plant nothing there.
fn open_socket_dir(dir: &Path, gid: Option<u32>) -> Result<OwnedFd, Error> {
    let derr = |e: io::Error| Error::Dir(dir.to_owned(), e);
    let root: OwnedFd = std::fs::File::open("/").map_err(derr)?.into();
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut fd = root.try_clone().map_err(derr)?;
    // Components still to walk, in reverse (a followed link pushes its target's).
    let mut todo: Vec<OsString> = dir
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    let (mut links, mut races) = (0, 0);
    while let Some(name) = todo.pop() {
        if name == ".." {
            fd = stack.pop().map_or_else(|| root.try_clone(), Ok).map_err(derr)?;
            continue;
        }
        if name == "." || name.is_empty() {
            continue;
        }
        match fstatat(&fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS || !trusted(&fd) || st.st_uid != 0 {
                    return Err(derr(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{} is a symlink in a directory others can change; refusing to follow it",
                            name.to_string_lossy()
                        ),
                    )));
                }
                let target = nix::fcntl::readlinkat(&fd, name.as_os_str()).map_err(|e| derr(e.into()))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    stack.clear();
                    fd = root.try_clone().map_err(derr)?;
                }
                todo.extend(target.components().rev().filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_owned()),
                    Component::ParentDir => Some(OsString::from("..")),
                    _ => None,
                }));
            }
            Ok(_) => {
                let sub = open_dir_at(&fd, &name).map_err(|e| derr(e.into()))?;
                stack.push(std::mem::replace(&mut fd, sub));
            }
            Err(Errno::ENOENT) => {
                match mkdirat(&fd, name.as_os_str(), FileMode::from_bits_truncate(0o700)) {
                    Ok(()) => {
                        let sub = open_dir_at(&fd, &name).map_err(|e| derr(e.into()))?;
                        let mode = if gid.is_some() { 0o750 } else { 0o755 };
                        fchown(&sub, Some(Uid::from_raw(0)), gid.map(Gid::from_raw)).map_err(|e| derr(e.into()))?;
                        fchmod(&sub, FileMode::from_bits_truncate(mode)).map_err(|e| derr(e.into()))?;
                        stack.push(std::mem::replace(&mut fd, sub));
                    }
                    // Made meanwhile: look at it again (a few times: someone may be racing us).
                    Err(Errno::EEXIST) if races < 3 => {
                        races += 1;
                        todo.push(name);
                    }
                    Err(e) => return Err(derr(e.into())),
                }
            }
            Err(e) => return Err(derr(e.into())),
        }
    }
    Ok(fd)
}

fn listen(ep: &Endpoint) -> Result<(UnixListener, Placed), Error> {
    let path = &ep.path;
    check_path(path)?;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::BadPath(path.clone()));
    };
    let dir = open_socket_dir(parent, ep.owner.map(|o| o.1))?;
    let berr = |e: io::Error| Error::Bind(path.clone(), e);
    // What has the name now: nothing, or a stale socket (replaced); nothing else.
    match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK => {}
        Ok(_) => return Err(Error::NotASocket(path.clone())),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(berr(e.into())),
    }
    // A private directory next to it (same filesystem, so the rename cannot fail for that).
    let tmp_name = OsString::from(format!(".vmnetd-{}-{:x}", std::process::id(), rand_u64()));
    mkdirat(&dir, tmp_name.as_os_str(), FileMode::from_bits_truncate(0o700)).map_err(|e| berr(e.into()))?;
    let cleanup = |d: &OwnedFd| {
        let _ = unlinkat(d, tmp_name.as_os_str(), UnlinkatFlags::RemoveDir);
    };
    let r = (|| {
        let tmp = open_dir_at(&dir, &tmp_name).map_err(|e| berr(e.into()))?;
        let st = nix::sys::stat::fstat(&tmp).map_err(|e| berr(e.into()))?;
        if st.st_uid != 0 || st.st_mode & 0o077 != 0 {
            return Err(berr(io::Error::other("the private socket directory was tampered with")));
        }
        let l = UnixListener::bind(format!("/proc/self/fd/{}/s", tmp.as_raw_fd())).map_err(berr)?;
        let cerr = |e: Errno| Error::Chown(path.clone(), e.into());
        if let Some((u, g)) = ep.owner {
            fchownat(&tmp, "s", Some(Uid::from_raw(u)), Some(Gid::from_raw(g)), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(cerr)?;
        }
        nix::sys::stat::fchmodat(
            &tmp,
            "s",
            FileMode::from_bits_truncate(0o660),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| berr(e.into()))?;
        let st = fstatat(&tmp, "s", AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| berr(e.into()))?;
        nix::fcntl::renameat(&tmp, "s", &dir, name).map_err(|e| berr(e.into()))?;
        Ok((l, st.st_dev, st.st_ino))
    })();
    cleanup(&dir);
    let (l, dev, ino) = r?;
    Ok((l, Placed { dir, name: name.to_owned(), dev, ino }))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}

/// Connects to a listening frontend without ever blocking: a full listen backlog is
/// `WouldBlock`, like a socket that is not there yet. The socket file itself is opened
/// without following a symlink (whoever owns its directory could have planted one to point
/// vmnetd at another service's socket), and must be a socket.
fn connect(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let file =
        nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    let st = nix::sys::stat::fstat(&file)?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket (or a symlink); not connecting"));
    }
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    let addr = UnixAddr::new(format!("/proc/self/fd/{}", file.as_raw_fd()).as_str())?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EAGAIN) => return Err(io::Error::new(io::ErrorKind::WouldBlock, "listen backlog full")),
        Err(e) => return Err(e.into()),
    }
    let s = UnixStream::from(fd);
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Whether something listens at `path` (a full backlog counts as listening). Never blocks.
pub fn listening(path: &Path) -> bool {
    match connect(path) {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// The uid of the process at the other end of `s`.
fn peer_uid(s: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials).ok().map(|c| c.uid())
}

impl Server {
    /// Opens the socket (server mode: now, so errors reach the caller) and starts the thread.
    pub fn start(shared: Arc<Shared>, endpoint: Endpoint) -> Result<Server, Error> {
        if endpoint.mode == Mode::Client {
            check_path(&endpoint.path)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Conns::default();
        let (listener, placed) = match endpoint.mode {
            Mode::Server => {
                let (l, p) = listen(&endpoint)?;
                (Some(l), Some(p))
            }
            Mode::Client => (None, None),
        };
        let (wake, woken) = UnixStream::pair().map_err(Error::Thread)?;
        let (s2, c2, ep2) = (stop.clone(), conn.clone(), endpoint.clone());
        std::thread::Builder::new()
            .name(format!("vhu-{}", shared.name))
            .stack_size(256 * 1024)
            .spawn(move || match listener {
                Some(l) => serve_listener(&shared, &l, &woken, &s2, &c2),
                None => serve_client(&shared, &ep2, &woken, &s2, &c2),
            })
            .map_err(Error::Thread)?;
        Ok(Server { stop, conn, endpoint, placed, wake, stopped: false })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Ends the connection and tells the thread to finish; never waits for it (it may be
    /// in the middle of a request, and a caller holding locks must not wait on a
    /// frontend). The device is reset by the thread as it leaves.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.stop.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write(&[1]);
        for (_, c) in self.conn.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(p) = &self.placed {
            p.remove();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `fd` is readable (true), `woken` is (false), or `timeout` passes (false).
fn readable<F: AsFd>(fd: Option<&F>, woken: &UnixStream, timeout: PollTimeout) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut fds = vec![PollFd::new(woken.as_fd(), PollFlags::POLLIN)];
    if let Some(fd) = fd {
        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
    }
    match poll(&mut fds, timeout) {
        Ok(n) if n > 0 => fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty()),
        _ => false,
    }
}

/// Accepts frontends, each served by a thread of its own (at most [`MAX_CONNECTIONS`] at
/// once; one more is closed at once, with a warning).
fn serve_listener(shared: &Arc<Shared>, l: &UnixListener, woken: &UnixStream, stop: &Arc<AtomicBool>, conn: &Conns) {
    // Connection threads running (counted here, before they start, so a burst of connects
    // cannot start more than the cap).
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        if !readable(Some(l), woken, PollTimeout::NONE) {
            continue;
        }
        match l.accept() {
            Ok((s, _)) => {
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    log::warn!(
                        "vhost-user {}: refused a connection: {MAX_CONNECTIONS} frontends are connected already",
                        shared.name
                    );
                    continue;
                }
                let (sh, st, c, n) = (shared.clone(), stop.clone(), conn.clone(), active.clone());
                n.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new()
                    .name(format!("vhu-{}", shared.name))
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        serve(&sh, s, &st, &c);
                        n.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::SeqCst);
                    log::warn!("vhost-user {}: cannot start a connection thread: {e}", shared.name);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(e) => {
                log::warn!("vhost-user {}: accept: {e}", shared.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_client(shared: &Arc<Shared>, ep: &Endpoint, woken: &UnixStream, stop: &AtomicBool, conn: &Conns) {
    let path = &ep.path;
    let mut backoff = Duration::from_millis(100);
    let mut said = false;
    while !stop.load(Ordering::SeqCst) {
        let r = connect(path).and_then(|s| match (ep.peer_uid, peer_uid(&s)) {
            (Some(want), got) if got != Some(want) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the frontend there runs as uid {}, not {want}, who declared the port",
                    got.map_or("?".into(), |u| u.to_string())
                ),
            )),
            _ => Ok(s),
        });
        match r {
            Ok(s) => {
                backoff = Duration::from_millis(100);
                said = false;
                serve(shared, s, stop, conn);
            }
            Err(e) => {
                if !said {
                    log::info!("vhost-user {}: waiting for {} ({e}); retrying", shared.name, path.display());
                    said = true;
                }
                let ms = u16::try_from(backoff.as_millis()).unwrap_or(u16::MAX);
                readable(None::<&UnixStream>, woken, PollTimeout::from(ms));
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Errors after which the message stream cannot be trusted to be in step.
fn fatal(e: &VuError) -> bool {
    matches!(
        e,
        VuError::InvalidMessage
            | VuError::OversizedMsg
            | VuError::IncorrectFds
            | VuError::InvalidSocketFd(_)
            | VuError::NotUnixSocket
            | VuError::NotStreamSocket
            | VuError::SocketError(_)
            | VuError::SocketRetry(_)
            | VuError::SocketConnect(_)
    )
}

/// Answers one frontend until it goes away. A panic while doing so (in the protocol code,
/// on input from the frontend) resets this device and drops this connection only.
fn serve(shared: &Arc<Shared>, s: UnixStream, stop: &AtomicBool, conn: &Conns) {
    let id = shared.connect();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve_inner(shared, id, s, stop, conn)));
    if r.is_err() {
        log::error!("vhost-user {}: the connection's handler panicked; dropping the connection", shared.name);
    }
    conn.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != id);
    shared.disconnected(id);
}

/// `VHOST_USER_SEND_RARP`, which the `vhost` crate does not know (it would close the
/// connection): the frontend asks us to announce the guest's MAC after a migration, for a
/// guest that cannot announce itself (no GUEST_ANNOUNCE).
const SEND_RARP: u32 = 19;
/// Header flags: version 1, reply, reply wanted.
const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

/// What the next message is, when its whole header has arrived: looked at (not taken)
/// before the `vhost` crate reads it, so the messages it does not know can be answered here.
/// `Err(())`: the connection is gone (closed, or a hard error). `Ok(None)`: only part of a
/// header is there (a frontend may send it in pieces); the `vhost` crate reads it as usual.
fn peek_header(s: &UnixStream) -> Result<Option<(u32, u32, u32)>, ()> {
    use nix::sys::socket::{recv, MsgFlags};
    let mut h = [0u8; 12];
    loop {
        return match recv(s.as_raw_fd(), &mut h, MsgFlags::MSG_PEEK | MsgFlags::MSG_WAITALL) {
            Ok(12) => {
                let w = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                Ok(Some((w(0), w(4), w(8))))
            }
            Ok(0) => Err(()),
            Ok(_) => Ok(None),
            Err(Errno::EINTR) => continue,
            Err(_) => Err(()),
        };
    }
}

/// Takes a SEND_RARP message (header `flags`, payload `size` bytes) off the socket, and
/// answers it if asked. Returns the MAC, or `None` when the message is malformed (the
/// stream is then out of step: the caller closes it).
fn take_send_rarp(s: &UnixStream, flags: u32, size: u32, reply_ack: bool) -> Option<[u8; 6]> {
    use std::io::Read;
    if size != 8 {
        return None;
    }
    let mut m = [0u8; 20];
    (&*s).read_exact(&mut m).ok()?;
    if reply_ack && flags & NEED_REPLY != 0 {
        let mut r = [0u8; 20];
        r[0..4].copy_from_slice(&SEND_RARP.to_le_bytes());
        r[4..8].copy_from_slice(&(VERSION_1 | REPLY).to_le_bytes());
        r[8..12].copy_from_slice(&8u32.to_le_bytes());
        (&*s).write_all(&r).ok()?;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&m[12..18]);
    Some(mac)
}

fn serve_inner(shared: &Arc<Shared>, id: u64, s: UnixStream, stop: &AtomicBool, conn: &Conns) {
    let Ok(peek) = s.try_clone() else { return };
    if let Ok(c) = s.try_clone() {
        conn.lock().unwrap_or_else(|p| p.into_inner()).push((id, c));
    }
    // A stop that came before the connection was published could not shut it down.
    if stop.load(Ordering::SeqCst) {
        return;
    }
    log::info!("vhost-user {}: frontend connected", shared.name);
    let handler = Arc::new(Mutex::new(Handler::new(shared.clone(), id)));
    let mut req = BackendReqHandler::from_stream(s, handler.clone());
    let why = loop {
        if stop.load(Ordering::SeqCst) {
            break None;
        }
        let Ok(header) = peek_header(&peek) else { break None };
        if let Some((SEND_RARP, flags, size)) = header {
            let reply_ack = shared.reply_ack(id);
            match take_send_rarp(&peek, flags, size, reply_ack) {
                Some(mac) => shared.announce(id, mac),
                None => break Some(VuError::InvalidMessage),
            }
            continue;
        }
        match req.handle_request() {
            Ok(()) => {}
            Err(VuError::Disconnected | VuError::SocketBroken(_) | VuError::PartialMessage) => break None,
            Err(e) if fatal(&e) => break Some(e),
            // A refused request the frontend waits on without an answer coming.
            Err(e) if handler.lock().unwrap_or_else(|p| p.into_inner()).must_close() => break Some(e),
            // A refused request (answered, if the frontend asked for an answer) leaves the
            // stream in step: keep serving. QEMU, for one, sends SET_VRING_ENABLE before
            // SET_FEATURES, which the vhost crate refuses, and enables the rings again later.
            Err(e) => log::debug!("vhost-user {}: request refused: {e}", shared.name),
        }
    };
    match why {
        None => log::info!("vhost-user {}: frontend disconnected", shared.name),
        Some(_) if stop.load(Ordering::SeqCst) => {}
        Some(e) => log::warn!("vhost-user {}: closing the connection: {e}", shared.name),
    }
}
