//! `vmnetd top`: a live view of a running daemon — per-port packet and bit rates, drops,
//! bridges and their FDB sizes, and how busy the datapath thread is — refreshed every
//! interval, in a terminal (ratatui on crossterm).
//!
//! - [`model`]: the pure part: snapshots, rates between two of them, rows, sorting, number
//!   formatting.
//! - [`app`]: the view's state and what keys do to it.
//! - `ui`: drawing.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) however `run` ends:
//! a return, an error, or a panic (a panic hook restores it before the message is printed).
//! A daemon that goes away is said in the header and asked again every interval.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event, KeyEventKind};
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use vmnetd_api::client::{self, Client};
use vmnetd_api::proto::{
    error_chain, BridgeInfo, DatapathStats, Op, PortInfo, PortListReq, PortStats, StatsReq, Status,
};

pub mod app;
pub mod model;
mod ui;

use app::{Action, App};
use model::Snapshot;

/// Runs the live view against the daemon at `socket` until the user quits (q, Esc, Ctrl-C).
pub fn run(socket: &Path, interval: Duration) -> anyhow::Result<()> {
    if !io::stdout().is_terminal() {
        anyhow::bail!("vmnetd top needs a terminal; use `vmnetd stats --watch`");
    }
    let mut conn = Conn::new(socket, interval);
    let mut app = App::new(socket.display().to_string(), interval);
    // Test hook (as the daemon's): `P` panics, to show the terminal is put back then too.
    app.panic_key = std::env::var_os("VMNETD_TEST_HOOKS").is_some_and(|v| v == "1");
    let session = Session::enter()?;
    let result = (|| {
        let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout())).context("cannot set up the terminal")?;
        terminal.clear().context("cannot clear the terminal")?;
        event_loop(&mut terminal, &mut app, &mut conn)
    })();
    session.leave();
    result
}

fn event_loop<W: Write>(
    terminal: &mut Terminal<CrosstermBackend<W>>,
    app: &mut App,
    conn: &mut Conn,
) -> anyhow::Result<()> {
    let mut next = Instant::now();
    let mut dirty = true;
    loop {
        if Instant::now() >= next {
            app.update(conn.fetch());
            next += app.interval;
            // A refresh slower than the interval (a stalled daemon) does not cause a burst
            // of catch-up refreshes.
            let now = Instant::now();
            if next <= now {
                next = now + app.interval;
            }
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| ui::draw(f, app)).context("cannot draw")?;
            dirty = false;
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait).context("cannot read the terminal")? {
            match event::read().context("cannot read the terminal")? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    if app.on_key(k) == Action::Quit {
                        return Ok(());
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

/// The connection to the daemon, made again after any failure.
struct Conn {
    socket: PathBuf,
    timeout: Duration,
    client: Option<Client>,
}

impl Conn {
    fn new(socket: &Path, interval: Duration) -> Conn {
        // A stalled daemon must not freeze the view for long.
        let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
        Conn { socket: socket.to_owned(), timeout, client: None }
    }

    /// One refresh, and when its counters were read; on failure, why (and the next refresh
    /// connects again).
    fn fetch(&mut self) -> Result<(Instant, Snapshot), String> {
        let r = self.try_fetch();
        if r.is_err() {
            self.client = None;
        }
        r.map_err(|e| error_chain(&e))
    }

    fn try_fetch(&mut self) -> client::Result<(Instant, Snapshot)> {
        let c = match &mut self.client {
            Some(c) => c,
            None => {
                let mut c = Client::connect(&self.socket)?;
                c.set_timeout(self.timeout)?;
                self.client.insert(c)
            }
        };
        let status: Status = c.call(Op::Status)?;
        let at = Instant::now();
        let stats: Vec<PortStats> = c.call(Op::Stats(StatsReq::default()))?;
        // A daemon without datapath statistics still gets a view.
        let datapath = match c.call::<DatapathStats>(Op::DatapathStats) {
            Ok(d) => Some(d),
            Err(client::Error::Api(_)) => None,
            Err(e) => return Err(e),
        };
        let ports: Vec<PortInfo> = c.call(Op::PortList(PortListReq::default()))?;
        let bridges: Vec<BridgeInfo> = c.call(Op::BridgeList)?;
        Ok((at, Snapshot { status, datapath, stats, ports, bridges }))
    }
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// The terminal in raw mode on the alternate screen, with the cursor hidden. Put back when
/// [`Session::leave`] is called or the session is dropped (an early return, unwinding), and
/// by a panic hook before a panic message is printed (so it is readable, and so a build
/// with `panic = "abort"` restores too).
struct Session {
    restored: Arc<AtomicBool>,
    previous_hook: Option<Arc<PanicHook>>,
}

impl Session {
    fn enter() -> anyhow::Result<Session> {
        enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let restored = Arc::new(AtomicBool::new(false));
        let previous: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let session = Session { restored: restored.clone(), previous_hook: Some(previous.clone()) };
        std::panic::set_hook(Box::new(move |info| {
            restore(&restored);
            previous(info);
        }));
        // From here on, dropping `session` restores everything, whatever fails next.
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide).context("cannot switch to the alternate screen")?;
        Ok(session)
    }

    fn leave(self) {
        drop(self);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        restore(&self.restored);
        // The panic hook cannot be changed while this thread panics (and it does no harm:
        // it restores once, then defers to the previous one).
        if !std::thread::panicking() {
            if let Some(previous) = self.previous_hook.take() {
                let _ = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| previous(info)));
            }
        }
    }
}

/// Raw mode off, main screen back, cursor shown; once.
fn restore(done: &AtomicBool) {
    if done.swap(true, Ordering::SeqCst) {
        return;
    }
    let _ = disable_raw_mode();
    let mut out = io::stdout();
    let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
    let _ = out.flush();
}
