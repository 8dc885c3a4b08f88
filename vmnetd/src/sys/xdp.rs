//! AF_XDP for `netdev` ports (the kernel's `Documentation/networking/af_xdp.rst`): an XDP
//! program on the interface redirects each received frame into a shared memory area (the
//! UMEM) through an XSK socket's rings, before the kernel makes an `skb` of it, and frames
//! written to the socket's transmit ring leave with one `sendto` per burst.
//!
//! No libbpf: the program is a few instructions assembled here ([`program`]), loaded with
//! `bpf(BPF_PROG_LOAD)` against an `XSKMAP` made with `bpf(BPF_MAP_CREATE)`, and attached
//! with a BPF link (`BPF_LINK_CREATE`), which the kernel detaches when its descriptor closes:
//! a daemon that dies, even by `SIGKILL`, leaves no program on the interface.
//!
//! The program redirects a frame to the socket of its receive queue, and passes to the
//! kernel's stack what it cannot redirect: a frame longer than a UMEM chunk (a GSO frame, on
//! a TAP, where XDP runs on the `skb`), or one on a queue no socket serves. The port's
//! AF_PACKET socket takes those, with their virtio-net header, as in the other modes.
//!
//! A VLAN tag the kernel keeps out of band (a NIC's `rxvlan` offload, a VLAN device on a
//! veth's peer) is not in the bytes XDP sees. Where the kernel has the
//! `bpf_xdp_metadata_rx_vlan_tag` kfunc (6.8+; found by name in the kernel's BTF,
//! [`btf_func_id`]), the program is bound to the device and asks it: a frame with such a tag
//! goes to the stack, where the AF_PACKET socket reads the tag from `PACKET_AUXDATA`. Without
//! it the port says so in its log (and the tag would be lost: the frame would arrive
//! untagged).
//!
//! The rings are memory the kernel writes. Every descriptor is read once into a local copy
//! and checked ([`Umem::check_rx`], [`Umem::check_completion`], fuzzed) against the UMEM's
//! bounds and against which chunks the kernel holds, before any byte is touched: a
//! descriptor that fails is counted and dropped, and its chunk is never handed out twice.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::iov::IoPart;
use super::{check, setsockopt, Mapping};

// linux/if_xdp.h
const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
/// The headroom the kernel keeps before a received frame in its chunk
/// (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: usize = 256;

// linux/bpf.h
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_PASS: i32 = 2;

/// Queues an XSKMAP has room for (a socket serves queue 0; the others pass to the stack).
const MAP_QUEUES: u32 = 64;

/// An Ethernet header: the least a received frame has.
const ETH_HLEN: usize = 14;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// The XDP program, for the XSKMAP `map_fd`: frames of at most `max_len` bytes go to the
/// socket of their receive queue (or, with none there, to the stack); longer ones to the
/// stack. With `vlan_kfunc` (the BTF id of `bpf_xdp_metadata_rx_vlan_tag`; the program must
/// then be bound to the device), it first asks the device for a VLAN tag kept out of band,
/// and passes a frame that has one to the stack, so the tag is not lost.
///
/// ```text
///  0: r6 = r1                      ; ctx, kept across calls
///  1: r2 = *(u32 *)(r6 + 0)        ; ctx->data
///  2: r3 = *(u32 *)(r6 + 4)        ; ctx->data_end
///  3: r2 += max_len + 1
///  4: if r2 <= r3 goto pass        ; longer than max_len
///     ; with vlan_kfunc only:
///     *(u32 *)(r10 - 8) = 0        ; vlan_proto, vlan_tci
///     *(u32 *)(r10 - 4) = 0
///     r1 = r6
///     r2 = r10
///     r2 += -8
///     r3 = r10
///     r3 += -4
///     call bpf_xdp_metadata_rx_vlan_tag
///     if r0 == 0 goto pass         ; a tag out of band
///     ; always:
///     r2 = *(u32 *)(r6 + 16)       ; ctx->rx_queue_index
///     r1 = map_fd ll               ; (two instructions)
///     r3 = XDP_PASS                ; no socket on the queue: pass
///     call bpf_redirect_map
///     exit
/// pass:
///     r0 = XDP_PASS
///     exit
/// ```
pub fn program(map_fd: RawFd, max_len: u16, vlan_kfunc: Option<u32>) -> Vec<Insn> {
    const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const ADD_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
    const JLE_X: u8 = 0xbd; // BPF_JMP | BPF_JLE | BPF_X
    const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
    const LD_DW: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
    const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const PSEUDO_KFUNC_CALL: u8 = 2;
    let mut p = vec![
        insn(MOV_X, 6, 1, 0, 0),
        insn(LDX_W, 2, 6, 0, 0),
        insn(LDX_W, 3, 6, 4, 0),
        insn(ADD_K, 2, 0, 0, i32::from(max_len) + 1),
        insn(JLE_X, 2, 3, 0, 0), // to `pass`, below
    ];
    let mut to_pass = vec![p.len() - 1];
    if let Some(kfunc) = vlan_kfunc {
        p.extend([
            insn(ST_W, 10, 0, -8, 0),
            insn(ST_W, 10, 0, -4, 0),
            insn(MOV_X, 1, 6, 0, 0),
            insn(MOV_X, 2, 10, 0, 0),
            insn(ADD_K, 2, 0, 0, -8),
            insn(MOV_X, 3, 10, 0, 0),
            insn(ADD_K, 3, 0, 0, -4),
            insn(CALL, 0, PSEUDO_KFUNC_CALL, 0, kfunc as i32),
            insn(JEQ_K, 0, 0, 0, 0), // to `pass`
        ]);
        to_pass.push(p.len() - 1);
    }
    p.extend([
        insn(LDX_W, 2, 6, 16, 0),
        insn(LD_DW, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(MOV_K, 3, 0, 0, XDP_PASS),
        insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    let pass = p.len();
    p.extend([insn(MOV_K, 0, 0, 0, XDP_PASS), insn(EXIT, 0, 0, 0, 0)]);
    for j in to_pass {
        // A jump's offset counts from the instruction after it; the program is a few dozen
        // instructions, far inside i16.
        p[j].off = (pass - j - 1) as i16;
    }
    p
}

/// The BTF type id of the function `name` in a BTF blob (the kernel's is
/// `/sys/kernel/btf/vmlinux`). Every length and offset is checked against the blob; a blob
/// this does not understand gives `None`.
pub fn btf_func_id(btf: &[u8], name: &str) -> Option<u32> {
    const MAGIC: u16 = 0xeb9f;
    const KIND_FUNC: u32 = 12;
    let u32_at =
        |b: &[u8], o: usize| -> Option<u32> { Some(u32::from_ne_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?)) };
    if btf.get(0..2)? != MAGIC.to_ne_bytes() {
        return None;
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
    let (str_off, str_len) = (u32_at(btf, 16)? as usize, u32_at(btf, 20)? as usize);
    let section = |off: usize, len: usize| -> Option<&[u8]> {
        let start = hdr_len.checked_add(off)?;
        btf.get(start..start.checked_add(len)?)
    };
    let (types, strs) = (section(type_off, type_len)?, section(str_off, str_len)?);
    let name_is = |off: usize| -> bool {
        strs.get(off..).and_then(|s| s.split(|&b| b == 0).next()).is_some_and(|n| n == name.as_bytes())
    };
    let (mut at, mut id) = (0usize, 1u32);
    while at < types.len() {
        let name_off = u32_at(types, at)? as usize;
        let info = u32_at(types, at + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let extra = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            _ => return None,
        };
        if kind == KIND_FUNC && name_is(name_off) {
            return Some(id);
        }
        at = at.checked_add(12 + extra)?;
        id = id.checked_add(1)?;
    }
    None
}

/// The kernel's BTF id of `bpf_xdp_metadata_rx_vlan_tag`, if it has one: read from its
/// BTF (some 5 MB) once, not at every port's attach.
fn vlan_tag_kfunc() -> Option<u32> {
    static ID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
        btf_func_id(&btf, "bpf_xdp_metadata_rx_vlan_tag")
    })
}

/// `bpf(2)` with an attribute block of 18 words (every command used here fits; the rest is
/// zero, as the kernel requires).
fn bpf(cmd: libc::c_long, attr: &mut [u64; 18], what: &str) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-padded `union bpf_attr` image of the size passed; the
    // pointers it holds (set by callers) point at live buffers for the whole call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<[u64; 18]>()) };
    check(ret, what)
}

/// Writes `v` at byte offset `at` of a `bpf_attr` image.
fn put_u32(attr: &mut [u64; 18], at: usize, v: u32) {
    let w = &mut attr[at / 8];
    let shift = (at % 8) * 8;
    *w = (*w & !(0xffff_ffff << shift)) | (u64::from(v) << shift);
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a fresh descriptor bpf(2) returned (checked non-negative by `check`),
    // owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Loads an XDP program, bound to `dev` if given (`BPF_F_XDP_DEV_BOUND_ONLY`: the kfuncs
/// it calls are the device's), with the verifier's log in the error.
fn load(insns: &[Insn], dev: Option<u32>) -> io::Result<OwnedFd> {
    const BPF_F_XDP_DEV_BOUND_ONLY: u32 = 1 << 6;
    // The kernel lets only GPL-compatible programs call kfuncs. These few instructions (the
    // program, not the daemon that assembles it) are ours to offer under MIT or GPL-2.0, as
    // Cilium and Aya offer theirs.
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 16384];
    let mut attr = [0u64; 18];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, insns.len() as u32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    attr[4] = log.as_mut_ptr() as u64;
    if let Some(ifindex) = dev {
        put_u32(&mut attr, 44, BPF_F_XDP_DEV_BOUND_ONLY); // prog_flags
        put_u32(&mut attr, 64, ifindex); // prog_ifindex
    }
    put_u32(&mut attr, 68, BPF_XDP); // expected_attach_type
    match bpf(BPF_PROG_LOAD, &mut attr, "bpf(BPF_PROG_LOAD, XDP)") {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            let last: Vec<&str> = verifier.trim().lines().rev().take(3).collect();
            Err(io::Error::new(e.kind(), format!("{e} (verifier: {})", last.join(" / "))))
        }
    }
}

/// Attaches `prog` to `ifindex` through a BPF link (in the driver where it has XDP, else on
/// the `skb`).
fn link(prog: &OwnedFd, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 18];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    Ok(owned(bpf(BPF_LINK_CREATE, &mut attr, "bpf(BPF_LINK_CREATE, XDP)")?))
}

/// The XDP program attached to an interface, with its XSKMAP. Dropping it detaches the
/// program (the link's descriptor is the only reference the kernel holds).
#[derive(Debug)]
pub struct XdpProgram {
    link: OwnedFd,
    _prog: OwnedFd,
    map: OwnedFd,
    /// Why the program does not ask for out-of-band VLAN tags, when it does not.
    vlan_blind: Option<String>,
}

impl XdpProgram {
    /// Loads the program for frames of at most `max_len` bytes and attaches it to `ifindex`
    /// (in the driver where it has XDP, else on the `skb`).
    pub fn attach(ifindex: u32, max_len: u16) -> io::Result<XdpProgram> {
        let mut attr = [0u64; 18];
        put_u32(&mut attr, 0, BPF_MAP_TYPE_XSKMAP);
        put_u32(&mut attr, 4, 4); // key: the queue
        put_u32(&mut attr, 8, 4); // value: the socket
        put_u32(&mut attr, 12, MAP_QUEUES);
        let map = owned(bpf(BPF_MAP_CREATE, &mut attr, "bpf(BPF_MAP_CREATE, XSKMAP)")?);

        // Bound to the device and asking it for out-of-band VLAN tags where the kernel can;
        // else the plain program, tags out of band unseen.
        let mut why_not = None;
        if let Some(kfunc) = vlan_tag_kfunc() {
            let insns = program(map.as_raw_fd(), max_len, Some(kfunc));
            match load(&insns, Some(ifindex)).and_then(|prog| Ok((link(&prog, ifindex)?, prog))) {
                Ok((link, prog)) => return Ok(XdpProgram { link, _prog: prog, map, vlan_blind: None }),
                Err(e) => why_not = Some(e.to_string()),
            }
        }
        let why_not = why_not.unwrap_or_else(|| "the kernel has no bpf_xdp_metadata_rx_vlan_tag".to_owned());
        let prog = load(&program(map.as_raw_fd(), max_len, None), None)?;
        let link = link(&prog, ifindex)?;
        Ok(XdpProgram { link, _prog: prog, map, vlan_blind: Some(why_not) })
    }

    /// Why the program cannot see VLAN tags the kernel keeps out of band, if it cannot.
    pub fn vlan_blind(&self) -> Option<&str> {
        self.vlan_blind.as_deref()
    }

    /// Sends the frames of receive queue `queue` to `xsk`.
    pub fn serve(&self, queue: u32, xsk: BorrowedFd<'_>) -> io::Result<()> {
        let key = queue;
        let value = xsk.as_raw_fd() as u32;
        let mut attr = [0u64; 18];
        put_u32(&mut attr, 0, self.map.as_raw_fd() as u32);
        attr[1] = &key as *const u32 as u64;
        attr[2] = &value as *const u32 as u64;
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr, "bpf(BPF_MAP_UPDATE_ELEM, XSKMAP)").map(drop)
    }

    pub fn link_fd(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }
}

/// The UMEM's layout for an interface MTU: chunks of `chunk` bytes, the first `rx` of them
/// for receiving (all handed to the kernel through the fill ring), the next `tx` for
/// sending. Ring sizes equal the chunk counts, so a ring never holds more than its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub chunk: usize,
    pub rx: usize,
    pub tx: usize,
}

impl Geometry {
    /// 2 KiB chunks up to a 1500-byte MTU and a little over, a page past that; `None` when a
    /// frame of the MTU does not fit a page after the kernel's headroom (AF_XDP frames span
    /// one chunk; larger ones would need multi-buffer).
    pub fn for_mtu(mtu: u32) -> Option<Geometry> {
        let frame = mtu as usize + 18; // Ethernet header and one VLAN tag
        let chunk = [2048, 4096].into_iter().find(|c| frame + XDP_PACKET_HEADROOM <= *c)?;
        // 1 MiB of receive chunks and 512 KiB of transmit ones at 2 KiB, as the packet rings.
        let (rx, tx) = if chunk == 2048 { (512, 256) } else { (256, 128) };
        Some(Geometry { chunk, rx, tx })
    }

    /// The longest frame a chunk takes (what the program redirects; longer ones pass).
    pub fn max_frame(&self) -> usize {
        self.chunk - XDP_PACKET_HEADROOM
    }

    fn umem_len(&self) -> usize {
        (self.rx + self.tx) * self.chunk
    }
}

/// Why a descriptor the kernel wrote was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadDesc {
    /// Outside the UMEM, or not inside one chunk.
    OutOfBounds,
    /// Not a receive (or, for a completion, a transmit) chunk.
    WrongChunk,
    /// A chunk the kernel does not hold (a second report of one chunk).
    NotHeld,
    /// Shorter than an Ethernet header.
    Short,
}

/// Which chunks the kernel holds: the bookkeeping that keeps a chunk from being handed out
/// twice whatever the rings say. Pure, so it is unit-tested and fuzzed on its own.
#[derive(Debug, Clone)]
pub struct Umem {
    geo: Geometry,
    /// Per chunk: the kernel has it (in the fill ring, or sent and not completed).
    held: Vec<bool>,
    /// Transmit chunks free for the next frame.
    free_tx: Vec<u32>,
}

impl Umem {
    /// All receive chunks with the kernel (the caller fills the fill ring with them), all
    /// transmit chunks free.
    pub fn new(geo: Geometry) -> Umem {
        let mut held = vec![false; geo.rx + geo.tx];
        held[..geo.rx].iter_mut().for_each(|h| *h = true);
        let free_tx = (geo.rx..geo.rx + geo.tx).rev().map(|c| c as u32).collect();
        Umem { geo, held, free_tx }
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Checks a received descriptor: `(offset in the UMEM, length, chunk)` of a frame inside
    /// one receive chunk the kernel held, which is now ours.
    pub fn check_rx(&mut self, addr: u64, len: u32) -> Result<(usize, usize, usize), BadDesc> {
        let chunk_size = self.geo.chunk as u64;
        let chunk = addr / chunk_size;
        if chunk >= (self.geo.rx + self.geo.tx) as u64 || addr % chunk_size + u64::from(len) > chunk_size {
            return Err(BadDesc::OutOfBounds);
        }
        let chunk = chunk as usize;
        if chunk >= self.geo.rx {
            return Err(BadDesc::WrongChunk);
        }
        if !self.held[chunk] {
            return Err(BadDesc::NotHeld);
        }
        self.held[chunk] = false;
        if (len as usize) < ETH_HLEN {
            return Err(BadDesc::Short);
        }
        Ok((addr as usize, len as usize, chunk))
    }

    /// Hands receive chunk `chunk` back to the kernel (its address for the fill ring).
    pub fn refill(&mut self, chunk: usize) -> u64 {
        self.held[chunk] = true;
        (chunk * self.geo.chunk) as u64
    }

    /// A free transmit chunk, now with the kernel (its address), if any.
    pub fn take_tx(&mut self) -> Option<u64> {
        let c = self.free_tx.pop()? as usize;
        self.held[c] = true;
        Some((c * self.geo.chunk) as u64)
    }

    /// Puts back a chunk `take_tx` gave that was not sent after all.
    pub fn untake_tx(&mut self, addr: u64) {
        let c = (addr / self.geo.chunk as u64) as usize;
        self.held[c] = false;
        self.free_tx.push(c as u32);
    }

    /// Checks a completed transmit address and frees its chunk.
    pub fn check_completion(&mut self, addr: u64) -> Result<(), BadDesc> {
        let chunk_size = self.geo.chunk as u64;
        let chunk = addr / chunk_size;
        if addr % chunk_size != 0 || chunk >= (self.geo.rx + self.geo.tx) as u64 {
            return Err(BadDesc::OutOfBounds);
        }
        let chunk = chunk as usize;
        if chunk < self.geo.rx {
            return Err(BadDesc::WrongChunk);
        }
        if !self.held[chunk] {
            return Err(BadDesc::NotHeld);
        }
        self.held[chunk] = false;
        self.free_tx.push(chunk as u32);
        Ok(())
    }

    /// Transmit chunks free now.
    pub fn tx_free(&self) -> usize {
        self.free_tx.len()
    }
}

/// One ring of the socket: a producer and a consumer index the kernel and we share, and
/// `size` entries of `E`. Indexes run freely and are masked on use, so an entry pointer is
/// always inside the ring whatever the other side writes.
#[derive(Debug)]
struct Ring<E> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    entries: NonNull<E>,
    size: u32,
    /// Our side's index (consumer of rx/completion, producer of fill/tx), ahead of what we
    /// published until `publish`.
    local: u32,
    /// The other side's index, as last read.
    seen: u32,
    /// The kernel's index was out of range.
    corrupt: bool,
}

impl<E: Copy> Ring<E> {
    /// A ring over `map` with the kernel's offsets; `None` if they do not fit `map_len`.
    fn over(map: NonNull<u8>, map_len: usize, off: &RingOffset, size: u32) -> Option<Ring<E>> {
        let fits =
            |o: u64, n: usize| usize::try_from(o).ok().and_then(|o| o.checked_add(n)).is_some_and(|e| e <= map_len);
        let aligned = |o: u64, a: usize| (o as usize) % a == 0;
        let entries_len = size as usize * size_of::<E>();
        let inside = fits(off.producer, 4) && fits(off.consumer, 4) && fits(off.desc, entries_len);
        let aligned =
            aligned(off.producer, 4) && aligned(off.consumer, 4) && aligned(off.desc, std::mem::align_of::<E>());
        if !(inside && aligned) {
            return None;
        }
        // SAFETY: every offset was checked to lie, with its object, inside the mapping,
        // aligned for it.
        let at = |o: u64| unsafe { NonNull::new_unchecked(map.as_ptr().add(o as usize)) };
        Some(Ring {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            entries: at(off.desc).cast(),
            size,
            local: 0,
            seen: 0,
            corrupt: false,
        })
    }

    fn index(&self, which: NonNull<AtomicU32>) -> &AtomicU32 {
        // SAFETY: `which` is the producer or consumer word of this ring's mapping, which
        // lives as long as `self`; only ever accessed atomically on our side.
        unsafe { which.as_ref() }
    }

    fn entry(&self, i: u32) -> *mut E {
        // SAFETY: `i % size < size`, and the ring holds `size` entries (checked in `over`).
        unsafe { self.entries.as_ptr().add((i % self.size) as usize) }
    }

    // Consumer side (rx, completion).

    /// Entries the kernel has produced that we have not taken. A producer more than a ring
    /// ahead (which no kernel writes) marks the ring corrupt, and nothing is ready again.
    fn ready(&mut self) -> u32 {
        if self.corrupt {
            return 0;
        }
        if self.seen.wrapping_sub(self.local) == 0 {
            self.seen = self.index(self.producer).load(Ordering::Acquire);
        }
        let n = self.seen.wrapping_sub(self.local);
        if n > self.size {
            self.corrupt = true;
            return 0;
        }
        n
    }

    fn take(&mut self) -> E {
        // SAFETY: `entry` is inside the ring; the kernel produced it (counted by `ready`).
        // Read once, as a copy, volatile: the kernel may write the ring at any time.
        let e = unsafe { self.entry(self.local).read_volatile() };
        self.local = self.local.wrapping_add(1);
        e
    }

    fn release(&self) {
        self.index(self.consumer).store(self.local, Ordering::Release);
    }

    // Producer side (fill, tx).

    /// Entries we may still produce. A consumer past our producer (which no kernel writes)
    /// marks the ring corrupt, with no room again.
    fn room(&mut self) -> u32 {
        if self.corrupt {
            return 0;
        }
        if self.local.wrapping_sub(self.seen) >= self.size {
            self.seen = self.index(self.consumer).load(Ordering::Acquire);
        }
        let used = self.local.wrapping_sub(self.seen);
        if used > self.size {
            self.corrupt = true;
            return 0;
        }
        self.size - used
    }

    fn put(&mut self, e: E) {
        // SAFETY: `entry` is inside the ring, and the slot is free (the caller checked
        // `room`).
        unsafe { self.entry(self.local).write_volatile(e) };
        self.local = self.local.wrapping_add(1);
    }

    fn publish(&self) {
        self.index(self.producer).store(self.local, Ordering::Release);
    }

    /// Entries produced that the kernel has not consumed.
    fn in_flight(&mut self) -> u32 {
        self.seen = self.index(self.consumer).load(Ordering::Acquire);
        let n = self.local.wrapping_sub(self.seen);
        if n > self.size {
            self.corrupt = true;
            return 0;
        }
        n
    }
}

/// `struct xdp_desc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct xdp_umem_reg` as every kernel since 4.18 takes it.
#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// A received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxFrame {
    /// `len` bytes were copied out.
    Frame { len: usize },
    /// The descriptor was refused (see [`BadDesc`]); its length as the kernel gave it.
    Bad { len: usize, why: BadDesc },
}

/// An AF_XDP socket with its UMEM and four rings, bound to one queue of one interface.
#[derive(Debug)]
pub struct Xsk {
    rx: Ring<Desc>,
    tx: Ring<Desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    umem: Umem,
    /// Receive chunks waiting for room in the fill ring.
    unfilled: Vec<usize>,
    /// Fields below are dropped after the rings that point into them.
    area: Mapping,
    _maps: Vec<Mapping>,
    fd: Option<OwnedFd>,
    zero_copy: bool,
}

// SAFETY: the mappings are memory shared only with the kernel; `Xsk` is moved between
// threads whole, never shared (no `Sync`).
unsafe impl Send for Xsk {}

impl Xsk {
    /// Opens a socket on queue `queue` of `ifindex` with a UMEM of `geo`: zero-copy if
    /// `zero_copy` (the driver must offer it), else copy mode.
    pub fn open(ifindex: u32, queue: u32, geo: Geometry, zero_copy: bool) -> io::Result<Xsk> {
        // SAFETY: plain socket(2); checked and owned at once.
        let raw = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(raw, "socket(AF_XDP)")?;
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let area = Mapping::new(geo.umem_len(), None, "the UMEM")?;
        let reg =
            UmemReg { addr: area.ptr.as_ptr() as u64, len: area.len as u64, chunk_size: geo.chunk as u32, headroom: 0 };
        setsockopt(fd.as_fd(), SOL_XDP, XDP_UMEM_REG, &reg, "XDP_UMEM_REG")?;
        setsockopt(fd.as_fd(), SOL_XDP, XDP_UMEM_FILL_RING, &(geo.rx as u32), "XDP_UMEM_FILL_RING")?;
        setsockopt(fd.as_fd(), SOL_XDP, XDP_UMEM_COMPLETION_RING, &(geo.tx as u32), "XDP_UMEM_COMPLETION_RING")?;
        setsockopt(fd.as_fd(), SOL_XDP, XDP_RX_RING, &(geo.rx as u32), "XDP_RX_RING")?;
        setsockopt(fd.as_fd(), SOL_XDP, XDP_TX_RING, &(geo.tx as u32), "XDP_TX_RING")?;
        let mut off = MmapOffsets::default();
        let mut len = size_of::<MmapOffsets>() as libc::socklen_t;
        // SAFETY: pointers to a live `struct xdp_mmap_offsets` and its length; checked.
        let ret = unsafe {
            libc::getsockopt(fd.as_raw_fd(), SOL_XDP, XDP_MMAP_OFFSETS, (&mut off as *mut MmapOffsets).cast(), &mut len)
        };
        check(ret, "XDP_MMAP_OFFSETS")?;
        if len as usize != size_of::<MmapOffsets>() {
            return Err(io::Error::other("XDP_MMAP_OFFSETS: a layout this build does not know"));
        }
        let ring_len = |o: &RingOffset, n: usize, e: usize| o.desc as usize + n * e;
        let rx_map =
            Mapping::new(ring_len(&off.rx, geo.rx, 16), Some((fd.as_fd(), XDP_PGOFF_RX_RING)), "the XSK rx ring")?;
        let tx_map =
            Mapping::new(ring_len(&off.tx, geo.tx, 16), Some((fd.as_fd(), XDP_PGOFF_TX_RING)), "the XSK tx ring")?;
        let fill_map =
            Mapping::new(ring_len(&off.fr, geo.rx, 8), Some((fd.as_fd(), XDP_UMEM_PGOFF_FILL_RING)), "the fill ring")?;
        let comp_map = Mapping::new(
            ring_len(&off.cr, geo.tx, 8),
            Some((fd.as_fd(), XDP_UMEM_PGOFF_COMPLETION_RING)),
            "the completion ring",
        )?;
        let bad = || io::Error::other("XDP_MMAP_OFFSETS: ring offsets outside their mapping");
        let mut xsk = Xsk {
            rx: Ring::over(rx_map.ptr, rx_map.len, &off.rx, geo.rx as u32).ok_or_else(bad)?,
            tx: Ring::over(tx_map.ptr, tx_map.len, &off.tx, geo.tx as u32).ok_or_else(bad)?,
            fill: Ring::over(fill_map.ptr, fill_map.len, &off.fr, geo.rx as u32).ok_or_else(bad)?,
            comp: Ring::over(comp_map.ptr, comp_map.len, &off.cr, geo.tx as u32).ok_or_else(bad)?,
            umem: Umem::new(geo),
            unfilled: Vec::new(),
            area,
            _maps: vec![rx_map, tx_map, fill_map, comp_map],
            fd: Some(fd),
            zero_copy,
        };
        // Every receive chunk to the kernel before bind, so frames land from the first one.
        xsk.fill_all();
        let addr = SockaddrXdp {
            family: AF_XDP as u16,
            flags: if zero_copy { XDP_ZEROCOPY } else { XDP_COPY },
            ifindex,
            queue_id: queue,
            shared_umem_fd: 0,
        };
        let sock = xsk.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a live `struct sockaddr_xdp` and its size; checked.
        let ret = unsafe {
            libc::bind(sock, (&addr as *const SockaddrXdp).cast(), size_of::<SockaddrXdp>() as libc::socklen_t)
        };
        check(ret, if zero_copy { "bind(AF_XDP, zero-copy)" } else { "bind(AF_XDP, copy)" })?;
        Ok(xsk)
    }

    /// An unbound `Xsk` over anonymous memory, for tests that play the kernel's part: each
    /// ring is its producer word, its consumer word, then its entries.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn anonymous(geo: Geometry) -> Xsk {
        let ring = |n: usize, e: usize| -> (Mapping, RingOffset) {
            let off = RingOffset { producer: 0, consumer: 64, desc: 128, flags: 192 };
            (Mapping::new(128 + n * e, None, "a test ring").expect("mmap"), off)
        };
        let (rx_map, rx_off) = ring(geo.rx, 16);
        let (tx_map, tx_off) = ring(geo.tx, 16);
        let (fill_map, fill_off) = ring(geo.rx, 8);
        let (comp_map, comp_off) = ring(geo.tx, 8);
        let mut xsk = Xsk {
            rx: Ring::over(rx_map.ptr, rx_map.len, &rx_off, geo.rx as u32).expect("rx ring"),
            tx: Ring::over(tx_map.ptr, tx_map.len, &tx_off, geo.tx as u32).expect("tx ring"),
            fill: Ring::over(fill_map.ptr, fill_map.len, &fill_off, geo.rx as u32).expect("fill ring"),
            comp: Ring::over(comp_map.ptr, comp_map.len, &comp_off, geo.tx as u32).expect("comp ring"),
            umem: Umem::new(geo),
            unfilled: Vec::new(),
            area: Mapping::new(geo.umem_len(), None, "a test UMEM").expect("mmap"),
            _maps: vec![rx_map, tx_map, fill_map, comp_map],
            fd: None,
            zero_copy: false,
        };
        xsk.fill_all();
        xsk
    }

    fn fill_all(&mut self) {
        for c in 0..self.umem.geo.rx {
            self.fill.put((c * self.umem.geo.chunk) as u64);
        }
        self.fill.publish();
    }

    /// Whether the kernel left an index out of range in a ring: the socket is then of no
    /// further use (the port goes down and is opened again).
    pub fn broken(&self) -> bool {
        self.rx.corrupt || self.tx.corrupt || self.fill.corrupt || self.comp.corrupt
    }

    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn geometry(&self) -> Geometry {
        self.umem.geo
    }

    /// Takes the next received frame, copying it into `buf`, and hands its chunk back to
    /// the kernel (published with [`Xsk::rx_commit`]). `None`: nothing more is ready.
    pub fn rx_next(&mut self, buf: &mut [u8]) -> Option<RxFrame> {
        if self.rx.ready() == 0 {
            return None;
        }
        let d = self.rx.take();
        Some(match self.umem.check_rx(d.addr, d.len) {
            Ok((at, len, chunk)) => {
                let out = if len <= buf.len() {
                    // SAFETY: `at + len` lies inside one chunk of the UMEM (checked by
                    // `check_rx`), which the kernel handed us; `buf` holds `len` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(self.area.ptr.as_ptr().add(at), buf.as_mut_ptr(), len) };
                    RxFrame::Frame { len }
                } else {
                    RxFrame::Bad { len, why: BadDesc::OutOfBounds }
                };
                self.refill(chunk);
                out
            }
            Err(why) => {
                // A chunk that was the kernel's (a short frame) goes back; any other
                // descriptor names nothing we can give back.
                if why == BadDesc::Short {
                    self.refill(d.addr as usize / self.umem.geo.chunk);
                }
                RxFrame::Bad { len: d.len as usize, why }
            }
        })
    }

    /// Gives receive chunk `chunk` back through the fill ring. The ring holds every receive
    /// chunk, but the kernel publishes a received frame before it publishes taking the
    /// chunk's fill entry, so the ring may look full for a moment: the chunk then waits in
    /// `unfilled` for the next commit.
    fn refill(&mut self, chunk: usize) {
        if self.unfilled.is_empty() && self.fill.room() > 0 {
            let addr = self.umem.refill(chunk);
            self.fill.put(addr);
        } else if self.unfilled.len() < self.umem.geo.rx {
            self.unfilled.push(chunk);
        }
    }

    /// Publishes what `rx_next` took and gave back.
    pub fn rx_commit(&mut self) {
        self.rx.release();
        while !self.unfilled.is_empty() && self.fill.room() > 0 {
            if let Some(chunk) = self.unfilled.pop() {
                let addr = self.umem.refill(chunk);
                self.fill.put(addr);
            }
        }
        self.fill.publish();
    }

    /// Whether frames are waiting.
    pub fn rx_ready(&mut self) -> bool {
        self.rx.ready() > 0
    }

    /// The longest frame `tx_push` takes.
    pub fn tx_capacity(&self) -> usize {
        self.umem.geo.chunk
    }

    /// Writes one frame (its parts, no virtio-net header) into a free transmit chunk and the
    /// transmit ring. `false`: no free chunk or ring entry (the kernel has not completed
    /// enough yet). The caller checks that the frame fits (`tx_capacity`).
    pub fn tx_push(&mut self, parts: &[IoPart<'_>]) -> bool {
        self.reclaim();
        if self.tx.room() == 0 {
            return false;
        }
        let Some(addr) = self.umem.take_tx() else { return false };
        let chunk = self.umem.geo.chunk;
        let mut at = 0;
        for p in parts {
            let n = p.len().min(chunk - at);
            // SAFETY: `addr` is a transmit chunk start and `at + n <= chunk`, so the bytes
            // lie in the UMEM, in a chunk that is ours until completed. `p` is a borrowed
            // slice or guest memory valid for the call (`IoPart`).
            unsafe { p.copy_to(self.area.ptr.as_ptr().add(addr as usize + at), n) };
            at += n;
        }
        self.tx.put(Desc { addr, len: at as u32, options: 0 });
        true
    }

    /// Publishes the transmit ring and kicks the kernel (`sendto`, which in copy mode sends
    /// at most 32 frames a call: it is repeated while the kernel takes more), then takes
    /// back completed chunks. `Ok(true)`: the kernel took every frame.
    pub fn tx_flush(&mut self) -> io::Result<bool> {
        self.tx.publish();
        let Some(fd) = self.fd.as_ref() else { return Ok(self.tx.in_flight() == 0 && !self.broken()) };
        let mut before = u32::MAX;
        loop {
            let pending = self.tx.in_flight();
            if pending == 0 || pending == before {
                break;
            }
            before = pending;
            // SAFETY: sendto(2) with no buffer: the kernel reads the mapped ring.
            let ret =
                unsafe { libc::sendto(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
            if ret < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // More than one call's budget, or the device is busy: go round.
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => {}
                    _ => return Err(io::Error::new(e.kind(), format!("sendto(AF_XDP): {e}"))),
                }
            }
        }
        self.reclaim();
        let drained = self.tx.in_flight() == 0;
        if self.broken() {
            return Err(io::Error::other("AF_XDP: the kernel left a ring index out of range"));
        }
        Ok(drained)
    }

    /// Takes back the chunks of completed transmissions.
    fn reclaim(&mut self) -> usize {
        let n = self.comp.ready();
        let mut bad = 0;
        for _ in 0..n {
            let addr = self.comp.take();
            if self.umem.check_completion(addr).is_err() {
                bad += 1;
            }
        }
        if n > 0 {
            self.comp.release();
        }
        bad
    }

    /// The socket's pending error (`SO_ERROR`), like a packet socket's.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.fd.as_ref().map_or(Ok(None), |fd| super::take_error(fd.as_fd()))
    }

    /// Test access to the kernel's side of the rings.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn kernel(&mut self) -> FakeKernel<'_> {
        FakeKernel { xsk: self }
    }
}

impl Xsk {
    /// The socket (none for an [`Xsk::anonymous`]).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }
}

/// The kernel's side of an [`Xsk::anonymous`]'s rings, played by a test or a fuzz target:
/// it may write anything a hostile kernel could.
#[cfg(any(test, feature = "fuzzing"))]
pub struct FakeKernel<'a> {
    xsk: &'a mut Xsk,
}

#[cfg(any(test, feature = "fuzzing"))]
impl FakeKernel<'_> {
    /// Produces a receive descriptor (and writes `bytes` at `addr` when that lies in the
    /// UMEM).
    pub fn receive(&mut self, addr: u64, len: u32, bytes: &[u8]) {
        let x = &mut *self.xsk;
        let area = x.area.len;
        if let Some(end) = (addr as usize).checked_add(bytes.len()).filter(|&e| e <= area) {
            // SAFETY: `addr..end` lies in the UMEM (checked).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    x.area.ptr.as_ptr().add(addr as usize),
                    end - addr as usize,
                )
            };
        }
        let p = x.rx.index(x.rx.producer).load(Ordering::Relaxed);
        // SAFETY: `entry` is inside the ring.
        unsafe { x.rx.entry(p).write_volatile(Desc { addr, len, options: 0 }) };
        x.rx.index(x.rx.producer).store(p.wrapping_add(1), Ordering::Release);
    }

    /// Sets the receive ring's producer index to anything.
    pub fn set_rx_producer(&mut self, v: u32) {
        self.xsk.rx.index(self.xsk.rx.producer).store(v, Ordering::Release);
    }

    /// Takes every fill-ring address we published.
    pub fn take_fills(&mut self) -> Vec<u64> {
        let r = &mut self.xsk.fill;
        let (p, mut c) = (r.index(r.producer).load(Ordering::Acquire), r.index(r.consumer).load(Ordering::Relaxed));
        let mut out = Vec::new();
        while c != p && out.len() < r.size as usize {
            // SAFETY: `entry` is inside the ring.
            out.push(unsafe { r.entry(c).read_volatile() });
            c = c.wrapping_add(1);
        }
        r.index(r.consumer).store(c, Ordering::Release);
        out
    }

    /// Takes every transmit descriptor we published, with the frame's bytes.
    pub fn take_sent(&mut self) -> Vec<(Desc, Vec<u8>)> {
        let x = &mut *self.xsk;
        let (p, mut c) =
            (x.tx.index(x.tx.producer).load(Ordering::Acquire), x.tx.index(x.tx.consumer).load(Ordering::Relaxed));
        let mut out = Vec::new();
        while c != p && out.len() < x.tx.size as usize {
            // SAFETY: `entry` is inside the ring.
            let d = unsafe { x.tx.entry(c).read_volatile() };
            let bytes = (d.addr as usize)
                .checked_add(d.len as usize)
                .filter(|&e| e <= x.area.len)
                .map(|_| {
                    // SAFETY: the range lies in the UMEM (checked).
                    unsafe { std::slice::from_raw_parts(x.area.ptr.as_ptr().add(d.addr as usize), d.len as usize) }
                        .to_vec()
                })
                .unwrap_or_default();
            out.push((d, bytes));
            c = c.wrapping_add(1);
        }
        x.tx.index(x.tx.consumer).store(c, Ordering::Release);
        out
    }

    /// Produces a completion for `addr`.
    pub fn complete(&mut self, addr: u64) {
        let r = &mut self.xsk.comp;
        let p = r.index(r.producer).load(Ordering::Relaxed);
        // SAFETY: `entry` is inside the ring.
        unsafe { r.entry(p).write_volatile(addr) };
        r.index(r.producer).store(p.wrapping_add(1), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry::for_mtu(1500).unwrap()
    }

    #[test]
    fn geometry_follows_the_mtu() {
        assert_eq!(geo(), Geometry { chunk: 2048, rx: 512, tx: 256 });
        assert_eq!(geo().max_frame(), 1792);
        assert_eq!(Geometry::for_mtu(3000).unwrap().chunk, 4096);
        assert_eq!(Geometry::for_mtu(9000), None);
        // The UMEM costs what the packet rings do.
        assert_eq!(geo().umem_len(), 3 << 19);
    }

    #[test]
    fn program_is_what_the_listing_says() {
        let p = program(7, 1792, None);
        assert_eq!(p.len(), 13);
        // The jump over the redirect lands on `r0 = XDP_PASS`.
        assert_eq!(p[4].code, 0xbd);
        assert_eq!(4 + 1 + p[4].off as usize, 11);
        assert_eq!((p[11].code, p[11].imm), (0xb7, XDP_PASS));
        assert_eq!((p[6].code, p[6].regs, p[6].imm), (0x18, 1 | (BPF_PSEUDO_MAP_FD << 4), 7));
        assert_eq!(p[3].imm, 1793);
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(size_of::<Desc>(), 16);
        assert_eq!(size_of::<MmapOffsets>(), 128);
        assert_eq!(size_of::<SockaddrXdp>(), 16);
    }

    /// A BTF blob: header, then types (an INT, a FUNC_PROTO with one parameter, FUNCs named
    /// by `names`), then strings.
    fn btf(names: &[&str]) -> Vec<u8> {
        let mut strs = vec![0u8];
        let mut types: Vec<u8> = Vec::new();
        let mut ty = |name_off: u32, info: u32, size: u32, extra: &[u8]| {
            for w in [name_off, info, size] {
                types.extend(w.to_ne_bytes());
            }
            types.extend(extra);
        };
        ty(0, 1 << 24, 4, &32u32.to_ne_bytes()); // id 1: INT
        ty(0, (13 << 24) | 1, 1, &[0; 8]); // id 2: FUNC_PROTO, one parameter
        for n in names {
            let off = strs.len() as u32;
            strs.extend(n.as_bytes());
            strs.push(0);
            ty(off, 12 << 24, 2, &[]);
        }
        let mut b = Vec::new();
        b.extend(0xeb9fu16.to_ne_bytes());
        b.extend([1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strs.len() as u32] {
            b.extend(w.to_ne_bytes());
        }
        b.extend(types);
        b.extend(strs);
        b
    }

    #[test]
    fn btf_lookup_finds_a_function_by_name_and_refuses_what_it_does_not_know() {
        let b = btf(&["bpf_other", "bpf_xdp_metadata_rx_vlan_tag"]);
        assert_eq!(btf_func_id(&b, "bpf_xdp_metadata_rx_vlan_tag"), Some(4));
        assert_eq!(btf_func_id(&b, "bpf_other"), Some(3));
        assert_eq!(btf_func_id(&b, "bpf_xdp"), None, "a prefix is not the name");
        for cut in [0, 3, 23, 30, b.len() - 1] {
            assert_eq!(btf_func_id(&b[..cut], "bpf_other"), None, "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[24 + 7] = 31; // an unknown kind
        assert_eq!(btf_func_id(&bad, "bpf_other"), None);
        let mut far = b.clone();
        far[8..12].copy_from_slice(&u32::MAX.to_ne_bytes()); // type_off past the end
        assert_eq!(btf_func_id(&far, "bpf_other"), None);
    }

    #[test]
    fn vlan_aware_program_jumps_land_where_the_listing_says() {
        let p = program(7, 1792, Some(12345));
        assert_eq!(p.len(), 22);
        assert_eq!(4 + 1 + p[4].off as usize, 20);
        assert_eq!(13 + 1 + p[13].off as usize, 20);
        assert_eq!((p[12].code, p[12].regs >> 4, p[12].imm), (0x85, 2, 12345));
        assert_eq!((p[15].code, p[15].imm), (0x18, 7));
        assert_eq!((p[20].code, p[20].imm), (0xb7, XDP_PASS));
    }

    #[test]
    fn received_frames_are_copied_and_their_chunks_go_back() {
        let mut x = Xsk::anonymous(geo());
        assert_eq!(x.kernel().take_fills().len(), 512);
        let frame: Vec<u8> = (0..60u8).collect();
        x.kernel().receive(3 * 2048 + 256, 60, &frame);
        x.kernel().receive(5 * 2048 + 256, 60, &frame);
        let mut buf = [0u8; 2048];
        assert_eq!(x.rx_next(&mut buf), Some(RxFrame::Frame { len: 60 }));
        assert_eq!(&buf[..60], &frame[..]);
        assert_eq!(x.rx_next(&mut buf), Some(RxFrame::Frame { len: 60 }));
        assert_eq!(x.rx_next(&mut buf), None);
        x.rx_commit();
        assert_eq!(x.kernel().take_fills(), vec![3 * 2048, 5 * 2048]);
    }

    #[test]
    fn hostile_descriptors_are_refused_and_no_chunk_is_given_out_twice() {
        let mut x = Xsk::anonymous(geo());
        x.kernel().take_fills();
        let mut buf = [0u8; 2048];
        let cases: [(u64, u32, BadDesc); 6] = [
            (u64::MAX, 60, BadDesc::OutOfBounds),
            (2048 - 10, 60, BadDesc::OutOfBounds), // across two chunks
            (512 * 2048, 60, BadDesc::WrongChunk), // a transmit chunk
            (767 * 2048 + 2047, 1, BadDesc::WrongChunk),
            (7 * 2048, 4, BadDesc::Short),
            (8 * 2048 + 256, 2000, BadDesc::OutOfBounds), // past its chunk's end
        ];
        for (addr, len, _) in cases {
            x.kernel().receive(addr, len, &[]);
        }
        for (_, len, why) in cases {
            assert_eq!(x.rx_next(&mut buf), Some(RxFrame::Bad { len: len as usize, why }));
        }
        assert_eq!(x.rx_next(&mut buf), None);
        x.rx_commit();
        // Only the short frame's chunk, which the kernel held, went back.
        assert_eq!(x.kernel().take_fills(), vec![7 * 2048]);
        // A producer more than a ring ahead: nothing is read, and the socket is broken.
        assert!(!x.broken());
        x.kernel().set_rx_producer(u32::MAX);
        assert_eq!(x.rx_next(&mut buf), None);
        assert!(x.broken());
    }

    #[test]
    fn transmit_uses_free_chunks_and_takes_back_only_real_completions() {
        let mut x = Xsk::anonymous(geo());
        let f: Vec<u8> = vec![0xab; 100];
        for _ in 0..256 {
            assert!(x.tx_push(&[IoPart::Bytes(&f)]));
        }
        assert!(!x.tx_push(&[IoPart::Bytes(&f)]), "every chunk is in flight");
        assert!(!x.tx_flush().unwrap());
        let sent = x.kernel().take_sent();
        assert_eq!(sent.len(), 256);
        assert!(sent.iter().all(|(d, b)| d.len == 100 && b == &f && d.addr >= 512 * 2048));
        // Completions: one real, then a receive chunk, an unaligned one, and the same again.
        let a = sent[0].0.addr;
        for addr in [a, 0, a + 1, a] {
            x.kernel().complete(addr);
        }
        assert!(x.tx_push(&[IoPart::Bytes(&f)]));
        assert!(!x.tx_push(&[IoPart::Bytes(&f)]), "only one chunk came back");
        assert_eq!(x.umem.tx_free(), 0);
    }

    #[test]
    fn umem_bookkeeping_never_hands_out_a_chunk_twice() {
        let mut u = Umem::new(geo());
        let (_, _, c) = u.check_rx(2048 * 9 + 256, 64).unwrap();
        assert_eq!(u.check_rx(2048 * 9 + 256, 64), Err(BadDesc::NotHeld));
        assert_eq!(u.refill(c), 2048 * 9);
        let t = u.take_tx().unwrap();
        assert_eq!(u.check_completion(t), Ok(()));
        assert_eq!(u.check_completion(t), Err(BadDesc::NotHeld));
    }
}
