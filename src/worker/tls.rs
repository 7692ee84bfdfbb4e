//! The worker's side of TLS: a `tls` listener's handshake with the client (in the `Preamble`
//! stage, after the front door's checks) and a `target_tls` group's handshake with the target
//! (in `TargetPreamble`, after the connect). Once a handshake is over its session becomes the
//! endpoint's transport ([`crate::tcp::tls::Tls`]) and the pump carries plaintext.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Worker;
use crate::generation::HandshakeFailure;
use crate::tcp::preamble::Preamble;
use crate::tcp::pump::Endpoint;
use crate::tcp::tls::Tls;
use crate::tcp::Stage;
use crate::tls::io::{handshake, Handshake};

/// How a client's handshake stands.
pub(super) enum FrontTls {
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
pub(super) fn front_handshake(
    p: &mut Preamble,
    front: &mut Endpoint,
    config: &Arc<rustls::ServerConfig>,
    stats: &crate::generation::ListenerStats,
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

impl Worker {
    /// The target of connection `key` accepted the connect and its group has `target_tls`:
    /// sends the group's PROXY header in the clear, if it has one, and starts the handshake
    /// (the connect timeout still runs).
    pub(super) fn start_target_tls(&mut self, key: usize) {
        use std::io::Write;
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let group = &self.generation.groups[conn.group];
        let header = group
            .config
            .proxy_protocol
            .map(|v| crate::proxy_protocol::header(v, conn.client(), conn.local(), false));
        let (Some(t), Some(tls)) = (conn.target(), group.config.target_tls.as_ref()) else {
            return self.established(key);
        };
        let Some(back) = conn.back_mut() else {
            return;
        };
        if let Some(header) = header {
            // A fresh connection's send buffer takes a header (at most a few hundred bytes).
            match back.stream.write(&header) {
                Ok(n) if n == header.len() => {}
                Ok(_) => return self.connect_failed(key, "PROXY header cut short".into()),
                Err(e) => return self.connect_failed(key, crate::net::describe(&e)),
            }
        }
        match tls.session(group.targets[t].address.ip()) {
            Ok(s) => {
                if let Stage::Connecting(mut a) = conn.take_stage() {
                    a.tls = Some(Box::new(s));
                    conn.set_stage(Stage::TargetPreamble(a));
                }
                self.handle_target_tls(key);
            }
            Err(e) => self.connect_failed(key, format!("TLS: {e}")),
        }
    }

    /// Advances the handshake with the target: over, the session becomes the target side's
    /// transport; failed (a certificate refused, no TLS), it is a failed connect and the next
    /// target is tried.
    pub(super) fn handle_target_tls(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let Stage::TargetPreamble(a) = &mut conn.stage else {
            return;
        };
        let (Some(session), Some(attempt)) = (a.tls.as_mut(), a.current.as_mut()) else {
            return;
        };
        match handshake(session, &mut attempt.back.stream) {
            Handshake::Wait => {}
            Handshake::Failed(e) => self.connect_failed(key, e.to_string()),
            Handshake::Done => {
                if let Some(session) = a.tls.take() {
                    attempt.back.transport = Box::new(Tls::target(session));
                }
                self.established(key);
            }
        }
    }
}
