//! The control virtqueue (virtio 1.2 §5.1.6.5): RX mode, MAC table and address, multiqueue.
//!
//! QEMU and DPDK's virtio-user answer the control queue themselves and never hand it to a
//! vhost-user backend; other frontends may, and then it is served here. Commands this device
//! does not implement (VLAN filtering through the control queue, guest offload changes) are
//! answered `VIRTIO_NET_ERR`, as the spec asks.

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::device::{DevState, Memory};

pub const OK: u8 = 0;
pub const ERR: u8 = 1;

const CLASS_RX: u8 = 0;
const CLASS_MAC: u8 = 1;
const CLASS_ANNOUNCE: u8 = 3;
const CLASS_MQ: u8 = 4;

const RX_PROMISC: u8 = 0;
const RX_ALLMULTI: u8 = 1;
const MAC_TABLE_SET: u8 = 0;
const MAC_ADDR_SET: u8 = 1;
const ANNOUNCE_ACK: u8 = 0;
const MQ_VQ_PAIRS_SET: u8 = 0;

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
        (CLASS_RX, 2..=5) if data.len() == 1 => OK,
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

/// Serves every command waiting in the control queue; returns how many.
pub fn process(st: &mut DevState, mem: &Memory, max_pairs: u16) -> usize {
    let i = st.ctrl_index();
    let mut n = 0;
    while let Some(chain) = st.vrings[i].queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut cmd = Vec::new();
        let mut status_at = None;
        let mut bad = false;
        for d in chain {
            if !mem.check_range(d.addr(), d.len() as usize) {
                bad = true;
                break;
            }
            if d.is_write_only() {
                status_at.get_or_insert(d.addr());
            } else if cmd.len() + d.len() as usize <= MAX_CMD && status_at.is_none() {
                let at = cmd.len();
                cmd.resize(at + d.len() as usize, 0);
                if mem.read_slice(&mut cmd[at..], d.addr()).is_err() {
                    bad = true;
                    break;
                }
            } else {
                bad = true;
                break;
            }
        }
        let ack = if bad { ERR } else { apply(st, max_pairs, &cmd) };
        let len = match status_at {
            Some(a) if mem.write_obj(ack, a).is_ok() => 1,
            _ => 0,
        };
        let _ = st.vrings[i].queue.add_used(mem, head, len);
        n += 1;
    }
    if n > 0 && st.vrings[i].queue.needs_notification(mem).unwrap_or(true) {
        st.vrings[i].signal();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
