//! The datapath thread: it owns every built-in bridge (a [`Switch`] and its ports' edges) and
//! moves frames between them in bursts, driven by epoll. It is one plain thread, not a tokio
//! task per packet; the control plane (tokio) talks to it through [`DatapathHandle::call`],
//! which runs a closure on the datapath thread between two bursts. So ports come and go
//! while traffic flows, and no lock is ever taken per frame.
//!
//! The datapath knows ports only through [`PortEdge`]: an edge names its events, the
//! datapath watches their fds and runs them ([`run`]); per event the edge reads a burst into
//! the port's [`Batch`], the switch decides on the whole burst
//! ([`Switch::ingress_burst`]), and each destination edge sends its share in one go,
//! applying the tag actions while it copies. Events and queued work refer to ports by
//! [`slab::Handle`]s with generations, so nothing aimed at a removed port reaches the port
//! that reuses its slot.
//!
//! - [`batch`]: a burst of frames in the one form every edge reads and writes;
//! - [`offload`]: software segmentation and checksums for peers without offloads;
//! - [`capture`]: copies of a port's frames for `vmnetd capture`;
//! - [`slab`]: port handles; [`run`]: the event loop.

pub mod batch;
pub mod capture;
pub mod offload;
pub mod run;
pub mod slab;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::ifname::IfName;
use crate::ports::{EdgeState, EventId, PortEdge};
use crate::switch::flow::Classifier;
use crate::switch::{BurstPlan, MirrorConfig, MirrorOutput, PortConfig, PortId, Switch, SwitchConfig, VlanSet};
use vmnetd_api::policy::MirrorSpec;

use batch::Batch;
use capture::Sink;
use slab::{Handle, Place, Slab};

/// Epoll token of the datapath's own wake-up (commands from the control plane).
const WAKE: u64 = u64::MAX;

type Cmd = Box<dyn FnOnce(&mut Datapath) + Send>;

/// Told when a port's edge fails: (bridge, port).
pub type PortDownHook = Box<dyn Fn(&str, &str) + Send>;

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
    /// Starts the datapath thread. `port_down` is told when a port's edge fails.
    pub fn spawn(settings: Settings, port_down: Option<PortDownHook>) -> io::Result<DatapathHandle> {
        let mut dp = Datapath::new(settings.clone())?;
        dp.port_down = port_down;
        let wake = dp.wake.clone();
        let (tx, rx) = mpsc::channel::<Cmd>();
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
    /// `None` only while one of its own events runs (the edge is then lent to the burst).
    edge: Option<Box<dyn PortEdge>>,
    pub state: PortState,
    pub captures: Vec<Sink>,
    handle: Handle,
    /// The fds of the edge epoll watches (our duplicates), with their events.
    watched: Vec<(OwnedFd, EventId)>,
    batch: Batch,
}

impl Port {
    /// What the edge reports of itself.
    pub fn edge_state(&self) -> EdgeState {
        self.edge.as_ref().map_or(EdgeState::Up, |e| e.state())
    }

    /// The port's edge (absent only while one of its own events runs).
    pub fn edge(&self) -> Option<&dyn PortEdge> {
        self.edge.as_deref()
    }

    pub fn edge_kind(&self) -> &'static str {
        self.edge.as_ref().map_or("?", |e| e.kind())
    }

    /// Takes the edge out of a removed port, to release it.
    pub fn into_edge(mut self) -> Option<Box<dyn PortEdge>> {
        self.edge.take()
    }
}

pub struct Bridge {
    pub name: String,
    pub switch: Switch,
    pub ports: Vec<Option<Port>>,
    /// The mirrors as declared (by port names), resolved into the switch whenever ports
    /// come or go; flow rules keep their names in the switch itself.
    mirrors: Vec<MirrorSpec>,
    /// Ports whose edge holds frames the kernel has not taken yet (see
    /// [`crate::ports::SendResult::unflushed`]).
    unflushed: Vec<PortId>,
}

fn port_id_in(ports: &[Option<Port>], name: &str) -> Option<PortId> {
    ports.iter().position(|p| p.as_ref().is_some_and(|p| p.name == name)).map(PortId::from_index)
}

impl Bridge {
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        port_id_in(&self.ports, name)
    }

    /// Changes the flow table as `f` says, on a copy: all of it or nothing. Port names
    /// resolve to the ports attached now, others to [`PortId::NONE`] (re-resolved when
    /// ports come and go).
    pub fn change_flows<R, E>(
        &mut self,
        now: Duration,
        f: impl FnOnce(&mut Classifier, &dyn Fn(&str) -> Option<PortId>, u64) -> Result<R, E>,
    ) -> Result<R, E> {
        let ports = &self.ports;
        let resolve = |n: &str| Some(port_id_in(ports, n).unwrap_or(PortId::NONE));
        let mut next = self.switch.flows().clone();
        let r = f(&mut next, &resolve, crate::switch::fdb::nanos(now))?;
        self.switch.set_flows(next);
        Ok(r)
    }

    /// Sets the mirrors (by names).
    pub fn set_mirrors(&mut self, specs: Vec<MirrorSpec>) {
        self.mirrors = specs;
        self.resolve_mirrors();
    }

    fn resolve_mirrors(&mut self) {
        let ports = &self.ports;
        let id = |n: &IfName| port_id_in(ports, n.as_str()).unwrap_or(PortId::NONE);
        let cfgs = self
            .mirrors
            .iter()
            .map(|m| MirrorConfig {
                name: m.name.clone(),
                select_src: m.select_src.iter().map(id).collect(),
                select_dst: m.select_dst.iter().map(id).collect(),
                select_vlan: (!m.select_vlan.is_empty()).then(|| {
                    let mut set = VlanSet::new();
                    for v in &m.select_vlan {
                        set.insert(*v);
                    }
                    set
                }),
                output: match (&m.output_port, m.output_vlan) {
                    (Some(p), _) => MirrorOutput::Port(id(p)),
                    (None, Some(v)) => MirrorOutput::Vlan(v),
                    (None, None) => MirrorOutput::Port(PortId::NONE),
                },
            })
            .collect();
        self.switch.set_mirrors(cfgs);
    }

    /// Ports came or went: resolve the names in rules and mirrors again.
    fn ports_changed(&mut self) {
        let ports = &self.ports;
        self.switch.flow_reresolve(&|n: &str| Some(port_id_in(ports, n).unwrap_or(PortId::NONE)));
        if !self.mirrors.is_empty() {
            self.resolve_mirrors();
        }
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
    slab: Slab,
    plan: BurstPlan,
    start: Instant,
    stopping: bool,
    /// Work left over from a bounded burst loop, or to run once (after a rewatch).
    pending: std::collections::VecDeque<(Handle, EventId)>,
    settings: Settings,
    /// Busy-poll mode: queues polled without waiting for their notifications (which are
    /// off) until no frame came for `settings.busy_poll`.
    polled: Vec<(Handle, EventId)>,
    /// When a polled queue last had a frame.
    last_frame: Instant,
    /// Some bridge has ports in its `unflushed` list: set when one is added, cleared once a
    /// flush leaves them all empty (so an idle turn does not look at every bridge).
    unflushed: bool,
    /// The SIGBUS guard's epoch last looked at (see `check_guest_memory`).
    guard_epoch: u64,
    port_down: Option<PortDownHook>,
    /// How busy the thread is (read by `DatapathStats`; plain fields, this thread's only).
    pub(crate) load: Load,
}

/// Burst-size buckets of [`Load`]: at most 1, 2, 4, … 256 frames, then more.
pub const BURST_BUCKETS: [u32; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, u32::MAX];

/// The datapath thread's load: time asleep, bursts and their sizes. Updated once per
/// burst and once per sleep, never per frame.
#[derive(Debug, Default, Clone)]
pub struct Load {
    pub idle: Duration,
    pub bursts: u64,
    pub frames: u64,
    pub burst_sizes: [u64; BURST_BUCKETS.len()],
}

impl Load {
    #[inline]
    pub fn burst(&mut self, frames: usize) {
        self.bursts += 1;
        self.frames += frames as u64;
        // 0 → bucket 0 (1 frame), 2 → 1, 3..4 → 2, ... 257.. → 9.
        let b = (usize::BITS - frames.saturating_sub(1).leading_zeros()) as usize;
        self.burst_sizes[b.min(BURST_BUCKETS.len() - 1)] += 1;
    }

    pub fn stats(&self, uptime: Duration) -> crate::api::DatapathStats {
        crate::api::DatapathStats {
            uptime_ns: uptime.as_nanos() as u64,
            idle_ns: self.idle.as_nanos() as u64,
            bursts: self.bursts,
            frames: self.frames,
            burst_sizes: BURST_BUCKETS.iter().copied().zip(self.burst_sizes).collect(),
        }
    }
}

impl Datapath {
    /// A datapath with no bridges, not running (tests drive it with [`Datapath::turn`]).
    pub fn new(settings: Settings) -> io::Result<Datapath> {
        let wake = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        Ok(Datapath {
            epoll,
            wake,
            bridges: Vec::new(),
            slab: Slab::default(),
            plan: BurstPlan::new(),
            start: Instant::now(),
            stopping: false,
            pending: std::collections::VecDeque::new(),
            settings,
            polled: Vec::new(),
            last_frame: Instant::now(),
            unflushed: false,
            guard_epoch: vmnetd_vhost::guard::epoch(),
            port_down: None,
            load: Load::default(),
        })
    }

    /// Changes how long rings are polled after the last frame (`[datapath] busy_poll_us`).
    pub fn set_busy_poll(&mut self, d: Duration) {
        self.settings.busy_poll = d;
    }

    /// Time since the datapath started: the switch's clock.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn add_bridge(&mut self, name: &str, cfg: SwitchConfig) -> usize {
        let b = Bridge {
            name: name.to_owned(),
            switch: Switch::new(cfg),
            ports: Vec::new(),
            mirrors: Vec::new(),
            unflushed: Vec::new(),
        };
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

    /// Removes a bridge and all its ports (returned, to be released).
    pub fn remove_bridge(&mut self, name: &str) -> Option<(Bridge, Vec<Port>)> {
        let i = self.bridge_index(name)?;
        let ids: Vec<PortId> = self.bridges[i]
            .as_ref()?
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .map(|(k, _)| PortId::from_index(k))
            .collect();
        let ports = ids.into_iter().filter_map(|id| self.remove_port_at(i, id)).collect();
        Some((self.bridges[i].take()?, ports))
    }

    /// Adds a port with its edge to bridge `bridge`; frames flow at once.
    pub fn add_port(
        &mut self,
        bridge: &str,
        name: &str,
        edge: Box<dyn PortEdge>,
        cfg: PortConfig,
    ) -> io::Result<PortId> {
        let b = self
            .bridge_index(bridge)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no built-in bridge {bridge}")))?;
        let br = self.bridges[b].as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let id = br.switch.add_port(cfg);
        let i = id.index();
        if br.ports.len() <= i {
            br.ports.resize_with(i + 1, || None);
        }
        let handle = self.slab.insert(Place { bridge: b, port: id });
        br.ports[i] = Some(Port {
            name: name.to_owned(),
            edge: Some(edge),
            state: PortState::Up,
            captures: Vec::new(),
            handle,
            watched: Vec::new(),
            batch: Batch::new(),
        });
        br.ports_changed();
        if let Err(e) = self.watch(handle) {
            self.remove_port_at(b, id);
            return Err(e);
        }
        Ok(id)
    }

    /// Removes a port (returned, to be released); the other ports' traffic is not disturbed.
    pub fn remove_port(&mut self, bridge: &str, name: &str) -> Option<Port> {
        let b = self.bridge_index(bridge)?;
        let id = self.bridges[b].as_ref()?.port_id(name)?;
        self.remove_port_at(b, id)
    }

    fn remove_port_at(&mut self, b: usize, id: PortId) -> Option<Port> {
        let br = self.bridges.get_mut(b)?.as_mut()?;
        let mut p = br.ports.get_mut(id.index())?.take()?;
        br.switch.remove_port(id);
        br.ports_changed();
        self.unwatch(&mut p);
        // Every handle to it dies here: its queued and polled work, its epoll tokens.
        self.slab.remove(p.handle);
        Some(p)
    }

    /// Gives a port a new edge (after its interface came back) and marks it up. The old
    /// edge is returned, to be released.
    pub fn replace_edge(
        &mut self,
        bridge: &str,
        name: &str,
        edge: Box<dyn PortEdge>,
    ) -> io::Result<Option<Box<dyn PortEdge>>> {
        let b = self.bridge_index(bridge).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let br = self.bridges[b].as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let id = br.port_id(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut port = br.ports[id.index()].take().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        self.unwatch(&mut port);
        // A new handle: nothing queued for the old edge reaches the new one.
        self.slab.remove(port.handle);
        port.handle = self.slab.insert(Place { bridge: b, port: id });
        let old = port.edge.replace(edge);
        port.state = PortState::Up;
        let handle = port.handle;
        if let Some(br) = self.bridges[b].as_mut() {
            br.ports[id.index()] = Some(port);
        }
        self.watch(handle)?;
        Ok(old)
    }

    /// The port of a live handle.
    fn port_mut(&mut self, h: Handle) -> Option<&mut Port> {
        let place = self.slab.get(h)?;
        self.bridges.get_mut(place.bridge)?.as_mut()?.port_mut(place.port)
    }

    /// Registers the fds the edge wants watched, and queues its start-up events.
    fn watch(&mut self, h: Handle) -> io::Result<()> {
        let epoll = &self.epoll;
        let Some(place) = self.slab.get(h) else { return Ok(()) };
        let Some(port) =
            self.bridges.get_mut(place.bridge).and_then(Option::as_mut).and_then(|b| b.port_mut(place.port))
        else {
            return Ok(());
        };
        let Some(edge) = port.edge.as_mut() else { return Ok(()) };
        let fds = edge.watches();
        let startup = edge.startup_events();
        for (fd, ev) in &fds {
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, h.token(*ev)))?;
        }
        port.watched = fds;
        self.pending.extend(startup.into_iter().map(|ev| (h, ev)));
        Ok(())
    }

    fn unwatch(&self, port: &mut Port) {
        for (fd, _) in port.watched.drain(..) {
            let _ = self.epoll.delete(&fd);
        }
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
}
