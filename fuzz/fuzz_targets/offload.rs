//! Software segmentation and checksum completion on arbitrary frames and virtio-net headers,
//! as a hostile guest would send them: no panics, never more than the segment bound, every
//! segment no longer than its headers plus the MSS, and the checks the datapath makes at
//! ingress agree with what `segment` accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd::datapath::offload::{self, MAX_SEGMENTS};
use vmnetd_vhost::virtio_net::{features, VnetHdr};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
    acked: u64,
    frame: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let vnet = VnetHdr {
        flags: i.flags,
        gso_type: i.gso_type,
        hdr_len: i.hdr_len,
        gso_size: i.gso_size,
        csum_start: i.csum_start,
        csum_offset: i.csum_offset,
    };
    let f = &i.frame;
    // A frame from AF_XDP: a seed it reports names a checksum field inside the frame, and
    // completing it there works.
    if let Some(seed) = offload::partial_csum_seed(f) {
        assert!(seed.end <= f.len() && usize::from(seed.start) + usize::from(seed.offset) + 2 <= seed.end);
        let mut g = f[..seed.end].to_vec();
        offload::complete_csum(&mut g, seed.start.into(), seed.offset.into())
            .expect("a seed names a field in the frame");
    }
    let ingress = offload::check_vnet(&vnet, f.len(), i.acked & features::OFFERED).and_then(|()| {
        if vnet.is_gso() {
            offload::check_gso_frame(f, f.len(), &vnet)
        } else {
            Ok(())
        }
    });
    let mut n = 0usize;
    let mut longest = 0usize;
    let r = offload::segment(f, &vnet, &mut |s| {
        n += 1;
        longest = longest.max(s.len());
        true
    });
    match r {
        Ok(count) => {
            assert_eq!(count, n);
            assert!(n <= MAX_SEGMENTS, "{n} segments");
            assert!(longest <= f.len(), "a segment longer than the frame");
        }
        Err(_) => assert_eq!(n, 0, "segments emitted for a refused frame"),
    }
    // What passes the ingress checks as a GSO frame can be cut.
    if ingress.is_ok() && vnet.is_gso() {
        assert!(r.is_ok(), "ingress accepted {vnet:?} but segment refused it: {r:?}");
    }
    let mut copy = f.clone();
    let _ = offload::complete_csum(&mut copy, usize::from(vnet.csum_start), usize::from(vnet.csum_offset));
    assert_eq!(copy.len(), f.len());
});
