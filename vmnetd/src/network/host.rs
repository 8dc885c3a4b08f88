//! What a network changes on the host outside nftables: addresses (rtnetlink), the routes
//! and addresses `auto` must avoid (rtnetlink, never sysfs: in a network namespace sysfs
//! shows the host's interfaces), and per-interface sysctls.
//!
//! Forwarding is switched on per interface, never globally: `net.ipv4.conf.GW.forwarding`
//! on the gateway interface (the VMs' traffic comes in there), and, for a NAT'd network, on
//! the interfaces that hold the host's default routes (replies come in there: the kernel
//! checks the *input* interface's `forwarding`). vmnetd records the uplinks it switched and
//! switches them back when no NAT'd network is left.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;

use crate::ifname::IfName;
use crate::netlink::Netlink;
use vmnetd_api::net::Ipv4Cidr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Netlink request failed: {0}")]
    Netlink(String, #[source] rtnetlink::Error),
    #[error("Cannot read {0}")]
    ReadSysctl(String, #[source] std::io::Error),
    #[error("Cannot write {0}")]
    WriteSysctl(String, #[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
}

fn addr_of(msg: &AddressMessage) -> Option<Addr> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
    let mut ip = None;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(l) => ip = Some(*l),
            AddressAttribute::Address(x) if ip.is_none() => ip = Some(*x),
            _ => {}
        }
    }
    Some(Addr { index: msg.header.index, ip: ip?, prefix: msg.header.prefix_len })
}

/// `ip addr show`: every address of every interface.
pub async fn addresses(nl: &Netlink) -> Result<Vec<Addr>> {
    let mut s = nl.handle().address().get().execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(|e| Error::Netlink("list addresses".into(), e))? {
        out.extend(addr_of(&m));
    }
    Ok(out)
}

/// An IPv4 route: its destination prefix and output interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Cidr,
    pub oif: Option<u32>,
}

fn route_of(m: &RouteMessage) -> Option<Route4> {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let net = Ipv4Cidr::new(dst, m.header.destination_prefix_length).ok()?;
    Some(Route4 { dst: net, oif })
}

/// `ip -4 route show table all`.
pub async fn routes_v4(nl: &Netlink) -> Result<Vec<Route4>> {
    let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut s = nl.handle().route().get(req).execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(|e| Error::Netlink("list routes".into(), e))? {
        out.extend(route_of(&m));
    }
    Ok(out)
}

/// Every IPv4 prefix in use on the host: routes (but default routes) and addresses.
pub async fn taken_v4(nl: &Netlink) -> Result<Vec<Ipv4Cidr>> {
    let mut out: Vec<Ipv4Cidr> = routes_v4(nl).await?.into_iter().map(|r| r.dst).filter(|d| !d.is_default()).collect();
    for a in addresses(nl).await? {
        if let IpAddr::V4(ip) = a.ip {
            let mask = if a.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(a.prefix.min(32))) };
            if let Ok(c) = Ipv4Cidr::new(Ipv4Addr::from(u32::from(ip) & mask), a.prefix.min(32)) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Interfaces holding an IPv4 default route.
pub async fn default_route_interfaces(nl: &Netlink) -> Result<Vec<u32>> {
    let mut out: Vec<u32> =
        routes_v4(nl).await?.into_iter().filter(|r| r.dst.is_default()).filter_map(|r| r.oif).collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `ip addr add IP/PREFIX dev #INDEX`, unless it is there. Returns whether it was added.
pub async fn ensure_addr(nl: &Netlink, index: u32, ip: IpAddr, prefix: u8) -> Result<bool> {
    let present = addresses(nl).await?.into_iter().any(|a| a.index == index && a.ip == ip && a.prefix == prefix);
    if present {
        return Ok(false);
    }
    match nl.handle().address().add(index, ip, prefix).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(Error::Netlink(format!("add {ip}/{prefix} to interface #{index}"), e)),
    }
}

/// `ip addr del IP/PREFIX dev #INDEX`; an address that is gone is not an error.
pub async fn del_addr(nl: &Netlink, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
    let mut s = nl.handle().address().get().set_link_index_filter(index).execute();
    while let Some(m) = s.try_next().await.map_err(|e| Error::Netlink("list addresses".into(), e))? {
        if addr_of(&m).is_some_and(|a| a.ip == ip && a.prefix == prefix) {
            match nl.handle().address().del(m).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.code.map(|c| -c.get()) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(Error::Netlink(format!("delete {ip}/{prefix} from interface #{index}"), e)),
            }
        }
    }
    Ok(())
}

/// A per-interface sysctl file (`/proc/sys/net/ipv4/conf/IF/forwarding`). `IfName` has no
/// `/` and is never `.` or `..`, so this stays inside that directory.
pub fn sysctl_path(family: &str, ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{ifname}/{key}")
}

pub fn read_flag(path: &str) -> Result<bool> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::ReadSysctl(path.to_owned(), e))?;
    Ok(s.trim() != "0")
}

pub fn write_flag(path: &str, on: bool) -> Result<()> {
    std::fs::write(path, if on { "1\n" } else { "0\n" }).map_err(|e| Error::WriteSysctl(path.to_owned(), e))
}

/// `sysctl net.ipv4.conf.IF.forwarding=1`; returns the value it had.
pub fn enable_forwarding(ifname: &str) -> Result<bool> {
    let p = sysctl_path("ipv4", ifname, "forwarding");
    let was = read_flag(&p)?;
    if !was {
        write_flag(&p, true)?;
    }
    Ok(was)
}

/// IPv6 on a gateway interface: enabled, no autoconfiguration of its own (it is the router).
pub fn enable_ipv6(ifname: &IfName) -> Result<()> {
    let name = ifname.as_str();
    let _ = write_flag(&sysctl_path("ipv6", name, "accept_ra"), false);
    write_flag(&sysctl_path("ipv6", name, "disable_ipv6"), false)
}

/// The IPv6 address in `prefix` the host takes (`::1`).
pub fn v6(prefix: Ipv6Addr) -> IpAddr {
    let mut s = prefix.segments();
    s[7] = 1;
    IpAddr::V6(Ipv6Addr::from(s))
}
