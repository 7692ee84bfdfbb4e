//! The PostgreSQL part of the `Preamble` stage (`postgres:` listeners): the client's first
//! packets, read after any PROXY header and TLS handshake. An SSLRequest Ballast will not
//! terminate and a GSSENCRequest are answered `N` (the client goes on in plaintext, or gives
//! up if it insists on encryption); a CancelRequest or a StartupMessage ends the read; a
//! malformed one is answered with an `ErrorResponse` the client prints
//! ([`Connection::answer_and_finish`]). The StartupMessage stays in the preamble's bytes, to
//! go to the target unchanged.

use super::preamble::{answer_request, fill_preamble, Fill, Preamble, ASKED_GSS, ASKED_SSL};
use super::pump::Endpoint;
use super::socket::Socket;
use super::Connection;
use crate::postgres::{parse_initial, CancelKey, Initial, Startup, MAX_STARTUP};

/// How reading the client's first packets went.
#[derive(Debug)]
pub(crate) enum StartupRead {
    /// Not whole yet.
    Wait,
    /// The client closed or reset first.
    ClientGone,
    /// A StartupMessage (still in the preamble's bytes, which go to the target).
    Startup(Startup),
    /// A CancelRequest for this key (its bytes too).
    Cancel(CancelKey),
    /// Not PostgreSQL as a server would take it: why.
    Invalid(String),
}

/// Reads the client's first packets into `p.read` until a StartupMessage or a CancelRequest is
/// whole, answering `N` to an encryption request on the way. `inside_tls`: the listener ended
/// TLS already (a second SSLRequest is then a protocol violation).
pub(crate) fn read_startup<S: Socket>(
    p: &mut Preamble,
    front: &mut Endpoint<S>,
    inside_tls: bool,
) -> StartupRead {
    loop {
        match parse_initial(&p.read) {
            Initial::Incomplete => {}
            Initial::SslRequest | Initial::GssEncRequest if inside_tls => {
                return StartupRead::Invalid("an encryption request inside TLS".into())
            }
            Initial::SslRequest | Initial::GssEncRequest => {
                if let Some(why) = asked_again(p, parse_initial(&p.read) == Initial::SslRequest) {
                    return StartupRead::Invalid(why);
                }
                if !answer_request(p, front, b'N') {
                    return StartupRead::ClientGone;
                }
                continue;
            }
            Initial::Cancel(key, _) => return StartupRead::Cancel(key),
            Initial::Startup(s) => return StartupRead::Startup(s),
            Initial::Invalid(why) => return StartupRead::Invalid(why),
        }
        match fill_preamble(p, front, MAX_STARTUP) {
            Fill::More => {}
            Fill::Wait => return StartupRead::Wait,
            Fill::Eof | Fill::Gone => return StartupRead::ClientGone,
            Fill::Full => {
                return StartupRead::Invalid(format!("startup packet over {MAX_STARTUP} bytes"))
            }
        }
    }
}

/// Notes an SSLRequest (`ssl`) or a GSSENCRequest as answered; `Some(why)` when one of its
/// kind was answered already. PostgreSQL takes each once, in either order, and ends a client
/// that asks again (postmaster's `ProcessStartupPacket`): a client looping on requests must
/// not hold a preamble open with one-byte answers.
fn asked_again(p: &mut Preamble, ssl: bool) -> Option<String> {
    let (bit, name) = if ssl {
        (ASKED_SSL, "SSLRequest")
    } else {
        (ASKED_GSS, "GSSENCRequest")
    };
    if p.asked & bit != 0 {
        return Some(format!("a second {name}"));
    }
    p.asked |= bit;
    None
}

/// What a `tls` listener routing PostgreSQL read before its handshake.
#[derive(Debug)]
pub(crate) enum BeforeTls {
    /// Not whole yet.
    Wait,
    /// The client closed or reset first.
    ClientGone,
    /// On to the handshake: an SSLRequest was answered `S` (and taken out), or the client
    /// opened with a ClientHello itself (PostgreSQL 17's direct TLS).
    Tls,
    /// A CancelRequest in the clear (libpq's PQcancel) for this key.
    Cancel(CancelKey),
    /// Refused with this SQLSTATE and message: a StartupMessage without TLS, or junk.
    Refused(&'static str, String),
}

/// Reads a `tls` listener's PostgreSQL client until its handshake may start, answering a
/// GSSENCRequest `N` on the way.
pub(crate) fn read_before_tls<S: Socket>(p: &mut Preamble, front: &mut Endpoint<S>) -> BeforeTls {
    loop {
        // A TLS record's first byte (handshake): the client speaks TLS at once.
        if p.read.first() == Some(&0x16) {
            return BeforeTls::Tls;
        }
        match parse_initial(&p.read) {
            Initial::Incomplete => {}
            Initial::SslRequest | Initial::GssEncRequest => {
                let tls = parse_initial(&p.read) == Initial::SslRequest;
                if let Some(why) = asked_again(p, tls) {
                    return BeforeTls::Refused(crate::postgres::PROTOCOL_VIOLATION, why);
                }
                if !answer_request(p, front, if tls { b'S' } else { b'N' }) {
                    return BeforeTls::ClientGone;
                }
                if tls {
                    return BeforeTls::Tls;
                }
                continue;
            }
            Initial::Cancel(key, _) => return BeforeTls::Cancel(key),
            Initial::Startup(_) => {
                return BeforeTls::Refused(
                    "28000",
                    "this listener takes TLS only: connect with sslmode=require (or stricter)"
                        .into(),
                )
            }
            Initial::Invalid(why) => {
                return BeforeTls::Refused(crate::postgres::PROTOCOL_VIOLATION, why)
            }
        }
        match fill_preamble(p, front, MAX_STARTUP) {
            Fill::More => {}
            Fill::Wait => return BeforeTls::Wait,
            Fill::Eof | Fill::Gone => return BeforeTls::ClientGone,
            Fill::Full => {
                return BeforeTls::Refused(
                    crate::postgres::PROTOCOL_VIOLATION,
                    format!("startup packet over {MAX_STARTUP} bytes"),
                )
            }
        }
    }
}

impl<S: Socket> Connection<S> {
    /// Sends `message` to the client (an `ErrorResponse`, written whole or not at all into an
    /// empty socket), then its end of stream: the worker then closes the socket with a FIN,
    /// so the client reads the message rather than a reset. Best effort: a client that does
    /// not take it loses it.
    pub(crate) fn answer_and_finish(&mut self, message: &[u8]) {
        let front = &mut self.front;
        let mut rest = message;
        while !rest.is_empty() {
            match front.transport.write(&mut front.stream, rest) {
                Ok(0) | Err(_) => return,
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            }
        }
        let _ = front.transport.flush(&mut front.stream);
        let _ = front.transport.shutdown_write(&mut front.stream);
    }
}
