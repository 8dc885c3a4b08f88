//! Test helper: raw Ethernet frames on an interface, for namespaces without the 8021q module.
//!
//! `rawframe send IFACE HEX...`  sends each hex string as one frame.
//! `rawframe send-gso IFACE MSS HEX` sends HEX (a TCP/IPv4 frame longer than the MTU) as
//!                               one GSO super-frame with a virtio-net header.
//! `rawframe flood IFACE SECS HEX` sends the frame HEX as fast as it can for SECS seconds, in
//!                               batches of 64, and prints how many were sent.
//! `rawframe hwtag IFACE VID SECS` for SECS seconds, tags every frame IFACE sends with VID
//!                               out of band (a tcx egress BPF program calling
//!                               `bpf_skb_vlan_push`), as a VLAN device on a NIC with
//!                               transmit VLAN offload would; the tag rides in the skb.
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

/// `rawframe hwtag`: a tcx egress program on `ifindex` that pushes tag `vid` into every
/// frame's skb (not its bytes); attached while the returned link is open.
#[allow(unsafe_code)]
fn hwtag(ifindex: u32, vid: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let bpf = |cmd: i64, attr: &mut [u64; 18]| -> OwnedFd {
        // SAFETY: `attr` is a zero-padded `union bpf_attr` image whose pointers point at
        // live buffers for the call; the result is checked and owned at once.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of::<[u64; 18]>()) };
        assert!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    };
    let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| -> u64 {
        u64::from(code) | u64::from(dst | (src << 4)) << 8 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
    };
    // r2 = htons(ETH_P_8021Q); r3 = vid; call bpf_skb_vlan_push; r0 = TCX_NEXT; exit
    let prog = [
        insn(0xb7, 2, 0, 0, i32::from(0x8100u16.to_be())),
        insn(0xb7, 3, 0, 0, i32::from(vid)),
        insn(0x85, 0, 0, 0, 18),
        insn(0xb7, 0, 0, 0, -1),
        insn(0x95, 0, 0, 0, 0),
    ];
    let license = c"Apache-2.0";
    let mut attr = [0u64; 18];
    attr[0] = 3 | (prog.len() as u64) << 32; // BPF_PROG_TYPE_SCHED_CLS, insn_cnt
    attr[1] = prog.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[8] |= 47 << 32; // expected_attach_type (offset 68) = BPF_TCX_EGRESS
    let p = bpf(5, &mut attr);
    let mut attr = [0u64; 18];
    attr[0] = p.as_raw_fd() as u64 | u64::from(ifindex) << 32;
    attr[1] = 47; // attach_type BPF_TCX_EGRESS
    let link = bpf(28, &mut attr); // BPF_LINK_CREATE
    drop(p);
    link
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dev) = (args[0].as_str(), args[1].as_str());
    if cmd == "hwtag" {
        let link = hwtag(ifindex(dev), args[2].parse().expect("VID"));
        println!("attached");
        std::thread::sleep(Duration::from_secs_f64(args[3].parse().expect("SECS")));
        drop(link);
        return;
    }
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
