//! Port captures (`vmnetd capture`): copies of what a port receives and sends, handed to the
//! control plane over a bounded channel. The datapath never waits for a slow reader: a full
//! channel, or a full [`Budget`] (the memory all captures together may hold), drops the
//! copy and counts it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub use crate::api::Dir;

/// The memory all captures together may hold in frames their readers have not taken yet.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { used: AtomicUsize::new(0), limit })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(self: &Arc<Budget>, bytes: usize) -> Option<Charge> {
        // Each frame also costs its bookkeeping.
        let bytes = bytes + 64;
        let prev = self.used.fetch_add(bytes, Ordering::Relaxed);
        if prev + bytes > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return None;
        }
        Some(Charge { budget: self.clone(), bytes })
    }
}

/// Memory charged to the [`Budget`] until dropped.
#[derive(Debug)]
struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Captured {
    pub ts: SystemTime,
    pub dir: Dir,
    /// The frame as on the wire of this port (tags included), cut to the snap length.
    pub data: Vec<u8>,
    /// Length before cutting.
    pub orig_len: u32,
    _charge: Charge,
}

/// One capture session on one port.
#[derive(Debug)]
pub struct Sink {
    tx: tokio::sync::mpsc::Sender<Captured>,
    remaining: Option<u64>,
    pub snaplen: usize,
    /// Copies dropped because the reader was behind (shared with the reader).
    pub dropped: Arc<AtomicU64>,
    budget: Arc<Budget>,
}

impl Sink {
    pub fn new(
        tx: tokio::sync::mpsc::Sender<Captured>,
        count: Option<u64>,
        snaplen: usize,
        dropped: Arc<AtomicU64>,
        budget: Arc<Budget>,
    ) -> Sink {
        Sink { tx, remaining: count, snaplen, dropped, budget }
    }

    /// Offers one frame; returns false when the session is over (reader gone, or count
    /// reached) and the sink should be removed.
    pub fn offer(&mut self, dir: Dir, orig_len: usize, data: impl FnOnce(usize) -> Vec<u8>) -> bool {
        if self.remaining == Some(0) || self.tx.is_closed() {
            return false;
        }
        let Some(charge) = self.budget.charge(orig_len.min(self.snaplen)) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let c = Captured {
            ts: SystemTime::now(),
            dir,
            data: data(self.snaplen),
            orig_len: orig_len as u32,
            _charge: charge,
        };
        match self.tx.try_send(c) {
            Ok(()) => {
                if let Some(r) = &mut self.remaining {
                    *r -= 1;
                    return *r > 0;
                }
                true
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
