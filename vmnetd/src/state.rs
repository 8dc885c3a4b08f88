//! Persisted declarations: `state.json` in the state dir, written crash-safely.
//!
//! A write goes to a fresh temporary file in the same directory, is fsync'ed, renamed over
//! `state.json`, and the directory is fsync'ed, so after a crash (or SIGKILL, or power loss)
//! the file holds either the old or the new declarations, never a mix or a torn write.
//! A state file that does not parse is never overwritten: the daemon refuses to start and
//! says where the file is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{BridgeSpec, PortSpec};
use crate::tap::TapDecl;

pub const STATE_FILE: &str = "state.json";
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot create state directory {0}")]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("Cannot read state file {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("State file {0} is not valid (fix it or move it aside to start from scratch)")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("State file {path} has version {found}; this vmnetd understands version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("Cannot write state file {0}")]
    Write(PathBuf, #[source] io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Everything declared at runtime (CLI, hook). The config file's declarations are not here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub taps: Vec<TapDecl>,
    #[serde(default)]
    pub bridges: Vec<BridgeDecl>,
    #[serde(default)]
    pub ports: Vec<PortDecl>,
    /// Networks declared at runtime (`vmnetd network add`), with their leases and forwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::network::NetworkDecl>,
    /// What was resolved for the config file's networks (an `auto` subnet stays the same
    /// across restarts), by network name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config_networks: std::collections::BTreeMap<String, ResolvedNet>,
    /// Uplinks whose `forwarding` vmnetd switched on for NAT'd networks (switched off again
    /// when none is left).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uplink_forwarding: Vec<String>,
    /// Flow rules of built-in bridges changed at runtime (printed rules, by bridge); a
    /// bridge listed here ignores the config file's `[[flow]]` entries.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub flows: std::collections::BTreeMap<String, Vec<String>>,
    /// Mirrors added at runtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<vmnetd_api::policy::MirrorSpec>,
}

/// A config network's resolved subnet and IPv6 prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedNet {
    pub subnet: vmnetd_api::net::Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<std::net::Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_forwarding: Option<bool>,
    /// Static leases added at runtime (`vmnetd network lease add`, the libvirt hook's
    /// `ip='…'`) to a network the config file declares; the file's own leases win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<vmnetd_api::net::StaticLease>,
}

/// A declared bridge, and whether vmnetd created its kernel device (Linux bridges).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeDecl {
    pub spec: BridgeSpec,
    #[serde(default)]
    pub created: bool,
}

/// A declared port, whether vmnetd created its kernel device (internal TAPs), who added it
/// (a non-root caller, who may then remove and capture it), and the interface it was
/// declared on (see [`Attached`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDecl {
    pub spec: PortSpec,
    #[serde(default)]
    pub created: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<Attached>,
}

/// The identity of the kernel interface a netdev port was declared on, when that interface
/// is one vmnetd does not manage itself (a TAP made by libvirt or by hand): a port follows
/// that interface, not its name, so a stale port cannot capture the next VM's `vnetN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub ifindex: u32,
}

impl PortDecl {
    pub fn new(spec: PortSpec, created: bool) -> PortDecl {
        PortDecl { spec, created, creator: None, attached: None }
    }
}

impl State {
    pub fn new() -> State {
        State { version: STATE_VERSION, ..Default::default() }
    }

    pub fn tap(&self, name: &str) -> Option<&TapDecl> {
        self.taps.iter().find(|t| t.name.as_str() == name)
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Store> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::CreateDir(dir.to_owned(), e))?;
        Ok(Store { dir: dir.to_owned() })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The recorded state; an empty one if there is no file yet.
    pub fn load(&self) -> Result<State> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::new()),
            Err(e) => return Err(Error::Read(path, e)),
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| Error::Parse(path.clone(), e))?;
        if state.version != STATE_VERSION {
            return Err(Error::Version { path, found: state.version });
        }
        Ok(state)
    }

    /// Replaces the state file atomically and durably.
    pub fn save(&self, state: &State) -> Result<()> {
        let path = self.path();
        let werr = |e| Error::Write(path.clone(), e);
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| werr(io::Error::other(e)))?;
        bytes.push(b'\n');
        let tmp = self.dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            werr(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TapSpec;
    use crate::ifname::IfName;

    fn tap(name: &str) -> TapDecl {
        TapDecl::from_spec(&TapSpec::default(), IfName::new(name).unwrap()).unwrap()
    }

    #[test]
    fn missing_file_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sub")).unwrap();
        assert_eq!(store.load().unwrap(), State::new());
    }

    #[test]
    fn save_then_load_roundtrips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut s = State::new();
        s.taps.push(tap("tap0"));
        s.taps.push(tap("tap1"));
        store.save(&s).unwrap();
        s.taps.pop();
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn corrupt_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), b"{\"version\":1,\"taps\":[").unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, Error::Parse(..)));
        assert!(e.to_string().contains("move it aside"));
        assert_eq!(fs::read(store.path()).unwrap(), b"{\"version\":1,\"taps\":[");
    }

    #[test]
    fn future_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), b"{\"version\":9}").unwrap();
        assert!(matches!(store.load(), Err(Error::Version { found: 9, .. })));
    }
}
