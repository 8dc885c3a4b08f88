//! Ports of the switch: identity, configuration, and counters.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::mac::MacAddr;
use super::vlan::VlanMode;

/// A port's index in its [`super::Switch`]. Ids of removed ports are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(u32);

impl PortId {
    /// A port no switch has (ports are far fewer than 2^32).
    pub const NONE: PortId = PortId(u32::MAX);

    pub fn from_index(i: usize) -> PortId {
        PortId(u32::try_from(i).unwrap_or(u32::MAX))
    }
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Default L3 MTU of a port: frames up to MTU + 14 (+ 4 when tagged) bytes pass.
pub const DEFAULT_MTU: u32 = 1500;
/// Default cap on the addresses one port may have learned.
pub const DEFAULT_PORT_MAX_MACS: usize = 4096;

/// What the switch needs to know about a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    pub mode: VlanMode,
    /// Largest payload (L3 MTU) this port sends or takes; longer frames are dropped unless
    /// they are GSO super-frames that the edge segments or hands over whole.
    pub mtu: u32,
    /// Cap on learned addresses (0: the port learns nothing).
    pub max_macs: usize,
    /// Declared addresses of the device behind the port: installed as static entries in
    /// every VLAN of the port.
    pub macs: Vec<MacAddr>,
    /// Port security: only frames whose source is one of `macs` are accepted.
    pub lock_macs: bool,
    /// An isolated port exchanges frames only with ports that are not isolated (as the
    /// kernel bridge's `isolated` flag and libvirt's `<port isolated='yes'/>`).
    pub isolated: bool,
    /// Ingress policing: frames from the port beyond this rate are dropped.
    pub policer: Option<Policer>,
    /// Egress policing: frames to the port beyond this rate are dropped.
    pub egress_policer: Option<Policer>,
}

/// A token bucket on what a port receives (OVS's `ingress_policing_rate`/`_burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policer {
    /// Sustained rate, kbit/s (1000 bit/s), at least 1.
    pub rate_kbit: u64,
    /// Bucket size in bytes; at least [`Policer::MIN_BURST`], so one GSO super-frame fits.
    pub burst_bytes: u64,
}

impl Policer {
    /// The smallest bucket: one 64 KiB GSO super-frame and a tagged header.
    pub const MIN_BURST: u64 = 65536 + 18;

    /// A policer of `rate_kbit` kbit/s with a bucket of `burst_kbyte` KB (1000 bytes); by
    /// default 80 % of one second of the rate, as OVS's `ingress_policing_burst` (a smaller
    /// bucket starves TCP: one GSO super-frame dropped is some 45 segments lost at once).
    /// Both are clamped to what works (see the fields).
    pub fn new(rate_kbit: u64, burst_kbyte: Option<u64>) -> Policer {
        let rate_kbit = rate_kbit.max(1);
        let burst = burst_kbyte.map_or(rate_kbit.saturating_mul(100), |b| b.saturating_mul(1000));
        Policer { rate_kbit, burst_bytes: burst.max(Self::MIN_BURST) }
    }
}

/// The running state of a [`Policer`]: tokens in millibytes, refilled from the clock the
/// caller passes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    tokens_mb: u64,
    last: u64,
    started: bool,
}

impl Bucket {
    /// Takes `len` bytes at `now_ns`: true if they fit the rate.
    #[inline]
    pub fn take(&mut self, p: &Policer, len: usize, now_ns: u64) -> bool {
        let cap = p.burst_bytes.saturating_mul(1000);
        if !self.started {
            (self.started, self.tokens_mb, self.last) = (true, cap, now_ns);
        }
        // Capped (about 18 minutes: any bucket a valid rate can fill is full by then), so the
        // product below stays far inside u128.
        let dt = now_ns.saturating_sub(self.last).min(1 << 40);
        if dt > 0 {
            // rate_kbit * 1000 / 8 bytes/s = rate_kbit * 125 B/s = rate_kbit * 125_000 mB/s.
            let add = u128::from(p.rate_kbit) * 125_000 * u128::from(dt) / 1_000_000_000;
            self.tokens_mb = u128::from(self.tokens_mb).saturating_add(add).min(u128::from(cap)) as u64;
            self.last = now_ns;
        }
        let need = (len as u64).saturating_mul(1000);
        if self.tokens_mb >= need {
            self.tokens_mb -= need;
            true
        } else {
            false
        }
    }
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            mode: VlanMode::default(),
            mtu: DEFAULT_MTU,
            max_macs: DEFAULT_PORT_MAX_MACS,
            macs: Vec::new(),
            lock_macs: false,
            isolated: false,
            policer: None,
            egress_policer: None,
        }
    }
}

/// Why a frame was dropped. Ingress reasons count on the port the frame came in on, egress
/// reasons on the port it was to leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header (14 bytes).
    Runt = 0,
    /// Ends inside its 802.1Q tag.
    TruncatedTag,
    /// Tagged with the reserved VID 4095.
    ReservedVid,
    /// Source address is multicast, broadcast or all-zero.
    BadSource,
    /// Destination is an IEEE 802.1D reserved link-local group (STP, LACP, LLDP, 802.1X):
    /// a bridge does not forward those.
    LinkLocal,
    /// Tagged on an access port, or with a VID the trunk does not carry.
    VlanNotAllowed,
    /// Untagged on a trunk without a native VLAN.
    UntaggedOnTrunk,
    /// Source is not one of the port's locked MACs.
    MacLocked,
    /// Source is another port's static (declared) address.
    SourceIsStaticElsewhere,
    /// Destination was learned on the ingress port itself.
    SamePort,
    /// No other port is a member of the frame's VLAN.
    NoDestination,
    /// Longer than the egress port's MTU (and not a GSO frame).
    Mtu,
    /// The egress peer had no room (guest RX ring empty, socket buffer full).
    NoRoom,
    /// The egress edge failed to send (I/O error, bad guest buffer).
    TxError,
    /// The ingress edge failed to read a frame (bad guest descriptor, I/O error).
    RxError,
    /// A guest's offload request does not fit its frame or its features: a GSO type it did
    /// not negotiate, a segment size below the smallest MSS or above the frame, checksum
    /// offsets or header lengths outside the frame, impossible IP/TCP header lengths.
    BadGso,
    /// A flow rule dropped it, or its actions sent it nowhere.
    Policy,
    /// Over the port's ingress policing rate.
    Policed,
    /// Between two isolated ports.
    Isolated,
    /// Received on a port that is a mirror's output (such a port only sends copies).
    MirrorPort,
    /// Over the egress port's policing rate.
    EgressPoliced,
}

impl DropReason {
    pub const COUNT: usize = 21;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Runt,
        DropReason::TruncatedTag,
        DropReason::ReservedVid,
        DropReason::BadSource,
        DropReason::LinkLocal,
        DropReason::VlanNotAllowed,
        DropReason::UntaggedOnTrunk,
        DropReason::MacLocked,
        DropReason::SourceIsStaticElsewhere,
        DropReason::SamePort,
        DropReason::NoDestination,
        DropReason::Mtu,
        DropReason::NoRoom,
        DropReason::TxError,
        DropReason::RxError,
        DropReason::BadGso,
        DropReason::Policy,
        DropReason::Policed,
        DropReason::Isolated,
        DropReason::MirrorPort,
        DropReason::EgressPoliced,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::TruncatedTag => "truncated_tag",
            DropReason::ReservedVid => "reserved_vid",
            DropReason::BadSource => "bad_source",
            DropReason::LinkLocal => "link_local",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::UntaggedOnTrunk => "untagged_on_trunk",
            DropReason::MacLocked => "mac_locked",
            DropReason::SourceIsStaticElsewhere => "source_is_static_elsewhere",
            DropReason::SamePort => "same_port",
            DropReason::NoDestination => "no_destination",
            DropReason::Mtu => "mtu",
            DropReason::NoRoom => "no_room",
            DropReason::TxError => "tx_error",
            DropReason::RxError => "rx_error",
            DropReason::BadGso => "bad_gso",
            DropReason::Policy => "policy",
            DropReason::Policed => "policed",
            DropReason::Isolated => "isolated",
            DropReason::MirrorPort => "mirror_port",
            DropReason::EgressPoliced => "egress_policed",
        }
    }

    /// Whether this drop is counted on the egress port (else on the ingress port).
    pub fn is_egress(self) -> bool {
        matches!(self, DropReason::Mtu | DropReason::NoRoom | DropReason::TxError | DropReason::EgressPoliced)
    }
}

/// Per-port counters. `rx_*` count every frame offered to the switch by this port (dropped
/// or not); `tx_*` count frames the switch handed to this port's edge, minus those the edge
/// reported it could not deliver. So for every frame: it is dropped once at ingress, or it
/// is sent or egress-dropped once per destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames that were flooded (unknown unicast, broadcast, multicast) from this port.
    pub rx_flooded: u64,
    pub drops: [u64; DropReason::COUNT],
    /// Addresses learned on this port.
    pub learned: u64,
    /// Learned addresses of this port evicted to make room.
    pub evicted: u64,
    /// Learned addresses of this port that aged out.
    pub aged: u64,
    /// Addresses that moved to this port from another.
    pub moved_in: u64,
}

impl PortCounters {
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn rx_drops(&self) -> u64 {
        DropReason::ALL.iter().filter(|r| !r.is_egress()).map(|r| self.dropped(*r)).sum()
    }

    pub fn tx_drops(&self) -> u64 {
        DropReason::ALL.iter().filter(|r| r.is_egress()).map(|r| self.dropped(*r)).sum()
    }

    /// Non-zero drop counters by name, for display.
    pub fn drop_list(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL.iter().filter(|r| self.dropped(**r) > 0).map(|r| (r.name(), self.dropped(*r))).collect()
    }
}

impl From<&PortCounters> for crate::api::Counters {
    fn from(c: &PortCounters) -> crate::api::Counters {
        crate::api::Counters {
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            rx_flooded: c.rx_flooded,
            learned: c.learned,
            evicted: c.evicted,
            aged: c.aged,
            moved_in: c.moved_in,
            drops: c.drop_list().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn a_bucket_passes_its_rate_and_its_burst() {
        // 8 Mbit/s = 1 MB/s, bucket 100 KB.
        let p = Policer::new(8000, Some(100));
        let mut b = Bucket::default();
        let mut passed = 0u64;
        // 10 s of 1500-byte frames offered at 10 MB/s.
        let mut t = 0u64;
        while t < 10_000_000_000 {
            if b.take(&p, 1500, t) {
                passed += 1500;
            }
            t += 150_000;
        }
        let expected = 10 * 1_000_000 + 100_000;
        assert!(passed.abs_diff(expected) <= 1500, "{passed} vs {expected}");
        // Idle: the bucket refills to its size, not beyond.
        let mut burst = 0;
        t += 60_000_000_000;
        while b.take(&p, 1000, t) {
            burst += 1000;
        }
        assert_eq!(burst, 100_000);
        // A bucket never goes below one GSO super-frame.
        assert_eq!(Policer::new(1, Some(1)).burst_bytes, Policer::MIN_BURST);
    }
}
