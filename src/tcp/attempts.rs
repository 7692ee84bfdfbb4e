//! The `Connecting` and `TargetPreamble` stages: the attempts to reach a target, one at a
//! time, with what must go to the target before the client's bytes.

use std::io;
use std::time::Instant;

use super::pump::{BufferPool, Endpoint};
use super::socket::Socket;
use super::{Action, Connection, Event, Flow, Stage};
use crate::config::Forwarding;
use crate::net::describe;
use crate::target::TargetPlace;

/// The connect attempts of a connection, and what waits for the target that accepts.
#[derive(Debug)]
pub(crate) struct Attempts<S> {
    /// Bytes for the target before the client's: the group's PROXY header (unless it goes
    /// before a `target_tls` handshake), and client bytes the preamble read.
    pub first: Vec<u8>,
    /// `postgres_starttls` without TLS termination: the target is sent an SSLRequest first,
    /// and its `S` is not passed on (the client had Ballast's).
    pub postgres: bool,
    /// Targets tried for this connection, in order.
    pub tried: Vec<usize>,
    /// When the first attempt started (the access log's `connect_ms` runs from here).
    pub began: Option<Instant>,
    /// Why the last attempt failed, for the log line when every attempt has.
    pub last_error: Option<String>,
    /// The attempt in flight.
    pub current: Option<Attempt<S>>,
    /// A `target_tls` group's handshake with the target, in `TargetPreamble`.
    pub tls: Option<Box<rustls::Connection>>,
    /// A PostgreSQL cancel: this target alone (the one that issued the key), whatever its
    /// health, and no other after it.
    pub pinned: Option<usize>,
    /// `postgres:`: the client sent a StartupMessage: the target's answer is watched for
    /// its cancel key ([`crate::postgres::KeyWatch`]).
    pub watch_key: bool,
    /// Waiting in the group's queue (every target was at its `max_connections`).
    pub queued: Option<Box<Queued>>,
}

/// A connection waiting in its group's queue.
#[derive(Debug)]
pub(crate) struct Queued {
    /// Its place, counted in the group's `waiting`.
    pub place: crate::target::queue::QueuePlace,
    /// When it began to wait.
    pub since: Instant,
    /// When it stops waiting, served or not.
    pub until: Instant,
}

/// One connect in flight.
#[derive(Debug)]
pub(crate) struct Attempt<S> {
    /// The target side.
    pub back: Endpoint<S>,
    /// Index of the target in its group.
    pub target: usize,
    /// When the connect started.
    pub started: Instant,
    /// Its count in the target's `active` gauge, from the connect on, so least_connections
    /// sees a burst of new connections before any of them is established (`None` in tests).
    pub place: Option<TargetPlace>,
}

impl<S> Attempts<S> {
    /// Attempts that will send `first` to the target before the client's bytes.
    pub(crate) fn new(first: Vec<u8>, postgres: bool) -> Attempts<S> {
        Attempts {
            first,
            postgres,
            tried: Vec::new(),
            began: None,
            last_error: None,
            current: None,
            tls: None,
            pinned: None,
            watch_key: false,
            queued: None,
        }
    }

    /// Whether another attempt may start under `retries` (the first is not a retry).
    pub(crate) fn may_try(&self, retries: u32) -> bool {
        self.tried.len() <= retries as usize
    }

    /// Attempts after the first so far (the access log's `retries`).
    pub(crate) fn retries(&self) -> u32 {
        u32::try_from(self.tried.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }
}

impl<S: Socket> Connection<S> {
    /// The worker picked `target` and opened `back` to it: the attempt is in flight.
    pub(crate) fn connecting(
        &mut self,
        target: usize,
        back: Endpoint<S>,
        place: Option<TargetPlace>,
        now: Instant,
    ) {
        if let Stage::Connecting(a) = &mut self.stage {
            a.tried.push(target);
            a.began.get_or_insert(now);
            a.current = Some(Attempt {
                back,
                target,
                started: now,
                place,
            });
        }
    }

    /// The worker could not open a socket to `target` (a failure of the target's, e.g.
    /// unreachable): counted as tried. Says what next, as [`Connection::connect_failed`].
    pub(crate) fn open_failed(&mut self, target: usize, why: String, retries: u32) -> Action {
        if let Stage::Connecting(a) = &mut self.stage {
            a.tried.push(target);
            a.last_error = Some(why);
        }
        self.next_attempt(retries)
    }

    /// The attempt in flight failed (`why` names the target): its socket is closed (dropped)
    /// and its place given back; back to `Connecting` from `TargetPreamble` (the next attempt
    /// starts with a connect, and a new TLS session). Returns the failed attempt's target and
    /// what next: another connect, or giving up when `retries` are used up.
    pub(crate) fn connect_failed(&mut self, why: String, retries: u32) -> (Option<usize>, Action) {
        let mut failed = None;
        match self.take_stage() {
            Stage::Connecting(mut a) | Stage::TargetPreamble(mut a) => {
                failed = a.current.take().map(|c| c.target);
                a.tls = None;
                a.last_error = Some(why);
                self.set_stage(Stage::Connecting(a));
            }
            other => self.stage = other,
        }
        (failed, self.next_attempt(retries))
    }

    /// After a failed attempt: another, or give up.
    fn next_attempt(&self, retries: u32) -> Action {
        match &self.stage {
            Stage::Connecting(a) if a.may_try(retries) => Action::Connect,
            Stage::Connecting(_) => Action::GiveUp,
            _ => Action::Wait,
        }
    }

    /// The attempt in flight reached its target (and the target's preamble is over): moves to
    /// `Established`, the first bytes queued for the target.
    ///
    /// # Errors
    /// `Action::Close` when the first bytes cannot be queued (see [`Flow::new`]).
    pub(crate) fn establish(
        &mut self,
        forwarding: Forwarding,
        pool: &mut BufferPool,
        now: Instant,
    ) -> Result<(), Action> {
        let stage = self.take_stage();
        let (Stage::Connecting(mut a) | Stage::TargetPreamble(mut a)) = stage else {
            self.stage = stage;
            return Err(Action::Wait);
        };
        let Some(attempt) = a.current.take() else {
            self.set_stage(Stage::Connecting(a));
            return Err(Action::Connect);
        };
        let connect = now.saturating_duration_since(a.began.unwrap_or(attempt.started));
        match Flow::new(attempt, &a.first, forwarding, pool, now) {
            Ok(mut flow) => {
                flow.retries = u16::try_from(a.retries()).unwrap_or(u16::MAX);
                flow.connect_us = u32::try_from(connect.as_micros()).unwrap_or(u32::MAX);
                if a.watch_key {
                    flow.postgres = Some(Box::default());
                }
                self.set_stage(Stage::Established(flow));
                Ok(())
            }
            Err(attempt) => {
                a.current = Some(attempt);
                self.set_stage(Stage::Connecting(a));
                Err(Action::Close(super::Reset::BOTH, "preamble_overflow"))
            }
        }
    }

    /// The target socket of a `Connecting` connection had event `ev`: how its connect ended,
    /// `None` while it is still in flight (a spurious wake-up), else `Ok` or the reason it
    /// failed. Linux reports EPOLLOUT on a connecting socket only once the connect has
    /// finished, and adds EPOLLERR/EPOLLHUP when it failed: a clean EPOLLOUT means
    /// connected, with no syscall to ask; else bytes waiting to be read (the target answered,
    /// and perhaps reset, before the event was seen), `SO_ERROR` and the peer's address tell.
    pub(crate) fn connect_outcome(&self, ev: Event) -> Option<Result<(), String>> {
        let Stage::Connecting(a) = &self.stage else {
            return None;
        };
        let stream = &a.current.as_ref()?.back.stream;
        if ev.writable && !ev.error && !ev.write_closed {
            return Some(Ok(()));
        }
        // Bytes to read: the target accepted and answered before this event was seen, and
        // may have reset or closed since. Connected: its bytes go to the client, then its
        // end (the error left in SO_ERROR for the pump to read after them). Taking the
        // error here would lose both — the bytes, and the reset that a later read would
        // report as a clean end.
        if stream.unread() > 0 {
            return Some(Ok(()));
        }
        Some(match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(describe(&e)),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if ev.error {
                        Err("connect failed".to_string())
                    } else {
                        return None;
                    }
                }
                Err(e) => Err(describe(&e)),
            },
        })
    }

    /// The connect attempts made so far (the one that reached the target among them).
    pub(crate) fn attempts_made(&self) -> usize {
        match &self.stage {
            Stage::Connecting(a) | Stage::TargetPreamble(a) => a.tried.len(),
            _ => 0,
        }
    }

    /// For the access log: connect attempts after the first, and the time from the first
    /// attempt's start to established (`None` when no target was reached).
    pub(crate) fn connect_stats(&self) -> (u32, Option<std::time::Duration>) {
        match &self.stage {
            Stage::Connecting(a) | Stage::TargetPreamble(a) => (a.retries(), None),
            Stage::Established(f) | Stage::Closing(f, _) => (
                u32::from(f.retries),
                Some(std::time::Duration::from_micros(u64::from(f.connect_us))),
            ),
            Stage::Preamble(_) | Stage::Passing => (0, None),
        }
    }

    /// Whether the connection waits in its group's queue.
    pub(crate) fn is_queued(&self) -> bool {
        matches!(&self.stage, Stage::Connecting(a) if a.queued.is_some())
    }

    /// Stops waiting in the queue at `now`: `served` (a target has room: on to the connect)
    /// or not (timed out). Counted in the group's statistics.
    pub(crate) fn leave_queue(&mut self, now: Instant, served: bool) {
        if let Stage::Connecting(a) = &mut self.stage {
            if let Some(q) = a.queued.take() {
                q.place
                    .leave(now.saturating_duration_since(q.since), served);
            }
        }
    }

    /// The attempts of a connection in `Connecting` or `TargetPreamble`.
    pub(crate) fn attempts(&mut self) -> Option<&mut Attempts<S>> {
        match &mut self.stage {
            Stage::Connecting(a) | Stage::TargetPreamble(a) => Some(a),
            _ => None,
        }
    }
}
