//! The vhost-user-net device: protocol state shared between the connection's thread (which
//! answers the frontend through the `vhost` crate's [`BackendReqHandler`]) and the owner's
//! datapath thread (which moves frames through the virtqueues).
//!
//! Why not `vhost-user-backend`: that crate gives each device its own worker threads and hands
//! a device's vrings only to its own `handle_event`. A switch wants the opposite: one
//! datapath thread that owns every port's queues and copies frames from one guest's memory
//! straight into another's, as OVS-DPDK's PMD threads do. So this crate implements the
//! backend request handler itself (on the `vhost` crate) and keeps the queues in a
//! [`DevState`] behind one mutex that the datapath takes once per burst.
//!
//! Whenever the frontend changes something the datapath must notice (kick fds, ring
//! start/stop/enable, the memory table, a disconnect), [`Shared::changed`] bumps
//! `generation` and signals `notify`, an eventfd the datapath watches.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};

use crate::virtio_net::{features, HDR_LEN, HDR_LEN_LEGACY};

/// Largest ring a frontend may ask for.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most queue pairs a port can have (`--queues`).
pub const MAX_QUEUE_PAIRS: u16 = 16;

pub type Memory = GuestMemoryMmap<()>;

/// One virtqueue and its notifications.
pub struct Vring {
    pub queue: Queue,
    /// The frontend kicks here when it adds buffers (read 8 bytes to clear).
    pub kick: Option<File>,
    /// We signal here when we used buffers (write 8 bytes).
    pub call: Option<File>,
    /// Between SET_VRING_KICK and GET_VRING_BASE.
    pub started: bool,
    /// SET_VRING_ENABLE (always, without protocol features).
    pub enabled: bool,
    /// The frontend said SET_VRING_ENABLE for this ring (after SET_FEATURES).
    pub enable_said: bool,
}

impl Vring {
    fn new() -> Vring {
        Vring {
            // MAX_QUEUE_SIZE is a power of two, which is all Queue::new checks.
            queue: Queue::new(MAX_QUEUE_SIZE).unwrap_or_else(|_| unreachable!("valid queue size")),
            kick: None,
            call: None,
            started: false,
            enabled: false,
            enable_said: false,
        }
    }

    /// Frames may move through this ring now.
    pub fn active(&self) -> bool {
        self.started && self.enabled && self.queue.ready()
    }

    /// Interrupts the driver (writes the call eventfd).
    pub fn signal(&self) {
        if let Some(mut c) = self.call.as_ref() {
            let _ = c.write(&1u64.to_ne_bytes());
        }
    }

    /// Clears a pending kick (reads the kick eventfd); non-blocking.
    pub fn clear_kick(&self) {
        if let Some(mut k) = self.kick.as_ref() {
            let mut b = [0u8; 8];
            let _ = std::io::Read::read(&mut k, &mut b);
        }
    }
}

/// The device as the datapath sees it.
pub struct DevState {
    pub mem: GuestMemoryAtomic<Memory>,
    pub vrings: Vec<Vring>,
    pub acked_features: u64,
    pub acked_protocol_features: u64,
    pub connected: bool,
    /// Bumped on every change the datapath must re-read.
    pub generation: u64,
    /// Queue pairs the guest uses (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET), when it says.
    pub active_pairs: Option<u16>,
    /// RX mode and MAC table set through the control queue.
    pub promisc: bool,
    pub allmulti: bool,
    pub guest_mac: Option<[u8; 6]>,
    pub mac_table: Vec<[u8; 6]>,
}

impl DevState {
    pub(crate) fn new(nvrings: usize) -> DevState {
        DevState {
            mem: GuestMemoryAtomic::new(Memory::default()),
            vrings: (0..nvrings).map(|_| Vring::new()).collect(),
            acked_features: 0,
            acked_protocol_features: 0,
            connected: false,
            generation: 0,
            active_pairs: None,
            promisc: true,
            allmulti: true,
            guest_mac: None,
            mac_table: Vec::new(),
        }
    }

    pub fn has(&self, f: u64) -> bool {
        self.acked_features & f != 0
    }

    /// Size of the virtio-net header on this device's queues.
    pub fn hdr_len(&self) -> usize {
        if self.has(features::VERSION_1) || self.has(features::MRG_RXBUF) {
            HDR_LEN
        } else {
            HDR_LEN_LEGACY
        }
    }

    /// Index of the control queue.
    pub fn ctrl_index(&self) -> usize {
        self.vrings.len() - 1
    }

    /// Data queue pairs that can carry frames now.
    pub fn active_pair_indices(&self) -> impl Iterator<Item = usize> + '_ {
        let pairs = (self.vrings.len() - 1) / 2;
        (0..pairs).filter(|p| self.vrings[2 * p].active() && self.vrings[2 * p + 1].active())
    }

    fn reset_rings(&mut self) {
        for v in &mut self.vrings {
            *v = Vring::new();
        }
    }
}

/// State shared by the connection thread and the datapath.
pub struct Shared {
    pub state: Mutex<DevState>,
    /// Signalled when `state.generation` changes.
    pub notify: EventFd,
    /// Queue pairs this port offers (`--queues`).
    pub queue_pairs: u16,
    pub name: String,
}

impl Shared {
    pub fn new(name: &str, queue_pairs: u16) -> std::io::Result<Arc<Shared>> {
        let pairs = queue_pairs.clamp(1, MAX_QUEUE_PAIRS);
        Ok(Arc::new(Shared {
            state: Mutex::new(DevState::new(2 * usize::from(pairs) + 1)),
            notify: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            queue_pairs: pairs,
            name: name.to_owned(),
        }))
    }

    /// Locks the device state. A panic on another thread while holding it cannot leave the
    /// rings half-written in a way the next user could not handle, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, DevState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a change the datapath must pick up, and wakes it.
    pub fn changed(&self, st: &mut DevState) {
        st.generation = st.generation.wrapping_add(1);
        let _ = self.notify.write(1);
    }

    /// The frontend went away: forget everything it set up; the port waits for the next one.
    pub fn disconnected(&self) {
        let mut st = self.lock();
        st.reset_rings();
        st.mem = GuestMemoryAtomic::new(Memory::default());
        st.acked_features = 0;
        st.acked_protocol_features = 0;
        st.connected = false;
        st.active_pairs = None;
        self.changed(&mut st);
    }
}

/// Where a frontend's memory region is in its own address space (vring addresses arrive as
/// frontend virtual addresses).
struct Mapping {
    vmm_addr: u64,
    size: u64,
    gpa: u64,
}

/// Answers one frontend connection's requests.
pub struct Handler {
    shared: Arc<Shared>,
    mappings: Vec<Mapping>,
    owned: bool,
}

/// Protocol features offered: multiqueue and acknowledged requests, nothing QEMU rejects.
pub const PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

fn unsupported(what: &'static str) -> VuError {
    VuError::ReqHandlerError(std::io::Error::new(std::io::ErrorKind::Unsupported, what))
}

impl Handler {
    pub fn new(shared: Arc<Shared>) -> Handler {
        shared.lock().connected = true;
        Handler { shared, mappings: Vec::new(), owned: false }
    }

    fn gpa(&self, vmm: u64) -> VuResult<u64> {
        self.mappings
            .iter()
            .find(|m| vmm >= m.vmm_addr && vmm - m.vmm_addr < m.size)
            .map(|m| vmm - m.vmm_addr + m.gpa)
            .ok_or(VuError::InvalidParam)
    }

    fn with_vring<R>(&self, index: usize, f: impl FnOnce(&mut DevState, usize) -> VuResult<R>) -> VuResult<R> {
        let mut st = self.shared.lock();
        if index >= st.vrings.len() {
            return Err(VuError::InvalidParam);
        }
        let r = f(&mut st, index)?;
        self.shared.changed(&mut st);
        Ok(r)
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.owned = false;
        let mut st = self.shared.lock();
        st.reset_rings();
        st.acked_features = 0;
        self.shared.changed(&mut st);
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        let mut st = self.shared.lock();
        st.reset_rings();
        st.acked_features = 0;
        self.shared.changed(&mut st);
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(features::OFFERED)
    }

    fn set_features(&mut self, f: u64) -> VuResult<()> {
        log::debug!("vhost-user {}: SET_FEATURES {f:#x} ({:?})", self.shared.name, features::names(f));
        if f & !features::OFFERED != 0 {
            return Err(VuError::InvalidParam);
        }
        let mut st = self.shared.lock();
        st.acked_features = f;
        let event_idx = f & features::RING_EVENT_IDX != 0;
        let with_protocol = f & features::PROTOCOL_FEATURES != 0;
        for (i, v) in st.vrings.iter_mut().enumerate() {
            v.queue.set_event_idx(event_idx);
            // Without protocol features, rings are enabled as soon as they start. With them,
            // rings start disabled — except the first pair: QEMU enables it with
            // SET_VRING_ENABLE *before* SET_FEATURES, which the vhost crate refuses (it wants
            // the feature acked first), and does not say it again. Other pairs wait for the
            // frontend, which enables them once its guest picks a queue count.
            if !with_protocol || (i < 2 && !v.enable_said) {
                v.enabled = true;
            }
        }
        self.shared.changed(&mut st);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        log::debug!("vhost-user {}: SET_MEM_TABLE ({} regions)", self.shared.name, ctx.len());
        if postcopy.is_some() {
            return Err(unsupported("postcopy"));
        }
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (r, file) in ctx.iter().zip(files) {
            let region = GuestRegionMmap::new(r.mmap_region(file)?, GuestAddress(r.guest_phys_addr))
                .ok_or(VuError::InvalidParam)?;
            mappings.push(Mapping { vmm_addr: r.user_addr, size: r.memory_size, gpa: r.guest_phys_addr });
            regions.push(region);
        }
        let mem = Memory::from_regions(regions).map_err(|e| VuError::ReqHandlerError(std::io::Error::other(e)))?;
        self.mappings = mappings;
        let mut st = self.shared.lock();
        st.mem.lock().map_err(|_| VuError::BackendInternalError)?.replace(mem);
        self.shared.changed(&mut st);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        self.with_vring(index as usize, |st, i| {
            st.vrings[i].queue.set_size(num as u16);
            Ok(())
        })
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let (d, u, a) = (self.gpa(descriptor)?, self.gpa(used)?, self.gpa(available)?);
        self.with_vring(index as usize, |st, i| {
            let q = &mut st.vrings[i].queue;
            q.try_set_desc_table_address(GuestAddress(d)).map_err(|_| VuError::InvalidParam)?;
            q.try_set_avail_ring_address(GuestAddress(a)).map_err(|_| VuError::InvalidParam)?;
            q.try_set_used_ring_address(GuestAddress(u)).map_err(|_| VuError::InvalidParam)?;
            // After a guest reboot the used index restarts; take it from the ring, as QEMU's
            // libvhost-user does.
            let mem = st.mem.memory();
            if let Ok(idx) = st.vrings[i].queue.used_idx(&*mem, std::sync::atomic::Ordering::Acquire) {
                st.vrings[i].queue.set_next_used(idx.0);
            }
            Ok(())
        })
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.with_vring(index as usize, |st, i| {
            st.vrings[i].queue.set_next_avail(base as u16);
            Ok(())
        })
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        log::debug!("vhost-user {}: GET_VRING_BASE {index}", self.shared.name);
        // Holding the state lock means the datapath is not inside a burst on this ring.
        self.with_vring(index as usize, |st, i| {
            let v = &mut st.vrings[i];
            v.started = false;
            v.queue.set_ready(false);
            v.kick = None;
            v.call = None;
            Ok(VhostUserVringState::new(index, u32::from(v.queue.next_avail())))
        })
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        log::debug!("vhost-user {}: SET_VRING_KICK {index} (fd: {})", self.shared.name, fd.is_some());
        self.with_vring(usize::from(index), |st, i| {
            let v = &mut st.vrings[i];
            v.started = fd.is_some();
            v.kick = fd;
            v.queue.set_ready(v.started);
            Ok(())
        })
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.with_vring(usize::from(index), |st, i| {
            st.vrings[i].call = fd;
            Ok(())
        })
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        if usize::from(index) >= self.shared.lock().vrings.len() {
            return Err(VuError::InvalidParam);
        }
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(PROTOCOL_FEATURES)
    }

    fn set_protocol_features(&mut self, f: u64) -> VuResult<()> {
        self.shared.lock().acked_protocol_features = f & PROTOCOL_FEATURES.bits();
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.shared.lock().vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        log::debug!("vhost-user {}: SET_VRING_ENABLE {index} {enable}", self.shared.name);
        if self.shared.lock().acked_features & features::PROTOCOL_FEATURES == 0 {
            return Err(VuError::InvalidOperation("SET_VRING_ENABLE without protocol features"));
        }
        self.with_vring(index as usize, |st, i| {
            st.vrings[i].enabled = enable;
            st.vrings[i].enable_said = true;
            Ok(())
        })
    }

    fn get_config(&mut self, _offset: u32, _size: u32, _flags: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        Err(unsupported("config space (the frontend emulates it)"))
    }

    fn set_config(&mut self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> VuResult<()> {
        Err(unsupported("config space (the frontend emulates it)"))
    }

    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> VuResult<()> {
        Err(unsupported("gpu socket"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(unsupported("shared objects"))
    }

    fn get_inflight_fd(&mut self, _inflight: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        Err(unsupported("inflight fd"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(unsupported("inflight fd"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(unsupported("memory slots"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<u64>> {
        Err(unsupported("memory slots"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(unsupported("memory slots"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(unsupported("device state transfer"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(unsupported("device state transfer"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(unsupported("shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(unsupported("dirty logging (migration)"))
    }
}
