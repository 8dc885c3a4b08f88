//! Network topologies for tests: named namespaces as test hosts, joined to the daemon's
//! namespace by veth pairs. Every namespace is deleted on drop (its veth ends go with it).

use std::process::{Child, Command, Stdio};

use crate::{ip, run, Out};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// Creates `vmnetd-<tag>-<pid>-<n>` so parallel tests never collide.
    pub fn new(tag: &str) -> Ns {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("vt{}-{}-{tag}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        ip(&format!("netns add {name}"));
        let ns = Ns { name };
        ns.ip("link set lo up");
        // No IPv6 autoconfiguration chatter: captures then hold only what a test sends.
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    /// `ip -n NS ARGS`; must succeed.
    #[track_caller]
    pub fn ip(&self, args: &str) -> String {
        ip(&format!("-n {} {args}", self.name))
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Out {
        let mut all = vec!["netns", "exec", &self.name, prog];
        all.extend_from_slice(args);
        run("ip", all)
    }

    /// Starts a command inside the namespace in the background.
    pub fn spawn(&self, prog: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in netns")
    }

    /// A veth pair: `outer` stays in the current namespace (to become a bridge port), `eth0`
    /// goes into this namespace with `addr` (CIDR), up.
    pub fn veth(&self, outer: &str, inner: &str, addr: Option<&str>) {
        ip(&format!("link add {outer} type veth peer name {inner} netns {}", self.name));
        if let Some(a) = addr {
            self.ip(&format!("addr add {a} dev {inner}"));
        }
        self.ip(&format!("link set {inner} up"));
    }

    /// Moves interface `dev` of the current namespace in here and gives it `addr`.
    pub fn adopt(&self, dev: &str, addr: Option<&str>) {
        ip(&format!("link set {dev} netns {}", self.name));
        if let Some(a) = addr {
            self.ip(&format!("addr add {a} dev {dev}"));
        }
        self.ip(&format!("link set {dev} up"));
    }

    /// `ping -c N -W 1 -i 0.2 ADDR` from here; whether all replies came back.
    pub fn ping(&self, addr: &str, n: u32) -> bool {
        self.exec("ping", &["-q", "-c", &n.to_string(), "-W", "1", "-i", "0.2", addr]).success()
    }

    /// The MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> String {
        let out = self.ip(&format!("-o link show dev {dev}"));
        out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("link/ether").to_owned()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run("ip", ["netns", "del", &self.name]);
    }
}

/// A tcpdump writing a pcap in a namespace, stopped (and flushed) by [`Tcpdump::stop`].
pub struct Tcpdump {
    child: Option<Child>,
    pub file: std::path::PathBuf,
}

impl Tcpdump {
    pub fn start(ns: &Ns, dev: &str, file: &std::path::Path) -> Tcpdump {
        // Immediate mode: frames are handed over as they come, not when a ring block fills
        // or times out, so a capture stopped right after its traffic has all of it.
        let child = ns.spawn("tcpdump", &["-i", dev, "--immediate-mode", "-U", "-n", "-w", file.to_str().unwrap()]);
        let t = Tcpdump { child: Some(child), file: file.to_owned() };
        // tcpdump is capturing once the file has its header.
        assert!(
            crate::wait_until(std::time::Duration::from_secs(10), || std::fs::metadata(file)
                .is_ok_and(|m| m.len() >= 24)),
            "tcpdump did not start"
        );
        t
    }

    /// Stops the capture and returns `tcpdump -r FILE -e -n` lines.
    pub fn stop(&mut self) -> Vec<String> {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGINT);
            let _ = c.wait();
        }
        read_pcap(&self.file)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tcpdump -r FILE -e -n`, one line per frame (hex dumps of unknown payloads dropped);
/// fails loudly if tcpdump cannot read the file.
pub fn read_pcap(file: &std::path::Path) -> Vec<String> {
    run("tcpdump", ["-r", file.to_str().unwrap(), "-e", "-n"])
        .ok()
        .lines()
        .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_digit))
        .map(str::to_owned)
        .collect()
}
