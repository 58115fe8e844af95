//! The body hashes of the last accepted topups, to tell a redelivery from a
//! new request.
//!
//! Accepted topups are not looked up by body in the inbox (a B-tree over
//! random hashes cost a page write per request). But a topup whose
//! acknowledgement was lost is delivered again, possibly after a remove of
//! the same address was applied: applied as new, it would watch the address
//! again and undo that remove. The broker redelivers only what it had handed
//! over unacknowledged, at most `prefetch` per consumer, so the last few
//! thousand accepted topups are the only ones that can come back that way;
//! they are kept here (loaded from the inbox at start).

use std::collections::{HashSet, VecDeque};

/// A bounded set of recent body hashes, oldest dropped first.
#[derive(Debug)]
pub struct RecentHashes {
    order: VecDeque<[u8; 32]>,
    set: HashSet<[u8; 32]>,
    capacity: usize,
}

impl RecentHashes {
    /// An empty set keeping at most `capacity` hashes.
    pub fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            set: HashSet::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
        }
    }

    /// Whether `hash` is among the recent ones.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.set.contains(hash)
    }

    /// Adds `hash` (a no-op if present), dropping the oldest beyond capacity.
    pub fn push(&mut self, hash: [u8; 32]) {
        if !self.set.insert(hash) {
            return;
        }
        self.order.push_back(hash);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_up_to_capacity() {
        let mut r = RecentHashes::new(2);
        r.push([1; 32]);
        r.push([2; 32]);
        r.push([1; 32]);
        assert!(r.contains(&[1; 32]) && r.contains(&[2; 32]));
        r.push([3; 32]);
        assert!(!r.contains(&[1; 32]), "the oldest went first");
        assert!(r.contains(&[2; 32]) && r.contains(&[3; 32]));
    }
}
