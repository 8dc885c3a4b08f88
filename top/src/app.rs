//! The state of the view between refreshes, and what the keys do to it (no terminal here
//! either: the loop in `lib.rs` feeds it refreshes and key presses).

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::model::{build_rows, datapath_load, sort_rows, Load, PortRow, Snapshot, SortKey};

/// What a key press asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Redraw (the view changed, or might have).
    Redraw,
    Quit,
}

pub struct App {
    pub socket: String,
    pub interval: Duration,
    pub sort: SortKey,
    pub reverse: bool,
    /// First port row shown.
    pub scroll: usize,
    /// Port rows the last draw had room for (PgUp/PgDn move by this much).
    pub page: usize,
    /// The last refresh that reached the daemon, and when its counters were read.
    pub last: Option<(Instant, Snapshot)>,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
    pub rows: Vec<PortRow>,
    pub load: Load,
    /// `P` panics (a test hook: `VMNETD_TEST_HOOKS=1`).
    pub panic_key: bool,
}

impl App {
    pub fn new(socket: String, interval: Duration) -> App {
        App {
            socket,
            interval,
            sort: SortKey::default(),
            reverse: false,
            scroll: 0,
            page: 10,
            last: None,
            error: None,
            rows: Vec::new(),
            load: Load::default(),
            panic_key: false,
        }
    }

    /// Takes one refresh: a snapshot whose counters were read at `at`, or why there is none.
    /// Rates are against the previous snapshot of the same daemon process; after a failure
    /// or a daemon restart the next screen starts again without rates.
    pub fn update(&mut self, fetched: Result<(Instant, Snapshot), String>) {
        match fetched {
            Ok((at, snap)) => {
                let prev = self.last.take().filter(|(_, p)| p.same_daemon(&snap));
                let dt = prev.as_ref().map_or(0.0, |(t, _)| at.saturating_duration_since(*t).as_secs_f64());
                let prev = prev.as_ref().map(|(_, p)| p);
                self.rows = build_rows(prev, &snap, dt);
                sort_rows(&mut self.rows, self.sort, self.reverse);
                self.load = match &snap.datapath {
                    Some(d) => datapath_load(prev.and_then(|p| p.datapath.as_ref()), d),
                    None => Load::default(),
                };
                self.error = None;
                self.last = Some((at, snap));
            }
            Err(e) => {
                self.error = Some(e);
                self.last = None;
                self.rows.clear();
                self.load = Load::default();
            }
        }
        self.clamp_scroll();
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.last.as_ref().map(|(_, s)| s)
    }

    fn max_scroll(&self) -> usize {
        self.rows.len().saturating_sub(self.page.max(1))
    }

    pub fn clamp_scroll(&mut self) {
        self.scroll = self.scroll.min(self.max_scroll());
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        let page = self.page.max(1);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Action::Quit,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.reverse = false;
                sort_rows(&mut self.rows, self.sort, self.reverse);
            }
            KeyCode::Char('r') => {
                self.reverse = !self.reverse;
                sort_rows(&mut self.rows, self.sort, self.reverse);
            }
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown | KeyCode::Char(' ') => self.scroll = self.scroll.saturating_add(page),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.scroll = usize::MAX,
            KeyCode::Char('P') if self.panic_key => panic!("vmnetd top: panic on request (VMNETD_TEST_HOOKS=1)"),
            _ => {}
        }
        self.clamp_scroll();
        Action::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{port, snap, stats};

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn refreshes_give_rates_and_a_lost_daemon_starts_over() {
        let mut app = App::new("s".into(), Duration::from_secs(1));
        let t0 = Instant::now();
        let ports = || vec![port("br0", "pa", None), port("br0", "pb", None)];
        let s0 = snap(
            7,
            10,
            vec![stats("br0", "pa", (0, 0), (0, 0), &[]), stats("br0", "pb", (0, 0), (0, 0), &[])],
            ports(),
        );
        app.update(Ok((t0, s0.clone())));
        assert!(app.rows.iter().all(|r| r.rx_pps.is_none()), "first screen: no rates");
        let s1 = snap(
            7,
            11,
            vec![stats("br0", "pa", (100, 6400), (0, 0), &[]), stats("br0", "pb", (3, 192), (0, 0), &[])],
            ports(),
        );
        app.update(Ok((t0 + Duration::from_secs(1), s1.clone())));
        assert_eq!(
            app.rows.iter().map(|r| (r.port.as_str(), r.rx_pps)).collect::<Vec<_>>(),
            [("pa", Some(100.0)), ("pb", Some(3.0))]
        );

        app.update(Err("daemon not reachable".into()));
        assert!(app.rows.is_empty() && app.snapshot().is_none() && app.error.is_some());
        app.update(Ok((t0 + Duration::from_secs(3), s1.clone())));
        assert!(app.error.is_none());
        assert!(app.rows.iter().all(|r| r.rx_pps.is_none()), "no rates across a gap");

        // A restarted daemon (new pid) with smaller counters: no rates, nothing negative.
        app.update(Ok((t0 + Duration::from_secs(4), snap(8, 0, s0.stats.clone(), ports()))));
        assert!(app.rows.iter().all(|r| r.rx_pps.is_none()));
    }

    #[test]
    fn keys() {
        let mut app = App::new("s".into(), Duration::from_secs(1));
        let many: Vec<_> = (0..30).map(|i| stats("br0", &format!("p{i:02}"), (i, i), (0, 0), &[])).collect();
        app.update(Ok((Instant::now(), snap(1, 1, many, vec![]))));
        app.page = 10;
        assert_eq!(app.on_key(key(KeyCode::Down)), Action::Redraw);
        assert_eq!(app.scroll, 1);
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.scroll, 11);
        app.on_key(key(KeyCode::PageDown));
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.scroll, 20, "never past the last page");
        app.on_key(key(KeyCode::PageUp));
        assert_eq!(app.scroll, 10);
        app.on_key(key(KeyCode::Home));
        app.on_key(key(KeyCode::Up));
        assert_eq!(app.scroll, 0);

        assert_eq!(app.sort, SortKey::Port);
        app.on_key(key(KeyCode::Char('s')));
        assert_eq!(app.sort, SortKey::Bridge);
        app.on_key(key(KeyCode::Char('r')));
        assert!(app.reverse);
        assert_eq!(app.rows[0].port, "p29");

        assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(app.on_key(key(KeyCode::Esc)), Action::Quit);
        assert_eq!(app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
        assert_eq!(app.on_key(key(KeyCode::Char('c'))), Action::Redraw);
        assert_eq!(app.on_key(key(KeyCode::Char('P'))), Action::Redraw, "no test hook unless asked for");
    }
}
