//! The invariants a simulated run is held to: after every step ([`Run::check`]) and at its
//! end ([`Run::finish`]).

use super::peer::{End, Peer};
use super::run::Run;
use crate::tcp::flow::RESET_RECHECK;
use crate::tcp::Stage;

impl Run {
    /// The invariants that hold after every step.
    pub(super) fn check(&self) {
        for (name, to, from) in [
            ("client", &self.client, &self.target),
            ("target", &self.target, &self.client),
        ] {
            let sent = &from.script[..from.sent];
            if !sent.starts_with(&to.received) {
                self.fail(&format!(
                    "the {name} received bytes the other side did not send in that order"
                ));
            }
            // A target that refused the SSLRequest was never part of the flow: its end is that
            // of an attempt given up, which a FIN closes.
            let flow_end = self.established || name == "client";
            if let Some((other_sent, other_reset, _)) = to.eof.filter(|_| flow_end) {
                if to.received.len() != other_sent {
                    self.fail(&format!(
                        "the {name} read a clean end after {} of {other_sent} bytes",
                        to.received.len()
                    ));
                }
                if other_reset {
                    self.fail(&format!("the {name} read a clean end of a reset stream"));
                }
            }
        }
        if let (Some(_), Some(_)) = (self.client.eof, self.target.eof) {
            if self.client.reset_seen || self.target.reset_seen {
                self.fail("a reset after both directions ended cleanly");
            }
        }
        if let Some(conn) = &self.conn {
            match &conn.stage {
                Stage::Established(f) if self.now > f.last_active + self.timeouts.idle => {
                    self.fail("established past its idle timeout")
                }
                Stage::Closing(_, c) if self.now > c.until + RESET_RECHECK => {
                    self.fail("closing past its linger")
                }
                Stage::Connecting(a) | Stage::TargetPreamble(a) => {
                    if let Some(c) = a.current.as_ref() {
                        if self.now > c.started + self.timeouts.connect {
                            self.fail("connecting past its connect timeout");
                        }
                    }
                    if a.tried.len() > self.retries as usize + 1 {
                        self.fail("more attempts than retries allow");
                    }
                    if !self.client.received.is_empty() || self.client.eof.is_some() {
                        self.fail("the client heard from a target before one was reached");
                    }
                }
                Stage::Established(_) | Stage::Closing(..) => {}
                _ => self.fail("in a stage the simulation does not drive"),
            }
        }
    }

    /// Runs to the end: the connection closed and everything deliverable delivered and read.
    /// The invariants of the end.
    pub(super) fn finish(&self) {
        if self.pool.outstanding() != (0, 0) {
            self.fail(&format!(
                "buffers and pipes still out after the close: {:?}",
                self.pool.outstanding()
            ));
        }
        let client = std::iter::once(&self.client.wire);
        for wire in client.chain(&self.attempts) {
            let w = wire.borrow();
            if !w.ballast_closed {
                self.fail(&format!("the {} socket was not closed", w.name));
            }
        }
        if !self.established {
            // No target reached: the client is reset (never an end that reads as an empty
            // answer), unless it reset first.
            let client_reset = matches!(self.client.end, End::Reset(_)) && self.client.ended;
            if !self.client.reset_seen && !client_reset {
                self.fail("no target was reached and the client was not reset");
            }
            return;
        }
        for (name, to, from) in [
            ("client", &self.client, &self.target),
            ("target", &self.target, &self.client),
        ] {
            let to_reset = matches!(to.end, End::Reset(_));
            // Bytes of `to`'s that never reach `from` (cut by the close): `to` must learn it
            // by a reset, or it takes the end for "all delivered" (an uploader cut off, for an
            // empty answer).
            let from_reset = matches!(from.end, End::Reset(_));
            let w = from.wire.borrow();
            let reached = from.received.len() + w.at_peer.len() + w.in_flight.len();
            drop(w);
            if reached < to.sent && !from_reset && !to_reset && !to.reset_seen {
                self.fail(&format!(
                    "{} of the {name}'s {} bytes were cut, and it was not reset",
                    to.sent - reached,
                    to.sent
                ));
            }
        }
        let stalls = |p: &Peer| p.end == End::Stall || p.reads_until.is_some();
        if stalls(&self.client) || stalls(&self.target) {
            return;
        }
        let Some((_, reason)) = self.closed else {
            return;
        };
        if reason.starts_with("idle") {
            self.fail("ended by the idle timeout though neither peer stalled");
        }
        for (name, to, from) in [
            ("client", &self.client, &self.target),
            ("target", &self.target, &self.client),
        ] {
            let to_reset = matches!(to.end, End::Reset(_));
            let aborted = !matches!(from.end, End::Fin);
            if aborted && !to.reset_seen && !to_reset {
                self.fail(&format!(
                    "the {name} was not reset after the other side's reset"
                ));
            }
            // What a side sent before it reset is delivered before the reset is passed on
            // (a reset discards what is not acknowledged: `Closing` waits for it).
            let lost = to.received.len() < from.to_send();
            if matches!(from.end, End::Reset(_)) && !to_reset && !self.linger_ran_out && lost {
                self.fail(&format!(
                    "the {name} was reset after {} of the {} bytes sent before the other \
                     side's reset",
                    to.received.len(),
                    from.to_send()
                ));
            }
            // A side Ballast reset may have lost bytes (a `Closing` linger that ran out); a
            // side that was not must have everything, and the end.
            if !to.reset_seen && !to_reset {
                if to.received.len() != from.to_send() {
                    self.fail(&format!(
                        "the {name} received {} of the {} bytes sent before the end, and no \
                         reset",
                        to.received.len(),
                        from.to_send()
                    ));
                }
                if to.eof.is_none() {
                    self.fail(&format!("the {name} saw neither an end nor a reset"));
                }
            }
        }
    }
}
