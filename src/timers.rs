//! Deadlines of connections and sessions: an ordered heap checked lazily.
//!
//! Each connection has one entry at a time. Entries are not moved when a connection's deadline
//! moves (that would cost a heap update per byte); when an entry comes due, the worker
//! recomputes the real deadline and either acts or pushes the entry back at the new time. Slab
//! keys are reused, so entries carry the connection's unique id and stale ones are dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A due entry: the connection's slab key and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Due {
    /// Slab key in the connection table.
    pub key: usize,
    /// The connection's unique id (to tell a reused key from the original).
    pub id: u64,
}

/// Deadlines, earliest first. No I/O, no clock: callers pass `now`.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Due)>>,
}

impl Timers {
    /// Schedules `due` at `at`.
    pub(crate) fn schedule(&mut self, at: Instant, due: Due) {
        self.heap.push(Reverse((at, due)));
    }

    /// The earliest scheduled time.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, d))| d),
            _ => None,
        }
    }

    /// Whether nothing is scheduled.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.schedule(t0 + Duration::from_secs(2), Due { key: 1, id: 10 });
        t.schedule(t0 + Duration::from_secs(1), Due { key: 2, id: 20 });
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(
            t.pop_due(t0 + Duration::from_secs(5)),
            Some(Due { key: 2, id: 20 })
        );
        assert_eq!(
            t.pop_due(t0 + Duration::from_secs(5)),
            Some(Due { key: 1, id: 10 })
        );
        assert!(t.is_empty());
    }
}
