//! The datapath's event loop: epoll, queued work, busy polling, and one burst's walk from an
//! edge through the switch to the destination edges.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{EpollEvent, EpollTimeout};

use crate::ports::{EventCx, EventId, Outcome, Refused};
use crate::switch::{BurstPlan, DropReason, PortId, TagAction};

use super::batch::Batch;
use super::capture::{Dir, Sink};
use super::slab::Handle;
use super::{Bridge, Cmd, Datapath, PortState, WAKE};

/// How often a busy datapath still looks at epoll (control commands, other ports).
const EPOLL_EVERY: u32 = 16;
/// How long an otherwise idle datapath sleeps before handing the kernel again what a
/// transmit ring still holds (see [`crate::ports::SendResult::unflushed`]).
const FLUSH_RETRY_MS: u16 = 1;
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

impl Datapath {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut last_expire = Instant::now();
        let mut iter = 0u32;
        while !self.stopping {
            iter = iter.wrapping_add(1);
            self.turn(&rx, iter, &mut last_expire);
        }
    }

    /// One turn of the loop: epoll (blocking when nothing is hot), queued work, polled
    /// queues, housekeeping.
    pub fn turn(&mut self, rx: &mpsc::Receiver<Cmd>, iter: u32, last_expire: &mut Instant) {
        let mut events = [EpollEvent::empty(); 64];
        let hot = !self.pending.is_empty() || !self.polled.is_empty();
        let unflushed = self.unflushed;
        // While frames flow, epoll is only looked at now and then: the rings are polled.
        if !hot || iter % EPOLL_EVERY == 0 {
            let timeout = match (hot, unflushed) {
                (true, _) => 0u16,
                (false, true) => FLUSH_RETRY_MS,
                (false, false) => 1000,
            };
            let slept = (!hot).then(Instant::now);
            let waited = self.epoll.wait(&mut events, EpollTimeout::from(timeout));
            if let Some(t) = slept {
                self.load.idle += t.elapsed();
            }
            let n = match waited {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    log::error!("datapath: epoll_wait: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    0
                }
            };
            for ev in &events[..n] {
                let t = ev.data();
                if t == WAKE {
                    let _ = self.wake.read();
                    while let Ok(cmd) = rx.try_recv() {
                        cmd(self);
                    }
                } else {
                    let (h, ev) = Handle::from_token(t);
                    self.service(h, ev, true);
                }
            }
        }
        for _ in 0..self.pending.len() {
            if let Some((h, ev)) = self.pending.pop_front() {
                self.service(h, ev, false);
            }
        }
        if !self.polled.is_empty() {
            self.poll_idle_queues();
        }
        if unflushed {
            self.flush_edges();
        }
        if vmnetd_vhost::guard::epoch() != self.guard_epoch {
            self.check_guest_memory();
        }
        if last_expire.elapsed() >= EXPIRE_EVERY {
            *last_expire = Instant::now();
            let now = self.now();
            for br in self.bridges.iter_mut().flatten() {
                br.switch.expire(now);
            }
        }
    }

    /// Edges that kept frames the kernel did not take hand them over again; those that
    /// still hold some stay on the list.
    fn flush_edges(&mut self) {
        let mut left_any = false;
        for br in self.bridges.iter_mut().flatten() {
            for id in std::mem::take(&mut br.unflushed) {
                let left = br.ports.get_mut(id.index()).and_then(Option::as_mut).and_then(|p| p.edge.as_mut());
                if left.is_some_and(|e| e.flush()) {
                    br.unflushed.push(id);
                }
            }
            left_any |= !br.unflushed.is_empty();
        }
        self.unflushed = left_any;
    }

    /// A frontend shrank its memory file under us (the SIGBUS guard replaced the mapping):
    /// let every edge look.
    fn check_guest_memory(&mut self) {
        self.guard_epoch = vmnetd_vhost::guard::epoch();
        for br in self.bridges.iter_mut().flatten() {
            for port in br.ports.iter_mut().flatten() {
                if let Some(e) = port.edge.as_mut() {
                    e.check_memory();
                }
            }
        }
    }

    /// Busy-poll mode: one run of every polled event; past the budget without frames, their
    /// notifications are turned back on and the thread may sleep.
    fn poll_idle_queues(&mut self) {
        let mut i = 0;
        while i < self.polled.len() {
            let (h, ev) = self.polled[i];
            match self.run_event(h, ev, false) {
                Some((got, more, true)) => {
                    if got > 0 {
                        self.last_frame = Instant::now();
                    }
                    if more {
                        self.pending.push_back((h, ev));
                    }
                    i += 1;
                }
                // Gone, idle, or no longer pollable.
                _ => {
                    self.polled.swap_remove(i);
                }
            }
        }
        if self.last_frame.elapsed() >= self.settings.busy_poll {
            for (h, ev) in std::mem::take(&mut self.polled) {
                let more = self.port_mut(h).and_then(|p| p.edge.as_mut()).is_some_and(|e| e.stop_polling(ev));
                if more {
                    self.pending.push_back((h, ev));
                }
            }
        }
    }

    /// Handles one event (`from_epoll`: epoll said so) or queued work: a bounded number of
    /// bursts, the rest queued.
    fn service(&mut self, h: Handle, ev: EventId, from_epoll: bool) {
        let Some(bursts) = self.port_mut(h).and_then(|p| p.edge.as_ref()).map(|e| e.bursts_per_event()) else {
            return; // a removed port's leftovers
        };
        let mut from_epoll = from_epoll;
        for _ in 0..bursts {
            match self.run_event(h, ev, from_epoll) {
                None => return,
                Some((got, more, pollable)) => {
                    if got > 0 {
                        self.last_frame = Instant::now();
                    }
                    if !more {
                        if pollable && !self.polled.contains(&(h, ev)) {
                            self.polled.push((h, ev));
                        }
                        return;
                    }
                }
            }
            from_epoll = false;
        }
        self.pending.push_back((h, ev));
    }

    /// Runs one event of a port's edge: its burst goes through the switch to the other
    /// ports. Returns (frames, more waiting, pollable) after a burst; `None` when the port
    /// is gone, the event was idle, or it changed the port (rewatched, failed).
    fn run_event(&mut self, h: Handle, ev: EventId, from_epoll: bool) -> Option<(usize, bool, bool)> {
        let place = self.slab.get(h)?;
        let now = self.now();
        let poll = !self.settings.busy_poll.is_zero();
        let br = self.bridges.get_mut(place.bridge)?.as_mut()?;
        let p = place.port;
        let port = br.port_mut(p)?;
        // The edge is lent to its own burst; the bridge (its switch and the other ports) to
        // the ingress callback.
        let mut edge = port.edge.take()?;
        let mut batch = std::mem::take(&mut port.batch);
        batch.clear();
        let plan = &mut self.plan;
        let unflushed = &mut self.unflushed;
        let cx = EventCx { from_epoll, poll };
        let outcome = edge.on_event(ev, cx, &mut batch, &mut |b: &mut Batch, refused: Refused| {
            *unflushed |= ingress(br, p, b, refused, now, plan);
        });
        batch.clear();
        let bridge_name = &br.name;
        let port = br.ports.get_mut(p.index())?.as_mut()?;
        port.edge = Some(edge);
        port.batch = batch;
        match outcome {
            Outcome::Burst { frames, more, pollable } => {
                if frames > 0 {
                    self.load.burst(frames);
                }
                Some((frames, more, pollable))
            }
            Outcome::Idle => None,
            Outcome::Rewatch { forget_learned } => {
                if forget_learned {
                    let n = br.switch.forget_learned(p);
                    log::info!(
                        "bridge {} port {}: the guest migrated away; {n} learned addresses forgotten",
                        br.name,
                        port.name
                    );
                }
                self.unwatch_handle(h);
                if let Err(e) = self.watch(h) {
                    log::warn!("datapath: cannot watch a port's fds: {e}");
                }
                None
            }
            Outcome::Failed(e) => {
                log::warn!("bridge {bridge_name} port {}: receive failed, port down: {e}", port.name);
                port.state = PortState::Down(e.to_string());
                if let Some(tell) = &self.port_down {
                    tell(bridge_name, &port.name);
                }
                self.unwatch_handle(h);
                None
            }
        }
    }

    fn unwatch_handle(&mut self, h: Handle) {
        let epoll = &self.epoll;
        if let Some(place) = self.slab.get(h) {
            if let Some(port) =
                self.bridges.get_mut(place.bridge).and_then(Option::as_mut).and_then(|b| b.port_mut(place.port))
            {
                for (fd, _) in port.watched.drain(..) {
                    let _ = epoll.delete(&fd);
                }
            }
        }
    }
}

/// A burst received on port `p`: captured, counted, decided on, and forwarded. Returns
/// whether a destination's edge kept frames to flush later.
fn ingress(
    br: &mut Bridge,
    p: PortId,
    batch: &mut Batch,
    refused: Refused,
    now: Duration,
    plan: &mut BurstPlan,
) -> bool {
    for (reason, (frames, bytes)) in [(DropReason::RxError, refused.rx_error), (DropReason::BadGso, refused.bad_gso)] {
        for _ in 0..frames {
            br.switch.record_rx_drop(p, reason, (bytes / frames.max(1)) as usize);
        }
    }
    if batch.is_empty() {
        return false;
    }
    if let Some(port) = br.port_mut(p) {
        if !port.captures.is_empty() {
            capture(&mut port.captures, Dir::Rx, batch, (0..batch.len()).map(|i| (i, TagAction::Keep)));
        }
    }
    if br.switch.wants_deep_heads() {
        batch.deepen();
        br.switch.ingress_burst(p, batch.deep_infos(), now, plan);
    } else {
        br.switch.ingress_burst(p, batch.infos(), now, plan);
    }
    forward(br, batch, plan)
}

/// Sends each destination its share of a decided burst, and counts what its edge could not
/// deliver. Returns whether an edge kept frames to flush later.
fn forward(br: &mut Bridge, batch: &Batch, plan: &BurstPlan) -> bool {
    let mut kept = false;
    for (dst, list) in plan.destinations() {
        let Some(Some(dport)) = br.ports.get_mut(dst.index()) else {
            continue;
        };
        // The ingress port's edge is lent to its burst: the switch never sends back to it.
        let Some(edge) = dport.edge.as_mut() else { continue };
        let r = edge.tx_burst(batch, list);
        if !dport.captures.is_empty() {
            capture(&mut dport.captures, Dir::Tx, batch, list.iter().map(|e| (e.frame, e.action)));
        }
        if r.unflushed {
            kept = true;
            if !br.unflushed.contains(&dst) {
                br.unflushed.push(dst);
            }
        }
        for (reason, (frames, bytes)) in [
            (DropReason::NoRoom, r.no_room),
            (DropReason::TxError, r.errors),
            (DropReason::BadGso, r.bad_gso),
            (DropReason::Mtu, r.mtu),
        ] {
            if frames > 0 {
                br.switch.record_tx_failure(dst, reason, frames, bytes);
            }
        }
    }
    kept
}

fn capture(sinks: &mut Vec<Sink>, dir: Dir, batch: &Batch, frames: impl Iterator<Item = (usize, TagAction)> + Clone) {
    sinks.retain_mut(|s| {
        frames.clone().all(|(i, action)| {
            let len = action.splice().out_len(batch.frames[i].len as usize);
            s.offer(dir, len, |snap| batch.materialize(i, action, snap))
        })
    });
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Instant;

    use crate::datapath::batch::Batch;
    use crate::datapath::{Datapath, Settings};
    use crate::ports::{EventCx, EventId, Outcome, PortEdge, Refused, SendResult};
    use crate::switch::{Egress, PortConfig, SwitchConfig};

    /// An edge that only counts the events it is asked to run.
    #[derive(Debug)]
    struct Counting(Arc<AtomicUsize>);

    impl PortEdge for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn watches(&mut self) -> Vec<(OwnedFd, EventId)> {
            Vec::new()
        }
        fn on_event(
            &mut self,
            _: EventId,
            _: EventCx,
            _: &mut Batch,
            _: &mut dyn FnMut(&mut Batch, Refused),
        ) -> Outcome {
            self.0.fetch_add(1, Ordering::SeqCst);
            Outcome::Idle
        }
        fn tx_burst(&mut self, _: &Batch, _: &[Egress]) -> SendResult {
            SendResult::default()
        }
    }

    /// Work queued for a port (and its busy polling) must not reach the port that takes its
    /// slot after it is removed. With slot indices alone as tokens (before generations) the
    /// new port ran the old port's queued event.
    #[test]
    fn a_removed_ports_queued_work_never_reaches_its_successor() {
        let mut dp = Datapath::new(Settings::default()).unwrap();
        dp.add_bridge("br0", SwitchConfig::default());
        let (old, new) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        dp.add_port("br0", "a", Box::new(Counting(old.clone())), PortConfig::default()).unwrap();
        let a = dp.bridge("br0").and_then(|b| b.port_id("a")).unwrap();
        let handle = dp.bridges[0].as_ref().unwrap().port(a).unwrap().handle;
        // A burst left more work, and the queue is busy-polled.
        dp.pending.push_back((handle, 1));
        dp.polled.push((handle, 1));
        dp.remove_port("br0", "a").unwrap();
        dp.add_port("br0", "b", Box::new(Counting(new.clone())), PortConfig::default()).unwrap();
        let b = dp.bridge("br0").and_then(|b| b.port_id("b")).unwrap();
        assert_eq!(a, b, "the new port took the old one's slot");
        let (_tx, rx) = mpsc::channel();
        let mut last = Instant::now();
        for i in 0..3 {
            dp.turn(&rx, i, &mut last);
        }
        assert_eq!(old.load(Ordering::SeqCst), 0);
        assert_eq!(new.load(Ordering::SeqCst), 0, "the old port's queued work ran on its successor");
        // The new port's own work does run.
        let h = dp.bridges[0].as_ref().unwrap().port(b).unwrap().handle;
        dp.pending.push_back((h, 1));
        dp.turn(&rx, 3, &mut last);
        assert_eq!(new.load(Ordering::SeqCst), 1);
    }

    /// An edge that sends one broadcast frame per event and takes what it is sent into a
    /// transmit ring the kernel empties only on the `left`-th hand-over.
    #[derive(Debug)]
    struct Stuck {
        left: usize,
        flushes: Arc<AtomicUsize>,
    }

    impl PortEdge for Stuck {
        fn kind(&self) -> &'static str {
            "stuck"
        }
        fn watches(&mut self) -> Vec<(OwnedFd, EventId)> {
            Vec::new()
        }
        fn on_event(
            &mut self,
            _: EventId,
            _: EventCx,
            batch: &mut Batch,
            ingress: &mut dyn FnMut(&mut Batch, Refused),
        ) -> Outcome {
            batch.clear();
            batch.ensure_bufs(1, 0);
            let mut f = [0u8; 60];
            f[..6].fill(0xff);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            batch.bufs[0][..60].copy_from_slice(&f);
            batch.push_local(0, 0, 60, vmnetd_vhost::virtio_net::VnetHdr::default(), None);
            ingress(batch, Refused::default());
            batch.clear();
            Outcome::Burst { frames: 1, more: false, pollable: false }
        }
        fn tx_burst(&mut self, _: &Batch, list: &[Egress]) -> SendResult {
            SendResult { sent: list.len() as u64, unflushed: true, ..Default::default() }
        }
        fn flush(&mut self) -> bool {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.left = self.left.saturating_sub(1);
            self.left > 0
        }
    }

    /// Frames an edge could not hand to the kernel are handed over again on the next turns,
    /// until they are gone, without another burst to that port.
    #[test]
    fn frames_left_in_a_transmit_ring_are_flushed_without_more_traffic() {
        let mut dp = Datapath::new(Settings::default()).unwrap();
        dp.add_bridge("br0", SwitchConfig::default());
        let (fa, fb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        dp.add_port("br0", "a", Box::new(Stuck { left: 0, flushes: fa.clone() }), PortConfig::default()).unwrap();
        dp.add_port("br0", "b", Box::new(Stuck { left: 3, flushes: fb.clone() }), PortConfig::default()).unwrap();
        let a = dp.bridge("br0").and_then(|b| b.port_id("a")).unwrap();
        let b = dp.bridge("br0").and_then(|b| b.port_id("b")).unwrap();
        let ha = dp.bridges[0].as_ref().unwrap().port(a).unwrap().handle;
        let (_tx, rx) = mpsc::channel();
        let mut last = Instant::now();
        // One burst from a, flooded to b, which keeps it.
        dp.pending.push_back((ha, 0));
        dp.turn(&rx, 1, &mut last);
        assert_eq!(dp.bridges[0].as_ref().unwrap().unflushed, vec![b]);
        assert!(dp.unflushed);
        for i in 2..6 {
            dp.turn(&rx, i, &mut last);
        }
        assert_eq!(fb.load(Ordering::SeqCst), 3, "b is handed over again until its ring is empty, then left alone");
        assert_eq!(fa.load(Ordering::SeqCst), 0);
        assert!(dp.bridges[0].as_ref().unwrap().unflushed.is_empty());
        assert!(!dp.unflushed, "nothing left anywhere: idle turns look at no bridge");
    }
}
