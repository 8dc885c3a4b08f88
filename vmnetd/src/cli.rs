//! The `vmnetd` command line: iproute2-like verbs, each a request to the daemon.
//!
//! Human output goes to stdout as plain lines or aligned tables; `--json` prints the daemon's
//! result as JSON instead. A failure prints one line to stderr (and, with `--json`, an
//! `{"error":...}` object to stdout) and exits with the code of its [`ErrorKind`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::api::{
    self, ApiError, BridgeDel, BridgeInfo, BridgeKind, BridgeRef, BridgeSpec, CaptureEvent, CaptureReq, ErrorKind,
    FdbRow, FdbShowReq, Flushed, Op, PortInfo, PortKind, PortListReq, PortRef, PortSpec, PortStats, RmTap, Source,
    StatsReq, Status, TapInfo, TapSpec,
};
use crate::client::{self, Client};
use crate::ifname::IfName;
use crate::switch::{MacAddr, Native, VlanId, VlanMode, VlanSet};
use crate::sys::tap::Mode;

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
    /// The learning table of a built-in bridge.
    Fdb {
        #[command(subcommand)]
        command: FdbCommand,
    },
    /// Per-port counters.
    Stats { bridge: Option<IfName>, port: Option<IfName> },
    /// Capture what a port sends and receives (pcap with -w, else one line per frame).
    Capture(CaptureArgs),
    /// Daemon status.
    Status,
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
#[command(group(clap::ArgGroup::new("kind").required(true).args(["netdev", "internal", "vhost_user"])))]
pub struct PortAddArgs {
    pub bridge: IfName,
    pub port: IfName,
    /// An existing kernel interface (a TAP, a veth end, a NIC).
    #[arg(long, value_name = "IFNAME")]
    pub netdev: Option<IfName>,
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
    /// A label kept with the port (repeatable), like OVS external_ids.
    #[arg(long = "external-id", value_name = "KEY=VALUE", value_parser = parse_external_id)]
    pub external_ids: Vec<(String, String)>,
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

/// A failure of a CLI command: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<client::Error> for Failure {
    fn from(e: client::Error) -> Failure {
        let kind = match &e {
            client::Error::Api(a) => a.kind,
            client::Error::PermissionDenied(..) => ErrorKind::PermissionDenied,
            client::Error::NotRunning(..) => ErrorKind::Unsupported,
            _ => ErrorKind::Internal,
        };
        let message = match &e {
            client::Error::Api(a) => a.message.clone(),
            other => api::error_chain(other),
        };
        Failure { kind, message }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure { kind: e.kind, message: e.message }
    }
}

/// Exit code when the daemon cannot be reached at all.
pub const EXIT_NO_DAEMON: i32 = 7;

impl Failure {
    pub fn exit_code(&self) -> i32 {
        if self.kind == ErrorKind::Unsupported && self.message.contains("daemon is not running") {
            EXIT_NO_DAEMON
        } else {
            self.kind.exit_code()
        }
    }
}

pub struct Ctx {
    pub socket: PathBuf,
    pub json: bool,
}

impl Ctx {
    fn client(&self) -> Result<Client, client::Error> {
        Client::connect(&self.socket)
    }

    fn call<T: serde::de::DeserializeOwned>(&self, op: Op) -> Result<T, Failure> {
        Ok(self.client()?.call(op)?)
    }

    fn print_json<T: Serialize>(&self, v: &T) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("vmnetd: cannot encode output: {e}"),
        }
    }
}

pub fn warn(msg: &str) {
    eprintln!("vmnetd: warning: {msg}");
}

/// Runs a parsed command line (everything but `daemon`, which `main` runs itself).
pub fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx { socket: cli.socket.unwrap_or_else(|| api::DEFAULT_SOCKET.into()), json: cli.json };
    match cli.command {
        Command::Daemon(_) => unreachable!("main runs the daemon"),
        Command::Mktap(a) => mktap(&ctx, a),
        Command::Rmtap(a) => rmtap(&ctx, a),
        Command::Tap { command: TapCommand::List } => {
            let taps: Vec<TapInfo> = ctx.call(Op::TapList)?;
            if ctx.json {
                ctx.print_json(&taps);
            } else {
                print_taps(&taps);
            }
            Ok(())
        }
        Command::Bridge { command } => bridge_cmd(&ctx, command),
        Command::Port { command } => port_cmd(&ctx, command),
        Command::Fdb { command } => fdb_cmd(&ctx, command),
        Command::Stats { bridge, port } => {
            let stats: Vec<PortStats> = ctx.call(Op::Stats(StatsReq { bridge, port }))?;
            if ctx.json {
                ctx.print_json(&stats);
            } else {
                print_stats(&stats);
            }
            Ok(())
        }
        Command::Capture(a) => capture(&ctx, a),
        Command::Status => {
            let st: Status = ctx.call(Op::Status)?;
            if ctx.json {
                ctx.print_json(&st);
            } else {
                println!("vmnetd {} (protocol {}), pid {}, up {}s", st.version, st.protocol, st.pid, st.uptime_secs);
                println!("socket:    {}", st.socket);
                println!("state dir: {}", st.state_dir);
                println!("run dir:   {}", st.run_dir);
                println!("config:    {}", st.config);
                println!("taps:      {}", st.taps);
                println!("bridges:   {}", st.bridges);
                println!("ports:     {}", st.ports);
            }
            Ok(())
        }
    }
}

fn mktap(ctx: &Ctx, a: MktapArgs) -> Result<(), Failure> {
    let spec = TapSpec {
        name: a.name,
        mode: if a.tun { Mode::Tun } else { Mode::Tap },
        user: a.user,
        group: a.group,
        multi_queue: a.multi_queue,
        vnet_hdr: a.vnet_hdr,
        mtu: a.mtu,
        mac: a.mac,
        external_ids: a.external_ids.into_iter().collect(),
    };
    let info: TapInfo = match ctx.client() {
        Ok(mut c) => c.call(Op::Mktap(spec))?,
        Err(e) if e.is_not_running() => {
            let info = offline::mktap(spec)?;
            warn(&format!(
                "no daemon at {}: {} {} but not recorded; it will not be re-created after a reboot",
                ctx.socket.display(),
                info.name,
                if info.created { "created" } else { "exists" },
            ));
            info
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        ctx.print_json(&info);
    } else {
        println!("{}", info.name);
    }
    Ok(())
}

fn rmtap(ctx: &Ctx, a: RmtapArgs) -> Result<(), Failure> {
    let rm = RmTap { name: a.name, force: a.force };
    let info: TapInfo = match ctx.client() {
        Ok(mut c) => c.call(Op::Rmtap(rm))?,
        Err(e) if e.is_not_running() => {
            let info = offline::rmtap(rm)?;
            warn(&format!(
                "no daemon at {}: {} deleted, but a declaration recorded by the daemon would bring it back at its next start",
                ctx.socket.display(),
                info.name
            ));
            info
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        ctx.print_json(&info);
    }
    Ok(())
}

fn bridge_cmd(ctx: &Ctx, cmd: BridgeCommand) -> Result<(), Failure> {
    match cmd {
        BridgeCommand::Add { name, kind, ageing, max_macs, stp } => {
            let spec = BridgeSpec {
                name,
                kind: match kind {
                    KindArg::Builtin => BridgeKind::Builtin,
                    KindArg::Linux => BridgeKind::Linux,
                },
                ageing,
                max_macs,
                stp: stp.then_some(true),
            };
            let info: BridgeInfo = ctx.call(Op::BridgeAdd(spec))?;
            if ctx.json {
                ctx.print_json(&info);
            }
        }
        BridgeCommand::Del { name, force } => {
            let info: BridgeInfo = ctx.call(Op::BridgeDel(BridgeDel { name, force }))?;
            if ctx.json {
                ctx.print_json(&info);
            }
        }
        BridgeCommand::List => {
            let list: Vec<BridgeInfo> = ctx.call(Op::BridgeList)?;
            if ctx.json {
                ctx.print_json(&list);
            } else {
                let rows = list
                    .iter()
                    .map(|b| {
                        vec![
                            b.name.to_string(),
                            b.kind.to_string(),
                            b.ports.to_string(),
                            b.fdb_entries.to_string(),
                            format!("{}s", b.ageing),
                            b.max_macs.to_string(),
                            source_name(b.source).into(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["NAME", "KIND", "PORTS", "FDB", "AGEING", "MAX-MACS", "SOURCE"], &rows);
            }
        }
    }
    Ok(())
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Config => "config",
        Source::State => "state",
        Source::None => "-",
    }
}

fn port_cmd(ctx: &Ctx, cmd: PortCommand) -> Result<(), Failure> {
    match cmd {
        PortCommand::Add(a) => {
            let a = *a;
            let kind = match (a.netdev, a.vhost_user) {
                (Some(ifname), _) => PortKind::Netdev { ifname },
                (None, Some(path)) => PortKind::VhostUser {
                    path,
                    mode: match a.mode {
                        ModeArg::Server => api::VhostMode::Server,
                        ModeArg::Client => api::VhostMode::Client,
                    },
                    owner: a.owner,
                    queues: a.queues,
                },
                (None, None) => PortKind::Internal { ifname: a.ifname },
            };
            let vlan = match (a.vlan, a.trunk) {
                (_, Some(vlans)) => VlanMode::Trunk { vlans, native: a.native },
                (Some(v), None) => VlanMode::access(v),
                (None, None) => VlanMode::default(),
            };
            let spec = PortSpec {
                bridge: a.bridge,
                name: a.port,
                kind,
                vlan,
                macs: a.mac,
                lock_mac: a.lock_mac,
                external_ids: a.external_ids.into_iter().collect(),
            };
            let info: PortInfo = ctx.call(Op::PortAdd(Box::new(spec)))?;
            if ctx.json {
                ctx.print_json(&info);
            }
        }
        PortCommand::Del { bridge, port } => {
            let info: PortInfo = ctx.call(Op::PortDel(PortRef { bridge, name: port }))?;
            if ctx.json {
                ctx.print_json(&info);
            }
        }
        PortCommand::List { bridge } => {
            let list: Vec<PortInfo> = ctx.call(Op::PortList(PortListReq { bridge }))?;
            if ctx.json {
                ctx.print_json(&list);
            } else {
                let rows = list
                    .iter()
                    .map(|p| {
                        let c = p.counters.clone().unwrap_or_default();
                        vec![
                            p.bridge.to_string(),
                            p.name.to_string(),
                            p.kind.type_name().into(),
                            p.ifname
                                .as_ref()
                                .map(|i| i.to_string())
                                .or_else(|| p.vhost.as_ref().map(|v| v.socket.clone()))
                                .unwrap_or_else(|| "-".into()),
                            p.vlan.to_string(),
                            if p.macs.is_empty() {
                                "-".into()
                            } else {
                                let m: Vec<String> = p.macs.iter().map(|m| m.to_string()).collect();
                                format!("{}{}", m.join(","), if p.lock_mac { " (locked)" } else { "" })
                            },
                            p.kernel_vlans.as_ref().map_or("-".into(), |v| {
                                let s: Vec<String> = v
                                    .iter()
                                    .map(|k| {
                                        format!(
                                            "{}{}{}",
                                            k.vid,
                                            if k.pvid { " pvid" } else { "" },
                                            if k.untagged { " untagged" } else { "" }
                                        )
                                    })
                                    .collect();
                                if s.is_empty() {
                                    "none".into()
                                } else {
                                    s.join(",")
                                }
                            }),
                            p.status.to_string(),
                            c.rx_packets.to_string(),
                            c.tx_packets.to_string(),
                            c.drops.values().sum::<u64>().to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(
                    &[
                        "BRIDGE",
                        "PORT",
                        "KIND",
                        "INTERFACE",
                        "VLAN",
                        "MACS",
                        "KERNEL-VLANS",
                        "STATE",
                        "RX",
                        "TX",
                        "DROPS",
                    ],
                    &rows,
                );
            }
        }
    }
    Ok(())
}

fn fdb_cmd(ctx: &Ctx, cmd: FdbCommand) -> Result<(), Failure> {
    match cmd {
        FdbCommand::Show { bridge, vlan } => {
            let rows: Vec<FdbRow> = ctx.call(Op::FdbShow(FdbShowReq { bridge, vlan }))?;
            if ctx.json {
                ctx.print_json(&rows);
            } else {
                let t = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.vlan.to_string(),
                            r.mac.to_string(),
                            r.port.clone(),
                            if r.is_static { "static".into() } else { format!("{}s", r.age_secs) },
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["VLAN", "MAC", "PORT", "AGE"], &t);
            }
        }
        FdbCommand::Flush { bridge } => {
            let f: Flushed = ctx.call(Op::FdbFlush(BridgeRef { bridge }))?;
            if ctx.json {
                ctx.print_json(&f);
            }
        }
    }
    Ok(())
}

fn print_stats(stats: &[PortStats]) {
    let rows = stats
        .iter()
        .map(|s| {
            let c = &s.counters;
            let drops: Vec<String> = c.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                s.bridge.to_string(),
                s.port.to_string(),
                c.rx_packets.to_string(),
                c.rx_bytes.to_string(),
                c.tx_packets.to_string(),
                c.tx_bytes.to_string(),
                c.rx_flooded.to_string(),
                c.learned.to_string(),
                if drops.is_empty() { "-".into() } else { drops.join(",") },
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &["BRIDGE", "PORT", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "FLOODED", "LEARNED", "DROPS"],
        &rows,
    );
}

/// One line describing a frame, tcpdump-style.
pub fn describe_frame(ts_us: u64, dir: &str, data: &[u8], len: u32) -> String {
    use crate::switch::wire::EthernetFrame;
    let secs = ts_us / 1_000_000;
    let t = format!("{:02}:{:02}:{:02}.{:06}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60, ts_us % 1_000_000);
    let Ok(f) = EthernetFrame::new_checked(data) else {
        return format!("{t} {dir} malformed frame, length {len}");
    };
    let et = f.ethertype();
    let name = match et {
        0x0800 => "IPv4",
        0x0806 => "ARP",
        0x86dd => "IPv6",
        0x88cc => "LLDP",
        _ => "",
    };
    let vlan = f.tci().map_or(String::new(), |t| format!(", vlan {} p {}", t.vid(), t.pcp()));
    format!("{t} {dir} {} > {}{vlan}, ethertype {name} (0x{et:04x}), length {len}", f.src(), f.dst())
}

fn capture(ctx: &Ctx, a: CaptureArgs) -> Result<(), Failure> {
    use base64::Engine;
    let mut c = ctx.client()?;
    let req = CaptureReq { bridge: a.bridge, port: a.port, count: a.count, snaplen: a.snaplen };
    let _: serde_json::Value = c.call(Op::Capture(req))?;
    c.no_timeout()?;
    let mut pcap = match &a.write {
        Some(p) => {
            let f = std::fs::File::create(p).map_err(|e| Failure {
                kind: ErrorKind::InvalidArgument,
                message: format!("Cannot create {}: {e}", p.display()),
            })?;
            let w = crate::pcap::PcapWriter::new(f, a.snaplen.unwrap_or(65535)).map_err(|e| Failure {
                kind: ErrorKind::Internal,
                message: format!("Cannot write {}: {e}", p.display()),
            })?;
            Some(w)
        }
        None => None,
    };
    while let Some(ev) = c.next_event::<CaptureEvent>()? {
        match ev {
            CaptureEvent::Frame { ts_us, dir, len, data } => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
                match &mut pcap {
                    Some(w) => w.write(ts_us, &bytes, len).map_err(|e| Failure {
                        kind: ErrorKind::Internal,
                        message: format!("Cannot write the capture: {e}"),
                    })?,
                    None if ctx.json => println!("{}", serde_json::json!({"ts_us": ts_us, "dir": dir, "len": len})),
                    None => {
                        let d = match dir {
                            crate::datapath::capture::Dir::Rx => "rx",
                            crate::datapath::capture::Dir::Tx => "tx",
                        };
                        println!("{}", describe_frame(ts_us, d, &bytes, len));
                    }
                }
            }
            CaptureEvent::End { frames, dropped, reason } => {
                eprintln!("vmnetd: {frames} frame(s) captured, {dropped} dropped ({reason})");
                break;
            }
        }
    }
    Ok(())
}

/// Prints rows as a left-aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_taps(taps: &[TapInfo]) {
    let rows: Vec<Vec<String>> = taps
        .iter()
        .map(|t| {
            let mut flags = Vec::new();
            if t.multi_queue {
                flags.push("multi_queue");
            }
            if t.vnet_hdr {
                flags.push("vnet_hdr");
            }
            vec![
                t.name.to_string(),
                t.mode.to_string(),
                t.owner.as_ref().map_or("-".into(), |p| p.to_string()),
                t.group.as_ref().map_or("-".into(), |p| p.to_string()),
                if flags.is_empty() { "-".into() } else { flags.join(",") },
                t.mtu.map_or("-".into(), |m| m.to_string()),
                t.mac.map_or("-".into(), |m| m.to_string()),
                match (t.present, t.queues_attached) {
                    (false, _) => "missing".into(),
                    (true, 0) => "idle".into(),
                    (true, n) => format!("in use ({n})"),
                },
                match t.source {
                    Source::Config => "config",
                    Source::State => "state",
                    Source::None => "-",
                }
                .into(),
                if t.created { "created" } else { "adopted" }.into(),
            ]
        })
        .collect();
    print_table(&["NAME", "MODE", "USER", "GROUP", "FLAGS", "MTU", "MAC", "STATE", "SOURCE", "ORIGIN"], &rows);
}

/// `mktap`/`rmtap` without a daemon: the same checks and actions, nothing recorded.
mod offline {
    use super::*;
    use crate::netlink::Netlink;
    use crate::tap::{self, Policy, TapDecl};

    fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure { kind: ErrorKind::Internal, message: format!("cannot start runtime: {e}") })
    }

    fn fail(e: tap::Error) -> Failure {
        ApiError::from_chain(e.kind(), &e).into()
    }

    fn nl_fail(e: crate::netlink::Error) -> Failure {
        ApiError::from_chain(ErrorKind::Internal, &e).into()
    }

    pub fn mktap(spec: TapSpec) -> Result<TapInfo, Failure> {
        runtime()?.block_on(async {
            let nl = Netlink::connect().map_err(nl_fail)?;
            let name = match &spec.name {
                Some(n) => n.clone(),
                None => tap::pick_free_name(&nl, &Default::default()).await.map_err(fail)?,
            };
            let mut decl = TapDecl::from_spec(&spec, name.clone()).map_err(fail)?;
            let outcome = tap::ensure(&nl, &decl, Policy::Declare).await.map_err(fail)?;
            let link = nl.link(&name).await.map_err(nl_fail)?;
            decl.created = match outcome {
                tap::Outcome::Created => true,
                tap::Outcome::Adopted => link.as_ref().is_some_and(|l| tap::is_ours(None, l)),
            };
            Ok(decl.info(link.as_ref(), Source::None))
        })
    }

    pub fn rmtap(rm: RmTap) -> Result<TapInfo, Failure> {
        runtime()?.block_on(async {
            let nl = Netlink::connect().map_err(nl_fail)?;
            let link = nl.link(&rm.name).await.map_err(nl_fail)?;
            let link = crate::daemon::core::existing_tap(&rm.name, link).map_err(fail)?;
            let info = crate::daemon::core::undeclared_info(&rm.name, &link);
            tap::remove(&nl, &rm.name, None, rm.force).await.map_err(fail)?;
            Ok(info)
        })
    }
}
