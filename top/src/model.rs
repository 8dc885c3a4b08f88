//! The pure part of `vmnetd top`: what one refresh fetched, the rates between two of them,
//! the rows of the port table, their order, and how numbers are written. No terminal here.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use vmnetd_api::proto::{BridgeInfo, Counters, DatapathStats, PortInfo, PortStats, Status};

/// Everything one refresh asks the daemon for.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    /// `None` when the daemon does not answer `DatapathStats` (an older daemon).
    pub datapath: Option<DatapathStats>,
    pub stats: Vec<PortStats>,
    pub ports: Vec<PortInfo>,
    pub bridges: Vec<BridgeInfo>,
}

impl Snapshot {
    /// Whether `later` comes from the same daemon process as `self`, so counters can be
    /// subtracted (a restarted daemon starts every counter again from zero).
    pub fn same_daemon(&self, later: &Snapshot) -> bool {
        self.status.pid == later.status.pid && later.status.uptime_secs >= self.status.uptime_secs
    }
}

/// Per second, `then` → `now` over `dt` seconds. `None` without a previous value, without
/// elapsed time, or when the counter went down (the daemon, or the port, started again): a
/// reset never shows as a negative or absurdly large rate.
pub fn rate(now: u64, then: Option<u64>, dt: f64) -> Option<f64> {
    let then = then?;
    if dt.is_nan() || dt <= 0.0 || now < then {
        return None;
    }
    Some((now - then) as f64 / dt)
}

/// Bits per second from byte counters (the subtraction happens on bytes, so `* 8` never
/// overflows).
pub fn bit_rate(now: u64, then: Option<u64>, dt: f64) -> Option<f64> {
    rate(now, then, dt).map(|r| r * 8.0)
}

/// How busy the datapath thread was between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// 0.0-1.0: the share of the interval the thread was awake.
    pub busy: Option<f64>,
    pub frames_per_sec: Option<f64>,
    /// Frames per non-empty burst over the interval.
    pub mean_burst: Option<f64>,
}

/// The datapath's load between `prev` and `cur`, timed by the thread's own clock.
pub fn datapath_load(prev: Option<&DatapathStats>, cur: &DatapathStats) -> Load {
    let Some(prev) = prev else { return Load::default() };
    let Some(dt_ns) = cur.uptime_ns.checked_sub(prev.uptime_ns).filter(|d| *d > 0) else {
        return Load::default();
    };
    let busy = cur.idle_ns.checked_sub(prev.idle_ns).map(|idle| (1.0 - idle as f64 / dt_ns as f64).clamp(0.0, 1.0));
    let frames = cur.frames.checked_sub(prev.frames);
    let bursts = cur.bursts.checked_sub(prev.bursts);
    Load {
        busy,
        frames_per_sec: frames.map(|f| f as f64 / (dt_ns as f64 / 1e9)),
        mean_burst: match (frames, bursts) {
            (Some(f), Some(b)) if b > 0 => Some(f as f64 / b as f64),
            _ => None,
        },
    }
}

/// One line of the port table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortRow {
    pub bridge: String,
    pub port: String,
    /// The libvirt hook's `vm-name` external id, if any.
    pub vm: String,
    pub kind: String,
    pub vlan: String,
    pub status: String,
    pub up: bool,
    pub rx_pps: Option<f64>,
    pub rx_bps: Option<f64>,
    pub tx_pps: Option<f64>,
    pub tx_bps: Option<f64>,
    pub drops_per_sec: Option<f64>,
    /// All drops since the port was added; `None` for ports without switch counters
    /// (Linux bridge ports).
    pub drops: Option<u64>,
}

fn total_drops(c: &Counters) -> u64 {
    c.drops.values().fold(0u64, |a, d| a.saturating_add(*d))
}

/// The port table: every declared port and every port with counters, with rates over `dt`
/// seconds against `prev` (the previous refresh of the same daemon, if any). A port new
/// since `prev` shows `-` rates; one gone since is simply not there.
pub fn build_rows(prev: Option<&Snapshot>, cur: &Snapshot, dt: f64) -> Vec<PortRow> {
    let key = |b: &str, p: &str| (b.to_owned(), p.to_owned());
    let old: BTreeMap<(String, String), &Counters> = prev
        .map(|p| p.stats.iter().map(|s| (key(s.bridge.as_str(), s.port.as_str()), &s.counters)).collect())
        .unwrap_or_default();
    let mut rows: BTreeMap<(String, String), PortRow> = BTreeMap::new();
    for p in &cur.ports {
        rows.insert(
            key(p.bridge.as_str(), p.name.as_str()),
            PortRow {
                bridge: p.bridge.to_string(),
                port: p.name.to_string(),
                vm: p.external_ids.get("vm-name").cloned().unwrap_or_default(),
                kind: p.kind.type_name().to_owned(),
                vlan: p.vlan.to_string(),
                status: p.status.to_string(),
                up: p.status.is_up(),
                ..PortRow::default()
            },
        );
    }
    for s in &cur.stats {
        let k = key(s.bridge.as_str(), s.port.as_str());
        let then = old.get(&k).copied();
        let row = rows.entry(k).or_insert_with(|| PortRow {
            bridge: s.bridge.to_string(),
            port: s.port.to_string(),
            kind: "?".into(),
            status: "?".into(),
            ..PortRow::default()
        });
        let c = &s.counters;
        row.rx_pps = rate(c.rx_packets, then.map(|t| t.rx_packets), dt);
        row.rx_bps = bit_rate(c.rx_bytes, then.map(|t| t.rx_bytes), dt);
        row.tx_pps = rate(c.tx_packets, then.map(|t| t.tx_packets), dt);
        row.tx_bps = bit_rate(c.tx_bytes, then.map(|t| t.tx_bytes), dt);
        row.drops_per_sec = rate(total_drops(c), then.map(total_drops), dt);
        row.drops = Some(total_drops(c));
    }
    rows.into_values().collect()
}

/// The column the port table is ordered by (`s` cycles through them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Port name, then bridge (ascending).
    #[default]
    Port,
    Bridge,
    RxPps,
    RxBps,
    TxPps,
    TxBps,
    DropsPerSec,
    Drops,
}

impl SortKey {
    pub const ALL: [SortKey; 8] = [
        SortKey::Port,
        SortKey::Bridge,
        SortKey::RxPps,
        SortKey::RxBps,
        SortKey::TxPps,
        SortKey::TxBps,
        SortKey::DropsPerSec,
        SortKey::Drops,
    ];

    pub fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }

    /// The column header this key sorts by.
    pub fn column(self) -> &'static str {
        match self {
            SortKey::Port => "PORT",
            SortKey::Bridge => "BRIDGE",
            SortKey::RxPps => "RX pps",
            SortKey::RxBps => "RX bit/s",
            SortKey::TxPps => "TX pps",
            SortKey::TxBps => "TX bit/s",
            SortKey::DropsPerSec => "DROPS/s",
            SortKey::Drops => "DROPS",
        }
    }

    /// Names sort ascending, numbers descending (the busiest first).
    fn numeric(self) -> bool {
        !matches!(self, SortKey::Port | SortKey::Bridge)
    }

    fn value(self, r: &PortRow) -> Option<f64> {
        match self {
            SortKey::Port | SortKey::Bridge => None,
            SortKey::RxPps => r.rx_pps,
            SortKey::RxBps => r.rx_bps,
            SortKey::TxPps => r.tx_pps,
            SortKey::TxBps => r.tx_bps,
            SortKey::DropsPerSec => r.drops_per_sec,
            SortKey::Drops => r.drops.map(|d| d as f64),
        }
    }
}

/// Orders the rows by `key` (names ascending, numbers descending, `reverse` flips that).
/// Rows without a value (`-`) go last either way; ties are broken by port then bridge name,
/// so the order never flickers between refreshes.
pub fn sort_rows(rows: &mut [PortRow], key: SortKey, reverse: bool) {
    let by_name = |a: &PortRow, b: &PortRow| a.port.cmp(&b.port).then_with(|| a.bridge.cmp(&b.bridge));
    rows.sort_by(|a, b| {
        let primary = match key {
            SortKey::Port => by_name(a, b),
            SortKey::Bridge => a.bridge.cmp(&b.bridge).then_with(|| a.port.cmp(&b.port)),
            _ => match (key.value(a), key.value(b)) {
                (Some(x), Some(y)) => {
                    let o = y.total_cmp(&x); // descending
                    if reverse {
                        o.reverse()
                    } else {
                        o
                    }
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
        };
        let primary = if reverse && !key.numeric() { primary.reverse() } else { primary };
        primary.then_with(|| by_name(a, b))
    });
}

/// A rate or count with an SI prefix and three significant digits: `999`, `1.23k`, `12.3k`,
/// `123k`, `1.23M`, `4.50G`. Rates below 10 keep one decimal (`0.5`, `2.0`) so a trickle
/// does not read as zero.
pub fn human(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        return "-".into();
    }
    if v < 10.0 {
        return if v == 0.0 { "0".into() } else { format!("{v:.1}") };
    }
    const UNITS: [(f64, &str); 5] = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in UNITS {
        // Round first, so 999_999 prints as `1.00M`, not `1000k`.
        if v >= scale * 0.9995 {
            let x = v / scale;
            return if x >= 99.95 {
                format!("{x:.0}{unit}")
            } else if x >= 9.995 {
                format!("{x:.1}{unit}")
            } else {
                format!("{x:.2}{unit}")
            };
        }
    }
    format!("{v:.0}")
}

/// A count: exact below 10 000, then as [`human`] (`12.3k`).
pub fn count(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else {
        human(n as f64)
    }
}

/// An optional rate: `-` when there is none (the first screen, a new port, a reset).
pub fn human_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), human)
}

/// A percentage with one decimal, `-` when unknown.
pub fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

/// `42s`, `5m07s`, `3h05m`, `2d04h`.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match () {
        _ if d > 0 => format!("{d}d{h:02}h"),
        _ if h > 0 => format!("{h}h{m:02}m"),
        _ if m > 0 => format!("{m}m{s:02}s"),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vmnetd_api::proto::{BridgeKind, PortKind, PortStatus, Source};
    use vmnetd_api::{IfName, VlanMode};

    fn n(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }

    pub(crate) fn status(pid: u32, uptime_secs: u64) -> Status {
        Status {
            version: "0.1.0".into(),
            protocol: 1,
            pid,
            uptime_secs,
            socket: "/run/vmnetd/vmnetd.sock".into(),
            state_dir: "/var/lib/vmnetd".into(),
            run_dir: "/run/vmnetd".into(),
            config: "embedded default".into(),
            taps: 0,
            bridges: 1,
            ports: 2,
        }
    }

    pub(crate) fn stats(bridge: &str, port: &str, rx: (u64, u64), tx: (u64, u64), drops: &[(&str, u64)]) -> PortStats {
        PortStats {
            bridge: n(bridge),
            port: n(port),
            counters: Counters {
                rx_packets: rx.0,
                rx_bytes: rx.1,
                tx_packets: tx.0,
                tx_bytes: tx.1,
                drops: drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ..Counters::default()
            },
            vxlan: None,
        }
    }

    pub(crate) fn port(bridge: &str, name: &str, vm: Option<&str>) -> PortInfo {
        PortInfo {
            bridge: n(bridge),
            name: n(name),
            kind: PortKind::Netdev { ifname: n(name), io: Default::default() },
            vlan: VlanMode::default(),
            macs: vec![],
            lock_mac: false,
            isolated: false,
            ingress_rate_kbit: None,
            ingress_burst_kb: None,
            egress_rate_kbit: None,
            egress_burst_kb: None,
            ifname: Some(n(name)),
            status: PortStatus::Up { queue_pairs: None },
            source: Source::State,
            counters: None,
            kernel_vlans: None,
            vhost: None,
            vxlan: None,
            io: None,
            external_ids: vm.map(|v| [("vm-name".to_owned(), v.to_owned())].into()).unwrap_or_default(),
            creator: None,
        }
    }

    pub(crate) fn bridge(name: &str, ports: usize, fdb: usize) -> BridgeInfo {
        BridgeInfo {
            name: n(name),
            kind: BridgeKind::Builtin,
            ports,
            fdb_entries: fdb,
            ageing: 300,
            max_macs: 8192,
            source: Source::State,
            created: true,
        }
    }

    pub(crate) fn snap(pid: u32, up: u64, stats: Vec<PortStats>, ports: Vec<PortInfo>) -> Snapshot {
        Snapshot { status: status(pid, up), datapath: None, stats, ports, bridges: vec![bridge("br0", 2, 3)] }
    }

    fn row<'a>(rows: &'a [PortRow], port: &str) -> &'a PortRow {
        rows.iter().find(|r| r.port == port).unwrap_or_else(|| panic!("no row {port} in {rows:#?}"))
    }

    #[test]
    fn two_snapshots_one_second_apart_give_the_rates() {
        let a = snap(7, 10, vec![stats("br0", "pa", (100, 10_000), (50, 5_000), &[("no_destination", 3)])], vec![]);
        let b = snap(
            7,
            11,
            vec![stats(
                "br0",
                "pa",
                (1100, 1_510_000),
                (550, 255_000),
                &[("no_destination", 5), ("vlan_not_allowed", 4)],
            )],
            vec![],
        );
        let rows = build_rows(Some(&a), &b, 1.0);
        let r = row(&rows, "pa");
        assert_eq!(r.rx_pps, Some(1000.0));
        assert_eq!(r.rx_bps, Some(1_500_000.0 * 8.0));
        assert_eq!(r.tx_pps, Some(500.0));
        assert_eq!(r.tx_bps, Some(2_000_000.0));
        assert_eq!(r.drops_per_sec, Some(6.0));
        assert_eq!(r.drops, Some(9));
        assert_eq!(human_opt(r.rx_bps), "12.0M");

        // Half a second: twice the rate.
        let rows = build_rows(Some(&a), &b, 0.5);
        assert_eq!(row(&rows, "pa").rx_pps, Some(2000.0));
    }

    #[test]
    fn the_first_screen_has_no_rates() {
        let a = snap(7, 10, vec![stats("br0", "pa", (100, 10_000), (50, 5_000), &[])], vec![port("br0", "pa", None)]);
        let rows = build_rows(None, &a, 1.0);
        let r = row(&rows, "pa");
        assert_eq!((r.rx_pps, r.rx_bps, r.tx_pps, r.tx_bps, r.drops_per_sec), (None, None, None, None, None));
        assert_eq!(r.drops, Some(0));
        assert_eq!(human_opt(r.rx_pps), "-");
        // No elapsed time: no rates either (never a division by zero).
        let rows = build_rows(Some(&a), &a, 0.0);
        assert_eq!(row(&rows, "pa").rx_pps, None);
    }

    #[test]
    fn a_counter_going_down_gives_no_rate() {
        // The daemon restarted (or the port was removed and added again) between refreshes.
        let a = snap(7, 100, vec![stats("br0", "pa", (1_000_000, 1_000_000_000), (10, 1000), &[("x", 50)])], vec![]);
        let b = snap(7, 101, vec![stats("br0", "pa", (20, 2_000), (30, 3000), &[("x", 1)])], vec![]);
        let rows = build_rows(Some(&a), &b, 1.0);
        let r = row(&rows, "pa");
        assert_eq!(r.rx_pps, None);
        assert_eq!(r.rx_bps, None);
        assert_eq!(r.drops_per_sec, None);
        // A counter that did not go down still has its rate.
        assert_eq!(r.tx_pps, Some(20.0));
        assert_eq!(rate(5, Some(u64::MAX), 1.0), None);
        assert_eq!(rate(u64::MAX, Some(0), 1.0), Some(u64::MAX as f64));
        assert_eq!(bit_rate(u64::MAX, Some(u64::MAX - 1), 1.0), Some(8.0));
    }

    #[test]
    fn a_restarted_daemon_is_another_daemon() {
        let a = snap(7, 100, vec![], vec![]);
        assert!(a.same_daemon(&snap(7, 101, vec![], vec![])));
        assert!(!a.same_daemon(&snap(8, 101, vec![], vec![])), "new pid");
        assert!(!a.same_daemon(&snap(7, 3, vec![], vec![])), "uptime went back");
    }

    #[test]
    fn ports_that_appear_and_disappear() {
        let a = snap(
            7,
            10,
            vec![stats("br0", "old", (10, 1000), (10, 1000), &[]), stats("br0", "pa", (10, 1000), (0, 0), &[])],
            vec![port("br0", "old", None), port("br0", "pa", None)],
        );
        let b = snap(
            7,
            11,
            vec![stats("br0", "pa", (20, 2000), (0, 0), &[]), stats("br0", "new", (5, 500), (0, 0), &[])],
            vec![port("br0", "pa", None), port("br0", "new", Some("guest1")), port("br1", "lnx", None)],
        );
        let rows = build_rows(Some(&a), &b, 1.0);
        let names: Vec<&str> = rows.iter().map(|r| r.port.as_str()).collect();
        assert!(!names.contains(&"old"), "{names:?}");
        assert_eq!(row(&rows, "pa").rx_pps, Some(10.0));
        let new = row(&rows, "new");
        assert_eq!(new.rx_pps, None, "a new port has no previous reading");
        assert_eq!(new.vm, "guest1");
        // A port without counters (a Linux bridge port) is listed, with no numbers.
        let lnx = row(&rows, "lnx");
        assert_eq!((lnx.rx_pps, lnx.drops), (None, None));
        assert_eq!(lnx.kind, "netdev");
        assert_eq!(lnx.status, "up");
        assert_eq!(lnx.vlan, "access 1");
    }

    #[test]
    fn the_same_port_name_on_two_bridges_is_two_rows() {
        let a = snap(
            7,
            10,
            vec![stats("br0", "p", (10, 0), (0, 0), &[]), stats("br1", "p", (100, 0), (0, 0), &[])],
            vec![],
        );
        let b = snap(
            7,
            11,
            vec![stats("br0", "p", (11, 0), (0, 0), &[]), stats("br1", "p", (200, 0), (0, 0), &[])],
            vec![],
        );
        let rows = build_rows(Some(&a), &b, 1.0);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows.iter().map(|r| (r.bridge.as_str(), r.rx_pps)).collect::<Vec<_>>(),
            [("br0", Some(1.0)), ("br1", Some(100.0))]
        );
    }

    #[test]
    fn sorting() {
        let mk = |bridge: &str, port: &str, rx: Option<f64>| PortRow {
            bridge: bridge.into(),
            port: port.into(),
            rx_pps: rx,
            ..PortRow::default()
        };
        let mut rows = vec![
            mk("br1", "b", Some(5.0)),
            mk("br0", "c", None),
            mk("br0", "a", Some(1.0)),
            mk("br0", "b", Some(50.0)),
        ];
        let order = |rows: &[PortRow]| rows.iter().map(|r| format!("{}/{}", r.bridge, r.port)).collect::<Vec<_>>();
        sort_rows(&mut rows, SortKey::Port, false);
        assert_eq!(order(&rows), ["br0/a", "br0/b", "br1/b", "br0/c"]);
        sort_rows(&mut rows, SortKey::Port, true);
        assert_eq!(order(&rows), ["br0/c", "br1/b", "br0/b", "br0/a"]);
        sort_rows(&mut rows, SortKey::Bridge, false);
        assert_eq!(order(&rows), ["br0/a", "br0/b", "br0/c", "br1/b"]);
        sort_rows(&mut rows, SortKey::RxPps, false);
        assert_eq!(order(&rows), ["br0/b", "br1/b", "br0/a", "br0/c"], "busiest first, `-` last");
        sort_rows(&mut rows, SortKey::RxPps, true);
        assert_eq!(order(&rows), ["br0/a", "br1/b", "br0/b", "br0/c"], "reversed, `-` still last");

        let mut k = SortKey::default();
        let mut seen = vec![k];
        for _ in 0..SortKey::ALL.len() {
            k = k.next();
            seen.push(k);
        }
        assert_eq!(seen.first(), seen.last(), "s cycles back to the port name");
        assert_eq!(seen[1..].len(), SortKey::ALL.len());
    }

    #[test]
    fn datapath_load_over_an_interval() {
        let a = DatapathStats {
            uptime_ns: 1_000_000_000,
            idle_ns: 900_000_000,
            bursts: 10,
            frames: 40,
            burst_sizes: vec![],
        };
        let b = DatapathStats {
            uptime_ns: 2_000_000_000,
            idle_ns: 1_650_000_000,
            bursts: 110,
            frames: 440,
            burst_sizes: vec![],
        };
        let l = datapath_load(Some(&a), &b);
        assert!((l.busy.unwrap() - 0.25).abs() < 1e-9, "{l:?}");
        assert_eq!(l.frames_per_sec, Some(400.0));
        assert_eq!(l.mean_burst, Some(4.0));
        assert_eq!(percent(l.busy), "25.0%");
        assert_eq!(datapath_load(None, &b), Load::default());
        // Restarted thread: its clock went back.
        assert_eq!(datapath_load(Some(&b), &a), Load::default());
        // An idle interval: no bursts, no mean burst size.
        let idle = DatapathStats { uptime_ns: 3_000_000_000, idle_ns: 2_650_000_000, ..b.clone() };
        let l = datapath_load(Some(&b), &idle);
        assert_eq!((l.busy, l.frames_per_sec, l.mean_burst), (Some(0.0), Some(0.0), None));
    }

    #[test]
    fn human_numbers() {
        let cases = [
            (0.0, "0"),
            (0.5, "0.5"),
            (9.94, "9.9"),
            (10.0, "10"),
            (999.0, "999"),
            (999.6, "1.00k"),
            (1234.0, "1.23k"),
            (12_345.0, "12.3k"),
            (123_456.0, "123k"),
            (999_999.0, "1.00M"),
            (1_234_567.0, "1.23M"),
            (4.5e9, "4.50G"),
            (2.5e13, "25.0T"),
            (-1.0, "-"),
            (f64::NAN, "-"),
        ];
        for (v, want) in cases {
            assert_eq!(human(v), want, "{v}");
        }
        assert_eq!(human_opt(None), "-");
        assert_eq!((count(7), count(9999), count(12_345)), ("7".into(), "9999".into(), "12.3k".into()));
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(307), "5m07s");
        assert_eq!(uptime(3 * 3600 + 5 * 60 + 9), "3h05m");
        assert_eq!(uptime(2 * 86_400 + 4 * 3600), "2d04h");
    }
}
