//! Flow rules: arbitrary rule texts through the parser (what parses prints back to itself),
//! installed in a classifier, and arbitrary frames classified against them: no panics, and
//! the rule a frame hits matches it and is the best of the rules that match it.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmnetd::switch::flow::{parse_match, parse_rule, Classifier, FlowKey, Installed};
use vmnetd::switch::PortId;

#[derive(Debug, Arbitrary)]
struct Input {
    rules: Vec<String>,
    frames: Vec<(u8, Vec<u8>)>,
    /// Seconds at which to expire rules between frames.
    clock: Vec<u16>,
    trace: String,
}

/// Port names: `p0`..`p7` exist, anything else does not.
fn resolve(name: &str) -> Option<PortId> {
    match name.strip_prefix('p')?.parse::<usize>() {
        Ok(i) if i < 8 => Some(PortId::from_index(i)),
        _ => None,
    }
}

fuzz_target!(|input: Input| {
    let mut c = Classifier::new();
    for text in input.rules.iter().take(64) {
        let Ok(rule) = parse_rule(text) else { continue };
        let printed = rule.to_string();
        assert_eq!(parse_rule(&printed).as_ref(), Ok(&rule), "{printed}");
        let before = c.generation();
        match c.insert(rule, &resolve, 0) {
            Ok(id) => {
                assert!(c.get(id).is_some());
                assert!(c.generation() > before);
            }
            Err(_) => assert_eq!(c.generation(), before),
        }
    }
    let mut now = 0u64;
    let mut clock = input.clock.iter();
    for (port, bytes) in input.frames.iter().take(64) {
        let key = FlowKey::extract(Some(PortId::from_index(usize::from(*port % 8))), bytes);
        assert!(FlowKey::packings_agree(PortId::from_index(usize::from(*port % 8)), bytes));
        let best = c.rules().into_iter().filter(|r| r.matches(&key)).fold(None, |b: Option<&Installed>, r| match b {
            Some(b) if b.rule.priority >= r.rule.priority => Some(b),
            _ => Some(r),
        });
        let best = best.map(|r| r.id);
        assert_eq!(c.lookup(&key).map(|r| r.id), best);
        assert_eq!(c.trace(&key).matched.map(|m| m.id), best);
        let _ = c.trace(&key).to_string();
        assert_eq!(c.classify(&key, bytes.len() as u64, now).map(|r| r.id), best);
        if let Some(s) = clock.next() {
            now = now.max(u64::from(*s) * 1_000_000_000);
            for r in c.expire(now) {
                assert!(r.expires_at().is_some_and(|t| t <= now));
            }
            assert!(c.next_expiry().is_none_or(|t| t > now));
        }
    }
    if let Ok(m) = parse_match(&input.trace) {
        assert_eq!(parse_match(&m.to_string()).as_ref(), Ok(&m));
        let key = vmnetd::switch::flow::key_from_match(&m, m.in_port.as_deref().and_then(resolve));
        let _ = c.trace(&key).to_string();
    }
});
