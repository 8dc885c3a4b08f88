//! The kernel's BTF (`/sys/kernel/btf/vmlinux`) as `vmnetd::sys::xdp::btf_func_id` reads it
//! to find the VLAN-tag kfunc: any bytes. Never panics; an id it returns is a real type id
//! (from 1 on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd::sys::xdp::btf_func_id;

fuzz_target!(|data: &[u8]| {
    for name in ["bpf_xdp_metadata_rx_vlan_tag", "", "f"] {
        if let Some(id) = btf_func_id(data, name) {
            assert!(id >= 1);
        }
    }
});
