//! The only place in `vmnetd` with `unsafe` code: thin, checked wrappers around the ioctls and
//! socket calls that no safe crate covers (TUN/TAP configuration, AF_PACKET rings).
//!
//! Every wrapper validates its inputs before the syscall, wraps raw fds in `OwnedFd`/`File`
//! at once, and returns an error naming the request that failed.
#![allow(unsafe_code)]

pub mod iov;
pub mod packet;
pub mod tap;
pub mod udp;

use std::io;

/// `CAP_NET_ADMIN`, from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;

/// Whether this process holds `CAP_NET_ADMIN` in its effective set.
///
/// Read from `/proc/self/status` (`CapEff`), which needs no syscall of our own. Creating TAPs,
/// bridges and AF_PACKET sockets all need it, and checking first turns the kernel's bare
/// `EPERM` into a message that says what is missing.
pub fn has_cap_net_admin() -> io::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))?;
    let bits = u64::from_str_radix(cap_eff.trim(), 16)
        .map_err(|e| io::Error::other(format!("bad CapEff in /proc/self/status: {e}")))?;
    Ok(bits & (1 << CAP_NET_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cap_check_reads_proc() {
        // Whatever the answer, it must be readable on Linux.
        super::has_cap_net_admin().unwrap();
    }
}
