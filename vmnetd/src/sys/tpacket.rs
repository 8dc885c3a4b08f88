//! `TPACKET_V2` mmap rings for AF_PACKET sockets (the kernel's
//! `Documentation/networking/packet_mmap.rst`): a receive ring the kernel copies frames into
//! in its softirq, with no `skb` clone, socket queue or `recvmmsg` per burst, and a transmit
//! ring that one `send(fd, NULL, 0)` hands to the kernel whole, with no `msghdr` or iovec
//! per frame.
//!
//! Why V2 and not V3: a V3 receive ring wakes the reader only when a block retires (full, or
//! after its timeout of a millisecond or more), which would put that delay on every ping and
//! TCP ACK crossing the bridge; V2 wakes it per frame, as a socket does. (DPDK's `af_packet`
//! PMD makes the same choice.)
//!
//! Slots are fixed-size (2 KiB for a 1500-byte MTU). A frame longer than a slot (a GSO
//! super-frame, up to 64 KiB) still arrives whole: with `PACKET_COPY_THRESH` the kernel marks
//! its slot `TP_STATUS_COPY` and queues the full frame on the socket, where the reader takes
//! it with `recvmsg` in ring order. On the way out, such a frame goes through a second,
//! send-only socket (a socket with a transmit ring sends only from the ring), after the ring
//! is flushed, so the order of a burst is kept.
//!
//! The ring is memory the kernel writes. Every slot header is read once into a local copy and
//! checked against the slot's bounds (`RxSlot::parse`, fuzzed) before any frame byte is
//! touched; a slot that fails is handed back and counted, never trusted.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::iov::IoPart;
use super::Mapping;

// linux/if_packet.h
pub(crate) const PACKET_RX_RING: libc::c_int = 5;
pub(crate) const PACKET_COPY_THRESH: libc::c_int = 7;
pub(crate) const PACKET_VERSION: libc::c_int = 10;
pub(crate) const PACKET_TX_RING: libc::c_int = 13;
pub(crate) const PACKET_LOSS: libc::c_int = 14;
pub(crate) const TPACKET_V2: libc::c_int = 1;

const TP_STATUS_USER: u32 = 1 << 0;
const TP_STATUS_COPY: u32 = 1 << 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const TP_STATUS_KERNEL: u32 = 0;
// Transmit ring.
const TP_STATUS_SEND_REQUEST: u32 = 1 << 0;
const TP_STATUS_SENDING: u32 = 1 << 1;

/// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: where a transmit slot's data starts, and the
/// size of the header every slot begins with.
pub const HDR_LEN: usize = 32;
/// `struct virtio_net_hdr`, before every frame (`PACKET_VNET_HDR`).
const VNET: usize = 10;
/// Where the kernel puts a received frame's MAC header, at the least: `TPACKET_ALIGN(32 +
/// sizeof(struct sockaddr_ll) + 16) + VNET - 14` (`tpacket_rcv`).
const RX_MAC_OFF: usize = 76;
/// An Ethernet header with one VLAN tag still in the frame.
const L2_MAX: usize = 18;

/// Bytes of each ring, whatever the slot size: 1 MiB to receive, 512 KiB to send (512 and 256
/// slots of 2 KiB at a 1500-byte MTU).
const RX_RING_BYTES: usize = 1 << 20;
const TX_RING_BYTES: usize = 1 << 19;

/// `struct tpacket_req`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TpacketReq {
    pub block_size: u32,
    pub block_nr: u32,
    pub frame_size: u32,
    pub frame_nr: u32,
}

/// The rings' layout for an interface MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub frame_size: usize,
    pub block_size: usize,
    pub rx_frames: usize,
    pub tx_frames: usize,
}

impl Geometry {
    /// Slots big enough for a full-MTU frame with a VLAN tag (a power of two from 2 KiB to
    /// 64 KiB: longer frames take the copy path), in blocks of at least 32 KiB.
    pub fn for_mtu(mtu: u32) -> Geometry {
        let need = (mtu as usize).saturating_add(L2_MAX + RX_MAC_OFF);
        let frame_size = need.next_power_of_two().clamp(2048, 65536);
        let block_size = frame_size.max(32768);
        let per_block = block_size / frame_size;
        let blocks = |bytes: usize| (bytes / block_size).max(1);
        Geometry {
            frame_size,
            block_size,
            rx_frames: blocks(RX_RING_BYTES) * per_block,
            tx_frames: blocks(TX_RING_BYTES) * per_block,
        }
    }

    pub(crate) fn rx_req(&self) -> TpacketReq {
        self.req(self.rx_frames)
    }

    pub(crate) fn tx_req(&self) -> TpacketReq {
        self.req(self.tx_frames)
    }

    fn req(&self, frames: usize) -> TpacketReq {
        let per_block = self.block_size / self.frame_size;
        TpacketReq {
            block_size: self.block_size as u32,
            block_nr: (frames / per_block) as u32,
            frame_size: self.frame_size as u32,
            frame_nr: frames as u32,
        }
    }

    fn rx_bytes(&self) -> usize {
        self.rx_frames * self.frame_size
    }

    fn tx_bytes(&self) -> usize {
        self.tx_frames * self.frame_size
    }

    /// The longest frame (virtio-net header included) a transmit slot takes.
    pub fn tx_capacity(&self) -> usize {
        self.frame_size - HDR_LEN
    }
}

/// A received slot's header, checked: where its bytes are, and what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxSlot {
    /// The full frame was queued on the socket (`TP_STATUS_COPY`): read it with `recvmsg`;
    /// the slot holds only its start.
    pub copied: bool,
    /// The frame was cut to the slot and not queued (the socket's buffer was full).
    pub truncated: bool,
    /// Offset of the virtio-net header in the slot; the frame follows it.
    pub vnet_at: usize,
    /// Frame bytes in the slot, after the virtio-net header.
    pub len: usize,
    /// The frame's full length.
    pub wire_len: usize,
    /// A VLAN tag the kernel took out of the frame: (TPID, TCI).
    pub vlan: Option<(u16, u16)>,
}

/// Why a slot's header could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSlot {
    /// The slot is shorter than a header.
    Short,
    /// The frame's offset or length points outside the slot.
    OutOfBounds,
}

impl RxSlot {
    /// Reads a `struct tpacket2_hdr` from the start of `slot` (a copy of the slot's bytes, or
    /// at least of its header for `parse_header`) and checks it against `frame_size`.
    pub fn parse(slot: &[u8], frame_size: usize) -> Result<RxSlot, BadSlot> {
        let h: &[u8; HDR_LEN] = slot.get(..HDR_LEN).and_then(|s| s.try_into().ok()).ok_or(BadSlot::Short)?;
        RxSlot::parse_header(h, frame_size)
    }

    pub fn parse_header(h: &[u8; HDR_LEN], frame_size: usize) -> Result<RxSlot, BadSlot> {
        let u32_at = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u16_at = |o: usize| u16::from_ne_bytes([h[o], h[o + 1]]);
        let status = u32_at(0);
        let wire_len = u32_at(4) as usize;
        let snap = u32_at(8) as usize;
        let mac = usize::from(u16_at(12));
        let (tci, tpid) = (u16_at(24), u16_at(26));
        // The virtio-net header sits right before the MAC header, after the slot header.
        let vnet_at = mac.checked_sub(VNET).filter(|&v| v >= HDR_LEN).ok_or(BadSlot::OutOfBounds)?;
        let end = mac.checked_add(snap).ok_or(BadSlot::OutOfBounds)?;
        if end > frame_size {
            return Err(BadSlot::OutOfBounds);
        }
        let copied = status & TP_STATUS_COPY != 0;
        let vlan = (status & TP_STATUS_VLAN_VALID != 0 || tci != 0)
            .then_some((if status & TP_STATUS_VLAN_TPID_VALID != 0 { tpid } else { 0x8100 }, tci));
        Ok(RxSlot { copied, truncated: !copied && snap < wire_len, vnet_at, len: snap, wire_len, vlan })
    }
}

/// One ring in the mapping.
#[derive(Debug)]
struct Ring {
    /// Offset of the ring in the mapping.
    off: usize,
    frames: usize,
    /// The next slot to look at.
    head: usize,
}

/// Both rings of a socket, mapped. The mapping is unmapped on drop; the socket (which owns
/// the kernel's side) must outlive it, which `NetdevPort` ensures by field order.
#[derive(Debug)]
pub struct Rings {
    map: Mapping,
    geo: Geometry,
    rx: Ring,
    tx: Ring,
    /// Frames written to the transmit ring that the kernel has not taken yet, from the oldest
    /// (`tx_tail`) on.
    tx_pending: usize,
    tx_tail: usize,
}

// SAFETY: the mapping is plain memory shared only with the kernel; `Rings` is moved between
// threads whole, never shared (no `Sync`).
unsafe impl Send for Rings {}

/// A frame read from the receive ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxFrame {
    /// `len` bytes (virtio-net header included) were copied out.
    Frame { len: usize, vlan: Option<(u16, u16)> },
    /// The frame is longer than a slot; the socket's queue has it whole.
    Queued,
    /// The slot was unusable (cut, or a header out of bounds): its bytes.
    Bad { wire_len: usize },
}

impl Rings {
    /// Maps the rings set up on `fd` with `geo` (both `PACKET_RX_RING` and `PACKET_TX_RING`
    /// done).
    pub(crate) fn map(fd: BorrowedFd<'_>, geo: Geometry) -> io::Result<Rings> {
        let map = Mapping::new(geo.rx_bytes() + geo.tx_bytes(), Some((fd, 0)), "the packet rings")?;
        Ok(Rings::over(map, geo))
    }

    /// Both rings over `map` (`geo`'s receive ring, then its transmit ring), every head at
    /// its first slot.
    fn over(map: Mapping, geo: Geometry) -> Rings {
        Rings {
            map,
            geo,
            rx: Ring { off: 0, frames: geo.rx_frames, head: 0 },
            tx: Ring { off: geo.rx_bytes(), frames: geo.tx_frames, head: 0 },
            tx_pending: 0,
            tx_tail: 0,
        }
    }

    /// Rings in anonymous memory, for tests that play the kernel's part.
    #[cfg(test)]
    fn anonymous(geo: Geometry) -> Rings {
        let map = Mapping::new(geo.rx_bytes() + geo.tx_bytes(), None, "test rings").expect("mmap");
        Rings::over(map, geo)
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    fn slot(&self, ring: &Ring, i: usize) -> *mut u8 {
        debug_assert!(i < ring.frames);
        // SAFETY: `ring.off + i * frame_size + frame_size <= map_len` for every
        // `i < ring.frames` (callers pass a head kept below it), by construction in `map`.
        unsafe { self.map.ptr.as_ptr().add(ring.off + i * self.geo.frame_size) }
    }

    /// The `tp_status` word of a slot of this mapping, which the kernel reads and writes
    /// concurrently.
    fn status(&self, slot: *mut u8) -> &AtomicU32 {
        // SAFETY: `slot` comes from `Self::slot`, so it is in the mapping, which lives as long
        // as `self`; every slot starts with the 4-byte aligned `tp_status` word (slots are at
        // least 2 KiB apart from a page-aligned base), and it is only ever accessed atomically
        // on our side.
        unsafe { AtomicU32::from_ptr(slot.cast::<u32>()) }
    }

    /// Takes the next received frame, copying its virtio-net header and bytes into `buf`
    /// (which must hold `frame_size` bytes), and hands the slot back. `None`: the ring is
    /// empty.
    pub fn rx_next(&mut self, buf: &mut [u8]) -> Option<RxFrame> {
        let slot = self.slot(&self.rx, self.rx.head);
        let status = self.status(slot);
        if status.load(Ordering::Acquire) & TP_STATUS_USER == 0 {
            return None;
        }
        let mut hdr = [0u8; HDR_LEN];
        // SAFETY: the slot is ours (TP_STATUS_USER, acquired) and at least HDR_LEN long.
        unsafe { std::ptr::copy_nonoverlapping(slot, hdr.as_mut_ptr(), HDR_LEN) };
        let out = match RxSlot::parse_header(&hdr, self.geo.frame_size) {
            // The kernel queued the frame whole: read it from the socket even if the slot's
            // header is odd, so that queue and ring stay in step (as `rx_queued_run` counts).
            _ if status.load(Ordering::Relaxed) & TP_STATUS_COPY != 0 => RxFrame::Queued,
            Ok(s) if s.copied => RxFrame::Queued,
            Ok(s) if s.truncated => RxFrame::Bad { wire_len: s.wire_len },
            Ok(s) if VNET + s.len <= buf.len() => {
                // SAFETY: `vnet_at + VNET + len <= frame_size` (checked by parse_header), so
                // the source lies in this slot; `buf` holds the bytes (checked above).
                unsafe { std::ptr::copy_nonoverlapping(slot.add(s.vnet_at), buf.as_mut_ptr(), VNET + s.len) };
                RxFrame::Frame { len: VNET + s.len, vlan: s.vlan }
            }
            Ok(s) => RxFrame::Bad { wire_len: s.wire_len },
            Err(_) => RxFrame::Bad { wire_len: 0 },
        };
        status.store(TP_STATUS_KERNEL, Ordering::Release);
        self.rx.head = (self.rx.head + 1) % self.rx.frames;
        Some(out)
    }

    /// How many slots from the head, up to `max`, hold frames the kernel queued on the socket
    /// whole (`TP_STATUS_COPY`): the caller reads that many with one `recvmmsg` (the kernel
    /// queues each before it hands its slot over) and then releases them with
    /// [`Rings::rx_release`].
    pub fn rx_queued_run(&self, max: usize) -> usize {
        let mut n = 0;
        while n < max.min(self.rx.frames) {
            let slot = self.slot(&self.rx, (self.rx.head + n) % self.rx.frames);
            if self.status(slot).load(Ordering::Acquire) & (TP_STATUS_USER | TP_STATUS_COPY)
                != TP_STATUS_USER | TP_STATUS_COPY
            {
                break;
            }
            n += 1;
        }
        n
    }

    /// Hands the next `n` receive slots back to the kernel.
    pub fn rx_release(&mut self, n: usize) {
        for _ in 0..n.min(self.rx.frames) {
            let slot = self.slot(&self.rx, self.rx.head);
            self.status(slot).store(TP_STATUS_KERNEL, Ordering::Release);
            self.rx.head = (self.rx.head + 1) % self.rx.frames;
        }
    }

    /// Whether a frame is waiting in the receive ring.
    pub fn rx_ready(&self) -> bool {
        self.status(self.slot(&self.rx, self.rx.head)).load(Ordering::Acquire) & TP_STATUS_USER != 0
    }

    /// Writes one frame (its parts: virtio-net header first) into the next transmit slot.
    /// `false`: no free slot (the kernel has not sent what is there yet). The caller checks
    /// that the frame fits (`Geometry::tx_capacity`).
    ///
    /// The header's `hdr_len` is set to the whole frame so the kernel copies it into the
    /// skb: left to itself, `tpacket_snd` attaches the slot's pages to the skb and hands the
    /// slot back when the skb is orphaned, which a veth peer's stack does before it is done
    /// with the bytes.
    pub fn tx_push(&mut self, parts: &[IoPart<'_>]) -> bool {
        let slot = self.slot(&self.tx, self.tx.head);
        let status = self.status(slot);
        if status.load(Ordering::Acquire) & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING) != 0 {
            return false;
        }
        let mut at = HDR_LEN;
        for p in parts {
            let n = p.len().min(self.geo.frame_size - at);
            // SAFETY: `at + n <= frame_size`, inside this slot, which is ours (not sending).
            // `p` is a borrowed slice or guest memory valid for the call (`IoPart`).
            unsafe { p.copy_to(slot.add(at), n) };
            at += n;
        }
        let frame_len = at.saturating_sub(HDR_LEN + VNET) as u16;
        // SAFETY: `tp_len` (offset 4) and the virtio-net header's `hdr_len` (offset 2 of it)
        // are inside the slot, which is ours; plain stores.
        unsafe {
            slot.add(HDR_LEN + 2).cast::<[u8; 2]>().write(frame_len.to_le_bytes());
            slot.add(4).cast::<[u8; 4]>().write(((at - HDR_LEN) as u32).to_ne_bytes());
        }
        status.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.tx.head = (self.tx.head + 1) % self.tx.frames;
        self.tx_pending += 1;
        true
    }

    /// Frames written that the kernel has not taken yet.
    pub fn tx_pending(&self) -> usize {
        self.tx_pending
    }

    /// Hands the written frames to the kernel: `send(fd, NULL, 0, MSG_DONTWAIT)` sends every
    /// slot marked for sending, in order. The kernel may stop early (no memory for an skb,
    /// a device that dropped a frame: the slot is marked for sending again); what it left
    /// stays pending and goes with the next flush. `Ok(true)`: the ring is drained.
    pub fn tx_flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        if self.tx_pending == 0 {
            return Ok(true);
        }
        // SAFETY: send(2) with no buffer: the kernel reads the mapped ring.
        let ret = unsafe { libc::send(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        let err = (ret < 0).then(io::Error::last_os_error);
        while self.tx_pending > 0 {
            let slot = self.slot(&self.tx, self.tx_tail);
            if self.status(slot).load(Ordering::Acquire) & TP_STATUS_SEND_REQUEST != 0 {
                break;
            }
            self.tx_tail = (self.tx_tail + 1) % self.tx.frames;
            self.tx_pending -= 1;
        }
        match err {
            Some(e) if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS)) => Err(e),
            _ => Ok(self.tx_pending == 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(status: u32, len: u32, snap: u32, mac: u16, tci: u16, tpid: u16) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0..4].copy_from_slice(&status.to_ne_bytes());
        h[4..8].copy_from_slice(&len.to_ne_bytes());
        h[8..12].copy_from_slice(&snap.to_ne_bytes());
        h[12..14].copy_from_slice(&mac.to_ne_bytes());
        h[24..26].copy_from_slice(&tci.to_ne_bytes());
        h[26..28].copy_from_slice(&tpid.to_ne_bytes());
        h
    }

    #[test]
    fn geometry_fits_a_full_frame_with_a_tag() {
        let g = Geometry::for_mtu(1500);
        assert_eq!((g.frame_size, g.block_size, g.rx_frames, g.tx_frames), (2048, 32768, 512, 256));
        assert!(RX_MAC_OFF + L2_MAX + 1500 <= g.frame_size);
        assert!(VNET + L2_MAX + 1500 <= g.tx_capacity());
        let j = Geometry::for_mtu(9000);
        assert_eq!((j.frame_size, j.rx_frames), (16384, 64));
        let huge = Geometry::for_mtu(65535);
        assert_eq!((huge.frame_size, huge.block_size, huge.rx_frames, huge.tx_frames), (65536, 65536, 16, 8));
        for g in [g, j, huge] {
            for r in [g.rx_req(), g.tx_req()] {
                assert_eq!(r.block_size as usize % 4096, 0);
                assert_eq!(r.frame_nr, r.block_nr * (r.block_size / r.frame_size));
            }
        }
    }

    /// Plays the kernel: writes slot `i` of the receive ring.
    fn kernel_fills(r: &Rings, i: usize, h: [u8; HDR_LEN], bytes: &[u8]) {
        let slot = r.slot(&r.rx, i);
        // SAFETY: test mapping, slot `i` in bounds, lengths checked by the asserts.
        unsafe {
            std::ptr::copy_nonoverlapping(h.as_ptr(), slot, HDR_LEN);
            assert!(66 + bytes.len() <= r.geo.frame_size);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot.add(66), bytes.len());
        }
    }

    #[test]
    fn receive_ring_copies_good_slots_and_hands_every_slot_back() {
        let mut r = Rings::anonymous(Geometry::for_mtu(1500));
        let mut frame = vec![0u8; 10 + 60];
        frame[10..].copy_from_slice(&[0xab; 60]);
        kernel_fills(&r, 0, hdr(TP_STATUS_USER | TP_STATUS_VLAN_VALID, 60, 60, 76, 7, 0), &frame);
        kernel_fills(&r, 1, hdr(TP_STATUS_USER, 60, 60, 5, 0, 0), &[]);
        kernel_fills(&r, 2, hdr(TP_STATUS_USER | TP_STATUS_COPY, 65000, 1972, 76, 0, 0), &[]);
        kernel_fills(&r, 3, hdr(TP_STATUS_USER, 65000, 1972, 76, 0, 0), &[]);
        kernel_fills(&r, 4, hdr(TP_STATUS_USER, 60, 60000, 76, 0, 0), &[]);
        let mut buf = vec![0u8; MAX_TEST_BUF];
        assert_eq!(r.rx_next(&mut buf), Some(RxFrame::Frame { len: 70, vlan: Some((0x8100, 7)) }));
        assert_eq!(&buf[..70], &frame[..]);
        assert_eq!(r.rx_next(&mut buf), Some(RxFrame::Bad { wire_len: 0 }));
        assert_eq!(r.rx_next(&mut buf), Some(RxFrame::Queued));
        assert_eq!(r.rx_next(&mut buf), Some(RxFrame::Bad { wire_len: 65000 }));
        assert_eq!(r.rx_next(&mut buf), Some(RxFrame::Bad { wire_len: 0 }));
        assert!(!r.rx_ready());
        assert_eq!(r.rx_next(&mut buf), None);
        for i in 0..5 {
            assert_eq!(r.status(r.slot(&r.rx, i)).load(Ordering::Relaxed), TP_STATUS_KERNEL, "slot {i}");
        }
        // A buffer too small for the frame: refused, not overrun.
        kernel_fills(&r, 5, hdr(TP_STATUS_USER, 60, 60, 76, 0, 0), &frame);
        assert_eq!(r.rx_next(&mut buf[..20]), Some(RxFrame::Bad { wire_len: 60 }));
    }

    const MAX_TEST_BUF: usize = 4096;

    #[test]
    fn transmit_ring_fills_slots_in_order_and_stops_when_full() {
        let mut r = Rings::anonymous(Geometry::for_mtu(1500));
        let vnet = [0u8; VNET];
        let frame = [0x5a; 100];
        for i in 0..r.geo.tx_frames {
            assert!(r.tx_push(&[IoPart::Bytes(&vnet), IoPart::Bytes(&frame)]), "slot {i}");
        }
        assert_eq!(r.tx_pending(), r.geo.tx_frames);
        // Every slot waits for the kernel: no room.
        assert!(!r.tx_push(&[IoPart::Bytes(&vnet), IoPart::Bytes(&frame)]));
        let slot = r.slot(&r.tx, 0);
        // SAFETY: test mapping; reads inside slot 0.
        let (tp_len, hdr_len, byte) = unsafe {
            (
                u32::from_ne_bytes(*slot.add(4).cast::<[u8; 4]>()),
                u16::from_le_bytes(*slot.add(HDR_LEN + 2).cast::<[u8; 2]>()),
                *slot.add(HDR_LEN + VNET),
            )
        };
        assert_eq!((tp_len, hdr_len, byte), (110, 100, 0x5a));
        // The kernel sent slot 0: it takes the next frame.
        r.status(slot).store(0, Ordering::Release);
        assert!(r.tx_push(&[IoPart::Bytes(&vnet), IoPart::Bytes(&frame)]));
    }

    #[test]
    fn slot_header_is_checked_against_the_slot() {
        let ok = RxSlot::parse_header(&hdr(TP_STATUS_USER, 60, 60, 76, 0, 0), 2048).unwrap();
        assert_eq!(ok, RxSlot { copied: false, truncated: false, vnet_at: 66, len: 60, wire_len: 60, vlan: None });
        let tagged = RxSlot::parse_header(
            &hdr(TP_STATUS_USER | TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID, 60, 60, 76, 10, 0x88a8),
            2048,
        )
        .unwrap();
        assert_eq!(tagged.vlan, Some((0x88a8, 10)));
        let big = RxSlot::parse_header(&hdr(TP_STATUS_USER | TP_STATUS_COPY, 65000, 1972, 76, 0, 0), 2048).unwrap();
        assert!(big.copied && !big.truncated);
        let cut = RxSlot::parse_header(&hdr(TP_STATUS_USER, 65000, 1972, 76, 0, 0), 2048).unwrap();
        assert!(cut.truncated);
        // Past the slot, into the slot header, or wrapping: refused.
        assert_eq!(RxSlot::parse_header(&hdr(1, 60, 1973, 76, 0, 0), 2048), Err(BadSlot::OutOfBounds));
        assert_eq!(RxSlot::parse_header(&hdr(1, 60, 60, 41, 0, 0), 2048), Err(BadSlot::OutOfBounds));
        assert_eq!(RxSlot::parse_header(&hdr(1, 60, 60, 5, 0, 0), 2048), Err(BadSlot::OutOfBounds));
        assert_eq!(RxSlot::parse_header(&hdr(1, 60, u32::MAX, 76, 0, 0), 2048), Err(BadSlot::OutOfBounds));
        assert_eq!(RxSlot::parse(&[0u8; 31], 2048), Err(BadSlot::Short));
    }
}
