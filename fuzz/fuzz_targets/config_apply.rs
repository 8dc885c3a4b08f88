//! `vmnetd apply` and `config dump`: two config files (the input split at its first NUL),
//! each parsed as the daemon parses a file; no panics; a parsed config dumps to TOML that
//! parses back to the same config (so `config dump | apply` is a no-op); a config planned
//! against itself is an empty plan (or refused whole); any two configs plan without panicking, and every
//! action's inverse undoes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd::config::Config;
use vmnetd::daemon::apply::{plan, Runtime};

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.iter().position(|&c| c == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    let parse = |d: &[u8]| std::str::from_utf8(d).ok().and_then(|t| Config::parse(t, "fuzz").ok());
    let (old, new) = (parse(a), parse(b));
    for c in old.iter().chain(new.iter()) {
        let text = toml::to_string(c).expect("a parsed config dumps");
        let back = Config::parse(&text, "dump").expect("a dumped config parses");
        assert_eq!(&back, c, "dump round trip:\n{text}");
        // (A file with a port or network on an undeclared bridge is refused, even against
        // itself.)
        if let Ok((shown, actions)) = plan(c, c, &Runtime::default()) {
            assert!(shown.is_empty() && actions.is_empty(), "{shown:?}");
        }
    }
    let empty = Config::default();
    let old = old.unwrap_or_else(|| empty.clone());
    let new = new.unwrap_or(empty);
    if let Ok((_, actions)) = plan(&old, &new, &Runtime::default()) {
        for a in &actions {
            assert_eq!(&a.inverse().inverse(), a);
        }
    }
});
