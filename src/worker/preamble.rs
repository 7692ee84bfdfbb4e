//! The readers of the `Preamble` stage: what is read from a client before its target is
//! chosen — a PROXY protocol header (`accept_proxy_protocol`), PostgreSQL's SSLRequest
//! (`postgres_starttls`), a TLS ClientHello read without consuming it (`routes`) — each into
//! `Connection::preamble`, at most a bounded number of bytes, going on from where the last
//! client event left it.

use std::io;

use crate::tcp::Connection;

/// How reading a ClientHello went.
pub(super) enum HelloRead {
    /// Not complete yet (and nothing wrong so far).
    Wait,
    /// Done: the server name, or `None` (no SNI, not TLS, closed early, too long).
    Done(Option<String>),
    /// The client reset.
    ClientGone,
}

/// Reads the client's TLS ClientHello into `conn.preamble` (kept, to go to the target
/// unchanged), at most [`crate::sni::MAX_HELLO`] bytes, until its server name is known.
pub(super) fn read_client_hello(conn: &mut Connection) -> HelloRead {
    use crate::sni::{peek, Hello, MAX_HELLO};
    loop {
        match peek(&conn.preamble) {
            Hello::Complete(name) => return HelloRead::Done(name),
            Hello::NotTls => return HelloRead::Done(None),
            Hello::Incomplete => {}
        }
        match fill_preamble(conn, MAX_HELLO) {
            Fill::More => {}
            Fill::Wait => return HelloRead::Wait,
            Fill::Eof | Fill::Full => return HelloRead::Done(None),
            Fill::Gone => return HelloRead::ClientGone,
        }
    }
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
pub(super) const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// `postgres_starttls`: reads the client's first 8 bytes; an SSLRequest is answered `S` (TLS
/// welcome) and taken out, so the ClientHello follows; anything else stays, to be routed as a
/// client without a ClientHello. Sets `conn.postgres`.
pub(super) fn read_ssl_request(conn: &mut Connection) -> HelloRead {
    use std::io::Write;
    while conn.preamble.len() < SSL_REQUEST.len() {
        match fill_preamble(conn, SSL_REQUEST.len()) {
            Fill::More => {}
            Fill::Wait => return HelloRead::Wait,
            Fill::Eof | Fill::Full => break,
            Fill::Gone => return HelloRead::ClientGone,
        }
        if conn.preamble.get(..conn.preamble.len()) != SSL_REQUEST.get(..conn.preamble.len()) {
            break; // not an SSLRequest
        }
    }
    let is_request = conn.preamble.starts_with(&SSL_REQUEST);
    if is_request {
        // The client waits for this one byte before it sends anything more.
        match conn.front.stream.write(b"S") {
            Ok(1) => conn.preamble.drain(..SSL_REQUEST.len()).for_each(drop),
            Ok(_) => return HelloRead::ClientGone,
            Err(e) => {
                conn.front.abort(&e);
                return HelloRead::ClientGone;
            }
        }
    }
    conn.postgres = Some(is_request);
    HelloRead::Done(None)
}

/// What one read into `conn.preamble` did.
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

/// Reads once from the client into `conn.preamble`, up to `max` bytes held in all.
fn fill_preamble(conn: &mut Connection, max: usize) -> Fill {
    use std::io::Read;
    let mut chunk = [0u8; 4096];
    let room = max.saturating_sub(conn.preamble.len()).min(chunk.len());
    if room == 0 {
        return Fill::Full;
    }
    let Some(buf) = chunk.get_mut(..room) else {
        return Fill::Full;
    };
    loop {
        return match conn.front.stream.read(buf) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                conn.preamble
                    .extend_from_slice(buf.get(..n).unwrap_or_default());
                Fill::More
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.front.ready.readable = false;
                Fill::Wait
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                conn.front.abort(&e);
                Fill::Gone
            }
        };
    }
}

/// How reading a PROXY protocol header went.
pub(super) enum HeaderRead {
    /// Not complete yet: wait for the next client event (or the timeout).
    Wait,
    /// A header was read; `conn.origin` holds what it declared, `conn.preamble` what followed.
    Done,
    /// Not a valid header (or the client closed before finishing it).
    Refused(String),
    /// The client reset.
    ClientGone,
}

/// Reads the client's PROXY protocol header into `conn.preamble`, at most
/// [`crate::proxy_protocol::MAX_HEADER`] bytes, until it is whole or the socket is empty.
pub(super) fn read_proxy_header(conn: &mut Connection) -> HeaderRead {
    use crate::proxy_protocol::{parse, Parsed, MAX_HEADER};
    loop {
        match parse(&conn.preamble) {
            Parsed::Header { len, addresses } => {
                if addresses.is_some() {
                    conn.origin = addresses;
                }
                conn.preamble.drain(..len.min(conn.preamble.len()));
                return HeaderRead::Done;
            }
            Parsed::Invalid(why) => return HeaderRead::Refused(why),
            Parsed::Incomplete => {}
        }
        match fill_preamble(conn, MAX_HEADER) {
            Fill::More => {}
            Fill::Wait => return HeaderRead::Wait,
            Fill::Eof => return HeaderRead::Refused("closed before a whole PROXY header".into()),
            Fill::Full => return HeaderRead::Refused("header too long".into()),
            Fill::Gone => return HeaderRead::ClientGone,
        }
    }
}
