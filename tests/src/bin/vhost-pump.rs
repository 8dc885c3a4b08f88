//! Drives two vhost-user ports of an already running backend with the project's driver,
//! for profiling (`valgrind --tool=callgrind`, `perf record`) outside the benchmark harness:
//! learns both MACs, then sends 60-byte (or `SIZE`-4) frames from A to B for `SECS` seconds
//! and prints the frames B received.
//!
//! `vhost-pump A.sock B.sock [SECS] [SIZE]`

use std::path::Path;
use std::time::{Duration, Instant};

use vmnetd_tests::connect_vhost;
use vmnetd_vhost::driver::Config;
use vmnetd_vhost::virtio_net::VnetHdr;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn frame(src: [u8; 6], dst: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(60)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: vhost-pump A.sock B.sock [SECS] [SIZE]");
        std::process::exit(2);
    }
    let secs: f64 = args.get(2).map_or(10.0, |s| s.parse().expect("SECS"));
    let size: usize = args.get(3).map_or(64, |s| s.parse().expect("SIZE"));
    let cfg = Config { queue_size: 1024, ..Default::default() };
    let t = Duration::from_secs(60);
    let mut a = connect_vhost(Path::new(&args[0]), &cfg, t).expect("connect A");
    let mut b = connect_vhost(Path::new(&args[1]), &cfg, t).expect("connect B");
    std::thread::sleep(Duration::from_millis(500));
    let vnet = VnetHdr::default();
    for _ in 0..3 {
        b.send(0, &vnet, &[&frame(MAC_B, MAC_A, 60)]);
        a.send(0, &vnet, &[&frame(MAC_A, MAC_B, 60)]);
        std::thread::sleep(Duration::from_millis(200));
        a.drain_rx(0);
        b.drain_rx(0);
    }
    a.prime_tx(0, &vnet, &frame(MAC_A, MAC_B, size - 4));
    let t0 = Instant::now();
    let mut frames = 0;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..256 {
            a.refill_tx(0);
            frames += b.drain_rx(0).0;
        }
    }
    println!("{frames} frames in {:.1} s", t0.elapsed().as_secs_f64());
}
