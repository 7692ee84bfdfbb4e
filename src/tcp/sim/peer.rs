//! The simulation's client and target: what each sends, how it ends, how it reads, and what
//! it has seen.

use std::cell::RefCell;
use std::rc::Rc;

use super::net::{Rng, Wire};

/// How a peer ends what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// A FIN after its last byte.
    Fin,
    /// A reset after this many bytes.
    Reset(usize),
    /// Nothing: it sends its bytes, then neither FIN nor reset (the idle timeout ends it).
    Stall,
}

/// A client or a target: what it will send, how it ends, and what it has seen.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) wire: Rc<RefCell<Wire>>,
    /// Everything it will send.
    pub(super) script: Vec<u8>,
    /// Bytes of `script` sent so far.
    pub(super) sent: usize,
    /// Offsets in `script` sent as urgent (MSG_OOB) bytes, in order.
    pub(super) urgent: Vec<usize>,
    pub(super) end: End,
    /// Its FIN or reset is out.
    pub(super) ended: bool,
    /// It stops reading after this many bytes (a reader that went away), if ever.
    pub(super) reads_until: Option<usize>,
    /// What its application read.
    pub(super) received: Vec<u8>,
    /// It read a clean end of stream: what the other peer had sent then, and whether the
    /// other had reset, or sent its FIN.
    pub(super) eof: Option<(usize, bool, bool)>,
    /// It saw a reset from Ballast.
    pub(super) reset_seen: bool,
    /// It sends nothing (yet): a PostgreSQL target before it answered the SSLRequest, or
    /// after it refused it.
    pub(super) hold: bool,
}

impl Peer {
    pub(super) fn new(name: &'static str, rng: &mut Rng) -> Peer {
        let len = match rng.below(5) {
            0 => 0,
            1 => rng.upto(64),
            2 => rng.upto(8 * 1024),
            _ => rng.upto(128 * 1024),
        };
        let script: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut urgent: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(len)).collect();
        urgent.sort_unstable();
        urgent.dedup();
        if len == 0 {
            urgent.clear();
        }
        let end = match rng.below(10) {
            0 | 1 => End::Reset(rng.below(len + 1)),
            2 => End::Stall,
            _ => End::Fin,
        };
        let reads_until = rng.chance(15).then(|| rng.below(160 * 1024));
        Peer {
            wire: Rc::new(RefCell::new(Wire::new(name, rng))),
            script,
            sent: 0,
            urgent,
            end,
            ended: false,
            reads_until,
            received: Vec::new(),
            eof: None,
            reset_seen: false,
            hold: false,
        }
    }

    /// Puts `first` before its bytes as if it had sent them already: the bytes Ballast read
    /// in the preamble, which go to the target before the rest.
    pub(super) fn prepend(&mut self, first: &[u8]) {
        let n = first.len();
        self.script.splice(0..0, first.iter().copied());
        self.sent = n;
        self.urgent.iter_mut().for_each(|u| *u += n);
        if let End::Reset(at) = &mut self.end {
            *at += n;
        }
    }

    /// Sends at most `max` bytes (its end stays as it was, within them).
    pub(super) fn shorten(&mut self, max: usize) {
        self.script.truncate(max);
        self.urgent.retain(|&u| u < max);
        if let End::Reset(at) = &mut self.end {
            *at = (*at).min(max);
        }
    }

    /// What it has sent so far, and whether it has reset, or sent its FIN.
    pub(super) fn state(&self) -> (usize, bool, bool) {
        let reset = matches!(self.end, End::Reset(_));
        (
            self.sent,
            self.ended && reset,
            self.ended && self.end == End::Fin,
        )
    }

    /// How many bytes it sends before its end.
    pub(super) fn to_send(&self) -> usize {
        match self.end {
            End::Reset(at) => at,
            _ => self.script.len(),
        }
    }

    /// Writes a chunk (or its end) into Ballast's receive queue, if it can. An urgent byte
    /// ends its chunk, as `send(MSG_OOB)` puts the mark on the last byte sent.
    pub(super) fn send(&mut self, rng: &mut Rng) -> bool {
        let mut w = self.wire.borrow_mut();
        if self.ended || self.hold || !w.connected || w.reset_by_ballast || w.ballast_closed {
            return false;
        }
        let left = self.to_send() - self.sent;
        if left == 0 {
            match self.end {
                End::Fin => {
                    w.peer_fin = true;
                    w.signal(|r| {
                        r.readable = true;
                        r.read_closed = true;
                    });
                }
                End::Reset(_) => {
                    w.peer_rst = true;
                    w.in_flight.clear();
                    w.at_peer.clear();
                    w.signal(|r| {
                        r.readable = true;
                        r.writable = true;
                        r.read_closed = true;
                        r.error = true;
                    });
                }
                End::Stall => return false,
            }
            self.ended = true;
            return true;
        }
        let room = w.room_to_ballast();
        if room == 0 {
            return false;
        }
        let mut n = rng.upto(16 * 1024).min(left).min(room);
        let next_urgent = self.urgent.iter().copied().find(|&u| u >= self.sent);
        let urgent = next_urgent.filter(|&u| u < self.sent + n);
        if let Some(u) = urgent {
            n = u + 1 - self.sent;
        }
        w.to_ballast.extend(&self.script[self.sent..self.sent + n]);
        if urgent.is_some() {
            // The mark moves to the newest urgent byte, as in Linux (one mark at a time).
            w.urgent = Some(w.read_pos + (w.to_ballast.len() - 1) as u64);
        }
        self.sent += n;
        w.signal(|r| {
            r.readable = true;
            r.priority |= urgent.is_some();
        });
        true
    }

    /// Reads what the network delivered, if it still reads; notes the end it finds. `other`
    /// is the peer at the far end: what it had sent when this one read a clean end.
    pub(super) fn read(&mut self, rng: &mut Rng, other: (usize, bool, bool)) -> bool {
        let reset_itself = self.ended && matches!(self.end, End::Reset(_));
        if reset_itself || self.reads_until.is_some_and(|n| self.received.len() >= n) {
            return false;
        }
        let mut w = self.wire.borrow_mut();
        if !w.at_peer.is_empty() {
            let n = rng.upto(32 * 1024).min(w.at_peer.len());
            self.received.extend(w.at_peer.drain(..n));
            return true;
        }
        if w.fin_delivered && self.eof.is_none() && !w.reset_by_ballast {
            self.eof = Some(other);
            return true;
        }
        false
    }
}
