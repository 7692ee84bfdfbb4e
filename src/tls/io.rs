//! Driving a rustls session over a non-blocking socket: the handshake, plaintext in and out,
//! and the end of the stream. Shared by the workers (a `tls` listener's clients, a group's
//! `target_tls`) and the prober (health checks over `target_tls`).
//!
//! Every function makes what progress it can and returns `WouldBlock` (or
//! [`Handshake::Wait`]) when the socket can do no more now: the caller waits for the
//! socket's next readiness event (edge-triggered: each function goes on until the socket
//! itself said `WouldBlock`, never stopping on a short read).

use std::io::{self, Read, Write};

use rustls::Connection;

/// Most plaintext taken per [`write_plain`] call: four full TLS records, so one call stays
/// within the pump's buffer and rustls never buffers much more than a socket's worth.
const MAX_PLAIN_PER_WRITE: usize = 4 * 16 * 1024;

/// How a handshake step went.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// Done: application data may flow (output such as TLS 1.3 session tickets may still be
    /// queued; [`flush`] sends it).
    Done,
    /// Waiting for the socket (the peer's next flight, or room to send ours).
    Wait,
    /// Failed: the peer closed or reset, or sent what TLS forbids (the alert that says why
    /// has been sent where the socket took it).
    Failed(HandshakeError),
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer closed (EOF) before the handshake was over.
    Closed,
    /// Reading or writing the socket failed (a reset).
    Io(io::Error),
    /// A TLS error: not TLS, no common version or cipher suite, a certificate refused (by
    /// us or by the peer's alert), no common ALPN protocol.
    Tls(rustls::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Closed => f.write_str("closed during the TLS handshake"),
            HandshakeError::Io(e) => write!(f, "TLS handshake: {e}"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

/// Advances the handshake of `tls` over `socket` as far as the socket allows.
pub(crate) fn handshake<S: Read + Write + ?Sized>(
    tls: &mut Connection,
    socket: &mut S,
) -> Handshake {
    loop {
        match flush(tls, socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Handshake::Wait,
            Err(e) => return Handshake::Failed(HandshakeError::Io(e)),
        }
        if !tls.is_handshaking() {
            return Handshake::Done;
        }
        match tls.read_tls(&mut &mut *socket) {
            Ok(0) => return Handshake::Failed(HandshakeError::Closed),
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    // Best effort: the alert rustls queued tells the peer why.
                    let _ = tls.write_tls(&mut &mut *socket);
                    return Handshake::Failed(HandshakeError::Tls(e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Handshake::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Handshake::Failed(HandshakeError::Io(e)),
        }
    }
}

/// Sends what `tls` has queued (records, alerts) until it is all out.
///
/// # Errors
/// `WouldBlock` when the socket is full with some still queued; the socket's own errors.
pub(crate) fn flush<S: Write + ?Sized>(tls: &mut Connection, socket: &mut S) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut &mut *socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a TCP FIN without a TLS close_notify before it means (RFC 8446 §6.1: a close_notify
/// ends the data; a FIN alone may be an attacker on the path cutting the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UncleanEnd {
    /// The end of the stream: for clients, most of which close without a close_notify (the
    /// bytes before it were each authenticated).
    Eof,
    /// An abort, passed on as a reset: for targets, whose answers an attacker between Ballast
    /// and the target could otherwise cut short unseen.
    Abort,
}

/// Reads decrypted bytes into `buf`: those already decrypted first, else reads the socket
/// until a record is whole or the socket is empty.
///
/// `Ok(0)` is the end of the stream: the peer's close_notify, or, when `unclean` is
/// [`UncleanEnd::Eof`], its FIN without one.
///
/// # Errors
/// `WouldBlock` when the socket is empty and no whole record waits; the socket's errors (a
/// reset); `InvalidData` when a record fails (a forged or corrupted stream: an abort, never
/// an end); `ConnectionAborted` for a FIN without close_notify when `unclean` is
/// [`UncleanEnd::Abort`].
pub(crate) fn read_plain<S: Read + Write + ?Sized>(
    tls: &mut Connection,
    socket: &mut S,
    buf: &mut [u8],
    unclean: UncleanEnd,
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return match unclean {
                    UncleanEnd::Eof => Ok(0),
                    UncleanEnd::Abort => Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the peer closed without close_notify (the stream may be truncated)",
                    )),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match tls.read_tls(&mut &mut *socket) {
            // EOF: rustls notes it; the reader then says how the stream ended.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            let _ = tls.write_tls(&mut &mut *socket);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // A key update or an alert may want an answer; the socket takes it now or the next
        // write sends it.
        if tls.wants_write() {
            match flush(tls, socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Encrypts bytes from `buf` and sends them; returns how many were taken (at most
/// [`MAX_PLAIN_PER_WRITE`]). Bytes are taken only once everything queued before has gone out,
/// so rustls never holds more than one call's worth: a full socket pushes back on the source.
/// Taken bytes may still be queued in `tls` (the socket filled up): [`flush`] sends them.
///
/// # Errors
/// `WouldBlock` when earlier output is still queued and the socket is full; the socket's
/// errors.
pub(crate) fn write_plain<S: Write + ?Sized>(
    tls: &mut Connection,
    socket: &mut S,
    buf: &[u8],
) -> io::Result<usize> {
    flush(tls, socket)?;
    let chunk = buf.get(..buf.len().min(MAX_PLAIN_PER_WRITE)).unwrap_or(buf);
    let n = tls.writer().write(chunk)?;
    match flush(tls, socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        // The bytes are taken; the error comes back on the next call.
        Err(_) if n > 0 => {}
        Err(e) => return Err(e),
    }
    Ok(n)
}
