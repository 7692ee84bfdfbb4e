//! The readers of the `Preamble` stage: what is read from a client before its target is
//! chosen — a PROXY protocol header (`accept_proxy_protocol`), PostgreSQL's SSLRequest
//! (`postgres_starttls`), a TLS ClientHello read without consuming it (`routes`) — each into
//! [`Preamble::read`], at most a bounded number of bytes, going on from where the last
//! client event left it.

use std::io;
use std::net::SocketAddr;

use super::pump::Endpoint;
use super::socket::Socket;

/// What the `Preamble` stage has read and done so far.
#[derive(Debug, Default)]
pub(crate) struct Preamble {
    /// Bytes read from the client (a PROXY header, an SSLRequest, a ClientHello, and what
    /// followed them), until the preamble is complete.
    pub read: Vec<u8>,
    /// `postgres_starttls`: whether the client's first 8 bytes have been looked at, and
    /// whether they were an SSLRequest (answered `S` by Ballast).
    pub postgres: Option<bool>,
    /// A `protocol: tls` listener's handshake with the client, in progress. Once over, the
    /// session moves into the client endpoint's transport.
    pub tls: Option<Box<rustls::Connection>>,
    /// The front door's checks are done (PROXY header read, access rules and per-source
    /// limits passed): later calls of the preamble go on from there.
    pub front_door_passed: bool,
}

/// How reading a ClientHello went.
pub(crate) enum HelloRead {
    /// Not complete yet (and nothing wrong so far).
    Wait,
    /// Done: the server name, or `None` (no SNI, not TLS, closed early, too long).
    Done(Option<String>),
    /// The client reset.
    ClientGone,
}

/// Reads the client's TLS ClientHello into `p.read` (kept, to go to the target
/// unchanged), at most [`crate::sni::MAX_HELLO`] bytes, until its server name is known.
pub(crate) fn read_client_hello<S: Socket>(p: &mut Preamble, front: &mut Endpoint<S>) -> HelloRead {
    use crate::sni::{peek, Hello, MAX_HELLO};
    loop {
        match peek(&p.read) {
            Hello::Complete(name) => return HelloRead::Done(name),
            Hello::NotTls => return HelloRead::Done(None),
            Hello::Incomplete => {}
        }
        match fill_preamble(p, front, MAX_HELLO) {
            Fill::More => {}
            Fill::Wait => return HelloRead::Wait,
            Fill::Eof | Fill::Full => return HelloRead::Done(None),
            Fill::Gone => return HelloRead::ClientGone,
        }
    }
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
pub(crate) const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// `postgres_starttls`: reads the client's first 8 bytes; an SSLRequest is answered `S` (TLS
/// welcome) and taken out, so the ClientHello follows; anything else stays, to be routed as a
/// client without a ClientHello. Sets `p.postgres`.
pub(crate) fn read_ssl_request<S: Socket>(p: &mut Preamble, front: &mut Endpoint<S>) -> HelloRead {
    while p.read.len() < SSL_REQUEST.len() {
        match fill_preamble(p, front, SSL_REQUEST.len()) {
            Fill::More => {}
            Fill::Wait => return HelloRead::Wait,
            Fill::Eof | Fill::Full => break,
            Fill::Gone => return HelloRead::ClientGone,
        }
        if p.read.get(..p.read.len()) != SSL_REQUEST.get(..p.read.len()) {
            break; // not an SSLRequest
        }
    }
    let is_request = p.read.starts_with(&SSL_REQUEST);
    if is_request {
        // The client waits for this one byte before it sends anything more.
        match front.stream.write(b"S") {
            Ok(1) => p.read.drain(..SSL_REQUEST.len()).for_each(drop),
            Ok(_) => return HelloRead::ClientGone,
            Err(e) => {
                front.abort(&e);
                return HelloRead::ClientGone;
            }
        }
    }
    p.postgres = Some(is_request);
    HelloRead::Done(None)
}

/// What one read into `p.read` did.
enum Fill {
    /// Bytes were added.
    More,
    /// The socket is empty for now.
    Wait,
    /// The client half-closed.
    Eof,
    /// `max` bytes are held already.
    Full,
    /// The client reset (its endpoint is marked aborted).
    Gone,
}

/// Reads once from the client into `p.read`, up to `max` bytes held in all.
fn fill_preamble<S: Socket>(p: &mut Preamble, front: &mut Endpoint<S>, max: usize) -> Fill {
    let mut chunk = [0u8; 4096];
    let room = max.saturating_sub(p.read.len()).min(chunk.len());
    if room == 0 {
        return Fill::Full;
    }
    let Some(buf) = chunk.get_mut(..room) else {
        return Fill::Full;
    };
    loop {
        return match front.stream.read(buf) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                p.read.extend_from_slice(buf.get(..n).unwrap_or_default());
                Fill::More
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                front.ready.readable = false;
                Fill::Wait
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                front.abort(&e);
                Fill::Gone
            }
        };
    }
}

/// How reading a PROXY protocol header went.
pub(crate) enum HeaderRead {
    /// Not complete yet: wait for the next client event (or the timeout).
    Wait,
    /// A header was read, with the addresses it declared (client, the address the client
    /// used; `None` for LOCAL or UNKNOWN); `p.read` holds what followed.
    Done(Option<(SocketAddr, SocketAddr)>),
    /// Not a valid header (or the client closed before finishing it).
    Refused(String),
    /// The client reset.
    ClientGone,
}

/// Reads the client's PROXY protocol header into `p.read`, at most
/// [`crate::proxy_protocol::MAX_HEADER`] bytes, until it is whole or the socket is empty.
pub(crate) fn read_proxy_header<S: Socket>(
    p: &mut Preamble,
    front: &mut Endpoint<S>,
) -> HeaderRead {
    use crate::proxy_protocol::{parse, Parsed, MAX_HEADER};
    loop {
        match parse(&p.read) {
            Parsed::Header { len, addresses } => {
                p.read.drain(..len.min(p.read.len()));
                return HeaderRead::Done(addresses);
            }
            Parsed::Invalid(why) => return HeaderRead::Refused(why),
            Parsed::Incomplete => {}
        }
        match fill_preamble(p, front, MAX_HEADER) {
            Fill::More => {}
            Fill::Wait => return HeaderRead::Wait,
            Fill::Eof => return HeaderRead::Refused("closed before a whole PROXY header".into()),
            Fill::Full => return HeaderRead::Refused("header too long".into()),
            Fill::Gone => return HeaderRead::ClientGone,
        }
    }
}
