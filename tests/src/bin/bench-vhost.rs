//! Benchmark driver (run by `bench/vhost.sh`): frames per second between two vhost-user ports
//! of (a) vmnetd's built-in bridge, (b) OVS-DPDK (netdev bridge, two `dpdkvhostuserclient` ports on
//! access VLAN 10, NORMAL), (c) `dpdk-testpmd` io-forwarding between two vhost PMD ports (the
//! plumbing limit) — in one run, on the same generators and sinks.
//!
//! Two kinds of guest drive each backend, both pinned to CPU 0 (`--guest`):
//! - `driver`: this process, an in-process virtio-net driver (`vmnetd_vhost::driver`, memfd
//!   guest memory) on each socket. Transmit buffers are written once; in the loop only ring
//!   indices move, so the generator costs a few ns per frame.
//! - `dpdk`, `dpdk-noorder`: `vu-gen` (`bench/dpdk/vu-gen.c`, built into `target/vu-gen` by
//!   `bench/vhost.sh`), DPDK's own `net_virtio_user` PMD as generator and sink, with its
//!   default devargs (`in_order` on) or `in_order=0`: fresh refcnt-1 mbufs per burst, so
//!   the PMD pushes the virtio-net header into the headroom, as a DPDK guest application
//!   sends. It reports how often its TX ring was full (the backend was the limit).
//!
//! Each backend gets CPU 1 for its datapath. The destination MAC is learned first, so
//! nothing floods. Frame sizes count the FCS (RFC 2544): a "64-byte" frame is 60 bytes in
//! the ring. Every number is the median of several runs.
//!
//! `bench-vhost [--runs N] [--secs S] [--sizes 64,512,1518] [--backends vmnetd,ovs,testpmd]
//!  [--guest driver,dpdk,dpdk-noorder] [--vu-gen PATH] [--busy-poll-us US] [--no-mrg-rxbuf]
//!  [--guest-hugepages] [--runs-per-start N] [--build LABEL=PATH] [--placement near|any]
//!  [--placement-wait SECS]` (`--no-mrg-rxbuf` and
//!  `--guest-hugepages`: driver guest only; `--build` names another vmnetd binary, measured as backend
//!  `vmnetd-LABEL` in `--backends`)
//! `bench-vhost --gso` : 64 KiB TSO frames guest to guest (vmnetd and OVS-DPDK with
//! userspace TSO), Gbit/s.
//! `bench-vhost --callgrind [--backends vmnetd,vmnetd-LABEL --build LABEL=PATH]
//!  [--guest driver,dpdk,dpdk-noorder]` : instructions per forwarded frame in the datapath
//! thread, under callgrind.
//! `bench-vhost --probe SECS` : the round trip of a cache line between CPUs 0 and 1, four
//! times a second (where the hypervisor put the two vCPUs; see `Placement`).
//! `bench-vhost --idle` : an idle daemon with 100 vhost-user ports (10 of them connected,
//! after a burst of traffic): CPU and RSS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmnetd_tests::{bin, connect_vhost, cpu_ticks, steal_ticks, test_dir, Daemon};
use vmnetd_vhost::driver::{Config, Driver};
use vmnetd_vhost::virtio_net::{features, VnetHdr};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn pin_self(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin to CPU");
}

/// Pins every thread of `pid` to `cpu`.
fn pin_process(pid: u32, cpu: usize) {
    let o = Command::new("taskset").args(["-a", "-c", "-p", &cpu.to_string(), &pid.to_string()]).output().unwrap();
    assert!(o.status.success(), "taskset: {}", String::from_utf8_lossy(&o.stderr));
}

/// An Ethernet/IPv4/UDP frame of `len` bytes (no FCS) from `src` to `dst`.
fn frame(src: [u8; 6], dst: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(60)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (f.len() - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let mut sum = ip.chunks(2).fold(0u32, |s, c| s + u32::from(u16::from_be_bytes([c[0], c[1]])));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&1234u16.to_be_bytes());
    f[36..38].copy_from_slice(&5678u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f
}

/// A 64 KiB TCP/IPv4 super-frame with a TSO virtio-net header.
fn tso_frame() -> (VnetHdr, Vec<u8>) {
    let payload = 65000;
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    f[..6].copy_from_slice(&MAC_B);
    f[6..12].copy_from_slice(&MAC_A);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (20 + 20 + payload) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x10;
    let v = VnetHdr {
        flags: vmnetd_vhost::virtio_net::F_NEEDS_CSUM,
        gso_type: vmnetd_vhost::virtio_net::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    (v, f)
}

/// One backend with two vhost-user sockets.
trait Backend {
    fn name(&self) -> &'static str;
    /// Connects the generator (port A) and the sink (port B).
    fn connect(&mut self, cfg: &Config) -> Result<(Driver, Driver)>;
    /// Whether the backend learns MACs (io-forwarding does not).
    fn learns(&self) -> bool {
        true
    }
    fn pid(&self) -> Option<u32>;
    /// What the backend says about its ports, shown when a run moved nothing.
    fn diagnose(&self) -> String {
        String::new()
    }
    /// The vhost-user socket paths of ports A and B.
    fn sockets(&self) -> (PathBuf, PathBuf);
    /// Whether the guest must listen on the sockets (the backend is a vhost-user client).
    fn guest_listens(&self) -> bool {
        false
    }
    /// What the backend negotiated with the guest, if it tells (one line per port).
    fn negotiated(&self) -> String {
        String::new()
    }
}

fn connect_retry(path: &Path, cfg: &Config) -> Result<Driver> {
    connect_vhost(path, cfg, Duration::from_secs(20))
}

struct Vmnetd {
    daemon: Daemon,
    name: &'static str,
    _dir: tempfile::TempDir,
    /// `vmnetd-scraped`: a client fetching `/metrics` 10 times a second while it runs.
    _scraper: Option<Scraper>,
    /// `vmnetd-logging`: the guests hand over dirty logs and ack LOG_ALL as a migrating QEMU
    /// does, so every frame written and every used ring update is also logged (the logs).
    logging: Option<Vec<std::fs::File>>,
}

/// Fetches `GET /metrics` from a Unix socket every 100 ms until dropped, as a Prometheus
/// server scraping far more often than usual would (counts its scrapes).
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Scraper {
    fn start(path: PathBuf) -> Scraper {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Ok(mut c) = std::os::unix::net::UnixStream::connect(&path) {
                    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                    let mut body = Vec::new();
                    if c.read_to_end(&mut body).is_ok() && body.starts_with(b"HTTP/1.1 200") {
                        n += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
            n
        });
        Scraper { stop, thread: Some(thread) }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(n) = self.thread.take().and_then(|t| t.join().ok()) {
            eprintln!("vmnetd-scraped: {n} scrapes of /metrics");
        }
    }
}

impl Vmnetd {
    /// vmnetd from this build, or (`build`: label and binary) another one, compared in the
    /// same run.
    fn start(busy_poll_us: Option<u32>, build: Option<(&str, &Path)>) -> Result<Vmnetd> {
        Vmnetd::start_under(busy_poll_us, build, &[])
    }

    /// As [`Vmnetd::start`], the daemon running under `wrapper` (a profiler).
    fn start_under(busy_poll_us: Option<u32>, build: Option<(&str, &Path)>, wrapper: &[String]) -> Result<Vmnetd> {
        Vmnetd::start_config(busy_poll_us, build, wrapper, "")
    }

    /// `vmnetd-scraped`: this build serving `/metrics` on a Unix socket, scraped 10 times a
    /// second for as long as it runs.
    fn scraped(busy_poll_us: Option<u32>) -> Result<Vmnetd> {
        let sock = std::env::temp_dir().join(format!("vmnetd-bench-metrics-{}.sock", std::process::id()));
        let extra = format!("[metrics]\nlisten = \"unix:{}\"\n", sock.display());
        let mut v = Vmnetd::start_config(busy_poll_us, None, &[], &extra)?;
        v.name = "vmnetd-scraped";
        v._scraper = Some(Scraper::start(sock));
        Ok(v)
    }

    fn start_config(
        busy_poll_us: Option<u32>,
        build: Option<(&str, &Path)>,
        wrapper: &[String],
        extra: &str,
    ) -> Result<Vmnetd> {
        let dir = test_dir();
        let cfg = dir.path().join("vmnetd.toml");
        match busy_poll_us {
            Some(us) => std::fs::write(&cfg, format!("{extra}[datapath]\nbusy_poll_us = {us}\n"))?,
            None => std::fs::write(&cfg, format!("# defaults\n{extra}"))?,
        }
        let binary = build.map_or_else(|| bin("vmnetd"), |(_, p)| p.to_owned());
        let daemon = Daemon::start_wrapped(dir.path(), &binary, wrapper, &["--config", cfg.to_str().unwrap()]);
        let name: &'static str = match build {
            Some((label, _)) => Box::leak(format!("vmnetd-{label}").into_boxed_str()),
            None => "vmnetd",
        };
        pin_process(daemon.pid().unwrap(), 1);
        daemon.cli(&["bridge", "add", "br0"]).ok();
        for p in ["a", "b"] {
            daemon.cli(&["port", "add", "br0", p, "--vhost-user", &format!("{p}.sock"), "--vlan", "10"]).ok();
        }
        Ok(Vmnetd { daemon, name, _dir: dir, _scraper: None, logging: None })
    }
}

/// `vmnetd-rulesN`: vmnetd with N flow rules installed, one of them matching.
fn rules_of(name: &str) -> Option<usize> {
    name.strip_prefix("vmnetd-rules")?.parse().ok()
}

/// This build in another setting (flow rules, a metrics scraper), reported against
/// `vmnetd` of the same run.
fn variant(name: &str) -> bool {
    rules_of(name).is_some() || name == "vmnetd-scraped" || name == "vmnetd-logging"
}

/// N rules of which exactly one matches the benchmark's frames (the lowest priority,
/// `in_port=a actions=normal`), the others in five shapes (five masks, all probed before the
/// match): IPv4 destinations, TCP ports, source MACs, ARP targets, and traffic from `b`.
fn bench_rules(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n.saturating_sub(1) {
        let (hi, lo) = (i / 250 % 250, i % 250 + 1);
        let r = match i % 5 {
            0 => format!("priority=100,ip,nw_dst=10.99.{hi}.{lo} actions=drop"),
            1 => format!("priority=100,tcp,tp_dst={} actions=drop", 10000 + i),
            2 => format!("priority=100,dl_src=02:99:00:00:{:02x}:{:02x} actions=drop", hi, lo),
            3 => format!("priority=100,arp,arp_tpa=10.98.{hi}.{lo} actions=drop"),
            _ => format!("priority=100,in_port=b,ip,nw_src=10.97.{hi}.{lo} actions=drop"),
        };
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str("priority=1,in_port=a actions=normal\n");
    out
}

impl Vmnetd {
    /// Installs [`bench_rules`] and takes the name `vmnetd-rulesN`.
    fn with_rules(mut self, n: usize) -> Result<Vmnetd> {
        let file = self._dir.path().join("bench.rules");
        std::fs::write(&file, bench_rules(n))?;
        self.daemon.cli(&["flow", "replace", "br0", file.to_str().unwrap()]).ok();
        self.name = Box::leak(format!("vmnetd-rules{n}").into_boxed_str());
        Ok(self)
    }
}

impl Backend for Vmnetd {
    fn name(&self) -> &'static str {
        self.name
    }
    fn connect(&mut self, cfg: &Config) -> Result<(Driver, Driver)> {
        let run = self.daemon.root.join("run");
        let (mut a, mut b) = (connect_retry(&run.join("a.sock"), cfg)?, connect_retry(&run.join("b.sock"), cfg)?);
        if let Some(logs) = &mut self.logging {
            logs.clear();
            for d in [&mut a, &mut b] {
                let m = nix::sys::memfd::memfd_create("bench-log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
                let f = std::fs::File::from(m);
                f.set_len(d.log_bytes())?;
                d.start_logging(&f).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                logs.push(f);
            }
        }
        Ok((a, b))
    }
    fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }
    fn sockets(&self) -> (PathBuf, PathBuf) {
        let run = self.daemon.root.join("run");
        (run.join("a.sock"), run.join("b.sock"))
    }
    fn negotiated(&self) -> String {
        let out = self.daemon.cli(&["--json", "port", "list", "br0"]);
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
            return format!("vmnetd port list: {}{}", out.stdout, out.stderr);
        };
        let mut lines = Vec::new();
        for p in list.as_array().into_iter().flatten() {
            let feats: Vec<&str> =
                p["vhost"]["features"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
            lines.push(format!(
                "vmnetd port {}: {}; acked {}",
                p["name"].as_str().unwrap_or("?"),
                vmnetd_tests::state_of(p),
                feats.join(",")
            ));
        }
        lines.join("\n")
    }
    fn diagnose(&self) -> String {
        let log = self.daemon.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        format!(
            "{}\n{}\n(daemon log: {})",
            self.negotiated(),
            lines[lines.len().saturating_sub(10)..].join("\n"),
            self.daemon.log.display()
        )
    }
}

/// A private OVS-DPDK: its own database, run and log dirs and DPDK file prefix.
struct Ovs {
    dir: tempfile::TempDir,
    /// The generator's and the sink's sockets: OVS's `dpdkvhostuserclient` ports connect to
    /// them (OVS 3.1 offers guest-to-host TSO only on client ports).
    listeners: Vec<std::os::unix::net::UnixListener>,
    db_sock: PathBuf,
    vswitchd: Option<u32>,
    ovsdb: Option<u32>,
}

impl Ovs {
    fn vsctl(&self, args: &[&str]) -> Result<String> {
        let o = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.db_sock.display()))
            .args(["--timeout=30"])
            .args(args)
            .output()?;
        if !o.status.success() {
            bail!("ovs-vsctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `listen`: bind the guest's sockets here (the in-process driver); without it the guest
    /// (vu-gen) listens itself and OVS's vhost client keeps retrying until it does.
    fn start(tso: bool, listen: bool) -> Result<Ovs> {
        let dir = test_dir();
        let d = dir.path().to_owned();
        let db = d.join("conf.db");
        let env = |c: &mut Command| {
            c.env("OVS_RUNDIR", &d).env("OVS_LOGDIR", &d).env("OVS_DBDIR", &d).env("OVS_SYSCONFDIR", &d);
        };
        let run = |c: &mut Command| -> Result<()> {
            env(c);
            let o = c.output()?;
            if !o.status.success() {
                bail!("{c:?}: {}", String::from_utf8_lossy(&o.stderr));
            }
            Ok(())
        };
        run(Command::new("ovsdb-tool").arg("create").arg(&db).arg("/usr/share/openvswitch/vswitch.ovsschema"))?;
        let db_sock = d.join("db.sock");
        run(Command::new("ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=punix:{}", db_sock.display()))
            .arg(format!("--pidfile={}", d.join("ovsdb-server.pid").display()))
            .arg(format!("--log-file={}", d.join("ovsdb-server.log").display()))
            .arg("--detach"))?;
        let ovsdb = read_pid(&d.join("ovsdb-server.pid"));
        let mut ovs = Ovs { db_sock, vswitchd: None, ovsdb, dir, listeners: Vec::new() };
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            "other_config:dpdk-socket-mem=1024",
            "other_config:dpdk-lcore-mask=0x1",
            "other_config:pmd-cpu-mask=0x2",
            "other_config:dpdk-extra=--file-prefix=vmnetd-bench-ovs --no-pci",
            &format!("other_config:userspace-tso-enable={tso}"),
        ])?;
        run(Command::new("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk")
            .arg(format!("unix:{}", ovs.db_sock.display()))
            .arg(format!("--pidfile={}", d.join("ovs-vswitchd.pid").display()))
            .arg(format!("--log-file={}", d.join("ovs-vswitchd.log").display()))
            .arg("--detach"))?;
        ovs.vswitchd = read_pid(&d.join("ovs-vswitchd.pid"));
        ovs.vsctl(&["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"])?;
        for p in ["a", "b"] {
            let path = d.join(format!("{p}.sock"));
            if listen {
                ovs.listeners.push(std::os::unix::net::UnixListener::bind(&path)?);
            }
            ovs.vsctl(&[
                "add-port",
                "br0",
                p,
                "tag=10",
                "--",
                "set",
                "Interface",
                p,
                "type=dpdkvhostuserclient",
                &format!("options:vhost-server-path={}", path.display()),
            ])?;
        }
        Ok(ovs)
    }
}

/// Accepts one connection, or fails after `timeout`.
fn accept_timeout(
    l: &std::os::unix::net::UnixListener,
    timeout: Duration,
) -> Result<(std::os::unix::net::UnixStream, std::os::unix::net::SocketAddr)> {
    l.set_nonblocking(true)?;
    let end = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => bail!("no connection from OVS: {e}"),
        }
    }
}

fn read_pid(p: &Path) -> Option<u32> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()) {
            return Some(pid);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill_wait(pid: u32) {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(p, None).is_ok() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for pid in [self.vswitchd, self.ovsdb].into_iter().flatten() {
            kill_wait(pid);
        }
        // DPDK's runtime files for our prefix only.
        let _ = std::fs::remove_dir_all("/var/run/dpdk/vmnetd-bench-ovs");
    }
}

impl Backend for Ovs {
    fn name(&self) -> &'static str {
        "ovs-dpdk"
    }
    fn connect(&mut self, cfg: &Config) -> Result<(Driver, Driver)> {
        let mut drivers = Vec::new();
        for l in &self.listeners {
            let (s, _) = accept_timeout(l, Duration::from_secs(30))?;
            drivers.push(Driver::from_stream(s, cfg).map_err(|e| anyhow::anyhow!("{e:?}"))?);
        }
        let b = drivers.pop().unwrap();
        Ok((drivers.pop().unwrap(), b))
    }
    fn pid(&self) -> Option<u32> {
        self.vswitchd
    }
    fn sockets(&self) -> (PathBuf, PathBuf) {
        (self.dir.path().join("a.sock"), self.dir.path().join("b.sock"))
    }
    fn guest_listens(&self) -> bool {
        true
    }
    fn diagnose(&self) -> String {
        let mut out = String::new();
        for p in ["a", "b"] {
            let st = self.vsctl(&["get", "Interface", p, "statistics", "status"]).unwrap_or_else(|e| e.to_string());
            out.push_str(&format!("OVS interface {p}: {st}"));
        }
        let log = std::fs::read_to_string(self.dir.path().join("ovs-vswitchd.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERR") || l.to_lowercase().contains("tso"))
            .collect();
        out.push_str(&lines[lines.len().saturating_sub(10)..].join("\n"));
        out
    }
}

/// `dpdk-testpmd` io-forwarding between two vhost PMD ports: the plumbing limit.
struct Testpmd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Testpmd {
    fn start() -> Result<Testpmd> {
        let dir = test_dir();
        let d = dir.path();
        let child = Command::new("dpdk-testpmd")
            .args(["-l", "0,1", "--main-lcore", "0", "--no-pci", "--in-memory", "-m", "512"])
            .args(["--file-prefix", "vmnetd-bench-tp"])
            .arg("--vdev")
            .arg(format!("net_vhost0,iface={},queues=1", d.join("a.sock").display()))
            .arg("--vdev")
            .arg(format!("net_vhost1,iface={},queues=1", d.join("b.sock").display()))
            .args(["--", "--forward-mode=io", "--nb-cores=1", "--auto-start", "--stats-period=0"])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(d.join("testpmd.log"))?)
            .stderr(std::fs::File::create(d.join("testpmd.err"))?)
            .spawn()
            .context("dpdk-testpmd (package dpdk)")?;
        Ok(Testpmd { dir, child })
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, up to 10 s for a clean exit, then SIGKILL; reaps the child.
fn stop_child(c: &mut Child) {
    if let Ok(None) = c.try_wait() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
    }
    let _ = c.wait();
}

impl Backend for Testpmd {
    fn name(&self) -> &'static str {
        "testpmd-io"
    }
    fn connect(&mut self, cfg: &Config) -> Result<(Driver, Driver)> {
        let d = self.dir.path();
        let a = connect_retry(&d.join("a.sock"), cfg)?;
        let b = connect_retry(&d.join("b.sock"), cfg)?;
        Ok((a, b))
    }
    fn learns(&self) -> bool {
        false
    }
    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }
    fn sockets(&self) -> (PathBuf, PathBuf) {
        (self.dir.path().join("a.sock"), self.dir.path().join("b.sock"))
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Sample {
    frames: u64,
    mpps: f64,
    gbps: f64,
    /// Backend CPU use during the run, in cores.
    cpu: f64,
    /// DPDK guest: the share of frames its TX ring refused (full: the backend was the limit).
    full: Option<f64>,
    /// The share of the two benchmark CPUs' time the hypervisor gave to someone else during
    /// the run (see [`steal`]).
    steal: f64,
    /// The round trip of a cache line between CPUs 0 and 1 around the run, in ns (the larger
    /// of the probes before and after; 0: not probed, NaN: a probe failed). See [`Placement`].
    c2c: f64,
}

/// Where the hypervisor has put the benchmark's two vCPUs, told by the round trip of one
/// cache line between CPUs 0 and 1 (`c2c`). On this project's 2-vCPU VM the round trip is
/// 60-130 ns for minutes at a time, then 360-420 ns for tens of seconds, when the host runs
/// the two vCPUs far apart (other core complexes). The virtio rings and frames cross
/// between the guest's and the backend's CPUs at every burst, and while the CPUs are far
/// apart vmnetd, OVS-DPDK and testpmd-io all fall to about 11-12 Mpps at 64 B (from 26, 16
/// and 25): that, not the backends, was most of the run-to-run spread.
///
/// Each backend start is probed before and after (with no backend running: the probe
/// needs CPU 1); see [`Placement::near`] for what counts as far. With `--placement near`
/// (the default) a backend starts only once the CPUs are near (waiting up to
/// `--placement-wait` seconds), and one whose CPUs were near before its runs and far after
/// them is measured again (twice at most); every backend alike. With `--placement any`
/// nothing waits. Either way the report's medians, spreads and ratios are of the runs
/// with the CPUs near, and the far runs are shown apart.
///
/// Limits: the probes bracket a whole backend start (with a DPDK guest, every frame size
/// and `--runs-per-start` run, and the backend's own start-up), so a far phase that begins
/// and ends inside one goes unseen; and until the first near probe, "near" is judged
/// against the nearest seen so far.
struct Placement {
    near_only: bool,
    wait: Duration,
    /// The shortest round trip seen in this invocation.
    nearest: f64,
}

impl Placement {
    /// How many times a backend whose CPUs moved apart during its runs is measured again.
    const REDO: usize = 2;
    /// "Far" is a round trip over this many times the nearest seen...
    const FAR: f64 = 2.5;
    /// ...and over this many ns: one placement's probes spread over about 2x (here 60-130 ns
    /// near, 360-420 far), and two cores that share a last-level cache answer well within it.
    const FAR_NS: f64 = 200.0;

    /// Whether a run that saw round trips up to `ns` had its CPUs near, given the nearest
    /// round trip seen. A failed probe (NaN) is not near.
    fn near(ns: f64, nearest: f64) -> bool {
        ns <= (Self::FAR * nearest).max(Self::FAR_NS)
    }

    fn new(near_only: bool, wait: Duration) -> Self {
        Placement { near_only, wait, nearest: f64::INFINITY }
    }

    /// The round trip now, in ns (NaN: CPU 1 did not answer).
    fn probe(&mut self) -> f64 {
        let ns = core_round_trip_ns(Duration::from_millis(30)).unwrap_or(f64::NAN);
        self.nearest = self.nearest.min(ns);
        ns
    }

    fn is_near(&self, ns: f64) -> bool {
        Self::near(ns, self.nearest)
    }

    /// Probes, and under `near` waits until the CPUs are near (or the wait is over).
    /// Returns the last round trip.
    fn settle(&mut self) -> f64 {
        let t0 = Instant::now();
        let mut ns = self.probe();
        if !self.near_only || self.is_near(ns) {
            return ns;
        }
        eprintln!(
            "    CPUs 0 and 1 are far apart (cache line round trip {}, nearest seen {}): waiting up to {} s for \
             the hypervisor to bring them together",
            show_ns(ns),
            show_ns(self.nearest),
            self.wait.as_secs()
        );
        while t0.elapsed() < self.wait {
            std::thread::sleep(Duration::from_secs(2));
            ns = self.probe();
            if self.is_near(ns) {
                eprintln!("    near again ({}) after {:.0} s", show_ns(ns), t0.elapsed().as_secs_f64());
                return ns;
            }
        }
        eprintln!("    still far apart ({}) after {} s: measuring anyway", show_ns(ns), self.wait.as_secs());
        ns
    }
}

/// A round trip for people: "83 ns", or "?" for a failed probe.
fn show_ns(ns: f64) -> String {
    if ns.is_finite() {
        format!("{ns:.0} ns")
    } else {
        "?".into()
    }
}

/// The round trip, in ns, of one cache line bounced between this thread (pinned to CPU 0)
/// and a thread pinned to CPU 1 for about `dur`: the median over blocks of 1,000 round
/// trips, so a preempted block does not decide it. None if the other thread stopped
/// answering for long (CPU 1 busy or absent).
fn core_round_trip_ns(dur: Duration) -> Option<f64> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    // Its own line (and the next, for the adjacent-line prefetcher).
    #[repr(align(128))]
    struct Line {
        v: AtomicU64,
        stop: AtomicBool,
    }
    const BLOCK: u32 = 1000;
    let line = Arc::new(Line { v: AtomicU64::new(0), stop: AtomicBool::new(false) });
    let l = line.clone();
    // Detached: after a timeout it ends whenever it next runs and sees `stop`.
    std::thread::spawn(move || {
        pin_self(1);
        while !l.stop.load(Ordering::Relaxed) {
            let v = l.v.load(Ordering::Acquire);
            if v & 1 == 1 {
                // Never overwrites anything but the odd value it saw.
                let _ = l.v.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    });
    pin_self(0);
    let deadline = Instant::now() + dur * 20;
    let mut v = 0u64;
    // One round trip (false: no answer by the deadline).
    let bounce = |v: &mut u64| {
        line.v.store(*v + 1, Ordering::Release);
        let mut spins = 0u32;
        while line.v.load(Ordering::Acquire) != *v + 2 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 16) && Instant::now() > deadline {
                return false;
            }
        }
        *v += 2;
        true
    };
    let mut blocks = Vec::new();
    // The other thread is running once it has answered.
    let mut ok = bounce(&mut v);
    let t0 = Instant::now();
    while ok && t0.elapsed() < dur {
        let b0 = Instant::now();
        ok = (0..BLOCK).all(|_| bounce(&mut v));
        blocks.push(b0.elapsed().as_nanos() as f64 / f64::from(BLOCK));
    }
    line.stop.store(true, Ordering::Relaxed);
    (ok && !blocks.is_empty()).then(|| median(&mut blocks))
}

/// The benchmark's CPUs: the guests' (0) and the backend's datapath (1).
const BENCH_CPUS: [usize; 2] = [0, 1];

/// Steal over `secs` seconds from the tick count `t0` to `t1`, as a share of both CPUs.
fn steal(t0: u64, t1: u64, secs: f64) -> f64 {
    t1.saturating_sub(t0) as f64 / clock_ticks() / secs.max(1e-9) / BENCH_CPUS.len() as f64
}

/// Sends from `a`, counts at `b` for `secs`.
fn measure(a: &mut Driver, b: &mut Driver, wire_len: usize, secs: f64, pid: Option<u32>) -> Sample {
    let ticks = clock_ticks();
    let c0 = pid.map(cpu_ticks).unwrap_or(0);
    let st0 = steal_ticks(&BENCH_CPUS);
    let t0 = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut i = 0u32;
    loop {
        a.refill_tx(0);
        let (f, by) = b.drain_rx(0);
        frames += f;
        bytes += by;
        i = i.wrapping_add(1);
        if i.is_multiple_of(256) && t0.elapsed().as_secs_f64() >= secs {
            break;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let c1 = pid.map(cpu_ticks).unwrap_or(0);
    let _ = bytes;
    Sample {
        frames,
        mpps: frames as f64 / el / 1e6,
        gbps: frames as f64 * wire_len as f64 * 8.0 / el / 1e9,
        cpu: (c1 - c0) as f64 / ticks / el,
        full: None,
        steal: steal(st0, steal_ticks(&BENCH_CPUS), el),
        c2c: 0.0,
    }
}

/// Who drives the backend's two ports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Guest {
    /// The in-process virtio-net driver (`vmnetd_vhost::driver`).
    Driver,
    /// vu-gen: DPDK's `net_virtio_user` with its default devargs (`in_order` on).
    Dpdk,
    /// vu-gen with `in_order=0`.
    DpdkNoOrder,
}

impl Guest {
    fn parse(s: &str) -> Result<Guest> {
        Ok(match s {
            "driver" => Guest::Driver,
            "dpdk" => Guest::Dpdk,
            "dpdk-noorder" => Guest::DpdkNoOrder,
            other => bail!("unknown guest {other:?} (driver, dpdk, dpdk-noorder)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Guest::Driver => "driver",
            Guest::Dpdk => "dpdk",
            Guest::DpdkNoOrder => "dpdk-noorder",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Guest::Driver => "in-process virtio-net driver (vmnetd_vhost::driver)",
            Guest::Dpdk => "DPDK net_virtio_user (vu-gen), default devargs (in_order on)",
            Guest::DpdkNoOrder => "DPDK net_virtio_user (vu-gen), in_order=0",
        }
    }

    /// vu-gen's `--in-order` (a DPDK guest), or None (the in-process driver).
    fn in_order(self) -> Option<&'static str> {
        match self {
            Guest::Driver => None,
            Guest::Dpdk => Some("default"),
            Guest::DpdkNoOrder => Some("0"),
        }
    }
}

/// vu-gen's DPDK `--file-prefix`: its runtime dir is `/var/run/dpdk/<prefix>`.
const VUGEN_PREFIX: &str = "vmnetd-vugen";

struct VuGenArgs {
    size: usize,
    runs: usize,
    secs: f64,
    warm: f64,
    /// How long a port may take to come up.
    port_timeout: f64,
    /// Hold before each run until SIGUSR1, settle after it (instruction counting).
    sync: bool,
}

/// A running `vu-gen`: a DPDK virtio-user guest on both of a backend's sockets, pinned to
/// CPU 0. Its stdout lines (JSON) arrive through a reader thread; its stderr (DPDK's log) goes
/// to a file.
struct VuGen {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: PathBuf,
}

impl VuGen {
    fn spawn(exe: &Path, be: &dyn Backend, guest: Guest, a: &VuGenArgs, log: &Path) -> Result<VuGen> {
        let (sa, sb) = be.sockets();
        let in_order = guest.in_order().context("not a DPDK guest")?;
        let mut cmd = Command::new(exe);
        // --in-memory: huge pages from memfds, which vhost-user can pass to the backend;
        // --single-file-segments: one fd (one region) for all of them.
        cmd.args(["-l", "0", "--in-memory", "--single-file-segments", "-m", "256", "--no-pci", "--no-telemetry"])
            .args(["--file-prefix", VUGEN_PREFIX])
            // The virtio PMD logs the negotiated features and its Rx/Tx paths at this level.
            .arg("--log-level=pmd.net.virtio.init:debug")
            .arg("--")
            .arg("--a")
            .arg(&sa)
            .arg("--b")
            .arg(&sb)
            .args(["--server", if be.guest_listens() { "1" } else { "0" }])
            .args(["--in-order", in_order])
            .args(["--size", &a.size.to_string(), "--runs", &a.runs.to_string()])
            .args(["--secs", &a.secs.to_string(), "--warm", &a.warm.to_string()])
            .args(["--timeout", &a.port_timeout.to_string()]);
        if a.sync {
            cmd.arg("--sync");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        let out = child.stdout.take().context("vu-gen stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(VuGen { child, lines: rx, log: log.to_owned() })
    }

    /// The generator's next stdout line, parsed.
    fn next(&mut self, timeout: Duration) -> Result<serde_json::Value> {
        use std::sync::mpsc::RecvTimeoutError;
        match self.lines.recv_timeout(timeout) {
            Ok(l) => serde_json::from_str(&l).with_context(|| format!("vu-gen printed {l:?}")),
            Err(RecvTimeoutError::Timeout) => bail!("vu-gen printed nothing for {timeout:?}\n{}", self.log_tail()),
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.child.wait()?;
                bail!("vu-gen exited ({st})\n{}", self.log_tail())
            }
        }
    }

    /// Waits for `{"event":EVENT}`.
    fn expect(&mut self, event: &str, timeout: Duration) -> Result<serde_json::Value> {
        let v = self.next(timeout)?;
        if v["event"] != event {
            bail!("vu-gen: expected event {event}, got {v}");
        }
        Ok(v)
    }

    /// Starts the next run (`--sync`).
    fn go(&self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).context("signal vu-gen")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim_start().starts_with('-')).collect();
        format!("--- vu-gen's log, last lines ---\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
    }

    /// What the virtio PMD negotiated and which Rx/Tx paths it chose, from its log.
    fn negotiated(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out: Vec<String> = Vec::new();
        for l in log.lines() {
            if let Some(h) = l.split("features after negotiate = ").nth(1) {
                if let Ok(v) = u64::from_str_radix(h.trim(), 16) {
                    out.push(format!("virtio-user negotiated {v:#x}: {}", feature_names(v)));
                }
            } else if l.contains("Tx path") || l.contains("Rx path") {
                out.push(l.split_once("): ").map_or(l, |x| x.1).trim().to_owned());
            }
        }
        out.dedup();
        out.join("\n")
    }

    /// Waits (up to 30 s) for a clean exit.
    fn finish(&mut self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!("vu-gen failed ({st})\n{}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > end {
                bail!("vu-gen did not exit\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VuGen {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{VUGEN_PREFIX}"));
    }
}

/// Virtio feature bits by name (vmnetd's spelling).
fn feature_names(v: u64) -> String {
    const NAMES: [(u32, &str); 17] = [
        (0, "csum"),
        (1, "guest_csum"),
        (5, "mac"),
        (7, "guest_tso4"),
        (8, "guest_tso6"),
        (11, "host_tso4"),
        (12, "host_tso6"),
        (15, "mrg_rxbuf"),
        (16, "status"),
        (17, "ctrl_vq"),
        (22, "mq"),
        (28, "indirect_desc"),
        (29, "event_idx"),
        (30, "protocol_features"),
        (32, "version_1"),
        (34, "ring_packed"),
        (35, "in_order"),
    ];
    (0..64)
        .filter(|b| v & (1 << b) != 0)
        .map(|b| NAMES.iter().find(|n| n.0 == b).map_or_else(|| format!("bit{b}"), |n| n.1.to_owned()))
        .collect::<Vec<_>>()
        .join(",")
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// `o.runs` runs of `o.secs` with a DPDK guest (one vu-gen process), the backend's CPU
/// sampled as each run's line arrives.
fn dpdk_runs(o: &Opts, be: &dyn Backend, guest: Guest, size: usize, runs: usize, show: bool) -> Result<Vec<Sample>> {
    let dir = tempfile::tempdir()?;
    let args = VuGenArgs { size, runs, secs: o.secs, warm: 0.5, port_timeout: 30.0, sync: false };
    let mut g = VuGen::spawn(&o.vu_gen()?, be, guest, &args, &dir.path().join("vu-gen.log"))?;
    let wait = Duration::from_secs_f64(o.secs + 60.0);
    g.expect("start", wait)?;
    if show {
        for l in g.negotiated().lines().chain(be.negotiated().lines()) {
            eprintln!("    {}: {l}", be.name());
        }
    }
    let ticks = clock_ticks();
    let pid = be.pid();
    let mut c0 = pid.map(cpu_ticks).unwrap_or(0);
    let mut st0 = steal_ticks(&BENCH_CPUS);
    let mut out = Vec::new();
    for _ in 0..runs {
        let v = g.next(wait)?;
        let c1 = pid.map(cpu_ticks).unwrap_or(0);
        let st1 = steal_ticks(&BENCH_CPUS);
        let n = |k: &str| v[k].as_u64().with_context(|| format!("no {k} in vu-gen's {v}"));
        let secs = v["secs"].as_f64().with_context(|| format!("no secs in vu-gen's {v}"))?;
        let (rx, tries, full) = (n("rx")?, n("tx_try")?, n("tx_full")?);
        let s = Sample {
            frames: rx,
            mpps: rx as f64 / secs / 1e6,
            gbps: rx as f64 * size as f64 * 8.0 / secs / 1e9,
            cpu: (c1 - c0) as f64 / ticks / secs,
            full: Some(full as f64 / tries.max(1) as f64),
            steal: steal(st0, st1, secs),
            c2c: 0.0,
        };
        (c0, st0) = (c1, st1);
        eprintln!(
            "  {:<10} {size:>5} B: {:.3} Mpps {:.2} Gbit/s cpu {:.2}, generator ring full {:.1}% of {tries} tries, \
             steal {:.1}%",
            be.name(),
            s.mpps,
            s.gbps,
            s.cpu,
            s.full.unwrap_or(0.0) * 100.0,
            s.steal * 100.0
        );
        if rx == 0 {
            eprintln!("{}\n{}", be.diagnose(), g.log_tail());
        }
        out.push(s);
    }
    g.finish()?;
    Ok(out)
}

/// `--callgrind`: instructions the datapath thread executes per forwarded frame, for each
/// vmnetd build in `--backends`, with the daemon under valgrind's callgrind. Unlike a packet
/// rate on a shared 2-core machine this is deterministic to a fraction of a percent, so a
/// change's cost per frame can be told from noise. Under valgrind the daemon is ~50x slower
/// than the generator, so its TX ring never runs dry and idle polls do not dilute the count.
fn callgrind(o: &Opts) -> Result<()> {
    pin_self(0);
    let cfg = Config { queue_size: 1024, ..Default::default() };
    let mut rows = Vec::new();
    for name in &o.backends {
        for &guest in &o.guests {
            for &size in &o.sizes {
                let out = tempfile::tempdir()?;
                let wrapper: Vec<String> = vec![
                    "valgrind".into(),
                    "--tool=callgrind".into(),
                    "--separate-threads=yes".into(),
                    // Each dump self-contained (names not defined in an earlier part), so a
                    // kept profile reads on its own.
                    "--compress-strings=no".into(),
                    format!("--callgrind-out-file={}/cg.out", out.path().display()),
                ];
                let build = match name.as_str() {
                    "vmnetd" => None,
                    other if rules_of(other).is_some() => None,
                    other if other.starts_with("vmnetd-") => {
                        let label = &other["vmnetd-".len()..];
                        let path = o.builds.iter().find(|(l, _)| l == label).map(|(l, p)| (l.as_str(), p.as_path()));
                        Some(path.with_context(|| format!("no --build {label}=PATH for backend {other}"))?)
                    }
                    other => bail!("--callgrind measures vmnetd builds, not {other}"),
                };
                let mut be = Vmnetd::start_under(o.busy_poll_us, build, &wrapper)?;
                if let Some(n) = rules_of(name) {
                    be = be.with_rules(n)?;
                }
                let pid = be.daemon.pid().context("daemon pid")?;
                let frames;
                // Whatever drives the ports stays connected until the dump.
                let driving = match guest {
                    Guest::Driver => {
                        let (mut a, mut b) = connect_retry(&be.daemon.root.join("run").join("a.sock"), &cfg)
                            .and_then(|a| Ok((a, connect_retry(&be.daemon.root.join("run").join("b.sock"), &cfg)?)))?;
                        std::thread::sleep(Duration::from_millis(500));
                        learn(&mut a, &mut b);
                        a.prime_tx(0, &VnetHdr::default(), &frame(MAC_A, MAC_B, size - 4));
                        measure(&mut a, &mut b, size, 2.0, None);
                        callgrind_control(pid, "--zero")?;
                        frames = measure(&mut a, &mut b, size, o.secs, None).frames;
                        Driving::Driver(a, b)
                    }
                    Guest::Dpdk | Guest::DpdkNoOrder => {
                        // vu-gen warms up, lets the backend drain, and holds; zero, one run
                        // (until every accepted frame came back), hold again; dump.
                        let log = out.path().join("vu-gen.log");
                        let args =
                            VuGenArgs { size, runs: 1, secs: o.secs, warm: 2.0, port_timeout: 120.0, sync: true };
                        let mut g = VuGen::spawn(&o.vu_gen()?, &be, guest, &args, &log)?;
                        g.expect("ready", Duration::from_secs(300))?;
                        callgrind_control(pid, "--zero")?;
                        g.go()?;
                        let v = g.next(Duration::from_secs_f64(o.secs + 300.0))?;
                        frames = v["rx"].as_u64().with_context(|| format!("no rx in vu-gen's {v}"))?;
                        eprintln!("  vu-gen: {} tx tries, {} accepted, {frames} received", v["tx_try"], v["tx_ok"]);
                        Driving::Dpdk(g)
                    }
                };
                let before: Vec<PathBuf> = files(out.path())?;
                callgrind_control(pid, "--dump=measured")?;
                let dumped: Vec<PathBuf> = files(out.path())?.into_iter().filter(|f| !before.contains(f)).collect();
                // The datapath thread is the one that ran the most instructions.
                let (ir, dp_file) = dumped
                    .iter()
                    .filter_map(|f| totals(f).map(|ir| (ir, f)))
                    .max()
                    .context("callgrind wrote no dump")?;
                // CALLGRIND_KEEP=DIR keeps the datapath thread's profile for callgrind_annotate.
                if let Some(dir) = std::env::var_os("CALLGRIND_KEEP") {
                    let to = Path::new(&dir).join(format!("cg-{}-{}-{size}.out", be.name, guest.name()));
                    std::fs::create_dir_all(&dir)?;
                    std::fs::copy(dp_file, &to)?;
                    eprintln!("  kept {}", to.display());
                }
                let per = ir as f64 / frames.max(1) as f64;
                eprintln!(
                    "  {:<14} {:<12} {size:>5} B: {frames} frames, {ir} Ir in the datapath thread, {per:.0} Ir/frame",
                    be.name,
                    guest.name()
                );
                rows.push((be.name, guest, size, per));
                if let Driving::Dpdk(mut g) = driving {
                    // Let it go: it stops its ports and exits.
                    g.go()?;
                    g.finish()?;
                }
                drop(be);
            }
        }
    }
    println!();
    println!("instructions per forwarded frame, datapath thread (callgrind; lower is better)");
    println!("{:<14} {:<12} {:>6} {:>10}", "build", "guest", "frame", "Ir/frame");
    for (n, guest, size, per) in &rows {
        println!("{n:<14} {:<12} {size:>6} {per:>10.0}", guest.name());
    }
    for &guest in &o.guests {
        for &size in &o.sizes {
            let this = rows.iter().find(|r| r.0 == "vmnetd" && r.1 == guest && r.2 == size);
            for other in rows.iter().filter(|r| r.0 != "vmnetd" && r.1 == guest && r.2 == size) {
                if let Some(t) = this {
                    println!(
                        "{:<12} {size:>5} B: vmnetd (this build) / {} {:.3}x instructions",
                        guest.name(),
                        other.0,
                        t.3 / other.3
                    );
                }
            }
        }
    }
    Ok(())
}

/// What drives the ports while callgrind counts.
enum Driving {
    Driver(#[allow(dead_code)] Driver, #[allow(dead_code)] Driver),
    Dpdk(VuGen),
}

fn callgrind_control(pid: u32, action: &str) -> Result<()> {
    let o = Command::new("callgrind_control").arg(action).arg(pid.to_string()).output()?;
    if !o.status.success() {
        bail!("callgrind_control {action}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()).collect())
}

/// The `summary:` (or `totals:`) Ir of a callgrind output file.
fn totals(f: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(f).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The median (the upper one of an even count); NaN for no values.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `q` quantile (0..=1) of `v`, interpolated between the two nearest samples.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let at = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (at - lo as f64)
}

/// Run-to-run spread as the interquartile range over the median: unlike min-max, one round
/// the host took the CPU away from does not decide it.
fn iqr_share(v: &[f64]) -> f64 {
    (quantile(v, 0.75) - quantile(v, 0.25)) / quantile(v, 0.5).max(1e-9)
}

/// The switch learns both MACs (A's and B's) before the run, so nothing floods.
fn learn(a: &mut Driver, b: &mut Driver) {
    let vnet = VnetHdr::default();
    for _ in 0..3 {
        b.send(0, &vnet, &[&frame(MAC_B, MAC_A, 60)]);
        a.send(0, &vnet, &[&frame(MAC_A, MAC_B, 60)]);
        std::thread::sleep(Duration::from_millis(50));
        a.drain_rx(0);
        b.drain_rx(0);
    }
}

struct Opts {
    runs: usize,
    /// DPDK guests: runs per backend start (`--runs-per-start`, default 1). More than one
    /// tells the spread between starts (memory placement) from the spread within one.
    runs_per_start: usize,
    secs: f64,
    sizes: Vec<usize>,
    backends: Vec<String>,
    /// vmnetd's `[datapath] busy_poll_us` (default: the daemon's own default).
    busy_poll_us: Option<u32>,
    /// Do not ack VIRTIO_NET_F_MRG_RXBUF (one RX descriptor per frame, as DPDK without it).
    no_mrg_rxbuf: bool,
    /// Back the generator's "guest memory" with 2 MiB huge pages.
    guest_hugepages: bool,
    /// Other vmnetd builds to measure as backends `vmnetd-LABEL` (`--build LABEL=PATH`).
    builds: Vec<(String, PathBuf)>,
    /// What drives the ports (`--guest driver,dpdk,dpdk-noorder`).
    guests: Vec<Guest>,
    /// The DPDK guest binary (`--vu-gen PATH`; default: `vu-gen` in the target dir).
    vu_gen: PathBuf,
    /// `--placement near` (default): measure only while CPUs 0 and 1 are near (see
    /// [`Placement`]); `any`: measure whenever, tag the runs.
    near_only: bool,
    /// `--placement-wait SECS` (default 300): how long `near` waits for the CPUs to be near.
    placement_wait: Duration,
}

impl Opts {
    /// The DPDK guest binary, which must have been built.
    fn vu_gen(&self) -> Result<PathBuf> {
        if !self.vu_gen.is_file() {
            bail!(
                "{} is missing: the DPDK guests (--guest dpdk, dpdk-noorder) need it. bench/vhost.sh builds it \
                 (cc -O3 $(pkg-config --cflags libdpdk) -march=native bench/dpdk/vu-gen.c -o target/vu-gen \
                 $(pkg-config --libs libdpdk)); or pass --vu-gen PATH, or --guest driver",
                self.vu_gen.display()
            );
        }
        Ok(self.vu_gen.clone())
    }
}

/// `target/vu-gen`: the target dir is the parent of this binary's profile dir.
fn default_vu_gen() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.pop();
    dir.join("vu-gen")
}

fn start_backend(name: &str, o: &Opts, guest: Guest) -> Result<Box<dyn Backend>> {
    Ok(match name {
        "vmnetd" => Box::new(Vmnetd::start(o.busy_poll_us, None)?),
        other if rules_of(other).is_some() => {
            Box::new(Vmnetd::start(o.busy_poll_us, None)?.with_rules(rules_of(other).unwrap_or(0))?)
        }
        "vmnetd-scraped" => Box::new(Vmnetd::scraped(o.busy_poll_us)?),
        "vmnetd-logging" => {
            anyhow::ensure!(guest == Guest::Driver, "vmnetd-logging needs GUESTS=driver (it starts the logs itself)");
            let mut v = Vmnetd::start(o.busy_poll_us, None)?;
            v.name = "vmnetd-logging";
            v.logging = Some(Vec::new());
            Box::new(v)
        }
        other if other.starts_with("vmnetd-") => {
            let label = &other["vmnetd-".len()..];
            let path = o.builds.iter().find(|(l, _)| l == label).map(|(_, p)| p.clone());
            let path = path.with_context(|| format!("no --build {label}=PATH for backend {other}"))?;
            Box::new(Vmnetd::start(o.busy_poll_us, Some((label, &path)))?)
        }
        // The in-process driver listens for OVS's vhost clients; vu-gen listens itself.
        "ovs" => Box::new(Ovs::start(false, guest == Guest::Driver)?),
        "testpmd" => Box::new(Testpmd::start()?),
        other => bail!("unknown backend {other}"),
    })
}

/// The samples of one backend, guest and frame size.
struct Row {
    guest: Guest,
    backend: &'static str,
    size: usize,
    samples: Vec<Sample>,
}

/// One start of backend `name` under `guest`: a run per frame size (DPDK guests:
/// `--runs-per-start` runs), then the backend stops.
fn run_backend(
    o: &Opts,
    name: &str,
    guest: Guest,
    cfg: &Config,
    first: bool,
) -> Result<(&'static str, Vec<(usize, Sample)>)> {
    let mut be = start_backend(name, o, guest)?;
    let mut got: Vec<(usize, Sample)> = Vec::new();
    if guest == Guest::Driver {
        let (mut a, mut b) = be.connect(cfg)?;
        std::thread::sleep(Duration::from_millis(500));
        if be.learns() {
            learn(&mut a, &mut b);
        }
        for &size in &o.sizes {
            a.prime_tx(0, &VnetHdr::default(), &frame(MAC_A, MAC_B, size - 4));
            // Warm up: caches, learning, the backend's polling.
            measure(&mut a, &mut b, size, 0.5, None);
            let s = measure(&mut a, &mut b, size, o.secs, be.pid());
            eprintln!(
                "  {:<10} {size:>5} B: {:.3} Mpps {:.2} Gbit/s cpu {:.2}, steal {:.1}%",
                be.name(),
                s.mpps,
                s.gbps,
                s.cpu,
                s.steal * 100.0
            );
            got.push((size, s));
        }
        drop((a, b));
    } else {
        for (i, &size) in o.sizes.iter().enumerate() {
            for s in dpdk_runs(o, be.as_ref(), guest, size, o.runs_per_start, first && i == 0)? {
                got.push((size, s));
            }
        }
    }
    Ok((be.name(), got))
}

/// Rounds, not blocks: each of `--runs` rounds starts every backend in turn and measures
/// one run per guest and size, so a machine whose speed drifts over minutes (a shared VM)
/// shifts all backends alike, and each round gives a paired ratio.
fn throughput(o: &Opts) -> Result<()> {
    pin_self(0);
    let mut cfg = Config { queue_size: 1024, ..Default::default() };
    if o.no_mrg_rxbuf {
        cfg.features &= !features::MRG_RXBUF;
    }
    cfg.hugepages = o.guest_hugepages;
    let mut rows: Vec<Row> = Vec::new();
    let mut place = Placement::new(o.near_only, o.placement_wait);
    place.probe();
    for round in 0..o.runs {
        for &guest in &o.guests {
            eprintln!("round {}/{}, guest {}: {}", round + 1, o.runs, guest.name(), guest.describe());
            for name in &o.backends {
                let mut redo = 0;
                let (backend, got) = loop {
                    let before = place.settle();
                    let (backend, mut got) = run_backend(o, name, guest, &cfg, round == 0)?;
                    let after = place.probe();
                    // The worse of the two (NaN, a failed probe, wins).
                    let c2c = if before.is_nan() || after.is_nan() { f64::NAN } else { before.max(after) };
                    eprintln!(
                        "    {backend}: cache line round trip CPU 0-1 {} before, {} after",
                        show_ns(before),
                        show_ns(after)
                    );
                    for (_, s) in &mut got {
                        s.c2c = c2c;
                    }
                    // Again only if the CPUs moved apart during the runs: if they were far
                    // before, settle has already waited as long as it may.
                    let moved = place.is_near(before) && !place.is_near(after);
                    if !o.near_only || !moved || redo == Placement::REDO {
                        break (backend, got);
                    }
                    redo += 1;
                    eprintln!(
                        "    {backend}: CPUs 0 and 1 moved apart during its runs ({} -> {}): measured again",
                        show_ns(before),
                        show_ns(after)
                    );
                };
                for (size, s) in got {
                    match rows.iter_mut().find(|r| r.guest == guest && r.backend == backend && r.size == size) {
                        Some(r) => r.samples.push(s),
                        None => rows.push(Row { guest, backend, size, samples: vec![s] }),
                    }
                }
            }
        }
    }
    report(o, &rows, place.nearest);
    Ok(())
}

fn report(o: &Opts, rows: &[Row], nearest: f64) {
    println!();
    println!(
        "vhost-user port to port, 1 datapath core (CPU 1), generator+sink on CPU 0; medians of {} rounds \
         (each backend started once per round, one run of {} s per size)",
        o.runs, o.secs
    );
    for &guest in &o.guests {
        let rs: Vec<&Row> = rows.iter().filter(|r| r.guest == guest).collect();
        if rs.is_empty() {
            continue;
        }
        let dpdk = guest != Guest::Driver;
        println!();
        println!("guest {}: {}", guest.name(), guest.describe());
        print!(
            "{:<14} {:>6} {:>9} {:>15} {:>6} {:>8} {:>6} {:>6} {:>8}",
            "backend", "frame", "Mpps", "min-max", "IQR", "Gbit/s", "cores", "steal", "c2c ns"
        );
        if dpdk {
            print!(" {:>10}", "ring full");
        }
        println!();
        let mut med: BTreeMap<(&str, usize), (f64, f64)> = BTreeMap::new();
        for r in &rs {
            let kept = near_runs(&r.samples, nearest);
            let mut m: Vec<f64> = kept.iter().map(|s| s.mpps).collect();
            let mut g: Vec<f64> = kept.iter().map(|s| s.gbps).collect();
            let mut c: Vec<f64> = kept.iter().map(|s| s.cpu).collect();
            let stolen = kept.iter().map(|s| s.steal).fold(0.0f64, f64::max);
            let mut f: Vec<f64> = kept.iter().filter_map(|s| s.full).collect();
            let (lo, hi) = m.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let (mm, gg, cc) = (median(&mut m), median(&mut g), median(&mut c));
            med.insert((r.backend, r.size), (mm, gg));
            let range = format!("{lo:.3}-{hi:.3}");
            let iqr = format!("{:.0}%", iqr_share(&m) * 100.0);
            let stolen = format!("{:.1}%", stolen * 100.0);
            let c2c = kept.iter().map(|s| s.c2c).fold(0.0f64, |a, b| if b.is_nan() { b } else { a.max(b) });
            let c2c = if c2c.is_finite() { format!("{c2c:.0}") } else { "?".into() };
            print!(
                "{:<14} {:>6} {mm:>9.3} {range:>15} {iqr:>6} {gg:>8.2} {cc:>6.2} {stolen:>6} {c2c:>8}",
                r.backend, r.size
            );
            if dpdk && !f.is_empty() {
                print!(" {:>9.1}%", median(&mut f) * 100.0);
            }
            println!();
            let mut far: Vec<f64> =
                r.samples.iter().filter(|s| !Placement::near(s.c2c, nearest)).map(|s| s.mpps).collect();
            if far.len() == r.samples.len() {
                println!("{:<14} (every run of the row had CPUs 0 and 1 far apart)", "");
            } else if !far.is_empty() {
                let (lo, hi) = far.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                println!(
                    "{:<14} left out: {} of {} runs with CPUs 0 and 1 far apart, median {:.3} Mpps ({lo:.3}-{hi:.3})",
                    "",
                    far.len(),
                    r.samples.len(),
                    median(&mut far),
                );
            }
        }
        println!(
            "(Mpps, min-max, IQR, cores, steal, ring full and the ratios below: the runs with CPUs 0 and 1 near, \
             where a row has any)"
        );
        println!("(IQR: run-to-run spread, the interquartile range of the rounds over their median)");
        println!("(steal: the most CPU time the hypervisor took from CPUs 0-1 in any one round of the row)");
        println!(
            "(c2c: the most any kept run of the row saw of a cache line's round trip between CPUs 0 and 1, probed \
             before and after each backend start; far = over {} times the nearest seen, {}, and over {} ns)",
            Placement::FAR,
            show_ns(nearest),
            Placement::FAR_NS
        );
        if dpdk {
            println!(
                "(ring full: share of the generator's TX attempts its ring refused; high = the backend was \
                 the limit, low with an idle backend = the generator was)"
            );
        }
        for &size in &o.sizes {
            let Some(v) = med.get(&("vmnetd", size)) else { continue };
            let Some(mine) = rs.iter().find(|r| r.backend == "vmnetd" && r.size == size) else { continue };
            let mut others =
                vec![("ovs-dpdk".to_owned(), "OVS-DPDK".to_owned()), ("testpmd-io".into(), "testpmd-io".into())];
            others.extend(o.builds.iter().map(|(l, _)| (format!("vmnetd-{l}"), format!("vmnetd-{l}"))));
            let mut ratios = String::new();
            for (key, label) in &others {
                let Some(x) = med.iter().find(|((b, s), _)| b == key && *s == size).map(|(_, x)| x) else { continue };
                let Some(theirs) = rs.iter().find(|r| r.backend == key.as_str() && r.size == size) else { continue };
                // The ratio of each round's pair (same minute of the machine's life), then
                // their median and range.
                let mut per = paired_ratios(&mine.samples, &theirs.samples, nearest);
                let (lo, hi) = per.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                let (q1, q3) = (quantile(&per, 0.25), quantile(&per, 0.75));
                ratios.push_str(&format!(
                    "  vmnetd/{label} {:.2}x [rounds {lo:.2}-{hi:.2}, middle half {q1:.2}-{q3:.2}]",
                    median(&mut per)
                ));
                if size == 1518 {
                    ratios.push_str(&format!(" ({:.2} vs {:.2} Gbit/s)", v.1, x.1));
                }
            }
            // Variants against plain: this run's vmnetd with N rules (or scraped) / without.
            for (key, x) in med.iter().filter(|((b, s), _)| variant(b) && *s == size) {
                let Some(theirs) = rs.iter().find(|r| r.backend == key.0 && r.size == size) else { continue };
                let mut per = paired_ratios(&theirs.samples, &mine.samples, nearest);
                let (lo, hi) = per.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                ratios.push_str(&format!(
                    "  {}/vmnetd {:.2}x [rounds {lo:.2}-{hi:.2}] ({:.3} Mpps)",
                    key.0,
                    median(&mut per),
                    x.0
                ));
            }
            if !ratios.is_empty() {
                println!("{:<12} {size:>5} B:{ratios}", guest.name());
            }
        }
    }
}

/// The runs of a row with CPUs 0 and 1 near (all of them if none was).
fn near_runs(samples: &[Sample], nearest: f64) -> Vec<&Sample> {
    let near: Vec<&Sample> = samples.iter().filter(|s| Placement::near(s.c2c, nearest)).collect();
    if near.is_empty() {
        samples.iter().collect()
    } else {
        near
    }
}

/// Each round's ratio `a / b` (runs paired by position), of the pairs where both ran with
/// CPUs 0 and 1 near (all pairs if none did).
fn paired_ratios(a: &[Sample], b: &[Sample], nearest: f64) -> Vec<f64> {
    let pairs: Vec<(&Sample, &Sample)> = a.iter().zip(b).collect();
    let both = |(x, y): &&(&Sample, &Sample)| Placement::near(x.c2c, nearest) && Placement::near(y.c2c, nearest);
    let near: Vec<&(&Sample, &Sample)> = pairs.iter().filter(both).collect();
    let use_all = near.is_empty();
    pairs.iter().filter(|p| use_all || both(p)).map(|(x, y)| x.mpps / y.mpps.max(1e-9)).collect()
}

fn gso(o: &Opts) -> Result<()> {
    pin_self(0);
    let feats = Config::default().features
        | features::HOST_TSO4
        | features::GUEST_TSO4
        | features::HOST_TSO6
        | features::GUEST_TSO6;
    let cfg = Config { queue_size: 256, features: feats, buf_len: 65536 + 128, ..Default::default() };
    let (vnet, f) = tso_frame();
    let mut out = Vec::new();
    let mut place = Placement::new(o.near_only, o.placement_wait);
    place.probe();
    for name in &o.backends {
        if !matches!(name.as_str(), "ovs") && !name.starts_with("vmnetd") {
            continue;
        }
        let before = place.settle();
        let mut be: Box<dyn Backend> = match name.as_str() {
            "vmnetd" => Box::new(Vmnetd::start(o.busy_poll_us, None)?),
            other if other.starts_with("vmnetd-") => {
                let label = &other["vmnetd-".len()..];
                let path = o.builds.iter().find(|(l, _)| l == label).map(|(_, p)| p.clone());
                let path = path.with_context(|| format!("no --build {label}=PATH for backend {other}"))?;
                Box::new(Vmnetd::start(o.busy_poll_us, Some((label, &path)))?)
            }
            "ovs" => Box::new(Ovs::start(true, true)?),
            _ => continue,
        };
        let (mut a, mut b) = be.connect(&cfg)?;
        eprintln!("  {}: generator acked {:#x}, sink acked {:#x}", be.name(), a.acked, b.acked);
        std::thread::sleep(Duration::from_millis(500));
        learn(&mut a, &mut b);
        a.prime_tx(0, &vnet, &f);
        measure(&mut a, &mut b, f.len(), 0.5, None);
        let mut g = Vec::new();
        for _ in 0..o.runs {
            let s = measure(&mut a, &mut b, f.len(), o.secs, be.pid());
            eprintln!(
                "  {:<10} 64 KiB TSO: {:.0} frames/s {:.2} Gbit/s cpu {:.2}",
                be.name(),
                s.mpps * 1e6,
                s.gbps,
                s.cpu
            );
            if s.mpps == 0.0 {
                eprintln!("{}", be.diagnose());
            }
            g.push(s.gbps);
        }
        let name = be.name();
        drop((a, b, be));
        let after = place.probe();
        let far = if place.is_near(after) { "" } else { " (far apart after the runs: not measured again)" };
        eprintln!(
            "    {name}: cache line round trip CPU 0-1 {} before, {} after{far}",
            show_ns(before),
            show_ns(after)
        );
        out.push((name, median(&mut g)));
    }
    println!();
    println!("64 KiB TSO super-frames guest to guest (both sides ack TSO): medians of {} runs", o.runs);
    for (n, g) in &out {
        println!("{n:<12} {g:>8.2} Gbit/s");
    }
    if let (Some(v), Some(x)) = (out.iter().find(|x| x.0 == "vmnetd"), out.iter().find(|x| x.0 == "ovs-dpdk")) {
        println!("vmnetd/OVS-DPDK {:.2}x", v.1 / x.1);
    }
    Ok(())
}

fn idle() -> Result<()> {
    let dir = test_dir();
    let d = Daemon::start(dir.path());
    d.cli(&["bridge", "add", "br0"]).ok();
    let pid = d.pid().unwrap();
    let base = rss_kib(pid);
    for i in 0..100 {
        d.cli(&["port", "add", "br0", &format!("p{i}"), "--vhost-user", &format!("p{i}.sock"), "--vlan", "10"]).ok();
    }
    // Ten of them get a frontend and carry a burst of traffic, then go quiet: the datapath
    // must fall back from busy polling to eventfd waits.
    let cfg = Config::default();
    let run = d.root.join("run");
    let mut drivers = Vec::new();
    for i in 0..10 {
        drivers.push(connect_retry(&run.join(format!("p{i}.sock")), &cfg)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let vnet = VnetHdr::default();
    for _ in 0..100 {
        for (i, drv) in drivers.iter_mut().enumerate() {
            let mut src = MAC_A;
            src[5] = i as u8;
            drv.send(0, &vnet, &[&frame(src, [0xff; 6], 60)]);
        }
        for drv in drivers.iter_mut() {
            drv.drain_rx(0);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    for drv in drivers.iter_mut() {
        drv.drain_rx(0);
    }
    let ticks = clock_ticks();
    let c0 = cpu_ticks(pid);
    let secs = 10.0;
    std::thread::sleep(Duration::from_secs_f64(secs));
    let cpu = (cpu_ticks(pid) - c0) as f64 / ticks / secs * 100.0;
    let rss = rss_kib(pid);
    drop(drivers);
    println!("idle daemon, 1 bridge, 100 vhost-user ports (10 connected, quiet): RSS {:.1} MiB (empty daemon {:.1} MiB), CPU {cpu:.2}% over {secs} s",
        rss as f64 / 1024.0, base as f64 / 1024.0);
    Ok(())
}

/// Options that take a value, and switches; anything else (a typo, `--help`) prints the
/// usage instead of starting a run that takes minutes.
const VALUE_OPTS: &[&str] = &[
    "--runs",
    "--runs-per-start",
    "--secs",
    "--sizes",
    "--backends",
    "--busy-poll-us",
    "--build",
    "--guest",
    "--vu-gen",
    "--placement",
    "--placement-wait",
    "--probe",
];
const SWITCHES: &[&str] = &["--no-mrg-rxbuf", "--guest-hugepages", "--idle", "--gso", "--callgrind"];

/// The command line, checked: every option known, every value present (not another
/// option), no option given twice (but `--build`).
#[derive(Debug, Default)]
struct Args {
    values: BTreeMap<String, String>,
    builds: Vec<String>,
    switches: Vec<String>,
}

impl Args {
    fn parse(args: &[String]) -> std::result::Result<Args, String> {
        let mut a = Args::default();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if VALUE_OPTS.contains(&k.as_str()) {
                let v = it.next().filter(|v| !v.starts_with("--")).ok_or_else(|| format!("{k} needs a value"))?;
                if k == "--build" {
                    a.builds.push(v.clone());
                } else if a.values.insert(k.clone(), v.clone()).is_some() {
                    return Err(format!("{k} given twice"));
                }
            } else if SWITCHES.contains(&k.as_str()) {
                a.switches.push(k.clone());
            } else {
                return Err(format!("unknown argument {k}"));
            }
        }
        Ok(a)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(String::as_str)
    }

    fn has(&self, k: &str) -> bool {
        self.switches.iter().any(|s| s == k)
    }

    /// The value of `k` parsed, `default` if absent; an error if it does not parse.
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow::anyhow!("{k}: not a number: {v}")),
        }
    }
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match Args::parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            let usage: String = include_str!("bench-vhost.rs")
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or(l.trim_start_matches("//!"))))
                .collect();
            if argv.iter().any(|a| a == "--help" || a == "-h") {
                print!("{usage}");
                return Ok(());
            }
            eprint!("{usage}");
            eprintln!("bench-vhost: {e}");
            std::process::exit(2);
        }
    };
    let list = |k: &str, default: &str| -> Vec<String> {
        args.get(k).unwrap_or(default).split(',').map(str::to_owned).collect()
    };
    let placement_wait: f64 = args.num("--placement-wait", 300.0)?;
    let o = Opts {
        runs: args.num("--runs", 5)?,
        runs_per_start: args.num("--runs-per-start", 1usize)?.max(1),
        secs: args.num("--secs", 3.0)?,
        sizes: list("--sizes", "64,512,1518")
            .iter()
            .map(|s| s.parse().with_context(|| format!("--sizes: not a frame size: {s}")))
            .collect::<Result<_>>()?,
        backends: list("--backends", "vmnetd,ovs,testpmd"),
        busy_poll_us: args.get("--busy-poll-us").map(|_| args.num("--busy-poll-us", 0)).transpose()?,
        no_mrg_rxbuf: args.has("--no-mrg-rxbuf"),
        guest_hugepages: args.has("--guest-hugepages"),
        builds: args
            .builds
            .iter()
            .map(|b| {
                let (l, p) = b.split_once('=').with_context(|| format!("--build LABEL=PATH, not {b}"))?;
                Ok((l.to_owned(), PathBuf::from(p)))
            })
            .collect::<Result<_>>()?,
        guests: list("--guest", "driver,dpdk,dpdk-noorder").iter().map(|g| Guest::parse(g)).collect::<Result<_>>()?,
        vu_gen: args.get("--vu-gen").map_or_else(default_vu_gen, PathBuf::from),
        near_only: match args.get("--placement") {
            None | Some("near") => true,
            Some("any") => false,
            Some(other) => bail!("--placement near|any, not {other}"),
        },
        placement_wait: Duration::try_from_secs_f64(placement_wait)
            .with_context(|| format!("--placement-wait: not a duration: {placement_wait}"))?,
    };
    let _ = bin("vmnetd");
    let modes = ["--idle", "--gso", "--probe"];
    if !modes.iter().any(|m| args.has(m) || args.get(m).is_some()) && o.guests.iter().any(|g| *g != Guest::Driver) {
        // Fail before any backend starts.
        o.vu_gen()?;
    }
    if args.get("--probe").is_some() {
        let secs: f64 = args.num("--probe", 0.0)?;
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            let ns = core_round_trip_ns(Duration::from_millis(250)).unwrap_or(f64::NAN);
            println!("{:6.1} s  {}", t0.elapsed().as_secs_f64(), show_ns(ns));
        }
        return Ok(());
    }
    if args.has("--idle") {
        return idle();
    }
    if args.has("--gso") {
        return gso(&o);
    }
    if args.has("--callgrind") {
        return callgrind(&o);
    }
    throughput(&o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_and_one_outlier_does_not_widen_the_spread() {
        let v = [4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert_eq!(quantile(&[], 0.5), 0.0);
        let steady = [10.0, 10.2, 9.8, 10.1, 9.9];
        let one_bad_round = [10.0, 10.2, 9.8, 10.1, 5.0];
        assert!((iqr_share(&steady) - 0.02).abs() < 1e-9);
        assert!(iqr_share(&one_bad_round) < 0.05);
    }

    #[test]
    fn placement_tells_far_runs_by_the_nearest_round_trip_seen() {
        // Round trips as probed on the development VM: 60-130 ns near, 360-420 ns far.
        let mut p = Placement::new(true, Duration::ZERO);
        assert!(p.is_near(1e6), "nothing probed yet: nothing is far");
        p.nearest = 62.0;
        assert!(p.is_near(62.0) && p.is_near(130.0));
        assert!(!p.is_near(365.0));
        assert!(Placement::near(128.0, 58.0) && !Placement::near(393.0, 58.0));
        // A low outlier does not make the near ones far: under 200 ns is near.
        assert!(Placement::near(130.0, 40.0));
        // A failed probe is not near.
        assert!(!p.is_near(f64::NAN));
        // Runs and ratios: the near ones, unless there are none.
        let run = |mpps: f64, c2c: f64| Sample { frames: 0, mpps, gbps: 0.0, cpu: 1.0, full: None, steal: 0.0, c2c };
        let a = [run(26.0, 80.0), run(11.0, 380.0), run(27.0, 90.0)];
        let b = [run(25.0, 85.0), run(25.0, 90.0), run(12.0, 390.0)];
        assert_eq!(near_runs(&a, 62.0).len(), 2);
        assert_eq!(paired_ratios(&a, &b, 62.0), [26.0 / 25.0]);
        let far = [run(11.0, 380.0)];
        assert_eq!(near_runs(&far, 62.0).len(), 1);
        assert_eq!(paired_ratios(&far, &far, 62.0), [1.0]);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn unknown_arguments_missing_values_and_repeats_are_caught() {
        let a = |v: &[&str]| Args::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let ok = a(&["--runs", "3", "--gso", "--build", "x=y", "--build", "z=w"]).unwrap();
        assert_eq!((ok.get("--runs"), ok.has("--gso"), ok.builds.len()), (Some("3"), true, 2));
        assert_eq!(ok.num("--runs", 5).unwrap(), 3);
        assert_eq!(ok.num("--secs", 3.0).unwrap(), 3.0);
        assert!(a(&["--help"]).is_err());
        assert!(a(&["--runs", "3", "--sise", "64"]).is_err());
        assert!(a(&["--secs"]).is_err());
        assert!(a(&["--secs", "--gso"]).is_err(), "an option is not a value");
        assert!(a(&["--runs", "3", "--runs", "4"]).is_err(), "given twice");
        assert!(a(&["--runs", "x"]).unwrap().num("--runs", 5usize).is_err());
    }
}
