//! The TLS transport: one side of a connection as a rustls session (a `tls` listener's
//! client, or a `target_tls` group's target), plaintext in and out for the pump.
//!
//! It cannot splice (the socket carries records, not the stream), reads the socket in records
//! (a short read does not mean the socket is empty), may hold encrypted output the socket did
//! not take yet, and ends the stream with a close_notify before the FIN.

use std::io;

use super::socket::Socket;
use super::transport::Transport;
use crate::tls::io::{self as tls_io, UncleanEnd};

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
