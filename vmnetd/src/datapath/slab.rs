//! Handles of the datapath's ports: a slab of slots with generation counters.
//!
//! Everything that refers to a port from outside its bridge — epoll tokens, queued work,
//! busy-polled queues — holds a [`Handle`] (slot and generation). Removing a port bumps its
//! slot's generation, so a handle taken before can never reach the port that reuses the slot
//! (the ABA problem of reusing slot indices).

use crate::switch::PortId;

/// A port, as work and events refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    slot: u32,
    gen: u32,
}

/// Where a live handle's port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub bridge: usize,
    pub port: PortId,
}

#[derive(Debug)]
struct Slot {
    gen: u32,
    place: Option<Place>,
}

#[derive(Debug, Default)]
pub struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

/// Bits of an epoll token: generation (23), slot (32), event (8); the top bit is always 0,
/// so no token is `u64::MAX`.
const GEN_BITS: u32 = 23;

impl Slab {
    pub fn insert(&mut self, place: Place) -> Handle {
        match self.free.pop() {
            Some(slot) => {
                let s = &mut self.slots[slot as usize];
                s.place = Some(place);
                Handle { slot, gen: s.gen }
            }
            None => {
                self.slots.push(Slot { gen: 0, place: Some(place) });
                Handle { slot: (self.slots.len() - 1) as u32, gen: 0 }
            }
        }
    }

    /// Where `h`'s port is, if it still exists.
    pub fn get(&self, h: Handle) -> Option<Place> {
        let s = self.slots.get(h.slot as usize)?;
        if s.gen == h.gen {
            s.place
        } else {
            None
        }
    }

    /// Forgets `h`'s port; every handle to it is dead from now on.
    pub fn remove(&mut self, h: Handle) -> Option<Place> {
        let s = self.slots.get_mut(h.slot as usize)?;
        if s.gen != h.gen {
            return None;
        }
        let p = s.place.take()?;
        s.gen = (s.gen + 1) & ((1 << GEN_BITS) - 1);
        self.free.push(h.slot);
        Some(p)
    }

    /// Live handles.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Handle {
    /// The epoll token for event `ev` of this port. `u64::MAX` is never one (reserved for
    /// the datapath's own wake-up).
    pub fn token(self, ev: u8) -> u64 {
        (u64::from(self.gen) << 40) | (u64::from(self.slot) << 8) | u64::from(ev)
    }

    pub fn from_token(t: u64) -> (Handle, u8) {
        let gen = ((t >> 40) as u32) & ((1 << GEN_BITS) - 1);
        (Handle { slot: (t >> 8) as u32, gen }, t as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(p: usize) -> Place {
        Place { bridge: 0, port: PortId::from_index(p) }
    }

    #[test]
    fn a_reused_slot_does_not_answer_old_handles() {
        let mut s = Slab::default();
        let a = s.insert(place(1));
        assert_eq!(s.get(a), Some(place(1)));
        assert_eq!(s.remove(a), Some(place(1)));
        let b = s.insert(place(2));
        // Same slot, new generation.
        assert_eq!(b.slot, a.slot);
        assert_eq!(s.get(a), None, "a handle of the removed port reached its successor");
        assert_eq!(s.get(b), Some(place(2)));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn tokens_round_trip_and_never_collide_with_the_wake_token() {
        let mut s = Slab::default();
        let mut h = s.insert(place(0));
        for _ in 0..5 {
            s.remove(h);
            h = s.insert(place(0));
        }
        for ev in [0u8, 1, 16, 250, 255] {
            let t = h.token(ev);
            assert_ne!(t, u64::MAX);
            assert_eq!(Handle::from_token(t), (h, ev));
        }
        // The generation wraps within its bits.
        let big = Handle { slot: u32::MAX, gen: (1 << GEN_BITS) - 1 };
        assert_ne!(big.token(255), u64::MAX);
        assert_eq!(Handle::from_token(big.token(7)), (big, 7));
    }
}
