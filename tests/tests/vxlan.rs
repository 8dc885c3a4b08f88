//! VXLAN tunnel ports between hosts over a routed underlay: vmnetd's built-in tunnel (access,
//! and trunk with a VLAN-to-VNI map) between vmnetd hosts and against the kernel's vxlan
//! devices on Linux bridges, the kernel tunnel port vmnetd makes on a Linux bridge, daemon
//! restarts, and a QEMU guest on vhost-user. Each host is a network namespace behind a router
//! namespace (`vmnetd_tests::underlay`) running its own daemon; clients are namespaces behind
//! the hosts, all in one IP subnet so that only the VLANs keep them apart; captures on the
//! router are decoded by tshark.
#![cfg(feature = "root-tests")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vmnetd_tests::guest::{initramfs, vhost_user_args, Guest};
use vmnetd_tests::topo::{Ns, Tcpdump};
use vmnetd_tests::underlay::{client, daemon_in, tshark_errors, vtep, vxlan_datagrams, Datagram, Underlay};
use vmnetd_tests::*;

/// The VLANs the trunk tunnels carry, and their VNIs.
const VLANS: [(u16, u32); 2] = [(10, 1010), (20, 1020)];

fn vni_of(vlan: u16) -> u32 {
    VLANS.iter().find(|v| v.0 == vlan).map(|v| v.1).unwrap()
}

/// `vmnetd CMD` against `d`, the command's words split at whitespace.
fn vm(d: &Daemon, cmd: &str) -> Out {
    d.cli(&cmd.split_whitespace().collect::<Vec<_>>())
}

/// A client namespace on VLAN `vlan` behind host `host` (its veth there is `c<vlan>`), at
/// `192.168.50.<vlan + host>/24`.
struct Client {
    ns: Ns,
    host: usize,
    vlan: u16,
    addr: String,
    mac: String,
}

impl Client {
    fn new(u: &Underlay, host: usize, vlan: u16) -> Client {
        let addr = format!("192.168.50.{}", usize::from(vlan) + host);
        let ns = client(u.host(host), &format!("h{host}c{vlan}"), &format!("c{vlan}"), &format!("{addr}/24"));
        let mac = ns.mac("eth0");
        Client { ns, host, vlan, addr, mac }
    }

    fn ifname(&self) -> String {
        format!("c{}", self.vlan)
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "h{} VLAN {} {} ({})", self.host, self.vlan, self.addr, self.mac)
    }
}

/// vmnetd hosts (daemons in the order of `hosts`) and every client. Fields drop in order:
/// daemons first, their state directories last.
struct Site {
    daemons: Vec<Daemon>,
    clients: Vec<Client>,
    _dirs: Vec<tempfile::TempDir>,
}

/// On each of `hosts`: a daemon with bridge `br0`, a trunk tunnel `vx` to every other host of
/// `u` (VLAN 10 in VNI 1010, VLAN 20 in VNI 1020), and one client per VLAN on an access port.
fn vmnetd_site(u: &Underlay, hosts: &[usize]) -> Site {
    let mut site = Site { daemons: Vec::new(), clients: Vec::new(), _dirs: Vec::new() };
    for &n in hosts {
        let dir = test_dir();
        let d = daemon_in(u.host(n), dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (local, remotes) = (vtep(n), u.remotes(n));
        let trunk = "--trunk 10,20 --vni-map 10:1010,20:1020";
        vm(&d, &format!("port add br0 vx --vxlan --local {local} --remote {remotes} {trunk}")).ok();
        for (vlan, _) in VLANS {
            let c = Client::new(u, n, vlan);
            d.cli(&["port", "add", "br0", &c.ifname(), "--netdev", &c.ifname(), "--vlan", &vlan.to_string()]).ok();
            site.clients.push(c);
        }
        site.daemons.push(d);
        site._dirs.push(dir);
    }
    site
}

/// Host `n` without vmnetd: per VLAN a kernel vxlan device `vx<VNI>` (learning, the other
/// hosts as all-zero FDB entries: head-end replication) and a Linux bridge `br<VLAN>` with it
/// and the VLAN's client. Returns the clients and, per VLAN, the MACs of the bridge and the
/// vxlan device (the bridge itself sends IGMP reports into its VNI).
fn kernel_host(u: &Underlay, n: usize) -> (Vec<Client>, Vec<(u16, String)>) {
    let h = u.host(n);
    let (mut clients, mut macs) = (Vec::new(), Vec::new());
    for (vlan, vni) in VLANS {
        let (vx, br) = (format!("vx{vni}"), format!("br{vlan}"));
        h.ip(&format!("link add {vx} type vxlan id {vni} local {} dstport 4789 learning", vtep(n)));
        for r in u.remotes(n).split(',') {
            h.exec("bridge", &["fdb", "append", "00:00:00:00:00:00", "dev", &vx, "dst", r]).ok();
        }
        h.ip(&format!("link add {br} type bridge"));
        h.ip(&format!("link set {vx} master {br}"));
        let c = Client::new(u, n, vlan);
        h.ip(&format!("link set {} master {br}", c.ifname()));
        h.ip(&format!("link set {vx} up"));
        h.ip(&format!("link set {br} up"));
        macs.push((vlan, h.mac(&br)));
        macs.push((vlan, h.mac(&vx)));
        clients.push(c);
    }
    (clients, macs)
}

/// Runs `f` on every item at once (a ping that must fail takes its whole timeout).
fn par<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let hs: Vec<_> = items.iter().map(|i| s.spawn(move || f(i))).collect();
        hs.into_iter().map(|h| h.join().expect("ping thread")).collect()
    })
}

/// Ordered pairs of clients on different hosts in one VLAN (`same`), or of clients in
/// different VLANs, on any host (`!same`).
fn pairs<'a>(all: &[&'a Client], same: bool) -> Vec<(&'a Client, &'a Client)> {
    let mut v = Vec::new();
    for a in all {
        for b in all {
            let keep = if same { a.vlan == b.vlan && a.host != b.host } else { a.vlan != b.vlan };
            if keep {
                v.push((*a, *b));
            }
        }
    }
    v
}

/// `from` reaches `to`: up to three rounds of three pings (the first resolve ARP across the
/// tunnel, flooded to every remote).
fn reaches(from: &Client, to: &Client) -> bool {
    (0..3).any(|_| from.ns.ping(&to.addr, 3))
}

/// Every pair pings (`expect`) or every pair fails to.
#[track_caller]
fn assert_pings(pairs: &[(&Client, &Client)], expect: bool) {
    assert!(!pairs.is_empty());
    let got = par(pairs, |(a, b)| if expect { reaches(a, b) } else { a.ns.ping(&b.addr, 2) });
    let wrong: Vec<String> =
        pairs.iter().zip(got).filter(|(_, g)| *g != expect).map(|((a, b), _)| format!("{a} -> {b}")).collect();
    assert!(wrong.is_empty(), "{}:\n{}", if expect { "no replies" } else { "replies across VLANs" }, wrong.join("\n"));
}

/// The port named `name` of `br0` in `port list --json`.
fn port(d: &Daemon, name: &str) -> serde_json::Value {
    let list = d.cli(&["--json", "port", "list", "br0"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no port {name}: {list:#}"))
}

fn drops(p: &serde_json::Value, reason: &str) -> u64 {
    p["counters"]["drops"][reason].as_u64().unwrap_or(0)
}

/// A capture of the underlay: every datagram on port 4789 is VXLAN in VNI 1010 or 1020 with a
/// header as RFC 7348 writes it, and carries only frames from its own VLAN (inner source among
/// `allowed`' MACs of that VLAN); every client's frames were seen in its VNI.
fn check_capture(what: &str, dgs: &[Datagram], allowed: &[(u16, String)], clients: &[&Client]) {
    assert!(!dgs.is_empty(), "{what}: no VXLAN datagrams captured");
    let mut seen: BTreeSet<(u32, String)> = BTreeSet::new();
    for dg in dgs {
        let vni = dg.vni.unwrap_or_else(|| panic!("{what}: a datagram on 4789 is not VXLAN: {dg:?}"));
        let vlan = VLANS.iter().find(|v| v.1 == vni).map(|v| v.0);
        let vlan = vlan.unwrap_or_else(|| panic!("{what}: VNI {vni} is neither 1010 nor 1020: {dg:?}"));
        assert!(dg.well_formed(), "{what}: malformed VXLAN header: {dg:?}");
        let src = dg.inner_src.clone().unwrap_or_else(|| panic!("{what}: no inner Ethernet frame: {dg:?}"));
        assert!(
            allowed.iter().any(|(v, m)| *v == vlan && *m == src),
            "{what}: VNI {vni} carries a frame from {src}, which is not on VLAN {vlan}: {dg:?}\nallowed: {allowed:?}"
        );
        seen.insert((vni, src));
    }
    for c in clients {
        assert!(seen.contains(&(vni_of(c.vlan), c.mac.clone())), "{what}: nothing from {c} in VNI {}", vni_of(c.vlan));
    }
}

/// `br0`'s FDB on host `me`: its own clients on their ports, every other client behind the
/// tunnel port `vx` with the VTEP of its host as `remote`.
#[track_caller]
fn check_fdb(d: &Daemon, me: usize, clients: &[&Client]) {
    let fdb = d.cli(&["--json", "fdb", "show", "br0"]).json();
    let rows = fdb.as_array().unwrap();
    for c in clients {
        let row = rows
            .iter()
            .find(|r| r["mac"] == c.mac.as_str() && r["vlan"] == c.vlan)
            .unwrap_or_else(|| panic!("h{me} has no FDB entry for {c}:\n{fdb:#}"));
        if c.host == me {
            assert_eq!(row["port"], c.ifname(), "{c}: {row}");
            assert!(row["remote"].is_null(), "a local MAC has a remote VTEP: {row}");
        } else {
            assert_eq!(row["port"], "vx", "{c}: {row}");
            assert_eq!(row["remote"], vtep(c.host), "{c}: {row}");
        }
    }
}

/// Captures on the router's interface toward each host.
fn capture_underlay(u: &Underlay, dir: &std::path::Path) -> Vec<Tcpdump> {
    (1..=u.hosts.len())
        .map(|n| Tcpdump::start(&u.router, &Underlay::router_if(n), &dir.join(format!("underlay-h{n}.pcap"))))
        .collect()
}

/// Every same-VLAN pair of `all` pings, no cross-VLAN pair does, while the router captures
/// each host's underlay; the captures, stopped.
fn pings_captured(u: &Underlay, dir: &std::path::Path, all: &[&Client]) -> Vec<Tcpdump> {
    let mut caps = capture_underlay(u, dir);
    assert_pings(&pairs(all, true), true);
    assert_pings(&pairs(all, false), false);
    for c in &mut caps {
        c.stop();
    }
    caps
}

#[test]
fn three_hosts_two_vlans_cross_an_l3_underlay_and_stay_apart() {
    in_netns(|| {
        let u = Underlay::new(3, 1600);
        let site = vmnetd_site(&u, &[1, 2, 3]);
        let all: Vec<&Client> = site.clients.iter().collect();
        let dir = test_dir();
        let caps = pings_captured(&u, dir.path(), &all);

        let allowed: Vec<(u16, String)> = all.iter().map(|c| (c.vlan, c.mac.clone())).collect();
        for (n, cap) in caps.iter().enumerate() {
            let n = n + 1;
            let dgs = vxlan_datagrams(&cap.file);
            check_capture(&format!("underlay of h{n}"), &dgs, &allowed, &all);
            let mut src_ports = BTreeSet::new();
            // Inner flow (VNI, inner MACs) -> the source ports it left from.
            let mut flows: std::collections::BTreeMap<_, BTreeSet<u16>> = Default::default();
            for dg in &dgs {
                assert!(dg.src == vtep(n) || dg.dst == vtep(n), "h{n}'s link carried {dg:?}");
                // To the VXLAN port, from a source port chosen by the inner flow (ECMP
                // entropy, as the kernel's vxlan).
                assert_eq!(dg.dst_port, 4789, "{dg:?}");
                assert_ne!(dg.src_port, 4789, "{dg:?}");
                if dg.src == vtep(n) {
                    src_ports.insert(dg.src_port);
                    flows.entry((dg.vni, dg.inner_src.clone(), dg.inner_dst.clone())).or_default().insert(dg.src_port);
                }
            }
            // The port is a hash of the flow (8 ports): with a handful of flows, two may share
            // one by chance, so spread is asserted only where chance cannot explain its
            // absence (1 in 8^5 for 6 flows).
            if flows.len() >= 6 {
                assert!(
                    src_ports.len() >= 2,
                    "h{n}'s {} flows all left from one source port: {src_ports:?}",
                    flows.len()
                );
            }
            let errs = tshark_errors(&cap.file);
            assert!(errs.is_empty(), "tshark flags the capture of h{n}'s underlay:\n{errs}");
        }

        check_fdb(&site.daemons[0], 1, &all);
        for d in &site.daemons {
            let vx = port(d, "vx");
            assert!(vx["vxlan"]["encapsulated"].as_u64().unwrap() > 0, "{vx:#}");
            assert!(vx["vxlan"]["decapsulated"].as_u64().unwrap() > 0, "{vx:#}");
            for reason in ["vxlan_unknown_vni", "vxlan_bad_header", "mtu", "vxlan_unknown_remote"] {
                assert_eq!(drops(&vx, reason), 0, "{reason}: {vx:#}");
            }
        }
    });
}

#[test]
fn kernel_vxlan_and_linux_bridge_interoperate() {
    in_netns(|| {
        let u = Underlay::new(3, 1600);
        let site = vmnetd_site(&u, &[1, 2]);
        let (kclients, kmacs) = kernel_host(&u, 3);
        let all: Vec<&Client> = site.clients.iter().chain(&kclients).collect();
        let dir = test_dir();
        let caps = pings_captured(&u, dir.path(), &all);

        let mut allowed: Vec<(u16, String)> = all.iter().map(|c| (c.vlan, c.mac.clone())).collect();
        allowed.extend(kmacs);
        for (n, cap) in caps.iter().enumerate() {
            let n = n + 1;
            let dgs = vxlan_datagrams(&cap.file);
            check_capture(&format!("underlay of h{n}"), &dgs, &allowed, &all);
            let errs = tshark_errors(&cap.file);
            assert!(errs.is_empty(), "tshark flags the capture of h{n}'s underlay:\n{errs}");
            // Both directions crossed between the kernel and vmnetd, all with flags 0x08 and
            // zero reserved fields (check_capture).
            let kernel = vtep(3);
            if n != 3 {
                assert!(
                    dgs.iter().any(|d| d.src == kernel && d.dst == vtep(n)),
                    "nothing from the kernel host to h{n}"
                );
                assert!(
                    dgs.iter().any(|d| d.src == vtep(n) && d.dst == kernel),
                    "nothing from h{n} to the kernel host"
                );
            }
        }
        // tshark's own words on the headers from each side (h1's link carries both).
        for src in [vtep(1), vtep(3)] {
            let (pcap, filter) = (caps[0].file.to_str().unwrap(), format!("vxlan && ip.src=={src}"));
            let shown = run("tshark", ["-r", pcap, "-d", "udp.port==4789,vxlan", "-Y", &filter, "-V"]);
            assert!(shown.ok().contains("Flags: 0x0800, VXLAN Network ID (VNI)"), "{src}:\n{}", shown.stdout);
        }

        // The kernel learned vmnetd's clients behind their VTEPs...
        let h3 = u.host(3);
        for c in all.iter().filter(|c| c.host != 3) {
            let fdb = h3.exec("bridge", &["fdb", "show", "dev", &format!("vx{}", vni_of(c.vlan))]).ok().to_owned();
            assert!(
                fdb.lines().any(|l| l.starts_with(&c.mac) && l.contains(&format!("dst {}", vtep(c.host)))),
                "the kernel on h3 did not learn {c}:\n{fdb}"
            );
        }
        // ...and vmnetd the kernel host's.
        check_fdb(&site.daemons[0], 1, &all);
        check_fdb(&site.daemons[1], 2, &all);
        let vx = port(&site.daemons[0], "vx");
        assert_eq!(drops(&vx, "vxlan_bad_header"), 0, "{vx:#}");
        assert_eq!(drops(&vx, "vxlan_unknown_vni"), 0, "{vx:#}");
    });
}

#[test]
fn linux_bridge_tunnel_port_made_and_removed_by_vmnetd() {
    in_netns(|| {
        let u = Underlay::new(2, 1600);
        let (dir1, dir2) = (test_dir(), test_dir());
        // h1: a Linux bridge; vmnetd makes the kernel vxlan device for the tunnel port.
        let d1 = daemon_in(u.host(1), dir1.path());
        d1.cli(&["bridge", "add", "lbr", "--kind", "linux"]).ok();
        let a = Client::new(&u, 1, 10);
        d1.cli(&["port", "add", "lbr", "c10", "--netdev", "c10"]).ok();
        d1.cli(&["port", "add", "lbr", "vx10", "--vxlan", "--vni", "1010", "--local", &vtep(1), "--remote", &vtep(2)])
            .ok();
        // h2: the built-in bridge, VNI 1010 as VLAN 10.
        let d2 = daemon_in(u.host(2), dir2.path());
        d2.cli(&["bridge", "add", "br0"]).ok();
        vm(&d2, &format!("port add br0 vx --vxlan --vni 1010 --vlan 10 --local {} --remote {}", vtep(2), vtep(1))).ok();
        let b = Client::new(&u, 2, 10);
        d2.cli(&["port", "add", "br0", "c10", "--netdev", "c10", "--vlan", "10"]).ok();

        let h1 = u.host(1);
        let det = h1.ip("-d link show dev vx10");
        for want in ["vxlan id 1010", "local 10.9.1.2", "dstport 4789", "master lbr"] {
            assert!(det.contains(want), "no {want:?} in:\n{det}");
        }
        assert!(!det.contains("nolearning"), "the device must learn:\n{det}");
        let kfdb = h1.exec("bridge", &["fdb", "show", "dev", "vx10"]).ok().to_owned();
        assert!(kfdb.contains("00:00:00:00:00:00 dst 10.9.2.2"), "the remote is not an all-zero FDB entry:\n{kfdb}");

        assert!(reaches(&a, &b), "{a} -> {b}");
        assert!(reaches(&b, &a), "{b} -> {a}");
        let kfdb = h1.exec("bridge", &["fdb", "show", "dev", "vx10"]).ok().to_owned();
        assert!(
            kfdb.lines().any(|l| l.starts_with(&b.mac) && l.contains("dst 10.9.2.2")),
            "the kernel did not learn {b}:\n{kfdb}"
        );
        check_fdb(&d2, 2, &[&a, &b]);

        // VLANs are the built-in bridge's (this kernel has no bridge VLAN filtering).
        for extra in [&["--vni", "1020", "--vlan", "20"][..], &["--trunk", "10,20", "--vni-map", "10:1010,20:1020"][..]]
        {
            let mut args = vec!["port", "add", "lbr", "vx20", "--vxlan", "--local", "10.9.1.2", "--remote", "10.9.2.2"];
            args.extend_from_slice(extra);
            let o = d1.cli(&args);
            eprintln!("refused: {}", o.failed_one_line());
            assert!(!h1.exec("ip", &["link", "show", "dev", "vx20"]).success(), "a refused port left its device");
        }

        d1.cli(&["port", "del", "lbr", "vx10"]).ok();
        assert!(
            wait_until(Duration::from_secs(5), || !h1.exec("ip", &["link", "show", "dev", "vx10"]).success()),
            "port del left the vxlan device"
        );
        assert!(!a.ns.ping(&b.addr, 2), "traffic crossed a deleted tunnel");
    });
}

#[test]
fn daemon_restart_traffic_resumes_and_remote_macs_are_relearned() {
    in_netns(|| {
        let u = Underlay::new(3, 1600);
        let mut site = vmnetd_site(&u, &[1, 2, 3]);
        let all: Vec<&Client> = site.clients.iter().collect();
        assert_pings(&pairs(&all, true), true);
        check_fdb(&site.daemons[0], 1, &all);
        // Through h1: its clients to every other host's client of their VLAN.
        let through_h1: Vec<(&Client, &Client)> = pairs(&all, true).into_iter().filter(|(a, _)| a.host == 1).collect();
        for how in ["SIGTERM", "SIGKILL"] {
            let d = &mut site.daemons[0];
            if how == "SIGTERM" {
                assert_eq!(d.stop(), Some(0));
            } else {
                d.kill();
            }
            let (a, b) = through_h1[0];
            assert!(!a.ns.ping(&b.addr, 1), "{a} reached {b} with h1's daemon down ({how})");
            d.restart();
            let t = Instant::now();
            let resumed = wait_until(Duration::from_secs(20), || {
                par(&through_h1, |(a, b)| a.ns.ping(&b.addr, 1)).iter().all(|ok| *ok)
            });
            eprintln!("traffic through h1 resumed {:?} after its daemon restarted ({how})", t.elapsed());
            assert!(resumed, "traffic through h1 did not resume after {how}:\n{}", site.daemons[0].log_text());
            // The tunnel came back as declared, and relearned every remote client.
            check_fdb(&site.daemons[0], 1, &all);
            let vx = port(&site.daemons[0], "vx");
            assert!(vx["vxlan"]["decapsulated"].as_u64().unwrap() > 0, "{vx:#}");
        }
        // The other hosts still reach each other and h1 both ways.
        assert_pings(&pairs(&all, true), true);
    });
}

/// A busybox guest script: up with `addr`, ping `peer`, send `/tmp/up` (4 MiB of random
/// bytes) to `peer`:5001, then receive `/tmp/down` from `peer`:5002 (the guest connects both
/// times: the listeners run first), and print both checksums.
fn transfer_script(addr: &str, peer: &str) -> String {
    format!(
        "ip link set eth0 up\nip addr add {addr} dev eth0\necho GUEST-READY\n\
         for i in $(seq 60); do ping -c 1 -W 1 {peer} >/dev/null && break; done\n\
         ping -c 3 -W 2 {peer} && echo G-PING-OK || echo G-PING-FAIL\n\
         dd if=/dev/urandom of=/tmp/up bs=65536 count=64 2>/dev/null\n\
         echo UP-MD5 $(md5sum /tmp/up)\n\
         nc {peer} 5001 </tmp/up && echo UP-SENT || echo UP-FAIL\n\
         mkfifo /tmp/hold\nexec 3<>/tmp/hold\n\
         nc {peer} 5002 <&3 >/tmp/down && echo DOWN-RECEIVED || echo DOWN-FAIL\n\
         echo DOWN-MD5 $(md5sum /tmp/down)\necho G-DONE\nsleep 600\n"
    )
}

/// The checksum the guest printed after `key`.
fn guest_md5(console: &str, key: &str) -> String {
    console
        .lines()
        .find_map(|l| l.split(key).nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} on the console:\n{console}"))
        .to_owned()
}

/// A child process killed (if still running) and reaped on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn md5(path: &std::path::Path) -> String {
    run("md5sum", [path]).ok().split_whitespace().next().unwrap().to_owned()
}

#[test]
fn qemu_guest_on_vhost_user_reaches_a_namespace_over_the_tunnel() {
    vmnetd_tests::guest::guest_dir();
    in_netns(|| {
        use std::process::{Command, Stdio};
        let u = Underlay::new(2, 1600);
        let (dir1, dir2) = (test_dir(), test_dir());
        let d1 = daemon_in(u.host(1), dir1.path());
        let d2 = daemon_in(u.host(2), dir2.path());
        for (n, d) in [(1, &d1), (2, &d2)] {
            d.cli(&["bridge", "add", "br0"]).ok();
            let (local, remote) = (vtep(n), vtep(3 - n));
            vm(d, &format!("port add br0 vx --vxlan --vni 1010 --vlan 10 --local {local} --remote {remote}")).ok();
        }
        // h1: a vhost-user guest on VLAN 10 (QEMU only needs the socket); h2: a namespace.
        d1.cli(&["port", "add", "br0", "g1", "--vhost-user", "g1.sock", "--owner", "nobody", "--vlan", "10"]).ok();
        let c = Client::new(&u, 2, 10);
        d2.cli(&["port", "add", "br0", "c10", "--netdev", "c10", "--vlan", "10"]).ok();
        let guest_addr = "192.168.50.11";

        // The namespace's listeners (busybox nc: it exits when the peer closes; its stdin
        // stays open, or it would half-close the connection at once).
        let up_file = dir2.path().join("up.bin");
        let mut up = Reaped(
            Command::new("ip")
                .args(["netns", "exec", &c.ns.name, "busybox", "nc", "-l", "-p", "5001"])
                .stdin(Stdio::piped())
                .stdout(std::fs::File::create(&up_file).unwrap())
                .stderr(Stdio::piped())
                .spawn()
                .expect("busybox nc"),
        );
        let down_file = dir2.path().join("down.bin");
        let mut rnd = vec![0u8; 4 << 20];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut rnd).unwrap();
        std::fs::write(&down_file, &rnd).unwrap();
        let mut down = Reaped(
            Command::new("ip")
                .args(["netns", "exec", &c.ns.name, "busybox", "nc", "-l", "-p", "5002"])
                .stdin(std::fs::File::open(&down_file).unwrap())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("busybox nc"),
        );

        let init = initramfs(dir1.path(), "g1", &transfer_script(&format!("{guest_addr}/24"), &c.addr));
        let sock = dir1.path().join("run").join("g1.sock");
        let mut g = Guest::boot("g1", &init, &vhost_user_args("0", &sock, false, "52:54:00:00:10:01"), Some(65534));
        let out = g.wait_for("G-DONE", Duration::from_secs(400));
        assert!(out.contains("G-PING-OK"), "the guest could not ping {}:\n{out}", c.addr);
        assert!(c.ns.ping(guest_addr, 2), "the namespace could not ping the guest");
        assert!(out.contains("UP-SENT") && out.contains("DOWN-RECEIVED"), "a transfer failed:\n{out}");
        assert!(wait_child(&mut up.0, Duration::from_secs(30)).success(), "the guest-to-namespace listener failed");
        assert!(wait_child(&mut down.0, Duration::from_secs(30)).success(), "the namespace-to-guest listener failed");
        let got = std::fs::metadata(&up_file).unwrap().len();
        assert_eq!(got, 4 << 20, "guest -> namespace: {got} bytes arrived");
        assert_eq!(md5(&up_file), guest_md5(&out, "UP-MD5 "), "guest -> namespace: the data changed");
        assert_eq!(guest_md5(&out, "DOWN-MD5 "), md5(&down_file), "namespace -> guest: the data changed");

        // The guest's TSO super-frames crossed the tunnel (segmented to the underlay), none
        // was dropped as too big for it.
        for d in [&d1, &d2] {
            let vx = port(d, "vx");
            assert_eq!(drops(&vx, "mtu"), 0, "{vx:#}");
            assert!(vx["vxlan"]["encapsulated"].as_u64().unwrap() > 100, "{vx:#}");
        }
        let fdb = d1.cli(&["--json", "fdb", "show", "br0"]).json();
        assert!(
            fdb.as_array().unwrap().iter().any(|r| r["mac"] == c.mac.as_str() && r["remote"] == vtep(2)),
            "{fdb:#}"
        );
        drop(g);
    });
}

/// `bash -c "printf ... > /dev/udp/DST/4789"` in `ns`: one datagram of `hex` bytes.
fn send_udp(ns: &Ns, dst: &str, hex: &str) {
    let esc: String = hex.as_bytes().chunks(2).map(|b| format!("\\x{}", std::str::from_utf8(b).unwrap())).collect();
    ns.exec("bash", &["-c", &format!("printf '{esc}' > /dev/udp/{dst}/4789")]).ok();
}

#[test]
fn stray_datagrams_and_oversized_frames_are_dropped_and_counted() {
    in_netns(|| {
        let u = Underlay::new(2, 1600);
        let site = vmnetd_site(&u, &[1, 2]);
        let all: Vec<&Client> = site.clients.iter().collect();
        assert_pings(&pairs(&all, true), true);
        let d1 = &site.daemons[0];
        let a = site.clients.iter().find(|c| c.host == 1 && c.vlan == 10).unwrap();
        let b = site.clients.iter().find(|c| c.host == 2 && c.vlan == 10).unwrap();

        // A broadcast from a made-up source, in datagrams h1 must not take.
        let inner = format!("ffffffffffff020000009901{}{}", "88b5", "00".repeat(46));
        let dir = test_dir();
        let mut cap = Tcpdump::start(&a.ns, "eth0", &dir.path().join("a.pcap"));
        send_udp(u.host(2), &vtep(1), &format!("000000000003f200{inner}")); // no I flag
        send_udp(u.host(2), &vtep(1), &format!("080000000003e700{inner}")); // VNI 999
        send_udp(&u.router, &vtep(1), &format!("080000000003f200{inner}")); // 10.9.1.1 is no remote
        let counted = wait_until(Duration::from_secs(5), || {
            let vx = port(d1, "vx");
            ["vxlan_bad_header", "vxlan_unknown_vni", "vxlan_unknown_remote"].iter().all(|r| drops(&vx, r) >= 1)
        });
        assert!(counted, "{:#}", port(d1, "vx"));
        std::thread::sleep(Duration::from_millis(300));
        let lines = cap.stop();
        assert!(!lines.iter().any(|l| l.contains("02:00:00:00:99:01")), "a stray datagram was delivered:\n{lines:#?}");

        // A frame that does not fit the underlay (1600 - 50 bytes) is dropped and counted; one
        // that does crosses.
        u.host(1).ip("link set c10 mtu 1600");
        a.ns.ip("link set eth0 mtu 1600");
        let before = drops(&port(d1, "vx"), "mtu");
        let big = a.ns.exec("ping", &["-q", "-c", "1", "-W", "1", "-M", "do", "-s", "1560", &b.addr]);
        assert!(!big.success(), "a 1602-byte frame crossed a 1600-byte underlay");
        assert!(drops(&port(d1, "vx"), "mtu") > before, "{:#}", port(d1, "vx"));
        assert!(a.ns.exec("ping", &["-q", "-c", "2", "-W", "1", "-M", "do", "-s", "1450", &b.addr]).success());
        assert!(reaches(a, b), "the tunnel still carries traffic");
    });
}

/// A multicast group instead of a remote list, on an L2 underlay (a bridge namespace with
/// snooping off, as a plain switch): vmnetd (`--group --dev`) and the kernel's vxlan in the
/// same group reach each other; the first broadcast goes to the group, replies to the
/// learned VTEP, and `fdb show` names it. `stats` shows the tunnel's counts.
#[test]
fn a_multicast_group_tunnel_interoperates_with_the_kernel() {
    in_netns(|| {
        let dir = test_dir();
        let sw = Ns::new("l2ul");
        sw.ip("link add ul type bridge mcast_snooping 0");
        sw.ip("link set ul up");
        let hosts: Vec<Ns> = (1..=2)
            .map(|i| {
                let h = Ns::new(&format!("m{i}"));
                sw.ip(&format!("link add p{i} type veth peer name ul0 netns {}", h.name));
                sw.ip(&format!("link set p{i} mtu 1600 master ul up"));
                h.ip("link set ul0 mtu 1600 up");
                h.ip(&format!("addr add 10.8.0.{i}/24 dev ul0"));
                h
            })
            .collect();
        let group = "239.1.1.7";
        let d = daemon_in(&hosts[0], dir.path());
        let c1 = client(&hosts[0], "mc1", "c1", "192.168.70.1/24");
        vm(&d, "bridge add br0").ok();
        vm(&d, "port add br0 c1 --netdev c1 --vlan 10").ok();
        vm(&d, &format!("port add br0 vx --vxlan --vni 7000 --vlan 10 --group {group} --dev ul0 --local 10.8.0.1"))
            .ok();
        let h2 = &hosts[1];
        h2.ip(&format!("link add vx7000 type vxlan id 7000 group {group} dev ul0 local 10.8.0.2 dstport 4789"));
        h2.ip("link add br7 type bridge");
        h2.ip("link set vx7000 master br7 up");
        h2.ip("link set br7 up");
        let c2 = client(h2, "mc2", "c2", "192.168.70.2/24");
        h2.ip("link set c2 master br7");
        assert!(c1.ping("192.168.70.2", 3), "vmnetd -> kernel through the group");
        assert!(c2.ping("192.168.70.1", 3), "kernel -> vmnetd");
        let fdb = d.cli(&["--json", "fdb", "show", "br0"]).json();
        let mac2 = c2.mac("eth0");
        assert!(
            fdb.as_array().unwrap().iter().any(|r| r["mac"] == mac2.as_str() && r["remote"] == "10.8.0.2"),
            "{fdb:#}"
        );
        let st = d.cli(&["--json", "stats", "br0", "vx"]).json();
        assert!(st[0]["vxlan"]["decapsulated"].as_u64().unwrap() >= 3, "{st:#}");
        let text = d.cli(&["stats", "br0", "vx"]).ok().to_owned();
        assert!(text.contains("VXLAN encapsulated"), "{text}");
    });
}
