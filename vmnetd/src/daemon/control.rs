//! The control socket: newline-delimited JSON, one task per connection.
//!
//! A request line longer than [`MAX_REQUEST_BYTES`] is answered with an error and skipped up
//! to its newline; the connection stays open. Replies keep the order of requests.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore};

use crate::api::{parse_request, ApiError, CaptureEvent, CaptureReq, ErrorKind, Op, Response, MAX_REQUEST_BYTES};

use super::core::Core;

/// Most clients served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;

pub async fn serve(listener: UnixListener, core: Arc<Mutex<Core>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let core = core.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, core).await {
                        log::debug!("control connection: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, core: Arc<Mutex<Core>>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let n = (&mut r).take(MAX_REQUEST_BYTES as u64).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let resp = if !line.ends_with(b"\n") && n >= MAX_REQUEST_BYTES {
            skip_line(&mut r).await?;
            Response::err(ApiError::new(
                ErrorKind::BadRequest,
                format!("Request too long (limit {MAX_REQUEST_BYTES} bytes)"),
            ))
        } else if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            match parse_request(&line) {
                Ok(crate::api::Request { op: Op::Capture(req), .. }) => {
                    capture(&core, req, &mut r, &mut w).await?;
                    continue;
                }
                Ok(req) => {
                    let mut core = core.lock().await;
                    match core.handle(req.op).await {
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
        w.write_all(&out).await?;
    }
}

async fn write_line<T: serde::Serialize>(w: &mut tokio::net::unix::OwnedWriteHalf, v: &T) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await
}

/// Streams a port's frames: the reply, then one [`CaptureEvent`] per line until the count is
/// reached, the port goes away, or the client hangs up.
async fn capture(
    core: &Mutex<Core>,
    req: CaptureReq,
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    use base64::Engine;
    use std::sync::atomic::{AtomicU64, Ordering};

    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let dropped = std::sync::Arc::new(AtomicU64::new(0));
    let snaplen = req.snaplen.unwrap_or(65535).clamp(64, 262_144) as usize;
    let sink = crate::datapath::capture::Sink::new(tx, req.count.filter(|c| *c > 0), snaplen, dropped.clone());
    let started = core.lock().await.start_capture(&req, sink).await;
    if let Err(e) = started {
        return write_line(w, &Response::err(e)).await;
    }
    write_line(w, &Response::ok(serde_json::json!({ "capturing": true, "snaplen": snaplen }))).await?;
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
                    write_line(w, &ev).await?;
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
    write_line(w, &CaptureEvent::End { frames, dropped: dropped.load(Ordering::Relaxed), reason: reason.into() }).await
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
