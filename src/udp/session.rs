//! The UDP session table of one worker: sessions keyed by 5-tuple, ended after an idle time.
//!
//! No I/O and no clock: the socket type is a parameter (the worker uses a mio `UdpSocket`,
//! tests use `()`), and every call that depends on time takes `now`. Idle expiry uses the
//! lazily checked deadline heap of `timers`, so a wake-up never scans the table.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::conntrack::{ConnTable, FiveTuple};
use crate::listener::ListenerPlace;
use crate::target::TargetPlace;
use crate::timers::{Due, Timers};

/// One client flow and its NAT mapping.
#[derive(Debug)]
pub(crate) struct Session<T> {
    /// Unique within the worker (slab keys are reused; ids are not).
    pub id: u64,
    /// Index of the listener the flow arrived on.
    pub listener: usize,
    /// Index of the target group.
    pub group: usize,
    /// The flow: the client's address and port, and the listener's it sent to.
    pub tuple: FiveTuple,
    /// The address the client sent to, when the listener is bound to a wildcard address:
    /// replies leave from it. `None` on a listener bound to one address.
    pub reply_from: Option<IpAddr>,
    /// Index of the target in its group.
    pub target: usize,
    /// The upstream socket, connected to the target.
    pub upstream: T,
    /// No datagram either way for this long ends the session.
    pub idle_timeout: Duration,
    /// Until the first reply, the session ends this long after its last datagram
    /// (`udp.unreplied_timeout`; the shorter of the two applies).
    pub unreplied_timeout: Option<Duration>,
    /// Replies after which the session ends; 0 is unlimited.
    pub max_responses: u32,
    /// Replies passed to the client so far.
    pub responses: u32,
    /// When the session began.
    pub started: Instant,
    /// When a datagram last passed either way.
    pub last_active: Instant,
    /// Datagrams and bytes client → target.
    pub up: Traffic,
    /// Datagrams and bytes target → client.
    pub down: Traffic,
    /// Its place under the listener's `max_sessions` (given back when the session is dropped).
    pub place: Option<ListenerPlace>,
    /// Its count in its target's `active` gauge.
    pub target_place: Option<TargetPlace>,
    /// Its place under `per_source.max_sessions` (given back when dropped).
    pub source_place: Option<crate::per_source::SourcePlace>,
    /// The PROXY protocol v2 header put before each datagram up (`proxy_protocol: v2` on
    /// the group), built once for the session.
    pub proxy_header: Option<Box<[u8]>>,
    /// The target has answered (set once, by [`SessionTable::mark_replied`], which keeps the
    /// table's count of unreplied sessions with it).
    replied: bool,
}

/// Datagram and byte counts of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    /// Datagrams passed.
    pub datagrams: u64,
    /// Payload bytes passed.
    pub bytes: u64,
}

impl Traffic {
    /// Counts one datagram of `len` bytes.
    pub(crate) fn add(&mut self, len: usize) {
        self.datagrams += 1;
        self.bytes += len as u64;
    }
}

impl<T> crate::conntrack::Keyed for Session<T> {
    fn tuple(&self) -> &FiveTuple {
        &self.tuple
    }
}

impl<T> Session<T> {
    /// A new session for the flow `tuple` on `listener`, pinned to `target` of `group`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        listener: usize,
        group: usize,
        tuple: FiveTuple,
        target: usize,
        upstream: T,
        idle_timeout: Duration,
        max_responses: u32,
        now: Instant,
    ) -> Self {
        Session {
            id: 0,
            listener,
            group,
            tuple,
            reply_from: None,
            target,
            upstream,
            idle_timeout,
            unreplied_timeout: None,
            max_responses,
            responses: 0,
            started: now,
            last_active: now,
            up: Traffic::default(),
            down: Traffic::default(),
            place: None,
            target_place: None,
            proxy_header: None,
            source_place: None,
            replied: false,
        }
    }

    /// How many more replies may pass before the session ends (`u32::MAX` when unlimited).
    pub(crate) fn replies_left(&self) -> u32 {
        if self.max_responses == 0 {
            u32::MAX
        } else {
            self.max_responses.saturating_sub(self.responses)
        }
    }

    /// True once `max_responses` replies have passed.
    pub(crate) fn replies_done(&self) -> bool {
        self.replies_left() == 0
    }

    /// When the session ends unless a datagram passes first.
    pub(crate) fn deadline(&self) -> Instant {
        let timeout = match self.unreplied_timeout {
            Some(u) if !self.replied() => u.min(self.idle_timeout),
            _ => self.idle_timeout,
        };
        self.last_active + timeout
    }

    /// Whether the target has answered yet.
    pub(crate) fn replied(&self) -> bool {
        self.replied
    }
}

/// Sessions by 5-tuple, with idle expiry.
#[derive(Debug)]
pub(crate) struct SessionTable<T> {
    table: ConnTable<Session<T>>,
    timers: Timers,
    next_id: u64,
    /// Per listener, sessions in the order they began, `(key, id)`: the oldest unreplied
    /// one is found at the front (entries of ended or replied sessions are skipped, and
    /// compacted away when they outnumber the live ones).
    by_age: Vec<std::collections::VecDeque<(usize, u64)>>,
    /// Per listener, sessions the target has not answered yet (for `udp.max_unreplied`).
    unreplied: Vec<usize>,
}

impl<T> Default for SessionTable<T> {
    fn default() -> Self {
        SessionTable {
            table: ConnTable::default(),
            timers: Timers::default(),
            next_id: 0,
            by_age: Vec::new(),
            unreplied: Vec::new(),
        }
    }
}

impl<T> SessionTable<T> {
    /// An empty table whose first session gets id `after + 1` (tests of the long life start
    /// it next to a wrap point: see [`crate::fault::near_wrap`]).
    pub(crate) fn with_ids_after(after: u64) -> Self {
        SessionTable {
            next_id: after,
            ..Self::default()
        }
    }

    /// The key of the session for `tuple`.
    pub(crate) fn find(&self, tuple: &FiveTuple) -> Option<usize> {
        self.table.find(tuple)
    }

    /// Adds `session` (its id is assigned here) and returns its key.
    ///
    /// # Errors
    /// Gives the session back when one with the same 5-tuple exists.
    pub(crate) fn insert(&mut self, mut session: Session<T>) -> Result<usize, Box<Session<T>>> {
        self.next_id += 1;
        session.id = self.next_id;
        let (id, deadline, listener) = (session.id, session.deadline(), session.listener);
        let replied = session.replied();
        let key = self.table.insert(session).map_err(Box::new)?;
        self.timers.schedule(deadline, Due { key, id });
        if self.by_age.len() <= listener {
            self.by_age.resize_with(listener + 1, Default::default);
            self.unreplied.resize(listener + 1, 0);
        }
        if let Some(n) = self.unreplied.get_mut(listener).filter(|_| !replied) {
            *n += 1;
        }
        let live = self.table.len();
        if let Some(queue) = self.by_age.get_mut(listener) {
            queue.push_back((key, id));
            if queue.len() > 2 * live + 64 {
                let table = &self.table;
                queue.retain(|&(k, i)| table.get(k).is_some_and(|s| s.id == i && !s.replied()));
            }
        }
        Ok(key)
    }

    /// Removes and returns the oldest session of `listener` that has had no reply (to make
    /// room for a new flow when the table is full: a flood of spoofed or unanswered flows
    /// then pushes out only its own kind, never sessions the target answers).
    pub(crate) fn evict_unreplied(&mut self, listener: usize) -> Option<Session<T>> {
        loop {
            let (key, id) = self.by_age.get_mut(listener)?.pop_front()?;
            if self
                .table
                .get(key)
                .is_some_and(|s| s.id == id && !s.replied())
            {
                return self.remove(key);
            }
        }
    }

    /// Sessions of `listener` the target has not answered yet.
    pub(crate) fn unreplied(&self, listener: usize) -> usize {
        self.unreplied.get(listener).copied().unwrap_or(0)
    }

    /// Records that the target of session `key` has answered: it is no longer counted as
    /// unreplied, nor evicted as such, and lives to its idle timeout. The one way a session
    /// becomes replied.
    pub(crate) fn mark_replied(&mut self, key: usize) {
        let Some(s) = self.table.get_mut(key).filter(|s| !s.replied) else {
            return;
        };
        s.replied = true;
        if let Some(n) = self.unreplied.get_mut(s.listener) {
            debug_assert!(*n > 0, "unreplied count below zero");
            *n = n.saturating_sub(1);
        }
    }

    /// The session with `key`.
    pub(crate) fn get(&self, key: usize) -> Option<&Session<T>> {
        self.table.get(key)
    }

    /// The session with `key`.
    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut Session<T>> {
        self.table.get_mut(key)
    }

    /// Removes the session with `key`. Every way out of the table goes through here, so the
    /// unreplied counts stay true.
    pub(crate) fn remove(&mut self, key: usize) -> Option<Session<T>> {
        let s = self.table.remove(key)?;
        if let Some(n) = self.unreplied.get_mut(s.listener).filter(|_| !s.replied) {
            debug_assert!(*n > 0, "unreplied count below zero");
            *n = n.saturating_sub(1);
        }
        Some(s)
    }

    /// Removes and returns every session idle past its timeout at `now`. Sessions that were
    /// active since their deadline was scheduled are rescheduled, not removed.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Session<T>> {
        let mut ended = Vec::new();
        while let Some(due) = self.timers.pop_due(now) {
            let Some(session) = self.table.get_mut(due.key) else {
                continue;
            };
            if session.id != due.id {
                continue; // the key was reused by a later session with its own entry
            }
            let deadline = session.deadline();
            if deadline > now {
                self.timers.schedule(deadline, due);
            } else if let Some(s) = self.remove(due.key) {
                ended.push(s);
            }
        }
        ended
    }

    /// The earliest time [`SessionTable::expire`] may end a session.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Number of sessions.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are no sessions.
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every session.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session<T>> {
        self.table.iter()
    }

    /// Removes and returns the sessions `pick` selects.
    pub(crate) fn drain_where(&mut self, pick: impl Fn(&Session<T>) -> bool) -> Vec<Session<T>> {
        let keys: Vec<usize> = self
            .table
            .keys()
            .into_iter()
            .filter(|&k| self.table.get_mut(k).is_some_and(|s| pick(s)))
            .collect();
        keys.into_iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Removes and returns every session.
    pub(crate) fn drain(&mut self) -> Vec<Session<T>> {
        self.drain_where(|_| true)
    }
}

#[cfg(test)]
mod eviction_tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::Protocol;

    fn flow(port: u16, now: Instant) -> Session<()> {
        let tuple = FiveTuple {
            protocol: Protocol::Udp,
            client: SocketAddr::from(([127, 0, 0, 1], port)),
            listener: SocketAddr::from(([127, 0, 0, 1], 53)),
        };
        let mut s = Session::new(0, 0, tuple, 0, (), Duration::from_secs(30), 0, now);
        s.unreplied_timeout = Some(Duration::from_secs(2));
        s
    }

    /// A table of `n` unreplied flows from ports 1 to `n`, begun at `now`, and their keys.
    fn flows(n: u16, now: Instant) -> (SessionTable<()>, Vec<usize>) {
        let mut t = SessionTable::default();
        let keys = (1..=n).map(|p| t.insert(flow(p, now)).unwrap()).collect();
        (t, keys)
    }

    #[test]
    fn the_oldest_unreplied_session_goes_first_and_answered_ones_never() {
        let now = Instant::now();
        let (mut t, keys) = flows(4, now);
        t.mark_replied(keys[0]); // port 1 was answered
        assert_eq!(t.evict_unreplied(0).unwrap().tuple.client.port(), 2);
        assert_eq!(t.evict_unreplied(0).unwrap().tuple.client.port(), 3);
        assert_eq!(t.evict_unreplied(0).unwrap().tuple.client.port(), 4);
        assert!(t.evict_unreplied(0).is_none());
        assert_eq!(t.len(), 1);
        assert!(t.evict_unreplied(7).is_none(), "another listener");
    }

    #[test]
    fn unreplied_sessions_expire_early_answered_ones_at_idle_timeout() {
        let now = Instant::now();
        let mut t = SessionTable::default();
        let ka = t.insert(flow(1, now)).unwrap();
        t.insert(flow(2, now)).unwrap();
        t.mark_replied(ka);
        let ended = t.expire(now + Duration::from_secs(3));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].tuple.client.port(), 2);
        assert_eq!(t.expire(now + Duration::from_secs(31)).len(), 1);
    }

    #[test]
    fn unreplied_sessions_are_counted_per_listener_through_every_way_out() {
        let now = Instant::now();
        let (mut t, keys) = flows(5, now);
        assert_eq!((t.unreplied(0), t.unreplied(1)), (5, 0));
        t.mark_replied(keys[0]);
        t.mark_replied(keys[0]); // a second reply counts nothing more
        assert_eq!(t.unreplied(0), 4);
        t.remove(keys[0]); // a replied one leaving changes nothing
        assert_eq!(t.unreplied(0), 4);
        t.remove(keys[1]);
        assert_eq!(t.unreplied(0), 3);
        assert!(t.evict_unreplied(0).is_some());
        assert_eq!(t.unreplied(0), 2);
        assert_eq!(t.expire(now + Duration::from_secs(3)).len(), 2);
        assert_eq!(t.unreplied(0), 0);
        t.insert(flow(9, now)).unwrap();
        t.drain();
        assert_eq!(t.unreplied(0), 0);
    }

    #[test]
    fn the_age_queue_stays_bounded_under_churn() {
        let now = Instant::now();
        let mut t = SessionTable::default();
        for p in 0..10_000u16 {
            let k = t.insert(flow(p, now)).unwrap();
            t.remove(k);
        }
        assert!(t.by_age[0].len() <= 64 + 2, "{}", t.by_age[0].len());
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::Protocol;

    fn tuple(port: u16) -> FiveTuple {
        FiveTuple {
            protocol: Protocol::Udp,
            client: SocketAddr::from(([127, 0, 0, 1], port)),
            listener: SocketAddr::from(([127, 0, 0, 1], 53)),
        }
    }

    fn session(port: u16, now: Instant, max_responses: u32) -> Session<()> {
        Session::new(
            0,
            0,
            tuple(port),
            0,
            (),
            Duration::from_secs(30),
            max_responses,
            now,
        )
    }

    #[test]
    fn idle_sessions_expire_and_active_ones_do_not() {
        let t0 = Instant::now();
        let mut table = SessionTable::default();
        let a = table.insert(session(1, t0, 0)).unwrap();
        let _b = table.insert(session(2, t0, 0)).unwrap();
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(30)));
        // a sees traffic at 20s; b does not.
        table.get_mut(a).unwrap().last_active = t0 + Duration::from_secs(20);
        assert!(table.expire(t0 + Duration::from_secs(29)).is_empty());
        let ended = table.expire(t0 + Duration::from_secs(30));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].tuple.client.port(), 2);
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(50)));
        let ended = table.expire(t0 + Duration::from_secs(50));
        assert_eq!(ended[0].tuple.client.port(), 1);
        assert!(table.is_empty());
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn a_reused_key_is_not_expired_by_its_predecessor_entry() {
        let t0 = Instant::now();
        let mut table = SessionTable::default();
        let a = table.insert(session(1, t0, 0)).unwrap();
        table.remove(a);
        let later = t0 + Duration::from_secs(10);
        let b = table.insert(session(2, later, 0)).unwrap();
        assert_eq!(a, b, "slab reuses the key");
        assert!(table.expire(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(table.expire(later + Duration::from_secs(30)).len(), 1);
    }

    #[test]
    fn duplicate_tuples_are_refused() {
        let t0 = Instant::now();
        let mut table = SessionTable::default();
        table.insert(session(1, t0, 0)).unwrap();
        assert!(table.insert(session(1, t0, 0)).is_err());
        assert_eq!(table.find(&tuple(1)), Some(0));
    }

    #[test]
    fn max_responses_counts_down() {
        let t0 = Instant::now();
        let mut s = session(1, t0, 2);
        assert_eq!(s.replies_left(), 2);
        s.responses = 2;
        assert!(s.replies_done());
        let unlimited = session(1, t0, 0);
        assert_eq!(unlimited.replies_left(), u32::MAX);
    }
}
