//! The command line's grammar: every verb, its arguments and their help (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::ifname::IfName;
use crate::switch::{MacAddr, Native, VlanId, VlanSet};

#[derive(Debug, Parser)]
#[command(name = "vmnetd", version, about = "Host networking for QEMU/libvirt VMs", propagate_version = true)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "VMNETD_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output (JSON) on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Daemon(DaemonArgs),
    /// Create (or adopt) a persistent TAP/TUN device and print its name.
    Mktap(MktapArgs),
    /// Delete a persistent TAP/TUN device vmnetd created.
    Rmtap(RmtapArgs),
    /// Declared TAP devices.
    Tap {
        #[command(subcommand)]
        command: TapCommand,
    },
    /// Bridges: add, del, list.
    Bridge {
        #[command(subcommand)]
        command: BridgeCommand,
    },
    /// Ports of bridges: add, del, list.
    Port {
        #[command(subcommand)]
        command: PortCommand,
    },
    /// Networks with addresses on a bridge: gateway, DHCP, DNS, NAT, port forwards.
    Network {
        #[command(subcommand)]
        command: super::network::NetworkCommand,
    },
    /// The learning table of a built-in bridge.
    Fdb {
        #[command(subcommand)]
        command: FdbCommand,
    },
    /// Flow rules of a built-in bridge (ovs-ofctl syntax): add, del, replace, show.
    Flow {
        #[command(subcommand)]
        command: super::policy::FlowCommand,
    },
    /// What a built-in bridge would do with a frame, and why (like ovs-appctl ofproto/trace).
    Trace {
        bridge: IfName,
        /// The frame as a match: in_port=PORT and any of dl_src, dl_dst, dl_vlan, ip, tcp, nw_dst, tp_dst, …
        flow: String,
    },
    /// Port mirrors of a built-in bridge: add, del, list.
    Mirror {
        #[command(subcommand)]
        command: super::policy::MirrorCommand,
    },
    /// Per-port counters (once, or every --interval seconds with --watch).
    Stats {
        bridge: Option<IfName>,
        port: Option<IfName>,
        /// Print again every --interval seconds until interrupted, with rates since the last.
        #[arg(long, short = 'w')]
        watch: bool,
        /// Seconds between prints with --watch (implies --watch).
        #[arg(long, short = 'i', value_name = "SECS")]
        interval: Option<f64>,
    },
    /// A live view of ports, rates, drops, FDB sizes and datapath load (q quits).
    Top {
        /// Seconds between refreshes.
        #[arg(long, short = 'i', default_value = "1", value_name = "SECS")]
        interval: f64,
    },
    /// Make the running declarations those of a config file, with the least disruption.
    Apply {
        /// The config file (TOML, as /etc/vmnetd/vmnetd.toml); `-` reads stdin.
        file: PathBuf,
        /// Print the plan only; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// The running configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Capture what a port sends and receives (pcap with -w, else one line per frame).
    Capture(CaptureArgs),
    /// Daemon status.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print what runs from the config file (and, with --all, from the CLI and the libvirt
    /// hook too) as TOML that `vmnetd apply` accepts.
    Dump {
        /// Include runtime declarations (CLI, libvirt hook), as if the file declared them.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BridgeCommand {
    /// Declare a bridge (built-in userspace switch, or a kernel Linux bridge).
    Add {
        name: IfName,
        #[arg(long, value_enum, default_value = "builtin")]
        kind: KindArg,
        /// MAC ageing time in seconds (default 300).
        #[arg(long, value_name = "SECS")]
        ageing: Option<u32>,
        /// Cap on learned addresses (built-in; default 8192).
        #[arg(long, value_name = "N")]
        max_macs: Option<usize>,
        /// Enable spanning tree (Linux bridge).
        #[arg(long)]
        stp: bool,
    },
    /// Remove a bridge (with --force, also its ports).
    Del {
        name: IfName,
        #[arg(long)]
        force: bool,
    },
    /// List bridges.
    List,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Builtin,
    Linux,
}

/// `--io` of a netdev port.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum IoArg {
    Auto,
    Tpacket,
    Mmsg,
    Xdp,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Server,
    Client,
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Add a port to a bridge.
    Add(Box<PortAddArgs>),
    /// Remove a port.
    Del { bridge: IfName, port: IfName },
    /// List ports with their VLANs, state and counters.
    List { bridge: Option<IfName> },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["netdev", "internal", "vhost_user", "vxlan"])))]
pub struct PortAddArgs {
    pub bridge: IfName,
    pub port: IfName,
    /// An existing kernel interface (a TAP, a veth end, a NIC).
    #[arg(long, value_name = "IFNAME")]
    pub netdev: Option<IfName>,
    /// How a built-in bridge moves the netdev's frames: tpacket (mmap rings), mmsg
    /// (recvmmsg/sendmmsg), xdp (AF_XDP: an XDP program and an XSK socket), or auto
    /// (tpacket where the kernel allows it).
    #[arg(long, value_enum, requires = "netdev", default_value = "auto")]
    pub io: IoArg,
    /// A host interface whose other side vmnetd holds (built-in bridge).
    #[arg(long)]
    pub internal: bool,
    /// Name of the internal port's interface (default: the port name).
    #[arg(long, value_name = "IFNAME", requires = "internal")]
    pub ifname: Option<IfName>,
    /// A vhost-user-net socket for a QEMU guest (built-in bridge); relative to the run dir.
    #[arg(long, value_name = "PATH")]
    pub vhost_user: Option<PathBuf>,
    /// server: vmnetd listens (QEMU reconnect=1); client: QEMU listens (server=on).
    #[arg(long, value_enum, requires = "vhost_user", default_value = "server")]
    pub mode: ModeArg,
    /// USER[:GROUP] owning the socket (server mode), e.g. the VM's user or libvirt-qemu.
    #[arg(long, value_name = "USER[:GROUP]", requires = "vhost_user")]
    pub owner: Option<String>,
    /// Queue pairs offered to the guest (1-16).
    #[arg(long, value_name = "N", requires = "vhost_user", default_value_t = 1)]
    pub queues: u16,
    /// A VXLAN tunnel to other hosts (RFC 7348); needs --vni or --vni-map, and --remote or --group.
    #[arg(long)]
    pub vxlan: bool,
    /// The tunnel's VNI (an access tunnel: the port's --vlan travels in it).
    #[arg(long, value_name = "N", requires = "vxlan", conflicts_with = "vni_map")]
    pub vni: Option<u32>,
    /// A trunk tunnel: each VLAN in its own VNI, e.g. 10:1010,20:1020 (with --trunk 10,20).
    #[arg(long, value_name = "VID:VNI,...", requires = "vxlan", value_parser = parse_vni_map)]
    pub vni_map: Option<VniMapArg>,
    /// The underlay address to send from and listen on.
    #[arg(long, value_name = "ADDR", requires = "vxlan")]
    pub local: Option<std::net::IpAddr>,
    /// Remote VTEPs (comma-separated or repeated): broadcasts go to each.
    #[arg(long, value_name = "A[,B...]", requires = "vxlan", value_delimiter = ',')]
    pub remote: Vec<std::net::IpAddr>,
    /// A multicast group for broadcasts instead of a remote list (with --dev).
    #[arg(long, value_name = "MCAST", requires = "vxlan")]
    pub group: Option<std::net::IpAddr>,
    /// The underlay interface the group is joined on.
    #[arg(long, value_name = "IF", requires = "group")]
    pub dev: Option<IfName>,
    /// The tunnel's UDP port.
    #[arg(long, value_name = "PORT", requires = "vxlan", default_value_t = 4789)]
    pub dstport: u16,
    /// Access port in this VLAN (default: access VLAN 1).
    #[arg(long, value_name = "VID", conflicts_with = "trunk")]
    pub vlan: Option<VlanId>,
    /// Trunk carrying these VLANs, e.g. 10,20-30.
    #[arg(long, value_name = "VIDS")]
    pub trunk: Option<VlanSet>,
    /// Native VLAN of the trunk (untagged; add :tagged to keep the tag).
    #[arg(long, value_name = "VID[:tagged]", requires = "trunk")]
    pub native: Option<Native>,
    /// Address of the device behind the port (repeatable): a static entry.
    #[arg(long, value_name = "MAC")]
    pub mac: Vec<MacAddr>,
    /// Accept frames only from the --mac addresses.
    #[arg(long, requires = "mac")]
    pub lock_mac: bool,
    /// Exchange frames only with ports that are not isolated.
    #[arg(long)]
    pub isolated: bool,
    /// Police what the port sends the bridge to this rate (kbit/s), like OVS ingress_policing_rate.
    #[arg(long, value_name = "KBIT")]
    pub ingress_rate: Option<u64>,
    /// The ingress policer's burst, KB (default 80 % of a second of the rate, as OVS; at least 64 KiB).
    #[arg(long, value_name = "KB", requires = "ingress_rate")]
    pub ingress_burst: Option<u64>,
    /// Police what the bridge sends the port to this rate (kbit/s).
    #[arg(long, value_name = "KBIT")]
    pub egress_rate: Option<u64>,
    /// The egress policer's burst, KB.
    #[arg(long, value_name = "KB", requires = "egress_rate")]
    pub egress_burst: Option<u64>,
    /// A label kept with the port (repeatable), like OVS external_ids.
    #[arg(long = "external-id", value_name = "KEY=VALUE", value_parser = parse_external_id)]
    pub external_ids: Vec<(String, String)>,
}

/// `--vni-map VID:VNI,...`.
#[derive(Debug, Clone)]
pub struct VniMapArg(pub Vec<(VlanId, u32)>);

fn parse_vni_map(s: &str) -> Result<VniMapArg, String> {
    crate::vxlan::parse_vni_map(s).map(VniMapArg)
}

fn parse_external_id(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

#[derive(Debug, Subcommand)]
pub enum FdbCommand {
    /// Learned and static addresses: VLAN, MAC, port, age.
    Show {
        bridge: IfName,
        #[arg(long)]
        vlan: Option<VlanId>,
    },
    /// Forget every learned address (static ones stay).
    Flush { bridge: IfName },
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    pub bridge: IfName,
    pub port: IfName,
    /// Write a pcap file instead of printing.
    #[arg(short = 'w', value_name = "FILE.pcap")]
    pub write: Option<PathBuf>,
    /// Stop after N frames.
    #[arg(short = 'c', value_name = "N")]
    pub count: Option<u64>,
    /// Bytes kept per frame.
    #[arg(short = 's', long, value_name = "BYTES")]
    pub snaplen: Option<u32>,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Config file (default: /etc/vmnetd/vmnetd.toml if present, else the embedded default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where declarations are persisted (default /var/lib/vmnetd).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the control and vhost-user sockets live (default /run/vmnetd).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Print the embedded default config and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

#[derive(Debug, Args)]
pub struct MktapArgs {
    /// Device name; default: the first free vmtapN.
    pub name: Option<IfName>,
    /// Owner allowed to open the device without privileges (name or uid).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Group allowed to open the device (name or gid).
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// Make a TUN (IP) device instead of a TAP (Ethernet) device.
    #[arg(long)]
    pub tun: bool,
    /// Allow several queues (QEMU `queues=N`).
    #[arg(long)]
    pub multi_queue: bool,
    /// Frames carry a virtio-net header (QEMU `vnet_hdr=on`).
    #[arg(long)]
    pub vnet_hdr: bool,
    #[arg(long)]
    pub mtu: Option<u32>,
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// A label kept with the declaration (repeatable), like OVS external_ids.
    #[arg(long = "external-id", value_name = "KEY=VALUE", value_parser = parse_external_id)]
    pub external_ids: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct RmtapArgs {
    pub name: IfName,
    /// Delete even a device vmnetd did not create, or one a process has open.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum TapCommand {
    /// List declared TAPs and their state.
    List,
}
