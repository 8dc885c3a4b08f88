//! A VXLAN tunnel port's two directions on hostile input. Receive: arbitrary datagrams
//! (header, inner bytes, length, truncation, sender) through `decap_burst`, then the switch:
//! no panic, only datagrams with `I` set, a mapped VNI, a configured sender and a whole
//! Ethernet header are taken, each in the VLAN its VNI maps to, with its exact length; the
//! table of remotes stays bounded. Send: what the switch decided, and arbitrary local frames
//! with arbitrary offload headers (GSO types, segment sizes, checksum offsets), through a
//! real tunnel edge on loopback: no panic, every frame accounted for exactly once.
#![no_main]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmnetd::datapath::batch::Batch;
use vmnetd::ports::vxlan::{decap_burst, Setup, TunnelStats, VxlanPort};
use vmnetd::ports::PortEdge;
use vmnetd::switch::*;
use vmnetd::sys::udp::Datagram;
use vmnetd::vxlan::{Tunnel, VniMap, HDR_LEN};
use vmnetd_vhost::virtio_net::VnetHdr;

#[derive(Debug, Arbitrary)]
struct Gram {
    hdr: [u8; 8],
    /// Use a valid header for this VNI index instead (reaches the deeper checks).
    valid: Option<u8>,
    inner: Vec<u8>,
    /// Length beyond the bytes written here (what the buffer held before).
    extra_len: u8,
    truncated: bool,
    from: u8,
    /// A `UDP_GRO` train: datagrams of this size back to back.
    seg: Option<u16>,
}

#[derive(Debug, Arbitrary)]
struct Local {
    bytes: Vec<u8>,
    vnet: [u8; 10],
    action: u8,
    vid: u16,
}

#[derive(Debug, Arbitrary)]
struct Input {
    grams: Vec<Gram>,
    locals: Vec<Local>,
    mtu: u16,
}

const VNIS: [u32; 2] = [1010, 1020];

fn remotes() -> Vec<IpAddr> {
    vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))]
}

fn map() -> VniMap {
    VniMap::Vlans(vec![(VlanId::new(10).unwrap(), VNIS[0]), (VlanId::new(20).unwrap(), VNIS[1])])
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::new());
}

fuzz_target!(|input: Input| {
    BATCH.with(|b| run(&mut b.borrow_mut(), input));
});

fn run(batch: &mut Batch, input: Input) {
    let mut tunnel = Tunnel::new(map(), remotes(), false, Duration::from_secs(300));
    let n = input.grams.len().min(8);
    batch.clear();
    batch.ensure_bufs(n.max(1), 0);
    let mut hdrs = vec![[0u8; HDR_LEN]; n];
    let mut grams = Vec::with_capacity(n);
    let mut expect = Vec::new();
    let mut trains = false;
    for (i, g) in input.grams.iter().take(n).enumerate() {
        hdrs[i] = match g.valid {
            Some(k) => vmnetd::vxlan::header(VNIS[usize::from(k) % 2]),
            None => g.hdr,
        };
        let take = g.inner.len().min(2048);
        batch.bufs[i][..take].copy_from_slice(&g.inner[..take]);
        let len = HDR_LEN + take + usize::from(g.extra_len % 4);
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + g.from % 4)), 4789);
        let seg = g.seg.map_or(0, usize::from);
        trains |= seg > HDR_LEN && seg < len;
        grams.push(Datagram { len, truncated: g.truncated, from: (g.from != 255).then_some(from), seg });
        // The reference: what must be taken.
        let vni = (hdrs[i][0] & 0x08 != 0).then(|| u32::from_be_bytes([0, hdrs[i][4], hdrs[i][5], hdrs[i][6]]));
        let inner_len = len - HDR_LEN;
        let ok = !g.truncated
            && inner_len >= 14
            && g.from != 255
            && remotes().contains(&from.ip())
            && vni.is_some_and(|v| VNIS.contains(&v))
            && !matches!(u16::from_be_bytes([batch.bufs[i][12], batch.bufs[i][13]]), 0x8100 | 0x88a8 | 0x9100);
        if ok {
            let vlan = if vni == Some(VNIS[0]) { 10 } else { 20 };
            expect.push((i, inner_len, vlan));
        }
    }
    let mut stats = TunnelStats::default();
    decap_burst(&mut tunnel, &hdrs, &grams, &[], batch, Duration::from_secs(1), &mut stats);
    assert_eq!(batch.len() as u64, stats.decap);
    for f in &batch.frames {
        // Tagged into VLAN 10 or 20: the frame grew by the tag.
        let head = f.head();
        assert_eq!(&head[12..14], &[0x81, 0x00]);
        assert!(matches!(u16::from_be_bytes([head[14], head[15]]) & 0xfff, 10 | 20));
        assert!(f.len as usize >= 18);
    }
    // A train merged into a GSO frame cuts back into valid segments.
    for (i, f) in batch.frames.iter().enumerate() {
        if f.vnet.is_gso() {
            let bytes = batch.materialize(i, TagAction::Keep, 1 << 17);
            let mut n = 0;
            vmnetd::datapath::offload::segment(&bytes, &f.vnet, &mut |_| {
                n += 1;
                true
            })
            .expect("a merged frame segments");
            assert!(n >= 2);
        }
    }
    if !trains {
        // One datagram per slot: exactly the reference's.
        assert_eq!(batch.len(), expect.len(), "taken: {expect:?}");
        assert_eq!(stats.decap as usize + stats.rx_drops.iter().sum::<u64>() as usize, n);
        for (f, (_, inner_len, vlan)) in batch.frames.iter().zip(&expect) {
            assert_eq!(f.len as usize, inner_len + 4);
            assert_eq!(u16::from_be_bytes([f.head()[14], f.head()[15]]) & 0xfff, *vlan);
        }
        assert!(tunnel.table.len() <= expect.len());
    }

    // The switch: the tunnel (a trunk of 10 and 20), an access port in each VLAN, and a
    // second tunnel that sends what it gets.
    let mut sw = Switch::new(SwitchConfig::default());
    let mut vlans = VlanSet::new();
    vlans.insert(VlanId::new(10).unwrap());
    vlans.insert(VlanId::new(20).unwrap());
    let trunk = || PortConfig { mode: VlanMode::Trunk { vlans: vlans.clone(), native: None }, ..Default::default() };
    let t_in = sw.add_port(trunk());
    let _a10 = sw.add_port(PortConfig { mode: VlanMode::access(VlanId::new(10).unwrap()), ..Default::default() });
    let t_out = sw.add_port(trunk());
    let mut plan = BurstPlan::new();
    sw.ingress_burst(t_in, batch.infos(), Duration::from_secs(1), &mut plan);
    let Ok(mut out) = VxlanPort::open(Setup {
        tunnel: Tunnel::new(map(), remotes(), false, Duration::from_secs(300)),
        bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        group: None,
        underlay_mtu: usize::from(input.mtu).max(128),
    }) else {
        return;
    };
    for (dst, list) in plan.destinations() {
        if dst == t_out {
            let r = out.tx_burst(batch, list);
            let accounted = r.sent + r.no_room.0 + r.errors.0 + r.bad_gso.0 + r.mtu.0;
            assert_eq!(accounted as usize, list.len(), "{r:?}");
        }
    }

    // Local frames with arbitrary offload requests and tag actions.
    batch.clear();
    let m = input.locals.len().min(4);
    batch.ensure_bufs(m.max(1), 0);
    let mut list = Vec::new();
    for (i, l) in input.locals.iter().take(m).enumerate() {
        let take = l.bytes.len().clamp(14, 4096);
        let mut bytes = l.bytes.clone();
        bytes.resize(take, 0);
        batch.bufs[i][..take].copy_from_slice(&bytes);
        let vnet = VnetHdr::parse(&l.vnet).unwrap_or_default();
        batch.push_local(i as u16, 0, take, vnet, None);
        let tagged = take >= 18 && bytes[12..14] == [0x81, 0x00];
        let tci = Tci::new(0, false, [10u16, 20, l.vid % 4095][usize::from(l.action / 4) % 3]);
        let action = match (l.action % 4, tagged) {
            (1, false) => TagAction::Push(tci),
            (2, true) => TagAction::Pop,
            (3, true) => TagAction::SetTci(tci),
            _ => TagAction::Keep,
        };
        list.push(Egress { frame: batch.len() - 1, action });
    }
    let r = out.tx_burst(batch, &list);
    let accounted = r.sent + r.no_room.0 + r.errors.0 + r.bad_gso.0 + r.mtu.0;
    assert_eq!(accounted as usize, list.len(), "{r:?}");
}
