//! The worker's side of a TCP connection: accept → pick a target → connect (with retries) →
//! pump → close. The connection itself ([`Connection`]) knows nothing of the poll or of the
//! balancer; this file wires it to both.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::event::Event;
use mio::net::TcpStream;
use mio::Interest;

use super::preamble::{
    read_client_hello, read_proxy_header, read_ssl_request, HeaderRead, HelloRead, SSL_REQUEST,
};
use super::tls::{front_handshake, FrontTls};
use super::{Ready, Tag, TokenSlot, Worker, PUMP_BUDGET};
use crate::access_log::Entry;
use crate::balancer;
use crate::config::NoServerName;
use crate::config::Protocol;
use crate::conntrack::FiveTuple;
use crate::generation::{HandshakeFailure, ListenerPlace, Refusal};
use crate::net::describe;
use crate::tcp::pump::{Endpoint, Pumped};
use crate::tcp::{Closing, Connection, Reset, Stage};
use crate::timers::Due;

/// Interest in both sockets of a connection: PRIORITY too, so urgent data is noticed (reads
/// stop short at the urgent mark, see `Readiness::urgent`).
const CONN_INTEREST: Interest = Interest::READABLE
    .add(Interest::WRITABLE)
    .add(Interest::PRIORITY);
/// Longest a side waits in `Closing` for its bytes to be acknowledged before it is reset (and
/// never longer than the listener's `idle_timeout`).
const RESET_LINGER: Duration = Duration::from_secs(5);
/// How often a `Closing` connection asks whether its bytes are acknowledged (no event says so).
const RESET_RECHECK: Duration = Duration::from_millis(5);

impl Worker {
    pub(super) fn handle_accepted(
        &mut self,
        i: usize,
        stream: TcpStream,
        peer: SocketAddr,
        place: ListenerPlace,
    ) {
        let tag = self.new_tag();
        let state = &self.shared.listeners[i];
        let config = &state.config;
        // The front door, before anything is set up: with `accept_proxy_protocol` the peer
        // must be a trusted balancer (the access rules then judge the client its header
        // declares); without it, the access rules judge the peer.
        let refusal = match &config.accept_proxy {
            Some(a) if !a.trusts(peer.ip()) => Some(Refusal::UntrustedProxy),
            None if !config.access.admits(peer.ip()) => Some(Refusal::Denied),
            _ => None,
        };
        if let Some(why) = refusal {
            state.refuse(why);
            // A reset: nothing was forwarded, and a refused client must not read an EOF as
            // an answer (nor leave a TIME_WAIT behind).
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            return; // `stream` and `place` are dropped here
        }
        // TCP_NODELAY comes from the listening socket (see net::reuseport_tcp_listener).
        let local = self.listeners[i].local;
        let listener = if local.ip().is_unspecified() {
            stream.local_addr().unwrap_or(local)
        } else {
            local
        };
        let tuple = FiveTuple {
            protocol: Protocol::Tcp,
            client: peer,
            listener,
        };
        self.next_id += 1;
        let id = self.next_id;
        let mut conn = Connection::new(
            id,
            i,
            config.target_group,
            tuple,
            Endpoint::new(stream, tag),
            config.forwarding,
            self.now,
        );
        conn.place = Some(place);
        // The one timer entry of a connection must never be later than its real deadline
        // (entries only move later): the earliest of the timeouts covers every stage.
        let first_check = preamble_timeout(config)
            .min(config.connect_timeout)
            .min(config.idle_timeout);
        if let Some(old) = self.table.find(&tuple) {
            self.client_reused_port(old);
        }
        let key = match self.table.insert(tuple, conn) {
            Ok(key) => key,
            Err(_) => {
                debug_assert!(false, "two live TCP connections with one 5-tuple: {tuple}");
                return; // the connection and its place are dropped
            }
        };
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        // Optimistic: the client may have sent its first bytes already.
        conn.front.ready.readable = true;
        conn.front.ready.writable = true;
        if let Err(e) = self.poll.registry().register(
            &mut conn.front.stream,
            TokenSlot::Front(key, tag).token(),
            CONN_INTEREST,
        ) {
            log::warn!("{tuple}: cannot register the client socket: {e}");
            self.close(key, "register failed", Reset::BOTH);
            return;
        }
        self.timers
            .schedule(self.now + first_check, Due { key, id });
        self.handle_preamble(key);
    }

    /// The `Preamble` stage: reads what must be read from the client before a target is
    /// chosen (called again on each client event until complete): the PROXY protocol header
    /// on listeners with `accept_proxy_protocol`, after which the access rules judge the
    /// client it declares. Then puts what goes to the target first — the group's PROXY header,
    /// and client bytes read past the incoming header — and moves to `Connecting`.
    fn handle_preamble(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let state = &self.shared.listeners[conn.listener];
        if !conn.front_door_passed {
            if state.config.accept_proxy.is_some() {
                match read_proxy_header(conn) {
                    HeaderRead::Wait => return,
                    HeaderRead::ClientGone => {
                        return self.close(key, "client_reset", Reset::NONE);
                    }
                    HeaderRead::Refused(why) => {
                        log::debug!("{}: refused: {why}", conn.tuple);
                        state.refuse(Refusal::BadProxyHeader);
                        return self.refuse(key);
                    }
                    HeaderRead::Done => {}
                }
                if !state.config.access.admits(conn.client().ip()) {
                    state.refuse(Refusal::Denied);
                    return self.refuse(key);
                }
            }
            // Per-source limits, on the client the preamble settled on. Past one, the client
            // is reset at once rather than left in the backlog, which every source shares.
            if let Some(t) = &state.sources {
                match t.admit(conn.client().ip(), self.now) {
                    Ok(place) => conn.source_place = place,
                    Err(over) => {
                        state.refuse(Refusal::from(over));
                        return self.refuse(key);
                    }
                }
            }
            conn.front_door_passed = true;
        }
        let sni = state.config.sni.as_ref();
        if sni.is_some_and(|s| s.postgres_starttls) && conn.postgres.is_none() {
            match read_ssl_request(conn) {
                HelloRead::Wait => return,
                HelloRead::ClientGone => return self.close(key, "client_reset", Reset::NONE),
                HelloRead::Done(_) => {}
            }
            if state.config.tls.is_some() {
                // TLS ends here: the target gets plain PostgreSQL, no SSLRequest to replay.
                conn.postgres = Some(false);
            }
        }
        let name = if let Some(tls) = &state.config.tls {
            match front_handshake(conn, &tls.server.config, state) {
                FrontTls::Wait => return,
                FrontTls::Failed(why, message) => {
                    log::debug!("{}: TLS handshake failed: {message}", conn.tuple);
                    state.handshake_failed(why);
                    // Closed with a FIN, not a reset: a reset would throw away the alert that
                    // tells the client why (a bad certificate, no common version).
                    self.remove(key, Reset::NONE);
                    return;
                }
                FrontTls::Done { server_name } => server_name,
            }
        } else if sni.is_some() {
            match read_client_hello(conn) {
                HelloRead::Wait => return,
                HelloRead::ClientGone => return self.close(key, "client_reset", Reset::NONE),
                HelloRead::Done(name) => name,
            }
        } else {
            None
        };
        if let Some(sni) = sni {
            match name.as_deref().and_then(|n| sni.group_for(n)) {
                Some(g) => conn.group = g,
                None if sni.otherwise == NoServerName::Close => {
                    state.refuse(Refusal::NoRoute);
                    return self.refuse(key);
                }
                None => {} // the default route: the listener's target group
            }
        }
        self.finish_preamble(key);
    }

    /// The preamble is complete: puts what goes to the target first — the group's PROXY
    /// header, and the client bytes the preamble read (past an incoming PROXY header; a
    /// ClientHello, unchanged) — and moves to `Connecting`.
    fn finish_preamble(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let group = &self.shared.groups[conn.group].config;
        let mut first = match group.proxy_protocol {
            // With `target_tls` the header goes in the clear before the handshake instead.
            Some(v) if group.target_tls.is_none() => {
                crate::proxy_protocol::header(v, conn.client(), conn.local(), false)
            }
            _ => Vec::new(),
        };
        first.append(&mut std::mem::take(&mut conn.preamble));
        if !first.is_empty() && conn.up.preload(&first, &mut self.pool).is_err() {
            // Cannot happen (a header and at most MAX_HELLO bytes fit one buffer); never
            // forward a stream with a hole in it.
            return self.close(key, "preamble_overflow", Reset::BOTH);
        }
        conn.set_stage(Stage::Connecting);
        self.connect_next(key);
    }

    /// Closes a client refused at the front door (see [`Refusal`]): reset, counted by the
    /// caller, and no access-log line (a flood of refused clients must not become a flood of
    /// log lines).
    fn refuse(&mut self, key: usize) {
        let front_only = Reset {
            front: true,
            back: false,
        };
        self.remove(key, front_only);
    }

    /// Starts a connect to the next target the balancer picks, skipping targets already tried;
    /// closes the client when no attempt is left (`retries` used up, or no target left to
    /// try) or when Ballast itself is out of descriptors or memory.
    fn connect_next(&mut self, key: usize) {
        loop {
            let tag = self.new_tag();
            let Some(conn) = self.table.get_mut(key) else {
                return;
            };
            let config = &self.shared.listeners[conn.listener].config;
            if conn.tried.len() > config.retries as usize {
                return self.give_up(key);
            }
            let group = &self.shared.groups[conn.group];
            let exclude = balancer::retry_exclusions(&conn.tried, group.targets.len());
            let request = balancer::Request {
                tuple: conn.request_tuple(),
            };
            let picker = &mut self.pickers[conn.group];
            let Some(t) = picker.choose(group, self.now, &request, exclude) else {
                return self.give_up(key);
            };
            if !conn.tried.is_empty() {
                self.shared.listeners[conn.listener]
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            conn.tried.push(t);
            conn.target = Some(t);
            conn.attempt_started = self.now;
            let address = group.targets[t].address;
            let mut started = open_back(&self.poll, address, key, tag);
            if started.as_ref().is_err_and(is_out_of_descriptors) && self.reserve.take().is_some() {
                // What the reserve descriptor is for: this client, already accepted, still gets
                // its target socket. Accepting waits until the reserve can be held again.
                started = open_back(&self.poll, address, key, tag);
            }
            match started {
                Ok(s) => {
                    conn.back = Some(Endpoint::new(s, tag));
                    // Counted from the connect on, so least_connections sees a burst of new
                    // connections before any of them is established.
                    conn.target_place = Some(group.targets[t].hold());
                    return;
                }
                Err(e) if is_local_exhaustion(&e) => {
                    // Out of descriptors even so (a retry, or another worker took the one the
                    // reserve freed), or out of local ports (EADDRNOTAVAIL). Not the target's
                    // fault, and every other target would likely fail the same way: reset this
                    // client, and leave the next ones in the listen backlog a while.
                    conn.target = None;
                    let listener = conn.listener;
                    self.close(key, &describe(&e), Reset::BOTH);
                    // After the close, which would otherwise end the pause at once.
                    return self.pause_accepts(listener, "cannot open a socket to a target", &e);
                }
                Err(e) => {
                    group.targets[t]
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    group.targets[t].note_failure();
                    log::debug!("{}: connect to {address} failed: {e}", conn.tuple);
                    conn.last_error = Some(format!("{address}: {}", describe(&e)));
                }
            }
        }
    }

    /// The current connect attempt failed with `reason`: try the next target or give up.
    pub(super) fn connect_failed(&mut self, key: usize, reason: String) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if let Some(mut back) = conn.back.take() {
            let _ = self.poll.registry().deregister(&mut back.stream);
        }
        // From `TargetPreamble` too: the next attempt starts with a connect (and a new TLS
        // session, for `target_tls`).
        conn.set_stage(Stage::Connecting);
        conn.tls = None;
        conn.target_place = None;
        if let Some(t) = conn.target {
            let target = &self.shared.groups[conn.group].targets[t];
            target.connect_failures.fetch_add(1, Ordering::Relaxed);
            target.note_failure();
            log::debug!(
                "{}: connect to {} failed: {reason}",
                conn.tuple,
                target.address
            );
            conn.last_error = Some(format!("{}: {reason}", target.address));
        }
        self.connect_next(key);
    }

    /// The kernel accepted a new client with the 5-tuple of connection `key`, so that one is
    /// over on the client's side: the client reset it and reused its port at once, before this
    /// worker saw the reset. The old connection delivers to its target what the client sent
    /// before, then its target is reset; it leaves the table now (without waiting for the
    /// target to acknowledge, as its 5-tuple is needed).
    fn client_reused_port(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        log::debug!(
            "{}: port reused by a new client; ending the old connection",
            conn.tuple
        );
        conn.front.aborted = true;
        conn.front.ready.readable = true;
        conn.front.ready.error = true;
        conn.note_aborts();
        if conn.stage() == Stage::Established {
            self.drive(key);
        }
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let (reset, reason) = conn.ending();
        self.close(key, reason, reset);
    }

    /// No target accepted the client: it is reset (a clean EOF would read as an empty answer).
    fn give_up(&mut self, key: usize) {
        if let Some(conn) = self.table.get_mut(key) {
            let (i, client, tried) = (conn.listener, conn.tuple.client, conn.tried.len());
            let last = conn.last_error.take();
            if let Some(unlogged) = self.listeners[i].give_ups.allow(self.now) {
                log::warn!(
                    "listener {}: resetting client {client}: no target accepted the connection \
                     after {tried} attempt(s) (last: {}; {unlogged} more such clients since the \
                     last report)",
                    self.shared.listeners[i].config.name,
                    last.as_deref().unwrap_or("no target to try"),
                );
            }
        }
        self.close(key, "no target", Reset::BOTH);
    }

    pub(super) fn handle_front_event(&mut self, key: usize, tag: Tag, event: &Event) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if conn.front.tag != tag {
            return; // for a socket closed earlier in this batch (see the token plan)
        }
        mark(&mut conn.front.ready, event);
        match conn.stage() {
            Stage::Established => self.drive(key),
            Stage::Preamble | Stage::Connecting | Stage::TargetPreamble if event.is_error() => {
                // A client that resets while its target connect is pending: free both
                // descriptors now, and reset the target side, which may already be connected.
                if let Ok(Some(e)) | Err(e) = conn.front.stream.take_error() {
                    log::debug!("{}: client gone while connecting: {e}", conn.tuple);
                    conn.front.aborted = true;
                    self.close(
                        key,
                        "client_reset",
                        Reset {
                            front: false,
                            back: true,
                        },
                    );
                }
            }
            Stage::Preamble => self.handle_preamble(key),
            Stage::Connecting | Stage::TargetPreamble | Stage::Closing => {}
        }
    }

    pub(super) fn handle_back_event(&mut self, key: usize, tag: Tag, event: &Event) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let stage = conn.stage();
        let Some(back) = conn.back.as_mut().filter(|b| b.tag == tag) else {
            return; // for a socket closed earlier in this batch (see the token plan)
        };
        mark(&mut back.ready, event);
        match stage {
            Stage::Preamble | Stage::Closing => {}
            Stage::Established => self.drive(key),
            Stage::Connecting => {
                // Linux reports EPOLLOUT on a connecting socket only once the connect has
                // finished, and adds EPOLLERR/EPOLLHUP when it failed: a clean EPOLLOUT means
                // connected, with no syscall to ask.
                let clean = event.is_writable() && !event.is_error() && !event.is_write_closed();
                let result = if clean {
                    Ok(())
                } else {
                    match connect_outcome(&back.stream, event) {
                        Some(result) => result,
                        None => return,
                    }
                };
                let target_tls = self.shared.groups[conn.group].config.target_tls.is_some();
                match result {
                    Ok(()) if conn.postgres == Some(true) => self.start_target_preamble(key),
                    Ok(()) if target_tls => self.start_target_tls(key),
                    Ok(()) => self.established(key),
                    Err(reason) => self.connect_failed(key, reason),
                }
            }
            Stage::TargetPreamble if conn.tls.is_some() => self.handle_target_tls(key),
            Stage::TargetPreamble => self.handle_target_preamble(key),
        }
    }

    /// `postgres_starttls`: the client's SSLRequest was answered by Ballast; the target gets
    /// one too before the ClientHello (which waits in the up direction).
    fn start_target_preamble(&mut self, key: usize) {
        use std::io::Write;
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let Some(back) = conn.back.as_mut() else {
            return;
        };
        // A fresh connection's send buffer takes 8 bytes at once.
        match back.stream.write(&SSL_REQUEST) {
            Ok(8) => {
                conn.set_stage(Stage::TargetPreamble);
                self.handle_target_preamble(key);
            }
            Ok(n) => self.connect_failed(key, format!("SSLRequest cut short ({n} of 8 bytes)")),
            Err(e) => self.connect_failed(key, describe(&e)),
        }
    }

    /// Reads the target's one-byte answer to the SSLRequest: `S` goes on (established, the
    /// byte not passed on: the client had Ballast's); anything else is a failed connect.
    fn handle_target_preamble(&mut self, key: usize) {
        use std::io::Read;
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let Some(back) = conn.back.as_mut() else {
            return;
        };
        let mut answer = [0u8; 1];
        let result = loop {
            match back.stream.read(&mut answer) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(1) if answer == *b"S" => self.established(key),
            Ok(1) => self.connect_failed(
                key,
                format!(
                    "refused TLS: answered {:?} to the SSLRequest",
                    char::from(answer[0])
                ),
            ),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(_) => self.connect_failed(key, "closed before answering the SSLRequest".into()),
            Err(e) => self.connect_failed(key, describe(&e)),
        }
    }

    pub(super) fn established(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        conn.set_stage(Stage::Established);
        conn.last_active = self.now;
        if let Some(back) = conn.back.as_mut() {
            back.ready.readable = true;
            back.ready.writable = true;
        }
        if let Some(t) = conn.target {
            let group = &self.shared.groups[conn.group];
            let target = &group.targets[t];
            target.total.fetch_add(1, Ordering::Relaxed);
            balancer::remember(group, conn.client().ip(), t, self.now);
            log::debug!("{}: connected to {}", conn.tuple, target.address);
        }
        self.drive(key);
    }

    /// Moves bytes both ways until both would block; ends the connection when both
    /// directions are over.
    pub(super) fn drive(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if conn.stage() == Stage::Closing {
            return; // both directions are over; only the reset is left (see `finish`)
        }
        let Some(back) = conn.back.as_mut() else {
            return;
        };
        let (mut up, mut down) = (Pumped::default(), Pumped::default());
        // A side found aborted by one direction changes what the other does (it reads what
        // that side sent before it went away, or stops): pump again, at most once per side.
        for _ in 0..3 {
            let aborted = (conn.front.aborted, back.aborted);
            let pool = &mut self.pool;
            let u = conn
                .up
                .pump(&mut conn.front, back, pool, PUMP_BUDGET, conn.down.done());
            let d = conn
                .down
                .pump(back, &mut conn.front, pool, PUMP_BUDGET, conn.up.done());
            (up.bytes, up.more) = (up.bytes + u.bytes, u.more);
            (down.bytes, down.more) = (down.bytes + d.bytes, d.more);
            if aborted == (conn.front.aborted, back.aborted) {
                break;
            }
        }
        conn.note_aborts();
        if up.bytes + down.bytes > 0 {
            conn.last_active = self.now;
            if up.bytes > 0 && conn.first_up.is_none() {
                conn.first_up = Some(self.now);
            }
            if let Some(t) = conn.target {
                let target = &self.shared.groups[conn.group].targets[t];
                if down.bytes > 0 && !conn.responded {
                    // The target's first answer: from the request, or from the connect's
                    // start when the target speaks first.
                    conn.responded = true;
                    let from = conn.first_up.unwrap_or(conn.attempt_started);
                    target.record_response(self.now.saturating_duration_since(from));
                }
                target
                    .bytes_to_target
                    .fetch_add(up.bytes as u64, Ordering::Relaxed);
                target
                    .bytes_from_target
                    .fetch_add(down.bytes as u64, Ordering::Relaxed);
            }
        }
        if conn.finished() {
            self.finish(key);
        } else if up.more || down.more {
            let id = conn.id;
            self.ready.push_back(Ready::Conn { key, id });
        }
    }

    /// Both directions are over: close, resetting a side whose peer aborted, once the bytes
    /// written to it are acknowledged (a reset discards them), waiting in `Closing` if needed.
    fn finish(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let (reset, reason) = conn.ending();
        if reset == Reset::NONE || unacknowledged(conn, reset) == 0 {
            return self.close(key, reason, reset);
        }
        let idle = self.shared.listeners[conn.listener].config.idle_timeout;
        let recheck_at = self.now + RESET_RECHECK;
        conn.closing = Some(Closing {
            until: self.now + RESET_LINGER.min(idle),
            recheck_at,
        });
        conn.set_stage(Stage::Closing);
        let id = conn.id;
        self.timers.schedule(recheck_at, Due { key, id });
    }

    /// Closes both sockets (resetting those `reset` names), releases buffers, gives back the
    /// connection's places and removes the table entry; writes its access-log line.
    pub(super) fn close(&mut self, key: usize, reason: &str, reset: Reset) {
        let Some(conn) = self.remove(key, reset) else {
            return;
        };
        let listener = &self.shared.listeners[conn.listener];
        let target = conn
            .target
            .map(|t| &self.shared.groups[conn.group].targets[t]);
        // Passive checks: a reset from the target is a failure, a clean end a success.
        if let Some(t) = target.filter(|_| conn.stage().reached_target()) {
            match conn.first_abort {
                Some(crate::tcp::Side::Back) => t.note_failure(),
                None => t.note_success(),
                Some(crate::tcp::Side::Front) => {}
            }
        }
        self.access.record(&Entry {
            protocol: "tcp",
            listener: &listener.config.name,
            client: conn.client(),
            target: target
                .filter(|_| conn.stage().reached_target())
                .map(|t| t.address),
            duration: self.now.saturating_duration_since(conn.started),
            bytes_up: conn.up.bytes,
            bytes_down: conn.down.bytes,
            datagrams: None,
            reason,
        });
    }

    /// Removes connection `key` from the table and closes its sockets (resetting those `reset`
    /// names), releasing its buffers and its places under the limits at once; returns what is
    /// left of it (for the access log).
    fn remove(&mut self, key: usize, reset: Reset) -> Option<Connection> {
        // No deregister: closing a socket removes it from epoll (we never dup fds), and
        // two epoll_ctl calls per connection are measurable at high connection rates.
        let mut conn = self.table.remove(key)?;
        if reset.front {
            conn.front.reset_on_close();
        }
        if let Some(back) = conn.back.as_ref().filter(|_| reset.back) {
            back.reset_on_close();
        }
        conn.up.close(&mut self.pool);
        conn.down.close(&mut self.pool);
        self.descriptors_freed();
        conn.place = None;
        conn.target_place = None;
        conn.source_place = None;
        if self.listeners[conn.listener].full {
            self.ready.push_back(Ready::Listener(conn.listener));
        }
        Some(conn)
    }

    /// Acts on due deadlines: connect timeouts retry, idle connections close. Entries whose
    /// connection moved its deadline are pushed back.
    pub(super) fn run_timers(&mut self) {
        while let Some(due) = self.timers.pop_due(self.now) {
            let Some(conn) = self.table.get_mut(due.key) else {
                continue;
            };
            if conn.id != due.id {
                continue;
            }
            let config = &self.shared.listeners[conn.listener].config;
            let (connect_timeout, idle_timeout) = (config.connect_timeout, config.idle_timeout);
            let deadline = match conn.stage() {
                Stage::Preamble => conn.started + preamble_timeout(config),
                Stage::Connecting | Stage::TargetPreamble => conn.attempt_started + connect_timeout,
                Stage::Established => conn.last_active + idle_timeout,
                Stage::Closing => {
                    self.recheck_closing(due);
                    continue;
                }
            };
            if deadline > self.now {
                self.timers.schedule(deadline, due);
                continue;
            }
            if conn.stage() == Stage::Preamble {
                let state = &self.shared.listeners[conn.listener];
                match (&state.config.sni, conn.front_door_passed) {
                    (_, false) if state.config.accept_proxy.is_some() => {
                        state.refuse(Refusal::ProxyTimeout);
                        self.refuse(due.key);
                    }
                    (_, true) if state.config.tls.is_some() => {
                        state.handshake_failed(HandshakeFailure::Timeout);
                        self.refuse(due.key);
                    }
                    // No whole ClientHello in time: what was read goes to the default route.
                    (Some(sni), true) if sni.otherwise == NoServerName::Default => {
                        self.finish_preamble(due.key);
                        if let Some(conn) = self.table.get_mut(due.key) {
                            let next = connect_timeout.min(idle_timeout);
                            self.timers.schedule(conn.attempt_started + next, due);
                        }
                    }
                    (Some(_), true) => {
                        state.refuse(Refusal::NoRoute);
                        self.refuse(due.key);
                    }
                    _ => self.close(due.key, "preamble_timeout", Reset::BOTH),
                }
            } else if matches!(conn.stage(), Stage::Connecting | Stage::TargetPreamble) {
                let reason = format!(
                    "connect timed out after {}",
                    humantime::format_duration(connect_timeout)
                );
                self.connect_failed(due.key, reason);
                if let Some(conn) = self.table.get_mut(due.key) {
                    let next = connect_timeout.min(idle_timeout);
                    self.timers.schedule(conn.attempt_started + next, due);
                }
            } else {
                // Idle: a normal close (FIN), unless bytes for a side are lost with it or a
                // side had aborted: that side is reset, never told EOF.
                let (reset, reason) = self
                    .table
                    .get_mut(due.key)
                    .map_or((Reset::NONE, "idle"), |c| c.idle_ending());
                self.close(due.key, reason, reset);
            }
        }
    }

    /// A `Closing` connection's timer entry: reset and close once the bytes written to the
    /// side to reset are acknowledged, or its linger is up; else ask again soon. Entries other
    /// than the one rescheduled last are dropped, so there is one at a time.
    fn recheck_closing(&mut self, due: Due) {
        let Some(conn) = self.table.get_mut(due.key) else {
            return;
        };
        let Some(mut closing) = conn.closing else {
            return;
        };
        let (reset, reason) = conn.ending();
        if self.now >= closing.until || unacknowledged(conn, reset) == 0 {
            return self.close(due.key, reason, reset);
        }
        if closing.recheck_at <= self.now {
            closing.recheck_at = self.now + RESET_RECHECK;
            conn.closing = Some(closing);
            self.timers.schedule(closing.recheck_at, due);
        }
    }
}

/// Bytes written to the sides `reset` names and not yet acknowledged.
fn unacknowledged(conn: &Connection, reset: Reset) -> usize {
    let front = if reset.front {
        conn.front.unacknowledged()
    } else {
        0
    };
    let back = match &conn.back {
        Some(b) if reset.back => b.unacknowledged(),
        _ => 0,
    };
    front + back
}

/// Asks a connecting socket how its connect ended: `None` while it is still in progress (a
/// spurious wake-up), else `Ok` or the reason it failed.
fn connect_outcome(stream: &TcpStream, event: &Event) -> Option<Result<(), String>> {
    Some(match stream.take_error() {
        Ok(Some(e)) | Err(e) => Err(describe(&e)),
        Ok(None) => match stream.peer_addr() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                if event.is_error() {
                    Err("connect failed".to_string())
                } else {
                    return None;
                }
            }
            Err(e) => Err(describe(&e)),
        },
    })
}

/// Records what a readiness event says about a socket. Errors and hang-ups count as both
/// readable and writable, so the next syscall finds out what happened.
fn mark(ready: &mut crate::tcp::pump::Readiness, event: &Event) {
    if event.is_readable() || event.is_read_closed() || event.is_error() || event.is_priority() {
        ready.readable = true;
    }
    if event.is_read_closed() || event.is_error() {
        ready.read_closed = true;
    }
    if event.is_error() {
        ready.error = true;
    }
    if event.is_priority() {
        ready.urgent = true;
    }
    if event.is_writable() || event.is_write_closed() || event.is_error() {
        ready.writable = true;
    }
}

/// Opens a non-blocking connect to `address` and registers it as the target side of
/// connection `key` with `tag`. TCP_NODELAY (no Nagle delay added) and SO_OOBINLINE (urgent
/// data stays in the stream) are set, as the listener sets them for accepted clients.
fn open_back(poll: &mio::Poll, address: SocketAddr, key: usize, tag: Tag) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(address)?;
    s.set_nodelay(true)?;
    socket2::SockRef::from(&s).set_out_of_band_inline(true)?;
    poll.registry()
        .register(&mut s, TokenSlot::Back(key, tag).token(), CONN_INTEREST)?;
    Ok(s)
}

/// Whether `e` means this process ran out of descriptors or kernel memory (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM): what the reserve descriptor is for.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether `e` is this host's shortage rather than the target's fault: out of descriptors or
/// memory ([`is_out_of_descriptors`]), or out of local ports (EADDRNOTAVAIL).
fn is_local_exhaustion(e: &io::Error) -> bool {
    is_out_of_descriptors(e) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

/// How long a client of listener `config` may take over its preamble: the PROXY header's
/// timeout and the ClientHello's (a `tls` listener's handshake timeout), as configured;
/// `connect_timeout` when neither is.
fn preamble_timeout(config: &crate::config::ListenerConfig) -> Duration {
    let proxy = config.accept_proxy.as_ref().map(|a| a.timeout);
    // A TLS listener's handshake timeout covers the ClientHello (and the SSLRequest).
    let hello = match &config.tls {
        Some(tls) => Some(tls.handshake_timeout),
        None => config.sni.as_ref().map(|s| s.timeout),
    };
    match (proxy, hello) {
        (None, None) => config.connect_timeout,
        (p, h) => p.unwrap_or_default() + h.unwrap_or_default(),
    }
}
