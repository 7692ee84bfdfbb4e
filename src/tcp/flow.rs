//! The `Established` and `Closing` stages: a connection whose target accepted it, its bytes
//! moving both ways ([`Flow`]), and the decisions that end it — how each side is closed, when
//! a side to be reset has had its bytes acknowledged, and what the idle timeout cuts. These
//! decisions take the time and say what to do ([`Action`]); the only I/O is through the
//! [`Socket`] trait, so the simulation (`tcp::sim`) drives them as the worker does.

use std::time::{Duration, Instant};

use super::kernel::{Dir, KernelPath};
use super::pump::{BufferPool, Endpoint, Half};
use super::socket::Socket;
use super::{Action, Attempt, Connection, Reset, Stage, Timeouts};
use crate::config::Forwarding;
use crate::target::TargetPlace;

/// Longest a side waits in `Closing` for its bytes to be acknowledged before it is reset (and
/// never longer than the listener's `idle_timeout`).
pub(crate) const RESET_LINGER: Duration = Duration::from_secs(5);
/// How often a `Closing` connection asks whether its bytes are acknowledged (no event says so).
pub(crate) const RESET_RECHECK: Duration = Duration::from_millis(5);
/// Once the target has ended its side (its FIN passed on), how long the client may keep its
/// own side open with nothing moving (never longer than the listener's `idle_timeout`): a
/// client that never closes after the server said goodbye (a refused login, a cancel) must
/// not hold the connection for the whole idle timeout (HAProxy's `timeout server-fin`).
pub(crate) const HALF_CLOSED_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with its target: the target side and both directions.
#[derive(Debug)]
pub(crate) struct Flow<S> {
    /// The target side.
    pub back: Endpoint<S>,
    /// Index of the target in its group.
    pub target: usize,
    /// Its count in the target's `active` gauge (from the connect on; `None` in tests).
    pub target_place: Option<TargetPlace>,
    /// Client → target.
    pub up: Half,
    /// Target → client.
    pub down: Half,
    /// When bytes last moved either way (or the connection was established).
    pub last_active: Instant,
    /// Timing the target's first answer (for least_response_time): from the connect's start
    /// (a target that speaks first), moved to the first bytes sent up (the request); `None`
    /// once the answer came.
    pub answer_clock: Option<Instant>,
    /// Bytes have gone up (the request's start is on the clock).
    pub request_sent: bool,
    /// Connect attempts before the one that succeeded (the access log's `retries`).
    pub retries: u16,
    /// From the first connect attempt's start to established, in µs (saturating at ~71
    /// minutes; the access log's `connect_ms`).
    pub connect_us: u32,
    /// `postgres:`: the target's first messages, watched for its cancel key, and the key
    /// once recorded. Boxed: PostgreSQL listeners only.
    pub postgres: Option<Box<crate::postgres::KeyWatch>>,
    /// `forwarding: sockmap`: the kernel's part, once joined. Boxed: opt-in.
    pub kernel: Option<Box<KernelPath>>,
    /// `forwarding: sockmap`: the join was tried (joined, or refused for good).
    pub kernel_tried: bool,
}

/// In [`Stage::Closing`]: the bounds of the wait for the acknowledgement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closing {
    /// Reset then, acknowledged or not.
    pub until: Instant,
    /// When the next check is scheduled (one timer entry at a time).
    pub recheck_at: Instant,
}

/// What one [`Connection::drive`] moved, for the target's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    /// Bytes written to the target.
    pub up: usize,
    /// Bytes written to the client.
    pub down: usize,
    /// The target's first answer came now, this long after the request (or after the
    /// connect's start, when the target spoke first).
    pub response: Option<Duration>,
}

impl<S: Socket> Flow<S> {
    /// A flow over a connected attempt; `first` goes to the target before anything read from
    /// the client (the group's PROXY header, bytes read in the preamble).
    ///
    /// # Errors
    /// When `first` does not fit one buffer (cannot happen: a header and at most `MAX_HELLO`
    /// bytes fit); the caller closes the connection rather than forward a stream with a hole.
    pub(crate) fn new(
        attempt: Attempt<S>,
        first: &[u8],
        forwarding: Forwarding,
        pool: &mut BufferPool,
        now: Instant,
    ) -> Result<Flow<S>, Attempt<S>> {
        let mut up = Half::new(forwarding);
        if !first.is_empty() && up.preload(first, pool).is_err() {
            up.close(pool);
            return Err(attempt);
        }
        let mut back = attempt.back;
        back.ready.readable = true;
        back.ready.writable = true;
        Ok(Flow {
            back,
            target: attempt.target,
            target_place: attempt.place,
            up,
            down: Half::new(forwarding),
            last_active: now,
            answer_clock: Some(attempt.started),
            request_sent: false,
            retries: 0,
            connect_us: 0,
            postgres: None,
            kernel: None,
            kernel_tried: false,
        })
    }

    /// How long the flow may go with no byte moving: the listener's `idle`, or less once the
    /// target has ended its side ([`HALF_CLOSED_TIMEOUT`]).
    pub(crate) fn idle_limit(&self, idle: Duration) -> Duration {
        if self.down.done() {
            idle.min(HALF_CLOSED_TIMEOUT)
        } else {
            idle
        }
    }

    /// True when both directions are over.
    pub(crate) fn finished(&self) -> bool {
        self.up.done() && self.down.done()
    }

    /// Gives back the buffers and pipes both directions hold.
    pub(crate) fn release(&mut self, pool: &mut BufferPool) {
        self.up.close(pool);
        self.down.close(pool);
    }
}

impl<S: Socket> Connection<S> {
    /// The PostgreSQL cancel key the target just sent, once (see [`Flow::postgres`]).
    pub(crate) fn take_backend_key(&mut self) -> Option<crate::postgres::CancelKey> {
        match &mut self.stage {
            Stage::Established(f) | Stage::Closing(f, _) => f.postgres.as_mut()?.take_found(),
            _ => None,
        }
    }

    /// Notes that `key` is recorded in the listener's table for `owner` (removed at the end).
    pub(crate) fn set_registered_cancel_key(
        &mut self,
        key: crate::postgres::CancelKey,
        owner: crate::postgres::cancel::Owner,
    ) {
        if let Stage::Established(f) | Stage::Closing(f, _) = &mut self.stage {
            if let Some(w) = f.postgres.as_mut() {
                w.registered = Some((key, owner));
            }
        }
    }

    /// The cancel key recorded for this connection, taken (to remove it from the table).
    pub(crate) fn registered_cancel_key(
        &mut self,
    ) -> Option<(crate::postgres::CancelKey, crate::postgres::cancel::Owner)> {
        match &mut self.stage {
            Stage::Established(f) | Stage::Closing(f, _) => f.postgres.as_mut()?.registered.take(),
            _ => None,
        }
    }

    /// Moves bytes both ways until both would block or `budget` bytes went each way; then
    /// says what next: close when both directions are over (through `Closing` when a side to
    /// be reset has bytes not yet acknowledged), drive again when the budget ran out.
    pub(crate) fn drive(
        &mut self,
        pool: &mut BufferPool,
        budget: usize,
        now: Instant,
        timeouts: &Timeouts,
    ) -> (Moved, Action) {
        let Stage::Established(flow) = &mut self.stage else {
            return (Moved::default(), Action::Wait);
        };
        let front = &mut self.front;
        let back = &mut flow.back;
        let (mut up, mut down) = (0, 0);
        let mut more;
        // A side found aborted by one direction changes what the other does (it reads what
        // that side sent before it went away, or stops): pump again, at most once per side.
        let mut rounds = 0;
        // A direction the kernel moves is not pumped, unless its destination is gone (the
        // pump then ends it).
        let pumps = |dir: Dir, dst_aborted: bool| {
            dst_aborted || flow.kernel.as_ref().is_none_or(|k| k.pumps(dir))
        };
        loop {
            let aborted = (front.aborted, back.aborted);
            let mut u = super::pump::Pumped::default();
            if pumps(Dir::Up, back.aborted) {
                u = flow
                    .up
                    .pump(front, back, pool, budget, flow.down.done(), None);
            }
            let watch = flow.postgres.as_deref_mut().filter(|w| !w.done());
            let mut d = super::pump::Pumped::default();
            if pumps(Dir::Down, front.aborted) {
                d = flow
                    .down
                    .pump(back, front, pool, budget, flow.up.done(), watch);
            }
            (up, down) = (up + u.bytes, down + d.bytes);
            more = u.more || d.more;
            rounds += 1;
            if rounds == 3 || aborted == (front.aborted, back.aborted) {
                break;
            }
        }
        let mut moved = Moved {
            up,
            down,
            response: None,
        };
        if up + down > 0 {
            flow.last_active = now;
            if up > 0 && !flow.request_sent {
                flow.request_sent = true;
                if flow.answer_clock.is_some() {
                    flow.answer_clock = Some(now);
                }
            }
            if down > 0 {
                // The target's first answer: from the request, or from the connect's start
                // when the target speaks first.
                if let Some(from) = flow.answer_clock.take() {
                    moved.response = Some(now.saturating_duration_since(from));
                }
            }
        }
        let finished = flow.finished();
        // The target ended its side: its place (max_connections, least_connections) is free
        // now, whatever the client does with its own; and the client gets a shorter wait.
        let mut sooner = None;
        if flow.down.done() && flow.target_place.take().is_some() {
            // Its FIN counts as activity: the client's shorter wait runs from it, not from
            // the last byte (a target that answered, then closed 10 s later, is `done`).
            flow.last_active = now;
            sooner = Some(flow.last_active + flow.idle_limit(timeouts.idle));
        }
        self.note_aborts();
        let action = if finished {
            self.finish(now, timeouts)
        } else if more {
            Action::Again
        } else if let Some(at) = sooner {
            Action::Schedule(at)
        } else {
            Action::Wait
        };
        (moved, action)
    }

    /// Both directions are over: close, resetting a side whose peer aborted, once the bytes
    /// written to it are acknowledged (a reset discards them), waiting in `Closing` if needed.
    fn finish(&mut self, now: Instant, timeouts: &Timeouts) -> Action {
        let (reset, reason) = self.ending();
        if reset == Reset::NONE || self.unacknowledged(reset) == 0 {
            return Action::Close(reset, reason);
        }
        let Stage::Established(flow) = self.take_stage() else {
            return Action::Close(reset, reason); // not reached: only `drive` finishes
        };
        let recheck_at = now + RESET_RECHECK;
        let closing = Closing {
            until: now + RESET_LINGER.min(timeouts.idle),
            recheck_at,
        };
        self.set_stage(Stage::Closing(flow, Box::new(closing)));
        Action::Schedule(recheck_at)
    }

    /// How a connection with both directions over closes: which sockets to reset (a side
    /// whose peer aborted and that did not abort itself) and the access log's reason.
    pub(crate) fn ending(&self) -> (Reset, &'static str) {
        let front = self.front.aborted;
        let back = self.back().is_some_and(|b| b.aborted);
        let reset = Reset {
            front: back && !front,
            back: front && !back,
        };
        (reset, self.abort_reason())
    }

    /// How a connection closes at its idle timeout: as [`Connection::ending`], and besides
    /// that both sides are reset when bytes meant for either are lost with the close — held
    /// by Ballast (a buffer, a pipe, a TLS record) or still unread in its peer's socket — so a
    /// cut stream never looks complete to the side that sent it or the side that awaited it.
    /// With nothing pending both get a FIN (`idle`).
    pub(crate) fn idle_ending(&self) -> (Reset, &'static str) {
        let (mut reset, _) = self.ending();
        let Some(flow) = self.stage.flow() else {
            return (reset, "idle");
        };
        let back = &flow.back;
        // Bytes in the kernel's queue towards a side (`forwarding: sockmap`) are held too.
        let (in_flight_up, in_flight_down) = flow
            .kernel
            .as_ref()
            .map_or((0, 0), |k| (k.up.in_flight, k.down.in_flight));
        // And a held end (see `Half::hold_end`) still waits for bytes the kernel holds.
        let held = |h: &Half| h.hold_end && h.end_seen;
        let lost_to_front = flow.down.pending() > 0
            || self.front.transport.holds_output()
            || back.unread() > 0
            || in_flight_down > 0
            || held(&flow.down);
        let lost_to_back = !back.aborted
            && (flow.up.pending() > 0
                || back.transport.holds_output()
                || self.front.unread() > 0
                || in_flight_up > 0
                || held(&flow.up));
        // Either side losing bytes resets both: the side whose stream was cut, and the side
        // that sent them, which must not take a FIN for "all delivered" (an uploader cut off
        // would read it as an empty answer).
        let lost = lost_to_front || lost_to_back;
        reset.front |= lost && !self.front.aborted;
        reset.back |= lost && !back.aborted;
        let reason = if lost { "idle_bytes_lost" } else { "idle" };
        (reset, reason)
    }

    /// Bytes written to the sides `reset` names and not yet acknowledged.
    pub(crate) fn unacknowledged(&self, reset: Reset) -> usize {
        let front = if reset.front {
            self.front.unacknowledged()
        } else {
            0
        };
        let back = match self.stage.flow() {
            Some(f) if reset.back => f.back.unacknowledged(),
            _ => 0,
        };
        front + back
    }

    /// The timer of an `Established` or `Closing` connection: the idle timeout closes (see
    /// [`Connection::idle_ending`]); `Closing` resets once the bytes are acknowledged or its
    /// linger is up, else asks again soon. `Schedule` when the deadline moved later; `Wait`
    /// in other stages, whose timeouts the worker handles.
    pub(crate) fn flow_timer(&mut self, now: Instant, timeouts: &Timeouts) -> Action {
        match &mut self.stage {
            Stage::Established(f) => {
                let deadline = f.last_active + f.idle_limit(timeouts.idle);
                if deadline > now {
                    return Action::Schedule(deadline);
                }
                let (reset, reason) = self.idle_ending();
                Action::Close(reset, reason)
            }
            Stage::Closing(_, closing) => {
                let until = closing.until;
                let (reset, reason) = self.ending();
                if now >= until || self.unacknowledged(reset) == 0 {
                    return Action::Close(reset, reason);
                }
                let Stage::Closing(_, closing) = &mut self.stage else {
                    return Action::Wait;
                };
                if closing.recheck_at > now {
                    // An older entry (the idle deadline of before): the check scheduled last
                    // is still to come, and one at a time is enough.
                    return Action::Wait;
                }
                closing.recheck_at = now + RESET_RECHECK;
                Action::Schedule(closing.recheck_at)
            }
            _ => Action::Wait,
        }
    }
}
