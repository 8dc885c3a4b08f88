//! vhost-user-net device backend for vmnetd.
//!
//! This crate turns virtqueues into Ethernet frames and back; it knows nothing of switching.
//! (Filled in by the vhost-user issue; the foundation only reserves its place.)
