//! The hook against domain XML exactly as libvirt 9.0 sent it at each phase (dumped from a
//! real libvirtd by a capture hook; see `fixtures/README.md`).

use std::path::PathBuf;

use vmnetd_api::proto::{BridgeKind, PortKind};
use vmnetd_libvirt_hook::domain::{self, Sharing};
use vmnetd_libvirt_hook::plan::{self, Facts, Phase, Want};
use vmnetd_libvirt_hook::translate::{self, Options};

/// A dumped domain. Its hand-written vhost-user sockets were in /tmp when it was dumped;
/// the hook only accepts them in the domain's socket directory, so they are moved there.
fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let x = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    x.replace("/tmp/cap1-", "/run/vmnetd/libvirt/cap1/")
}

const PHASES: [(&str, Phase); 6] = [
    ("mixed-prepare-begin.xml", Phase::Prepare),
    ("mixed-start-begin.xml", Phase::Other),
    ("mixed-started-begin.xml", Phase::Started),
    ("mixed-reconnect-begin.xml", Phase::Reconnect),
    ("mixed-stopped-end.xml", Phase::Other),
    ("mixed-release-end.xml", Phase::Release),
];

fn facts() -> Facts {
    Facts {
        bridges: vec![("vmnet0".into(), BridgeKind::Builtin), ("lvbr0".into(), BridgeKind::Linux)],
        run_dir: "/run/vmnetd".into(),
        qemu_owner: "64055:64055".into(),
    }
}

/// One line per want, for snapshots people can read.
fn render(wants: &[Want]) -> String {
    let mut s = String::new();
    for w in wants {
        if let Some(t) = &w.tap {
            s.push_str(&format!("tap {} multi_queue={}\n", t.name.as_ref().unwrap(), t.multi_queue));
        }
        if let Some((d, o)) = &w.socket_dir {
            s.push_str(&format!("dir {} owner {o}\n", d.display()));
        }
        let p = &w.port;
        let kind = match &p.kind {
            PortKind::Netdev { ifname, .. } => format!("netdev {ifname}"),
            PortKind::VhostUser { path, mode, owner, queues } => {
                format!(
                    "vhost-user {} vmnetd={mode} owner={} queues={queues}",
                    path.display(),
                    owner.as_deref().unwrap_or("-")
                )
            }
            PortKind::Internal { .. } => "internal".into(),
            PortKind::Vxlan { .. } => "vxlan".into(),
        };
        let macs: Vec<String> = p.macs.iter().map(|m| m.to_string()).collect();
        s.push_str(&format!(
            "port {}/{} {kind} [{}] macs=[{}] lock={} ids={:?}\n",
            p.bridge,
            p.name,
            p.vlan,
            macs.join(","),
            p.lock_mac,
            p.external_ids
        ));
    }
    s
}

#[test]
fn every_phase_parses_as_libvirt_sent_it() {
    for (f, _) in PHASES {
        let (d, _) = domain::parse(&fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(d.name, "cap1", "{f}");
        assert_eq!(d.uuid.as_deref(), Some("6b902e29-56ee-425e-b46a-d98040ae021f"));
        assert_eq!(d.interfaces.len(), 4, "{f}");
        // libvirt moved xmlns:vmnetd up to <metadata>: found by URI all the same.
        assert_eq!(d.metadata.ports.len(), 4, "{f}");
        assert_eq!(d.memory, Sharing::Shared);
        let bridge_if = &d.interfaces[3];
        // libvirt names the bridge's TAP from `start` to `stopped`; release no longer has it.
        let named = matches!(f, "mixed-start-begin.xml" | "mixed-started-begin.xml" | "mixed-reconnect-begin.xml");
        assert_eq!(bridge_if.target.is_some(), named, "{f}: {:?}", bridge_if.target);
    }
}

#[test]
fn plan_per_phase() {
    let mut out = String::new();
    for (f, phase) in PHASES {
        let (d, _) = domain::parse(&fixture(f)).unwrap();
        let wants = plan::plan(&d, phase, &facts()).unwrap_or_else(|e| panic!("{f}: {e}"));
        out.push_str(&format!("== {f} ({phase:?})\n{}", render(&wants)));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn bridge_interfaces_on_a_builtin_bridge_are_refused_with_the_way_out() {
    let x = fixture("user-bridge.xml");
    let (d, _) = domain::parse(&x).unwrap();
    let e = plan::plan(&d, Phase::Prepare, &facts()).unwrap_err().to_string();
    assert!(e.contains("vmnet0 is a vmnetd built-in bridge"), "{e}");
    assert!(e.contains("vmnetd-libvirt-hook translate"), "{e}");
}

#[test]
fn vhost_user_without_shared_memory_is_refused_with_the_fix() {
    let x = fixture("mixed-prepare-begin.xml").replace("<access mode='shared'/>", "");
    let (d, _) = domain::parse(&x).unwrap();
    assert_eq!(d.memory, Sharing::Private);
    let e = plan::plan(&d, Phase::Prepare, &facts()).unwrap_err().to_string();
    assert!(e.contains("needs guest memory shared"), "{e}");
    assert!(e.contains("<access mode='shared'/>"), "{e}");
}

#[test]
fn unknown_bridge_and_bad_vlan_say_what_is_wrong() {
    let x = fixture("mixed-prepare-begin.xml");
    let mut f = facts();
    f.bridges.retain(|(n, _)| n != "vmnet0");
    let (d, _) = domain::parse(&x).unwrap();
    let e = plan::plan(&d, Phase::Prepare, &f).unwrap_err().to_string();
    assert!(e.contains("vmnetd has no bridge vmnet0"), "{e}");

    let bad = x.replace("vlan=\"10\" lock-mac", "vlan=\"4095\" lock-mac");
    let e = domain::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("port 52:54:00:77:00:03: VLAN id 4095 is out of range (valid VLANs are 1-4094)"), "{e}");
}

#[test]
fn domains_without_vmnetd_need_nothing() {
    let x = fixture("mixed-prepare-begin.xml");
    let start = x.find("<metadata").unwrap();
    let end = x.find("</metadata>").unwrap() + "</metadata>".len();
    let plain = format!("{}{}", &x[..start], &x[end..]);
    let (d, _) = domain::parse(&plain).unwrap();
    assert!(!plan::needs_daemon(&d));
    for phase in [Phase::Prepare, Phase::Started, Phase::Reconnect] {
        assert!(plan::plan(&d, phase, &facts()).unwrap().is_empty());
    }
}

fn opts() -> Options {
    Options { builtin_bridges: vec!["vmnet0".into()], run_dir: "/run/vmnetd".into(), mac_seed: Some(7) }
}

#[test]
fn translate_user_domain() {
    let x = fixture("user-bridge.xml");
    let t = translate::translate(&x, &opts()).unwrap();
    insta::assert_snapshot!("translated", t.xml);
    insta::assert_snapshot!("translate-notes", t.notes.join("\n"));
    // What was not converted is there byte for byte.
    for keep in [
        "<!-- a comment that must survive -->",
        "<interface type='network'>\n      <source network='default'/>\n      <model type='e1000'/>\n    </interface>",
        "<serial type='pty'/>",
    ] {
        assert!(t.xml.contains(keep), "{keep}");
    }
    // And it plans as vhost-user ports on vmnet0 with the VLANs the <vlan> elements had.
    let (d, _) = domain::parse(&t.xml).unwrap();
    let wants = plan::plan(&d, Phase::Prepare, &facts()).unwrap();
    let r = render(&wants);
    assert!(r.contains("vmnet0/") && r.contains("[trunk 10 native 20]") && r.contains("[access 30]"), "{r}");
    assert!(r.contains("vmnetd=client"), "QEMU is the server: {r}");
}

#[test]
fn translate_is_idempotent_and_leaves_other_domains_alone() {
    let once = translate::translate(&fixture("user-bridge.xml"), &opts()).unwrap().xml;
    let twice = translate::translate(&once, &opts()).unwrap();
    assert_eq!(twice.xml, once);
    assert!(twice.notes.is_empty());
    for (f, _) in PHASES {
        let x = fixture(f);
        assert_eq!(translate::translate(&x, &opts()).unwrap().xml, x, "{f}");
    }
}

#[test]
fn translate_merges_into_existing_metadata_and_memory() {
    // Other tools' metadata stays; vmnetd's element is rewritten in place.
    let x = fixture("mixed-prepare-begin.xml")
        .replace("<source bridge='lvbr0'/>", "<source bridge='vmnet0'/>\n      <vlan><tag id='20'/></vlan>");
    let x = x.replace("bridge=\"lvbr0\" vlan=\"20\"", "bridge=\"vmnet0\" vlan=\"20\"");
    let t = translate::translate(&x, &opts()).unwrap();
    assert!(t.xml.contains("<other:tag xmlns:other=\"urn:example:other\">kept</other:tag>"));
    let (d, _) = domain::parse(&t.xml).unwrap();
    assert_eq!(d.metadata.ports.len(), 4);
    assert_eq!(d.interfaces.iter().filter(|i| i.kind == "vhostuser").count(), 3);
    assert_eq!(t.xml.matches("<memoryBacking>").count(), 1, "already shared: untouched");

    // <memoryBacking> with hugepages only gets access='shared'.
    let hp =
        fixture("user-bridge.xml").replace("<vcpu>", "<memoryBacking>\n    <hugepages/>\n  </memoryBacking>\n  <vcpu>");
    let t = translate::translate(&hp, &opts()).unwrap();
    assert!(
        t.xml.contains("<memoryBacking>\n    <hugepages/>\n    <access mode='shared'/>\n  </memoryBacking>"),
        "{}",
        t.xml
    );
}

#[test]
fn translate_refusals() {
    let x = fixture("user-bridge.xml");
    let cases = [
        (x.replace("<model type=\"virtio\"/>", "<model type=\"e1000\"/>"), "vhost-user needs model 'virtio'"),
        (x.replace("<vcpu>", "<memoryBacking><access mode='private'/></memoryBacking><vcpu>"), "mode='shared'"),
        (x.replace("<vcpu>", "<memoryBacking><source type='anonymous'/></memoryBacking><vcpu>"), "cannot be shared"),
        (
            x.replace(
                "<vcpu>",
                "<cpu><numa><cell id='0' memory='256' unit='MiB' memAccess='private'/></numa></cpu><vcpu>",
            ),
            "memAccess='private'",
        ),
        (x.replace("<vlan><tag id='30'/></vlan>", "<vlan><tag id='4095'/></vlan>"), "VLAN id 4095 is out of range"),
        (x.replace("</devices>", "</device>"), "malformed domain XML at line"),
        (x.replace("52:54:00:aa:00:01", "52:54:00:aa:00"), "Invalid MAC address"),
    ];
    for (input, want) in cases {
        let e = translate::translate(&input, &opts()).unwrap_err().to_string();
        assert!(e.contains(want), "want {want:?} in {e}");
    }
    let long = Options { run_dir: PathBuf::from(format!("/{}", "r".repeat(100))), ..opts() };
    let e = translate::translate(&x, &long).unwrap_err().to_string();
    assert!(e.contains("longer than a Unix socket allows"), "{e}");
}

/// The domain the end-to-end test translates and starts, as libvirt then sent it.
#[test]
fn translated_domain_through_libvirt() {
    let opts = Options { builtin_bridges: vec!["vmnlv0".into()], run_dir: "/tmp/e2e/run".into(), mac_seed: Some(1) };
    let t = translate::translate(&fixture("user-e2e.xml"), &opts).unwrap();
    let (ours, _) = domain::parse(&t.xml).unwrap();
    let facts = Facts {
        bridges: vec![("vmnlv0".into(), BridgeKind::Builtin)],
        run_dir: "/tmp/e2e/run".into(),
        qemu_owner: "64055:64055".into(),
    };
    let mut out = String::new();
    for (phase, p) in [
        ("prepare-begin", Phase::Prepare),
        ("start-begin", Phase::Other),
        ("started-begin", Phase::Started),
        ("reconnect-begin", Phase::Reconnect),
        ("stopped-end", Phase::Other),
        ("release-end", Phase::Release),
    ] {
        let (d, _) = domain::parse(&fixture(&format!("translated-{phase}.xml"))).unwrap();
        // libvirt kept what translate wrote: interfaces, metadata, shared memory.
        assert_eq!(d.interfaces[0].source, ours.interfaces[0].source, "{phase}");
        assert_eq!(d.metadata.ports, ours.metadata.ports, "{phase}");
        assert_eq!(d.memory, Sharing::Shared);
        let wants = plan::plan(&d, p, &facts).unwrap();
        out.push_str(&format!("== {phase}\n{}", render(&wants)));
    }
    insta::assert_snapshot!(out);
}
