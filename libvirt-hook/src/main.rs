//! `vmnetd-libvirt-hook`: see the library docs. libvirt calls it as `NAME OP SUBOP -`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmnetd_api::proto::{BridgeInfo, BridgeKind, Op, Status};
use vmnetd_libvirt_hook::{config, hook, install, translate};

#[derive(Debug, Parser)]
#[command(
    name = "vmnetd-libvirt-hook",
    version,
    about = "libvirt qemu hook for vmnetd: <interface> XML -> vmnetd ports",
    after_help = "libvirt runs it as /etc/libvirt/hooks/qemu.d/vmnetd NAME OP SUBOP - with the domain XML on stdin."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Rewrite domain XML (stdin -> stdout): interfaces on vmnetd built-in bridges become vhost-user.
    Translate {
        /// Treat NAME as a built-in bridge (repeatable); without it, ask the daemon.
        #[arg(long = "bridge", value_name = "NAME")]
        bridges: Vec<String>,
        /// vmnetd's run dir, where the sockets go (default: the daemon's, else /run/vmnetd).
        #[arg(long, value_name = "DIR")]
        run_dir: Option<PathBuf>,
        /// The daemon's control socket.
        #[arg(long, env = "VMNETD_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Copy this program to libvirt's hook directory and make libvirtd load it (SIGHUP).
    Install {
        /// Record the daemon's control socket in the hook's config file.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[arg(long, value_name = "DIR", default_value = install::HOOKS_DIR)]
        hooks_dir: PathBuf,
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Remove the hook and make libvirtd forget it.
    Uninstall {
        #[arg(long, value_name = "DIR", default_value = install::HOOKS_DIR)]
        hooks_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(std::io::stderr(), "vmnetd: internal error (please report): {info}");
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    // libvirt's call: exactly `NAME OP SUBOP -`.
    if args.len() == 4 && args[3] == "-" {
        return run_hook(&args[0], &args[1], &args[2]);
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Translate { bridges, run_dir, socket } => run_translate(bridges, run_dir, socket),
        Cmd::Install { socket, hooks_dir, config } => {
            install::install(&install::Options { hooks_dir, config, socket }).map(print_lines)
        }
        Cmd::Uninstall { hooks_dir } => {
            install::uninstall(&install::Options { hooks_dir, config: config::DEFAULT_PATH.into(), socket: None })
                .map(print_lines)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmnetd-libvirt-hook: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_lines(lines: Vec<String>) {
    for l in lines {
        println!("{l}");
    }
}

fn run_hook(name: &str, op: &str, sub: &str) -> ExitCode {
    let cfg = match config::HookConfig::load() {
        Ok(c) => c,
        Err(e) => {
            // A broken config must not block domains that do not use vmnetd; the daemon
            // at the default socket is still tried.
            eprintln!("vmnetd: {e}; using defaults");
            config::HookConfig::default()
        }
    };
    match hook::run(name, op, sub, &mut std::io::stdin().lock(), &cfg) {
        hook::Outcome::Ok(warnings) => {
            for w in warnings {
                eprintln!("{w}");
            }
            ExitCode::SUCCESS
        }
        hook::Outcome::Refuse(line) => {
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

fn run_translate(mut bridges: Vec<String>, run_dir: Option<PathBuf>, socket: Option<PathBuf>) -> Result<(), String> {
    let mut run_dir = run_dir;
    if bridges.is_empty() {
        let socket = socket.unwrap_or_else(|| config::HookConfig::load().map(|c| c.socket).unwrap_or_default());
        let mut c = vmnetd_api::client::Client::connect(&socket).map_err(|e| {
            format!("{} (or name the built-in bridges with --bridge)", vmnetd_api::proto::error_chain(&e))
        })?;
        let list: Vec<BridgeInfo> = c.call(Op::BridgeList).map_err(|e| vmnetd_api::proto::error_chain(&e))?;
        bridges = list.into_iter().filter(|b| b.kind == BridgeKind::Builtin).map(|b| b.name.to_string()).collect();
        if run_dir.is_none() {
            let st: Status = c.call(Op::Status).map_err(|e| vmnetd_api::proto::error_chain(&e))?;
            run_dir = Some(st.run_dir.into());
        }
    }
    let mut input = String::new();
    std::io::stdin()
        .take(vmnetd_libvirt_hook::xml::MAX_INPUT as u64 + 1)
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the domain XML on stdin: {e}"))?;
    let opts = translate::Options {
        builtin_bridges: bridges.clone(),
        run_dir: run_dir.unwrap_or_else(|| "/run/vmnetd".into()),
        mac_seed: None,
    };
    let t = translate::translate(&input, &opts).map_err(|e| e.to_string())?;
    if t.notes.is_empty() {
        eprintln!(
            "vmnetd-libvirt-hook: nothing to translate: no type='bridge' interface is on a built-in bridge ({})",
            if bridges.is_empty() { "vmnetd has none".to_owned() } else { bridges.join(", ") }
        );
    }
    for n in &t.notes {
        eprintln!("vmnetd-libvirt-hook: {n}");
    }
    std::io::stdout().write_all(t.xml.as_bytes()).map_err(|e| format!("cannot write the result: {e}"))
}
