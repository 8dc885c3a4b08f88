//! The I/O edges of the built-in bridge: they move frames between the kernel (or a guest)
//! and [`Batch`]es, and send a batch's frames out with the tag actions the switch decided.
//!
//! - [`netdev`]: any kernel interface, through an AF_PACKET socket.
//! - [`internal`]: a TAP whose userspace side vmnetd holds; its kernel side is a host
//!   interface.

pub mod internal;
pub mod netdev;
pub mod vhost;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::datapath::batch::Batch;
use crate::switch::Egress;

pub use internal::InternalPort;
pub use netdev::NetdevPort;
pub use vhost::VhostPort;

/// What happened to the frames handed to [`Edge::send`].
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
}

/// What [`Edge::recv`] read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecvResult {
    /// Frames that arrived but could not be used (truncated, no header), with their bytes.
    pub bad: u64,
    pub bad_bytes: u64,
    /// More frames may be waiting right now.
    pub more: bool,
}

/// One port's I/O.
#[derive(Debug)]
pub enum Edge {
    Netdev(NetdevPort),
    Internal(InternalPort),
    Vhost(VhostPort),
}

impl Edge {
    pub fn fd(&self) -> RawFd {
        match self {
            Edge::Netdev(p) => p.as_raw_fd(),
            Edge::Internal(p) => p.as_raw_fd(),
            Edge::Vhost(p) => p.shared.notify.as_raw_fd(),
        }
    }

    /// Reads up to a burst of frames into `batch` (which the caller has cleared). A vhost-user
    /// port's frames are taken by the datapath itself, under the device lock.
    pub fn recv(&mut self, batch: &mut Batch) -> io::Result<RecvResult> {
        match self {
            Edge::Netdev(p) => p.recv(batch),
            Edge::Internal(p) => p.recv(batch),
            Edge::Vhost(_) => Ok(RecvResult::default()),
        }
    }

    /// Sends the frames of `src` listed in `list`, each with its tag action.
    pub fn send(&mut self, src: &Batch, list: &[Egress]) -> SendResult {
        match self {
            Edge::Netdev(p) => p.send(src, list),
            Edge::Internal(p) => p.send(src, list),
            Edge::Vhost(p) => p.send(src, list),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Edge::Netdev(_) => "netdev",
            Edge::Internal(_) => "internal",
            Edge::Vhost(_) => "vhost-user",
        }
    }
}
