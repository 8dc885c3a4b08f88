//! The control virtqueue (virtio 1.2 §5.1.6.5): RX mode, MAC table and address, multiqueue.
//!
//! QEMU and DPDK's virtio-user answer the control queue themselves and never hand it to a
//! vhost-user backend; other frontends may, and then it is served here. Commands this device
//! does not implement (VLAN filtering through the control queue, guest offload changes) are
//! answered `VIRTIO_NET_ERR`, as the spec asks.

use virtio_queue::QueueT;

use crate::device::{DevState, Memory};
use crate::ring::{self, Ring, RingError, Xlate};

use virtio_bindings::virtio_net as vn;

pub const OK: u8 = vn::VIRTIO_NET_OK as u8;
pub const ERR: u8 = vn::VIRTIO_NET_ERR as u8;

const CLASS_RX: u8 = vn::VIRTIO_NET_CTRL_RX as u8;
const CLASS_MAC: u8 = vn::VIRTIO_NET_CTRL_MAC as u8;
const CLASS_ANNOUNCE: u8 = vn::VIRTIO_NET_CTRL_ANNOUNCE as u8;
const CLASS_MQ: u8 = vn::VIRTIO_NET_CTRL_MQ as u8;

const RX_PROMISC: u8 = vn::VIRTIO_NET_CTRL_RX_PROMISC as u8;
const RX_ALLMULTI: u8 = vn::VIRTIO_NET_CTRL_RX_ALLMULTI as u8;
const RX_ALLUNI: u8 = vn::VIRTIO_NET_CTRL_RX_ALLUNI as u8;
const RX_NOBCAST: u8 = vn::VIRTIO_NET_CTRL_RX_NOBCAST as u8;
const MAC_TABLE_SET: u8 = vn::VIRTIO_NET_CTRL_MAC_TABLE_SET as u8;
const MAC_ADDR_SET: u8 = vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8;
const ANNOUNCE_ACK: u8 = vn::VIRTIO_NET_CTRL_ANNOUNCE_ACK as u8;
const MQ_VQ_PAIRS_SET: u8 = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;

/// Longest command read (a MAC table of a few hundred entries).
const MAX_CMD: usize = 8192;

/// Applies one command; returns the ack byte.
pub fn apply(st: &mut DevState, max_pairs: u16, cmd: &[u8]) -> u8 {
    let [class, code, data @ ..] = cmd else {
        return ERR;
    };
    match (*class, *code) {
        (CLASS_RX, RX_PROMISC) if data.len() == 1 => {
            st.promisc = data[0] != 0;
            OK
        }
        (CLASS_RX, RX_ALLMULTI) if data.len() == 1 => {
            st.allmulti = data[0] != 0;
            OK
        }
        // ALLUNI, NOMULTI, NOUNI, NOBCAST: accepted, nothing to filter on a switch port.
        (CLASS_RX, RX_ALLUNI..=RX_NOBCAST) if data.len() == 1 => OK,
        (CLASS_MAC, MAC_ADDR_SET) if data.len() == 6 => {
            st.guest_mac = Some([data[0], data[1], data[2], data[3], data[4], data[5]]);
            OK
        }
        (CLASS_MAC, MAC_TABLE_SET) => match parse_mac_tables(data) {
            Some(macs) => {
                st.mac_table = macs;
                OK
            }
            None => ERR,
        },
        (CLASS_ANNOUNCE, ANNOUNCE_ACK) => OK,
        (CLASS_MQ, MQ_VQ_PAIRS_SET) if data.len() == 2 => {
            let n = u16::from_le_bytes([data[0], data[1]]);
            if (1..=max_pairs).contains(&n) {
                st.active_pairs = Some(n);
                OK
            } else {
                ERR
            }
        }
        _ => ERR,
    }
}

/// Two tables (unicast, multicast), each a little-endian u32 count then 6-byte entries.
fn parse_mac_tables(mut d: &[u8]) -> Option<Vec<[u8; 6]>> {
    let mut out = Vec::new();
    for _ in 0..2 {
        let n = u32::from_le_bytes(d.get(..4)?.try_into().ok()?) as usize;
        d = &d[4..];
        let bytes = d.get(..n.checked_mul(6)?)?;
        out.extend(bytes.chunks_exact(6).map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]]));
        d = &d[n * 6..];
    }
    d.is_empty().then_some(out)
}

/// Serves the commands waiting in the control queue: at most one queue's worth, with one
/// read of the available index (a driver that keeps adding commands cannot keep us here).
/// Returns how many, or why the queue is broken.
pub fn process(st: &mut DevState, mem: &Memory, max_pairs: u16) -> Result<usize, RingError> {
    let i = st.ctrl_index();
    let log = st.dirty_log();
    let ring = Ring::new(&st.vrings[i].queue, mem).ok_or(RingError::BadRingAddress)?;
    let start = st.vrings[i].queue.next_avail();
    let n = ring::pending(&ring, start)?;
    let old_used = st.vrings[i].queue.next_used();
    let mut used = old_used;
    let mut x = Xlate::new(mem);
    let mut done = 0u16;
    let mut result = Ok(());
    while done < n {
        let head = ring.avail_head(start.wrapping_add(done));
        if head >= ring.size() {
            result = Err(RingError::BadHead { head, size: ring.size() });
            break;
        }
        done += 1;
        let mut cmd = Vec::new();
        let mut status_at = None;
        let mut bad = false;
        let walked = ring.walk(head, |d| {
            let Some(slice) = x.slice(d.addr, d.len as usize) else {
                bad = true;
                return false;
            };
            if d.write {
                // The status byte: the first writable buffer (the command's last part).
                status_at.get_or_insert((slice, d.addr));
            } else if status_at.is_none() && cmd.len() + d.len as usize <= MAX_CMD {
                let at = cmd.len();
                cmd.resize(at + d.len as usize, 0);
                slice.read_to(&mut cmd[at..]);
            } else {
                bad = true;
                return false;
            }
            true
        });
        let ack = if bad || walked.is_err() { ERR } else { apply(st, max_pairs, &cmd) };
        let len = match status_at {
            Some((s, addr)) if !bad && walked.is_ok() && s.write_from(&[ack]) => {
                if let Some(l) = &log {
                    l.mark(addr, 1);
                }
                1
            }
            _ => 0,
        };
        ring.put_used(used, head, len);
        used = used.wrapping_add(1);
    }
    let q = &mut st.vrings[i].queue;
    q.set_next_avail(start.wrapping_add(done));
    if done > 0 {
        ring.publish_used(used);
        q.set_next_used(used);
        if let Some(l) = &log {
            st.vrings[i].log_used(l);
        }
        if ring.needs_interrupt(old_used, used) {
            st.vrings[i].signal();
        }
    }
    result.map(|()| usize::from(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn st() -> DevState {
        DevState::new(9)
    }

    #[test]
    fn commands() {
        let mut s = st();
        assert_eq!(apply(&mut s, 4, &[CLASS_RX, RX_PROMISC, 0]), OK);
        assert!(!s.promisc);
        assert_eq!(apply(&mut s, 4, &[CLASS_RX, RX_ALLMULTI, 1]), OK);
        assert_eq!(apply(&mut s, 4, &[CLASS_MAC, MAC_ADDR_SET, 0x52, 0x54, 0, 0, 0, 9]), OK);
        assert_eq!(s.guest_mac, Some([0x52, 0x54, 0, 0, 0, 9]));
        let mut t = vec![CLASS_MAC, MAC_TABLE_SET];
        t.extend(1u32.to_le_bytes());
        t.extend([2, 0, 0, 0, 0, 1]);
        t.extend(1u32.to_le_bytes());
        t.extend([1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(apply(&mut s, 4, &t), OK);
        assert_eq!(s.mac_table.len(), 2);
        // A table that lies about its length.
        let mut bad = vec![CLASS_MAC, MAC_TABLE_SET];
        bad.extend(5u32.to_le_bytes());
        assert_eq!(apply(&mut s, 4, &bad), ERR);
        assert_eq!(apply(&mut s, 4, &[CLASS_MQ, MQ_VQ_PAIRS_SET, 2, 0]), OK);
        assert_eq!(s.active_pairs, Some(2));
        assert_eq!(apply(&mut s, 4, &[CLASS_MQ, MQ_VQ_PAIRS_SET, 9, 0]), ERR);
        assert_eq!(apply(&mut s, 4, &[2, 0, 10, 0]), ERR, "VLAN filtering is not offered");
        assert_eq!(apply(&mut s, 4, &[]), ERR);
    }

    /// Commands through the ring: served and acked; a driver whose available index runs
    /// ahead of the queue breaks it instead of keeping the device in a loop.
    #[test]
    fn queue_is_served_a_queue_at_a_time() {
        use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        use virtio_queue::desc::split::Descriptor;
        use virtio_queue::desc::RawDescriptor;
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::GuestAddress;

        let m = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x8_0000), 4);
        let d = |a: u64, l: u32, f: u32, n: u16| RawDescriptor::from(Descriptor::new(a, l, f as u16, n));
        // Two commands: promisc off, then an unknown class; each a command and a status byte.
        m.write_slice(&[CLASS_RX, RX_PROMISC, 0], GuestAddress(0x1000)).unwrap();
        m.write_slice(&[9, 9], GuestAddress(0x2000)).unwrap();
        vq.add_desc_chains(
            &[
                d(0x1000, 3, VRING_DESC_F_NEXT, 1),
                d(0x1100, 1, VRING_DESC_F_WRITE, 0),
                d(0x2000, 2, VRING_DESC_F_NEXT, 3),
                d(0x2100, 1, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut s = st();
        let c = s.ctrl_index();
        s.vrings[c].queue = vq.create_queue().unwrap();
        assert_eq!(process(&mut s, &m, 4), Ok(2));
        assert!(!s.promisc);
        let acks: (u8, u8) = (m.read_obj(GuestAddress(0x1100)).unwrap(), m.read_obj(GuestAddress(0x2100)).unwrap());
        assert_eq!(acks, (OK, ERR));
        // Nothing new: nothing served. An index far ahead: the queue is broken, not looped on.
        assert_eq!(process(&mut s, &m, 4), Ok(0));
        vq.avail().idx().store(2 + 1000);
        assert!(matches!(process(&mut s, &m, 4), Err(RingError::AvailIndex { .. })));
    }
}
