//! `vxlan` ports: a VXLAN tunnel (RFC 7348) of the built-in bridge. Frames the switch sends
//! the port leave encapsulated in UDP to the remote VTEP that announced the destination MAC
//! (learned from the datagrams taken), or — broadcast, multicast, unknown unicast — to every
//! configured remote (head-end replication) or the multicast group. Datagrams received are
//! checked ([`crate::vxlan::Tunnel::receive`]) and their inner frames enter the switch in
//! the VLAN their VNI maps to.
//!
//! A trunk tunnel's frames leave the switch tagged; the tag selects the VNI and is removed.
//! GSO super-frames and partial checksums (from guests, TAPs, veths) are cut and completed
//! here, since the far side receives plain frames: each segment is its own datagram.
//! Frames longer than the underlay carries (its MTU less 50 bytes over IPv4, 70 over IPv6)
//! are dropped and counted (`mtu`): the switch refuses plain frames, this edge the segments.
//! Datagrams leave from the tunnel's UDP port (so the outer source port carries no per-flow
//! entropy for ECMP; the kernel's vxlan varies it).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use vmnetd_vhost::virtio_net::VnetHdr;

use crate::api::VxlanInfo;
use crate::datapath::batch::{Batch, BURST, MAX_FRAME, OUT_HEAD_MAX};
use crate::datapath::offload;
use crate::switch::{Egress, VlanId};
use crate::sys::iov::IoPart;
use crate::sys::udp::{self, Datagram, Dest};
use crate::vxlan::{self, RxDrop, Tunnel, HDR_LEN};

use super::{kernel_burst, EdgeState, EventCx, EventId, Outcome, PortEdge, Received, Refused, SendResult};

/// What a tunnel port counts besides the switch's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStats {
    pub encap: u64,
    pub encap_bytes: u64,
    pub decap: u64,
    pub decap_bytes: u64,
    /// Datagrams not taken, by [`RxDrop::ALL`] order.
    pub rx_drops: [u64; 4],
}

impl TunnelStats {
    pub fn count(&mut self, d: RxDrop) {
        self.rx_drops[d as usize] += 1;
    }
}

/// A tunnel port's state for `port list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanState {
    pub info: VxlanInfo,
    pub drops: Vec<(&'static str, u64)>,
}

/// How a tunnel port is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub tunnel: Tunnel,
    /// Where the socket binds: the local address (or any) and the tunnel's port.
    pub bind: SocketAddr,
    /// Multicast group and the interface it is joined on.
    pub group: Option<(IpAddr, u32)>,
    /// The underlay's MTU.
    pub underlay_mtu: usize,
}

/// One UDP socket (a local address and port) and the tunnels that share it, each with the
/// VNIs it carries. Whichever tunnel's event reads a burst takes its own datagrams at once
/// and parks the others' in their inboxes (the common case, one tunnel per socket, never
/// copies).
#[derive(Debug)]
struct SharedSock {
    sock: UdpSocket,
    /// Sockets on ephemeral ports of the same address that unicast datagrams leave from,
    /// chosen by a hash of the inner flow: the outer source port varies per flow, as the
    /// kernel's vxlan does, so an ECMP underlay spreads tunnels' flows over its paths.
    senders: Vec<UdpSocket>,
    bind: SocketAddr,
    members: Mutex<Vec<Member>>,
    /// `members.len()`, read per burst without the lock.
    count: AtomicUsize,
    groups: Mutex<Vec<IpAddr>>,
}

#[derive(Debug)]
struct Member {
    id: u64,
    vnis: Vec<u32>,
    inbox: Arc<Inbox>,
}

/// Datagrams another tunnel read for this one.
#[derive(Debug)]
struct Inbox {
    queue: Mutex<std::collections::VecDeque<Parked>>,
    efd: EventFd,
    /// Datagrams dropped because the inbox was full.
    overflow: AtomicU64,
}

#[derive(Debug)]
struct Parked {
    hdr: [u8; HDR_LEN],
    bytes: Vec<u8>,
    from: SocketAddr,
}

/// Datagrams an inbox holds at most (a tunnel that stopped reading loses the rest).
const INBOX_MAX: usize = 4096;

/// Source ports a tunnel's socket sends unicast datagrams from (see `SharedSock::senders`).
const SENDERS: usize = 8;

/// Datagrams in one `UDP_SEGMENT` train at most, and its bytes (an IPv4 UDP payload is at
/// most 65507 bytes).
const MAX_TRAIN: usize = 64;
const MAX_TRAIN_BYTES: usize = 65_000;

/// The sockets open now, by bound address.
static SOCKETS: Mutex<Vec<std::sync::Weak<SharedSock>>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl SharedSock {
    /// The socket bound to `bind` (shared), or a new one; `vnis` must not be carried by a
    /// tunnel on it already.
    fn join(bind: SocketAddr, vnis: &[u32], id: u64, inbox: Arc<Inbox>) -> io::Result<Arc<SharedSock>> {
        let mut all = SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        let found = all.iter().filter_map(std::sync::Weak::upgrade).find(|s| s.bind == bind);
        let shared = match found {
            Some(s) => s,
            None => {
                let sock = UdpSocket::bind(bind)?;
                sock.set_nonblocking(true)?;
                udp::set_buffers(&sock, 4 << 20);
                udp::set_gro(&sock, true);
                let bound = sock.local_addr().unwrap_or(bind);
                let senders = (0..SENDERS)
                    .map_while(|_| {
                        let s = UdpSocket::bind(SocketAddr::new(bind.ip(), 0)).ok()?;
                        s.set_nonblocking(true).ok()?;
                        udp::set_buffers(&s, 1 << 20);
                        Some(s)
                    })
                    .collect();
                let s = Arc::new(SharedSock {
                    sock,
                    senders,
                    bind: if bind.port() == 0 { bound } else { bind },
                    members: Mutex::new(Vec::new()),
                    count: AtomicUsize::new(0),
                    groups: Mutex::new(Vec::new()),
                });
                all.push(Arc::downgrade(&s));
                s
            }
        };
        let mut members = shared.members.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = vnis.iter().find(|v| members.iter().any(|m| m.vnis.contains(v))) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("VNI {v} is carried by another tunnel on {bind} already"),
            ));
        }
        members.push(Member { id, vnis: vnis.to_vec(), inbox });
        shared.count.store(members.len(), Ordering::Relaxed);
        // A shared socket hands datagrams over one by one: a train may mix VNIs of several
        // tunnels (the kernel coalesces by addresses and ports only).
        if members.len() == 2 {
            udp::set_gro(&shared.sock, false);
        }
        drop(members);
        Ok(shared)
    }

    fn leave(&self, id: u64) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.id != id);
        self.count.store(members.len(), Ordering::Relaxed);
        if members.len() == 1 {
            udp::set_gro(&self.sock, true);
        }
    }

    /// Joins `group` on `ifindex` once per socket.
    fn join_group(&self, group: IpAddr, ifindex: u32) -> io::Result<()> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if !groups.contains(&group) {
            udp::join_group(&self.sock, group, ifindex)?;
            groups.push(group);
        }
        Ok(())
    }

    /// Parks a datagram for the tunnel carrying `vni`, if another one does. Returns whether
    /// it was parked (or dropped because that tunnel's inbox is full).
    fn park(&self, me: u64, vni: u32, hdr: &[u8; HDR_LEN], bytes: &[u8], from: SocketAddr) -> bool {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = members.iter().find(|m| m.id != me && m.vnis.contains(&vni)) else {
            return false;
        };
        let mut q = m.inbox.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= INBOX_MAX {
            m.inbox.overflow.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        q.push_back(Parked { hdr: *hdr, bytes: bytes.to_vec(), from });
        drop(q);
        let _ = m.inbox.efd.write(1);
        true
    }
}

#[derive(Debug)]
pub struct VxlanPort {
    shared: Arc<SharedSock>,
    id: u64,
    inbox: Arc<Inbox>,
    /// The VNIs this tunnel carries.
    vnis: Vec<u32>,
    tunnel: Tunnel,
    port: u16,
    /// Where flooded frames go: each remote, and the group.
    flood: Vec<Dest>,
    /// The longest inner frame (Ethernet header included, no tag) the underlay carries.
    max_inner: usize,
    underlay_mtu: usize,
    /// Trains of datagrams go as one buffer (until the kernel refuses one).
    gso: bool,
    scratch: Vec<u8>,
    clock: Instant,
    hdrs: Vec<[u8; HDR_LEN]>,
    grams: Vec<Datagram>,
    pub stats: TunnelStats,
}

/// The largest inner frame an underlay of `mtu` carries to `family_v6` peers.
pub fn max_inner(mtu: usize, v6: bool) -> usize {
    mtu.saturating_sub(if v6 { vxlan::OVERHEAD_V6 } else { vxlan::OVERHEAD_V4 })
}

impl VxlanPort {
    /// Binds the tunnel's socket, or shares the one bound to the same address and port
    /// (and joins its group).
    pub fn open(setup: Setup) -> io::Result<VxlanPort> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let inbox =
            Arc::new(Inbox { queue: Mutex::new(std::collections::VecDeque::new()), efd, overflow: AtomicU64::new(0) });
        let vnis = setup.tunnel.map.vnis();
        let shared = SharedSock::join(setup.bind, &vnis, id, inbox.clone())?;
        if let Some((g, ifindex)) = setup.group {
            if let Err(e) = shared.join_group(g, ifindex) {
                shared.leave(id);
                return Err(e);
            }
        }
        // The port bound (the given one; a test's port 0 becomes the kernel's choice).
        let port = shared.bind.port();
        let mut flood: Vec<Dest> = setup.tunnel.remotes.iter().map(|a| Dest::new(SocketAddr::new(*a, port))).collect();
        if let Some((g, _)) = setup.group {
            flood.push(Dest::new(SocketAddr::new(g, port)));
        }
        let v6 = setup.bind.is_ipv6() || setup.tunnel.remotes.first().is_some_and(IpAddr::is_ipv6);
        Ok(VxlanPort {
            shared,
            id,
            inbox,
            vnis,
            port,
            flood,
            max_inner: max_inner(setup.underlay_mtu, v6),
            underlay_mtu: setup.underlay_mtu,
            gso: true,
            scratch: Vec::new(),
            tunnel: setup.tunnel,
            clock: Instant::now(),
            hdrs: vec![[0; HDR_LEN]; BURST],
            grams: vec![Datagram { len: 0, truncated: false, from: None, seg: 0 }; BURST],
            stats: TunnelStats::default(),
        })
    }

    fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    fn recv(&mut self, batch: &mut Batch) -> io::Result<Received> {
        batch.ensure_bufs(BURST, 0);
        let mut iovs: Vec<[IoSliceMut<'_>; 2]> = self
            .hdrs
            .iter_mut()
            .zip(batch.bufs.iter_mut())
            .map(|(h, b)| [IoSliceMut::new(h), IoSliceMut::new(&mut b[..MAX_FRAME - 4])])
            .collect();
        let n = udp::recv_batch(&self.shared.sock, &mut iovs, &mut self.grams)?;
        drop(iovs);
        // Datagrams of the other tunnels on this socket go to their inboxes.
        let mut skip = [false; BURST];
        if self.shared.count.load(Ordering::Relaxed) > 1 {
            for (i, g) in self.grams[..n].iter().copied().enumerate() {
                let (Some(vni), Some(from)) = (vxlan::parse_header(&self.hdrs[i]), g.from) else { continue };
                // A train read just before the socket became shared (UDP_GRO is off from
                // then on) is taken here datagram by datagram; others' VNIs in it count as
                // unknown.
                if self.vnis.contains(&vni) || g.truncated || g.len < HDR_LEN || g.seg > 0 {
                    continue;
                }
                skip[i] = self.shared.park(self.id, vni, &self.hdrs[i], &batch.bufs[i][..g.len - HDR_LEN], from);
            }
        }
        let now = self.now();
        decap_burst(&mut self.tunnel, &self.hdrs[..n], &self.grams[..n], &skip[..n], batch, now, &mut self.stats);
        Ok(Received { more: n == BURST, ..Default::default() })
    }

    /// Takes up to a burst of the datagrams another tunnel parked for this one.
    fn recv_parked(&mut self, batch: &mut Batch) -> Received {
        let _ = self.inbox.efd.read();
        batch.ensure_bufs(BURST, 0);
        let mut n = 0;
        let more = {
            let mut q = self.inbox.queue.lock().unwrap_or_else(|e| e.into_inner());
            while n < BURST {
                let Some(p) = q.pop_front() else { break };
                let len = p.bytes.len().min(MAX_FRAME - 4);
                batch.bufs[n][..len].copy_from_slice(&p.bytes[..len]);
                self.hdrs[n] = p.hdr;
                self.grams[n] = Datagram { len: len + HDR_LEN, truncated: false, from: Some(p.from), seg: 0 };
                n += 1;
            }
            !q.is_empty()
        };
        let now = self.now();
        decap_burst(&mut self.tunnel, &self.hdrs[..n], &self.grams[..n], &[], batch, now, &mut self.stats);
        Received { more, ..Default::default() }
    }

    fn send(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        let now = self.now();
        let mut res = SendResult::default();
        // Segments and completed frames of a chunk (kept between bursts: no allocation once
        // it has grown).
        let mut scratch = std::mem::take(&mut self.scratch);
        for chunk in list.chunks(BURST) {
            scratch.clear();
            // First what each frame becomes (its header, its bytes, where it goes), then the
            // datagrams that borrow from that.
            let mut plans: Vec<Plan> = Vec::with_capacity(chunk.len());
            for e in chunk {
                let f = &src.frames[e.frame];
                let mut head = [0u8; OUT_HEAD_MAX];
                let n = f.out_head(e.action, &mut head);
                let (vid, strip) = tag_of(&head[..n]);
                let out_len = e.action.splice().out_len(f.len as usize) as u64;
                let Some(vni) = self.tunnel.map.vni_of(vid) else {
                    // The switch sent a VLAN this tunnel does not carry: cannot happen with
                    // a port mode made from the map, but never send it into another VNI.
                    res.errors.0 += 1;
                    res.errors.1 += out_len;
                    continue;
                };
                let mut dmac = [0u8; 6];
                dmac.copy_from_slice(&head[..6]);
                let to = self.tunnel.destination(vni, &dmac, now).map(|a| Dest::new(SocketAddr::new(a, self.port)));
                let vnet = f.out_vnet(e.action);
                let body = if vnet.is_gso() || vnet.needs_csum() {
                    // The frame whole: straight from its buffer when it leaves as it came,
                    // else a copy with the tag action applied (and the tag removed).
                    let copy;
                    let (whole, vnet) = match src.contiguous(e.frame) {
                        Some(b) if e.action == crate::switch::TagAction::Keep && !strip => (b, vnet),
                        _ => {
                            let mut w = src.materialize(e.frame, e.action, MAX_FRAME);
                            let mut v = vnet;
                            if strip {
                                w.drain(12..16);
                                v = v.shifted(-4);
                            }
                            copy = w;
                            (&copy[..], v)
                        }
                    };
                    match software_offloads(whole, &vnet, self.max_inner, &mut scratch) {
                        Ok(segs) => Body::Owned(segs),
                        Err(Refuse::Mtu) => {
                            res.mtu.0 += 1;
                            res.mtu.1 += out_len;
                            continue;
                        }
                        Err(Refuse::Bad) => {
                            res.bad_gso.0 += 1;
                            res.bad_gso.1 += out_len;
                            continue;
                        }
                    }
                } else {
                    let mut h = [0u8; OUT_HEAD_MAX];
                    let hl = if strip {
                        h[..12].copy_from_slice(&head[..12]);
                        h[12..n - 4].copy_from_slice(&head[16..n]);
                        n - 4
                    } else {
                        h[..n].copy_from_slice(&head[..n]);
                        n
                    };
                    let inner = hl + f.tail_len();
                    if inner > self.max_inner {
                        res.mtu.0 += 1;
                        res.mtu.1 += out_len;
                        continue;
                    }
                    Body::Plain { head: h, len: hl as u8, frame: e.frame }
                };
                let flow = flow_hash(
                    vni,
                    &head[..n.min(12)],
                    match &body {
                        Body::Owned(segs) => segs.first().map(|(a, l)| &scratch[*a..*a + *l]),
                        Body::Plain { .. } => None,
                    },
                );
                plans.push(Plan { hdr: vxlan::header(vni), body, to, out_len, flow });
            }
            self.send_plans(src, &plans, &scratch, &mut res);
        }
        self.scratch = scratch;
        res
    }

    fn send_plans(&mut self, src: &Batch, plans: &[Plan], scratch: &[u8], res: &mut SendResult) {
        let mut msgs: Vec<(Dest, Vec<IoPart<'_>>)> = Vec::new();
        // The socket each datagram leaves from: a sender by flow, or (a multicast group) the
        // tunnel's own, which holds the group's interface.
        let mut via: Vec<usize> = Vec::new();
        let senders = self.shared.senders.len();
        // Which plan each datagram belongs to.
        let mut owner: Vec<usize> = Vec::new();
        let mut unreadable = vec![false; plans.len()];
        for (k, p) in plans.iter().enumerate() {
            let dests: &[Dest] = match &p.to {
                Some(d) => std::slice::from_ref(d),
                None => &self.flood,
            };
            let pieces: Vec<Vec<IoPart<'_>>> = match &p.body {
                Body::Plain { head, len, frame } => {
                    let mut parts = vec![IoPart::Bytes(&p.hdr), IoPart::Bytes(&head[..usize::from(*len)])];
                    if !src.tail_io(*frame, &mut parts) {
                        unreadable[k] = true;
                        continue;
                    }
                    vec![parts]
                }
                Body::Owned(segs) => segs
                    .iter()
                    .map(|(a, l)| vec![IoPart::Bytes(&p.hdr), IoPart::Bytes(&scratch[*a..*a + *l])])
                    .collect(),
            };
            for d in dests {
                let v =
                    if senders == 0 || d.addr().ip().is_multicast() { usize::MAX } else { p.flow as usize % senders };
                for parts in &pieces {
                    msgs.push((*d, parts.clone()));
                    owner.push(k);
                    via.push(v);
                }
            }
        }
        // Per destination in order (a flood alternates remotes), so that datagrams to one
        // remote line up into trains.
        let mut order: Vec<usize> = (0..msgs.len()).collect();
        order.sort_by_key(|i| (via[*i], msgs[*i].0.addr()));
        let lens: Vec<usize> = msgs.iter().map(|(_, p)| p.iter().map(IoPart::len).sum()).collect();
        // Trains: runs of datagrams to one destination, all of one size but the last, sent as
        // one buffer (`UDP_SEGMENT`).
        let mut trains: Vec<std::ops::Range<usize>> = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let (d, l) = (msgs[order[i]].0, lens[order[i]]);
            let mut j = i + 1;
            let mut total = l;
            while self.gso && j < order.len() && j - i < MAX_TRAIN {
                let (dj, lj) = (msgs[order[j]].0, lens[order[j]]);
                if dj != d || via[order[j]] != via[order[i]] || lj > l || total + lj > MAX_TRAIN_BYTES {
                    break;
                }
                total += lj;
                j += 1;
                if lj < l {
                    break;
                }
            }
            trains.push(i..j);
            i = j;
        }
        let mut failed = vec![false; plans.len()];
        let train_parts: Vec<Vec<IoPart<'_>>> =
            trains.iter().map(|r| order[r.clone()].iter().flat_map(|k| msgs[*k].1.iter().copied()).collect()).collect();
        let outs: Vec<udp::Out<'_>> = trains
            .iter()
            .zip(&train_parts)
            .map(|(r, parts)| udp::Out {
                dest: msgs[order[r.start]].0,
                parts,
                seg: if r.len() > 1 { lens[order[r.start]] as u16 } else { 0 },
            })
            .collect();
        let mut at = 0;
        while at < outs.len() {
            // A run of messages that leave from one socket.
            let v = via[order[trains[at].start]];
            let mut end = at + 1;
            while end < outs.len() && end - at < 64 && via[order[trains[end].start]] == v {
                end += 1;
            }
            let sock = self.shared.senders.get(v).unwrap_or(&self.shared.sock);
            match udp::send_batch(sock, &outs[at..end]) {
                Ok(0) => {
                    // No room in the socket buffer: the rest would not fit either.
                    for r in &trains[at..] {
                        for k in &order[r.clone()] {
                            failed[owner[*k]] = true;
                        }
                    }
                    break;
                }
                Ok(sent) => {
                    for r in &trains[at..at + sent] {
                        for k in &order[r.clone()] {
                            self.stats.encap += 1;
                            self.stats.encap_bytes += (lens[*k] - HDR_LEN) as u64;
                        }
                    }
                    at += sent;
                }
                Err(e) if outs[at].seg > 0 => {
                    // The kernel or route cannot take trains (no UDP_SEGMENT, or a device
                    // that refuses them): send datagram by datagram from now on.
                    log::warn!("vxlan: sending datagram trains failed ({e}); sending one by one");
                    self.gso = false;
                    for k in &order[trains[at].clone()] {
                        let one = udp::Out { dest: msgs[*k].0, parts: &msgs[*k].1, seg: 0 };
                        match udp::send_batch(sock, std::slice::from_ref(&one)) {
                            Ok(1) => {
                                self.stats.encap += 1;
                                self.stats.encap_bytes += (lens[*k] - HDR_LEN) as u64;
                            }
                            _ => failed[owner[*k]] = true,
                        }
                    }
                    at += 1;
                }
                Err(e) => {
                    // This datagram failed (an unreachable remote, say): the others go on.
                    log::debug!("vxlan: send to {:?}: {e}", outs[at].dest);
                    for k in &order[trains[at].clone()] {
                        failed[owner[*k]] = true;
                    }
                    at += 1;
                }
            }
        }
        for (k, p) in plans.iter().enumerate() {
            if unreadable[k] {
                res.errors.0 += 1;
                res.errors.1 += p.out_len;
            } else if failed[k] {
                res.no_room.0 += 1;
                res.no_room.1 += p.out_len;
            } else {
                res.sent += 1;
            }
        }
    }

    pub fn state(&self) -> VxlanState {
        let now = self.now();
        VxlanState {
            info: VxlanInfo {
                encapsulated: self.stats.encap,
                encapsulated_bytes: self.stats.encap_bytes,
                decapsulated: self.stats.decap,
                decapsulated_bytes: self.stats.decap_bytes,
                remote_macs: self.tunnel.table.entries(now).count(),
                underlay_mtu: self.underlay_mtu,
            },
            drops: RxDrop::ALL
                .iter()
                .map(|d| (d.name(), self.stats.rx_drops[*d as usize]))
                .chain([("vxlan_inbox_full", self.inbox.overflow.load(Ordering::Relaxed))])
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// One frame to send: its VXLAN header, its bytes, and where (`None`: flood).
struct Plan {
    hdr: [u8; HDR_LEN],
    body: Body,
    to: Option<Dest>,
    out_len: u64,
    /// The inner flow's hash (picks the source port).
    flow: u64,
}

enum Body {
    /// Our head copy (tag removed) and the frame's tail where it lives.
    Plain { head: [u8; OUT_HEAD_MAX], len: u8, frame: usize },
    /// Frames rebuilt in software (segments, or one with its checksum completed): spans of
    /// the port's scratch buffer.
    Owned(Vec<(usize, usize)>),
}

enum Refuse {
    Mtu,
    Bad,
}

/// A hash of an inner flow: its VNI and MAC addresses, and for an IPv4 frame at hand its
/// addresses and ports.
fn flow_hash(vni: u32, macs: &[u8], frame: Option<&[u8]>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ u64::from(vni);
    let mut eat = |b: &[u8]| {
        for x in b {
            h = (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(macs);
    if let Some(f) = frame.filter(|f| f.len() >= 38 && f[12..14] == [0x08, 0x00]) {
        eat(&f[26..38]);
    }
    // FNV's low bits depend only on the inputs' low bits, and the source port is picked by
    // the low bits: a full finaliser (MurmurHash3's) spreads every input bit over them.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The VLAN of an output head and whether it carries an 802.1Q tag to remove.
fn tag_of(head: &[u8]) -> (Option<u16>, bool) {
    if head.len() >= 18 && head[12..14] == [0x81, 0x00] {
        (Some(u16::from_be_bytes([head[14], head[15]]) & 0x0fff), true)
    } else {
        (None, false)
    }
}

/// Cuts a GSO frame into segments, or completes its checksum: the far side of a tunnel takes
/// only plain frames. Each must fit `max_inner`. The frames are appended to `scratch`;
/// returns where (nothing is left there on an error).
fn software_offloads(
    frame: &[u8],
    vnet: &VnetHdr,
    max_inner: usize,
    scratch: &mut Vec<u8>,
) -> Result<Vec<(usize, usize)>, Refuse> {
    let mark = scratch.len();
    let mut spans = Vec::new();
    let r = if vnet.is_gso() {
        let mut too_big = false;
        let r = offload::segment(frame, vnet, &mut |s| {
            if s.len() > max_inner {
                too_big = true;
                return false;
            }
            spans.push((scratch.len(), s.len()));
            scratch.extend_from_slice(s);
            true
        });
        match (r, too_big) {
            (Err(_), _) => Err(Refuse::Bad),
            (Ok(_), true) => Err(Refuse::Mtu),
            (Ok(_), false) => Ok(spans),
        }
    } else if frame.len() > max_inner {
        Err(Refuse::Mtu)
    } else {
        scratch.extend_from_slice(frame);
        offload::complete_csum(&mut scratch[mark..], usize::from(vnet.csum_start), usize::from(vnet.csum_offset))
            .map(|()| vec![(mark, frame.len())])
            .map_err(|_| Refuse::Bad)
    };
    if r.is_err() {
        scratch.truncate(mark);
    }
    r
}

/// An 802.1Q tag (TPID, TCI) a decapsulated frame enters the switch with.
type Tag = Option<(u16, u16)>;

/// Takes a burst of received datagrams into `batch`: `hdrs[i]` is datagram `i`'s first
/// [`HDR_LEN`] bytes, its inner frame is in `batch.bufs[i]`. Datagrams the tunnel refuses are
/// counted in `stats` and left out.
pub fn decap_burst(
    tunnel: &mut Tunnel,
    hdrs: &[[u8; HDR_LEN]],
    grams: &[Datagram],
    skip: &[bool],
    batch: &mut Batch,
    now: Duration,
    stats: &mut TunnelStats,
) {
    // The datagrams of a buffer taken: (offset, inner length, the VLAN tag to put in).
    let mut taken: Vec<(usize, usize, Tag)> = Vec::new();
    let mut merged: Vec<offload::Coalesced> = Vec::new();
    for (i, (h, g)) in hdrs.iter().zip(grams).enumerate() {
        if skip.get(i) == Some(&true) {
            continue;
        }
        let Some(buf) = batch.bufs.get(i) else { break };
        let buf_len = buf.len();
        // The buffer holds everything after the first datagram's header.
        if g.truncated || g.len < HDR_LEN || g.len - HDR_LEN > buf_len {
            stats.count(RxDrop::BadHeader);
            continue;
        }
        let Some(from) = g.from else {
            stats.count(RxDrop::BadHeader);
            continue;
        };
        // A train (`UDP_GRO`) is datagrams of `seg` bytes back to back, the last shorter;
        // datagram k > 0 starts (its header) at byte k * seg - HDR_LEN of the buffer.
        let seg = if g.seg > HDR_LEN && g.seg < g.len { g.seg } else { g.len };
        taken.clear();
        let mut start = 0;
        while start < g.len {
            let dlen = seg.min(g.len - start);
            let at = start;
            let buf = &batch.bufs[i];
            let mut hdr = *h;
            if at > 0 {
                hdr.copy_from_slice(&buf[at - HDR_LEN..at]);
            }
            start += dlen;
            if dlen < HDR_LEN + 14 {
                stats.count(RxDrop::BadHeader);
                continue;
            }
            let inner_len = dlen - HDR_LEN;
            let mut eth = [0u8; 14];
            eth.copy_from_slice(&buf[at..at + 14]);
            match tunnel.receive(&hdr, &eth, from.ip(), now) {
                Ok(t) => {
                    stats.decap += 1;
                    stats.decap_bytes += inner_len as u64;
                    taken.push((at, inner_len, t.vlan.map(|v: VlanId| (0x8100u16, v.get()))));
                }
                Err(d) => stats.count(d),
            }
        }
        if taken.len() < 2 {
            for (at, len, tag) in &taken {
                batch.push_local(i as u16, *at, *len, VnetHdr::default(), *tag);
            }
            continue;
        }
        // A train of one TCP flow's segments becomes one frame again (as GRO would make it
        // for a kernel bridge): one decision, one send, one receive on the far side.
        let spans: Vec<(usize, usize)> = taken.iter().map(|(at, len, _)| (*at, *len)).collect();
        merged.clear();
        offload::coalesce_tcp4(&mut batch.bufs[i], &spans, &|a, b| taken[a].2 == taken[b].2, &mut merged);
        for m in &merged {
            batch.push_local(i as u16, m.at, m.len, m.vnet, taken[m.first].2);
        }
    }
}

impl Drop for VxlanPort {
    fn drop(&mut self) {
        self.shared.leave(self.id);
    }
}

impl PortEdge for VxlanPort {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    /// The socket (event 0) and the inbox of datagrams other tunnels on it read for this
    /// one (event 1).
    fn watches(&mut self) -> Vec<(OwnedFd, EventId)> {
        let mut w = Vec::new();
        if let Ok(fd) = self.shared.sock.as_fd().try_clone_to_owned() {
            w.push((fd, 0));
        }
        if let Ok(fd) = self.inbox.efd.as_fd().try_clone_to_owned() {
            w.push((fd, 1));
        }
        w
    }

    fn on_event(
        &mut self,
        ev: EventId,
        _cx: EventCx,
        batch: &mut Batch,
        ingress: &mut dyn FnMut(&mut Batch, Refused),
    ) -> Outcome {
        let r = if ev == 1 { Ok(self.recv_parked(batch)) } else { self.recv(batch) };
        kernel_burst(r, batch, ingress)
    }

    fn tx_burst(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        self.send(src, list)
    }

    fn state(&self) -> EdgeState {
        EdgeState::Vxlan(self.state())
    }

    fn remote_of(&self, vlan: VlanId, mac: [u8; 6]) -> Option<IpAddr> {
        let vni = match &self.tunnel.map {
            vxlan::VniMap::Single(v) => *v,
            vxlan::VniMap::Vlans(m) => m.iter().find(|(v, _)| *v == vlan).map(|(_, n)| *n)?,
        };
        self.tunnel.table.lookup(vni, &mac, self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::{TagAction, Tci};
    use std::net::Ipv4Addr;
    use vmnetd_vhost::virtio_net::{F_NEEDS_CSUM, GSO_TCPV4};

    fn lo() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    /// A tunnel on loopback whose only remote is itself: what it sends, it receives.
    fn looped(map: vxlan::VniMap, mtu: usize) -> VxlanPort {
        VxlanPort::open(Setup {
            tunnel: Tunnel::new(map, vec![lo()], false, Duration::from_secs(300)),
            bind: SocketAddr::new(lo(), 0),
            group: None,
            underlay_mtu: mtu,
        })
        .unwrap()
    }

    /// A batch holding `f` as its one (local) frame.
    fn one_frame(f: &[u8], vnet: VnetHdr) -> Batch {
        let mut b = Batch::new();
        b.ensure_bufs(1, 0);
        b.bufs[0][..f.len()].copy_from_slice(f);
        b.push_local(0, 0, f.len(), vnet, None);
        b
    }

    fn trunk() -> vxlan::VniMap {
        vxlan::VniMap::Vlans(vec![(VlanId::new(10).unwrap(), 1010), (VlanId::new(20).unwrap(), 1020)])
    }

    /// A TCP/IPv4 super-frame (untagged) with its offload header: checksum field holding the
    /// pseudo-header sum, as the kernel and guests hand it over.
    fn tso_frame(payload: usize, mss: u16) -> (Vec<u8>, VnetHdr) {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let tot = (40 + payload) as u16;
        f.extend([0x45, 0, (tot >> 8) as u8, tot as u8, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend([0x13, 0x88, 0, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend((0..payload).map(|i| (i % 251) as u8));
        let sum = offload::csum_add(offload::csum_add(0, &f[26..34]), &[0, 6]) + (20 + payload) as u32;
        let p = !offload::csum_fold(sum);
        f[50..52].copy_from_slice(&p.to_be_bytes());
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        };
        (f, vnet)
    }

    /// A tagged TSO frame from VLAN 20 leaves as ordinary segments in VNI 1020, without the
    /// tag, in one train; the far side takes the train, checks every segment and makes one
    /// GSO frame of it again, tagged into VLAN 20, that segments back into exactly the
    /// segments that were sent.
    #[test]
    fn gso_frames_cross_as_segments_and_are_merged_again() {
        let mut port = looped(trunk(), 1600);
        let (f, vnet) = tso_frame(4000, 1400);
        let src = one_frame(&f, vnet);
        let r = port.tx_burst(&src, &[Egress { frame: 0, action: TagAction::Push(Tci::new(0, false, 20)) }]);
        assert_eq!(r.sent, 1, "{r:?}");
        assert_eq!(port.stats.encap, 3, "4000 bytes in 1400-byte segments");
        let mut back = Batch::new();
        port.recv(&mut back).unwrap();
        // Sent as one train (UDP_SEGMENT), received as one (UDP_GRO): 1400 + 54 + 8 bytes each.
        assert_eq!((port.grams[0].seg, port.grams[0].len), (1462, 1462 * 2 + 1262), "{:?}", port.grams[0]);
        assert_eq!(port.stats.decap, 3);
        assert_eq!(back.len(), 1, "one flow's train is one frame again");
        let fr = back.frames[0];
        let bytes = back.materialize(0, TagAction::Keep, MAX_FRAME);
        assert_eq!(&bytes[12..16], &[0x81, 0x00, 0x00, 20], "VLAN 20 from VNI 1020");
        assert_eq!((fr.vnet.gso_type, fr.vnet.gso_size, fr.vnet.csum_start), (GSO_TCPV4, 1400, 38));
        let plain: Vec<u8> = bytes[..12].iter().chain(&bytes[16..]).copied().collect();
        let mut want = Vec::new();
        offload::segment(&f, &vnet, &mut |s| {
            want.push(s.to_vec());
            true
        })
        .unwrap();
        let mut got = Vec::new();
        offload::segment(&plain, &fr.vnet.shifted(-4), &mut |s| {
            got.push(s.to_vec());
            true
        })
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(port.tunnel.table.lookup(1020, &[2, 0, 0, 0, 0, 1], port.now()), Some(lo()));
    }

    /// A segment whose checksum is wrong is never merged (a merged frame's checksum is
    /// trusted downstream): it crosses alone, and so do the segments around it.
    #[test]
    fn a_corrupt_segment_is_not_merged() {
        let (f, vnet) = tso_frame(4000, 1400);
        let mut segs = Vec::new();
        offload::segment(&f, &vnet, &mut |s| {
            segs.push(s.to_vec());
            true
        })
        .unwrap();
        segs[1][60] ^= 0xff;
        let mut buf = vec![0u8; 8192];
        let mut spans = Vec::new();
        let mut at = 0;
        for s in &segs {
            buf[at..at + s.len()].copy_from_slice(s);
            spans.push((at, s.len()));
            at += s.len() + 8;
        }
        let mut out = Vec::new();
        offload::coalesce_tcp4(&mut buf, &spans, &|_, _| true, &mut out);
        assert_eq!(out.iter().map(|c| c.count).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(out.iter().all(|c| !c.vnet.is_gso()));
        assert_eq!(&buf[spans[1].0..spans[1].0 + spans[1].1], &segs[1][..], "left untouched");
        // Without the corruption all three merge.
        segs[1][60] ^= 0xff;
        buf[spans[1].0..spans[1].0 + spans[1].1].copy_from_slice(&segs[1]);
        out.clear();
        offload::coalesce_tcp4(&mut buf, &spans, &|_, _| true, &mut out);
        assert_eq!(out.iter().map(|c| c.count).collect::<Vec<_>>(), [3]);
        // Different classes (VLANs) never share a frame.
        out.clear();
        let mut fresh = vec![0u8; 8192];
        for (s, (a, _)) in segs.iter().zip(&spans) {
            fresh[*a..*a + s.len()].copy_from_slice(s);
        }
        offload::coalesce_tcp4(&mut fresh, &spans, &|a, b| (a == 2) == (b == 2), &mut out);
        assert_eq!(out.iter().map(|c| c.count).collect::<Vec<_>>(), [2, 1]);
    }

    /// Frames longer than the underlay carries are dropped and counted, never fragmented;
    /// a VLAN the tunnel does not map is never sent into another VNI.
    #[test]
    fn too_long_frames_and_unmapped_vlans_are_refused() {
        let mut port = looped(trunk(), 1000);
        let (f, mut vnet) = tso_frame(1200, 1100);
        vnet.gso_type = 0;
        let src = one_frame(&f, vnet);
        let tag = |v| TagAction::Push(Tci::new(0, false, v));
        let r = port.tx_burst(&src, &[Egress { frame: 0, action: tag(10) }]);
        assert_eq!(r.mtu.0, 1, "{r:?}");
        let (g, vnet) = tso_frame(3000, 1100);
        let src = one_frame(&g, vnet);
        let r = port.tx_burst(&src, &[Egress { frame: 0, action: tag(10) }, Egress { frame: 0, action: tag(30) }]);
        assert_eq!((r.mtu.0, r.errors.0, r.sent), (1, 1, 0), "{r:?}");
        assert_eq!(port.stats.encap, 0);
    }

    /// Two tunnels on one address and port share its socket; whichever reads takes the
    /// other's datagrams to its inbox. A VNI belongs to one tunnel only.
    #[test]
    fn tunnels_share_a_socket_by_vni() {
        let a = looped(vxlan::VniMap::Single(7), 1500);
        let bind = SocketAddr::new(lo(), a.port);
        let mk = |vni| {
            VxlanPort::open(Setup {
                tunnel: Tunnel::new(vxlan::VniMap::Single(vni), vec![lo()], false, Duration::from_secs(300)),
                bind,
                group: None,
                underlay_mtu: 1500,
            })
        };
        let mut b = mk(8).unwrap();
        assert_eq!(mk(7).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let mut a = a;
        // B sends one frame in VNI 8 to the shared socket; A's event reads it and parks it.
        let f = [[0xff; 6].as_slice(), &[2, 0, 0, 0, 0, 9], &[0x08, 0x06], &[0; 46]].concat();
        let src = one_frame(&f, VnetHdr::default());
        assert_eq!(b.tx_burst(&src, &[Egress { frame: 0, action: TagAction::Keep }]).sent, 1);
        std::thread::sleep(Duration::from_millis(20));
        let mut got = Batch::new();
        a.recv(&mut got).unwrap();
        assert!(got.is_empty(), "A took B's VNI");
        assert_eq!(a.stats.rx_drops.iter().sum::<u64>(), 0);
        let mut got = Batch::new();
        b.recv_parked(&mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(b.stats.decap, 1);
        drop(b);
        // B gone: its VNI is free again.
        assert!(mk(8).is_ok());
    }

    /// An IPv6 underlay: the same tunnel over [::1], 70 bytes of overhead.
    #[test]
    fn an_ipv6_underlay_carries_frames() {
        let six = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        let mut port = VxlanPort::open(Setup {
            tunnel: Tunnel::new(vxlan::VniMap::Single(42), vec![six], false, Duration::from_secs(300)),
            bind: SocketAddr::new(six, 0),
            group: None,
            underlay_mtu: 1500,
        })
        .unwrap();
        assert_eq!(port.max_inner, 1500 - 56, "1430-byte inner packets + 14 bytes of Ethernet");
        let f = [[0xff; 6].as_slice(), &[2, 0, 0, 0, 0, 7], &[0x08, 0x06], &[0; 46]].concat();
        let src = one_frame(&f, VnetHdr::default());
        assert_eq!(port.tx_burst(&src, &[Egress { frame: 0, action: TagAction::Keep }]).sent, 1);
        let mut got = Batch::new();
        port.recv(&mut got).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got.materialize(0, TagAction::Keep, MAX_FRAME), f);
        assert_eq!(port.tunnel.table.lookup(42, &[2, 0, 0, 0, 0, 7], port.now()), Some(six));
    }

    /// The outer source port follows the inner flow (ECMP entropy, as the kernel's vxlan):
    /// one flow always leaves from one port, different flows from several.
    #[test]
    fn source_ports_vary_by_flow() {
        let mut port = looped(vxlan::VniMap::Single(5), 1500);
        let mut ports = std::collections::BTreeMap::new();
        for round in 0..2 {
            for i in 0..32u8 {
                let f = [[2, 0, 0, 0, 1, i].as_slice(), &[2, 0, 0, 0, 0, 1], &[0x08, 0x06], &[0; 46]].concat();
                let src = one_frame(&f, VnetHdr::default());
                assert_eq!(port.tx_burst(&src, &[Egress { frame: 0, action: TagAction::Keep }]).sent, 1);
                let mut got = Batch::new();
                port.recv(&mut got).unwrap();
                assert_eq!(got.len(), 1);
                let from = port.grams[0].from.unwrap().port();
                assert_ne!(from, port.port, "unicast leaves from a flow's port, not the tunnel's");
                if round == 0 {
                    ports.insert(i, from);
                } else {
                    assert_eq!(ports[&i], from, "one flow, one source port");
                }
            }
        }
        let distinct: std::collections::BTreeSet<u16> = ports.values().copied().collect();
        assert!(distinct.len() >= 4, "{distinct:?}");
    }
}
