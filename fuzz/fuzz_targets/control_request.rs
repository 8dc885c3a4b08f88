//! Control-protocol request parsing on arbitrary bytes (what any member of the socket's
//! group can send): no panics, and whatever parses round-trips through its JSON form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd::api::{parse_request, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_request(data) else { return };
    let json = serde_json::to_vec(&req).expect("a parsed request serialises");
    let again: Request = parse_request(&json).expect("a serialised request parses");
    assert_eq!(serde_json::to_vec(&again).unwrap(), json);
});
