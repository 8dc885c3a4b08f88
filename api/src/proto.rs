//! The control protocol: newline-delimited JSON over the daemon's Unix socket.
//!
//! Every request is one JSON object on one line: `{"v":1,"op":"mktap","name":"tap0",...}`. The
//! daemon answers each with one line: `{"v":1,"ok":true,"result":...}` or
//! `{"v":1,"ok":false,"error":{"kind":"conflict","message":"..."}}`. A request with another
//! protocol version, a malformed line, or a line over [`MAX_REQUEST_BYTES`] gets an error
//! reply; the connection stays usable and the daemon keeps serving everyone else.
//!
//! These types are shared by the CLI, the daemon and the libvirt hook.

use serde::{Deserialize, Serialize};

use crate::ifname::IfName;
use crate::mac::MacAddr;
use crate::users::Principal;
use crate::vlan::{VlanId, VlanMode};

pub const PROTOCOL_VERSION: u32 = 1;

/// Most queue pairs a vhost-user port offers (`--queues`).
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// Layer of a TUN/TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TapMode {
    #[default]
    /// Ethernet frames (`IFF_TAP`).
    Tap,
    /// IP packets (`IFF_TUN`).
    Tun,
}

impl std::fmt::Display for TapMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TapMode::Tap => "tap",
            TapMode::Tun => "tun",
        })
    }
}

/// A VLAN the kernel has on a Linux bridge port (`bridge vlan show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelVlan {
    pub vid: u16,
    pub pvid: bool,
    pub untagged: bool,
}

/// Direction of a captured frame, seen from the port's peer: `rx` = the port received it
/// (the peer sent it), `tx` = the port sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Rx,
    Tx,
}

/// Longest request line the daemon reads (the newline included).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/vmnetd/vmnetd.sock";

/// Free-form `key=value` labels a client attaches to a TAP or port, like OVS's `external_ids`:
/// vmnetd stores and shows them and never interprets them. The libvirt hook marks what it
/// creates with the domain's UUID, so it can remove exactly that at `release`.
pub type ExternalIds = std::collections::BTreeMap<String, String>;

/// Most labels on one TAP or port.
pub const MAX_EXTERNAL_IDS: usize = 16;

/// Checks labels: at most [`MAX_EXTERNAL_IDS`]; keys of 1-64 characters from `[A-Za-z0-9._:-]`;
/// values up to 256 characters without control characters.
pub fn validate_external_ids(ids: &ExternalIds) -> Result<(), ApiError> {
    if ids.len() > MAX_EXTERNAL_IDS {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("{} external ids; at most {MAX_EXTERNAL_IDS} are kept", ids.len()),
        ));
    }
    for (k, v) in ids {
        let key_ok = (1..=64).contains(&k.len())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !key_ok {
            return Err(ApiError::new(
                ErrorKind::InvalidArgument,
                format!("external id key {k:?} must be 1-64 characters from A-Z a-z 0-9 . _ : -"),
            ));
        }
        if v.chars().count() > 256 || v.chars().any(char::is_control) {
            return Err(ApiError::new(
                ErrorKind::InvalidArgument,
                format!("external id {k}: the value must be at most 256 characters, without control characters"),
            ));
        }
    }
    Ok(())
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn no_ids(ids: &ExternalIds) -> bool {
    ids.is_empty()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub op: Op,
}

impl Request {
    pub fn new(op: Op) -> Request {
        Request { v: PROTOCOL_VERSION, op }
    }
}

/// Everything a client can ask of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Daemon facts and a summary of declarations. Result: [`Status`].
    Status,
    /// Declare a persistent TAP. Result: [`TapInfo`].
    Mktap(TapSpec),
    /// Remove a TAP declaration and the device. Result: [`TapInfo`] of what was removed.
    Rmtap(RmTap),
    /// Result: `Vec<TapInfo>`.
    TapList,
    /// Declare a bridge. Result: [`BridgeInfo`].
    BridgeAdd(BridgeSpec),
    /// Result: [`BridgeInfo`] of what was removed.
    BridgeDel(BridgeDel),
    /// Result: `Vec<BridgeInfo>`.
    BridgeList,
    /// Declare a port of a bridge. Result: [`PortInfo`].
    PortAdd(Box<PortSpec>),
    /// Result: [`PortInfo`] of what was removed.
    PortDel(PortRef),
    /// Result: `Vec<PortInfo>`.
    PortList(PortListReq),
    /// Result: `Vec<FdbRow>`.
    FdbShow(FdbShowReq),
    /// Forget learned addresses. Result: [`Flushed`].
    FdbFlush(BridgeRef),
    /// Result: `Vec<PortStats>`.
    Stats(StatsReq),
    /// Stream a port's frames: the reply is followed by [`CaptureEvent`] lines.
    Capture(CaptureReq),
    /// Declare a network with addresses on a bridge. Result: [`NetworkInfo`](crate::net::NetworkInfo).
    NetworkAdd(Box<crate::net::NetworkSpec>),
    /// Remove a network and everything made for it. Result: its [`NetworkInfo`](crate::net::NetworkInfo).
    NetworkDel(crate::net::NetworkRef),
    /// Result: `Vec<NetworkInfo>`.
    NetworkList,
    /// Result: [`NetworkInfo`](crate::net::NetworkInfo).
    NetworkShow(crate::net::NetworkRef),
    /// Result: `Vec<Lease>` (dnsmasq's, and static ones).
    NetworkLeases(crate::net::NetworkRef),
    /// Result: [`NetworkInfo`](crate::net::NetworkInfo).
    LeaseAdd(crate::net::LeaseAdd),
    /// Result: [`NetworkInfo`](crate::net::NetworkInfo).
    LeaseDel(crate::net::LeaseDel),
    /// Result: [`NetworkInfo`](crate::net::NetworkInfo).
    ForwardAdd(crate::net::ForwardAdd),
    /// Result: [`NetworkInfo`](crate::net::NetworkInfo).
    ForwardDel(crate::net::ForwardDel),
    /// Add flow rules to a built-in bridge. Result: [`FlowChange`](crate::policy::FlowChange).
    FlowAdd(crate::policy::FlowMod),
    /// Remove flow rules. Result: [`FlowChange`](crate::policy::FlowChange).
    FlowDel(crate::policy::FlowDel),
    /// Swap a bridge's whole rule set. Result: [`FlowChange`](crate::policy::FlowChange).
    FlowReplace(crate::policy::FlowMod),
    /// Result: `Vec<FlowInfo>`(crate::policy::FlowInfo).
    FlowShow(BridgeRef),
    /// What the bridge would do with a frame. Result: [`TraceInfo`](crate::policy::TraceInfo).
    Trace(crate::policy::TraceReq),
    /// Result: [`MirrorInfo`](crate::policy::MirrorInfo).
    MirrorAdd(crate::policy::MirrorSpec),
    /// Result: [`MirrorInfo`](crate::policy::MirrorInfo) of what was removed.
    MirrorDel(crate::policy::MirrorRef),
    /// Result: `Vec<MirrorInfo>`.
    MirrorList(PortListReq),
    /// How busy the datapath thread is. Result: [`DatapathStats`].
    DatapathStats,
    /// What runs, as a config file `apply` accepts. Result: [`ConfigDump`].
    ConfigDump(ConfigDumpReq),
    /// Make the config file's declarations what `text` declares, with the least disruption
    /// (or, with `dry_run`, only say what would change). Result: [`ApplyResult`].
    Apply(ApplyReq),
    /// Test hook: makes the datapath thread panic (the daemon must then exit). Refused
    /// unless the daemon was started with `VMNETD_TEST_HOOKS=1` in its environment.
    #[doc(hidden)]
    DebugPanic,
}

/// The datapath thread's load, counted since it started (`vmnetd top`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStats {
    /// Nanoseconds since the thread started.
    pub uptime_ns: u64,
    /// Nanoseconds the thread slept waiting for work (the rest it was awake: moving frames,
    /// busy polling, housekeeping).
    pub idle_ns: u64,
    /// Bursts that carried at least one frame, and the frames they carried.
    pub bursts: u64,
    pub frames: u64,
    /// Bursts by size: `(le, count)` with `count` the bursts of at most `le` frames and more
    /// than the previous bucket's `le` (not cumulative); the last `le` is `u32::MAX`.
    pub burst_sizes: Vec<(u32, u64)>,
}

/// `vmnetd config dump [--all]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigDumpReq {
    /// Runtime declarations (CLI, libvirt hook) too, as if the file declared them.
    pub all: bool,
}

/// `vmnetd config dump`: the running declarations as TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDump {
    pub toml: String,
}

/// `vmnetd apply FILE`: the file's text (read by the client), and whether to change anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReq {
    pub text: String,
    /// Where the text came from (for messages and `status`).
    pub origin: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// One line of an apply plan: `+` add, `-` remove, `~` change in place, `!` remove and add
/// again (a change that cannot be made in place), `*` takes effect at the next restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub op: char,
    /// `tap vmtap0`, `bridge vmnet0`, `port vmnet0/vm1`, `network default`, `flows vmnet0`,
    /// `mirror vmnet0/ids`, `setting datapath.busy_poll_us`.
    pub object: String,
    /// What changes, e.g. `vlan access 10 -> access 20`; empty for adds and removals.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl std::fmt::Display for PlanStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.op, self.object)?;
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        Ok(())
    }
}

/// What an apply did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub plan: Vec<PlanStep>,
    pub applied: bool,
    /// Something to know about what was applied (e.g. a file the daemon does not read at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The two kinds of bridge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeKind {
    /// vmnetd's userspace switch.
    #[default]
    Builtin,
    /// A kernel Linux bridge, through rtnetlink.
    Linux,
}

impl std::fmt::Display for BridgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BridgeKind::Builtin => "builtin",
            BridgeKind::Linux => "linux",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    pub name: IfName,
    #[serde(default)]
    pub kind: BridgeKind,
    /// MAC ageing time in seconds (default 300).
    #[serde(default)]
    pub ageing: Option<u32>,
    /// Cap on learned addresses (built-in bridge; default 8192).
    #[serde(default)]
    pub max_macs: Option<usize>,
    /// Spanning tree (Linux bridge; default off).
    #[serde(default)]
    pub stp: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeDel {
    pub name: IfName,
    /// Remove its ports too.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    pub name: IfName,
    pub kind: BridgeKind,
    pub ports: usize,
    /// Learned and static addresses (built-in bridge).
    pub fdb_entries: usize,
    pub ageing: u32,
    pub max_macs: usize,
    pub source: Source,
    /// vmnetd created it (a Linux bridge it adopted is never deleted).
    pub created: bool,
}

/// How a port connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PortKind {
    /// An existing kernel interface.
    Netdev {
        ifname: IfName,
        /// How the built-in bridge moves its frames (`auto` when absent).
        #[serde(default, skip_serializing_if = "NetdevIo::is_auto")]
        io: NetdevIo,
    },
    /// A TAP whose userspace side vmnetd holds (built-in bridge only). Default name: the
    /// port's name.
    Internal {
        #[serde(default)]
        ifname: Option<IfName>,
    },
    /// A vhost-user-net socket (built-in bridge only). A relative path is in the run dir.
    VhostUser {
        path: std::path::PathBuf,
        #[serde(default)]
        mode: VhostMode,
        /// `USER[:GROUP]` that gets the socket (server mode); default root.
        #[serde(default)]
        owner: Option<String>,
        /// Queue pairs offered (1-16).
        #[serde(default = "one")]
        queues: u16,
    },
    /// A VXLAN tunnel (RFC 7348) to other hosts. On a built-in bridge vmnetd encapsulates
    /// in userspace over a UDP socket; on a Linux bridge it is a kernel vxlan device.
    Vxlan {
        /// The one VNI of an access tunnel (the port's VLAN).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
        /// A trunk tunnel: each VLAN in its own VNI.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        vni_map: Vec<VniMapping>,
        /// The underlay address to send from and listen on (default: any).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local: Option<std::net::IpAddr>,
        /// Remote VTEPs: broadcast, unknown unicast and multicast go to each (head-end
        /// replication); only their datagrams are taken.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remotes: Vec<std::net::IpAddr>,
        /// A multicast group instead of (or besides) a remote list, joined on `dev`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<std::net::IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dev: Option<IfName>,
        /// The UDP port (IANA's 4789 by default).
        #[serde(default = "vxlan_port")]
        dstport: u16,
    },
}

/// One VLAN of a trunk tunnel and the VNI that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VniMapping {
    pub vlan: VlanId,
    pub vni: u32,
}

fn vxlan_port() -> u16 {
    4789
}

/// A tunnel port's own counters (built-in bridge).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanInfo {
    /// Frames (and bytes) sent into the tunnel, each copy counted once per remote.
    pub encapsulated: u64,
    pub encapsulated_bytes: u64,
    /// Datagrams taken from the tunnel.
    pub decapsulated: u64,
    pub decapsulated_bytes: u64,
    /// Inner MACs whose remote VTEP is known.
    pub remote_macs: usize,
    /// The underlay MTU the tunnel checks inner frames against (inner frame + 50 or 70).
    pub underlay_mtu: usize,
}

fn one() -> u16 {
    1
}

/// Who listens on a vhost-user socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostMode {
    /// vmnetd listens; QEMU connects (`-chardev socket,path=...,reconnect=1`).
    #[default]
    Server,
    /// QEMU listens (`server=on`); vmnetd connects and keeps retrying.
    Client,
}

impl std::fmt::Display for VhostMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VhostMode::Server => "server",
            VhostMode::Client => "client",
        })
    }
}

/// What a vhost-user port's device negotiated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostInfo {
    pub socket: String,
    pub mode: VhostMode,
    pub connected: bool,
    /// Frontend connections since the port was attached (above 1: it reconnected).
    #[serde(default)]
    pub connections: u64,
    /// Virtio features the frontend acked, by name.
    pub features: Vec<String>,
    pub queue_pairs_active: usize,
    pub queue_pairs_max: u16,
    /// The guest's MAC, if its driver told the control queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// Why the device is not serviced until its frontend sets it up again (the guest broke
    /// a ring, or its memory file shrank), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_reset: Option<String>,
    /// The queues the frontend set up, as the backend sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<VhostQueue>,
}

/// One virtqueue of a vhost-user device, as the backend sees it. A queue whose guest index
/// (`avail_idx`) stays ahead of `next_avail` while nothing moves was not kicked and is not
/// polled; `next_avail` ahead of `next_used` never lasts past a burst.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostQueue {
    /// The vring index.
    pub index: usize,
    /// `rx0`, `tx0`, … `ctrl`.
    pub name: String,
    pub size: u16,
    /// The frontend gave it a kick fd and enabled it.
    pub started: bool,
    pub enabled: bool,
    /// Why the backend stopped servicing it (the guest broke it), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    /// The next available entry the backend takes, and the next used entry it writes.
    pub next_avail: u16,
    pub next_used: u16,
    /// The guest's available index, read from its memory now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avail_idx: Option<u16>,
}

/// How a built-in bridge's `netdev` port moves frames to and from the kernel (`--io`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetdevIo {
    /// `tpacket` where the kernel gives the socket its rings, else `mmsg`. Never `xdp`: on a
    /// veth or a TAP, AF_XDP is copy mode and an XDP program takes GSO from the veth's peer
    /// (TCP measured 0.14x the Linux bridge against tpacket's 0.71x), and on a NIC it resets
    /// the queues and hides VLAN tags the NIC strips; it is there to ask for.
    #[default]
    Auto,
    /// `TPACKET_V2` mmap rings (receive and transmit), GSO frames through the socket.
    Tpacket,
    /// `recvmmsg`/`sendmmsg` on an AF_PACKET socket.
    Mmsg,
    /// AF_XDP: an XDP program redirects frames into an XSK socket's rings (zero-copy where
    /// the driver offers it, else copy mode); frames it cannot take (GSO, other queues) and
    /// frames with offloads to do go through an AF_PACKET socket.
    Xdp,
}

impl NetdevIo {
    pub fn is_auto(&self) -> bool {
        *self == NetdevIo::Auto
    }

    pub fn name(&self) -> &'static str {
        match self {
            NetdevIo::Auto => "auto",
            NetdevIo::Tpacket => "tpacket",
            NetdevIo::Mmsg => "mmsg",
            NetdevIo::Xdp => "xdp",
        }
    }
}

impl PortKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            PortKind::Netdev { .. } => "netdev",
            PortKind::Internal { .. } => "internal",
            PortKind::VhostUser { .. } => "vhost-user",
            PortKind::Vxlan { .. } => "vxlan",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub bridge: IfName,
    pub name: IfName,
    pub kind: PortKind,
    #[serde(default)]
    pub vlan: VlanMode,
    /// Addresses of the device behind the port (static entries).
    #[serde(default)]
    pub macs: Vec<MacAddr>,
    /// Accept frames only from `macs`.
    #[serde(default)]
    pub lock_mac: bool,
    /// Talk only to ports that are not isolated (built-in bridge; on a Linux bridge, the
    /// kernel's `isolated` port flag).
    #[serde(default, skip_serializing_if = "is_false")]
    pub isolated: bool,
    /// Ingress policing: what the port sends the bridge beyond this rate (kbit/s) is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate_kbit: Option<u64>,
    /// The policer's bucket, KB (1000 bytes); by default 80 % of a second of the rate (as OVS),
    /// at least 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst_kb: Option<u64>,
    /// Egress policing: what the bridge sends the port beyond this rate (kbit/s) is dropped
    /// (libvirt's `<bandwidth><inbound>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rate_kbit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst_kb: Option<u64>,
    /// Labels kept with the declaration (see [`ExternalIds`]).
    #[serde(default, skip_serializing_if = "no_ids")]
    pub external_ids: ExternalIds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRef {
    pub bridge: IfName,
    pub name: IfName,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortListReq {
    #[serde(default)]
    pub bridge: Option<IfName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeRef {
    pub bridge: IfName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbShowReq {
    pub bridge: IfName,
    #[serde(default)]
    pub vlan: Option<VlanId>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsReq {
    #[serde(default)]
    pub bridge: Option<IfName>,
    #[serde(default)]
    pub port: Option<IfName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureReq {
    pub bridge: IfName,
    pub port: IfName,
    /// Stop after this many frames.
    #[serde(default)]
    pub count: Option<u64>,
    /// Bytes kept per frame (default 65535).
    #[serde(default)]
    pub snaplen: Option<u32>,
}

/// One line of a capture stream after the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureEvent {
    Frame {
        /// Unix time in microseconds.
        ts_us: u64,
        dir: Dir,
        len: u32,
        /// The captured bytes, base64.
        data: String,
    },
    /// The capture ended (count reached, or the port went away).
    End { frames: u64, dropped: u64, reason: String },
}

/// A port as vmnetd knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub bridge: IfName,
    pub name: IfName,
    pub kind: PortKind,
    pub vlan: VlanMode,
    pub macs: Vec<MacAddr>,
    pub lock_mac: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub isolated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate_kbit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rate_kbit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst_kb: Option<u64>,
    /// The kernel interface behind the port.
    pub ifname: Option<IfName>,
    pub status: PortStatus,
    pub source: Source,
    /// Built-in bridge ports: the switch's counters.
    pub counters: Option<Counters>,
    /// Linux bridge ports: the VLANs the kernel has on the port (`bridge vlan show`), read
    /// back, so drift from the declaration is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_vlans: Option<Vec<KernelVlan>>,
    /// vhost-user ports: the device's negotiation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VhostInfo>,
    /// VXLAN tunnel ports of a built-in bridge: what the tunnel did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanInfo>,
    /// `netdev` ports of a built-in bridge: how frames move (`tpacket`, `mmsg`, `xdp`), and why
    /// `auto` did not take the rings when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<String>,
    #[serde(default, skip_serializing_if = "no_ids")]
    pub external_ids: ExternalIds,
    /// The uid of the non-root user who added the port (absent: root or the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<u32>,
}

/// Where a port is, as vmnetd sees it now. The CLI renders it as text (`Display`); JSON
/// keeps the fields: `{"state":"up"}`, `{"state":"down","reason":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum PortStatus {
    /// Frames flow. vhost-user ports say how many queue pairs the guest uses.
    Up {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue_pairs: Option<QueuePairs>,
    },
    /// A Linux bridge port whose kernel VLANs differ from its declaration (re-applied by
    /// the reconciler).
    VlanDrift,
    /// A vhost-user port no frontend is connected to.
    WaitingForFrontend,
    /// A frontend is connected and has not started a queue pair yet.
    SettingUp,
    /// The guest broke a ring, or its memory file shrank: not serviced until the frontend
    /// sets the device up again.
    NeedsReset { reason: String },
    /// The port's edge failed (its interface was deleted); re-attached when it returns.
    Down { reason: String },
    /// The interface (or bridge) is not there; attached when it appears.
    Missing { reason: String },
    /// A Linux bridge port whose interface is there but not enslaved to the bridge.
    Detached { reason: String },
    /// The port follows an interface that was replaced by another of the same name (the
    /// next VM's `vnetN`): it stays off that one.
    IdentityChanged { ifname: IfName, ifindex: u32, declared_ifindex: u32 },
}

/// Queue pairs of a vhost-user port: in use by the guest, and offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePairs {
    pub active: usize,
    pub max: u16,
}

impl PortStatus {
    /// Frames flow through the port.
    pub fn is_up(&self) -> bool {
        matches!(self, PortStatus::Up { .. } | PortStatus::VlanDrift)
    }
}

impl std::fmt::Display for PortStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortStatus::Up { queue_pairs: None } => f.write_str("up"),
            PortStatus::Up { queue_pairs: Some(q) } => write!(f, "up ({}/{} queue pairs)", q.active, q.max),
            PortStatus::VlanDrift => f.write_str("up (vlan drift)"),
            PortStatus::WaitingForFrontend => f.write_str("waiting for frontend"),
            PortStatus::SettingUp => f.write_str("connected, setting up"),
            PortStatus::NeedsReset { reason } => write!(f, "needs reset: {reason}"),
            PortStatus::Down { reason } => write!(f, "down: {reason}"),
            PortStatus::Missing { reason } => write!(f, "missing: {reason}"),
            PortStatus::Detached { reason } => write!(f, "detached: {reason}"),
            PortStatus::IdentityChanged { ifname, ifindex, declared_ifindex } => write!(
                f,
                "missing: {ifname} is another interface now (ifindex {ifindex}; the port was declared on ifindex {declared_ifindex})"
            ),
        }
    }
}

/// Port counters with drops by reason name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_flooded: u64,
    pub learned: u64,
    pub evicted: u64,
    pub aged: u64,
    pub moved_in: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub bridge: IfName,
    pub port: IfName,
    pub counters: Counters,
    /// A tunnel port's encapsulated/decapsulated counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbRow {
    pub vlan: VlanId,
    pub mac: MacAddr,
    pub port: String,
    pub age_secs: u64,
    #[serde(rename = "static")]
    pub is_static: bool,
    /// The remote VTEP behind the address, when its port is a VXLAN tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    pub flushed: usize,
}

/// A TAP as a client declares it; user and group are names or numeric ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TapSpec {
    /// `None`: the daemon picks the first free `vmtapN`.
    pub name: Option<IfName>,
    pub mode: TapMode,
    pub user: Option<String>,
    pub group: Option<String>,
    pub multi_queue: bool,
    pub vnet_hdr: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// Labels kept with the declaration (see [`ExternalIds`]).
    #[serde(skip_serializing_if = "no_ids")]
    pub external_ids: ExternalIds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmTap {
    pub name: IfName,
    /// Delete even a device vmnetd did not create, or one a process still holds.
    #[serde(default)]
    pub force: bool,
}

/// Where a declaration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file (`/etc/vmnetd/vmnetd.toml` or the embedded default).
    Config,
    /// A runtime declaration (CLI, hook), kept in the state dir.
    State,
    /// Not recorded anywhere (no daemon was running).
    None,
}

/// A TAP as vmnetd knows it, with what the kernel says now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapInfo {
    pub name: IfName,
    pub mode: TapMode,
    pub owner: Option<Principal>,
    pub group: Option<Principal>,
    pub multi_queue: bool,
    pub vnet_hdr: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// vmnetd created the device (and so may delete it), rather than adopting one.
    pub created: bool,
    pub source: Source,
    /// The device exists in the kernel now.
    pub present: bool,
    /// Queues attached by processes (QEMU, ...) right now.
    pub queues_attached: u32,
    #[serde(default, skip_serializing_if = "no_ids")]
    pub external_ids: ExternalIds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub uptime_secs: u64,
    pub socket: String,
    pub state_dir: String,
    pub run_dir: String,
    /// The config file read at start, or "embedded default".
    pub config: String,
    pub taps: usize,
    pub bridges: usize,
    pub ports: usize,
}

/// What kind of failure a request met; the CLI maps it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request could not be parsed, was too long, or had the wrong protocol version.
    BadRequest,
    /// A value in the request is invalid (name, VLAN id, user...).
    InvalidArgument,
    NotFound,
    /// The request collides with something that exists.
    Conflict,
    PermissionDenied,
    /// The kernel or peer lacks a needed feature.
    Unsupported,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorKind {
    /// Exit code of the CLI for this kind of failure (documented in the README).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::BadRequest | ErrorKind::InvalidArgument => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::PermissionDenied => 5,
            ErrorKind::Unsupported => 6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into() }
    }

    /// An error whose message is the whole `source()` chain, joined with ": ".
    pub fn from_chain(kind: ErrorKind, e: &(dyn std::error::Error + 'static)) -> Self {
        ApiError::new(kind, error_chain(e))
    }
}

/// `"outer: inner: root"` for an error and its sources, each said once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response { v: PROTOCOL_VERSION, ok: true, result: Some(result), error: None }
    }

    pub fn err(e: ApiError) -> Response {
        Response { v: PROTOCOL_VERSION, ok: false, result: None, error: Some(e) }
    }
}

/// Parses one request line, turning every failure into the error reply the daemon sends.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    // Look at the version first, so a newer client gets "version" rather than "unknown op".
    let raw: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("Malformed request: {}", strip_location(&e))))?;
    let v = raw.get("v").and_then(serde_json::Value::as_u64);
    match v {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("Unsupported protocol version {v} (this daemon speaks {PROTOCOL_VERSION})"),
            ))
        }
        None => {
            return Err(ApiError::new(ErrorKind::BadRequest, "Malformed request: missing protocol version field \"v\""))
        }
    }
    serde_json::from_value(raw)
        .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("Invalid request: {}", strip_location(&e))))
}

fn strip_location(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_flat() {
        let r = Request::new(Op::Mktap(TapSpec {
            name: Some(IfName::new("tap0").unwrap()),
            user: Some("hyman".into()),
            ..Default::default()
        }));
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.starts_with(r#"{"v":1,"op":"mktap","name":"tap0","mode":"tap","user":"hyman""#), "{s}");
        let back = parse_request(s.as_bytes()).unwrap();
        assert!(matches!(back.op, Op::Mktap(t) if t.user.as_deref() == Some("hyman")));
    }

    #[test]
    fn port_status_json_is_typed_and_text_is_for_people() {
        let up = PortStatus::Up { queue_pairs: Some(QueuePairs { active: 1, max: 2 }) };
        assert_eq!(serde_json::to_string(&up).unwrap(), r#"{"state":"up","queue_pairs":{"active":1,"max":2}}"#);
        assert_eq!(up.to_string(), "up (1/2 queue pairs)");
        let down = PortStatus::Down { reason: "Network is down".into() };
        assert_eq!(serde_json::to_string(&down).unwrap(), r#"{"state":"down","reason":"Network is down"}"#);
        assert_eq!(
            serde_json::from_str::<PortStatus>(r#"{"state":"waiting-for-frontend"}"#).unwrap().to_string(),
            "waiting for frontend"
        );
        let moved =
            PortStatus::IdentityChanged { ifname: IfName::new("vnet3").unwrap(), ifindex: 12, declared_ifindex: 9 };
        assert!(moved.to_string().contains("another interface now"));
        assert!(PortStatus::VlanDrift.is_up() && !down.is_up());
    }

    #[test]
    fn unit_ops_parse() {
        assert!(matches!(parse_request(br#"{"v":1,"op":"status"}"#).unwrap().op, Op::Status));
    }

    #[test]
    fn malformed_requests_get_clear_errors() {
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.starts_with("Malformed request"), "{}", e.message);
        assert!(!e.message.contains("at line"), "{}", e.message);

        let e = parse_request(br#"{"op":"status"}"#).unwrap_err();
        assert!(e.message.contains("\"v\""), "{}", e.message);

        let e = parse_request(br#"{"v":2,"op":"status"}"#).unwrap_err();
        assert!(e.message.contains("version 2"), "{}", e.message);

        let e = parse_request(br#"{"v":1,"op":"frobnicate"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("frobnicate"), "{}", e.message);

        let e = parse_request(br#"{"v":1,"op":"mktap","name":"way-too-long-name0"}"#).unwrap_err();
        assert!(e.message.contains("longer than 15 bytes"), "{}", e.message);
    }

    #[test]
    fn error_chain_says_each_cause_once() {
        let inner = std::io::Error::from_raw_os_error(1); // EPERM
        #[derive(Debug, thiserror::Error)]
        #[error("Cannot create TAP tap0")]
        struct Outer(#[source] std::io::Error);
        let s = error_chain(&Outer(inner));
        assert!(s.starts_with("Cannot create TAP tap0: Operation not permitted"), "{s}");
    }
}
