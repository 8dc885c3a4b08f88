//! A burst of received frames, in the one form every edge can read and every edge can send.
//!
//! Each [`Frame`] keeps a copy of its first bytes (`head`, up to 18: the Ethernet header and
//! 802.1Q tag) — the bytes the switch decided on. Whoever sends the frame builds the output
//! header from that copy and takes only the rest (`tail`) from where the frame lives. So a
//! frame cannot change VLAN or destination between the decision and the copy, even when it
//! lives in memory a guest can still write to.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmnetd_vhost::device::Memory;
use vmnetd_vhost::queue::{Part, Seg, TxFrame};
use vmnetd_vhost::ring::Xlate;
use vmnetd_vhost::virtio_net::VnetHdr;

use crate::sys::iov::{GuestPart, IoPart};

use crate::switch::wire::{HEAD_LEN, TAG_OFFSET, VLAN_HLEN};
use crate::switch::{FrameInfo, TagAction, FLOW_HEAD};

/// Frames per burst from a kernel edge (AF_PACKET, TAP): the unit of receiving, deciding and
/// sending. Each may be a 64 KiB GSO frame in a local buffer, so this stays small.
pub const BURST: usize = 32;

/// Frames per burst from a vhost-user queue. These stay in the guest's memory until they are
/// copied out, so a burst costs no buffers; a larger one amortises the per-burst ring work
/// (index loads, the used-index publish, the notification check) and the cache lines the two
/// sides pass back and forth. Measured with bench/vhost.sh on 64-byte frames: 32 -> 7.9 Mpps,
/// 64 -> 9.2, 128 -> 10.3, 256 -> 10.3. It only bounds a burst: a light load still goes
/// through in bursts of one.
pub const VHOST_BURST: usize = 128;

/// Largest frame a local buffer holds: a 64 KiB GSO super-frame plus an 802.1Q tag.
pub const MAX_FRAME: usize = 65536 + VLAN_HLEN;

/// Longest output header: a tagged head (18 bytes) with a tag pushed.
pub const OUT_HEAD_MAX: usize = HEAD_LEN + VLAN_HLEN;

/// Where the bytes after a frame's head are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// In `Batch::bufs[buf][off..off + len]`.
    Local { buf: u16, off: u32 },
    /// In the source guest's memory (`Batch::mem`): `Batch::segs[seg..seg + nsegs]`.
    Guest { seg: u32, nsegs: u16 },
}

/// One received frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub head: [u8; HEAD_LEN],
    pub head_len: u8,
    /// Length of the whole frame (head and tail, no virtio-net header).
    pub len: u32,
    /// Offloads: GSO and partial checksum, with offsets into this frame.
    pub vnet: VnetHdr,
    pub tail: Tail,
    /// Bytes after the head that were copied into the batch's deep head of this frame
    /// ([`Batch::deepen`]) and are sent from that copy, not from guest memory: what the
    /// flow rules looked at is what leaves.
    pub pre: u8,
}

/// A frame's first [`FLOW_HEAD`] bytes (or all of it, if shorter), copied.
#[derive(Debug, Clone, Copy)]
pub struct DeepHead {
    pub bytes: [u8; FLOW_HEAD],
    pub len: u8,
}

impl Default for DeepHead {
    fn default() -> Self {
        DeepHead { bytes: [0; FLOW_HEAD], len: 0 }
    }
}

impl Frame {
    /// A frame taken from a guest's transmit queue.
    pub fn guest(t: &TxFrame) -> Frame {
        Frame {
            head: t.head,
            head_len: t.head_len,
            len: t.len,
            vnet: t.vnet,
            tail: Tail::Guest { seg: t.first_seg, nsegs: t.nsegs },
            pre: 0,
        }
    }

    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    pub fn tail_len(&self) -> usize {
        self.len as usize - usize::from(self.head_len)
    }

    pub fn info(&self) -> FrameInfo<'_> {
        FrameInfo { head: self.head(), len: self.len as usize, gso: self.vnet.is_gso() }
    }

    /// The output header for `action` written into `out`; returns its length.
    pub fn out_head(&self, action: TagAction, out: &mut [u8; OUT_HEAD_MAX]) -> usize {
        // Splice::copy cannot fail here: `out` holds any head plus a tag, and a Pop/SetTci
        // action is only decided for a tagged (18-byte) head.
        action.splice().copy(self.head(), out).unwrap_or(0)
    }

    /// The vnet header as it must leave after `action`.
    pub fn out_vnet(&self, action: TagAction) -> VnetHdr {
        let d = action.splice().delta();
        if d == 0 {
            self.vnet
        } else {
            self.vnet.shifted(d)
        }
    }
}

/// A burst of frames from one port, with the buffers of the frames that live locally, or
/// the guest memory and segments of the frames that live in a guest.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<Frame>,
    pub bufs: Vec<Box<[u8]>>,
    /// Guest memory the `Tail::Guest` frames live in (held for the burst).
    pub mem: Option<Arc<Memory>>,
    pub segs: Vec<Seg>,
    /// The frames' deep heads, by frame index, when the switch asked for them.
    pub deep: Vec<DeepHead>,
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            frames: Vec::with_capacity(VHOST_BURST),
            bufs: Vec::new(),
            mem: None,
            segs: Vec::new(),
            deep: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.segs.clear();
        self.mem = None;
    }

    /// Copies the first [`FLOW_HEAD`] bytes of every frame into [`Batch::deep`] (for flow
    /// rules). A frame in guest memory is then sent from that copy for those bytes, so
    /// the guest cannot change them between the decision and the send. A frame whose
    /// bytes cannot be read gets a short deep head, which the switch refuses.
    pub fn deepen(&mut self) {
        let Batch { frames, bufs, mem, segs, deep } = self;
        // Deep heads are reused across bursts: only their first `len` bytes mean anything.
        if deep.len() < frames.len() {
            deep.resize(frames.len(), DeepHead::default());
        }
        let mut x = mem.as_deref().map(Xlate::new);
        for (f, d) in frames.iter_mut().zip(deep.iter_mut()) {
            let want = (f.len as usize).min(FLOW_HEAD);
            let hl = usize::from(f.head_len).min(want);
            // The whole head array (a fixed-size copy); bytes past `hl` are overwritten or
            // past `len`.
            d.bytes[..HEAD_LEN].copy_from_slice(&f.head);
            let mut n = hl;
            match f.tail {
                Tail::Local { buf, off } => {
                    let off = off as usize;
                    if let Some(src) = bufs.get(usize::from(buf)).and_then(|b| b.get(off..off + (want - hl))) {
                        d.bytes[hl..want].copy_from_slice(src);
                        n = want;
                    }
                }
                Tail::Guest { seg, nsegs } => {
                    for s in segs.get(seg as usize..seg as usize + usize::from(nsegs)).unwrap_or_default() {
                        if n >= want {
                            break;
                        }
                        let take = (s.len as usize).min(want - n);
                        match x.as_mut().and_then(|x| x.slice(s.addr, take)) {
                            Some(span) if span.read_to(&mut d.bytes[n..n + take]) => n += take,
                            _ => break,
                        }
                    }
                    f.pre = (n - hl) as u8;
                }
            }
            d.len = n as u8;
        }
    }

    /// The frames as the switch sees them after [`Batch::deepen`].
    pub fn deep_infos(&self) -> impl Iterator<Item = FrameInfo<'_>> {
        self.frames.iter().zip(&self.deep).map(|(f, d)| FrameInfo {
            head: &d.bytes[..usize::from(d.len)],
            len: f.len as usize,
            gso: f.vnet.is_gso(),
        })
    }

    /// The tail bytes of frame `i` sent from its deep head (see [`Frame::pre`]).
    fn pre_bytes(&self, i: usize) -> &[u8] {
        let f = &self.frames[i];
        match (f.pre, self.deep.get(i)) {
            (0, _) | (_, None) => &[],
            (pre, Some(d)) => {
                let hl = usize::from(f.head_len);
                &d.bytes[hl..hl + usize::from(pre)]
            }
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Makes sure `n` local buffers of [`MAX_FRAME`] + `extra` bytes exist (allocated once;
    /// pages untouched by small frames never become resident).
    pub fn ensure_bufs(&mut self, n: usize, extra: usize) {
        while self.bufs.len() < n {
            self.bufs.push(vec![0u8; MAX_FRAME + extra].into_boxed_slice());
        }
    }

    pub fn infos(&self) -> impl Iterator<Item = FrameInfo<'_>> {
        self.frames.iter().map(Frame::info)
    }

    /// The bytes after the head of a frame that lives locally.
    fn local_tail(&self, f: &Frame) -> Option<&[u8]> {
        match f.tail {
            Tail::Local { buf, off } => {
                let off = off as usize;
                Some(&self.bufs[usize::from(buf)][off..off + f.tail_len()])
            }
            Tail::Guest { .. } => None,
        }
    }

    /// Frame `i` as one slice, when it lies whole in a local buffer as it came (its head
    /// copy still in front of its tail: no tag was put back into the head).
    pub fn contiguous(&self, i: usize) -> Option<&[u8]> {
        let f = &self.frames[i];
        let Tail::Local { buf, off } = f.tail else { return None };
        let (off, hl) = (off as usize, usize::from(f.head_len));
        let start = off.checked_sub(hl)?;
        let b = &self.bufs[usize::from(buf)];
        (f.pre == 0 && b[start..off] == *f.head()).then(|| &b[start..off + f.tail_len()])
    }

    /// Frame `i`'s tail when it is one segment of guest memory, with nothing of it copied
    /// into a deep head (the usual frame from a guest: one descriptor).
    pub fn one_guest_seg(&self, i: usize) -> Option<Seg> {
        let f = &self.frames[i];
        match f.tail {
            Tail::Guest { seg, nsegs: 1 } if f.pre == 0 => self.segs.get(seg as usize).copied(),
            _ => None,
        }
    }

    /// The guest segments of frame `i` after its deep-head bytes.
    fn guest_segs(&self, i: usize) -> impl Iterator<Item = Seg> + '_ {
        let f = &self.frames[i];
        let segs = match f.tail {
            Tail::Guest { seg, nsegs } => &self.segs[seg as usize..seg as usize + usize::from(nsegs)],
            Tail::Local { .. } => &[],
        };
        let mut skip = u32::from(f.pre);
        segs.iter().filter_map(move |s| {
            if skip >= s.len {
                skip -= s.len;
                return None;
            }
            let out = Seg { addr: s.addr + u64::from(skip), len: s.len - skip };
            skip = 0;
            Some(out)
        })
    }

    /// Appends the tail of `f` to a kernel scatter list. `false` if a guest segment is no
    /// longer valid guest memory (the frame must then be dropped).
    pub fn tail_io<'a>(&'a self, i: usize, out: &mut Vec<IoPart<'a>>) -> bool {
        let f = &self.frames[i];
        if let Some(t) = self.local_tail(f) {
            out.push(IoPart::Bytes(t));
            return true;
        }
        let Some(mem) = self.mem.as_deref() else { return false };
        if f.pre > 0 {
            out.push(IoPart::Bytes(self.pre_bytes(i)));
        }
        for s in self.guest_segs(i) {
            match mem.get_slice(GuestAddress(s.addr), s.len as usize) {
                Ok(v) => out.push(IoPart::Guest(GuestPart::new(&v))),
                Err(_) => return false,
            }
        }
        true
    }

    /// Appends the tail of `f` to a vhost receive-queue write; guest segments are translated
    /// with `x` (made by [`Batch::xlate`] for this burst) when given.
    pub fn tail_parts<'a, 'x: 'a>(&'a self, i: usize, x: Option<&mut Xlate<'x>>, out: &mut impl Extend<Part<'a>>) {
        let f = &self.frames[i];
        if let Some(t) = self.local_tail(f) {
            out.extend(std::iter::once(Part::Bytes(t)));
        } else if let Some(mem) = self.mem.as_deref() {
            if f.pre > 0 {
                out.extend(std::iter::once(Part::Bytes(self.pre_bytes(i))));
            }
            match x {
                Some(x) => out.extend(self.guest_segs(i).map(|s| match x.slice(s.addr, s.len as usize) {
                    Some(v) => Part::Slice(v),
                    // Not guest memory (any more): the write reports it.
                    None => Part::Guest(mem, s),
                })),
                None => out.extend(self.guest_segs(i).map(|s| Part::Guest(mem, s))),
            }
        }
    }

    /// A translator for the guest memory this burst's frames live in.
    pub fn xlate(&self) -> Option<Xlate<'_>> {
        self.mem.as_deref().map(Xlate::new)
    }

    /// Adds a frame taken from a guest's transmit queue (its tail segments already in `segs`).
    pub fn push_guest(&mut self, t: &TxFrame) {
        self.frames.push(Frame::guest(t));
    }

    /// Adds the frame held in `bufs[buf][at..at + len]`. A VLAN tag the kernel stripped off
    /// (`stripped`: TPID and TCI) is put back in the head, as if it had never left the frame.
    pub fn push_local(&mut self, buf: u16, at: usize, len: usize, vnet: VnetHdr, stripped: Option<(u16, u16)>) {
        let bytes = &self.bufs[usize::from(buf)][at..at + len];
        let mut head = [0u8; HEAD_LEN];
        let (head_len, tail_off, total, vnet) = match stripped {
            Some((tpid, tci)) if len >= TAG_OFFSET + 2 => {
                head[..TAG_OFFSET].copy_from_slice(&bytes[..TAG_OFFSET]);
                head[12..14].copy_from_slice(&tpid.to_be_bytes());
                head[14..16].copy_from_slice(&tci.to_be_bytes());
                head[16..18].copy_from_slice(&bytes[12..14]);
                (HEAD_LEN, at + 14, len + VLAN_HLEN, vnet.shifted(VLAN_HLEN as isize))
            }
            _ => {
                let h = len.min(HEAD_LEN);
                head[..h].copy_from_slice(&bytes[..h]);
                (h, at + h, len, vnet)
            }
        };
        self.frames.push(Frame {
            head,
            head_len: head_len as u8,
            len: total as u32,
            vnet,
            tail: Tail::Local { buf, off: tail_off as u32 },
            pre: 0,
        });
    }

    /// The whole frame `i` as it leaves with `action` (for captures), at most `snaplen` bytes.
    pub fn materialize(&self, i: usize, action: TagAction, snaplen: usize) -> Vec<u8> {
        let f = &self.frames[i];
        let mut head = [0u8; OUT_HEAD_MAX];
        let n = f.out_head(action, &mut head);
        let mut v = Vec::with_capacity((n + f.tail_len()).min(snaplen));
        v.extend_from_slice(&head[..n]);
        if let Some(tail) = self.local_tail(f) {
            v.extend_from_slice(&tail[..tail.len().min(snaplen.saturating_sub(n))]);
        } else if let Some(mem) = self.mem.as_deref() {
            let pre = self.pre_bytes(i);
            v.extend_from_slice(&pre[..pre.len().min(snaplen.saturating_sub(n))]);
            for s in self.guest_segs(i) {
                let at = v.len();
                let take = (s.len as usize).min(snaplen.saturating_sub(at));
                v.resize(at + take, 0);
                if mem.read_slice(&mut v[at..], GuestAddress(s.addr)).is_err() {
                    v.truncate(at);
                    break;
                }
            }
        }
        v.truncate(snaplen);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::Tci;

    fn frame_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 60];
        b[..6].copy_from_slice(&[0xff; 6]);
        b[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        for (i, x) in b[14..].iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn stripped_tag_is_put_back_into_the_head() {
        let mut batch = Batch::new();
        batch.bufs.push(vec![0u8; 100].into_boxed_slice());
        let f = frame_bytes();
        batch.bufs[0][10..70].copy_from_slice(&f);
        let vnet = VnetHdr { flags: 1, csum_start: 34, ..Default::default() };
        batch.push_local(0, 10, 60, vnet, Some((0x8100, Tci::new(1, false, 42).0)));
        let fr = batch.frames[0];
        assert_eq!(fr.len, 64);
        assert_eq!(batch.local_tail(&fr).unwrap(), &f[14..]);
        assert_eq!(fr.vnet.csum_start, 38);
        let out = batch.materialize(0, TagAction::Keep, 1 << 16);
        assert_eq!(&out[..12], &f[..12]);
        assert_eq!(&out[12..16], &[0x81, 0x00, 0x20, 42]);
        assert_eq!(&out[16..], &f[12..]);
        // Popping it again gives back the frame as it was on the wire.
        assert_eq!(batch.materialize(0, TagAction::Pop, 1 << 16), f);
        assert_eq!(fr.out_vnet(TagAction::Pop).csum_start, 34);
    }

    #[test]
    fn untagged_frames_and_short_frames() {
        let mut batch = Batch::new();
        batch.bufs.push(vec![0u8; 100].into_boxed_slice());
        let f = frame_bytes();
        batch.bufs[0][..60].copy_from_slice(&f);
        batch.push_local(0, 0, 60, VnetHdr::default(), None);
        batch.push_local(0, 0, 10, VnetHdr::default(), None);
        assert_eq!(batch.materialize(0, TagAction::Keep, 1 << 16), f);
        assert_eq!(batch.materialize(0, TagAction::Keep, 20), &f[..20]);
        let pushed = batch.materialize(0, TagAction::Push(Tci::new(0, false, 7)), 1 << 16);
        assert_eq!(pushed.len(), 64);
        assert_eq!(&pushed[16..], &f[12..]);
        assert_eq!(batch.frames[1].head_len, 10);
        assert_eq!(batch.local_tail(&batch.frames[1]).unwrap().len(), 0);
    }

    #[test]
    fn deep_heads_cover_the_flow_head_and_the_rest_is_sent_once() {
        let mut batch = Batch::new();
        batch.bufs.push(vec![0u8; 300].into_boxed_slice());
        let mut f = frame_bytes();
        f.resize(200, 7);
        batch.bufs[0][..200].copy_from_slice(&f);
        batch.push_local(0, 0, 200, VnetHdr::default(), None);
        batch.push_local(0, 0, 10, VnetHdr::default(), None);
        batch.deepen();
        let infos: Vec<_> = batch.deep_infos().collect();
        assert_eq!(infos[0].head, &f[..FLOW_HEAD]);
        assert_eq!(infos[1].head, &f[..10]);
        // Local frames keep their tails where they are.
        assert_eq!(batch.frames[0].pre, 0);
        assert_eq!(batch.materialize(0, TagAction::Keep, 1 << 16), f);
    }

    /// A guest frame in short segments: the deep head is copied across them, the tail is
    /// sent from the copy for those bytes and from guest memory after them, and a guest
    /// that rewrites its buffer after the decision changes nothing the rules looked at.
    #[test]
    fn guest_tails_skip_what_the_deep_head_holds() {
        let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut f = frame_bytes();
        f.resize(300, 0);
        for (i, b) in f.iter_mut().enumerate().skip(14) {
            *b = (i * 7) as u8;
        }
        // The head (18 bytes) is copied by the ring; the rest in segments of 50, 30, 202.
        let mut at = 0x1000u64;
        let mut segs = Vec::new();
        let mut off = HEAD_LEN;
        for len in [50usize, 30, 202] {
            mem.write_slice(&f[off..off + len], GuestAddress(at)).unwrap();
            segs.push(Seg { addr: at, len: len as u32 });
            at += 0x100;
            off += len;
        }
        let mut batch = Batch::new();
        batch.mem = Some(Arc::new(mem));
        batch.segs = segs.clone();
        let mut head = [0u8; HEAD_LEN];
        head.copy_from_slice(&f[..HEAD_LEN]);
        batch.frames.push(Frame {
            head,
            head_len: HEAD_LEN as u8,
            len: 300,
            vnet: VnetHdr::default(),
            tail: Tail::Guest { seg: 0, nsegs: 3 },
            pre: 0,
        });
        batch.deepen();
        assert_eq!(batch.frames[0].pre as usize, FLOW_HEAD - HEAD_LEN);
        assert_eq!(batch.deep_infos().next().unwrap().head, &f[..FLOW_HEAD]);
        // The guest rewrites bytes 20..140 (in the deep head) and 200 (after it).
        let m = batch.mem.as_deref().unwrap();
        m.write_slice(&[0xee; 50], GuestAddress(0x1000)).unwrap();
        m.write_slice(&[0xee; 30], GuestAddress(0x1100)).unwrap();
        m.write_slice(&[0xee; 1], GuestAddress(0x1200 + 100)).unwrap();
        let out = batch.materialize(0, TagAction::Keep, 1 << 16);
        assert_eq!(out.len(), 300);
        assert_eq!(&out[..FLOW_HEAD], &f[..FLOW_HEAD], "what the rules saw is what leaves");
        assert_eq!(out[HEAD_LEN + 80 + 100], 0xee, "bytes after the deep head come from the guest");
        let mut parts: Vec<Part<'_>> = Vec::new();
        batch.tail_parts(0, None, &mut parts);
        let total: usize = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len(),
                Part::Guest(_, s) => s.len as usize,
                _ => 0,
            })
            .sum();
        assert_eq!(total, 300 - HEAD_LEN);
        let mut io = Vec::new();
        assert!(batch.tail_io(0, &mut io));
        assert_eq!(io.len(), 2, "the copy, then the rest of the last segment");
    }
}
