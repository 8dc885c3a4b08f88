//! Helpers for vmnetd's integration tests: private network namespaces, a daemon process
//! guard, and running the CLI and iproute2.
//!
//! Every test that touches the network runs its body through [`in_netns`]: a fresh thread
//! that `unshare(CLONE_NEWNET)`s, so every device it creates (TAPs, veths, bridges) lives in a
//! namespace that vanishes with the thread and the processes it started. [`Daemon`] kills its
//! process on drop, so nothing outlives a failing test.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod guest;
pub mod libvirt;
pub mod netns;
pub mod topo;
pub mod traffic;
pub mod underlay;
pub use netns::in_netns;

/// Path of a workspace binary (`vmnetd`, `vmnetd-libvirt-hook`) built next to the tests.
///
/// `tests/run.sh` builds them first (`cargo build --workspace --bins`). `VMNETD_BIN_DIR`
/// overrides the directory.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("VMNETD_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>
            let dir = exe.parent().expect("exe dir");
            if dir.ends_with("deps") {
                dir.parent().expect("profile dir").to_owned()
            } else {
                dir.to_owned()
            }
        }
    };
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built; run `cargo build --workspace --bins` first (tests/run.sh does)", p.display());
    p
}

/// Runs the libvirt hook binary as libvirt does (`DOMAIN OP SUBOP -`, the domain XML on
/// stdin) against the daemon listening on `socket`, with no host hook config leaking in.
pub fn libvirt_hook(socket: &Path, args: [&str; 3], xml: &str) -> Out {
    use std::io::Write;
    let mut c = Command::new(bin("vmnetd-libvirt-hook"));
    c.args(args)
        .arg("-")
        .env("VMNETD_SOCKET", socket)
        // The host's own hook config must not leak in.
        .env("VMNETD_LIBVIRT_HOOK_CONFIG", "/nonexistent/vmnetd-libvirt-hook.toml")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn hook");
    // The hook may exit without reading (phases with nothing to do): ignore EPIPE.
    let _ = child.stdin.take().expect("piped stdin").write_all(xml.as_bytes());
    let o = child.wait_with_output().expect("hook output");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        what: format!("vmnetd-libvirt-hook {}", args.join(" ")),
    }
}

/// The captured result of a command, with helpers that fail loudly.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Out {
    fn from(what: String, o: Output) -> Out {
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            what,
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout of a command that must have succeeded.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success(), "`{}` failed ({:?}):\n{}{}", self.what, self.code, self.stdout, self.stderr);
        &self.stdout
    }

    /// Stderr of a command that must have failed, checked to be exactly one line.
    #[track_caller]
    pub fn failed_one_line(&self) -> &str {
        assert!(!self.success(), "`{}` should have failed but printed:\n{}", self.what, self.stdout);
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "`{}` should fail with one stderr line, got:\n{}",
            self.what,
            self.stderr
        );
        self.stderr.trim_end()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("`{}` printed invalid JSON ({e}):\n{}", self.what, self.stdout))
    }
}

/// Runs a command to completion and captures its output.
pub fn run<I, S>(prog: impl AsRef<OsStr>, args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(prog.as_ref());
    c.args(args);
    run_cmd(&mut c)
}

pub fn run_cmd(c: &mut Command) -> Out {
    let what = format!("{c:?}");
    let o = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Out::from(what, o)
}

/// `ip ARGS...` in the current namespace; must succeed.
#[track_caller]
pub fn ip(args: &str) -> String {
    run("ip", args.split_whitespace()).ok().to_owned()
}

/// `sh -c SCRIPT`; must succeed.
#[track_caller]
pub fn sh(script: &str) -> String {
    run("sh", ["-c", script]).ok().to_owned()
}

/// Whether a link exists in the current namespace.
pub fn link_exists(name: &str) -> bool {
    run("ip", ["link", "show", "dev", name]).success()
}

/// `ip -d link show dev NAME`, must exist.
#[track_caller]
pub fn link_details(name: &str) -> String {
    ip(&format!("-d link show dev {name}"))
}

pub fn ifindex(name: &str) -> u32 {
    let out = link_details(name);
    out.split(':').next().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("no ifindex in {out}"))
}

/// A port's status (from `vmnetd --json port list`) as the CLI shows it: `up`,
/// `up (1/1 queue pairs)`, `waiting for frontend`, `down: ...`.
pub fn state_of(port: &serde_json::Value) -> String {
    serde_json::from_value::<vmnetd::api::PortStatus>(port["status"].clone())
        .unwrap_or_else(|e| panic!("no port status in {port}: {e}"))
        .to_string()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child for at most `timeout`; kills it and panics if it takes longer, so a test
/// never hangs.
#[track_caller]
pub fn wait_child(c: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return st;
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            panic!("child {} did not finish within {timeout:?}", c.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `vmnetd daemon` process with private state and run dirs under `root`.
pub struct Daemon {
    child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
    /// Extra environment of the daemon process.
    pub env: Vec<(String, String)>,
    /// The `vmnetd` binary the daemon runs (benchmarks compare builds).
    pub binary: PathBuf,
    /// A command the daemon runs under (`valgrind --tool=callgrind ...`); the CLI does not.
    pub wrapper: Vec<String>,
}

impl Daemon {
    pub fn state_dir(root: &Path) -> PathBuf {
        root.join("state")
    }

    /// Starts a daemon and waits until it answers `status`.
    pub fn start(root: &Path) -> Daemon {
        Daemon::start_with(root, &[])
    }

    /// Starts a daemon with `extra` arguments. Unless they name a `--config`, it gets an
    /// empty one, so the host's /etc/vmnetd/vmnetd.toml never leaks into a test.
    pub fn start_with(root: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_env(root, extra, &[])
    }

    /// Starts the daemon process again (after [`Daemon::kill`] or [`Daemon::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("daemon log");
        let mut cmd = match self.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = cmd
            .arg("daemon")
            .arg("--state-dir")
            .arg(self.root.join("state"))
            .arg("--run-dir")
            .arg(self.root.join("run"))
            .args(&self.extra)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("VMNETD_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn vmnetd daemon");
        self.child = Some(child);
        if let Err(e) = self.wait_ready() {
            panic!("{e:#}\n--- daemon log ---\n{}", self.log_text());
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        // A daemon under valgrind starts some 50 times slower.
        let end = Instant::now() + Duration::from_secs(if self.wrapper.is_empty() { 30 } else { 120 });
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("vmnetd daemon exited during start-up: {st}");
            }
            if let Ok(mut c) = vmnetd::client::Client::connect(&self.socket) {
                if c.call::<serde_json::Value>(vmnetd::api::Op::Status).is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                bail!("vmnetd daemon did not answer on {}", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a daemon with `extra` arguments (see [`Daemon::start_with`]) and `env` in its
    /// environment.
    pub fn start_env(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_binary(root, &bin("vmnetd"), extra, env)
    }

    /// Starts a daemon from another `vmnetd` binary (a benchmark's "before" build).
    pub fn start_binary(root: &Path, binary: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::launch(root, binary, &[], extra, env)
    }

    /// Starts a daemon from `binary` under `wrapper` (a profiler such as
    /// `valgrind --tool=callgrind`); the CLI still runs `binary` directly.
    pub fn start_wrapped(root: &Path, binary: &Path, wrapper: &[String], extra: &[&str]) -> Daemon {
        Daemon::launch(root, binary, wrapper, extra, &[])
    }

    fn launch(root: &Path, binary: &Path, wrapper: &[String], extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.iter().any(|a| a == "--config") {
            let cfg = root.join("empty.toml");
            std::fs::write(&cfg, "# test: no declarations\n").expect("write test config");
            extra.push("--config".into());
            extra.push(cfg.display().to_string());
        }
        let mut d = Daemon {
            child: None,
            root: root.to_owned(),
            socket: root.join("run").join("vmnetd.sock"),
            log: root.join("daemon.log"),
            extra,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            binary: binary.to_owned(),
            wrapper: wrapper.to_vec(),
        };
        d.restart();
        d
    }

    /// Waits for the daemon process to exit on its own (at most `timeout`); its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's own resident memory (`RssAnon`: its heap and stacks, not the guests'
    /// shared memory it maps), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("daemon running");
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors of the daemon process.
    pub fn fd_count(&self) -> usize {
        let pid = self.pid().expect("daemon running");
        std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!("daemon did not exit within 20 s of SIGTERM\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `vmnetd` CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Out {
        let mut c = Command::new(&self.binary);
        c.args(args).env("VMNETD_SOCKET", &self.socket);
        run_cmd(&mut c)
    }

    /// Runs the `vmnetd` CLI against this daemon as `uid:gid` (a non-root caller).
    pub fn cli_as(&self, uid: u32, gid: u32, args: &[&str]) -> Out {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(&self.binary);
        c.args(args).env("VMNETD_SOCKET", &self.socket).uid(uid).gid(gid);
        run_cmd(&mut c)
    }

    pub fn client(&self) -> vmnetd::client::Client {
        vmnetd::client::Client::connect(&self.socket).expect("connect to daemon")
    }

    /// Follows the log until a line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            std::fs::File::open(&self.log)
                .map(|f| BufReader::new(f).lines().map_while(|l| l.ok()).any(|l| l.contains(needle)))
                .unwrap_or(false)
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory for a test's daemon state, readable by other users (the QEMU and
/// owner tests run processes as `nobody`).
pub fn test_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("vmnetd-test-").tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// Fails with a clear message when not root: these tests need CAP_NET_ADMIN and CAP_SYS_ADMIN.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this test needs root (network namespaces, TAP devices); run tests/run.sh as root");
    }
    Ok(())
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).with_context(|| path.display().to_string()).unwrap()
}

/// CPU time (user + system, in clock ticks) process `pid` has used so far.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    let after = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    let field =
        |i: usize| -> u64 { f.get(i).and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("/proc/{pid}/stat: {s}")) };
    field(11) + field(12)
}

/// Time the hypervisor ran something else while `cpus` wanted to run ("steal" in
/// `/proc/stat`, in clock ticks, summed over those CPUs). On a VM this marks the minutes in
/// which the host, not the software under test, decided a benchmark's numbers.
pub fn steal_ticks(cpus: &[usize]) -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    s.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            // user nice system idle iowait irq softirq steal
            cpus.contains(&cpu).then(|| f.nth(7)?.parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// Connects the in-process virtio-net driver to a vhost-user socket, retrying for up to
/// `timeout` while the listener comes up.
pub fn connect_vhost(
    path: &Path,
    cfg: &vmnetd_vhost::driver::Config,
    timeout: Duration,
) -> Result<vmnetd_vhost::driver::Driver> {
    let end = Instant::now() + timeout;
    loop {
        match vmnetd_vhost::driver::Driver::connect(path, cfg) {
            Ok(d) => return Ok(d),
            Err(e) if Instant::now() > end => bail!("cannot connect to {}: {e:?}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
