//! The I/O edges of the built-in bridge: they move frames between the kernel (or a guest)
//! and [`Batch`]es, and send a batch's frames out with the tag actions the switch decided.
//!
//! Every edge kind implements [`PortEdge`]; the datapath knows nothing else of them:
//! - [`netdev`]: any kernel interface, through an AF_PACKET socket.
//! - [`internal`]: a TAP whose userspace side vmnetd holds; its kernel side is a host
//!   interface.
//! - [`vhost`]: a vhost-user-net device: a guest's virtqueues.
//! - [`vxlan`]: a VXLAN tunnel to other hosts, over a UDP socket.
//!
//! An edge names its own events (an [`EventId`] per fd it wants watched); the datapath
//! watches the fds and calls [`PortEdge::on_event`] when one fires, or when work it left
//! pending (a burst that filled up, a busy-polled queue) comes round again. A new edge kind
//! is one new file here.

pub mod internal;
pub mod netdev;
pub mod vhost;
pub mod vxlan;

use std::io;
use std::os::fd::OwnedFd;

use crate::datapath::batch::Batch;
use crate::switch::Egress;

pub use internal::InternalPort;
pub use netdev::NetdevPort;
pub use vhost::VhostPort;
pub use vxlan::VxlanPort;

/// An edge's name for one of its event sources (one fd it wants watched).
pub type EventId = u8;

/// What happened to the frames handed to [`PortEdge::tx_burst`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendResult {
    pub sent: u64,
    /// Frames (and bytes) the peer had no room for.
    pub no_room: (u64, u64),
    /// Frames (and bytes) that failed otherwise.
    pub errors: (u64, u64),
    /// Frames (and bytes) whose offloads could not be done in software (a malformed GSO or
    /// checksum request that got past the sender's checks).
    pub bad_gso: (u64, u64),
    /// Frames (and bytes) longer than the edge carries (a tunnel's segments).
    pub mtu: (u64, u64),
    /// The edge holds frames the kernel did not take yet (a transmit ring it stopped short
    /// of, its socket buffer full): the datapath calls [`PortEdge::flush`] until they are
    /// gone, rather than leaving them for the port's next burst, which may never come.
    pub unflushed: bool,
}

/// Frames an edge took but could not hand to the switch, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Unreadable (a bad guest descriptor, a truncated frame): frames and bytes.
    pub rx_error: (u64, u64),
    /// A guest's impossible offload request: frames and bytes.
    pub bad_gso: (u64, u64),
}

/// How the datapath runs an event (see [`PortEdge::on_event`]).
#[derive(Debug, Clone, Copy)]
pub struct EventCx {
    /// Epoll reported the event (rather than pending or polled work): its fd may be read.
    pub from_epoll: bool,
    /// The datapath busy-polls (`[datapath] busy_poll_us` > 0): a pollable edge may leave
    /// its notifications off after a burst.
    pub poll: bool,
}

/// What running an event did.
#[derive(Debug)]
pub enum Outcome {
    /// A burst ran. `more`: more frames are waiting right now. `pollable`: the event's
    /// notifications are off, so the datapath should poll it (see
    /// [`PortEdge::stop_polling`]) rather than wait for its fd.
    Burst { frames: usize, more: bool, pollable: bool },
    /// The edge's fds changed: watch [`PortEdge::watches`] again and run each of its
    /// [`PortEdge::startup_events`] once (work may have arrived before they were watched).
    /// `forget_learned`: the guest behind the edge left (migrated away): forget the
    /// addresses learned on the port.
    Rewatch { forget_learned: bool },
    /// Nothing to do (or not any more: a queue that went away).
    Idle,
    /// The edge failed (its interface was deleted): the port is down until re-attached.
    Failed(io::Error),
}

/// What an edge reports of itself for `port list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeState {
    /// A kernel interface, working.
    Up,
    /// A `netdev` port, working, and how its frames move (`tpacket`, `mmsg`, with why `auto`
    /// fell back).
    Netdev(String),
    /// A vhost-user device.
    Vhost(VhostState),
    /// A VXLAN tunnel.
    Vxlan(vxlan::VxlanState),
}

/// A vhost-user device's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostState {
    pub connected: bool,
    pub connections: u64,
    pub acked_features: u64,
    pub pairs_active: usize,
    pub pairs_max: u16,
    pub guest_mac: Option<[u8; 6]>,
    pub needs_reset: Option<String>,
    /// The queues the frontend set up.
    pub queues: Vec<crate::api::VhostQueue>,
}

/// What a kernel edge's receive read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// Frames that arrived but could not be used (truncated, no header), with their bytes.
    pub bad: u64,
    pub bad_bytes: u64,
    /// More frames may be waiting right now.
    pub more: bool,
}

/// The one event of a kernel edge (its socket or TAP is readable), run as a burst.
pub(crate) fn kernel_burst(
    recv: io::Result<Received>,
    batch: &mut Batch,
    ingress: &mut dyn FnMut(&mut Batch, Refused),
) -> Outcome {
    match recv {
        Ok(r) => {
            let refused = Refused { rx_error: (r.bad, r.bad_bytes), ..Default::default() };
            if !batch.is_empty() || r.bad > 0 {
                ingress(batch, refused);
            }
            Outcome::Burst { frames: batch.len(), more: r.more, pollable: false }
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Outcome::Burst { frames: 0, more: true, pollable: false },
        Err(e) => Outcome::Failed(e),
    }
}

/// One port's I/O, whatever it is connected to.
pub trait PortEdge: Send + std::fmt::Debug {
    /// `netdev`, `internal`, `vhost-user`.
    fn kind(&self) -> &'static str;

    /// The fds the datapath should watch (duplicates it owns), each with the event it
    /// stands for.
    fn watches(&mut self) -> Vec<(OwnedFd, EventId)>;

    /// Events to run once as soon as the edge is attached or rewatched.
    fn startup_events(&self) -> Vec<EventId> {
        Vec::new()
    }

    /// Bursts one event may run before other ports get their turn (the rest is queued).
    fn bursts_per_event(&self) -> usize {
        8
    }

    /// Runs event `ev`: receives up to a burst into `batch` (which the caller has cleared)
    /// and calls `ingress` with it and what was refused, while the frames' bytes are still
    /// valid (a guest's transmit chains are handed back only after `ingress` returns, so a
    /// frontend never sees a half-processed ring).
    fn on_event(
        &mut self,
        ev: EventId,
        cx: EventCx,
        batch: &mut Batch,
        ingress: &mut dyn FnMut(&mut Batch, Refused),
    ) -> Outcome;

    /// Busy polling of `ev` ends: turn its notifications back on. Returns whether work
    /// arrived meanwhile (run the event again).
    fn stop_polling(&mut self, _ev: EventId) -> bool {
        false
    }

    /// Sends the frames of `src` listed in `list`, each with its tag action.
    fn tx_burst(&mut self, src: &Batch, list: &[Egress]) -> SendResult;

    /// Hands the kernel what an earlier [`PortEdge::tx_burst`] left (`SendResult::unflushed`).
    /// Returns whether some is still left.
    fn flush(&mut self) -> bool {
        false
    }

    /// Something outside changed what the edge relies on (a frontend's memory file was
    /// truncated and caught by the SIGBUS guard): look at it.
    fn check_memory(&mut self) {}

    fn state(&self) -> EdgeState {
        EdgeState::Up
    }

    /// The remote VTEP behind `mac` in `vlan`, for a tunnel edge that learned it.
    fn remote_of(&self, _vlan: crate::switch::VlanId, _mac: [u8; 6]) -> Option<std::net::IpAddr> {
        None
    }

    /// The edge is being removed: let go of what it holds. `delete_device`: vmnetd made the
    /// kernel device behind it and should delete it.
    fn release(self: Box<Self>, _delete_device: bool) {}
}
