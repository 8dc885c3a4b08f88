//! `internal` ports: a TAP whose userspace side vmnetd holds. Its kernel side is a host
//! interface: an address on it reaches the VM network, and moved into a network namespace it
//! is a host on the bridge.
//!
//! The TAP runs with `IFF_VNET_HDR` (12-byte header) and `TUNSETOFFLOAD`
//! (checksum and TSO), so the host stack hands over 64 KiB TCP segments instead of cutting
//! them into MTU-sized frames, and takes them back the same way.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use vmnetd_vhost::virtio_net::{VnetHdr, HDR_LEN};

use crate::datapath::batch::{Batch, BURST, OUT_HEAD_MAX};
use crate::ifname::IfName;
use crate::switch::Egress;
use crate::sys::iov::{writev, IoPart};
use crate::sys::tap::{offload, Mode, OpenFlags, Tap};

use std::os::fd::OwnedFd;

use super::{kernel_burst, EventCx, EventId, Outcome, PortEdge, Received, Refused, SendResult};

#[derive(Debug)]
pub struct InternalPort {
    pub ifname: IfName,
    file: File,
}

/// How vmnetd opens the TAP of an internal port.
pub const FLAGS: OpenFlags = OpenFlags { mode: Mode::Tap, multi_queue: false, vnet_hdr: true };

impl InternalPort {
    /// Attaches to the (existing, persistent) TAP `ifname` and sets it up for the datapath.
    pub fn open(ifname: IfName) -> Result<InternalPort, crate::sys::tap::Error> {
        let tap = Tap::open(Some(&ifname), FLAGS, false)?;
        tap.set_vnet_hdr_size(HDR_LEN as i32)?;
        tap.set_offload(offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN)?;
        tap.set_nonblocking()?;
        Ok(InternalPort { ifname, file: tap.into_file() })
    }

    /// Makes the TAP non-persistent, so it disappears when this queue closes — wherever the
    /// device is now, even in another network namespace.
    pub fn unpersist(&self) -> io::Result<()> {
        crate::sys::tap::set_persist_fd(&self.file, &self.ifname, false)
            .map_err(|e| io::Error::other(crate::api::error_chain(&e)))
    }

    fn recv(&mut self, batch: &mut Batch) -> io::Result<Received> {
        batch.ensure_bufs(BURST, HDR_LEN);
        let mut r = Received::default();
        for i in 0..BURST {
            let n = match self.file.read(&mut batch.bufs[i]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(r),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n < HDR_LEN {
                r.bad += 1;
                r.bad_bytes += n as u64;
                continue;
            }
            let vnet = VnetHdr::parse(&batch.bufs[i][..HDR_LEN]).unwrap_or_default();
            batch.push_local(i as u16, HDR_LEN, n - HDR_LEN, vnet, None);
        }
        r.more = true;
        Ok(r)
    }

    fn send(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        let mut res = SendResult::default();
        for e in list {
            let f = &src.frames[e.frame];
            let mut head = [0u8; OUT_HEAD_MAX];
            let n = f.out_head(e.action, &mut head);
            let vnet = f.out_vnet(e.action).to_bytes(0);
            let len = e.action.splice().out_len(f.len as usize) as u64;
            let mut parts = Vec::with_capacity(8);
            parts.push(IoPart::Bytes(&vnet));
            parts.push(IoPart::Bytes(&head[..n]));
            if !src.tail_io(e.frame, &mut parts) {
                res.errors.0 += 1;
                res.errors.1 += len;
                continue;
            }
            match writev(&self.file, &parts) {
                Ok(true) => res.sent += 1,
                Ok(false) => {
                    res.no_room.0 += 1;
                    res.no_room.1 += len;
                }
                Err(err) => {
                    log::debug!("{}: write: {err}", self.ifname);
                    res.errors.0 += 1;
                    res.errors.1 += len;
                }
            }
        }
        res
    }
}

impl PortEdge for InternalPort {
    fn kind(&self) -> &'static str {
        "internal"
    }

    fn watches(&mut self) -> Vec<(OwnedFd, EventId)> {
        self.file.as_fd().try_clone_to_owned().map(|fd| vec![(fd, 0)]).unwrap_or_default()
    }

    fn on_event(
        &mut self,
        _ev: EventId,
        _cx: EventCx,
        batch: &mut Batch,
        ingress: &mut dyn FnMut(&mut Batch, Refused),
    ) -> Outcome {
        let r = self.recv(batch);
        kernel_burst(r, batch, ingress)
    }

    fn tx_burst(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        self.send(src, list)
    }

    /// Deleting the TAP vmnetd made: without persistence it goes away with our queue,
    /// wherever it is now (even moved into another network namespace).
    fn release(self: Box<Self>, delete_device: bool) {
        if delete_device {
            if let Err(e) = self.unpersist() {
                log::warn!("internal port {}: cannot delete its TAP: {e}", self.ifname);
            }
        }
    }
}

impl AsRawFd for InternalPort {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for InternalPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
