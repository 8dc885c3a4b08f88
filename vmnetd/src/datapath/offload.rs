//! Software offloads for peers that cannot take them: cutting a GSO super-frame into
//! MSS-sized segments (TCP over IPv4/IPv6, UDP), and completing a partial checksum.
//!
//! Frames from TAPs, AF_PACKET sockets and guests that negotiated TSO/CSUM may be 64 KiB
//! super-frames whose TCP checksum holds only the pseudo-header sum (`NEEDS_CSUM`). Kernel
//! peers take them as they are; a vhost-user guest that did not ack GUEST_TSO4/6 or
//! GUEST_CSUM must get ordinary frames, so the edge calls these first. RFC 1071 is the
//! checksum; RFC 791, 8200, 793 and 768 the headers touched.
//!
//! Everything here reads guest input: a frame's bytes and its virtio-net header come from
//! whoever sent it, and a guest may even change them while we read (the copy we work on is
//! ours, but it was taken from memory the guest can write). So every length and offset is
//! checked against the frame before it is used — IPv4 IHL and TCP data offset at least 5
//! words, every header inside the frame, the segment size between [`MIN_MSS`] and the
//! frame, at most [`MAX_SEGMENTS`] segments — and a frame that breaks a rule is an
//! [`Error`], never a panic or a burst of tiny segments. [`check_vnet`] applies the cheap
//! part of these rules to every frame a guest sends, before it reaches the switch.

use vmnetd_vhost::virtio_net::{features, VnetHdr, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame too short for its headers")]
    Truncated,
    #[error("not an IPv4/IPv6 TCP or UDP frame, or a GSO type that does not match it")]
    Unsupported,
    #[error("IPv4 header length below 20 bytes")]
    BadIpHeader,
    #[error("TCP data offset below 20 bytes")]
    BadTcpHeader,
    #[error("GSO segment size {0} is outside the allowed range")]
    BadMss(u16),
    #[error("GSO frame would make more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("checksum offsets point outside the frame")]
    BadCsumOffsets,
    #[error("virtio-net header length {0} is longer than the frame")]
    BadHdrLen(u16),
    #[error("GSO type {0:#x} is unknown or was not negotiated")]
    BadGsoType(u8),
}

/// Smallest TCP segment size accepted: Linux's `TCP_MIN_MSS` (no TCP stack sends less).
pub const MIN_MSS: usize = 88;
/// Smallest UDP segment size accepted (`UDP_SEGMENT`): one UDP header's worth of payload.
pub const MIN_UDP_SEG: usize = 8;
/// Most segments one GSO frame may be cut into. A 64 KiB TCP frame at [`MIN_MSS`] is 745;
/// Linux caps UDP GSO at 128 segments (`UDP_MAX_SEGMENTS`), and so do we.
pub const MAX_SEGMENTS: usize = 768;
pub const MAX_UDP_SEGMENTS: usize = 128;

/// Adds `data` to a ones'-complement sum (RFC 1071). Eight bytes at a time with an
/// end-around carry (2^16 ≡ 1 mod 2^16 - 1, so wide words sum to the same checksum); the
/// result is folded to at most 16 bits, so callers may add to it.
pub fn csum_add(sum: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let (s, carry) = acc.overflowing_add(u64::from_be_bytes(w));
        acc = s + u64::from(carry);
    }
    // Down to 33 bits before the last few words (2^32 ≡ 1 as well): they cannot overflow it.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    let mut words = chunks.remainder().chunks_exact(2);
    for c in &mut words {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = words.remainder() {
        acc += u64::from(*b) << 8;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Folds a sum to 16 bits and complements it: the checksum field value.
pub fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checks a frame's virtio-net header must pass before the switch sees it, given the
/// length of the frame (without the header) and the features the sender acked: a GSO type
/// the sender negotiated, a segment size of at least [`MIN_MSS`] (TCP) or [`MIN_UDP_SEG`]
/// (UDP) and at most the frame, checksum offsets and `hdr_len` inside the frame. What
/// depends on the frame's bytes (IHL, data offset) is checked when the frame is cut.
pub fn check_vnet(v: &VnetHdr, len: usize, acked: u64) -> Result<(), Error> {
    if v.hdr_len as usize > len {
        return Err(Error::BadHdrLen(v.hdr_len));
    }
    if v.needs_csum() {
        if acked & features::CSUM == 0 {
            return Err(Error::BadCsumOffsets);
        }
        if usize::from(v.csum_start) + usize::from(v.csum_offset) + 2 > len {
            return Err(Error::BadCsumOffsets);
        }
    }
    let kind = v.gso_type & !GSO_ECN;
    if kind == GSO_NONE {
        return Ok(());
    }
    let (needed, min) = match kind {
        GSO_TCPV4 => (features::HOST_TSO4, MIN_MSS),
        GSO_TCPV6 => (features::HOST_TSO6, MIN_MSS),
        _ => return Err(Error::BadGsoType(v.gso_type)),
    };
    let ecn_ok = v.gso_type & GSO_ECN == 0 || acked & features::HOST_ECN != 0;
    if acked & needed == 0 || !ecn_ok {
        return Err(Error::BadGsoType(v.gso_type));
    }
    let mss = usize::from(v.gso_size);
    if mss < min || mss > len {
        return Err(Error::BadMss(v.gso_size));
    }
    Ok(())
}

/// Completes a partial checksum in place: the field at `start + offset` holds the
/// pseudo-header sum; the checksum of everything from `start` replaces it.
pub fn complete_csum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), Error> {
    let at = start.checked_add(offset).ok_or(Error::BadCsumOffsets)?;
    if at.checked_add(2).is_none_or(|end| end > frame.len()) || start > frame.len() {
        return Err(Error::BadCsumOffsets);
    }
    let mut c = csum_fold(csum_add(0, &frame[start..]));
    // UDP: 0 means "no checksum", so a computed 0 is sent as 0xffff. Only when the frame
    // really is UDP and the field really is the UDP checksum.
    if c == 0 && layout(frame).is_ok_and(|l| !l.tcp && l.l4 == start && offset == 6) {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Where a frame's partial checksum is: the field at `start + offset`, summed from `start`
/// to `end` (the end of the IP packet; padding after it is not summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsumSeed {
    pub start: u16,
    pub offset: u16,
    pub end: usize,
}

/// For a frame that arrives with no checksum state (AF_XDP hands over bytes only): the
/// `(csum_start, csum_offset)` to mark it `NEEDS_CSUM` with, when its TCP or UDP checksum
/// field holds exactly the pseudo-header sum that a sender offloading the checksum leaves
/// there (Linux's `CHECKSUM_PARTIAL`: a veth peer's stack sends such frames, and XDP, which
/// sees only bytes, passes them on as they are).
///
/// The mark is right even for a frame whose complete checksum happens to equal that sum:
/// completing it computes `~(D + F)` over the L4 bytes `D` with the field `F`, and a
/// complete checksum `C = ~(P + D)` equal to the pseudo-header sum `P` gives back `C` — as
/// long as the completion sums exactly the L4 bytes (so the frame is to be cut to `end`) of
/// a whole datagram (so IPv4 fragments are never marked). A frame corrupted on a wire whose
/// field happens to equal the seed would be "repaired"; XDP ports are veths and TAPs, or NICs
/// that checked the Ethernet CRC.
pub fn partial_csum_seed(f: &[u8]) -> Option<CsumSeed> {
    let lay = layout(f).ok()?;
    if lay.v4 && be16(f, lay.l3 + 6).ok()? & 0x3fff != 0 {
        return None; // a fragment (more to come, or an offset)
    }
    // The L4 length the sender summed: the IP header's, not the frame's (which may be
    // padded).
    let l4_len = if lay.v4 {
        usize::from(be16(f, lay.l3 + 2).ok()?).checked_sub(lay.l4 - lay.l3)?
    } else {
        usize::from(be16(f, lay.l3 + 4).ok()?)
    };
    if lay.l4 + l4_len > f.len() || lay.l4 + l4_len < lay.payload {
        return None;
    }
    let offset = if lay.tcp { 16 } else { 6 };
    let field = be16(f, lay.l4 + offset).ok()?;
    let seed = !csum_fold(pseudo_sum(f, &lay, l4_len));
    (field == seed).then_some(CsumSeed {
        start: u16::try_from(lay.l4).ok()?,
        offset: offset as u16,
        end: lay.l4 + l4_len,
    })
}

fn be16(f: &[u8], i: usize) -> Result<u16, Error> {
    f.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Error::Truncated)
}

fn l2_len(f: &[u8]) -> Result<(usize, u16), Error> {
    match be16(f, 12)? {
        0x8100 | 0x88a8 => Ok((18, be16(f, 16)?)),
        t => Ok((14, t)),
    }
}

/// Header layout of a frame: every offset is inside the frame when this returns `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    l3: usize,
    l4: usize,
    /// First payload byte: `l4` + the TCP or UDP header.
    payload: usize,
    v4: bool,
    tcp: bool,
}

fn layout(f: &[u8]) -> Result<Layout, Error> {
    let (l3, et) = l2_len(f)?;
    let (v4, proto, l4) = match et {
        0x0800 => {
            let b0 = *f.get(l3).ok_or(Error::Truncated)?;
            let ihl = usize::from(b0 & 0x0f) * 4;
            if b0 >> 4 != 4 || ihl < 20 {
                return Err(Error::BadIpHeader);
            }
            (true, *f.get(l3 + 9).ok_or(Error::Truncated)?, l3 + ihl)
        }
        0x86dd => {
            let b0 = *f.get(l3).ok_or(Error::Truncated)?;
            if b0 >> 4 != 6 {
                return Err(Error::Unsupported);
            }
            // Extension headers are not walked: only TCP or UDP right after the fixed header.
            (false, *f.get(l3 + 6).ok_or(Error::Truncated)?, l3 + 40)
        }
        _ => return Err(Error::Unsupported),
    };
    let (tcp, l4len) = match proto {
        6 => {
            let doff = usize::from(f.get(l4 + 12).ok_or(Error::Truncated)? >> 4) * 4;
            if doff < 20 {
                return Err(Error::BadTcpHeader);
            }
            (true, doff)
        }
        17 => (false, 8),
        _ => return Err(Error::Unsupported),
    };
    let payload = l4 + l4len;
    if payload > f.len() {
        return Err(Error::Truncated);
    }
    Ok(Layout { l3, l4, payload, v4, tcp })
}

fn pseudo_sum(seg: &[u8], lay: &Layout, l4_len: usize) -> u32 {
    let proto = if lay.tcp { 6u32 } else { 17 };
    let addrs = if lay.v4 { &seg[lay.l3 + 12..lay.l3 + 20] } else { &seg[lay.l3 + 8..lay.l3 + 40] };
    csum_add(0, addrs).wrapping_add(proto).wrapping_add(l4_len as u32)
}

/// The layout of a GSO frame whose first bytes are `head` (at least its headers) and whose
/// whole length is `len`, and how many segments it makes; or why it cannot be cut.
fn gso_plan(head: &[u8], len: usize, vnet: &VnetHdr) -> Result<(Layout, usize), Error> {
    let lay = layout(head)?;
    let kind = vnet.gso_type & !GSO_ECN;
    let ok =
        matches!((kind, lay.tcp, lay.v4), (GSO_TCPV4, true, true) | (GSO_TCPV6, true, false) | (GSO_UDP_L4, false, _));
    if !ok {
        return Err(Error::Unsupported);
    }
    let mss = usize::from(vnet.gso_size);
    let (min, max_segs) = if lay.tcp { (MIN_MSS, MAX_SEGMENTS) } else { (MIN_UDP_SEG, MAX_UDP_SEGMENTS) };
    if mss < min {
        return Err(Error::BadMss(vnet.gso_size));
    }
    let data = len.checked_sub(lay.payload).ok_or(Error::Truncated)?;
    let n = data.div_ceil(mss).max(1);
    if n > max_segs {
        return Err(Error::TooManySegments);
    }
    // Every segment's IP length must fit its 16-bit field.
    if lay.payload - lay.l3 + mss.min(data) > usize::from(u16::MAX) {
        return Err(Error::BadMss(vnet.gso_size));
    }
    Ok((lay, n))
}

/// Whether a GSO frame of `len` bytes whose first bytes are `head` could be cut as its
/// header asks: the checks [`segment`] makes, without cutting. A frame whose headers do not
/// fit in `head` is refused.
pub fn check_gso_frame(head: &[u8], len: usize, vnet: &VnetHdr) -> Result<(), Error> {
    gso_plan(head, len, vnet).map(drop)
}

/// Cuts a GSO super-frame into frames of at most `vnet.gso_size` payload bytes, each with
/// complete, correct headers and checksums; calls `out` with each, and stops early (no work
/// is spent on segments nobody can take) when `out` returns false. Returns how many were
/// handed to `out`.
///
/// Refused (nothing is emitted): a GSO type that does not match the frame, headers that do
/// not fit the frame or have impossible lengths, a segment size below [`MIN_MSS`] (TCP) or
/// [`MIN_UDP_SEG`] (UDP), more than [`MAX_SEGMENTS`] segments (128 for
/// UDP).
pub fn segment(frame: &[u8], vnet: &VnetHdr, out: &mut dyn FnMut(&[u8]) -> bool) -> Result<usize, Error> {
    let (lay, n) = gso_plan(frame, frame.len(), vnet)?;
    let mss = usize::from(vnet.gso_size);
    let data = &frame[lay.payload..];
    let hdrs = &frame[..lay.payload];
    let mut seg = Vec::with_capacity(lay.payload + mss);
    let seq0 = if lay.tcp {
        u32::from_be_bytes([frame[lay.l4 + 4], frame[lay.l4 + 5], frame[lay.l4 + 6], frame[lay.l4 + 7]])
    } else {
        0
    };
    let id0 = if lay.v4 { u16::from_be_bytes([frame[lay.l3 + 4], frame[lay.l3 + 5]]) } else { 0 };
    let chunks = data.chunks(mss).chain(std::iter::once(&data[..0]).take(usize::from(data.is_empty())));
    for (i, chunk) in chunks.enumerate() {
        seg.clear();
        seg.extend_from_slice(hdrs);
        seg.extend_from_slice(chunk);
        let l4_len = seg.len() - lay.l4;
        if lay.v4 {
            let tot = (seg.len() - lay.l3) as u16;
            seg[lay.l3 + 2..lay.l3 + 4].copy_from_slice(&tot.to_be_bytes());
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&[0, 0]);
            let c = csum_fold(csum_add(0, &seg[lay.l3..lay.l4]));
            seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            let plen = (seg.len() - lay.l3 - 40) as u16;
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&plen.to_be_bytes());
        }
        // Inside the L4 header, which `layout` checked is inside every segment.
        let csum_at = if lay.tcp {
            let t = lay.l4;
            seg[t + 4..t + 8].copy_from_slice(&seq0.wrapping_add((i * mss) as u32).to_be_bytes());
            let last = i + 1 == n;
            let first = i == 0;
            // FIN and PSH belong to the last segment, CWR to the first.
            let mut flags = seg[t + 13];
            if !last {
                flags &= !(0x01 | 0x08);
            }
            if !first {
                flags &= !0x80;
            }
            seg[t + 13] = flags;
            t + 16
        } else {
            let u = lay.l4;
            seg[u + 4..u + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            u + 6
        };
        seg[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let sum = csum_add(pseudo_sum(&seg, &lay, l4_len), &seg[lay.l4..]);
        let mut c = csum_fold(sum);
        if !lay.tcp && c == 0 {
            c = 0xffff;
        }
        seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        if !out(&seg) {
            return Ok(i + 1);
        }
    }
    Ok(n)
}

/// Segments at most merged into one frame, as Linux's GRO (`MAX_GRO_SKBS`... 64 segments).
pub const MAX_COALESCE: usize = 64;

/// One frame of a buffer after [`coalesce_tcp4`]: where it is, and its offload header (a
/// merged run is a TCP/IPv4 GSO frame with a partial checksum; others are as they came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesced {
    pub at: usize,
    pub len: usize,
    pub vnet: VnetHdr,
    /// The first input segment of the run, and how many were merged.
    pub first: usize,
    pub count: usize,
}

/// What [`coalesce_tcp4`] needs of a candidate segment.
#[derive(Debug, Clone, Copy)]
struct Seg4 {
    at: usize,
    len: usize,
    /// Ethernet + IPv4 + TCP header bytes.
    hdrs: usize,
    seq: u32,
    flags: u8,
}

impl Seg4 {
    fn payload(&self) -> usize {
        self.len - self.hdrs
    }
}

/// A plain TCP/IPv4 segment that may be merged: untagged, IHL 5, not a fragment, exact IP
/// length, only ACK (and PSH) among the flags, some payload. Checksums are checked later.
fn seg4(buf: &[u8], at: usize, len: usize) -> Option<Seg4> {
    let f = buf.get(at..at.checked_add(len)?)?;
    if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 6 {
        return None;
    }
    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let frag = u16::from_be_bytes([f[20], f[21]]) & 0x3fff;
    if tot != f.len() - 14 || frag != 0 {
        return None;
    }
    let doff = usize::from(f[46] >> 4) * 4;
    let flags = f[47];
    // ACK required; SYN, FIN, RST, URG, ECE, CWR end merging (as GRO's flush rules).
    if doff < 20 || 34 + doff >= f.len() || flags & 0x10 == 0 || flags & !(0x10 | 0x08) != 0 {
        return None;
    }
    Some(Seg4 { at, len, hdrs: 34 + doff, seq: u32::from_be_bytes([f[38], f[39], f[40], f[41]]), flags })
}

/// Whether `n` continues the flow of the run that starts with `f` and ends with `last`:
/// same Ethernet header, IPv4 TOS, TTL, DF and addresses, same TCP ports, ack, window and
/// options, the next sequence number, a full-sized predecessor and no PSH before it.
fn continues(buf: &[u8], f: &Seg4, last: &Seg4, n: &Seg4) -> bool {
    let (a, b) = (&buf[f.at..f.at + f.hdrs], &buf[n.at..n.at + n.hdrs]);
    f.hdrs == n.hdrs
        && last.flags & 0x08 == 0
        && last.payload() == f.payload()
        && n.payload() <= f.payload()
        && n.seq == last.seq.wrapping_add(last.payload() as u32)
        && a[..14] == b[..14]
        && a[15] == b[15]
        && a[20] & 0x40 == b[20] & 0x40
        && a[22] == b[22]
        && a[26..34] == b[26..34]
        && a[34..38] == b[34..38]
        && a[42..46] == b[42..46]
        && a[48..50] == b[48..50]
        && a[54..] == b[54..]
}

/// Whether a segment's IPv4 header and TCP checksums verify.
fn seg4_valid(buf: &[u8], s: &Seg4) -> bool {
    let f = &buf[s.at..s.at + s.len];
    if csum_fold(csum_add(0, &f[14..34])) != 0 {
        return false;
    }
    let l4 = &f[34..];
    let pseudo = csum_add(0, &f[26..34]) + 6 + l4.len() as u32;
    csum_fold(csum_add(pseudo, l4)) == 0
}

/// Receive-side coalescing (what Linux's GRO does for TCP/IPv4): consecutive segments of
/// one flow, whole Ethernet frames at `segs` (offset, length) in `buf` in ascending order,
/// are merged in place into one GSO frame (payloads moved up against the first segment's,
/// IPv4 length and header checksum fixed, TCP checksum left partial, PSH kept from the
/// last), so whoever takes them next handles one frame instead of dozens. Every merged
/// segment's checksums are verified first (a merged frame is trusted by its receiver); a
/// segment that fails, or that is not plain TCP/IPv4 data, goes on alone, untouched.
/// `same_class(i, j)`: whether segments `i` and `j` may share a frame at all (their VLAN).
pub fn coalesce_tcp4(
    buf: &mut [u8],
    segs: &[(usize, usize)],
    same_class: &dyn Fn(usize, usize) -> bool,
    out: &mut Vec<Coalesced>,
) {
    let single = |i: usize| Coalesced { at: segs[i].0, len: segs[i].1, vnet: VnetHdr::default(), first: i, count: 1 };
    let mut i = 0;
    while i < segs.len() {
        let Some(f) = seg4(buf, segs[i].0, segs[i].1).filter(|f| f.payload() >= MIN_MSS) else {
            out.push(single(i));
            i += 1;
            continue;
        };
        let mut run = vec![f];
        let mut total = f.payload();
        while i + run.len() < segs.len() && run.len() < MAX_COALESCE {
            let j = i + run.len();
            let Some(n) = seg4(buf, segs[j].0, segs[j].1) else { break };
            let last = run[run.len() - 1];
            if !same_class(i, j) || !continues(buf, &f, &last, &n) || f.hdrs - 14 + total + n.payload() > 0xffff {
                break;
            }
            total += n.payload();
            run.push(n);
            if n.payload() < f.payload() {
                break;
            }
        }
        if run.len() > 1 {
            // Only verified segments are merged: cut the run at the first that fails.
            if let Some(bad) = run.iter().position(|s| !seg4_valid(buf, s)) {
                run.truncate(bad);
            }
        }
        if run.len() < 2 {
            out.push(single(i));
            i += 1;
            continue;
        }
        let mut w = f.at + f.len;
        let mut psh = 0;
        for n in &run[1..] {
            buf.copy_within(n.at + n.hdrs..n.at + n.len, w);
            w += n.payload();
            psh |= n.flags & 0x08;
        }
        let len = w - f.at;
        let fr = &mut buf[f.at..w];
        let tot = (len - 14) as u16;
        fr[16..18].copy_from_slice(&tot.to_be_bytes());
        fr[24..26].copy_from_slice(&[0, 0]);
        let ipc = csum_fold(csum_add(0, &fr[14..34]));
        fr[24..26].copy_from_slice(&ipc.to_be_bytes());
        fr[47] |= psh;
        // Partial checksum: the pseudo-header sum over the whole TCP length (Linux's
        // CHECKSUM_PARTIAL convention; segmenting recomputes it per segment).
        let pseudo = csum_add(0, &fr[26..34]) + 6 + (len - 34) as u32;
        fr[50..52].copy_from_slice(&(!csum_fold(pseudo)).to_be_bytes());
        let vnet = VnetHdr {
            flags: vmnetd_vhost::virtio_net::F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: f.hdrs as u16,
            gso_size: f.payload() as u16,
            csum_start: 34,
            csum_offset: 16,
        };
        out.push(Coalesced { at: f.at, len, vnet, first: i, count: run.len() });
        i += run.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmnetd_vhost::virtio_net::F_NEEDS_CSUM;

    /// A TCP/IPv4 super-frame as a guest or the kernel hands it over: lengths of the whole,
    /// checksum field = pseudo-header sum only.
    fn tcp4(payload: usize, tagged: bool, flags: u8) -> (Vec<u8>, usize) {
        let mut f = vec![0u8; 0];
        f.extend([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        if tagged {
            f.extend([0x81, 0x00, 0x00, 0x0a]);
        }
        f.extend([0x08, 0x00]);
        let l3 = f.len();
        let tot = (20 + 20 + payload) as u16;
        f.extend([0x45, 0, (tot >> 8) as u8, tot as u8, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let l4 = f.len();
        f.extend([0x13, 0x88, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend((0..payload).map(|i| (i * 31 % 251) as u8));
        let pseudo = csum_add(csum_add(0, &f[l3 + 12..l3 + 20]) + 6, &[]).wrapping_add((20 + payload) as u32);
        let p = !csum_fold(pseudo);
        f[l4 + 16..l4 + 18].copy_from_slice(&p.to_be_bytes());
        (f, l4)
    }

    #[test]
    fn a_pseudo_header_seed_is_recognised_and_marking_it_is_always_safe() {
        for tagged in [false, true] {
            let (mut f, l4) = tcp4(100, tagged, 0x18);
            let seed = CsumSeed { start: l4 as u16, offset: 16, end: f.len() };
            assert_eq!(partial_csum_seed(&f), Some(seed));
            // Padding past the IP length is left out of what a completion sums.
            let mut padded = f.clone();
            padded.extend([0xee; 6]);
            assert_eq!(partial_csum_seed(&padded), Some(seed));
            // A fragment is never marked.
            let mut frag = f.clone();
            let l3 = l4 - 20;
            frag[l3 + 6] = 0x20; // more fragments
            assert_eq!(partial_csum_seed(&frag), None);
            // The TCP checksum verifies (the helper leaves the IPv4 header's at zero).
            let tcp_ok = |f: &[u8]| {
                let lay = layout(f).unwrap();
                csum_fold(csum_add(pseudo_sum(f, &lay, f.len() - lay.l4), &f[lay.l4..])) == 0
            };
            complete_csum(&mut f, l4, 16).unwrap();
            assert!(tcp_ok(&f));
            // A complete checksum is not a seed...
            assert_eq!(partial_csum_seed(&f), None);
            // ...and one that equals the seed survives completion unchanged.
            let lay = layout(&f).unwrap();
            let (field, c) = (l4 + 16, &mut f);
            let seed = !csum_fold(pseudo_sum(c, &lay, c.len() - l4));
            // Make the complete checksum equal the seed by adjusting two payload bytes.
            c[field..field + 2].copy_from_slice(&seed.to_be_bytes());
            let at = c.len() - 2;
            c[at..].copy_from_slice(&[0, 0]);
            let rest = csum_add(pseudo_sum(c, &lay, c.len() - l4), &c[l4..]);
            c[at..].copy_from_slice(&(!(rest as u16)).to_be_bytes());
            assert!(tcp_ok(c), "the frame is complete and its checksum is the seed");
            assert_eq!(partial_csum_seed(c).map(|s| (s.start, s.offset)), Some((l4 as u16, 16)));
            let before = c.clone();
            complete_csum(c, l4, 16).unwrap();
            assert_eq!(*c, before);
        }
        // Not TCP/UDP, cut short, or a length past the frame: nothing.
        let (f, _) = tcp4(100, false, 0x18);
        assert_eq!(partial_csum_seed(&f[..40]), None);
        assert_eq!(partial_csum_seed(&f[..f.len() - 1]), None);
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(partial_csum_seed(&arp), None);
    }

    fn tso4(l4: usize, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (l4 + 20) as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
        }
    }

    /// Whether the IPv4 header and TCP checksums of a plain frame verify.
    fn verify(seg: &[u8]) -> bool {
        let lay = layout(seg).unwrap();
        let ip_ok = !lay.v4 || csum_fold(csum_add(0, &seg[lay.l3..lay.l4])) == 0;
        let l4_len = seg.len() - lay.l4;
        let tcp_ok = csum_fold(csum_add(pseudo_sum(seg, &lay, l4_len), &seg[lay.l4..])) == 0;
        ip_ok && tcp_ok
    }

    #[test]
    fn known_checksum_rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to 0xddf2.
        assert_eq!(!csum_fold(csum_add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
    }

    #[test]
    fn complete_partial_checksum() {
        let (mut f, l4) = tcp4(1000, false, 0x18);
        // Fix the IP header checksum as a sender would.
        let c = csum_fold(csum_add(0, &f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert!(!verify(&f));
        complete_csum(&mut f, l4, 16).unwrap();
        assert!(verify(&f));
        assert_eq!(complete_csum(&mut f[..20], 14, 16), Err(Error::BadCsumOffsets));
        assert_eq!(complete_csum(&mut f, usize::MAX, 16), Err(Error::BadCsumOffsets));
        // Any protocol: a partial checksum is a generic "sum from here, put it there".
        let mut arp = vec![0xffu8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        complete_csum(&mut arp, 20, 4).unwrap();
    }

    #[test]
    fn tso4_segments_are_valid_and_carry_the_payload() {
        for tagged in [false, true] {
            let (f, l4) = tcp4(5000, tagged, 0x19 /* FIN|PSH|ACK */);
            let vnet = tso4(l4, 1448);
            let mut segs = Vec::new();
            let n = segment(&f, &vnet, &mut |s| {
                segs.push(s.to_vec());
                true
            })
            .unwrap();
            assert_eq!(n, 4);
            let mut payload = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(verify(s), "segment {i} checksums");
                assert!(s.len() <= l4 + 20 + 1448);
                let lay = layout(s).unwrap();
                let seq = u32::from_be_bytes(s[lay.l4 + 4..lay.l4 + 8].try_into().unwrap());
                assert_eq!(seq, 0x1000 + (i * 1448) as u32);
                let flags = s[lay.l4 + 13];
                assert_eq!(flags & 0x09 != 0, i == 3, "FIN/PSH only on the last");
                assert_eq!(u16::from_be_bytes([s[lay.l3 + 4], s[lay.l3 + 5]]), 0x1234 + i as u16);
                payload.extend_from_slice(&s[lay.payload..]);
            }
            assert_eq!(payload, &f[l4 + 20..]);
        }
    }

    #[test]
    fn tso6_and_udp() {
        // TCP/IPv6: 2 segments.
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        f.extend([0x60, 0, 0, 0, 0, 0, 6, 64]);
        f.extend([0xfd; 16]);
        f.extend([0xfe; 16]);
        f.extend([0x13, 0x88, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend(vec![7u8; 2000]);
        let vnet = VnetHdr { gso_type: GSO_TCPV6, gso_size: 1400, ..Default::default() };
        let mut segs = Vec::new();
        assert_eq!(
            segment(&f, &vnet, &mut |s| {
                segs.push(s.to_vec());
                true
            })
            .unwrap(),
            2
        );
        assert!(segs.iter().all(|s| verify(s)));
        assert_eq!(u16::from_be_bytes([segs[1][18], segs[1][19]]), 20 + 600);
        // A TCPV4 type on an IPv6 frame is refused, as is a zero MSS.
        assert_eq!(
            segment(&f, &VnetHdr { gso_type: GSO_TCPV4, gso_size: 100, ..Default::default() }, &mut |_| true),
            Err(Error::Unsupported)
        );
        assert_eq!(
            segment(&f, &VnetHdr { gso_type: GSO_TCPV6, gso_size: 0, ..Default::default() }, &mut |_| true),
            Err(Error::BadMss(0))
        );
        assert_eq!(segment(&f[..30], &vnet, &mut |_| true), Err(Error::Truncated));
    }

    /// The frames a hostile guest sends: every one is refused without a panic and without
    /// emitting anything.
    #[test]
    fn malformed_gso_frames_are_refused() {
        let (good, l4) = tcp4(3000, false, 0x10);
        let mut emitted = 0usize;
        let mut out = |_: &[u8]| {
            emitted += 1;
            true
        };
        // TCP data offset 0, 1 and 4 words (below the 5-word minimum).
        for doff in [0u8, 1, 4] {
            let mut f = good.clone();
            f[l4 + 12] = doff << 4;
            assert_eq!(segment(&f, &tso4(l4, 1448), &mut out), Err(Error::BadTcpHeader), "doff {doff}");
        }
        // Data offset 15 (60 bytes) on a frame that ends inside that header.
        let mut f = good[..l4 + 40].to_vec();
        f[l4 + 12] = 15 << 4;
        assert_eq!(segment(&f, &tso4(l4, 1448), &mut out), Err(Error::Truncated));
        // IHL 0..4 and an IPv4 header that claims to be longer than the frame.
        for ihl in 0u8..5 {
            let mut f = good.clone();
            f[14] = 0x40 | ihl;
            assert_eq!(segment(&f, &tso4(l4, 1448), &mut out), Err(Error::BadIpHeader), "ihl {ihl}");
        }
        let mut f = good[..40].to_vec();
        f[14] = 0x4f;
        assert_eq!(segment(&f, &tso4(l4, 1448), &mut out), Err(Error::Truncated));
        // MSS 1 (65,536 segments if believed) and just below the minimum.
        for mss in [1u16, (MIN_MSS - 1) as u16] {
            assert_eq!(segment(&good, &tso4(l4, mss), &mut out), Err(Error::BadMss(mss)), "mss {mss}");
        }
        // Headers only, cut short at every length.
        for len in 0..l4 + 20 {
            assert!(segment(&good[..len], &tso4(l4, 1448), &mut out).is_err(), "len {len}");
        }
        // UDP GSO with tiny segments: more than the kernel's 128.
        let mut udp = good.clone();
        udp[23] = 17;
        let v = VnetHdr { gso_type: GSO_UDP_L4, gso_size: 8, ..Default::default() };
        assert_eq!(segment(&udp, &v, &mut out), Err(Error::TooManySegments));
        assert_eq!(emitted, 0);
        // The minimum MSS is accepted, and stays under the bound.
        let (big, l4b) = tcp4(65000, false, 0x10);
        let n = segment(&big, &tso4(l4b, MIN_MSS as u16), &mut |_| true).unwrap();
        assert!(n <= MAX_SEGMENTS, "{n}");
    }

    #[test]
    fn vnet_headers_are_checked_against_the_frame_and_features() {
        let all = features::CSUM | features::HOST_TSO4 | features::HOST_TSO6 | features::HOST_ECN;
        let ok = tso4(34, 1448);
        assert_eq!(check_vnet(&ok, 5000, all), Ok(()));
        assert_eq!(check_vnet(&VnetHdr::default(), 60, 0), Ok(()));
        assert_eq!(check_vnet(&ok, 5000, features::CSUM), Err(Error::BadGsoType(GSO_TCPV4)), "TSO4 not acked");
        assert_eq!(check_vnet(&ok, 5000, features::HOST_TSO4), Err(Error::BadCsumOffsets), "CSUM not acked");
        let ecn = VnetHdr { gso_type: GSO_TCPV4 | GSO_ECN, ..ok };
        assert_eq!(check_vnet(&ecn, 5000, all & !features::HOST_ECN), Err(Error::BadGsoType(GSO_TCPV4 | GSO_ECN)));
        assert_eq!(check_vnet(&VnetHdr { gso_size: 1, ..ok }, 5000, all), Err(Error::BadMss(1)));
        assert_eq!(check_vnet(&VnetHdr { gso_size: 6000, ..ok }, 5000, all), Err(Error::BadMss(6000)));
        assert_eq!(check_vnet(&VnetHdr { csum_start: 4990, ..ok }, 5000, all), Err(Error::BadCsumOffsets));
        assert_eq!(check_vnet(&VnetHdr { hdr_len: 5001, ..ok }, 5000, all), Err(Error::BadHdrLen(5001)));
        // UFO (GSO_UDP) and unknown types are never negotiated.
        assert_eq!(check_vnet(&VnetHdr { gso_type: 3, ..ok }, 5000, all), Err(Error::BadGsoType(3)));
        assert_eq!(check_vnet(&VnetHdr { gso_type: 0x42, ..ok }, 5000, all), Err(Error::BadGsoType(0x42)));
    }

    fn csum_naive(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for c in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Found by the `vxlan` fuzz target: eight-byte words summing to nearly 2^64 followed by
    /// a short tail overflowed the accumulator.
    #[test]
    fn a_wide_sum_near_the_top_takes_a_tail() {
        let data = [0xffu8; 11];
        assert_eq!(csum_fold(csum_add(0, &data)), csum_naive(&data));
    }

    proptest::proptest! {
        /// The wide-word sum is RFC 1071's 16-bit sum, from any starting sum.
        #[test]
        fn wide_checksum_is_the_16_bit_sum(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            ff in 0usize..200,
        ) {
            proptest::prop_assert_eq!(csum_fold(csum_add(0, &data)), csum_naive(&data));
            // Long runs of 0xff push the wide sum to its top.
            let mut d = vec![0xffu8; ff * 8];
            d.extend(&data);
            proptest::prop_assert_eq!(csum_fold(csum_add(0, &d)), csum_naive(&d));
        }

        /// Segments of one flow merged by `coalesce_tcp4` segment back into exactly
        /// themselves; nothing is lost or reordered.
        #[test]
        fn coalescing_undoes_segmentation(payload in 1usize..20_000, mss in 88u16..1500, gap in 0usize..16) {
            let (mut f, l4) = tcp4(payload, false, 0x18);
            let c = csum_fold(csum_add(0, &f[14..34]));
            f[24..26].copy_from_slice(&c.to_be_bytes());
            let vnet = tso4(l4, mss);
            let mut segs = Vec::new();
            if segment(&f, &vnet, &mut |s| { segs.push(s.to_vec()); true }).is_err() {
                return Ok(());
            }
            let mut buf = vec![0u8; 70_000 + segs.len() * 16];
            let mut spans = Vec::new();
            let mut at = 0;
            for s in &segs {
                buf[at..at + s.len()].copy_from_slice(s);
                spans.push((at, s.len()));
                at += s.len() + gap;
            }
            let mut out = Vec::new();
            coalesce_tcp4(&mut buf, &spans, &|_, _| true, &mut out);
            proptest::prop_assert_eq!(out.iter().map(|c| c.count).sum::<usize>(), segs.len());
            let mut again = Vec::new();
            for c in &out {
                let fr = buf[c.at..c.at + c.len].to_vec();
                if c.vnet.is_gso() {
                    segment(&fr, &c.vnet, &mut |s| { again.push(s.to_vec()); true }).unwrap();
                } else {
                    again.push(fr);
                }
            }
            proptest::prop_assert_eq!(again, segs);
        }
    }
}
