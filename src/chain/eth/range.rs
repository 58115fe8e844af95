//! How many blocks one `eth_getLogs` asks for while catching up.
//!
//! Nodes limit `eth_getLogs` by block span or by result count and say so in
//! their error text; the scanner halves the range on such a refusal, and this
//! keeps it from growing straight back into the limit.

/// Ranges read after an `eth_getLogs` refusal before a wider range is tried again.
const REPROBE_AFTER: u32 = 256;

/// How many blocks one `eth_getLogs` asks for: halved when the node refuses,
/// doubled after each range read, but never grown back past the last refusal
/// (a node with a fixed limit would otherwise refuse every other request),
/// until [`REPROBE_AFTER`] ranges were read (the refusal may have been a
/// passing timeout or a dense stretch of chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RangeSize {
    blocks: u64,
    ceiling: u64,
    max: u64,
    read_since_refusal: u32,
}

impl RangeSize {
    pub(super) fn new(max: u64) -> Self {
        let max = max.max(1);
        Self {
            blocks: max,
            ceiling: max,
            max,
            read_since_refusal: 0,
        }
    }

    /// Blocks to ask for now.
    pub(super) fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The node refused the range: halves it; false when it is one block already.
    pub(super) fn halve(&mut self) -> bool {
        if self.blocks <= 1 {
            return false;
        }
        self.blocks /= 2;
        self.ceiling = self.blocks;
        self.read_since_refusal = 0;
        true
    }

    /// A range was read.
    pub(super) fn read(&mut self) {
        self.read_since_refusal = self.read_since_refusal.saturating_add(1);
        if self.read_since_refusal >= REPROBE_AFTER {
            self.ceiling = self.max;
        }
        self.blocks = self.blocks.saturating_mul(2).min(self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_range_is_halved_down_to_one_block() {
        let mut r = RangeSize::new(8);
        assert!(r.halve());
        assert_eq!(r.blocks(), 4);
        assert!(r.halve() && r.halve());
        assert_eq!(r.blocks(), 1);
        assert!(!r.halve(), "one block cannot be halved");
    }

    #[test]
    fn the_range_grows_back_only_to_the_last_refusal_until_reprobed() {
        let mut r = RangeSize::new(64);
        r.read();
        assert_eq!(r.blocks(), 64, "never past the configured maximum");
        // A node limited to 10 blocks: 64, 32 and 16 refused, 8 read.
        assert!(r.halve() && r.halve() && r.halve());
        assert_eq!(r.blocks(), 8);
        for _ in 1..REPROBE_AFTER {
            r.read();
            assert_eq!(r.blocks(), 8, "not grown into the refusal");
        }
        r.read();
        assert_eq!(r.blocks(), 16, "tried wider after {REPROBE_AFTER} ranges");
        r.read();
        assert_eq!(r.blocks(), 32);
        r.read();
        r.read();
        assert_eq!(r.blocks(), 64);
    }
}
