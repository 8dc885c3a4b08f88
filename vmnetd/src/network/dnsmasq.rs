//! One dnsmasq per network: its config, its static leases, and the process.
//!
//! The config binds dnsmasq to the network's interface only (`interface=`, `bind-dynamic`,
//! `except-interface=lo`: never the host's other interfaces, and it follows the address
//! when the interface is re-made), reads neither `/etc/hosts` (`no-hosts`) nor any other
//! config, and writes its leases to `STATE_DIR/networks/NAME/leases` (kept across restarts
//! and reboots). Static leases are a `dhcp-hostsfile`, re-read on SIGHUP, so adding one
//! never restarts the server. Every value written here went through the strict parsers of
//! [`vmnetd_api::net`]: no line can be smuggled in.
//!
//! The daemon starts dnsmasq in the foreground as its child (`--keep-in-foreground`, logs
//! on stderr, which the daemon copies into its own log) and restarts it if it exits. A
//! dnsmasq left by an earlier daemon (killed, or stopped: dnsmasq keeps serving meanwhile)
//! is recognised by its pid file and command line and replaced at start.

use std::fmt::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::BridgeKind;

use super::NetworkDecl;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("Cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("dnsmasq for network {name} exited at start ({status}): {log}")]
    Exited { name: String, status: String, log: String },
}

/// Where a network's dnsmasq files are.
#[derive(Debug, Clone)]
pub struct Files {
    /// `RUN_DIR/networks/NAME`: config, static leases, pid file (readable by dnsmasq after it
    /// drops privileges).
    pub run: PathBuf,
    /// `STATE_DIR/networks/NAME`: the lease file (opened by dnsmasq as root, kept).
    pub state: PathBuf,
}

impl Files {
    pub fn new(run_dir: &Path, state_dir: &Path, name: &str) -> Files {
        Files { run: run_dir.join("networks").join(name), state: state_dir.join("networks").join(name) }
    }
    pub fn conf(&self) -> PathBuf {
        self.run.join("dnsmasq.conf")
    }
    pub fn hosts(&self) -> PathBuf {
        self.run.join("hosts")
    }
    pub fn pid(&self) -> PathBuf {
        self.run.join("dnsmasq.pid")
    }
    pub fn leases(&self) -> PathBuf {
        self.state.join("leases")
    }
}

/// The config file's text.
pub fn render_conf(decl: &NetworkDecl, kind: BridgeKind, files: &Files) -> String {
    let s = &decl.spec;
    let iface = decl.interface(kind);
    let mut c = String::new();
    let _ = writeln!(c, "# Written by vmnetd for network {}; rewritten at every change and start.", s.name);
    let _ = writeln!(c, "interface={iface}");
    c.push_str("except-interface=lo\nbind-dynamic\nno-hosts\nlog-facility=-\n");
    let _ = writeln!(c, "pid-file={}", files.pid().display());
    if s.dns {
        c.push_str("domain-needed\nbogus-priv\n");
        if let Some(d) = &s.domain {
            // Names in the domain are answered here and never forwarded upstream.
            let _ = writeln!(c, "domain={d}\nlocal=/{d}/\nexpand-hosts");
        }
    } else {
        c.push_str("port=0\n");
    }
    if let Some(r) = decl.dhcp_range() {
        let _ = writeln!(c, "dhcp-range={},{},{},1h", r.first, r.last, decl.subnet.netmask());
        let _ = writeln!(c, "dhcp-leasefile={}", files.leases().display());
        let _ = writeln!(c, "dhcp-hostsfile={}", files.hosts().display());
        c.push_str("dhcp-authoritative\n");
        let size = u32::from(r.last) - u32::from(r.first) + 1;
        // Static leases do not count (adding one must not change the config: no restart).
        let _ = writeln!(c, "dhcp-lease-max={}", size + super::MAX_LEASES as u32);
        if !s.nat {
            // An isolated network: no default route through the host.
            c.push_str("dhcp-option=option:router\n");
        }
        if !s.dns {
            c.push_str("dhcp-option=option:dns-server\n");
        }
    }
    if let Some(p) = decl.ipv6 {
        c.push_str("enable-ra\n");
        let _ = writeln!(c, "dhcp-range={p},ra-only,64");
    }
    c
}

/// The static leases (`dhcp-hostsfile`): `MAC,IP[,NAME]` per line.
pub fn render_hosts(decl: &NetworkDecl) -> String {
    let mut c = String::new();
    for l in &decl.leases {
        let _ = match &l.name {
            Some(n) => writeln!(c, "{},{},{n}", l.mac, l.ip),
            None => writeln!(c, "{},{}", l.mac, l.ip),
        };
    }
    c
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let w = || -> std::io::Result<()> {
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    };
    w().map_err(|e| Error::Write(path.to_owned(), e))
}

/// Writes the config and static leases (and makes the directories). Returns whether the
/// config changed (then a running dnsmasq must be restarted; a hosts change needs SIGHUP).
pub fn write_files(decl: &NetworkDecl, kind: BridgeKind, files: &Files) -> Result<bool, Error> {
    // The umask (0077) applies to new directories: set the modes after. dnsmasq re-reads
    // its hosts file after dropping privileges, so the run side is world-readable.
    let parent = files.run.parent().map(Path::to_owned).unwrap_or_default();
    for (dir, mode) in [(&parent, 0o755), (&files.run, 0o755), (&files.state, 0o700)] {
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(|e| Error::Write(dir.clone(), e))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
    let conf = render_conf(decl, kind, files);
    let changed = std::fs::read_to_string(files.conf()).ok().as_deref() != Some(conf.as_str());
    if changed {
        write_file(&files.conf(), &conf)?;
    }
    write_file(&files.hosts(), &render_hosts(decl))?;
    Ok(changed)
}

/// A running dnsmasq the daemon started.
#[derive(Debug)]
pub struct Instance {
    pub pid: u32,
    /// Set when the process has exited (its waiter task saw it).
    pub exited: tokio::sync::watch::Receiver<bool>,
}

/// Starts dnsmasq on `files.conf()` and waits briefly to see it stay up (a port in use,
/// a bad interface: it exits at once). `on_exit` runs when it exits later.
pub async fn start(
    bin: &Path,
    name: &str,
    files: &Files,
    on_exit: impl FnOnce(u32) + Send + 'static,
) -> Result<Instance, Error> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", files.conf().display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| Error::Spawn(bin.to_owned(), e))?;
    let pid = child.id().unwrap_or(0);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let first_lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let name = name.to_owned();
        let first = first_lines.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                // Its problems at info level; each DHCP and RA transaction at debug.
                let lower = l.to_ascii_lowercase();
                if ["fail", "error", "warning", "cannot", "unable", "illegal", "bad "].iter().any(|w| lower.contains(w))
                {
                    log::warn!("dnsmasq[{name}]: {l}");
                } else {
                    log::debug!("dnsmasq[{name}]: {l}");
                }
                if let Ok(mut f) = first.lock() {
                    if f.len() < 2048 {
                        f.push_str(&l);
                        f.push_str("; ");
                    }
                }
            }
        });
    }
    let (status_tx, mut status_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let st = child.wait().await;
        let _ = tx.send(true);
        if status_tx.send(st.as_ref().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())).is_err() {
            on_exit(pid);
        }
    });
    // dnsmasq checks its config and binds its sockets before it writes its pid file: once
    // the file names this child, it serves. One that exits first failed (a port in use, a bad
    // interface). On a slow machine this can take a while; after 5 s without either, it is
    // taken as up (the supervisor restarts it if it exits later).
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(20), &mut status_rx).await {
            Ok(Ok(status)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let log = first_lines.lock().map(|s| s.trim_end_matches("; ").to_owned()).unwrap_or_default();
                return Err(Error::Exited { name: name.to_owned(), status, log });
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
        let written = std::fs::read_to_string(files.pid()).is_ok_and(|p| p.trim() == pid.to_string());
        if written || started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    drop(status_rx);
    Ok(Instance { pid, exited: rx })
}

/// Stops a dnsmasq the daemon started: SIGTERM, then SIGKILL after 3 s.
pub async fn stop(inst: &mut Instance) {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(inst.pid as i32);
    if *inst.exited.borrow() {
        return;
    }
    let _ = kill(pid, Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(3), inst.exited.wait_for(|e| *e)).await.is_err() {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(2), inst.exited.wait_for(|e| *e)).await;
    }
}

/// SIGHUP: dnsmasq re-reads its `dhcp-hostsfile` (static leases).
pub fn reload(inst: &Instance) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(inst.pid as i32), nix::sys::signal::Signal::SIGHUP);
}

/// Stops a dnsmasq an earlier daemon left running for these files: the pid in the pid file,
/// if that process is a dnsmasq whose command line names this config file (a recycled pid
/// is left alone).
pub async fn stop_stale(files: &Files) {
    let Ok(text) = std::fs::read_to_string(files.pid()) else { return };
    let Ok(pid) = text.trim().parse::<i32>() else { return };
    if pid <= 1 {
        return;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return };
    let want = format!("--conf-file={}", files.conf().display());
    if !cmdline.split(|b| *b == 0).any(|a| a == want.as_bytes()) {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    let p = nix::unistd::Pid::from_raw(pid);
    log::info!("dnsmasq {pid} (left by an earlier vmnetd for {}): replacing it", files.conf().display());
    let _ = kill(p, Signal::SIGTERM);
    for i in 0..50 {
        if !alive(pid) {
            break;
        }
        if i == 30 {
            let _ = kill(p, Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(files.pid());
}

/// Whether process `pid` still runs: a zombie (exited, not yet reaped by a parent that may
/// never reap it, e.g. after our own SIGKILL re-parented it) counts as gone.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "PID (comm) S ...": the state follows the last ')' (comm may hold anything).
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|st| st != "Z" && st != "X")
}

/// Removes a network's dnsmasq files (the run directory; the lease file with `leases`).
pub fn remove_files(files: &Files, leases: bool) {
    let _ = std::fs::remove_dir_all(&files.run);
    if leases {
        let _ = std::fs::remove_dir_all(&files.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_one_interface_and_serves_what_was_asked() {
        let spec = serde_json::from_str(
            r#"{"name":"lan","bridge":"vmnet0","subnet":"10.10.0.0/24","nat":true,"dhcp":{},"dns":true,"domain":"vm.lan"}"#,
        )
        .unwrap();
        let mut d = super::super::resolve(&spec, "10.10.0.0/24".parse().unwrap(), BridgeKind::Builtin, b"").unwrap();
        d.leases.push(vmnetd_api::net::StaticLease {
            mac: "52:54:00:00:00:07".parse().unwrap(),
            ip: "10.10.0.7".parse().unwrap(),
            name: Some("web".parse().unwrap()),
        });
        let f = Files::new(Path::new("/run/vmnetd"), Path::new("/var/lib/vmnetd"), "lan");
        let c = render_conf(&d, BridgeKind::Builtin, &f);
        for line in [
            "interface=vmn-lan",
            "except-interface=lo",
            "bind-dynamic",
            "no-hosts",
            "local=/vm.lan/",
            "dhcp-range=10.10.0.2,10.10.0.254,255.255.255.0,1h",
            "dhcp-leasefile=/var/lib/vmnetd/networks/lan/leases",
            "dhcp-hostsfile=/run/vmnetd/networks/lan/hosts",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing in\n{c}");
        }
        assert!(!c.contains("port=0") && !c.contains("option:router"));
        assert_eq!(render_hosts(&d), "52:54:00:00:00:07,10.10.0.7,web\n");
        d.spec.dns = false;
        d.spec.nat = false;
        let c = render_conf(&d, BridgeKind::Linux, &f);
        assert!(
            c.contains("interface=vmnet0\n") && c.contains("port=0\n") && c.contains("dhcp-option=option:router\n")
        );
    }
}
