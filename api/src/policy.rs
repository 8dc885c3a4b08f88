//! Policy on the built-in bridge: flow rules (in `ovs-ofctl` syntax, parsed by the daemon),
//! `trace`, and mirrors.

use serde::{Deserialize, Serialize};

use crate::ifname::IfName;
use crate::proto::{ApiError, ErrorKind, Source};
use crate::vlan::VlanId;

/// Most rules one request carries (`flow add`, `flow replace`).
pub const MAX_RULES_PER_REQUEST: usize = 65536;
/// Most mirrors per bridge.
pub const MAX_MIRRORS: usize = 32;

/// `flow add` (rules added one by one, each replacing a rule with the same match and
/// priority) and `flow replace` (the bridge's whole rule set swapped at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowMod {
    pub bridge: IfName,
    pub rules: Vec<String>,
}

/// `flow del`: rules naming at least the filter's fields with its values (with `strict`:
/// exactly its match and priority); every rule without a filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDel {
    pub bridge: IfName,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub strict: bool,
}

/// One installed rule, as `ovs-ofctl dump-flows` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub cookie: u64,
    pub duration_secs: f64,
    pub table: u8,
    pub priority: u16,
    pub n_packets: u64,
    pub n_bytes: u64,
    pub idle_age_secs: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    /// The match, in rule syntax (`priority` and metadata not included).
    #[serde(rename = "match")]
    pub matches: String,
    pub actions: String,
}

/// Result of `flow add/del/replace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowChange {
    pub added: usize,
    pub removed: usize,
    pub rules: usize,
}

/// `trace BR FLOW`: `FLOW` is a match (`in_port=vm1,dl_src=…,tcp,tp_dst=22`) whose values
/// make the frame; `in_port` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceReq {
    pub bridge: IfName,
    pub flow: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceInfo {
    /// The explanation, like `ovs-appctl ofproto/trace`.
    pub text: String,
    /// The rule that matched, in rule syntax, if any.
    #[serde(default)]
    pub rule: Option<String>,
    /// Ports a copy would leave by (mirror copies included), in order.
    pub outputs: Vec<String>,
    /// Why the frame would be dropped, if it would.
    #[serde(default)]
    pub drop: Option<String>,
}

/// A mirror: copies of what the selected ports receive (`select_src`) and send
/// (`select_dst`), in the selected VLANs (all if none), to one output port (which then
/// carries nothing else) or to every port of an output VLAN. With no port selected, every
/// port is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub bridge: IfName,
    pub name: String,
    #[serde(default)]
    pub select_src: Vec<IfName>,
    #[serde(default)]
    pub select_dst: Vec<IfName>,
    #[serde(default)]
    pub select_vlan: Vec<VlanId>,
    #[serde(default)]
    pub output_port: Option<IfName>,
    #[serde(default)]
    pub output_vlan: Option<VlanId>,
}

impl MirrorSpec {
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::new(ErrorKind::InvalidArgument, m));
        let n = &self.name;
        if n.is_empty()
            || n.len() > 32
            || !n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad(format!("mirror name {n:?} must be 1-32 characters from A-Z a-z 0-9 . _ -"));
        }
        match (&self.output_port, self.output_vlan) {
            (Some(_), Some(_)) => return bad("a mirror has one output: --output or --output-vlan".into()),
            (None, None) => return bad("a mirror needs an output: --output PORT or --output-vlan VID".into()),
            _ => {}
        }
        if let Some(o) = &self.output_port {
            if self.select_src.contains(o) || self.select_dst.contains(o) {
                return bad(format!("the mirror's output port {o} cannot also be selected"));
            }
        }
        if self.select_src.len() + self.select_dst.len() > 4096 {
            return bad("too many selected ports".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRef {
    pub bridge: IfName,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorInfo {
    #[serde(flatten)]
    pub spec: MirrorSpec,
    pub packets: u64,
    pub bytes: u64,
    pub source: Source,
}
