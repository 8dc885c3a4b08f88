//! [`FlowKey`]: the fields of one frame that rules match on, extracted from its bytes.
//!
//! Extraction is total: any byte slice gives a key, and a header that is not there (or is
//! truncated or malformed) leaves its fields absent (`None`), so rules naming them do not
//! match. What is parsed:
//! - Ethernet and at most one 802.1Q tag (0x8100); an 802.3 length field reads as
//!   `dl_type=0x05ff`, as in OVS. The frame needs its whole (tagged) header for any L2 field.
//! - IPv4: version 4, IHL ≥ 5 and the whole IHL-sized header present; L4 fields only for the
//!   first fragment (offset 0).
//! - IPv6: the fixed 40-byte header only. Extension headers are not walked: `nw_proto` is
//!   the fixed header's next-header value, so a packet with extension headers has no L4
//!   fields (OVS walks them; rules on such packets would differ).
//! - ARP for IPv4 over Ethernet (htype 1, ptype 0x0800, hlen 6, plen 4): sender and target
//!   protocol addresses, in `nw` (the `arp_spa`/`arp_tpa` of a rule).
//! - TCP (20-byte header present) and UDP (8 bytes) ports; ICMP/ICMPv6 type (4 bytes), all
//!   as OVS requires before it reads them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::switch::port::PortId;
use crate::switch::wire::EthernetFrame;

/// The L2 fields of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthKey {
    pub src: MacAddr,
    pub dst: MacAddr,
    /// The 802.1Q TCI of a tagged frame.
    pub tci: Option<u16>,
    /// The ethertype after the tag (0x05ff for an 802.3 length).
    pub dl_type: u16,
}

/// The fields of one frame that rules match on; `None` = not in the frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub in_port: Option<PortId>,
    pub eth: Option<EthKey>,
    /// IPv4 protocol or IPv6 next header.
    pub nw_proto: Option<u8>,
    /// IPv4 source and destination, or ARP sender and target protocol addresses.
    pub nw: Option<(Ipv4Addr, Ipv4Addr)>,
    pub ipv6: Option<(Ipv6Addr, Ipv6Addr)>,
    /// TCP or UDP source and destination ports.
    pub tp: Option<(u16, u16)>,
    /// ICMP (or ICMPv6) type.
    pub icmp_type: Option<u8>,
}

const DL_TYPE_NONE: u16 = 0x05ff;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn v4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

fn v6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

impl FlowKey {
    /// The key of `frame` (the whole frame, or as much of its start as is at hand: fields
    /// beyond the end of `frame` are absent) received on `in_port`. Never panics.
    pub fn extract(in_port: Option<PortId>, frame: &[u8]) -> FlowKey {
        let mut k = FlowKey { in_port, ..FlowKey::default() };
        let Ok(f) = EthernetFrame::new_checked(frame) else {
            return k;
        };
        let mut dl_type = f.ethertype();
        if dl_type < 0x0600 {
            dl_type = DL_TYPE_NONE;
        }
        k.eth = Some(EthKey { src: f.src(), dst: f.dst(), tci: f.tci().map(|t| t.0), dl_type });
        let l3 = frame.get(f.header_len()..).unwrap_or_default();
        match dl_type {
            ETH_TYPE_IP => k.ipv4(l3),
            ETH_TYPE_IPV6 => k.ipv6(l3),
            ETH_TYPE_ARP => k.arp(l3),
            _ => {}
        }
        k
    }

    fn ipv4(&mut self, b: &[u8]) {
        let Some(&vihl) = b.first() else { return };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 || b.len() < ihl {
            return;
        }
        let (Some(src), Some(dst), Some(frag)) = (v4(b, 12), v4(b, 16), be16(b, 6)) else { return };
        let proto = b[9];
        self.nw = Some((src, dst));
        self.nw_proto = Some(proto);
        if frag & 0x1fff == 0 {
            self.l4(proto, &b[ihl..], false);
        }
    }

    fn ipv6(&mut self, b: &[u8]) {
        if b.len() < 40 || b[0] >> 4 != 6 {
            return;
        }
        let (Some(src), Some(dst)) = (v6(b, 8), v6(b, 24)) else { return };
        self.ipv6 = Some((src, dst));
        self.nw_proto = Some(b[6]);
        self.l4(b[6], &b[40..], true);
    }

    fn l4(&mut self, proto: u8, b: &[u8], v6: bool) {
        let ports = || Some((be16(b, 0)?, be16(b, 2)?));
        match proto {
            IPPROTO_TCP if b.len() >= 20 => self.tp = ports(),
            IPPROTO_UDP if b.len() >= 8 => self.tp = ports(),
            IPPROTO_ICMP if !v6 && b.len() >= 4 => self.icmp_type = Some(b[0]),
            IPPROTO_ICMPV6 if v6 && b.len() >= 4 => self.icmp_type = Some(b[0]),
            _ => {}
        }
    }

    fn arp(&mut self, b: &[u8]) {
        if b.len() < 28 || be16(b, 0) != Some(1) || be16(b, 2) != Some(ETH_TYPE_IP) || b[4] != 6 || b[5] != 4 {
            return;
        }
        if let (Some(spa), Some(tpa)) = (v4(b, 14), v4(b, 24)) {
            self.nw = Some((spa, tpa));
        }
    }

    /// The key in `ovs-appctl ofproto/trace`'s flow syntax, with `port` naming ports.
    pub fn render(&self, port: &dyn Fn(PortId) -> String) -> String {
        let mut out = Vec::new();
        if let Some(p) = self.in_port {
            out.push(format!("in_port={}", port(p)));
        }
        if let Some(e) = &self.eth {
            match e.tci {
                Some(t) => out.push(format!("dl_vlan={},dl_vlan_pcp={}", t & 0x0fff, t >> 13)),
                None => out.push("dl_vlan=0xffff".to_owned()),
            }
            out.push(format!("dl_src={},dl_dst={},dl_type=0x{:04x}", e.src, e.dst, e.dl_type));
        }
        let arp = self.eth.map(|e| e.dl_type) == Some(ETH_TYPE_ARP);
        if let Some((s, d)) = self.nw {
            if arp {
                out.push(format!("arp_spa={s},arp_tpa={d}"));
            } else {
                out.push(format!("nw_src={s},nw_dst={d}"));
            }
        }
        if let Some((s, d)) = self.ipv6 {
            out.push(format!("ipv6_src={s},ipv6_dst={d}"));
        }
        if let Some(p) = self.nw_proto {
            out.push(format!("nw_proto={p}"));
        }
        if let Some((s, d)) = self.tp {
            out.push(format!("tp_src={s},tp_dst={d}"));
        }
        if let Some(t) = self.icmp_type {
            out.push(format!("icmp_type={t}"));
        }
        out.join(",")
    }

    /// A frame with this key (for `trace`): the headers the key has, every other byte zero,
    /// lengths and versions filled in so that [`FlowKey::extract`] gives the key back.
    /// Without an Ethernet part, an empty frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let Some(e) = &self.eth else { return Vec::new() };
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&e.dst.0);
        f.extend_from_slice(&e.src.0);
        if let Some(t) = e.tci {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&t.to_be_bytes());
        }
        f.extend_from_slice(&e.dl_type.to_be_bytes());
        let proto = self.nw_proto.unwrap_or(0);
        let l4 = |f: &mut Vec<u8>, icmp: u8| match proto {
            IPPROTO_TCP => {
                let (s, d) = self.tp.unwrap_or_default();
                let mut h = [0u8; 20];
                h[..2].copy_from_slice(&s.to_be_bytes());
                h[2..4].copy_from_slice(&d.to_be_bytes());
                h[12] = 5 << 4;
                f.extend_from_slice(&h);
            }
            IPPROTO_UDP => {
                let (s, d) = self.tp.unwrap_or_default();
                f.extend_from_slice(&s.to_be_bytes());
                f.extend_from_slice(&d.to_be_bytes());
                f.extend_from_slice(&8u16.to_be_bytes());
                f.extend_from_slice(&[0, 0]);
            }
            p if p == icmp => f.extend_from_slice(&[self.icmp_type.unwrap_or(0), 0, 0, 0]),
            _ => {}
        };
        match e.dl_type {
            ETH_TYPE_IP => {
                let (s, d) = self.nw.unwrap_or((Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED));
                let mut h = [0u8; 20];
                h[0] = 0x45;
                h[8] = 64;
                h[9] = proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                f.extend_from_slice(&h);
                let at = f.len() - 20;
                l4(&mut f, IPPROTO_ICMP);
                let tot = (f.len() - at) as u16;
                f[at + 2..at + 4].copy_from_slice(&tot.to_be_bytes());
            }
            ETH_TYPE_IPV6 => {
                let (s, d) = self.ipv6.unwrap_or((Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED));
                let mut h = [0u8; 40];
                h[0] = 0x60;
                h[6] = proto;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                f.extend_from_slice(&h);
                l4(&mut f, IPPROTO_ICMPV6);
            }
            ETH_TYPE_ARP => {
                let (s, d) = self.nw.unwrap_or((Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED));
                let mut h = [0u8; 28];
                h[..8].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
                h[8..14].copy_from_slice(&e.src.0);
                h[14..18].copy_from_slice(&s.octets());
                h[24..28].copy_from_slice(&d.octets());
                f.extend_from_slice(&h);
            }
            _ => {}
        }
        // Padded to the Ethernet minimum, as a real frame would be.
        if f.len() < 60 {
            f.resize(60, 0);
        }
        f
    }

    /// `FlowKey::extract(Some(in_port), b).words()`, straight from the bytes: the datapath's
    /// per-frame form, with no intermediate key (a property test and the `flow_rules` fuzz
    /// target hold the two equal on any bytes).
    #[inline]
    pub(crate) fn words_of(in_port: PortId, b: &[u8]) -> Words {
        #[inline(always)]
        fn be16(b: &[u8], at: usize) -> u64 {
            u64::from(u16::from_be_bytes([b[at], b[at + 1]]))
        }
        #[inline(always)]
        fn be32(b: &[u8], at: usize) -> u64 {
            u64::from(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
        }
        let mut w = [0u64; WORDS];
        let mut flags = F_IN_PORT;
        w[0] = (in_port.index() as u64 & 0xffff_ffff) << 32;
        if b.len() < 14 {
            w[2] = flags;
            return Words(w);
        }
        let outer = be16(b, 12);
        let (l3_off, mut dl_type) = if outer == 0x8100 {
            if b.len() < 18 {
                w[2] = flags;
                return Words(w);
            }
            w[0] |= be16(b, 14) | u64::from(VLAN_CFI);
            (18, be16(b, 16))
        } else {
            (14, outer)
        };
        if dl_type < 0x0600 {
            dl_type = u64::from(DL_TYPE_NONE);
        }
        flags |= F_ETH;
        w[0] |= dl_type << 16;
        w[1] = MacAddr::u64_at(b, 6) << 16;
        let dst = MacAddr::u64_at(b, 0);
        let l3 = &b[l3_off..];
        match dl_type as u16 {
            ETH_TYPE_IP => {
                if let Some(&vihl) = l3.first() {
                    let ihl = usize::from(vihl & 0x0f) * 4;
                    if vihl >> 4 == 4 && ihl >= 20 && l3.len() >= ihl {
                        let proto = l3[9];
                        flags |= F_NW | F_PROTO;
                        w[3] = be32(l3, 12) << 32 | be32(l3, 16);
                        w[1] |= u64::from(proto) << 8;
                        if be16(l3, 6) & 0x1fff == 0 {
                            words_l4(proto, &l3[ihl..], false, &mut flags, &mut w);
                        }
                    }
                }
            }
            ETH_TYPE_IPV6 if l3.len() >= 40 && l3[0] >> 4 == 6 => {
                let proto = l3[6];
                flags |= F_IP6 | F_PROTO;
                w[1] |= u64::from(proto) << 8;
                w[5] = be32(l3, 8) << 32 | be32(l3, 12);
                w[6] = be32(l3, 16) << 32 | be32(l3, 20);
                w[7] = be32(l3, 24) << 32 | be32(l3, 28);
                w[8] = be32(l3, 32) << 32 | be32(l3, 36);
                words_l4(proto, &l3[40..], true, &mut flags, &mut w);
            }
            ETH_TYPE_ARP if l3.len() >= 28 && be16(l3, 0) == 1 && be16(l3, 2) == 0x0800 && l3[4] == 6 && l3[5] == 4 => {
                flags |= F_NW;
                w[3] = be32(l3, 14) << 32 | be32(l3, 24);
            }
            _ => {}
        }
        w[2] = dst << 16 | flags;
        Words(w)
    }

    /// Whether [`FlowKey::words_of`] and `extract(..).words()` agree on `b` (for the fuzz
    /// target; always true).
    #[doc(hidden)]
    pub fn packings_agree(in_port: PortId, b: &[u8]) -> bool {
        Self::words_of(in_port, b) == Self::extract(Some(in_port), b).words()
    }

    /// Equal keys (the burst memo's and the exact-match cache's test), without a call to
    /// `memcmp`. Words 5..9 (the IPv6 addresses) are zero in every key without `F_IP6`, and
    /// word 2 holds the presence flags, so they are compared only for IPv6 keys.
    #[inline(always)]
    pub(crate) fn same_words(a: &Words, b: &Words) -> bool {
        let (a, b) = (&a.0, &b.0);
        let low = (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]);
        low == 0 && (a[2] & F_IP6 == 0 || ((a[5] ^ b[5]) | (a[6] ^ b[6]) | (a[7] ^ b[7]) | (a[8] ^ b[8])) == 0)
    }

    /// The packed form the classifier hashes (see [`Words`]).
    pub(crate) fn words(&self) -> Words {
        let mut w = [0u64; WORDS];
        let mut flags = 0u64;
        if let Some(p) = self.in_port {
            flags |= F_IN_PORT;
            w[0] |= (p.index() as u64 & 0xffff_ffff) << 32;
        }
        let (mut src, mut dst) = (0, 0);
        if let Some(e) = &self.eth {
            flags |= F_ETH;
            w[0] |= u64::from(e.dl_type) << 16 | e.tci.map_or(0, |t| u64::from(t | VLAN_CFI));
            src = e.src.to_u64();
            dst = e.dst.to_u64();
        }
        if let Some(p) = self.nw_proto {
            flags |= F_PROTO;
            w[1] |= u64::from(p) << 8;
        }
        if let Some(t) = self.icmp_type {
            flags |= F_ICMP;
            w[1] |= u64::from(t);
        }
        w[1] |= src << 16;
        if let Some((s, d)) = self.nw {
            flags |= F_NW;
            w[3] = u64::from(u32::from(s)) << 32 | u64::from(u32::from(d));
        }
        if let Some((s, d)) = self.tp {
            flags |= F_TP;
            w[4] = u64::from(s) << 48 | u64::from(d) << 32;
        }
        if let Some((s, d)) = self.ipv6 {
            flags |= F_IP6;
            let (s, d) = (u128::from(s), u128::from(d));
            w[5] = (s >> 64) as u64;
            w[6] = s as u64;
            w[7] = (d >> 64) as u64;
            w[8] = d as u64;
        }
        w[2] = dst << 16 | flags;
        Words(w)
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|p| p.to_string()))
    }
}

/// A frame key for a `trace` command built from a match's values (masks ignored), as
/// `ovs-appctl ofproto/trace` does: unnamed fields of the headers the match implies
/// (`tcp` implies Ethernet, IPv4 and ports) are zero; `dl_vlan` absent or 0xffff is an
/// untagged frame. The in-port is passed resolved.
pub fn key_from_match(m: &Match, in_port: Option<PortId>) -> FlowKey {
    let val = |x: Option<Masked<u16>>| x.map_or(0, |x| x.value);
    // No ethertype named: an 802.3 frame, as `extract` reads one (OVS says dl_type=0).
    let dl_type = m.dl_type.unwrap_or(DL_TYPE_NONE);
    let mut k = FlowKey {
        in_port,
        eth: Some(EthKey {
            src: m.dl_src.map_or(MacAddr::ZERO, |x| x.value),
            dst: m.dl_dst.map_or(MacAddr::ZERO, |x| x.value),
            tci: m.dl_vlan.filter(|&v| v != VLAN_NONE),
            dl_type,
        }),
        ..FlowKey::default()
    };
    let nw =
        || (m.nw_src.map_or(Ipv4Addr::UNSPECIFIED, |x| x.value), m.nw_dst.map_or(Ipv4Addr::UNSPECIFIED, |x| x.value));
    let proto = m.nw_proto.unwrap_or(0);
    let l4 = |k: &mut FlowKey, v6: bool| match proto {
        IPPROTO_TCP | IPPROTO_UDP => k.tp = Some((val(m.tp_src), val(m.tp_dst))),
        IPPROTO_ICMP if !v6 => k.icmp_type = Some(m.icmp_type.unwrap_or(0)),
        IPPROTO_ICMPV6 if v6 => k.icmp_type = Some(m.icmp_type.unwrap_or(0)),
        _ => {}
    };
    match dl_type {
        ETH_TYPE_IP => {
            k.nw = Some(nw());
            k.nw_proto = Some(proto);
            l4(&mut k, false);
        }
        ETH_TYPE_ARP => k.nw = Some(nw()),
        ETH_TYPE_IPV6 => {
            let z = Ipv6Addr::UNSPECIFIED;
            k.ipv6 = Some((m.ipv6_src.map_or(z, |x| x.value), m.ipv6_dst.map_or(z, |x| x.value)));
            k.nw_proto = Some(proto);
            l4(&mut k, true);
        }
        _ => {}
    }
    k
}

/// The L4 part of [`FlowKey::words_of`] (the same rules as `FlowKey::l4`).
#[inline(always)]
fn words_l4(proto: u8, t: &[u8], v6: bool, flags: &mut u64, w: &mut [u64; WORDS]) {
    let ports = |t: &[u8]| {
        u64::from(u16::from_be_bytes([t[0], t[1]])) << 48 | u64::from(u16::from_be_bytes([t[2], t[3]])) << 32
    };
    match proto {
        IPPROTO_TCP if t.len() >= 20 => {
            *flags |= F_TP;
            w[4] = ports(t);
        }
        IPPROTO_UDP if t.len() >= 8 => {
            *flags |= F_TP;
            w[4] = ports(t);
        }
        IPPROTO_ICMP if !v6 && t.len() >= 4 => {
            *flags |= F_ICMP;
            w[1] |= u64::from(t[0]);
        }
        IPPROTO_ICMPV6 if v6 && t.len() >= 4 => {
            *flags |= F_ICMP;
            w[1] |= u64::from(t[0]);
        }
        _ => {}
    }
}

// ---- the packed form -----------------------------------------------------------------------

/// Number of 64-bit words of a packed key.
pub(crate) const WORDS: usize = 9;

/// A key or a mask packed into words, for masking and hashing a word at a time:
/// - 0: in_port (32) | dl_type (16) | VLAN TCI with the CFI bit meaning "tagged" (16)
/// - 1: dl_src (48) | nw_proto (8) | icmp_type (8)
/// - 2: dl_dst (48) | presence flags (16)
/// - 3: nw_src (32) | nw_dst (32)
/// - 4: tp_src (16) | tp_dst (16) | 0 (32)
/// - 5, 6: ipv6_src; 7, 8: ipv6_dst
///
/// A key sets the presence flag of each header it has; a rule's mask and value set the flag
/// of each field the rule names, so a rule never matches a frame lacking one of its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Words(pub(crate) [u64; WORDS]);

impl std::hash::Hash for Words {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for w in self.0 {
            state.write_u64(w);
        }
    }
}

impl Words {
    #[inline]
    pub(crate) fn and(&self, mask: &Words) -> Words {
        let mut out = [0u64; WORDS];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(mask.0.iter())) {
            *o = a & b;
        }
        Words(out)
    }
}

const VLAN_CFI: u16 = 0x1000;
const F_IN_PORT: u64 = 1;
const F_ETH: u64 = 1 << 1;
const F_NW: u64 = 1 << 2;
const F_PROTO: u64 = 1 << 3;
const F_IP6: u64 = 1 << 4;
const F_TP: u64 = 1 << 5;
const F_ICMP: u64 = 1 << 6;

/// The (value, mask) pair of a match whose in-port is resolved to `in_port`
/// (`m.in_port` is ignored). The value has no bit outside the mask.
pub(crate) fn match_words(m: &Match, in_port: Option<PortId>) -> (Words, Words) {
    let mut v = [0u64; WORDS];
    let mut k = [0u64; WORDS];
    let mut flags = 0u64;
    let mut set = |word: usize, shift: u32, value: u64, mask: u64, flag: u64, flags: &mut u64| {
        v[word] |= (value & mask) << shift;
        k[word] |= mask << shift;
        *flags |= flag;
    };
    if let Some(p) = in_port {
        set(0, 32, p.index() as u64 & 0xffff_ffff, 0xffff_ffff, F_IN_PORT, &mut flags);
    }
    if let Some(t) = m.dl_type {
        set(0, 16, t.into(), 0xffff, F_ETH, &mut flags);
    }
    match m.dl_vlan {
        Some(VLAN_NONE) => set(0, 0, 0, 0xffff, F_ETH, &mut flags),
        Some(vid) => set(0, 0, u64::from((vid & 0x0fff) | VLAN_CFI), 0x1fff, F_ETH, &mut flags),
        None => {}
    }
    if let Some(x) = m.dl_src {
        set(1, 16, x.value.to_u64(), x.mask.to_u64(), F_ETH, &mut flags);
    }
    if let Some(p) = m.nw_proto {
        set(1, 8, p.into(), 0xff, F_PROTO, &mut flags);
    }
    if let Some(t) = m.icmp_type {
        set(1, 0, t.into(), 0xff, F_ICMP, &mut flags);
    }
    if let Some(x) = m.dl_dst {
        set(2, 16, x.value.to_u64(), x.mask.to_u64(), F_ETH, &mut flags);
    }
    if let Some(x) = m.nw_src {
        set(3, 32, u32::from(x.value).into(), u32::from(x.mask).into(), F_NW, &mut flags);
    }
    if let Some(x) = m.nw_dst {
        set(3, 0, u32::from(x.value).into(), u32::from(x.mask).into(), F_NW, &mut flags);
    }
    if let Some(x) = m.tp_src {
        set(4, 48, x.value.into(), x.mask.into(), F_TP, &mut flags);
    }
    if let Some(x) = m.tp_dst {
        set(4, 32, x.value.into(), x.mask.into(), F_TP, &mut flags);
    }
    for (i, x) in [(5, m.ipv6_src), (7, m.ipv6_dst)] {
        if let Some(x) = x {
            let (a, b) = (u128::from(x.value), u128::from(x.mask));
            set(i, 0, (a >> 64) as u64, (b >> 64) as u64, F_IP6, &mut flags);
            set(i + 1, 0, a as u64, b as u64, F_IP6, &mut flags);
        }
    }
    v[2] |= flags;
    k[2] |= flags;
    (Words(v), Words(k))
}
