//! The worker's side of a TCP connection: accept → preamble → connect (`connect.rs`) → pump
//! → close. The connection decides what its stages do ([`Connection`], `tcp::flow`); this
//! file wires it to the poll, the balancer's counters, the timers and the access log, and
//! carries out what it asks ([`Action`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::event::Event;
use mio::net::TcpStream;

use super::{Ready, Tag, TokenSlot, Worker, CONN_INTEREST, PUMP_BUDGET};
use crate::access_log::Entry;
use crate::balancer;
use crate::config::{Forwarding, ListenerConfig, Protocol};
use crate::conntrack::FiveTuple;
use crate::generation::{HandshakeFailure, ListenerPlace, Refusal};
use crate::tcp::preamble::{Expiry, Step};
use crate::tcp::pump::Endpoint;
use crate::tcp::{Action, Connection, Reset, Stage, Timeouts};
use crate::timers::Due;

impl Worker {
    pub(super) fn handle_accepted(
        &mut self,
        i: usize,
        stream: TcpStream,
        peer: SocketAddr,
        place: ListenerPlace,
    ) {
        let tag = self.new_tag();
        let state = &self.generation.listeners[i];
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
        let front = Endpoint::new(stream, tag);
        let mut conn = Connection::new(id, i, config.target_group, tuple, front, self.now);
        conn.place = Some(place);
        // The one timer entry of a connection must never be later than its real deadline
        // (entries only move later): the earliest of the timeouts covers every stage.
        let first_check = timeouts(config).first();
        if let Some(old) = self.table.find(&tuple) {
            self.client_reused_port(old);
        }
        let key = match self.table.insert(conn) {
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

    /// The `Preamble` stage, on each client event until it is whole (see
    /// [`Connection::read_preamble`]): counts a refusal or a failed handshake, or moves on to
    /// the first connect.
    fn handle_preamble(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let state = &self.generation.listeners[conn.listener];
        match conn.read_preamble(state, self.now) {
            Step::Wait => {}
            Step::ClientGone => {
                // Its FIN (a client that gave up) or its reset: the access log tells them apart.
                let reason = if conn.front.aborted {
                    "client_reset"
                } else {
                    "client_closed"
                };
                self.close(key, reason, Reset::NONE);
            }
            Step::Refused(why) => {
                state.refuse(why);
                self.refuse(key);
            }
            Step::HandshakeFailed(why, message) => {
                log::debug!("{}: TLS handshake failed: {message}", conn.tuple);
                state.handshake_failed(why);
                self.remove(key, Reset::NONE);
            }
            Step::Answered(why) => {
                // A PostgreSQL client answered and closed: its line in the access log says
                // why (an operator looks there for the database a client was refused).
                let reason = match why {
                    Some(why) => {
                        state.refuse(why);
                        why.as_str()
                    }
                    None => "cancel_unknown",
                };
                self.close(key, reason, Reset::NONE);
            }
            Step::Done => self.start_connecting(key),
            Step::Cancel(address) => self.start_cancel(key, address),
        }
    }

    /// A PostgreSQL CancelRequest whose key `address` issued: to that target alone, in
    /// whichever group holds it now (the listener's own first), whatever its health.
    fn start_cancel(&mut self, key: usize, address: std::net::SocketAddr) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let groups = &self.generation.groups;
        let holder = std::iter::once(conn.group)
            .chain(0..groups.len())
            .find_map(|g| {
                let t = groups[g]
                    .targets
                    .iter()
                    .position(|t| t.address == address)?;
                Some((g, t))
            });
        let Some((g, t)) = holder else {
            // Removed from every group since: its connections are being closed anyway.
            conn.answer_and_finish(&[]);
            self.remove(key, Reset::NONE);
            return;
        };
        conn.group = g;
        let action = conn.start_connecting(&groups[g].config);
        if let Some(a) = conn.attempts() {
            a.pinned = Some(t);
        }
        self.act(key, action);
    }

    /// The preamble is complete: on to the first connect (see
    /// [`Connection::start_connecting`]).
    fn start_connecting(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let action = conn.start_connecting(&self.generation.groups[conn.group].config);
        self.act(key, action);
    }

    /// Closes a client refused at the front door (see [`Refusal`]): reset, counted by the
    /// caller, and no access-log line (a flood of refused clients must not become a flood of
    /// log lines).
    fn refuse(&mut self, key: usize) {
        self.remove(key, Reset::FRONT);
    }

    /// The kernel accepted a new client with the 5-tuple of connection `key`, so that one is
    /// over on the client's side. Either the client closed it cleanly (its FIN is in, no
    /// error: the kernel let the new SYN reuse the TIME_WAIT), and the old connection leaves
    /// the index and finishes on its own, delivering to its target what the client sent; or
    /// the client reset it and reused its port at once, before this worker saw the reset:
    /// the old connection delivers to its target what the client sent before, then its target
    /// is reset, and it leaves the table now (without waiting for the target to acknowledge).
    fn client_reused_port(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let established = matches!(conn.stage, Stage::Established(_));
        let closed_cleanly = established
            && !conn.front.aborted
            && matches!(conn.front.stream.take_error(), Ok(None));
        if closed_cleanly {
            log::debug!(
                "{}: port reused by a new client after a clean close; the old connection \
                 finishes outside the index",
                conn.tuple
            );
            conn.front.ready.readable = true;
            conn.front.ready.read_closed = true;
            self.table.unindex(key);
            return self.drive(key);
        }
        log::debug!(
            "{}: port reused by a new client; ending the old connection",
            conn.tuple
        );
        conn.front.aborted = true;
        conn.front.ready.readable = true;
        conn.front.ready.error = true;
        conn.note_aborts();
        if established {
            self.drive(key);
        }
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let (reset, reason) = conn.ending();
        self.close(key, reason, reset);
    }

    pub(super) fn handle_front_event(&mut self, key: usize, tag: Tag, event: &Event) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if conn.front.tag != tag {
            return; // for a socket closed earlier in this batch (see the token plan)
        }
        let ev = of(event);
        conn.front.ready.merge(ev.readiness());
        match &conn.stage {
            Stage::Established(_) => self.drive(key),
            Stage::Preamble(_) | Stage::Connecting(_) | Stage::TargetPreamble(_) if ev.error => {
                if let Some(action) = conn.client_gone_early() {
                    self.act(key, action);
                }
            }
            Stage::Preamble(_) => self.handle_preamble(key),
            // A PostgreSQL client never half-closes: its FIN while it waits in the queue
            // means it is gone (psql's Ctrl-C), and connecting it later would open a session
            // on the server for no one (HAProxy's `abortonclose`).
            Stage::Connecting(_)
                if ev.read_closed
                    && conn.is_queued()
                    && self.generation.listeners[conn.listener]
                        .config
                        .postgres
                        .is_some() =>
            {
                self.close(key, "client_closed", crate::tcp::Reset::BOTH);
            }
            Stage::Connecting(_) | Stage::TargetPreamble(_) | Stage::Closing(..) => {}
            Stage::Passing => {}
        }
    }

    pub(super) fn handle_back_event(&mut self, key: usize, tag: Tag, event: &Event) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let Some(back) = conn.back_mut().filter(|b| b.tag == tag) else {
            return; // for a socket closed earlier in this batch (see the token plan)
        };
        let ev = of(event);
        back.ready.merge(ev.readiness());
        match &conn.stage {
            Stage::Established(_) => self.drive(key),
            Stage::Connecting(_) => self.connect_event(key, ev),
            Stage::TargetPreamble(_) => self.target_preamble_event(key),
            Stage::Preamble(_) | Stage::Closing(..) | Stage::Passing => {}
        }
    }

    /// The attempt in flight reached its target (and its preamble is over): established.
    pub(super) fn established(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let forwarding = match self.generation.listeners[conn.listener].config.forwarding {
            // Known not to join: as `auto` (splice pays for bulk).
            Forwarding::Sockmap if self.kernel.unavailable() => Forwarding::Auto,
            f => f,
        };
        if let Err(action) = conn.establish(forwarding, &mut self.pool, self.now) {
            return self.act(key, action);
        }
        if let Some(t) = conn.reached() {
            let group = &self.generation.groups[conn.group];
            let target = &group.targets[t];
            target.total.fetch_add(1, Ordering::Relaxed);
            balancer::remember(group, conn.client().ip(), t, self.now);
            log::debug!("{}: connected to {}", conn.tuple, target.address);
        }
        self.drive(key);
    }

    /// Moves bytes both ways until both would block (see [`Connection::drive`]), counts them
    /// for the target, and does what the connection says next.
    pub(super) fn drive(&mut self, key: usize) {
        self.settle(key);
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let t = timeouts(&self.generation.listeners[conn.listener].config);
        let (moved, action) = conn.drive(&mut self.pool, PUMP_BUDGET, self.now, &t);
        if let Some(found) = conn.take_backend_key() {
            self.record_cancel_key(key, found);
        }
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if let Some(target) = conn
            .reached()
            .filter(|_| moved.up + moved.down > 0)
            .map(|t| &self.generation.groups[conn.group].targets[t])
        {
            if let Some(response) = moved.response {
                target.record_response(response);
            }
            target
                .bytes_to_target
                .fetch_add(moved.up as u64, Ordering::Relaxed);
            target
                .bytes_from_target
                .fetch_add(moved.down as u64, Ordering::Relaxed);
        }
        if super::kernel::settled(&action) {
            self.try_join(key);
        }
        let released = super::kernel::settled(&action) && self.release_ends(key);
        self.act(key, action);
        if released {
            self.act(key, Action::Again); // the end is the pump's now
        }
    }

    /// The target of connection `key` sent its PostgreSQL cancel key: recorded in the
    /// listener's table, so a cancel landing on any worker reaches that target.
    fn record_cancel_key(&mut self, key: usize, found: crate::postgres::CancelKey) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let listener = &self.generation.listeners[conn.listener];
        let (Some(keys), Some(t)) = (&listener.cancel_keys, conn.reached()) else {
            return;
        };
        let owner = crate::postgres::cancel::Owner {
            target: self.generation.groups[conn.group].targets[t].address,
            worker: self.id,
            connection: conn.id,
        };
        keys.insert(found.clone(), owner);
        conn.set_registered_cancel_key(found, owner);
    }

    /// Carries out what connection `key` asked for.
    pub(super) fn act(&mut self, key: usize, action: Action) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let id = conn.id;
        match action {
            Action::Wait => {}
            Action::Connect => self.connect_next(key),
            Action::Again => self.ready.push_back(Ready::Conn { key, id }),
            Action::Schedule(at) => self.timers.schedule(at, Due { key, id }),
            Action::Close(reset, reason) => self.close(key, reason, reset),
            Action::GiveUp => self.give_up(key),
            // Only timers expire, and `run_timers` handles that itself.
            Action::Expired => {}
        }
    }

    /// Closes both sockets (resetting those `reset` names), releases buffers, gives back the
    /// connection's places and removes the table entry; writes its access-log line.
    pub(super) fn close(&mut self, key: usize, reason: &str, reset: Reset) {
        let reset = self.tell_postgres_client(key, reason, reset);
        let Some(conn) = self.remove(key, reset) else {
            return;
        };
        let listener = &self.generation.listeners[conn.listener];
        let target = conn
            .reached()
            .map(|t| &self.generation.groups[conn.group].targets[t]);
        // Passive checks: a reset from the target is a failure, a clean end a success.
        if let Some(t) = target {
            match conn.first_abort {
                Some(crate::tcp::Side::Back) => t.note_failure(),
                None => t.note_success(),
                Some(crate::tcp::Side::Front) => {}
            }
        }
        let (bytes_up, bytes_down) = conn.bytes();
        let (retries, connect) = conn.connect_stats();
        self.access.record(&Entry {
            protocol: "tcp",
            listener: &listener.config.name,
            client: conn.client(),
            target: target.map(|t| t.address),
            duration: self.now.saturating_duration_since(conn.started),
            bytes_up,
            bytes_down,
            datagrams: None,
            retries,
            connect,
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
        if let Some((k, owner)) = conn.registered_cancel_key() {
            if let Some(keys) = &self.generation.listeners[conn.listener].cancel_keys {
                keys.remove(&k, owner);
            }
        }
        self.unjoin(&mut conn);
        conn.release(reset, &mut self.pool);
        self.descriptors_freed();
        if self.listeners[conn.listener].full {
            self.ready.push_back(Ready::Listener(conn.listener));
        }
        Some(conn)
    }
}

impl Worker {
    /// Acts on due deadlines: a preamble that took too long is refused (or, without a whole
    /// ClientHello, sent to the default route), a connect that took too long tries the next
    /// target, and `Established` and `Closing` connections do what their timer says
    /// ([`Connection::flow_timer`]). Entries whose connection moved its deadline are pushed
    /// back.
    pub(super) fn run_timers(&mut self) {
        while let Some(due) = self.timers.pop_due(self.now) {
            let Some(conn) = self.table.get_mut(due.key) else {
                continue;
            };
            if conn.id != due.id {
                continue;
            }
            if self.kernel_timer(due.key) {
                continue;
            }
            let Some(conn) = self.table.get_mut(due.key) else {
                continue;
            };
            let t = timeouts(&self.generation.listeners[conn.listener].config);
            match conn.on_timer(self.now, &t) {
                Action::Expired => {}
                action => {
                    self.act(due.key, action);
                    continue;
                }
            }
            if matches!(conn.stage, Stage::Preamble(_)) {
                let state = &self.generation.listeners[conn.listener];
                match conn.preamble_expired(&state.config) {
                    Expiry::Refused(why) => {
                        state.refuse(why);
                        self.refuse(due.key);
                    }
                    Expiry::HandshakeTimeout => {
                        state.handshake_failed(HandshakeFailure::Timeout);
                        self.refuse(due.key);
                    }
                    Expiry::DefaultRoute => {
                        self.start_connecting(due.key);
                        self.reschedule(due, &t);
                    }
                    Expiry::Close => self.close(due.key, "preamble_timeout", Reset::BOTH),
                    Expiry::ReadStartup => {
                        conn.no_client_hello(self.now);
                        self.handle_preamble(due.key);
                        self.reschedule(due, &t);
                    }
                    Expiry::StartupTimeout => {
                        let answer = crate::postgres::error_response(
                            crate::postgres::PROTOCOL_VIOLATION,
                            "no whole startup packet in time",
                        );
                        conn.answer_and_finish(&answer);
                        state.refuse(crate::listener::Refusal::BadStartup);
                        self.close(due.key, "startup_timeout", Reset::NONE);
                    }
                }
            } else if conn.is_queued() {
                // Waited its group's queue.timeout for a target with room: reset.
                conn.leave_queue(self.now, false);
                self.close(due.key, "queue_timeout", Reset::BOTH);
            } else {
                // From the client's address, a target whose answers do not come back through
                // this host looks exactly like one that never answers: say where to look.
                let transparent = self.generation.groups[conn.group].config.source
                    == crate::config::SourceAddress::Client;
                let reason = format!(
                    "connect timed out after {}{}",
                    humantime::format_duration(t.connect),
                    if transparent {
                        " (source: client: are the target's answers to clients routed back \
                         through this host? see conf/tproxy/)"
                    } else {
                        ""
                    }
                );
                self.connect_failed(due.key, reason);
                self.reschedule(due, &t);
            }
        }
    }

    /// A timer entry for connection `due` at its new deadline, if it is still there: for a
    /// connect, no later than the idle timeout from its start, which an established
    /// connection's entry must not be later than (entries only move later).
    fn reschedule(&mut self, due: Due, t: &Timeouts) {
        let t = &Timeouts {
            connect: t.connect.min(t.idle),
            ..*t
        };
        if let Some(at) = self
            .table
            .get_mut(due.key)
            .filter(|c| c.id == due.id)
            .and_then(|c| c.deadline(t))
        {
            self.timers.schedule(at, due);
        }
    }
}

/// What a poll event says, in the connection's terms.
fn of(event: &Event) -> crate::tcp::Event {
    crate::tcp::Event {
        readable: event.is_readable(),
        writable: event.is_writable(),
        read_closed: event.is_read_closed(),
        write_closed: event.is_write_closed(),
        error: event.is_error(),
        priority: event.is_priority(),
    }
}

/// The timeouts of listener `config`'s connections. The PROXY header's (from the accept),
/// then the ClientHello's (a `tls` listener's handshake timeout) from the header's end, then
/// `postgres.startup_timeout` from the handshake's end (from the header's without one), each
/// as configured; `connect_timeout` for a preamble with none of these.
pub(super) fn timeouts(config: &ListenerConfig) -> Timeouts {
    let proxy = config.accept_proxy.as_ref().map(|a| a.timeout);
    // A TLS listener's handshake timeout covers the ClientHello (and the SSLRequest).
    let hello = match &config.tls {
        Some(tls) => Some(tls.handshake_timeout),
        None => config.sni.as_ref().map(|s| s.timeout),
    };
    // A PostgreSQL StartupMessage after a handshake has its own timeout, from the handshake's
    // end; without one, it is the preamble's.
    let (preamble, startup) = match (&config.postgres, hello) {
        (Some(pg), Some(h)) => (h, Some(pg.startup_timeout)),
        (Some(pg), None) => (pg.startup_timeout, None),
        (None, h) => (h.unwrap_or(config.connect_timeout), None),
    };
    Timeouts {
        header: proxy,
        preamble,
        startup,
        connect: config.connect_timeout,
        idle: config.idle_timeout,
    }
}
