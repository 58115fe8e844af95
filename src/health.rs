//! What the daemon knows about its own condition: broker and node connections,
//! the node's head and the block cursor, and whether the head has stalled.
//!
//! Tasks write their part; readers (logs, the health endpoint) take snapshots.
//! A plain mutex is enough: updates are a few per block.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One chain's condition.
#[derive(Debug, Clone, Default)]
pub struct ChainHealth {
    /// The node answers.
    pub node_connected: bool,
    /// Highest head the node reported.
    pub head: u64,
    /// Last verified block.
    pub cursor: u64,
    /// When the head last advanced.
    pub head_changed: Option<Instant>,
    /// The head has not advanced for longer than the configured limit.
    pub stalled: bool,
}

impl ChainHealth {
    /// Seconds since the head last advanced.
    pub fn since_head(&self) -> Option<Duration> {
        self.head_changed.map(|t| t.elapsed())
    }

    /// Blocks between the head and the cursor.
    pub fn lag(&self) -> u64 {
        self.head.saturating_sub(self.cursor)
    }
}

#[derive(Debug, Default)]
struct State {
    broker_connected: bool,
    chains: BTreeMap<String, ChainHealth>,
}

/// Shared condition of the daemon; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<State>>);

/// A copy of the condition at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The broker connection is up.
    pub broker_connected: bool,
    /// Per chain.
    pub chains: BTreeMap<String, ChainHealth>,
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means a writer panicked mid-update of plain
        // values; the data is still usable.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Records the broker connection state.
    pub fn set_broker(&self, up: bool) {
        self.with(|s| s.broker_connected = up);
    }

    /// Updates one chain's condition.
    pub fn chain(&self, name: &str, f: impl FnOnce(&mut ChainHealth)) {
        self.with(|s| f(s.chains.entry(name.to_owned()).or_default()));
    }

    /// Records a head reported by the node; returns how long it had been
    /// unchanged when it moves again after a stall.
    pub fn saw_head(&self, name: &str, head: u64) -> Option<Duration> {
        self.with(|s| {
            let c = s.chains.entry(name.to_owned()).or_default();
            c.node_connected = true;
            if head > c.head || c.head_changed.is_none() {
                let was = c.stalled.then(|| c.since_head()).flatten();
                c.head = head;
                c.head_changed = Some(Instant::now());
                c.stalled = false;
                was
            } else {
                None
            }
        })
    }

    /// Marks the head stalled if it has not moved for `limit`; returns `true`
    /// the first time it does.
    pub fn check_stall(&self, name: &str, limit: Duration) -> bool {
        self.with(|s| {
            let c = s.chains.entry(name.to_owned()).or_default();
            let stalled = c.since_head().is_some_and(|d| d > limit);
            let newly = stalled && !c.stalled;
            c.stalled = stalled;
            newly
        })
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| Snapshot {
            broker_connected: s.broker_connected,
            chains: s.chains.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_is_reported_once_and_cleared_by_a_new_head() {
        let h = Health::default();
        assert_eq!(h.saw_head("ETH", 10), None);
        assert!(!h.check_stall("ETH", Duration::from_secs(60)));
        assert!(h.check_stall("ETH", Duration::ZERO));
        assert!(!h.check_stall("ETH", Duration::ZERO), "reported once");
        assert!(h.snapshot().chains["ETH"].stalled);
        assert_eq!(h.saw_head("ETH", 10), None, "same head does not clear it");
        assert!(h.saw_head("ETH", 11).is_some(), "a new head clears it");
        assert!(!h.snapshot().chains["ETH"].stalled);
        h.chain("ETH", |c| c.cursor = 8);
        assert_eq!(h.snapshot().chains["ETH"].lag(), 3);
    }
}
