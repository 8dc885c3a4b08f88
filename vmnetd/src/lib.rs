//! vmnetd: host networking for QEMU/libvirt VMs.
//!
//! Module map:
//! - [`switch`]: the built-in bridge's L2 switching core — pure logic, no I/O.
//! - [`sys`]: the only `unsafe` code — TUN/TAP ioctls and socket calls.
//! - [`tap`]: persistent TAP/TUN declarations (create, adopt, remove) on top of [`sys::tap`]
//!   and [`netlink`].
//! - [`netlink`]: rtnetlink link queries and changes.
//! - [`api`]: the control protocol (shared with the libvirt hook); [`client`]: its client.
//! - [`daemon`]: `vmnetd daemon` — control socket, state, restore; [`state`]: the persisted
//!   declarations; [`config`]: the TOML config and its embedded default.
//! - [`cli`]: the command line; [`users`]: user/group resolution; [`ifname`]: interface names.
#![deny(unsafe_code)]

pub mod bridge;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod linuxbr;
pub mod netlink;
pub mod pcap;
pub mod ports;
pub mod state;
pub mod switch;
pub mod sys;
pub mod tap;

// The protocol and value types live in the leaf crate `vmnetd-api` (shared with the libvirt
// hook); they keep their paths here.
pub use vmnetd_api::proto as api;
pub use vmnetd_api::{client, ifname, users};
