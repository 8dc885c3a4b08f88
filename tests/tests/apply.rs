//! `vmnetd apply`, `config dump` and SIGHUP against a running daemon: a table of edits with
//! the plan and end state of each, a VLAN change under a connected vhost-user guest, a
//! failing apply rolled back, and a reload by signal.
#![cfg(feature = "root-tests")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmnetd_tests::*;
use vmnetd_vhost::driver::Config;
use vmnetd_vhost::virtio_net::VnetHdr;

const BASE: &str = r#"
[[bridge]]
name = "br0"

[[port]]
bridge = "br0"
name = "p1"
kind = { type = "internal", ifname = "ip1" }
vlan = { mode = "access", vlan = 10 }
"#;

struct Rig {
    d: Daemon,
    dir: tempfile::TempDir,
    n: usize,
}

impl Rig {
    fn start(text: &str) -> Rig {
        let dir = test_dir();
        let cfg = dir.path().join("vmnetd.toml");
        std::fs::write(&cfg, text).unwrap();
        let d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
        Rig { d, dir, n: 0 }
    }

    fn file(&mut self, text: &str) -> PathBuf {
        self.n += 1;
        let p = self.dir.path().join(format!("edit{}.toml", self.n));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `apply FILE` (`dry`: `--dry-run`); the plan's lines.
    fn apply(&mut self, text: &str, dry: bool) -> Vec<String> {
        let p = self.file(text);
        let mut args = vec!["apply", p.to_str().unwrap()];
        if dry {
            args.push("--dry-run");
        }
        let out = self.d.cli(&args).ok().to_owned();
        out.lines().filter(|l| !l.starts_with('(') && *l != "No changes.").map(str::to_owned).collect()
    }

    /// `config dump` applied with --dry-run: nothing to do.
    fn assert_dump_round_trips(&mut self) {
        let dump = self.d.cli(&["config", "dump"]).ok().to_owned();
        let plan = self.apply(&dump, true);
        assert!(plan.is_empty(), "config dump | apply --dry-run planned {plan:?} for\n{dump}");
    }

    fn ports(&self) -> serde_json::Value {
        self.d.cli(&["--json", "port", "list"]).json()
    }

    fn port(&self, name: &str) -> Option<serde_json::Value> {
        self.ports().as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
    }
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn a_table_of_edits_gives_its_plan_and_end_state() {
    in_netns(|| {
        let mut r = Rig::start(BASE);
        r.assert_dump_round_trips();
        let ip1 = ifindex("ip1");

        // (edit, expected plan, check of the end state)
        type Check = Box<dyn Fn(&Rig)>;
        let br1 = "\n[[bridge]]\nname = \"br1\"\n\n[[port]]\nbridge = \"br1\"\nname = \"p2\"\nkind = { type = \"internal\", ifname = \"ip2\" }\n";
        let table: Vec<(String, Vec<&str>, Check)> = vec![
            (
                with(br1),
                vec!["+ bridge br1 builtin", "+ port br1/p2 internal access 1"],
                Box::new(|r| {
                    assert!(r.port("p2").is_some() && link_exists("ip2"));
                }),
            ),
            (
                with(br1).replace("vlan = 10", "vlan = 20"),
                vec!["~ port br0/p1 vlan access 10 -> access 20"],
                Box::new(move |r| {
                    assert_eq!(r.port("p1").unwrap()["vlan"]["vlan"], 20);
                    assert_eq!(ifindex("ip1"), ip1, "a VLAN change must not re-create the port's interface");
                }),
            ),
            (
                with(br1).replace("vlan = 10", "vlan = 20") + "\n[[tap]]\nname = \"vmt0\"\nuser = \"root\"\n",
                vec!["+ tap vmt0 user root"],
                Box::new(|r| {
                    assert!(link_exists("vmt0"));
                    assert!(r.d.cli(&["tap", "list"]).ok().contains("vmt0"));
                }),
            ),
            (
                with(br1).replace("vlan = 10", "vlan = 20")
                    + "\n[[flow]]\nbridge = \"br0\"\nrule = \"priority=5,in_port=p1,arp actions=drop\"\n\n[[mirror]]\nbridge = \"br0\"\nname = \"m1\"\nselect_src = [\"p1\"]\noutput_vlan = 99\n",
                vec!["- tap vmt0", "~ flows br0 0 -> 1 rules", "+ mirror br0/m1"],
                Box::new(|r| {
                    assert!(!link_exists("vmt0"), "a removed TAP is deleted");
                    assert!(r.d.cli(&["flow", "show", "br0"]).ok().contains("arp"));
                    assert!(r.d.cli(&["mirror", "list", "br0"]).ok().contains("m1"));
                }),
            ),
            (
                with(br1).replace("vlan = 10", "vlan = 20")
                    + "\n[[network]]\nname = \"n1\"\nbridge = \"br1\"\nsubnet = \"10.77.0.0/24\"\n\n[datapath]\nbusy_poll_us = 0\n",
                vec!["~ setting datapath.busy_poll_us 50 -> 0", "- mirror br0/m1", "+ network n1 on br1", "~ flows br0 1 -> 0 rules"],
                Box::new(|r| {
                    assert!(r.d.cli(&["flow", "show", "br0"]).ok().lines().all(|l| !l.contains("arp")));
                    assert!(!r.d.cli(&["mirror", "list", "br0"]).ok().contains("m1"));
                    let nets = r.d.cli(&["--json", "network", "list"]).json();
                    assert_eq!(nets[0]["source"], "config", "{nets}");
                    let gw = nets[0]["interface"].as_str().unwrap().to_owned();
                    assert!(ip(&format!("-4 addr show dev {gw}")).contains("10.77.0.1/24"));
                }),
            ),
            (
                BASE.to_owned(),
                vec![
                    "~ setting datapath.busy_poll_us 0 -> 50",
                    "- bridge br1",
                    "- port br1/p2",
                    "- network n1",
                    "~ port br0/p1 vlan access 20 -> access 10",
                ],
                Box::new(|r| {
                    assert!(r.port("p2").is_none() && !link_exists("ip2"));
                    assert_eq!(r.d.cli(&["--json", "network", "list"]).json().as_array().unwrap().len(), 0);
                    assert!(!r.d.cli(&["bridge", "list"]).ok().contains("br1"));
                }),
            ),
        ];
        for (text, want, check) in table {
            let mut dry = r.apply(&text, true);
            let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
            dry.sort();
            want.sort();
            assert_eq!(dry, want, "dry run of\n{text}");
            let mut done = r.apply(&text, false);
            done.sort();
            assert_eq!(done, want, "apply of\n{text}");
            check(&r);
            assert!(r.apply(&text, true).is_empty(), "applying twice changes nothing");
            r.assert_dump_round_trips();
        }
        // A built-in bridge's learning-table limits change in place: its ports stay.
        let aged = BASE.replace("name = \"br0\"\n", "name = \"br0\"\nageing = 60\nmax_macs = 100\n");
        assert_eq!(r.apply(&aged, false), vec!["~ bridge br0 ageing - -> 60, max_macs - -> 100"]);
        let br = r.d.cli(&["--json", "bridge", "list"]).json();
        let br0 = br.as_array().unwrap().iter().find(|b| b["name"] == "br0").unwrap().clone();
        assert_eq!((br0["ageing"].as_u64(), br0["max_macs"].as_u64()), (Some(60), Some(100)), "{br0}");
        assert_eq!(ifindex("ip1"), ip1, "a bridge's limits changed in place keep its ports");
        r.assert_dump_round_trips();
        assert_eq!(r.apply(BASE, false), vec!["~ bridge br0 ageing 60 -> -, max_macs 100 -> -"]);
        // Runtime declarations are left alone by apply, and listed by `dump --all`.
        r.d.cli(&["port", "add", "br0", "cli1", "--internal", "--ifname", "ic1"]).ok();
        assert!(r.apply(BASE, false).is_empty());
        assert!(r.port("cli1").is_some());
        assert!(r.d.cli(&["config", "dump", "--all"]).ok().contains("cli1"));
        assert!(!r.d.cli(&["config", "dump"]).ok().contains("cli1"));
    });
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0x20, n]
}

fn frame(dst: [u8; 6], src: [u8; 6], n: u8) -> Vec<u8> {
    let mut f = vec![n; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn vhost_ports(vlan_a: u16, vlan_b: u16) -> String {
    format!(
        "[[bridge]]\nname = \"br0\"\n\n[[port]]\nbridge = \"br0\"\nname = \"va\"\nkind = {{ type = \"vhost-user\", path = \"va.sock\" }}\nvlan = {{ mode = \"access\", vlan = {vlan_a} }}\n\n[[port]]\nbridge = \"br0\"\nname = \"vb\"\nkind = {{ type = \"vhost-user\", path = \"vb.sock\" }}\nvlan = {{ mode = \"access\", vlan = {vlan_b} }}\n"
    )
}

/// Guests on vhost-user ports keep their connections (and frames keep flowing) while their
/// VLAN changes under them.
#[test]
fn a_vlan_change_keeps_vhost_user_guests_connected() {
    in_netns(|| {
        let mut r = Rig::start(&vhost_ports(10, 10));
        let run = r.dir.path().join("run");
        let cfg = Config::default();
        let mut a = connect_vhost(&run.join("va.sock"), &cfg, Duration::from_secs(5)).unwrap();
        let mut b = connect_vhost(&run.join("vb.sock"), &cfg, Duration::from_secs(5)).unwrap();
        let exchange = |a: &mut vmnetd_vhost::driver::Driver, b: &mut vmnetd_vhost::driver::Driver, n: u8| -> bool {
            let f = frame([0xff; 6], mac(1), n);
            assert_eq!(a.send(0, &VnetHdr::default(), &[&f]), 1);
            b.recv_n(0, 1, Duration::from_secs(2)).iter().any(|(_, got)| *got == f)
        };
        assert!(wait_until(Duration::from_secs(5), || state_of(&r.port("vb").unwrap()).starts_with("up")));
        assert!(exchange(&mut a, &mut b, 1));
        // Both to VLAN 20: in place, frames still flow, nobody reconnected.
        assert_eq!(
            r.apply(&vhost_ports(20, 20), false),
            vec!["~ port br0/va vlan access 10 -> access 20", "~ port br0/vb vlan access 10 -> access 20"]
        );
        assert!(exchange(&mut a, &mut b, 2), "frames stopped after the VLAN change");
        // Only A to VLAN 30: the change took effect (B no longer hears A).
        r.apply(&vhost_ports(30, 20), false);
        assert!(!exchange(&mut a, &mut b, 3), "A on VLAN 30 still reaches B on VLAN 20");
        r.apply(&vhost_ports(20, 20), false);
        assert!(exchange(&mut a, &mut b, 4));
        for p in ["va", "vb"] {
            let v = &r.port(p).unwrap()["vhost"];
            assert_eq!((v["connected"].as_bool(), v["connections"].as_u64()), (Some(true), Some(1)), "{p}: {v}");
        }
        assert!(!r.d.log_text().contains("frontend disconnected"));
    });
}

/// An apply that fails half-way (a TAP name another interface holds) undoes what it did.
#[test]
fn a_failing_apply_rolls_back() {
    in_netns(|| {
        let two =
            with("\n[[port]]\nbridge = \"br0\"\nname = \"p2\"\nkind = { type = \"internal\", ifname = \"ip2\" }\n");
        let mut r = Rig::start(&two);
        ip("link add taken0 type veth peer name taken1");
        let before_ports = r.ports();
        let before_dump = r.d.cli(&["config", "dump"]).ok().to_owned();
        // p1 to VLAN 20, p2 removed, a bridge added, then a TAP whose name is taken.
        let bad = BASE.replace("vlan = 10", "vlan = 20")
            + "\n[[bridge]]\nname = \"br5\"\n\n[[tap]]\nname = \"taken0\"\nuser = \"root\"\n";
        let p = r.file(&bad);
        let out = r.d.cli(&["apply", p.to_str().unwrap()]);
        assert!(!out.success(), "{out:?}");
        assert!(out.stderr.contains("taken0") && out.stderr.contains("rolled back"), "{}", out.stderr);
        // Everything as before: p1 on VLAN 10, p2 there with its interface, no br5.
        let strip = |v: serde_json::Value| -> Vec<(String, String)> {
            v.as_array().unwrap().iter().map(|p| (p["name"].to_string(), p["vlan"].to_string())).collect()
        };
        assert_eq!(strip(r.ports()), strip(before_ports));
        assert!(link_exists("ip2"));
        assert!(!r.d.cli(&["bridge", "list"]).ok().contains("br5"));
        assert_eq!(r.d.cli(&["config", "dump"]).ok(), before_dump);
        r.assert_dump_round_trips();
        ip("link del taken0");
    });
}

/// SIGHUP re-reads the config file the daemon was started with.
#[test]
fn sighup_reloads_the_config_file() {
    in_netns(|| {
        let r = Rig::start(BASE);
        let cfg: &Path = &r.dir.path().join("vmnetd.toml");
        std::fs::write(
            cfg,
            with("\n[[port]]\nbridge = \"br0\"\nname = \"p3\"\nkind = { type = \"internal\", ifname = \"ip3\" }\n"),
        )
        .unwrap();
        r.d.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(wait_until(Duration::from_secs(10), || r.port("p3").is_some()), "{}", r.d.log_text());
        assert!(link_exists("ip3"));
        // A file that does not parse changes nothing and the daemon keeps running.
        std::fs::write(cfg, "[[bridge]\n").unwrap();
        r.d.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(r.d.wait_log("SIGHUP", Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(r.port("p3").is_some());
        r.d.cli(&["status"]).ok();
    });
}
