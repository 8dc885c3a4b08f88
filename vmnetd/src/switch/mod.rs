//! The built-in bridge's switching core: pure logic, no I/O, no clock, no locks, no unsafe.

pub mod mac;

pub use mac::{MacAddr, MacParseError};
