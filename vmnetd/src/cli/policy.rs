//! `vmnetd flow …`, `vmnetd trace`, `vmnetd mirror …`: policy on a built-in bridge.

use std::path::PathBuf;

use clap::Subcommand;

use vmnetd_api::policy::{
    FlowChange, FlowDel, FlowInfo, FlowMod, MirrorInfo, MirrorRef, MirrorSpec, TraceInfo, TraceReq,
};

use crate::api::{BridgeRef, ErrorKind, Op, PortListReq};
use crate::ifname::IfName;
use crate::switch::VlanId;

use super::{show, Ctx, Failure};

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Add rules in ovs-ofctl syntax, e.g. 'priority=100,in_port=vm1,arp,arp_tpa=10.0.0.2 actions=output:vm2'
    /// (a rule with the same match and priority is replaced).
    Add {
        bridge: IfName,
        /// One or more rules; with --file, none.
        rules: Vec<String>,
        /// Read rules from FILE, one per line (# comments, blank lines ignored; - = stdin).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Remove rules naming at least FILTER's fields with its values (all rules without one).
    Del {
        bridge: IfName,
        filter: Option<String>,
        /// Only the rule with exactly this match and priority.
        #[arg(long)]
        strict: bool,
    },
    /// Replace the whole rule set at once with the rules in FILE (- = stdin): all or nothing.
    Replace { bridge: IfName, file: PathBuf },
    /// Installed rules with their counters, like ovs-ofctl dump-flows.
    Show { bridge: IfName },
}

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Copy what ports receive (--select-src) and send (--select-dst), in VLANs (--select-vlan),
    /// to a port (--output, which then carries nothing else) or a VLAN (--output-vlan).
    Add {
        bridge: IfName,
        name: String,
        #[arg(long, value_name = "PORT", value_delimiter = ',')]
        select_src: Vec<IfName>,
        #[arg(long, value_name = "PORT", value_delimiter = ',')]
        select_dst: Vec<IfName>,
        #[arg(long, value_name = "VID", value_delimiter = ',')]
        select_vlan: Vec<VlanId>,
        #[arg(long, value_name = "PORT")]
        output: Option<IfName>,
        #[arg(long, value_name = "VID")]
        output_vlan: Option<VlanId>,
    },
    /// Remove a mirror.
    Del { bridge: IfName, name: String },
    /// Mirrors with their counters.
    List { bridge: Option<IfName> },
}

/// Rule lines of a file (or stdin): blank lines and `#` comments skipped.
fn read_rules(path: &PathBuf) -> Result<Vec<String>, Failure> {
    let text =
        if path.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) }
            .map_err(|e| Failure { kind: ErrorKind::InvalidArgument, message: format!("{}: {e}", path.display()) })?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect())
}

fn change(ctx: &Ctx, op: Op) -> Result<(), Failure> {
    let c: FlowChange = ctx.call(op)?;
    if ctx.json {
        ctx.print_json(&c);
    } else if c.added > 0 || c.removed > 0 {
        println!("{} added, {} removed, {} rule(s) installed", c.added, c.removed, c.rules);
    }
    Ok(())
}

pub fn flow(ctx: &Ctx, cmd: FlowCommand) -> Result<(), Failure> {
    match cmd {
        FlowCommand::Add { bridge, mut rules, file } => {
            if let Some(f) = file {
                rules.extend(read_rules(&f)?);
            }
            if rules.is_empty() {
                return Err(Failure { kind: ErrorKind::InvalidArgument, message: "no rules given".into() });
            }
            change(ctx, Op::FlowAdd(FlowMod { bridge, rules }))
        }
        FlowCommand::Del { bridge, filter, strict } => change(ctx, Op::FlowDel(FlowDel { bridge, filter, strict })),
        FlowCommand::Replace { bridge, file } => {
            let rules = read_rules(&file)?;
            change(ctx, Op::FlowReplace(FlowMod { bridge, rules }))
        }
        FlowCommand::Show { bridge } => {
            let flows: Vec<FlowInfo> = ctx.call(Op::FlowShow(BridgeRef { bridge }))?;
            if ctx.json {
                ctx.print_json(&flows);
            } else {
                for f in &flows {
                    println!("{}", dump_line(f));
                }
            }
            Ok(())
        }
    }
}

/// One rule as `ovs-ofctl dump-flows` prints it.
pub fn dump_line(f: &FlowInfo) -> String {
    let mut s = format!(
        " cookie=0x{:x}, duration={:.3}s, table={}, n_packets={}, n_bytes={}, ",
        f.cookie, f.duration_secs, f.table, f.n_packets, f.n_bytes
    );
    if f.idle_timeout != 0 {
        s += &format!("idle_timeout={}, ", f.idle_timeout);
    }
    if f.hard_timeout != 0 {
        s += &format!("hard_timeout={}, ", f.hard_timeout);
    }
    s += &format!("idle_age={}, priority={}", f.idle_age_secs, f.priority);
    if !f.matches.is_empty() {
        s += &format!(",{}", f.matches);
    }
    s += &format!(" actions={}", f.actions);
    s
}

pub fn trace(ctx: &Ctx, bridge: IfName, flow: String) -> Result<(), Failure> {
    let t: TraceInfo = ctx.call(Op::Trace(TraceReq { bridge, flow }))?;
    if ctx.json {
        ctx.print_json(&t);
    } else {
        print!("{}", t.text);
    }
    Ok(())
}

pub fn mirror(ctx: &Ctx, cmd: MirrorCommand) -> Result<(), Failure> {
    match cmd {
        MirrorCommand::Add { bridge, name, select_src, select_dst, select_vlan, output, output_vlan } => {
            let spec =
                MirrorSpec { bridge, name, select_src, select_dst, select_vlan, output_port: output, output_vlan };
            let m: MirrorInfo = ctx.call(Op::MirrorAdd(spec))?;
            if ctx.json {
                ctx.print_json(&m);
            }
        }
        MirrorCommand::Del { bridge, name } => {
            let m: MirrorInfo = ctx.call(Op::MirrorDel(MirrorRef { bridge, name }))?;
            if ctx.json {
                ctx.print_json(&m);
            }
        }
        MirrorCommand::List { bridge } => {
            let list: Vec<MirrorInfo> = ctx.call(Op::MirrorList(PortListReq { bridge }))?;
            if ctx.json {
                ctx.print_json(&list);
            } else {
                let names = |v: &[IfName]| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
                    }
                };
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|m| {
                        let s = &m.spec;
                        let vlans = if s.select_vlan.is_empty() {
                            "all".to_owned()
                        } else {
                            s.select_vlan.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
                        };
                        let out = match (&s.output_port, s.output_vlan) {
                            (Some(p), _) => p.to_string(),
                            (None, Some(v)) => format!("vlan {v}"),
                            _ => "-".to_owned(),
                        };
                        let (src, dst) = if s.select_src.is_empty() && s.select_dst.is_empty() {
                            ("all".to_owned(), "all".to_owned())
                        } else {
                            (names(&s.select_src), names(&s.select_dst))
                        };
                        vec![
                            s.bridge.to_string(),
                            s.name.clone(),
                            src,
                            dst,
                            vlans,
                            out,
                            m.packets.to_string(),
                            m.bytes.to_string(),
                            show::source_name(m.source).to_owned(),
                        ]
                    })
                    .collect();
                show::table(
                    &["BRIDGE", "MIRROR", "SRC", "DST", "VLANS", "OUTPUT", "PACKETS", "BYTES", "SOURCE"],
                    &rows,
                );
            }
        }
    }
    Ok(())
}
