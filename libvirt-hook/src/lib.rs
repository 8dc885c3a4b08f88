//! `vmnetd-libvirt-hook`: libvirt's qemu hook for vmnetd (DESIGN §5), and its `translate`
//! and `install` verbs.
//!
//! - [`xml`]: a span-keeping element tree over quick-xml;
//! - [`domain`]: what the hook reads from domain XML (interfaces, vmnetd metadata, memory);
//! - [`bandwidth`]: libvirt's `<bandwidth>` as vmnetd policers;
//! - [`plan`]: the ports a domain needs at a phase — pure;
//! - [`hook`]: reconciling that with the daemon, and the exit contract with libvirt;
//! - [`translate`]: bridge interfaces on built-in bridges → vhost-user, byte-preserving;
//! - [`install`], [`config`]: putting the hook in place, and its settings;
//! - [`safedir`]: per-domain socket directories, handled without following links.
#![deny(unsafe_code)]

pub mod bandwidth;
pub mod config;
pub mod domain;
pub mod hook;
pub mod install;
pub mod link;
pub mod plan;
pub mod safedir;
pub mod translate;
pub mod xml;
