//! `vmnetd daemon`: start-up, the control socket, signals, shutdown.
//!
//! Start-up order: read the config, take the run-dir lock (one daemon per run dir), load the
//! state, re-apply every declaration, then open the control socket and tell systemd we are
//! ready. SIGTERM/SIGINT close the socket and exit, leaving persistent TAPs and kernel
//! bridges in place for the next start to adopt.

pub mod apply;
pub mod authz;
pub mod bridges;
pub mod control;
pub mod core;
pub mod metrics;
pub mod networks;
pub mod policy;
pub mod reconcile;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use crate::config::Config;
use crate::netlink::Netlink;
use crate::state::Store;

pub const SOCKET_NAME: &str = "vmnetd.sock";
const LOCK_NAME: &str = "vmnetd.lock";
const DEFAULT_STATE_DIR: &str = "/var/lib/vmnetd";
const DEFAULT_RUN_DIR: &str = "/run/vmnetd";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    State(#[from] crate::state::Error),
    #[error("Cannot create run directory {0}")]
    RunDir(PathBuf, #[source] io::Error),
    #[error("Another vmnetd daemon is running with run directory {0}")]
    AlreadyRunning(PathBuf),
    #[error("Cannot lock {0}")]
    Lock(PathBuf, #[source] io::Error),
    #[error("Cannot listen on {0}")]
    Listen(PathBuf, #[source] io::Error),
    #[error("Cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Netlink(#[from] crate::netlink::Error),
    #[error("Cannot start the datapath thread")]
    Datapath(#[source] io::Error),
}

/// Command-line overrides for the daemon (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
}

/// Where the daemon keeps things, after applying the precedence rules.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
}

impl Paths {
    pub fn resolve(opts: &Options, config: &Config) -> Paths {
        let d = &config.daemon;
        let state_dir =
            opts.state_dir.clone().or_else(|| d.state_dir.clone()).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let run_dir = opts.run_dir.clone().or_else(|| d.run_dir.clone()).unwrap_or_else(|| DEFAULT_RUN_DIR.into());
        let socket = opts.socket.clone().or_else(|| d.socket.clone()).unwrap_or_else(|| run_dir.join(SOCKET_NAME));
        Paths { state_dir, run_dir, socket }
    }
}

/// Fail-stop: a panic on the datapath thread or in the control plane ends the whole process, so
/// that the service manager restarts it, instead of leaving a daemon that answers on its
/// socket while no frame moves. The message goes to the log first; then `abort` (exit by
/// SIGABRT, a core dump where enabled). vhost-user guests in client mode, and TAPs, come
/// back with the restarted daemon as after any crash.
pub fn fail_stop() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        // A vhost-user connection thread (parsing one frontend's messages) unwinds to its
        // handler, which resets that device only; nothing it holds is shared with the
        // datapath but the device itself.
        if thread.starts_with("vhu-") {
            log::error!("panic on thread {thread}: {info}; resetting that port's connection");
            default(info);
            return;
        }
        log::error!("panic on thread {thread}: {info}; exiting so that the service manager restarts vmnetd");
        default(info);
        std::process::abort();
    }));
}

pub fn run(opts: Options) -> Result<(), Error> {
    // Sockets and files are private unless we open them up on purpose.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let loaded = Config::load(opts.config.as_deref())?;
    let paths = Paths::resolve(&opts, &loaded.config);
    let explicit_config = opts.config.clone();

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&paths.run_dir)
        .map_err(|e| Error::RunDir(paths.run_dir.clone(), e))?;
    // QEMU, running as the VM's user, must reach its vhost-user socket in here.
    let _ = fs::set_permissions(&paths.run_dir, fs::Permissions::from_mode(0o755));
    let _lock = take_lock(&paths.run_dir)?;

    let store = Store::open(&paths.state_dir)?;
    let state = store.load()?;
    ensure_tun_node_usable();
    raise_fd_limit();
    // Frontends may shrink their memory files under us: survive it (see vmnetd_vhost::guard).
    if let Err(e) = vmnetd_vhost::guard::install() {
        log::warn!("{e}: a frontend that truncates its guest memory can crash vmnetd");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vmnetd-ctl")
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let dp_cfg = crate::datapath::Settings {
        busy_poll: std::time::Duration::from_micros(u64::from(loaded.config.datapath.busy_poll_us)),
        cpu: loaded.config.datapath.cpu,
    };
    // The reconciler hears of failed ports from the datapath and of links from rtnetlink.
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let down_tx = events_tx.clone();
    let port_down: crate::datapath::PortDownHook = Box::new(move |b: &str, p: &str| {
        let _ = down_tx.send(reconcile::Event::PortDown(b.to_owned(), p.to_owned()));
    });
    let dp =
        std::sync::Arc::new(crate::datapath::DatapathHandle::spawn(dp_cfg, Some(port_down)).map_err(Error::Datapath)?);
    let dp2 = dp.clone();
    let res = rt.block_on(async move {
        let nl = Netlink::connect()?;
        if let Err(e) = reconcile::watch_links(events_tx) {
            log::warn!("cannot listen for link notifications ({e}); ports are re-attached by the periodic sweep only");
        }
        let mut core = core::Core {
            nl,
            dp: dp2,
            config_bridges: Vec::new(),
            config_ports: Vec::new(),
            store,
            state,
            config_taps: Vec::new(),
            config_origin: loaded.origin.clone(),
            paths: paths.clone(),
            started: Instant::now(),
            test_hooks: std::env::var_os("VMNETD_TEST_HOOKS").is_some_and(|v| v == "1"),
            limits: core::UserLimits { max_ports_per_user: loaded.config.control.max_ports_per_user as usize },
            nets: networks::NetRuntime::new(loaded.config.tools.clone(), &paths.state_dir),
            policy: policy::PolicyConfig::from_config(&loaded.config),
            config: loaded.config.clone(),
            startup_config: explicit_config.as_deref().map_or_else(
                || crate::config::DEFAULT_CONFIG_PATH.to_owned(),
                |p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()).display().to_string(),
            ),
        };
        let (net_tx, net_rx) = tokio::sync::mpsc::unbounded_channel();
        core.nets.events = Some(net_tx.clone());
        core.restore(&loaded.config).await;
        core.restore_bridges(&loaded.config).await;
        core.restore_networks(&loaded.config).await;
        let listener = bind(&paths.socket, loaded.config.daemon.socket_group.as_deref())?;
        log::info!(
            "vmnetd {} ready: socket {}, state {}, config {}",
            env!("CARGO_PKG_VERSION"),
            paths.socket.display(),
            paths.state_dir.display(),
            loaded.origin
        );
        // SIGHUP is handled from before READY: a reload right after start must not kill us.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        notify_ready();
        let core = Arc::new(tokio::sync::Mutex::new(core));
        let limits = control::Limits::from(&loaded.config.control);
        if let Some(at) = &loaded.config.metrics.listen {
            // Metrics are optional: a listener that cannot start is logged, not fatal.
            if let Err(e) = metrics::spawn(core.clone(), at, loaded.config.daemon.socket_group.as_deref()).await {
                log::error!("metrics: {e}");
            }
        }
        let server = tokio::spawn(control::serve(listener, core.clone(), limits));
        let reconciler = tokio::spawn(reconcile::run(core.clone(), events_rx));
        let started_from_file = explicit_config.is_some() || loaded.origin != "embedded default";
        let reloader = tokio::spawn(reload_on_sighup(core.clone(), hup, explicit_config, started_from_file));
        networks::spawn_supervisor(core.clone(), net_tx, net_rx);
        wait_for_shutdown().await;
        server.abort();
        reconciler.abort();
        // Wait for a request (or a reload) in progress to finish its change and persist it.
        let _guard = core.lock().await;
        reloader.abort();
        let _ = fs::remove_file(&paths.socket);
        Ok(())
    });
    // The core (and its handle clone) is gone with the runtime; stop the datapath thread.
    drop(rt);
    if let Ok(dp) = std::sync::Arc::try_unwrap(dp) {
        dp.shutdown();
    }
    log::info!("vmnetd stopped; persistent devices left in place");
    res
}

/// Every port, connection and capture holds descriptors: take the hard limit (systemd's
/// default soft limit of 1024 is low for a few hundred ports).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// TAP owners open `/dev/net/tun` themselves (the kernel then checks TUNSETOWNER/GROUP), so
/// the node must be world read-write, as udev's default rules make it. Systems without udev
/// (minimal VMs, containers) may leave it 0600; fix that, and say so.
fn ensure_tun_node_usable() {
    const TUN: &str = "/dev/net/tun";
    match fs::metadata(TUN) {
        Ok(m) if m.permissions().mode() & 0o666 != 0o666 => {
            let old = m.permissions().mode() & 0o7777;
            match fs::set_permissions(TUN, fs::Permissions::from_mode(0o666)) {
                Ok(()) => log::warn!(
                    "{TUN} was mode {old:04o}; set it to 0666 as udev does, so TAP owners can open their TAPs"
                ),
                Err(e) => log::warn!("{TUN} is mode {old:04o} and cannot be changed ({e}): only root can open TAPs"),
            }
        }
        Ok(_) => {}
        Err(e) => {
            log::error!("{TUN}: {e}: TAP devices cannot be created (is the tun module loaded?)")
        }
    }
}

fn take_lock(run_dir: &Path) -> Result<Flock<fs::File>, Error> {
    let path = run_dir.join(LOCK_NAME);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Lock(path.clone(), e))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            Error::AlreadyRunning(run_dir.to_owned())
        } else {
            Error::Lock(path, errno.into())
        }
    })
}

fn bind(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener, Error> {
    // We hold the run-dir lock, so a socket file here is a stale one from a killed daemon.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Listen(path.to_owned(), e)),
    }
    if let Some(parent) = path.parent() {
        let _ = fs::DirBuilder::new().recursive(true).mode(0o755).create(parent);
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| Error::Listen(path.to_owned(), e))?;
    if let Some(g) = group.and_then(|g| crate::users::resolve_group(g).ok()) {
        if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g.id))) {
            log::warn!("cannot give {} to group {g}: {e}", path.display());
        }
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(|e| Error::Listen(path.to_owned(), e))?;
    Ok(listener)
}

/// `sd_notify(READY=1)` when started by systemd with `Type=notify`.
fn notify_ready() {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let send = || -> io::Result<()> {
        use std::os::linux::net::SocketAddrExt;
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = addr.as_encoded_bytes();
        let sa = match bytes.strip_prefix(b"@") {
            Some(abs) => std::os::unix::net::SocketAddr::from_abstract_name(abs)?,
            None => std::os::unix::net::SocketAddr::from_pathname(Path::new(&addr))?,
        };
        sock.send_to_addr(b"READY=1\n", &sa)?;
        Ok(())
    };
    if let Err(e) = send() {
        log::warn!("sd_notify: {e}");
    }
}

/// SIGHUP (`systemctl reload vmnetd`): the config file is read again and applied as by
/// `vmnetd apply` (the file given with `--config`, else /etc/vmnetd/vmnetd.toml if it exists,
/// else the embedded default). A file that does not parse, or an apply that fails (rolled
/// back), changes nothing and is logged.
async fn reload_on_sighup(
    core: Arc<tokio::sync::Mutex<core::Core>>,
    hup: io::Result<tokio::signal::unix::Signal>,
    explicit: Option<PathBuf>,
    started_from_file: bool,
) {
    let Ok(mut hup) = hup else {
        log::warn!("cannot handle SIGHUP: reload with `vmnetd apply FILE`");
        return;
    };
    while hup.recv().await.is_some() {
        let path =
            explicit.clone().or_else(|| Some(PathBuf::from(crate::config::DEFAULT_CONFIG_PATH)).filter(|p| p.exists()));
        let (text, origin) = match &path {
            Some(p) => match fs::read_to_string(p) {
                Ok(t) => (t, p.display().to_string()),
                Err(e) => {
                    log::error!("SIGHUP: cannot read {}: {e}; nothing changed", p.display());
                    continue;
                }
            },
            // The file the daemon started from is gone: applying the embedded default would
            // take down everything it declared. Nothing changes; say so.
            None if started_from_file => {
                log::error!(
                    "SIGHUP: {} is gone; nothing changed (restore it, or `vmnetd apply` another file)",
                    crate::config::DEFAULT_CONFIG_PATH
                );
                continue;
            }
            None => (crate::config::EMBEDDED_DEFAULT.to_owned(), "embedded default".to_owned()),
        };
        log::info!("SIGHUP: applying {origin}");
        let req = crate::api::ApplyReq { text, origin: origin.clone(), dry_run: false };
        match core.lock().await.apply(req).await {
            Ok(r) if r.plan.is_empty() => log::info!("SIGHUP: {origin}: no changes"),
            Ok(r) => log::info!("SIGHUP: {origin}: {} change(s) applied", r.plan.len()),
            Err(e) => log::error!("SIGHUP: {origin}: {}", e.message),
        }
    }
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}

/// The daemon's log: `tracing` events (and the `log` records of libraries, bridged), filtered
/// by `RUST_LOG` (default `info`). Under systemd, when stderr is the journal's stream
/// (`JOURNAL_STREAM` names it), events go to journald natively, their fields (`bridge`,
/// `port`, `vm_name`, ...) as journal fields (`journalctl -u vmnetd BRIDGE=vmnet0`);
/// otherwise plain lines to stderr.
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if stderr_is_journal() {
        if let Ok(j) = tracing_journald::layer() {
            let j = j.with_syslog_identifier("vmnetd".to_owned());
            tracing_subscriber::registry().with(filter()).with(j).init();
            return;
        }
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false);
    tracing_subscriber::registry().with(filter()).with(fmt).init();
}

/// systemd's `JOURNAL_STREAM=DEV:INODE` names the stream it connected; it is inherited, so
/// it counts only if stderr is still that stream.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(meta) = fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
