//! The virtio-net header (virtio 1.2 §5.1.6) that precedes every frame on a virtqueue, on a
//! TAP with `IFF_VNET_HDR`, and on an AF_PACKET socket with `PACKET_VNET_HDR`.
//!
//! With `VIRTIO_F_VERSION_1` all fields are little-endian and the header is the 12-byte
//! `virtio_net_hdr_mrg_rxbuf` (the 10-byte legacy header plus `num_buffers`). AF_PACKET uses
//! the 10-byte form. [`VnetHdr`] is the offload information in host order, independent of
//! the form.

use virtio_bindings::virtio_net as vn;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already checked.
pub const F_DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;

pub const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
/// UFO (IP fragmentation of one UDP datagram): never offered, refused from guests.
pub const GSO_UDP: u8 = vn::VIRTIO_NET_HDR_GSO_UDP as u8;
pub const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
pub const GSO_UDP_L4: u8 = vn::VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
pub const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

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
        assert!(!VnetHdr { gso_type: GSO_ECN, ..Default::default() }.is_gso());
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
        assert_eq!((pushed.csum_start, pushed.hdr_len, pushed.csum_offset), (58, 78, 16));
        assert_eq!(pushed.shifted(-4), h);
        // Without NEEDS_CSUM, csum_start means nothing and stays.
        let plain = VnetHdr { csum_start: 7, ..Default::default() };
        assert_eq!(plain.shifted(4), plain);
    }
}

/// Feature bits (virtio 1.2 §5.1.3 and §6).
pub mod features {
    use virtio_bindings::virtio_config as vc;
    use virtio_bindings::virtio_net as vn;
    use virtio_bindings::virtio_ring as vr;

    const fn bit(n: u32) -> u64 {
        1 << n
    }

    pub const CSUM: u64 = bit(vn::VIRTIO_NET_F_CSUM);
    pub const GUEST_CSUM: u64 = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
    pub const CTRL_GUEST_OFFLOADS: u64 = bit(vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
    pub const MTU: u64 = bit(vn::VIRTIO_NET_F_MTU);
    pub const MAC: u64 = bit(vn::VIRTIO_NET_F_MAC);
    pub const GUEST_TSO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO4);
    pub const GUEST_TSO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO6);
    pub const GUEST_ECN: u64 = bit(vn::VIRTIO_NET_F_GUEST_ECN);
    pub const GUEST_UFO: u64 = bit(vn::VIRTIO_NET_F_GUEST_UFO);
    pub const HOST_TSO4: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO4);
    pub const HOST_TSO6: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO6);
    pub const HOST_ECN: u64 = bit(vn::VIRTIO_NET_F_HOST_ECN);
    pub const MRG_RXBUF: u64 = bit(vn::VIRTIO_NET_F_MRG_RXBUF);
    pub const STATUS: u64 = bit(vn::VIRTIO_NET_F_STATUS);
    pub const CTRL_VQ: u64 = bit(vn::VIRTIO_NET_F_CTRL_VQ);
    pub const CTRL_RX: u64 = bit(vn::VIRTIO_NET_F_CTRL_RX);
    pub const CTRL_VLAN: u64 = bit(vn::VIRTIO_NET_F_CTRL_VLAN);
    pub const GUEST_ANNOUNCE: u64 = bit(vn::VIRTIO_NET_F_GUEST_ANNOUNCE);
    pub const MQ: u64 = bit(vn::VIRTIO_NET_F_MQ);
    pub const CTRL_MAC_ADDR: u64 = bit(vn::VIRTIO_NET_F_CTRL_MAC_ADDR);
    pub const RING_INDIRECT_DESC: u64 = bit(vr::VIRTIO_RING_F_INDIRECT_DESC);
    pub const RING_EVENT_IDX: u64 = bit(vr::VIRTIO_RING_F_EVENT_IDX);
    /// `VHOST_USER_F_PROTOCOL_FEATURES` (a vhost-user bit in the virtio feature word).
    pub const PROTOCOL_FEATURES: u64 = vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    pub const VERSION_1: u64 = bit(vc::VIRTIO_F_VERSION_1);
    /// The device uses buffers in the order they were made available (virtio 1.2 §2.7.9).
    /// vmnetd always does (transmit chains are completed in pop order, receive chains are
    /// filled in avail order, the control queue is serial), so offering it costs nothing and
    /// lets drivers take their cheaper in-order paths (DPDK's virtio PMD does). vmnetd still
    /// writes one used element per chain: DPDK's in-order transmit cleanup counts used
    /// elements rather than reading their ids, so the spec's batched form would leak its
    /// descriptors.
    pub const IN_ORDER: u64 = bit(vc::VIRTIO_F_IN_ORDER);
    /// `VHOST_F_LOG_ALL`: the frontend migrates the guest and wants every page the device
    /// writes marked in its dirty log (see `device::Handler::set_log_base`).
    pub const LOG_ALL: u64 = vhost::vhost_user::message::VhostUserVirtioFeatures::LOG_ALL.bits();

    /// What vmnetd's device offers. Constant, whatever the port's configuration, so a
    /// frontend that reconnects (QEMU after a vmnetd restart) always finds at least what its
    /// guest acked. GSO frames toward a guest that did not ack GUEST_TSO4/6 are segmented in
    /// software, and partial checksums completed, so offering HOST_TSO* is always safe.
    /// GUEST_ANNOUNCE lets a migrated guest announce itself (gratuitous ARP, unsolicited
    /// neighbour advertisements: what moves its addresses in every switch on the way);
    /// LOG_ALL makes the guest migratable.
    pub const OFFERED: u64 = VERSION_1
        | MRG_RXBUF
        | MAC
        | STATUS
        | RING_EVENT_IDX
        | RING_INDIRECT_DESC
        | MQ
        | CTRL_VQ
        | CTRL_RX
        | CTRL_MAC_ADDR
        | CSUM
        | GUEST_CSUM
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | IN_ORDER
        | GUEST_ANNOUNCE
        | LOG_ALL
        | PROTOCOL_FEATURES;

    /// Names of the bits in `f`, for `vmnetd port list`.
    pub fn names(f: u64) -> Vec<&'static str> {
        const ALL: [(u64, &str); 26] = [
            (CSUM, "csum"),
            (GUEST_CSUM, "guest_csum"),
            (CTRL_GUEST_OFFLOADS, "ctrl_guest_offloads"),
            (MTU, "mtu"),
            (MAC, "mac"),
            (GUEST_TSO4, "guest_tso4"),
            (GUEST_TSO6, "guest_tso6"),
            (GUEST_ECN, "guest_ecn"),
            (GUEST_UFO, "guest_ufo"),
            (HOST_TSO4, "host_tso4"),
            (HOST_TSO6, "host_tso6"),
            (HOST_ECN, "host_ecn"),
            (MRG_RXBUF, "mrg_rxbuf"),
            (STATUS, "status"),
            (CTRL_VQ, "ctrl_vq"),
            (CTRL_RX, "ctrl_rx"),
            (CTRL_VLAN, "ctrl_vlan"),
            (GUEST_ANNOUNCE, "guest_announce"),
            (MQ, "mq"),
            (CTRL_MAC_ADDR, "ctrl_mac_addr"),
            (RING_INDIRECT_DESC, "indirect_desc"),
            (RING_EVENT_IDX, "event_idx"),
            (PROTOCOL_FEATURES, "protocol_features"),
            (VERSION_1, "version_1"),
            (IN_ORDER, "in_order"),
            (LOG_ALL, "log_all"),
        ];
        ALL.iter().filter(|(b, _)| f & b != 0).map(|(_, n)| *n).collect()
    }
}
