//! vmnetd: host networking for QEMU/libvirt VMs.
//!
//! Module map (a frame's walk, then the control plane):
//! - [`ports`]: the edges of the built-in bridge, each a [`ports::PortEdge`] — `netdev`
//!   (AF_PACKET), `internal` (a TAP vmnetd holds), `vhost` (a guest's virtqueues).
//! - [`datapath`]: the thread that runs every edge's events through the switch: the event
//!   loop, bursts ([`datapath::batch`]), software offloads, captures, port handles.
//! - [`switch`]: the built-in bridge's L2 switching core — pure logic, no I/O.
//! - [`bridge`]: bridge backends ([`bridge::BridgeBackend`]): the built-in bridge and the
//!   kernel's Linux bridge, behind one shape.
//! - [`daemon`]: `vmnetd daemon` — the control socket and who may do what, the request
//!   handlers, the reconciler, start-up; [`state`]: the persisted declarations;
//!   [`config`]: the TOML config and its embedded default.
//! - [`network`]: networks with addresses on a bridge — gateway, dnsmasq (DHCP, DNS, RA),
//!   NAT and port forwards in vmnetd's own nftables table.
//! - [`tap`]: persistent TAP/TUN declarations; [`netlink`]: rtnetlink link queries and
//!   changes; [`linuxbr`]: Linux bridge messages (VLANs, enslaving).
//! - [`sys`]: the only `unsafe` code — TUN/TAP ioctls, AF_PACKET, iovecs.
//! - [`vxlan`]: VXLAN headers, VNI maps and remote VTEP learning for tunnel ports.
//! - [`cli`]: the command line; [`pcap`]: capture files.
//! - [`api`], [`client`], [`ifname`], [`users`]: re-exported from the leaf crate
//!   `vmnetd-api` (the protocol and its value types, shared with the libvirt hook).
#![deny(unsafe_code)]

pub mod bridge;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod linuxbr;
pub mod netlink;
pub mod network;
pub mod pcap;
pub mod ports;
pub mod state;
pub mod switch;
pub mod sys;
pub mod tap;
pub mod vxlan;

// The protocol and value types live in the leaf crate `vmnetd-api` (shared with the libvirt
// hook); they keep their paths here.
pub use vmnetd_api::proto as api;
pub use vmnetd_api::{client, ifname, users};
