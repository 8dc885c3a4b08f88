//! vhost-user-net device backend for vmnetd: virtqueues in, Ethernet frames out, and back.
//! It knows nothing of switching.
//!
//! - [`virtio_net`]: the virtio-net header, offload information and feature bits.
//! - [`device`]: the vhost-user protocol (on the `vhost` crate) and the shared device state.
//! - [`queue`]: descriptor chains <-> frames: TX chains parsed into frame parts, frames
//!   written into RX chains (mergeable buffers), with every guest address checked.
//! - [`ctrl`]: the control virtqueue (RX mode, MAC table, multiqueue).
//! - [`server`]: the socket: listen (server mode) or connect and keep retrying (client mode).
//! - [`driver`]: a minimal virtio-net *driver* over vhost-user, for tests and benchmarks.
pub mod ctrl;
pub mod device;
pub mod driver;
pub mod queue;
pub mod ring;
pub mod server;
pub mod virtio_net;
