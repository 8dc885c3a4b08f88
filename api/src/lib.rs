//! vmnetd's control protocol and the value types it shares with its clients.
//!
//! A leaf crate: serde, and libc's user database, nothing of the daemon. The CLI, the libvirt
//! hook and anything else that talks to `vmnetd daemon` depend on this crate alone.
//!
//! - [`proto`]: requests and replies (newline-delimited JSON over the control socket),
//!   errors and their exit codes, limits.
//! - [`client`]: a blocking client of the control socket.
//! - [`ifname`], [`mac`], [`vlan`]: validated interface names, MAC addresses, VLAN ids, sets
//!   and port modes (with the OVS `NORMAL` classification rules a mode implies).
//! - [`net`]: networks with addresses: names, prefixes, DHCP ranges, host names, forwards.
//! - [`policy`]: flow rules, `trace` and mirrors of the built-in bridge.
//! - [`users`]: user and group names resolved the way `tunctl -u` does.
#![deny(unsafe_code)]

pub mod client;
pub mod ifname;
pub mod mac;
pub mod net;
pub mod policy;
pub mod proto;
pub mod users;
pub mod vlan;

pub use ifname::IfName;
pub use mac::MacAddr;
pub use vlan::{VlanId, VlanMode};
