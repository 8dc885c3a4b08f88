//! Running a test body in a private network namespace.

use nix::sched::{unshare, CloneFlags};

/// Runs `f` on a new thread that first moves into a fresh network namespace (with `lo` up).
///
/// Network namespaces are per thread, so the test harness's other threads are untouched, and
/// children spawned from inside `f` (the daemon, QEMU, `ip`) inherit the namespace. When the
/// thread and those children are gone, the kernel destroys the namespace and every device in
/// it, so a failing test cannot leak devices. A panic inside `f` is re-raised here.
pub fn in_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    crate::require_root().expect("root");
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            crate::ip("link set lo up");
            f()
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
