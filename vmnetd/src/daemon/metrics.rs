//! Prometheus metrics (`[metrics] listen = ...`): the counters the switch and the daemon
//! already keep, read when a scraper asks and never otherwise.
//!
//! A scrape takes one snapshot under the daemon's lock (declarations, port views, FDB sizes,
//! the datapath thread's load: the same reads as `port list` and `stats`), then encodes it
//! with `prometheus-client` in the OpenMetrics text format. Nothing on the datapath counts
//! for metrics' sake; a daemon nobody scrapes pays nothing.
//!
//! The listener is plain HTTP/1.1 (hyper): `GET /metrics` (and `/` pointing there). It is
//! off unless configured, binds where the config says (a loopback address or a Unix
//! socket is what we document), serves at most [`MAX_CONNECTIONS`] clients at once, and
//! drops a client that does not send its request headers within [`HEADER_TIMEOUT`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::api::{BridgeInfo, BridgeKind, DatapathStats, PortInfo, PortListReq, PortStatus, Status};

use super::core::Core;

/// Clients served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// A client must send its request headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `[metrics]`: where to serve `/metrics`. Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `HOST:PORT` (e.g. `127.0.0.1:9464`, `[::1]:9464`), or `unix:/PATH` / an absolute path
    /// for a Unix socket (mode 0660, group `socket_group`).
    #[serde(default)]
    pub listen: Option<String>,
}

/// Where the metrics listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = PathBuf::from(p);
            return if p.is_absolute() {
                Ok(Listen::Unix(p))
            } else {
                Err(format!("{s}: the socket path must be absolute"))
            };
        }
        if s.starts_with('/') {
            return Ok(Listen::Unix(s.into()));
        }
        s.parse().map(Listen::Tcp).map_err(|_| format!("{s} is neither HOST:PORT nor unix:/PATH"))
    }
}

/// Everything one scrape reports, read under the daemon's lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub status: Option<Status>,
    pub bridges: Vec<BridgeInfo>,
    pub ports: Vec<PortInfo>,
    /// Learned addresses per (bridge, VLAN) of built-in bridges.
    pub fdb: BTreeMap<(String, u16), u64>,
    pub datapath: Option<DatapathStats>,
    /// Declared TAPs, and how many of them exist.
    pub taps: (u64, u64),
}

impl Snapshot {
    pub async fn take(core: &Mutex<Core>) -> Snapshot {
        let c = core.lock().await;
        let mut s = Snapshot { status: Some(c.status()), ..Default::default() };
        s.bridges = c.bridge_list().await.unwrap_or_default();
        s.ports = c.port_list(PortListReq::default()).await.unwrap_or_default();
        for b in s.bridges.iter().filter(|b| b.kind == BridgeKind::Builtin) {
            // Counted on the datapath thread: no row per entry is made.
            let name = b.name.to_string();
            let counts =
                c.dp.call(move |dp| {
                    let now = dp.now();
                    let mut m: BTreeMap<u16, u64> = BTreeMap::new();
                    if let Some(br) = dp.bridge(&name) {
                        for e in br.switch.fdb().entries(now) {
                            *m.entry(e.vlan.get()).or_default() += 1;
                        }
                    }
                    m
                })
                .await
                .unwrap_or_default();
            for (vlan, n) in counts {
                s.fdb.insert((b.name.to_string(), vlan), n);
            }
        }
        s.datapath = c.datapath_stats().await.ok();
        if let Ok(taps) = c.tap_list().await {
            s.taps = (taps.len() as u64, taps.iter().filter(|t| t.present).count() as u64);
        }
        s
    }

    /// The OpenMetrics text of this snapshot.
    pub fn encode(self) -> String {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

type Labels = Vec<(&'static str, String)>;

/// A label value as the exposition format needs it: `prometheus-client` writes values as
/// given, and names and labels come from clients (a `"` in a VM name must not end the value
/// and forge another label).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str(r"\\"),
            '"' => o.push_str(r#"\""#),
            '\n' => o.push_str(r"\n"),
            c => o.push(c),
        }
    }
    o
}

fn port_labels(p: &PortInfo) -> Labels {
    let mut l = vec![
        ("bridge", esc(p.bridge.as_str())),
        ("port", esc(p.name.as_str())),
        ("kind", p.kind.type_name().to_owned()),
    ];
    for (key, label) in [("vm-name", "vm_name"), ("vm-uuid", "vm_uuid")] {
        if let Some(v) = p.external_ids.get(key) {
            l.push((label, esc(v)));
        }
    }
    l
}

fn status_name(s: &PortStatus) -> &'static str {
    match s {
        PortStatus::Up { .. } => "up",
        PortStatus::VlanDrift => "vlan-drift",
        PortStatus::WaitingForFrontend => "waiting-for-frontend",
        PortStatus::SettingUp => "setting-up",
        PortStatus::NeedsReset { .. } => "needs-reset",
        PortStatus::Down { .. } => "down",
        PortStatus::Missing { .. } => "missing",
        _ => "other",
    }
}

/// One metric family: its descriptor, then each (labels, value).
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in rows {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let e = &mut enc;
        if let Some(st) = &self.status {
            let mut m = e.encode_descriptor("vmnetd_build", "vmnetd's version", None, MetricType::Info)?;
            m.encode_info(&vec![("version", st.version.clone()), ("protocol", st.protocol.to_string())])?;
            family(
                e,
                "vmnetd_uptime_seconds",
                "Seconds since the daemon started",
                Gauge,
                [(vec![], gauge(st.uptime_secs as i64))],
            )?;
        }
        family(
            e,
            "vmnetd_taps",
            "Declared TAP devices, by whether the device exists",
            Gauge,
            [
                (vec![("present", "true".to_owned())], gauge(self.taps.1 as i64)),
                (vec![("present", "false".to_owned())], gauge((self.taps.0 - self.taps.1) as i64)),
            ],
        )?;
        family(
            e,
            "vmnetd_bridge_ports",
            "Ports declared on each bridge",
            Gauge,
            self.bridges
                .iter()
                .map(|b| (vec![("bridge", esc(b.name.as_str())), ("kind", b.kind.to_string())], gauge(b.ports as i64))),
        )?;
        family(
            e,
            "vmnetd_bridge_fdb_entries",
            "Addresses in each bridge's learning table",
            Gauge,
            self.bridges.iter().map(|b| {
                (vec![("bridge", esc(b.name.as_str())), ("kind", b.kind.to_string())], gauge(b.fdb_entries as i64))
            }),
        )?;
        family(
            e,
            "vmnetd_bridge_fdb_vlan_entries",
            "Addresses in a built-in bridge's learning table, by VLAN",
            Gauge,
            self.fdb.iter().map(|((b, v), n)| (vec![("bridge", esc(b)), ("vlan", v.to_string())], gauge(*n as i64))),
        )?;
        family(
            e,
            "vmnetd_port_up",
            "1 when frames flow through the port, else 0 (see vmnetd_port_status)",
            Gauge,
            self.ports.iter().map(|p| (port_labels(p), gauge(matches!(p.status, PortStatus::Up { .. }) as i64))),
        )?;
        family(
            e,
            "vmnetd_port_status",
            "The port's status (the one with value 1)",
            Gauge,
            self.ports.iter().map(|p| {
                let mut l = port_labels(p);
                l.push(("status", status_name(&p.status).to_owned()));
                (l, gauge(1))
            }),
        )?;
        let counted = || self.ports.iter().filter_map(|p| p.counters.as_ref().map(|c| (p, c)));
        type Pick = fn(&crate::api::Counters) -> u64;
        let per_port: [(&str, &str, Pick); 7] = [
            ("vmnetd_port_rx_packets", "Frames received from the port", |c| c.rx_packets),
            ("vmnetd_port_rx_bytes", "Bytes received from the port", |c| c.rx_bytes),
            ("vmnetd_port_tx_packets", "Frames sent to the port", |c| c.tx_packets),
            ("vmnetd_port_tx_bytes", "Bytes sent to the port", |c| c.tx_bytes),
            ("vmnetd_port_rx_flooded", "Frames from the port flooded (unknown or broadcast destination)", |c| {
                c.rx_flooded
            }),
            ("vmnetd_port_learned", "Addresses learned on the port", |c| c.learned),
            ("vmnetd_port_fdb_moves", "Addresses that moved to the port from another", |c| c.moved_in),
        ];
        for (name, help, pick) in per_port {
            family(e, name, help, Counter, counted().map(|(p, c)| (port_labels(p), counter(pick(c)))))?;
        }
        family(
            e,
            "vmnetd_port_drops",
            "Frames dropped at the port, by reason",
            Counter,
            counted().flat_map(|(p, c)| {
                c.drops.iter().map(move |(reason, n)| {
                    let mut l = port_labels(p);
                    l.push(("reason", esc(reason)));
                    (l, counter(*n))
                })
            }),
        )?;
        let vhost = || self.ports.iter().filter_map(|p| p.vhost.as_ref().map(|v| (p, v)));
        family(
            e,
            "vmnetd_vhost_connected",
            "1 when a vhost-user frontend is connected to the port",
            Gauge,
            vhost().map(|(p, v)| (port_labels(p), gauge(v.connected as i64))),
        )?;
        family(
            e,
            "vmnetd_vhost_connections",
            "vhost-user frontend connections since the port was attached (reconnects = this - 1)",
            Counter,
            vhost().map(|(p, v)| (port_labels(p), counter(v.connections))),
        )?;
        family(
            e,
            "vmnetd_vhost_queue_pairs_active",
            "Queue pairs the guest uses",
            Gauge,
            vhost().map(|(p, v)| (port_labels(p), gauge(v.queue_pairs_active as i64))),
        )?;
        let tunnels = || self.ports.iter().filter_map(|p| p.vxlan.as_ref().map(|v| (p, v)));
        family(
            e,
            "vmnetd_vxlan_encapsulated_packets",
            "Frames a tunnel port encapsulated",
            Counter,
            tunnels().map(|(p, v)| (port_labels(p), counter(v.encapsulated))),
        )?;
        family(
            e,
            "vmnetd_vxlan_decapsulated_packets",
            "Frames a tunnel port decapsulated",
            Counter,
            tunnels().map(|(p, v)| (port_labels(p), counter(v.decapsulated))),
        )?;
        if let Some(d) = &self.datapath {
            let secs = |ns: u64| ns as f64 / 1e9;
            family(
                e,
                "vmnetd_datapath_seconds",
                "Time of the datapath thread, by state (idle: asleep waiting for frames; busy: moving frames, polling, housekeeping)",
                Counter,
                [
                    (vec![("state", "idle".to_owned())], ConstCounter::new(secs(d.idle_ns))),
                    (vec![("state", "busy".to_owned())], ConstCounter::new(secs(d.uptime_ns.saturating_sub(d.idle_ns)))),
                ],
            )?;
            family(
                e,
                "vmnetd_datapath_frames",
                "Frames the datapath received, in bursts",
                Counter,
                [(vec![], counter(d.frames))],
            )?;
            let mut m = e.encode_descriptor(
                "vmnetd_datapath_burst_frames",
                "Frames per burst the datapath received",
                None,
                MetricType::Histogram,
            )?;
            let buckets: Vec<(f64, u64)> = d
                .burst_sizes
                .iter()
                .map(|(le, n)| (if *le == u32::MAX { f64::MAX } else { f64::from(*le) }, *n))
                .collect();
            m.encode_histogram::<Labels>(d.frames as f64, d.bursts, &buckets, None)?;
        }
        Ok(())
    }
}

/// Starts the listener; errors (a bad address, a port in use) are the caller's to report.
/// The last exposition and when it was made: scrapers within [`CACHE_FOR`] of it share it,
/// and only one snapshot is taken at a time, however many clients ask.
type Cache = Arc<Mutex<Option<(std::time::Instant, Arc<String>)>>>;
/// How long one snapshot serves.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

async fn exposition(core: &Mutex<Core>, cache: &Cache) -> Arc<String> {
    let mut c = cache.lock().await;
    if let Some((at, text)) = c.as_ref() {
        if at.elapsed() < CACHE_FOR {
            return text.clone();
        }
    }
    let text = Arc::new(Snapshot::take(core).await.encode());
    *c = Some((std::time::Instant::now(), text.clone()));
    text
}

pub async fn spawn(core: Arc<Mutex<Core>>, listen: &str, group: Option<&str>) -> Result<(), String> {
    let at: Listen = listen.parse()?;
    let cache: Cache = Arc::new(Mutex::new(None));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    match at {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            log::info!("metrics: http://{addr}/metrics");
            tokio::spawn(accept_loop(l, core, cache, slots));
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            if let Some(g) = group.and_then(|g| crate::users::resolve_group(g).ok()) {
                let _ = nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(g.id)));
            }
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660));
            log::info!("metrics: unix:{} (GET /metrics)", path.display());
            tokio::spawn(accept_loop(l, core, cache, slots));
        }
    }
    Ok(())
}

/// A listener the metrics server accepts clients from (TCP or a Unix socket).
trait Listener: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn next(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts clients while a connection slot is free, each served on its own task.
async fn accept_loop<L: Listener>(l: L, core: Arc<Mutex<Core>>, cache: Cache, slots: Arc<tokio::sync::Semaphore>) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        match l.next().await {
            Ok(s) => serve(core.clone(), cache.clone(), s, permit),
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn serve<S>(core: Arc<Mutex<Core>>, cache: Cache, stream: S, permit: tokio::sync::OwnedSemaphorePermit)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Response, StatusCode};
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let core = core.clone();
            let cache = cache.clone();
            async move {
                let reply = |code: StatusCode, ctype: &'static str, body: String| {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = code;
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
                    Ok::<_, std::convert::Infallible>(r)
                };
                if req.method() != Method::GET && req.method() != Method::HEAD {
                    return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
                }
                match req.uri().path() {
                    "/metrics" => {
                        let text = String::clone(&*exposition(&core, &cache).await);
                        reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
                    }
                    "/" => reply(StatusCode::OK, "text/html", "<a href=\"/metrics\">/metrics</a>\n".into()),
                    _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n".into()),
                }
            }
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(64 * 1024)
            .serve_connection(io, svc);
        // A client that keeps a connection open without asking is cut after a while.
        let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!("127.0.0.1:9464".parse::<Listen>().unwrap(), Listen::Tcp("127.0.0.1:9464".parse().unwrap()));
        assert_eq!("unix:/run/m.sock".parse::<Listen>().unwrap(), Listen::Unix("/run/m.sock".into()));
        assert_eq!("/run/m.sock".parse::<Listen>().unwrap(), Listen::Unix("/run/m.sock".into()));
        assert!("unix:rel.sock".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
    }

    #[test]
    fn a_snapshot_encodes_every_family_once() {
        let port: PortInfo = serde_json::from_value(serde_json::json!({
            "bridge": "br0", "name": "vm1", "kind": {"type": "internal"}, "vlan": {"mode": "access", "vlan": 10},
            "macs": [], "lock_mac": false, "ifname": "vm1", "status": {"state": "up"}, "source": "state",
            "counters": {"rx_packets": 5, "rx_bytes": 500, "tx_packets": 7, "tx_bytes": 700, "rx_flooded": 1,
                "learned": 1, "evicted": 0, "aged": 0, "moved_in": 0, "drops": {"vlan": 2}},
            "external_ids": {"vm-name": "web", "vm-uuid": "u-1"},
            "vhost": {"socket": "/run/vmnetd/vm1.sock", "mode": "server", "connected": true, "connections": 2,
                "features": [], "queue_pairs_active": 1, "queue_pairs_max": 1}
        }))
        .unwrap();
        let bridge: BridgeInfo = serde_json::from_value(serde_json::json!({
            "name": "br0", "kind": "builtin", "ports": 1, "fdb_entries": 3, "ageing": 300, "max_macs": 8192,
            "source": "state", "created": false
        }))
        .unwrap();
        let mut port = port;
        port.external_ids.insert("vm-name".into(), "we\"b".into());
        let s = Snapshot {
            ports: vec![port],
            bridges: vec![bridge],
            fdb: [(("br0".to_owned(), 10), 3)].into(),
            datapath: Some(DatapathStats {
                uptime_ns: 10_000_000_000,
                idle_ns: 9_000_000_000,
                bursts: 3,
                frames: 40,
                burst_sizes: crate::datapath::BURST_BUCKETS.iter().map(|b| (*b, u64::from(*b == 32) * 3)).collect(),
            }),
            ..Default::default()
        };
        let text = s.encode();
        assert!(
            text.contains(
                r#"vmnetd_port_rx_packets_total{bridge="br0",port="vm1",kind="internal",vm_name="we\"b",vm_uuid="u-1"} 5"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"vmnetd_port_drops_total{bridge="br0",port="vm1",kind="internal",vm_name="we\"b",vm_uuid="u-1",reason="vlan"} 2"#), "{text}");
        assert!(text.contains(r#"vmnetd_datapath_seconds_total{state="busy"} 1.0"#), "{text}");
        assert!(text.contains(r#"vmnetd_vhost_connections_total{bridge="br0",port="vm1",kind="internal",vm_name="we\"b",vm_uuid="u-1"} 2"#), "{text}");
        assert!(text.contains(r#"vmnetd_bridge_fdb_vlan_entries{bridge="br0",vlan="10"} 3"#), "{text}");
        assert!(text.contains(r#"vmnetd_datapath_burst_frames_bucket{le="32.0"} 3"#), "{text}");
        assert!(text.contains(r#"vmnetd_datapath_burst_frames_bucket{le="+Inf"} 3"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // Every metric the example Grafana dashboard queries is one this exposes.
        let dash = include_str!("../../../examples/grafana-dashboard.json");
        let exposed: std::collections::HashSet<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        let mut rest = dash;
        while let Some(i) = rest.find("vmnetd_") {
            let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            if name == "vmnetd_build_info" {
                continue; // the snapshot has no status
            }
            assert!(exposed.contains(name.as_str()), "the dashboard queries {name}, which /metrics does not have");
        }
        let families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let unique: std::collections::HashSet<&&str> = families.iter().collect();
        assert_eq!(families.len(), unique.len(), "{text}");
    }
}
