//! The `ovs-ofctl` flow syntax, for the subset the switch supports, and its printer.
//!
//! A rule is a list of `field=value` and shorthand tokens separated by commas and/or
//! whitespace, then `actions=` and a comma-separated action list:
//!
//! ```text
//! priority=100,in_port=vm1,arp,arp_tpa=10.0.0.2 actions=output:vm2
//! ```
//!
//! Validation follows `ovs-ofctl`: every field's prerequisites must be named too (`nw_*`
//! needs `ip` or `arp`, `tp_*` needs `tcp`/`udp`/`tcp6`/`udp6`, `arp_*` needs `arp`,
//! `icmp_type` needs `icmp`, `ipv6_*` needs `ipv6`), values must be in range, no field may
//! be given twice (shorthands set `dl_type` and `nw_proto`), and `drop` must stand alone.
//! Masked values are stored with the bits outside the mask cleared, and a field with an
//! all-zero mask is a wildcard, so printing and reparsing yields the same rule.
//! Unsupported relative to OVS: `icmp_code`, `icmpv6_type`, `nw_proto` with `arp` (the
//! opcode), `table` other than 0, numeric port numbers as such (they are port names here),
//! and actions beyond `drop normal flood output mod_vlan_vid strip_vlan`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::*;

/// A rule that does not parse: the offending token and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{token}: {reason}")]
pub struct ParseError {
    pub token: String,
    pub reason: String,
}

fn err<T>(token: &str, reason: impl Into<String>) -> Result<T, ParseError> {
    // Long tokens are cut so that an error message stays readable.
    let token = if token.len() > 80 {
        let mut end = 80;
        while !token.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &token[..end])
    } else {
        token.to_owned()
    };
    Err(ParseError { token, reason: reason.into() })
}

/// Parses a whole rule: match fields, then `actions=`.
pub fn parse_rule(s: &str) -> Result<FlowRule, ParseError> {
    check_len(s)?;
    let Some(at) = find_actions(s) else {
        return err(s, "missing `actions=` (use `actions=drop` for a drop rule)");
    };
    let mut rule = parse_fields(&s[..at], true)?;
    rule.actions = parse_actions(&s[at + "actions=".len()..])?;
    Ok(rule)
}

/// Parses a match without actions or rule metadata (`priority`, `cookie`, timeouts): the
/// input of a `trace` command or a `flow del` filter.
pub fn parse_match(s: &str) -> Result<Match, ParseError> {
    check_len(s)?;
    if let Some(at) = find_actions(s) {
        return err(&s[at..], "actions are not allowed here");
    }
    Ok(parse_fields(s, false)?.matches)
}

fn check_len(s: &str) -> Result<(), ParseError> {
    if s.len() > MAX_RULE_LEN {
        return err(s, format!("rule is {} bytes long, more than {MAX_RULE_LEN}", s.len()));
    }
    Ok(())
}

fn is_sep(c: char) -> bool {
    c == ',' || c.is_ascii_whitespace()
}

/// The byte offset of the `actions=` token, if any.
fn find_actions(s: &str) -> Option<usize> {
    s.match_indices("actions=").map(|(i, _)| i).find(|&i| i == 0 || s[..i].ends_with(is_sep))
}

fn tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_sep).filter(|t| !t.is_empty())
}

/// Which fields were named, and by which token (for prerequisite errors).
#[derive(Default)]
struct Seen<'a> {
    fields: Vec<(&'static str, &'a str)>,
}

impl<'a> Seen<'a> {
    /// Records `slot` as set by `tok`, or fails if it was set before.
    fn claim(&mut self, slot: &'static str, tok: &'a str) -> Result<(), ParseError> {
        if let Some((_, prev)) = self.fields.iter().find(|(f, _)| *f == slot) {
            return err(tok, format!("{slot} is already set (by `{prev}`)"));
        }
        self.fields.push((slot, tok));
        Ok(())
    }
    fn token(&self, slot: &str) -> Option<&'a str> {
        self.fields.iter().find(|(f, _)| *f == slot).map(|(_, t)| *t)
    }
}

fn parse_fields(s: &str, meta: bool) -> Result<FlowRule, ParseError> {
    let mut r = FlowRule::default();
    let mut seen = Seen::default();
    let m = &mut r.matches;
    for tok in tokens(s) {
        let Some((name, val)) = tok.split_once('=') else {
            let (dl_type, proto) = match tok {
                "ip" => (ETH_TYPE_IP, None),
                "arp" => (ETH_TYPE_ARP, None),
                "ipv6" => (ETH_TYPE_IPV6, None),
                "icmp" => (ETH_TYPE_IP, Some(IPPROTO_ICMP)),
                "tcp" => (ETH_TYPE_IP, Some(IPPROTO_TCP)),
                "udp" => (ETH_TYPE_IP, Some(IPPROTO_UDP)),
                "icmp6" => (ETH_TYPE_IPV6, Some(IPPROTO_ICMPV6)),
                "tcp6" => (ETH_TYPE_IPV6, Some(IPPROTO_TCP)),
                "udp6" => (ETH_TYPE_IPV6, Some(IPPROTO_UDP)),
                _ => return err(tok, "unknown field or shorthand (expected field=value or one of: ip arp ipv6 icmp tcp udp icmp6 tcp6 udp6)"),
            };
            seen.claim("dl_type", tok)?;
            m.dl_type = Some(dl_type);
            if let Some(p) = proto {
                seen.claim("nw_proto", tok)?;
                m.nw_proto = Some(p);
            }
            continue;
        };
        let meta_only = |tok: &str| -> Result<(), ParseError> {
            if meta {
                Ok(())
            } else {
                err(tok, "rule metadata is not allowed here")
            }
        };
        match name {
            "priority" => {
                meta_only(tok)?;
                seen.claim("priority", tok)?;
                r.priority = num(tok, val, u16::MAX.into())? as u16;
            }
            "cookie" => {
                meta_only(tok)?;
                seen.claim("cookie", tok)?;
                r.cookie = num(tok, val, u64::MAX)?;
            }
            "idle_timeout" => {
                meta_only(tok)?;
                seen.claim("idle_timeout", tok)?;
                r.idle_timeout = num(tok, val, u16::MAX.into())? as u16;
            }
            "hard_timeout" => {
                meta_only(tok)?;
                seen.claim("hard_timeout", tok)?;
                r.hard_timeout = num(tok, val, u16::MAX.into())? as u16;
            }
            "table" => {
                meta_only(tok)?;
                seen.claim("table", tok)?;
                if num(tok, val, u8::MAX.into())? != 0 {
                    return err(tok, "only table 0 is supported");
                }
            }
            "in_port" => {
                seen.claim("in_port", tok)?;
                m.in_port = Some(port_name(tok, val)?);
            }
            "dl_src" => {
                seen.claim("dl_src", tok)?;
                m.dl_src = mac_masked(tok, val)?;
            }
            "dl_dst" => {
                seen.claim("dl_dst", tok)?;
                m.dl_dst = mac_masked(tok, val)?;
            }
            "dl_vlan" => {
                seen.claim("dl_vlan", tok)?;
                let v = num(tok, val, u16::MAX.into())? as u16;
                if v > 4095 && v != VLAN_NONE {
                    return err(tok, "VLAN id must be 0..=4095, or 0xffff for untagged frames");
                }
                m.dl_vlan = Some(v);
            }
            "dl_type" => {
                seen.claim("dl_type", tok)?;
                let v = num(tok, val, u16::MAX.into())? as u16;
                if v < 0x0600 {
                    return err(tok, "ethertype must be at least 0x0600");
                }
                if v == 0x8100 || v == 0x88a8 {
                    return err(tok, "dl_type is the ethertype after the VLAN tag; match tags with dl_vlan");
                }
                m.dl_type = Some(v);
            }
            "nw_src" | "arp_spa" => {
                seen.claim("nw_src", tok)?;
                m.nw_src = ipv4_masked(tok, val)?;
            }
            "nw_dst" | "arp_tpa" => {
                seen.claim("nw_dst", tok)?;
                m.nw_dst = ipv4_masked(tok, val)?;
            }
            "ipv6_src" => {
                seen.claim("ipv6_src", tok)?;
                m.ipv6_src = ipv6_masked(tok, val)?;
            }
            "ipv6_dst" => {
                seen.claim("ipv6_dst", tok)?;
                m.ipv6_dst = ipv6_masked(tok, val)?;
            }
            "nw_proto" => {
                seen.claim("nw_proto", tok)?;
                m.nw_proto = Some(num(tok, val, u8::MAX.into())? as u8);
            }
            // `tcp_src`, `udp_src` (OVS's names for the same field) are accepted too.
            "tp_src" | "tcp_src" | "udp_src" => {
                seen.claim("tp_src", tok)?;
                m.tp_src = u16_masked(tok, val)?;
            }
            "tp_dst" | "tcp_dst" | "udp_dst" => {
                seen.claim("tp_dst", tok)?;
                m.tp_dst = u16_masked(tok, val)?;
            }
            "icmp_type" => {
                seen.claim("icmp_type", tok)?;
                m.icmp_type = Some(num(tok, val, u8::MAX.into())? as u8);
            }
            "actions" => return err(tok, "`actions=` must come last"),
            _ => return err(tok, format!("unknown field `{name}`")),
        }
    }
    check_prerequisites(&r.matches, &seen)?;
    Ok(r)
}

fn check_prerequisites(m: &Match, seen: &Seen<'_>) -> Result<(), ParseError> {
    let dl = m.dl_type;
    let is = |t: u16| dl == Some(t);
    let ip_any = is(ETH_TYPE_IP) || is(ETH_TYPE_IPV6);
    for slot in ["nw_src", "nw_dst"] {
        if let Some(tok) = seen.token(slot) {
            if tok.starts_with("arp_") && !is(ETH_TYPE_ARP) {
                return err(tok, "needs `arp` (dl_type=0x0806)");
            }
            if !is(ETH_TYPE_IP) && !is(ETH_TYPE_ARP) {
                return err(tok, "needs `ip` or `arp` (dl_type=0x0800 or 0x0806)");
            }
        }
    }
    for slot in ["ipv6_src", "ipv6_dst"] {
        if let Some(tok) = seen.token(slot) {
            if !is(ETH_TYPE_IPV6) {
                return err(tok, "needs `ipv6` (dl_type=0x86dd)");
            }
        }
    }
    if let Some(tok) = seen.token("nw_proto") {
        if !ip_any {
            return err(tok, "needs `ip` or `ipv6` (dl_type=0x0800 or 0x86dd)");
        }
    }
    for slot in ["tp_src", "tp_dst"] {
        if let Some(tok) = seen.token(slot) {
            if !ip_any || !matches!(m.nw_proto, Some(IPPROTO_TCP | IPPROTO_UDP)) {
                return err(tok, "needs `tcp`, `udp`, `tcp6` or `udp6`");
            }
        }
    }
    if let Some(tok) = seen.token("icmp_type") {
        if !is(ETH_TYPE_IP) || m.nw_proto != Some(IPPROTO_ICMP) {
            return err(tok, "needs `icmp` (ICMPv4; icmpv6_type is not supported)");
        }
    }
    Ok(())
}

/// A decimal or `0x` hexadecimal number no larger than `max`.
fn num(tok: &str, s: &str, max: u64) -> Result<u64, ParseError> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return err(tok, "missing value");
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return err(tok, "not a number (decimal or 0x-prefixed hexadecimal)");
    }
    match u64::from_str_radix(digits, radix) {
        Ok(v) if v <= max => Ok(v),
        _ => err(tok, format!("value out of range (at most {max})")),
    }
}

fn port_name(tok: &str, s: &str) -> Result<String, ParseError> {
    if s.is_empty() {
        return err(tok, "missing port name");
    }
    if s.len() > MAX_PORT_NAME {
        return err(tok, format!("port name longer than {MAX_PORT_NAME} bytes"));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':')) {
        return err(tok, "port names may only hold letters, digits and _ - . @ :");
    }
    Ok(s.to_owned())
}

/// `value` or `value/mask` with a type-specific parser for each half.
fn split_mask(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    }
}

fn mac_masked(tok: &str, s: &str) -> Result<Option<Masked<MacAddr>>, ParseError> {
    let (v, m) = split_mask(s);
    let mac = |x: &str| MacAddr::from_str(x).or_else(|_| err(tok, "not a MAC address like 52:54:00:12:34:56"));
    let value = mac(v)?;
    let mask = match m {
        Some(m) => mac(m)?,
        None => MacAddr::BROADCAST,
    };
    let value = MacAddr::from_u64(value.to_u64() & mask.to_u64());
    Ok((!mask.is_zero()).then_some(Masked { value, mask }))
}

fn ipv4_masked(tok: &str, s: &str) -> Result<Option<Masked<Ipv4Addr>>, ParseError> {
    let (v, m) = split_mask(s);
    let value: Ipv4Addr = v.parse().or_else(|_| err(tok, "not an IPv4 address (A.B.C.D[/N or /A.B.C.D])"))?;
    let mask = match m {
        None => u32::MAX,
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()) => match m.parse::<u32>() {
            Ok(n @ 0..=32) => prefix_mask32(n),
            _ => return err(tok, "prefix length must be 0..=32"),
        },
        Some(m) => u32::from(m.parse::<Ipv4Addr>().or_else(|_| err(tok, "not a prefix length or a netmask"))?),
    };
    let value = Ipv4Addr::from(u32::from(value) & mask);
    Ok((mask != 0).then_some(Masked { value, mask: Ipv4Addr::from(mask) }))
}

fn ipv6_masked(tok: &str, s: &str) -> Result<Option<Masked<Ipv6Addr>>, ParseError> {
    let (v, m) = split_mask(s);
    let value: Ipv6Addr = v.parse().or_else(|_| err(tok, "not an IPv6 address (ADDR[/N or /MASK])"))?;
    let mask = match m {
        None => u128::MAX,
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()) => match m.parse::<u32>() {
            Ok(n @ 0..=128) => prefix_mask128(n),
            _ => return err(tok, "prefix length must be 0..=128"),
        },
        Some(m) => u128::from(m.parse::<Ipv6Addr>().or_else(|_| err(tok, "not a prefix length or a netmask"))?),
    };
    let value = Ipv6Addr::from(u128::from(value) & mask);
    Ok((mask != 0).then_some(Masked { value, mask: Ipv6Addr::from(mask) }))
}

fn u16_masked(tok: &str, s: &str) -> Result<Option<Masked<u16>>, ParseError> {
    let (v, m) = split_mask(s);
    let value = num(tok, v, u16::MAX.into())? as u16;
    let mask = match m {
        Some(m) => num(tok, m, u16::MAX.into())? as u16,
        None => u16::MAX,
    };
    Ok((mask != 0).then_some(Masked { value: value & mask, mask }))
}

pub(crate) fn prefix_mask32(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        u32::MAX << (32 - n)
    }
}

pub(crate) fn prefix_mask128(n: u32) -> u128 {
    if n == 0 {
        0
    } else {
        u128::MAX << (128 - n)
    }
}

fn parse_actions(s: &str) -> Result<Vec<Action>, ParseError> {
    let toks: Vec<&str> = tokens(s).take(MAX_ACTIONS + 1).collect();
    if toks.len() > MAX_ACTIONS {
        return err(toks[MAX_ACTIONS], format!("more than {MAX_ACTIONS} actions"));
    }
    let mut out = Vec::with_capacity(toks.len());
    let mut drop_tok = None;
    for tok in &toks {
        let tok = *tok;
        let (name, arg) = match tok.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (tok, None),
        };
        let no_arg = |a: Option<&str>| match a {
            None => Ok(()),
            Some(_) => err(tok, "this action takes no argument"),
        };
        match name {
            "drop" => {
                no_arg(arg)?;
                drop_tok = Some(tok);
            }
            "normal" | "NORMAL" => {
                no_arg(arg)?;
                out.push(Action::Normal);
            }
            "flood" | "FLOOD" => {
                no_arg(arg)?;
                out.push(Action::Flood);
            }
            "strip_vlan" => {
                no_arg(arg)?;
                out.push(Action::StripVlan);
            }
            "output" => {
                let Some(p) = arg else {
                    return err(tok, "output needs a port: output:PORT");
                };
                out.push(Action::Output(port_name(tok, p)?));
            }
            "mod_vlan_vid" => {
                let Some(v) = arg else {
                    return err(tok, "mod_vlan_vid needs a VLAN id: mod_vlan_vid:N");
                };
                let v = num(tok, v, u16::MAX.into())? as u16;
                if !(1..=4094).contains(&v) {
                    return err(tok, "VLAN id must be 1..=4094");
                }
                out.push(Action::ModVlanVid(v));
            }
            _ => {
                return err(tok, "unknown action (supported: drop normal flood output:PORT mod_vlan_vid:N strip_vlan)")
            }
        }
    }
    match drop_tok {
        Some(tok) if toks.len() > 1 => err(tok, "`drop` must be the only action"),
        _ => Ok(out),
    }
}

// ---- printing ----------------------------------------------------------------------------

struct MaskedMac<'a>(&'a Masked<MacAddr>);
impl fmt::Display for MaskedMac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.value)?;
        if self.0.mask != MacAddr::BROADCAST {
            write!(f, "/{}", self.0.mask)?;
        }
        Ok(())
    }
}

struct MaskedV4<'a>(&'a Masked<Ipv4Addr>);
impl fmt::Display for MaskedV4<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.value)?;
        let m = u32::from(self.0.mask);
        let n = m.leading_ones();
        if n == 32 {
            Ok(())
        } else if prefix_mask32(n) == m {
            write!(f, "/{n}")
        } else {
            write!(f, "/{}", self.0.mask)
        }
    }
}

struct MaskedV6<'a>(&'a Masked<Ipv6Addr>);
impl fmt::Display for MaskedV6<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.value)?;
        let m = u128::from(self.0.mask);
        let n = m.leading_ones();
        if n == 128 {
            Ok(())
        } else if prefix_mask128(n) == m {
            write!(f, "/{n}")
        } else {
            write!(f, "/{}", self.0.mask)
        }
    }
}

struct MaskedU16<'a>(&'a Masked<u16>);
impl fmt::Display for MaskedU16<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.mask == u16::MAX {
            write!(f, "{}", self.0.value)
        } else {
            write!(f, "0x{:x}/0x{:x}", self.0.value, self.0.mask)
        }
    }
}

impl Match {
    /// The match as a list of `field=value` tokens, shorthands first.
    pub fn tokens(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut proto_done = false;
        match (self.dl_type, self.nw_proto) {
            (Some(ETH_TYPE_IP), p) => {
                let s = match p {
                    Some(IPPROTO_ICMP) => "icmp",
                    Some(IPPROTO_TCP) => "tcp",
                    Some(IPPROTO_UDP) => "udp",
                    _ => "ip",
                };
                proto_done = s != "ip";
                out.push(s.to_owned());
            }
            (Some(ETH_TYPE_IPV6), p) => {
                let s = match p {
                    Some(IPPROTO_ICMPV6) => "icmp6",
                    Some(IPPROTO_TCP) => "tcp6",
                    Some(IPPROTO_UDP) => "udp6",
                    _ => "ipv6",
                };
                proto_done = s != "ipv6";
                out.push(s.to_owned());
            }
            (Some(ETH_TYPE_ARP), _) => out.push("arp".to_owned()),
            (Some(t), _) => out.push(format!("dl_type=0x{t:04x}")),
            (None, _) => {}
        }
        if let Some(p) = &self.in_port {
            out.push(format!("in_port={p}"));
        }
        if let Some(v) = self.dl_vlan {
            if v == VLAN_NONE {
                out.push("dl_vlan=0xffff".to_owned());
            } else {
                out.push(format!("dl_vlan={v}"));
            }
        }
        if let Some(m) = &self.dl_src {
            out.push(format!("dl_src={}", MaskedMac(m)));
        }
        if let Some(m) = &self.dl_dst {
            out.push(format!("dl_dst={}", MaskedMac(m)));
        }
        let arp = self.dl_type == Some(ETH_TYPE_ARP);
        if let Some(m) = &self.nw_src {
            out.push(format!("{}={}", if arp { "arp_spa" } else { "nw_src" }, MaskedV4(m)));
        }
        if let Some(m) = &self.nw_dst {
            out.push(format!("{}={}", if arp { "arp_tpa" } else { "nw_dst" }, MaskedV4(m)));
        }
        if let Some(m) = &self.ipv6_src {
            out.push(format!("ipv6_src={}", MaskedV6(m)));
        }
        if let Some(m) = &self.ipv6_dst {
            out.push(format!("ipv6_dst={}", MaskedV6(m)));
        }
        if let (Some(p), false) = (self.nw_proto, proto_done) {
            out.push(format!("nw_proto={p}"));
        }
        if let Some(m) = &self.tp_src {
            out.push(format!("tp_src={}", MaskedU16(m)));
        }
        if let Some(m) = &self.tp_dst {
            out.push(format!("tp_dst={}", MaskedU16(m)));
        }
        if let Some(t) = self.icmp_type {
            out.push(format!("icmp_type={t}"));
        }
        out
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tokens().join(","))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Normal => f.write_str("NORMAL"),
            Action::Flood => f.write_str("FLOOD"),
            Action::Output(p) => write!(f, "output:{p}"),
            Action::ModVlanVid(v) => write!(f, "mod_vlan_vid:{v}"),
            Action::StripVlan => f.write_str("strip_vlan"),
        }
    }
}

/// Renders an action list (`drop` when empty).
pub fn actions_to_string(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "drop".to_owned();
    }
    actions.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

impl FlowRule {
    /// The rule without its actions: metadata that differs from the defaults, then the match.
    pub fn match_tokens(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.priority != DEFAULT_PRIORITY {
            out.push(format!("priority={}", self.priority));
        }
        if self.cookie != 0 {
            out.push(format!("cookie=0x{:x}", self.cookie));
        }
        if self.idle_timeout != 0 {
            out.push(format!("idle_timeout={}", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            out.push(format!("hard_timeout={}", self.hard_timeout));
        }
        out.extend(self.matches.tokens());
        out
    }
}

/// `priority=100,arp,in_port=vm1,arp_tpa=10.0.0.2 actions=output:vm2`: what [`parse_rule`]
/// reads back to the same rule.
impl fmt::Display for FlowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.match_tokens();
        if !m.is_empty() {
            write!(f, "{} ", m.join(","))?;
        }
        write!(f, "actions={}", actions_to_string(&self.actions))
    }
}
