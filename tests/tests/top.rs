//! `vmnetd top` driven by tmux: the live view shows the ports of a built-in bridge and
//! non-zero rates while two namespaces ping each other through it, says so when the daemon
//! goes away and recovers when it is back, and puts the terminal back when it quits.
#![cfg(feature = "root-tests")]

use std::process::Command;
use std::time::Duration;

use vmnetd_tests::topo::Ns;
use vmnetd_tests::*;

/// A tmux server of its own (`-L`, no config file), with one 200x50 session running `cmd`
/// in `sh -c`. Killed on drop, with everything running in it, so nothing outlives a
/// failing test.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(tag: &str, cmd: &str) -> Tmux {
        let t = Tmux { name: format!("vmnetd-top-{}-{tag}", std::process::id()) };
        t.tmux(&["new-session", "-d", "-x", "200", "-y", "50", "-s", "top", cmd]).ok();
        t
    }

    fn tmux(&self, args: &[&str]) -> Out {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.name, "-f", "/dev/null"]).args(args).env("TERM", "xterm-256color").env_remove("TMUX");
        run_cmd(&mut c)
    }

    /// What the pane shows now (the alternate screen while the view runs).
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"]).stdout
    }

    /// A pane format variable (`alternate_on`, `cursor_flag`, ...).
    fn pane(&self, var: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "top", &format!("#{{{var}}}")]).ok().trim().to_owned()
    }

    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", "top", keys]).ok();
    }

    /// Polls the screen until `f` accepts it; panics with the last screen (and `context`)
    /// after `timeout`.
    #[track_caller]
    fn wait_screen(&self, what: &str, timeout: Duration, context: &dyn Fn() -> String, f: impl Fn(&str) -> bool) {
        let mut last = String::new();
        if !wait_until(timeout, || {
            last = self.screen();
            f(&last)
        }) {
            panic!("the screen did not show {what} within {timeout:?}:\n{last}\n{}", context());
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// A child process killed (and reaped) on drop.
struct Bg(std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pane's command: the view, then its exit status and the terminal's modes (as `stty`
/// sees them once it is gone) and a marker that the report is whole, then a pause so the
/// pane stays to be read.
fn top_then_report(socket: &std::path::Path, env: &str) -> String {
    format!(
        "{env} '{}' --socket '{}' top --interval 0.5; echo \"TOP-EXIT=$?\"; stty -a; echo REPORT-END; exec sleep 600",
        bin("vmnetd").display(),
        socket.display()
    )
}

/// The six rate and drop columns at the end of `port`'s row (RX pps, RX bit/s, TX pps,
/// TX bit/s, DROPS/s, DROPS), if the row is on the screen.
fn rates(screen: &str, port: &str) -> Option<Vec<String>> {
    let line = screen.lines().find(|l| l.split_whitespace().any(|w| w == port))?;
    let cols: Vec<&str> = line.split_whitespace().filter(|w| *w != "│").collect();
    Some(cols[cols.len().checked_sub(6)?..].iter().map(|s| s.to_string()).collect())
}

fn nonzero(v: &str) -> bool {
    v != "-" && v.trim_end_matches(['k', 'M', 'G']).parse::<f64>().is_ok_and(|x| x > 0.0)
}

/// The view quit on `q` and left the terminal as it found it: exit status 0, main screen,
/// cursor shown, canonical mode and echo on.
#[track_caller]
fn quit_and_check_restored(t: &Tmux, context: &dyn Fn() -> String) {
    t.keys("q");
    let s = check_restored(t, context);
    assert!(s.contains("TOP-EXIT=0"), "vmnetd top failed:\n{s}");
}

/// Waits for the view to exit and checks it left the terminal as it found it: main screen,
/// cursor shown, canonical mode and echo on. The screen then.
#[track_caller]
fn check_restored(t: &Tmux, context: &dyn Fn() -> String) -> String {
    // The whole report, not just its first line: `stty -a` prints after `TOP-EXIT=`.
    t.wait_screen("the view's exit", Duration::from_secs(10), context, |s| {
        s.contains("TOP-EXIT=") && s.contains("REPORT-END")
    });
    let s = t.screen();
    assert_eq!(t.pane("alternate_on"), "0", "still on the alternate screen:\n{s}");
    assert_eq!(t.pane("cursor_flag"), "1", "the cursor is still hidden:\n{s}");
    let modes: Vec<&str> = s.split_whitespace().collect();
    for m in ["icanon", "echo", "isig", "opost"] {
        assert!(modes.contains(&m) && !modes.contains(&format!("-{m}").as_str()), "raw mode left on ({m}):\n{s}");
    }
    s
}

#[test]
fn top_shows_ports_and_rates_during_traffic() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let (a, b) = (Ns::new("topa"), Ns::new("topb"));
        a.veth("va", "eth0", Some("10.0.0.1/24"));
        b.veth("vb", "eth0", Some("10.0.0.2/24"));
        d.cli(&["port", "add", "br0", "port-alpha", "--netdev", "va", "--external-id", "vm-name=guest-alpha"]).ok();
        d.cli(&["port", "add", "br0", "port-beta", "--netdev", "vb"]).ok();
        assert!(a.ping("10.0.0.2", 2), "A and B must reach each other through br0");
        // 100 echo requests a second, and their replies, for at most 40 s.
        let _ping = Bg(a.spawn("ping", &["-q", "-i", "0.01", "-w", "40", "10.0.0.2"]));

        let t = Tmux::start("traffic", &top_then_report(&d.socket, ""));
        let context = || format!("--- daemon log (tail) ---\n{}", tail(&d.log_text(), 30));
        t.wait_screen("both ports with a non-zero RX rate", Duration::from_secs(20), &context, |s| {
            ["port-alpha", "port-beta"]
                .iter()
                .all(|p| rates(s, p).is_some_and(|r| nonzero(&r[0]) && nonzero(&r[1]) && nonzero(&r[2])))
        });
        let s = t.screen();
        assert_eq!(t.pane("alternate_on"), "1", "the view runs on the alternate screen:\n{s}");
        assert_eq!(t.pane("cursor_flag"), "0", "the view hides the cursor:\n{s}");
        assert!(s.contains("vmnetd ") && s.contains(" pid ") && s.contains(" up "), "no daemon in the header:\n{s}");
        assert!(s.contains("busy ") && s.contains("frames/s "), "no datapath load in the header:\n{s}");
        assert!(s.lines().any(|l| l.contains("port-alpha") && l.contains("guest-alpha")), "no VM name:\n{s}");
        assert!(s.lines().any(|l| l.contains("br0") && l.contains("builtin")), "no bridge table:\n{s}");

        // `s` sorts by the next column (the bridge), with its arrow in the header.
        t.keys("s");
        t.wait_screen("the sort column changed", Duration::from_secs(5), &context, |s| s.contains("sort: BRIDGE"));

        quit_and_check_restored(&t, &context);
    });
}

#[test]
fn top_waits_for_a_daemon_that_went_away() {
    in_netns(|| {
        let dir = test_dir();
        let mut d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        let t = Tmux::start("restart", &top_then_report(&d.socket, ""));
        let context = String::new;
        let has_bridge = |s: &str| s.lines().any(|l| l.contains("br0") && l.contains("builtin"));
        t.wait_screen("the bridge", Duration::from_secs(20), &context, has_bridge);

        d.kill();
        t.wait_screen("that the daemon is gone", Duration::from_secs(10), &context, |s| {
            s.contains("daemon not reachable: ") && !has_bridge(s)
        });
        // Still running, asking again every interval.
        std::thread::sleep(Duration::from_millis(1500));
        let s = t.screen();
        assert!(s.contains("daemon not reachable") && !s.contains("TOP-EXIT"), "{s}");

        d.restart();
        t.wait_screen("the daemon back", Duration::from_secs(20), &context, |s| {
            !s.contains("daemon not reachable") && has_bridge(s)
        });
        quit_and_check_restored(&t, &context);
    });
}

#[test]
fn top_restores_the_terminal_after_a_panic() {
    in_netns(|| {
        let dir = test_dir();
        let d = Daemon::start(dir.path());
        d.cli(&["bridge", "add", "br0"]).ok();
        // The test hook makes `P` panic inside the view.
        let t = Tmux::start("panic", &top_then_report(&d.socket, "VMNETD_TEST_HOOKS=1"));
        let context = String::new;
        t.wait_screen("the bridge", Duration::from_secs(20), &context, |s| s.contains("builtin"));
        assert_eq!(t.pane("alternate_on"), "1");
        t.keys("P");
        let s = check_restored(&t, &context);
        // The panic message was printed after the terminal was put back, so it is readable.
        assert!(s.contains("panic on request") && !s.contains("TOP-EXIT=0"), "{s}");
    });
}

#[test]
fn top_needs_a_terminal() {
    // Stdout is a pipe here.
    let out = run(bin("vmnetd"), ["--socket", "/nonexistent/vmnetd.sock", "top"]);
    let err = out.failed_one_line();
    assert!(err.contains("vmnetd top needs a terminal; use `vmnetd stats --watch`"), "{err}");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
