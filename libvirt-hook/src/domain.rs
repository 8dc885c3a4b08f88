//! What the hook reads from libvirt's domain XML: interfaces, vmnetd's `<metadata>`, memory
//! sharing and the qemu process's DAC label.
//!
//! libvirt hands every hook call the whole domain XML. What it really sends (dumped from
//! libvirt 9.0, see `tests/fixtures/`): no `<target>` at `prepare`, `<target dev='vnetN'/>`
//! from `start` on, an empty `<target dev=''/>` on some vhost-user interfaces, `<metadata>`
//! with other tools' elements, and vmnetd's namespace declared wherever libvirt chose to put
//! it (it moves `xmlns:vmnetd` up to `<metadata>`). Namespaces are therefore matched by URI,
//! never by prefix.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::Range;

use vmnetd_api::mac::MacAddr;
use vmnetd_api::net::NetName;
use vmnetd_api::vlan::{Native, VlanId, VlanMode, VlanSet};

use crate::bandwidth::{self, XmlBandwidth};
use crate::xml::{self, Element, XmlError};

/// The namespace of vmnetd's metadata.
pub const NS: &str = "urn:vmnetd:libvirt:1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("the document is not a libvirt domain (root element <{0}>)")]
    NotADomain(String),
    #[error("the domain has no <name>")]
    NoName,
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn invalid(s: impl Into<String>) -> Error {
    Error::Invalid(s.into())
}

/// A VLAN request as libvirt's `<vlan>` element states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlVlan {
    pub mode: VlanMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub bridge: Option<String>,
    pub network: Option<String>,
    /// `type='unix'` socket path (vhostuser).
    pub path: Option<String>,
    /// `server` or `client`: QEMU's role on the socket.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Position among the domain's `<interface>` elements, from 0.
    pub index: usize,
    /// The `type` attribute: `bridge`, `ethernet`, `vhostuser`, `network`, ...
    pub kind: String,
    pub mac: Option<MacAddr>,
    pub source: Source,
    /// `<target dev>`; an empty `dev=''` counts as none.
    pub target: Option<String>,
    /// `<target managed='no'>`: the TAP exists before the domain starts.
    pub unmanaged_target: bool,
    pub vlan: Option<XmlVlan>,
    /// `<virtualport type>`.
    pub virtualport: Option<String>,
    /// `<model type>`.
    pub model: Option<String>,
    /// `<driver queues>`.
    pub queues: Option<u16>,
    /// `<port isolated='yes|no'/>`; `None` when not stated. libvirt itself only accepts
    /// `yes` on `bridge` and `network` interfaces; on the others the vmnetd metadata says it.
    pub isolated: Option<bool>,
    /// `<bandwidth>`, as written (converted only for interfaces that become vmnetd ports).
    pub bandwidth: Option<XmlBandwidth>,
    pub span: Range<usize>,
}

impl Interface {
    /// `52:54:00:..`, or `#N` when the interface has no MAC yet: for messages.
    pub fn label(&self) -> String {
        match self.mac {
            Some(m) => format!("interface {m}"),
            None => format!("interface #{}", self.index + 1),
        }
    }
}

/// One `<vmnetd:port>` of the domain's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaPort {
    pub mac: MacAddr,
    pub bridge: Option<String>,
    /// `None`: not stated (access VLAN 1 unless `<vlan>` says otherwise).
    pub vlan: Option<VlanMode>,
    pub lock_mac: bool,
    /// `isolated='yes'`: the port talks only to ports that are not isolated. The way to ask
    /// for it on `vhostuser` and `ethernet` interfaces, where libvirt refuses
    /// `<port isolated='yes'/>`.
    pub isolated: bool,
    /// `ip='…'`: a static DHCP lease for this MAC on the vmnetd network that holds the address
    /// (or on `network='…'`), with the domain's name as host name when it is a valid one.
    pub ip: Option<Ipv4Addr>,
    pub network: Option<NetName>,
}

/// vmnetd's element in `<metadata>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    pub ports: Vec<MetaPort>,
    /// Where `<vmnetd:ports>` is, to replace it.
    pub span: Option<Range<usize>>,
}

impl Metadata {
    pub fn port(&self, mac: MacAddr) -> Option<&MetaPort> {
        self.ports.iter().find(|p| p.mac == mac)
    }
}

/// Whether QEMU can share guest memory with a vhost-user backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `<memoryBacking><access mode='shared'/>` or every NUMA cell `memAccess='shared'`.
    Shared,
    /// Nothing says shared (libvirt's default is private memory).
    Private,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub uuid: Option<String>,
    pub interfaces: Vec<Interface>,
    pub metadata: Metadata,
    pub memory: Sharing,
}

impl Domain {
    /// A stable key for things made for this domain: its UUID, else its name.
    pub fn key(&self) -> &str {
        self.uuid.as_deref().unwrap_or(&self.name)
    }
}

/// Parses libvirt domain XML.
pub fn parse(input: &str) -> Result<(Domain, Element)> {
    let root = xml::parse(input)?;
    let d = from_tree(&root)?;
    Ok((d, root))
}

pub fn from_tree(root: &Element) -> Result<Domain> {
    if root.ns.is_some() || root.name != "domain" {
        return Err(Error::NotADomain(root.name.clone()));
    }
    let name =
        root.child("name").map(|n| n.text_trimmed().to_owned()).filter(|n| !n.is_empty()).ok_or(Error::NoName)?;
    let uuid = root.child("uuid").map(|u| u.text_trimmed().to_owned()).filter(|u| !u.is_empty());
    let mut interfaces = Vec::new();
    if let Some(devices) = root.child("devices") {
        for (index, el) in devices.children_named("interface").enumerate() {
            interfaces.push(interface(index, el)?);
        }
    }
    let mut seen = HashSet::new();
    for i in &interfaces {
        if let Some(m) = i.mac {
            if !seen.insert(m) {
                return Err(invalid(format!("two interfaces have MAC {m}; every interface needs its own")));
            }
        }
    }
    Ok(Domain { name, uuid, interfaces, metadata: metadata(root)?, memory: sharing(root) })
}

fn interface(index: usize, el: &Element) -> Result<Interface> {
    let kind = el.attr("type").unwrap_or("").to_owned();
    let ctx = |m: &str| format!("interface #{} ({kind}): {m}", index + 1);
    let mac = match el.child("mac").and_then(|m| m.attr("address")) {
        Some(a) => Some(a.parse::<MacAddr>().map_err(|e| invalid(ctx(&e.to_string())))?),
        None => None,
    };
    let source = el
        .child("source")
        .map(|s| Source {
            bridge: s.attr("bridge").map(str::to_owned),
            network: s.attr("network").map(str::to_owned),
            path: s.attr("path").map(str::to_owned),
            mode: s.attr("mode").map(str::to_owned),
        })
        .unwrap_or_default();
    let target_el = el.child("target");
    let target = target_el.and_then(|t| t.attr("dev")).filter(|d| !d.is_empty()).map(str::to_owned);
    let unmanaged_target = target_el.and_then(|t| t.attr("managed")) == Some("no");
    let vlan = match el.child("vlan") {
        Some(v) => Some(xml_vlan(v).map_err(|m| invalid(ctx(&m)))?),
        None => None,
    };
    let queues = match el.child("driver").and_then(|d| d.attr("queues")) {
        Some(q) => Some(
            q.parse::<u16>()
                .ok()
                .filter(|&q| q >= 1)
                .ok_or_else(|| invalid(ctx(&format!("<driver queues='{q}'> is not a queue count"))))?,
        ),
        None => None,
    };
    // libvirt accepts exactly these two values (and refuses the element otherwise).
    let isolated = match el.child("port").and_then(|p| p.attr("isolated")) {
        None => None,
        Some("yes") => Some(true),
        Some("no") => Some(false),
        Some(v) => return Err(invalid(ctx(&format!("<port isolated='{v}'> must be yes or no")))),
    };
    Ok(Interface {
        index,
        kind,
        mac,
        source,
        target,
        unmanaged_target,
        vlan,
        virtualport: el.child("virtualport").and_then(|v| v.attr("type")).map(str::to_owned),
        model: el.child("model").and_then(|m| m.attr("type")).map(str::to_owned),
        queues,
        isolated,
        bandwidth: el.child("bandwidth").map(bandwidth::read),
        span: el.span.clone(),
    })
}

fn vid(s: &str) -> std::result::Result<VlanId, String> {
    s.parse::<VlanId>().map_err(|e| e.to_string())
}

/// libvirt's `<vlan [trunk='yes']><tag id='N' [nativeMode='tagged|untagged']/>...</vlan>`.
fn xml_vlan(v: &Element) -> std::result::Result<XmlVlan, String> {
    let mut tags = VlanSet::new();
    let mut native = None;
    let mut n = 0;
    for t in v.children_named("tag") {
        let id = vid(t.attr("id").ok_or("<vlan><tag> without id")?)?;
        n += 1;
        match t.attr("nativeMode") {
            None => tags.insert(id),
            Some(m @ ("tagged" | "untagged")) => {
                if native.is_some() {
                    return Err("<vlan> has two native tags".into());
                }
                native = Some(Native { vid: id, tagged: m == "tagged" });
            }
            Some(m) => return Err(format!("<vlan><tag nativeMode='{m}'> must be tagged or untagged")),
        }
    }
    let trunk = v.attr("trunk") == Some("yes");
    let mode = match (n, trunk, native) {
        (0, _, _) => return Err("<vlan> without a <tag>".into()),
        (1, false, None) => VlanMode::access(tags.iter().next().ok_or("<vlan> without a <tag>")?),
        (_, _, native) => VlanMode::Trunk { vlans: tags, native },
    };
    Ok(XmlVlan { mode })
}

const META_ATTRS: &str = "mac, bridge, vlan, trunk, native, lock-mac, isolated, ip, network";

fn metadata(root: &Element) -> Result<Metadata> {
    let Some(md) = root.child("metadata") else { return Ok(Metadata::default()) };
    let mut ours = md.children.iter().filter(|c| c.ns.as_deref() == Some(NS));
    let Some(ports) = ours.next() else { return Ok(Metadata::default()) };
    if ours.next().is_some() {
        return Err(invalid("<metadata> has more than one vmnetd element; keep one <vmnetd:ports>"));
    }
    if ports.name != "ports" {
        return Err(invalid(format!("vmnetd metadata: expected <vmnetd:ports>, found <vmnetd:{}>", ports.name)));
    }
    let mut out = Vec::new();
    for p in &ports.children {
        if p.ns.as_deref() != Some(NS) || p.name != "port" {
            return Err(invalid(format!("vmnetd metadata: unexpected <{}> inside <vmnetd:ports>", p.name)));
        }
        let port = meta_port(p).map_err(|m| invalid(format!("vmnetd metadata: {m}")))?;
        if out.iter().any(|o: &MetaPort| o.mac == port.mac) {
            return Err(invalid(format!("vmnetd metadata: MAC {} appears twice", port.mac)));
        }
        out.push(port);
    }
    Ok(Metadata { ports: out, span: Some(ports.span.clone()) })
}

fn meta_port(p: &Element) -> std::result::Result<MetaPort, String> {
    for a in &p.attrs {
        if a.ns.is_some() || !META_ATTRS.split(", ").any(|k| k == a.name) {
            return Err(format!("<vmnetd:port> has an unknown attribute '{}' (known: {META_ATTRS})", a.name));
        }
    }
    let mac_s = p.attr("mac").ok_or("<vmnetd:port> needs mac='52:54:00:..'")?;
    let mac: MacAddr = mac_s.parse().map_err(|e: vmnetd_api::mac::MacParseError| e.to_string())?;
    let at = |m: String| format!("port {mac}: {m}");
    let vlan = match (p.attr("vlan"), p.attr("trunk"), p.attr("native")) {
        (Some(_), Some(_), _) => return Err(at("give either vlan= (access) or trunk= (trunk), not both".into())),
        (Some(_), None, Some(_)) => return Err(at("native= belongs to a trunk (trunk='10,20' native='1')".into())),
        (Some(v), None, None) => Some(VlanMode::access(vid(v).map_err(at)?)),
        (None, Some(t), n) => {
            let vlans = t.parse::<VlanSet>().map_err(|e| at(e.to_string()))?;
            let native = n.map(|n| n.parse::<Native>().map_err(|e| at(e.to_string()))).transpose()?;
            Some(VlanMode::Trunk { vlans, native })
        }
        (None, None, Some(_)) => return Err(at("native= needs trunk= (trunk='10,20' native='1')".into())),
        (None, None, None) => None,
    };
    let lock_mac = match p.attr("lock-mac") {
        None | Some("no") => false,
        Some("yes") => true,
        Some(v) => return Err(at(format!("lock-mac='{v}' must be yes or no"))),
    };
    let isolated = match p.attr("isolated") {
        None | Some("no") => false,
        Some("yes") => true,
        Some(v) => return Err(at(format!("isolated='{v}' must be yes or no"))),
    };
    let bridge = p.attr("bridge").map(str::to_owned);
    if bridge.as_deref() == Some("") {
        return Err(at("bridge='' is empty".into()));
    }
    let ip = match p.attr("ip") {
        None => None,
        Some(v) => Some(v.parse::<Ipv4Addr>().map_err(|_| at(format!("ip='{v}' is not an IPv4 address")))?),
    };
    let network = match p.attr("network") {
        None => None,
        Some(_) if ip.is_none() => return Err(at("network= names where ip= is leased; give ip= too".into())),
        Some(v) => Some(v.parse::<NetName>().map_err(|e| at(format!("network='{v}': {e}")))?),
    };
    Ok(MetaPort { mac, bridge, vlan, lock_mac, isolated, ip, network })
}

fn sharing(root: &Element) -> Sharing {
    if root.path(&["memoryBacking", "access"]).and_then(|a| a.attr("mode")) == Some("shared") {
        return Sharing::Shared;
    }
    if let Some(numa) = root.path(&["cpu", "numa"]) {
        let mut cells = numa.children_named("cell").peekable();
        if cells.peek().is_some() && cells.all(|c| c.attr("memAccess") == Some("shared")) {
            return Sharing::Shared;
        }
    }
    Sharing::Private
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(devices: &str, extra: &str) -> String {
        format!("<domain type='qemu'><name>t</name><uuid>u-1</uuid>{extra}<devices>{devices}</devices></domain>")
    }

    #[test]
    fn reads_interfaces() {
        let x = dom(
            "<interface type='vhostuser'><mac address='52:54:00:00:00:01'/>\
             <source type='unix' path='/run/x.sock' mode='server'/><target dev=''/><model type='virtio'/>\
             <driver queues='2'/></interface>\
             <interface type='ethernet'><mac address='52:54:00:00:00:02'/><target dev='tap9' managed='no'/></interface>",
            "",
        );
        let (d, _) = parse(&x).unwrap();
        assert_eq!(d.interfaces.len(), 2);
        let v = &d.interfaces[0];
        assert_eq!(v.kind, "vhostuser");
        assert_eq!(v.target, None, "dev='' is no target");
        assert_eq!(v.source.mode.as_deref(), Some("server"));
        assert_eq!(v.queues, Some(2));
        assert!(d.interfaces[1].unmanaged_target);
        assert_eq!(d.memory, Sharing::Private);
    }

    #[test]
    fn libvirt_vlan_element() {
        let one = "<interface type='bridge'><vlan><tag id='42'/></vlan></interface>";
        let (d, _) = parse(&dom(one, "")).unwrap();
        assert_eq!(d.interfaces[0].vlan.as_ref().unwrap().mode, VlanMode::access(VlanId::new(42).unwrap()));
        let trunk = "<interface type='bridge'><vlan trunk='yes'><tag id='42'/><tag id='47' nativeMode='untagged'/></vlan></interface>";
        let (d, _) = parse(&dom(trunk, "")).unwrap();
        assert_eq!(d.interfaces[0].vlan.as_ref().unwrap().mode.to_string(), "trunk 42 native 47");
        for bad in ["<vlan><tag id='4095'/></vlan>", "<vlan><tag id='0'/></vlan>", "<vlan/>", "<vlan><tag/></vlan>"] {
            let x = dom(&format!("<interface type='bridge'>{bad}</interface>"), "");
            assert!(parse(&x).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_isolated_yes_no_or_refused() {
        let iface = |port: &str| dom(&format!("<interface type='bridge'>{port}</interface>"), "");
        let isolated = |port: &str| parse(&iface(port)).map(|(d, _)| d.interfaces[0].isolated);
        assert_eq!(isolated("<port isolated='yes'/>").unwrap(), Some(true));
        assert_eq!(isolated("<port isolated='no'/>").unwrap(), Some(false));
        assert_eq!(isolated("").unwrap(), None);
        assert_eq!(isolated("<port/>").unwrap(), None);
        for bad in ["maybe", "YES", "1", "true", ""] {
            let e = isolated(&format!("<port isolated='{bad}'/>")).unwrap_err().to_string();
            assert!(e.contains(&format!("<port isolated='{bad}'> must be yes or no")), "{e}");
            assert!(e.starts_with("interface #1 (bridge)"), "{e}");
        }
    }

    #[test]
    fn bandwidth_is_kept_as_written() {
        // Converted only for interfaces that become ports: libvirt accepts values vmnetd does
        // not, and a domain vmnetd does not manage must still parse.
        let x = dom(
            "<interface type='bridge'><bandwidth><inbound average='0' peak='x'/><outbound average='10'/></bandwidth></interface>\
             <interface type='bridge'/>",
            "",
        );
        let (d, _) = parse(&x).unwrap();
        let b = d.interfaces[0].bandwidth.as_ref().unwrap();
        assert_eq!(b.inbound.as_ref().unwrap().average.as_deref(), Some("0"));
        assert_eq!(b.inbound.as_ref().unwrap().peak.as_deref(), Some("x"));
        assert_eq!(b.outbound.as_ref().unwrap().average.as_deref(), Some("10"));
        assert!(b.policing().is_err());
        assert_eq!(d.interfaces[1].bandwidth, None);
    }

    #[test]
    fn metadata_by_namespace_not_prefix() {
        let md = "<metadata xmlns:zz='urn:vmnetd:libvirt:1'><o:x xmlns:o='urn:other'/><zz:ports>\
                  <zz:port mac='52:54:00:00:00:01' bridge='lan' vlan='10'/>\
                  <zz:port mac='52:54:00:00:00:02' bridge='lan' trunk='10,20-22' native='1:tagged' lock-mac='yes'/>\
                  </zz:ports></metadata>";
        let (d, _) = parse(&dom("", md)).unwrap();
        assert_eq!(d.metadata.ports.len(), 2);
        let p = d.metadata.port("52:54:00:00:00:02".parse().unwrap()).unwrap();
        assert_eq!(p.vlan.as_ref().unwrap().to_string(), "trunk 10,20-22 native 1:tagged");
        assert!(p.lock_mac);
        assert!(!p.isolated);
        let md = "<metadata><v:ports xmlns:v='urn:vmnetd:libvirt:1'>\
                  <v:port mac='52:54:00:00:00:03' isolated='yes'/><v:port mac='52:54:00:00:00:04' isolated='no'/>\
                  </v:ports></metadata>";
        let (d, _) = parse(&dom("", md)).unwrap();
        assert_eq!(d.metadata.ports.iter().map(|p| p.isolated).collect::<Vec<_>>(), [true, false]);
        let md = "<metadata><v:ports xmlns:v='urn:vmnetd:libvirt:1'>\
                  <v:port mac='52:54:00:00:00:03' ip='10.10.0.5' network='default'/></v:ports></metadata>";
        let (d, _) = parse(&dom("", md)).unwrap();
        let p = &d.metadata.ports[0];
        assert_eq!(
            (p.ip, p.network.as_ref().map(|n| n.to_string())),
            (Some([10, 10, 0, 5].into()), Some("default".into()))
        );
    }

    #[test]
    fn bad_metadata_is_refused_with_the_reason() {
        let cases = [
            ("vlan='4095'", "out of range"),
            ("vlan='0'", "out of range"),
            ("vlan='ten'", "out of range"),
            ("vlan='10' trunk='20'", "not both"),
            ("native='1'", "needs trunk"),
            ("trunk='30-20'", "descending"),
            ("vlans='10'", "unknown attribute"),
            ("lock-mac='maybe'", "yes or no"),
            ("isolated='maybe'", "isolated='maybe' must be yes or no"),
            ("ip='10.0.0.300'", "not an IPv4"),
            ("ip='fe80::1'", "not an IPv4"),
            ("network='default'", "give ip="),
            ("ip='10.0.0.5' network='../x'", "network='../x'"),
        ];
        for (attrs, want) in cases {
            let md = format!(
                "<metadata><v:ports xmlns:v='urn:vmnetd:libvirt:1'><v:port mac='52:54:00:00:00:01' {attrs}/></v:ports></metadata>"
            );
            let e = parse(&dom("", &md)).unwrap_err().to_string();
            assert!(e.contains(want), "{attrs}: {e}");
        }
        let dup = "<metadata><v:ports xmlns:v='urn:vmnetd:libvirt:1'><v:port mac='52:54:00:00:00:01'/>\
                   <v:port mac='52:54:00:00:00:01'/></v:ports></metadata>";
        assert!(parse(&dom("", dup)).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn duplicate_interface_macs_are_refused() {
        let i = "<interface type='bridge'><mac address='52:54:00:00:00:01'/></interface>";
        let e = parse(&dom(&format!("{i}{i}"), "")).unwrap_err().to_string();
        assert!(e.contains("two interfaces have MAC 52:54:00:00:00:01"), "{e}");
    }

    #[test]
    fn shared_memory_forms() {
        let mb = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>";
        assert_eq!(parse(&dom("", mb)).unwrap().0.memory, Sharing::Shared);
        let numa = "<cpu><numa><cell id='0' memory='1' memAccess='shared'/></numa></cpu>";
        assert_eq!(parse(&dom("", numa)).unwrap().0.memory, Sharing::Shared);
        let mixed = "<cpu><numa><cell id='0' memAccess='shared'/><cell id='1'/></numa></cpu>";
        assert_eq!(parse(&dom("", mixed)).unwrap().0.memory, Sharing::Private);
    }

    #[test]
    fn not_a_domain() {
        assert!(matches!(parse("<network/>"), Err(Error::NotADomain(_))));
        assert!(matches!(parse("<domain/>"), Err(Error::NoName)));
    }
}
