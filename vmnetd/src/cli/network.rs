//! `vmnetd network ...`: the grammar of the network verbs, their requests and human output.

use std::net::Ipv4Addr;

use clap::{Args, Subcommand};

use vmnetd_api::net::{
    DhcpRange, DhcpSpec, DomainName, ForwardAdd, ForwardDel, HostName, Lease, LeaseAdd, LeaseDel, NetName, NetworkInfo,
    NetworkRef, NetworkSpec, PortNum, Proto, SubnetSpec, Target,
};

use crate::api::Op;
use crate::ifname::IfName;
use crate::switch::{MacAddr, VlanId};

use super::{show, Ctx, Failure};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Declare a network: a gateway address on the bridge, and DHCP, DNS, NAT as asked.
    Add(Box<NetworkAddArgs>),
    /// Remove a network and everything made for it.
    Del { name: NetName },
    /// List networks.
    List,
    /// One network in detail.
    Show { name: NetName },
    /// Leases dnsmasq gave out, and static ones.
    Leases { name: NetName },
    /// Static leases: add, del.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Port forwards from the host into the network: add, del.
    Forward {
        #[command(subcommand)]
        command: ForwardCommand,
    },
}

#[derive(Debug, Args)]
pub struct NetworkAddArgs {
    pub name: NetName,
    /// The bridge (built-in: the gateway is an internal port vmn-NAME; Linux: the bridge itself).
    #[arg(long, value_name = "BRIDGE")]
    pub bridge: IfName,
    /// The VLAN the network lives in (built-in bridge; default: VLAN 1, untagged).
    #[arg(long, value_name = "VID")]
    pub vlan: Option<VlanId>,
    /// The IPv4 subnet, or auto: a free RFC 1918 /24.
    #[arg(long, value_name = "CIDR|auto", default_value = "auto")]
    pub subnet: SubnetSpec,
    /// The host's address (default: the subnet's first host address).
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// Masquerade the subnet out of the host's other interfaces.
    #[arg(long)]
    pub nat: bool,
    /// DHCP, from this pool FIRST-LAST (default: every host address after the gateway).
    #[arg(long, value_name = "RANGE", num_args = 0..=1, default_missing_value = "")]
    pub dhcp: Option<String>,
    /// DNS: the clients' names, and the host's resolvers for the rest.
    #[arg(long)]
    pub dns: bool,
    /// The DNS domain of the clients' names (e.g. vm.lan).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<DomainName>,
    /// An IPv6 ULA /64 with router advertisements (SLAAC).
    #[arg(long)]
    pub ipv6: bool,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// This MAC always gets this address (and host name).
    Add {
        network: NetName,
        mac: MacAddr,
        ip: Ipv4Addr,
        #[arg(long, value_name = "HOSTNAME")]
        name: Option<HostName>,
    },
    /// Remove a static lease.
    Del { network: NetName, mac: MacAddr },
}

#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Forward the host's PROTO port HOST-PORT to ADDR:PORT in the network.
    Add {
        network: NetName,
        #[arg(long, value_parser = ["tcp", "udp"], default_value = "tcp")]
        proto: String,
        #[arg(long, value_name = "PORT")]
        host_port: PortNum,
        #[arg(long, value_name = "ADDR:PORT")]
        to: Target,
    },
    /// Remove a port forward.
    Del {
        network: NetName,
        #[arg(long, value_parser = ["tcp", "udp"], default_value = "tcp")]
        proto: String,
        #[arg(long, value_name = "PORT")]
        host_port: PortNum,
    },
}

fn proto(s: &str) -> Proto {
    if s == "udp" {
        Proto::Udp
    } else {
        Proto::Tcp
    }
}

fn invalid(msg: String) -> Failure {
    Failure { kind: crate::api::ErrorKind::InvalidArgument, message: msg }
}

pub fn run(ctx: &Ctx, cmd: NetworkCommand) -> Result<(), Failure> {
    let info = |ctx: &Ctx, op: Op| -> Result<(), Failure> {
        let info: NetworkInfo = ctx.call(op)?;
        if ctx.json {
            ctx.print_json(&info);
        }
        Ok(())
    };
    match cmd {
        NetworkCommand::Add(a) => {
            let a = *a;
            let dhcp = match a.dhcp.as_deref() {
                None => None,
                Some("") => Some(DhcpSpec { range: None }),
                Some(r) => Some(DhcpSpec { range: Some(r.parse::<DhcpRange>().map_err(|e| invalid(e.0))?) }),
            };
            let spec = NetworkSpec {
                name: a.name,
                bridge: a.bridge,
                vlan: a.vlan,
                subnet: a.subnet,
                gateway: a.gateway,
                nat: a.nat,
                dhcp,
                dns: a.dns,
                domain: a.domain,
                ipv6: a.ipv6,
            };
            let info: NetworkInfo = ctx.call(Op::NetworkAdd(Box::new(spec)))?;
            if ctx.json {
                ctx.print_json(&info);
            } else {
                println!("{} {} gateway {} on {}", info.spec.name, info.subnet, info.gateway, info.interface);
            }
            Ok(())
        }
        NetworkCommand::Del { name } => info(ctx, Op::NetworkDel(NetworkRef { name })),
        NetworkCommand::List => {
            let list: Vec<NetworkInfo> = ctx.call(Op::NetworkList)?;
            if ctx.json {
                ctx.print_json(&list);
            } else {
                networks(&list);
            }
            Ok(())
        }
        NetworkCommand::Show { name } => {
            let n: NetworkInfo = ctx.call(Op::NetworkShow(NetworkRef { name }))?;
            if ctx.json {
                ctx.print_json(&n);
            } else {
                network(&n);
            }
            Ok(())
        }
        NetworkCommand::Leases { name } => {
            let list: Vec<Lease> = ctx.call(Op::NetworkLeases(NetworkRef { name }))?;
            if ctx.json {
                ctx.print_json(&list);
            } else {
                leases(&list);
            }
            Ok(())
        }
        NetworkCommand::Lease { command: LeaseCommand::Add { network, mac, ip, name } } => {
            info(ctx, Op::LeaseAdd(LeaseAdd { network, mac, ip, name }))
        }
        NetworkCommand::Lease { command: LeaseCommand::Del { network, mac } } => {
            info(ctx, Op::LeaseDel(LeaseDel { network, mac }))
        }
        NetworkCommand::Forward { command: ForwardCommand::Add { network, proto: p, host_port, to } } => {
            info(ctx, Op::ForwardAdd(ForwardAdd { network, proto: proto(&p), host_port, to }))
        }
        NetworkCommand::Forward { command: ForwardCommand::Del { network, proto: p, host_port } } => {
            info(ctx, Op::ForwardDel(ForwardDel { network, proto: proto(&p), host_port }))
        }
    }
}

fn services(n: &NetworkInfo) -> String {
    let mut s = Vec::new();
    if n.spec.nat {
        s.push("nat");
    }
    if n.spec.dhcp.is_some() {
        s.push("dhcp");
    }
    if n.spec.dns {
        s.push("dns");
    }
    if n.spec.ipv6 {
        s.push("ipv6");
    }
    if s.is_empty() {
        "-".into()
    } else {
        s.join(",")
    }
}

/// `vmnetd network list`.
pub fn networks(list: &[NetworkInfo]) {
    let rows = list
        .iter()
        .map(|n| {
            vec![
                n.spec.name.to_string(),
                n.spec.bridge.to_string(),
                n.spec.vlan.map_or("-".into(), |v| v.to_string()),
                n.subnet.to_string(),
                n.gateway.to_string(),
                n.interface.to_string(),
                services(n),
                n.forwards.len().to_string(),
                n.dnsmasq_pid.map_or("-".into(), |p| p.to_string()),
                show::source_name(n.source).into(),
            ]
        })
        .collect::<Vec<_>>();
    show::table(
        &["NAME", "BRIDGE", "VLAN", "SUBNET", "GATEWAY", "INTERFACE", "SERVICES", "FORWARDS", "DNSMASQ", "SOURCE"],
        &rows,
    );
}

/// `vmnetd network show`.
pub fn network(n: &NetworkInfo) {
    println!(
        "network {} on {} ({})",
        n.spec.name,
        n.spec.bridge,
        n.spec.vlan.map_or("untagged".into(), |v| format!("VLAN {v}"))
    );
    println!("  subnet {}  gateway {}  interface {}", n.subnet, n.gateway, n.interface);
    println!("  services {}{}", services(n), n.dnsmasq_pid.map_or(String::new(), |p| format!("  (dnsmasq {p})")));
    if let Some(r) = n.dhcp_range {
        println!("  dhcp range {r}");
    }
    if let Some(d) = &n.spec.domain {
        println!("  domain {d}");
    }
    if let Some(p) = &n.ipv6_prefix {
        println!("  ipv6 {p}");
    }
    for l in &n.leases {
        println!("  lease {} {}{}", l.mac, l.ip, l.name.as_ref().map_or(String::new(), |h| format!(" {h}")));
    }
    for f in &n.forwards {
        println!("  forward {} {} -> {}", f.proto, f.host_port, f.to);
    }
}

/// `vmnetd network leases`.
pub fn leases(list: &[Lease]) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rows = list
        .iter()
        .map(|l| {
            vec![
                l.ip.to_string(),
                l.mac.to_string(),
                l.hostname.as_ref().map_or("-".into(), |h| h.to_string()),
                match (l.active, l.expires) {
                    (false, _) => "not taken".into(),
                    (true, None) => "never".into(),
                    (true, Some(t)) => format!("{}s", t.saturating_sub(now)),
                },
                if l.is_static { "static".into() } else { "dynamic".into() },
            ]
        })
        .collect::<Vec<_>>();
    show::table(&["ADDRESS", "MAC", "HOSTNAME", "EXPIRES-IN", "KIND"], &rows);
}
