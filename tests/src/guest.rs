//! Test guests: a Debian cloud kernel and a busybox initramfs made per guest, booted under
//! QEMU with TCG (this machine's KVM cannot run stock guests). The kernel and modules come
//! from `tests/guest/build.sh` (run here if they are missing); each guest gets an initramfs
//! with busybox, the virtio-net and 8021q modules, and the test's own shell script, whose
//! output goes to the serial console that the test reads.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where `tests/guest/build.sh` puts the kernel and modules.
pub fn guest_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
    if !dir.join("vmlinuz").exists() || !dir.join("modules.order").exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/build.sh");
        let out = crate::run(&script, [dir.to_str().unwrap()]);
        assert!(
            out.success(),
            "building the guest kernel failed (network to the Debian mirror?):\n{}{}",
            out.stdout,
            out.stderr
        );
    }
    dir
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/modules.order); do insmod /lib/modules/$m; done
echo VMNETD-GUEST-UP
sh /test.sh
echo VMNETD-GUEST-DONE rc=$?
poweroff -f
"#;

/// Builds an initramfs that runs `script` (busybox sh) after boot, in `dir` (world-readable,
/// so QEMU may run as another user).
pub fn initramfs(dir: &Path, name: &str, script: &str) -> PathBuf {
    let g = guest_dir();
    let root = dir.join(format!("{name}-root"));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "lib/modules", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static (/bin/busybox)");
    for m in std::fs::read_dir(g.join("modules")).unwrap() {
        let m = m.unwrap();
        std::fs::copy(m.path(), root.join("lib/modules").join(m.file_name())).unwrap();
    }
    std::fs::copy(g.join("modules.order"), root.join("lib/modules/modules.order")).unwrap();
    std::fs::write(root.join("init"), INIT).unwrap();
    std::fs::write(root.join("test.sh"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join(format!("{name}.cpio"));
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . | cpio -o -H newc --quiet > {}", root.display(), out.display()))
        .status()
        .unwrap();
    assert!(st.success(), "cpio failed");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    out
}

/// QEMU arguments for a virtio-net NIC on a vhost-user socket. `qemu_listens`: QEMU is the
/// server (`server=on`, vmnetd in client mode); else QEMU connects and reconnects.
/// `vectors=0`: QEMU 7.2 under TCG crashes on vhost-user with MSI-X (DESIGN §6).
pub fn vhost_user_args(id: &str, sock: &Path, qemu_listens: bool, mac: &str) -> Vec<String> {
    let chardev = if qemu_listens {
        format!("socket,id=c{id},path={},server=on,wait=off", sock.display())
    } else {
        format!("socket,id=c{id},path={},reconnect=1", sock.display())
    };
    vec![
        "-chardev".into(),
        chardev,
        "-netdev".into(),
        format!("vhost-user,id=n{id},chardev=c{id}"),
        "-device".into(),
        format!("virtio-net-pci,netdev=n{id},mac={mac},vectors=0"),
    ]
}

/// QEMU arguments for a virtio-net NIC on an existing TAP (`script=no`, no vhost-net).
pub fn tap_args(id: &str, ifname: &str, mac: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("tap,id=n{id},ifname={ifname},script=no,downscript=no,vhost=off,vnet_hdr=on"),
        "-device".into(),
        format!("virtio-net-pci,netdev=n{id},mac={mac}"),
    ]
}

/// A guest script that configures `eth0` with `addr` and says READY.
pub fn script_up(addr: &str) -> String {
    format!("ip link set eth0 up\nip addr add {addr} dev eth0\necho GUEST-READY\n")
}

/// A running QEMU guest whose serial console is collected (with arrival times); killed on
/// drop.
pub struct Guest {
    child: Child,
    pub console: Arc<Mutex<String>>,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub name: String,
}

impl Guest {
    /// Boots `initrd` with extra QEMU arguments `args` (network devices, memory backend...).
    /// `uid`: run QEMU as this user (and its group) instead of root.
    pub fn boot(name: &str, initrd: &Path, args: &[String], uid: Option<u32>) -> Guest {
        Guest::boot_with_memory(name, initrd, args, uid, 256 << 10)
    }

    /// As [`Guest::boot`], with `mem_kib` KiB of guest memory.
    pub fn boot_with_memory(name: &str, initrd: &Path, args: &[String], uid: Option<u32>, mem_kib: usize) -> Guest {
        let g = guest_dir();
        let mut c = Command::new("qemu-system-x86_64");
        let mem = format!("{mem_kib}K");
        c.args(["-accel", "tcg", "-m", &mem, "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
            // Shared memory: what a vhost-user backend maps (harmless for TAP guests).
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
                "-machine",
                "memory-backend=mem",
            ])
            .arg("-kernel")
            .arg(g.join("vmlinuz"))
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1 net.ifnames=0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(u) = uid {
            use std::os::unix::process::CommandExt;
            c.uid(u).gid(u);
        }
        let mut child = c.spawn().expect("qemu-system-x86_64 (package qemu-system-x86)");
        let console = Arc::new(Mutex::new(String::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (console, lines) = (console.clone(), lines.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push((Instant::now(), line.clone()));
                    let mut c = console.lock().unwrap();
                    c.push_str(&line);
                    c.push('\n');
                }
            });
        }
        Guest { child, console, lines, name: name.to_owned() }
    }

    pub fn output(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Waits until the console shows `needle`; panics with the console after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Give the reader threads a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(200));
                let out = self.output();
                if out.contains(needle) {
                    return out;
                }
                panic!("guest {} exited ({st}) without printing {needle:?}:\n{out}", self.name);
            }
            if Instant::now() > end {
                panic!("guest {} did not print {needle:?} within {timeout:?}:\n{out}", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the guest's script to finish and returns the console.
    pub fn wait_done(&mut self, timeout: Duration) -> String {
        self.wait_for("VMNETD-GUEST-DONE", timeout)
    }

    /// Console lines that arrived after `t`, with their arrival times.
    pub fn lines_after(&self, t: Instant) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().iter().filter(|(at, _)| *at > t).cloned().collect()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU's human monitor (HMP) on a Unix socket: `-monitor unix:PATH,server=on,wait=off`.
pub struct Monitor(std::os::unix::net::UnixStream);

impl Monitor {
    /// The QEMU arguments for a monitor at `path`.
    pub fn args(path: &Path) -> Vec<String> {
        vec!["-monitor".into(), format!("unix:{},server=on,wait=off", path.display())]
    }

    /// Connects (retrying while QEMU starts) and reads the banner.
    pub fn connect(path: &Path) -> Monitor {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut m = Monitor(s);
                    m.until_prompt();
                    return m;
                }
                Err(e) if Instant::now() > end => panic!("QEMU monitor {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn until_prompt(&mut self) -> String {
        use std::io::Read;
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while !out.ends_with(b"(qemu) ") {
            match self.0.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&b[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Runs an HMP command and returns what it printed (without its echo and the prompt).
    pub fn cmd(&mut self, cmd: &str) -> String {
        use std::io::Write;
        self.0.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let out = self.until_prompt();
        let out = out.split_once('\n').map_or(out.as_str(), |(_echo, rest)| rest);
        out.strip_suffix("(qemu) ").unwrap_or(out).to_owned()
    }
}
