//! The control protocol: newline-delimited JSON over the daemon's Unix socket.
//!
//! Every request is one JSON object on one line: `{"v":1,"op":"mktap","name":"tap0",...}`. The
//! daemon answers each with one line: `{"v":1,"ok":true,"result":...}` or
//! `{"v":1,"ok":false,"error":{"kind":"conflict","message":"..."}}`. A request with another
//! protocol version, a malformed line, or a line over [`MAX_REQUEST_BYTES`] gets an error
//! reply; the connection stays usable and the daemon keeps serving everyone else.
//!
//! These types are shared by the CLI, the daemon and the libvirt hook.

use serde::{Deserialize, Serialize};

use crate::ifname::IfName;
use crate::switch::MacAddr;
use crate::sys::tap::Mode;
use crate::users::Principal;

pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads (the newline included).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/vmnetd/vmnetd.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub op: Op,
}

impl Request {
    pub fn new(op: Op) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            op,
        }
    }
}

/// Everything a client can ask of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Daemon facts and a summary of declarations. Result: [`Status`].
    Status,
    /// Declare a persistent TAP. Result: [`TapInfo`].
    Mktap(TapSpec),
    /// Remove a TAP declaration and the device. Result: [`TapInfo`] of what was removed.
    Rmtap(RmTap),
    /// Result: `Vec<TapInfo>`.
    TapList,
}

/// A TAP as a client declares it; user and group are names or numeric ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TapSpec {
    /// `None`: the daemon picks the first free `vmtapN`.
    pub name: Option<IfName>,
    pub mode: Mode,
    pub user: Option<String>,
    pub group: Option<String>,
    pub multi_queue: bool,
    pub vnet_hdr: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmTap {
    pub name: IfName,
    /// Delete even a device vmnetd did not create, or one a process still holds.
    #[serde(default)]
    pub force: bool,
}

/// Where a declaration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file (`/etc/vmnetd/vmnetd.toml` or the embedded default).
    Config,
    /// A runtime declaration (CLI, hook), kept in the state dir.
    State,
    /// Not recorded anywhere (no daemon was running).
    None,
}

/// A TAP as vmnetd knows it, with what the kernel says now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapInfo {
    pub name: IfName,
    pub mode: Mode,
    pub owner: Option<Principal>,
    pub group: Option<Principal>,
    pub multi_queue: bool,
    pub vnet_hdr: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// vmnetd created the device (and so may delete it), rather than adopting one.
    pub created: bool,
    pub source: Source,
    /// The device exists in the kernel now.
    pub present: bool,
    /// Queues attached by processes (QEMU, ...) right now.
    pub queues_attached: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub uptime_secs: u64,
    pub socket: String,
    pub state_dir: String,
    pub run_dir: String,
    /// The config file read at start, or "embedded default".
    pub config: String,
    pub taps: usize,
}

/// What kind of failure a request met; the CLI maps it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request could not be parsed, was too long, or had the wrong protocol version.
    BadRequest,
    /// A value in the request is invalid (name, VLAN id, user...).
    InvalidArgument,
    NotFound,
    /// The request collides with something that exists.
    Conflict,
    PermissionDenied,
    /// The kernel or peer lacks a needed feature.
    Unsupported,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorKind {
    /// Exit code of the CLI for this kind of failure (documented in the README).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::BadRequest | ErrorKind::InvalidArgument => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::PermissionDenied => 5,
            ErrorKind::Unsupported => 6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// An error whose message is the whole `source()` chain, joined with ": ".
    pub fn from_chain(kind: ErrorKind, e: &(dyn std::error::Error + 'static)) -> Self {
        ApiError::new(kind, error_chain(e))
    }
}

/// `"outer: inner: root"` for an error and its sources, each said once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(e: ApiError) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(e),
        }
    }
}

/// Parses one request line, turning every failure into the error reply the daemon sends.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    // Look at the version first, so a newer client gets "version" rather than "unknown op".
    let raw: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("Malformed request: {}", strip_location(&e)),
        )
    })?;
    let v = raw.get("v").and_then(serde_json::Value::as_u64);
    match v {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("Unsupported protocol version {v} (this daemon speaks {PROTOCOL_VERSION})"),
            ))
        }
        None => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "Malformed request: missing protocol version field \"v\"",
            ))
        }
    }
    serde_json::from_value(raw).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidArgument,
            format!("Invalid request: {}", strip_location(&e)),
        )
    })
}

fn strip_location(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_flat() {
        let r = Request::new(Op::Mktap(TapSpec {
            name: Some(IfName::new("tap0").unwrap()),
            user: Some("hyman".into()),
            ..Default::default()
        }));
        let s = serde_json::to_string(&r).unwrap();
        assert!(
            s.starts_with(r#"{"v":1,"op":"mktap","name":"tap0","mode":"tap","user":"hyman""#),
            "{s}"
        );
        let back = parse_request(s.as_bytes()).unwrap();
        assert!(matches!(back.op, Op::Mktap(t) if t.user.as_deref() == Some("hyman")));
    }

    #[test]
    fn unit_ops_parse() {
        assert!(matches!(
            parse_request(br#"{"v":1,"op":"status"}"#).unwrap().op,
            Op::Status
        ));
    }

    #[test]
    fn malformed_requests_get_clear_errors() {
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.starts_with("Malformed request"), "{}", e.message);
        assert!(!e.message.contains("at line"), "{}", e.message);

        let e = parse_request(br#"{"op":"status"}"#).unwrap_err();
        assert!(e.message.contains("\"v\""), "{}", e.message);

        let e = parse_request(br#"{"v":2,"op":"status"}"#).unwrap_err();
        assert!(e.message.contains("version 2"), "{}", e.message);

        let e = parse_request(br#"{"v":1,"op":"frobnicate"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("frobnicate"), "{}", e.message);

        let e = parse_request(br#"{"v":1,"op":"mktap","name":"way-too-long-name0"}"#).unwrap_err();
        assert!(e.message.contains("longer than 15 bytes"), "{}", e.message);
    }

    #[test]
    fn error_chain_says_each_cause_once() {
        let inner = std::io::Error::from_raw_os_error(libc::EPERM);
        #[derive(Debug, thiserror::Error)]
        #[error("Cannot create TAP tap0")]
        struct Outer(#[source] std::io::Error);
        let s = error_chain(&Outer(inner));
        assert!(
            s.starts_with("Cannot create TAP tap0: Operation not permitted"),
            "{s}"
        );
    }
}
