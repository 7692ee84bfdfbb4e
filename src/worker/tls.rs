//! The worker's side of a `target_tls` group's handshake with the target (in
//! `TargetPreamble`, after the connect): the session is made from the group's client
//! configuration, and once the handshake is over it becomes the target endpoint's transport
//! ([`crate::tcp::tls::Tls`]). The client's handshake is the `Preamble` stage's
//! (`tcp::tls::front_handshake`).

use super::Worker;
use crate::tcp::tls::Tls;
use crate::tcp::Stage;
use crate::tls::io::{handshake, Handshake};

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
