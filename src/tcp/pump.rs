//! The byte pump: moves one direction of a TCP connection (source socket → destination socket)
//! through a pooled user-space buffer or a kernel pipe with `splice(2)`.
//!
//! Backpressure without loss: a direction holds at most one buffer (or one pipe) of unwritten
//! bytes; while they are unwritten its source is not read, so the kernel's receive window
//! closes on the sender. A partial write keeps the rest for the next writable event. EOF from
//! the source becomes `shutdown(Write)` on the destination once everything read was written.
//!
//! Each direction ends on its own, and an error is never a clean end:
//! - an error reading the source (a reset) marks the source [`Endpoint::aborted`]: what was read
//!   before it is still written, then the direction ends *without* a `shutdown(Write)`: the
//!   destination is to be reset, not told "end of stream" (the worker does that on close);
//! - an error writing the destination marks the destination aborted and ends the direction at
//!   once (its bytes cannot be delivered); the other direction goes on reading what the
//!   destination sent before it went away.
//!
//! No error is returned: the endpoints' `aborted` flags carry them to the worker.

use std::io;
use std::os::fd::AsFd;

use mio::net::TcpStream;

pub(crate) use super::pool::BufferPool;
use super::pool::{Buffer, Pipe};
use super::socket::Socket;
use super::transport::{Plain, Transport};
use crate::config::Forwarding;

/// Whether a socket may have data to read / room to write, as the last events and syscalls
/// left it. Set by events, cleared by `WouldBlock`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Readiness {
    /// Reading may make progress.
    pub readable: bool,
    /// Writing may make progress.
    pub writable: bool,
    /// The peer's FIN (or an error) has been reported: reads must go on until they return 0,
    /// because no further event will come for it.
    pub read_closed: bool,
    /// An error (EPOLLERR: a reset, most often) has been reported: reads go on until they
    /// return it, so a reset is never mistaken for an EOF.
    pub error: bool,
    /// Urgent data (EPOLLPRI) has been seen: reads stop short at the urgent mark (SO_OOBINLINE
    /// keeps the byte in the stream), so a short read no longer means the socket is empty.
    pub urgent: bool,
}

impl Readiness {
    /// Adds what an event reported (flags are cleared only by `WouldBlock`).
    pub(crate) fn merge(&mut self, other: Readiness) {
        self.readable |= other.readable;
        self.writable |= other.writable;
        self.read_closed |= other.read_closed;
        self.error |= other.error;
        self.urgent |= other.urgent;
    }
}

/// One socket of a connection with what is known of its readiness.
#[derive(Debug)]
pub(crate) struct Endpoint<S = TcpStream> {
    /// The socket.
    pub stream: S,
    /// How bytes cross this side ([`Plain`] TCP, or TLS once a handshake is over).
    pub transport: Box<dyn Transport>,
    /// Whether it may be read or written without blocking.
    pub ready: Readiness,
    /// The worker's tag for this socket's registration (see `worker::Tag`).
    pub tag: u32,
    /// The peer reset the connection or can no longer take data: a read or write on it failed
    /// with something other than `WouldBlock`/`Interrupted`.
    pub aborted: bool,
}

impl<S: Socket> Endpoint<S> {
    /// A plain TCP socket of unknown readiness (both flags false: wait for an event),
    /// registered with `tag`.
    pub(crate) fn new(stream: S, tag: u32) -> Endpoint<S> {
        Endpoint {
            stream,
            // A zero-sized `Plain` in a box allocates nothing.
            transport: Box::new(Plain),
            ready: Readiness::default(),
            tag,
            aborted: false,
        }
    }

    /// Marks the endpoint aborted by `e` (see [`Endpoint::aborted`]).
    pub(crate) fn abort(&mut self, e: &io::Error) {
        log::trace!("endpoint aborted: {e}");
        self.aborted = true;
    }

    /// Bytes written to the socket and not yet acknowledged by the peer
    /// ([`Socket::unacknowledged`]).
    pub(crate) fn unacknowledged(&self) -> usize {
        self.stream.unacknowledged()
    }

    /// Bytes received on the socket and not yet read ([`Socket::unread`]).
    pub(crate) fn unread(&self) -> usize {
        self.stream.unread()
    }

    /// Makes the coming close send a reset (RST) instead of a FIN ([`Socket::reset_on_close`]).
    pub(crate) fn reset_on_close(&self) {
        self.stream.reset_on_close();
    }
}

#[derive(Debug)]
enum Carrier {
    /// No bytes held (no buffer taken from the pool).
    Idle,
    /// Bytes `start..end` of the buffer are read and not yet written (offsets in a
    /// `BUFFER_SIZE` buffer: `u32` keeps a direction three words).
    Buffer { buf: Buffer, start: u32, end: u32 },
    /// Boxed: a pipe is rare beside buffers, and inline it would widen every direction.
    Pipe(Box<Pipe>),
}

/// What one [`Half::pump`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pumped {
    /// Bytes written to the destination.
    pub bytes: usize,
    /// The byte budget ran out with more to do: call again soon (no event will come).
    pub more: bool,
}

/// One direction of a connection.
#[derive(Debug)]
pub(crate) struct Half {
    carrier: Carrier,
    mode: Forwarding,
    /// Nothing more will come from the source: it sent EOF, or reading it failed.
    pub eof: bool,
    /// The direction is over: its EOF passed on, its source aborted and everything read from
    /// it written, or its destination aborted (what was left unwritten is dropped).
    pub over: bool,
    /// Bytes written to the destination so far.
    pub bytes: u64,
    /// `forwarding: sockmap`: a read of 0 from the source may come before bytes the kernel
    /// still holds for it (queued behind the bytes waiting to leave by the same socket), so
    /// it is not the end until the worker has checked ([`Half::end_seen`] then).
    pub hold_end: bool,
    /// With [`Half::hold_end`]: a read returned 0 (the source's FIN), not yet taken as the end.
    pub end_seen: bool,
}

impl Half {
    /// A direction that moves bytes as `mode` says.
    pub(crate) fn new(mode: Forwarding) -> Half {
        Half {
            carrier: Carrier::Idle,
            // What the kernel does not forward of a `sockmap` connection, buffers do: a socket
            // in the map is read through its own queue, which splice does not see.
            mode: match mode {
                Forwarding::Sockmap => Forwarding::Buffered,
                m => m,
            },
            eof: false,
            over: false,
            bytes: 0,
            hold_end: false,
            end_seen: false,
        }
    }

    /// True once the direction is over (see [`Half::over`]).
    pub(crate) fn done(&self) -> bool {
        self.over
    }

    /// Puts `bytes` first in line for the destination, before anything read from the source
    /// (a PROXY protocol header; client bytes read in the preamble). Call before the first
    /// pump, at most one buffer's worth in all.
    ///
    /// # Errors
    /// When the direction already holds a pipe, or the bytes do not fit in one buffer.
    pub(crate) fn preload(&mut self, bytes: &[u8], pool: &mut BufferPool) -> Result<(), ()> {
        if let Carrier::Idle = self.carrier {
            self.carrier = Carrier::Buffer {
                buf: pool.take(),
                start: 0,
                end: 0,
            };
        }
        let Carrier::Buffer { buf, end, .. } = &mut self.carrier else {
            return Err(());
        };
        let at = *end as usize;
        let room = buf.get_mut(at..at + bytes.len()).ok_or(())?;
        room.copy_from_slice(bytes);
        *end += bytes.len() as u32;
        Ok(())
    }

    /// Bytes read from the source and not yet written.
    pub(crate) fn pending(&self) -> usize {
        match &self.carrier {
            Carrier::Idle => 0,
            Carrier::Buffer { start, end, .. } => (end - start) as usize,
            Carrier::Pipe(p) => p.pending,
        }
    }

    /// Moves bytes from `src` to `dst` until both would block, the direction is over, or
    /// `budget` bytes were written. `reverse_done` says the other direction is over: then the
    /// connection closes as soon as this one is, and the close itself passes on the EOF, so the
    /// `shutdown(Write)` is skipped.
    ///
    /// `watch`, when given, is fed every byte read from the source (a PostgreSQL server's
    /// first messages, for its cancel key): the direction then moves bytes through buffers
    /// (splice would keep them from user space), and stays so.
    ///
    /// Errors end up in `src.aborted` / `dst.aborted` (see the module docs), never returned.
    pub(crate) fn pump<S: Socket>(
        &mut self,
        src: &mut Endpoint<S>,
        dst: &mut Endpoint<S>,
        pool: &mut BufferPool,
        budget: usize,
        reverse_done: bool,
        mut watch: Option<&mut crate::postgres::KeyWatch>,
    ) -> Pumped {
        let mut out = Pumped::default();
        if self.mode != Forwarding::Buffered
            && (watch.is_some() || !(src.transport.can_splice() && dst.transport.can_splice()))
        {
            self.mode = Forwarding::Buffered; // splice only between two plain sockets
        }
        loop {
            if self.over {
                return out;
            }
            if dst.aborted {
                // Nothing can reach the destination any more: drop what is left, stop reading.
                self.end(pool);
                return out;
            }
            if out.bytes >= budget {
                out.more = true;
                return out;
            }
            let mut progress = false;
            if !self.eof && src.ready.readable {
                progress |= self.fill(src, pool, watch.as_deref_mut());
            }
            if (self.pending() > 0 || dst.transport.holds_output()) && dst.ready.writable {
                let n = self.flush(dst, pool);
                out.bytes += n;
                self.bytes += n as u64;
                progress |= n > 0;
            }
            if self.eof && self.pending() == 0 && !dst.aborted && !dst.transport.holds_output() {
                // A transport whose end is a message of its own (TLS close_notify) sends it
                // even when the close would pass the EOF on: without it the peer sees a
                // truncation.
                if !src.aborted && (!reverse_done || dst.transport.end_is_a_message()) {
                    match dst.transport.shutdown_write(&mut dst.stream) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            dst.ready.writable = false;
                            return out;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => dst.abort(&e),
                    }
                }
                self.end(pool);
                return out;
            }
            if !progress {
                return out;
            }
        }
    }

    /// Ends the direction, giving back what it holds.
    fn end(&mut self, pool: &mut BufferPool) {
        self.over = true;
        self.release(pool);
    }

    /// Reads once from `src`, feeding what it read to `watch`; returns whether anything
    /// happened (bytes, EOF or an error).
    fn fill<S: Socket>(
        &mut self,
        src: &mut Endpoint<S>,
        pool: &mut BufferPool,
        watch: Option<&mut crate::postgres::KeyWatch>,
    ) -> bool {
        if let Carrier::Idle = self.carrier {
            self.carrier = match self.mode {
                Forwarding::Splice => match pool.take_pipe() {
                    Ok(Some(p)) => Carrier::Pipe(p),
                    Ok(None) => Carrier::Idle, // the worker's pipes are all out: a buffer
                    Err(e) => {
                        log::debug!("no pipe for splice ({e}); using a buffer");
                        self.mode = Forwarding::Buffered;
                        Carrier::Idle
                    }
                },
                _ => Carrier::Idle,
            };
            if let Carrier::Idle = self.carrier {
                self.carrier = Carrier::Buffer {
                    buf: pool.take(),
                    start: 0,
                    end: 0,
                };
            }
        }
        let ready = &mut src.ready;
        let result = match &mut self.carrier {
            // A carrier was just set; nothing to read into otherwise.
            Carrier::Idle => return false,
            Carrier::Buffer { buf, start, end } => {
                if *start == *end {
                    (*start, *end) = (0, 0);
                }
                if *end as usize == buf.len() {
                    return false;
                }
                let Some(space) = buf.get_mut(*end as usize..) else {
                    return false;
                };
                let room = space.len();
                match src.transport.read(&mut src.stream, space) {
                    Ok(n) => {
                        if let (Some(w), Some(read)) = (watch, space.get(..n)) {
                            w.feed(read);
                        }
                        *end += n as u32;
                        // A short read emptied the socket: epoll reports the next arrival
                        // anyway, so skip the read that would only say WouldBlock (as tokio
                        // does on Linux). After a reported FIN no event will come, but none
                        // is needed: everything sent before the FIN is queued before it, so
                        // an emptied socket is at EOF and the read that returns 0 is saved.
                        // Not after an error (the read that returns it must happen) nor after
                        // urgent data (reads stop short at the urgent mark).
                        if n > 0
                            && n < room
                            && !ready.error
                            && !ready.urgent
                            && !self.hold_end
                            && src.transport.short_read_empties()
                        {
                            if ready.read_closed {
                                self.eof = true;
                            } else {
                                ready.readable = false;
                            }
                        }
                        // A read that fills the whole room is bulk data: splice pays off.
                        if n == room && self.mode == Forwarding::Auto {
                            self.mode = Forwarding::Splice;
                        }
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            }
            Carrier::Pipe(p) => {
                if p.pending >= p.capacity {
                    return false;
                }
                let spliced = src
                    .stream
                    .splice_in(p.write.as_fd(), p.capacity - p.pending);
                // splice never crosses the urgent mark (see `at_urgent_mark`): there it says
                // EAGAIN, or 0 once the peer's FIN is in, as if the stream had ended. Only a
                // returned 0 and an EAGAIN after urgent data was reported are worth the look.
                let stuck = match &spliced {
                    Ok(0) => src.stream.at_urgent_mark(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && src.ready.urgent => {
                        src.stream.at_urgent_mark()
                    }
                    _ => false,
                };
                match spliced {
                    // Bytes before the mark are still in the pipe: write them first.
                    _ if stuck && p.pending > 0 => return false,
                    // The pipe is empty, so the next bytes may go through a buffer without
                    // passing anything: one `recv` takes the urgent byte in line (SO_OOBINLINE)
                    // and the direction splices again after it.
                    _ if stuck => {
                        src.ready.urgent = false;
                        let buffer = Carrier::Buffer {
                            buf: pool.take(),
                            start: 0,
                            end: 0,
                        };
                        if let Carrier::Pipe(p) = std::mem::replace(&mut self.carrier, buffer) {
                            pool.give_pipe(p);
                        }
                        return true;
                    }
                    Ok(n) => {
                        p.pending += n;
                        Ok(n)
                    }
                    // With bytes in the pipe, EAGAIN may mean the pipe is out of slots rather
                    // than the socket empty: keep `readable` and retry after the next flush.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && p.pending > 0 => {
                        return false
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(0) if self.hold_end => {
                // Not the end yet (see `hold_end`): the worker looks, then sets `eof`.
                self.end_seen = true;
                src.ready.readable = false;
                self.release_if_empty(pool);
                false
            }
            Ok(0) => {
                self.eof = true;
                true
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                src.ready.readable = false;
                self.release_if_empty(pool);
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                // A reset (or worse): nothing more comes from this side. What was read before
                // it is still written; the destination is then reset, not shut down.
                src.abort(&e);
                self.eof = true;
                true
            }
        }
    }

    /// Writes once to `dst`; returns the bytes written.
    fn flush<S: Socket>(&mut self, dst: &mut Endpoint<S>, pool: &mut BufferPool) -> usize {
        let ready = &mut dst.ready;
        let stream = &mut dst.stream;
        let transport = &mut dst.transport;
        let result = match &mut self.carrier {
            // Nothing of ours left: what the transport still holds goes out.
            Carrier::Idle => transport.flush(stream).map(|()| 0),
            Carrier::Buffer { buf, start, end } => {
                let Some(bytes) = buf.get(*start as usize..*end as usize) else {
                    return 0;
                };
                let len = bytes.len();
                transport.write(stream, bytes).inspect(|&n| {
                    *start += n as u32;
                    // A short write filled the socket's send buffer: wait for writable.
                    if n < len {
                        ready.writable = false;
                    }
                })
            }
            Carrier::Pipe(p) => stream
                .splice_out(p.read.as_fd(), p.pending)
                .inspect(|&n| p.pending -= n),
        };
        match result {
            Ok(n) => {
                self.release_if_empty(pool);
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dst.ready.writable = false;
                0
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                // The destination is gone (EPIPE, ECONNRESET): this direction cannot go on;
                // `pump` drops what is left.
                dst.abort(&e);
                0
            }
        }
    }

    /// Gives an empty buffer or pipe back to the pool (a direction found to carry bulk data
    /// takes a pipe again at its next read: its `mode` stays `Splice`).
    fn release_if_empty(&mut self, pool: &mut BufferPool) {
        if self.pending() == 0 {
            self.release(pool);
        }
    }

    /// Gives back what the direction holds; a pipe with bytes still in it stays while the
    /// direction goes on (they are still to be written), and is closed once it is over.
    fn release(&mut self, pool: &mut BufferPool) {
        match std::mem::replace(&mut self.carrier, Carrier::Idle) {
            Carrier::Buffer { buf, .. } => pool.give(buf),
            Carrier::Pipe(p) if p.pending > 0 && !self.over => self.carrier = Carrier::Pipe(p),
            Carrier::Pipe(p) => pool.give_pipe(p),
            Carrier::Idle => {}
        }
    }

    /// Returns any held buffer to the pool (the connection is ending).
    pub(crate) fn close(&mut self, pool: &mut BufferPool) {
        self.end(pool);
    }
}
