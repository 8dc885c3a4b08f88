//! Networks with addresses on a bridge: a gateway address on the host side, DHCP and DNS
//! from a supervised dnsmasq, NAT and port forwards in vmnetd's own nftables table.
//!
//! A network is one declaration ([`NetworkDecl`]) that the daemon makes true and keeps true:
//! - **gateway**: on a built-in bridge, an internal port `vmn-NAME` in the network's VLAN
//!   (a persistent TAP, labelled `vmnetd-network=NAME`); on a Linux bridge, the bridge
//!   itself. It gets the gateway address (and the IPv6 ULA `::1/64` when asked), is set up,
//!   and forwards IPv4 (`net.ipv4.conf.IF.forwarding`, per interface: see [`host`]);
//! - **dnsmasq** ([`dnsmasq`]): one per network, bound to that interface only, its config
//!   and static leases in `RUN_DIR/networks/NAME/`, its leases in `STATE_DIR/networks/NAME/`;
//! - **nftables** ([`nft`]): the table `inet vmnetd`, rebuilt whole and atomically from every
//!   network on each change, and put back when something else removes it.
//!
//! This module is the pure part: validation, defaults, the `auto` subnet choice and the
//! ULA prefix. [`crate::daemon::networks`] applies declarations with [`host`], [`dnsmasq`]
//! and [`nft`].

pub mod dnsmasq;
pub mod host;
pub mod leases;
pub mod nft;

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::api::{ApiError, BridgeKind, ErrorKind};
use crate::ifname::IfName;
use vmnetd_api::net::{DhcpRange, Forward, Ipv4Cidr, NetworkSpec, StaticLease, SubnetSpec};

/// The label on a network's gateway port (its value: the network's name).
pub const NETWORK_LABEL: &str = "vmnetd-network";

/// Most static leases and port forwards one network holds.
pub const MAX_LEASES: usize = 4096;
pub const MAX_FORWARDS: usize = 1024;

/// A declared network with what was resolved when it was declared (the `auto` subnet, the
/// gateway, the ULA prefix), its static leases and forwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDecl {
    pub spec: NetworkSpec,
    pub subnet: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    /// The ULA /64 (`fdXX:XXXX:XXXX:YYYY::`), when `ipv6` is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub leases: Vec<StaticLease>,
    #[serde(default)]
    pub forwards: Vec<Forward>,
    /// Linux bridge: `forwarding` of the bridge before vmnetd set it (put back on `del`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_forwarding: Option<bool>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidArgument, msg)
}

impl NetworkDecl {
    /// The interface holding the gateway address on a bridge of `kind`.
    pub fn interface(&self, kind: BridgeKind) -> IfName {
        match kind {
            BridgeKind::Builtin => self.spec.name.gateway_ifname(),
            BridgeKind::Linux => self.spec.bridge.clone(),
        }
    }

    pub fn dhcp_range(&self) -> Option<DhcpRange> {
        let d = self.spec.dhcp?;
        Some(d.range.unwrap_or_else(|| default_range(&self.subnet, self.gateway)))
    }

    /// Whether the network needs a dnsmasq (DHCP, DNS or router advertisements).
    pub fn needs_dnsmasq(&self) -> bool {
        self.spec.dhcp.is_some() || self.spec.dns || self.spec.ipv6
    }

    /// Whether the network has rules in vmnetd's nftables table.
    pub fn needs_nft(&self) -> bool {
        self.spec.nat || !self.forwards.is_empty()
    }

    /// The address the host has in the ULA prefix.
    pub fn ipv6_gateway(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|p| {
            let mut s = p.segments();
            s[7] = 1;
            Ipv6Addr::from(s)
        })
    }
}

/// Resolves and checks a declaration against its subnet: gateway, DHCP range, the VLAN's
/// fit with the bridge kind. Leases and forwards are checked one by one ([`check_lease`],
/// [`check_forward`]).
pub fn resolve(spec: &NetworkSpec, subnet: Ipv4Cidr, kind: BridgeKind, seed: &[u8]) -> Result<NetworkDecl, ApiError> {
    vmnetd_api::net::check_subnet(&subnet).map_err(|e| invalid(e.0))?;
    // The interface name goes into dnsmasq's `interface=` (where ',' separates a list and
    // '*' is a wildcard) and nft's `iifname` (a wildcard too): plain names only, so neither
    // ever matches more than this one interface.
    if kind == BridgeKind::Linux
        && !spec.bridge.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(format!(
            "A network needs a bridge whose name is letters, digits, '-', '_' and '.' only (not {})",
            spec.bridge
        )));
    }
    if kind == BridgeKind::Linux && spec.vlan.is_some() {
        return Err(ApiError::new(
            ErrorKind::Unsupported,
            format!(
                "A network on Linux bridge {} has its address on the bridge itself (untagged); --vlan needs a built-in bridge",
                spec.bridge
            ),
        ));
    }
    let gateway = match spec.gateway {
        Some(g) => g,
        None => subnet.nth(1).ok_or_else(|| invalid(format!("subnet {subnet} has no host address")))?,
    };
    if !subnet.is_host(gateway) {
        return Err(invalid(format!("gateway {gateway} is not a host address of {subnet}")));
    }
    if let Some(r) = spec.dhcp.and_then(|d| d.range) {
        if !subnet.is_host(r.first) || !subnet.is_host(r.last) {
            return Err(invalid(format!("DHCP range {r} is not inside the host addresses of {subnet}")));
        }
        if (u32::from(r.first)..=u32::from(r.last)).contains(&u32::from(gateway)) {
            return Err(invalid(format!("DHCP range {r} contains the gateway {gateway}")));
        }
    }
    if spec.domain.is_some() && !spec.dns && spec.dhcp.is_none() {
        return Err(invalid("--domain needs --dns or --dhcp (it is what they serve)"));
    }
    Ok(NetworkDecl {
        spec: spec.clone(),
        subnet,
        gateway,
        ipv6: spec.ipv6.then(|| ula_prefix(seed, spec.name.as_str())),
        leases: Vec::new(),
        forwards: Vec::new(),
        prior_forwarding: None,
    })
}

/// The default pool: every host address after the gateway's (or before it, when the
/// gateway is the last one).
pub fn default_range(subnet: &Ipv4Cidr, gateway: Ipv4Addr) -> DhcpRange {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    let g = u32::from(gateway);
    if g < last {
        DhcpRange { first: Ipv4Addr::from(g.max(first - 1) + 1), last: Ipv4Addr::from(last) }
    } else {
        DhcpRange { first: Ipv4Addr::from(first), last: Ipv4Addr::from(last - 1) }
    }
}

/// Checks a static lease against the network and its other leases.
pub fn check_lease(decl: &NetworkDecl, lease: &StaticLease) -> Result<(), ApiError> {
    if !lease.mac.is_unicast() {
        return Err(invalid(format!("MAC {} is not a unicast address", lease.mac)));
    }
    if !decl.subnet.is_host(lease.ip) || lease.ip == decl.gateway {
        return Err(invalid(format!(
            "{} is not a host address of {} other than the gateway {}",
            lease.ip, decl.subnet, decl.gateway
        )));
    }
    if decl.spec.dhcp.is_none() {
        return Err(invalid(format!("network {} has no DHCP (--dhcp)", decl.spec.name)));
    }
    if decl.leases.len() >= MAX_LEASES && !decl.leases.iter().any(|l| l.mac == lease.mac) {
        return Err(invalid(format!("network {} has {MAX_LEASES} static leases, the most it may", decl.spec.name)));
    }
    for l in &decl.leases {
        if l.mac != lease.mac && l.ip == lease.ip {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("{} is already the static lease of {}", l.ip, l.mac),
            ));
        }
        if l.mac != lease.mac && lease.name.is_some() && l.name == lease.name {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "host name {} is already the static lease of {}",
                    lease.name.as_ref().map_or("", |n| n.as_str()),
                    l.mac
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a forward against its network (the host port's uniqueness across networks is the
/// caller's).
pub fn check_forward(decl: &NetworkDecl, f: &Forward) -> Result<(), ApiError> {
    if !decl.subnet.is_host(f.to.addr) || f.to.addr == decl.gateway {
        return Err(invalid(format!(
            "forward target {} is not a host address of {} other than the gateway",
            f.to.addr, decl.subnet
        )));
    }
    if decl.forwards.len() >= MAX_FORWARDS {
        return Err(invalid(format!("network {} has {MAX_FORWARDS} forwards, the most it may", decl.spec.name)));
    }
    Ok(())
}

/// RFC 1918 /24s `auto` picks from, in order: 10.10.0.0/24 ... 10.254.255.0/24, then
/// 172.16-31, then 192.168.
pub fn auto_candidates() -> impl Iterator<Item = Ipv4Cidr> {
    let ten = (10u8..=254).flat_map(|b| (0u8..=255).map(move |c| Ipv4Addr::new(10, b, c, 0)));
    let one72 = (16u8..=31).flat_map(|b| (0u8..=255).map(move |c| Ipv4Addr::new(172, b, c, 0)));
    let one92 = (1u8..=254).map(|c| Ipv4Addr::new(192, 168, c, 0));
    ten.chain(one72).chain(one92).filter_map(|a| Ipv4Cidr::new(a, 24).ok())
}

/// The first `auto` candidate overlapping none of `taken` (the host's routes and addresses
/// and the other networks' subnets).
pub fn pick_auto(taken: &[Ipv4Cidr]) -> Option<Ipv4Cidr> {
    auto_candidates().find(|c| !taken.iter().any(|t| !t.is_default() && t.overlaps(c)))
}

/// The subnet a spec asks for, or `None` for `auto`.
pub fn fixed_subnet(spec: &NetworkSpec) -> Option<Ipv4Cidr> {
    match spec.subnet {
        SubnetSpec::Auto => None,
        SubnetSpec::Cidr(c) => Some(c),
    }
}

/// A ULA /64 (RFC 4193): a 40-bit global id from the host's seed and the network's name
/// (stable across restarts, different per host), subnet id 1.
pub fn ula_prefix(seed: &[u8], name: &str) -> Ipv6Addr {
    // FNV-1a over seed and name: not a secret, only spread.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.iter().chain(b"/").chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let g = h.to_be_bytes();
    Ipv6Addr::new(
        0xfd00 | u16::from(g[0]),
        u16::from_be_bytes([g[1], g[2]]),
        u16::from_be_bytes([g[3], g[4]]),
        1,
        0,
        0,
        0,
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmnetd_api::net::DhcpSpec;

    fn spec(s: &str) -> NetworkSpec {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn defaults_follow_the_subnet() {
        let s = spec(r#"{"name":"lan","bridge":"vmnet0","subnet":"10.10.0.0/24","dhcp":{}}"#);
        let d = resolve(&s, "10.10.0.0/24".parse().unwrap(), BridgeKind::Builtin, b"seed").unwrap();
        assert_eq!(d.gateway, Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(d.dhcp_range().unwrap().to_string(), "10.10.0.2-10.10.0.254");
        assert_eq!(d.interface(BridgeKind::Builtin).as_str(), "vmn-lan");
        assert_eq!(d.interface(BridgeKind::Linux).as_str(), "vmnet0");
        let r = default_range(&"10.0.0.0/29".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(r.to_string(), "10.0.0.1-10.0.0.5");
    }

    #[test]
    fn bad_gateways_ranges_and_vlans_are_refused() {
        let c: Ipv4Cidr = "10.10.0.0/24".parse().unwrap();
        let mut s = spec(r#"{"name":"lan","bridge":"br0","subnet":"10.10.0.0/24","gateway":"10.10.0.255"}"#);
        assert!(resolve(&s, c, BridgeKind::Builtin, b"").is_err());
        s.gateway = Some(Ipv4Addr::new(10, 10, 1, 1));
        assert!(resolve(&s, c, BridgeKind::Builtin, b"").is_err());
        s.gateway = None;
        s.dhcp = Some(DhcpSpec { range: Some("10.10.0.1-10.10.0.9".parse().unwrap()) });
        assert!(resolve(&s, c, BridgeKind::Builtin, b"").unwrap_err().message.contains("gateway"));
        s.dhcp = Some(DhcpSpec { range: Some("10.10.0.2-10.10.1.9".parse().unwrap()) });
        assert!(resolve(&s, c, BridgeKind::Builtin, b"").is_err());
        s.dhcp = None;
        s.vlan = Some(crate::switch::VlanId::new(10).unwrap());
        assert_eq!(resolve(&s, c, BridgeKind::Linux, b"").unwrap_err().kind, ErrorKind::Unsupported);
    }

    #[test]
    fn leases_and_forwards_stay_inside() {
        let s = spec(r#"{"name":"lan","bridge":"br0","subnet":"10.10.0.0/24","dhcp":{}}"#);
        let mut d = resolve(&s, "10.10.0.0/24".parse().unwrap(), BridgeKind::Builtin, b"").unwrap();
        let l = |m: &str, ip: &str| StaticLease { mac: m.parse().unwrap(), ip: ip.parse().unwrap(), name: None };
        assert!(check_lease(&d, &l("52:54:00:00:00:01", "10.10.0.5")).is_ok());
        assert!(check_lease(&d, &l("52:54:00:00:00:01", "10.10.0.1")).is_err());
        assert!(check_lease(&d, &l("52:54:00:00:00:01", "10.10.1.5")).is_err());
        assert!(check_lease(&d, &l("01:00:5e:00:00:01", "10.10.0.5")).is_err());
        d.leases.push(l("52:54:00:00:00:01", "10.10.0.5"));
        assert_eq!(check_lease(&d, &l("52:54:00:00:00:02", "10.10.0.5")).unwrap_err().kind, ErrorKind::Conflict);
        let f: Forward = serde_json::from_str(r#"{"proto":"tcp","host_port":80,"to":"10.10.0.255:80"}"#).unwrap();
        assert!(check_forward(&d, &f).is_err());
    }

    #[test]
    fn auto_skips_what_is_taken() {
        let taken: Vec<Ipv4Cidr> = vec!["10.10.0.0/23".parse().unwrap(), "10.10.2.5/32".parse().unwrap()];
        assert_eq!(pick_auto(&taken).unwrap().to_string(), "10.10.3.0/24");
        // A default route is not a collision.
        assert_eq!(pick_auto(&["0.0.0.0/0".parse().unwrap()]).unwrap().to_string(), "10.10.0.0/24");
        assert_eq!(pick_auto(&["10.0.0.0/8".parse().unwrap()]).unwrap().to_string(), "172.16.0.0/24");
    }

    #[test]
    fn ula_is_stable_and_local() {
        let a = ula_prefix(b"host-a", "lan");
        assert_eq!(a, ula_prefix(b"host-a", "lan"));
        assert_ne!(a, ula_prefix(b"host-b", "lan"));
        assert_eq!(a.segments()[0] & 0xff00, 0xfd00);
        assert_eq!(&a.segments()[3..], &[1, 0, 0, 0, 0]);
    }
}
