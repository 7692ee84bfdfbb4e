//! The TLS transport: one side of a connection as a rustls session (a `tls` listener's
//! client, or a `target_tls` group's target), plaintext in and out for the pump.
//!
//! It cannot splice (the socket carries records, not the stream), reads the socket in records
//! (a short read does not mean the socket is empty), may hold encrypted output the socket did
//! not take yet, and ends the stream with a close_notify before the FIN.

use std::io;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::preamble::Preamble;
use super::pump::Endpoint;
use super::socket::Socket;
use super::transport::Transport;
use crate::listener::HandshakeFailure;
use crate::tls::io::{self as tls_io, handshake, Handshake, UncleanEnd};

/// A rustls session (client or server) over the endpoint's socket, after its handshake.
#[derive(Debug)]
pub(crate) struct Tls {
    session: Box<rustls::Connection>,
    /// close_notify has been queued.
    close_sent: bool,
    /// What the peer's FIN without close_notify means.
    unclean: UncleanEnd,
}

impl Tls {
    /// Wraps a client's session whose handshake is over: a FIN without close_notify ends
    /// its stream (most clients close that way).
    pub(crate) fn client(session: Box<rustls::Connection>) -> Tls {
        Tls {
            session,
            close_sent: false,
            unclean: UncleanEnd::Eof,
        }
    }

    /// Wraps a target's session whose handshake is over: a FIN without close_notify is an
    /// abort, passed on to the client as a reset (a truncated answer never looks whole).
    pub(crate) fn target(session: Box<rustls::Connection>) -> Tls {
        Tls {
            unclean: UncleanEnd::Abort,
            ..Tls::client(session)
        }
    }
}

impl Transport for Tls {
    fn read(&mut self, socket: &mut dyn Socket, buf: &mut [u8]) -> io::Result<usize> {
        tls_io::read_plain(&mut self.session, socket, buf, self.unclean)
    }

    fn write(&mut self, socket: &mut dyn Socket, buf: &[u8]) -> io::Result<usize> {
        tls_io::write_plain(&mut self.session, socket, buf)
    }

    fn shutdown_write(&mut self, socket: &mut dyn Socket) -> io::Result<()> {
        if !self.close_sent {
            self.session.send_close_notify();
            self.close_sent = true;
        }
        tls_io::flush(&mut self.session, socket)?;
        socket.shutdown_write()
    }

    fn can_splice(&self) -> bool {
        false
    }

    fn short_read_empties(&self) -> bool {
        false
    }

    fn holds_output(&self) -> bool {
        self.session.wants_write()
    }

    fn flush(&mut self, socket: &mut dyn Socket) -> io::Result<()> {
        tls_io::flush(&mut self.session, socket)
    }

    fn end_is_a_message(&self) -> bool {
        true
    }
}

/// How a client's handshake stands.
pub(crate) enum FrontTls {
    /// Waiting for the client (or for room to send to it).
    Wait,
    /// Failed: the client is to be reset and the failure counted.
    Failed(HandshakeFailure, String),
    /// Over: the session is the client side's transport now.
    Done {
        /// The SNI the client sent (lowercase), for `routes`.
        server_name: Option<String>,
    },
}

/// Advances the TLS handshake of a `tls` listener's client, starting it with `config` on the
/// first call. Client bytes the preamble read before (past a PROXY header or an SSLRequest)
/// are the session's first input.
pub(crate) fn front_handshake<S: Socket>(
    p: &mut Preamble,
    front: &mut Endpoint<S>,
    config: &Arc<rustls::ServerConfig>,
    stats: &crate::listener::ListenerStats,
) -> FrontTls {
    if p.tls.is_none() {
        match crate::tls::server_session(config) {
            Ok(s) => p.tls = Some(Box::new(s)),
            Err(e) => return FrontTls::Failed(HandshakeFailure::Other, e.to_string()),
        }
    }
    let Some(session) = p.tls.as_mut() else {
        return FrontTls::Wait;
    };
    if !p.read.is_empty() {
        let mut rest = &p.read[..];
        while !rest.is_empty() {
            if session.read_tls(&mut rest).is_err() {
                break; // more than rustls buffers: process_new_packets says what is wrong
            }
        }
        p.read.clear();
        if let Err(e) = session.process_new_packets() {
            let _ = session.write_tls(&mut front.stream);
            let err = crate::tls::io::HandshakeError::Tls(e);
            return FrontTls::Failed(HandshakeFailure::of(&err), err.to_string());
        }
    }
    match handshake(session, &mut front.stream) {
        Handshake::Wait => FrontTls::Wait,
        Handshake::Failed(e) => FrontTls::Failed(HandshakeFailure::of(&e), e.to_string()),
        Handshake::Done => {
            let Some(session) = p.tls.take() else {
                return FrontTls::Wait;
            };
            let server_name = match &*session {
                rustls::Connection::Server(s) => s.server_name().map(str::to_ascii_lowercase),
                rustls::Connection::Client(_) => None,
            };
            stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stats.tls_resumed.fetch_add(1, Ordering::Relaxed);
            }
            front.transport = Box::new(Tls::client(session));
            // Application data may have come with the client's last flight, decrypted and
            // waiting inside the session: no event will announce it.
            front.ready.readable = true;
            FrontTls::Done { server_name }
        }
    }
}
