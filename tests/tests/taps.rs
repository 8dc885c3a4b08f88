//! Persistent TAP/TUN devices through the daemon and the CLI, checked with iproute2.
//! Every test runs in its own network namespace (see `vmnetd_tests::in_netns`).
#![cfg(feature = "root-tests")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmnetd::api::{Op, TapInfo, TapSpec};
use vmnetd::ifname::IfName;
use vmnetd_tests::*;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// A uid/gid with no passwd entry and no relation to the TAPs under test.
const STRANGER: u32 = 65533;

fn tun_attach(name: &str, uid: u32, gid: u32, flags: &[&str]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tun-attach"));
    c.arg(name).args(flags).uid(uid).gid(gid);
    run_cmd(&mut c)
}

fn state_file(d: &Daemon) -> String {
    std::fs::read_to_string(Daemon::state_dir(&d.root).join("state.json")).unwrap_or_default()
}

fn links() -> String {
    // Names and kinds only: counters and operstate may change on their own.
    run("ip", ["-o", "-d", "link", "show"])
        .ok()
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn mktap_flags_are_what_iproute2_reports() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        let name = d.cli(&["mktap", "t0", "--user", "nobody", "--group", "nogroup", "--multi-queue", "--vnet-hdr"]);
        assert_eq!(name.ok().trim(), "t0");
        let det = link_details("t0");
        for want in ["tun type tap", "pi off", "vnet_hdr on", "multi_queue", "persist on", "user nobody group nogroup"]
        {
            assert!(det.contains(want), "missing {want:?} in:\n{det}");
        }
        assert!(det.contains("alias vmnetd"), "{det}");
        assert!(det.contains("UP"), "{det}");

        d.cli(&["mktap", "t1", "--tun", "--user", "65000", "--mtu", "9000"]).ok();
        let det = link_details("t1");
        for want in ["tun type tun", "vnet_hdr off", "persist on", "user 65000", "mtu 9000"] {
            assert!(det.contains(want), "missing {want:?} in:\n{det}");
        }
        assert!(!det.contains("multi_queue"), "{det}");
        let tun_line = det.lines().find(|l| l.trim_start().starts_with("tun type")).unwrap();
        assert!(!tun_line.contains("group"), "no group was asked for:\n{det}");

        d.cli(&["mktap", "t2", "--mac", "52:54:00:aa:bb:cc"]).ok();
        assert!(link_details("t2").contains("link/ether 52:54:00:aa:bb:cc"));

        // Declaring the same thing again is idempotent.
        assert_eq!(
            d.cli(&["mktap", "t0", "--user", "nobody", "--group", "nogroup", "--multi-queue", "--vnet-hdr"])
                .ok()
                .trim(),
            "t0"
        );
        // --json on every command.
        let j = d.cli(&["--json", "tap", "list"]).json();
        let names: Vec<&str> = j.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["t0", "t1", "t2"]);
        assert_eq!(j[0]["owner"]["id"], NOBODY);
        assert_eq!(j[0]["group"]["name"], "nogroup");
        assert_eq!(d.cli(&["--json", "status"]).json()["taps"], 3);
        assert_eq!(d.cli(&["--json", "mktap", "t3"]).json()["created"], true);
        assert_eq!(d.cli(&["--json", "rmtap", "t3"]).json()["name"], "t3");
    });
}

#[test]
fn owner_and_group_may_attach_others_get_eperm() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["mktap", "own0", "--user", "nobody", "--vnet-hdr"]).ok();
        d.cli(&["mktap", "grp0", "--group", "nogroup"]).ok();

        // The owner, without any capability (a setuid from root drops them all).
        assert_eq!(tun_attach("own0", NOBODY, NOBODY, &["--vnet-hdr"]).ok().trim(), "ok");
        // Another uid: refused by the kernel.
        let o = tun_attach("own0", STRANGER, STRANGER, &["--vnet-hdr"]);
        assert_eq!(o.stdout.trim(), "error: EPERM", "{o:?}");
        // Group membership is enough for a group-owned TAP.
        assert_eq!(tun_attach("grp0", STRANGER, NOGROUP, &[]).ok().trim(), "ok");
        assert_eq!(tun_attach("grp0", STRANGER, STRANGER, &[]).stdout.trim(), "error: EPERM");
        // Attaching did not change the device (still persistent, same owner).
        assert!(link_details("own0").contains("persist on user nobody"));
    });
}

#[test]
fn bad_input_gets_one_line_and_changes_nothing() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["mktap", "keep0"]).ok();
        ip("link add vethx type veth peer name vethy");
        ip("tuntap add dev vnet0 mode tap vnet_hdr");
        let links_before = links();
        let state_before = state_file(&d);

        let cases: &[(&[&str], &str)] = &[
            (&["mktap", "abcdefghijklmnop"], "longer than 15 bytes"),
            (&["mktap", "a/b"], "contains '/'"),
            (&["mktap", "a b"], "contains whitespace"),
            (&["mktap", "t0", "--user", "no-such-user-x"], "Unknown user \"no-such-user-x\""),
            (&["mktap", "t0", "--group", "no-such-group-x"], "Unknown group \"no-such-group-x\""),
            (&["mktap", "vethx"], "vethx exists and is a veth device, not a TAP/TUN"),
            (&["mktap", "vnet0"], "vnet0 exists with different flags (vnet_hdr on, declared off)"),
            (&["mktap", "vnet0", "--vnet-hdr", "--multi-queue"], "multi_queue off, declared on"),
            (&["mktap", "keep0", "--vnet-hdr"], "already declared with other settings"),
            (&["mktap", "t0", "--mtu", "10"], "MTU 10 is outside"),
            (&["mktap", "t0", "--mac", "ff:ff:ff:ff:ff:ff"], "not a unicast address"),
            (&["mktap", "t0", "--mac", "zz"], "Invalid MAC address"),
            (&["rmtap", "nothere"], "No TAP named nothere"),
            (&["rmtap", "vethx"], "not a TAP"),
        ];
        for (args, want) in cases {
            let o = d.cli(args);
            let line = o.failed_one_line();
            assert!(line.starts_with("vmnetd: "), "{line}");
            assert!(line.contains(want), "{args:?}: {line:?} lacks {want:?}");
        }
        assert_eq!(links(), links_before, "a refused command changed the links");
        assert_eq!(state_file(&d), state_before, "a refused command changed the state");
        // The TAP with other flags kept its flags (attaching with ours would have changed them).
        assert!(link_details("vnet0").contains("vnet_hdr on"));
        // Exit codes by kind: invalid argument 2, not found 3, conflict 4.
        assert_eq!(d.cli(&["mktap", "t0", "--user", "no-such-user-x"]).code, Some(2));
        assert_eq!(d.cli(&["rmtap", "nothere"]).code, Some(3));
        assert_eq!(d.cli(&["mktap", "vethx"]).code, Some(4));
        // --json errors are JSON too.
        let o = d.cli(&["--json", "mktap", "vethx"]);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "conflict");
        assert!(d.cli(&["status"]).success());
    });
}

#[test]
fn missing_cap_net_admin_is_explained() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        // Through the daemon: a user who may not use the socket.
        let mut c = Command::new(bin("vmnetd"));
        c.args(["mktap", "u0"]).env("VMNETD_SOCKET", &d.socket).uid(NOBODY).gid(NOGROUP);
        let o = run_cmd(&mut c);
        assert!(o.failed_one_line().contains("root or the vmnetd group is needed"), "{o:?}");
        assert_eq!(o.code, Some(5));
        // Without a daemon: the CLI itself lacks CAP_NET_ADMIN.
        let mut c = Command::new(bin("vmnetd"));
        c.args(["mktap", "u0"]).env("VMNETD_SOCKET", dir.path().join("none.sock")).uid(NOBODY).gid(NOGROUP);
        let o = run_cmd(&mut c);
        assert!(o.failed_one_line().contains("needs CAP_NET_ADMIN"), "{o:?}");
        assert_eq!(o.code, Some(5));
        assert!(!link_exists("u0"));
    });
}

fn raw_exchange(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, line: &[u8]) -> serde_json::Value {
    stream.write_all(line).unwrap();
    let mut resp = String::new();
    reader.read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad reply {resp:?}: {e}"))
}

#[test]
fn malformed_and_oversized_requests_get_errors_and_daemon_keeps_serving() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        // A second client, idle meanwhile.
        let mut other = d.client();

        let v = raw_exchange(&mut s, &mut r, b"this is not json\n");
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["kind"], "bad-request");
        let v = raw_exchange(&mut s, &mut r, b"{\"v\":1,\"op\":\"mktap\",\"name\":42}\n");
        assert_eq!(v["error"]["kind"], "invalid-argument");
        let v = raw_exchange(&mut s, &mut r, b"{\"v\":99,\"op\":\"status\"}\n");
        assert!(v["error"]["message"].as_str().unwrap().contains("version 99"));
        let mut big = vec![b'x'; 300 * 1024];
        big.push(b'\n');
        let v = raw_exchange(&mut s, &mut r, &big);
        assert!(v["error"]["message"].as_str().unwrap().contains("too long"), "{v}");
        // The same connection still works after all that.
        let v = raw_exchange(&mut s, &mut r, b"{\"v\":1,\"op\":\"status\"}\n");
        assert_eq!(v["ok"], true);
        // And so does everyone else.
        let _: serde_json::Value = other.call(Op::Status).unwrap();
        // A client that hangs up mid-request does not hurt either.
        let mut half = UnixStream::connect(&d.socket).unwrap();
        half.write_all(b"{\"v\":1,\"op\":").unwrap();
        drop(half);
        assert!(d.cli(&["status"]).success());
        assert!(!d.log_text().contains("panicked"));
    });
}

#[test]
fn rmtap_deletes_only_what_vmnetd_created_unless_forced() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        ip("tuntap add dev foreign0 mode tap");
        let o = d.cli(&["rmtap", "foreign0"]);
        assert!(o.failed_one_line().contains("foreign0 was not created by vmnetd; add --force"));
        assert!(link_exists("foreign0"));
        // Adopting it does not make it ours.
        d.cli(&["mktap", "foreign0"]).ok();
        assert_eq!(d.cli(&["--json", "tap", "list"]).json()[0]["created"], false);
        assert!(d.cli(&["rmtap", "foreign0"]).failed_one_line().contains("not created by vmnetd"));
        assert!(link_exists("foreign0"));
        d.cli(&["rmtap", "foreign0", "--force"]).ok();
        assert!(!link_exists("foreign0"));

        // A TAP that a process holds open is in use: refused without --force.
        d.cli(&["mktap", "busy0"]).ok();
        let mut holder = Command::new(env!("CARGO_BIN_EXE_tun-attach"))
            .args(["busy0", "--hold", "30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok");
        let o = d.cli(&["rmtap", "busy0"]);
        assert!(o.failed_one_line().contains("busy0 is in use (1 queue(s) attached"), "{o:?}");
        assert!(link_exists("busy0"));
        holder.kill().unwrap();
        holder.wait().unwrap();
        d.cli(&["rmtap", "busy0"]).ok();
        assert!(!link_exists("busy0"));
    });
}

#[test]
fn mktap_and_rmtap_work_without_a_daemon_with_a_warning() {
    in_netns(|| {
        let dir = test_dir();
        let sock = dir.path().join("absent.sock");
        let mut c = Command::new(bin("vmnetd"));
        c.args(["mktap", "--user", "nobody"]).env("VMNETD_SOCKET", &sock);
        let o = run_cmd(&mut c);
        assert_eq!(o.ok().trim(), "vmtap0");
        assert!(o.stderr.contains("warning: no daemon") && o.stderr.contains("not recorded"), "{}", o.stderr);
        assert!(link_details("vmtap0").contains("persist on user nobody"));
        // Still recognisably vmnetd's: rmtap without a daemon deletes it without --force.
        let mut c = Command::new(bin("vmnetd"));
        c.args(["rmtap", "vmtap0"]).env("VMNETD_SOCKET", &sock);
        let o = run_cmd(&mut c);
        assert!(o.success(), "{o:?}");
        assert!(o.stderr.contains("warning: no daemon"));
        assert!(!link_exists("vmtap0"));
        // Other verbs need the daemon and say so.
        let mut c = Command::new(bin("vmnetd"));
        c.args(["status"]).env("VMNETD_SOCKET", &sock);
        let o = run_cmd(&mut c);
        assert!(o.failed_one_line().contains("daemon is not running"));
        assert_eq!(o.code, Some(7));
    });
}

#[test]
fn free_names_are_picked_like_tunctl() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        assert_eq!(d.cli(&["mktap"]).ok().trim(), "vmtap0");
        ip("link add vmtap1 type veth peer name vmtap1p");
        assert_eq!(d.cli(&["mktap"]).ok().trim(), "vmtap2");
        assert_eq!(d.cli(&["mktap"]).ok().trim(), "vmtap3");
    });
}

#[test]
fn existing_devices_are_adopted_and_vanished_ones_recreated() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["mktap", "keep0", "--user", "nobody", "--vnet-hdr"]).ok();
        d.cli(&["mktap", "gone0", "--group", "nogroup", "--mtu", "4000"]).ok();
        let idx = ifindex("keep0");
        assert_eq!(d.stop(), Some(0), "SIGTERM exits cleanly");
        // Shutdown leaves persistent TAPs in place.
        assert!(link_exists("keep0") && link_exists("gone0"));
        ip("link del gone0");
        d.restart();
        assert_eq!(ifindex("keep0"), idx, "keep0 was destroyed and re-made instead of adopted");
        let det = link_details("gone0");
        assert!(det.contains("persist on") && det.contains("group nogroup") && det.contains("mtu 4000"), "{det}");
        // Ownership changed behind vmnetd's back is put back at start.
        d.kill();
        tun_attach_as_root_set_owner("keep0");
        d.restart();
        assert!(link_details("keep0").contains("user nobody"));
        assert_eq!(ifindex("keep0"), idx);
    });
}

#[test]
fn external_ids_are_kept_shown_and_checked() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["mktap", "lab0", "--external-id", "vm-name=web", "--external-id", "owner=ops"]).ok();
        d.cli(&["bridge", "add", "br0"]).ok();
        d.cli(&["port", "add", "br0", "p0", "--internal", "--external-id", "iface-id=42"]).ok();
        d.kill();
        d.restart();
        let taps = d.cli(&["--json", "tap", "list"]).json();
        assert_eq!(taps[0]["external_ids"], serde_json::json!({"owner": "ops", "vm-name": "web"}));
        let ports = d.cli(&["--json", "port", "list"]).json();
        assert_eq!(ports[0]["external_ids"], serde_json::json!({"iface-id": "42"}));
        // The same declaration again is idempotent; other labels are other settings.
        d.cli(&["mktap", "lab0", "--external-id", "vm-name=web", "--external-id", "owner=ops"]).ok();
        let o = d.cli(&["mktap", "lab0", "--external-id", "vm-name=db"]);
        assert!(o.failed_one_line().contains("already declared with other settings"), "{o:?}");
        let o = d.cli(&["mktap", "lab1", "--external-id", "bad key=1"]);
        assert!(o.failed_one_line().contains("external id key \"bad key\""), "{o:?}");
        assert!(!link_exists("lab1"));
        let o = d.cli(&["port", "add", "br0", "p1", "--internal", "--external-id", "novalue"]);
        assert!(o.failed_one_line().contains("is not KEY=VALUE"), "{o:?}");
    });
}

/// Changes keep0's owner to root with iproute2's help: delete-free, via `ip tuntap`? iproute2
/// cannot re-own an existing TAP, so attach and set it through vmnetd's own ioctl wrapper.
fn tun_attach_as_root_set_owner(name: &str) {
    let tap = vmnetd::sys::tap::Tap::open(
        Some(&IfName::new(name).unwrap()),
        vmnetd::sys::tap::OpenFlags { mode: vmnetd::sys::tap::Mode::Tap, multi_queue: false, vnet_hdr: true },
        false,
    )
    .unwrap();
    tap.set_owner(0).unwrap();
    drop(tap);
    assert!(link_details(name).contains("user root"));
}

#[test]
fn sigkill_during_a_burst_of_200_mktaps_loses_nothing_acknowledged() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let socket = d.socket.clone();
        std::thread::scope(|s| {
            for w in 0..4 {
                let (acked, count, socket) = (acked.clone(), count.clone(), socket.clone());
                s.spawn(move || {
                    for i in 0..50 {
                        let name = format!("b{w}x{i}");
                        let spec = TapSpec {
                            name: Some(IfName::new(&name).unwrap()),
                            user: Some("nobody".into()),
                            ..Default::default()
                        };
                        let Ok(mut c) = vmnetd::client::Client::connect(&socket) else {
                            continue;
                        };
                        if let Ok(info) = c.call::<TapInfo>(Op::Mktap(spec)) {
                            assert_eq!(info.name.as_str(), name);
                            acked.lock().unwrap().insert(name);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
            assert!(wait_until(Duration::from_secs(60), || count.load(Ordering::SeqCst) >= 60), "burst too slow");
            d.kill();
        });
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= 60 && acked.len() < 200, "kill was not mid-burst: {} acked", acked.len());

        // The state file is intact and holds every acknowledged TAP.
        let store = vmnetd::state::Store::open(&Daemon::state_dir(&d.root)).unwrap();
        let state = store.load().expect("state file must parse after SIGKILL");
        let recorded: BTreeSet<String> = state.taps.iter().map(|t| t.name.to_string()).collect();
        assert!(
            acked.is_subset(&recorded),
            "acknowledged but not recorded: {:?}",
            acked.difference(&recorded).collect::<Vec<_>>()
        );

        d.restart();
        for n in &acked {
            assert!(link_details(n).contains("persist on user nobody"), "{n} missing after restart");
        }
        // Delete one by hand; the next start brings it back.
        let victim = acked.iter().next().unwrap().clone();
        d.kill();
        ip(&format!("link del {victim}"));
        d.restart();
        assert!(link_details(&victim).contains("persist on user nobody"));
        assert!(d.log_text().contains(&format!("tap {victim}: re-created")));
    });
}

#[test]
fn config_file_declarations_are_baseline() {
    in_netns(|| {
        let dir = test_dir();
        let cfg = dir.path().join("vmnetd.toml");
        std::fs::write(&cfg, "[[tap]]\nname = \"cfg0\"\nuser = \"nobody\"\nvnet_hdr = true\n").unwrap();
        let d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
        assert!(link_details("cfg0").contains("vnet_hdr on"));
        let o = d.cli(&["rmtap", "cfg0"]);
        assert!(o.failed_one_line().contains("is declared in"), "{o:?}");
        assert!(link_exists("cfg0"));
        let st = d.cli(&["--json", "status"]).json();
        assert!(st["config"].as_str().unwrap().ends_with("vmnetd.toml"));
        assert_eq!(d.cli(&["--json", "tap", "list"]).json()[0]["source"], "config");
    });
}

#[test]
fn broken_config_or_second_daemon_fail_with_one_line() {
    in_netns(|| {
        let dir = test_dir();
        let _d = Daemon::start(dir.path());
        let o = run(
            bin("vmnetd"),
            [
                "daemon",
                "--state-dir",
                dir.path().join("state").to_str().unwrap(),
                "--run-dir",
                dir.path().join("run").to_str().unwrap(),
            ],
        );
        assert!(o.failed_one_line().contains("Another vmnetd daemon is running"), "{o:?}");
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, "[daemon]\nstate_dri = 1\n").unwrap();
        let o = run(bin("vmnetd"), ["daemon", "--config", cfg.to_str().unwrap()]);
        assert!(!o.success());
        assert!(o.stderr.contains("is not valid") && o.stderr.contains("state_dri"), "{o:?}");
    });
}
