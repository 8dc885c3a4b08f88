//! A minimal virtio-net *driver* speaking vhost-user: the guest side of a port, in process.
//!
//! It owns a memfd that plays the guest's memory, lays out split virtqueues in it, sets the
//! device up through the `vhost` crate's [`Frontend`], and sends and receives frames through
//! the rings like a guest's virtio-net driver would (mergeable receive buffers, EVENT_IDX
//! notification suppression). Tests use it to check the protocol against vmnetd's device;
//! benchmarks use it as a traffic generator and sink that costs as little as possible.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::Memory;
type Slice<'m> = vm_memory::VolatileSlice<'m, vm_memory::bitmap::MS<'m, Memory>>;
use crate::virtio_net::{features, VnetHdr, HDR_LEN};

/// Bytes of one buffer (virtio-net header included), unless [`Config::buf_len`] says more.
pub const BUF_LEN: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vhost-user request failed")]
    Vhost(#[from] vhost::Error),
    #[error("cannot set up the memory")]
    Memory(String),
    #[error("I/O")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone)]
pub struct Config {
    pub queue_size: u16,
    /// Queue pairs to set up.
    pub pairs: u16,
    /// Features to ack (intersected with what the device offers).
    pub features: u64,
    /// Enable the rings (SET_VRING_ENABLE) right after setting them up.
    pub enable: bool,
    /// Bytes of each buffer (one per descriptor, header included).
    pub buf_len: usize,
    /// Back the "guest memory" with 2 MiB huge pages (as QEMU guests of vhost-user switches
    /// usually are), instead of 4 KiB pages.
    pub hugepages: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue_size: 256,
            pairs: 1,
            features: features::VERSION_1
                | features::MRG_RXBUF
                | features::RING_EVENT_IDX
                | features::PROTOCOL_FEATURES
                | features::CSUM
                | features::GUEST_CSUM,
            enable: true,
            buf_len: BUF_LEN,
            hugepages: false,
        }
    }
}

/// One split virtqueue, from the driver's side.
struct Vq {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// First buffer of this queue (one per descriptor).
    bufs: u64,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
    is_rx: bool,
    /// Buffers still to come of the frame [`Driver::drain_rx`] is counting.
    rx_left: u16,
}

/// The avail and used rings of `vq`, each as one slice of guest memory.
fn ring_slices<'m>(mem: &'m Memory, vq: &Vq) -> Option<(Slice<'m>, Slice<'m>)> {
    let n = usize::from(vq.size);
    let avail = mem.get_slice(GuestAddress(vq.avail), 4 + 2 * n).ok()?;
    let used = mem.get_slice(GuestAddress(vq.used), 4 + 8 * n).ok()?;
    Some((avail, used))
}

pub struct Driver {
    frontend: Frontend,
    mem: Memory,
    memfd: File,
    vqs: Vec<Vq>,
    pub acked: u64,
    event_idx: bool,
    pub kicks: u64,
    buf_len: usize,
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Driver {
    /// Connects to a device listening at `path` (its server mode).
    pub fn connect(path: &Path, cfg: &Config) -> Result<Driver> {
        let f = Frontend::connect(path, u64::from(cfg.pairs) * 2 + 1)?;
        Driver::setup(f, cfg)
    }

    /// Uses an accepted connection (the device's client mode: we listened, it connected).
    pub fn from_stream(s: UnixStream, cfg: &Config) -> Result<Driver> {
        Driver::setup(Frontend::from_stream(s, u64::from(cfg.pairs) * 2 + 1), cfg)
    }

    fn setup(mut frontend: Frontend, cfg: &Config) -> Result<Driver> {
        let nq = usize::from(cfg.pairs) * 2;
        let qs = u64::from(cfg.queue_size);
        let ring_bytes = align(16 * qs, 4096) + align(6 + 2 * qs, 4096) + align(6 + 8 * qs, 4096);
        let buf_len = cfg.buf_len.max(64);
        let size = align(nq as u64 * (ring_bytes + qs * buf_len as u64), 2 << 20);
        let mut flags = nix::sys::memfd::MFdFlags::MFD_CLOEXEC;
        if cfg.hugepages {
            flags |= nix::sys::memfd::MFdFlags::MFD_HUGETLB;
        }
        let memfd = nix::sys::memfd::memfd_create("vmnetd-driver", flags).map_err(|e| Error::Memory(e.to_string()))?;
        let memfd = File::from(memfd);
        memfd.set_len(size)?;
        let region = MmapRegion::<()>::from_file(FileOffset::new(memfd.try_clone()?, 0), size as usize)
            .map_err(|e| Error::Memory(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| Error::Memory("region".into()))?;
        let mem = Memory::from_regions(vec![region]).map_err(|e| Error::Memory(e.to_string()))?;
        let host_base = mem.get_host_address(GuestAddress(0)).map_err(|e| Error::Memory(e.to_string()))? as u64;

        frontend.set_owner()?;
        let offered = frontend.get_features()?;
        let acked = offered & cfg.features;
        frontend.set_features(acked)?;
        if acked & features::PROTOCOL_FEATURES != 0 {
            let pf = frontend.get_protocol_features()?;
            frontend.set_protocol_features(
                pf & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::LOG_SHMFD),
            )?;
        }
        frontend.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host_base,
            mmap_offset: 0,
            mmap_handle: memfd.as_raw_fd(),
        }])?;

        let mut vqs = Vec::with_capacity(nq);
        let mut at = 0u64;
        for i in 0..nq {
            let desc = at;
            let avail = desc + align(16 * qs, 4096);
            let used = avail + align(6 + 2 * qs, 4096);
            let bufs = used + align(6 + 8 * qs, 4096);
            at = bufs + qs * buf_len as u64;
            let vq = Vq {
                size: cfg.queue_size,
                desc,
                avail,
                used,
                bufs,
                free: (0..cfg.queue_size).rev().collect(),
                avail_idx: 0,
                last_used: 0,
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                is_rx: i % 2 == 0,
                rx_left: 0,
            };
            frontend.set_vring_num(i, cfg.queue_size)?;
            frontend.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: cfg.queue_size,
                    queue_size: cfg.queue_size,
                    flags: 0,
                    desc_table_addr: host_base + desc,
                    used_ring_addr: host_base + used,
                    avail_ring_addr: host_base + avail,
                    log_addr: None,
                },
            )?;
            frontend.set_vring_base(i, 0)?;
            frontend.set_vring_call(i, &vq.call)?;
            frontend.set_vring_kick(i, &vq.kick)?;
            vqs.push(vq);
        }
        let mut d = Driver {
            frontend,
            mem,
            memfd,
            vqs,
            acked,
            event_idx: acked & features::RING_EVENT_IDX != 0,
            kicks: 0,
            buf_len,
        };
        for i in 0..nq {
            if d.vqs[i].is_rx {
                d.fill_rx(i / 2);
            }
        }
        if cfg.enable && acked & features::PROTOCOL_FEATURES != 0 {
            for i in 0..nq {
                d.frontend.set_vring_enable(i, true)?;
            }
        }
        Ok(d)
    }

    pub fn hdr_len(&self) -> usize {
        if self.acked & (features::VERSION_1 | features::MRG_RXBUF) != 0 {
            HDR_LEN
        } else {
            crate::virtio_net::HDR_LEN_LEGACY
        }
    }

    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Sends SET_FEATURES with `f` and waits for the device's verdict (REPLY_ACK).
    pub fn frontend_set_features_check(&mut self, f: u64) -> Result<()> {
        self.frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        let r = self.frontend.set_features(f);
        self.frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::empty());
        Ok(r?)
    }

    /// The memory the device sees, for tests that plant bad descriptors.
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    fn buf(&self, vq: &Vq, i: u16) -> u64 {
        vq.bufs + u64::from(i) * self.buf_len as u64
    }

    fn write_desc(&self, vq: &Vq, i: u16, addr: u64, len: u32, flags: u16) {
        let at = vq.desc + 16 * u64::from(i);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        let _ = self.mem.write_slice(&d, GuestAddress(at));
    }

    /// Publishes `n` new entries (already in the avail ring) and kicks if the device wants.
    fn publish(&mut self, q: usize, old: u16) {
        let vq = &self.vqs[q];
        fence(Ordering::Release);
        let _ = self.mem.store(vq.avail_idx.to_le(), GuestAddress(vq.avail + 2), Ordering::Release);
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let ev: u16 = self
                .mem
                .load(GuestAddress(vq.used + 4 + 8 * u64::from(vq.size)), Ordering::Acquire)
                .map(u16::from_le)
                .unwrap_or(0);
            // vring_need_event(event, new, old)
            vq.avail_idx.wrapping_sub(ev).wrapping_sub(1) < vq.avail_idx.wrapping_sub(old)
        } else {
            let flags: u16 = self.mem.load(GuestAddress(vq.used), Ordering::Acquire).map(u16::from_le).unwrap_or(0);
            flags & virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if kick {
            let _ = vq.kick.write(1);
            self.kicks += 1;
        }
    }

    fn fill_rx(&mut self, pair: usize) {
        let q = 2 * pair;
        let old = self.vqs[q].avail_idx;
        while let Some(i) = self.vqs[q].free.pop() {
            let vq = &self.vqs[q];
            let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
            self.write_desc(vq, i, self.buf(vq, i), self.buf_len as u32, write);
            let slot = vq.avail + 4 + 2 * u64::from(vq.avail_idx % vq.size);
            let _ = self.mem.write_obj(i.to_le(), GuestAddress(slot));
            self.vqs[q].avail_idx = self.vqs[q].avail_idx.wrapping_add(1);
        }
        if self.vqs[q].avail_idx != old {
            self.publish(q, old);
        }
    }

    /// Takes back transmit buffers the device has used.
    /// Takes back the buffers the device has used on transmit queue `q`.
    fn reclaim(&mut self, q: usize) {
        let vq = &mut self.vqs[q];
        let Some((_, used)) = ring_slices(&self.mem, vq) else {
            return;
        };
        let used_idx = u16::from_le(used.load::<u16>(2, Ordering::Acquire).unwrap_or(0));
        while vq.last_used != used_idx {
            let slot = 4 + 8 * usize::from(vq.last_used % vq.size);
            let id = u32::from_le(used.load::<u32>(slot, Ordering::Relaxed).unwrap_or(0));
            vq.free.push(id as u16);
            vq.last_used = vq.last_used.wrapping_add(1);
        }
    }

    /// Queues frames on the transmit queue of `pair`, each with header `vnet`; returns how
    /// many fit (the rest: the ring was full).
    pub fn send(&mut self, pair: usize, vnet: &VnetHdr, frames: &[&[u8]]) -> usize {
        let q = 2 * pair + 1;
        self.reclaim(q);
        let hl = self.hdr_len();
        let hdr = vnet.to_bytes(0);
        let old = self.vqs[q].avail_idx;
        let mut n = 0;
        for f in frames {
            let Some(i) = self.vqs[q].free.pop() else {
                break;
            };
            let vq = &self.vqs[q];
            let b = self.buf(vq, i);
            let len = (hl + f.len()).min(self.buf_len);
            let _ = self.mem.write_slice(&hdr[..hl], GuestAddress(b));
            let _ = self.mem.write_slice(&f[..len - hl], GuestAddress(b + hl as u64));
            self.write_desc(vq, i, b, len as u32, 0);
            let slot = vq.avail + 4 + 2 * u64::from(vq.avail_idx % vq.size);
            let _ = self.mem.write_obj(i.to_le(), GuestAddress(slot));
            self.vqs[q].avail_idx = self.vqs[q].avail_idx.wrapping_add(1);
            n += 1;
        }
        if n > 0 {
            self.publish(q, old);
        }
        n
    }

    /// Puts a raw descriptor on the transmit queue of `pair` (for tests of bad input).
    /// Returns false, queuing nothing, when the ring is full.
    #[must_use]
    pub fn send_raw_desc(&mut self, pair: usize, addr: u64, len: u32, flags: u16) -> bool {
        let q = 2 * pair + 1;
        self.reclaim(q);
        let Some(i) = self.vqs[q].free.pop() else {
            return false;
        };
        let old = self.vqs[q].avail_idx;
        let vq = &self.vqs[q];
        self.write_desc(vq, i, addr, len, flags);
        let slot = vq.avail + 4 + 2 * u64::from(vq.avail_idx % vq.size);
        let _ = self.mem.write_obj(i.to_le(), GuestAddress(slot));
        self.vqs[q].avail_idx = self.vqs[q].avail_idx.wrapping_add(1);
        self.publish(q, old);
        true
    }

    /// Bytes of dirty log this driver's memory needs (one bit per 4 KiB page).
    pub fn log_bytes(&self) -> u64 {
        (self.mem.last_addr().0 / 4096) / 8 + 1
    }

    /// Hands the device a dirty log (SET_LOG_BASE: `size` bytes of `log` at `offset`), as a
    /// migrating frontend does first; the device answers when it took it.
    pub fn set_log(&mut self, log: &File, size: u64, offset: u64) -> Result<()> {
        self.frontend.set_log_base(
            0,
            Some(vhost::VhostUserDirtyLogRegion { mmap_size: size, mmap_offset: offset, mmap_handle: log.as_raw_fd() }),
        )?;
        Ok(())
    }

    /// Starts logging as QEMU does when a migration starts: the log (`log`, from offset 0,
    /// [`Driver::log_bytes`] long), LOG_ALL acked, every ring's used ring logged
    /// (`VHOST_VRING_F_LOG`).
    pub fn start_logging(&mut self, log: &File) -> Result<()> {
        let size = self.log_bytes();
        self.set_log(log, size, 0)?;
        self.frontend.set_features(self.acked | features::LOG_ALL)?;
        let host_base = self.mem.get_host_address(GuestAddress(0)).map_err(|e| Error::Memory(e.to_string()))? as u64;
        for (i, vq) in self.vqs.iter().enumerate() {
            self.frontend.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: vq.size,
                    queue_size: vq.size,
                    flags: 1, // VHOST_VRING_F_LOG
                    desc_table_addr: host_base + vq.desc,
                    used_ring_addr: host_base + vq.used,
                    avail_ring_addr: host_base + vq.avail,
                    log_addr: Some(vq.used),
                },
            )?;
        }
        Ok(())
    }

    /// Stops the rings as a migrating frontend does at the end (GET_VRING_BASE on each),
    /// returning the indexes the device gives.
    pub fn stop_rings(&mut self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for i in 0..self.vqs.len() {
            out.push(self.frontend.get_vring_base(i)?);
        }
        Ok(out)
    }

    /// The used index of queue `q` as the device left it in guest memory.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem.read_obj::<u16>(GuestAddress(self.vqs[q].used + 2)).unwrap_or(0)
    }

    /// The file behind the "guest memory" (for tests of a frontend that truncates it).
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Writes `idx` as the available index of queue `q` (0: pair 0's receive queue, 1: its
    /// transmit queue) and kicks, without anything behind it: a broken or hostile driver.
    pub fn corrupt_avail_idx(&mut self, q: usize, idx: u16) {
        let vq = &self.vqs[q];
        let _ = self.mem.store(idx.to_le(), GuestAddress(vq.avail + 2), Ordering::Release);
        let _ = vq.kick.write(1);
    }

    /// Gives queue `q` another kick eventfd (SET_VRING_KICK), and kicks it from now on.
    pub fn replace_kick(&mut self, q: usize, kick: EventFd) -> Result<()> {
        self.frontend.set_vring_kick(q, &kick)?;
        self.vqs[q].kick = kick;
        Ok(())
    }

    /// Transmit buffers the device has not handed back yet.
    pub fn tx_pending(&mut self, pair: usize) -> usize {
        let q = 2 * pair + 1;
        self.reclaim(q);
        usize::from(self.vqs[q].size) - self.vqs[q].free.len()
    }

    /// Frames received on `pair` (reassembled from mergeable buffers), with their headers.
    pub fn recv(&mut self, pair: usize, out: &mut Vec<(VnetHdr, Vec<u8>)>) -> usize {
        let q = 2 * pair;
        let hl = self.hdr_len();
        let used_idx: u16 =
            self.mem.load(GuestAddress(self.vqs[q].used + 2), Ordering::Acquire).map(u16::from_le).unwrap_or(0);
        let mut n = 0;
        let mut cur: Option<(VnetHdr, Vec<u8>, u16)> = None;
        while self.vqs[q].last_used != used_idx {
            let vq = &self.vqs[q];
            let slot = vq.used + 4 + 8 * u64::from(vq.last_used % vq.size);
            let id: u32 = self.mem.read_obj(GuestAddress(slot)).map(u32::from_le).unwrap_or(0);
            let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).map(u32::from_le).unwrap_or(0);
            let b = self.buf(vq, id as u16);
            let mut data = vec![0u8; (len as usize).min(self.buf_len)];
            let _ = self.mem.read_slice(&mut data, GuestAddress(b));
            self.vqs[q].free.push(id as u16);
            self.vqs[q].last_used = self.vqs[q].last_used.wrapping_add(1);
            match cur.take() {
                None if data.len() >= hl => {
                    let h = VnetHdr::parse(&data).unwrap_or_default();
                    let nb = if hl == HDR_LEN { u16::from_le_bytes([data[10], data[11]]).max(1) } else { 1 };
                    cur = Some((h, data[hl..].to_vec(), nb - 1));
                }
                None => {}
                Some((h, mut f, left)) => {
                    f.extend_from_slice(&data);
                    cur = Some((h, f, left - 1));
                }
            }
            if matches!(cur, Some((_, _, 0))) {
                if let Some((h, f, _)) = cur.take() {
                    out.push((h, f));
                    n += 1;
                }
            }
        }
        self.fill_rx(pair);
        n
    }

    /// Benchmarks: writes `vnet` + `frame` into every transmit buffer of `pair` and points
    /// every descriptor at its buffer, once; [`Driver::refill_tx`] then only moves ring
    /// indices. Returns how many bytes each descriptor carries.
    pub fn prime_tx(&mut self, pair: usize, vnet: &VnetHdr, frame: &[u8]) -> usize {
        let q = 2 * pair + 1;
        let hl = self.hdr_len();
        let hdr = vnet.to_bytes(0);
        let len = (hl + frame.len()).min(self.buf_len);
        for i in 0..self.vqs[q].size {
            let vq = &self.vqs[q];
            let b = self.buf(vq, i);
            let _ = self.mem.write_slice(&hdr[..hl], GuestAddress(b));
            let _ = self.mem.write_slice(&frame[..len - hl], GuestAddress(b + hl as u64));
            self.write_desc(vq, i, b, len as u32, 0);
        }
        len
    }

    /// Benchmarks: hands every free transmit buffer of `pair` (still holding the primed
    /// frame) to the device again. Returns how many. Works on whole-ring slices (one
    /// guest-memory lookup per call, not per entry) so the generator stays cheap.
    pub fn refill_tx(&mut self, pair: usize) -> usize {
        let q = 2 * pair + 1;
        self.reclaim(q);
        let vq = &mut self.vqs[q];
        let Some((avail, _)) = ring_slices(&self.mem, vq) else {
            return 0;
        };
        let old = vq.avail_idx;
        let mut n = 0;
        while let Some(i) = vq.free.pop() {
            let _ = avail.store(i.to_le(), 4 + 2 * usize::from(vq.avail_idx % vq.size), Ordering::Relaxed);
            vq.avail_idx = vq.avail_idx.wrapping_add(1);
            n += 1;
        }
        if n > 0 {
            self.publish(q, old);
        }
        n
    }

    /// Benchmarks: counts what arrived on `pair` without copying it — (frames, payload bytes
    /// without virtio-net headers) — and gives the buffers back.
    pub fn drain_rx(&mut self, pair: usize) -> (u64, u64) {
        let q = 2 * pair;
        let hl = self.hdr_len();
        let mrg = hl == HDR_LEN && self.acked & features::MRG_RXBUF != 0;
        let vq = &mut self.vqs[q];
        // Whole-ring and whole-buffer-area slices: one guest-memory lookup per call.
        let (Some((avail, used)), Ok(bufs)) = (
            ring_slices(&self.mem, vq),
            self.mem.get_slice(GuestAddress(vq.bufs), usize::from(vq.size) * self.buf_len),
        ) else {
            return (0, 0);
        };
        let used_idx = u16::from_le(used.load::<u16>(2, Ordering::Acquire).unwrap_or(0));
        let old = vq.avail_idx;
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut left = vq.rx_left;
        while vq.last_used != used_idx {
            let slot = 4 + 8 * usize::from(vq.last_used % vq.size);
            let id = u32::from_le(used.load::<u32>(slot, Ordering::Relaxed).unwrap_or(0)) as u16;
            let len = u32::from_le(used.load::<u32>(slot + 4, Ordering::Relaxed).unwrap_or(0));
            if left == 0 {
                frames += 1;
                bytes += u64::from(len).saturating_sub(hl as u64);
                if mrg {
                    // num_buffers, as a guest reads it from the header.
                    let at = usize::from(id) * self.buf_len + 10;
                    let nb = u16::from_le(bufs.load::<u16>(at, Ordering::Relaxed).unwrap_or(1));
                    left = nb.max(1) - 1;
                }
            } else {
                bytes += u64::from(len);
                left -= 1;
            }
            // The descriptor still points at its buffer: republish it as it is.
            let _ = avail.store(id.to_le(), 4 + 2 * usize::from(vq.avail_idx % vq.size), Ordering::Relaxed);
            vq.avail_idx = vq.avail_idx.wrapping_add(1);
            vq.last_used = vq.last_used.wrapping_add(1);
        }
        vq.rx_left = left;
        if self.vqs[q].avail_idx != old {
            self.publish(q, old);
        }
        (frames, bytes)
    }

    /// Waits until at least `n` frames have arrived on `pair` or `timeout` passes.
    pub fn recv_n(&mut self, pair: usize, n: usize, timeout: Duration) -> Vec<(VnetHdr, Vec<u8>)> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < end {
            if self.recv(pair, &mut out) == 0 {
                let _ = self.vqs[2 * pair].call.read();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        out
    }
}
