//! The transport seam: how the pump reads and writes one side of a connection.
//!
//! The pump ([`super::pump`]) moves bytes between two [`Endpoint`](super::pump::Endpoint)s
//! and never touches a socket's bytes directly: it asks each side's [`Transport`]. Plain TCP
//! ([`Plain`]) reads and writes the socket as it is, and lets the pump move bulk data with
//! `splice(2)` between raw sockets. A TLS session implements the same trait
//! over the same socket, decrypting on read and encrypting on write, and say it cannot splice;
//! splice then stays where both ends are plain. Adding a transport is an implementation of this
//! trait and the place that chooses it (the `Preamble` stage, for TLS); the pump knows only
//! the trait.

use std::fmt;
use std::io;

use super::socket::Socket;

/// How bytes cross one side of a connection. `socket` is that side's TCP socket
/// (non-blocking); the methods follow `Read`/`Write`/`shutdown` semantics: `WouldBlock` when
/// they cannot make progress now, `Ok(0)` from `read` at the end of the stream.
pub(crate) trait Transport: fmt::Debug + Send {
    /// Reads bytes for the other side into `buf`.
    ///
    /// # Errors
    /// As `read(2)` on `socket` (a reset, `WouldBlock`), or the transport's own failures.
    fn read(&mut self, socket: &mut dyn Socket, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes bytes from the other side; returns how many were taken.
    ///
    /// # Errors
    /// As `write(2)` on `socket` (a broken pipe, `WouldBlock`), or the transport's own.
    fn write(&mut self, socket: &mut dyn Socket, buf: &[u8]) -> io::Result<usize>;

    /// Ends the stream toward this side (a FIN, after whatever the transport must send first).
    ///
    /// # Errors
    /// As `shutdown(2)`.
    fn shutdown_write(&mut self, socket: &mut dyn Socket) -> io::Result<()>;

    /// Whether the pump may move bytes by `splice(2)` on the raw socket, bypassing `read` and
    /// `write` (true only when they are the socket's own).
    fn can_splice(&self) -> bool;

    /// Whether a `read` that returns fewer bytes than asked for means the socket is empty, so
    /// the read that would say `WouldBlock` can be skipped (true for plain TCP; not where
    /// the transport reads the socket in records of its own and returns them piecemeal).
    fn short_read_empties(&self) -> bool {
        true
    }

    /// Whether bytes already taken by `write` wait inside the transport, not yet on the
    /// socket (a TLS record the full socket did not take): [`Transport::flush`] sends them.
    fn holds_output(&self) -> bool {
        false
    }

    /// Sends what the transport holds ([`Transport::holds_output`]).
    ///
    /// # Errors
    /// `WouldBlock` when the socket is full; the socket's errors.
    fn flush(&mut self, _socket: &mut dyn Socket) -> io::Result<()> {
        Ok(())
    }

    /// Whether the end of the stream is a message of the transport's own (TLS close_notify)
    /// that must be sent even when closing the socket would pass the EOF on by itself.
    fn end_is_a_message(&self) -> bool {
        false
    }
}

/// Plain TCP: the socket's own bytes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Plain;

impl Transport for Plain {
    fn read(&mut self, socket: &mut dyn Socket, buf: &mut [u8]) -> io::Result<usize> {
        socket.read(buf)
    }

    fn write(&mut self, socket: &mut dyn Socket, buf: &[u8]) -> io::Result<usize> {
        socket.write(buf)
    }

    fn shutdown_write(&mut self, socket: &mut dyn Socket) -> io::Result<()> {
        socket.shutdown_write()
    }

    fn can_splice(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};

    use mio::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::config::Forwarding;
    use crate::tcp::pump::{BufferPool, Endpoint, Half};

    /// A transport that counts what it carries and refuses splice, as TLS will.
    #[derive(Debug)]
    struct Counting(Arc<AtomicUsize>);

    impl Transport for Counting {
        fn read(&mut self, socket: &mut dyn Socket, buf: &mut [u8]) -> io::Result<usize> {
            let n = socket.read(buf)?;
            self.0.fetch_add(n, Ordering::Relaxed);
            Ok(n)
        }
        fn write(&mut self, socket: &mut dyn Socket, buf: &[u8]) -> io::Result<usize> {
            socket.write(buf)
        }
        fn shutdown_write(&mut self, socket: &mut dyn Socket) -> io::Result<()> {
            socket.shutdown_write()
        }
        fn can_splice(&self) -> bool {
            false
        }
    }

    /// A connected pair: (our non-blocking end, the peer's blocking end).
    fn pair() -> (TcpStream, StdStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (TcpStream::from_std(ours), peer)
    }

    #[test]
    fn the_pump_reads_through_the_transport_and_never_splices_past_it() {
        let (src_sock, mut client) = pair();
        let (dst_sock, mut target) = pair();
        let read = Arc::new(AtomicUsize::new(0));
        let mut src = Endpoint::new(src_sock, 1);
        src.transport = Box::new(Counting(read.clone()));
        let mut dst = Endpoint::new(dst_sock, 2);
        // Splice asked for: with a transport that cannot splice the bytes must still pass
        // through its `read`.
        let mut half = Half::new(Forwarding::Splice);
        let mut pool = BufferPool::default();
        let payload = vec![7u8; 300 * 1024];
        client.write_all(&payload).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        target
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        while !half.done() {
            src.ready.readable = true;
            dst.ready.writable = true;
            half.pump(&mut src, &mut dst, &mut pool, usize::MAX, false, None);
            let mut buf = [0u8; 65536];
            if got.len() < payload.len() {
                let n = target.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        }
        target.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), payload.len());
        assert_eq!(
            read.load(Ordering::Relaxed),
            payload.len(),
            "bytes bypassed the transport"
        );
    }
}
