//! Networks with addresses: the validated value types of `vmnetd network ...`.
//!
//! Every value here arrives from an untrusted party (a control-socket client, the config
//! file, the libvirt hook's metadata) and ends up in a kernel address, a dnsmasq config line
//! or an nftables rule, so each is parsed strictly into a type that cannot hold anything
//! else: a dnsmasq line cannot be smuggled through a host name, nor a second rule through a
//! port number. The parsers are fuzzed (`fuzz/fuzz_targets/network_inputs.rs`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ifname::IfName;
use crate::mac::MacAddr;
use crate::vlan::VlanId;

/// Why a network value is invalid (the message says which value and what is allowed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetValueError(pub String);

fn bad(msg: impl Into<String>) -> NetValueError {
    NetValueError(msg.into())
}

/// Serde through the type's `FromStr`/`Display`, so JSON and TOML carry the text form and
/// every deserialised value went through the parser.
macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Longest network name: the gateway interface is `vmn-NAME`, within `IFNAMSIZ`.
pub const MAX_NET_NAME_LEN: usize = 11;

/// A network's name: 1-11 characters from `A-Z a-z 0-9 _ -`, starting with a letter or digit
/// (it names a file, an interface and an nftables comment).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetName(String);

impl NetName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The gateway's interface on a built-in bridge (an internal port of that name).
    pub fn gateway_ifname(&self) -> IfName {
        // 4 + at most 11 bytes of [A-Za-z0-9_-]: always a valid interface name.
        IfName::new(&format!("vmn-{}", self.0)).unwrap_or_else(|_| unreachable!("checked by NetName"))
    }
}

impl FromStr for NetName {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=MAX_NET_NAME_LEN).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(bad(format!(
                "network name {s:?} must be 1-{MAX_NET_NAME_LEN} characters from A-Z a-z 0-9 _ -, starting with a letter or digit"
            )));
        }
        Ok(NetName(s.to_owned()))
    }
}

impl fmt::Display for NetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(NetName);

/// An IPv4 prefix, `A.B.C.D/N`, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Cidr {
    /// A prefix from an address and a length; host bits must be zero.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, NetValueError> {
        if len > 32 {
            return Err(bad(format!("prefix length {len} is over 32")));
        }
        let c = Ipv4Cidr { addr, len };
        if c.network() != addr {
            return Err(bad(format!("{addr}/{len} has host bits set (the network is {}/{len})", c.network())));
        }
        Ok(c)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// `0.0.0.0/0` (a default route).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.addr)
    }

    /// An address usable by a host: inside, neither the network nor the broadcast address.
    pub fn is_host(&self, a: Ipv4Addr) -> bool {
        self.contains(a) && a != self.network() && a != self.broadcast()
    }

    pub fn overlaps(&self, o: &Ipv4Cidr) -> bool {
        let m = self.mask() & o.mask();
        u32::from(self.addr) & m == u32::from(o.addr) & m
    }

    /// The `n`-th address of the prefix (0 is the network address), if inside.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = if self.len == 0 { u64::from(u32::MAX) + 1 } else { 1u64 << (32 - u32::from(self.len)) };
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.addr).wrapping_add(n)))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s.split_once('/').ok_or_else(|| bad(format!("{s:?} is not an IPv4 prefix A.B.C.D/N")))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad(format!("{a:?} is not an IPv4 address")))?;
        if l.is_empty() || l.len() > 2 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{l:?} is not a prefix length (0-32)")));
        }
        let len: u8 = l.parse().map_err(|_| bad(format!("{l:?} is not a prefix length (0-32)")))?;
        Ipv4Cidr::new(addr, len)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
string_serde!(Ipv4Cidr);

/// Shortest and longest prefix a network may have: at least two hosts, at most a /8.
pub const NET_PREFIX_MIN: u8 = 8;
pub const NET_PREFIX_MAX: u8 = 30;

/// Checks that `c` can be a VM network: a unicast range that is not loopback, link-local,
/// multicast, reserved or "this network", sized /8 to /30.
pub fn check_subnet(c: &Ipv4Cidr) -> Result<(), NetValueError> {
    if !(NET_PREFIX_MIN..=NET_PREFIX_MAX).contains(&c.prefix_len()) {
        return Err(bad(format!("subnet {c}: the prefix length must be {NET_PREFIX_MIN}-{NET_PREFIX_MAX}")));
    }
    let reserved: [(&str, Ipv4Cidr); 5] = [
        ("\"this network\"", Ipv4Cidr { addr: Ipv4Addr::new(0, 0, 0, 0), len: 8 }),
        ("loopback", Ipv4Cidr { addr: Ipv4Addr::new(127, 0, 0, 0), len: 8 }),
        ("link-local", Ipv4Cidr { addr: Ipv4Addr::new(169, 254, 0, 0), len: 16 }),
        ("multicast", Ipv4Cidr { addr: Ipv4Addr::new(224, 0, 0, 0), len: 4 }),
        ("reserved", Ipv4Cidr { addr: Ipv4Addr::new(240, 0, 0, 0), len: 4 }),
    ];
    for (what, r) in reserved {
        if c.overlaps(&r) {
            return Err(bad(format!("subnet {c} overlaps the {what} range {r}")));
        }
    }
    Ok(())
}

/// `--subnet`: a prefix, or `auto` (a free RFC 1918 /24 picked by the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubnetSpec {
    #[default]
    Auto,
    Cidr(Ipv4Cidr),
}

impl FromStr for SubnetSpec {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(SubnetSpec::Auto);
        }
        let c: Ipv4Cidr = s.parse()?;
        check_subnet(&c)?;
        Ok(SubnetSpec::Cidr(c))
    }
}

impl fmt::Display for SubnetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubnetSpec::Auto => f.write_str("auto"),
            SubnetSpec::Cidr(c) => c.fmt(f),
        }
    }
}
string_serde!(SubnetSpec);

/// A DHCP pool, `FIRST-LAST` (both inside the subnet; checked against it by the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl FromStr for DhcpRange {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .or_else(|| s.split_once(','))
            .ok_or_else(|| bad(format!("{s:?} is not a DHCP range FIRST-LAST")))?;
        let first: Ipv4Addr = a.parse().map_err(|_| bad(format!("{a:?} is not an IPv4 address")))?;
        let last: Ipv4Addr = b.parse().map_err(|_| bad(format!("{b:?} is not an IPv4 address")))?;
        if u32::from(first) > u32::from(last) {
            return Err(bad(format!("DHCP range {s}: the first address is after the last")));
        }
        Ok(DhcpRange { first, last })
    }
}

impl fmt::Display for DhcpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}
string_serde!(DhcpRange);

/// A host name (one DNS label): 1-63 characters from `A-Z a-z 0-9 -`, not starting or
/// ending with `-` (RFC 1123).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

fn label_ok(l: &str) -> bool {
    (1..=63).contains(&l.len())
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostName {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !label_ok(s) {
            return Err(bad(format!(
                "host name {s:?} must be 1-63 characters from A-Z a-z 0-9 -, not starting or ending with -"
            )));
        }
        Ok(HostName(s.to_owned()))
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(HostName);

/// A DNS domain (`--domain vm.lan`): host-name labels joined by dots, at most 253
/// characters, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainName(String);

impl DomainName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DomainName {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
            return Err(bad(format!(
                "domain {s:?} must be labels of 1-63 characters from A-Z a-z 0-9 - joined by dots (at most 253)"
            )));
        }
        Ok(DomainName(s.to_owned()))
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(DomainName);

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(bad(format!("protocol {s:?} must be tcp or udp"))),
        }
    }
}

/// A port number 1-65535 (0 is never a service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortNum(u16);

impl PortNum {
    pub fn new(n: u16) -> Result<Self, NetValueError> {
        if n == 0 {
            return Err(bad("port 0 is not a port (1-65535)"));
        }
        Ok(PortNum(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for PortNum {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{s:?} is not a port number (1-65535)")));
        }
        let n: u16 = s.parse().map_err(|_| bad(format!("{s:?} is not a port number (1-65535)")))?;
        PortNum::new(n)
    }
}

impl fmt::Display for PortNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for PortNum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for PortNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PortNum::new(u16::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `ADDR:PORT` a forward goes to (`--to 10.10.0.5:80`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: Ipv4Addr,
    pub port: PortNum,
}

impl FromStr for Target {
    type Err = NetValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.rsplit_once(':').ok_or_else(|| bad(format!("{s:?} is not ADDRESS:PORT")))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad(format!("{a:?} is not an IPv4 address")))?;
        Ok(Target { addr, port: p.parse()? })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}
string_serde!(Target);

/// DHCP settings of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpSpec {
    /// The pool; default: every host address but the gateway's.
    #[serde(default)]
    pub range: Option<DhcpRange>,
}

/// A network as a client declares it (`vmnetd network add`, `[[network]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: NetName,
    pub bridge: IfName,
    /// The VLAN the network lives in (built-in bridge; default: untagged VLAN 1).
    #[serde(default)]
    pub vlan: Option<VlanId>,
    #[serde(default)]
    pub subnet: SubnetSpec,
    /// The host's address on the network; default: the subnet's first host address.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Masquerade the subnet out of the host's other interfaces.
    #[serde(default)]
    pub nat: bool,
    /// DHCP from the network's dnsmasq.
    #[serde(default)]
    pub dhcp: Option<DhcpSpec>,
    /// DNS from the network's dnsmasq (clients' names, and the host's resolvers).
    #[serde(default)]
    pub dns: bool,
    #[serde(default)]
    pub domain: Option<DomainName>,
    /// An IPv6 ULA /64 with router advertisements (SLAAC).
    #[serde(default)]
    pub ipv6: bool,
}

/// A static lease: this MAC always gets this address (and name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticLease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<HostName>,
}

/// A port forward: the host's `proto`/`host_port` to `to` inside the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub proto: Proto,
    pub host_port: PortNum,
    pub to: Target,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub name: NetName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseAdd {
    pub network: NetName,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<HostName>,
}

impl LeaseAdd {
    pub fn lease(&self) -> StaticLease {
        StaticLease { mac: self.mac, ip: self.ip, name: self.name.clone() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseDel {
    pub network: NetName,
    pub mac: MacAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAdd {
    pub network: NetName,
    pub proto: Proto,
    pub host_port: PortNum,
    pub to: Target,
}

impl ForwardAdd {
    pub fn forward(&self) -> Forward {
        Forward { proto: self.proto, host_port: self.host_port, to: self.to }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardDel {
    pub network: NetName,
    pub proto: Proto,
    pub host_port: PortNum,
}

/// A network as vmnetd knows it, with what runs for it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub spec: NetworkSpec,
    /// The subnet in use (`auto` resolved).
    pub subnet: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    /// The host interface with the gateway address.
    pub interface: IfName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<DhcpRange>,
    /// The IPv6 ULA /64, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<String>,
    pub leases: Vec<StaticLease>,
    pub forwards: Vec<Forward>,
    /// The dnsmasq serving it, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsmasq_pid: Option<u32>,
    pub source: crate::proto::Source,
}

/// A lease dnsmasq gave out (its lease file), or a static one nobody took yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostName>,
    /// Unix time the lease ends (absent: never, or not taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Declared with `network lease add`.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// dnsmasq has handed it out.
    pub active: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly() {
        let c: Ipv4Cidr = "10.10.0.0/24".parse().unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 10, 0, 255));
        assert_eq!(c.nth(1), Some(Ipv4Addr::new(10, 10, 0, 1)));
        assert_eq!(c.nth(256), None);
        assert!(c.is_host(Ipv4Addr::new(10, 10, 0, 254)) && !c.is_host(c.broadcast()));
        for bad in ["10.10.0.1/24", "10.10.0.0/33", "10.10.0.0/", "10.10.0.0/+8", "10.10.0/24", "010.1.0.0/16", "x"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        assert!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().overlaps(&c));
        assert!(!"10.11.0.0/24".parse::<Ipv4Cidr>().unwrap().overlaps(&c));
        assert!("10.0.0.0/8".parse::<Ipv4Cidr>().unwrap().overlaps(&c));
    }

    #[test]
    fn subnets_must_be_usable() {
        assert!("10.10.0.0/24".parse::<SubnetSpec>().is_ok());
        assert_eq!("auto".parse::<SubnetSpec>().unwrap(), SubnetSpec::Auto);
        for bad in ["127.0.0.0/24", "169.254.1.0/24", "224.0.0.0/24", "10.0.0.0/31", "0.0.0.0/0", "10.0.0.0/7"] {
            assert!(bad.parse::<SubnetSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_cannot_carry_config_syntax() {
        for bad in ["", "a b", "a\nb", "a,b", "-a", "a-", "a.b", &"x".repeat(64)] {
            assert!(bad.parse::<HostName>().is_err(), "{bad:?}");
        }
        assert!("web-1".parse::<HostName>().is_ok());
        assert!("vm.lan".parse::<DomainName>().is_ok());
        for bad in ["", "vm..lan", "vm.lan.", "v m", "a/b", "x\n"] {
            assert!(bad.parse::<DomainName>().is_err(), "{bad:?}");
        }
        for bad in ["", "-x", "x/y", "..", "abcdefghijkl", "a.b"] {
            assert!(bad.parse::<NetName>().is_err(), "{bad:?}");
        }
        assert_eq!("default".parse::<NetName>().unwrap().gateway_ifname().as_str(), "vmn-default");
        assert_eq!("abcdefghijk".parse::<NetName>().unwrap().gateway_ifname().as_str().len(), 15);
    }

    #[test]
    fn ports_ranges_and_targets() {
        assert!("0".parse::<PortNum>().is_err() && "65536".parse::<PortNum>().is_err());
        assert!("-1".parse::<PortNum>().is_err() && "+80".parse::<PortNum>().is_err());
        assert_eq!("10.10.0.5:80".parse::<Target>().unwrap().port.get(), 80);
        assert!("10.10.0.5:0".parse::<Target>().is_err());
        let r: DhcpRange = "10.0.0.10-10.0.0.20".parse().unwrap();
        assert_eq!(r.to_string(), "10.0.0.10-10.0.0.20");
        assert!("10.0.0.20-10.0.0.10".parse::<DhcpRange>().is_err());
        assert!(serde_json::from_str::<PortNum>("0").is_err());
        let f: Forward = serde_json::from_str(r#"{"proto":"tcp","host_port":8080,"to":"10.10.0.5:80"}"#).unwrap();
        assert_eq!(f.host_port.get(), 8080);
    }
}
