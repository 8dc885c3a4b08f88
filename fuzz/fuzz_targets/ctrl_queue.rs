//! The control virtqueue on arbitrary guest memory: commands, chains and indices from the
//! fuzzer. One call serves at most one queue's worth of commands, never panics, and leaves
//! the device's RX-mode and MAC state within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmnetd_vhost::device::{Memory, Shared};

const MEM: usize = 64 * 1024;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    size_log2: u8,
    pairs: u8,
    next_avail: u16,
    desc: u16,
    avail: u16,
    used: u16,
    mem: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let mem = Memory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = i.mem.len().min(MEM);
    mem.write_slice(&i.mem[..n], GuestAddress(0)).unwrap();
    let pairs = u16::from(i.pairs % 4) + 1;
    let shared = Shared::new("fuzz", pairs).unwrap();
    let mut st = shared.lock();
    let c = st.ctrl_index();
    let size = 1u16 << (i.size_log2 % 9);
    {
        let q = &mut st.vrings[c].queue;
        q.set_size(size);
        if q.try_set_desc_table_address(GuestAddress(u64::from(i.desc) & !15)).is_err()
            || q.try_set_avail_ring_address(GuestAddress(u64::from(i.avail) & !1)).is_err()
            || q.try_set_used_ring_address(GuestAddress(u64::from(i.used) & !3)).is_err()
        {
            return;
        }
        q.set_next_avail(i.next_avail);
        q.set_ready(true);
    }
    if let Ok(done) = vmnetd_vhost::ctrl::process(&mut st, &mem, pairs) {
        assert!(done <= usize::from(size), "{done} commands from a queue of {size}");
    }
    assert!(st.active_pairs.is_none_or(|p| (1..=pairs).contains(&p)));
    assert!(st.mac_table.len() <= 8192 / 6);
});
