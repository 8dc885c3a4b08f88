//! vhost-user-net device backend for vmnetd: virtqueues in, Ethernet frames out, and back.
//! It knows nothing of switching.
//!
//! - [`virtio_net`]: the virtio-net header, offload information and feature bits.
//! - [`device`]: the vhost-user protocol (on the `vhost` crate) and the shared device state.
//! - [`queue`]: descriptor chains <-> frames: TX chains parsed into frame parts, frames
//!   written into RX chains (mergeable buffers), with every guest address checked.
//! - [`ctrl`]: the control virtqueue (RX mode, MAC table, multiqueue).
//! - [`server`]: the socket: listen (server mode) or connect and keep retrying (client mode).
//! - `driver` (feature `test-utils`): a minimal virtio-net *driver* over vhost-user, for
//!   tests and benchmarks.
//! - [`guard`]: guest memory that a frontend shrinks under us does not kill the process.
//!
//! `unsafe` code lives in one private module (`sys`): CPU prefetch hints, raw copies through
//! bounds-checked spans of guest memory ([`ring::Span`]), and the SIGBUS guard.
#![deny(unsafe_code)]

mod sys;

pub mod ctrl;
pub mod device;
#[cfg(feature = "test-utils")]
pub mod driver;
pub mod queue;
pub mod ring;
pub mod server;
pub mod virtio_net;

/// The dirty-page log of a migrating guest (see the module's docs).
pub mod dirtylog {
    pub use crate::sys::dirtylog::{DirtyLog, LOG_PAGE, MAX_LOG_BYTES};
}

/// The SIGBUS guard around guest memory (see the module's docs).
pub mod guard {
    pub use crate::sys::sigbus::{epoch, install, register, Error, Registration};
}
