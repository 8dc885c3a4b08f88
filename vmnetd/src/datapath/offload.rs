//! Software offloads for peers that cannot take them: cutting a GSO super-frame into
//! MSS-sized segments (TCP over IPv4/IPv6, UDP), and completing a partial checksum.
//!
//! Frames from TAPs, AF_PACKET sockets and guests that negotiated TSO/CSUM may be 64 KiB
//! super-frames whose TCP checksum holds only the pseudo-header sum (`NEEDS_CSUM`). Kernel
//! peers take them as they are; a vhost-user guest that did not ack GUEST_TSO4/6 or
//! GUEST_CSUM must get ordinary frames, so the edge calls these first. RFC 1071 is the
//! checksum; RFC 791, 8200, 793 and 768 the headers touched.

use vmnetd_vhost::virtio_net::{VnetHdr, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame too short for its headers")]
    Truncated,
    #[error("not an IPv4/IPv6 TCP or UDP frame")]
    Unsupported,
    #[error("GSO frame with a zero segment size")]
    NoMss,
}

/// Adds `data` to a ones'-complement sum.
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so long frames cannot overflow.
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [b] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*b) << 8);
    }
    sum
}

/// Folds a sum to 16 bits and complements it: the checksum field value.
pub fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Completes a partial checksum in place: the field at `start + offset` holds the
/// pseudo-header sum; the checksum of everything from `start` replaces it.
pub fn complete_csum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), Error> {
    let at = start + offset;
    if at + 2 > frame.len() || start > frame.len() {
        return Err(Error::Truncated);
    }
    let mut c = csum_fold(csum_add(0, &frame[start..]));
    if c == 0 && frame.get(l3_proto_offset(frame)?).copied() == Some(17) {
        c = 0xffff; // UDP: 0 means "no checksum"
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn l2_len(f: &[u8]) -> Result<(usize, u16), Error> {
    let et = |i: usize| f.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Error::Truncated);
    match et(12)? {
        0x8100 | 0x88a8 => Ok((18, et(16)?)),
        t => Ok((14, t)),
    }
}

/// Offset of the IPv4 protocol / IPv6 next-header byte.
fn l3_proto_offset(f: &[u8]) -> Result<usize, Error> {
    let (l2, et) = l2_len(f)?;
    match et {
        0x0800 => Ok(l2 + 9),
        0x86dd => Ok(l2 + 6),
        _ => Err(Error::Unsupported),
    }
}

/// Header layout of a super-frame.
struct Layout {
    l3: usize,
    l4: usize,
    payload: usize,
    v4: bool,
    tcp: bool,
}

fn layout(f: &[u8]) -> Result<Layout, Error> {
    let (l3, et) = l2_len(f)?;
    let (v4, proto, l4) = match et {
        0x0800 => {
            let ihl = usize::from(f.get(l3).ok_or(Error::Truncated)? & 0x0f) * 4;
            (true, *f.get(l3 + 9).ok_or(Error::Truncated)?, l3 + ihl)
        }
        0x86dd => (false, *f.get(l3 + 6).ok_or(Error::Truncated)?, l3 + 40),
        _ => return Err(Error::Unsupported),
    };
    let (tcp, l4len) = match proto {
        6 => (true, usize::from(f.get(l4 + 12).ok_or(Error::Truncated)? >> 4) * 4),
        17 => (false, 8),
        _ => return Err(Error::Unsupported),
    };
    let payload = l4 + l4len;
    if payload > f.len() || (v4 && l4 < l3 + 20) {
        return Err(Error::Truncated);
    }
    Ok(Layout { l3, l4, payload, v4, tcp })
}

fn pseudo_sum(seg: &[u8], lay: &Layout, l4_len: usize) -> u32 {
    let proto = if lay.tcp { 6u32 } else { 17 };
    let mut s = 0u32;
    if lay.v4 {
        s = csum_add(s, &seg[lay.l3 + 12..lay.l3 + 20]);
    } else {
        s = csum_add(s, &seg[lay.l3 + 8..lay.l3 + 40]);
    }
    s.wrapping_add(proto).wrapping_add(l4_len as u32)
}

/// Cuts a GSO super-frame into frames of at most `vnet.gso_size` payload bytes, each with
/// complete, correct headers and checksums; calls `out` with each. Returns how many.
pub fn segment(frame: &[u8], vnet: &VnetHdr, out: &mut dyn FnMut(&[u8])) -> Result<usize, Error> {
    let mss = usize::from(vnet.gso_size);
    if mss == 0 {
        return Err(Error::NoMss);
    }
    let lay = layout(frame)?;
    let kind = vnet.gso_type & !GSO_ECN;
    let ok = matches!(
        (kind, lay.tcp, lay.v4),
        (GSO_TCPV4, true, true) | (GSO_TCPV6, true, false) | (GSO_UDP_L4 | GSO_UDP, false, _)
    );
    if !ok {
        return Err(Error::Unsupported);
    }
    let data = &frame[lay.payload..];
    let hdrs = &frame[..lay.payload];
    let n = data.len().div_ceil(mss).max(1);
    let mut seg = Vec::with_capacity(lay.payload + mss);
    let seq0 = if lay.tcp {
        u32::from_be_bytes(frame[lay.l4 + 4..lay.l4 + 8].try_into().map_err(|_| Error::Truncated)?)
    } else {
        0
    };
    let id0 = if lay.v4 { u16::from_be_bytes([frame[lay.l3 + 4], frame[lay.l3 + 5]]) } else { 0 };
    for (i, chunk) in
        data.chunks(mss).enumerate().chain(std::iter::once((0, &data[..0])).take(usize::from(data.is_empty())))
    {
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
        out(&seg);
    }
    Ok(n)
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
        assert_eq!(complete_csum(&mut f[..20], 14, 16), Err(Error::Truncated));
    }

    #[test]
    fn tso4_segments_are_valid_and_carry_the_payload() {
        for tagged in [false, true] {
            let (f, l4) = tcp4(5000, tagged, 0x19 /* FIN|PSH|ACK */);
            let vnet = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: (l4 + 20) as u16,
                gso_size: 1448,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            let mut segs = Vec::new();
            let n = segment(&f, &vnet, &mut |s| segs.push(s.to_vec())).unwrap();
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
        assert_eq!(segment(&f, &vnet, &mut |s| segs.push(s.to_vec())).unwrap(), 2);
        assert!(segs.iter().all(|s| verify(s)));
        assert_eq!(u16::from_be_bytes([segs[1][18], segs[1][19]]), 20 + 600);
        // A TCPV4 type on an IPv6 frame is refused, as is a zero MSS.
        assert_eq!(
            segment(&f, &VnetHdr { gso_type: GSO_TCPV4, gso_size: 1, ..Default::default() }, &mut |_| {}),
            Err(Error::Unsupported)
        );
        assert_eq!(
            segment(&f, &VnetHdr { gso_type: GSO_TCPV6, gso_size: 0, ..Default::default() }, &mut |_| {}),
            Err(Error::NoMss)
        );
        assert_eq!(segment(&f[..30], &vnet, &mut |_| {}), Err(Error::Truncated));
    }
}
