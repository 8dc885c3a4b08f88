//! The control socket against untrusted clients: what a non-root member of the socket's
//! group may and may not do, idle connections that must not lock root out, and a capture
//! reader that never reads.
#![cfg(feature = "root-tests")]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmnetd_tests::*;
use vmnetd_vhost::driver::Config;
use vmnetd_vhost::virtio_net::VnetHdr;

/// `nobody:nogroup` on Debian.
const NOBODY: (u32, u32) = (65534, 65534);

/// A daemon whose socket group is `nogroup` (so `nobody` may connect), with short idle
/// timeouts and a small capture budget.
fn daemon(dir: &Path, extra_toml: &str) -> Daemon {
    let cfg = dir.join("vmnetd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket_group = \"nogroup\"\n[control]\nidle_timeout_secs = 2\nmax_connections_per_user = 8\nmax_ports_per_user = 3\n{extra_toml}"
        ),
    )
    .unwrap();
    Daemon::start_with(dir, &["--config", cfg.to_str().unwrap()])
}

#[track_caller]
fn refused(o: &Out, want: &str) {
    let line = o.failed_one_line();
    assert_eq!(o.code, Some(5), "{line}");
    assert!(line.contains(want), "want {want:?}: {line}");
}

#[test]
fn a_group_member_may_read_and_manage_only_what_is_theirs() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let d = daemon(dir.path(), "");
        let as_nobody = |args: &[&str]| d.cli_as(NOBODY.0, NOBODY.1, args);
        d.cli(&["bridge", "add", "br0"]).ok();
        d.cli(&["mktap", "roottap"]).ok();
        d.cli(&["port", "add", "br0", "rootport", "--netdev", "roottap", "--vlan", "10"]).ok();

        // Reading is allowed.
        for args in [
            &["status"][..],
            &["tap", "list"],
            &["bridge", "list"],
            &["port", "list"],
            &["stats"],
            &["fdb", "show", "br0"],
        ] {
            as_nobody(args).ok();
        }
        // Own TAPs, and ports on them; own vhost-user sockets in the run dir.
        as_nobody(&["mktap", "nbtap", "--vnet-hdr"]).ok();
        let taps = d.cli(&["--json", "tap", "list"]).json();
        let t = taps.as_array().unwrap().iter().find(|t| t["name"] == "nbtap").unwrap();
        assert_eq!(t["owner"]["id"], 65534, "{t}");
        as_nobody(&["port", "add", "br0", "p1", "--netdev", "nbtap", "--vlan", "20"]).ok();
        // A plain name goes to their own directory, RUN_DIR/users/UID/.
        as_nobody(&["port", "add", "br0", "p4", "--vhost-user", "p4.sock"]).ok();
        let m = std::fs::metadata(dir.path().join("run/users/65534/p4.sock")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (65534, 0o660));
        let dm = std::fs::metadata(dir.path().join("run/users/65534")).unwrap();
        assert_eq!((dm.uid(), dm.gid(), dm.mode() & 0o777), (0, 65534, 0o750));

        // Everything else is refused, in one line, with exit code 5.
        refused(&as_nobody(&["bridge", "add", "br1"]), "Only root may add bridges");
        refused(&as_nobody(&["bridge", "del", "br0"]), "Only root may remove bridges");
        refused(&as_nobody(&["fdb", "flush", "br0"]), "Only root may flush");
        refused(&as_nobody(&["mktap", "t2", "--user", "root"]), "must be owned by you");
        refused(&as_nobody(&["mktap", "t3", "--group", "root"]), "not a member of group root");
        refused(&as_nobody(&["rmtap", "roottap"]), "TAP roottap is not yours");
        refused(
            &as_nobody(&["port", "add", "br0", "p2", "--netdev", "roottap"]),
            "not a TAP declared in vmnetd with you",
        );
        refused(&as_nobody(&["port", "add", "br0", "p3", "--netdev", "lo"]), "not a TAP declared in vmnetd with you");
        refused(&as_nobody(&["port", "add", "br0", "p5", "--internal"]), "Only root may add internal ports");
        refused(&as_nobody(&["port", "add", "br0", "p6", "--vhost-user", "/tmp/p6.sock"]), "must be in");
        refused(&as_nobody(&["port", "add", "br0", "p7", "--vhost-user", "../p7.sock"]), "must be in");
        // Not in the libvirt hook's directories, not in root's run dir, not anyone else's.
        for path in ["libvirt/web/net0.sock", "sub/p.sock"] {
            refused(&as_nobody(&["port", "add", "br0", "p9", "--vhost-user", path]), "must be in");
        }
        let root_run = dir.path().join("run/p9.sock");
        refused(&as_nobody(&["port", "add", "br0", "p9", "--vhost-user", root_run.to_str().unwrap()]), "must be in");
        assert!(!dir.path().join("run/libvirt").exists(), "a non-root request made the hook's directory");
        // Not with the hook's label.
        refused(
            &as_nobody(&["port", "add", "br0", "p10", "--vhost-user", "p10.sock", "--external-id", "created-by=x"]),
            "Only root may label",
        );
        refused(
            &as_nobody(&["port", "add", "br0", "p8", "--vhost-user", "p8.sock", "--owner", "root"]),
            "owned by you",
        );
        refused(&as_nobody(&["port", "del", "br0", "rootport"]), "was not added by you");
        refused(&as_nobody(&["capture", "br0", "rootport", "-c", "1"]), "was not added by you");
        assert!(!Path::new("/tmp/p6.sock").exists());

        // At most max_ports_per_user (3 here) ports.
        as_nobody(&["port", "add", "br0", "p11", "--vhost-user", "p11.sock"]).ok();
        refused(&as_nobody(&["port", "add", "br0", "p12", "--vhost-user", "p12.sock"]), "the most a user may have");
        as_nobody(&["port", "del", "br0", "p11"]).ok();
        // What they made, they may remove; root sees it all.
        as_nobody(&["port", "del", "br0", "p1"]).ok();
        as_nobody(&["port", "del", "br0", "p4"]).ok();
        as_nobody(&["rmtap", "nbtap"]).ok();
        let ports = d.cli(&["--json", "port", "list"]).json();
        assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
        d.cli(&["port", "del", "br0", "rootport"]).ok();
    });
}

#[test]
fn idle_connections_do_not_lock_out_root_and_are_dropped() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let d = daemon(dir.path(), "");
        let base_fds = d.fd_count();
        // 300 idle connections from nobody (past its cap of 8 they are refused at once)...
        let mut holder = Command::new(bin("holdconns"))
            .args([d.socket.to_str().unwrap(), "300", "30"])
            .uid(NOBODY.0)
            .gid(NOBODY.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // ...and 300 from root, which are never refused.
        let root_idle: Vec<UnixStream> = (0..300).map(|_| UnixStream::connect(&d.socket).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        // Root is served at once.
        let t = Instant::now();
        d.cli(&["status"]).ok();
        d.cli(&["bridge", "add", "br0"]).ok();
        assert!(t.elapsed() < Duration::from_secs(1), "root waited {:?}", t.elapsed());
        // nobody is over its cap: told so in one line.
        refused(&d.cli_as(NOBODY.0, NOBODY.1, &["status"]), "Too many connections");
        // Idle clients are dropped after the idle timeout (2 s): the daemon's fds go back.
        assert!(
            wait_until(Duration::from_secs(10), || d.fd_count() <= base_fds + 5),
            "{} fds, {base_fds} before",
            d.fd_count()
        );
        d.cli_as(NOBODY.0, NOBODY.1, &["status"]).ok();
        drop(root_idle);
        drop(holder.stdin.take());
        let _ = holder.wait();
    });
}

/// A capture whose reader never reads: the copies waiting for it are bounded by the
/// capture budget (4 MiB here), and the reader is dropped after the idle timeout.
#[test]
fn a_capture_that_is_never_read_stays_within_its_budget() {
    require_root().unwrap();
    in_netns(|| {
        let dir = test_dir();
        let d = daemon(dir.path(), "capture_memory_mib = 4\n");
        d.cli(&["bridge", "add", "br0"]).ok();
        for p in ["va", "vb"] {
            d.cli(&["port", "add", "br0", p, "--vhost-user", &format!("{p}.sock")]).ok();
        }
        let run = dir.path().join("run");
        let big = Config { buf_len: 64 * 1024, ..Default::default() };
        let mut a = connect_vhost(&run.join("va.sock"), &big, Duration::from_secs(5)).unwrap();
        let mut b = connect_vhost(&run.join("vb.sock"), &big, Duration::from_secs(5)).unwrap();
        let mut cap = UnixStream::connect(&d.socket).unwrap();
        cap.write_all(b"{\"v\":1,\"op\":\"capture\",\"bridge\":\"br0\",\"port\":\"va\",\"snaplen\":65535}\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let before = d.rss_kib();
        // 2000 frames of 60 KB (120 MB) through the captured port; the reader reads nothing.
        let mut f = vec![0x33u8; 60_000];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0x30, 1]);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        let mut sent = 0;
        let mut peak = before;
        let end = Instant::now() + Duration::from_secs(30);
        while sent < 2000 && Instant::now() < end {
            sent += a.send(0, &VnetHdr::default(), &[&f, &f, &f, &f]);
            let mut got = Vec::new();
            b.recv(0, &mut got);
            peak = peak.max(d.rss_kib());
        }
        assert_eq!(sent, 2000);
        let grown = peak.saturating_sub(before);
        assert!(grown < 24 * 1024, "the daemon grew {grown} KiB behind a capture that is never read");
        // The reader that never reads is dropped.
        assert!(d.wait_log("client does not read", Duration::from_secs(10)), "{}", d.log_text());
        d.cli(&["status"]).ok();
    });
}
