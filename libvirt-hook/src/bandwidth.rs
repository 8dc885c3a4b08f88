//! libvirt's `<bandwidth>` as vmnetd policers.
//!
//! libvirt states QoS from the guest's side: `<inbound>` is what the guest receives, which is
//! what the bridge sends the port (vmnetd's *egress* policer), and `<outbound>` is what the
//! guest sends, which is what the port sends the bridge (vmnetd's *ingress* policer).
//!
//! Units differ: libvirt's `average` and `peak` are KiB/s (1024 bytes per second) and `burst`
//! is KiB, while vmnetd takes kbit/s (1000 bit/s) and KB (1000 bytes). Conversions round up,
//! so a limit never ends up tighter than the one libvirt was given.
//!
//! vmnetd polices at one rate with one bucket. `peak` (a second, faster rate for up to
//! `burst`) and `floor` (a guaranteed minimum, libvirt networks only) have no counterpart:
//! they are reported as ignored, never silently dropped.
//!
//! The element is read as written for every interface but converted (and checked) only for
//! interfaces that become vmnetd ports: libvirt accepts rates vmnetd refuses (anything up to
//! 2^64-1 KiB/s), and a domain vmnetd does not manage must never fail because of them.

use crate::xml::Element;

/// Fastest policer accepted, kbit/s: 1 Tbit/s, beyond any link a guest has, and small enough
/// that vmnetd's byte arithmetic on it stays far inside 64 bits.
pub const MAX_RATE_KBIT: u64 = 1_000_000_000;
/// Largest bucket accepted, KB (1000 bytes): 1 TB, for the same reasons.
pub const MAX_BURST_KB: u64 = 1_000_000_000;

/// One `<inbound>` or `<outbound>` element, its attributes as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmlRate {
    /// KiB/s.
    pub average: Option<String>,
    /// KiB/s.
    pub peak: Option<String>,
    /// KiB.
    pub burst: Option<String>,
    /// KiB/s.
    pub floor: Option<String>,
}

/// An interface's `<bandwidth>`, as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmlBandwidth {
    /// Traffic to the guest.
    pub inbound: Option<XmlRate>,
    /// Traffic from the guest.
    pub outbound: Option<XmlRate>,
}

/// Reads `<bandwidth>` the way libvirt does: the first `<inbound>` and the first `<outbound>`.
pub fn read(el: &Element) -> XmlBandwidth {
    let rate = |r: &Element| {
        let a = |n: &str| r.attr(n).map(str::to_owned);
        XmlRate { average: a("average"), peak: a("peak"), burst: a("burst"), floor: a("floor") }
    };
    XmlBandwidth { inbound: el.child("inbound").map(rate), outbound: el.child("outbound").map(rate) }
}

/// One vmnetd policer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policer {
    pub rate_kbit: u64,
    /// `None`: vmnetd's default bucket.
    pub burst_kb: Option<u64>,
}

/// What an interface's `<bandwidth>` asks of its vmnetd port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policing {
    /// From `<inbound>`: the port's egress policer (`egress_rate_kbit`, `egress_burst_kb`).
    pub to_guest: Option<Policer>,
    /// From `<outbound>`: the port's ingress policer (`ingress_rate_kbit`, `ingress_burst_kb`).
    pub from_guest: Option<Policer>,
    /// What vmnetd does not apply (`peak`, `floor`), one line each, for the user.
    pub ignored: Vec<String>,
}

impl XmlBandwidth {
    /// The policers, or why the element cannot be applied.
    pub fn policing(&self) -> Result<Policing, String> {
        let mut ignored = Vec::new();
        let to_guest = self.inbound.as_ref().map(|r| policer("inbound", r, &mut ignored)).transpose()?.flatten();
        let from_guest = self.outbound.as_ref().map(|r| policer("outbound", r, &mut ignored)).transpose()?.flatten();
        Ok(Policing { to_guest, from_guest, ignored })
    }
}

/// A libvirt number: decimal digits only (libvirt writes nothing else), within 64 bits.
fn number(el: &str, name: &str, v: &str) -> Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("<bandwidth><{el} {name}='{v}'> is not a whole number"));
    }
    v.parse::<u64>().map_err(|_| format!("<bandwidth><{el} {name}='{v}'> is too large"))
}

/// KiB/s → kbit/s, rounded up; `None` past [`MAX_RATE_KBIT`].
pub fn kib_per_s_to_kbit(kib: u64) -> Option<u64> {
    kib.checked_mul(1024 * 8).map(|bits| bits.div_ceil(1000)).filter(|&k| k <= MAX_RATE_KBIT)
}

/// KiB → KB, rounded up; `None` past [`MAX_BURST_KB`].
pub fn kib_to_kb(kib: u64) -> Option<u64> {
    kib.checked_mul(1024).map(|bytes| bytes.div_ceil(1000)).filter(|&k| k <= MAX_BURST_KB)
}

/// The policer one `<inbound>`/`<outbound>` asks for; `None` when it only has a `floor`.
fn policer(el: &str, r: &XmlRate, ignored: &mut Vec<String>) -> Result<Option<Policer>, String> {
    // Checked even though they are ignored: a typo there is a typo in the whole element.
    let peak = r.peak.as_deref().map(|v| number(el, "peak", v)).transpose()?;
    let floor = r.floor.as_deref().map(|v| number(el, "floor", v)).transpose()?;
    if let Some(p) = peak {
        ignored.push(format!(
            "<bandwidth><{el} peak='{p}'> ignored: vmnetd polices at the average rate only (burst= sizes its bucket)"
        ));
    }
    if let Some(f) = floor {
        ignored.push(format!("<bandwidth><{el} floor='{f}'> ignored: vmnetd has no guaranteed minimum rate"));
    }
    let Some(avg) = r.average.as_deref() else {
        if r.peak.is_some() || r.burst.is_some() {
            return Err(format!("<bandwidth><{el}>: peak= and burst= need average="));
        }
        if floor.is_some() {
            return Ok(None);
        }
        return Err(format!("<bandwidth><{el}> needs average='KiB/s'"));
    };
    let avg = number(el, "average", avg)?;
    if avg == 0 {
        // libvirt reads 0 as "no limit" and drops the element when it writes the XML back.
        return Err(format!("<bandwidth><{el} average='0'> is no rate; remove <{el}> for no limit"));
    }
    let rate_kbit = kib_per_s_to_kbit(avg).ok_or_else(|| {
        format!("<bandwidth><{el} average='{avg}'> KiB/s is more than vmnetd polices ({MAX_RATE_KBIT} kbit/s)")
    })?;
    let burst_kb = match r.burst.as_deref() {
        None => None,
        Some(b) => {
            let b = number(el, "burst", b)?;
            if b == 0 {
                return Err(format!(
                    "<bandwidth><{el} burst='0'> is an empty bucket; remove burst= for vmnetd's default"
                ));
            }
            Some(kib_to_kb(b).ok_or_else(|| {
                format!("<bandwidth><{el} burst='{b}'> KiB is more than vmnetd allows ({MAX_BURST_KB} KB)")
            })?)
        }
    };
    Ok(Some(Policer { rate_kbit, burst_kb }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(inner: &str) -> Result<Policing, String> {
        let el = crate::xml::parse(&format!("<bandwidth>{inner}</bandwidth>")).unwrap();
        read(&el).policing()
    }

    #[test]
    fn units_are_converted_rounding_up() {
        // 1000 KiB/s = 1000 * 1024 * 8 bit/s = 8192 kbit/s exactly.
        assert_eq!(kib_per_s_to_kbit(1000), Some(8192));
        // 1 KiB/s = 8.192 kbit/s.
        assert_eq!(kib_per_s_to_kbit(1), Some(9));
        assert_eq!(kib_to_kb(1000), Some(1024));
        // 1 KiB = 1.024 KB.
        assert_eq!(kib_to_kb(1), Some(2));
        assert_eq!(kib_to_kb(125), Some(128));
        // The ceilings, and overflow.
        assert_eq!(kib_per_s_to_kbit(122_070_312), Some(999_999_996));
        assert_eq!(kib_per_s_to_kbit(122_070_313), None);
        assert_eq!(kib_per_s_to_kbit(u64::MAX), None);
        assert_eq!(kib_to_kb(u64::MAX), None);
    }

    #[test]
    fn inbound_polices_to_the_guest_and_outbound_from_it() {
        let p = parse("<inbound average='1000' burst='1000'/><outbound average='125'/>").unwrap();
        assert_eq!(p.to_guest, Some(Policer { rate_kbit: 8192, burst_kb: Some(1024) }));
        assert_eq!(p.from_guest, Some(Policer { rate_kbit: 1024, burst_kb: None }), "no burst: the default bucket");
        assert!(p.ignored.is_empty());
        let p = parse("<outbound average='2000' burst='64'/>").unwrap();
        assert_eq!((p.to_guest, p.from_guest), (None, Some(Policer { rate_kbit: 16384, burst_kb: Some(66) })));
        assert_eq!(parse("").unwrap(), Policing::default());
    }

    #[test]
    fn peak_and_floor_are_reported_as_ignored() {
        let p = parse("<inbound average='1000' peak='5000' burst='1024' floor='200'/>").unwrap();
        assert_eq!(p.to_guest, Some(Policer { rate_kbit: 8192, burst_kb: Some(1049) }));
        assert_eq!(p.ignored.len(), 2, "{:?}", p.ignored);
        assert!(p.ignored[0].contains("peak='5000'> ignored"), "{:?}", p.ignored);
        assert!(p.ignored[1].contains("floor='200'> ignored"), "{:?}", p.ignored);
        // A floor alone (libvirt networks) asks for no policing.
        let p = parse("<inbound floor='100'/>").unwrap();
        assert_eq!(p.to_guest, None);
        assert_eq!(p.ignored.len(), 1);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let cases = [
            ("<inbound average='0'/>", "average='0'> is no rate"),
            ("<outbound average='1000' burst='0'/>", "burst='0'> is an empty bucket"),
            ("<inbound average='-5'/>", "is not a whole number"),
            ("<inbound average='+5'/>", "is not a whole number"),
            ("<inbound average=' 5'/>", "is not a whole number"),
            ("<inbound average=''/>", "is not a whole number"),
            ("<inbound average='1e3'/>", "is not a whole number"),
            ("<inbound average='99999999999999999999'/>", "is too large"),
            ("<inbound average='18446744073709551615'/>", "more than vmnetd polices"),
            ("<outbound average='122070313'/>", "more than vmnetd polices"),
            ("<outbound average='10' burst='18446744073709551615'/>", "more than vmnetd allows"),
            ("<inbound average='10' peak='fast'/>", "peak='fast'> is not a whole number"),
            ("<inbound floor='x'/>", "floor='x'> is not a whole number"),
            ("<inbound burst='10'/>", "need average="),
            ("<outbound/>", "needs average="),
        ];
        for (inner, want) in cases {
            let e = parse(inner).unwrap_err();
            assert!(e.contains(want), "{inner}: {e}");
        }
    }
}
