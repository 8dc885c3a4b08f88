//! TUN/TAP devices through `/dev/net/tun` (see `Documentation/networking/tuntap.rst`).
//!
//! The `tun-tap` crate cannot make a device persistent, give it an owner, or turn on
//! `IFF_VNET_HDR`, so the ioctls are done here: one checked helper per ioctl shape (a value
//! argument, a pointer argument, the `ifreq` of `TUNSETIFF`), each returning
//! [`Error::Ioctl`] with the request name and the OS error.
//!
//! Note that `TUNSETOWNER`, `TUNSETGROUP`, `TUNSETPERSIST` and `TUNSETOFFLOAD` take their
//! argument *by value* (the kernel casts the `unsigned long` itself), while
//! `TUNSETVNETHDRSZ` takes a pointer to an `int`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::ifname::{IfName, MAX_IFNAME_LEN};

const TUN_PATH: &str = "/dev/net/tun";

/// Size of `struct virtio_net_hdr_mrg_rxbuf`, the vnet header vmnetd uses on TAPs it reads.
pub const VNET_HDR_LEN: i32 = 12;

/// Offload flags for [`Tap::set_offload`] (`TUN_F_*` from `linux/if_tun.h`).
pub mod offload {
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    pub const USO4: u32 = libc::TUN_F_USO4;
    pub const USO6: u32 = libc::TUN_F_USO6;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    #[error("{req} failed on {ifname}")]
    Ioctl {
        req: &'static str,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("Kernel returned an invalid interface name after TUNSETIFF")]
    BadKernelName,
}

impl Error {
    /// The OS error behind this failure, if any (`EBUSY`, `EPERM`, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::OpenTun(e) | Error::Ioctl { source: e, .. } => e.raw_os_error(),
            Error::BadKernelName => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Layer of a TUN/TAP device (a protocol value type).
pub use vmnetd_api::proto::TapMode as Mode;

/// The flags a device is opened with. Opening an existing device with different `mode` or
/// `multi_queue` fails with `EINVAL`; a different `vnet_hdr` would silently change the
/// device, so callers compare flags (via netlink) before attaching to a device they did not
/// create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpenFlags {
    pub mode: Mode,
    pub multi_queue: bool,
    pub vnet_hdr: bool,
}

impl OpenFlags {
    fn ifr_flags(&self, exclusive: bool) -> libc::c_short {
        let mut f = libc::IFF_NO_PI;
        f |= match self.mode {
            Mode::Tap => libc::IFF_TAP,
            Mode::Tun => libc::IFF_TUN,
        };
        if self.multi_queue {
            f |= libc::IFF_MULTI_QUEUE;
        }
        if self.vnet_hdr {
            f |= libc::IFF_VNET_HDR;
        }
        if exclusive {
            f |= libc::IFF_TUN_EXCL;
        }
        // All IFF_* values used here fit in 16 bits (IFF_TUN_EXCL is 0x8000, the sign bit of a
        // c_short, which is how the kernel's `short ifr_flags` carries it).
        f as libc::c_short
    }
}

/// An open queue of a TUN/TAP device. Dropping it detaches the queue; a non-persistent device
/// disappears with its last queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: IfName,
}

/// `struct ifreq` restricted to the one shape `TUNSETIFF` uses: a name and `short` flags.
#[repr(C)]
struct IfReqFlags {
    name: [u8; MAX_IFNAME_LEN + 1],
    flags: libc::c_short,
    // `struct ifreq` is 40 bytes on 64-bit Linux (16 + a 24-byte union); the kernel copies
    // all of it, so the tail must exist and be zero.
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == std::mem::size_of::<libc::ifreq>());

impl Tap {
    /// Opens (creating if needed) the device `name` with `flags`. With `exclusive`, fails with
    /// `EBUSY` if the device already exists (`IFF_TUN_EXCL`), so "create" never silently
    /// attaches to someone else's device. With `name` = `None`, the kernel picks `tapN`/`tunN`.
    pub fn open(name: Option<&IfName>, flags: OpenFlags, exclusive: bool) -> Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(Error::OpenTun)?;
        let mut req = IfReqFlags {
            name: name.map(IfName::to_ifr_name).unwrap_or([0; MAX_IFNAME_LEN + 1]),
            flags: flags.ifr_flags(exclusive),
            _pad: [0; 22],
        };
        // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF reads and writes a
        // `struct ifreq`, and `req` is a `repr(C)` struct of exactly that size (checked by the
        // const assertion above) that lives across the call. The return value is checked.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        let shown = name.map_or_else(|| "<new>".to_owned(), |n| n.to_string());
        if ret < 0 {
            return Err(Error::Ioctl { req: "TUNSETIFF", ifname: shown, source: io::Error::last_os_error() });
        }
        let len = req.name.iter().position(|&b| b == 0).unwrap_or(req.name.len());
        let kname = std::str::from_utf8(&req.name[..len]).map_err(|_| Error::BadKernelName)?;
        let name = IfName::new(kname).map_err(|_| Error::BadKernelName)?;
        Ok(Tap { file, name })
    }

    pub fn name(&self) -> &IfName {
        &self.name
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn into_file(self) -> File {
        self.file
    }

    /// An ioctl whose argument is an integer passed by value.
    fn ioctl_val(&self, req: libc::Ioctl, req_name: &'static str, arg: libc::c_ulong) -> Result<()> {
        // SAFETY: `self.file` is an open TUN/TAP descriptor attached by TUNSETIFF; the requests
        // passed here (TUNSETPERSIST/OWNER/GROUP/OFFLOAD) take an integer by value and do not
        // dereference it. The return value is checked.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), req, arg) };
        self.check(ret, req_name)
    }

    /// An ioctl whose argument is a pointer to an `int` the kernel reads.
    fn ioctl_int_ptr(&self, req: libc::Ioctl, req_name: &'static str, arg: libc::c_int) -> Result<()> {
        // SAFETY: `self.file` is an open TUN/TAP descriptor; the request reads one `int`
        // through the pointer, which points at `arg`, alive for the call. The return value is
        // checked.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), req, &arg as *const libc::c_int) };
        self.check(ret, req_name)
    }

    fn check(&self, ret: libc::c_int, req: &'static str) -> Result<()> {
        if ret < 0 {
            Err(Error::Ioctl { req, ifname: self.name.to_string(), source: io::Error::last_os_error() })
        } else {
            Ok(())
        }
    }

    /// `TUNSETPERSIST`: keep the device after its last queue closes.
    pub fn set_persist(&self, persist: bool) -> Result<()> {
        self.ioctl_val(libc::TUNSETPERSIST, "TUNSETPERSIST", persist.into())
    }

    /// `TUNSETOWNER`: the uid that may attach without `CAP_NET_ADMIN`.
    pub fn set_owner(&self, uid: u32) -> Result<()> {
        self.ioctl_val(libc::TUNSETOWNER, "TUNSETOWNER", uid.into())
    }

    /// `TUNSETGROUP`: the gid that may attach without `CAP_NET_ADMIN`.
    pub fn set_group(&self, gid: u32) -> Result<()> {
        self.ioctl_val(libc::TUNSETGROUP, "TUNSETGROUP", gid.into())
    }

    /// `TUNSETOFFLOAD`: which `TUN_F_*` offloads the reader of this queue accepts.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        self.ioctl_val(libc::TUNSETOFFLOAD, "TUNSETOFFLOAD", flags.into())
    }

    /// `TUNSETVNETHDRSZ`: size of the vnet header on this device (10 or 12).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<()> {
        self.ioctl_int_ptr(libc::TUNSETVNETHDRSZ, "TUNSETVNETHDRSZ", size)
    }

    /// Puts the queue in non-blocking mode (for epoll-driven readers).
    pub fn set_nonblocking(&self) -> Result<()> {
        let fd = self.file.as_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| self.nix_err("F_GETFL", e))?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| self.nix_err("F_SETFL", e))?;
        Ok(())
    }

    fn nix_err(&self, req: &'static str, e: nix::Error) -> Error {
        Error::Ioctl { req, ifname: self.name.to_string(), source: io::Error::from(e) }
    }
}

/// `TUNSETPERSIST` on an already attached queue (e.g. one a [`Tap`] was turned into).
pub fn set_persist_fd(file: &File, ifname: &IfName, persist: bool) -> Result<()> {
    // SAFETY: `file` is an open TUN/TAP queue; TUNSETPERSIST takes its argument by value and
    // dereferences nothing. The return value is checked.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(persist)) };
    if ret < 0 {
        return Err(Error::Ioctl {
            req: "TUNSETPERSIST",
            ifname: ifname.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_encode_like_if_tun_h() {
        let f = OpenFlags { mode: Mode::Tap, multi_queue: true, vnet_hdr: true };
        assert_eq!(f.ifr_flags(false) as u16, 0x0002 | 0x1000 | 0x0100 | 0x4000);
        assert_eq!(f.ifr_flags(true) as u16, 0x0002 | 0x1000 | 0x0100 | 0x4000 | 0x8000);
        let f = OpenFlags { mode: Mode::Tun, multi_queue: false, vnet_hdr: false };
        assert_eq!(f.ifr_flags(false) as u16, 0x0001 | 0x1000);
    }
}
