//! The vhost-user-net device: protocol state shared between the connection's thread (which
//! answers the frontend through the `vhost` crate's [`BackendReqHandler`]) and the owner's
//! datapath thread (which moves frames through the virtqueues).
//!
//! Why not `vhost-user-backend`: that crate gives each device its own worker threads and hands
//! a device's vrings only to its own `handle_event`. A switch wants the opposite: one
//! datapath thread that owns every port's queues and copies frames from one guest's memory
//! straight into another's, as OVS-DPDK's PMD threads do. So this crate implements the
//! backend request handler itself (on the `vhost` crate) and keeps the queues in a
//! [`DevState`] behind one mutex that the datapath takes once per burst.
//!
//! Whenever the frontend changes something the datapath must notice (kick fds, ring
//! start/stop/enable, the memory table, a disconnect), [`Shared::changed`] bumps
//! `generation` and signals `notify`, an eventfd the datapath watches.

use std::fs::File;
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};

use crate::guard;
use crate::ring::RingError;
use crate::sys::dirtylog::DirtyLog;
use crate::virtio_net::{features, HDR_LEN, HDR_LEN_LEGACY};

/// Most memory regions one SET_MEM_TABLE may carry: `VHOST_MEMORY_BASELINE_NREGIONS`, what
/// QEMU and DPDK send at most (vmnetd does not offer the memory-slots protocol feature).
pub const MAX_MEM_REGIONS: usize = 8;

/// Largest ring a frontend may ask for.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most queue pairs a port can have (`--queues`).
pub const MAX_QUEUE_PAIRS: u16 = 16;

pub type Memory = GuestMemoryMmap<()>;

/// A virtqueue of a virtio-net device with `pairs` queue pairs: receiveq1, transmitq1, ...,
/// receiveqN, transmitqN, then the control queue (virtio 1.2 §5.1.2). The only place the
/// layout is written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueId {
    Rx(usize),
    Tx(usize),
    Ctrl,
}

impl QueueId {
    /// The vring index of this queue on a device with `pairs` pairs.
    pub const fn index(self, pairs: usize) -> usize {
        match self {
            QueueId::Rx(p) => 2 * p,
            QueueId::Tx(p) => 2 * p + 1,
            QueueId::Ctrl => 2 * pairs,
        }
    }

    /// The queue at vring `index` on a device with `pairs` pairs.
    pub const fn of(index: usize, pairs: usize) -> QueueId {
        if index >= 2 * pairs {
            QueueId::Ctrl
        } else if index % 2 == 0 {
            QueueId::Rx(index / 2)
        } else {
            QueueId::Tx(index / 2)
        }
    }
}

/// One virtqueue and its notifications.
pub struct Vring {
    pub queue: Queue,
    /// The frontend kicks here when it adds buffers (read 8 bytes to clear). Always a
    /// non-blocking eventfd.
    pub kick: Option<File>,
    /// We signal here when we used buffers (write 8 bytes). Always a non-blocking eventfd.
    pub call: Option<File>,
    /// We signal here when the driver broke the ring (QEMU logs "vhost vring error").
    pub err: Option<File>,
    /// The driver broke the ring (see [`RingError`]): the queue is not serviced until the
    /// frontend sets it up again (the device needs a reset, for this guest only).
    pub broken: Option<RingError>,
    /// Between SET_VRING_KICK and GET_VRING_BASE.
    pub started: bool,
    /// SET_VRING_ENABLE (always, without protocol features).
    pub enabled: bool,
    /// The frontend said SET_VRING_ENABLE for this ring (after SET_FEATURES).
    pub enable_said: bool,
    /// The used ring's guest physical address, when the frontend wants its writes logged
    /// (SET_VRING_ADDR with `VHOST_VRING_F_LOG`).
    pub log_used: Option<u64>,
    /// We asked the driver not to kick (polling) and have not asked again since: the next
    /// burst need not write the ring's notification field (a store to the line the driver
    /// reads the used index from, so it would cost the driver a cache miss per burst).
    /// Cleared whenever the ring starts or stops.
    kicks_off: bool,
}

impl Vring {
    fn new() -> Vring {
        Vring {
            // MAX_QUEUE_SIZE is a power of two, which is all Queue::new checks.
            queue: Queue::new(MAX_QUEUE_SIZE).unwrap_or_else(|_| unreachable!("valid queue size")),
            kick: None,
            call: None,
            err: None,
            broken: None,
            started: false,
            enabled: false,
            enable_said: false,
            log_used: None,
            kicks_off: false,
        }
    }

    /// Asks the driver not to kick this ring (the datapath polls it), unless it has been
    /// asked already.
    #[inline]
    pub fn quiet_kicks(&mut self, mem: &Memory) {
        if !self.kicks_off {
            crate::queue::disable_notification(&mut self.queue, mem);
            self.kicks_off = true;
        }
    }

    /// Asks the driver to kick again when it adds buffers; returns whether buffers arrived
    /// meanwhile (the caller must look at the ring once more).
    pub fn allow_kicks(&mut self, mem: &Memory) -> bool {
        self.kicks_off = false;
        crate::queue::enable_notification(&mut self.queue, mem)
    }

    /// Marks this ring's used ring dirty in `log` (when the frontend asked for it): its
    /// flags, index, elements and `avail_event`, a few pages at most. Called after a burst
    /// wrote any of them.
    #[inline]
    pub fn log_used(&self, log: &DirtyLog) {
        if let Some(gpa) = self.log_used {
            crate::queue::log_used_ring(log, gpa, self.queue.size());
        }
    }

    /// Where this ring stands (for `port list`): its size, the next available entry the
    /// backend takes and the next used entry it writes, and the guest's available index in
    /// `mem` (when the ring is set up and readable).
    pub fn position(&self, mem: &Memory) -> (u16, u16, u16, Option<u16>) {
        let avail = self
            .queue
            .ready()
            .then(|| self.queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire).ok())
            .flatten()
            .map(|w| w.0);
        (self.queue.size(), self.queue.next_avail(), self.queue.next_used(), avail)
    }

    /// Frames may move through this ring now.
    pub fn active(&self) -> bool {
        self.started && self.enabled && self.queue.ready() && self.broken.is_none()
    }

    /// Interrupts the driver (writes the call eventfd; never blocks: a counter the frontend
    /// filled up just loses the interrupt).
    pub fn signal(&self) {
        if let Some(mut c) = self.call.as_ref() {
            let _ = c.write(&1u64.to_ne_bytes());
        }
    }

    /// Clears a pending kick (reads the kick eventfd); non-blocking, so a frontend that
    /// drains its own kick cannot make us wait.
    pub fn clear_kick(&self) {
        if let Some(mut k) = self.kick.as_ref() {
            let mut b = [0u8; 8];
            let _ = std::io::Read::read(&mut k, &mut b);
        }
    }

    /// The driver broke this ring: stop servicing it, tell the frontend (its error eventfd)
    /// and the log, once.
    pub fn mark_broken(&mut self, e: RingError, port: &str, index: usize) {
        if self.broken.is_some() {
            return;
        }
        log::warn!("vhost-user {port}: queue {index} needs a reset: {e}; it is not serviced until the frontend sets it up again");
        self.broken = Some(e);
        if let Some(mut f) = self.err.as_ref() {
            let _ = f.write(&1u64.to_ne_bytes());
        }
    }
}

/// The device as the datapath sees it.
pub struct DevState {
    pub mem: GuestMemoryAtomic<Memory>,
    pub vrings: Vec<Vring>,
    pub acked_features: u64,
    pub acked_protocol_features: u64,
    pub connected: bool,
    /// Frontend connections accepted or made since the port was attached (a count above 1
    /// means the frontend reconnected — a QEMU restart, a crash — or a migration's
    /// destination connected).
    pub connections: u64,
    /// Bumped on every change the datapath must re-read.
    pub generation: u64,
    /// Queue pairs the guest uses (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET), when it says.
    pub active_pairs: Option<u16>,
    /// RX mode and MAC table set through the control queue.
    pub promisc: bool,
    pub allmulti: bool,
    pub guest_mac: Option<[u8; 6]>,
    pub mac_table: Vec<[u8; 6]>,
    /// The SIGBUS guard's registrations of the mappings behind `mem`.
    pub guards: Vec<guard::Registration>,
    /// The frontend shrank a memory file under us: every queue is broken until new memory
    /// comes (SET_MEM_TABLE) or the frontend reconnects.
    pub memory_failed: bool,
    /// The frontend's dirty log (SET_LOG_BASE); written only while LOG_ALL is acked.
    pub log: Option<Arc<DirtyLog>>,
    /// A MAC the frontend asked us to announce for the guest (SEND_RARP): the datapath
    /// sends a RARP from it into the switch, once.
    pub announce: Option<[u8; 6]>,
}

impl DevState {
    pub(crate) fn new(nvrings: usize) -> DevState {
        DevState {
            mem: GuestMemoryAtomic::new(Memory::default()),
            vrings: (0..nvrings).map(|_| Vring::new()).collect(),
            acked_features: 0,
            acked_protocol_features: 0,
            connected: false,
            connections: 0,
            generation: 0,
            active_pairs: None,
            promisc: true,
            allmulti: true,
            guest_mac: None,
            mac_table: Vec::new(),
            guards: Vec::new(),
            memory_failed: false,
            log: None,
            announce: None,
        }
    }

    /// The dirty log to mark during this burst: `Some` only while the frontend migrates
    /// the guest (LOG_ALL acked and a log set). Taken once per burst, under the lock.
    #[inline]
    pub fn dirty_log(&self) -> Option<Arc<DirtyLog>> {
        if self.acked_features & features::LOG_ALL == 0 {
            return None;
        }
        self.log.clone()
    }

    /// The frontend migrated the guest away: it logged (LOG_ALL acked, or a log set: QEMU
    /// keeps both after stopping the rings at the end of a migration) and has no ring
    /// running. Only then may another connection take the device over while this one is
    /// connected: a frontend that merely stopped its rings (a suspended or rebooting guest)
    /// keeps its port.
    pub fn migrated(&self) -> bool {
        (self.has(features::LOG_ALL) || self.log.is_some()) && !self.vrings.iter().any(|v| v.started)
    }

    /// Whether frames for the guest are worth keeping while its receive queues are not
    /// running (rather than dropped): a frontend is connected and no queue is broken. Then
    /// the queues are being set up or were stopped on purpose, and will run again soon: a
    /// migration's switch-over (the source stops its rings before the destination, which
    /// may not even have the guest's memory yet, starts its own), or a driver starting.
    pub fn holds_frames(&self) -> bool {
        self.connected && !self.memory_failed && self.vrings.iter().all(|v| v.broken.is_none())
    }

    /// The end of guest physical memory (the highest region's end), 0 without memory.
    pub fn memory_end(&self) -> u64 {
        mem_end(&self.mem.memory())
    }

    /// Whether the frontend shrank a memory file under us (a SIGBUS was caught in its
    /// memory, which now reads as zeros): then every queue is broken until new memory comes.
    pub fn check_memory(&mut self, port: &str) -> bool {
        if !self.memory_failed && self.guards.iter().any(guard::Registration::poisoned) {
            self.memory_failed = true;
            for (i, v) in self.vrings.iter_mut().enumerate() {
                v.mark_broken(RingError::MemoryTruncated, port, i);
            }
        }
        self.memory_failed
    }

    /// Why the device or one of its queues needs a reset, if it does.
    pub fn needs_reset(&self) -> Option<String> {
        self.vrings.iter().enumerate().find_map(|(i, v)| v.broken.map(|e| format!("queue {i}: {e}")))
    }

    pub fn has(&self, f: u64) -> bool {
        self.acked_features & f != 0
    }

    /// Size of the virtio-net header on this device's queues.
    pub fn hdr_len(&self) -> usize {
        if self.has(features::VERSION_1) || self.has(features::MRG_RXBUF) {
            HDR_LEN
        } else {
            HDR_LEN_LEGACY
        }
    }

    /// Index of the control queue.
    pub fn ctrl_index(&self) -> usize {
        QueueId::Ctrl.index(self.pairs())
    }

    /// Queue pairs the device has.
    pub fn pairs(&self) -> usize {
        (self.vrings.len() - 1) / 2
    }

    /// The receive queue of `pair` (frames toward the guest).
    pub fn rx(&mut self, pair: usize) -> &mut Vring {
        let i = QueueId::Rx(pair).index(self.pairs());
        &mut self.vrings[i]
    }

    /// The transmit queue of `pair` (frames from the guest).
    pub fn tx(&mut self, pair: usize) -> &mut Vring {
        let i = QueueId::Tx(pair).index(self.pairs());
        &mut self.vrings[i]
    }

    /// The control queue.
    pub fn ctrl(&mut self) -> &mut Vring {
        let i = self.ctrl_index();
        &mut self.vrings[i]
    }

    /// Data queue pairs that can carry frames now.
    pub fn active_pair_indices(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.pairs();
        (0..n).filter(move |&p| {
            self.vrings[QueueId::Rx(p).index(n)].active() && self.vrings[QueueId::Tx(p).index(n)].active()
        })
    }

    /// The frontend set ring `i` up again: it may be serviced again (unless its memory is
    /// gone, which only new memory repairs).
    fn reset_broken(&mut self, i: usize) {
        if !self.memory_failed {
            self.vrings[i].broken = None;
        }
    }

    fn reset_rings(&mut self) {
        for v in &mut self.vrings {
            *v = Vring::new();
        }
    }
}

/// A kick, call or error fd from the frontend: it must be an eventfd (anything else could
/// block the datapath, or be a file the frontend wants us to write into), and we only ever
/// use it non-blocking.
fn eventfd(f: File, port: &str, what: &str) -> VuResult<File> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap_or_default();
    if link.as_os_str() != "anon_inode:[eventfd]" {
        log::warn!("vhost-user {port}: refused a {what} fd that is not an eventfd ({})", link.display());
        return Err(VuError::ReqHandlerError(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the {what} fd is not an eventfd"),
        )));
    }
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(&f, FcntlArg::F_GETFL).map_err(|e| VuError::ReqHandlerError(e.into()))?;
    fcntl(&f, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK))
        .map_err(|e| VuError::ReqHandlerError(e.into()))?;
    Ok(f)
}

/// Checks a memory region against the file behind it before it is mapped: the range is
/// inside the file (a mapping past its end would fault on first touch), and the file is a
/// memfd, tmpfs or hugetlbfs file (memory, not a disk file whose I/O errors fault too).
/// A file the frontend shrinks later is caught by the SIGBUS guard ([`guard`]).
fn check_region(r: &VhostUserMemoryRegion, f: &File) -> Result<(), String> {
    use nix::sys::statfs::{fstatfs, HUGETLBFS_MAGIC, TMPFS_MAGIC};
    let (gpa, uva, size, offset) = (r.guest_phys_addr, r.user_addr, r.memory_size, r.mmap_offset);
    if size == 0 {
        return Err("empty region".into());
    }
    let overflow = || "region wraps around the address space".to_owned();
    gpa.checked_add(size).ok_or_else(overflow)?;
    uva.checked_add(size).ok_or_else(overflow)?;
    let end = offset.checked_add(size).ok_or_else(overflow)?;
    let st = nix::sys::stat::fstat(f).map_err(|e| format!("fstat: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("the memory fd is not a regular file".into());
    }
    let file_size = u64::try_from(st.st_size).unwrap_or(0);
    if end > file_size {
        return Err(format!("region of {size} bytes at offset {offset} is past the end of its {file_size}-byte file"));
    }
    let fs = fstatfs(f).map_err(|e| format!("fstatfs: {e}"))?.filesystem_type();
    if fs != TMPFS_MAGIC && fs != HUGETLBFS_MAGIC {
        return Err(format!("the memory file is not a memfd, tmpfs or hugetlbfs file (filesystem type {:#x})", fs.0));
    }
    if let Ok(seals) = nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_GET_SEALS) {
        let sealed = seals & libc::F_SEAL_SHRINK != 0;
        log::debug!(
            "memory region of {size} bytes: {}",
            if sealed { "sealed against shrinking" } else { "not sealed" }
        );
    }
    Ok(())
}

/// The connections to one port's socket. One of them owns the device: the datapath serves
/// its rings (`Shared::state`). The others wait with a device state of their own that the
/// datapath never sees: a live migration's destination QEMU connects and sets its device up
/// while the source still runs, on the same socket. A waiting connection takes the device
/// over when it starts a ring and the owner migrated the guest away (it logged dirty pages
/// and stopped all of its rings, GET_VRING_BASE, as a migration's source does before the
/// destination starts; see [`DevState::migrated`]), or when the owner goes away;
/// the owner it replaces keeps talking to a state of its own, and its later close changes
/// nothing. So the port follows whichever connection runs the guest, either way.
struct Conns {
    owner: Option<u64>,
    next: u64,
    waiting: Vec<(u64, DevState)>,
}

/// The device state a connection's requests change: the device itself when the connection
/// owns it, else the connection's own state, which waits.
pub(crate) struct ConnState<'a> {
    conns: MutexGuard<'a, Conns>,
    owned: Option<MutexGuard<'a, DevState>>,
    at: usize,
}

impl ConnState<'_> {
    fn owner(&self) -> bool {
        self.owned.is_some()
    }
}

impl Deref for ConnState<'_> {
    type Target = DevState;
    fn deref(&self) -> &DevState {
        match &self.owned {
            Some(g) => g,
            None => &self.conns.waiting[self.at].1,
        }
    }
}

impl DerefMut for ConnState<'_> {
    fn deref_mut(&mut self) -> &mut DevState {
        match &mut self.owned {
            Some(g) => g,
            None => &mut self.conns.waiting[self.at].1,
        }
    }
}

/// Most connections one server-mode socket serves at once: the guest's QEMU and a migration
/// destination's, with room for a reconnect overlapping a close.
pub const MAX_CONNECTIONS: usize = 4;

/// State shared by the connection thread and the datapath.
pub struct Shared {
    pub state: Mutex<DevState>,
    conns: Mutex<Conns>,
    /// Signalled when `state.generation` changes.
    pub notify: EventFd,
    /// Queue pairs this port offers (`--queues`).
    pub queue_pairs: u16,
    pub name: String,
}

impl Shared {
    pub fn new(name: &str, queue_pairs: u16) -> std::io::Result<Arc<Shared>> {
        let pairs = queue_pairs.clamp(1, MAX_QUEUE_PAIRS);
        Ok(Arc::new(Shared {
            state: Mutex::new(DevState::new(2 * usize::from(pairs) + 1)),
            conns: Mutex::new(Conns { owner: None, next: 0, waiting: Vec::new() }),
            notify: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            queue_pairs: pairs,
            name: name.to_owned(),
        }))
    }

    /// Locks the device state. A panic on another thread while holding it cannot leave the
    /// rings half-written in a way the next user could not handle, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, DevState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver broke queue `index` (see [`Vring::mark_broken`]); the datapath re-reads
    /// which kicks to watch (a broken queue's are not).
    pub fn mark_broken(&self, st: &mut DevState, index: usize, e: RingError) {
        if let Some(v) = st.vrings.get_mut(index) {
            if v.broken.is_none() {
                v.mark_broken(e, &self.name, index);
                self.changed(st);
            }
        }
    }

    /// Checks whether a memory file shrank under us (see [`DevState::check_memory`]), and
    /// has the datapath re-read the device if so.
    pub fn check_memory(&self, st: &mut DevState) {
        if !st.memory_failed && st.check_memory(&self.name) {
            self.changed(st);
        }
    }

    /// Records a change the datapath must pick up, and wakes it.
    pub fn changed(&self, st: &mut DevState) {
        st.generation = st.generation.wrapping_add(1);
        let _ = self.notify.write(1);
    }

    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nvrings(&self) -> usize {
        2 * usize::from(self.queue_pairs) + 1
    }

    /// Connections open now (the owner and those waiting).
    pub fn open_connections(&self) -> usize {
        let c = self.conns();
        usize::from(c.owner.is_some()) + c.waiting.len()
    }

    /// A frontend connected: it owns the device if nobody does, else it waits (see
    /// [`Conns`]). Returns its id, for [`Handler::new`] and [`Shared::disconnected`].
    pub fn connect(&self) -> u64 {
        let mut c = self.conns();
        c.next += 1;
        let id = c.next;
        let mut st = self.lock();
        st.connections += 1;
        if c.owner.is_none() {
            c.owner = Some(id);
            st.connected = true;
        } else {
            log::info!(
                "vhost-user {}: another frontend connected while one runs the guest (a migration's destination?); it takes over when it starts and the first has stopped",
                self.name
            );
            c.waiting.push((id, DevState::new(self.nvrings())));
        }
        id
    }

    /// The state connection `id`'s requests change (see [`ConnState`]).
    pub(crate) fn conn_state(&self, id: u64) -> ConnState<'_> {
        let conns = self.conns();
        if conns.owner == Some(id) {
            return ConnState { conns, owned: Some(self.lock()), at: 0 };
        }
        let at = conns.waiting.iter().position(|(i, _)| *i == id);
        match at {
            Some(at) => ConnState { conns, owned: None, at },
            // Not registered (a connection made before a reset): waits with a fresh state.
            None => {
                let mut conns = conns;
                conns.waiting.push((id, DevState::new(self.nvrings())));
                let at = conns.waiting.len() - 1;
                ConnState { conns, owned: None, at }
            }
        }
    }

    /// Connection `id` started a ring: if it waits and the owner has no ring running (the
    /// migration source stopped them all, or a frontend is gone), it takes the device over.
    fn maybe_take_over(&self, id: u64) {
        let mut c = self.conns();
        if c.owner == Some(id) {
            return;
        }
        let Some(at) = c.waiting.iter().position(|(i, _)| *i == id) else { return };
        if !c.waiting[at].1.vrings.iter().any(|v| v.started) {
            return;
        }
        if c.owner.is_some() && !self.lock().migrated() {
            log::debug!(
                "vhost-user {}: connection {id} started a ring while the owner runs or did not migrate; it waits",
                self.name
            );
            return;
        }
        self.promote(&mut c, at);
    }

    /// Connection `id` stopped a ring: if it owns the device and has no ring running any
    /// more, a waiting connection that already started its rings takes the device over
    /// (the destination started first; see [`Conns`]).
    fn owner_stopped(&self, id: u64) {
        let mut c = self.conns();
        if c.owner != Some(id) || !self.lock().migrated() {
            return;
        }
        if let Some(at) = c.waiting.iter().rposition(|(_, st)| st.vrings.iter().any(|v| v.started)) {
            self.promote(&mut c, at);
        }
    }

    /// Makes waiting connection `c.waiting[at]` the owner: its rings and memory replace
    /// the device's; what describes the guest (its MAC, RX mode, queue pairs in use, set
    /// through the control queue) and the port's counters stay.
    fn promote(&self, c: &mut Conns, at: usize) {
        let (id, mut new) = c.waiting.remove(at);
        let old = {
            let mut st = self.lock();
            new.connections = st.connections;
            new.generation = st.generation;
            new.promisc = st.promisc;
            new.allmulti = st.allmulti;
            new.guest_mac = st.guest_mac;
            new.mac_table = std::mem::take(&mut st.mac_table);
            new.active_pairs = st.active_pairs;
            new.connected = true;
            let old = std::mem::replace(&mut *st, new);
            self.changed(&mut st);
            old
        };
        if let Some(prev) = c.owner.replace(id) {
            log::info!("vhost-user {}: the frontend of connection {id} took the device over (migration)", self.name);
            // The previous owner may still talk (a migration's source, paused): to a state
            // of its own, which it can take back the same way if the guest returns to it.
            let mut left = DevState::new(self.nvrings());
            left.acked_features = old.acked_features;
            left.acked_protocol_features = old.acked_protocol_features;
            c.waiting.push((prev, left));
        }
        // The old memory is unmapped here, outside the device lock.
        drop(old);
    }

    /// Connection `id` went away. The owner's going resets the device (and a waiting
    /// connection, if any, takes it over); a waiting one's changes nothing.
    pub fn disconnected(&self, id: u64) {
        let mut c = self.conns();
        if c.owner != Some(id) {
            c.waiting.retain(|(i, _)| *i != id);
            return;
        }
        c.owner = None;
        self.reset_device();
        if !c.waiting.is_empty() {
            // The most recent one: a migration's destination, or a reconnect.
            let at = c.waiting.len() - 1;
            self.promote(&mut c, at);
        }
    }

    /// Whether connection `id` acked REPLY_ACK (and so wants answers when it asks).
    pub fn reply_ack(&self, id: u64) -> bool {
        self.conn_state(id).acked_protocol_features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }

    /// Connection `id` asked for the guest's MAC to be announced (SEND_RARP, after a
    /// migration): the datapath sends a RARP from it into the switch, as if from the guest,
    /// so the MAC moves to this port everywhere at once. QEMU may ask before it starts the
    /// guest's rings: a waiting connection's request is kept in its own state and sent when
    /// it takes the device over (a connection that never does never announces).
    pub fn announce(&self, id: u64, mac: [u8; 6]) {
        let mut st = self.conn_state(id);
        if mac[0] & 1 != 0 || mac == [0; 6] {
            log::warn!("vhost-user {}: SEND_RARP with a multicast or zero MAC; ignored", self.name);
            return;
        }
        log::info!(
            "vhost-user {}: announcing the guest's MAC (SEND_RARP){}",
            self.name,
            if st.owner() { "" } else { " once this connection runs the guest" }
        );
        st.announce = Some(mac);
        self.changed(&mut st);
    }

    /// Forgets everything the owner set up; the port waits for the next frontend.
    fn reset_device(&self) {
        let mut st = self.lock();
        st.reset_rings();
        st.mem = GuestMemoryAtomic::new(Memory::default());
        st.guards.clear();
        st.memory_failed = false;
        st.acked_features = 0;
        st.acked_protocol_features = 0;
        st.connected = false;
        st.active_pairs = None;
        st.log = None;
        st.announce = None;
        self.changed(&mut st);
    }
}

/// The end of the highest region of `mem`.
fn mem_end(mem: &Memory) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter().map(|r| r.start_addr().0.saturating_add(r.len())).max().unwrap_or(0)
}

/// Where a frontend's memory region is in its own address space (vring addresses arrive as
/// frontend virtual addresses).
struct Mapping {
    vmm_addr: u64,
    size: u64,
    gpa: u64,
}

/// Answers one frontend connection's requests.
pub struct Handler {
    shared: Arc<Shared>,
    /// This connection (see [`Shared::connect`]).
    id: u64,
    mappings: Vec<Mapping>,
    owned: bool,
    /// A request was refused that gets no answer on error (SET_LOG_BASE): the frontend would
    /// wait for one forever, so the connection must close.
    close: bool,
}

/// Protocol features offered: multiqueue, acknowledged requests, the dirty log in shared
/// memory (migration) and RARP announcements for guests that do not announce themselves;
/// nothing QEMU rejects.
pub const PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::LOG_SHMFD)
    .union(VhostUserProtocolFeatures::RARP);

fn unsupported(what: &'static str) -> VuError {
    VuError::ReqHandlerError(std::io::Error::new(std::io::ErrorKind::Unsupported, what))
}

impl Handler {
    /// The handler of connection `id` (from [`Shared::connect`]).
    pub fn new(shared: Arc<Shared>, id: u64) -> Handler {
        Handler { shared, id, mappings: Vec::new(), owned: false, close: false }
    }

    /// The device state this connection's requests change.
    fn st(&self) -> ConnState<'_> {
        self.shared.conn_state(self.id)
    }

    /// Whether the connection must close (a refused request the frontend waits on).
    pub fn must_close(&self) -> bool {
        self.close
    }

    fn gpa(&self, vmm: u64) -> VuResult<u64> {
        self.mappings
            .iter()
            .find(|m| vmm >= m.vmm_addr && vmm - m.vmm_addr < m.size)
            .map(|m| vmm - m.vmm_addr + m.gpa)
            .ok_or(VuError::InvalidParam)
    }

    fn with_vring<R>(&self, index: usize, f: impl FnOnce(&mut DevState, usize) -> VuResult<R>) -> VuResult<R> {
        let mut st = self.st();
        if index >= st.vrings.len() {
            return Err(VuError::InvalidParam);
        }
        let r = f(&mut st, index)?;
        self.shared.changed(&mut st);
        Ok(r)
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.owned = false;
        let mut st = self.st();
        st.reset_rings();
        st.acked_features = 0;
        st.log = None;
        self.shared.changed(&mut st);
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        let mut st = self.st();
        st.reset_rings();
        st.acked_features = 0;
        st.log = None;
        self.shared.changed(&mut st);
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(features::OFFERED)
    }

    fn set_features(&mut self, f: u64) -> VuResult<()> {
        log::debug!("vhost-user {}: SET_FEATURES {f:#x} ({:?})", self.shared.name, features::names(f));
        if f & !features::OFFERED != 0 {
            return Err(VuError::InvalidParam);
        }
        let mut st = self.st();
        if (st.acked_features ^ f) & features::LOG_ALL != 0 {
            let how = if f & features::LOG_ALL != 0 { "starts" } else { "stops" };
            log::info!("vhost-user {}: the frontend {how} logging dirty pages (migration)", self.shared.name);
        }
        st.acked_features = f;
        let event_idx = f & features::RING_EVENT_IDX != 0;
        let with_protocol = f & features::PROTOCOL_FEATURES != 0;
        for (i, v) in st.vrings.iter_mut().enumerate() {
            v.queue.set_event_idx(event_idx);
            // Without protocol features, rings are enabled as soon as they start. With them,
            // rings start disabled — except the first pair: QEMU enables it with
            // SET_VRING_ENABLE *before* SET_FEATURES, which the vhost crate refuses (it wants
            // the feature acked first), and does not say it again. Other pairs wait for the
            // frontend, which enables them once its guest picks a queue count.
            if !with_protocol || (i < 2 && !v.enable_said) {
                v.enabled = true;
            }
        }
        self.shared.changed(&mut st);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        log::debug!("vhost-user {}: SET_MEM_TABLE ({} regions)", self.shared.name, ctx.len());
        if postcopy.is_some() {
            return Err(unsupported("postcopy"));
        }
        if ctx.is_empty() || ctx.len() > MAX_MEM_REGIONS || ctx.len() != files.len() {
            return Err(VuError::InvalidParam);
        }
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings: Vec<Mapping> = Vec::with_capacity(ctx.len());
        let mut guards = Vec::with_capacity(ctx.len());
        for (r, file) in ctx.iter().zip(files) {
            check_region(r, &file).map_err(|e| {
                log::warn!("vhost-user {}: memory region refused: {e}", self.shared.name);
                VuError::ReqHandlerError(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            let (uva, size) = (r.user_addr, r.memory_size);
            if mappings.iter().any(|m| uva < m.vmm_addr + m.size && m.vmm_addr < uva + size) {
                return Err(VuError::InvalidParam);
            }
            let region = GuestRegionMmap::new(r.mmap_region(file)?, GuestAddress(r.guest_phys_addr))
                .ok_or(VuError::InvalidParam)?;
            guards.push(
                guard::register(region.as_ptr(), region.size())
                    .map_err(|e| VuError::ReqHandlerError(std::io::Error::other(e)))?,
            );
            mappings.push(Mapping { vmm_addr: r.user_addr, size: r.memory_size, gpa: r.guest_phys_addr });
            regions.push(region);
        }
        let mem = Memory::from_regions(regions).map_err(|e| VuError::ReqHandlerError(std::io::Error::other(e)))?;
        self.mappings = mappings;
        let mut st = self.st();
        if let Some(log) = &st.log {
            let end = mem_end(&mem);
            if end > log.covers() {
                log::warn!(
                    "vhost-user {}: the dirty log covers {} bytes of guest memory, not {end}: writes above are not logged",
                    self.shared.name,
                    log.covers()
                );
            }
        }
        // The old mappings' registrations go first: once the memory is replaced (and maybe
        // unmapped), their addresses may be reused by new mappings. Under the lock nothing
        // touches the old memory any more.
        st.guards.clear();
        st.mem.lock().map_err(|_| VuError::BackendInternalError)?.replace(mem);
        st.guards = guards;
        if st.memory_failed {
            st.memory_failed = false;
            for v in &mut st.vrings {
                v.broken = None;
            }
        }
        self.shared.changed(&mut st);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        self.with_vring(index as usize, |st, i| {
            st.vrings[i].queue.set_size(num as u16);
            st.reset_broken(i);
            Ok(())
        })
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VuResult<()> {
        let (d, u, a) = (self.gpa(descriptor)?, self.gpa(used)?, self.gpa(available)?);
        self.with_vring(index as usize, |st, i| {
            // The log address is a guest physical address (QEMU: the used ring's); marks
            // outside the log are dropped by the log itself.
            st.vrings[i].log_used = flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG).then_some(log);
            let q = &mut st.vrings[i].queue;
            q.try_set_desc_table_address(GuestAddress(d)).map_err(|_| VuError::InvalidParam)?;
            q.try_set_avail_ring_address(GuestAddress(a)).map_err(|_| VuError::InvalidParam)?;
            q.try_set_used_ring_address(GuestAddress(u)).map_err(|_| VuError::InvalidParam)?;
            // After a guest reboot the used index restarts; take it from the ring, as QEMU's
            // libvhost-user does.
            let mem = st.mem.memory();
            if let Ok(idx) = st.vrings[i].queue.used_idx(&*mem, std::sync::atomic::Ordering::Acquire) {
                st.vrings[i].queue.set_next_used(idx.0);
            }
            log::debug!(
                "vhost-user {}: SET_VRING_ADDR {index}: used index {}, avail index {:?}{}",
                self.shared.name,
                st.vrings[i].queue.next_used(),
                st.vrings[i].queue.avail_idx(&*mem, std::sync::atomic::Ordering::Acquire).map(|w| w.0).ok(),
                if st.vrings[i].log_used.is_some() { ", used ring logged" } else { "" }
            );
            st.reset_broken(i);
            Ok(())
        })
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        log::debug!("vhost-user {}: SET_VRING_BASE {index} {base}", self.shared.name);
        let base = u16::try_from(base).map_err(|_| VuError::InvalidParam)?;
        self.with_vring(index as usize, |st, i| {
            st.vrings[i].queue.set_next_avail(base);
            st.reset_broken(i);
            Ok(())
        })
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        log::debug!("vhost-user {}: GET_VRING_BASE {index}", self.shared.name);
        // Holding the state lock means the datapath is not inside a burst on this ring.
        let r = self.with_vring(index as usize, |st, i| {
            let v = &mut st.vrings[i];
            // Every chain taken is handed back within the burst that took it (under this
            // lock): nothing is in flight, and the index returned is the used ring's, where
            // a migration's destination resumes.
            if v.started && v.queue.ready() && v.queue.next_avail() != v.queue.next_used() {
                log::warn!(
                    "vhost-user {}: ring {index} stopped with avail {} != used {}",
                    self.shared.name,
                    v.queue.next_avail(),
                    v.queue.next_used()
                );
            }
            v.started = false;
            v.kicks_off = false;
            v.queue.set_ready(false);
            v.kick = None;
            v.call = None;
            log::debug!("vhost-user {}: ring {index} stopped at {}", self.shared.name, v.queue.next_avail());
            Ok(VhostUserVringState::new(index, u32::from(v.queue.next_avail())))
        })?;
        self.shared.owner_stopped(self.id);
        Ok(r)
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        log::debug!("vhost-user {}: SET_VRING_KICK {index} (fd: {})", self.shared.name, fd.is_some());
        let fd = fd.map(|f| eventfd(f, &self.shared.name, "kick")).transpose()?;
        self.with_vring(usize::from(index), |st, i| {
            let v = &mut st.vrings[i];
            v.started = fd.is_some();
            v.kicks_off = false;
            v.kick = fd;
            v.queue.set_ready(v.started);
            st.reset_broken(i);
            Ok(())
        })?;
        self.shared.maybe_take_over(self.id);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let fd = fd.map(|f| eventfd(f, &self.shared.name, "call")).transpose()?;
        self.with_vring(usize::from(index), |st, i| {
            let v = &mut st.vrings[i];
            v.call = fd;
            // A running ring may have been written while it had no call fd (QEMU may send
            // SET_VRING_CALL after SET_VRING_KICK, and at a migration's destination frames
            // arrive at once): that interrupt was lost, and with EVENT_IDX the guest would
            // never ask for another. One spurious interrupt costs the driver a look.
            if v.started {
                v.signal();
            }
            Ok(())
        })
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let fd = fd.map(|f| eventfd(f, &self.shared.name, "error")).transpose()?;
        self.with_vring(usize::from(index), |st, i| {
            st.vrings[i].err = fd;
            Ok(())
        })
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(PROTOCOL_FEATURES)
    }

    fn set_protocol_features(&mut self, f: u64) -> VuResult<()> {
        self.st().acked_protocol_features = f & PROTOCOL_FEATURES.bits();
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.st().vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        log::debug!("vhost-user {}: SET_VRING_ENABLE {index} {enable}", self.shared.name);
        if self.st().acked_features & features::PROTOCOL_FEATURES == 0 {
            return Err(VuError::InvalidOperation("SET_VRING_ENABLE without protocol features"));
        }
        self.with_vring(index as usize, |st, i| {
            st.vrings[i].enabled = enable;
            st.vrings[i].enable_said = true;
            Ok(())
        })
    }

    fn get_config(&mut self, _offset: u32, _size: u32, _flags: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        Err(unsupported("config space (the frontend emulates it)"))
    }

    fn set_config(&mut self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> VuResult<()> {
        Err(unsupported("config space (the frontend emulates it)"))
    }

    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> VuResult<()> {
        Err(unsupported("gpu socket"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(unsupported("shared objects"))
    }

    fn get_inflight_fd(&mut self, _inflight: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        Err(unsupported("inflight fd"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(unsupported("inflight fd"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(unsupported("memory slots"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<u64>> {
        Err(unsupported("memory slots"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(unsupported("memory slots"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(unsupported("device state transfer"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(unsupported("device state transfer"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(unsupported("shared memory regions"))
    }

    /// The frontend's dirty log (migration): checked and mapped here, outside the lock,
    /// then swapped in under it, so no burst marks the old log once this returns (and the
    /// vhost crate replies). A refused log gets no reply from the crate, and the frontend
    /// waits for one: the connection closes instead.
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VuResult<()> {
        let (size, offset) = (log.mmap_size, log.mmap_offset);
        log::debug!("vhost-user {}: SET_LOG_BASE size {size} offset {offset}", self.shared.name);
        let refuse = |this: &mut Handler, why: String| {
            log::warn!("vhost-user {}: dirty log refused: {why}; closing the connection", this.shared.name);
            this.close = true;
            VuError::ReqHandlerError(std::io::Error::new(std::io::ErrorKind::InvalidInput, why))
        };
        let map = match DirtyLog::map(&file, offset, size) {
            Ok(m) => m,
            Err(e) => return Err(refuse(self, e)),
        };
        drop(file);
        let old = {
            let mut st = self.st();
            let end = st.memory_end();
            if end > map.covers() {
                drop(st);
                let why = format!("a log of {size} bytes covers {} bytes of guest memory, not {end}", map.covers());
                return Err(refuse(self, why));
            }
            st.log.replace(Arc::new(map))
        };
        drop(old);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    /// The used ring's flags field, as the driver reads it.
    fn used_flags(m: &Memory, used: GuestAddress) -> u16 {
        m.read_obj::<u16>(used).unwrap()
    }

    #[test]
    fn test_kicks_quieted_once_per_polling_spell() {
        let m = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        let used = vq.used_addr();
        let mut v = Vring::new();
        v.queue = vq.create_queue().unwrap();
        let no_notify = virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16;

        // The first burst of a polling spell asks the driver not to kick.
        v.quiet_kicks(&m);
        assert_eq!(used_flags(&m, used), no_notify);
        // Later bursts do not write the field again (the driver reads that line for the
        // used index): a value put there behind our back stays.
        m.write_obj(0u16, used).unwrap();
        v.quiet_kicks(&m);
        assert_eq!(used_flags(&m, used), 0);

        // Back to kicks (the thread may sleep), then polling again: asked again.
        assert!(!v.allow_kicks(&m));
        assert_eq!(used_flags(&m, used), 0);
        v.quiet_kicks(&m);
        assert_eq!(used_flags(&m, used), no_notify);

        // A ring that starts again (its used ring set up afresh by the driver) is asked
        // again on its first burst.
        m.write_obj(0u16, used).unwrap();
        v.kicks_off = false; // what SET_VRING_KICK and GET_VRING_BASE do
        v.quiet_kicks(&m);
        assert_eq!(used_flags(&m, used), no_notify);
    }
}
