//! One proxied TCP connection: its state machine and its two directions.
//!
//! ```text
//!   accept ──▶ Connecting ──(connect ok)──▶ Established ──(both directions done)──▶ closed
//!                 │  ▲                             │
//!                 └──┘ connect failed: next target └──(reset, idle timeout, stop)──▶ closed
//! ```
//!
//! The worker owns the sockets' registration and the target choice; this module owns what a
//! connection knows about itself and how bytes move ([`pump`]).

pub mod pump;

use std::fmt;
use std::time::Instant;

use mio::net::TcpStream;

use crate::config::Forwarding;
use crate::conntrack::FiveTuple;
use pump::{Endpoint, Half};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A non-blocking connect to `target` is in flight.
    Connecting,
    /// Connected to the target; bytes flow.
    Established,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Connecting => "connecting",
            State::Established => "established",
        })
    }
}

/// A client connection and its connection to a target.
#[derive(Debug)]
pub struct Connection {
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
    state: State,
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
}

impl Connection {
    /// A newly accepted client, not yet connecting.
    pub fn new(
        id: u64,
        listener: usize,
        group: usize,
        tuple: FiveTuple,
        front: TcpStream,
        forwarding: Forwarding,
        now: Instant,
    ) -> Self {
        Connection {
            id,
            listener,
            group,
            tuple,
            front: Endpoint::new(front),
            back: None,
            target: None,
            tried: Vec::new(),
            last_error: None,
            state: State::Connecting,
            up: Half::new(forwarding),
            down: Half::new(forwarding),
            started: now,
            attempt_started: now,
            last_active: now,
            first_up: None,
            responded: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Moves to `state`, logging the transition at trace level.
    pub fn set_state(&mut self, state: State) {
        log::trace!("{} [{}]: {} -> {}", self.tuple, self.id, self.state, state);
        self.state = state;
    }

    /// True when both directions have passed on their EOF.
    pub fn finished(&self) -> bool {
        self.up.done() && self.down.done()
    }
}
