//! `MacAddr`: a 48-bit Ethernet address (IEEE 802), parsed from and shown as
//! `aa:bb:cc:dd:ee:ff`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid MAC address {0:?}: expected six hex bytes like 52:54:00:12:34:56")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub const fn new(b: [u8; 6]) -> Self {
        MacAddr(b)
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(MacAddr(b.get(..6)?.try_into().ok()?))
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The address as the low 48 bits of a `u64` (first octet most significant).
    #[inline]
    pub const fn to_u64(&self) -> u64 {
        let m = self.0;
        u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
    }

    /// Reads the 6 bytes at `b[at..at + 6]` as the low 48 bits of a `u64`, with one 8-byte
    /// load when the slice allows it. `b` must hold at least `at + 6` bytes.
    #[inline]
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        if let Some(w) = b.get(at..at + 8) {
            // Eight bytes are there: one load, keep the first six.
            let w: [u8; 8] = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]];
            u64::from_be_bytes(w) >> 16
        } else {
            let m = &b[at..at + 6];
            u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
        }
    }

    pub const fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Group bit (I/G) set: multicast or broadcast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// A unicast address usable as a station address (not group, not all-zero).
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// Locally administered (U/L bit set).
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// IEEE 802.1D reserved link-local group addresses 01:80:c2:00:00:0x (STP, LACP, LLDP...),
    /// which a bridge must not forward.
    pub fn is_link_local(&self) -> bool {
        self.0[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && self.0[5] & 0xf0 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_show_roundtrip() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in
            ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:00", "5:54:00:ab:cd:0f", "zz:54:00:ab:cd:0f", "525400abcd0f"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn u64_forms() {
        let m: MacAddr = "52:54:00:ab:cd:0f".parse().unwrap();
        assert_eq!(m.to_u64(), 0x5254_00ab_cd0f);
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        assert_eq!(MacAddr::u64_at(&b, 0), 0x0102_0304_0506);
        assert_eq!(MacAddr::u64_at(&b, 6), 0x0708_090a_0b0c);
        assert_eq!(MacAddr::u64_at(&b, 8), 0x090a_0b0c_0d0e);
    }

    #[test]
    fn address_classes() {
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(!MacAddr::ZERO.is_unicast());
        let stp: MacAddr = "01:80:c2:00:00:00".parse().unwrap();
        assert!(stp.is_link_local());
        let lldp: MacAddr = "01:80:c2:00:00:0e".parse().unwrap();
        assert!(lldp.is_link_local());
        let v6mc: MacAddr = "33:33:00:00:00:01".parse().unwrap();
        assert!(v6mc.is_multicast() && !v6mc.is_link_local());
        let vm: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert!(vm.is_unicast() && vm.is_local());
    }
}
