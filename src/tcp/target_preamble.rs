//! The `TargetPreamble` stage: what goes to a target that accepted the connect before the
//! client's bytes, and the answer awaited — PostgreSQL's SSLRequest (`postgres_starttls`
//! without termination: the target's `S` is not passed on, the client had Ballast's), or the
//! PROXY header in the clear and a TLS handshake (`target_tls`). A refusal or a failed
//! handshake is a failed connect: the next target is tried (a server declining TLS is not
//! charged against its health).

use std::io;

use super::preamble::SSL_REQUEST;
use super::socket::Socket;
use super::tls::Tls;
use super::{Connection, Stage};
use crate::net::describe;
use crate::tls::io::{handshake, Handshake};

/// What the target's preamble needs, from the group's configuration.
#[derive(Debug)]
pub(crate) enum TargetHello {
    /// PostgreSQL's SSLRequest, answered `S`.
    SslRequest,
    /// The PROXY header (if the group sends one) in the clear, then this TLS session's
    /// handshake.
    Tls {
        header: Option<Vec<u8>>,
        session: Box<rustls::Connection>,
    },
}

/// Where the target's preamble stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TargetStep {
    /// The target's answer is awaited (the connect timeout still runs).
    Wait,
    /// Over: the connection is to be established.
    Done,
    /// The target refused, or the handshake failed: a failed connect, and why.
    Failed(String),
    /// The target answered the SSLRequest with something other than `S`: it is up, but its
    /// server does not take TLS. The next target is tried; this one's health is not charged
    /// (a client asking for TLS must not take a healthy server out for everyone), and why.
    Declined(String),
}

impl<S: Socket> Connection<S> {
    /// The attempt in flight connected to a target that must be sent `hello` first: sends it
    /// (a fresh connection's send buffer takes a header or 8 bytes at once: less is a
    /// failure) and moves to `TargetPreamble`.
    pub(crate) fn start_target_preamble(&mut self, hello: TargetHello) -> TargetStep {
        let Some(back) = self.back_mut() else {
            return TargetStep::Wait;
        };
        let (first, session) = match hello {
            TargetHello::SslRequest => (Some(SSL_REQUEST.to_vec()), None),
            TargetHello::Tls { header, session } => (header, Some(session)),
        };
        if let Some(bytes) = first {
            match back.stream.write(&bytes) {
                Ok(n) if n == bytes.len() => {}
                Ok(n) => {
                    return TargetStep::Failed(format!(
                        "the target took {n} of the {} bytes sent before the client's",
                        bytes.len()
                    ))
                }
                Err(e) => return TargetStep::Failed(describe(&e)),
            }
        }
        if let Stage::Connecting(mut a) = self.take_stage() {
            a.tls = session;
            self.set_stage(Stage::TargetPreamble(a));
        }
        self.target_preamble_event()
    }

    /// The target's socket had an event in `TargetPreamble`: the handshake goes on (over, its
    /// session becomes the target side's transport), or the SSLRequest's one-byte answer is
    /// read: `S` goes on, anything else is a refusal.
    pub(crate) fn target_preamble_event(&mut self) -> TargetStep {
        let Stage::TargetPreamble(a) = &mut self.stage else {
            return TargetStep::Wait;
        };
        let Some(attempt) = a.current.as_mut() else {
            return TargetStep::Wait;
        };
        if let Some(session) = a.tls.as_mut() {
            return match handshake(session, &mut attempt.back.stream) {
                Handshake::Wait => TargetStep::Wait,
                Handshake::Failed(e) => TargetStep::Failed(e.to_string()),
                Handshake::Done => {
                    if let Some(session) = a.tls.take() {
                        attempt.back.transport = Box::new(Tls::target(session));
                    }
                    TargetStep::Done
                }
            };
        }
        let mut answer = [0u8; 1];
        let result = loop {
            match attempt.back.stream.read(&mut answer) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(1) if answer == *b"S" => TargetStep::Done,
            Ok(1) => TargetStep::Declined(format!(
                "refused TLS: answered {:?} to the SSLRequest",
                char::from(answer[0])
            )),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => TargetStep::Wait,
            Ok(_) => TargetStep::Failed("closed before answering the SSLRequest".into()),
            Err(e) => TargetStep::Failed(describe(&e)),
        }
    }
}
