//! Policy on the built-in bridge with real traffic between network namespaces: flow rules
//! (an ARP-forward rule, a drop rule seen in `n_packets`), `trace`, a mirror delivering both
//! directions to a capture port, isolated ports, and an ingress policer holding a TCP flow
//! to its rate; rules and mirrors survive a restart.
#![cfg(feature = "root-tests")]

use std::time::Duration;

use vmnetd_tests::topo::{Ns, Tcpdump};
use vmnetd_tests::*;

fn flows(d: &Daemon) -> Vec<serde_json::Value> {
    d.cli(&["--json", "flow", "show", "br0"]).json().as_array().unwrap().clone()
}

/// Three namespaces a, b, c on `br0`, VLAN 1, through veth netdev ports pa, pb, pc.
fn three(d: &Daemon, extra: &[&[&str]; 3]) -> (Ns, Ns, Ns) {
    d.cli(&["bridge", "add", "br0"]).ok();
    let (a, b, c) = (Ns::new("a"), Ns::new("b"), Ns::new("c"));
    for (i, (ns, n)) in [(&a, "a"), (&b, "b"), (&c, "c")].into_iter().enumerate() {
        ns.veth(&format!("v{n}"), "eth0", Some(&format!("10.0.0.{}/24", i + 1)));
        let mut args = vec!["port", "add", "br0"];
        let (p, v) = (format!("p{n}"), format!("v{n}"));
        args.extend([p.as_str(), "--netdev", v.as_str()]);
        args.extend(extra[i]);
        d.cli(&args).ok();
    }
    (a, b, c)
}

#[test]
fn arp_forward_rule_drop_rule_trace_and_restart() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        let (a, b, c) = three(&d, &[&[], &[], &[]]);
        // The seeds' example: A's ARP requests for B go to B alone (not flooded to C).
        d.cli(&["flow", "add", "br0", "priority=100,in_port=pa,arp,arp_tpa=10.0.0.2 actions=output:pb"]).ok();
        let mut cap = Tcpdump::start(&c, "eth0", &dir.path().join("c.pcap"));
        assert!(a.ping("10.0.0.2", 3), "A reaches B with the ARP rule");
        let seen = cap.stop();
        assert!(
            !seen.iter().any(|l| l.contains("ARP") && l.contains("tell 10.0.0.1") && l.contains("10.0.0.2")),
            "C saw A's ARP request for B: {seen:#?}"
        );
        let f = flows(&d);
        assert_eq!(f.len(), 1);
        assert!(f[0]["n_packets"].as_u64().unwrap() >= 1, "{f:?}");
        assert_eq!(f[0]["priority"], 100);
        // A drop rule: pings from A to C stop, and the rule counts them.
        d.cli(&["flow", "add", "br0", "priority=200,in_port=pa,icmp,nw_dst=10.0.0.3 actions=drop"]).ok();
        assert!(!a.ping("10.0.0.3", 3), "the drop rule let pings through");
        assert!(a.ping("10.0.0.2", 2), "pings to B still pass");
        let f = flows(&d);
        let dropper = f.iter().find(|r| r["priority"] == 200).unwrap();
        assert!(dropper["n_packets"].as_u64().unwrap() >= 3, "{dropper}");
        assert!(dropper["n_bytes"].as_u64().unwrap() >= 3 * 98, "{dropper}");
        let text = d.cli(&["flow", "show", "br0"]).ok().to_owned();
        assert!(
            text.contains("priority=200,icmp,in_port=pa,nw_dst=10.0.0.3 actions=drop") || text.contains("actions=drop"),
            "{text}"
        );
        assert!(text.contains("n_packets=") && text.contains("idle_age="), "{text}");
        let st = d.cli(&["--json", "stats", "br0", "pa"]).json();
        assert!(st[0]["counters"]["drops"]["policy"].as_u64().unwrap() >= 3, "{st}");
        // trace explains both decisions without sending anything.
        let (ma, mc) = (a.mac("eth0"), c.mac("eth0"));
        let t = d
            .cli(&["--json", "trace", "br0", &format!("in_port=pa,dl_src={ma},dl_dst={mc},icmp,nw_dst=10.0.0.3")])
            .json();
        assert_eq!(t["drop"], "policy", "{t}");
        assert!(t["rule"].as_str().unwrap().contains("actions=drop"), "{t}");
        let t = d
            .cli(&["--json", "trace", "br0", &format!("in_port=pa,dl_src={ma},dl_dst={mc},icmp,nw_dst=10.0.0.9")])
            .json();
        assert_eq!(t["outputs"], serde_json::json!(["pc"]), "C's MAC was learned: unicast to pc: {t}");
        let human = d.cli(&["trace", "br0", &format!("in_port=pa,dl_src={ma},arp,arp_tpa=10.0.0.2")]).ok().to_owned();
        assert!(human.contains("priority 100") && human.contains("Datapath actions: pb"), "{human}");
        // Rules persist across a restart (counters start again).
        d.stop();
        d.restart();
        let f = flows(&d);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(!a.ping("10.0.0.3", 2), "the drop rule is back after the restart");
        assert!(a.ping("10.0.0.2", 2));
        // del by filter, then everything.
        let out = d.cli(&["--json", "flow", "del", "br0", "icmp"]).json();
        assert_eq!(out["removed"], 1, "{out}");
        assert!(a.ping("10.0.0.3", 2), "deleting the drop rule lets pings through again");
        d.cli(&["flow", "del", "br0"]).ok();
        assert!(flows(&d).is_empty());
        // Bad input is refused with the offending token.
        let bad = d.cli(&["flow", "add", "br0", "in_port=pa,tp_dst=22 actions=drop"]);
        assert!(!bad.success() && bad.stderr.contains("tp_dst"), "{}", bad.stderr);
        let bad = d.cli(&["flow", "add", "br0", "in_port=nosuch actions=drop"]);
        assert!(!bad.success() && bad.stderr.contains("nosuch"), "{}", bad.stderr);
        drop(b);
    });
}

#[test]
fn flow_replace_is_all_or_nothing() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        let (a, _b, _c) = three(&d, &[&[], &[], &[]]);
        let good = dir.path().join("good.rules");
        std::fs::write(&good, "# two rules\npriority=10,icmp actions=drop\n\npriority=5,arp actions=normal\n").unwrap();
        d.cli(&["flow", "replace", "br0", good.to_str().unwrap()]).ok();
        assert_eq!(flows(&d).len(), 2);
        assert!(!a.ping("10.0.0.2", 2));
        let bad = dir.path().join("bad.rules");
        std::fs::write(&bad, "priority=1 actions=normal\nthis is not a rule\n").unwrap();
        let out = d.cli(&["flow", "replace", "br0", bad.to_str().unwrap()]);
        assert!(!out.success() && out.stderr.contains("rule 2"), "{}", out.stderr);
        assert_eq!(flows(&d).len(), 2, "a failed replace changed the rules");
    });
}

#[test]
fn mirror_delivers_both_directions_to_a_capture_port() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        let (a, _b, m) = three(&d, &[&[], &[], &[]]);
        d.cli(&["mirror", "add", "br0", "ids", "--select-src", "pa", "--select-dst", "pa", "--output", "pc"]).ok();
        let mut cap = Tcpdump::start(&m, "eth0", &dir.path().join("m.pcap"));
        assert!(a.ping("10.0.0.2", 3), "mirroring does not disturb forwarding");
        let seen = cap.stop();
        let req = seen
            .iter()
            .filter(|l| l.contains("vlan 1") && l.contains("10.0.0.1 > 10.0.0.2: ICMP echo request"))
            .count();
        let rep =
            seen.iter().filter(|l| l.contains("vlan 1") && l.contains("10.0.0.2 > 10.0.0.1: ICMP echo reply")).count();
        assert!(
            req >= 3 && rep >= 3,
            "mirror port saw {req} requests, {rep} replies: {seen:#?}\n{}\n{}",
            d.cli(&["mirror", "list"]).stdout,
            d.cli(&["stats", "br0"]).stdout
        );
        // The output port carries nothing else: C (the mirror port) cannot ping anyone.
        assert!(!m.ping("10.0.0.1", 2));
        let list = d.cli(&["--json", "mirror", "list"]).json();
        assert!(list[0]["packets"].as_u64().unwrap() >= 6, "{list}");
        // A mirror survives a restart; removed, the port is an ordinary port again.
        d.stop();
        d.restart();
        assert_eq!(d.cli(&["--json", "mirror", "list", "br0"]).json().as_array().unwrap().len(), 1);
        d.cli(&["mirror", "del", "br0", "ids"]).ok();
        assert!(wait_until(Duration::from_secs(5), || m.ping("10.0.0.1", 1)), "the former mirror port is a port again");
    });
}

#[test]
fn isolated_ports_reach_only_the_uplink() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        let (a, b, c) = three(&d, &[&["--isolated"], &["--isolated"], &[]]);
        assert!(a.ping("10.0.0.3", 2), "isolated A reaches C");
        assert!(b.ping("10.0.0.3", 2), "isolated B reaches C");
        assert!(!a.ping("10.0.0.2", 2), "isolated A reached isolated B");
        // A unicast (A knows B's address) is refused and counted, not just left unflooded.
        a.ip(&format!("neigh replace 10.0.0.2 lladdr {} dev eth0", b.mac("eth0")));
        assert!(b.ping("10.0.0.3", 1), "B's address is learned");
        assert!(!a.ping("10.0.0.2", 2), "isolated A reached isolated B by unicast");
        assert!(c.ping("10.0.0.1", 1) && c.ping("10.0.0.2", 1));
        let st = d.cli(&["--json", "stats", "br0", "pa"]).json();
        assert!(st[0]["counters"]["drops"]["isolated"].as_u64().unwrap() >= 1, "{st}");
    });
}

#[test]
fn ingress_policer_holds_tcp_to_its_rate() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        let rate_kbit = 50_000u64;
        let (a, b, _c) = three(&d, &[&["--ingress-rate", "50000"], &[], &[]]);
        let mut server = b.spawn("iperf3", &["-s", "-1", "-B", "10.0.0.2"]);
        std::thread::sleep(Duration::from_millis(500));
        let client = a.exec("iperf3", &["-c", "10.0.0.2", "-t", "6", "-O", "1", "-J"]);
        let _ = server.kill();
        let _ = server.wait();
        assert!(client.success(), "iperf3 failed: {}{}", client.stdout, client.stderr);
        let bps = serde_json::from_str::<serde_json::Value>(&client.stdout).unwrap()["end"]["sum_received"]
            ["bits_per_second"]
            .as_f64()
            .unwrap();
        let ratio = bps / (rate_kbit as f64 * 1000.0);
        eprintln!("policed TCP: {:.1} Mbit/s for a {} Mbit/s policer ({ratio:.3})", bps / 1e6, rate_kbit / 1000);
        assert!((0.9..=1.1).contains(&ratio), "TCP at {:.1} Mbit/s, policer {} Mbit/s", bps / 1e6, rate_kbit / 1000);
        let st = d.cli(&["--json", "stats", "br0", "pa"]).json();
        assert!(st[0]["counters"]["drops"]["policed"].as_u64().unwrap() > 0, "{st}");
    });
}
