//! Test helper: raw Ethernet frames on an interface, for namespaces without the 8021q module.
//!
//! `rawframe send IFACE HEX...`  sends each hex string as one frame.
//! `rawframe send-gso IFACE MSS HEX` sends HEX (a TCP/IPv4 frame longer than the MTU) as
//!                               one GSO super-frame with a virtio-net header.
//! `rawframe flood IFACE SECS HEX` sends the frame HEX as fast as it can for SECS seconds, in
//!                               batches of 64, and prints how many were sent.
//! `rawframe recv IFACE SECS`    prints every frame received for SECS seconds as
//!                               `len=N vlan=VID|none src=MAC dst=MAC type=0xXXXX`, tags put
//!                               back from PACKET_AUXDATA as the kernel strips them.

use std::io::IoSliceMut;
use std::time::{Duration, Instant};

use vmnetd::switch::wire::EthernetFrame;
use vmnetd::sys::iov::IoPart;
use vmnetd::sys::packet::{PacketSocket, RecvInfo, CMSG_SPACE, VNET_HDR_LEN};

fn ifindex(name: &str) -> u32 {
    let n = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"));
    if let Ok(s) = n {
        return s.trim().parse().expect("ifindex");
    }
    // /sys may belong to another namespace: ask iproute2.
    let out = std::process::Command::new("ip").args(["-o", "link", "show", "dev", name]).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).split(':').next().unwrap().trim().parse().expect("ifindex from ip")
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex frame")).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dev) = (args[0].as_str(), args[1].as_str());
    let sock = PacketSocket::open(ifindex(dev)).expect("AF_PACKET socket");
    match cmd {
        "send" => {
            for hex in &args[2..] {
                let bytes = unhex(hex);
                let vnet = [0u8; VNET_HDR_LEN];
                let iov = [IoPart::Bytes(&vnet), IoPart::Bytes(&bytes)];
                assert_eq!(sock.send_batch(&[&iov[..]]).expect("send"), 1);
            }
        }
        "send-gso" => {
            // send-gso IFACE MSS HEX: one TCP/IPv4 super-frame (no tag) with a GSO header.
            let mss: u16 = args[2].parse().unwrap();
            let bytes = unhex(&args[3]);
            let ihl = usize::from(bytes[14] & 0x0f) * 4;
            let l4 = 14 + ihl;
            let thl = usize::from(bytes[l4 + 12] >> 4) * 4;
            let vnet = vmnetd_vhost::virtio_net::VnetHdr {
                flags: vmnetd_vhost::virtio_net::F_NEEDS_CSUM,
                gso_type: vmnetd_vhost::virtio_net::GSO_TCPV4,
                hdr_len: (l4 + thl) as u16,
                gso_size: mss,
                csum_start: l4 as u16,
                csum_offset: 16,
            }
            .to_legacy_bytes();
            let iov = [IoPart::Bytes(&vnet), IoPart::Bytes(&bytes)];
            assert_eq!(sock.send_batch(&[&iov[..]]).expect("send"), 1);
        }
        "flood" => {
            let secs: f64 = args[2].parse().unwrap();
            let hex = &args[3];
            let bytes = unhex(hex);
            let vnet = [0u8; VNET_HDR_LEN];
            let iov = [IoPart::Bytes(&vnet), IoPart::Bytes(&bytes)];
            let batch: Vec<&[IoPart<'_>]> = (0..64).map(|_| &iov[..]).collect();
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut sent = 0u64;
            while Instant::now() < end {
                sent += sock.send_batch(&batch).expect("send") as u64;
            }
            println!("{sent}");
        }
        "recv" => {
            let secs: f64 = args[2].parse().unwrap();
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut buf = vec![0u8; 70_000];
            let mut vnet = [0u8; VNET_HDR_LEN];
            let mut cmsg = [[0u8; CMSG_SPACE]; 1];
            let mut info = [RecvInfo::default(); 1];
            while Instant::now() < end {
                let n = {
                    let mut iov = [[IoSliceMut::new(&mut vnet), IoSliceMut::new(&mut buf)]];
                    sock.recv_batch(&mut iov, &mut cmsg, &mut info).expect("recv")
                };
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let len = info[0].len - VNET_HDR_LEN;
                let f = EthernetFrame::new_checked(&buf[..len]);
                let Ok(f) = f else { continue };
                let vlan = info[0]
                    .vlan
                    .map(|(_, tci)| (tci & 0xfff).to_string())
                    .or_else(|| f.tci().map(|t| t.vid().to_string()));
                println!(
                    "len={} vlan={} src={} dst={} type=0x{:04x}",
                    len + if info[0].vlan.is_some() { 4 } else { 0 },
                    vlan.unwrap_or_else(|| "none".into()),
                    f.src(),
                    f.dst(),
                    f.ethertype()
                );
            }
        }
        _ => panic!("usage: rawframe send|recv IFACE ..."),
    }
}
