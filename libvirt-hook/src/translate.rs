//! `vmnetd-libvirt-hook translate`: domain XML in, domain XML out, with every interface on a
//! vmnetd built-in bridge turned into a vhost-user interface.
//!
//! `<interface type='bridge'>` (also with `<virtualport type='openvswitch'/>`, for domains
//! leaving OVS) whose `<source bridge>` is a built-in bridge becomes
//! `<interface type='vhostuser'>` with QEMU as the socket's server, so the guest keeps its
//! NIC across vmnetd restarts (vmnetd reconnects). Its bridge and VLAN move to vmnetd's
//! `<metadata>`, and guest memory becomes shared (memfd) where it is not.
//!
//! QoS and isolation stay with the interface, applied by vmnetd instead of the kernel:
//! `<bandwidth>` is kept as it is (libvirt accepts it on vhost-user, applies nothing and logs
//! so; the hook turns it into the port's policers), while `<port isolated='yes'/>`, which
//! libvirt refuses on vhost-user interfaces, becomes `isolated='yes'` in vmnetd's metadata.
//!
//! The output is the input with those spans spliced: comments, attribute quoting, ordering,
//! indentation and everything else stay byte-for-byte. Translating twice changes nothing
//! the second time.

use std::ops::Range;
use std::path::{Path, PathBuf};

use vmnetd_api::{MacAddr, VlanMode};

use crate::bandwidth::{Policer, Policing};
use crate::domain::{self, Domain, Interface, MetaPort, NS};
use crate::plan;
use crate::xml::{escape_attr, Element};

/// Elements of a bridge interface that mean nothing (or something else) on vhost-user:
/// removed, with a note when dropping them changes behaviour. (`<bandwidth>` is not one of
/// them: vmnetd polices it.)
const DROPPED: &[(&str, Option<&str>)] = &[
    ("source", None),
    ("vlan", None),
    ("virtualport", None),
    ("target", None),
    // libvirt refuses `<port isolated='yes'/>` on vhost-user; `translate` moves it to the
    // metadata (and says so).
    ("port", None),
    ("filterref", Some("nwfilter <filterref> needs a kernel TAP; use --lock-mac in vmnetd metadata (lock-mac='yes')")),
    ("ip", Some("<ip> applies to TAP interfaces only")),
    ("route", Some("<route> applies to TAP interfaces only")),
    ("script", Some("<script> applies to TAP interfaces only")),
    ("coalesce", Some("<coalesce> applies to TAP interfaces only")),
    ("tune", Some("<tune> applies to TAP interfaces only")),
    ("backenddomain", None),
    ("portOptions", None),
];

#[derive(Debug, Clone)]
pub struct Options {
    /// Names of vmnetd built-in bridges.
    pub builtin_bridges: Vec<String>,
    /// vmnetd's run dir: sockets go under `RUN_DIR/libvirt/DOMAIN/`.
    pub run_dir: PathBuf,
    /// Seed for MACs given to interfaces that have none (`None`: random).
    pub mac_seed: Option<u64>,
}

#[derive(Debug)]
pub struct Translated {
    pub xml: String,
    /// One line per interface converted or thing dropped, for stderr.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Domain(#[from] domain::Error),
    #[error("{0}")]
    Refused(String),
}

struct Edits {
    list: Vec<(Range<usize>, String)>,
}

impl Edits {
    fn replace(&mut self, r: Range<usize>, s: impl Into<String>) {
        self.list.push((r, s.into()));
    }

    fn insert(&mut self, at: usize, s: impl Into<String>) {
        self.list.push((at..at, s.into()));
    }

    fn apply(mut self, input: &str) -> Result<String, Error> {
        self.list.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out = String::with_capacity(input.len() + 1024);
        let mut at = 0;
        for (r, s) in &self.list {
            if r.start < at {
                return Err(Error::Refused("internal error: overlapping edits".into()));
            }
            out.push_str(&input[at..r.start]);
            out.push_str(s);
            at = r.end;
        }
        out.push_str(&input[at..]);
        Ok(out)
    }
}

/// The element's span widened to its whole line(s) when nothing else shares them, so
/// removing it leaves no blank line behind.
fn line_span(s: &str, r: &Range<usize>) -> Range<usize> {
    let b = s.as_bytes();
    let mut start = r.start;
    while start > 0 && matches!(b[start - 1], b' ' | b'\t') {
        start -= 1;
    }
    let mut end = r.end;
    while end < b.len() && matches!(b[end], b' ' | b'\t' | b'\r') {
        end += 1;
    }
    let own_line = (start == 0 || b[start - 1] == b'\n') && (end == b.len() || b[end] == b'\n');
    if own_line {
        start..(end + 1).min(b.len())
    } else {
        r.clone()
    }
}

/// Leading whitespace of the line `pos` is on.
fn indent_at(s: &str, pos: usize) -> &str {
    let line_start = s[..pos].rfind('\n').map_or(0, |i| i + 1);
    let rest = &s[line_start..];
    &rest[..rest.len() - rest.trim_start_matches([' ', '\t']).len()]
}

/// Indentation one level in from an element's own.
fn child_indent(s: &str, el: &Element) -> String {
    match el.children.first() {
        Some(c) => indent_at(s, c.span.start).to_owned(),
        None => format!("{}  ", indent_at(s, el.span.start)),
    }
}

pub fn socket_path(run_dir: &Path, domain: &str, mac: MacAddr) -> PathBuf {
    let hex: String = mac.octets().iter().map(|b| format!("{b:02x}")).collect();
    plan::domain_socket_dir(run_dir, domain).join(format!("{hex}.sock"))
}

/// Longest path a Unix socket address holds (without the NUL).
const SUN_PATH_MAX: usize = 107;

pub fn translate(input: &str, opts: &Options) -> Result<Translated, Error> {
    let (d, root) = domain::parse(input)?;
    let mut edits = Edits { list: Vec::new() };
    let mut notes = Vec::new();
    let mut new_meta: Vec<MetaPort> = Vec::new();
    let mut used_macs: Vec<MacAddr> = d.interfaces.iter().filter_map(|i| i.mac).collect();
    let mut rng = MacRng::new(opts.mac_seed);

    let iface_els: Vec<&Element> =
        root.child("devices").map(|dev| dev.children_named("interface").collect()).unwrap_or_default();
    for (i, el) in d.interfaces.iter().zip(iface_els) {
        let Some(bridge) = i.source.bridge.as_deref() else { continue };
        if i.kind != "bridge" || !opts.builtin_bridges.iter().any(|b| b == bridge) {
            continue;
        }
        let mac = match i.mac {
            Some(m) => m,
            None => {
                let m = rng.fresh(&used_macs);
                used_macs.push(m);
                m
            }
        };
        convert(input, &d, i, el, mac, opts, &mut edits, &mut notes)?;
        let prior = d.metadata.port(mac);
        let label = format!("interface {mac}");
        let isolated = plan::merge_isolated(i.isolated, prior.is_some_and(|p| p.isolated))
            .map_err(|m| Error::Refused(format!("{label}: {m}")))?;
        if i.isolated == Some(true) {
            notes.push(format!(
                "{label}: <port isolated='yes'/> -> isolated='yes' in the vmnetd metadata \
                 (libvirt refuses it on vhost-user interfaces)"
            ));
        }
        if let Some(bw) = &i.bandwidth {
            // Checked now, so a limit vmnetd cannot apply is refused here rather than at start.
            let p = bw.policing().map_err(|m| Error::Refused(format!("{label}: {m}")))?;
            notes.push(format!("{label}: <bandwidth> kept: {}", policing_note(&p)));
            notes.extend(p.ignored.iter().map(|n| format!("{label}: {n}")));
        }
        let vlan = match (i.vlan.as_ref().map(|v| v.mode.clone()), prior.and_then(|p| p.vlan.clone())) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Refused(format!(
                    "interface {mac}: <vlan> says {a} but the vmnetd metadata says {b}; keep one"
                )))
            }
            (a, b) => a.or(b),
        };
        notes.push(format!(
            "interface {mac}: bridge {bridge} -> vhost-user {} ({})",
            socket_path(&opts.run_dir, &d.name, mac).display(),
            vlan.as_ref().map_or("access 1".to_owned(), VlanMode::to_string)
        ));
        new_meta.push(MetaPort {
            mac,
            bridge: Some(bridge.to_owned()),
            vlan,
            lock_mac: prior.is_some_and(|p| p.lock_mac),
            isolated,
            ip: prior.and_then(|p| p.ip),
            network: prior.and_then(|p| p.network.clone()),
        });
    }
    if new_meta.is_empty() {
        return Ok(Translated { xml: input.to_owned(), notes });
    }
    metadata(input, &d, &root, &new_meta, &mut edits)?;
    memory(input, &root, &mut edits, &mut notes)?;
    let xml = edits.apply(input)?;
    // The result must read back as what was meant.
    let (check, _) = domain::parse(&xml).map_err(|e| Error::Refused(format!("internal error: translated XML: {e}")))?;
    for m in &new_meta {
        if check.metadata.port(m.mac) != Some(m) {
            return Err(Error::Refused(format!("internal error: metadata for {} did not survive", m.mac)));
        }
    }
    Ok(Translated { xml, notes })
}

/// What vmnetd will do with a `<bandwidth>`, in words.
fn policing_note(p: &Policing) -> String {
    let one = |what: &str, p: &Option<Policer>| {
        p.map(|p| match p.burst_kb {
            Some(b) => format!("{what} {} kbit/s (burst {b} KB)", p.rate_kbit),
            None => format!("{what} {} kbit/s", p.rate_kbit),
        })
    };
    let parts: Vec<String> =
        [one("to the guest", &p.to_guest), one("from the guest", &p.from_guest)].into_iter().flatten().collect();
    if parts.is_empty() {
        "nothing in it for vmnetd to police".into()
    } else {
        format!("vmnetd polices {}", parts.join(", "))
    }
}

#[allow(clippy::too_many_arguments)]
fn convert(
    s: &str,
    d: &Domain,
    i: &Interface,
    el: &Element,
    mac: MacAddr,
    opts: &Options,
    edits: &mut Edits,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let label = format!("interface {mac}");
    if let Some(m) = i.model.as_deref() {
        if m != "virtio" {
            return Err(Error::Refused(format!(
                "{label} uses model '{m}'; vhost-user needs model 'virtio' (change the model, then translate)"
            )));
        }
    }
    let path = socket_path(&opts.run_dir, &d.name, mac);
    if path.as_os_str().len() > SUN_PATH_MAX {
        return Err(Error::Refused(format!(
            "{label}: socket path {} is longer than a Unix socket allows; use a shorter --run-dir",
            path.display()
        )));
    }
    let ind = child_indent(s, el);
    let type_attr = el.attr_full("type").ok_or_else(|| Error::Refused(format!("{label} has no type")))?;
    edits.replace(type_attr.span.clone(), "type='vhostuser'");
    let source = format!("<source type='unix' path='{}' mode='server'/>", escape_attr(&path.to_string_lossy()));
    let model = "<model type='virtio'/>";
    let mut source_placed = false;
    for c in &el.children {
        if c.ns.is_some() {
            continue;
        }
        let Some((_, note)) = DROPPED.iter().find(|(n, _)| *n == c.name) else { continue };
        if c.name == "source" && !source_placed {
            let mut with = source.clone();
            if i.model.is_none() {
                with.push_str(&format!("\n{ind}{model}"));
            }
            edits.replace(c.span.clone(), with);
            source_placed = true;
            continue;
        }
        if let Some(n) = note {
            notes.push(format!("{label}: dropped <{}>: {n}", c.name));
        }
        edits.replace(line_span(s, &c.span), "");
    }
    let mac_el = el.child("mac");
    if mac_el.is_none() {
        edits.insert(el.inner.start, format!("\n{ind}<mac address='{mac}'/>"));
    }
    if !source_placed {
        let at = mac_el.map_or(el.inner.start, |m| m.span.end);
        let model = if i.model.is_none() { format!("\n{ind}{model}") } else { String::new() };
        edits.insert(at, format!("\n{ind}{source}{model}"));
    }
    if let Some(drv) = el.child("driver") {
        // `name='vhost'|'qemu'` picks a TAP backend; vhost-user has its own.
        if let Some(a) = drv.attr_full("name") {
            let mut start = a.span.start;
            while start > 0 && matches!(s.as_bytes()[start - 1], b' ' | b'\t' | b'\n') {
                start -= 1;
            }
            edits.replace(start..a.span.end, "");
        }
    }
    if el.self_closing {
        return Err(Error::Refused(format!("{label}: <interface/> without content cannot be converted")));
    }
    Ok(())
}

fn meta_port_xml(p: &MetaPort) -> String {
    let mut s = format!("<vmnetd:port mac='{}'", p.mac);
    if let Some(b) = &p.bridge {
        s.push_str(&format!(" bridge='{}'", escape_attr(b)));
    }
    match &p.vlan {
        None => {}
        Some(VlanMode::Access { vlan }) => s.push_str(&format!(" vlan='{vlan}'")),
        Some(VlanMode::Trunk { vlans, native }) => {
            if !vlans.is_empty() {
                s.push_str(&format!(" trunk='{vlans}'"));
            }
            if let Some(n) = native {
                s.push_str(&format!(" native='{}{}'", n.vid, if n.tagged { ":tagged" } else { "" }));
            }
        }
    }
    if p.lock_mac {
        s.push_str(" lock-mac='yes'");
    }
    if p.isolated {
        s.push_str(" isolated='yes'");
    }
    if let Some(ip) = p.ip {
        s.push_str(&format!(" ip='{ip}'"));
    }
    if let Some(n) = &p.network {
        // A NetName is letters, digits, '-' and '_' only: nothing to escape.
        s.push_str(&format!(" network='{n}'"));
    }
    s.push_str("/>");
    s
}

fn ports_xml(ports: &[MetaPort], ind: &str) -> String {
    let mut s = format!("<vmnetd:ports xmlns:vmnetd='{NS}'>");
    for p in ports {
        s.push_str(&format!("\n{ind}  {}", meta_port_xml(p)));
    }
    s.push_str(&format!("\n{ind}</vmnetd:ports>"));
    s
}

fn metadata(s: &str, d: &Domain, root: &Element, new: &[MetaPort], edits: &mut Edits) -> Result<(), Error> {
    // Entries for interfaces not converted now stay as they are.
    let mut all: Vec<MetaPort> =
        d.metadata.ports.iter().filter(|p| !new.iter().any(|n| n.mac == p.mac)).cloned().collect();
    all.extend(new.iter().cloned());
    let md = root.child("metadata");
    match (md, &d.metadata.span) {
        (Some(_), Some(span)) => {
            let ind = indent_at(s, span.start).to_owned();
            edits.replace(span.clone(), ports_xml(&all, &ind));
        }
        (Some(md), None) if md.self_closing => {
            let ind = indent_at(s, md.span.start).to_owned();
            let inner = format!("{ind}  ");
            edits.replace(md.span.clone(), format!("<metadata>\n{inner}{}\n{ind}</metadata>", ports_xml(&all, &inner)));
        }
        (Some(md), None) => {
            let inner = child_indent(s, md);
            match md.children.last() {
                // After the last element other tools put there.
                Some(last) => edits.insert(last.span.end, format!("\n{inner}{}", ports_xml(&all, &inner))),
                None => {
                    let outer = indent_at(s, md.span.start).to_owned();
                    edits.replace(md.inner.clone(), format!("\n{inner}{}\n{outer}", ports_xml(&all, &inner)));
                }
            }
        }
        (None, _) => {
            let anchor = ["description", "title", "genid", "uuid", "name"]
                .iter()
                .find_map(|n| root.child(n))
                .ok_or_else(|| Error::Refused("the domain has no <name>".into()))?;
            let ind = indent_at(s, anchor.span.start).to_owned();
            let inner = format!("{ind}  ");
            edits.insert(
                anchor.span.end,
                format!("\n{ind}<metadata>\n{inner}{}\n{ind}</metadata>", ports_xml(&all, &inner)),
            );
        }
    }
    Ok(())
}

fn memory(s: &str, root: &Element, edits: &mut Edits, notes: &mut Vec<String>) -> Result<(), Error> {
    if let Some(numa) = root.path(&["cpu", "numa"]) {
        if numa.children_named("cell").any(|c| c.attr("memAccess") == Some("private")) {
            return Err(Error::Refused(
                "a NUMA cell has memAccess='private'; vhost-user needs shared guest memory (memAccess='shared')".into(),
            ));
        }
    }
    let Some(mb) = root.child("memoryBacking") else {
        let anchor = root
            .child("currentMemory")
            .or_else(|| root.child("memory"))
            .or_else(|| root.child("name"))
            .ok_or_else(|| Error::Refused("the domain has no <memory>".into()))?;
        let ind = indent_at(s, anchor.span.start).to_owned();
        edits.insert(
            anchor.span.end,
            format!(
                "\n{ind}<memoryBacking>\n{ind}  <source type='memfd'/>\n{ind}  <access mode='shared'/>\n{ind}</memoryBacking>"
            ),
        );
        notes.push("guest memory: added <memoryBacking> memfd, shared (vhost-user needs it)".into());
        return Ok(());
    };
    let access = mb.child("access");
    match access.and_then(|a| a.attr("mode")) {
        Some("shared") => return Ok(()),
        Some(m) => {
            return Err(Error::Refused(format!(
                "<memoryBacking><access mode='{m}'/> keeps guest memory private; vhost-user needs mode='shared'"
            )))
        }
        None => {}
    }
    let source_type = mb.child("source").and_then(|x| x.attr("type"));
    if source_type == Some("anonymous") {
        return Err(Error::Refused(
            "<memoryBacking><source type='anonymous'/> cannot be shared; use type='memfd' (or 'file')".into(),
        ));
    }
    let ind = child_indent(s, mb);
    let mut add = String::new();
    if mb.child("source").is_none() && mb.child("hugepages").is_none() {
        add.push_str(&format!("\n{ind}<source type='memfd'/>"));
    }
    add.push_str(&format!("\n{ind}<access mode='shared'/>"));
    if mb.self_closing {
        let outer = indent_at(s, mb.span.start).to_owned();
        edits.replace(mb.span.clone(), format!("<memoryBacking>{add}\n{outer}</memoryBacking>"));
    } else {
        let at = mb.children.last().map_or(mb.inner.start, |c| c.span.end);
        let tail = if mb.children.is_empty() { format!("\n{}", indent_at(s, mb.span.start)) } else { String::new() };
        edits.insert(at, format!("{add}{tail}"));
    }
    notes.push("guest memory: made shared (vhost-user needs it)".into());
    Ok(())
}

/// Locally administered, QEMU-style `52:54:00:xx:xx:xx` addresses.
struct MacRng(u64);

impl MacRng {
    fn new(seed: Option<u64>) -> MacRng {
        MacRng(
            1 | seed.unwrap_or_else(|| {
                let mut b = [0u8; 8];
                if std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
                    .is_ok()
                {
                    u64::from_ne_bytes(b)
                } else {
                    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    plan::fnv64(&[&t.as_nanos().to_le_bytes(), &std::process::id().to_le_bytes()])
                }
            }),
        )
    }

    fn fresh(&mut self, used: &[MacAddr]) -> MacAddr {
        loop {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes();
            let m = MacAddr::new([0x52, 0x54, 0x00, r[0], r[1], r[2]]);
            if !used.contains(&m) {
                return m;
            }
            self.0 = self.0.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Facts, Phase};
    use vmnetd_api::proto::BridgeKind;

    fn opts() -> Options {
        Options { builtin_bridges: vec!["vmnet0".into()], run_dir: "/run/vmnetd".into(), mac_seed: Some(7) }
    }

    fn domain_with(iface_extra: &str, meta: &str) -> String {
        format!(
            "<domain type='kvm'>\n  <name>q1</name>\n{meta}  <memory unit='MiB'>256</memory>\n  <devices>\n    \
             <interface type='bridge'>\n      <mac address='52:54:00:00:00:01'/>\n      \
             <source bridge='vmnet0'/>\n      <model type='virtio'/>\n{iface_extra}    </interface>\n  \
             </devices>\n</domain>\n"
        )
    }

    const BW: &str = "      <bandwidth>\n        <inbound average='1000' burst='1000'/>\n        \
                      <outbound average='125' peak='250'/>\n      </bandwidth>\n";

    #[test]
    fn bandwidth_is_kept_and_policed_not_dropped() {
        let t = translate(&domain_with(BW, ""), &opts()).unwrap();
        assert!(t.xml.contains(BW), "<bandwidth> stays byte for byte:\n{}", t.xml);
        assert!(t.xml.contains("<interface type='vhostuser'>"), "{}", t.xml);
        assert!(!t.notes.iter().any(|n| n.contains("dropped")), "{:?}", t.notes);
        let kept = "interface 52:54:00:00:00:01: <bandwidth> kept: vmnetd polices to the guest 8192 kbit/s \
                    (burst 1024 KB), from the guest 1024 kbit/s";
        assert!(t.notes.iter().any(|n| n == kept), "{:?}", t.notes);
        assert!(
            t.notes
                .iter()
                .any(|n| n.starts_with("interface 52:54:00:00:00:01: <bandwidth><outbound peak='250'> ignored")),
            "{:?}",
            t.notes
        );
        // The hook then makes the port with those policers.
        let (d, _) = domain::parse(&t.xml).unwrap();
        let facts = Facts {
            bridges: vec![("vmnet0".into(), BridgeKind::Builtin)],
            run_dir: "/run/vmnetd".into(),
            qemu_owner: "64055:64055".into(),
        };
        let w = plan::plan(&d, Phase::Prepare, &facts).unwrap();
        let p = &w[0].port;
        assert_eq!((p.egress_rate_kbit, p.egress_burst_kb), (Some(8192), Some(1024)));
        assert_eq!((p.ingress_rate_kbit, p.ingress_burst_kb), (Some(1024), None));
        assert!(!p.isolated);
        // And translating again changes nothing.
        assert_eq!(translate(&t.xml, &opts()).unwrap().xml, t.xml);
    }

    #[test]
    fn port_isolated_moves_to_the_metadata() {
        let t = translate(&domain_with("      <port isolated='yes'/>\n", ""), &opts()).unwrap();
        // libvirt refuses <port isolated='yes'/> on vhost-user interfaces.
        assert!(!t.xml.contains("<port "), "{}", t.xml);
        assert!(t.xml.contains("<vmnetd:port mac='52:54:00:00:00:01' bridge='vmnet0' isolated='yes'/>"), "{}", t.xml);
        assert!(t.notes.iter().any(|n| n.contains("<port isolated='yes'/> -> isolated='yes' in the vmnetd metadata")));
        assert!(!t.notes.iter().any(|n| n.contains("dropped")), "{:?}", t.notes);
        let (d, _) = domain::parse(&t.xml).unwrap();
        assert!(d.metadata.ports[0].isolated);
        assert_eq!(translate(&t.xml, &opts()).unwrap().xml, t.xml);

        // 'no' is the default: removed, nothing to carry.
        let t = translate(&domain_with("      <port isolated='no'/>\n", ""), &opts()).unwrap();
        assert!(!t.xml.contains("<port ") && !t.xml.contains("isolated="), "{}", t.xml);
        assert!(!t.notes.iter().any(|n| n.contains("isolated")), "{:?}", t.notes);

        // Already in the metadata: kept.
        let meta = "  <metadata>\n    <vmnetd:ports xmlns:vmnetd='urn:vmnetd:libvirt:1'>\n      \
                    <vmnetd:port mac='52:54:00:00:00:01' isolated='yes'/>\n    </vmnetd:ports>\n  </metadata>\n";
        let t = translate(&domain_with("", meta), &opts()).unwrap();
        assert!(t.xml.contains("bridge='vmnet0' isolated='yes'/>"), "{}", t.xml);
    }

    #[test]
    fn translate_refusals_for_bandwidth_and_isolation() {
        let cases = [
            (domain_with("      <bandwidth><inbound average='0'/></bandwidth>\n", ""), "average='0'> is no rate"),
            (
                domain_with("      <bandwidth><outbound average='100' burst='x'/></bandwidth>\n", ""),
                "burst='x'> is not a whole number",
            ),
            (
                domain_with("      <bandwidth><inbound average='18446744073709551615'/></bandwidth>\n", ""),
                "more than vmnetd polices",
            ),
            (domain_with("      <port isolated='maybe'/>\n", ""), "<port isolated='maybe'> must be yes or no"),
            (
                domain_with(
                    "      <port isolated='no'/>\n",
                    "  <metadata><v:ports xmlns:v='urn:vmnetd:libvirt:1'>\
                     <v:port mac='52:54:00:00:00:01' isolated='yes'/></v:ports></metadata>\n",
                ),
                "interface 52:54:00:00:00:01: <port isolated='no'/> but the vmnetd metadata says isolated='yes'",
            ),
        ];
        for (input, want) in cases {
            let e = translate(&input, &opts()).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?} in {e}");
        }
    }

    #[test]
    fn interfaces_not_converted_keep_their_bandwidth_unchecked() {
        // Not on a built-in bridge: not translate's business, even with values vmnetd refuses.
        let x = domain_with("      <bandwidth><inbound average='0'/></bandwidth>\n", "").replace("vmnet0", "virbr0");
        let t = translate(&x, &opts()).unwrap();
        assert_eq!(t.xml, x);
        assert!(t.notes.is_empty());
    }
}
