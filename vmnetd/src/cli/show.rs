//! Human output of each noun: aligned tables and plain lines (what `--json` replaces).

use crate::api::{BridgeInfo, FdbRow, PortInfo, PortStats, Source, Status, TapInfo};

/// `vmnetd bridge list`.
pub fn bridges(list: &[BridgeInfo]) {
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
    table(&["NAME", "KIND", "PORTS", "FDB", "AGEING", "MAX-MACS", "SOURCE"], &rows);
}

/// `vmnetd port list`.
/// A tunnel port's VNIs and where it sends: `vni 1010 -> 10.0.0.2,10.0.0.3`.
fn tunnel(kind: &crate::api::PortKind) -> Option<String> {
    let crate::api::PortKind::Vxlan { vni, vni_map, remotes, group, dstport, .. } = kind else { return None };
    let vnis = match vni {
        Some(v) => format!("vni {v}"),
        None => {
            format!("vni {}", vni_map.iter().map(|m| format!("{}:{}", m.vlan, m.vni)).collect::<Vec<_>>().join(","))
        }
    };
    let mut to: Vec<String> = remotes.iter().map(|r| r.to_string()).collect();
    to.extend(group.map(|g| g.to_string()));
    let port = if *dstport == crate::vxlan::PORT { String::new() } else { format!(" port {dstport}") };
    Some(format!("{vnis} -> {}{port}", to.join(",")))
}

pub fn ports(list: &[PortInfo]) {
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
                    .map(|i| match &p.io {
                        // A netdev port's I/O: `va (tpacket)`.
                        Some(io) => format!("{i} ({io})"),
                        None => i.to_string(),
                    })
                    .or_else(|| p.vhost.as_ref().map(|v| v.socket.clone()))
                    .or_else(|| tunnel(&p.kind))
                    .unwrap_or_else(|| "-".into()),
                {
                    // The VLAN mode, then any policy on the port.
                    let mut v = p.vlan.to_string();
                    if p.isolated {
                        v += " isolated";
                    }
                    if let Some(r) = p.ingress_rate_kbit {
                        v += &format!(" in<={r}kbit");
                    }
                    if let Some(r) = p.egress_rate_kbit {
                        v += &format!(" out<={r}kbit");
                    }
                    v
                },
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
    table(
        &["BRIDGE", "PORT", "KIND", "INTERFACE", "VLAN", "MACS", "KERNEL-VLANS", "STATE", "RX", "TX", "DROPS"],
        &rows,
    );
}

/// `vmnetd fdb show`.
pub fn fdb(rows: &[FdbRow]) {
    // The remote VTEP column only where a bridge has tunnels.
    let remotes = rows.iter().any(|r| r.remote.is_some());
    let t = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.vlan.to_string(),
                r.mac.to_string(),
                r.port.clone(),
                if r.is_static { "static".into() } else { format!("{}s", r.age_secs) },
            ];
            if remotes {
                row.push(r.remote.map_or_else(|| "-".into(), |a| a.to_string()));
            }
            row
        })
        .collect::<Vec<_>>();
    if remotes {
        table(&["VLAN", "MAC", "PORT", "AGE", "REMOTE"], &t);
    } else {
        table(&["VLAN", "MAC", "PORT", "AGE"], &t);
    }
}

/// `vmnetd status`.
pub fn status(st: &Status) {
    println!("vmnetd {} (protocol {}), pid {}, up {}s", st.version, st.protocol, st.pid, st.uptime_secs);
    println!("socket:    {}", st.socket);
    println!("state dir: {}", st.state_dir);
    println!("run dir:   {}", st.run_dir);
    println!("config:    {}", st.config);
    println!("taps:      {}", st.taps);
    println!("bridges:   {}", st.bridges);
    println!("ports:     {}", st.ports);
}

/// `vmnetd stats`.
pub fn stats(stats: &[PortStats]) {
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
    table(&["BRIDGE", "PORT", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "FLOODED", "LEARNED", "DROPS"], &rows);
    for s in stats {
        if let Some(v) = &s.vxlan {
            println!(
                "{}/{}: VXLAN encapsulated {} ({} bytes), decapsulated {} ({} bytes), {} remote MACs, underlay MTU {}",
                s.bridge,
                s.port,
                v.encapsulated,
                v.encapsulated_bytes,
                v.decapsulated,
                v.decapsulated_bytes,
                v.remote_macs,
                v.underlay_mtu
            );
        }
    }
}

/// `stats --watch`: counters with the rates since `prev` (taken `dt` seconds earlier).
pub fn stats_rates(stats: &[PortStats], prev: &[PortStats], dt: Option<f64>) {
    let rate = |now: u64, then: Option<u64>| -> String {
        match (then, dt) {
            (Some(t), Some(dt)) if dt > 0.0 => human_rate(now.saturating_sub(t) as f64 / dt),
            _ => "-".into(),
        }
    };
    let rows = stats
        .iter()
        .map(|s| {
            let c = &s.counters;
            let p = prev.iter().find(|p| p.bridge == s.bridge && p.port == s.port).map(|p| &p.counters);
            let drops: u64 = c.drops.values().sum();
            vec![
                s.bridge.to_string(),
                s.port.to_string(),
                c.rx_packets.to_string(),
                rate(c.rx_packets, p.map(|p| p.rx_packets)),
                rate(c.rx_bytes * 8, p.map(|p| p.rx_bytes * 8)),
                c.tx_packets.to_string(),
                rate(c.tx_packets, p.map(|p| p.tx_packets)),
                rate(c.tx_bytes * 8, p.map(|p| p.tx_bytes * 8)),
                drops.to_string(),
                rate(drops, p.map(|p| p.drops.values().sum())),
            ]
        })
        .collect::<Vec<_>>();
    table(&["BRIDGE", "PORT", "RX-PKTS", "RX-PPS", "RX-BPS", "TX-PKTS", "TX-PPS", "TX-BPS", "DROPS", "DROPS/S"], &rows);
}

/// 1234567.0 → `1.23M` (per second).
pub fn human_rate(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
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

/// `vmnetd tap list`.
pub fn taps(taps: &[TapInfo]) {
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
    table(&["NAME", "MODE", "USER", "GROUP", "FLAGS", "MTU", "MAC", "STATE", "SOURCE", "ORIGIN"], &rows);
}

pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Config => "config",
        Source::State => "state",
        Source::None => "-",
    }
}

/// Prints rows as a left-aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
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
