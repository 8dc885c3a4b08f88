//! `install` / `uninstall`: put the hook where libvirt looks and make libvirtd notice.
//!
//! libvirt runs every executable in `/etc/libvirt/hooks/qemu.d/` (sorted by name), but
//! scans for hooks only at start and on SIGHUP, so both verbs signal every running
//! libvirtd (and virtqemud, for modular daemons).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config;

pub const HOOKS_DIR: &str = "/etc/libvirt/hooks/qemu.d";
pub const HOOK_NAME: &str = "vmnetd";

pub struct Options {
    pub hooks_dir: PathBuf,
    pub config: PathBuf,
    pub socket: Option<PathBuf>,
}

/// Writes `data` to `path` through a temp file and a rename, so a concurrent libvirt never
/// runs a half-written hook.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

pub fn install(o: &Options) -> Result<Vec<String>, String> {
    let mut said = Vec::new();
    std::fs::create_dir_all(&o.hooks_dir).map_err(|e| format!("cannot create {}: {e}", o.hooks_dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let target = o.hooks_dir.join(HOOK_NAME);
    let same_file = std::fs::canonicalize(&target).ok() == std::fs::canonicalize(&exe).ok();
    if !same_file {
        let bin = std::fs::read(&exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
        write_atomic(&target, &bin, 0o755)?;
    }
    said.push(format!("installed {}", target.display()));
    if let Some(sock) = &o.socket {
        let mut f = config::read_file(&o.config)?;
        f.socket = Some(sock.clone());
        let text = toml::to_string(&f).map_err(|e| e.to_string())?;
        if let Some(d) = o.config.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        write_atomic(&o.config, format!("# vmnetd-libvirt-hook settings\n{text}").as_bytes(), 0o644)?;
        said.push(format!("{}: socket = {}", o.config.display(), sock.display()));
    }
    said.push(reload());
    Ok(said)
}

pub fn uninstall(o: &Options) -> Result<Vec<String>, String> {
    let target = o.hooks_dir.join(HOOK_NAME);
    match std::fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(vec![format!("{} is not installed", target.display())])
        }
        Err(e) => return Err(format!("cannot remove {}: {e}", target.display())),
    }
    Ok(vec![format!("removed {}", target.display()), reload()])
}

/// SIGHUP to every libvirtd/virtqemud; says what happened.
fn reload() -> String {
    let pids = daemon_pids();
    if pids.is_empty() {
        return "libvirtd is not running; it picks the hook up when it starts".into();
    }
    let mut done = Vec::new();
    for (pid, name) in pids {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP) {
            Ok(()) => done.push(format!("{name} (pid {pid})")),
            Err(e) => return format!("cannot signal {name} (pid {pid}): {e}; restart it to load the hook"),
        }
    }
    format!("{} reloaded its hooks (SIGHUP)", done.join(", "))
}

fn daemon_pids() -> Vec<(i32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else { continue };
        let comm = comm.trim();
        if comm == "libvirtd" || comm == "virtqemud" {
            out.push((pid, comm.to_owned()));
        }
    }
    out.sort();
    out
}
