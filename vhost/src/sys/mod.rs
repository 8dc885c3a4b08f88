//! The only `unsafe` code of the crate: CPU hints ([`arch`]) and the SIGBUS guard around
//! guest memory ([`sigbus`]). Everything else is safe Rust over `vm-memory` and `nix`.
#![allow(unsafe_code)]

pub mod arch;
pub mod sigbus;
