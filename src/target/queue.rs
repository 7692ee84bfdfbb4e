//! A target group's queue (`queue:`), as the workers share it: how many connections wait now
//! across all workers (bounded by `queue.max`: a place is taken before a connection waits,
//! and given back when it stops waiting), and what became of those that waited. Each worker
//! keeps its own waiting connections in arrival order; this is only the count and the
//! statistics, kept across reloads while the group keeps its name.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A group's queue counters.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Connections waiting now, across the workers.
    pub waiting: AtomicUsize,
    /// Connections that waited and then went to a target.
    pub served: AtomicU64,
    /// Connections reset because `max` were waiting already.
    pub refused_full: AtomicU64,
    /// Connections reset after waiting `timeout`.
    pub refused_timeout: AtomicU64,
    /// Microseconds waited in all, by the served and the timed out.
    pub waited_us: AtomicU64,
}

/// A connection's place in its group's queue: counted in `waiting` until dropped.
#[derive(Debug)]
pub(crate) struct QueuePlace(Arc<QueueStats>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl QueuePlace {
    /// The connection stops waiting after `waited`: to a target (`served`) or not (timed
    /// out); the place is given back.
    pub(crate) fn leave(self, waited: Duration, served: bool) {
        let counter = if served {
            &self.0.served
        } else {
            &self.0.refused_timeout
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.0.waited_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Takes a place in the queue of `stats`, unless `max` connections wait already (then counted
/// as refused).
pub(crate) fn enter(stats: &Arc<QueueStats>, max: usize) -> Option<QueuePlace> {
    let taken = stats
        .waiting
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
    if taken.is_ok() {
        Some(QueuePlace(stats.clone()))
    } else {
        stats.refused_full.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let stats = Arc::new(QueueStats::default());
        let a = enter(&stats, 2).unwrap();
        let b = enter(&stats, 2).unwrap();
        assert!(enter(&stats, 2).is_none());
        assert_eq!(stats.refused_full.load(Ordering::Relaxed), 1);
        assert_eq!(stats.waiting.load(Ordering::Relaxed), 2);
        a.leave(Duration::from_millis(3), true);
        drop(b);
        assert_eq!(stats.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(stats.served.load(Ordering::Relaxed), 1);
        assert_eq!(stats.waited_us.load(Ordering::Relaxed), 3000);
    }
}
