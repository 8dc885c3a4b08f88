//! The vhost-user socket of a port, and the thread that serves its frontend.
//!
//! - `server` mode: vmnetd listens on the socket (QEMU: `-chardev socket,path=...,reconnect=1`).
//!   The socket is created 0660 and owned by the port's owner, so a QEMU running as that
//!   user (or as libvirt-qemu) can connect; a stale socket left by a killed vmnetd is
//!   replaced. One frontend at a time.
//! - `client` mode: the frontend listens (QEMU `server=on`), vmnetd connects, and keeps
//!   retrying with backoff (100 ms doubling to 2 s), forever: a guest survives a vmnetd
//!   restart, and vmnetd survives a QEMU restart.
//!
//! When a frontend goes away (or breaks the protocol), the device forgets what it set up and
//! the port waits for the next connection; nothing else is affected.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::PollTimeout;
use vhost::vhost_user::{BackendReqHandler, Error as VuError};

use crate::device::{Handler, Shared};

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
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Socket path {0} is longer than a Unix socket address allows ({1} bytes max)")]
    PathTooLong(PathBuf, usize),
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

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_PATH: usize = 107;

/// The running socket of one port. Dropping it (or [`Server::stop`]) ends the thread, drops
/// the connection and, in server mode, removes the socket file.
pub struct Server {
    stop: Arc<AtomicBool>,
    conn: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
    endpoint: Endpoint,
    /// Written on stop: wakes the thread out of `accept`'s poll or a reconnect back-off at
    /// once (a port removal should not wait for a timer).
    wake: UnixStream,
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    if let Some((u, g)) = owner {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(u)), Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| Error::Chown(path.to_owned(), e.into()))?;
    }
    Ok(())
}

fn listen(ep: &Endpoint) -> Result<UnixListener, Error> {
    let path = &ep.path;
    if path.as_os_str().len() > MAX_PATH {
        return Err(Error::PathTooLong(path.clone(), MAX_PATH));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o770)
                .create(dir)
                .map_err(|e| Error::Dir(dir.to_owned(), e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o770))
                .map_err(|e| Error::Dir(dir.to_owned(), e))?;
            chown(dir, ep.owner)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(Error::NotASocket(path.clone())),
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(|e| Error::Bind(path.clone(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| Error::Bind(path.clone(), e))?;
    chown(path, ep.owner)?;
    Ok(l)
}

impl Server {
    /// Opens the socket (server mode: now, so errors reach the caller) and starts the thread.
    pub fn start(shared: Arc<Shared>, endpoint: Endpoint) -> Result<Server, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Arc::new(Mutex::new(None));
        let listener = match endpoint.mode {
            Mode::Server => Some(listen(&endpoint)?),
            Mode::Client => None,
        };
        let (wake, woken) = UnixStream::pair().map_err(Error::Thread)?;
        let (s2, c2, ep2) = (stop.clone(), conn.clone(), endpoint.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vhu-{}", shared.name))
            .stack_size(256 * 1024)
            .spawn(move || match listener {
                Some(l) => serve_listener(&shared, &l, &woken, &s2, &c2),
                None => serve_client(&shared, &ep2.path, &woken, &s2, &c2),
            })
            .map_err(Error::Thread)?;
        Ok(Server { stop, conn, thread: Some(thread), endpoint, wake })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Ends the connection and the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write(&[1]);
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.endpoint.mode == Mode::Server {
            let _ = std::fs::remove_file(&self.endpoint.path);
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

fn serve_listener(
    shared: &Arc<Shared>,
    l: &UnixListener,
    woken: &UnixStream,
    stop: &AtomicBool,
    conn: &Mutex<Option<UnixStream>>,
) {
    while !stop.load(Ordering::SeqCst) {
        if !readable(Some(l), woken, PollTimeout::NONE) {
            continue;
        }
        match l.accept() {
            Ok((s, _)) => serve(shared, s, stop, conn),
            Err(e) => {
                log::warn!("vhost-user {}: accept: {e}", shared.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_client(
    shared: &Arc<Shared>,
    path: &Path,
    woken: &UnixStream,
    stop: &AtomicBool,
    conn: &Mutex<Option<UnixStream>>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut said = false;
    while !stop.load(Ordering::SeqCst) {
        match UnixStream::connect(path) {
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

/// Answers one frontend until it goes away.
fn serve(shared: &Arc<Shared>, s: UnixStream, stop: &AtomicBool, conn: &Mutex<Option<UnixStream>>) {
    if let Ok(c) = s.try_clone() {
        *conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
    }
    log::info!("vhost-user {}: frontend connected", shared.name);
    let handler = Arc::new(Mutex::new(Handler::new(shared.clone())));
    let mut req = BackendReqHandler::from_stream(s, handler);
    let why = loop {
        match req.handle_request() {
            Ok(()) => {}
            Err(VuError::Disconnected | VuError::SocketBroken(_) | VuError::PartialMessage) => break None,
            Err(e) if fatal(&e) => break Some(e),
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
    *conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    shared.disconnected();
}
