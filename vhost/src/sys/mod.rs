//! The only `unsafe` code of the crate: CPU hints ([`arch`]), raw access to guest memory
//! through checked spans ([`gmem`]) and the SIGBUS guard around it ([`sigbus`]). Everything
//! else is safe Rust over `vm-memory` and `nix`.
#![allow(unsafe_code)]

pub mod arch;
pub mod dirtylog;
pub mod gmem;
pub mod sigbus;
