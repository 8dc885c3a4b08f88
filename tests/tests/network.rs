//! Networks with addresses, end to end, inside network namespaces: the test thread's
//! namespace plays the host, with an `uplink` veth to an `upstream` namespace that plays the
//! Internet (default route through it). Clients are a namespace on a netdev port and a QEMU
//! guest on a vhost-user port, both running busybox `udhcpc`. Nothing touches the real
//! host's firewall, routes or sysctls: `nft` and `sysctl` run in the test's namespace.
#![cfg(feature = "root-tests")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmnetd_tests::guest::{initramfs, vhost_user_args, Guest};
use vmnetd_tests::topo::{Ns, Tcpdump};
use vmnetd_tests::*;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# busybox udhcpc event script: apply the lease.
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi
        echo "LEASE $ip DNS $dns DOMAIN $domain"
        ;;
esac
exit 0
"#;

/// Kills whatever dnsmasq the daemon left in the test's run dir (a daemon killed with
/// SIGKILL leaves its dnsmasq serving, as it should), so the namespace can go.
struct DnsmasqReaper(PathBuf);

impl Drop for DnsmasqReaper {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.0.join("run/networks")) else { return };
        for d in dirs.flatten() {
            if let Ok(pid) = std::fs::read_to_string(d.path().join("dnsmasq.pid")) {
                // Only a dnsmasq of this test (its config file is in this test's dir): a stale
                // pid file must not kill an unrelated process.
                let ours = |pid: i32| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.0.to_string_lossy()))
                };
                if let Some(pid) = pid.trim().parse::<i32>().ok().filter(|p| ours(*p)) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// The host's uplink to `upstream` (192.0.2.2); the host is 192.0.2.1 with its default
/// route there.
fn upstream() -> Ns {
    let up = Ns::new("up");
    up.veth("uplink", "eth0", Some("192.0.2.2/24"));
    ip("addr add 192.0.2.1/24 dev uplink");
    ip("link set uplink up");
    ip("route add default via 192.0.2.2");
    up
}

/// A client namespace on a netdev port of `br0` in `vlan`.
fn client(d: &Daemon, tag: &str, port: &str, vlan: &str) -> Ns {
    let ns = Ns::new(tag);
    ns.veth(port, "eth0", None);
    ip(&format!("link set {port} up"));
    d.cli(&["port", "add", "br0", port, "--netdev", port, "--vlan", vlan]).ok();
    ns
}

/// Runs `udhcpc` in `ns` (host name `name`); the leased address.
fn dhcp(ns: &Ns, script: &Path, name: &str) -> String {
    let out = ns.exec(
        "busybox",
        &[
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "8",
            "-T",
            "1",
            "-s",
            script.to_str().unwrap(),
            "-x",
            &format!("hostname:{name}"),
        ],
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    let ip = text
        .lines()
        .find_map(|l| l.strip_prefix("LEASE "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no lease for {name}:\n{text}"));
    ip.to_owned()
}

/// `nslookup NAME SERVER` from `ns` with busybox; the address it answers.
fn lookup(ns: &Ns, name: &str, server: &str) -> Option<String> {
    let out = ns.exec("busybox", &["nslookup", name, server]);
    let text = out.stdout;
    // busybox prints the server first, then "Name: ...\nAddress: A".
    let after = text.split_once(&format!("Name:\t{name}")).or_else(|| text.split_once(&format!("Name: {name}")))?.1;
    after.lines().find_map(|l| l.trim().strip_prefix("Address:").map(|a| a.trim().trim_end_matches(":53").to_owned()))
}

/// Whether process `pid` runs: an exited one that nobody reaped yet (a zombie, as the old
/// dnsmasq may be once the killed daemon's orphans wait for their new parent) does not.
fn runs(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
    })
}

fn nft_table() -> String {
    run("nft", ["list", "table", "inet", "vmnetd"]).stdout
}

/// A TCP server in `ns` on `port` that answers `hello`, for as long as the child lives.
fn serve(ns: &Ns, port: &str) -> std::process::Child {
    ns.spawn("busybox", &["nc", "-ll", "-p", port, "-e", "/bin/echo", "hello"])
}

fn connect(ns: &Ns, addr: &str, port: &str) -> String {
    ns.exec("busybox", &["nc", "-w", "3", addr, port]).stdout.trim().to_owned()
}

#[test]
fn network_gives_leases_names_nat_forwards_and_survives_flush_and_restart() {
    in_netns(|| {
        let dir = test_dir();
        let _reaper = DnsmasqReaper(dir.path().to_owned());
        let script = dir.path().join("udhcpc.sh");
        std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let up = upstream();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let net = d.cli(&[
            "--json",
            "network",
            "add",
            "lan",
            "--bridge",
            "br0",
            "--subnet",
            "10.10.0.0/24",
            "--nat",
            "--dhcp",
            "--dns",
            "--domain",
            "vm.lan",
        ]);
        let net = net.json();
        assert_eq!(net["interface"], "vmn-lan", "{net}");
        assert_eq!(net["gateway"], "10.10.0.1");
        assert!(ip("-4 addr show dev vmn-lan").contains("10.10.0.1/24"));
        assert_eq!(read(Path::new("/proc/sys/net/ipv4/conf/vmn-lan/forwarding")).trim(), "1");
        assert_eq!(read(Path::new("/proc/sys/net/ipv4/conf/uplink/forwarding")).trim(), "1");
        // Other interfaces keep their setting: forwarding is per interface, never global.
        assert_eq!(read(Path::new("/proc/sys/net/ipv4/conf/lo/forwarding")).trim(), "0");

        // A static lease for the namespace client.
        let c1 = client(&d, "c1", "c1p", "1");
        let c1_mac = c1.mac("eth0");
        d.cli(&["network", "lease", "add", "lan", &c1_mac, "10.10.0.50", "--name", "c1"]).ok();
        assert_eq!(dhcp(&c1, &script, "c1"), "10.10.0.50");

        // The QEMU guest on a vhost-user port: DHCP, then names and the Internet.
        d.cli(&["port", "add", "br0", "g1", "--vhost-user", "g1.sock", "--vlan", "1"]).ok();
        let guest_script = format!(
            "cat > /u.sh <<'EOF'\n{UDHCPC_SCRIPT}EOF\nchmod +x /u.sh\n\
             udhcpc -i eth0 -n -q -f -t 20 -T 1 -s /u.sh -x hostname:g1\n\
             echo \"NS-C1 $(nslookup c1.vm.lan 10.10.0.1 | grep -A1 'c1.vm.lan' | grep Address)\"\n\
             if ping -c 3 -W 2 192.0.2.2 >/dev/null; then echo PING-UPSTREAM-OK; fi\n\
             echo GUEST-READY\nsleep 600\n"
        );
        let init = initramfs(dir.path(), "g1", &guest_script);
        let sock = dir.path().join("run/g1.sock");
        let mut g = Guest::boot("g1", &init, &vhost_user_args("0", &sock, false, "52:54:00:14:00:01"), None);
        let console = g.wait_for("GUEST-READY", Duration::from_secs(240));
        let g_ip = console
            .lines()
            .find_map(|l| l.strip_prefix("LEASE "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("the guest got no lease:\n{console}"))
            .to_owned();
        assert!(g_ip.starts_with("10.10.0."), "{console}");
        assert!(
            console.contains("NS-C1 Address") && console.contains("10.10.0.50"),
            "guest cannot resolve c1:\n{console}"
        );
        assert!(console.contains("PING-UPSTREAM-OK"), "{console}");
        // And the namespace resolves the guest, by short and full name.
        assert_eq!(lookup(&c1, "g1.vm.lan", "10.10.0.1").as_deref(), Some(g_ip.as_str()));
        assert_eq!(lookup(&c1, "g1", "10.10.0.1").as_deref(), Some(g_ip.as_str()));
        let leases = d.cli(&["--json", "network", "leases", "lan"]).json();
        let leases = leases.as_array().unwrap();
        assert!(
            leases.iter().any(|l| l["ip"] == "10.10.0.50" && l["static"] == true && l["active"] == true),
            "{leases:?}"
        );
        assert!(leases.iter().any(|l| l["ip"] == g_ip.as_str() && l["hostname"] == "g1"), "{leases:?}");

        // Masquerade: upstream sees the uplink address only.
        let pcap = dir.path().join("up.pcap");
        let mut dump = Tcpdump::start(&up, "eth0", &pcap);
        assert!(c1.ping("192.0.2.2", 3), "c1 cannot reach upstream");
        // tcpdump (no immediate mode) hands packets over in blocks, at most a second late.
        std::thread::sleep(Duration::from_millis(1500));
        let lines = dump.stop();
        assert!(
            lines.iter().any(|l| l.contains("192.0.2.1 > 192.0.2.2: ICMP echo request")),
            "{lines:#?}\n{}\n{}\n{}\n{}",
            run("tcpdump", ["-r", pcap.to_str().unwrap(), "-n"]).stdout,
            c1.exec("ip", &["neigh"]).stdout,
            c1.exec("ip", &["route"]).stdout,
            up.exec("ip", &["-s", "link"]).stdout,
        );
        assert!(!lines.iter().any(|l| l.contains("10.10.0.")), "unmasqueraded: {lines:#?}");

        // A port forward from upstream to c1's TCP server, and from the host itself.
        let mut srv = serve(&c1, "80");
        d.cli(&["network", "forward", "add", "lan", "--proto", "tcp", "--host-port", "8080", "--to", "10.10.0.50:80"])
            .ok();
        assert!(wait_until(Duration::from_secs(5), || connect(&up, "192.0.2.1", "8080") == "hello"));
        assert_eq!(run("busybox", ["nc", "-w", "3", "192.0.2.1", "8080"]).stdout.trim(), "hello");
        // The same host port cannot be forwarded twice.
        let dup = d.cli(&["network", "forward", "add", "lan", "--host-port", "8080", "--to", "10.10.0.51:80"]);
        assert!(dup.failed_one_line().contains("already forwarded"), "{}", dup.stderr);
        assert_eq!(dup.code, Some(4));

        // A second network on VLAN 20: its own subnet; the first only through the forward.
        let n2 =
            d.cli(&["--json", "network", "add", "lan20", "--bridge", "br0", "--vlan", "20", "--nat", "--dhcp"]).json();
        let sub2 = n2["subnet"].as_str().unwrap().to_owned();
        assert_ne!(sub2, "10.10.0.0/24");
        let c3 = client(&d, "c3", "c3p", "20");
        let c3_ip = dhcp(&c3, &script, "c3");
        let sub2_prefix = sub2.rsplit_once('.').unwrap().0;
        assert!(c3_ip.starts_with(sub2_prefix), "{c3_ip} not in {sub2}");
        assert!(!c3.ping("10.10.0.50", 2), "network lan20 reaches lan directly");
        assert_eq!(connect(&c3, "192.0.2.1", "8080"), "hello", "the documented way in (a forward) fails");
        assert!(c3.ping("192.0.2.2", 2));

        // `nft flush ruleset`: vmnetd puts its table back within a second or two.
        let before = nft_table();
        run("nft", ["flush", "ruleset"]).ok();
        let t0 = Instant::now();
        // The watcher restores it in well under a second; 10 s leaves room on a loaded CI box.
        assert!(wait_until(Duration::from_secs(10), || nft_table() == before), "table not restored:\n{}", nft_table());
        eprintln!("table restored {:?} after the flush", t0.elapsed());
        assert!(d.wait_log("re-installed it", Duration::from_secs(2)));
        assert!(c1.ping("192.0.2.2", 2));
        assert_eq!(connect(&up, "192.0.2.1", "8080"), "hello");

        // Restart (SIGKILL): leases and rules survive, no duplicate rule, dnsmasq replaced.
        let pid_before = read(&dir.path().join("run/networks/lan/dnsmasq.pid"));
        d.kill();
        d.restart();
        assert_eq!(nft_table(), before, "rules changed across a restart");
        let pid_after = read(&dir.path().join("run/networks/lan/dnsmasq.pid"));
        assert_ne!(pid_before, pid_after);
        assert!(!runs(pid_before.trim()), "the old dnsmasq still runs");
        assert_eq!(ip("-4 addr show dev vmn-lan").matches("10.10.0.1/24").count(), 1);
        let leases = d.cli(&["--json", "network", "leases", "lan"]).json();
        assert!(leases.as_array().unwrap().iter().any(|l| l["ip"] == g_ip.as_str() && l["active"] == true), "{leases}");
        assert_eq!(dhcp(&c1, &script, "c1"), "10.10.0.50");
        assert_eq!(connect(&up, "192.0.2.1", "8080"), "hello");
        assert!(g.is_running());

        // A dnsmasq that dies is restarted.
        let pid: i32 = pid_after.trim().parse().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(dir.path().join("run/networks/lan/dnsmasq.pid"))
                .is_ok_and(|p| p.trim() != pid_after.trim() && Path::new(&format!("/proc/{}", p.trim())).exists())
        }));
        assert_eq!(lookup(&c1, "g1", "10.10.0.1").as_deref(), Some(g_ip.as_str()));

        // Removal takes away everything it made.
        let _ = srv.kill();
        let _ = srv.wait();
        drop(g);
        d.cli(&["port", "del", "br0", "g1"]).ok();
        let gw = d.cli(&["port", "del", "br0", "vmn-lan"]);
        assert!(gw.failed_one_line().contains("network del lan"), "{}", gw.stderr);
        d.cli(&["network", "del", "lan20"]).ok();
        d.cli(&["network", "del", "lan"]).ok();
        assert!(!link_exists("vmn-lan") && !link_exists("vmn-lan20"));
        assert!(!run("nft", ["list", "table", "inet", "vmnetd"]).success(), "table left behind");
        assert_eq!(read(Path::new("/proc/sys/net/ipv4/conf/uplink/forwarding")).trim(), "0");
        assert!(!dir.path().join("run/networks/lan").exists());
        assert!(!Path::new(&format!("/proc/{}", pid_after.trim())).exists());
        let list = d.cli(&["--json", "network", "list"]).json();
        assert_eq!(list, serde_json::json!([]));
    });
}

#[test]
fn network_on_a_linux_bridge_serves_dhcp_on_the_bridge_itself() {
    in_netns(|| {
        let dir = test_dir();
        let _reaper = DnsmasqReaper(dir.path().to_owned());
        let script = dir.path().join("udhcpc.sh");
        std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let up = upstream();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "lbr0", "--kind", "linux"]).ok();
        let vlan = d.cli(&["network", "add", "kern", "--bridge", "lbr0", "--vlan", "10", "--dhcp"]);
        assert_eq!(vlan.code, Some(6), "{}", vlan.stderr);
        d.cli(&["network", "add", "kern", "--bridge", "lbr0", "--subnet", "10.20.0.0/24", "--nat", "--dhcp", "--dns"])
            .ok();
        assert!(ip("-4 addr show dev lbr0").contains("10.20.0.1/24"));
        let c = Ns::new("lc");
        c.veth("lcp", "eth0", None);
        ip("link set lcp up");
        d.cli(&["port", "add", "lbr0", "lcp", "--netdev", "lcp"]).ok();
        let a = dhcp(&c, &script, "lc");
        assert!(a.starts_with("10.20.0."), "{a}");
        assert!(c.ping("192.0.2.2", 3));
        let _ = up;
        d.cli(&["network", "del", "kern"]).ok();
        assert!(!ip("-4 addr show dev lbr0").contains("10.20.0.1"));
        assert!(link_exists("lbr0"), "the bridge is the bridge's, not the network's");
    });
}

#[test]
fn bad_input_collisions_and_missing_programs_change_nothing() {
    in_netns(|| {
        let dir = test_dir();
        let _reaper = DnsmasqReaper(dir.path().to_owned());
        let cfg = dir.path().join("cfg.toml");
        std::fs::write(&cfg, "[tools]\nnft = \"/nonexistent/nft\"\n").unwrap();
        let d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
        d.cli(&["bridge", "add", "br0"]).ok();
        ip("link add col0 type veth peer name col1");
        ip("addr add 10.30.0.1/16 dev col0");
        // Collides with a host address: refused, one line, exit code 4.
        let c = d.cli(&["network", "add", "a", "--bridge", "br0", "--subnet", "10.30.5.0/24"]);
        assert!(c.failed_one_line().contains("overlaps"), "{}", c.stderr);
        assert_eq!(c.code, Some(4));
        // nft missing: refused before anything is made.
        let c = d.cli(&["network", "add", "a", "--bridge", "br0", "--subnet", "10.31.0.0/24", "--nat", "--dhcp"]);
        assert!(c.failed_one_line().contains("/nonexistent/nft is not installed"), "{}", c.stderr);
        assert_eq!(c.code, Some(6));
        assert!(!link_exists("vmn-a"));
        assert!(!dir.path().join("run/networks/a").exists());
        let ports = d.cli(&["--json", "port", "list"]).json();
        assert_eq!(ports, serde_json::json!([]));
        // Hostile values never reach dnsmasq or nft.
        for args in [
            vec!["network", "add", "../x", "--bridge", "br0"],
            vec!["network", "add", "a", "--bridge", "br0", "--subnet", "127.0.0.0/24"],
            vec!["network", "add", "a", "--bridge", "br0", "--subnet", "10.1.0.1/24"],
            vec!["network", "add", "a", "--bridge", "br0", "--domain", "x\ndhcp-script=/bin/sh"],
            vec!["network", "add", "a", "--bridge", "br0", "--subnet", "10.1.0.0/24", "--dhcp", "10.1.0.0-10.1.1.5"],
            vec!["network", "add", "a", "--bridge", "nobr"],
        ] {
            let o = d.cli(&args);
            assert!(!o.success(), "{args:?} was accepted");
        }
        // Without --nat and forwards, no nft is needed: a DHCP-only network works.
        d.cli(&["network", "add", "iso", "--bridge", "br0", "--subnet", "10.32.0.0/24", "--dhcp"]).ok();
        for args in [
            vec!["network", "lease", "add", "iso", "52:54:00:00:00:01", "10.32.0.1"],
            vec!["network", "lease", "add", "iso", "ff:ff:ff:ff:ff:ff", "10.32.0.9"],
            vec!["network", "lease", "add", "iso", "52:54:00:00:00:01", "10.33.0.9"],
            vec!["network", "lease", "add", "iso", "52:54:00:00:00:01", "10.32.0.9", "--name", "a,b"],
            vec!["network", "forward", "add", "iso", "--host-port", "0", "--to", "10.32.0.9:80"],
            vec!["network", "forward", "add", "iso", "--host-port", "80", "--to", "10.32.0.9:70000"],
        ] {
            let o = d.cli(&args);
            assert!(!o.success(), "{args:?} was accepted");
        }
        d.cli(&["network", "lease", "add", "iso", "52:54:00:00:00:01", "10.32.0.9", "--name", "web"]).ok();
        let hosts = read(&dir.path().join("run/networks/iso/hosts"));
        assert_eq!(hosts, "52:54:00:00:00:01,10.32.0.9,web\n");
        // Non-root clients may read networks, never change them.
        let (uid, gid) = (65534, 65534);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("run/vmnetd.sock"), std::fs::Permissions::from_mode(0o666)).unwrap();
        for args in [
            vec!["network", "add", "u", "--bridge", "br0", "--subnet", "10.40.0.0/24"],
            vec!["network", "del", "iso"],
            vec!["network", "lease", "add", "iso", "52:54:00:00:00:02", "10.32.0.10"],
            vec!["network", "forward", "add", "iso", "--host-port", "80", "--to", "10.32.0.9:80"],
        ] {
            let o = d.cli_as(uid, gid, &args);
            assert_eq!(o.code, Some(5), "{args:?}: {}{}", o.stdout, o.stderr);
        }
        assert!(d.cli_as(uid, gid, &["network", "list"]).success());
        d.cli(&["network", "del", "iso"]).ok();
    });
}

/// A domain with one `ethernet` interface (TAP `tap`) whose vmnetd metadata asks for `ip`.
fn domain_xml(name: &str, mac: &str, tap: &str, ip: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><metadata>\
         <vmnetd:ports xmlns:vmnetd='urn:vmnetd:libvirt:1'>\
         <vmnetd:port mac='{mac}' bridge='br0' ip='{ip}'/></vmnetd:ports></metadata>\
         <devices><interface type='ethernet'><mac address='{mac}'/>\
         <target dev='{tap}' managed='no'/><model type='virtio'/></interface></devices></domain>"
    )
}

fn leases_of(d: &Daemon, net: &str) -> Vec<String> {
    let v = d.cli(&["--json", "network", "show", net]).json();
    let mut l: Vec<String> = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{} {} {}",
                l["mac"].as_str().unwrap(),
                l["ip"].as_str().unwrap(),
                l["name"].as_str().unwrap_or("-")
            )
        })
        .collect();
    l.sort();
    l
}

/// `<vmnetd:port ip='…'>` in a domain's metadata becomes a static lease on the network that
/// holds the address, here one the config file declares (runtime leases are kept in the
/// state beside the file's, which cannot be changed from the CLI); it is idempotent,
/// survives a restart, and an address another MAC holds refuses the start and takes back
/// what that start made.
#[test]
fn domain_ip_metadata_becomes_a_static_lease_on_a_config_network() {
    in_netns(|| {
        let dir = test_dir();
        let _reaper = DnsmasqReaper(dir.path().to_owned());
        let cfg = dir.path().join("cfg.toml");
        std::fs::write(
            &cfg,
            "[[bridge]]\nname = \"br0\"\nkind = \"builtin\"\n\
             [[network]]\nname = \"lab\"\nbridge = \"br0\"\nsubnet = \"10.77.0.0/24\"\ndhcp = true\n\
             [[network.lease]]\nmac = \"52:54:00:77:00:09\"\nip = \"10.77.0.9\"\n",
        )
        .unwrap();
        let mut d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
        let web = domain_xml("web1", "52:54:00:77:00:20", "web1tap", "10.77.0.20");
        libvirt_hook(&d.socket, ["web1", "prepare", "begin"], &web).ok();
        let want = vec!["52:54:00:77:00:09 10.77.0.9 -".to_owned(), "52:54:00:77:00:20 10.77.0.20 web1".to_owned()];
        assert_eq!(leases_of(&d, "lab"), want);
        let hosts = read(&dir.path().join("run/networks/lab/hosts"));
        assert!(hosts.contains("52:54:00:77:00:20,10.77.0.20,web1"), "{hosts}");
        // Again (libvirt may call prepare twice across a failed start): nothing changes.
        libvirt_hook(&d.socket, ["web1", "prepare", "begin"], &web).ok();
        assert_eq!(leases_of(&d, "lab"), want);
        // The file's lease is the file's.
        let o = d.cli(&["network", "lease", "del", "lab", "52:54:00:77:00:09"]);
        assert!(o.failed_one_line().contains("declared in"), "{}", o.stderr);
        // Another domain asking for web1's address: refused, its TAP and port taken back.
        let thief = domain_xml("thief", "52:54:00:77:00:21", "thieftap", "10.77.0.20");
        let o = libvirt_hook(&d.socket, ["thief", "prepare", "begin"], &thief);
        assert!(o.failed_one_line().contains("already the static lease"), "{}", o.stderr);
        let ports = d.cli(&["--json", "port", "list"]).json();
        assert!(!ports.to_string().contains("thief"), "{ports}");
        // An address no network holds: refused with the way out.
        let lost = domain_xml("lost", "52:54:00:77:00:22", "losttap", "10.99.0.5");
        let o = libvirt_hook(&d.socket, ["lost", "prepare", "begin"], &lost);
        assert!(o.failed_one_line().contains("no vmnetd network holds 10.99.0.5"), "{}", o.stderr);
        // Kept across a restart, and removable from the CLI.
        d.stop();
        d.restart();
        assert_eq!(leases_of(&d, "lab"), want);
        d.cli(&["network", "lease", "del", "lab", "52:54:00:77:00:20"]).ok();
        assert_eq!(leases_of(&d, "lab"), want[..1].to_vec());
        d.stop();
        d.restart();
        assert_eq!(leases_of(&d, "lab"), want[..1].to_vec());
        libvirt_hook(&d.socket, ["web1", "release", "end"], &web).ok();
    });
}
