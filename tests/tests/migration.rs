//! Live migration of a QEMU guest on a vhost-user port (QEMU 7.2, TCG, 256 MiB + 64 KiB: see [`guest_kib`]), end to end:
//! guest G pings peer P at 50/s while P pings G at 50/s and streams 32 MiB over TCP into G
//! (so the datapath keeps writing into G's memory during the migration); G is migrated to a
//! second QEMU (`-incoming unix:…`, HMP `migrate -d`) and afterwards checks the stream's
//! MD5: a page vmnetd wrote and did not log would reach the destination stale. P is a
//! namespace on a veth port: a peer that keeps running measures the wall-clock outage
//! (G's own clock stops during the switch-over).
//!
//! Cases: vmnetd in server mode onto the same socket (both QEMUs connected at once, the
//! port follows the one that runs the guest), server mode onto a second port on the same
//! VLAN, and client mode onto a second port (QEMU listens) with a guest that does not
//! announce itself (`guest_announce=off`: QEMU sends SEND_RARP and vmnetd announces it).
#![cfg(feature = "root-tests")]

use std::path::Path;
use std::time::{Duration, Instant};

use vmnetd_tests::guest::{initramfs, Guest, Monitor};
use vmnetd_tests::topo::Ns;
use vmnetd_tests::*;

const MAC: &str = "52:54:00:18:00:02";
/// The guest's virtio-net device in QEMU's QOM tree (HMP `info virtio-*`).
const VIRTIO_NET: &str = "/machine/peripheral-anon/device[0]/virtio-backend";
/// Bytes P streams into G during the migration.
const DATA: usize = 32 << 20;

const GUEST: &str = "echo 1 > /proc/sys/kernel/unknown_nmi_panic\n\
ip link set eth0 up\n\
ip addr add 10.0.0.2/24 dev eth0\n\
nc -l -p 5000 > /tmp/data &\n\
echo GUEST-READY\n\
ping -i 0.02 -c 1250 10.0.0.1 > /tmp/ping.txt 2>&1\n\
echo \"G-PING $(grep transmitted /tmp/ping.txt)\"\n\
wait\n\
echo \"DATA $(md5sum /tmp/data)\"\n\
sleep 600\n";

/// Guest memory in KiB: 256 MiB and 64 KiB, deliberately not a multiple of 256 KiB.
///
/// QEMU before 9.0 under TCG loses guest stores during a migration: when it syncs the dirty
/// bitmap of a RAM block whose offset and length are multiples of 64 pages (the fast path
/// in `cpu_physical_memory_sync_dirty_bitmap`, include/exec/ram_addr.h in 7.2), it clears
/// the bits without marking the vCPUs' TLB entries not-dirty again, so later stores through
/// those entries are not logged (fixed upstream by 03bfc2188f, "physmem: Fix migration
/// dirty bitmap coherency with TCG memory access", QEMU 9.0; Debian 12 ships 7.2). Here
/// that showed up as a destination guest that crashed after about one migration in eight,
/// with stale per-CPU pages, kernel counters one step behind and a TX frame missing its
/// Ethernet header (caught by `MIGRATION_MEMCMP=1`), whichever switch the guest was on. A
/// length off that grid sends QEMU 7.2 down its per-page path, which does reset the TLB.
/// KVM tracks dirty pages itself and is not affected. `MIGRATION_GUEST_KIB=262144`
/// reproduces the bug.
fn guest_kib() -> usize {
    std::env::var("MIGRATION_GUEST_KIB").ok().and_then(|v| v.parse().ok()).unwrap_or((256 << 10) + 64)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    /// vmnetd listens; the destination connects to the same socket.
    ServerSameSocket,
    /// vmnetd listens; the destination connects to a second port's socket.
    ServerSecondPort,
    /// QEMU listens; vmnetd connects to the destination's socket (a second port), and the
    /// guest does not announce itself.
    ClientSecondPort,
}

#[derive(Debug)]
struct Report {
    case: Case,
    load: bool,
    total_ms: u64,
    downtime_ms: u64,
    /// P → G: sent, answered, longest gap between answers (ms).
    p_sent: u64,
    p_got: u64,
    p_gap_ms: f64,
    /// G → P: sent, answered.
    g_sent: u64,
    g_got: u64,
}

fn vhost_args(sock: &Path, qemu_listens: bool, announce: bool) -> Vec<String> {
    let chardev = if qemu_listens {
        format!("socket,id=c0,path={},server=on,wait=off", sock.display())
    } else {
        format!("socket,id=c0,path={},reconnect=1", sock.display())
    };
    let mut dev = format!("virtio-net-pci,netdev=n0,mac={MAC},vectors=0");
    if !announce {
        dev.push_str(",guest_announce=off");
    }
    vec!["-chardev".into(), chardev, "-netdev".into(), "vhost-user,id=n0,chardev=c0".into(), "-device".into(), dev]
}

/// A number after `key` in `text` (`"total time: 812 ms"`).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// `N packets transmitted, M (packets )?received` → (N, M).
fn ping_summary(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let sent = line.split_whitespace().next()?.parse().ok()?;
    let got = line.split(", ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some((sent, got))
}

/// Longest gap between two answers in iputils `ping -D` output (ms).
fn longest_gap(text: &str) -> f64 {
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    times.windows(2).map(|w| (w[1] - w[0]) * 1000.0).fold(0.0, f64::max)
}

fn vhost_state(d: &Daemon, port: &str) -> serde_json::Value {
    let ports = d.cli(&["--json", "port", "list"]).json();
    ports.as_array().unwrap().iter().find(|p| p["name"] == port).cloned().unwrap_or_default()
}

/// The switch the guests are on: vmnetd, or (the reference) OVS-DPDK.
trait Switch {
    /// A vhost-user port on VLAN 10; `client`: the switch connects (QEMU listens).
    fn add_port(&self, name: &str, sock: &Path, client: bool);
    fn del_port(&self, name: &str);
    /// Waits until `port` has seen `n` frontend connections.
    fn wait_connected(&self, port: &str, n: u64);
    /// Checks after a migration to `port` (FDB, announcements), `rarp`: the guest did not
    /// announce itself; `moved`: it left another port.
    fn check_after(&self, port: &str, rarp: bool, moved: bool);
    fn log(&self) -> String;
    /// The switch's view of its ports (for a failure's report).
    fn dump(&self) -> String {
        String::new()
    }
}

impl Switch for Daemon {
    fn add_port(&self, name: &str, sock: &Path, client: bool) {
        let mut args = vec!["port", "add", "br0", name, "--vhost-user", sock.to_str().unwrap(), "--vlan", "10"];
        if client {
            args.extend(["--mode", "client"]);
        }
        self.cli(&args).ok();
    }
    fn del_port(&self, name: &str) {
        self.cli(&["port", "del", "br0", name]).ok();
    }
    fn wait_connected(&self, port: &str, n: u64) {
        assert!(
            wait_until(Duration::from_secs(60), || vhost_state(self, port)["vhost"]["connections"]
                .as_u64()
                .unwrap_or(0)
                >= n),
            "destination not connected: {}\n{}",
            vhost_state(self, port),
            self.log_text()
        );
    }
    fn check_after(&self, port: &str, rarp: bool, moved: bool) {
        if moved {
            // The source port forgot what it had learned as soon as the guest left it.
            assert!(self.log_text().contains("the guest migrated away"), "{}", self.log_text());
        }
        let fdb = self.cli(&["--json", "fdb", "show", "br0"]).stdout;
        assert!(fdb.contains(port), "{fdb}");
        if rarp {
            assert!(self.log_text().contains("announcing the guest's MAC (SEND_RARP)"), "{}", self.log_text());
        }
        assert!(!self.log_text().contains("panicked"), "{}", self.log_text());
    }
    fn log(&self) -> String {
        self.log_text()
    }
    fn dump(&self) -> String {
        self.cli(&["--json", "port", "list"]).stdout
    }
}

/// After a migration into a destination started with `-S`: the source (stopped since the
/// switch-over) and the destination (not yet running) must hold the same guest memory, page
/// for page. A page the switch wrote into the source after QEMU last read the dirty log, or
/// wrote without logging it, differs. Then the destination continues.
fn compare_memory(src: &mut Monitor, dst_mon: &Path, wd: &Path) {
    let ram = guest_kib() << 10;
    let mut dst = Monitor::connect(dst_mon);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let st = dst.cmd("info status");
            st.contains("paused") && !st.contains("inmigrate")
        }),
        "the destination did not finish loading: {}",
        dst.cmd("info status")
    );
    let (a, b) = (wd.join("src.mem"), wd.join("dst.mem"));
    // Expected "postmigrate": a source that runs again after its last page copy diverges.
    let src_status = src.cmd("info status");
    let sa = src.cmd(&format!("pmemsave 0 {ram} \"{}\"", a.display()));
    let sb = dst.cmd(&format!("pmemsave 0 {ram} \"{}\"", b.display()));
    let (x, y) = (
        std::fs::read(&a).unwrap_or_else(|e| panic!("{e}: {sa}")),
        std::fs::read(&b).unwrap_or_else(|e| panic!("{e}: {sb}")),
    );
    let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    assert_eq!((x.len(), y.len()), (ram, ram), "pmemsave");
    let differ: Vec<String> = x
        .chunks(4096)
        .zip(y.chunks(4096))
        .enumerate()
        .filter(|(_, (p, q))| p != q)
        .map(|(i, (p, q))| {
            let at = p.iter().zip(q.iter()).position(|(u, v)| u != v).unwrap_or(0);
            let end = 4096 - p.iter().rev().zip(q.iter().rev()).position(|(u, v)| u != v).unwrap_or(0);
            let n = p.iter().zip(q.iter()).filter(|(u, v)| u != v).count();
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let span = at & !15..end.min((at & !15) + 96);
            format!(
                "{:#x} ({n} bytes differ in +{at:#x}..+{end:#x})\n  src +{:#x}: {}\n  dst +{:#x}: {}",
                i * 4096,
                span.start,
                hex(&p[span.clone()]),
                span.start,
                hex(&q[span.clone()])
            )
        })
        .collect();
    let rings: Vec<String> =
        (0..2).map(|q| dst.cmd(&format!("info virtio-vhost-queue-status {VIRTIO_NET} {q}"))).collect();
    assert!(
        differ.is_empty(),
        "{} guest pages differ between source ({}) and destination after the migration: {}\n{}",
        differ.len(),
        src_status.trim(),
        differ.iter().take(40).cloned().collect::<Vec<_>>().join("\n"),
        rings.join("\n")
    );
    let out = dst.cmd("cont");
    assert!(!out.contains("rror"), "cont: {out}");
}

/// Migrates G once. `load`: P streams into G during the migration (else after it); either
/// way G checks the stream.
fn migrate(d: &dyn Switch, dir: &Path, p: &Ns, case: Case, load: bool, announce: bool) -> Report {
    let tag = format!("{case:?}{}", if load { "-loaded" } else { "" }).to_lowercase();
    let wd = dir.join(&tag);
    std::fs::create_dir_all(&wd).unwrap();
    let client = case == Case::ClientSecondPort;
    let (src_port, dst_port) = match case {
        Case::ServerSameSocket => ("g", "g"),
        _ => ("g", "g2"),
    };
    let sock = |port: &str| wd.join(format!("{port}.sock"));
    for port in if src_port == dst_port { vec![src_port] } else { vec![src_port, dst_port] } {
        d.add_port(port, &sock(port), client);
    }
    let init = initramfs(&wd, "g", GUEST);
    let (src_mon, dst_mon, mig) = (wd.join("src.mon"), wd.join("dst.mon"), wd.join("mig.sock"));
    let mut src_args = vhost_args(&sock(src_port), client, announce);
    src_args.extend(Monitor::args(&src_mon));
    let mut src = Guest::boot_with_memory(&format!("{tag}-src"), &init, &src_args, None, guest_kib());
    src.wait_for("GUEST-READY", Duration::from_secs(240));
    let mut dst_args = vhost_args(&sock(dst_port), client, announce);
    dst_args.extend(Monitor::args(&dst_mon));
    dst_args.extend(["-incoming".into(), format!("unix:{}", mig.display())]);
    // MIGRATION_MEMCMP=1: compare the guest's memory at source and destination after the
    // switch-over (costs seconds of outage: the loss figures are then meaningless).
    let compare = std::env::var_os("MIGRATION_MEMCMP").is_some();
    if compare {
        // The destination stays paused after the migration until the memories are compared.
        dst_args.push("-S".into());
    }
    let mut dst = Guest::boot_with_memory(&format!("{tag}-dst"), &init, &dst_args, None, guest_kib());
    // The destination's vhost-user connection is up before the migration starts (on the
    // same socket: a second connection while the source runs).
    d.wait_connected(dst_port, if case == Case::ServerSameSocket { 2 } else { 1 });
    assert!(
        wait_until(Duration::from_secs(30), || p.ping("10.0.0.2", 1)),
        "G answers before the migration:\n{}\n{}",
        src.output(),
        d.log()
    );

    // Traffic both ways, and a stream into G.
    let pinger = p.spawn("ping", &["-D", "-i", "0.02", "-w", "20", "10.0.0.2"]);
    let stream = || {
        p.spawn(
            "/usr/bin/python3",
            &[
                "-c",
                &format!(
                    "import socket\n\
                     s=socket.create_connection(('10.0.0.2',5000))\n\
                     b=bytes((i*7+i//4096)%251 for i in range(1<<20))\n\
                     [s.sendall(b) for _ in range({})]\n\
                     s.close()",
                    DATA >> 20
                ),
            ],
        )
    };
    let mut sender = load.then(stream);
    std::thread::sleep(Duration::from_secs(3));

    let mut mon = Monitor::connect(&src_mon);
    mon.cmd("migrate_set_parameter max-bandwidth 1G");
    // What an admin who cares about the switch-over sets (QEMU allows 300 ms by default,
    // which then dominates the loss): the outage left is the switch-over itself.
    mon.cmd("migrate_set_parameter downtime-limit 20");
    let out = mon.cmd(&format!("migrate -d unix:{}", mig.display()));
    assert!(!out.contains("rror"), "migrate: {out}");
    let started = Instant::now();
    let info = loop {
        let info = mon.cmd("info migrate");
        if info.contains("Migration status: completed") {
            break info;
        }
        assert!(
            !info.contains("Migration status: failed") && started.elapsed() < Duration::from_secs(120),
            "migration did not complete: {info}\n{}\n{}",
            dst.output(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    if compare {
        compare_memory(&mut mon, &dst_mon, &wd);
    }
    let sender = sender.take().unwrap_or_else(stream);
    let total_ms = number_after(&info, "total time:").unwrap_or(0);
    let downtime_ms = number_after(&info, "downtime:").unwrap_or(0);

    // The guest goes on at the destination: its own pings, then the stream's checksum.
    let waited = Instant::now();
    while !dst.output().contains("G-PING") && waited.elapsed() < Duration::from_secs(120) && dst.is_running() {
        std::thread::sleep(Duration::from_millis(200));
    }
    if !dst.output().contains("G-PING") {
        let log = d.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        // The guest's rings as QEMU sees them in guest memory, and the switch's view; what
        // the guest's CPU does: a few samples of its registers, then an NMI, which the guest
        // (unknown_nmi_panic) answers with a backtrace on its console.
        let mut rings = Vec::new();
        if dst.is_running() {
            let mut dmon = Monitor::connect(&dst_mon);
            for q in 0..2 {
                rings.push(dmon.cmd(&format!("info virtio-queue-element {VIRTIO_NET} {q}")));
                rings.push(dmon.cmd(&format!("info virtio-vhost-queue-status {VIRTIO_NET} {q}")));
            }
            rings.push(dmon.cmd("info status"));
            for _ in 0..3 {
                let regs = dmon.cmd("info registers");
                let keep = |l: &&str| l.starts_with("RAX") || l.starts_with("RIP") || l.contains("HLT");
                rings.push(regs.lines().filter(keep).collect::<Vec<_>>().join("\n"));
                std::thread::sleep(Duration::from_millis(300));
            }
            dmon.cmd("nmi");
            std::thread::sleep(Duration::from_secs(3));
        } else {
            rings.push("the destination QEMU exited".into());
        }
        panic!(
            "the guest did not finish its pings at the destination\nsource: {}\ndestination: {}\nrings and CPU: {}\nports: {}\ndaemon log (last lines first):\n{}",
            src.output(),
            dst.output(),
            rings.join("\n"),
            d.dump(),
            tail.join("\n")
        );
    }
    let console = dst.output();
    let (g_sent, g_got) = console
        .lines()
        .find_map(|l| l.strip_prefix("G-PING "))
        .and_then(ping_summary)
        .unwrap_or_else(|| panic!("no ping summary from G:\n{console}"));
    let ping_out = {
        let o = pinger.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (p_sent, p_got) = ping_summary(&ping_out).unwrap_or_else(|| panic!("no ping summary from P:\n{ping_out}"));
    let p_gap_ms = longest_gap(&ping_out);
    let sent = sender.wait_with_output().unwrap();
    assert!(
        sent.status.success(),
        "the stream into G failed: {}\nP's pings: {p_got} of {p_sent}, G's: {g_got} of {g_sent}\n{}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        dst.output(),
        d.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    let console = dst.wait_for("DATA ", Duration::from_secs(120));
    let want = {
        let gen = run(
            "/usr/bin/python3",
            [
                "-c",
                &format!(
                    "import hashlib\nb=bytes((i*7+i//4096)%251 for i in range(1<<20))\nh=hashlib.md5()\n\
                     [h.update(b) for _ in range({})]\nprint(h.hexdigest())",
                    DATA >> 20
                ),
            ],
        );
        gen.stdout.trim().to_owned()
    };
    let got = console.lines().find_map(|l| l.strip_prefix("DATA ")).unwrap_or("").split_whitespace().next();
    assert_eq!(got, Some(want.as_str()), "the stream G received during the migration is corrupt:\n{console}");

    // The source quits; the guest keeps working at the destination.
    mon.cmd("quit");
    assert!(wait_until(Duration::from_secs(20), || !src.is_running()));
    assert!(p.ping("10.0.0.2", 5), "G after the source quit:\n{}\n{}", dst.output(), d.log());
    d.check_after(dst_port, !announce, src_port != dst_port);
    drop(dst);
    d.del_port(src_port);
    if dst_port != src_port {
        d.del_port(dst_port);
    }
    let r = Report { case, load, total_ms, downtime_ms, p_sent, p_got, p_gap_ms, g_sent, g_got };
    eprintln!(
        "MIGRATION {:?}{}{}: total {} ms, downtime {} ms; P->G lost {} of {} (longest gap {:.0} ms); G->P lost {} of {}",
        r.case,
        if r.load { " (stream into G)" } else { "" },
        if announce { "" } else { " (guest_announce=off)" },
        r.total_ms,
        r.downtime_ms,
        r.p_sent - r.p_got,
        r.p_sent,
        r.p_gap_ms,
        r.g_sent - r.g_got,
        r.g_sent
    );
    r
}

#[test]
fn guests_migrate_live_in_server_and_client_mode_without_corruption() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let p = Ns::new("p");
        p.veth("vp", "eth0", Some("10.0.0.1/24"));
        d.cli(&["port", "add", "br0", "p", "--netdev", "vp", "--vlan", "10"]).ok();
        let mut reports = Vec::new();
        for case in [Case::ServerSameSocket, Case::ServerSecondPort] {
            reports.push(migrate(&d, dir.path(), &p, case, false, true));
        }
        // A guest that does not announce itself: QEMU sends SEND_RARP.
        reports.push(migrate(&d, dir.path(), &p, Case::ClientSecondPort, false, false));
        // Under load: the datapath writes into G throughout; the stream must arrive intact.
        // The guest does not announce itself either: QEMU's SEND_RARP may come before the
        // destination starts its rings (while its connection still waits).
        migrate(&d, dir.path(), &p, Case::ServerSameSocket, true, false);
        for r in &reports {
            // Goal: at most what testpmd loses (≤ 1 each way). Measured here: 0 (frames for
            // G during the switch-over are held by its port, G's own pings wait with its
            // clock); the numbers are printed for the README.
            assert!(r.p_sent - r.p_got <= 1, "{r:?}");
            assert!(r.g_sent - r.g_got <= 1, "{r:?}");
        }
    });
}

/// A private OVS-DPDK 3.1 (`datapath_type=netdev`, NORMAL): its own database, run directory
/// and DPDK file prefix; P's veth as a system port, the guest's ports `dpdkvhostuserclient`
/// (OVS connects, QEMU listens) on VLAN 10. Needs 2 MiB huge pages (reserved by the caller).
struct Ovs {
    dir: tempfile::TempDir,
    pids: Vec<u32>,
}

impl Ovs {
    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.dir.path().join("db.sock").display());
        let mut a = vec![db.as_str(), "--timeout=30"];
        a.extend(args);
        run("ovs-vsctl", a).ok().to_owned()
    }

    fn start() -> Ovs {
        let dir = test_dir();
        let d = dir.path().to_owned();
        let env = |c: &mut std::process::Command| {
            c.env("OVS_RUNDIR", &d).env("OVS_LOGDIR", &d).env("OVS_DBDIR", &d).env("OVS_SYSCONFDIR", &d);
        };
        let db = d.join("conf.db");
        let mut c = std::process::Command::new("ovsdb-tool");
        c.arg("create").arg(&db).arg("/usr/share/openvswitch/vswitch.ovsschema");
        env(&mut c);
        run_cmd(&mut c).ok();
        let mut c = std::process::Command::new("ovsdb-server");
        c.arg(&db)
            .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
            .arg(format!("--pidfile={}", d.join("ovsdb-server.pid").display()))
            .arg(format!("--log-file={}", d.join("ovsdb-server.log").display()))
            .arg("--detach");
        env(&mut c);
        run_cmd(&mut c).ok();
        let pid = |f: &str| {
            let mut p = None;
            wait_until(Duration::from_secs(10), || {
                p = std::fs::read_to_string(d.join(f)).ok().and_then(|s| s.trim().parse().ok());
                p.is_some()
            });
            p
        };
        let mut ovs = Ovs { pids: pid("ovsdb-server.pid").into_iter().collect(), dir };
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            "other_config:dpdk-socket-mem=1024",
            "other_config:dpdk-lcore-mask=0x1",
            "other_config:pmd-cpu-mask=0x2",
            "other_config:dpdk-extra=--file-prefix=vmnetd-mig-ovs --no-pci",
        ]);
        let mut c = std::process::Command::new("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk");
        c.arg(format!("unix:{}", d.join("db.sock").display()))
            .arg(format!("--pidfile={}", d.join("ovs-vswitchd.pid").display()))
            .arg(format!("--log-file={}", d.join("ovs-vswitchd.log").display()))
            .arg("--detach");
        env(&mut c);
        run_cmd(&mut c).ok();
        ovs.pids.extend(pid("ovs-vswitchd.pid"));
        ovs.vsctl(&["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"]);
        ovs
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            let p = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
            wait_until(Duration::from_secs(10), || nix::sys::signal::kill(p, None).is_err());
        }
        let _ = std::fs::remove_dir_all("/var/run/dpdk/vmnetd-mig-ovs");
    }
}

impl Switch for Ovs {
    fn add_port(&self, name: &str, sock: &Path, client: bool) {
        assert!(client, "the reference uses OVS's vhost-user client ports (dpdkvhostuser is deprecated)");
        let path = format!("options:vhost-server-path={}", sock.display());
        self.vsctl(&[
            "add-port",
            "br0",
            name,
            "tag=10",
            "--",
            "set",
            "Interface",
            name,
            "type=dpdkvhostuserclient",
            &path,
        ]);
    }
    fn del_port(&self, name: &str) {
        self.vsctl(&["del-port", "br0", name]);
    }
    fn wait_connected(&self, _port: &str, _n: u64) {
        // OVS's vhost client retries every second: give it time to find the new socket.
        std::thread::sleep(Duration::from_secs(3));
    }
    fn check_after(&self, _port: &str, _rarp: bool, _moved: bool) {}
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ovs-vswitchd.log")).unwrap_or_default()
    }
}

/// The reference, for `bench/migration.sh` (not run by CI): the same migrations through
/// OVS-DPDK and through vmnetd in one run, separate source and destination ports, the guest
/// announcing itself or not.
#[test]
#[ignore = "a benchmark: bench/migration.sh"]
fn reference_vmnetd_and_ovs_dpdk_in_one_run() {
    in_netns(|| {
        let hp = Path::new("/proc/sys/vm/nr_hugepages");
        let old = read(hp);
        if old.trim().parse::<u64>().unwrap_or(0) < 1024 {
            std::fs::write(hp, "1024").unwrap();
        }
        let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
        let p = Ns::new("p");
        p.veth("vp", "eth0", Some("10.0.0.1/24"));
        let mut out = Vec::new();
        for round in 0..rounds {
            for announce in [true, false] {
                if std::env::var_os("OVS_ONLY").is_none() {
                    let dir = test_dir();
                    let d = Daemon::start(dir.path());
                    d.cli(&["bridge", "add", "br0"]).ok();
                    d.cli(&["port", "add", "br0", "p", "--netdev", "vp", "--vlan", "10"]).ok();
                    let r = migrate(&d, dir.path(), &p, Case::ClientSecondPort, false, announce);
                    out.push(format!("round {round} vmnetd   announce={announce}: {r:?}"));
                }
                if std::env::var_os("VMNETD_ONLY").is_none() {
                    let dir = test_dir();
                    let ovs = Ovs::start();
                    // OVS's userspace datapath cannot complete the partial checksums a
                    // veth hands it (its documented advice: turn TX offloads off there).
                    ip("link set vp up");
                    // Checked: without it every TCP segment P sends reaches G with a bad
                    // checksum and the stream never connects (pings still pass).
                    p.exec("ethtool", &["-K", "eth0", "tx", "off"]).ok();
                    ovs.vsctl(&["add-port", "br0", "vp", "tag=10"]);
                    let r = migrate(&ovs, dir.path(), &p, Case::ClientSecondPort, false, announce);
                    out.push(format!("round {round} ovs-dpdk announce={announce}: {r:?}"));
                    ovs.vsctl(&["del-port", "br0", "vp"]);
                    p.exec("ethtool", &["-K", "eth0", "tx", "on"]).ok();
                }
            }
        }
        std::fs::write(hp, old.trim()).unwrap();
        for l in out {
            println!("{l}");
        }
    });
}
