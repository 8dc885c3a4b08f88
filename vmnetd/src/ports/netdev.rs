//! `netdev` ports: an existing kernel interface (a vmnetd TAP that QEMU opens, a veth end, an
//! uplink NIC) joined to the built-in bridge through an AF_PACKET socket.
//!
//! Frames come and go with a virtio-net header, so a GSO super-frame from a veth or a TAP
//! crosses whole and the kernel segments it only where it must. VLAN tags the kernel moved
//! into the skb come back from `PACKET_AUXDATA` and are put back into the frame. Frames this
//! socket sends are never read back (`PACKET_IGNORE_OUTGOING`), so nothing loops.
//!
//! Frames move through `TPACKET_V2` mmap rings where the kernel gives them (`--io tpacket`,
//! the `auto` default; see [`crate::sys::tpacket`]), with `recvmmsg`/`sendmmsg`
//! (`--io mmsg`), or through AF_XDP (`--io xdp`, see [`crate::sys::xdp`]): an XDP program
//! redirects the frames that fit a UMEM chunk into an XSK socket, and the AF_PACKET socket
//! (in mmsg mode) takes the rest, the GSO frames, with their virtio-net header. Frames that
//! leave with an offload for the kernel to do (GSO, a partial checksum) leave by that socket
//! too, after the XSK's transmit ring, so a burst keeps its order.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use vmnetd_vhost::virtio_net::{VnetHdr, F_NEEDS_CSUM, HDR_LEN_LEGACY};

use crate::api::NetdevIo;
use crate::datapath::batch::{Batch, BURST, MAX_FRAME, OUT_HEAD_MAX};
use crate::datapath::offload;
use crate::ifname::IfName;
use crate::switch::Egress;
use crate::sys::iov::IoPart;
use crate::sys::packet::{PacketSocket, RecvInfo, CMSG_SPACE};
use crate::sys::tpacket::{Geometry, Rings, RxFrame};
use crate::sys::xdp::{self, XdpProgram, Xsk};

use std::os::fd::OwnedFd;

use super::{kernel_burst, EdgeState, EventCx, EventId, Outcome, PortEdge, Received, Refused, SendResult};

/// The mmap rings of a `tpacket` port, and the socket its over-long frames leave by.
#[derive(Debug)]
struct RingIo {
    rings: Rings,
    /// Frames longer than a transmit slot (GSO super-frames).
    long: PacketSocket,
}

/// The XSK socket of an `xdp` port and the program that feeds it.
#[derive(Debug)]
struct XdpIo {
    /// Before `xsk`: the program is detached before the socket it redirects to closes.
    _prog: XdpProgram,
    xsk: Xsk,
}

impl XdpIo {
    /// Queue 0's socket and the program, zero-copy if `zero_copy`.
    fn open(ifindex: u32, mtu: u32, zero_copy: bool) -> io::Result<XdpIo> {
        let geo = xdp::Geometry::for_mtu(mtu).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("MTU {mtu}: an AF_XDP frame is one page at most"))
        })?;
        let xsk = Xsk::open(ifindex, 0, geo, zero_copy)?;
        let prog = XdpProgram::attach(ifindex, geo.max_frame() as u16)?;
        if let Some(why) = prog.vlan_blind() {
            log::warn!(
                "ifindex {ifindex}: the XDP program cannot see VLAN tags the kernel keeps out of band ({why}): \
                 such frames would arrive untagged; turn the NIC's rxvlan offload off or use --io tpacket on trunks"
            );
        }
        prog.serve(0, xsk.fd().ok_or_else(|| io::Error::other("AF_XDP: no socket"))?)?;
        Ok(XdpIo { _prog: prog, xsk })
    }

    fn mode(&self) -> &'static str {
        if self.xsk.zero_copy() {
            "xdp zero-copy"
        } else {
            "xdp copy"
        }
    }
}

#[derive(Debug)]
pub struct NetdevPort {
    pub ifname: IfName,
    pub ifindex: u32,
    /// Before `sock`: the rings are unmapped before the socket that owns them closes.
    ring: Option<RingIo>,
    xdp: Option<XdpIo>,
    sock: PacketSocket,
    /// How frames move, for `port list`.
    io: String,
    queue: QueueBufs,
}

/// What a `recvmmsg` from the socket's queue needs beside the batch's buffers, per frame.
#[derive(Debug)]
struct QueueBufs {
    vnet: Vec<[u8; HDR_LEN_LEGACY]>,
    cmsgs: Vec<[u8; CMSG_SPACE]>,
    infos: Vec<RecvInfo>,
}

impl QueueBufs {
    fn new() -> QueueBufs {
        QueueBufs {
            vnet: vec![[0; HDR_LEN_LEGACY]; BURST],
            cmsgs: vec![[0; CMSG_SPACE]; BURST],
            infos: vec![RecvInfo::default(); BURST],
        }
    }

    /// Receives up to `max` frames from `sock`'s queue into the batch's buffers from `at` on
    /// and adds the usable ones to the batch, packed from `at` (a bad frame's buffer is
    /// swapped out of the way); bad ones are counted in `r`. Returns (received, added).
    fn recv(
        &mut self,
        sock: &PacketSocket,
        batch: &mut Batch,
        at: usize,
        max: usize,
        r: &mut Received,
    ) -> io::Result<(usize, usize)> {
        let end = at + max;
        let mut iovs: Vec<[IoSliceMut<'_>; 2]> = self.vnet[at..end]
            .iter_mut()
            .zip(batch.bufs[at..end].iter_mut())
            .map(|(h, b)| [IoSliceMut::new(h), IoSliceMut::new(&mut b[..MAX_FRAME - 4])])
            .collect();
        let got = sock.recv_batch(&mut iovs, &mut self.cmsgs[at..end], &mut self.infos[at..end])?;
        drop(iovs);
        let mut n = at;
        for i in at..at + got {
            let info = self.infos[i];
            if info.truncated || info.len < HDR_LEN_LEGACY {
                r.bad += 1;
                r.bad_bytes += info.len as u64;
                continue;
            }
            if i != n {
                batch.bufs.swap(i, n);
                self.vnet.swap(i, n);
            }
            let vnet = VnetHdr::parse(&self.vnet[n]).unwrap_or_default();
            batch.push_local(n as u16, 0, info.len - HDR_LEN_LEGACY, vnet, info.vlan);
            n += 1;
        }
        Ok((got, n - at))
    }
}

impl NetdevPort {
    /// Opens the port's socket on `ifindex` with the I/O `io` asks for; `auto` takes the
    /// rings when the kernel gives them and says why not when it does not.
    pub fn open(ifname: IfName, ifindex: u32, mtu: u32, io: NetdevIo) -> io::Result<NetdevPort> {
        let rings = |ifindex| -> io::Result<(PacketSocket, RingIo)> {
            let (sock, rings) = PacketSocket::open_rings(ifindex, Geometry::for_mtu(mtu))?;
            let long = PacketSocket::open_send_only(ifindex)?;
            long.set_buffers(4 << 20);
            Ok((sock, RingIo { rings, long }))
        };
        let (sock, ring, note) = match io {
            NetdevIo::Mmsg | NetdevIo::Xdp => (PacketSocket::open(ifindex)?, None, "mmsg".to_owned()),
            NetdevIo::Tpacket => {
                let (sock, ring) = rings(ifindex)?;
                (sock, Some(ring), "tpacket".to_owned())
            }
            NetdevIo::Auto => match rings(ifindex) {
                Ok((sock, ring)) => (sock, Some(ring), "tpacket".to_owned()),
                Err(e) => {
                    log::warn!("{ifname}: no TPACKET rings ({e}); using recvmmsg/sendmmsg");
                    (PacketSocket::open(ifindex)?, None, format!("mmsg (no tpacket: {e})"))
                }
            },
        };
        // Zero-copy where the driver offers it, else copy mode; the socket is open first, so
        // a frame the program passes before the XSK serves its queue is not lost.
        let xdp = match io {
            NetdevIo::Xdp => Some(XdpIo::open(ifindex, mtu, true).or_else(|zc| {
                log::info!("{ifname}: no AF_XDP zero-copy ({zc}); copy mode");
                XdpIo::open(ifindex, mtu, false)
            })?),
            _ => None,
        };
        let note = xdp.as_ref().map(|x| x.mode().to_owned()).unwrap_or(note);
        // The receive queue: every frame without rings, the over-long ones with them.
        sock.set_buffers(4 << 20);
        Ok(NetdevPort { ifname, ifindex, ring, xdp, sock, io: note, queue: QueueBufs::new() })
    }

    /// How the port's frames move: `tpacket`, `mmsg`, `xdp copy` or `xdp zero-copy`.
    pub fn io(&self) -> &str {
        &self.io
    }

    fn recv(&mut self, batch: &mut Batch) -> io::Result<Received> {
        batch.ensure_bufs(BURST, 0);
        if self.ring.is_some() {
            return self.recv_ring(batch);
        }
        if self.xdp.is_some() {
            let r = self.recv_xdp(batch);
            if r.is_err() {
                // The port goes down: let go of the queue and the program now, so that the
                // edge re-attached in its place can bind them (the kernel allows one socket
                // per queue and one program per interface).
                self.xdp = None;
            }
            return r;
        }
        let mut r = Received::default();
        let (got, _) = self.queue.recv(&self.sock, batch, 0, BURST, &mut r)?;
        r.more = got == BURST;
        Ok(r)
    }

    /// A burst from the receive ring: each frame copied out of its slot (virtio-net header
    /// first) and the slot handed back at once; a frame longer than a slot read whole from
    /// the socket, where the kernel queued it in ring order.
    fn recv_ring(&mut self, batch: &mut Batch) -> io::Result<Received> {
        let Some(ring) = self.ring.as_mut() else { return Ok(Received::default()) };
        if ring.rings.tx_pending() > 0 {
            // Frames the kernel left in the transmit ring at the last flush: try again.
            if let Err(err) = ring.rings.tx_flush(self.sock.as_fd()) {
                log::debug!("{}: send (ring): {err}", self.ifname);
            }
        }
        let mut r = Received::default();
        let mut n = 0;
        while n < BURST {
            // A run of frames longer than a slot (TCP's GSO frames): one recvmmsg for all.
            let run = ring.rings.rx_queued_run(BURST - n);
            if run > 0 {
                let (got, added) = self.queue.recv(&self.sock, batch, n, run, &mut r)?;
                ring.rings.rx_release(run);
                r.bad += (run - got) as u64;
                n += added;
                continue;
            }
            let buf = &mut batch.bufs[n];
            let Some(got) = ring.rings.rx_next(buf) else { break };
            match got {
                RxFrame::Frame { len, vlan } => {
                    let vnet = VnetHdr::parse(&buf[..HDR_LEN_LEGACY]).unwrap_or_default();
                    batch.push_local(n as u16, HDR_LEN_LEGACY, len - HDR_LEN_LEGACY, vnet, vlan);
                    n += 1;
                }
                RxFrame::Queued => {
                    // Filled between the look for a run and this read: take it alone.
                    let (got, added) = self.queue.recv(&self.sock, batch, n, 1, &mut r)?;
                    r.bad += (1 - got) as u64;
                    n += added;
                }
                RxFrame::Bad { wire_len } => {
                    r.bad += 1;
                    r.bad_bytes += wire_len as u64;
                }
            }
        }
        r.more = n == BURST && ring.rings.rx_ready();
        if n == 0 && r.bad == 0 {
            // Woken with nothing in the ring: perhaps the interface went away.
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
        }
        Ok(r)
    }

    /// A burst from the XSK's receive ring (frames without a virtio-net header; see
    /// [`offload::partial_csum_seed`] for their checksums), then from the socket's queue (what the program passed: GSO frames,
    /// other queues).
    fn recv_xdp(&mut self, batch: &mut Batch) -> io::Result<Received> {
        let Some(x) = self.xdp.as_mut() else { return Ok(Received::default()) };
        if let Err(err) = x.xsk.tx_flush() {
            log::debug!("{}: send (xdp): {err}", self.ifname);
        }
        let mut r = Received::default();
        let mut n = 0;
        while n < BURST {
            let Some(got) = x.xsk.rx_next(&mut batch.bufs[n][..MAX_FRAME - 4]) else { break };
            match got {
                xdp::RxFrame::Frame { len } => {
                    // XDP hands over bytes only: a checksum the sender left to offload shows
                    // as the pseudo-header seed, and the frame goes on as partial, cut to
                    // its IP length (a completion sums to the end of the frame).
                    let (vnet, len) = match offload::partial_csum_seed(&batch.bufs[n][..len]) {
                        Some(seed) => (
                            VnetHdr {
                                flags: F_NEEDS_CSUM,
                                csum_start: seed.start,
                                csum_offset: seed.offset,
                                ..VnetHdr::default()
                            },
                            seed.end,
                        ),
                        None => (VnetHdr::default(), len),
                    };
                    batch.push_local(n as u16, 0, len, vnet, None);
                    n += 1;
                }
                xdp::RxFrame::Bad { len, .. } => {
                    r.bad += 1;
                    r.bad_bytes += len as u64;
                }
            }
        }
        x.xsk.rx_commit();
        let more_xsk = n == BURST && x.xsk.rx_ready();
        if x.xsk.broken() {
            return Err(io::Error::other("AF_XDP: the kernel left a ring index out of range"));
        }
        let mut got = 0;
        if n < BURST {
            let max = BURST - n;
            let (g, added) = self.queue.recv(&self.sock, batch, n, max, &mut r)?;
            got = g;
            r.more = g == max;
            n += added;
        }
        r.more |= more_xsk;
        if n == 0 && got == 0 && r.bad == 0 {
            // Woken with nothing to read: perhaps the interface went away.
            if let Some(e) = x.xsk.take_error()? {
                return Err(e);
            }
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
        }
        Ok(r)
    }

    fn send(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        if self.ring.is_some() {
            return self.send_ring(src, list);
        }
        if self.xdp.is_some() {
            return self.send_xdp(src, list);
        }
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
            // Each frame: vnet header, our head, its tail (local bytes or guest memory).
            let mut parts: Vec<Vec<IoPart<'_>>> = Vec::with_capacity(chunk.len());
            let mut sendable: Vec<&Egress> = Vec::with_capacity(chunk.len());
            for (k, e) in chunk.iter().enumerate() {
                if let Some(p) = out_parts(src, e, &[&vnets[k], &heads[k][..lens[k]]], &mut res) {
                    parts.push(p);
                    sendable.push(e);
                }
            }
            let refs: Vec<&[IoPart<'_>]> = parts.iter().map(|v| &v[..]).collect();
            send_counted(&self.sock, &self.ifname, &refs, &sendable, src, &mut res);
        }
        res
    }

    /// Sends through the transmit ring: each frame copied into the next free slot, then one
    /// `send` for the burst. A frame longer than a slot leaves by the send-only socket,
    /// after the ring is flushed, so the burst's order is kept.
    fn send_ring(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        let mut res = SendResult::default();
        let Some(ring) = self.ring.as_mut() else { return res };
        let capacity = ring.rings.geometry().tx_capacity();
        let mut heads = [[0u8; OUT_HEAD_MAX]; BURST];
        let mut vnets = [[0u8; HDR_LEN_LEGACY]; BURST];
        for chunk in list.chunks(BURST) {
            let mut lens = [0usize; BURST];
            for (k, e) in chunk.iter().enumerate() {
                let f = &src.frames[e.frame];
                lens[k] = f.out_head(e.action, &mut heads[k]);
                vnets[k] = f.out_vnet(e.action).to_legacy_bytes();
            }
            for (k, e) in chunk.iter().enumerate() {
                let Some(parts) = out_parts(src, e, &[&vnets[k], &heads[k][..lens[k]]], &mut res) else { continue };
                let total: usize = parts.iter().map(IoPart::len).sum();
                if total <= capacity {
                    if ring.rings.tx_push(&parts) {
                        res.sent += 1;
                    } else {
                        res.no_room.0 += 1;
                        res.no_room.1 += out_len(src, e);
                    }
                    continue;
                }
                // The ring goes first; a long frame that would overtake frames the kernel has
                // not taken yet has no room.
                match ring.rings.tx_flush(self.sock.as_fd()) {
                    Ok(true) => send_counted(&ring.long, &self.ifname, &[&parts[..]], &[e], src, &mut res),
                    Ok(false) => {
                        res.no_room.0 += 1;
                        res.no_room.1 += out_len(src, e);
                    }
                    Err(err) => {
                        log::debug!("{}: send (ring): {err}", self.ifname);
                        res.errors.0 += 1;
                        res.errors.1 += out_len(src, e);
                    }
                }
            }
        }
        if let Err(err) = ring.rings.tx_flush(self.sock.as_fd()) {
            log::debug!("{}: send (ring): {err}", self.ifname);
        }
        res
    }
}

impl NetdevPort {
    /// Sends through the XSK: each plain frame copied into a free chunk, then one kick for
    /// the burst. A frame with an offload for the kernel (GSO, a partial checksum: AF_XDP
    /// carries no virtio-net header) or longer than a chunk leaves by the AF_PACKET socket,
    /// after the XSK's ring is flushed, so the burst keeps its order.
    fn send_xdp(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        let mut res = SendResult::default();
        let Some(x) = self.xdp.as_mut() else { return res };
        let capacity = x.xsk.tx_capacity();
        let mut heads = [[0u8; OUT_HEAD_MAX]; BURST];
        let mut vnets = [[0u8; HDR_LEN_LEGACY]; BURST];
        for chunk in list.chunks(BURST) {
            let mut offloads = [false; BURST];
            let mut lens = [0usize; BURST];
            for (k, e) in chunk.iter().enumerate() {
                let f = &src.frames[e.frame];
                lens[k] = f.out_head(e.action, &mut heads[k]);
                let vnet = f.out_vnet(e.action);
                offloads[k] = vnet.is_gso() || vnet.needs_csum();
                vnets[k] = vnet.to_legacy_bytes();
            }
            // A run of frames for the socket goes with one sendmmsg, once the XSK frames
            // before it are out.
            let mut run: Vec<Vec<IoPart<'_>>> = Vec::new();
            let mut run_egress: Vec<&Egress> = Vec::new();
            let send_run = |run: &mut Vec<Vec<IoPart<'_>>>, run_egress: &mut Vec<&Egress>, res: &mut SendResult| {
                let refs: Vec<&[IoPart<'_>]> = run.iter().map(|v| &v[..]).collect();
                send_counted(&self.sock, &self.ifname, &refs, run_egress, src, res);
                run.clear();
                run_egress.clear();
            };
            for (k, e) in chunk.iter().enumerate() {
                let Some(mut parts) = out_parts(src, e, &[&heads[k][..lens[k]]], &mut res) else { continue };
                let total: usize = parts.iter().map(IoPart::len).sum();
                if !offloads[k] && total <= capacity {
                    if !run.is_empty() {
                        send_run(&mut run, &mut run_egress, &mut res);
                    }
                    if x.xsk.tx_push(&parts) {
                        res.sent += 1;
                    } else {
                        res.no_room.0 += 1;
                        res.no_room.1 += out_len(src, e);
                    }
                    continue;
                }
                // With an offload for the kernel, or longer than a chunk: the socket, with
                // the virtio-net header, after the XSK's ring has drained. (In zero-copy
                // mode the driver takes the ring in its own time: the frame goes at once,
                // and may overtake the ring's.)
                if run.is_empty() {
                    match x.xsk.tx_flush() {
                        Ok(true) => {}
                        Ok(false) if x.xsk.zero_copy() => {}
                        Ok(false) => {
                            res.no_room.0 += 1;
                            res.no_room.1 += out_len(src, e);
                            continue;
                        }
                        Err(err) => {
                            log::debug!("{}: send (xdp): {err}", self.ifname);
                            res.errors.0 += 1;
                            res.errors.1 += out_len(src, e);
                            continue;
                        }
                    }
                }
                parts.insert(0, IoPart::Bytes(&vnets[k]));
                run.push(parts);
                run_egress.push(e);
            }
            if !run.is_empty() {
                send_run(&mut run, &mut run_egress, &mut res);
            }
        }
        if let Err(err) = x.xsk.tx_flush() {
            log::debug!("{}: send (xdp): {err}", self.ifname);
        }
        res
    }
}

/// Frame `e` as pieces for the kernel: `prefix` (our copies: its virtio-net header, its
/// output head), then its tail (local bytes or guest memory). `None`, counted as an error in
/// `res`, when the tail cannot be had.
fn out_parts<'a>(src: &'a Batch, e: &Egress, prefix: &[&'a [u8]], res: &mut SendResult) -> Option<Vec<IoPart<'a>>> {
    let mut parts = Vec::with_capacity(prefix.len() + 2);
    parts.extend(prefix.iter().map(|b| IoPart::Bytes(b)));
    if src.tail_io(e.frame, &mut parts) {
        Some(parts)
    } else {
        res.errors.0 += 1;
        res.errors.1 += out_len(src, e);
        None
    }
}

/// The bytes frame `e` has on the wire.
fn out_len(src: &Batch, e: &Egress) -> u64 {
    e.action.splice().out_len(src.frames[e.frame].len as usize) as u64
}

/// `sendmmsg` of `frames` (for the egress entries `sendable`), counted into `res`.
fn send_counted(
    sock: &PacketSocket,
    ifname: &IfName,
    frames: &[&[IoPart<'_>]],
    sendable: &[&Egress],
    src: &Batch,
    res: &mut SendResult,
) {
    match sock.send_batch(frames) {
        Ok(sent) => {
            res.sent += sent as u64;
            for e in &sendable[sent..] {
                res.no_room.0 += 1;
                res.no_room.1 += out_len(src, e);
            }
        }
        Err(err) => {
            log::debug!("{ifname}: send: {err}");
            for e in sendable {
                res.errors.0 += 1;
                res.errors.1 += out_len(src, e);
            }
        }
    }
}

impl PortEdge for NetdevPort {
    fn kind(&self) -> &'static str {
        "netdev"
    }

    fn watches(&mut self) -> Vec<(OwnedFd, EventId)> {
        let mut w: Vec<(OwnedFd, EventId)> =
            self.sock.as_fd().try_clone_to_owned().map(|fd| vec![(fd, 0)]).unwrap_or_default();
        if let Some(fd) = self.xdp.as_ref().and_then(|x| x.xsk.fd()?.try_clone_to_owned().ok()) {
            w.push((fd, 1));
        }
        w
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

    fn state(&self) -> EdgeState {
        EdgeState::Netdev(self.io.clone())
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
