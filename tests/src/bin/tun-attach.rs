//! Test helper: `tun-attach NAME [--tun] [--multi-queue] [--vnet-hdr] [--hold SECS]`.
//!
//! Attaches to the TUN/TAP device NAME with `TUNSETIFF` and prints `ok`, or `error: ERRNO-NAME` and exits 1. With `--hold`, keeps the queue
//! open that long (so a test can see the device in use). Run it as another uid to check
//! `TUNSETOWNER`/`TUNSETGROUP`.

use vmnetd::ifname::IfName;
use vmnetd::sys::tap::{Mode, OpenFlags, Tap};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = IfName::new(args.first().expect("NAME")).expect("valid name");
    let has = |f: &str| args.iter().any(|a| a == f);
    let hold =
        args.iter().position(|a| a == "--hold").and_then(|i| args.get(i + 1)).and_then(|s| s.parse::<u64>().ok());
    let flags = OpenFlags {
        mode: if has("--tun") { Mode::Tun } else { Mode::Tap },
        multi_queue: has("--multi-queue"),
        vnet_hdr: has("--vnet-hdr"),
    };
    match Tap::open(Some(&name), flags, false) {
        Ok(tap) => {
            println!("ok");
            if let Some(secs) = hold {
                std::thread::sleep(std::time::Duration::from_secs(secs));
            }
            drop(tap);
        }
        Err(e) => {
            let errno = e.raw_os_error().map(nix::errno::Errno::from_raw);
            println!("error: {}", errno.map_or_else(|| e.to_string(), |e| format!("{e:?}")));
            std::process::exit(1);
        }
    }
}
