//! Linux bridges through rtnetlink, checked with iproute2 (`ip -d link`, `bridge link`) and
//! traffic between namespaces. This kernel has no bridge VLAN filtering, so VLAN requests are
//! refused; that refusal is tested here, and the VLAN requests themselves are checked byte
//! for byte against iproute2's in `vmnetd/src/linuxbr.rs`.
#![cfg(feature = "root-tests")]

use std::time::Duration;

use vmnetd_tests::topo::Ns;
use vmnetd_tests::*;

/// `ip -d link show` without the running timers (they change on their own).
fn settings(dev: &str) -> String {
    let det = link_details(dev);
    let mut out = Vec::new();
    let mut skip = false;
    for w in det.split_whitespace() {
        if skip {
            skip = false;
            continue;
        }
        if w.ends_with("_timer") {
            skip = true;
            continue;
        }
        out.push(w);
    }
    out.join(" ")
}

fn state_file(d: &Daemon) -> String {
    std::fs::read_to_string(Daemon::state_dir(&d.root).join("state.json")).unwrap_or_default()
}

#[test]
fn bridges_are_created_with_options_or_adopted_and_only_created_ones_deleted() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "lbr0", "--kind", "linux", "--ageing", "100", "--stp"]).ok();
        let det = link_details("lbr0");
        assert!(det.contains("bridge ") && det.contains("ageing_time 10000") && det.contains("stp_state 1"), "{det}");
        assert!(det.contains("UP"), "{det}");
        ip("link add lbr1 type bridge");
        d.cli(&["bridge", "add", "lbr1", "--kind", "linux"]).ok();
        let list = d.cli(&["--json", "bridge", "list"]).json();
        let created: Vec<(String, bool)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["name"].as_str().unwrap().to_owned(), b["created"].as_bool().unwrap()))
            .collect();
        assert_eq!(created, vec![("lbr0".into(), true), ("lbr1".into(), false)]);
        // A name taken by something else is refused.
        ip("link add notbr type veth peer name notbrp");
        let o = d.cli(&["bridge", "add", "notbr", "--kind", "linux"]);
        assert!(o.failed_one_line().contains("notbr exists and is not a bridge"), "{o:?}");

        // After a reboot-like loss, the daemon re-creates the bridge it made.
        d.kill();
        ip("link del lbr0");
        d.restart();
        assert!(link_details("lbr0").contains("ageing_time 10000"));
        // Deleting: the adopted bridge stays, the created one goes.
        d.cli(&["bridge", "del", "lbr1"]).ok();
        assert!(link_exists("lbr1"), "vmnetd deleted a bridge it did not create");
        d.cli(&["bridge", "del", "lbr0"]).ok();
        assert!(!link_exists("lbr0"));
    });
}

#[test]
fn ports_attach_detach_and_carry_traffic_through_the_kernel_bridge() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "lbr0", "--kind", "linux"]).ok();
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        d.cli(&["port", "add", "lbr0", "pa", "--netdev", "va"]).ok();
        d.cli(&["port", "add", "lbr0", "pb", "--netdev", "vb"]).ok();
        assert!(link_details("va").contains("master lbr0"));
        let bl = run("bridge", ["link"]).ok().to_owned();
        assert!(bl.contains("va") && bl.contains("vb") && bl.contains("master lbr0"), "{bl}");
        assert!(a.ping("10.0.0.2", 3), "traffic through the Linux bridge");
        let ports = d.cli(&["--json", "port", "list", "lbr0"]).json();
        assert!(ports.as_array().unwrap().iter().all(|p| state_of(p) == "up"), "{ports}");
        // fdb/stats/capture belong to the built-in bridge, and say where to look instead.
        assert!(d.cli(&["fdb", "show", "lbr0"]).failed_one_line().contains("bridge fdb show br lbr0"));
        d.cli(&["port", "del", "lbr0", "pb"]).ok();
        assert!(!link_details("vb").contains("master"), "port del releases the interface");
        assert!(!a.ping("10.0.0.2", 1));
        // Internal ports are the built-in bridge's.
        let o = d.cli(&["port", "add", "lbr0", "pi", "--internal"]);
        assert!(o.failed_one_line().contains("Internal ports belong to built-in bridges"));
    });
}

/// `--isolated` on a Linux bridge is the kernel's own port flag: isolated ports reach only
/// ports that are not; policing is refused (tc's business there).
#[test]
fn isolated_ports_use_the_kernel_flag() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "lbr0", "--kind", "linux"]).ok();
        let (a, b, c) = (Ns::new("a"), Ns::new("b"), Ns::new("c"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        c.veth("vc", "eth0", Some("10.0.0.3/24"));
        d.cli(&["port", "add", "lbr0", "pa", "--netdev", "va", "--isolated"]).ok();
        d.cli(&["port", "add", "lbr0", "pb", "--netdev", "vb", "--isolated"]).ok();
        d.cli(&["port", "add", "lbr0", "pc", "--netdev", "vc"]).ok();
        assert!(link_details("va").contains("isolated on"), "{}", link_details("va"));
        assert!(link_details("vc").contains("isolated off"), "{}", link_details("vc"));
        assert!(a.ping("10.0.0.3", 2) && b.ping("10.0.0.3", 2));
        assert!(!a.ping("10.0.0.2", 2), "isolated ports reached each other");
        let o = d.cli(&["port", "add", "lbr0", "pd", "--netdev", "vc", "--ingress-rate", "1000"]);
        assert!(o.failed_one_line().contains("tc"), "{}", o.stderr);
    });
}

#[test]
fn vlans_are_refused_on_this_kernel_and_nothing_changes() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "lbr0", "--kind", "linux"]).ok();
        ip("link add vc type veth peer name vcp");
        ip("link add vd type veth peer name vdp");
        d.cli(&["port", "add", "lbr0", "pd", "--netdev", "vd"]).ok();
        let (state, links_vc, br) = (state_file(&d), settings("vc"), settings("lbr0"));
        for (args, vlan) in [
            (vec!["port", "add", "lbr0", "pv", "--netdev", "vc", "--vlan", "10"], "access 10"),
            (
                vec!["port", "add", "lbr0", "pv", "--netdev", "vc", "--trunk", "10,20", "--native", "1"],
                "trunk 10,20 native 1",
            ),
        ] {
            let o = d.cli(&args);
            assert_eq!(
                o.failed_one_line(),
                format!(
                    "vmnetd: This kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING is not set): \
                     Linux bridge lbr0 cannot put vc on {vlan}; nothing was changed. \
                     Use a built-in bridge for VLANs: vmnetd bridge add NAME --kind builtin"
                )
            );
            assert_eq!(o.code, Some(6), "unsupported");
        }
        assert_eq!(state_file(&d), state, "the declaration was recorded");
        assert_eq!(settings("vc"), links_vc, "the interface was changed");
        assert!(!link_details("vc").contains("master"));
        assert_eq!(settings("lbr0"), br, "the bridge was changed");
        assert!(link_details("lbr0").contains("vlan_filtering 0"));
        let ports = d.cli(&["--json", "port", "list"]).json();
        assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
        assert_eq!(state_of(&ports[0]), "up", "the other port is untouched");
    });
}

#[test]
fn ports_come_back_after_restart_and_when_their_interface_returns() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "lbr0", "--kind", "linux"]).ok();
        d.cli(&["mktap", "vmtap0", "--user", "nobody"]).ok();
        d.cli(&["port", "add", "lbr0", "vm0", "--netdev", "vmtap0"]).ok();
        assert!(link_details("vmtap0").contains("master lbr0"));
        // A reboot loses both the bridge and the TAP: the next start brings both back, and the
        // TAP onto the bridge.
        d.kill();
        ip("link del vmtap0");
        ip("link del lbr0");
        d.restart();
        assert!(wait_until(Duration::from_secs(10), || link_exists("vmtap0")
            && link_details("vmtap0").contains("master lbr0")));
        // Released behind vmnetd's back: re-attached by the reconciler.
        ip("link set vmtap0 nomaster");
        assert!(wait_until(Duration::from_secs(10), || link_details("vmtap0").contains("master lbr0")));
    });
}
