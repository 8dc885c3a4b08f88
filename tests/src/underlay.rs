//! A routed underlay for tunnel tests and benchmarks: a router namespace with IPv4 forwarding
//! and one veth per host namespace, so the hosts reach each other over L3 only (what VXLAN is
//! for). Host `N` (1-based) is `10.9.N.2/24` on its `ul0`, with a default route through the
//! router's `10.9.N.1` on `hN`. Each host may run its own vmnetd ([`daemon_in`]) and has client
//! namespaces behind it ([`client`]). Every namespace is deleted on drop.

use std::path::Path;

use crate::topo::Ns;
use crate::{bin, run, Daemon};

/// The underlay address (VTEP) of host `n` (1-based).
pub fn vtep(n: usize) -> String {
    format!("10.9.{n}.2")
}

/// A router and its hosts.
pub struct Underlay {
    pub router: Ns,
    pub hosts: Vec<Ns>,
}

impl Underlay {
    /// A router and `n` hosts, every underlay veth (both ends) with `mtu`.
    pub fn new(n: usize, mtu: u32) -> Underlay {
        let router = Ns::new("rt");
        router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]).ok();
        let hosts = (1..=n)
            .map(|i| {
                let h = Ns::new(&format!("h{i}"));
                router.ip(&format!("link add h{i} type veth peer name ul0 netns {}", h.name));
                router.ip(&format!("link set h{i} mtu {mtu} up"));
                router.ip(&format!("addr add 10.9.{i}.1/24 dev h{i}"));
                h.ip(&format!("link set ul0 mtu {mtu} up"));
                h.ip(&format!("addr add {}/24 dev ul0", vtep(i)));
                h.ip(&format!("route add default via 10.9.{i}.1"));
                h
            })
            .collect();
        Underlay { router, hosts }
    }

    /// Host `n` (1-based).
    pub fn host(&self, n: usize) -> &Ns {
        &self.hosts[n - 1]
    }

    /// The VTEPs of every host but `n`, comma-separated: a tunnel's `--remote`.
    pub fn remotes(&self, n: usize) -> String {
        (1..=self.hosts.len()).filter(|&i| i != n).map(vtep).collect::<Vec<_>>().join(",")
    }

    /// The router's interface toward host `n` (where a capture sees that host's underlay).
    pub fn router_if(n: usize) -> String {
        format!("h{n}")
    }
}

/// A client namespace behind `host`: `eth0` with `addr` (CIDR) in the client, its veth peer
/// `ifname` up in the host's namespace (a bridge port there).
pub fn client(host: &Ns, tag: &str, ifname: &str, addr: &str) -> Ns {
    let c = Ns::new(tag);
    host.ip(&format!("link add {ifname} type veth peer name eth0 netns {}", c.name));
    host.ip(&format!("link set {ifname} up"));
    c.ip(&format!("addr add {addr} dev eth0"));
    c.ip("link set eth0 up");
    c
}

/// A vmnetd daemon running inside `ns` (`ip netns exec`), state and socket under `root` (one
/// root per daemon). The CLI reaches it through its socket from any namespace;
/// [`Daemon::restart`] starts it in `ns` again.
pub fn daemon_in(ns: &Ns, root: &Path) -> Daemon {
    Daemon::start_wrapped(root, &bin("vmnetd"), &["ip".into(), "netns".into(), "exec".into(), ns.name.clone()], &[])
}

/// One UDP datagram to or from port 4789 of a capture, as tshark decodes it as VXLAN.
#[derive(Debug, Clone, Default)]
pub struct Datagram {
    pub frame: u64,
    /// Outer IPv4 source and destination.
    pub src: String,
    pub dst: String,
    pub src_port: u16,
    pub dst_port: u16,
    /// `None`: tshark found no VXLAN header (or no VNI in it).
    pub vni: Option<u32>,
    /// The first two header bytes (`0x0800`: the `I` flag and a zero reserved byte), the next
    /// two (reserved, tshark's "Group Policy ID") and the last byte (reserved).
    pub flags: Option<u16>,
    pub gbp: Option<u16>,
    pub reserved: Option<u8>,
    /// The inner Ethernet source and destination.
    pub inner_src: Option<String>,
    pub inner_dst: Option<String>,
    /// tshark's Info column (what the inner frame is).
    pub info: String,
}

impl Datagram {
    /// A header as RFC 7348 writes it: flags `0x08`, every reserved bit zero.
    pub fn well_formed(&self) -> bool {
        self.flags == Some(0x0800) && self.gbp == Some(0) && self.reserved == Some(0) && self.vni.is_some()
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.split(',').next().filter(|x| !x.is_empty()).and_then(|x| x.parse().ok())
}

fn hex16(s: &str) -> Option<u16> {
    let x = s.split(',').next()?;
    u16::from_str_radix(x.trim_start_matches("0x"), 16).ok()
}

/// Every UDP datagram to or from port 4789 in `pcap`, decoded as VXLAN (`tshark -d
/// udp.port==4789,vxlan`). ICMP errors that quote one are left out. A field that occurs twice
/// (outer and inner `eth.src`, `ip.src`) is printed by tshark comma-separated, outer first.
pub fn vxlan_datagrams(pcap: &Path) -> Vec<Datagram> {
    let fields = [
        "frame.number",
        "ip.src",
        "ip.dst",
        "udp.srcport",
        "udp.dstport",
        "vxlan.vni",
        "vxlan.flags",
        "vxlan.gbp",
        "vxlan.reserved8",
        "eth.src",
        "eth.dst",
        "_ws.col.Info",
    ];
    let mut args: Vec<String> =
        ["-r", pcap.to_str().unwrap(), "-d", "udp.port==4789,vxlan", "-Y", "udp.port==4789 && !icmp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(["-T".into(), "fields".into()]);
    for f in fields {
        args.push("-e".into());
        args.push(f.into());
    }
    let out = run("tshark", &args);
    out.ok()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            // Tab-separated; the Info column last, whole.
            let f: Vec<&str> = l.splitn(fields.len(), '\t').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("");
            let first = |i: usize| get(i).split(',').next().unwrap_or("").to_owned();
            let second = |i: usize| get(i).split(',').nth(1).map(str::to_owned);
            Datagram {
                frame: num(get(0)).unwrap_or(0),
                src: first(1),
                dst: first(2),
                src_port: num(get(3)).unwrap_or(0),
                dst_port: num(get(4)).unwrap_or(0),
                vni: num(get(5)),
                flags: hex16(get(6)),
                gbp: num(get(7)),
                reserved: num(get(8)),
                inner_src: second(9),
                inner_dst: second(10),
                info: get(11).to_owned(),
            }
        })
        .collect()
}

/// What tshark flags in `pcap` (VXLAN decoded on 4789): malformed packets and expert
/// infos of severity error, one summary line each. Empty when the capture is clean.
pub fn tshark_errors(pcap: &Path) -> String {
    run(
        "tshark",
        [
            "-r",
            pcap.to_str().unwrap(),
            "-d",
            "udp.port==4789,vxlan",
            "-Y",
            "_ws.malformed || _ws.expert.severity >= error",
        ],
    )
    .ok()
    .trim()
    .to_owned()
}
