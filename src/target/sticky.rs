//! Stickiness (session persistence): a client IP keeps its target while that target is healthy
//! and the entry is fresh, whatever the algorithm.
//!
//! The table is shared by all workers of a group (a client's reconnects reach any worker) and
//! takes no lock: a fixed array of `max_entries` (rounded up to a power of two) atomic words,
//! each holding a 16-bit tag of the client's hash, the target index and the time of last use.
//! A client maps to one word by its hash (keyed per process: [`TableKey`]); a fresh word with its tag sends it to its target, any
//! other word is replaced on its next pick. So the table is bounded by construction, expires
//! entries by their age, and a collision only costs the two clients their stickiness. Time is
//! passed in (milliseconds since start), so tests are deterministic.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::hash::{keyed_ip, TableKey};

/// Units of the stored time: 100 ms, so 32 bits last 13 years.
const TICK_MS: u64 = 100;

/// The shared stickiness table of one target group.
#[derive(Debug)]
pub struct StickyTable {
    words: Box<[AtomicU64]>,
    timeout_ticks: u64,
    /// Keyed per process, so no one can choose addresses that evict a client's entry.
    key: TableKey,
}

impl StickyTable {
    /// A table of at least `max_entries` entries (a power of two) keeping entries for
    /// `timeout` after their last use.
    pub fn new(max_entries: usize, timeout: Duration) -> StickyTable {
        let (size, timeout_ticks) = StickyTable::new_shape(max_entries, timeout);
        StickyTable {
            words: (0..size).map(|_| AtomicU64::new(0)).collect(),
            timeout_ticks,
            key: TableKey::new(),
        }
    }

    /// Whether a table built with `max_entries` and `timeout` would be this one's shape (so a
    /// reload that keeps the group's stickiness keeps its entries).
    pub fn matches(&self, max_entries: usize, timeout: Duration) -> bool {
        let other = StickyTable::new_shape(max_entries, timeout);
        other == (self.words.len(), self.timeout_ticks)
    }

    fn new_shape(max_entries: usize, timeout: Duration) -> (usize, u64) {
        (
            max_entries.max(1).next_power_of_two(),
            (timeout.as_millis() as u64).div_ceil(TICK_MS).max(1),
        )
    }

    fn slot(&self, ip: IpAddr) -> (usize, u64) {
        let h = keyed_ip(&self.key, ip);
        let slot = (h as usize) & (self.words.len() - 1);
        // Tag from the high bits (the slot used the low ones); never 0, which marks "empty".
        let tag = ((h >> 48) & 0xffff).max(1);
        (slot, tag)
    }

    /// The target `ip` is stuck to, if its entry is fresh at `now_ms` (milliseconds since
    /// any fixed start); refreshes the entry's time.
    pub fn get(&self, ip: IpAddr, now_ms: u64) -> Option<usize> {
        let (slot, tag) = self.slot(ip);
        let word = self.words[slot].load(Ordering::Relaxed);
        let (w_tag, target, at) = (word >> 48, (word >> 32) & 0xffff, word & 0xffff_ffff);
        let now = now_ms / TICK_MS;
        if w_tag != tag || now.saturating_sub(at) > self.timeout_ticks {
            return None;
        }
        if now != at {
            self.put_word(slot, tag, target as usize, now);
        }
        Some(target as usize)
    }

    /// Sticks `ip` to `target` (an index below 65,536) as of `now_ms`, replacing whatever the
    /// entry held.
    pub fn put(&self, ip: IpAddr, target: usize, now_ms: u64) {
        let (slot, tag) = self.slot(ip);
        self.put_word(slot, tag, target, now_ms / TICK_MS);
    }

    fn put_word(&self, slot: usize, tag: u64, target: usize, now: u64) {
        debug_assert!(target < 1 << 16, "target index {target} does not fit");
        let word = (tag << 48) | ((target as u64 & 0xffff) << 32) | (now & 0xffff_ffff);
        self.words[slot].store(word, Ordering::Relaxed);
    }

    /// Number of entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.words.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn entries_stick_until_they_go_stale() {
        let t = StickyTable::new(1000, Duration::from_secs(10));
        assert_eq!(t.capacity(), 1024);
        assert_eq!(t.get(ip(1), 0), None);
        t.put(ip(1), 7, 0);
        assert_eq!(t.get(ip(1), 5_000), Some(7));
        // Used at 5s: fresh until 15s.
        assert_eq!(t.get(ip(1), 14_900), Some(7));
        assert_eq!(
            t.get(ip(1), 14_900 + 10_200),
            None,
            "stale after the timeout"
        );
    }

    #[test]
    fn another_ip_does_not_read_an_entry() {
        let t = StickyTable::new(1 << 16, Duration::from_secs(60));
        for n in 0..1000 {
            t.put(ip(n), (n % 5) as usize, 0);
        }
        let mut found = 0;
        for n in 0..1000 {
            if let Some(target) = t.get(ip(n), 1) {
                assert_eq!(target, (n % 5) as usize);
                found += 1;
            }
        }
        assert!(found > 980, "few collisions in a big table: {found}");
        assert_eq!(t.get(ip(5000), 1), None);
    }
}
