//! A blocking client of the control socket, used by the CLI and the libvirt hook.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::proto::{ApiError, Op, Request, Response, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vmnetd daemon is not running (nothing listens on {0}); start it with `vmnetd daemon`")]
    NotRunning(PathBuf, #[source] io::Error),
    #[error("Cannot connect to the vmnetd daemon at {0} (root or the vmnetd group is needed)")]
    PermissionDenied(PathBuf, #[source] io::Error),
    #[error("Cannot connect to the vmnetd daemon at {0}")]
    Connect(PathBuf, #[source] io::Error),
    #[error("Lost the connection to the vmnetd daemon")]
    Io(#[source] io::Error),
    #[error("The vmnetd daemon sent a reply this client cannot read: {0}")]
    BadResponse(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl Error {
    /// True when no daemon is there at all (as opposed to one that refused us).
    pub fn is_not_running(&self) -> bool {
        matches!(self, Error::NotRunning(..))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::NotRunning(path.to_owned(), e),
            io::ErrorKind::PermissionDenied => Error::PermissionDenied(path.to_owned(), e),
            _ => Error::Connect(path.to_owned(), e),
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(Error::Io)?;
        let reader = BufReader::new(stream.try_clone().map_err(Error::Io)?);
        Ok(Client { writer: stream, reader })
    }

    /// Sends one request and waits for its reply, without interpreting the result.
    pub fn raw_call(&mut self, op: Op) -> Result<Response> {
        let mut line = serde_json::to_vec(&Request::new(op)).map_err(|e| Error::BadResponse(e.to_string()))?;
        line.push(b'\n');
        // A daemon that refuses a connection (e.g. a user over its connection cap) answers
        // at once and closes; the write may then fail although the reason is waiting to be
        // read, so a failed write still looks for a reply before reporting it.
        let written = self.writer.write_all(&line);
        let mut resp = String::new();
        let n = match (written, self.reader.read_line(&mut resp)) {
            (Err(_), Ok(n)) if n > 0 => n,
            (Err(e), _) => return Err(Error::Io(e)),
            (Ok(()), r) => r.map_err(Error::Io)?,
        };
        if n == 0 {
            return Err(Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "daemon closed the connection")));
        }
        let r: Response = serde_json::from_str(&resp).map_err(|e| Error::BadResponse(e.to_string()))?;
        if r.v != PROTOCOL_VERSION {
            return Err(Error::BadResponse(format!(
                "protocol version {} (this client speaks {PROTOCOL_VERSION})",
                r.v
            )));
        }
        Ok(r)
    }

    /// Reads the next line of a stream that follows a reply (e.g. capture events). `None` at
    /// end of stream.
    pub fn next_event<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(Error::Io)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line).map(Some).map_err(|e| Error::BadResponse(e.to_string()))
    }

    /// Bounds how long a reply may take (default two minutes).
    pub fn set_timeout(&mut self, t: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(t)).map_err(Error::Io)?;
        self.writer.set_write_timeout(Some(t)).map_err(Error::Io)
    }

    /// Waits without a read timeout (for long-running streams).
    pub fn no_timeout(&mut self) -> Result<()> {
        self.writer.set_read_timeout(None).map_err(Error::Io)
    }

    /// Sends one request and decodes its result as `T`; an error reply becomes [`Error::Api`].
    pub fn call<T: DeserializeOwned>(&mut self, op: Op) -> Result<T> {
        let r = self.raw_call(op)?;
        if let Some(e) = r.error {
            return Err(Error::Api(e));
        }
        let v = r.result.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(v).map_err(|e| Error::BadResponse(e.to_string()))
    }
}
