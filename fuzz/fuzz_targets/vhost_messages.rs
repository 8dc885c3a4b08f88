//! Sequences of vhost-user messages with arbitrary payloads and file descriptors, sent over
//! a real socketpair to vmnetd's device, the way any process that can reach a port's socket
//! can. Whatever arrives, the handler must not panic; afterwards the datapath side is run
//! over whatever rings and memory the messages set up, which must not panic either.
#![no_main]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost::vhost_user::BackendReqHandler;
use vm_memory::GuestAddressSpace;
use vmnetd_vhost::device::{Handler, Shared};
use vmnetd_vhost::queue::{complete_tx, pop_tx, RxScratch, RxWriter};

#[derive(Debug, arbitrary::Arbitrary)]
enum Fd {
    None,
    EventFd,
    Pipe,
    /// A memfd of this many 4 KiB pages (at most 64).
    Memfd(u8),
    /// A memfd that is then shrunk to this many pages.
    ShrunkMemfd(u8, u8),
    Socket,
}

#[derive(Debug, arbitrary::Arbitrary)]
struct Msg {
    request: u8,
    flags: u8,
    /// Declared size, when it should lie about the payload.
    size: Option<u16>,
    payload: Vec<u8>,
    fds: Vec<Fd>,
}

fn make(fd: &Fd) -> Option<OwnedFd> {
    let memfd = |pages: u8| {
        let m = nix::sys::memfd::memfd_create("fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).ok()?;
        nix::unistd::ftruncate(&m, i64::from(pages % 65) * 4096).ok()?;
        Some(m)
    };
    match fd {
        Fd::None => None,
        Fd::EventFd => nix::sys::eventfd::EventFd::new().ok().map(OwnedFd::from),
        Fd::Pipe => nix::unistd::pipe().ok().map(|(r, _)| r),
        Fd::Memfd(p) => memfd(*p),
        Fd::ShrunkMemfd(p, q) => {
            let m = memfd(*p)?;
            // Shrinking after the message is sent is what matters; shrinking before is the
            // closest a single-threaded target gets (the size check must catch it).
            nix::unistd::ftruncate(&m, i64::from(q % 65) * 4096).ok()?;
            Some(m)
        }
        Fd::Socket => UnixStream::pair().ok().map(|(a, _)| a.into()),
    }
}

fuzz_target!(|msgs: Vec<Msg>| {
    let _ = vmnetd_vhost::guard::install();
    let (front, back) = UnixStream::pair().unwrap();
    front.set_nonblocking(true).unwrap();
    // One thread plays both ends: a message shorter than its header says must not make the
    // backend wait for bytes that will never come (it sees EAGAIN, as a frontend that
    // stalls would leave its connection thread waiting).
    back.set_nonblocking(true).unwrap();
    let shared = Shared::new("fuzz", 2).unwrap();
    let id = shared.connect();
    let handler = Arc::new(Mutex::new(Handler::new(shared.clone(), id)));
    let mut req = BackendReqHandler::from_stream(back, handler);
    for m in msgs.iter().take(32) {
        let payload = &m.payload[..m.payload.len().min(512)];
        let mut hdr = Vec::with_capacity(12);
        hdr.extend(u32::from(m.request % 48).to_le_bytes());
        // Version 1 plus whatever flags the fuzzer sets (NEED_REPLY, REPLY...).
        hdr.extend((1u32 | u32::from(m.flags & 0xfc)).to_le_bytes());
        hdr.extend(u32::from(m.size.unwrap_or(payload.len() as u16)).to_le_bytes());
        let fds: Vec<OwnedFd> = m.fds.iter().take(8).filter_map(make).collect();
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [IoSlice::new(&hdr), IoSlice::new(payload)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        if sendmsg::<()>(front.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, None).is_err() {
            break;
        }
        // Each message gets its turn; a fatal protocol error ends the connection, as in
        // the daemon.
        if req.handle_request().is_err() {
            // Drain replies so the socket never fills.
            let mut b = [0u8; 4096];
            while nix::sys::socket::recv(front.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT).unwrap_or(0) > 0 {}
            continue;
        }
        let mut b = [0u8; 4096];
        while nix::sys::socket::recv(front.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT).unwrap_or(0) > 0 {}
    }
    // The datapath over what was set up.
    let mut st = shared.lock();
    let mem = st.mem.memory();
    let hl = st.hdr_len();
    for pair in 0..2 {
        if st.vrings[2 * pair + 1].active() {
            let mut segs = Vec::new();
            let mut heads = Vec::new();
            let _ = pop_tx(&mut st.vrings[2 * pair + 1].queue, &mem, hl, 64, &mut segs, |h, _, _| heads.push(h));
            complete_tx(&mut st.vrings[2 * pair + 1].queue, &mem, &heads);
        }
        if st.vrings[2 * pair].active() {
            let mut scratch = RxScratch::default();
            let mut w = RxWriter::new(&mut st.vrings[2 * pair].queue, &mem, true, hl, &mut scratch);
            let _ = w.write(&Default::default(), &[vmnetd_vhost::queue::Part::Bytes(&[0u8; 60])]);
            let _ = w.finish();
        }
    }
    let c = st.ctrl_index();
    if st.vrings[c].active() {
        let _ = vmnetd_vhost::ctrl::process(&mut st, &mem, 2);
    }
    drop(st);
    shared.disconnected(id);
});
