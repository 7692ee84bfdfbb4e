//! What a connection's directions carry bytes in, pooled per worker: user-space buffers and
//! the kernel pipes `splice(2)` moves bytes through.
//!
//! A direction holds a buffer or a pipe only while bytes are in it (or, for a pipe, while it
//! is being filled): an empty one goes back to the pool, so an idle keep-alive connection
//! holds neither memory nor descriptors, whatever it once carried. Pipes in use are capped
//! per worker ([`MAX_PIPES`], as HAProxy's `maxpipes`): past it a direction uses a buffer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Size of one pooled buffer, bytes.
pub(crate) const BUFFER_SIZE: usize = 64 * 1024;
/// Capacity asked for each splice pipe, bytes. Pages are taken only as data fills the pipe.
/// 256 KiB moved iperf3 single-stream from ~0.66× to ~0.77× of direct over the 64 KiB default
/// (one run, three rounds, loopback, 2 cores); 1 MiB did no better.
pub(crate) const PIPE_SIZE: usize = 256 * 1024;

/// Pipes one worker's connections may hold at once (2 descriptors each): past it a direction
/// reads through a buffer instead. Pipes are held only while they hold bytes, so this binds
/// only when this many directions have a slow reader at once.
pub(crate) const MAX_PIPES: usize = 512;
/// Empty pipes a worker keeps for reuse (2 descriptors each); beyond this they are closed.
pub(crate) const MAX_FREE_PIPES: usize = 32;

/// Free buffers and pipes of one worker, reused across connections so idle connections hold
/// none.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Vec<Buffer>,
    #[allow(
        clippy::vec_box,
        reason = "free pipes stay boxed: taking one allocates nothing"
    )]
    pipes: Vec<Box<Pipe>>,
    /// Pipes taken and not given back.
    pipes_out: usize,
    /// Buffers taken and not given back.
    buffers_out: usize,
}

impl BufferPool {
    /// Most buffers kept free; beyond this, returned buffers are freed.
    const MAX_FREE: usize = 256;

    pub(super) fn take(&mut self) -> Buffer {
        self.buffers_out += 1;
        self.free.pop().unwrap_or_else(new_buffer)
    }

    pub(super) fn give(&mut self, buf: Buffer) {
        debug_assert!(self.buffers_out > 0, "a buffer given back twice");
        self.buffers_out = self.buffers_out.saturating_sub(1);
        if self.free.len() < Self::MAX_FREE {
            self.free.push(buf);
        }
    }

    /// Buffers and pipes taken and not given back: 0 and 0 once every connection of the
    /// worker has ended.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> (usize, usize) {
        (self.buffers_out, self.pipes_out)
    }

    /// An empty pipe for a direction about to splice: a free one or a new one; `Ok(None)`
    /// when [`MAX_PIPES`] are out.
    ///
    /// # Errors
    /// When a new pipe cannot be made (`pipe2`: EMFILE, ENFILE).
    pub(super) fn take_pipe(&mut self) -> io::Result<Option<Box<Pipe>>> {
        if self.pipes_out >= MAX_PIPES {
            return Ok(None);
        }
        let pipe = match self.pipes.pop() {
            Some(p) => p,
            None => Box::new(Pipe::new()?),
        };
        self.pipes_out += 1;
        Ok(Some(pipe))
    }

    /// Takes a pipe back: kept for reuse when empty and there is room, else closed (a pipe
    /// still holding bytes nobody will read is never reused).
    pub(super) fn give_pipe(&mut self, pipe: Box<Pipe>) {
        debug_assert!(self.pipes_out > 0, "a pipe given back twice");
        self.pipes_out = self.pipes_out.saturating_sub(1);
        if pipe.pending == 0 && self.pipes.len() < MAX_FREE_PIPES {
            self.pipes.push(pipe);
        }
    }
}

/// A zeroed buffer straight from the allocator (`calloc`: its pages are touched only as bytes
/// arrive, and never built on the stack first).
fn new_buffer() -> Buffer {
    match vec![0u8; BUFFER_SIZE].into_boxed_slice().try_into() {
        Ok(buffer) => buffer,
        // Not reached: the slice has exactly BUFFER_SIZE bytes.
        Err(_) => Box::new([0u8; BUFFER_SIZE]),
    }
}

/// A user-space buffer, a thin pointer (its size is known): a direction's carrier stays two
/// words.
pub(super) type Buffer = Box<[u8; BUFFER_SIZE]>;

/// A pipe used as the in-kernel buffer for `splice(2)`.
#[derive(Debug)]
pub(super) struct Pipe {
    pub(super) read: OwnedFd,
    pub(super) write: OwnedFd,
    /// Bytes spliced in and not yet out.
    pub(super) pending: usize,
    pub(super) capacity: usize,
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

/// `splice(2)` of up to `len` bytes from `from` to `to` (a socket and a pipe), non-blocking.
pub(super) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
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
