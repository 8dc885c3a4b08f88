//! The hook's settings. libvirt runs hooks with a scrubbed environment and fixed arguments,
//! so they come from a file: `/etc/vmnetd/libvirt-hook.toml` (or the file named by
//! `VMNETD_LIBVIRT_HOOK_CONFIG`, for running the hook by hand).
//!
//! ```toml
//! socket = "/run/vmnetd/vmnetd.sock"   # the daemon's control socket
//! qemu_user = "libvirt-qemu"           # who QEMU runs as (default: from qemu.conf)
//! qemu_group = "libvirt-qemu"
//! ```
//!
//! Socket precedence: `VMNETD_SOCKET`, then the file, then `/run/vmnetd/vmnetd.sock`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/vmnetd/libvirt-hook.toml";
pub const ENV_PATH: &str = "VMNETD_LIBVIRT_HOOK_CONFIG";
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_group: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HookConfig {
    pub socket: PathBuf,
    pub qemu_user: Option<String>,
    pub qemu_group: Option<String>,
    /// Where `/etc/libvirt/qemu.conf` is (tests point elsewhere).
    pub qemu_conf: PathBuf,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            socket: vmnetd_api::proto::DEFAULT_SOCKET.into(),
            qemu_user: None,
            qemu_group: None,
            qemu_conf: QEMU_CONF.into(),
        }
    }
}

pub fn path() -> PathBuf {
    std::env::var_os(ENV_PATH).map_or_else(|| DEFAULT_PATH.into(), PathBuf::from)
}

pub fn read_file(p: &Path) -> Result<File, String> {
    match std::fs::read_to_string(p) {
        Ok(s) => toml::from_str(&s).map_err(|e| format!("{}: {}", p.display(), e.message())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

impl HookConfig {
    /// Loads the file (a missing one means defaults) and applies `VMNETD_SOCKET`.
    pub fn load() -> Result<HookConfig, String> {
        let f = read_file(&path())?;
        let mut c = HookConfig { qemu_user: f.qemu_user, qemu_group: f.qemu_group, ..Default::default() };
        if let Some(s) = f.socket {
            c.socket = s;
        }
        if let Some(s) = std::env::var_os("VMNETD_SOCKET").filter(|s| !s.is_empty()) {
            c.socket = s.into();
        }
        Ok(c)
    }

    /// `USER:GROUP` QEMU runs as: this file, else qemu.conf's `user`/`group`, else
    /// `libvirt-qemu:libvirt-qemu` (Debian's build default).
    pub fn qemu_owner(&self) -> String {
        let conf = std::fs::read_to_string(&self.qemu_conf).unwrap_or_default();
        let user = self.qemu_user.clone().or_else(|| qemu_conf_value(&conf, "user"));
        let group = self.qemu_group.clone().or_else(|| qemu_conf_value(&conf, "group"));
        let user = user.unwrap_or_else(|| "libvirt-qemu".into());
        let group = group.unwrap_or_else(|| "libvirt-qemu".into());
        format!("{user}:{group}")
    }
}

/// `key = "value"` from qemu.conf (libvirt's own config syntax), comments ignored.
pub fn qemu_conf_value(conf: &str, key: &str) -> Option<String> {
    conf.lines().rev().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        // libvirt's "+N" means a numeric id.
        Some(v.strip_prefix('+').unwrap_or(v).to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_conf_lines() {
        let conf = "#user = \"nobody\"\nuser = \"qemu\"\n  group = \"+107\"\n";
        assert_eq!(qemu_conf_value(conf, "user").as_deref(), Some("qemu"));
        assert_eq!(qemu_conf_value(conf, "group").as_deref(), Some("107"));
        assert_eq!(qemu_conf_value("#user = \"x\"", "user"), None);
    }

    #[test]
    fn file_rejects_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.toml");
        std::fs::write(&p, "sokcet = '/x'\n").unwrap();
        assert!(read_file(&p).unwrap_err().contains("unknown field"));
        std::fs::write(&p, "socket = '/x'\n").unwrap();
        assert_eq!(read_file(&p).unwrap().socket, Some(PathBuf::from("/x")));
        assert_eq!(read_file(&d.path().join("missing")).unwrap(), File::default());
    }
}
