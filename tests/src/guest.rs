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

/// A running QEMU guest whose serial console is collected; killed on drop.
pub struct Guest {
    child: Child,
    pub console: Arc<Mutex<String>>,
    pub name: String,
}

impl Guest {
    /// Boots `initrd` with extra QEMU arguments `args` (network devices, memory backend...).
    /// `uid`: run QEMU as this user (and its group) instead of root.
    pub fn boot(name: &str, initrd: &Path, args: &[String], uid: Option<u32>) -> Guest {
        let g = guest_dir();
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
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
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let console = console.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut c = console.lock().unwrap();
                    c.push_str(&line);
                    c.push('\n');
                }
            });
        }
        Guest { child, console, name: name.to_owned() }
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
