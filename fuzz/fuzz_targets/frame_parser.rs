//! Ethernet/802.1Q parsing and tag splicing on arbitrary bytes: no panics, and what parses
//! re-emits to the same header; every splice yields a frame of the predicted length whose
//! tag is what the action says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd::switch::wire::{EthernetFrame, EthernetRepr, TagAction, Tci};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = EthernetFrame::new_checked(data) else {
        return;
    };
    let repr = EthernetRepr::parse(&f).expect("checked frame parses");
    let mut hdr = vec![0u8; repr.header_len()];
    repr.emit(&mut hdr);
    assert_eq!(&hdr[..], &data[..repr.header_len()]);
    let tci = Tci(u16::from_be_bytes([data[0], data[1]]));
    let mut out = vec![0u8; data.len() + 4];
    for action in [TagAction::Keep, TagAction::Push(tci), TagAction::Pop, TagAction::SetTci(tci)] {
        let s = action.splice();
        let tagged = f.tci().is_some();
        if s.skip > 0 && !tagged {
            continue; // the switch never pops what is not there
        }
        let n = s.copy(data, &mut out).expect("room for the output");
        assert_eq!(n, s.out_len(data.len()));
        let g = EthernetFrame::new_checked(&out[..n]);
        match action {
            TagAction::Pop => {
                // The inner ethertype is now outer; the payload is unchanged.
                assert_eq!(&out[12..n], &data[16..]);
            }
            TagAction::Push(t) | TagAction::SetTci(t) => assert_eq!(g.expect("tagged").tci(), Some(t)),
            TagAction::Keep => assert_eq!(&out[..n], data),
        }
    }
});
