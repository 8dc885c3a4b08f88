//! `vhost-user` ports: a QEMU guest (or any vhost-user frontend) on the built-in bridge.
//!
//! The device and its socket live in the `vmnetd-vhost` crate; this edge moves frames
//! between the guest's virtqueues and the datapath. A guest's transmit burst is taken under
//! the device's lock, decided on, copied to every destination — straight from this guest's
//! memory into another guest's receive buffers when the destination is a guest too — and
//! only then handed back to the guest, so GET_VRING_BASE (which takes the same lock) never
//! sees a half-processed ring.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use vm_memory::GuestAddressSpace;
use vm_memory::{Bytes, GuestAddress};
use vmnetd_vhost::device::{DevState, Memory, QueueId, Shared};
use vmnetd_vhost::queue::{self, Part, RxError, RxScratch, RxWriter, Seg, TxFrame};
use vmnetd_vhost::server::Server;
use vmnetd_vhost::virtio_net::{features, VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6};

use crate::datapath::batch::{Batch, MAX_FRAME, OUT_HEAD_MAX, VHOST_BURST};
use crate::datapath::offload;
use crate::switch::{Egress, TagAction};

use super::{EdgeState, EventCx, EventId, Outcome, PortEdge, Refused, SendResult, VhostState};

/// Event of the device's notification (something the frontend set up changed).
const EV_DEVICE: EventId = 0;
/// Event of the control queue's kick.
const EV_CTRL: EventId = 250;
/// Event of transmit queue pair `p`'s kick: `EV_TX + p` (pairs 0..16).
const EV_TX: EventId = 1;

fn tx_event(pair: usize) -> EventId {
    EV_TX + pair as EventId
}

/// Bursts one event may run: a vhost burst is four times a kernel one, so either way a port
/// gives up its turn after 256 frames.
const BURSTS_PER_EVENT: usize = 2;

pub struct VhostPort {
    pub shared: Arc<Shared>,
    /// The socket and its connection thread; stopped when the port is dropped.
    server: Option<Server>,
    /// Where the switch's view of this port's frames is copied for software offloads.
    scratch: Vec<u8>,
    /// Transmit chains of the burst in progress.
    heads: Vec<u16>,
    /// Receive-chain bookkeeping, reused burst after burst.
    rx: RxScratch,
    /// The device's frontend migrated the guest away, as last seen (see
    /// [`vmnetd_vhost::device::DevState::migrated`]).
    migrated: bool,
    /// Frames waiting for the guest's receive queues to run again.
    hold: Hold,
}

impl std::fmt::Debug for VhostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VhostPort({})", self.shared.name)
    }
}

impl PortEdge for VhostPort {
    fn kind(&self) -> &'static str {
        "vhost-user"
    }

    /// The device's notification, and the kick eventfds to watch now, duplicated (so the
    /// frontend replacing them cannot pull an fd out from under epoll): transmit queues of
    /// started pairs, and the control queue. A queue the guest broke is not watched (its
    /// kicks would only wake us for nothing) until the frontend sets it up again.
    fn watches(&mut self) -> Vec<(OwnedFd, EventId)> {
        let st = self.shared.lock();
        let mut out = Vec::new();
        if let Ok(fd) = self.shared.notify.as_fd().try_clone_to_owned() {
            out.push((fd, EV_DEVICE));
        }
        for (i, v) in st.vrings.iter().enumerate() {
            let ev = match QueueId::of(i, st.pairs()) {
                QueueId::Ctrl => EV_CTRL,
                QueueId::Tx(p) => tx_event(p),
                QueueId::Rx(_) => continue,
            };
            if let (true, None, Some(k)) = (v.started, v.broken, v.kick.as_ref()) {
                if let Ok(fd) = k.as_fd().try_clone_to_owned() {
                    out.push((fd, ev));
                }
            }
        }
        out
    }

    /// Every queue once: a kick may have come before it was watched.
    fn startup_events(&self) -> Vec<EventId> {
        (0..usize::from(self.shared.queue_pairs)).map(tx_event).chain([EV_CTRL]).collect()
    }

    fn bursts_per_event(&self) -> usize {
        BURSTS_PER_EVENT
    }

    fn on_event(
        &mut self,
        ev: EventId,
        cx: EventCx,
        batch: &mut Batch,
        ingress: &mut dyn FnMut(&mut Batch, Refused),
    ) -> Outcome {
        match ev {
            EV_DEVICE => {
                let _ = self.shared.notify.read();
                let (announce, migrated) = {
                    let mut st = self.shared.lock();
                    (st.announce.take(), st.migrated())
                };
                // The guest just left through this port's connection (a migration's source
                // stopped): what was learned here is stale.
                let forget_learned = migrated && !self.migrated;
                self.migrated = migrated;
                if let Some(mac) = announce {
                    // As if the guest had sent it: the switch learns the MAC here (moving it
                    // from the port the guest left), and floods the RARP so that every
                    // switch on the way does the same.
                    batch.clear();
                    batch.ensure_bufs(1, 0);
                    let f = rarp(mac);
                    batch.bufs[0][..f.len()].copy_from_slice(&f);
                    batch.push_local(0, 0, f.len(), VnetHdr::default(), None);
                    ingress(batch, Refused::default());
                    batch.clear();
                }
                self.deliver_held();
                Outcome::Rewatch { forget_learned }
            }
            EV_CTRL => {
                self.control_queue(cx.from_epoll);
                Outcome::Idle
            }
            _ => self.tx_burst_from_guest(usize::from(ev - EV_TX), cx, batch, ingress),
        }
    }

    fn stop_polling(&mut self, ev: EventId) -> bool {
        if ev < EV_TX || ev == EV_CTRL {
            return false;
        }
        let pair = usize::from(ev - EV_TX);
        let mut st = self.shared.lock();
        if pair >= st.pairs() || !st.tx(pair).active() {
            return false;
        }
        let mem = st.mem.memory();
        let log = st.dirty_log();
        let v = st.tx(pair);
        let more = v.allow_kicks(&mem);
        if let Some(l) = &log {
            v.log_used(l);
        }
        more
    }

    fn tx_burst(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        self.send(src, list)
    }

    fn check_memory(&mut self) {
        let mut st = self.shared.lock();
        self.shared.check_memory(&mut st);
    }

    fn state(&self) -> EdgeState {
        let st = self.shared.lock();
        let mem = st.mem.memory();
        let pairs = st.pairs();
        let queues = st
            .vrings
            .iter()
            .enumerate()
            .filter(|(_, v)| v.started || v.broken.is_some())
            .map(|(i, v)| {
                let (size, next_avail, next_used, avail_idx) = v.position(&mem);
                crate::api::VhostQueue {
                    index: i,
                    name: match QueueId::of(i, pairs) {
                        QueueId::Rx(p) => format!("rx{p}"),
                        QueueId::Tx(p) => format!("tx{p}"),
                        QueueId::Ctrl => "ctrl".into(),
                    },
                    size,
                    started: v.started,
                    enabled: v.enabled,
                    broken: v.broken.as_ref().map(|e| e.to_string()),
                    next_avail,
                    next_used,
                    avail_idx,
                }
            })
            .collect();
        EdgeState::Vhost(VhostState {
            connected: st.connected,
            connections: st.connections,
            acked_features: st.acked_features,
            pairs_active: st.active_pair_indices().count(),
            pairs_max: self.shared.queue_pairs,
            guest_mac: st.guest_mac,
            needs_reset: st.needs_reset(),
            queues,
        })
    }

    /// Stops the socket and its connection thread (without waiting for it).
    fn release(mut self: Box<Self>, _delete_device: bool) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
    }
}

impl VhostPort {
    pub fn new(shared: Arc<Shared>, server: Server) -> VhostPort {
        VhostPort {
            shared,
            server: Some(server),
            scratch: Vec::new(),
            heads: Vec::with_capacity(VHOST_BURST),
            rx: RxScratch::default(),
            migrated: false,
            hold: Hold::default(),
        }
    }

    /// Serves the control queue (its kick read first when epoll reported it: a
    /// level-triggered fd left readable would wake the thread forever).
    fn control_queue(&mut self, from_epoll: bool) {
        use vm_memory::GuestAddressSpace as _;
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if from_epoll {
            st.ctrl().clear_kick();
        }
        if !st.ctrl().active() {
            return;
        }
        let mem = st.mem.memory();
        if let Err(e) = vmnetd_vhost::ctrl::process(&mut st, &mem, shared.queue_pairs) {
            let i = st.ctrl_index();
            shared.mark_broken(&mut st, i, e);
        }
    }

    /// One burst from the guest's transmit queue of `pair`, handed to `ingress` (decided
    /// and forwarded), then given back to the guest — all under the device lock.
    fn tx_burst_from_guest(
        &mut self,
        pair: usize,
        cx: EventCx,
        batch: &mut Batch,
        ingress: &mut dyn FnMut(&mut Batch, Refused),
    ) -> Outcome {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if pair >= st.pairs() || !st.tx(pair).active() {
            return Outcome::Idle;
        }
        if cx.from_epoll {
            st.tx(pair).clear_kick();
        }
        let mem = st.mem.memory().into_inner();
        self.heads.clear();
        let popped = pop_burst(&mut st, pair, &mem, batch, &mut self.heads);
        if let Some(e) = popped.broken {
            let i = QueueId::Tx(pair).index(st.pairs());
            shared.mark_broken(&mut st, i, e);
        }
        let refused =
            Refused { rx_error: (popped.bad_chains as u64, 0), bad_gso: (popped.bad_gso.0 as u64, popped.bad_gso.1) };
        if !batch.is_empty() || refused != Refused::default() {
            ingress(batch, refused);
        }
        let n = popped.chains;
        let more = finish_burst(&mut st, pair, &mem, &self.heads, n == VHOST_BURST, cx.poll);
        let alive = st.tx(pair).active();
        drop(st);
        // The burst's hold on the guest memory ends with it.
        batch.clear();
        if !alive {
            return Outcome::Idle;
        }
        Outcome::Burst { frames: n, more, pollable: cx.poll }
    }

    /// Writes frames of `src` into this guest's receive queues: per queue pair, one pass
    /// over the ring and one used-index update and interrupt decision for the whole burst.
    /// While the queues are not running with the frontend connected (a migration's
    /// switch-over), the frames are held (see [`Hold`]) and written first once they run.
    pub fn send(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        let mut res = SendResult::default();
        let VhostPort { shared, scratch, rx, hold, .. } = self;
        let shared: &Shared = shared;
        let mut st = shared.lock();
        // Held frames that expired or found no room since the last burst.
        let lost = std::mem::take(&mut hold.lost);
        res.no_room.0 += lost.0;
        res.no_room.1 += lost.1;
        if st.active_pair_indices().next().is_none() {
            if st.holds_frames() {
                hold.add(src, list, &mut res);
            } else {
                refuse_all(src, list, &mut res);
            }
            return res;
        }
        if !hold.is_empty() {
            let (held, egress) = hold.take();
            let mut r = SendResult::default();
            write_burst(shared, &mut st, scratch, rx, &held, &egress, &mut r);
            // Counted as sent when they were held.
            let failed = (r.no_room.0 + r.errors.0 + r.bad_gso.0, r.no_room.1 + r.errors.1 + r.bad_gso.1);
            log::debug!("vhost-user {}: {} held frames delivered, {} not", shared.name, r.sent, failed.0);
            res.no_room.0 += failed.0;
            res.no_room.1 += failed.1;
            hold.give_back(held);
        }
        write_burst(shared, &mut st, scratch, rx, src, list, &mut res);
        res
    }

    /// The device changed: frames held while its receive queues were stopped go to the
    /// guest if they run again (or are dropped if they waited too long).
    fn deliver_held(&mut self) {
        if self.hold.is_empty() {
            return;
        }
        let empty = Batch::default();
        let r = self.send(&empty, &[]);
        // Reported with the next burst sent here.
        self.hold.lost.0 += r.no_room.0;
        self.hold.lost.1 += r.no_room.1;
    }
}

/// Counts every frame of `list` as finding no room in the guest.
fn refuse_all(src: &Batch, list: &[Egress], res: &mut SendResult) {
    for e in list {
        res.no_room.0 += 1;
        res.no_room.1 += out_len(src, e);
    }
}

/// The length of `e`'s frame as it leaves.
fn out_len(src: &Batch, e: &Egress) -> u64 {
    e.action.splice().out_len(src.frames[e.frame].len as usize) as u64
}

/// Frames held for a guest whose receive queues are not running while its frontend is
/// connected (a migration's switch-over: the source stopped them, the destination has not
/// started them yet; see [`DevState::holds_frames`]): copied here, counted as sent, and
/// written into the guest first once its queues run again, so that the switch-over is a
/// pause rather than a loss for what was on its way. Bounded: [`HOLD_FRAMES`] frames and
/// [`HOLD_BYTES`] bytes (what does not fit is dropped), each for [`HOLD_TIME`] (then it is
/// dropped too, counted as no room).
#[derive(Default)]
struct Hold {
    /// The held frames, packed into the batch's local buffers…
    batch: Batch,
    /// … and when each came (oldest first).
    times: Vec<Instant>,
    /// Where the next frame goes: buffer and offset.
    buf: usize,
    at: usize,
    bytes: usize,
    /// Held frames (and bytes) dropped after being counted as sent, for the next result.
    lost: (u64, u64),
}

/// At most this many frames are held per port…
const HOLD_FRAMES: usize = 256;
/// … and this many bytes (a few 64 KiB GSO frames, or hundreds of small ones).
const HOLD_BYTES: usize = 1 << 20;
/// Held frames older than this are dropped: a switch-over takes tens of milliseconds
/// (QEMU allows 300 ms of downtime by default).
const HOLD_TIME: Duration = Duration::from_secs(1);

impl Hold {
    fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// How many of the oldest frames waited too long by `now`.
    fn expired(&self, now: Instant) -> usize {
        self.times.partition_point(|t| now.duration_since(*t) > HOLD_TIME)
    }

    /// Holds `list`'s frames of `src` as they leave (tag actions applied), counting them
    /// sent, or no room when they do not fit.
    fn add(&mut self, src: &Batch, list: &[Egress], res: &mut SendResult) {
        let now = Instant::now();
        let old = self.expired(now);
        if old > 0 && (2 * old >= self.times.len() || self.times.len() >= HOLD_FRAMES) {
            self.keep_from(old);
        }
        for e in list {
            let f = &src.frames[e.frame];
            let len = out_len(src, e) as usize;
            if self.batch.len() >= HOLD_FRAMES || self.bytes + len > HOLD_BYTES || len > MAX_FRAME {
                res.no_room.0 += 1;
                res.no_room.1 += len as u64;
                continue;
            }
            let bytes = src.materialize(e.frame, e.action, len);
            if bytes.len() != len {
                // Guest memory that could not be read.
                res.errors.0 += 1;
                res.errors.1 += len as u64;
                continue;
            }
            self.push(&bytes, f.out_vnet(e.action), now);
            res.sent += 1;
        }
    }

    fn push(&mut self, bytes: &[u8], vnet: VnetHdr, when: Instant) {
        let len = bytes.len();
        if self.at + len > MAX_FRAME {
            self.buf += 1;
            self.at = 0;
        }
        self.batch.ensure_bufs(self.buf + 1, 0);
        self.batch.bufs[self.buf][self.at..self.at + len].copy_from_slice(bytes);
        self.batch.push_local(self.buf as u16, self.at, len, vnet, None);
        self.times.push(when);
        self.at += len;
        self.bytes += len;
    }

    /// Drops the `n` oldest frames (counted as lost), keeping the others in order.
    fn keep_from(&mut self, n: usize) {
        let old = std::mem::take(self);
        self.lost = old.lost;
        for i in 0..old.batch.len() {
            let len = old.batch.frames[i].len as usize;
            if i < n {
                self.lost.0 += 1;
                self.lost.1 += len as u64;
            } else {
                let bytes = old.batch.materialize(i, TagAction::Keep, len);
                self.push(&bytes, old.batch.frames[i].vnet, old.times[i]);
            }
        }
    }

    /// The held frames and the egress list of those that did not wait too long (the
    /// others counted as lost), leaving the hold empty; the batch comes back through
    /// [`Hold::give_back`].
    fn take(&mut self) -> (Batch, Vec<Egress>) {
        let old = self.expired(Instant::now());
        let held = std::mem::take(&mut self.batch);
        for f in &held.frames[..old] {
            self.lost.0 += 1;
            self.lost.1 += u64::from(f.len);
        }
        let egress = (old..held.len()).map(|frame| Egress { frame, action: TagAction::Keep }).collect();
        self.times.clear();
        (self.buf, self.at, self.bytes) = (0, 0, 0);
        (held, egress)
    }

    fn give_back(&mut self, mut batch: Batch) {
        batch.clear();
        self.batch = batch;
    }
}

/// [`VhostPort::send`]'s burst into running receive queues.
fn write_burst(
    shared: &Shared,
    st: &mut DevState,
    scratch: &mut Vec<u8>,
    rx: &mut RxScratch,
    src: &Batch,
    list: &[Egress],
    res: &mut SendResult,
) {
    let mut pairs = [0usize; vmnetd_vhost::device::MAX_QUEUE_PAIRS as usize];
    let mut np = 0;
    for p in st.active_pair_indices().take(pairs.len()) {
        pairs[np] = p;
        np += 1;
    }
    if np == 0 {
        refuse_all(src, list, res);
        return;
    }
    let mem = st.mem.memory();
    let caps = Caps::of(st);
    // A migrating guest's dirty log, marked as frames are written (one branch per
    // write when it is not migrating).
    let log = st.dirty_log();
    let mut sx = src.xlate();
    for (k, &pair) in pairs[..np].iter().enumerate() {
        let vring = st.rx(pair);
        // Receive buffers are never waited for (a frame that finds none is dropped, as by
        // every switch), so the driver need not kick when it adds them: each kick is a
        // system call for a DPDK guest and a VM exit for a kernel one, per refill. (DPDK's
        // vhost library turns them off on every ring too.)
        vring.quiet_kicks(&mem);
        let mut w = RxWriter::new(&mut vring.queue, &mem, caps.mrg, caps.hdr_len, rx).with_log(log.as_deref());
        w.prefetch(if np == 1 { list.len() } else { list.len() / np + 1 });
        // Flows spread over the pairs by their addresses.
        for e in list.iter().filter(|e| np == 1 || flow(&src.frames[e.frame].head) % np == k) {
            let failed = match write_one(&mut w, scratch, &caps, src, sx.as_mut(), e) {
                Ok(()) => {
                    res.sent += 1;
                    continue;
                }
                Err(Failed::Rx(RxError::NoBuffers | RxError::Broken(_))) => &mut res.no_room,
                Err(Failed::Offload(err)) => {
                    log::debug!("vhost-user {}: cannot segment or checksum a frame: {err}", shared.name);
                    &mut res.bad_gso
                }
                Err(Failed::Rx(_)) => &mut res.errors,
            };
            failed.0 += 1;
            failed.1 += out_len(src, e);
        }
        let broken = w.broken();
        let interrupt = w.finish();
        if let Some(l) = &log {
            vring.log_used(l);
        }
        if interrupt {
            vring.signal();
        }
        if let Some(b) = broken {
            let i = QueueId::Rx(pair).index(st.pairs());
            shared.mark_broken(st, i, b);
        }
    }
}

/// The RARP a hypervisor sends for a guest after migrating it (what QEMU's
/// `qemu_announce_self` and DPDK's vhost library send): broadcast, from the guest's MAC,
/// "reverse request" for that same MAC; padded to the minimum frame size.
fn rarp(mac: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(&mac);
    f[32..38].copy_from_slice(&mac);
    f
}

/// Why a frame could not be written to a guest.
enum Failed {
    Rx(RxError),
    /// Software segmentation or checksum completion refused the frame.
    Offload(offload::Error),
}

impl From<RxError> for Failed {
    fn from(e: RxError) -> Failed {
        Failed::Rx(e)
    }
}

/// What a guest accepted.
struct Caps {
    mrg: bool,
    hdr_len: usize,
    csum: bool,
    tso4: bool,
    tso6: bool,
    ecn: bool,
}

impl Caps {
    fn of(st: &DevState) -> Caps {
        Caps {
            mrg: st.has(features::MRG_RXBUF),
            hdr_len: st.hdr_len(),
            csum: st.has(features::GUEST_CSUM),
            tso4: st.has(features::GUEST_TSO4),
            tso6: st.has(features::GUEST_TSO6),
            ecn: st.has(features::GUEST_ECN),
        }
    }

    fn takes_gso(&self, v: &VnetHdr) -> bool {
        if v.gso_type & GSO_ECN != 0 && !self.ecn {
            return false;
        }
        match v.gso_type & !GSO_ECN {
            GSO_TCPV4 => self.tso4 && self.csum,
            GSO_TCPV6 => self.tso6 && self.csum,
            _ => false,
        }
    }
}

fn flow(head: &[u8]) -> usize {
    head.iter().take(12).fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(*b)))
}

/// Writes one frame into a guest's receive queue, cutting it into segments or completing its
/// checksum first if the guest cannot take it as it is.
fn write_one<'s>(
    w: &mut RxWriter<'_>,
    scratch: &mut Vec<u8>,
    caps: &Caps,
    src: &'s Batch,
    mut sx: Option<&mut vmnetd_vhost::ring::Xlate<'s>>,
    e: &Egress,
) -> Result<(), Failed> {
    let f = &src.frames[e.frame];
    let mut vnet = f.out_vnet(e.action);
    let gso = vnet.is_gso();
    if (gso && !caps.takes_gso(&vnet)) || (vnet.needs_csum() && !caps.csum) {
        *scratch = src.materialize(e.frame, e.action, MAX_FRAME);
        if gso {
            let mut r = Ok(());
            // Stops at the first segment the guest has no room for.
            offload::segment(scratch, &vnet, &mut |seg| {
                r = w.write(&VnetHdr::default(), &[Part::Bytes(seg)]);
                r.is_ok()
            })
            .map_err(Failed::Offload)?;
            return Ok(r?);
        }
        offload::complete_csum(scratch, usize::from(vnet.csum_start), usize::from(vnet.csum_offset))
            .map_err(Failed::Offload)?;
        return Ok(w.write(&VnetHdr::default(), &[Part::Bytes(scratch)])?);
    }
    if !caps.csum {
        vnet.flags &= !(F_NEEDS_CSUM | F_DATA_VALID);
    }
    if e.action == crate::switch::TagAction::Keep {
        // The usual frame (untouched, its tail one guest segment): no list of parts.
        let tail = src.one_guest_seg(e.frame).and_then(|s| sx.as_deref_mut()?.slice(s.addr, s.len as usize));
        if let Some(t) = tail {
            return Ok(w.write_head_tail(&vnet, f.head(), t)?);
        }
    }
    let mut head = [0u8; OUT_HEAD_MAX];
    let mut parts: SmallVec<[Part<'_>; 4]> = SmallVec::new();
    if e.action == crate::switch::TagAction::Keep {
        // Straight from the burst (bytes written long ago): no fresh stack copy to reload.
        parts.push(Part::Bytes(f.head()));
    } else {
        let n = f.out_head(e.action, &mut head);
        parts.push(Part::Bytes(&head[..n]));
    }
    src.tail_parts(e.frame, sx, &mut parts);
    Ok(w.write(&vnet, &parts)?)
}

/// What [`pop_burst`] took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Popped {
    /// Chains taken (refused ones included).
    pub chains: usize,
    /// Chains that could not be read (bad descriptors), refused.
    pub bad_chains: usize,
    /// Frames whose offload request was impossible, refused: (frames, bytes).
    pub bad_gso: (usize, u64),
    /// The driver broke the ring: the queue must not be serviced any more.
    pub broken: Option<vmnetd_vhost::ring::RingError>,
}

/// Bytes of a GSO frame's start read to check its headers (Ethernet, tag, IPv6 or IPv4 with
/// options, TCP with options).
const GSO_HEADERS: usize = 18 + 60 + 60;

/// Takes up to a burst of frames from transmit pair `pair` into `batch`; the chains go to
/// `heads` (all of them, refused ones too, to be handed back by [`finish_burst`]). Frames
/// whose virtio-net header asks for something impossible (see [`offload::check_vnet`] and
/// [`offload::check_gso_frame`]) are refused here, before the switch sees them.
fn pop_burst(st: &mut DevState, pair: usize, mem: &Arc<Memory>, batch: &mut Batch, heads: &mut Vec<u16>) -> Popped {
    let hl = st.hdr_len();
    let acked = st.acked_features;
    let v = st.tx(pair);
    v.quiet_kicks(mem);
    let q = &mut v.queue;
    batch.mem = Some(mem.clone());
    let mut p = Popped::default();
    let Batch { frames, segs, .. } = batch;
    let r = queue::pop_tx(q, mem, hl, VHOST_BURST, segs, |h, r, segs| {
        heads.push(h);
        match r {
            Ok(f) => {
                if f.vnet.flags | f.vnet.gso_type != 0 {
                    if let Err(e) = check_offloads(mem, segs, f, acked) {
                        log::debug!("refused a transmit frame: {e}");
                        p.bad_gso.0 += 1;
                        p.bad_gso.1 += u64::from(f.len);
                        segs.truncate(f.first_seg as usize);
                        return;
                    }
                }
                frames.push(crate::datapath::batch::Frame::guest(f));
            }
            Err(e) => {
                log::debug!("refused a transmit chain: {e}");
                p.bad_chains += 1;
            }
        }
    });
    p.chains = heads.len();
    p.broken = r.err();
    p
}

/// The offload checks of one guest frame: the header against the frame's length and the
/// guest's features, and a GSO frame's IP and TCP/UDP headers against the frame.
fn check_offloads(mem: &Memory, segs: &[Seg], f: &TxFrame, acked: u64) -> Result<(), offload::Error> {
    offload::check_vnet(&f.vnet, f.len as usize, acked)?;
    if !f.vnet.is_gso() {
        return Ok(());
    }
    let mut head = [0u8; GSO_HEADERS];
    let hl = usize::from(f.head_len);
    head[..hl].copy_from_slice(&f.head[..hl]);
    let mut got = hl;
    for s in &segs[f.first_seg as usize..f.first_seg as usize + usize::from(f.nsegs)] {
        if got == GSO_HEADERS {
            break;
        }
        let n = (s.len as usize).min(GSO_HEADERS - got);
        if mem.read_slice(&mut head[got..got + n], GuestAddress(s.addr)).is_err() {
            return Err(offload::Error::Truncated);
        }
        got += n;
    }
    offload::check_gso_frame(&head[..got], f.len as usize, &f.vnet)
}

/// Hands the burst's chains back to the guest, interrupts it if it wants, and (unless
/// `poll`, or the burst was full) re-arms notifications. Returns whether more frames are
/// waiting.
fn finish_burst(st: &mut DevState, pair: usize, mem: &Memory, heads: &[u16], full: bool, poll: bool) -> bool {
    let log = st.dirty_log();
    let v = st.tx(pair);
    let interrupt = queue::complete_tx(&mut v.queue, mem, heads);
    let more = full || (!poll && v.allow_kicks(mem));
    // The used ring (elements, index, notification fields) of a migrating guest.
    if let Some(l) = &log {
        v.log_used(l);
    }
    if interrupt {
        v.signal();
    }
    more
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `n` local frames of `len` bytes, frame `i` filled with byte `i`.
    fn burst(n: usize, len: usize) -> (Batch, Vec<Egress>) {
        let mut b = Batch::new();
        b.ensure_bufs(n, 0);
        for i in 0..n {
            b.bufs[i][..len].fill(i as u8);
            b.push_local(i as u16, 0, len, VnetHdr::default(), None);
        }
        let list = (0..n).map(|frame| Egress { frame, action: TagAction::Keep }).collect();
        (b, list)
    }

    fn bytes_of(b: &Batch, list: &[Egress]) -> Vec<Vec<u8>> {
        list.iter().map(|e| b.materialize(e.frame, e.action, usize::MAX)).collect()
    }

    #[test]
    fn held_frames_come_back_in_order_and_what_does_not_fit_is_refused() {
        let mut h = Hold::default();
        let (src, list) = burst(3, 1000);
        let mut res = SendResult::default();
        h.add(&src, &list, &mut res);
        assert_eq!((res.sent, res.no_room), (3, (0, 0)));
        let (held, egress) = h.take();
        assert!(h.is_empty());
        assert_eq!(bytes_of(&held, &egress), bytes_of(&src, &list));
        h.give_back(held);

        // Frames beyond the frame bound are refused, counted as no room.
        let (src, list) = burst(HOLD_FRAMES + 5, 64);
        let mut res = SendResult::default();
        h.add(&src, &list, &mut res);
        assert_eq!((res.sent, res.no_room), (HOLD_FRAMES as u64, (5, 5 * 64)));
        let (held, egress) = h.take();
        assert_eq!(egress.len(), HOLD_FRAMES);
        assert_eq!(bytes_of(&held, &egress), bytes_of(&src, &list[..HOLD_FRAMES]));
        h.give_back(held);

        // And beyond the byte bound (17 frames of 64 KiB do not fit in 1 MiB).
        let (src, list) = burst(17, 65536);
        let mut res = SendResult::default();
        h.add(&src, &list, &mut res);
        assert_eq!((res.sent, res.no_room.0), (16, 1));
        assert_eq!(h.lost, (0, 0));
    }

    #[test]
    fn frames_that_waited_too_long_are_dropped_and_counted() {
        let mut h = Hold::default();
        let (src, list) = burst(4, 100);
        let mut res = SendResult::default();
        h.add(&src, &list, &mut res);
        let past = Instant::now().checked_sub(HOLD_TIME * 2).unwrap();
        h.times[0] = past;
        h.times[1] = past;
        let (held, egress) = h.take();
        assert_eq!(bytes_of(&held, &egress), bytes_of(&src, &list[2..]));
        assert_eq!(h.lost, (2, 200));

        // Adding to a hold whose oldest half expired drops those first, keeping the rest
        // in order.
        let mut h = Hold::default();
        h.add(&src, &list, &mut SendResult::default());
        h.times[0] = past;
        h.times[1] = past;
        let (more, more_list) = burst(1, 50);
        h.add(&more, &more_list, &mut SendResult::default());
        assert_eq!((h.batch.len(), h.lost), (3, (2, 200)));
        let (held, egress) = h.take();
        let mut want = bytes_of(&src, &list[2..]);
        want.extend(bytes_of(&more, &more_list));
        assert_eq!(bytes_of(&held, &egress), want);
    }
}
