//! AF_PACKET sockets for `netdev` ports (see `packet(7)`): one raw socket per interface,
//! with a virtio-net header on every frame (`PACKET_VNET_HDR`, so GSO super-frames and
//! partial checksums cross whole), the VLAN tag the kernel strips into the skb reported in
//! `PACKET_AUXDATA`, our own transmissions never read back (`PACKET_IGNORE_OUTGOING`), and
//! batched I/O with `recvmmsg`/`sendmmsg`, or `TPACKET_V2` rings ([`super::tpacket`]).

use std::io::{self, IoSliceMut};

use super::check;
use super::iov::IoPart;
use super::tpacket::{self, Geometry, Rings};
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

// linux/if_packet.h
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const ETH_P_ALL: u16 = 0x0003;

/// Size of the `struct virtio_net_hdr` that `PACKET_VNET_HDR` puts before every frame.
pub const VNET_HDR_LEN: usize = 10;

/// Room for one `PACKET_AUXDATA` control message.
pub const CMSG_SPACE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

/// What the kernel said about one received frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvInfo {
    /// Bytes received, virtio-net header included.
    pub len: usize,
    /// The frame was longer than the buffers (and was cut).
    pub truncated: bool,
    /// An 802.1Q tag the kernel removed from the frame: (TPID, TCI).
    pub vlan: Option<(u16, u16)>,
}

/// An AF_PACKET socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Any datagram socket standing in for a packet socket (tests of what is sent).
    #[cfg(test)]
    pub fn from_fd(fd: OwnedFd) -> PacketSocket {
        PacketSocket { fd }
    }

    /// Opens a non-blocking raw packet socket on interface `ifindex`, in promiscuous mode.
    pub fn open(ifindex: u32) -> io::Result<PacketSocket> {
        // Made with protocol 0, the socket takes no frame until bind(2) names the interface
        // (with ETH_P_ALL at socket(2) it would take every interface's frames until then).
        let s = PacketSocket::socket(0)?;
        s.receive_options()?;
        s.bind(ifindex, ETH_P_ALL)?;
        Ok(s)
    }

    /// Like [`PacketSocket::open`], with `TPACKET_V2` receive and transmit rings of `geo`
    /// (see [`super::tpacket`]). The socket is made with protocol 0 and takes frames only
    /// from bind(2) on, when the rings exist, and only this interface's.
    pub fn open_rings(ifindex: u32, geo: Geometry) -> io::Result<(PacketSocket, Rings)> {
        let s = PacketSocket::socket(0)?;
        s.receive_options()?;
        s.setsockopt_int(tpacket::PACKET_VERSION, tpacket::TPACKET_V2, "PACKET_VERSION")?;
        // A transmit slot the kernel cannot parse is skipped, not left blocking the ring.
        s.setsockopt_int(tpacket::PACKET_LOSS, 1, "PACKET_LOSS")?;
        // Frames longer than a slot are queued on the socket whole (TP_STATUS_COPY).
        s.setsockopt_int(tpacket::PACKET_COPY_THRESH, 1, "PACKET_COPY_THRESH")?;
        s.setsockopt_struct(tpacket::PACKET_RX_RING, &geo.rx_req(), "PACKET_RX_RING")?;
        s.setsockopt_struct(tpacket::PACKET_TX_RING, &geo.tx_req(), "PACKET_TX_RING")?;
        let rings = Rings::map(s.fd.as_fd(), geo)?;
        s.bind(ifindex, ETH_P_ALL)?;
        Ok((s, rings))
    }

    /// A socket that only sends on `ifindex` (bound to no protocol, it receives nothing), with
    /// a virtio-net header on every frame: what a ring socket uses for frames longer than a
    /// slot.
    pub fn open_send_only(ifindex: u32) -> io::Result<PacketSocket> {
        let s = PacketSocket::socket(0)?;
        s.setsockopt_int(PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        let _ = s.setsockopt_int(PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS");
        s.bind(ifindex, 0)?;
        Ok(s)
    }

    fn socket(proto: u16) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2) call with constant arguments; the result is checked and
        // owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto.to_be()),
            )
        };
        check(raw, "socket(AF_PACKET)")?;
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        Ok(PacketSocket { fd: unsafe { OwnedFd::from_raw_fd(raw) } })
    }

    /// The options of a receiving socket (before any ring: the kernel refuses
    /// `PACKET_VNET_HDR` once one exists).
    fn receive_options(&self) -> io::Result<()> {
        self.setsockopt_int(PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        self.setsockopt_int(PACKET_AUXDATA, 1, "PACKET_AUXDATA")?;
        self.setsockopt_int(PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING")?;
        // Best effort: skipping the qdisc only makes transmission cheaper.
        let _ = self.setsockopt_int(PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS");
        Ok(())
    }

    /// Promiscuous mode on `ifindex` (for a protocol-bound socket), then bind(2).
    fn bind(&self, ifindex: u32, proto: u16) -> io::Result<()> {
        let ifindex = libc::c_int::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if proto != 0 {
            let mreq = PacketMreq { mr_ifindex: ifindex, mr_type: PACKET_MR_PROMISC, mr_alen: 0, mr_address: [0; 8] };
            self.setsockopt_struct(PACKET_ADD_MEMBERSHIP, &mreq, "PACKET_ADD_MEMBERSHIP")?;
        }
        // SAFETY: an all-zero sockaddr_ll is valid; we fill in the fields bind() reads.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll and the length is its size; checked.
        let ret = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "bind(AF_PACKET)").map(drop)
    }

    /// setsockopt(SOL_PACKET, `opt`) with an int or a `repr(C)` struct (`struct
    /// packet_mreq`, `struct tpacket_req`).
    fn setsockopt_struct<T>(&self, opt: libc::c_int, val: &T, what: &str) -> io::Result<()> {
        super::setsockopt(self.fd.as_fd(), libc::SOL_PACKET, opt, val, what)
    }

    fn setsockopt_int(&self, opt: libc::c_int, val: libc::c_int, what: &str) -> io::Result<()> {
        self.setsockopt_struct(opt, &val, what)
    }

    /// The socket's pending error (`SO_ERROR`, which reading clears): `ENETDOWN` once its
    /// interface is gone or down (the kernel sets it for both; either way the port goes
    /// down and is re-attached when the link comes back). A ring socket learns of it only this
    /// way, as no `recvmmsg` reports it.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        super::take_error(self.fd.as_fd())
    }

    /// Sets the socket's send and receive buffer sizes, best effort. With `CAP_NET_ADMIN` (the
    /// daemon has it) past `net.core.rmem_max`/`wmem_max`, which Debian leaves at 208 KiB:
    /// that holds three 64 KiB GSO frames, and TCP through the port would lose segments.
    pub fn set_buffers(&self, bytes: usize) {
        super::set_buffers(self.fd.as_fd(), bytes);
    }

    /// Receives up to `bufs.len()` frames with one `recvmmsg`. Each entry of `bufs` is the
    /// scatter list for one frame (typically: the 10-byte vnet header, then the frame
    /// buffer); `cmsgs` gives each frame room for its control message. Fills `infos` and
    /// returns how many frames arrived (0 when none is waiting).
    pub fn recv_batch(
        &self,
        bufs: &mut [[IoSliceMut<'_>; 2]],
        cmsgs: &mut [[u8; CMSG_SPACE]],
        infos: &mut [RecvInfo],
    ) -> io::Result<usize> {
        let n = bufs.len().min(cmsgs.len()).min(infos.len());
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
        let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
        for (i, m) in msgs.iter_mut().enumerate() {
            // `IoSliceMut` is ABI-compatible with `struct iovec` (std guarantees it on Unix).
            m.msg_hdr.msg_iov = bufs[i].as_mut_ptr().cast();
            m.msg_hdr.msg_iovlen = 2;
            m.msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = CMSG_SPACE;
        }
        // SAFETY: `msgs` holds `n` headers whose iovecs and control buffers point into
        // `bufs` and `cmsgs`, which are borrowed mutably for the whole call and outlive it.
        // The kernel writes at most the given lengths.
        let got = unsafe { super::iov::recvmmsg(self.fd.as_fd(), &mut msgs)? };
        for (i, m) in msgs.iter().enumerate().take(got) {
            infos[i] = RecvInfo {
                len: m.msg_len as usize,
                truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                vlan: parse_auxdata(&m.msg_hdr),
            };
        }
        Ok(got)
    }

    /// Sends each scatter list of `frames` as one frame (vnet header first) with one
    /// `sendmmsg`. Returns how many were accepted; the rest had no room (or an error the
    /// caller sees as fewer sent). Errors other than "no room" are returned.
    pub fn send_batch(&self, frames: &[&[IoPart<'_>]]) -> io::Result<usize> {
        if frames.is_empty() {
            return Ok(0);
        }
        let iovs: Vec<Vec<libc::iovec>> = frames.iter().map(|f| f.iter().map(IoPart::iovec).collect()).collect();
        // SAFETY: an all-zero mmsghdr is valid.
        let mut msgs: Vec<libc::mmsghdr> = (0..frames.len()).map(|_| unsafe { zeroed() }).collect();
        for (m, iov) in msgs.iter_mut().zip(&iovs) {
            m.msg_hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = iov.len();
        }
        // SAFETY: every header points at an iovec array in `iovs`, alive for the call, whose
        // entries point at memory borrowed by `frames` (slices, or guest memory held by the
        // caller's borrow); sendmmsg only reads them.
        unsafe { super::iov::sendmmsg(self.fd.as_fd(), &mut msgs) }
    }
}

fn parse_auxdata(h: &libc::msghdr) -> Option<(u16, u16)> {
    // SAFETY: `h` was filled by recvmmsg; the CMSG_* macros walk its control buffer within
    // `msg_controllen`, and each data pointer is read only when the message is a
    // PACKET_AUXDATA one of at least `size_of::<TpacketAuxdata>()` bytes (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let hdr = &*c;
            if hdr.cmsg_level == libc::SOL_PACKET
                && hdr.cmsg_type == PACKET_AUXDATA
                && hdr.cmsg_len >= libc::CMSG_LEN(size_of::<TpacketAuxdata>() as u32) as usize
            {
                let aux: TpacketAuxdata = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 || aux.tp_vlan_tci != 0 {
                    let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 { aux.tp_vlan_tpid } else { 0x8100 };
                    return Some((tpid, aux.tp_vlan_tci));
                }
                return None;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
