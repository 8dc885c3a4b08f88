//! The datapath thread: it owns every built-in bridge (a [`Switch`] and its ports' edges) and
//! moves frames between them in bursts, driven by epoll. It is one plain thread, not a tokio
//! task per packet; the control plane (tokio) talks to it through [`DatapathHandle::call`],
//! which runs a closure on the datapath thread between two bursts. So ports come and go
//! while traffic flows, and no lock is ever taken per frame.
//!
//! Per port event: the edge reads a burst into the port's [`Batch`], the switch decides on
//! the whole burst ([`Switch::ingress_burst`]), and each destination edge sends its share of
//! the burst in one go, applying the tag actions while it copies.

pub mod batch;
pub mod capture;
pub mod offload;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::ports::Edge;
use crate::switch::{BurstPlan, DropReason, PortConfig, PortId, Switch, SwitchConfig};

use batch::{Batch, VHOST_BURST};
use capture::{Dir, Sink};

const WAKE: u64 = u64::MAX;
/// Bursts read from one port per event before others get their turn.
const BURSTS_PER_EVENT: usize = 8;
/// The same for a vhost-user queue, whose bursts are four times larger: either way a port
/// gives up its turn after 256 frames.
const VHOST_BURSTS_PER_EVENT: usize = 2;
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

type Cmd = Box<dyn FnOnce(&mut Datapath) + Send>;

#[derive(Debug, thiserror::Error)]
#[error("The datapath thread has stopped")]
pub struct Gone;

/// The control plane's handle on the datapath thread.
pub struct DatapathHandle {
    tx: mpsc::Sender<Cmd>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

/// How the datapath thread runs (`[datapath]` in the config).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// How long to keep polling rings after the last frame before sleeping.
    pub busy_poll: Duration,
    /// The CPU to pin the thread to.
    pub cpu: Option<usize>,
}

impl DatapathHandle {
    /// Starts the datapath thread.
    pub fn spawn(settings: Settings) -> io::Result<DatapathHandle> {
        let wake = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        let dp = Datapath {
            epoll,
            wake: wake.clone(),
            bridges: Vec::new(),
            plan: BurstPlan::new(),
            start: Instant::now(),
            stopping: false,
            pending: std::collections::VecDeque::new(),
            settings: settings.clone(),
            polled: Vec::new(),
            last_frame: Instant::now(),
            guard_epoch: vmnetd_vhost::guard::epoch(),
        };
        let thread = std::thread::Builder::new().name("vmnetd-dp".into()).spawn(move || {
            if let Some(cpu) = settings.cpu {
                let mut set = nix::sched::CpuSet::new();
                match set.set(cpu).and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)) {
                    Ok(()) => log::info!("datapath: pinned to CPU {cpu}"),
                    Err(e) => log::warn!("datapath: cannot pin to CPU {cpu}: {e}"),
                }
            }
            dp.run(rx)
        })?;
        Ok(DatapathHandle { tx, wake, thread: Some(thread) })
    }

    fn send(&self, cmd: Cmd) -> Result<(), Gone> {
        self.tx.send(cmd).map_err(|_| Gone)?;
        self.wake.write(1).map_err(|_| Gone)?;
        Ok(())
    }

    /// Runs `f` on the datapath thread and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Datapath) -> R + Send + 'static,
    ) -> Result<R, Gone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Box::new(move |dp| {
            let _ = tx.send(f(dp));
        }))?;
        rx.await.map_err(|_| Gone)
    }

    /// Stops the thread (ports are dropped: their sockets and TAP queues close).
    pub fn shutdown(mut self) {
        let _ = self.send(Box::new(|dp| dp.stopping = true));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a port's edge is working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    Up,
    /// The edge failed (interface gone, TAP deleted); the control plane re-attaches it.
    Down(String),
}

pub struct Port {
    pub name: String,
    pub edge: Edge,
    pub state: PortState,
    pub captures: Vec<Sink>,
    batch: Batch,
    registered: bool,
}

impl Port {
    /// The device of a vhost-user port, for `port list`.
    pub fn vhost(&self) -> Option<&std::sync::Arc<vmnetd_vhost::device::Shared>> {
        match &self.edge {
            Edge::Vhost(v) => Some(&v.shared),
            _ => None,
        }
    }
}

pub struct Bridge {
    pub name: String,
    pub switch: Switch,
    pub ports: Vec<Option<Port>>,
}

impl Bridge {
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports.iter().position(|p| p.as_ref().is_some_and(|p| p.name == name)).map(PortId::from_index)
    }

    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.index())?.as_ref()
    }

    pub fn port_mut(&mut self, id: PortId) -> Option<&mut Port> {
        self.ports.get_mut(id.index())?.as_mut()
    }

    pub fn port_name(&self, id: PortId) -> &str {
        self.port(id).map_or("?", |p| p.name.as_str())
    }
}

pub struct Datapath {
    epoll: Epoll,
    wake: Arc<EventFd>,
    bridges: Vec<Option<Bridge>>,
    plan: BurstPlan,
    start: Instant,
    stopping: bool,
    /// Work left over from a bounded burst loop: (bridge, port, sub-id).
    pending: std::collections::VecDeque<(usize, PortId, u8)>,
    settings: Settings,
    /// Busy-poll mode: vhost-user transmit queues polled without waiting for kicks (their
    /// notifications off) until no frame came for `settings.busy_poll`.
    polled: Vec<(usize, PortId, u8)>,
    /// When a polled queue last had a frame.
    last_frame: Instant,
    /// The SIGBUS guard's epoch last looked at (see [`Datapath::check_guest_memory`]).
    guard_epoch: u64,
}

/// How often a busy datapath still looks at epoll (control commands, other ports).
const EPOLL_EVERY: u32 = 16;

/// Epoll token: bridge (24 bits), port (32 bits), sub-id (8 bits: 0 = the port's main fd;
/// for vhost-user ports 1..=16 = a transmit queue pair's kick, `CTRL_SUB` = the control queue).
fn token(b: usize, p: PortId, sub: u8) -> u64 {
    ((b as u64) << 40) | ((p.index() as u64) << 8) | u64::from(sub)
}

fn untoken(t: u64) -> (usize, PortId, u8) {
    ((t >> 40) as usize, PortId::from_index(((t >> 8) & 0xffff_ffff) as usize), t as u8)
}

impl Datapath {
    /// Time since the datapath started: the switch's clock.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn add_bridge(&mut self, name: &str, cfg: SwitchConfig) -> usize {
        let b = Bridge { name: name.to_owned(), switch: Switch::new(cfg), ports: Vec::new() };
        match self.bridges.iter().position(Option::is_none) {
            Some(i) => {
                self.bridges[i] = Some(b);
                i
            }
            None => {
                self.bridges.push(Some(b));
                self.bridges.len() - 1
            }
        }
    }

    pub fn bridge_index(&self, name: &str) -> Option<usize> {
        self.bridges.iter().position(|b| b.as_ref().is_some_and(|b| b.name == name))
    }

    pub fn bridge(&self, name: &str) -> Option<&Bridge> {
        self.bridges.iter().flatten().find(|b| b.name == name)
    }

    pub fn bridge_mut(&mut self, name: &str) -> Option<&mut Bridge> {
        self.bridges.iter_mut().flatten().find(|b| b.name == name)
    }

    pub fn bridges(&self) -> impl Iterator<Item = &Bridge> {
        self.bridges.iter().flatten()
    }

    /// Removes a bridge and all its ports.
    pub fn remove_bridge(&mut self, name: &str) -> Option<Bridge> {
        let i = self.bridge_index(name)?;
        let ids: Vec<PortId> = self.bridges[i]
            .as_ref()?
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .map(|(k, _)| PortId::from_index(k))
            .collect();
        for id in ids {
            self.remove_port_at(i, id);
        }
        self.bridges[i].take()
    }

    fn register(&self, b: usize, id: PortId, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token(b, id, 0))).map_err(io::Error::from)
    }

    /// Adds a port with its edge to bridge `bridge`; frames flow at once.
    pub fn add_port(&mut self, bridge: &str, name: &str, edge: Edge, cfg: PortConfig) -> io::Result<PortId> {
        let b = self
            .bridge_index(bridge)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no built-in bridge {bridge}")))?;
        let br = self.bridges[b].as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let id = br.switch.add_port(cfg);
        let i = id.index();
        if br.ports.len() <= i {
            br.ports.resize_with(i + 1, || None);
        }
        br.ports[i] = Some(Port {
            name: name.to_owned(),
            edge,
            state: PortState::Up,
            captures: Vec::new(),
            batch: Batch::new(),
            registered: false,
        });
        let reg = {
            let port = self.bridges[b].as_ref().and_then(|br| br.ports[i].as_ref());
            match port {
                Some(p) => self.register(b, id, p.edge.as_fd()),
                None => Ok(()),
            }
        };
        let br = self.bridges[b].as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if let Err(e) = reg {
            br.ports[i] = None;
            br.switch.remove_port(id);
            return Err(e);
        }
        if let Some(p) = br.ports[i].as_mut() {
            p.registered = true;
        }
        Ok(id)
    }

    fn deregister(&mut self, b: usize, id: PortId) {
        let Some(Some(br)) = self.bridges.get_mut(b) else {
            return;
        };
        let Some(Some(p)) = br.ports.get_mut(id.index()) else {
            return;
        };
        if p.registered {
            let _ = self.epoll.delete(p.edge.as_fd());
            p.registered = false;
        }
        if let Edge::Vhost(v) = &mut p.edge {
            for (fd, _) in v.registered.drain(..) {
                let _ = self.epoll.delete(&fd);
            }
        }
    }

    fn remove_port_at(&mut self, b: usize, id: PortId) -> Option<Port> {
        self.deregister(b, id);
        let br = self.bridges.get_mut(b)?.as_mut()?;
        let p = br.ports.get_mut(id.index())?.take()?;
        br.switch.remove_port(id);
        Some(p)
    }

    /// Removes a port; the other ports' traffic is not disturbed.
    pub fn remove_port(&mut self, bridge: &str, name: &str) -> Option<Port> {
        let b = self.bridge_index(bridge)?;
        let id = self.bridges[b].as_ref()?.port_id(name)?;
        self.remove_port_at(b, id)
    }

    /// Gives a port a new edge (after its interface came back) and marks it up.
    pub fn replace_edge(&mut self, bridge: &str, name: &str, edge: Edge) -> io::Result<()> {
        let b = self.bridge_index(bridge).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let id = self.bridges[b]
            .as_ref()
            .and_then(|br| br.port_id(name))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        self.deregister(b, id);
        let reg = self.register(b, id, edge.as_fd());
        let port = self.bridges[b]
            .as_mut()
            .and_then(|br| br.port_mut(id))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        port.edge = edge;
        reg?;
        port.registered = true;
        port.state = PortState::Up;
        Ok(())
    }

    /// Ports whose edge failed: (bridge, port, reason).
    pub fn down_ports(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for br in self.bridges() {
            for p in br.ports.iter().flatten() {
                if let PortState::Down(why) = &p.state {
                    out.push((br.name.clone(), p.name.clone(), why.clone()));
                }
            }
        }
        out
    }

    /// Starts a capture on a port.
    pub fn add_capture(&mut self, bridge: &str, port: &str, sink: Sink) -> bool {
        let Some(br) = self.bridge_mut(bridge) else {
            return false;
        };
        let Some(id) = br.port_id(port) else {
            return false;
        };
        match br.port_mut(id) {
            Some(p) => {
                p.captures.push(sink);
                true
            }
            None => false,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut events = [EpollEvent::empty(); 64];
        let mut last_expire = Instant::now();
        let mut iter = 0u32;
        while !self.stopping {
            iter = iter.wrapping_add(1);
            let hot = !self.pending.is_empty() || !self.polled.is_empty();
            // While frames flow, epoll is only looked at now and then: the rings are polled.
            if !hot || iter % EPOLL_EVERY == 0 {
                let timeout = if hot { 0u16 } else { 1000 };
                let n = match self.epoll.wait(&mut events, EpollTimeout::from(timeout)) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => 0,
                    Err(e) => {
                        log::error!("datapath: epoll_wait: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        0
                    }
                };
                for ev in &events[..n] {
                    let t = ev.data();
                    if t == WAKE {
                        let _ = self.wake.read();
                        while let Ok(cmd) = rx.try_recv() {
                            cmd(&mut self);
                        }
                    } else {
                        let (b, p, sub) = untoken(t);
                        self.service(b, p, sub, true);
                    }
                }
            }
            for _ in 0..self.pending.len() {
                if let Some((b, p, sub)) = self.pending.pop_front() {
                    self.service(b, p, sub, false);
                }
            }
            if !self.polled.is_empty() {
                self.poll_idle_queues();
            }
            if vmnetd_vhost::guard::epoch() != self.guard_epoch {
                self.check_guest_memory();
            }
            if last_expire.elapsed() >= EXPIRE_EVERY {
                last_expire = Instant::now();
                let now = self.now();
                for br in self.bridges.iter_mut().flatten() {
                    br.switch.expire(now);
                }
            }
        }
    }

    /// A frontend shrank its memory file under us (the SIGBUS guard replaced the mapping):
    /// find the device, and fail it until the frontend gives it new memory.
    fn check_guest_memory(&mut self) {
        self.guard_epoch = vmnetd_vhost::guard::epoch();
        for br in self.bridges.iter().flatten() {
            for port in br.ports.iter().flatten() {
                if let Some(v) = port.vhost() {
                    let mut st = v.lock();
                    v.check_memory(&mut st);
                }
            }
        }
    }

    /// Busy-poll mode: one burst from every polled queue; past the budget without frames,
    /// their kicks are turned back on and the thread may sleep.
    fn poll_idle_queues(&mut self) {
        let mut i = 0;
        while i < self.polled.len() {
            let (b, p, sub) = self.polled[i];
            match self.vhost_burst(b, p, usize::from(sub - 1), true) {
                None => {
                    self.polled.swap_remove(i);
                    continue;
                }
                Some((got, more)) => {
                    if got > 0 {
                        self.last_frame = Instant::now();
                    }
                    if more {
                        self.pending.push_back((b, p, sub));
                    }
                }
            }
            i += 1;
        }
        if self.last_frame.elapsed() >= self.settings.busy_poll {
            for (b, p, sub) in std::mem::take(&mut self.polled) {
                if self.rearm(b, p, usize::from(sub - 1)) {
                    self.pending.push_back((b, p, sub));
                }
            }
        }
    }

    /// Turns a transmit queue's kicks back on; true if frames arrived meanwhile.
    fn rearm(&mut self, b: usize, p: PortId, pair: usize) -> bool {
        use vm_memory::GuestAddressSpace;
        let Some(Some(br)) = self.bridges.get_mut(b) else { return false };
        let Some(port) = br.port_mut(p) else { return false };
        let Edge::Vhost(v) = &port.edge else { return false };
        let mut st = v.shared.lock();
        let txq = 2 * pair + 1;
        if txq >= st.ctrl_index() || !st.vrings[txq].active() {
            return false;
        }
        let mem = st.mem.memory();
        vmnetd_vhost::queue::enable_notification(&mut st.vrings[txq].queue, &mem)
    }

    /// Handles one readiness (`from_event`: epoll said so) or pending work: a bounded number
    /// of bursts, the rest queued as pending.
    fn service(&mut self, b: usize, p: PortId, sub: u8, from_event: bool) {
        let is_vhost = matches!(
            self.bridges.get(b).and_then(Option::as_ref).and_then(|br| br.port(p)).map(|x| &x.edge),
            Some(Edge::Vhost(_))
        );
        if !is_vhost {
            for _ in 0..BURSTS_PER_EVENT {
                if !self.rx_burst(b, p) {
                    return;
                }
            }
            return;
        }
        match sub {
            0 => self.vhost_resync(b, p),
            crate::ports::vhost::CTRL_SUB => self.vhost_ctrl(b, p, from_event),
            pair => {
                if from_event {
                    self.clear_kick(b, p, usize::from(pair - 1));
                }
                let poll = !self.settings.busy_poll.is_zero();
                for _ in 0..VHOST_BURSTS_PER_EVENT {
                    match self.vhost_burst(b, p, usize::from(pair - 1), poll) {
                        None => return,
                        Some((got, more)) => {
                            if got > 0 {
                                self.last_frame = Instant::now();
                            }
                            if !more {
                                if poll && !self.polled.contains(&(b, p, pair)) {
                                    self.polled.push((b, p, pair));
                                }
                                return;
                            }
                        }
                    }
                }
                self.pending.push_back((b, p, pair));
            }
        }
    }

    /// Reads a transmit queue's kick eventfd (epoll said it fired).
    fn clear_kick(&mut self, b: usize, p: PortId, pair: usize) {
        let Some(Some(br)) = self.bridges.get_mut(b) else { return };
        let Some(port) = br.port_mut(p) else { return };
        let Edge::Vhost(v) = &port.edge else { return };
        let st = v.shared.lock();
        if let Some(v) = st.vrings.get(2 * pair + 1) {
            v.clear_kick();
        }
    }

    /// The device changed (kick fds, rings, memory, connection): watch the current kicks,
    /// and look at every transmit queue once, since a kick may have come before we watched.
    fn vhost_resync(&mut self, b: usize, p: PortId) {
        let Some(Some(br)) = self.bridges.get_mut(b) else { return };
        let Some(port) = br.port_mut(p) else { return };
        let Edge::Vhost(v) = &mut port.edge else { return };
        let _ = v.shared.notify.read();
        for (fd, _) in v.registered.drain(..) {
            let _ = self.epoll.delete(&fd);
        }
        let kicks = v.kicks();
        for (fd, sub) in &kicks {
            if let Err(e) = self.epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token(b, p, *sub))) {
                log::warn!("vhost-user {}: cannot watch a kick fd: {e}", v.shared.name);
            }
        }
        v.registered = kicks;
        for pair in 0..v.pairs() {
            self.pending.push_back((b, p, (pair + 1) as u8));
        }
        self.pending.push_back((b, p, crate::ports::vhost::CTRL_SUB));
    }

    fn vhost_ctrl(&mut self, b: usize, p: PortId, from_event: bool) {
        use vm_memory::GuestAddressSpace;
        let Some(Some(br)) = self.bridges.get_mut(b) else { return };
        let Some(port) = br.port_mut(p) else { return };
        let Edge::Vhost(v) = &port.edge else { return };
        let shared = v.shared.clone();
        let mut st = shared.lock();
        let i = st.ctrl_index();
        // The kick is read whatever becomes of it: a level-triggered fd left readable would
        // wake the thread forever.
        if from_event {
            st.vrings[i].clear_kick();
        }
        if !st.vrings[i].active() {
            return;
        }
        let mem = st.mem.memory();
        if let Err(e) = vmnetd_vhost::ctrl::process(&mut st, &mem, shared.queue_pairs) {
            shared.mark_broken(&mut st, i, e);
        }
    }

    /// One burst from a guest's transmit queue pair, forwarded, then handed back to the guest
    /// — all under the device lock. Returns (frames taken, whether more are waiting), `None`
    /// if the port or queue is gone. `poll`: leave the queue's kicks off (busy-poll mode).
    fn vhost_burst(&mut self, b: usize, p: PortId, pair: usize, poll: bool) -> Option<(usize, bool)> {
        use vm_memory::GuestAddressSpace;
        let now = self.now();
        let br = self.bridges.get_mut(b)?.as_mut()?;
        let port = br.port_mut(p)?;
        let Edge::Vhost(v) = &mut port.edge else { return None };
        let shared = v.shared.clone();
        let mut heads = std::mem::take(&mut v.heads);
        let mut batch = std::mem::take(&mut port.batch);
        let mut st = shared.lock();
        let txq = 2 * pair + 1;
        if txq >= st.ctrl_index() || !st.vrings[txq].active() {
            drop(st);
            put_back(br, p, batch, heads);
            return None;
        }
        let mem = st.mem.memory().into_inner();
        batch.clear();
        heads.clear();
        let popped = crate::ports::vhost::pop_burst(&mut st, pair, &mem, &mut batch, &mut heads);
        let n = popped.chains;
        for _ in 0..popped.bad_chains {
            br.switch.record_rx_error(p, 0);
        }
        if popped.bad_gso.0 > 0 {
            let avg = (popped.bad_gso.1 / popped.bad_gso.0 as u64) as usize;
            for _ in 0..popped.bad_gso.0 {
                br.switch.record_rx_drop(p, DropReason::BadGso, avg);
            }
        }
        if let Some(e) = popped.broken {
            shared.mark_broken(&mut st, txq, e);
        }
        if !batch.is_empty() {
            if let Some(port) = br.port_mut(p) {
                if !port.captures.is_empty() {
                    let all = (0..batch.len()).map(|i| (i, crate::switch::TagAction::Keep));
                    capture(&mut port.captures, Dir::Rx, &batch, all);
                }
            }
            br.switch.ingress_burst(p, batch.infos(), now, &mut self.plan);
            forward(br, &batch, &self.plan);
        }
        let more = crate::ports::vhost::finish_burst(&mut st, pair, &mem, &heads, n == VHOST_BURST, poll);
        let alive = st.vrings[txq].active();
        drop(st);
        batch.clear();
        put_back(br, p, batch, heads);
        // A queue the guest broke is not looked at again (not polled, its kicks ignored)
        // until the frontend sets it up again.
        alive.then_some((n, more))
    }

    /// Reads one burst from a port and forwards it. Returns whether more may be waiting.
    fn rx_burst(&mut self, b: usize, p: PortId) -> bool {
        let now = self.now();
        let Some(Some(br)) = self.bridges.get_mut(b) else {
            return false;
        };
        let Some(Some(port)) = br.ports.get_mut(p.index()) else {
            return false;
        };
        let mut batch = std::mem::take(&mut port.batch);
        batch.clear();
        let res = match port.edge.recv(&mut batch) {
            Ok(r) => r,
            Err(e) => {
                port.batch = batch;
                if e.kind() == io::ErrorKind::Interrupted {
                    return true;
                }
                log::warn!("bridge {} port {}: receive failed, port down: {e}", br.name, port.name);
                port.state = PortState::Down(e.to_string());
                self.deregister(b, p);
                return false;
            }
        };
        for _ in 0..res.bad {
            br.switch.record_rx_error(p, (res.bad_bytes / res.bad.max(1)) as usize);
        }
        if batch.is_empty() {
            port.batch = batch;
            return res.more;
        }
        if !port.captures.is_empty() {
            capture(&mut port.captures, Dir::Rx, &batch, (0..batch.len()).map(|i| (i, crate::switch::TagAction::Keep)));
        }
        br.switch.ingress_burst(p, batch.infos(), now, &mut self.plan);
        forward(br, &batch, &self.plan);
        if let Some(Some(port)) = br.ports.get_mut(p.index()) {
            port.batch = batch;
        }
        res.more
    }
}

/// Returns a vhost-user port's burst buffers after a burst.
fn put_back(br: &mut Bridge, p: PortId, batch: Batch, heads: Vec<u16>) {
    if let Some(port) = br.port_mut(p) {
        port.batch = batch;
        if let Edge::Vhost(v) = &mut port.edge {
            v.heads = heads;
        }
    }
}

/// Sends each destination its share of a decided burst, and counts what its edge could not
/// deliver.
fn forward(br: &mut Bridge, batch: &Batch, plan: &BurstPlan) {
    for (dst, list) in plan.destinations() {
        let Some(Some(dport)) = br.ports.get_mut(dst.index()) else {
            continue;
        };
        let r = dport.edge.send(batch, list);
        if !dport.captures.is_empty() {
            capture(&mut dport.captures, Dir::Tx, batch, list.iter().map(|e| (e.frame, e.action)));
        }
        if r.no_room.0 > 0 {
            br.switch.record_tx_failure(dst, DropReason::NoRoom, r.no_room.0, r.no_room.1);
        }
        if r.errors.0 > 0 {
            br.switch.record_tx_failure(dst, DropReason::TxError, r.errors.0, r.errors.1);
        }
        if r.bad_gso.0 > 0 {
            br.switch.record_tx_failure(dst, DropReason::BadGso, r.bad_gso.0, r.bad_gso.1);
        }
    }
}

fn capture(
    sinks: &mut Vec<Sink>,
    dir: Dir,
    batch: &Batch,
    frames: impl Iterator<Item = (usize, crate::switch::TagAction)> + Clone,
) {
    sinks.retain_mut(|s| {
        frames.clone().all(|(i, action)| {
            let len = action.splice().out_len(batch.frames[i].len as usize);
            s.offer(dir, len, |snap| batch.materialize(i, action, snap))
        })
    });
}

impl AsFd for Edge {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Edge::Netdev(p) => p.as_fd(),
            Edge::Internal(p) => p.as_fd(),
            Edge::Vhost(p) => p.shared.notify.as_fd(),
        }
    }
}
