//! One proxied TCP connection: its stages, the decisions that move it between them, and its
//! two directions.
//!
//! ```text
//!                 Preamble { read, postgres, tls, part_began (when) }
//!   accept ──▶   (PROXY header, SSLRequest, TLS handshake or ClientHello)
//!                    │ Step::Done: start_connecting          ╲ Refused, ClientGone,
//!                    ▼                                        ╲ HandshakeFailed, Expired
//!                 Connecting { first, tried, last_error, current: Attempt { back, … } }
//!                    │  ▲ connect_failed / open_failed:        ╲ GiveUp (retries used up,
//!                    │  └─ Action::Connect (next target)        ╲ none left): reset
//!                    ▼ connect_outcome Ok
//!                 TargetPreamble (same Attempts; SSLRequest answer or target TLS handshake)
//!                    │ establish: the Attempt and the first bytes become a Flow
//!                    ▼
//!                 Established(Flow { back, up, down, last_active, answer_clock, … })
//!                    │ drive: both directions over          ╲ flow_timer: idle timeout
//!                    │   (a side to reset has unacknowledged  ╲ (FIN, or both reset when
//!                    ▼    bytes: Closing first)                ╲ bytes would be lost)
//!                 Closing(Flow, Closing { until, recheck_at }) ──▶ closed (reset)
//! ```
//!
//! Each stage owns what it needs: a field of one stage cannot be read in another, and a
//! transition builds the next stage from the last. The decisions take an event (a socket's
//! readiness: [`Event`]), the time, or the balancer's pick, and answer what the worker is to do
//! ([`Action`], [`preamble::Step`]); the worker owns the poll, the sockets' registration, the
//! balancer, the timers and the tables, and carries them out. The only I/O in here goes
//! through the [`socket::Socket`] trait, so the simulation (`tcp::sim`, tests only) drives the
//! same code over simulated sockets and a clock of its own, from a seed.
//!
//! How a connection ends is what the two ends see, so it is chosen with care:
//! - both directions passed on their EOF: both sockets close normally (FIN);
//! - one side *aborted* (a reset, or it could no longer take data): what it sent before is
//!   delivered, then the other side is reset (`SO_LINGER {1, 0}`), so an aborted upload is not
//!   taken for a complete one, nor a crashed target's truncated answer for a whole one. A reset
//!   discards unacknowledged bytes, so the worker first waits in [`Stage::Closing`] until the
//!   peer has acknowledged what was written (bounded);
//! - Ballast gives up (no target accepted, connect timeout, shutdown timeout, a disabled target):
//!   reset, because a clean EOF would read as an empty answer.
//!
//! Bytes move in [`pump`], through each side's [`transport::Transport`] (plain TCP or TLS).
// The data path: nothing reachable from network input may panic (the no-panic block of
// lib.rs's "Lint policy"; integration/layers.rs keeps it identical). Unit tests may unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing
    )
)]

pub(crate) mod attempts;
pub(crate) mod flow;
pub(crate) mod kernel;
pub(crate) mod pool;
pub(crate) mod preamble;
pub(crate) mod pump;
#[cfg(test)]
mod sim;
pub(crate) mod socket;
pub(crate) mod startup;
pub(crate) mod target_preamble;
pub(crate) mod tls;
pub(crate) mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::conntrack::FiveTuple;
use crate::generation::ListenerPlace;
use crate::per_source::SourcePlace;
pub(crate) use attempts::{Attempt, Attempts, Queued};
pub(crate) use flow::{Closing, Flow};
pub(crate) use preamble::Preamble;
use pump::Endpoint;
use socket::Socket;

/// Where a connection is in its life, with what that stage alone needs: a field of one stage
/// cannot be read in another. The worker matches on it to carry an event to the stage's
/// handler; a transition builds the next stage from the last (see [`Connection::establish`],
/// which turns the attempt in flight and the first bytes into a [`Flow`]).
///
/// Adding a stage (routing by a PostgreSQL StartupMessage, say) means a variant here with
/// its data, its arm in the worker's two event handlers and in [`Connection::deadline`], and
/// the transitions into and out of it: nothing else moves.
#[derive(Debug)]
pub(crate) enum Stage<S = TcpStream> {
    /// Accepted; reading what must be read from the client before a target is chosen: a
    /// PROXY protocol header (`accept_proxy_protocol`), a ClientHello to route by
    /// (`routes`), PostgreSQL's SSLRequest (`postgres_starttls`), the whole TLS handshake
    /// (`protocol: tls`). Left at once for `Connecting` when there is none of these.
    Preamble(Box<Preamble>),
    /// A non-blocking connect to a target is in flight (or about to start: the worker is
    /// asked for one with [`Action::Connect`]).
    Connecting(Box<Attempts<S>>),
    /// Connected; the target has been sent what must precede the client's bytes and its
    /// answer is awaited (PostgreSQL's SSLRequest, answered `S`, on `postgres_starttls`
    /// listeners; the TLS handshake of a `target_tls` group). A refusal counts as a failed
    /// connect: the next target is tried.
    TargetPreamble(Box<Attempts<S>>),
    /// Connected to the target; bytes flow.
    Established(Flow<S>),
    /// Both directions are over and a side is to be reset: waiting (bounded) until the bytes
    /// already written to it are acknowledged, which a reset would discard.
    Closing(Flow<S>, Box<Closing>),
    /// Between two stages while a transition builds the next one from the last; never seen
    /// outside a transition.
    Passing,
}

impl<S> Stage<S> {
    /// The stage's name (`/connections`, trace logs).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Stage::Preamble(_) => "preamble",
            Stage::Connecting(_) => "connecting",
            Stage::TargetPreamble(_) => "target_preamble",
            Stage::Established(_) => "established",
            Stage::Closing(..) => "closing",
            Stage::Passing => "passing",
        }
    }

    /// The flow, once the connection got as far as a target (established, or closing after
    /// it).
    pub(crate) fn flow(&self) -> Option<&Flow<S>> {
        match self {
            Stage::Established(f) | Stage::Closing(f, _) => Some(f),
            _ => None,
        }
    }

    /// The flow, mutable (see [`Stage::flow`]).
    pub(crate) fn flow_mut(&mut self) -> Option<&mut Flow<S>> {
        match self {
            Stage::Established(f) | Stage::Closing(f, _) => Some(f),
            _ => None,
        }
    }
}

impl<S> fmt::Display for Stage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the worker is to do next for a connection: the stages' answer to an event, a timer
/// or a pump. The worker owns the poll, the sockets' registration, the balancer, the timers
/// and the tables, and carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing until the next event or the timer.
    Wait,
    /// Pick a target not yet tried and start a connect ([`Connection::connecting`]), or say
    /// none is left ([`Action::GiveUp`]).
    Connect,
    /// Bytes are left to move and no event will say so (the byte budget ran out): drive
    /// the connection again soon.
    Again,
    /// Run the connection's timer no later than this.
    Schedule(Instant),
    /// Close both sockets, resetting those named; the access log's reason.
    Close(Reset, &'static str),
    /// No target accepted the client (`retries` used up, or no target left to try): it is
    /// reset, and the worker says so in its log.
    GiveUp,
    /// The stage's time is up, and how that ends is the worker's to say: a preamble is
    /// refused or sent to the default route (by the listener's options); a connect fails
    /// ([`Connection::connect_failed`]) and the next target is tried.
    Expired,
}

/// What one poll event said about a socket (the worker's `mio` event, or the simulation's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Event {
    /// EPOLLIN.
    pub readable: bool,
    /// EPOLLOUT.
    pub writable: bool,
    /// EPOLLRDHUP or EPOLLHUP: the peer's FIN, or the connection is gone.
    pub read_closed: bool,
    /// EPOLLHUP, or EPOLLERR on the write side.
    pub write_closed: bool,
    /// EPOLLERR.
    pub error: bool,
    /// EPOLLPRI: urgent data.
    pub priority: bool,
}

impl Event {
    /// What the event says about the socket's readiness. Errors and hang-ups count as both
    /// readable and writable, so the next syscall finds out what happened.
    pub(crate) fn readiness(self) -> pump::Readiness {
        pump::Readiness {
            readable: self.readable || self.read_closed || self.error || self.priority,
            writable: self.writable || self.write_closed || self.error,
            read_closed: self.read_closed || self.error,
            error: self.error,
            urgent: self.priority,
        }
    }
}

/// The timeouts a connection's stages wait by (its listener's, from the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// The PROXY header, from the accept (listeners with `accept_proxy_protocol`).
    pub header: Option<Duration>,
    /// The rest of the preamble (ClientHello, TLS handshake, SSLRequest; a StartupMessage
    /// on a `postgres:` listener with neither): from the PROXY header's end on a listener
    /// that reads one, else from the accept.
    pub preamble: Duration,
    /// A `postgres:` listener's StartupMessage after a TLS handshake or ClientHello: from
    /// the handshake's end. `None` on other listeners.
    pub startup: Option<Duration>,
    /// Each connect attempt, including the target's preamble.
    pub connect: Duration,
    /// Established with no byte moving either way.
    pub idle: Duration,
}

impl Timeouts {
    /// The earliest of the three: the first timer of a new connection, which must never be
    /// later than its stage's deadline (entries only move later).
    pub(crate) fn first(&self) -> Duration {
        self.header
            .unwrap_or(self.preamble)
            .min(self.startup.unwrap_or(Duration::MAX))
            .min(self.connect)
            .min(self.idle)
    }
}

/// A client connection and its connection to a target.
#[derive(Debug)]
pub(crate) struct Connection<S = TcpStream> {
    /// Unique within the worker for its lifetime (slab keys are reused; ids are not).
    pub id: u64,
    /// Index of the listener that accepted it.
    pub listener: usize,
    /// Index of the target group it is balanced over (set by the preamble's routes).
    pub group: usize,
    /// The table key.
    pub tuple: FiveTuple,
    /// The client side.
    pub front: Endpoint<S>,
    /// Where it is, with what that stage needs.
    pub stage: Stage<S>,
    /// When the client was accepted.
    pub started: Instant,
    /// Which side aborted first, once one has (the access log's `client_reset` or
    /// `target_reset`).
    pub first_abort: Option<Side>,
    /// Its place under the listener's `max_connections` (set at accept; given back when the
    /// connection is dropped).
    pub place: Option<ListenerPlace>,
    /// Its place under the listener's `per_source.max_connections` (given back when dropped).
    /// Boxed: only with per-source limits, and four words inline.
    pub source_place: Option<Box<SourcePlace>>,
    /// What a trusted PROXY protocol header said: (client, the address the client used).
    /// Then *the* client for logs, stickiness, hashing and headers passed on. Boxed: rare,
    /// and two addresses would double the size of every connection.
    pub origin: Option<Box<(SocketAddr, SocketAddr)>>,
}

/// A side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client.
    Front,
    /// The target.
    Back,
}

/// Which sockets to reset when closing (the others close with a FIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Reset {
    /// Reset the client.
    pub front: bool,
    /// Reset the target.
    pub back: bool,
}

impl Reset {
    /// Close both normally.
    pub(crate) const NONE: Reset = Reset {
        front: false,
        back: false,
    };
    /// Reset both.
    pub(crate) const BOTH: Reset = Reset {
        front: true,
        back: true,
    };
    /// Reset the client only (a refusal at the front door; a client gone while connecting
    /// resets the target only).
    pub(crate) const FRONT: Reset = Reset {
        front: true,
        back: false,
    };
    /// Reset the target only.
    pub(crate) const BACK: Reset = Reset {
        front: false,
        back: true,
    };
}

impl<S> crate::conntrack::Keyed for Connection<S> {
    fn tuple(&self) -> &FiveTuple {
        &self.tuple
    }
}

impl<S: Socket> Connection<S> {
    /// A newly accepted client, in its preamble.
    pub(crate) fn new(
        id: u64,
        listener: usize,
        group: usize,
        tuple: FiveTuple,
        front: Endpoint<S>,
        now: Instant,
    ) -> Self {
        Connection {
            id,
            listener,
            group,
            tuple,
            front,
            stage: Stage::Preamble(Box::default()),
            started: now,
            first_abort: None,
            place: None,
            source_place: None,
            origin: None,
        }
    }

    /// The client: as a PROXY protocol header declared it, else the socket's peer.
    pub(crate) fn client(&self) -> SocketAddr {
        self.origin
            .as_deref()
            .map_or(self.tuple.client, |&(c, _)| c)
    }

    /// The address the client connected to: as a PROXY header declared it, else ours.
    pub(crate) fn local(&self) -> SocketAddr {
        self.origin
            .as_deref()
            .map_or(self.tuple.listener, |&(_, l)| l)
    }

    /// The 5-tuple the balancer hashes: the declared client's when a PROXY header gave one.
    pub(crate) fn request_tuple(&self) -> FiveTuple {
        FiveTuple {
            protocol: self.tuple.protocol,
            client: self.client(),
            listener: self.local(),
        }
    }

    /// The target it is connecting to or connected to, if any.
    pub(crate) fn target(&self) -> Option<usize> {
        match &self.stage {
            Stage::Connecting(a) | Stage::TargetPreamble(a) => a.current.as_ref().map(|c| c.target),
            Stage::Established(f) | Stage::Closing(f, _) => Some(f.target),
            Stage::Preamble(_) | Stage::Passing => None,
        }
    }

    /// The target side, in any stage that has one.
    pub(crate) fn back(&self) -> Option<&Endpoint<S>> {
        match &self.stage {
            Stage::Connecting(a) | Stage::TargetPreamble(a) => a.current.as_ref().map(|c| &c.back),
            Stage::Established(f) | Stage::Closing(f, _) => Some(&f.back),
            Stage::Preamble(_) | Stage::Passing => None,
        }
    }

    /// The target side, in any stage that has one.
    pub(crate) fn back_mut(&mut self) -> Option<&mut Endpoint<S>> {
        match &mut self.stage {
            Stage::Connecting(a) | Stage::TargetPreamble(a) => {
                a.current.as_mut().map(|c| &mut c.back)
            }
            Stage::Established(f) | Stage::Closing(f, _) => Some(&mut f.back),
            Stage::Preamble(_) | Stage::Passing => None,
        }
    }

    /// The target it reached (established, or closing after it): the access log's target.
    pub(crate) fn reached(&self) -> Option<usize> {
        self.stage.flow().map(|f| f.target)
    }

    /// Bytes moved so far (client → target, target → client).
    pub(crate) fn bytes(&self) -> (u64, u64) {
        self.stage
            .flow()
            .map_or((0, 0), |f| (f.up.bytes, f.down.bytes))
    }

    /// Moves to `stage`, logging the transition at trace level.
    pub(crate) fn set_stage(&mut self, stage: Stage<S>) {
        log::trace!("{} [{}]: {} -> {}", self.tuple, self.id, self.stage, stage);
        self.stage = stage;
    }

    /// Takes the stage out for a transition (leaving [`Stage::Passing`]).
    pub(crate) fn take_stage(&mut self) -> Stage<S> {
        std::mem::replace(&mut self.stage, Stage::Passing)
    }

    /// Lets go of what the connection holds, as it ends: the sides `reset` names will send a
    /// reset when their sockets close (the others a FIN), its buffers and pipes go back to
    /// `pool`, and its places under the limits are given back. The sockets close when the
    /// connection is dropped; its addresses and byte counts stay for the access log.
    pub(crate) fn release(&mut self, reset: Reset, pool: &mut pump::BufferPool) {
        if reset.front {
            self.front.reset_on_close();
        }
        if let Some(back) = self.back().filter(|_| reset.back) {
            back.reset_on_close();
        }
        if let Stage::Established(f) | Stage::Closing(f, _) = &mut self.stage {
            f.release(pool);
            f.target_place = None;
        }
        self.place = None;
        self.source_place = None;
    }

    /// Notes which side aborted first, once one has.
    pub(crate) fn note_aborts(&mut self) {
        if self.first_abort.is_none() {
            let back = self.back().is_some_and(|b| b.aborted);
            if self.front.aborted {
                self.first_abort = Some(Side::Front);
            } else if back {
                self.first_abort = Some(Side::Back);
            }
        }
    }

    /// The access log's reason for an end with no reset of Ballast's own: which side aborted
    /// first, if one did.
    pub(crate) fn abort_reason(&self) -> &'static str {
        match self.first_abort {
            None => "done",
            Some(Side::Front) => "client_reset",
            Some(Side::Back) => "target_reset",
        }
    }

    /// The connection's timer entry is due at `now`: the flow's own timer in `Established`
    /// and `Closing` ([`Connection::flow_timer`]); in other stages `Schedule` when the
    /// stage's deadline is later (the entry moves), `Expired` when it has passed.
    pub(crate) fn on_timer(&mut self, now: Instant, timeouts: &Timeouts) -> Action {
        if self.stage.flow().is_some() {
            return self.flow_timer(now, timeouts);
        }
        match self.deadline(timeouts) {
            None => Action::Wait,
            Some(deadline) if deadline > now => {
                // Before a handshake whose end starts a shorter StartupMessage timeout, look
                // again within that timeout: the one entry is never later than the deadline
                // the handshake's end will set (entries only move later).
                let before_startup = matches!(&self.stage, Stage::Preamble(p) if p.hello.is_none());
                Action::Schedule(match timeouts.startup.filter(|_| before_startup) {
                    Some(startup) => deadline.min(now + startup),
                    None => deadline,
                })
            }
            Some(_) => Action::Expired,
        }
    }

    /// The client's socket reported an error before the connection was established: a
    /// client that reset while its target connect is pending. It is closed at once, freeing
    /// both descriptors, and the target side, which may already be connected, is reset.
    /// `None` when the socket holds no error after all.
    pub(crate) fn client_gone_early(&mut self) -> Option<Action> {
        if let Ok(Some(e)) | Err(e) = self.front.stream.take_error() {
            log::debug!("{}: client gone while connecting: {e}", self.tuple);
            self.front.aborted = true;
            self.note_aborts();
            return Some(Action::Close(Reset::BACK, "client_reset"));
        }
        None
    }

    /// When the stage's wait is over: the PROXY header's timeout from the accept, then the
    /// rest of the preamble's from the header's end (from the accept without one), the connect
    /// timeout from the attempt's start, the idle timeout from the last byte moved, a
    /// `Closing` connection's next check. `None` between stages.
    pub(crate) fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        match &self.stage {
            Stage::Preamble(p) => Some(match (timeouts.header, p.part_began) {
                (Some(header), None) => self.started + header,
                // After a handshake or ClientHello, the StartupMessage's own timeout.
                (_, Some(began)) => match timeouts.startup.filter(|_| p.hello.is_some()) {
                    Some(startup) => began + startup,
                    None => began + timeouts.preamble,
                },
                (None, None) => self.started + timeouts.preamble,
            }),
            Stage::Connecting(a) | Stage::TargetPreamble(a) => a
                .current
                .as_ref()
                .map(|c| c.started + timeouts.connect)
                .or_else(|| a.queued.as_ref().map(|q| q.until)),
            Stage::Established(f) => Some(f.last_active + f.idle_limit(timeouts.idle)),
            Stage::Closing(_, c) => Some(c.recheck_at),
            Stage::Passing => None,
        }
    }
}

#[cfg(test)]
mod size_tests {
    use std::mem::size_of;

    use super::*;

    /// Every connection is as large as its largest stage: RSS per idle connection is a
    /// measured figure (README, Memory). A field for one stage goes in that stage, and a rare
    /// or large one in a box. The bounds are a debug build's on 64-bit Linux (mio's sockets
    /// carry a selector id in debug builds: 8 bytes less per socket in release).
    #[test]
    fn an_idle_connection_stays_small() {
        let sizes = [
            // +8 for the Flow's boxed PostgreSQL key watch (`postgres:` listeners), +8 for
            // its boxed kernel path (`forwarding: sockmap`; the flag beside it fits padding).
            ("Connection", size_of::<Connection>(), 392),
            ("Stage", size_of::<Stage>(), 208),
            (
                "Flow (Established, Closing)",
                size_of::<Flow<TcpStream>>(),
                200,
            ),
            // Boxed, only until the preamble is over: +16 for when the front door passed,
            // +24 for the server name and whether a StartupMessage was read.
            ("Preamble (boxed)", size_of::<Preamble>(), 80),
            // Boxed and only while connecting: +16 for the first attempt's start (connect_ms),
            // +24 for a cancel's pinned target, the key watch's flag and a place in the queue.
            ("Attempts (boxed)", size_of::<Attempts<TcpStream>>(), 208),
            ("Closing (boxed)", size_of::<Closing>(), 32),
            ("Endpoint", size_of::<Endpoint>(), 48),
            ("Half", size_of::<pump::Half>(), 40),
        ];
        for (name, size, bound) in sizes {
            println!("{name}: {size} bytes");
            assert!(size <= bound, "{name} grew to {size} bytes (bound {bound})");
        }
    }
}
