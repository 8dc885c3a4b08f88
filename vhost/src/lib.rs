//! vhost-user-net device backend for vmnetd.
//!
//! This crate turns virtqueues into Ethernet frames and back; it knows nothing of switching.
//! - [`virtio_net`]: the virtio-net header and offload information.
pub mod virtio_net;
