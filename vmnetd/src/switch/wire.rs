//! Ethernet II and IEEE 802.1Q headers as typed views over bytes, in smoltcp's `wire` style:
//! [`EthernetFrame<T>`] reads (and, over `&mut [u8]`, writes) a buffer in place after one
//! length check; [`EthernetRepr`] is the parsed value and emits itself back.
//!
//! Layout (offsets in bytes):
//! ```text
//!  0      6      12          14       16          18
//!  | dst  | src  | TPID 8100 | TCI    | ethertype | payload     (802.1Q tagged)
//!  | dst  | src  | ethertype | payload                          (untagged)
//! ```
//! TCI = PCP (3 bits) | DEI (1 bit) | VID (12 bits). Only a TPID of 0x8100 is a VLAN tag here;
//! an 802.1ad (0x88a8) outer tag is opaque payload, as on a plain 802.1Q bridge.

use super::mac::MacAddr;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
/// Offset of the TPID/ethertype field; a tag is inserted or removed here.
pub const TAG_OFFSET: usize = 12;
/// Bytes the switch needs to see of a frame to decide on it (a tagged header).
pub const HEAD_LEN: usize = ETH_HLEN + VLAN_HLEN;

pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Why bytes are not an Ethernet frame the switch can handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("Frame of {0} bytes is shorter than an Ethernet header")]
    Runt(usize),
    #[error("Frame of {0} bytes ends inside its 802.1Q tag")]
    TruncatedTag(usize),
}

/// An 802.1Q Tag Control Information field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tci(pub u16);

impl Tci {
    pub fn new(pcp: u8, dei: bool, vid: u16) -> Tci {
        Tci((u16::from(pcp & 7) << 13) | (u16::from(dei) << 12) | (vid & 0x0fff))
    }
    pub fn vid(self) -> u16 {
        self.0 & 0x0fff
    }
    pub fn pcp(self) -> u8 {
        (self.0 >> 13) as u8
    }
    pub fn dei(self) -> bool {
        self.0 & 0x1000 != 0
    }
    /// The same priority and DEI with another VID.
    pub fn with_vid(self, vid: u16) -> Tci {
        Tci((self.0 & 0xf000) | (vid & 0x0fff))
    }
    /// The four tag bytes as they appear on the wire (TPID, TCI).
    pub fn tag_bytes(self) -> [u8; VLAN_HLEN] {
        let t = ETHERTYPE_VLAN.to_be_bytes();
        let c = self.0.to_be_bytes();
        [t[0], t[1], c[0], c[1]]
    }
}

/// A read (or, over mutable bytes, write) view of an Ethernet frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after checking it holds the whole (possibly tagged) header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < ETH_HLEN {
            return Err(WireError::Runt(len));
        }
        if self.outer_ethertype() == ETHERTYPE_VLAN && len < HEAD_LEN {
            return Err(WireError::TruncatedTag(len));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn dst(&self) -> MacAddr {
        let b = self.b();
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    pub fn src(&self) -> MacAddr {
        let b = self.b();
        MacAddr([b[6], b[7], b[8], b[9], b[10], b[11]])
    }

    /// The ethertype right after the addresses: 0x8100 for a tagged frame.
    pub fn outer_ethertype(&self) -> u16 {
        let b = self.b();
        u16::from_be_bytes([b[12], b[13]])
    }

    /// The 802.1Q tag, if the frame has one.
    pub fn tci(&self) -> Option<Tci> {
        if self.outer_ethertype() == ETHERTYPE_VLAN {
            let b = self.b();
            Some(Tci(u16::from_be_bytes([b[14], b[15]])))
        } else {
            None
        }
    }

    /// The ethertype of the payload (after the tag, if any).
    pub fn ethertype(&self) -> u16 {
        if self.outer_ethertype() == ETHERTYPE_VLAN {
            let b = self.b();
            u16::from_be_bytes([b[16], b[17]])
        } else {
            self.outer_ethertype()
        }
    }

    pub fn header_len(&self) -> usize {
        if self.outer_ethertype() == ETHERTYPE_VLAN {
            HEAD_LEN
        } else {
            ETH_HLEN
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_dst(&mut self, m: MacAddr) {
        self.bm()[0..6].copy_from_slice(&m.0);
    }
    pub fn set_src(&mut self, m: MacAddr) {
        self.bm()[6..12].copy_from_slice(&m.0);
    }
    pub fn set_outer_ethertype(&mut self, t: u16) {
        self.bm()[12..14].copy_from_slice(&t.to_be_bytes());
    }
    /// Overwrites the TCI of a tagged frame.
    pub fn set_tci(&mut self, tci: Tci) {
        self.bm()[14..16].copy_from_slice(&tci.0.to_be_bytes());
    }
}

/// A parsed Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub tci: Option<Tci>,
    pub ethertype: u16,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(f: &EthernetFrame<T>) -> Result<Self, WireError> {
        f.check_len()?;
        Ok(EthernetRepr { dst: f.dst(), src: f.src(), tci: f.tci(), ethertype: f.ethertype() })
    }

    pub fn header_len(&self) -> usize {
        if self.tci.is_some() {
            HEAD_LEN
        } else {
            ETH_HLEN
        }
    }

    /// Writes the header into the start of `buf` (which must be at least `header_len()` long).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..6].copy_from_slice(&self.dst.0);
        buf[6..12].copy_from_slice(&self.src.0);
        match self.tci {
            Some(t) => {
                buf[12..16].copy_from_slice(&t.tag_bytes());
                buf[16..18].copy_from_slice(&self.ethertype.to_be_bytes());
            }
            None => buf[12..14].copy_from_slice(&self.ethertype.to_be_bytes()),
        }
    }
}

/// How a frame's VLAN tag changes on the way to one egress port. The switch decides it once
/// per (frame, port); the edge applies it while it copies, using [`TagAction::splice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagAction {
    /// Leave the frame as it is.
    Keep,
    /// Insert an 802.1Q tag with this TCI at offset 12.
    Push(Tci),
    /// Remove the 802.1Q tag.
    Pop,
    /// Replace the tag's TCI (a priority-tagged frame leaving tagged in its VLAN).
    SetTci(Tci),
}

/// The byte-level form of a [`TagAction`]: the output frame is `frame[..12]`, then `insert`,
/// then `frame[12 + skip..]`. Every action fits this one rule, so an edge that copies
/// between scattered buffers implements a single splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Splice {
    pub insert: Option<[u8; VLAN_HLEN]>,
    pub skip: usize,
}

impl Splice {
    /// Length of the output frame for an input of `len` bytes.
    pub fn out_len(&self, len: usize) -> usize {
        len + self.insert.map_or(0, |_| VLAN_HLEN) - self.skip
    }

    /// Change in length: +4 (push), -4 (pop) or 0.
    pub fn delta(&self) -> isize {
        self.insert.map_or(0, |_| VLAN_HLEN as isize) - self.skip as isize
    }

    pub fn is_identity(&self) -> bool {
        self.insert.is_none() && self.skip == 0
    }

    /// Copies `src` into `dst` applying the splice; returns the bytes written, or `None` if
    /// `dst` is too small. `src` must hold at least the tag when `skip` is 4.
    pub fn copy(&self, src: &[u8], dst: &mut [u8]) -> Option<usize> {
        let out = self.out_len(src.len());
        if dst.len() < out || src.len() < TAG_OFFSET + self.skip {
            return None;
        }
        dst[..TAG_OFFSET].copy_from_slice(&src[..TAG_OFFSET]);
        let mut at = TAG_OFFSET;
        if let Some(tag) = self.insert {
            dst[at..at + VLAN_HLEN].copy_from_slice(&tag);
            at += VLAN_HLEN;
        }
        let rest = &src[TAG_OFFSET + self.skip..];
        dst[at..at + rest.len()].copy_from_slice(rest);
        Some(out)
    }
}

impl TagAction {
    pub fn splice(self) -> Splice {
        match self {
            TagAction::Keep => Splice { insert: None, skip: 0 },
            TagAction::Push(t) => Splice { insert: Some(t.tag_bytes()), skip: 0 },
            TagAction::Pop => Splice { insert: None, skip: VLAN_HLEN },
            TagAction::SetTci(t) => Splice { insert: Some(t.tag_bytes()), skip: VLAN_HLEN },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An untagged ARP request from 52:54:00:00:00:01 (first bytes only).
    static UNTAGGED: [u8; 16] =
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x01];
    // The same, tagged PCP 5 DEI 0 VID 10.
    static TAGGED: [u8; 20] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0xa0, 0x0a, 0x08, 0x06,
        0x00, 0x01,
    ];

    #[test]
    fn test_deconstruct_untagged() {
        let f = EthernetFrame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst(), MacAddr::BROADCAST);
        assert_eq!(f.src(), MacAddr([0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(f.tci(), None);
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert_eq!(f.payload(), &[0x00, 0x01]);
    }

    #[test]
    fn test_deconstruct_tagged() {
        let f = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        let t = f.tci().unwrap();
        assert_eq!((t.pcp(), t.dei(), t.vid()), (5, false, 10));
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.payload(), &[0x00, 0x01]);
    }

    #[test]
    fn test_construct_roundtrip() {
        for bytes in [&UNTAGGED[..], &TAGGED[..]] {
            let repr = EthernetRepr::parse(&EthernetFrame::new_unchecked(bytes)).unwrap();
            let mut out = vec![0u8; bytes.len()];
            repr.emit(&mut out);
            out[repr.header_len()..].copy_from_slice(&bytes[repr.header_len()..]);
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn short_frames_are_named() {
        assert_eq!(EthernetFrame::new_checked(&UNTAGGED[..13]).unwrap_err(), WireError::Runt(13));
        assert_eq!(EthernetFrame::new_checked(&[][..]).unwrap_err(), WireError::Runt(0));
        assert_eq!(EthernetFrame::new_checked(&TAGGED[..17]).unwrap_err(), WireError::TruncatedTag(17));
        // An untagged header alone (no payload) is fine.
        assert!(EthernetFrame::new_checked(&UNTAGGED[..14]).is_ok());
    }

    #[test]
    fn tci_fields() {
        let t = Tci::new(7, true, 4094);
        assert_eq!(t.0, 0xfffe);
        assert_eq!(t.with_vid(1), Tci::new(7, true, 1));
        assert_eq!(t.tag_bytes(), [0x81, 0x00, 0xff, 0xfe]);
    }

    #[test]
    fn splices_push_pop_and_retag() {
        let mut out = [0u8; 32];
        // Push VID 10 PCP 5 onto the untagged frame: the tagged frame.
        let n = TagAction::Push(Tci::new(5, false, 10)).splice().copy(&UNTAGGED, &mut out).unwrap();
        assert_eq!(&out[..n], &TAGGED[..]);
        // Pop: back to untagged.
        let n2 = TagAction::Pop.splice().copy(&TAGGED, &mut out).unwrap();
        assert_eq!(&out[..n2], &UNTAGGED[..]);
        // Retag keeps length.
        let s = TagAction::SetTci(Tci::new(5, false, 20)).splice();
        let n3 = s.copy(&TAGGED, &mut out).unwrap();
        assert_eq!(n3, TAGGED.len());
        assert_eq!(EthernetFrame::new_unchecked(&out[..n3]).tci().unwrap().vid(), 20);
        assert_eq!(s.delta(), 0);
        assert!(TagAction::Keep.splice().is_identity());
        // Too small a destination, or popping what is not there.
        assert_eq!(TagAction::Push(Tci(1)).splice().copy(&UNTAGGED, &mut [0u8; 16]), None);
        assert_eq!(TagAction::Pop.splice().copy(&UNTAGGED[..14], &mut out), None);
    }
}
