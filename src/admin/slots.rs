//! The admin API's connection slots: at most a fixed number of connections at once, and when
//! they are all taken, the oldest one that is only *waiting* (for a request head, a body, or
//! its next request) is closed to make room, as a SYN backlog drops its oldest entry.
//!
//! Why evict instead of refusing: a cap that refuses new connections is itself the attack.
//! 4,096 connections that each promise a body and never send it (no token needed to get that
//! far on an open endpoint) would keep `/healthz` from being answered, and keepalived or a
//! BGP route check would then pull a healthy node. With eviction the newest connection — the
//! health check that arrived a moment ago — is served, and a flood only closes itself. A
//! connection whose request is being handled is never evicted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// One connection's place: whether it is being served, and how to close it.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    busy: AtomicBool,
    evicted: AtomicBool,
    ended: AtomicBool,
    close: Notify,
}

impl Slot {
    /// Marks a request as being handled (not evictable) or the connection as waiting again.
    pub(crate) fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
    }

    /// Resolves once the connection has been chosen for eviction (at once if it already was).
    pub(crate) async fn evicted(&self) {
        self.close.notified().await;
    }
}

/// Held by a connection's task; frees the slot when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    slot: Arc<Slot>,
}

impl Held {
    /// The slot, to mark it busy and to wait for eviction.
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slot.ended.store(true, Ordering::Release);
    }
}

/// The slots of every connection, oldest first.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    open: Mutex<VecDeque<Arc<Slot>>>,
}

/// What [`Slots::take`] did.
#[derive(Debug)]
pub(crate) enum Taken {
    /// A free slot.
    Free(Held),
    /// A slot made by closing the oldest waiting connection.
    Evicted(Held),
    /// Every slot is serving a request: the new connection must be closed.
    Full,
}

impl Slots {
    /// Room for `max` connections.
    pub(crate) fn new(max: usize) -> Slots {
        Slots {
            max,
            open: Mutex::new(VecDeque::new()),
        }
    }

    /// A slot for a new connection: a free one, else one taken from the oldest connection that
    /// is not being served (it is told to close through [`Slot::evicted`]).
    pub(crate) fn take(&self) -> Taken {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Ended connections leave lazily: drop them first so `len` counts the live ones.
        open.retain(|s| !s.ended.load(Ordering::Acquire));
        let live = open
            .iter()
            .filter(|s| !s.evicted.load(Ordering::Acquire))
            .count();
        let mut evicted = false;
        if live >= self.max {
            let victim = open
                .iter()
                .find(|s| !s.evicted.load(Ordering::Acquire) && !s.busy.load(Ordering::Acquire));
            let Some(victim) = victim else {
                return Taken::Full;
            };
            victim.evicted.store(true, Ordering::Release);
            // notify_one keeps the wake-up for a task that is not waiting yet.
            victim.close.notify_one();
            evicted = true;
        }
        let slot = Arc::new(Slot::default());
        open.push_back(slot.clone());
        let held = Held { slot };
        if evicted {
            Taken::Evicted(held)
        } else {
            Taken::Free(held)
        }
    }

    /// Connections holding a slot (evicted ones that have not closed yet included).
    #[cfg(test)]
    fn len(&self) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|s| !s.ended.load(Ordering::Acquire));
        open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(t: Taken) -> Held {
        match t {
            Taken::Free(h) | Taken::Evicted(h) => h,
            Taken::Full => panic!("no slot"),
        }
    }

    #[test]
    fn the_oldest_waiting_connection_makes_room() {
        let slots = Slots::new(3);
        let a = held(slots.take());
        let b = held(slots.take());
        let c = held(slots.take());
        a.slot().set_busy(true); // a is being served: never evicted
        let d = slots.take();
        assert!(matches!(d, Taken::Evicted(_)));
        assert!(!a.slot().evicted.load(Ordering::Acquire));
        assert!(
            b.slot().evicted.load(Ordering::Acquire),
            "the oldest waiting one"
        );
        assert!(!c.slot().evicted.load(Ordering::Acquire));
        drop(b); // its task ends
        assert_eq!(slots.len(), 3);
        let _e = held(slots.take()); // c goes now
        assert!(c.slot().evicted.load(Ordering::Acquire));
    }

    #[test]
    fn all_busy_is_full_and_ended_connections_free_their_slot() {
        let slots = Slots::new(2);
        let a = held(slots.take());
        let b = held(slots.take());
        a.slot().set_busy(true);
        b.slot().set_busy(true);
        assert!(matches!(slots.take(), Taken::Full));
        drop(a);
        assert!(matches!(slots.take(), Taken::Free(_)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_eviction_wakes_a_task_that_waits_later() {
        let slots = Slots::new(1);
        let a = held(slots.take());
        let _b = held(slots.take());
        // The wake-up was sent before anyone waited: it is kept.
        tokio::time::timeout(std::time::Duration::from_secs(1), a.slot().evicted())
            .await
            .expect("evicted");
    }
}
