//! One proxied TCP connection: its state machine and its two directions.
//!
//! ```text
//!   accept ──▶ Connecting ──(connect ok)──▶ Established ──(both directions over)──▶ closed
//!                 │  ▲   │                         │            │
//!                 └──┘   │ client reset,           │            └─(a side aborted: its peer's
//!      connect failed:   │ no target left          │               unacknowledged bytes first)
//!      next target       ▼                         ▼                      ▼
//!                   closed with RST      (idle timeout: FIN;        Closing ──▶ closed with RST
//!                                         stop, disable: RST)
//! ```
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
//! The worker owns the sockets' registration and the target choice; this module owns what a
//! connection knows about itself and how bytes move ([`pump`]).
// The data path: nothing reachable from network input may panic (see README, Limits and
// faults). Unit tests may unwrap.
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

pub(crate) mod pool;
pub(crate) mod pump;
pub(crate) mod tls;
pub(crate) mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::Forwarding;
use crate::conntrack::FiveTuple;
use crate::generation::ListenerPlace;
use crate::target::TargetPlace;
use pump::{Endpoint, Half};

/// Where a connection is in its life: its stage. Each stage's events are handled in one
/// place (`worker::tcp`, `handle_front_event` / `handle_back_event`), and every change goes
/// through [`Connection::set_stage`].
///
/// Adding a stage (reading a PROXY protocol header, peeking a TLS ClientHello) means a variant
/// here, its arm in those two handlers, and the transition out of it: nothing else moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Accepted; reading what must be read from the client before a target is chosen: a
    /// PROXY protocol header (`accept_proxy_protocol`), a ClientHello to route by
    /// (`routes`), PostgreSQL's SSLRequest (`postgres_starttls`), the whole TLS handshake
    /// (`protocol: tls`). Left at once for `Connecting` when there is none of these.
    Preamble,
    /// A non-blocking connect to `target` is in flight.
    Connecting,
    /// Connected; the target has been sent what must precede the client's bytes and its
    /// answer is awaited (PostgreSQL's SSLRequest, answered `S`, on `postgres_starttls`
    /// listeners; the TLS handshake of a `target_tls` group). A refusal counts as a failed
    /// connect: the next target is tried.
    TargetPreamble,
    /// Connected to the target; bytes flow.
    Established,
    /// Both directions are over and a side is to be reset: waiting (bounded) until the bytes
    /// already written to it are acknowledged, which a reset would discard.
    Closing,
}

impl Stage {
    /// Whether the connection got as far as a target (established, or closing after it).
    pub(crate) fn reached_target(self) -> bool {
        matches!(self, Stage::Established | Stage::Closing)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Preamble => "preamble",
            Stage::Connecting => "connecting",
            Stage::TargetPreamble => "target_preamble",
            Stage::Established => "established",
            Stage::Closing => "closing",
        })
    }
}

/// A client connection and its connection to a target.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Unique within the worker for its lifetime (slab keys are reused; ids are not).
    pub id: u64,
    /// Index of the listener that accepted it.
    pub listener: usize,
    /// Index of the target group it is balanced over.
    pub group: usize,
    /// The table key.
    pub tuple: FiveTuple,
    /// The client side.
    pub front: Endpoint,
    /// The target side, once a connect has started.
    pub back: Option<Endpoint>,
    /// Index of the current (or last tried) target in its group.
    pub target: Option<usize>,
    /// Targets tried for this connection, in order.
    pub tried: Vec<usize>,
    /// Why the last connect attempt failed, for the log line when every attempt has.
    pub last_error: Option<String>,
    stage: Stage,
    /// Client → target.
    pub up: Half,
    /// Target → client.
    pub down: Half,
    /// When the client was accepted.
    pub started: Instant,
    /// When the current connect attempt started.
    pub attempt_started: Instant,
    /// When bytes last moved either way (or the connection was established).
    pub last_active: Instant,
    /// When the first bytes went to the target (the request, for client-first protocols).
    pub first_up: Option<Instant>,
    /// Whether the target's first bytes back have been timed (for least_response_time).
    pub responded: bool,
    /// Which side aborted first, once one has (the access log's `client_reset` or
    /// `target_reset`).
    pub first_abort: Option<Side>,
    /// In [`Stage::Closing`]: what is left to do.
    pub closing: Option<Closing>,
    /// Its place under the listener's `max_connections` (set at accept; given back when the
    /// connection is dropped).
    pub place: Option<ListenerPlace>,
    /// Its count in the current target's `active` gauge, from the connect on.
    pub target_place: Option<TargetPlace>,
    /// What a trusted PROXY protocol header said: (client, the address the client used).
    /// Then *the* client for logs, stickiness, hashing and headers passed on.
    pub origin: Option<(SocketAddr, SocketAddr)>,
    /// Bytes read in the preamble (a PROXY header, and what followed it) until it is complete.
    pub preamble: Vec<u8>,
    /// `postgres_starttls`: whether the client's first 8 bytes have been looked at, and
    /// whether they were an SSLRequest (answered `S` by Ballast; the target is sent one too,
    /// and its `S` is not passed on).
    pub postgres: Option<bool>,
    /// Its place under the listener's `per_source.max_connections` (given back when dropped).
    pub source_place: Option<crate::per_source::SourcePlace>,
    /// A TLS handshake in progress: the client's (`protocol: tls`, in `Preamble`) or the
    /// target's (`target_tls`, in `TargetPreamble`). Once over, the session moves into that
    /// endpoint's transport.
    pub tls: Option<Box<rustls::Connection>>,
    /// The preamble's checks are done (PROXY header read, access rules and per-source limits
    /// passed): later calls of the preamble go on from there.
    pub front_door_passed: bool,
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
}

/// A connection waiting to reset a side until its written bytes are acknowledged (which side,
/// and why, is [`Connection::ending`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closing {
    /// Reset then, acknowledged or not.
    pub until: Instant,
    /// When the next check is scheduled (one timer entry at a time).
    pub recheck_at: Instant,
}

impl Connection {
    /// A newly accepted client, not yet connecting.
    pub(crate) fn new(
        id: u64,
        listener: usize,
        group: usize,
        tuple: FiveTuple,
        front: Endpoint,
        forwarding: Forwarding,
        now: Instant,
    ) -> Self {
        Connection {
            id,
            listener,
            group,
            tuple,
            front,
            back: None,
            target: None,
            tried: Vec::new(),
            last_error: None,
            stage: Stage::Preamble,
            up: Half::new(forwarding),
            down: Half::new(forwarding),
            started: now,
            attempt_started: now,
            last_active: now,
            first_up: None,
            responded: false,
            first_abort: None,
            closing: None,
            place: None,
            target_place: None,
            origin: None,
            preamble: Vec::new(),
            postgres: None,
            source_place: None,
            tls: None,
            front_door_passed: false,
        }
    }

    /// The client: as a PROXY protocol header declared it, else the socket's peer.
    pub(crate) fn client(&self) -> SocketAddr {
        self.origin.map_or(self.tuple.client, |(c, _)| c)
    }

    /// The address the client connected to: as a PROXY header declared it, else ours.
    pub(crate) fn local(&self) -> SocketAddr {
        self.origin.map_or(self.tuple.listener, |(_, l)| l)
    }

    /// The 5-tuple the balancer hashes: the declared client's when a PROXY header gave one.
    pub(crate) fn request_tuple(&self) -> FiveTuple {
        FiveTuple {
            protocol: self.tuple.protocol,
            client: self.client(),
            listener: self.local(),
        }
    }

    /// The current stage.
    pub(crate) fn stage(&self) -> Stage {
        self.stage
    }

    /// Moves to `stage`, logging the transition at trace level.
    pub(crate) fn set_stage(&mut self, stage: Stage) {
        log::trace!("{} [{}]: {} -> {}", self.tuple, self.id, self.stage, stage);
        self.stage = stage;
    }

    /// True when both directions are over.
    pub(crate) fn finished(&self) -> bool {
        self.up.done() && self.down.done()
    }

    /// Notes which side aborted first, once one has.
    pub(crate) fn note_aborts(&mut self) {
        if self.first_abort.is_none() {
            if self.front.aborted {
                self.first_abort = Some(Side::Front);
            } else if self.back.as_ref().is_some_and(|b| b.aborted) {
                self.first_abort = Some(Side::Back);
            }
        }
    }

    /// How a finished connection closes: which sockets to reset (a side whose peer aborted and
    /// that did not abort itself) and the access log's reason.
    pub(crate) fn ending(&self) -> (Reset, &'static str) {
        let front = self.front.aborted;
        let back = self.back.as_ref().is_some_and(|b| b.aborted);
        let reset = Reset {
            front: back && !front,
            back: front && !back,
        };
        let reason = match self.first_abort {
            None => "done",
            Some(Side::Front) => "client_reset",
            Some(Side::Back) => "target_reset",
        };
        (reset, reason)
    }

    /// How a connection closes at its idle timeout: as [`Connection::ending`], and besides
    /// that both sides are reset when bytes meant for either are lost with the close — held
    /// by Ballast (a buffer, a pipe, a TLS record) or still unread in its peer's socket — so a
    /// cut stream never looks complete to the side that sent it or the side that awaited it.
    /// With nothing pending both get a FIN (`idle`).
    pub(crate) fn idle_ending(&self) -> (Reset, &'static str) {
        let (mut reset, _) = self.ending();
        let back = self.back.as_ref();
        let lost_to_front = self.down.pending() > 0
            || self.front.transport.holds_output()
            || back.is_some_and(|b| b.unread() > 0);
        let lost_to_back = back.is_some_and(|b| {
            !b.aborted
                && (self.up.pending() > 0 || b.transport.holds_output() || self.front.unread() > 0)
        });
        // Either side losing bytes resets both: the side whose stream was cut, and the side
        // that sent them, which must not take a FIN for "all delivered" (an uploader cut off
        // would read it as an empty answer).
        let lost = lost_to_front || lost_to_back;
        reset.front |= lost && !self.front.aborted;
        reset.back |= lost && back.is_some_and(|b| !b.aborted);
        let reason = if lost { "idle_bytes_lost" } else { "idle" };
        (reset, reason)
    }
}
