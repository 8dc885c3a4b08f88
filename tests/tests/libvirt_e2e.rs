//! End to end with a real libvirtd (Debian's libvirt 9.0) and QEMU guests under TCG: domains
//! written as users write them (`type='bridge'` on a vmnetd built-in bridge, `<vlan>`),
//! converted with `vmnetd-libvirt-hook translate`, defined with `virsh define` and started
//! with `virsh start`; the installed hook gives each its vhost-user port on its VLAN; guests
//! on the same VLAN ping, guests on another do not; `virsh destroy` (and a guest powering
//! off) removes the ports; a domain whose vmnetd metadata has a bad VLAN is refused at
//! start with vmnetd's message in virsh's error.
#![cfg(feature = "root-tests")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmnetd_tests::libvirt::{virsh, Domain, HookInstall, Libvirtd};
use vmnetd_tests::*;

const BRIDGE: &str = "vmnlv0";

/// A domain as a user writes it: one NIC on `BRIDGE` with a libvirt `<vlan>`.
fn user_xml(dir: &Path, name: &str, mac: &str, vlan: u16, initrd: &Path) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 net.ifnames=0 pci=nomsi</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{BRIDGE}'/>
      <vlan><tag id='{vlan}'/></vlan>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='{console}'/></serial>
  </devices>
</domain>
"#,
        kernel = dir.join("vmlinuz").display(),
        initrd = initrd.display(),
        console = dir.join(format!("{name}.console")).display(),
    )
}

/// `vmnetd-libvirt-hook translate` against the daemon, as a user runs it.
fn translate(d: &Daemon, xml: &str) -> (String, String) {
    let mut c = Command::new(bin("vmnetd-libvirt-hook"))
        .arg("translate")
        .env("VMNETD_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "translate failed: {err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

fn console(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.console"))).unwrap_or_default()
}

#[track_caller]
fn wait_console(dir: &Path, name: &str, needle: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        let c = console(dir, name);
        if c.contains(needle) {
            return c;
        }
        assert!(Instant::now() < end, "{name} did not print {needle:?} within {timeout:?}:\n{c}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ports(d: &Daemon) -> Vec<Value> {
    d.cli(&["--json", "port", "list", BRIDGE]).json().as_array().unwrap().clone()
}

fn port_of(d: &Daemon, domain: &str) -> Option<Value> {
    ports(d).into_iter().find(|p| p["external_ids"]["vm-name"] == domain)
}

#[test]
fn libvirt_domains_on_vmnetd_vlans() {
    require_root().unwrap();
    let _libvirtd = Libvirtd::ensure();
    let dir = test_dir();
    let dir = dir.path();
    let d = Daemon::start(dir);
    d.cli(&["bridge", "add", BRIDGE]).ok();
    let _hook = HookInstall::install(&d.socket);

    std::fs::copy(guest::guest_dir().join("vmlinuz"), dir.join("vmlinuz")).unwrap();
    let up = |addr: &str, tag: &str| format!("{}echo {tag}-READY\nsleep 600\n", guest::script_up(addr));
    let pinger = "ip link set eth0 up\nip addr add 10.42.0.1/24 dev eth0\n\
                  ok=0; for i in $(seq 1 40); do if ping -c1 -W1 10.42.0.2 >/dev/null 2>&1; then ok=1; break; fi; done\n\
                  echo PING-B=$ok\n\
                  if ping -c3 -W1 10.42.0.3 >/dev/null 2>&1; then echo PING-C=1; else echo PING-C=0; fi\n";
    let guests = [
        ("vmnetd-e2e-b", "52:54:00:42:00:0b", 42, up("10.42.0.2/24", "B")),
        ("vmnetd-e2e-c", "52:54:00:42:00:0c", 43, up("10.42.0.3/24", "C")),
        ("vmnetd-e2e-a", "52:54:00:42:00:0a", 42, pinger.to_owned()),
    ];
    let mut domains = Vec::new();
    for (name, mac, vlan, script) in &guests {
        let initrd = guest::initramfs(dir, name, script);
        let (xml, notes) = translate(&d, &user_xml(dir, name, mac, *vlan, &initrd));
        assert!(notes.contains(&format!("bridge {BRIDGE} -> vhost-user")), "{notes}");
        assert!(xml.contains("type='vhostuser'") && xml.contains("<access mode='shared'/>"), "{xml}");
        assert!(xml.contains(&format!("bridge='{BRIDGE}' vlan='{vlan}'")), "{xml}");
        let file = dir.join(format!("{name}.xml"));
        std::fs::write(&file, &xml).unwrap();
        domains.push(Domain::define(name, &file));
    }
    // B and C first: they must be up before A pings.
    for (dom, tag) in domains[..2].iter().zip(["B", "C"]) {
        dom.start().ok();
        let p = port_of(&d, &dom.name).unwrap_or_else(|| panic!("no port for {}: {:#?}", dom.name, ports(&d)));
        assert_eq!(p["kind"]["type"], "vhost-user");
        assert_eq!(p["kind"]["mode"], "client", "QEMU is the socket's server");
        wait_console(dir, &dom.name, &format!("{tag}-READY"), Duration::from_secs(120));
    }
    let vlan_of = |n: &str| port_of(&d, n).map(|p| p["vlan"].clone());
    assert_eq!(vlan_of("vmnetd-e2e-b"), Some(serde_json::json!({"mode": "access", "vlan": 42})));
    assert_eq!(vlan_of("vmnetd-e2e-c"), Some(serde_json::json!({"mode": "access", "vlan": 43})));

    domains[2].start().ok();
    let p = port_of(&d, "vmnetd-e2e-a").expect("port of a");
    assert_eq!(p["vlan"], serde_json::json!({"mode": "access", "vlan": 42}));
    let out = wait_console(dir, "vmnetd-e2e-a", "VMNETD-GUEST-DONE", Duration::from_secs(180));
    assert!(out.contains("PING-B=1"), "a cannot reach b on VLAN 42:\n{out}");
    assert!(out.contains("PING-C=0"), "a reached c on VLAN 43:\n{out}");
    for n in ["vmnetd-e2e-b", "vmnetd-e2e-c"] {
        let st = state_of(&port_of(&d, n).unwrap()).to_owned();
        assert!(st.starts_with("up"), "{n}: {st}");
    }

    // a powered off: libvirt's release removes its port (on_poweroff destroy).
    assert!(wait_until(Duration::from_secs(60), || domains[2].state() == "shut off"), "{}", domains[2].state());
    assert!(wait_until(Duration::from_secs(10), || port_of(&d, "vmnetd-e2e-a").is_none()), "{:#?}", ports(&d));
    // virsh destroy removes b's and c's ports, and the socket directories.
    for dom in &domains[..2] {
        virsh(&["destroy", &dom.name]).ok();
    }
    assert!(ports(&d).is_empty(), "{:#?}", ports(&d));
    let left: Vec<_> =
        std::fs::read_dir(dir.join("run/libvirt")).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // A bad VLAN in the metadata: refused at start, with vmnetd's message shown by virsh.
    let (xml, _) =
        translate(&d, &user_xml(dir, "vmnetd-e2e-bad", "52:54:00:42:00:0d", 42, &dir.join("vmnetd-e2e-b.cpio")));
    let bad = xml.replace("vlan='42'", "vlan='4095'");
    assert_ne!(bad, xml);
    let file = dir.join("vmnetd-e2e-bad.xml");
    std::fs::write(&file, &bad).unwrap();
    let dom = Domain::define("vmnetd-e2e-bad", &file);
    let o = dom.start();
    assert!(!o.success(), "a bad VLAN must stop the domain: {o:?}");
    assert!(
        o.stderr.contains(
            "vmnetd: domain vmnetd-e2e-bad: vmnetd metadata: port 52:54:00:42:00:0d: VLAN id 4095 is out of range (valid VLANs are 1-4094)"
        ),
        "{}",
        o.stderr
    );
    assert_eq!(dom.state(), "shut off");
    assert!(ports(&d).is_empty(), "{:#?}", ports(&d));
    eprintln!("virsh start refused as expected:\n{}", o.stderr.trim());
}
