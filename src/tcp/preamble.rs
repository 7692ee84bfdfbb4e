//! The readers of the `Preamble` stage: what is read from a client before its target is
//! chosen — a PROXY protocol header (`accept_proxy_protocol`), PostgreSQL's SSLRequest
//! (`postgres_starttls`), a TLS ClientHello read without consuming it (`routes`) — each into
//! [`Preamble::read`], at most a bounded number of bytes, going on from where the last
//! client event left it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::pump::Endpoint;
use super::socket::Socket;
use super::startup::{read_startup, BeforeTls, StartupRead};
use super::tls::FrontTls;
use super::{Action, Attempts, Connection, Stage};
use crate::config::{ListenerConfig, NoServerName, TargetGroupConfig, WithoutRoute};
use crate::listener::{HandshakeFailure, ListenerState, Refusal};
use crate::postgres;

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
    /// When the part of the preamble under way began: first when the front door's checks
    /// were done (PROXY header read, access rules and per-source limits passed; later calls
    /// go on from there), then, on a listener that reads a StartupMessage after a handshake
    /// or ClientHello, when that ended. The part's timeout runs from it.
    pub part_began: Option<Instant>,
    /// Once the TLS handshake or the ClientHello is over (or there is none): the server name
    /// the client asked for, if any. Later calls go on from there.
    pub hello: Option<Option<String>>,
    /// `postgres:`: the client's StartupMessage was read (it is in `read`): the target's
    /// answer is watched for its cancel key.
    pub startup_read: bool,
    /// PostgreSQL: the encryption requests already answered ([`ASKED_SSL`], [`ASKED_GSS`]).
    /// Each may come once (GSS then SSL, or SSL then GSS, as libpq tries them); a repeat is
    /// a protocol violation, as the server takes it.
    pub asked: u8,
}

/// [`Preamble::asked`]: an SSLRequest was answered.
pub(crate) const ASKED_SSL: u8 = 1;
/// [`Preamble::asked`]: a GSSENCRequest was answered.
pub(crate) const ASKED_GSS: u8 = 2;
/// [`Preamble::asked`]: the client opened with a TLS ClientHello itself (PostgreSQL 17's
/// `sslnegotiation=direct`): its TLS passes through, with no StartupMessage to read and no
/// SSLRequest to replay.
pub(crate) const DIRECT_TLS: u8 = 4;

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
/// PostgreSQL's GSSENCRequest: length 8, code 80877104.
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// `postgres_starttls`: reads the client's first 8 bytes; an SSLRequest is answered `S` (TLS
/// welcome) and taken out, so the ClientHello follows; anything else stays, to be routed as a
/// client without a ClientHello. Sets `p.postgres`.
pub(crate) fn read_ssl_request<S: Socket>(p: &mut Preamble, front: &mut Endpoint<S>) -> HelloRead {
    loop {
        while p.read.len() < SSL_REQUEST.len() {
            match fill_preamble(p, front, SSL_REQUEST.len()) {
                Fill::More => {}
                Fill::Wait => return HelloRead::Wait,
                Fill::Eof | Fill::Full => break,
                Fill::Gone => return HelloRead::ClientGone,
            }
            let n = p.read.len().min(SSL_REQUEST.len() - 1);
            if p.read.get(..n) != SSL_REQUEST.get(..n) {
                break; // neither an SSLRequest nor a GSSENCRequest
            }
        }
        // libpq with gssencmode=prefer asks for GSS encryption first, then for TLS on the
        // same connection: `N` (Ballast does not do GSS), once, and on to the SSLRequest.
        if !p.read.starts_with(&GSSENC_REQUEST) || p.asked & ASKED_GSS != 0 {
            break;
        }
        if !answer_request(p, front, b'N') {
            return HelloRead::ClientGone;
        }
        p.asked |= ASKED_GSS;
    }
    let is_request = p.read.starts_with(&SSL_REQUEST);
    if is_request {
        if !answer_request(p, front, b'S') {
            return HelloRead::ClientGone;
        }
        p.asked |= ASKED_SSL;
    }
    p.postgres = Some(is_request);
    HelloRead::Done(None)
}

/// Answers the 8-byte encryption request at the start of `p.read` with `byte` (`S` or `N`:
/// the client waits for it before it sends anything more) and takes the request out of
/// `p.read`. False when the client is gone (its endpoint marked aborted on an error).
pub(super) fn answer_request<S: Socket>(
    p: &mut Preamble,
    front: &mut Endpoint<S>,
    byte: u8,
) -> bool {
    match front.transport.write(&mut front.stream, &[byte]) {
        Ok(1) => {
            p.read.drain(..SSL_REQUEST.len().min(p.read.len()));
            true
        }
        Ok(_) => false,
        Err(e) => {
            front.abort(&e);
            false
        }
    }
}

/// What one read into `p.read` did.
pub(super) enum Fill {
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

/// Reads once from the client into `p.read`, up to `max` bytes held in all, through its
/// transport (plaintext once a `tls` listener's handshake is over).
pub(super) fn fill_preamble<S: Socket>(
    p: &mut Preamble,
    front: &mut Endpoint<S>,
    max: usize,
) -> Fill {
    let mut chunk = [0u8; 4096];
    let room = max.saturating_sub(p.read.len()).min(chunk.len());
    if room == 0 {
        return Fill::Full;
    }
    let Some(buf) = chunk.get_mut(..room) else {
        return Fill::Full;
    };
    loop {
        return match front.transport.read(&mut front.stream, buf) {
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

/// Where the `Preamble` stage stands after the client's latest event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// More is to come: wait for the client (or the preamble's timeout).
    Wait,
    /// The client reset or closed before its preamble was whole.
    ClientGone,
    /// Refused at the front door: reset, counted as this, and no access-log line (a flood of
    /// refused clients must not become a flood of log lines).
    Refused(Refusal),
    /// The client's TLS handshake failed (and why, for the debug log). Closed with a FIN, not
    /// a reset: a reset would throw away the alert that tells the client why.
    HandshakeFailed(HandshakeFailure, String),
    /// Whole: its target group is chosen ([`Connection::group`]); on to the first connect
    /// ([`Connection::start_connecting`]).
    Done,
    /// A PostgreSQL CancelRequest whose key a server at this address issued: to that target
    /// alone.
    Cancel(SocketAddr),
    /// The client was answered (an `ErrorResponse`, or nothing for a cancel whose key no
    /// connection holds) and sent its end of stream: close with a FIN, counting the refusal
    /// if any.
    Answered(Option<Refusal>),
}

/// How a preamble that ran out of time ends, by the listener's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Refused, counted as this.
    Refused(Refusal),
    /// A `tls` listener's handshake timed out (refused, counted as a handshake failure).
    HandshakeTimeout,
    /// No whole ClientHello in time, and the routes' `otherwise: default`: what was read goes
    /// to the listener's target group.
    DefaultRoute,
    /// Reset both sides (`preamble_timeout`).
    Close,
    /// `postgres:`: no whole StartupMessage in time: answered with an `ErrorResponse`,
    /// refused.
    StartupTimeout,
    /// `postgres:` beside SNI routes: no whole ClientHello in time, so no TLS is coming; the
    /// StartupMessage is read now, under its own timeout (never the default route unread).
    ReadStartup,
}

impl<S: Socket> Connection<S> {
    /// The `Preamble` stage: reads what must be read from the client before a target is
    /// chosen, going on from where the last event left it: the PROXY protocol header on
    /// listeners with `accept_proxy_protocol`, after which the access rules and the
    /// per-source limits judge the client it declares; PostgreSQL's SSLRequest
    /// (`postgres_starttls`); the TLS handshake (`protocol: tls`) or the ClientHello to route
    /// by (`routes`). The only I/O is the client socket's, through [`Socket`]; a per-source
    /// place is taken here (given back when the connection is dropped).
    pub(crate) fn read_preamble(&mut self, listener: &ListenerState, now: Instant) -> Step {
        let config = &listener.config;
        let Stage::Preamble(p) = &mut self.stage else {
            return Step::Wait;
        };
        let front = &mut self.front;
        if p.part_began.is_none() {
            if config.accept_proxy.is_some() {
                match read_proxy_header(p, front) {
                    HeaderRead::Wait => return Step::Wait,
                    HeaderRead::ClientGone => return Step::ClientGone,
                    HeaderRead::Refused(why) => {
                        log::debug!("{}: refused: {why}", self.tuple);
                        return Step::Refused(Refusal::BadProxyHeader);
                    }
                    HeaderRead::Done(Some(addresses)) => self.origin = Some(Box::new(addresses)),
                    HeaderRead::Done(None) => {} // LOCAL or UNKNOWN: the peer is the client
                }
                if !config.access.admits(self.client().ip()) {
                    return Step::Refused(Refusal::Denied);
                }
            }
            // Per-source limits, on the client the preamble settled on. Past one, the client
            // is reset at once rather than left in the backlog, which every source shares.
            if let Some(t) = &listener.sources {
                match t.admit(self.client().ip(), now) {
                    Ok(place) => self.source_place = place.map(Box::new),
                    Err(over) => return Step::Refused(Refusal::from(over)),
                }
            }
            if let Stage::Preamble(p) = &mut self.stage {
                p.part_began = Some(now);
            }
        }
        // A `tls` listener routing PostgreSQL: what comes before the handshake may also be a
        // cancel (libpq sends it in the clear), a GSSENCRequest, or a client that does not do
        // TLS at all.
        if let Stage::Preamble(p) = &mut self.stage {
            if config.tls.is_some() && config.postgres.is_some() && p.postgres.is_none() {
                let before = super::startup::read_before_tls(p, &mut self.front);
                match before {
                    BeforeTls::Wait => return Step::Wait,
                    BeforeTls::ClientGone => return Step::ClientGone,
                    BeforeTls::Tls => p.postgres = Some(false),
                    BeforeTls::Cancel(key) => return self.route_cancel(listener, &key),
                    BeforeTls::Refused(sqlstate, why) => {
                        log::debug!("{}: refused: {why}", self.tuple);
                        self.answer_and_finish(&postgres::error_response(sqlstate, &why));
                        return Step::Answered(Some(Refusal::BadStartup));
                    }
                }
            }
        }
        let Stage::Preamble(p) = &mut self.stage else {
            return Step::Wait;
        };
        let front = &mut self.front;
        let sni = config.sni.as_ref();
        if p.hello.is_none() {
            if sni.is_some_and(|s| s.postgres_starttls) && p.postgres.is_none() {
                match read_ssl_request(p, front) {
                    HelloRead::Wait => return Step::Wait,
                    HelloRead::ClientGone => return Step::ClientGone,
                    HelloRead::Done(_) => {}
                }
                if config.tls.is_some() {
                    // TLS ends here: the target gets plain PostgreSQL, no SSLRequest to replay.
                    p.postgres = Some(false);
                }
            }
            let name = if let Some(tls) = &config.tls {
                match super::tls::front_handshake(p, front, &tls.server.config, listener) {
                    FrontTls::Wait => return Step::Wait,
                    FrontTls::Failed(why, message) => return Step::HandshakeFailed(why, message),
                    FrontTls::Done { server_name } => server_name,
                }
            } else if sni.is_some() {
                let name = match read_client_hello(p, front) {
                    HelloRead::Wait => return Step::Wait,
                    HelloRead::ClientGone => return Step::ClientGone,
                    HelloRead::Done(name) => name,
                };
                if p.postgres != Some(true) && p.read.first() == Some(&0x16) {
                    // A TLS record where a StartupMessage could be: a direct TLS client
                    // (with or without postgres_starttls), routed by its name alone.
                    p.asked |= DIRECT_TLS;
                }
                name
            } else {
                None
            };
            p.hello = Some(name);
            if config.postgres.is_some() {
                // The StartupMessage's own timeout runs from the handshake's end.
                p.part_began = Some(now);
            }
        }
        let name = p.hello.clone().flatten();
        let sni_group = sni.zip(name.as_deref()).and_then(|(s, n)| s.group_for(n));
        // PostgreSQL: the StartupMessage, unless the client's own TLS passes through (its
        // SSLRequest was answered `S`, or it opened with a ClientHello: routed by name only).
        if let Some(pg) = config
            .postgres
            .as_ref()
            .filter(|_| p.postgres != Some(true) && p.asked & DIRECT_TLS == 0)
        {
            let startup = match read_startup(p, front, config.tls.is_some()) {
                StartupRead::Wait => return Step::Wait,
                StartupRead::ClientGone => return Step::ClientGone,
                StartupRead::Invalid(why) => {
                    log::debug!("{}: refused: {why}", self.tuple);
                    let answer = postgres::error_response(postgres::PROTOCOL_VIOLATION, &why);
                    self.answer_and_finish(&answer);
                    return Step::Answered(Some(Refusal::BadStartup));
                }
                StartupRead::Cancel(key) => return self.route_cancel(listener, &key),
                StartupRead::Startup(s) => s,
            };
            p.startup_read = true;
            let (database, user) = (startup.database(), startup.user());
            if let Some(g) = pg.group_for(database, user, startup.application_name()) {
                self.group = g;
                return Step::Done;
            }
            if let Some(g) = sni_group {
                self.group = g;
                return Step::Done;
            }
            if !pg.routes.is_empty() && pg.without_route == WithoutRoute::Refuse {
                let answer = postgres::error_response(
                    postgres::INVALID_CATALOG_NAME,
                    &format!(
                        "no route for database \"{}\" (user \"{}\") at listener {}",
                        postgres::echo(database),
                        postgres::echo(user),
                        config.name
                    ),
                );
                self.answer_and_finish(&answer);
                return Step::Answered(Some(Refusal::NoRoute));
            }
            return Step::Done; // the listener's target group
        }
        if let Some(sni) = sni {
            match sni_group {
                Some(g) => self.group = g,
                None if sni.otherwise == NoServerName::Close => {
                    return Step::Refused(Refusal::NoRoute)
                }
                None => {} // the default route: the listener's target group
            }
        }
        Step::Done
    }

    /// A PostgreSQL CancelRequest for `key`: to the target whose server issued it, or, for a
    /// key no open connection holds, closed without a word (as the server does: a client must
    /// not learn which keys exist).
    fn route_cancel(&mut self, listener: &ListenerState, key: &postgres::CancelKey) -> Step {
        match listener.cancel_keys.as_ref().and_then(|k| k.target(key)) {
            Some(address) => {
                listener.cancels_routed.fetch_add(1, Ordering::Relaxed);
                Step::Cancel(address)
            }
            None => {
                listener.cancels_unknown.fetch_add(1, Ordering::Relaxed);
                self.answer_and_finish(&[]);
                Step::Answered(None)
            }
        }
    }

    /// The preamble is complete: what goes to the target first — `group`'s PROXY header,
    /// and the client bytes the preamble read (past an incoming PROXY header; a ClientHello,
    /// unchanged) — waits in the attempts, and the connection is `Connecting`; the worker is
    /// to start the first connect.
    pub(crate) fn start_connecting(&mut self, group: &TargetGroupConfig) -> Action {
        let mut first = match group.proxy_protocol {
            // With `target_tls` the header goes in the clear before the handshake instead.
            Some(v) if group.target_tls.is_none() => {
                crate::proxy_protocol::header(v, self.client(), self.local(), false)
            }
            _ => Vec::new(),
        };
        let Stage::Preamble(mut p) = self.take_stage() else {
            return Action::Wait;
        };
        first.append(&mut p.read);
        let mut attempts = Attempts::new(first, p.postgres == Some(true));
        attempts.watch_key = p.startup_read;
        self.set_stage(Stage::Connecting(Box::new(attempts)));
        Action::Connect
    }

    /// [`Expiry::ReadStartup`]: no ClientHello came in time; the StartupMessage (or what
    /// has come of it) is read from now, under its own timeout.
    pub(crate) fn no_client_hello(&mut self, now: Instant) {
        if let Stage::Preamble(p) = &mut self.stage {
            p.hello = Some(None);
            p.postgres.get_or_insert(false);
            p.part_began = Some(now);
        }
    }

    /// How a preamble that ran out of time ends, by the listener's options: before the
    /// PROXY header was read, a `proxy_timeout` refusal; a `tls` listener's handshake, a
    /// handshake timeout; a ClientHello not whole in time goes to the default route (or is
    /// refused, `no_route`, under `otherwise: close`).
    pub(crate) fn preamble_expired(&self, config: &ListenerConfig) -> Expiry {
        let Stage::Preamble(p) = &self.stage else {
            return Expiry::Close;
        };
        let reading_startup = config.postgres.is_some()
            && p.hello.is_some()
            && p.postgres != Some(true)
            && p.asked & DIRECT_TLS == 0;
        match (&config.sni, p.part_began.is_some()) {
            (_, false) if config.accept_proxy.is_some() => Expiry::Refused(Refusal::ProxyTimeout),
            _ if reading_startup => Expiry::StartupTimeout,
            // Told `S`, it owes a ClientHello: with none in time it is refused, not sent
            // unread to the listener's group (where it would hold a server's place).
            (Some(_), true) if config.postgres.is_some() && p.postgres == Some(true) => {
                Expiry::Refused(Refusal::NoRoute)
            }
            (Some(_), true) if config.postgres.is_some() && config.tls.is_none() => {
                Expiry::ReadStartup
            }
            (_, true) if config.tls.is_some() => Expiry::HandshakeTimeout,
            (Some(sni), true) if sni.otherwise == NoServerName::Default => Expiry::DefaultRoute,
            (Some(_), true) => Expiry::Refused(Refusal::NoRoute),
            _ => Expiry::Close,
        }
    }
}
