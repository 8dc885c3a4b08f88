//! A real libvirtd for end-to-end tests, and guards that undo everything a test did to it.
//!
//! Debian 12's libvirt 9.0 runs here without systemd (DESIGN §6): `virtlogd -d`, then
//! `libvirtd -d`. [`Libvirtd::ensure`] starts what is not running and stops on drop only
//! what it started. [`HookInstall`] installs the hook with `vmnetd-libvirt-hook install`
//! pointed at a test daemon and puts back whatever hook and config were there before.
//! [`Domain`] destroys and undefines its domain on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{bin, run, run_cmd, wait_until, Out};

pub const HOOK_PATH: &str = "/etc/libvirt/hooks/qemu.d/vmnetd";
pub const HOOK_CONFIG: &str = "/etc/vmnetd/libvirt-hook.toml";

/// `virsh -c qemu:///system ARGS`.
pub fn virsh(args: &[&str]) -> Out {
    let mut c = Command::new("virsh");
    c.args(["-c", "qemu:///system"]).args(args);
    run_cmd(&mut c)
}

fn pids(comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm) {
            out.push(pid);
        }
    }
    out
}

/// libvirtd and virtlogd, running for the test's lifetime.
pub struct Libvirtd {
    started: Vec<&'static str>,
}

impl Libvirtd {
    /// Starts virtlogd and libvirtd unless running, and waits until libvirtd answers.
    pub fn ensure() -> Libvirtd {
        let mut started = Vec::new();
        for d in ["virtlogd", "libvirtd"] {
            if pids(d).is_empty() {
                // A libvirtd started here gets its own network namespace: a network it
                // autostarts (the `default` virbr0 and its dnsmasq) stays off the host.
                let o = if d == "libvirtd" { run("unshare", ["--net", "--", d, "-d"]) } else { run(d, ["-d"]) };
                assert!(o.success(), "cannot start {d} (package libvirt-daemon-system): {o:?}");
                started.push(d);
            }
        }
        let ok = wait_until(Duration::from_secs(30), || virsh(&["version"]).success());
        assert!(ok, "libvirtd does not answer on qemu:///system: {:?}", virsh(&["version"]));
        Libvirtd { started }
    }

    /// SIGHUP: libvirtd reloads its hooks.
    pub fn reload() {
        for pid in pids("libvirtd") {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP);
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if self.started.contains(&"libvirtd") {
            // Networks it started (their dnsmasq outlives libvirtd otherwise).
            let active = virsh(&["net-list", "--name"]).stdout;
            for net in active.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = virsh(&["net-destroy", net]);
            }
        }
        for d in self.started.iter().rev() {
            for pid in pids(d) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            wait_until(Duration::from_secs(10), || pids(d).is_empty());
        }
    }
}

/// The hook installed for a test daemon; the host's previous hook and config come back on
/// drop.
pub struct HookInstall {
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
    /// Directories `install` may create; removed again if it did and they are empty.
    new_dirs: Vec<PathBuf>,
}

impl HookInstall {
    pub fn install(socket: &Path) -> HookInstall {
        let saved = [HOOK_PATH, HOOK_CONFIG].iter().map(|p| (PathBuf::from(p), std::fs::read(p).ok())).collect();
        let new_dirs = ["/etc/libvirt/hooks/qemu.d", "/etc/libvirt/hooks", "/etc/vmnetd"]
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect();
        let guard = HookInstall { saved, new_dirs };
        let o = run(bin("vmnetd-libvirt-hook"), ["install", "--socket", socket.to_str().unwrap()]);
        let out = o.ok();
        assert!(out.contains("installed /etc/libvirt/hooks/qemu.d/vmnetd"), "{out}");
        assert!(out.contains("reloaded its hooks"), "libvirtd was not signalled: {out}");
        guard
    }
}

impl Drop for HookInstall {
    fn drop(&mut self) {
        for (p, data) in &self.saved {
            match data {
                Some(d) => {
                    let _ = std::fs::write(p, d);
                }
                None => {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        for d in &self.new_dirs {
            let _ = std::fs::remove_dir(d);
        }
        Libvirtd::reload();
    }
}

/// A libvirt domain, destroyed and undefined on drop.
pub struct Domain {
    pub name: String,
}

impl Domain {
    /// `virsh define FILE` (removing a leftover of the same name first).
    pub fn define(name: &str, xml_file: &Path) -> Domain {
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name]);
        virsh(&["define", xml_file.to_str().unwrap()]).ok();
        Domain { name: name.to_owned() }
    }

    pub fn start(&self) -> Out {
        virsh(&["start", &self.name])
    }

    pub fn state(&self) -> String {
        virsh(&["domstate", &self.name]).stdout.trim().to_owned()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}
