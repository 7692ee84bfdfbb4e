//! The simulated network: one [`Wire`] per TCP connection between a peer (the client, or a
//! target) and Ballast, with both ends' buffers, and the [`SimSocket`] Ballast holds of it.
//!
//! What the kernel does and the simulation copies (Linux, `net/ipv4/tcp*.c`):
//! - a read returns all that is queued, up to its buffer; it stops short of the urgent mark when
//!   bytes precede it, and reads past it otherwise (SO_OOBINLINE); `splice` never moves the
//!   urgent byte: at the mark it says `EAGAIN`, or 0 once the FIN is in;
//! - after a reset arrives, queued bytes are read first, then the error once, then 0; writes
//!   fail with `EPIPE`; nothing written is acknowledged any more (`SIOCOUTQ` reads 0);
//! - a write takes what fits the send buffer, at random less (splice too: a pipe runs out
//!   of slots); bytes are acknowledged once they reach the
//!   peer's receive buffer, which frees send space (an EPOLLOUT);
//! - a close sends a FIN after the queued bytes, or a reset when `SO_LINGER {1, 0}` was set
//!   or unread bytes are left in the receive queue; a reset discards the unacknowledged.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

use crate::tcp::socket::Socket;
use crate::tcp::Event;

/// SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): small, fast, and the same sequence for the
/// same seed everywhere.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(super) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// A number in `1..=n` (at least 1).
    pub(super) fn upto(&mut self, n: usize) -> usize {
        1 + self.below(n.max(1))
    }

    /// True with probability `percent` / 100.
    pub(super) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// How a connect from Ballast to a target ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connect {
    /// Connected (for a client: accepted).
    Open,
    /// Refused (ECONNREFUSED, reported once through `SO_ERROR`).
    Refused,
    /// Nothing answers: the connect timeout ends it.
    Silent,
}

/// One TCP connection between a peer and Ballast.
#[derive(Debug)]
pub(super) struct Wire {
    /// How Ballast's connect ends (`Open` for the client's).
    pub connect: Connect,
    /// The refusal's error was taken (`SO_ERROR` is read once).
    pub refusal_taken: bool,
    /// Which connection ("client" or "target"), for messages.
    pub name: &'static str,
    /// Peer → Ballast: in Ballast's receive queue, not yet read.
    pub to_ballast: VecDeque<u8>,
    /// Ballast's receive buffer size.
    pub rcv_cap: usize,
    /// Bytes Ballast has read so far: the stream offset of `to_ballast[0]`.
    pub read_pos: u64,
    /// The stream offset of the urgent byte, while Ballast has not read past it.
    pub urgent: Option<u64>,
    /// The peer's FIN is in, after `to_ballast`.
    pub peer_fin: bool,
    /// A reset from the peer has arrived.
    pub peer_rst: bool,
    /// The reset's error has been returned once (then reads say 0).
    pub rst_reported: bool,
    /// Ballast → peer: written by Ballast, not yet acknowledged.
    pub in_flight: VecDeque<u8>,
    /// Ballast's send buffer size.
    pub snd_cap: usize,
    /// Acknowledged, in the peer's receive buffer, not yet read by the peer's application.
    pub at_peer: VecDeque<u8>,
    /// The peer's receive buffer size.
    pub peer_rcv_cap: usize,
    /// Ballast shut down writing: a FIN follows `in_flight`.
    pub ballast_fin: bool,
    /// That FIN reached the peer.
    pub fin_delivered: bool,
    /// Ballast reset the connection (SO_LINGER {1, 0}, or closed with unread bytes).
    pub reset_by_ballast: bool,
    /// Ballast closed its socket.
    pub ballast_closed: bool,
    /// `reset_on_close` was called.
    pub linger_reset: bool,
    /// Readiness changes not yet reported to Ballast: its next event for this socket.
    pub event: Event,
    /// The connection exists (the client's from the start; a target's once Ballast's
    /// connect reached it): only then does the peer send.
    pub connected: bool,
    /// Whether `event` holds anything.
    pub event_pending: bool,
    /// Partial reads and writes are drawn from here.
    pub rng: Rng,
}

impl Wire {
    pub(super) fn new(name: &'static str, rng: &mut Rng) -> Wire {
        // Buffers from one byte (every read and write partial) to a few hundred KiB.
        let size = |rng: &mut Rng| match rng.below(8) {
            0 => rng.upto(16),
            1 | 2 => rng.upto(4096),
            _ => rng.upto(256 * 1024),
        };
        Wire {
            connect: Connect::Open,
            refusal_taken: false,
            name,
            to_ballast: VecDeque::new(),
            rcv_cap: size(rng),
            read_pos: 0,
            urgent: None,
            peer_fin: false,
            peer_rst: false,
            rst_reported: false,
            in_flight: VecDeque::new(),
            snd_cap: size(rng),
            at_peer: VecDeque::new(),
            peer_rcv_cap: size(rng),
            ballast_fin: false,
            fin_delivered: false,
            reset_by_ballast: false,
            ballast_closed: false,
            linger_reset: false,
            event: Event::default(),
            connected: true,
            event_pending: false,
            rng: Rng::new(rng.next()),
        }
    }

    /// The smallest of its buffers.
    pub(super) fn smallest_buffer(&self) -> usize {
        self.rcv_cap.min(self.snd_cap).min(self.peer_rcv_cap)
    }

    /// One line of what the wire holds, for failure reports.
    pub(super) fn summary(&self) -> String {
        format!(
            "{}: to Ballast {}/{} (read {}, urgent {:?}, fin {}, rst {}), in flight {}/{}, at peer \
             {}/{}, Ballast fin {} delivered {} reset {} closed {}",
            self.name,
            self.to_ballast.len(),
            self.rcv_cap,
            self.read_pos,
            self.urgent,
            self.peer_fin,
            self.peer_rst,
            self.in_flight.len(),
            self.snd_cap,
            self.at_peer.len(),
            self.peer_rcv_cap,
            self.ballast_fin,
            self.fin_delivered,
            self.reset_by_ballast,
            self.ballast_closed,
        )
    }

    /// Notes a readiness change for Ballast's next event on this socket.
    pub(super) fn signal(&mut self, f: impl FnOnce(&mut Event)) {
        f(&mut self.event);
        self.event_pending = true;
    }

    /// Room left in Ballast's receive queue for the peer's bytes.
    pub(super) fn room_to_ballast(&self) -> usize {
        self.rcv_cap.saturating_sub(self.to_ballast.len())
    }

    /// The network carries what Ballast wrote to the peer's receive buffer (acknowledging
    /// it), and the FIN after it. Returns whether anything moved.
    pub(super) fn deliver(&mut self, max: usize) -> bool {
        if self.reset_by_ballast {
            return false;
        }
        let room = self.peer_rcv_cap.saturating_sub(self.at_peer.len());
        let n = room.min(self.in_flight.len()).min(max);
        self.at_peer.extend(self.in_flight.drain(..n));
        let mut moved = n > 0;
        if self.in_flight.is_empty() && self.ballast_fin && !self.fin_delivered {
            self.fin_delivered = true;
            moved = true;
        }
        if n > 0 && !self.ballast_closed {
            self.signal(|r| r.writable = true);
        }
        moved
    }

    /// How much of a read of `want` bytes the socket gives now: all, or at random less.
    fn portion(&mut self, want: usize) -> usize {
        if want > 1 && self.rng.chance(20) {
            self.rng.upto(want)
        } else {
            want
        }
    }

    /// Bytes readable now, stopping short of the urgent mark when bytes precede it.
    fn readable_now(&self) -> usize {
        let mut n = self.to_ballast.len();
        if let Some(mark) = self.urgent {
            if mark > self.read_pos {
                n = n.min((mark - self.read_pos) as usize);
            }
        }
        n
    }

    /// Takes `n` bytes from the receive queue (the urgent mark is forgotten once passed).
    fn consume(&mut self, n: usize) -> Vec<u8> {
        let bytes: Vec<u8> = self.to_ballast.drain(..n).collect();
        self.read_pos += n as u64;
        if self.urgent.is_some_and(|m| m < self.read_pos) {
            self.urgent = None;
        }
        bytes
    }

    /// What a read finds with nothing queued: the reset's error once, then end of stream; the
    /// FIN; or nothing yet.
    fn empty_read(&mut self) -> io::Result<usize> {
        if self.peer_rst {
            if self.rst_reported {
                return Ok(0);
            }
            self.rst_reported = true;
            return Err(io::Error::from_raw_os_error(libc::ECONNRESET));
        }
        if self.peer_fin {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Room in the send buffer for a write, or the error a write gets.
    fn write_room(&mut self, want: usize) -> io::Result<usize> {
        if self.peer_rst || self.ballast_fin {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        let room = self.snd_cap.saturating_sub(self.in_flight.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(self.portion(want.min(room)))
    }
}

/// Ballast's socket on a [`Wire`].
#[derive(Debug)]
pub(super) struct SimSocket(pub Rc<RefCell<Wire>>);

impl Read for SimSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        let n = w.readable_now().min(buf.len());
        if n == 0 {
            return if buf.is_empty() {
                Ok(0)
            } else {
                w.empty_read()
            };
        }
        // All that is there (short of the mark): a short read means the queue is empty, which
        // the pump relies on (tcp_recvmsg copies until the queue or the buffer runs out).
        let bytes = w.consume(n);
        buf[..n].copy_from_slice(&bytes);
        Ok(n)
    }
}

impl Write for SimSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        let n = w.write_room(buf.len())?;
        w.in_flight.extend(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for SimSocket {
    fn shutdown_write(&mut self) -> io::Result<()> {
        let mut w = self.0.borrow_mut();
        if w.peer_rst {
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        w.ballast_fin = true;
        Ok(())
    }

    fn splice_in(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        if w.urgent == Some(w.read_pos) && !w.to_ballast.is_empty() {
            // splice stops at the urgent byte for good: EAGAIN, or 0 once the FIN is in.
            return if w.peer_fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = w.readable_now().min(len);
        if n == 0 {
            return w.empty_read();
        }
        let n = w.portion(n);
        let bytes: Vec<u8> = w.to_ballast.iter().take(n).copied().collect();
        // SAFETY: writes `n` bytes from a live buffer to a descriptor the pool owns.
        let wrote = unsafe { libc::write(pipe.as_raw_fd(), bytes.as_ptr().cast(), n) };
        if wrote < 0 {
            return Err(io::Error::last_os_error());
        }
        w.consume(wrote as usize);
        Ok(wrote as usize)
    }

    fn splice_out(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        let n = w.write_room(len)?;
        let mut bytes = vec![0u8; n];
        // SAFETY: reads at most `n` bytes into a buffer of `n` bytes.
        let got = unsafe { libc::read(pipe.as_raw_fd(), bytes.as_mut_ptr().cast(), n) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        w.in_flight.extend(&bytes[..got as usize]);
        Ok(got as usize)
    }

    fn at_urgent_mark(&self) -> bool {
        let w = self.0.borrow();
        w.urgent == Some(w.read_pos)
    }

    fn unacknowledged(&self) -> usize {
        let w = self.0.borrow();
        if w.peer_rst {
            0
        } else {
            w.in_flight.len()
        }
    }

    fn unread(&self) -> usize {
        self.0.borrow().to_ballast.len()
    }

    fn reset_on_close(&self) {
        self.0.borrow_mut().linger_reset = true;
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        let mut w = self.0.borrow_mut();
        if w.connect == Connect::Refused && !w.refusal_taken {
            w.refusal_taken = true;
            return Ok(Some(io::Error::from_raw_os_error(libc::ECONNREFUSED)));
        }
        // SO_ERROR takes the reset's error: a read then finds only the end.
        if w.peer_rst && !w.rst_reported {
            w.rst_reported = true;
            return Ok(Some(io::Error::from_raw_os_error(libc::ECONNRESET)));
        }
        Ok(None)
    }

    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self.0.borrow().connect {
            Connect::Open => Ok(([127, 0, 0, 1], 1).into()),
            _ => Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
        }
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        let mut w = self.0.borrow_mut();
        w.ballast_closed = true;
        // Linux resets on close when SO_LINGER {1, 0} is set or unread bytes are left
        // (tcp_close: "data was lost").
        if (w.linger_reset || !w.to_ballast.is_empty()) && !w.peer_rst {
            w.reset_by_ballast = true;
            w.in_flight.clear();
        } else {
            w.ballast_fin = true;
        }
    }
}
