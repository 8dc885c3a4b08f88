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
        if let Some(RingIo { rings, long }) = self.ring.as_mut() {
            let mut ring = TpacketTx { rings, fd: self.sock.as_fd() };
            return send_burst(&mut ring, long, &self.ifname, src, list);
        }
        if let Some(x) = self.xdp.as_mut() {
            return send_burst(&mut XskTx(&mut x.xsk), &self.sock, &self.ifname, src, list);
        }
        send_burst(&mut NoRing, &self.sock, &self.ifname, src, list)
    }
}

/// A kernel ring a burst's frames are copied into and handed over with one kick: the
/// `tpacket` transmit ring or the XSK's. Frames it does not take leave by an AF_PACKET
/// socket with their virtio-net header.
trait TxRing {
    /// Whether ring frames start with the virtio-net header (the tpacket ring's do).
    const VNET: bool;
    /// Whether a frame of `len` bytes (`offload`: GSO or a partial checksum for the kernel
    /// to do) goes into the ring.
    fn takes(&self, len: usize, offload: bool) -> bool;
    /// Copies a frame into the next free slot; false when there is none.
    fn push(&mut self, parts: &[IoPart<'_>]) -> bool;
    /// Hands what was pushed to the kernel. `Ok(false)`: it was not all taken, and frames
    /// for the socket would overtake it.
    fn kick(&mut self) -> io::Result<bool>;
}

/// `mmsg`: every frame by the socket.
struct NoRing;

impl TxRing for NoRing {
    const VNET: bool = false;
    fn takes(&self, _: usize, _: bool) -> bool {
        false
    }
    fn push(&mut self, _: &[IoPart<'_>]) -> bool {
        false
    }
    fn kick(&mut self) -> io::Result<bool> {
        Ok(true)
    }
}

/// `tpacket`: the transmit ring of the port's socket; frames longer than a slot (GSO
/// super-frames) by the send-only socket.
struct TpacketTx<'a> {
    rings: &'a mut Rings,
    fd: BorrowedFd<'a>,
}

impl TxRing for TpacketTx<'_> {
    const VNET: bool = true;
    fn takes(&self, len: usize, _: bool) -> bool {
        HDR_LEN_LEGACY + len <= self.rings.geometry().tx_capacity()
    }
    fn push(&mut self, parts: &[IoPart<'_>]) -> bool {
        self.rings.tx_push(parts)
    }
    fn kick(&mut self) -> io::Result<bool> {
        self.rings.tx_flush(self.fd)
    }
}

/// `xdp`: the XSK's transmit ring; frames longer than a chunk, or with an offload for the
/// kernel (AF_XDP carries no virtio-net header), by the AF_PACKET socket.
struct XskTx<'a>(&'a mut Xsk);

impl TxRing for XskTx<'_> {
    const VNET: bool = false;
    fn takes(&self, len: usize, offload: bool) -> bool {
        !offload && len <= self.0.tx_capacity()
    }
    fn push(&mut self, parts: &[IoPart<'_>]) -> bool {
        self.0.tx_push(parts)
    }
    fn kick(&mut self) -> io::Result<bool> {
        // In zero-copy mode the driver takes the ring in its own time: socket frames go at
        // once, and may overtake the ring's.
        Ok(self.0.tx_flush()? || self.0.zero_copy())
    }
}

/// Sends a burst: frames `ring` takes are copied into it and go with one kick at the end;
/// the others leave by `sock`, a run of them with one `sendmmsg`, after the ring frames
/// before them have been handed over, so the burst keeps its order.
fn send_burst<R: TxRing>(
    ring: &mut R,
    sock: &PacketSocket,
    ifname: &IfName,
    src: &Batch,
    list: &[Egress],
) -> SendResult {
    let mut res = SendResult::default();
    let mut heads = [[0u8; OUT_HEAD_MAX]; BURST];
    let mut vnets = [[0u8; HDR_LEN_LEGACY]; BURST];
    for chunk in list.chunks(BURST) {
        // Frames waiting for the socket: they borrow this chunk's heads.
        let mut run: Vec<Vec<IoPart<'_>>> = Vec::new();
        let mut run_egress: Vec<&Egress> = Vec::new();
        let mut lens = [0usize; BURST];
        let mut offloads = [false; BURST];
        for (k, e) in chunk.iter().enumerate() {
            let f = &src.frames[e.frame];
            lens[k] = f.out_head(e.action, &mut heads[k]);
            let vnet = f.out_vnet(e.action);
            offloads[k] = vnet.is_gso() || vnet.needs_csum();
            vnets[k] = vnet.to_legacy_bytes();
        }
        for (k, e) in chunk.iter().enumerate() {
            let len = out_len(src, e);
            let head: &[u8] = &heads[k][..lens[k]];
            if ring.takes(len as usize, offloads[k]) {
                if !run.is_empty() {
                    send_run(sock, ifname, &mut run, &mut run_egress, src, &mut res);
                }
                let prefix: &[&[u8]] = if R::VNET { &[&vnets[k], head] } else { &[head] };
                let Some(parts) = out_parts(src, e, prefix, &mut res) else { continue };
                if ring.push(&parts) {
                    res.sent += 1;
                } else {
                    res.no_room.0 += 1;
                    res.no_room.1 += len;
                }
                continue;
            }
            if run.is_empty() {
                match ring.kick() {
                    Ok(true) => {}
                    Ok(false) => {
                        res.no_room.0 += 1;
                        res.no_room.1 += len;
                        continue;
                    }
                    Err(err) => {
                        log::debug!("{ifname}: send (ring): {err}");
                        res.errors.0 += 1;
                        res.errors.1 += len;
                        continue;
                    }
                }
            }
            let Some(parts) = out_parts(src, e, &[&vnets[k], head], &mut res) else { continue };
            run.push(parts);
            run_egress.push(e);
        }
        if !run.is_empty() {
            send_run(sock, ifname, &mut run, &mut run_egress, src, &mut res);
        }
    }
    match ring.kick() {
        Ok(done) => res.unflushed = !done,
        Err(err) => log::debug!("{ifname}: send (ring): {err}"),
    }
    res
}

/// `sendmmsg` of a run of frames (for the egress entries `run_egress`), counted into `res`;
/// both are emptied.
fn send_run<'a>(
    sock: &PacketSocket,
    ifname: &IfName,
    run: &mut Vec<Vec<IoPart<'a>>>,
    run_egress: &mut Vec<&Egress>,
    src: &Batch,
    res: &mut SendResult,
) {
    let refs: Vec<&[IoPart<'_>]> = run.iter().map(|v| &v[..]).collect();
    send_counted(sock, ifname, &refs, run_egress, src, res);
    run.clear();
    run_egress.clear();
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

/// `sendmmsg` of `frames` (for the egress entries `sendable`), counted into `res`. A frame
/// the kernel refuses (longer than the interface's MTU, say: `EMSGSIZE`) is counted as an
/// error and the frames after it are still sent: `sendmmsg` stops at the first failure and
/// reports only how many went before it, so the rest are tried again from there. When the
/// socket has no room, the rest have none either.
fn send_counted(
    sock: &PacketSocket,
    ifname: &IfName,
    frames: &[&[IoPart<'_>]],
    sendable: &[&Egress],
    src: &Batch,
    res: &mut SendResult,
) {
    let mut i = 0;
    // Each round sends at least one frame, refuses one, or stops.
    while i < frames.len() {
        match sock.send_batch(&frames[i..]) {
            Ok(0) => break,
            Ok(sent) => {
                res.sent += sent as u64;
                i += sent;
            }
            Err(err) => {
                log::debug!("{ifname}: send: {err}");
                res.errors.0 += 1;
                res.errors.1 += out_len(src, sendable[i]);
                i += 1;
            }
        }
    }
    for e in &sendable[i..] {
        res.no_room.0 += 1;
        res.no_room.1 += out_len(src, e);
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

    fn flush(&mut self) -> bool {
        let done = if let Some(RingIo { rings, .. }) = self.ring.as_mut() {
            TpacketTx { rings, fd: self.sock.as_fd() }.kick()
        } else if let Some(x) = self.xdp.as_mut() {
            XskTx(&mut x.xsk).kick()
        } else {
            return false;
        };
        match done {
            Ok(done) => !done,
            Err(err) => {
                // Left for the next burst.
                log::debug!("{}: send (ring): {err}", self.ifname);
                false
            }
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::switch::TagAction;

    /// One frame the kernel refuses in the middle of a run costs that frame only: the ones
    /// after it still go (before, they were all counted as no room and dropped, so one
    /// tenant's oversized frames took down the others' frames to the same port).
    #[test]
    fn a_refused_frame_does_not_take_the_rest_of_its_run_down() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        // A send buffer of a few KiB: a datagram longer than it is refused with EMSGSIZE.
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
        let sock = PacketSocket::from_fd(OwnedFd::from(a));
        let lens = [100usize, 60000, 200, 300];
        let mut src = Batch::new();
        src.ensure_bufs(lens.len(), 0);
        for (i, &len) in lens.iter().enumerate() {
            src.bufs[i][..len].fill(i as u8);
            src.push_local(i as u16, 0, len, VnetHdr::default(), None);
        }
        let list: Vec<Egress> = (0..lens.len()).map(|frame| Egress { frame, action: TagAction::Keep }).collect();
        let payloads: Vec<Vec<u8>> = list.iter().map(|e| src.materialize(e.frame, e.action, usize::MAX)).collect();
        let parts: Vec<Vec<IoPart<'_>>> = payloads.iter().map(|p| vec![IoPart::Bytes(p)]).collect();
        let refs: Vec<&[IoPart<'_>]> = parts.iter().map(|v| &v[..]).collect();
        let sendable: Vec<&Egress> = list.iter().collect();
        let mut res = SendResult::default();
        send_counted(&sock, &IfName::new("t").unwrap(), &refs, &sendable, &src, &mut res);
        assert_eq!(res.sent, 3);
        assert_eq!(res.errors, (1, 60000));
        assert_eq!(res.no_room, (0, 0));
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        b.set_nonblocking(true).unwrap();
        while let Ok(n) = b.recv(&mut buf) {
            got.push(n);
        }
        assert_eq!(got, vec![100, 200, 300], "the frames after the refused one were not sent");
    }
}
