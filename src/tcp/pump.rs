//! The byte pump: moves one direction of a TCP connection (source socket → destination socket)
//! through a pooled user-space buffer or a kernel pipe with `splice(2)`.
//!
//! Backpressure without loss: a direction holds at most one buffer (or one pipe) of unwritten
//! bytes; while they are unwritten its source is not read, so the kernel's receive window
//! closes on the sender. A partial write keeps the rest for the next writable event. EOF from
//! the source becomes `shutdown(Write)` on the destination once everything read was written.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use mio::net::TcpStream;

use crate::config::Forwarding;

/// Size of one pooled buffer, bytes.
pub const BUFFER_SIZE: usize = 64 * 1024;
/// Capacity asked for each splice pipe, bytes. Pages are taken only as data fills the pipe.
/// 256 KiB moved iperf3 single-stream from ~0.66× to ~0.77× of direct over the 64 KiB default
/// (one run, three rounds, loopback, 2 cores); 1 MiB did no better.
pub const PIPE_SIZE: usize = 256 * 1024;

/// Free buffers of one worker, reused across connections so idle connections hold none.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Vec<Box<[u8]>>,
}

impl BufferPool {
    /// Most buffers kept free; beyond this, returned buffers are freed.
    const MAX_FREE: usize = 256;

    fn take(&mut self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
    }

    fn give(&mut self, buf: Box<[u8]>) {
        if self.free.len() < Self::MAX_FREE {
            self.free.push(buf);
        }
    }
}

/// Whether a socket may have data to read / room to write, as the last events and syscalls
/// left it. Set by events, cleared by `WouldBlock`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    /// Reading may make progress.
    pub readable: bool,
    /// Writing may make progress.
    pub writable: bool,
    /// The peer's FIN (or an error) has been reported: reads must go on until they return 0,
    /// because no further event will come for it.
    pub read_closed: bool,
}

/// One socket of a connection with what is known of its readiness.
#[derive(Debug)]
pub struct Endpoint {
    /// The socket.
    pub stream: TcpStream,
    /// Whether it may be read or written without blocking.
    pub ready: Readiness,
}

impl Endpoint {
    /// A socket of unknown readiness (both flags false: wait for an event).
    pub fn new(stream: TcpStream) -> Endpoint {
        Endpoint {
            stream,
            ready: Readiness::default(),
        }
    }
}

/// A pipe used as the in-kernel buffer for `splice(2)`.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet out.
    pending: usize,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: past the user's pipe-user-pages-soft limit the kernel refuses, and the
        // pipe keeps its default size (read back below).
        // SAFETY: F_SETPIPE_SZ on an open pipe fd has no memory effects.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        // SAFETY: F_GETPIPE_SZ on an open pipe fd has no memory effects.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        Ok(Pipe {
            read,
            write,
            pending: 0,
            capacity: if size > 0 { size as usize } else { 65536 },
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call; null offsets are allowed for
    // pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[derive(Debug)]
enum Carrier {
    /// No bytes held (no buffer taken from the pool).
    Idle,
    /// Bytes `start..end` of the buffer are read and not yet written.
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
    Pipe(Pipe),
}

/// What one [`Half::pump`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pumped {
    /// Bytes written to the destination.
    pub bytes: usize,
    /// The byte budget ran out with more to do: call again soon (no event will come).
    pub more: bool,
}

/// One direction of a connection.
#[derive(Debug)]
pub struct Half {
    carrier: Carrier,
    mode: Forwarding,
    /// The source sent EOF.
    pub eof: bool,
    /// The destination's write side was shut down (EOF passed on).
    pub shut: bool,
    /// Bytes written to the destination so far.
    pub bytes: u64,
}

impl Half {
    /// A direction that moves bytes as `mode` says.
    pub fn new(mode: Forwarding) -> Half {
        Half {
            carrier: Carrier::Idle,
            mode,
            eof: false,
            shut: false,
            bytes: 0,
        }
    }

    /// True once EOF was read and passed on: this direction is finished.
    pub fn done(&self) -> bool {
        self.shut
    }

    /// Bytes read from the source and not yet written.
    pub fn pending(&self) -> usize {
        match &self.carrier {
            Carrier::Idle => 0,
            Carrier::Buffer { start, end, .. } => end - start,
            Carrier::Pipe(p) => p.pending,
        }
    }

    /// Moves bytes from `src` to `dst` until both would block, the direction is finished, or
    /// `budget` bytes were written. `reverse_done` says the other direction has finished: then
    /// the connection closes as soon as this one does, and the close itself passes on the EOF,
    /// so the `shutdown(Write)` is skipped.
    ///
    /// # Errors
    /// Any I/O error other than `WouldBlock`/`Interrupted` (a reset, a broken pipe): the
    /// connection cannot go on.
    pub fn pump(
        &mut self,
        src: &mut Endpoint,
        dst: &mut Endpoint,
        pool: &mut BufferPool,
        budget: usize,
        reverse_done: bool,
    ) -> io::Result<Pumped> {
        let mut out = Pumped::default();
        loop {
            if out.bytes >= budget {
                out.more = !self.shut;
                return Ok(out);
            }
            let mut progress = false;
            if !self.eof && src.ready.readable {
                progress |= self.fill(&mut src.stream, &mut src.ready, pool)?;
            }
            if self.pending() > 0 && dst.ready.writable {
                let n = self.flush(&mut dst.stream, &mut dst.ready, pool)?;
                out.bytes += n;
                self.bytes += n as u64;
                progress |= n > 0;
            }
            if self.eof && self.pending() == 0 && !self.shut {
                self.shut = true;
                self.release(pool);
                if !reverse_done {
                    match dst.stream.shutdown(Shutdown::Write) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if !progress {
                return Ok(out);
            }
        }
    }

    /// Reads once from `src`; returns whether anything happened (bytes or EOF).
    fn fill(
        &mut self,
        src: &mut TcpStream,
        ready: &mut Readiness,
        pool: &mut BufferPool,
    ) -> io::Result<bool> {
        if let Carrier::Idle = self.carrier {
            self.carrier = match self.mode {
                Forwarding::Splice => match Pipe::new() {
                    Ok(p) => Carrier::Pipe(p),
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
        let result = match &mut self.carrier {
            Carrier::Idle => unreachable!("a carrier was just set"),
            Carrier::Buffer { buf, start, end } => {
                if *start == *end {
                    (*start, *end) = (0, 0);
                }
                if *end == buf.len() {
                    return Ok(false);
                }
                let room = buf.len() - *end;
                match src.read(&mut buf[*end..]) {
                    Ok(n) => {
                        *end += n;
                        // A short read emptied the socket: epoll reports the next arrival
                        // anyway, so skip the read that would only say WouldBlock (as tokio
                        // does on Linux). After a reported FIN no event will come, but none
                        // is needed: everything sent before the FIN is queued before it, so
                        // an emptied socket is at EOF and the read that returns 0 is saved.
                        if n > 0 && n < room {
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
                    return Ok(false);
                }
                match splice(src.as_raw_fd(), p.write.as_raw_fd(), p.capacity - p.pending) {
                    Ok(n) => {
                        p.pending += n;
                        Ok(n)
                    }
                    // With bytes in the pipe, EAGAIN may mean the pipe is out of slots rather
                    // than the socket empty: keep `readable` and retry after the next flush.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && p.pending > 0 => {
                        return Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.readable = false;
                self.release_if_empty(pool);
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Writes once to `dst`; returns the bytes written.
    fn flush(
        &mut self,
        dst: &mut TcpStream,
        ready: &mut Readiness,
        pool: &mut BufferPool,
    ) -> io::Result<usize> {
        let result = match &mut self.carrier {
            Carrier::Idle => return Ok(0),
            Carrier::Buffer { buf, start, end } => {
                let len = *end - *start;
                dst.write(&buf[*start..*end]).inspect(|&n| {
                    *start += n;
                    // A short write filled the socket's send buffer: wait for writable.
                    if n < len {
                        ready.writable = false;
                    }
                })
            }
            Carrier::Pipe(p) => {
                splice(p.read.as_raw_fd(), dst.as_raw_fd(), p.pending).inspect(|&n| p.pending -= n)
            }
        };
        match result {
            Ok(n) => {
                self.release_if_empty(pool);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.writable = false;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Gives an empty buffer back to the pool, and trades it for a pipe once the direction has
    /// been found to carry bulk data.
    fn release_if_empty(&mut self, pool: &mut BufferPool) {
        if let Carrier::Buffer { start, end, .. } = self.carrier {
            if start == end {
                self.release(pool);
            }
        }
    }

    fn release(&mut self, pool: &mut BufferPool) {
        match std::mem::replace(&mut self.carrier, Carrier::Idle) {
            Carrier::Buffer { buf, .. } => pool.give(buf),
            // Pipes stay with the connection until it ends: bulk directions stay bulk.
            Carrier::Pipe(p) if !self.shut => self.carrier = Carrier::Pipe(p),
            _ => {}
        }
    }

    /// Returns any held buffer to the pool (the connection is ending).
    pub fn close(&mut self, pool: &mut BufferPool) {
        self.shut = true;
        self.release(pool);
    }
}
