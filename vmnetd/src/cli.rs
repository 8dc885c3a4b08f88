//! The `vmnetd` command line: iproute2-like verbs, each a request to the daemon.
//!
//! Human output goes to stdout as plain lines or aligned tables; `--json` prints the daemon's
//! result as JSON instead. A failure prints one line to stderr (and, with `--json`, an
//! `{"error":...}` object to stdout) and exits with the code of its [`ErrorKind`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::api::{self, ApiError, ErrorKind, Op, RmTap, Source, Status, TapInfo, TapSpec};
use crate::client::{self, Client};
use crate::ifname::IfName;
use crate::switch::MacAddr;
use crate::sys::tap::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "vmnetd",
    version,
    about = "Host networking for QEMU/libvirt VMs",
    propagate_version = true
)]
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
    /// Daemon status.
    Status,
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
        Failure {
            kind: e.kind,
            message: e.message,
        }
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
    let ctx = Ctx {
        socket: cli.socket.unwrap_or_else(|| api::DEFAULT_SOCKET.into()),
        json: cli.json,
    };
    match cli.command {
        Command::Daemon(_) => unreachable!("main runs the daemon"),
        Command::Mktap(a) => mktap(&ctx, a),
        Command::Rmtap(a) => rmtap(&ctx, a),
        Command::Tap {
            command: TapCommand::List,
        } => {
            let taps: Vec<TapInfo> = ctx.call(Op::TapList)?;
            if ctx.json {
                ctx.print_json(&taps);
            } else {
                print_taps(&taps);
            }
            Ok(())
        }
        Command::Status => {
            let st: Status = ctx.call(Op::Status)?;
            if ctx.json {
                ctx.print_json(&st);
            } else {
                println!(
                    "vmnetd {} (protocol {}), pid {}, up {}s",
                    st.version, st.protocol, st.pid, st.uptime_secs
                );
                println!("socket:    {}", st.socket);
                println!("state dir: {}", st.state_dir);
                println!("run dir:   {}", st.run_dir);
                println!("config:    {}", st.config);
                println!("taps:      {}", st.taps);
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
    let rm = RmTap {
        name: a.name,
        force: a.force,
    };
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
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join(",")
                },
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
    print_table(
        &[
            "NAME", "MODE", "USER", "GROUP", "FLAGS", "MTU", "MAC", "STATE", "SOURCE", "ORIGIN",
        ],
        &rows,
    );
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
            .map_err(|e| Failure {
                kind: ErrorKind::Internal,
                message: format!("cannot start runtime: {e}"),
            })
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
                None => tap::pick_free_name(&nl, &Default::default())
                    .await
                    .map_err(fail)?,
            };
            let mut decl = TapDecl::from_spec(&spec, name.clone()).map_err(fail)?;
            let outcome = tap::ensure(&nl, &decl, Policy::Declare)
                .await
                .map_err(fail)?;
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
            tap::remove(&nl, &rm.name, None, rm.force)
                .await
                .map_err(fail)?;
            Ok(info)
        })
    }
}
