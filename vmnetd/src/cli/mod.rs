//! The `vmnetd` command line: iproute2-like verbs, each a request to the daemon.
//!
//! Human output goes to stdout as plain lines or aligned tables; `--json` prints the daemon's
//! result as JSON instead. A failure prints one line to stderr (and, with `--json`, an
//! `{"error":...}` object to stdout) and exits with the code of its [`ErrorKind`].
//!
//! - `args`: the grammar (clap definitions of every verb);
//! - this module: each verb as a request and its result;
//! - [`show`]: human output per noun (bridges, ports, fdb, stats, taps, status, frames);
//! - [`network`]: the `network` verbs (grammar, requests, output);
//! - [`policy`]: `flow`, `trace` and `mirror`;
//! - `offline`: `mktap`/`rmtap` when no daemon runs.

mod args;
pub mod network;
mod offline;
pub mod policy;
pub mod show;

use std::path::PathBuf;

use serde::Serialize;

pub use args::*;

use crate::api::{
    self, ApiError, BridgeDel, BridgeInfo, BridgeKind, BridgeRef, BridgeSpec, CaptureEvent, CaptureReq, ErrorKind,
    FdbRow, FdbShowReq, Flushed, Op, PortInfo, PortKind, PortListReq, PortRef, PortSpec, PortStats, RmTap, StatsReq,
    Status, TapInfo, TapSpec,
};
use crate::client::{self, Client};
use crate::switch::VlanMode;
use crate::sys::tap::Mode;

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
                show::taps(&taps);
            }
            Ok(())
        }
        Command::Bridge { command } => bridge_cmd(&ctx, command),
        Command::Port { command } => port_cmd(&ctx, command),
        Command::Fdb { command } => fdb_cmd(&ctx, command),
        Command::Network { command } => network::run(&ctx, command),
        Command::Flow { command } => policy::flow(&ctx, command),
        Command::Trace { bridge, flow } => policy::trace(&ctx, bridge, flow),
        Command::Mirror { command } => policy::mirror(&ctx, command),
        Command::Stats { bridge, port, watch, interval } if watch || interval.is_some() => {
            stats_watch(&ctx, StatsReq { bridge, port }, interval.unwrap_or(1.0))
        }
        Command::Top { interval } => {
            let every = secs(interval)?;
            vmnetd_top::run(&ctx.socket, every)
                .map_err(|e| Failure { kind: ErrorKind::Internal, message: format!("{e:#}") })
        }
        Command::Apply { file, dry_run } => apply(&ctx, file, dry_run),
        Command::Config { command: ConfigCommand::Dump { all } } => {
            let dump: api::ConfigDump = ctx.call(Op::ConfigDump(api::ConfigDumpReq { all }))?;
            if ctx.json {
                ctx.print_json(&dump);
            } else {
                print!("{}", dump.toml);
            }
            Ok(())
        }
        Command::Stats { bridge, port, .. } => {
            let stats: Vec<PortStats> = ctx.call(Op::Stats(StatsReq { bridge, port }))?;
            if ctx.json {
                ctx.print_json(&stats);
            } else {
                show::stats(&stats);
            }
            Ok(())
        }
        Command::Capture(a) => capture(&ctx, a),
        Command::Status => {
            let st: Status = ctx.call(Op::Status)?;
            if ctx.json {
                ctx.print_json(&st);
            } else {
                show::status(&st);
            }
            Ok(())
        }
    }
}

/// A positive, finite number of seconds (at least 10 ms).
fn secs(s: f64) -> Result<std::time::Duration, Failure> {
    if !s.is_finite() || !(0.01..=86_400.0).contains(&s) {
        return Err(Failure {
            kind: ErrorKind::InvalidArgument,
            message: format!("interval {s} is out of range (0.01-86400 s)"),
        });
    }
    Ok(std::time::Duration::from_secs_f64(s))
}

/// `stats --watch`: the counters every `interval` seconds, with the rates since the last
/// print (`--json`: one JSON array per line, counters only).
fn stats_watch(ctx: &Ctx, req: StatsReq, interval: f64) -> Result<(), Failure> {
    let every = secs(interval)?;
    let mut client = ctx.client()?;
    let mut last: Option<(std::time::Instant, Vec<PortStats>)> = None;
    loop {
        let now = std::time::Instant::now();
        let stats: Vec<PortStats> = client.call(Op::Stats(req.clone()))?;
        if ctx.json {
            match serde_json::to_string(&stats) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("vmnetd: cannot encode output: {e}"),
            }
        } else {
            let dt = last.as_ref().map(|(t, _)| now.duration_since(*t).as_secs_f64());
            let prev = last.as_ref().map(|(_, s)| s.as_slice()).unwrap_or(&[]);
            show::stats_rates(&stats, prev, dt);
            println!();
        }
        use std::io::Write;
        if std::io::stdout().flush().is_err() {
            return Ok(()); // the reader went away (`| head`)
        }
        last = Some((now, stats));
        std::thread::sleep(every.saturating_sub(now.elapsed()));
    }
}

fn apply(ctx: &Ctx, file: PathBuf, dry_run: bool) -> Result<(), Failure> {
    let (text, origin) = if file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| Failure { kind: ErrorKind::InvalidArgument, message: format!("cannot read stdin: {e}") })?;
        (t, "stdin".to_owned())
    } else {
        let t = std::fs::read_to_string(&file).map_err(|e| Failure {
            kind: ErrorKind::InvalidArgument,
            message: format!("cannot read {}: {e}", file.display()),
        })?;
        // The daemon resolves nothing relative to the client's directory: give it the
        // absolute path for its messages.
        let abs = std::path::absolute(&file).unwrap_or(file);
        (t, abs.display().to_string())
    };
    let res: api::ApplyResult = ctx.call(Op::Apply(api::ApplyReq { text, origin, dry_run }))?;
    if ctx.json {
        ctx.print_json(&res);
        return Ok(());
    }
    if res.plan.is_empty() {
        println!("No changes.");
    }
    for step in &res.plan {
        println!("{step}");
    }
    if dry_run && !res.plan.is_empty() {
        println!("(dry run: nothing changed)");
    }
    if let Some(n) = &res.note {
        warn(n);
    }
    Ok(())
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
                show::bridges(&list);
            }
        }
    }
    Ok(())
}

fn port_cmd(ctx: &Ctx, cmd: PortCommand) -> Result<(), Failure> {
    match cmd {
        PortCommand::Add(a) => {
            let a = *a;
            let vni_map = a.vni_map.clone().map(|m| m.0).unwrap_or_default();
            let kind = match (a.netdev, a.vhost_user) {
                _ if a.vxlan => PortKind::Vxlan {
                    vni: a.vni,
                    vni_map: vni_map.iter().map(|(vlan, vni)| api::VniMapping { vlan: *vlan, vni: *vni }).collect(),
                    local: a.local,
                    remotes: a.remote,
                    group: a.group,
                    dev: a.dev,
                    dstport: a.dstport,
                },
                (Some(ifname), _) => PortKind::Netdev {
                    ifname,
                    io: match a.io {
                        IoArg::Auto => api::NetdevIo::Auto,
                        IoArg::Tpacket => api::NetdevIo::Tpacket,
                        IoArg::Mmsg => api::NetdevIo::Mmsg,
                        IoArg::Xdp => api::NetdevIo::Xdp,
                    },
                },
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
                // A trunk tunnel carries exactly its mapped VLANs.
                (None, None) if !vni_map.is_empty() => {
                    let mut vlans = crate::switch::VlanSet::new();
                    for (v, _) in &vni_map {
                        vlans.insert(*v);
                    }
                    VlanMode::Trunk { vlans, native: None }
                }
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
                isolated: a.isolated,
                ingress_rate_kbit: a.ingress_rate,
                ingress_burst_kb: a.ingress_burst,
                egress_rate_kbit: a.egress_rate,
                egress_burst_kb: a.egress_burst,
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
                show::ports(&list);
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
                show::fdb(&rows);
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
                        println!("{}", show::describe_frame(ts_us, d, &bytes, len));
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
