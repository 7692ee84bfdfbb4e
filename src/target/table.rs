//! A lookup table from hash slots to targets, shared by all workers of a group: built off the
//! data path (at start and on the prober thread when health changes), swapped in whole, read
//! without a lock. `maglev` and `source_hash` pick through one.

/// Slot → target index (into the group's targets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupTable {
    slots: Vec<u32>,
}

impl LookupTable {
    /// A table over `slots` (target indices).
    pub fn new(slots: Vec<u32>) -> LookupTable {
        LookupTable { slots }
    }

    /// The target index in slot `hash % len`, or `None` for an empty table.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        Some(self.slots[(hash % self.slots.len() as u64) as usize] as usize)
    }

    /// Number of slots held by each target index below `n`.
    pub fn shares(&self, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &s in &self.slots {
            counts[s as usize] += 1;
        }
        counts
    }

    /// All slots, in order.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The first slot's target at or after `hash % len` that `ok` accepts, walking the slots
    /// in order (how a retry moves on from an excluded target).
    pub fn lookup_from(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.slots.len() as u64;
        (0..len)
            .map(|k| self.slots[((hash % len + k) % len) as usize] as usize)
            .find(|&i| ok(i))
    }
}
