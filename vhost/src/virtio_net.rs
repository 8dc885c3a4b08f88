//! The virtio-net header (virtio 1.2 §5.1.6) that precedes every frame on a virtqueue, on a
//! TAP with `IFF_VNET_HDR`, and on an AF_PACKET socket with `PACKET_VNET_HDR`.
//!
//! With `VIRTIO_F_VERSION_1` all fields are little-endian and the header is the 12-byte
//! `virtio_net_hdr_mrg_rxbuf` (the 10-byte legacy header plus `num_buffers`). AF_PACKET uses
//! the 10-byte form. [`VnetHdr`] is the offload information in host order, independent of
//! the form.

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already checked.
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// Length of the 10-byte header (no `num_buffers`).
pub const HDR_LEN_LEGACY: usize = 10;
/// Length of the 12-byte header used with VERSION_1 or MRG_RXBUF.
pub const HDR_LEN: usize = 12;

/// Offload information of one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// A GSO super-frame (to be cut into `gso_size` segments by whoever cannot take it).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Parses the first 10 bytes of a header (either form).
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..HDR_LEN_LEGACY)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The 12-byte form with `num_buffers`.
    pub fn to_bytes(&self, num_buffers: u16) -> [u8; HDR_LEN] {
        let mut o = [0u8; HDR_LEN];
        o[..HDR_LEN_LEGACY].copy_from_slice(&self.to_legacy_bytes());
        o[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        o
    }

    /// The 10-byte form.
    pub fn to_legacy_bytes(&self) -> [u8; HDR_LEN_LEGACY] {
        let mut o = [0u8; HDR_LEN_LEGACY];
        o[0] = self.flags;
        o[1] = self.gso_type;
        o[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        o[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        o[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        o[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        o
    }

    /// The header after `delta` bytes were inserted (positive) or removed (negative) before
    /// the L3 header, as a VLAN tag push or pop does: offsets into the frame move with it.
    pub fn shifted(&self, delta: isize) -> VnetHdr {
        let mv = |v: u16| (v as isize + delta).clamp(0, u16::MAX as isize) as u16;
        let mut h = *self;
        if h.needs_csum() {
            h.csum_start = mv(h.csum_start);
        }
        if h.hdr_len != 0 {
            h.hdr_len = mv(h.hdr_len);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_forms() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let b = h.to_bytes(3);
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0]);
        assert_eq!(VnetHdr::parse(&b).unwrap(), h);
        assert_eq!(VnetHdr::parse(&h.to_legacy_bytes()).unwrap(), h);
        assert!(VnetHdr::parse(&b[..9]).is_none());
        assert!(h.is_gso() && h.needs_csum());
        assert!(!VnetHdr {
            gso_type: GSO_ECN,
            ..Default::default()
        }
        .is_gso());
    }

    #[test]
    fn vlan_push_and_pop_move_offsets() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
        };
        let pushed = h.shifted(4);
        assert_eq!(
            (pushed.csum_start, pushed.hdr_len, pushed.csum_offset),
            (58, 78, 16)
        );
        assert_eq!(pushed.shifted(-4), h);
        // Without NEEDS_CSUM, csum_start means nothing and stays.
        let plain = VnetHdr {
            csum_start: 7,
            ..Default::default()
        };
        assert_eq!(plain.shifted(4), plain);
    }
}
