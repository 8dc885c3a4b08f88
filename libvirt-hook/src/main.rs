//! `vmnetd-libvirt-hook`: libvirt's qemu hook for vmnetd (see DESIGN §5).
//!
//! Skeleton: it accepts libvirt's calls and changes nothing until the hook issue lands, so
//! installing it early never blocks a domain from starting.

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("vmnetd-libvirt-hook {}", env!("CARGO_PKG_VERSION"));
    }
}
