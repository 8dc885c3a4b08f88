//! The control socket: newline-delimited JSON, one task per connection.
//!
//! Every client is untrusted input (see the README's threat model):
//! - who it is comes from the kernel (`SO_PEERCRED`), and [`super::authz`] decides what that
//!   caller may do before a request touches anything;
//! - a request line longer than [`MAX_REQUEST_BYTES`] is answered with an error and skipped
//!   up to its newline; the connection stays open;
//! - a client that sends no complete request, or does not read what it is sent, for the
//!   idle timeout (`[control] idle_timeout_secs`) is disconnected;
//! - a non-root user has at most `[control] max_connections_per_user` connections; past
//!   that, new ones get one error line and are closed. Root is never refused, so idle
//!   connections cannot lock the administrator (or the libvirt hook) out;
//! - captures share one memory budget (`[control] capture_memory_mib`).
//!
//! Replies keep the order of requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use crate::api::{parse_request, ApiError, CaptureEvent, CaptureReq, ErrorKind, Op, Response, MAX_REQUEST_BYTES};
use crate::config::ControlSection;
use crate::datapath::capture::Budget;

use super::authz::Caller;
use super::core::Core;

/// How the control socket treats its clients.
#[derive(Debug, Clone)]
pub struct Limits {
    pub idle: Duration,
    pub per_user: usize,
    pub capture_bytes: usize,
}

impl From<&ControlSection> for Limits {
    fn from(c: &ControlSection) -> Limits {
        Limits {
            idle: Duration::from_secs(u64::from(c.idle_timeout_secs.max(1))),
            per_user: c.max_connections_per_user.max(1) as usize,
            capture_bytes: c.capture_memory_mib.max(1) as usize * (1 << 20),
        }
    }
}

/// Connections per uid.
#[derive(Default)]
struct Counts(std::sync::Mutex<HashMap<u32, usize>>);

/// One counted connection; uncounted on drop.
struct Slot {
    counts: Arc<Counts>,
    uid: u32,
}

impl Counts {
    fn take(self: &Arc<Self>, uid: u32, max: usize) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(uid).or_insert(0);
        if uid != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { counts: self.clone(), uid })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

pub async fn serve(listener: UnixListener, core: Arc<Mutex<Core>>, limits: Limits) {
    let counts = Arc::new(Counts::default());
    let budget = Budget::new(limits.capture_bytes);
    let limits = Arc::new(limits);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let caller = match stream.peer_cred() {
            Ok(c) => Caller { uid: c.uid(), gid: c.gid(), pid: c.pid() },
            Err(e) => {
                log::warn!("control socket: cannot tell who connected ({e}); closing");
                continue;
            }
        };
        let Some(slot) = counts.take(caller.uid, limits.per_user) else {
            tokio::spawn(refuse(stream, limits.per_user));
            continue;
        };
        let (core, limits, budget) = (core.clone(), limits.clone(), budget.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, core, caller, &limits, budget).await {
                log::debug!("control connection of uid {}: {e}", caller.uid);
            }
            drop(slot);
        });
    }
}

/// Tells a client over its connection cap why it is closed.
async fn refuse(mut stream: UnixStream, max: usize) {
    let resp = Response::err(ApiError::new(
        ErrorKind::PermissionDenied,
        format!("Too many connections from this user (at most {max}); close some and retry"),
    ));
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    // Read (and discard) what the client sends for a moment, so that its request write does
    // not meet a closed socket before it reads the reason.
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let drain = async {
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > MAX_REQUEST_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned())
}

async fn connection(
    stream: UnixStream,
    core: Arc<Mutex<Core>>,
    caller: Caller,
    limits: &Limits,
    budget: Arc<Budget>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(4096, r);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let mut limited = (&mut r).take(MAX_REQUEST_BYTES as u64);
        let read = limited.read_until(b'\n', &mut line);
        let n = tokio::time::timeout(limits.idle, read).await.map_err(|_| timed_out("idle client"))??;
        if n == 0 {
            return Ok(());
        }
        let resp = if !line.ends_with(b"\n") && n >= MAX_REQUEST_BYTES {
            tokio::time::timeout(limits.idle, skip_line(&mut r)).await.map_err(|_| timed_out("idle client"))??;
            Response::err(ApiError::new(
                ErrorKind::BadRequest,
                format!("Request too long (limit {MAX_REQUEST_BYTES} bytes)"),
            ))
        } else if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            match parse_request(&line) {
                Ok(crate::api::Request { op: Op::Capture(req), .. }) => {
                    capture(&core, caller, req, &mut r, &mut w, limits, budget.clone()).await?;
                    continue;
                }
                Ok(req) => {
                    let mut core = core.lock().await;
                    match core.handle(req.op, &caller).await {
                        Ok(v) => Response::ok(v),
                        Err(e) => Response::err(e),
                    }
                }
                Err(e) => Response::err(e),
            }
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|e| {
            format!(r#"{{"v":1,"ok":false,"error":{{"kind":"internal","message":"cannot encode reply: {e}"}}}}"#)
                .into_bytes()
        });
        out.push(b'\n');
        write_all(&mut w, &out, limits.idle).await?;
    }
}

/// Writes, giving up on a client that does not read for `idle`.
async fn write_all(w: &mut OwnedWriteHalf, bytes: &[u8], idle: Duration) -> std::io::Result<()> {
    tokio::time::timeout(idle, w.write_all(bytes)).await.map_err(|_| timed_out("client does not read"))?
}

async fn write_line<T: serde::Serialize>(w: &mut OwnedWriteHalf, v: &T, idle: Duration) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write_all(w, &out, idle).await
}

/// Frames a capture's channel holds for a reader that is behind (the shared [`Budget`]
/// bounds their bytes).
const CAPTURE_QUEUE: usize = 1024;

/// Streams a port's frames: the reply, then one [`CaptureEvent`] per line until the count is
/// reached, the port goes away, the client hangs up, or it stops reading for the idle time.
async fn capture(
    core: &Mutex<Core>,
    caller: Caller,
    req: CaptureReq,
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    w: &mut OwnedWriteHalf,
    limits: &Limits,
    budget: Arc<Budget>,
) -> std::io::Result<()> {
    use base64::Engine;
    use std::sync::atomic::{AtomicU64, Ordering};

    let (tx, mut rx) = tokio::sync::mpsc::channel(CAPTURE_QUEUE);
    let dropped = std::sync::Arc::new(AtomicU64::new(0));
    let snaplen = req.snaplen.unwrap_or(65535).clamp(64, 262_144) as usize;
    let sink = crate::datapath::capture::Sink::new(tx, req.count.filter(|c| *c > 0), snaplen, dropped.clone(), budget);
    let started = core.lock().await.start_capture(&req, sink, &caller).await;
    if let Err(e) = started {
        return write_line(w, &Response::err(e), limits.idle).await;
    }
    write_line(w, &Response::ok(serde_json::json!({ "capturing": true, "snaplen": snaplen })), limits.idle).await?;
    let mut frames = 0u64;
    let mut probe = [0u8; 64];
    let reason = loop {
        tokio::select! {
            c = rx.recv() => match c {
                Some(c) => {
                    frames += 1;
                    let ts_us = c.ts.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
                    let ev = CaptureEvent::Frame {
                        ts_us,
                        dir: c.dir,
                        len: c.orig_len,
                        data: base64::engine::general_purpose::STANDARD.encode(&c.data),
                    };
                    drop(c);
                    // A reader that stops reading ends its capture (and frees what it held).
                    write_line(w, &ev, limits.idle).await?;
                }
                None => {
                    break if req.count.is_some_and(|n| frames >= n) { "count reached" } else { "port removed" };
                }
            },
            n = r.read(&mut probe) => {
                // The client hung up (or sent something): stop; dropping `rx` ends the sink.
                if n.unwrap_or(0) == 0 {
                    return Ok(());
                }
            }
        }
    };
    let end = CaptureEvent::End { frames, dropped: dropped.load(Ordering::Relaxed), reason: reason.into() };
    write_line(w, &end, limits.idle).await
}

/// Discards input up to and including the next newline (or EOF).
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<()> {
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            r.consume(i + 1);
            return Ok(());
        }
        let len = buf.len();
        r.consume(len);
    }
}
