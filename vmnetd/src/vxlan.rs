//! VXLAN (RFC 7348) for the built-in bridge's tunnel ports — the pure part: the header, the
//! VLAN↔VNI map, which datagrams are taken, and the table of remote VTEPs learned per inner
//! source MAC. No I/O; the edge ([`crate::ports::vxlan`]) moves the datagrams.
//!
//! Everything a datagram carries is the sender's word: any host that can reach the UDP port
//! can send one. So a datagram is taken only with the `I` flag set, a VNI this tunnel maps,
//! a whole inner Ethernet header, from a configured remote (when the tunnel has a static
//! remote list), and an inner source that is a unicast MAC before it is learned. The table of
//! remotes is bounded ([`RemoteTable::MAX`] entries, oldest-first ageing), so a flood of
//! invented source MACs costs a bounded amount of memory and pushes out only stale entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::switch::VlanId;

/// The VXLAN header: flags (8 bits, `I` = 0x08), 24 reserved, VNI (24), 8 reserved.
pub const HDR_LEN: usize = 8;
/// IANA's VXLAN port.
pub const PORT: u16 = 4789;
/// The `I` flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;
pub const MAX_VNI: u32 = 0x00FF_FFFF;
/// Bytes an encapsulated frame adds to the underlay packet besides the inner frame itself:
/// outer IPv4 (20) + UDP (8) + VXLAN (8). With the inner Ethernet header (14) this is the
/// "50 bytes" by which a tunnel's inner MTU is smaller than the underlay's.
pub const OVERHEAD_V4: usize = 20 + 8 + HDR_LEN;
/// The same over IPv6 (40-byte header): 70 bytes with the inner Ethernet header.
pub const OVERHEAD_V6: usize = 40 + 8 + HDR_LEN;

/// The header of a frame sent in `vni`.
pub fn header(vni: u32) -> [u8; HDR_LEN] {
    let v = (vni & MAX_VNI).to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The VNI of a received header, if the header is one vmnetd takes: `I` set. The other
/// flag bits and the reserved fields are ignored, as RFC 7348 says a receiver must.
pub fn parse_header(h: &[u8]) -> Option<u32> {
    if h.len() < HDR_LEN || h[0] & FLAG_I == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, h[4], h[5], h[6]]))
}

/// Why a received datagram was not taken (counted per reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RxDrop {
    /// Too short for a VXLAN header and an Ethernet header, `I` not set, or truncated.
    BadHeader,
    /// A VNI this tunnel does not map.
    UnknownVni,
    /// From an address that is not one of the tunnel's remotes.
    UnknownRemote,
    /// A tagged inner frame on a tunnel that maps VLANs to VNIs (the VNI is the VLAN).
    InnerVlan,
}

impl RxDrop {
    pub const ALL: [RxDrop; 4] = [RxDrop::BadHeader, RxDrop::UnknownVni, RxDrop::UnknownRemote, RxDrop::InnerVlan];

    pub fn name(self) -> &'static str {
        match self {
            RxDrop::BadHeader => "vxlan_bad_header",
            RxDrop::UnknownVni => "vxlan_unknown_vni",
            RxDrop::UnknownRemote => "vxlan_unknown_remote",
            RxDrop::InnerVlan => "vxlan_inner_vlan",
        }
    }
}

/// Which VNI carries which VLAN of the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VniMap {
    /// One VNI; its frames are the port's (access) VLAN, untagged on the tunnel side.
    Single(u32),
    /// A trunk: each VLAN in its own VNI. Sorted by VLAN; VLANs and VNIs unique.
    Vlans(Vec<(VlanId, u32)>),
}

impl VniMap {
    /// The VLAN a VNI's frames belong to: `Ok(None)` for the single VNI (the port's access
    /// VLAN applies), `Ok(Some(v))` for a mapped one.
    pub fn vlan_of(&self, vni: u32) -> Result<Option<VlanId>, RxDrop> {
        match self {
            VniMap::Single(v) if *v == vni => Ok(None),
            VniMap::Single(_) => Err(RxDrop::UnknownVni),
            VniMap::Vlans(m) => m.iter().find(|(_, n)| *n == vni).map(|(v, _)| Some(*v)).ok_or(RxDrop::UnknownVni),
        }
    }

    /// The VNI of a frame leaving in VLAN `vlan` (`None`: it leaves untagged).
    pub fn vni_of(&self, vlan: Option<u16>) -> Option<u32> {
        match (self, vlan) {
            (VniMap::Single(v), None) => Some(*v),
            (VniMap::Vlans(m), Some(vid)) => m.iter().find(|(v, _)| v.get() == vid).map(|(_, n)| *n),
            _ => None,
        }
    }

    pub fn vnis(&self) -> Vec<u32> {
        match self {
            VniMap::Single(v) => vec![*v],
            VniMap::Vlans(m) => m.iter().map(|(_, n)| *n).collect(),
        }
    }
}

/// The remote VTEPs behind inner MACs, per VNI: what a tunnel learned from the datagrams it
/// took. Bounded and aged.
#[derive(Debug, Clone)]
pub struct RemoteTable {
    map: HashMap<(u32, [u8; 6]), Remote>,
    ageing: Duration,
    max: usize,
    /// When the table was last swept of aged entries (at most once a second).
    swept: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    pub vtep: IpAddr,
    pub seen: Duration,
}

impl RemoteTable {
    /// Entries a tunnel keeps at most by default.
    pub const MAX: usize = 16_384;

    pub fn new(ageing: Duration, max: usize) -> RemoteTable {
        RemoteTable { map: HashMap::new(), ageing, max: max.max(1), swept: Duration::ZERO }
    }

    /// The VTEP behind `mac` in `vni`, unless the entry aged out.
    pub fn lookup(&self, vni: u32, mac: &[u8; 6], now: Duration) -> Option<IpAddr> {
        self.map.get(&(vni, *mac)).filter(|r| now.saturating_sub(r.seen) < self.ageing).map(|r| r.vtep)
    }

    /// `mac` in `vni` was seen behind `vtep`. A full table first drops aged entries (at most
    /// once a second), then refuses new ones; known entries are always refreshed (a VM that
    /// moved to another host is followed at once).
    pub fn learn(&mut self, vni: u32, mac: [u8; 6], vtep: IpAddr, now: Duration) {
        if let Some(r) = self.map.get_mut(&(vni, mac)) {
            if r.vtep != vtep || r.seen != now {
                *r = Remote { vtep, seen: now };
            }
            return;
        }
        if self.map.len() >= self.max {
            if now.saturating_sub(self.swept) < Duration::from_secs(1) && self.swept != Duration::ZERO {
                return;
            }
            self.expire(now);
            if self.map.len() >= self.max {
                return;
            }
        }
        self.map.insert((vni, mac), Remote { vtep, seen: now });
    }

    /// Drops entries older than the ageing time.
    pub fn expire(&mut self, now: Duration) {
        self.swept = now.max(Duration::from_nanos(1));
        let ageing = self.ageing;
        self.map.retain(|_, r| now.saturating_sub(r.seen) < ageing);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries alive at `now`: (vni, mac, remote).
    pub fn entries(&self, now: Duration) -> impl Iterator<Item = (u32, [u8; 6], Remote)> + '_ {
        self.map.iter().filter(move |(_, r)| now.saturating_sub(r.seen) < self.ageing).map(|((v, m), r)| (*v, *m, *r))
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// A tunnel's receive rules and what it learned.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub map: VniMap,
    /// The static remotes (head-end replication targets). Empty with a multicast group.
    pub remotes: Vec<IpAddr>,
    /// Take datagrams from any source (a multicast tunnel, whose members are not listed).
    pub any_source: bool,
    pub table: RemoteTable,
}

/// A datagram taken: the VLAN its frame belongs to (`None`: the port's access VLAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub vni: u32,
    pub vlan: Option<VlanId>,
}

impl Tunnel {
    pub fn new(map: VniMap, remotes: Vec<IpAddr>, any_source: bool, ageing: Duration) -> Tunnel {
        Tunnel { map, remotes, any_source, table: RemoteTable::new(ageing, RemoteTable::MAX) }
    }

    /// Decides on one received datagram: `hdr` its first [`HDR_LEN`] bytes, `inner` the
    /// frame after them (at least its Ethernet header when it is whole), from `src`. Learns
    /// the inner source MAC's VTEP when the datagram is taken.
    pub fn receive(&mut self, hdr: &[u8], inner: &[u8], src: IpAddr, now: Duration) -> Result<Taken, RxDrop> {
        let vni = parse_header(hdr).ok_or(RxDrop::BadHeader)?;
        if inner.len() < 14 {
            return Err(RxDrop::BadHeader);
        }
        if !self.any_source && !self.remotes.contains(&src) {
            return Err(RxDrop::UnknownRemote);
        }
        let vlan = self.map.vlan_of(vni)?;
        let ethertype = u16::from_be_bytes([inner[12], inner[13]]);
        if vlan.is_some() && matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            return Err(RxDrop::InnerVlan);
        }
        let mut smac = [0u8; 6];
        smac.copy_from_slice(&inner[6..12]);
        // Only unicast sources are learned (a multicast source is a forgery).
        if smac[0] & 1 == 0 && smac != [0; 6] {
            self.table.learn(vni, smac, src, now);
        }
        Ok(Taken { vni, vlan })
    }

    /// Where a frame to `dst` in `vni` goes: its learned VTEP, or (unknown, broadcast,
    /// multicast) every remote.
    pub fn destination(&self, vni: u32, dst: &[u8; 6], now: Duration) -> Option<IpAddr> {
        if dst[0] & 1 != 0 {
            return None;
        }
        self.table.lookup(vni, dst, now)
    }
}

/// A `VID:VNI,…` list (the CLI's `--vni-map`).
pub fn parse_vni_map(s: &str) -> Result<Vec<(VlanId, u32)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (v, n) = item.split_once(':').ok_or_else(|| format!("{item:?} is not VID:VNI"))?;
        let vid: u16 = v.trim().parse().map_err(|_| format!("{v:?} is not a VLAN id"))?;
        let vlan = VlanId::new(vid).ok_or_else(|| format!("VLAN {vid} is out of range (1-4094)"))?;
        let vni: u32 = n.trim().parse().map_err(|_| format!("{n:?} is not a VNI"))?;
        if vni > MAX_VNI {
            return Err(format!("VNI {vni} is out of range (0-{MAX_VNI})"));
        }
        out.push((vlan, vni));
    }
    if out.is_empty() {
        return Err("an empty VNI map".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 9, n, 2))
    }

    fn frame(src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&[0; 46]);
        f
    }

    fn trunk() -> Tunnel {
        let map = VniMap::Vlans(vec![(VlanId::new(10).unwrap(), 1010), (VlanId::new(20).unwrap(), 1020)]);
        Tunnel::new(map, vec![ip(2), ip(3)], false, Duration::from_secs(300))
    }

    #[test]
    fn header_round_trips_and_matches_the_rfc_layout() {
        assert_eq!(header(0x123456), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(parse_header(&header(0x123456)), Some(0x123456));
        assert_eq!(parse_header(&header(MAX_VNI)), Some(MAX_VNI));
        // Reserved bits and other flags are ignored; I must be set.
        assert_eq!(parse_header(&[0xff, 0xff, 0xff, 0xff, 0, 0, 7, 0xff]), Some(7));
        assert_eq!(parse_header(&[0x00, 0, 0, 0, 0, 0, 7, 0]), None);
        assert_eq!(parse_header(&[0x08, 0, 0]), None);
    }

    #[test]
    fn vnis_map_to_their_vlans_and_nothing_else_is_taken() {
        let mut t = trunk();
        let now = Duration::from_secs(5);
        let f = frame([2, 0, 0, 0, 0, 1], 0x0800);
        let taken = t.receive(&header(1020), &f, ip(2), now).unwrap();
        assert_eq!(taken.vlan, VlanId::new(20));
        assert_eq!(t.receive(&header(1030), &f, ip(2), now), Err(RxDrop::UnknownVni));
        assert_eq!(t.receive(&header(1010), &f, ip(9), now), Err(RxDrop::UnknownRemote));
        assert_eq!(t.receive(&header(1010), &f[..13], ip(2), now), Err(RxDrop::BadHeader));
        assert_eq!(t.receive(&[0; 8], &f, ip(2), now), Err(RxDrop::BadHeader));
        assert_eq!(t.receive(&header(1010), &frame([2, 0, 0, 0, 0, 1], 0x8100), ip(2), now), Err(RxDrop::InnerVlan));
        assert_eq!(t.map.vni_of(Some(10)), Some(1010));
        assert_eq!(t.map.vni_of(Some(30)), None);
        assert_eq!(t.map.vni_of(None), None);
    }

    #[test]
    fn learning_follows_a_moved_mac_and_ages_out() {
        let mut t = trunk();
        let m = [2, 0, 0, 0, 0, 1];
        let f = frame(m, 0x0800);
        t.receive(&header(1010), &f, ip(2), Duration::from_secs(1)).unwrap();
        assert_eq!(t.destination(1010, &m, Duration::from_secs(2)), Some(ip(2)));
        assert_eq!(t.destination(1020, &m, Duration::from_secs(2)), None, "per VNI");
        t.receive(&header(1010), &f, ip(3), Duration::from_secs(3)).unwrap();
        assert_eq!(t.destination(1010, &m, Duration::from_secs(4)), Some(ip(3)), "moved");
        assert_eq!(t.destination(1010, &m, Duration::from_secs(400)), None, "aged");
        assert_eq!(t.destination(1010, &[0xff; 6], Duration::from_secs(4)), None, "broadcast floods");
        // A multicast source is never learned.
        t.receive(&header(1010), &frame([1, 0, 0, 0, 0, 9], 0x0800), ip(2), Duration::from_secs(5)).unwrap();
        assert_eq!(t.table.len(), 1);
    }

    #[test]
    fn a_flood_of_invented_macs_is_bounded() {
        let mut table = RemoteTable::new(Duration::from_secs(300), 100);
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            table.learn(1, [2, 0, b[0], b[1], b[2], b[3]], ip(2), Duration::from_millis(u64::from(i)));
        }
        assert_eq!(table.len(), 100);
        // Old entries age out and make room again.
        table.learn(1, [2, 9, 9, 9, 9, 9], ip(3), Duration::from_secs(1000));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn vni_maps_parse() {
        assert_eq!(
            parse_vni_map("10:1010, 20:1020").unwrap(),
            vec![(VlanId::new(10).unwrap(), 1010), (VlanId::new(20).unwrap(), 1020)]
        );
        for bad in ["", "10", "0:5", "10:16777216", "x:1", "10:y"] {
            assert!(parse_vni_map(bad).is_err(), "{bad}");
        }
    }
}
