//! A `TPACKET_V2` receive slot's header, as the kernel leaves it in the mapped ring
//! (`vmnetd::sys::tpacket::RxSlot`): any bytes, any ring geometry. Never panics; a header it
//! accepts points only inside the slot, after the slot header, so the copy `Rings::rx_next`
//! makes from it stays in the slot and in the batch buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd::sys::tpacket::{Geometry, RxSlot, HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((mtu, rest)) = data.split_first_chunk::<2>() else { return };
    let geo = Geometry::for_mtu(u32::from(u16::from_le_bytes(*mtu)) * 2);
    assert!(geo.frame_size >= 2048 && geo.frame_size <= 65536 && geo.frame_size.is_power_of_two());
    assert!(geo.tx_capacity() < geo.frame_size);
    if let Ok(s) = RxSlot::parse(rest, geo.frame_size) {
        assert!(s.vnet_at >= HDR_LEN, "{s:?}");
        assert!(s.vnet_at + 10 + s.len <= geo.frame_size, "{s:?}");
        assert!(!(s.copied && s.truncated));
        // The copy rx_next makes, from a slot of frame_size bytes into a slot-sized buffer.
        let slot = vec![0u8; geo.frame_size];
        let mut buf = vec![0u8; geo.frame_size];
        buf[..10 + s.len].copy_from_slice(&slot[s.vnet_at..s.vnet_at + 10 + s.len]);
    }
});
