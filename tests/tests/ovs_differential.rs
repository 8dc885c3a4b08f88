//! Differential test of the flow table against a real Open vSwitch: random rule sets in the
//! supported subset, installed with `ovs-ofctl add-flows` on an OVS bridge (ovs-vswitchd
//! with the userspace datapath and dummy ports, in its own directory and network
//! namespace) and with `vmnetd flow replace` on a built-in bridge; random frames traced on
//! both (`ovs-appctl ofproto/trace` and `vmnetd trace`) must leave by the same ports.
//!
//! The subset compared: matches on in_port, dl_src/dl_dst (with masks), dl_type and its
//! shorthands, nw_src/nw_dst (CIDR), arp_spa/arp_tpa, nw_proto, tp_src/tp_dst (with masks),
//! icmp_type; actions drop, normal, flood, output. Frames are untagged, with unicast sources
//! and an empty learning table on both sides (traces learn nothing), so `NORMAL` floods.
//! VLAN actions are left out: vmnetd keeps frames in their VLAN by the output port's mode,
//! which OVS does only under `NORMAL` (see the README).
#![cfg(feature = "root-tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use vmnetd_tests::*;

const PORTS: usize = 4;

/// An ovsdb-server and ovs-vswitchd of our own, stopped on drop.
struct Ovs {
    dir: PathBuf,
}

impl Ovs {
    fn env(&self, c: &mut Command) {
        for k in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR", "OVS_PKGDATADIR"] {
            if k == "OVS_PKGDATADIR" {
                c.env(k, "/usr/share/openvswitch");
            } else {
                c.env(k, &self.dir);
            }
        }
    }

    fn run(&self, prog: &str, args: &[&str]) -> Out {
        let mut c = Command::new(prog);
        self.env(&mut c);
        c.args(args);
        run_cmd(&mut c)
    }

    fn vsctl(&self, args: &str) -> String {
        let db = format!("--db=unix:{}/db.sock", self.dir.display());
        let mut a = vec![db.as_str(), "--timeout=20"];
        a.extend(args.split_whitespace());
        self.run("ovs-vsctl", &a).ok().to_owned()
    }

    fn appctl(&self, args: &[&str]) -> Out {
        let t = format!("{}/ovs-vswitchd.ctl", self.dir.display());
        let mut a = vec!["-t", t.as_str()];
        a.extend_from_slice(args);
        self.run("ovs-appctl", &a)
    }

    fn ofctl(&self, args: &[&str]) -> Out {
        self.run("ovs-ofctl", args)
    }

    fn start(dir: &Path) -> Ovs {
        let ovs = Ovs { dir: dir.to_owned() };
        let db = dir.join("conf.db");
        ovs.run("ovsdb-tool", &["create", db.to_str().unwrap(), "/usr/share/openvswitch/vswitch.ovsschema"]).ok();
        let remote = format!("--remote=punix:{}/db.sock", dir.display());
        let pid = format!("--pidfile={}/ovsdb-server.pid", dir.display());
        let log = format!("--log-file={}/ovsdb-server.log", dir.display());
        let ctl = format!("--unixctl={}/ovsdb-server.ctl", dir.display());
        ovs.run("ovsdb-server", &[db.to_str().unwrap(), &remote, &pid, &log, &ctl, "--detach"]).ok();
        let db_sock = format!("unix:{}/db.sock", dir.display());
        let pid = format!("--pidfile={}/ovs-vswitchd.pid", dir.display());
        let log = format!("--log-file={}/ovs-vswitchd.log", dir.display());
        let ctl = format!("--unixctl={}/ovs-vswitchd.ctl", dir.display());
        ovs.run("ovs-vswitchd", &[&db_sock, &pid, &log, &ctl, "--enable-dummy", "--disable-system", "--detach"]).ok();
        ovs.vsctl("--no-wait init");
        ovs.vsctl("add-br br0 -- set bridge br0 datapath_type=netdev fail-mode=secure");
        for i in 1..=PORTS {
            ovs.vsctl(&format!("add-port br0 p{i} -- set interface p{i} type=dummy ofport_request={i}"));
        }
        ovs
    }

    /// Datapath port number -> OpenFlow port number, from `dpif/show`.
    fn odp_ports(&self) -> BTreeMap<u32, u32> {
        let out = self.appctl(&["dpif/show"]).ok().to_owned();
        let mut m = BTreeMap::new();
        for line in out.lines() {
            // "    p1 1/2: (dummy)"
            let mut w = line.split_whitespace();
            let (Some(_name), Some(nums)) = (w.next(), w.next()) else { continue };
            let nums = nums.trim_end_matches(':');
            if let Some((of, odp)) = nums.split_once('/') {
                if let (Ok(of), Ok(odp)) = (of.parse::<u32>(), odp.parse()) {
                    m.insert(odp, of);
                }
            }
        }
        m
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for p in ["ovs-vswitchd", "ovsdb-server"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{p}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                }
            }
        }
    }
}

/// A small deterministic generator (xorshift), so a failure can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A rule with its port references as indexes (1-based), printed for either side.
struct Rule {
    priority: u16,
    matches: Vec<String>,
    in_port: Option<usize>,
    actions: Vec<Act>,
}

enum Act {
    Normal,
    Flood,
    Output(usize),
}

impl Rule {
    fn text(&self, port: &dyn Fn(usize) -> String) -> String {
        let mut m = vec![format!("priority={}", self.priority)];
        if let Some(p) = self.in_port {
            m.push(format!("in_port={}", port(p)));
        }
        m.extend(self.matches.iter().cloned());
        let acts: Vec<String> = self
            .actions
            .iter()
            .map(|a| match a {
                Act::Normal => "normal".to_owned(),
                Act::Flood => "flood".to_owned(),
                Act::Output(p) => format!("output:{}", port(*p)),
            })
            .collect();
        format!("{} actions={}", m.join(","), if acts.is_empty() { "drop".to_owned() } else { acts.join(",") })
    }
}

const MACS: [&str; 3] = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:01:02"];
const NETS: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.1.2"];

fn random_rule(r: &mut Rng, priority: u16) -> Rule {
    let mut m = Vec::new();
    let in_port = r.chance(40).then(|| 1 + r.below(PORTS as u64) as usize);
    if r.chance(25) {
        let mac = MACS[r.below(3) as usize];
        m.push(if r.chance(50) { format!("dl_src={mac}") } else { format!("dl_src={mac}/ff:ff:ff:ff:00:00") });
    }
    if r.chance(20) {
        m.push(format!("dl_dst={}", if r.chance(50) { "ff:ff:ff:ff:ff:ff" } else { MACS[r.below(3) as usize] }));
    }
    let l3 = r.below(8);
    let cidr = |r: &mut Rng| {
        let a = NETS[r.below(3) as usize];
        match r.below(3) {
            0 => a.to_owned(),
            1 => format!("{a}/24"),
            _ => format!("{a}/16"),
        }
    };
    match l3 {
        0 => {}
        1 => {
            m.push("ip".into());
            if r.chance(60) {
                m.push(format!("nw_dst={}", cidr(r)));
            }
            if r.chance(30) {
                m.push(format!("nw_src={}", cidr(r)));
            }
        }
        2 | 3 => {
            m.push(if l3 == 2 { "tcp" } else { "udp" }.into());
            if r.chance(50) {
                m.push(format!("nw_dst={}", cidr(r)));
            }
            match r.below(3) {
                0 => m.push(format!("tp_dst={}", [22, 80, 53][r.below(3) as usize])),
                1 => m.push("tp_dst=0x0050/0xfff0".into()),
                _ => m.push(format!("tp_src={}", [1000, 2000][r.below(2) as usize])),
            }
        }
        4 => {
            m.push("icmp".into());
            if r.chance(50) {
                m.push(format!("icmp_type={}", [0, 8][r.below(2) as usize]));
            }
        }
        5 => {
            m.push("arp".into());
            if r.chance(60) {
                m.push(format!("arp_tpa={}", cidr(r)));
            }
            if r.chance(30) {
                m.push(format!("arp_spa={}", NETS[r.below(3) as usize]));
            }
        }
        6 => m.push("ipv6".into()),
        _ => m.push(format!("ip,nw_proto={}", [6, 17, 1, 47][r.below(4) as usize])),
    }
    let n = r.below(4);
    let actions = (0..n)
        .map(|_| match r.below(6) {
            0 => Act::Normal,
            1 => Act::Flood,
            _ => Act::Output(1 + r.below(PORTS as u64) as usize),
        })
        .collect();
    Rule { priority, matches: m, in_port, actions }
}

/// A frame as a trace flow (both tools' syntax), with its in-port index.
fn random_frame(r: &mut Rng) -> (usize, String) {
    let in_port = 1 + r.below(PORTS as u64) as usize;
    let src = MACS[r.below(3) as usize];
    let dst = if r.chance(50) { "ff:ff:ff:ff:ff:ff" } else { MACS[r.below(3) as usize] };
    let nw = |r: &mut Rng| NETS[r.below(3) as usize];
    let l3 = match r.below(6) {
        // ofproto/trace wants OVS's per-protocol names for L4 ports (vmnetd takes both).
        0 => format!(
            "tcp,nw_src={},nw_dst={},tcp_src={},tcp_dst={}",
            nw(r),
            nw(r),
            [1000, 2000][r.below(2) as usize],
            [22, 80, 81, 53][r.below(4) as usize]
        ),
        1 => format!("udp,nw_src={},nw_dst={},udp_src=1000,udp_dst={}", nw(r), nw(r), [53, 80][r.below(2) as usize]),
        2 => format!("icmp,nw_src={},nw_dst={},icmp_type={}", nw(r), nw(r), [0, 8][r.below(2) as usize]),
        3 => format!("arp,arp_spa={},arp_tpa={}", nw(r), nw(r)),
        4 => "ipv6,ipv6_src=fd00::1,ipv6_dst=fd00::2".to_owned(),
        _ => format!("ip,nw_proto=47,nw_src={},nw_dst={}", nw(r), nw(r)),
    };
    (in_port, format!("dl_src={src},dl_dst={dst},{l3}"))
}

/// OVS's output ports (OpenFlow numbers) from `ofproto/trace`'s datapath actions.
fn ovs_outputs(ovs: &Ovs, odp: &BTreeMap<u32, u32>, in_port: usize, flow: &str) -> BTreeSet<usize> {
    let out = ovs.appctl(&["ofproto/trace", "br0", &format!("in_port={in_port},{flow}")]);
    let text = out.ok();
    let line = text
        .lines()
        .find(|l| l.starts_with("Datapath actions:"))
        .unwrap_or_else(|| panic!("no datapath actions: {text}"));
    let acts = line.trim_start_matches("Datapath actions:").trim();
    if acts == "drop" {
        return BTreeSet::new();
    }
    acts.split(',')
        .map(|a| {
            let n: u32 = a.trim().parse().unwrap_or_else(|_| panic!("unexpected datapath action {a:?} in {line}"));
            *odp.get(&n).unwrap_or_else(|| panic!("unknown datapath port {n}: {odp:?}")) as usize
        })
        // The bridge's own port (LOCAL, 65534), which floods reach in OVS: a vmnetd bridge
        // has none (its host side is an internal port like any other).
        .filter(|p| *p != 65534)
        .collect()
}

#[test]
fn trace_agrees_with_ovs_ofproto_trace_on_random_rule_sets() {
    for tool in ["ovs-vswitchd", "ovsdb-server", "ovs-ofctl", "ovs-appctl", "ovs-vsctl", "ovsdb-tool"] {
        assert!(
            run("sh", ["-c", &format!("command -v {tool}")]).success(),
            "{tool} is missing (apt install openvswitch-switch)"
        );
    }
    in_netns(|| {
        let dir = test_dir();
        let ovs_dir = dir.path().join("ovs");
        std::fs::create_dir_all(&ovs_dir).unwrap();
        let ovs = Ovs::start(&ovs_dir);
        let odp = ovs.odp_ports();
        assert_eq!(odp.len(), PORTS + 1, "dpif/show: {odp:?}");
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        for i in 1..=PORTS {
            d.cli(&["port", "add", "br0", &format!("p{i}"), "--internal", "--ifname", &format!("vp{i}")]).ok();
        }
        let seed: u64 = std::env::var("VMNETD_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234_abcd);
        let sets: usize = std::env::var("VMNETD_DIFF_SETS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
        let mut rng = Rng(seed);
        let (mut compared, mut differ) = (0, Vec::new());
        for set in 0..sets {
            let n = 1 + rng.below(8) as usize;
            // Distinct priorities: OVS leaves ties between overlapping rules undefined.
            let mut prios: Vec<u16> = (0..n as u16).map(|i| 100 + i * 10).collect();
            for i in (1..prios.len()).rev() {
                prios.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let rules: Vec<Rule> = prios.iter().map(|p| random_rule(&mut rng, *p)).collect();
            let ofile = dir.path().join("ovs.rules");
            let vfile = dir.path().join("vmnetd.rules");
            // vmnetd's table miss is NORMAL: OVS's default flow in standalone mode.
            let miss = "priority=0 actions=normal\n".to_owned();
            std::fs::write(&ofile, rules.iter().map(|r| r.text(&|p| p.to_string()) + "\n").collect::<String>() + &miss)
                .unwrap();
            std::fs::write(&vfile, rules.iter().map(|r| r.text(&|p| format!("p{p}")) + "\n").collect::<String>())
                .unwrap();
            ovs.ofctl(&["del-flows", "br0"]).ok();
            ovs.ofctl(&["add-flows", "br0", ofile.to_str().unwrap()]).ok();
            d.cli(&["flow", "replace", "br0", vfile.to_str().unwrap()]).ok();
            for _ in 0..25 {
                let (in_port, flow) = random_frame(&mut rng);
                let want = ovs_outputs(&ovs, &odp, in_port, &flow);
                let t = d.cli(&["--json", "trace", "br0", &format!("in_port=p{in_port},{flow}")]).json();
                let got: BTreeSet<usize> = t["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().trim_start_matches('p').parse().unwrap())
                    .collect();
                compared += 1;
                if got != want {
                    differ.push(format!(
                        "set {set}, frame in_port={in_port},{flow}: OVS {want:?}, vmnetd {got:?}\nrules:\n{}\nvmnetd trace:\n{}",
                        std::fs::read_to_string(&ofile).unwrap(),
                        t["text"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        eprintln!("compared {compared} traces over {sets} rule sets (seed {seed:#x}): {} differ", differ.len());
        assert!(differ.is_empty(), "{} of {compared} traces differ from OVS; first:\n{}", differ.len(), differ[0]);
    });
}
