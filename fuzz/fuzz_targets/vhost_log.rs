//! The dirty log of a migrating guest (SET_LOG_BASE): arbitrary sizes and offsets against
//! arbitrary files and guest memory layouts, then marks at arbitrary guest addresses. A log
//! that does not cover the guest's memory, reaches past its file or is not memory is refused;
//! an accepted one never takes a mark outside itself; nothing panics.
#![no_main]

use std::fs::File;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::message::{VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures};
use vhost::vhost_user::VhostUserBackendReqHandlerMut;
use vmnetd_vhost::device::{Handler, Shared};
use vmnetd_vhost::virtio_net::features;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    /// Guest memory: one region of this many pages (1..=64) at this guest address.
    mem_pages: u8,
    mem_gpa: u32,
    /// The log file's length, and the log's size and offset in it.
    file_len: u16,
    size: u64,
    offset: u64,
    /// A second log that replaces the first.
    again: Option<(u16, u64, u64)>,
    marks: Vec<(u64, u32)>,
}

fn memfd(len: u64) -> Option<File> {
    let m = nix::sys::memfd::memfd_create("fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).ok()?;
    let f = File::from(m);
    f.set_len(len).ok()?;
    Some(f)
}

fuzz_target!(|i: Input| {
    let _ = vmnetd_vhost::guard::install();
    let shared = Shared::new("fuzz", 1).unwrap();
    let id = shared.connect();
    let mut h = Handler::new(shared.clone(), id);
    let _ = h.set_protocol_features(
        (VhostUserProtocolFeatures::LOG_SHMFD | VhostUserProtocolFeatures::REPLY_ACK).bits(),
    );
    let _ = h.set_features(features::VERSION_1 | features::PROTOCOL_FEATURES | features::LOG_ALL);
    let pages = u64::from(i.mem_pages % 64) + 1;
    let gpa = u64::from(i.mem_gpa) << 12;
    if let Some(m) = memfd(pages * 4096) {
        let r = [VhostUserMemoryRegion::new(gpa, pages * 4096, 0x7f00_0000_0000, 0)];
        let _ = h.set_mem_table(&r, vec![m], None);
    }
    let end = shared.lock().memory_end();
    for (len, size, offset) in std::iter::once((i.file_len, i.size, i.offset)).chain(i.again) {
        let Some(f) = memfd(u64::from(len)) else { return };
        let before = shared.lock().log.as_ref().map(|l| Arc::as_ptr(l) as usize);
        let ok = h.set_log_base(&VhostUserLog { mmap_size: size, mmap_offset: offset }, f).is_ok();
        let st = shared.lock();
        if ok {
            let log = st.log.as_ref().expect("an accepted log is in place");
            assert!(log.covers() >= end, "a log smaller than the guest's memory was accepted");
            assert!(offset.checked_add(size).is_some_and(|e| e <= u64::from(len)));
            assert_eq!(log.len(), size);
        } else {
            assert!(h.must_close(), "a refused log must close the connection");
            assert_eq!(st.log.as_ref().map(|l| Arc::as_ptr(l) as usize), before, "a refused log changes nothing");
        }
    }
    if let Some(log) = shared.lock().dirty_log() {
        for &(gpa, len) in i.marks.iter().take(64) {
            log.mark(gpa, u64::from(len % (1 << 20)));
        }
        let _ = log.out_of_range();
    }
    shared.disconnected(id);
});
