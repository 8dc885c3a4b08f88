//! OpenFlow-style flow rules for the built-in bridge: pure logic, no I/O, no clock, no locks.
//!
//! This is the switch-core foundation of issue 16; it is not wired into the datapath yet.
//!
//! - [`parse`]: `ovs-ofctl add-flow` syntax for the supported subset ([`parse_rule`],
//!   [`parse_match`]) and the printer back to it (`Display` on [`FlowRule`] and [`Match`]).
//! - [`key`]: [`FlowKey`], the fields of one frame, extracted from its bytes without ever
//!   panicking ([`FlowKey::extract`]).
//! - [`classify`]: [`Classifier`], a tuple-space search (one hash table per distinct mask,
//!   as OVS's dpcls) with per-rule counters, timeouts and a generation number, and
//!   [`Classifier::trace`], the structured explanation behind a `trace` command.
//!
//! Semantics follow Open vSwitch where the subset overlaps:
//! - a rule matches when every field it names matches; fields it does not name are wildcards;
//! - the highest priority wins; among matching rules of equal priority the one installed
//!   first wins (OVS leaves this undefined; a rule replaced by `insert` counts as installed
//!   at the replacement);
//! - fields of a header the frame does not carry (or carries truncated) are *absent*, and a
//!   rule naming an absent field does not match (OVS reads them as zero; the prerequisites
//!   make the two agree on every well-formed frame);
//! - `nw_src`/`nw_dst` are the IPv4 addresses of an IP packet or the sender/target protocol
//!   addresses of an ARP packet, as in OVS, where `arp_spa`/`arp_tpa` are aliases of them.

pub mod classify;
pub mod key;
pub mod parse;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, Ipv6Addr};

use super::mac::MacAddr;

pub use classify::{
    Classifier, InstallError, Installed, Nanos, ResolvedAction, RuleId, RuleStats, Trace, TraceRule, Verdict, MAX_RULES,
};
pub use key::{key_from_match, EthKey, FlowKey};
pub use parse::{actions_to_string, parse_match, parse_rule, ParseError};

/// The priority of a rule that does not name one (as in OVS).
pub const DEFAULT_PRIORITY: u16 = 32768;
/// `dl_vlan` value matching frames without an 802.1Q tag.
pub const VLAN_NONE: u16 = 0xffff;
/// Longest rule text accepted by the parser, in bytes.
pub const MAX_RULE_LEN: usize = 4096;
/// Most actions one rule may carry.
pub const MAX_ACTIONS: usize = 32;
/// Longest port name accepted in `in_port=` and `output:`.
pub const MAX_PORT_NAME: usize = 64;

pub const ETH_TYPE_IP: u16 = 0x0800;
pub const ETH_TYPE_ARP: u16 = 0x0806;
pub const ETH_TYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// A value and the bits of it that matter (`value & !mask == 0` after parsing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Masked<T> {
    pub value: T,
    pub mask: T,
}

/// What a rule matches on. `None` is a wildcard. Port names stay names: they are resolved
/// to port ids when the rule is installed ([`Classifier::insert`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Match {
    pub in_port: Option<String>,
    pub dl_src: Option<Masked<MacAddr>>,
    pub dl_dst: Option<Masked<MacAddr>>,
    /// A VLAN id (0..=4095) matching tagged frames, or [`VLAN_NONE`] for untagged ones.
    pub dl_vlan: Option<u16>,
    /// The ethertype after the 802.1Q tag, if any.
    pub dl_type: Option<u16>,
    /// IPv4 source, or ARP sender protocol address (`arp_spa`).
    pub nw_src: Option<Masked<Ipv4Addr>>,
    /// IPv4 destination, or ARP target protocol address (`arp_tpa`).
    pub nw_dst: Option<Masked<Ipv4Addr>>,
    pub ipv6_src: Option<Masked<Ipv6Addr>>,
    pub ipv6_dst: Option<Masked<Ipv6Addr>>,
    /// IPv4 protocol or IPv6 next header (of the fixed header).
    pub nw_proto: Option<u8>,
    pub tp_src: Option<Masked<u16>>,
    pub tp_dst: Option<Masked<u16>>,
    /// ICMPv4 type.
    pub icmp_type: Option<u8>,
}

/// One action. A rule with no actions drops (printed and parsed as `drop`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// The normal L2 pipeline (VLAN classification, learning, forwarding).
    Normal,
    /// Every port but the ingress port.
    Flood,
    Output(String),
    /// Set (or push) the 802.1Q VLAN id, 1..=4094.
    ModVlanVid(u16),
    StripVlan,
}

/// A parsed rule, as `ovs-ofctl add-flow` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowRule {
    pub priority: u16,
    pub cookie: u64,
    /// Seconds without a hit after which the rule expires; 0 = never.
    pub idle_timeout: u16,
    /// Seconds after installation at which the rule expires; 0 = never.
    pub hard_timeout: u16,
    pub matches: Match,
    /// Empty = drop.
    pub actions: Vec<Action>,
}

impl Default for FlowRule {
    fn default() -> Self {
        FlowRule {
            priority: DEFAULT_PRIORITY,
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
            matches: Match::default(),
            actions: Vec::new(),
        }
    }
}
