//! VLAN ids, sets and port modes.
//!
//! Read IEEE 802.1Q-2018 §9.6 (the VLAN tag) and Open vSwitch's `vlan_mode` documentation
//! (ovs-vswitchd.conf.db(5), table Port) first: vmnetd's modes are OVS's `access`, `trunk`,
//! `native-untagged` and `native-tagged`, with the same ingress and egress rules:
//!
//! | mode | untagged / VID-0 ingress | tagged VID v ingress | egress in VLAN v |
//! |---|---|---|---|
//! | access A | VLAN A | dropped | untagged (only v = A) |
//! | trunk S | dropped | VLAN v if v ∈ S | tagged (v ∈ S) |
//! | trunk S, native N untagged | VLAN N | VLAN v if v ∈ S ∪ {N} | untagged if v = N, else tagged |
//! | trunk S, native N tagged | VLAN N | VLAN v if v ∈ S ∪ {N} | tagged |
//!
//! VID 0 marks a priority-tagged frame (it belongs to the port's untagged VLAN); VID 4095 is
//! reserved and never valid. Valid VLANs are 1–4094.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const VID_MIN: u16 = 1;
pub const VID_MAX: u16 = 4094;

/// A valid VLAN id, 1–4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VlanError {
    #[error("VLAN id {0} is out of range (valid VLANs are 1-4094)")]
    OutOfRange(String),
    #[error("Invalid VLAN list {0:?}: {1}")]
    BadList(String, String),
}

impl VlanId {
    pub const DEFAULT: VlanId = VlanId(1);

    pub const fn new(v: u16) -> Option<VlanId> {
        if v >= VID_MIN && v <= VID_MAX {
            Some(VlanId(v))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for VlanId {
    type Err = VlanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse::<u16>().ok().and_then(VlanId::new).ok_or_else(|| VlanError::OutOfRange(s.trim().to_owned()))
    }
}

impl Serialize for VlanId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for VlanId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        u16::try_from(v)
            .ok()
            .and_then(VlanId::new)
            .ok_or_else(|| serde::de::Error::custom(VlanError::OutOfRange(v.to_string())))
    }
}

/// A set of VLANs as a 4096-bit bitmap (bit 0 and 4095 never set).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VlanSet([u64; 64]);

impl Default for VlanSet {
    fn default() -> Self {
        VlanSet([0; 64])
    }
}

impl VlanSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn all() -> Self {
        let mut s = Self::new();
        s.insert_range(VlanId(VID_MIN), VlanId(VID_MAX));
        s
    }

    pub fn insert(&mut self, v: VlanId) {
        self.0[usize::from(v.0 >> 6)] |= 1 << (v.0 & 63);
    }

    pub fn insert_range(&mut self, lo: VlanId, hi: VlanId) {
        for v in lo.0..=hi.0 {
            self.insert(VlanId(v));
        }
    }

    pub fn remove(&mut self, v: VlanId) {
        self.0[usize::from(v.0 >> 6)] &= !(1 << (v.0 & 63));
    }

    /// Membership of a raw VID (0 and 4095 are never members).
    #[inline]
    pub fn contains_raw(&self, vid: u16) -> bool {
        vid < 4096 && self.0[usize::from(vid >> 6)] & (1 << (vid & 63)) != 0
    }

    #[inline]
    pub fn contains(&self, v: VlanId) -> bool {
        self.contains_raw(v.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = VlanId> + '_ {
        (VID_MIN..=VID_MAX).filter(|v| self.contains_raw(*v)).map(VlanId)
    }

    /// Maximal runs of consecutive VLANs, as (first, last).
    pub fn ranges(&self) -> Vec<(VlanId, VlanId)> {
        let mut out: Vec<(VlanId, VlanId)> = Vec::new();
        for v in self.iter() {
            match out.last_mut() {
                Some((_, hi)) if hi.0 + 1 == v.0 => *hi = v,
                _ => out.push((v, v)),
            }
        }
        out
    }
}

impl fmt::Display for VlanSet {
    /// `10,20-30,100`, the form [`VlanSet::from_str`] parses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> =
            self.ranges().into_iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
        f.write_str(&parts.join(","))
    }
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VlanSet({self})")
    }
}

impl FromStr for VlanSet {
    type Err = VlanError;
    /// Parses `10,20-30,100`; every id must be 1–4094 and ranges must be ascending.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| VlanError::BadList(s.to_owned(), why.to_owned());
        let mut set = VlanSet::new();
        if s.trim().is_empty() {
            return Err(bad("empty"));
        }
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("empty element"));
            }
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (VlanId, VlanId) = (a.parse()?, b.parse()?);
                    if a > b {
                        return Err(bad(&format!("range {a}-{b} is descending")));
                    }
                    set.insert_range(a, b);
                }
                None => set.insert(part.parse()?),
            }
        }
        Ok(set)
    }
}

impl Serialize for VlanSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VlanSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The native VLAN of a trunk: frames without a tag belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Native {
    pub vid: VlanId,
    /// Egress in the native VLAN carries a tag (OVS `native-tagged`) instead of none.
    #[serde(default)]
    pub tagged: bool,
}

impl FromStr for Native {
    type Err = VlanError;
    /// `VID` or `VID:tagged` (also `VID:untagged`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (v, t) = match s.split_once(':') {
            Some((v, "tagged")) => (v, true),
            Some((v, "untagged")) => (v, false),
            Some(_) => return Err(VlanError::BadList(s.to_owned(), "expected VID, VID:tagged or VID:untagged".into())),
            None => (s, false),
        };
        Ok(Native { vid: v.parse()?, tagged: t })
    }
}

/// How a port takes part in VLANs.
// The trunk's 512-byte bitmap stays inline: `classify`/`egress` run per frame and read it
// with no pointer to chase, and modes live one per port, never in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum VlanMode {
    /// Untagged member of one VLAN.
    Access { vlan: VlanId },
    /// Tagged member of `vlans`, optionally with a native VLAN for untagged frames.
    Trunk {
        vlans: VlanSet,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        native: Option<Native>,
    },
}

impl Default for VlanMode {
    fn default() -> Self {
        VlanMode::Access { vlan: VlanId::DEFAULT }
    }
}

/// How a frame in some VLAN leaves a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressTagging {
    Untagged,
    Tagged,
}

/// The VLAN an ingress frame belongs to, or why it is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Vlan(VlanId),
    /// A tagged frame on an access port, or a VID the trunk does not carry.
    NotMember,
    /// An untagged (or priority-tagged) frame on a trunk without a native VLAN.
    UntaggedOnTrunk,
    /// VID 4095.
    ReservedVid,
}

impl VlanMode {
    pub fn access(v: VlanId) -> Self {
        VlanMode::Access { vlan: v }
    }

    /// The VLAN of a frame arriving with `vid` (`None`: untagged; `Some(0)`: priority-tagged).
    #[inline]
    pub fn classify(&self, vid: Option<u16>) -> Ingress {
        let vid = match vid {
            Some(4095) => return Ingress::ReservedVid,
            Some(0) | None => None,
            Some(v) => Some(v),
        };
        match (self, vid) {
            (VlanMode::Access { vlan }, None) => Ingress::Vlan(*vlan),
            (VlanMode::Access { .. }, Some(_)) => Ingress::NotMember,
            (VlanMode::Trunk { native: Some(n), .. }, None) => Ingress::Vlan(n.vid),
            (VlanMode::Trunk { native: None, .. }, None) => Ingress::UntaggedOnTrunk,
            (VlanMode::Trunk { vlans, native }, Some(v)) => {
                if vlans.contains_raw(v) || native.is_some_and(|n| n.vid.0 == v) {
                    // `v` is 1..=4094 here: 0 and 4095 were handled above.
                    Ingress::Vlan(VlanId(v))
                } else {
                    Ingress::NotMember
                }
            }
        }
    }

    /// How frames of VLAN `v` leave this port, or `None` if the port is not in `v`.
    #[inline]
    pub fn egress(&self, v: VlanId) -> Option<EgressTagging> {
        match self {
            VlanMode::Access { vlan } => (*vlan == v).then_some(EgressTagging::Untagged),
            VlanMode::Trunk { vlans, native } => match native {
                Some(n) if n.vid == v => Some(if n.tagged { EgressTagging::Tagged } else { EgressTagging::Untagged }),
                _ => vlans.contains(v).then_some(EgressTagging::Tagged),
            },
        }
    }

    /// Every VLAN this port is a member of.
    pub fn members(&self) -> VlanSet {
        match self {
            VlanMode::Access { vlan } => {
                let mut s = VlanSet::new();
                s.insert(*vlan);
                s
            }
            VlanMode::Trunk { vlans, native } => {
                let mut s = vlans.clone();
                if let Some(n) = native {
                    s.insert(n.vid);
                }
                s
            }
        }
    }
}

impl fmt::Display for VlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VlanMode::Access { vlan } => write!(f, "access {vlan}"),
            VlanMode::Trunk { vlans, native: None } => write!(f, "trunk {vlans}"),
            VlanMode::Trunk { vlans, native: Some(n) } => {
                write!(f, "trunk {vlans} native {}{}", n.vid, if n.tagged { ":tagged" } else { "" })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u16) -> VlanId {
        VlanId::new(n).unwrap()
    }

    #[test]
    fn vid_bounds() {
        assert!(VlanId::new(0).is_none());
        assert!(VlanId::new(4095).is_none());
        assert_eq!(VlanId::new(4094).unwrap().get(), 4094);
        assert_eq!(
            "4095".parse::<VlanId>().unwrap_err().to_string(),
            "VLAN id 4095 is out of range (valid VLANs are 1-4094)"
        );
        assert!("0".parse::<VlanId>().is_err());
        assert!("-1".parse::<VlanId>().is_err());
        assert!("ten".parse::<VlanId>().is_err());
        assert!(serde_json::from_str::<VlanId>("4095").is_err());
        assert!(serde_json::from_str::<VlanId>("70000").is_err());
    }

    #[test]
    fn set_parse_display_roundtrip() {
        let s: VlanSet = "10,20-23,4094,11".parse().unwrap();
        assert_eq!(s.to_string(), "10-11,20-23,4094");
        assert_eq!(s.len(), 7);
        assert!(s.contains(v(21)) && !s.contains(v(24)));
        assert!(!s.contains_raw(0) && !s.contains_raw(4095) && !s.contains_raw(9999));
        assert_eq!(VlanSet::all().len(), 4094);
        for bad in ["", "1,,2", "0", "4095", "30-20", "a-b", "1-4095"] {
            assert!(bad.parse::<VlanSet>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn native_parse() {
        assert_eq!("5".parse::<Native>().unwrap(), Native { vid: v(5), tagged: false });
        assert_eq!("5:tagged".parse::<Native>().unwrap(), Native { vid: v(5), tagged: true });
        assert!("5:maybe".parse::<Native>().is_err());
    }

    #[test]
    fn mode_serde_is_readable() {
        let m = VlanMode::Trunk { vlans: "10,20".parse().unwrap(), native: Some(Native { vid: v(1), tagged: false }) };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, r#"{"mode":"trunk","vlans":"10,20","native":{"vid":1,"tagged":false}}"#);
        assert_eq!(serde_json::from_str::<VlanMode>(&j).unwrap(), m);
        assert_eq!(m.to_string(), "trunk 10,20 native 1");
    }
}
