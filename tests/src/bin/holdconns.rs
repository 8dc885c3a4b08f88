//! Test helper: `holdconns SOCKET N SECS` opens N connections to a Unix socket, sends
//! nothing, prints how many connected (`connected N`), and holds them SECS seconds (or until
//! its stdin closes). Run as another uid to play idle clients of another user.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, n, secs) = match &args[..] {
        [p, n, s] => (p.clone(), n.parse::<usize>().expect("N"), s.parse::<u64>().expect("SECS")),
        _ => {
            eprintln!("usage: holdconns SOCKET N SECS");
            std::process::exit(2);
        }
    };
    let held: Vec<UnixStream> = (0..n).filter_map(|_| UnixStream::connect(&path).ok()).collect();
    println!("connected {}", held.len());
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = std::io::stdin().read(&mut b);
        std::process::exit(0);
    });
    std::thread::sleep(Duration::from_secs(secs));
    drop(held);
}
