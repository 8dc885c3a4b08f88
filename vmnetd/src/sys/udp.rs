//! UDP sockets for VXLAN tunnel ports: batched receive with the sender's address
//! (`recvmmsg`), batched send to per-datagram destinations (`sendmmsg`), multicast
//! membership on a given interface. Both ways can move a train of equal-sized datagrams as
//! one buffer (`UDP_SEGMENT` to send, `UDP_GRO` to receive, see `udp(7)`): the kernel then
//! routes, forwards and queues the train once instead of per datagram.

use std::io::{self, IoSliceMut};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use super::iov::IoPart;
use super::setsockopt;

/// A destination in the form `sendmmsg` takes.
#[derive(Clone, Copy)]
pub struct Dest {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
    sa: SocketAddr,
}

impl Dest {
    pub fn addr(&self) -> SocketAddr {
        self.sa
    }
}

impl PartialEq for Dest {
    fn eq(&self, o: &Dest) -> bool {
        self.sa == o.sa
    }
}

impl std::fmt::Debug for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", sockaddr_to(&self.addr).map_or_else(|| "?".to_owned(), |a| a.to_string()))
    }
}

impl Dest {
    pub fn new(a: SocketAddr) -> Dest {
        // SAFETY: an all-zero sockaddr_storage is valid.
        let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut addr).cast::<libc::sockaddr_in>(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut addr).cast::<libc::sockaddr_in6>(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        Dest { addr, len: len as libc::socklen_t, sa: a }
    }
}

/// The address in a `sockaddr_storage` the kernel filled (IPv4-mapped IPv6 addresses come
/// back as IPv4).
pub fn sockaddr_to(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            Some(SocketAddr::new(ip, u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// What the kernel said of one received datagram (or train of datagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    pub len: usize,
    pub truncated: bool,
    pub from: Option<SocketAddr>,
    /// With `UDP_GRO`: the buffer holds datagrams of this size back to back (the last may be
    /// shorter); 0: one datagram.
    pub seg: usize,
}

/// Room for one `UDP_GRO` (an int) or `UDP_SEGMENT` (a u16) control message.
const CMSG_ROOM: usize = 32;

/// Receives up to `bufs.len()` datagrams with one `recvmmsg`, each into its scatter list
/// (the VXLAN header, then the frame buffer). Returns how many arrived (0: none waiting).
pub fn recv_batch(sock: &UdpSocket, bufs: &mut [[IoSliceMut<'_>; 2]], out: &mut [Datagram]) -> io::Result<usize> {
    let n = bufs.len().min(out.len());
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: an all-zero mmsghdr is valid.
    let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut names: Vec<libc::sockaddr_storage> = (0..n).map(|_| unsafe { zeroed() }).collect();
    // u64 elements: aligned for cmsghdr.
    let mut cmsgs = vec![[0u64; CMSG_ROOM / 8]; n];
    for (i, m) in msgs.iter_mut().enumerate() {
        // `IoSliceMut` is ABI-compatible with `struct iovec` (std guarantees it on Unix).
        m.msg_hdr.msg_iov = bufs[i].as_mut_ptr().cast();
        m.msg_hdr.msg_iovlen = 2;
        m.msg_hdr.msg_name = (&raw mut names[i]).cast();
        m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        m.msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        m.msg_hdr.msg_controllen = CMSG_ROOM;
    }
    // SAFETY: `msgs` holds `n` headers whose iovecs, names and control buffers point into
    // `bufs`, `names` and `cmsgs`, borrowed for the whole call; the kernel writes at most the
    // given lengths.
    let got = unsafe { super::iov::recvmmsg(sock.as_fd(), &mut msgs)? };
    for (i, m) in msgs.iter().enumerate().take(got) {
        out[i] = Datagram {
            len: m.msg_len as usize,
            truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            from: sockaddr_to(&names[i]),
            seg: gro_size(&m.msg_hdr),
        };
    }
    Ok(got)
}

/// The segment size of a `UDP_GRO` train, 0 if the message has none.
fn gro_size(h: &libc::msghdr) -> usize {
    // SAFETY: `h` was filled by recvmmsg; the CMSG_* macros walk its control buffer within
    // `msg_controllen`, and the data is read (unaligned) only from a UDP_GRO message long
    // enough for an int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let hdr = &*c;
            if hdr.cmsg_level == libc::SOL_UDP
                && hdr.cmsg_type == libc::UDP_GRO
                && hdr.cmsg_len >= libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize
            {
                let v: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return v.max(0) as usize;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// Whether the kernel hands over trains of datagrams as one buffer (`UDP_GRO`). Best effort.
pub fn set_gro(sock: &UdpSocket, on: bool) -> bool {
    let on = libc::c_int::from(on);
    setsockopt(sock.as_fd(), libc::SOL_UDP, libc::UDP_GRO, &on, "UDP_GRO").is_ok()
}

/// One message for [`send_batch`]: its destination, its bytes, and — for a train of
/// datagrams in one buffer — the size of each (`UDP_SEGMENT`; 0: one datagram).
pub struct Out<'a> {
    pub dest: Dest,
    pub parts: &'a [IoPart<'a>],
    pub seg: u16,
}

/// Sends each message with one `sendmmsg`. Returns how many messages the kernel took; "no
/// room" is fewer sent, other errors are returned.
pub fn send_batch(sock: &UdpSocket, msgs: &[Out<'_>]) -> io::Result<usize> {
    if msgs.is_empty() {
        return Ok(0);
    }
    let iovs: Vec<Vec<libc::iovec>> = msgs.iter().map(|m| m.parts.iter().map(IoPart::iovec).collect()).collect();
    let mut dests: Vec<Dest> = msgs.iter().map(|m| m.dest).collect();
    let mut cmsgs = vec![[0u64; CMSG_ROOM / 8]; msgs.len()];
    // SAFETY: an all-zero mmsghdr is valid.
    let mut hdrs: Vec<libc::mmsghdr> = (0..msgs.len()).map(|_| unsafe { zeroed() }).collect();
    for (i, ((m, iov), d)) in hdrs.iter_mut().zip(&iovs).zip(dests.iter_mut()).enumerate() {
        m.msg_hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
        m.msg_hdr.msg_iovlen = iov.len();
        m.msg_hdr.msg_name = (&raw mut d.addr).cast();
        m.msg_hdr.msg_namelen = d.len;
        if msgs[i].seg > 0 {
            m.msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            m.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
            // SAFETY: the control buffer is CMSG_ROOM bytes, aligned, and larger than
            // CMSG_SPACE(2); CMSG_FIRSTHDR points into it and the header and its u16 of data
            // are written within it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), msgs[i].seg);
            }
        }
    }
    // SAFETY: every header points at an iovec array in `iovs`, a name in `dests` and a
    // control buffer in `cmsgs`, all alive for the call, whose entries point at memory
    // borrowed by `msgs`; sendmmsg only reads them.
    unsafe { super::iov::sendmmsg(sock.as_fd(), &mut hdrs) }
}

/// Socket buffers of `bytes` each way (best effort, as root beyond the sysctl limits).
pub fn set_buffers(sock: &UdpSocket, bytes: usize) {
    super::set_buffers(sock.as_fd(), bytes);
}

/// Joins multicast `group` on interface `ifindex`, sends multicast out of it, and does not
/// loop our own datagrams back.
pub fn join_group(sock: &UdpSocket, group: IpAddr, ifindex: u32) -> io::Result<()> {
    match group {
        IpAddr::V4(g) => {
            let mreq = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr { s_addr: u32::from_ne_bytes(g.octets()) },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as libc::c_int,
            };
            setsockopt(sock.as_fd(), libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq, "IP_ADD_MEMBERSHIP")?;
            setsockopt(sock.as_fd(), libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq, "IP_MULTICAST_IF")?;
            sock.set_multicast_loop_v4(false)?;
        }
        IpAddr::V6(g) => {
            sock.join_multicast_v6(&g, ifindex)?;
            let idx = ifindex as libc::c_int;
            setsockopt(sock.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &idx, "IPV6_MULTICAST_IF")?;
            sock.set_multicast_loop_v6(false)?;
        }
    }
    Ok(())
}

/// The MTU of the route to `to` (what the underlay carries), from a connected socket.
pub fn path_mtu(to: IpAddr) -> io::Result<usize> {
    let any: SocketAddr = match to {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any)?;
    s.connect((to, 9))?;
    let (level, name) = match to {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the call; the fd is open.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.max(0) as usize)
}
