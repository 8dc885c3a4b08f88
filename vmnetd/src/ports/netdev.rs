//! `netdev` ports: an existing kernel interface (a vmnetd TAP that QEMU opens, a veth end, an
//! uplink NIC) joined to the built-in bridge through an AF_PACKET socket.
//!
//! Frames come and go with a virtio-net header, so a GSO super-frame from a veth or a TAP
//! crosses whole and the kernel segments it only where it must. VLAN tags the kernel moved
//! into the skb come back from `PACKET_AUXDATA` and are put back into the frame. Frames this
//! socket sends are never read back (`PACKET_IGNORE_OUTGOING`), so nothing loops.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use vmnetd_vhost::virtio_net::{VnetHdr, HDR_LEN_LEGACY};

use crate::datapath::batch::{Batch, BURST, MAX_FRAME, OUT_HEAD_MAX};
use crate::ifname::IfName;
use crate::switch::Egress;
use crate::sys::iov::IoPart;
use crate::sys::packet::{PacketSocket, RecvInfo, CMSG_SPACE};

use std::os::fd::OwnedFd;

use super::{kernel_burst, EventCx, EventId, Outcome, PortEdge, Received, Refused, SendResult};

#[derive(Debug)]
pub struct NetdevPort {
    pub ifname: IfName,
    pub ifindex: u32,
    sock: PacketSocket,
    vnet: Vec<[u8; HDR_LEN_LEGACY]>,
    cmsgs: Vec<[u8; CMSG_SPACE]>,
    infos: Vec<RecvInfo>,
}

impl NetdevPort {
    pub fn open(ifname: IfName, ifindex: u32) -> io::Result<NetdevPort> {
        let sock = PacketSocket::open(ifindex)?;
        sock.set_buffers(4 << 20);
        Ok(NetdevPort {
            ifname,
            ifindex,
            sock,
            vnet: vec![[0; HDR_LEN_LEGACY]; BURST],
            cmsgs: vec![[0; CMSG_SPACE]; BURST],
            infos: vec![RecvInfo::default(); BURST],
        })
    }

    fn recv(&mut self, batch: &mut Batch) -> io::Result<Received> {
        batch.ensure_bufs(BURST, 0);
        let mut iovs: Vec<[IoSliceMut<'_>; 2]> = self
            .vnet
            .iter_mut()
            .zip(batch.bufs.iter_mut())
            .map(|(h, b)| [IoSliceMut::new(h), IoSliceMut::new(&mut b[..MAX_FRAME - 4])])
            .collect();
        let n = self.sock.recv_batch(&mut iovs, &mut self.cmsgs, &mut self.infos)?;
        drop(iovs);
        let mut r = Received { more: n == BURST, ..Default::default() };
        for i in 0..n {
            let info = self.infos[i];
            if info.truncated || info.len < HDR_LEN_LEGACY {
                r.bad += 1;
                r.bad_bytes += info.len as u64;
                continue;
            }
            let vnet = VnetHdr::parse(&self.vnet[i]).unwrap_or_default();
            batch.push_local(i as u16, 0, info.len - HDR_LEN_LEGACY, vnet, info.vlan);
        }
        Ok(r)
    }

    fn send(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        let mut heads = [[0u8; OUT_HEAD_MAX]; BURST];
        let mut vnets = [[0u8; HDR_LEN_LEGACY]; BURST];
        let mut res = SendResult::default();
        for chunk in list.chunks(BURST) {
            let mut lens = [0usize; BURST];
            for (k, e) in chunk.iter().enumerate() {
                let f = &src.frames[e.frame];
                lens[k] = f.out_head(e.action, &mut heads[k]);
                vnets[k] = f.out_vnet(e.action).to_legacy_bytes();
            }
            let out_len = |e: &Egress| e.action.splice().out_len(src.frames[e.frame].len as usize) as u64;
            // Each frame: vnet header, our head, its tail (local bytes or guest memory).
            let mut parts: Vec<Vec<IoPart<'_>>> = Vec::with_capacity(chunk.len());
            let mut sendable: Vec<&Egress> = Vec::with_capacity(chunk.len());
            for (k, e) in chunk.iter().enumerate() {
                let mut p = vec![IoPart::Bytes(&vnets[k]), IoPart::Bytes(&heads[k][..lens[k]])];
                if src.tail_io(e.frame, &mut p) {
                    parts.push(p);
                    sendable.push(e);
                } else {
                    res.errors.0 += 1;
                    res.errors.1 += out_len(e);
                }
            }
            let refs: Vec<&[IoPart<'_>]> = parts.iter().map(|v| &v[..]).collect();
            match self.sock.send_batch(&refs) {
                Ok(sent) => {
                    res.sent += sent as u64;
                    for e in &sendable[sent..] {
                        res.no_room.0 += 1;
                        res.no_room.1 += out_len(e);
                    }
                }
                Err(err) => {
                    log::debug!("{}: send: {err}", self.ifname);
                    for e in &sendable {
                        res.errors.0 += 1;
                        res.errors.1 += out_len(e);
                    }
                }
            }
        }
        res
    }
}

impl PortEdge for NetdevPort {
    fn kind(&self) -> &'static str {
        "netdev"
    }

    fn watches(&mut self) -> Vec<(OwnedFd, EventId)> {
        self.sock.as_fd().try_clone_to_owned().map(|fd| vec![(fd, 0)]).unwrap_or_default()
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
}

impl AsRawFd for NetdevPort {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for NetdevPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
