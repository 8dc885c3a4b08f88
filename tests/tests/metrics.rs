//! `/metrics` during traffic between two namespaces, parsed by the Prometheus project's own
//! OpenMetrics parser (python3-prometheus-client), checked against `vmnetd stats`.
#![cfg(feature = "root-tests")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use vmnetd_tests::topo::Ns;
use vmnetd_tests::*;

const ADDR: &str = "127.0.0.1:9464";

/// One HTTP/1.1 request; (status line, body).
fn http(method: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(ADDR).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
}

/// A sample: metric name (with its `_total`/`_bucket` suffix), labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses OpenMetrics text with the reference parser (strict: a malformed exposition fails).
fn parse(text: &str) -> Vec<Sample> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    // Debian's python3 (the one the package is for), not another on PATH.
    let mut c = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (python3-prometheus-client)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels =
                s[1].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
            (s[0].as_str().unwrap().to_owned(), labels, s[2].as_f64().unwrap())
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

/// A scrape after the daemon's one-second exposition cache has expired (a fresh snapshot).
fn scrape() -> Vec<Sample> {
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body) = http("GET", "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    parse(&body)
}

fn stats_rx(d: &Daemon, port: &str) -> f64 {
    let st = d.cli(&["--json", "stats", "br0", port]).json();
    st[0]["counters"]["rx_packets"].as_f64().unwrap()
}

#[test]
fn metrics_follow_traffic_and_match_stats() {
    in_netns(|| {
        ip("link set lo up");
        let dir = test_dir();
        let cfg = dir.path().join("vmnetd.toml");
        std::fs::write(&cfg, format!("[metrics]\nlisten = \"{ADDR}\"\n\n[[bridge]]\nname = \"br0\"\n")).unwrap();
        let d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        d.cli(&["port", "add", "br0", "pa", "--netdev", "va", "--vlan", "10"]).ok();
        d.cli(&["port", "add", "br0", "pb", "--netdev", "vb", "--vlan", "10", "--external-id", "vm-name=web"]).ok();
        assert!(a.ping("10.0.0.2", 5));

        // Counters match `vmnetd stats` (read between two scrapes: frames may still trickle).
        // Scrapes within a second share one snapshot: two at once give the same text.
        let (_, t1) = http("GET", "/metrics");
        let (_, t2) = http("GET", "/metrics");
        assert_eq!(t1, t2);
        let s1 = scrape();
        let mid = stats_rx(&d, "pa");
        let s2 = scrape();
        let pa = [("bridge", "br0"), ("port", "pa"), ("kind", "netdev")];
        let (v1, v2) = (
            value(&s1, "vmnetd_port_rx_packets_total", &pa).expect("rx of pa"),
            value(&s2, "vmnetd_port_rx_packets_total", &pa).unwrap(),
        );
        assert!(v1 >= 5.0 && v1 <= mid && mid <= v2, "scrape {v1}, stats {mid}, scrape {v2}");
        // Labels carry the libvirt names; status, FDB, datapath and build info are there.
        let pb = [("port", "pb"), ("vm_name", "web")];
        assert!(value(&s2, "vmnetd_port_tx_packets_total", &pb).unwrap() >= 5.0);
        assert_eq!(value(&s2, "vmnetd_port_up", &pb), Some(1.0));
        assert_eq!(value(&s2, "vmnetd_bridge_fdb_vlan_entries", &[("bridge", "br0"), ("vlan", "10")]), Some(2.0));
        assert_eq!(value(&s2, "vmnetd_bridge_ports", &[("bridge", "br0")]), Some(2.0));
        assert!(value(&s2, "vmnetd_datapath_frames_total", &[]).unwrap() >= 10.0);
        assert!(value(&s2, "vmnetd_datapath_seconds_total", &[("state", "idle")]).unwrap() > 0.0);
        assert!(value(&s2, "vmnetd_datapath_burst_frames_bucket", &[("le", "+Inf")]).unwrap() >= 1.0);
        assert_eq!(value(&s2, "vmnetd_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));

        // Counters move with traffic.
        assert!(b.ping("10.0.0.1", 5));
        let s3 = scrape();
        let v3 = value(&s3, "vmnetd_port_rx_packets_total", &[("port", "pb")]).unwrap();
        let v0 = value(&s2, "vmnetd_port_rx_packets_total", &[("port", "pb")]).unwrap();
        assert!(v3 >= v0 + 5.0, "{v0} -> {v3}");
        assert!(stats_rx(&d, "pb") >= v3, "stats is never below the scrape before it");

        // Only GET /metrics is served.
        assert!(http("GET", "/nope").0.contains(" 404 "));
        assert!(http("POST", "/metrics").0.contains(" 405 "));
        // A removed port leaves the exposition.
        d.cli(&["port", "del", "br0", "pa"]).ok();
        assert_eq!(value(&scrape(), "vmnetd_port_rx_packets_total", &pa), None);
    });
}

/// A client that connects and sends nothing holds a slot only until the header timeout, and
/// never blocks the other scrapers or the control socket meanwhile.
#[test]
fn idle_metrics_clients_do_not_block_scrapes() {
    in_netns(|| {
        ip("link set lo up");
        let dir = test_dir();
        let cfg = dir.path().join("vmnetd.toml");
        std::fs::write(&cfg, format!("[metrics]\nlisten = \"{ADDR}\"\n")).unwrap();
        let d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
        let idle: Vec<_> = (0..8).map(|_| std::net::TcpStream::connect(ADDR).unwrap()).collect();
        let s = scrape();
        assert!(value(&s, "vmnetd_uptime_seconds", &[]).is_some());
        d.cli(&["status"]).ok();
        drop(idle);
    });
}
