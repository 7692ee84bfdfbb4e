//! The TLS transport: one side of a connection as a rustls session (a `tls` listener's
//! client, or a `target_tls` group's target), plaintext in and out for the pump.
//!
//! It cannot splice (the socket carries records, not the stream), reads the socket in records
//! (a short read does not mean the socket is empty), may hold encrypted output the socket did
//! not take yet, and ends the stream with a close_notify before the FIN.

use std::io;

use mio::net::TcpStream;

use super::transport::Transport;
use crate::tls::io as tls_io;

/// A rustls session (client or server) over the endpoint's socket, after its handshake.
#[derive(Debug)]
pub(crate) struct Tls {
    session: Box<rustls::Connection>,
    /// close_notify has been queued.
    close_sent: bool,
}

impl Tls {
    /// Wraps a session whose handshake is over.
    pub(crate) fn new(session: Box<rustls::Connection>) -> Tls {
        Tls {
            session,
            close_sent: false,
        }
    }
}

impl Transport for Tls {
    fn read(&mut self, socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        tls_io::read_plain(&mut self.session, socket, buf)
    }

    fn write(&mut self, socket: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
        tls_io::write_plain(&mut self.session, socket, buf)
    }

    fn shutdown_write(&mut self, socket: &mut TcpStream) -> io::Result<()> {
        tls_io::shutdown(&mut self.session, socket, &mut self.close_sent)
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

    fn flush(&mut self, socket: &mut TcpStream) -> io::Result<()> {
        tls_io::flush(&mut self.session, socket)
    }

    fn end_is_a_message(&self) -> bool {
        true
    }
}
