//! Drawing the view with ratatui: a header (daemon, datapath load, keys), the port table,
//! and the bridge table.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Padding, Paragraph, Row, Table};
use ratatui::Frame;

use crate::app::App;
use crate::model::{count, human_opt, percent, uptime, PortRow, SortKey};

const NUMERIC: [SortKey; 6] =
    [SortKey::RxPps, SortKey::RxBps, SortKey::TxPps, SortKey::TxBps, SortKey::DropsPerSec, SortKey::Drops];

pub fn draw(f: &mut Frame, app: &mut App) {
    let bridges = app.snapshot().map_or(0, |s| s.bridges.len());
    let bridge_height = (bridges as u16 + 3).clamp(4, 10);
    let [head, ports, brs] =
        Layout::vertical([Constraint::Length(5), Constraint::Min(4), Constraint::Length(bridge_height)])
            .areas(f.area());
    header(f, app, head);
    port_table(f, app, ports);
    bridge_table(f, app, brs);
}

fn header(f: &mut Frame, app: &App, area: Rect) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let dim = Style::default().fg(Color::DarkGray);
    let every = format!("every {}s", app.interval.as_secs_f64());
    let first = match (&app.error, app.snapshot()) {
        (Some(e), _) => Line::from(vec![
            Span::styled(
                format!("daemon not reachable: {e}"),
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            Span::styled(format!("  (retrying {every})"), dim),
        ]),
        (None, Some(s)) => {
            let st = &s.status;
            let up = app.rows.iter().filter(|r| r.up).count();
            Line::from(vec![
                Span::styled(format!("vmnetd {}", st.version), bold),
                Span::raw(format!(
                    "  pid {}  up {}  {} bridge{}  {} port{} ({up} up)  {} TAP{}",
                    st.pid,
                    uptime(st.uptime_secs),
                    s.bridges.len(),
                    plural(s.bridges.len()),
                    app.rows.len(),
                    plural(app.rows.len()),
                    st.taps,
                    plural(st.taps),
                )),
                Span::styled(format!("  {}  {every}", app.socket), dim),
            ])
        }
        (None, None) => Line::from(Span::styled(format!("connecting to {} …", app.socket), dim)),
    };
    let datapath = match app.snapshot() {
        Some(s) if s.datapath.is_some() => Line::from(vec![
            Span::styled("datapath", bold),
            Span::raw(format!(
                "  busy {}  frames/s {}  mean burst {}",
                percent(app.load.busy),
                human_opt(app.load.frames_per_sec),
                app.load.mean_burst.map_or_else(|| "-".into(), |b| format!("{b:.1}")),
            )),
        ]),
        Some(_) => {
            Line::from(vec![Span::styled("datapath", bold), Span::raw("  (this daemon does not report its load)")])
        }
        None => Line::from(vec![Span::styled("datapath", bold), Span::raw("  -")]),
    };
    let keys = Line::from(vec![
        Span::raw(format!("sort: {} {}", app.sort.column(), arrow(app))),
        Span::styled("   q quit  s sort column  r reverse  ↑↓ PgUp PgDn Home End scroll", dim),
    ]);
    let block = Block::bordered().title(Span::styled(" vmnetd top ", bold)).padding(Padding::horizontal(1));
    f.render_widget(Paragraph::new(vec![first, datapath, keys]).block(block), area);
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `▼` for a column sorted high to low, `▲` for low to high.
fn arrow(app: &App) -> &'static str {
    let descending = NUMERIC.contains(&app.sort) != app.reverse;
    if descending {
        "▼"
    } else {
        "▲"
    }
}

/// The width of a text column: its longest cell or header (with room for the sort
/// arrow), at most `cap`.
fn width<'a>(header: &str, cells: impl Iterator<Item = &'a str>, cap: usize) -> u16 {
    let w = cells.map(|c| c.chars().count()).chain([header.chars().count() + 1]).max().unwrap_or(0);
    w.min(cap) as u16
}

/// Column widths that fit in `avail` cells: columns give up width in `shrink` order (each
/// down to its minimum) until the whole row fits, or nothing more can give.
pub(crate) fn fit(want: &[u16], min: &[u16], shrink: &[usize], avail: u16) -> Vec<u16> {
    let mut w = want.to_vec();
    let mut excess = w.iter().map(|x| u32::from(*x)).sum::<u32>().saturating_sub(u32::from(avail));
    for &i in shrink {
        if excess == 0 {
            break;
        }
        let give = u32::from(w[i].saturating_sub(min[i])).min(excess);
        w[i] -= give as u16;
        excess -= give;
    }
    w
}

/// A column of the port table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Bridge,
    Port,
    Vm,
    Kind,
    Vlan,
    Status,
    RxPps,
    RxBps,
    TxPps,
    TxBps,
    DropsPerSec,
    Drops,
}

impl Col {
    const ALL: [Col; 12] = [
        Col::Bridge,
        Col::Port,
        Col::Vm,
        Col::Kind,
        Col::Vlan,
        Col::Status,
        Col::RxPps,
        Col::RxBps,
        Col::TxPps,
        Col::TxBps,
        Col::DropsPerSec,
        Col::Drops,
    ];

    fn header(self) -> &'static str {
        match self {
            Col::Bridge => "BRIDGE",
            Col::Port => "PORT",
            Col::Vm => "VM",
            Col::Kind => "KIND",
            Col::Vlan => "VLAN",
            Col::Status => "STATUS",
            Col::RxPps => "RX pps",
            Col::RxBps => "RX bit/s",
            Col::TxPps => "TX pps",
            Col::TxBps => "TX bit/s",
            Col::DropsPerSec => "DROPS/s",
            Col::Drops => "DROPS",
        }
    }

    fn sort_key(self) -> Option<SortKey> {
        Some(match self {
            Col::Bridge => SortKey::Bridge,
            Col::Port => SortKey::Port,
            Col::RxPps => SortKey::RxPps,
            Col::RxBps => SortKey::RxBps,
            Col::TxPps => SortKey::TxPps,
            Col::TxBps => SortKey::TxBps,
            Col::DropsPerSec => SortKey::DropsPerSec,
            Col::Drops => SortKey::Drops,
            Col::Vm | Col::Kind | Col::Vlan | Col::Status => return None,
        })
    }

    fn numeric(self) -> bool {
        self.sort_key().is_some_and(|k| NUMERIC.contains(&k))
    }

    /// The text of a name column (numbers are not measured: their width is fixed).
    fn text(self, r: &PortRow) -> &str {
        match self {
            Col::Bridge => &r.bridge,
            Col::Port => &r.port,
            Col::Vm => &r.vm,
            Col::Kind => &r.kind,
            Col::Vlan => &r.vlan,
            Col::Status => &r.status,
            _ => "",
        }
    }

    /// (wanted width, narrowest width) for these rows; the sorted column has room for its
    /// arrow.
    fn widths(self, rows: &[PortRow], sort: SortKey) -> (u16, u16) {
        let arrow = u16::from(self.sort_key() == Some(sort));
        let measure = |cap| width(self.header(), rows.iter().map(|r| self.text(r)), cap);
        let (want, min) = match self {
            Col::Bridge => (measure(15), 6),
            // Port names never shrink.
            Col::Port => (measure(15), 15),
            Col::Vm => (measure(24), 4),
            Col::Kind => (measure(10), 4),
            Col::Vlan => (measure(20), 6),
            Col::Status => (measure(48), 4),
            // A value is at most 5 characters (`1.23k`, `999k`): the header decides.
            _ => {
                let h = self.header().len() as u16;
                return (h + 1, h + arrow);
            }
        };
        (want, min.min(want))
    }

    /// Which column gives up width first when the terminal is narrow (lowest first).
    fn shrink_rank(self) -> u8 {
        match self {
            Col::Status => 0,
            Col::Vlan => 1,
            Col::Vm => 2,
            Col::Kind => 3,
            Col::Bridge => 4,
            _ => 5,
        }
    }

    /// Which column goes first when even the narrowest widths do not fit (`None`: kept).
    fn drop_rank(self) -> Option<u8> {
        match self {
            Col::Vlan => Some(0),
            Col::Vm => Some(1),
            Col::Kind => Some(2),
            Col::Drops => Some(3),
            Col::Bridge => Some(4),
            Col::Status => Some(5),
            _ => None,
        }
    }

    fn cell(self, r: &PortRow) -> Cell<'static> {
        let num = |s: String| Cell::from(Line::from(s).right_aligned());
        match self {
            Col::Status => Cell::from(r.status.clone()).style(if r.up {
                Style::default().fg(Color::Green)
            } else {
                Style::default().fg(Color::Yellow)
            }),
            Col::RxPps => num(human_opt(r.rx_pps)),
            Col::RxBps => num(human_opt(r.rx_bps)),
            Col::TxPps => num(human_opt(r.tx_pps)),
            Col::TxBps => num(human_opt(r.tx_bps)),
            Col::DropsPerSec => num(human_opt(r.drops_per_sec)).style(match r.drops_per_sec {
                Some(d) if d > 0.0 => Style::default().fg(Color::Red),
                _ => Style::default(),
            }),
            Col::Drops => num(r.drops.map_or_else(|| "-".into(), count)),
            _ => Cell::from(self.text(r).to_owned()),
        }
    }
}

/// The columns shown in `inner` cells and their widths: the VM column only when some port
/// has a `vm-name`; on a narrow terminal, columns shrink (in [`Col::shrink_rank`] order) and
/// then go (in [`Col::drop_rank`] order), so port names and rates stay readable.
fn layout_columns(rows: &[PortRow], sort: SortKey, inner: u16) -> Vec<(Col, u16)> {
    let show_vm = rows.iter().any(|r| !r.vm.is_empty());
    let mut cols: Vec<Col> = Col::ALL.into_iter().filter(|c| *c != Col::Vm || show_vm).collect();
    loop {
        // One space between columns.
        let avail = inner.saturating_sub(cols.len() as u16 - 1);
        let sizes: Vec<(u16, u16)> = cols.iter().map(|c| c.widths(rows, sort)).collect();
        let min_sum: u32 = sizes.iter().map(|s| u32::from(s.1)).sum();
        let victim = cols.iter().filter_map(|c| c.drop_rank().map(|r| (r, *c))).min_by_key(|x| x.0).map(|x| x.1);
        match victim {
            Some(v) if min_sum > u32::from(avail) => cols.retain(|c| *c != v),
            _ => {
                let want: Vec<u16> = sizes.iter().map(|s| s.0).collect();
                let min: Vec<u16> = sizes.iter().map(|s| s.1).collect();
                let mut order: Vec<usize> = (0..cols.len()).collect();
                order.sort_by_key(|i| cols[*i].shrink_rank());
                return cols.into_iter().zip(fit(&want, &min, &order, avail)).collect();
            }
        }
    }
}

fn port_table(f: &mut Frame, app: &mut App, area: Rect) {
    // Borders and the header row take three lines.
    app.page = usize::from(area.height.saturating_sub(3)).max(1);
    app.clamp_scroll();
    let rows = &app.rows;
    // Inside the borders and the padding.
    let cols = layout_columns(rows, app.sort, area.width.saturating_sub(4));
    let header = Row::new(cols.iter().map(|(c, _)| {
        let text = match c.sort_key() {
            Some(k) if k == app.sort => format!("{}{}", c.header(), arrow(app)),
            _ => c.header().to_owned(),
        };
        let line = Line::from(text);
        Cell::from(if c.numeric() { line.right_aligned() } else { line })
    }))
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let body: Vec<Row> =
        rows.iter().skip(app.scroll).take(app.page).map(|r| Row::new(cols.iter().map(|(c, _)| c.cell(r)))).collect();
    let shown = if rows.len() > app.page {
        format!(" ports {}-{} of {} ", app.scroll + 1, (app.scroll + app.page).min(rows.len()), rows.len())
    } else {
        format!(" ports ({}) ", rows.len())
    };
    let table = Table::new(body, cols.iter().map(|(_, w)| Constraint::Length(*w)))
        .header(header)
        .column_spacing(1)
        .flex(Flex::Start)
        .block(Block::bordered().title(shown).padding(Padding::horizontal(1)));
    f.render_widget(table, area);
}

fn bridge_table(f: &mut Frame, app: &App, area: Rect) {
    let bridges = app.snapshot().map(|s| s.bridges.as_slice()).unwrap_or_default();
    let header = Row::new(["BRIDGE", "KIND", "PORTS", "FDB", "MAX MACS"].map(|h| {
        let l = Line::from(h);
        Cell::from(if h == "BRIDGE" || h == "KIND" { l } else { l.right_aligned() })
    }))
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let num = |n: usize| Cell::from(Line::from(n.to_string()).right_aligned());
    let body: Vec<Row> = bridges
        .iter()
        .map(|b| {
            Row::new(vec![
                Cell::from(b.name.to_string()),
                Cell::from(b.kind.to_string()),
                num(b.ports),
                num(b.fdb_entries),
                num(b.max_macs),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(15),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .flex(Flex::Start)
        .block(Block::bordered().title(format!(" bridges ({}) ", bridges.len())).padding(Padding::horizontal(1)));
    f.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use vmnetd_api::proto::DatapathStats;

    use super::*;
    use crate::model::tests::{port, snap, stats};

    fn screen(app: &mut App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>().trim_end().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn line<'a>(screen: &'a str, needle: &str) -> &'a str {
        screen.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} on\n{screen}"))
    }

    #[test]
    fn a_screen_with_rates() {
        let mut app = App::new("/run/vmnetd/vmnetd.sock".into(), Duration::from_secs(1));
        let t0 = Instant::now();
        let ports = || vec![port("br0", "port-alpha", Some("guest-one")), port("br0", "port-beta", None)];
        let dp = |up: u64, idle: u64, frames: u64, bursts: u64| {
            Some(DatapathStats { uptime_ns: up, idle_ns: idle, bursts, frames, burst_sizes: vec![] })
        };
        let mut s0 = snap(
            42,
            100,
            vec![stats("br0", "port-alpha", (0, 0), (0, 0), &[]), stats("br0", "port-beta", (0, 0), (0, 0), &[])],
            ports(),
        );
        s0.datapath = dp(1_000_000_000, 0, 0, 0);
        app.update(Ok((t0, s0)));
        let first = screen(&mut app, 200, 50);
        assert!(line(&first, "port-alpha").contains(" - "), "{first}");
        assert!(first.contains("vmnetd 0.1.0") && first.contains("pid 42") && first.contains("up 1m40s"), "{first}");

        let mut s1 = snap(
            42,
            101,
            vec![
                stats("br0", "port-alpha", (1234, 1_234_000), (10, 1000), &[("no_destination", 7)]),
                stats("br0", "port-beta", (10, 640), (1234, 1_234_000), &[]),
            ],
            ports(),
        );
        s1.datapath = dp(2_000_000_000, 750_000_000, 1244, 311);
        app.update(Ok((t0 + Duration::from_secs(1), s1)));
        let s = screen(&mut app, 200, 50);
        let alpha = line(&s, "port-alpha");
        assert!(alpha.contains("guest-one") && alpha.contains("netdev") && alpha.contains("access 1"), "{s}");
        let cols: Vec<&str> = alpha.split_whitespace().filter(|c| *c != "│").collect();
        // The last six columns: RX pps, RX bit/s, TX pps, TX bit/s, DROPS/s, DROPS.
        assert_eq!(cols[cols.len() - 6..], ["1.23k", "9.87M", "10", "8.00k", "7.0", "7"], "{s}");
        let beta: Vec<&str> = line(&s, "port-beta").split_whitespace().filter(|c| *c != "│").collect();
        assert_eq!(beta[beta.len() - 6..], ["10", "5.12k", "1.23k", "9.87M", "0", "0"], "{s}");
        let dp_line = line(&s, "datapath");
        assert!(
            dp_line.contains("busy 25.0%") && dp_line.contains("frames/s 1.24k") && dp_line.contains("mean burst 4.0")
        );
        let bridge = line(&s, "8192");
        assert!(bridge.contains("br0") && bridge.contains("builtin"), "{s}");
        assert!(line(&s, "PORT▲").contains("RX pps"), "{s}");

        // Sorted by RX pps: the busiest first.
        app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('s')));
        app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('s')));
        let s = screen(&mut app, 200, 50);
        assert!(s.find("port-alpha").unwrap() < s.find("port-beta").unwrap(), "{s}");
        assert!(s.contains("RX pps▼"), "{s}");

        // 80 columns: the port names and the rates stay whole; the VLAN and VM columns go.
        let s = screen(&mut app, 80, 14);
        let cols: Vec<&str> = line(&s, "port-alpha").split_whitespace().filter(|c| *c != "│").collect();
        assert_eq!(cols[cols.len() - 6..], ["1.23k", "9.87M", "10", "8.00k", "7.0", "7"], "{s}");
        assert!(s.contains("RX pps▼") && s.contains("TX bit/s") && !s.contains("guest-one"), "{s}");
        // 120: the VM is back.
        let s = screen(&mut app, 120, 14);
        assert!(line(&s, "port-alpha").contains("guest-one"), "{s}");

        // A small terminal still draws (columns shrink) without panicking.
        screen(&mut app, 40, 8);
        screen(&mut app, 1, 1);
    }

    #[test]
    fn columns_fit() {
        assert_eq!(fit(&[10, 20, 30], &[5, 5, 5], &[2, 0, 1], 100), [10, 20, 30]);
        assert_eq!(fit(&[10, 20, 30], &[5, 5, 5], &[2, 0, 1], 50), [10, 20, 20]);
        assert_eq!(fit(&[10, 20, 30], &[5, 5, 5], &[2, 0, 1], 30), [5, 20, 5]);
        assert_eq!(fit(&[10, 20, 30], &[5, 5, 5], &[2, 0, 1], 0), [5, 5, 5]);
    }

    #[test]
    fn a_lost_daemon_is_said_in_the_header() {
        let mut app = App::new("/tmp/x.sock".into(), Duration::from_millis(500));
        app.update(Err("vmnetd daemon is not running (nothing listens on /tmp/x.sock)".into()));
        let s = screen(&mut app, 120, 20);
        assert!(line(&s, "daemon not reachable: vmnetd daemon is not running").contains("retrying every 0.5s"), "{s}");
        assert!(s.contains("ports (0)"), "{s}");
    }

    #[test]
    fn many_ports_scroll() {
        let mut app = App::new("s".into(), Duration::from_secs(1));
        let many: Vec<_> = (0..40).map(|i| stats("br0", &format!("p{i:02}"), (0, 0), (0, 0), &[])).collect();
        app.update(Ok((Instant::now(), snap(1, 1, many, vec![]))));
        let s = screen(&mut app, 120, 30);
        // 30 lines: a 5-line header, the bridges (4), and 21 for ports: 18 rows.
        assert_eq!(app.page, 18);
        assert!(s.contains("ports 1-18 of 40") && s.contains("p17") && !s.contains("p18"), "{s}");
        app.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::End));
        let s = screen(&mut app, 120, 30);
        assert!(s.contains("ports 23-40 of 40") && s.contains("p39") && !s.contains("p21"), "{s}");
    }
}
