//! The worker's side of a TCP connection: accept → pick a target → connect (with retries) →
//! pump → close. The connection itself ([`Connection`]) knows nothing of the poll or of the
//! balancer; this file wires it to both.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use mio::event::Event;
use mio::net::TcpStream;
use mio::Interest;

use super::{Ready, Slot, Worker, PUMP_BUDGET};
use crate::access_log::Entry;
use crate::balancer;
use crate::config::Protocol;
use crate::conntrack::FiveTuple;
use crate::health::probe::describe;
use crate::tcp::pump::Endpoint;
use crate::tcp::{Connection, State};
use crate::timers::Due;

impl Worker {
    pub(super) fn handle_accepted(&mut self, i: usize, stream: TcpStream, peer: SocketAddr) {
        let config = &self.shared.listeners[i].config;
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
        let conn = Connection::new(
            id,
            i,
            config.target_group,
            tuple,
            stream,
            config.forwarding,
            self.now,
        );
        // The one timer entry of a connection must never be later than its real deadline
        // (entries only move later): the earlier of the two timeouts covers both states.
        let first_check = config.connect_timeout.min(config.idle_timeout);
        let key = match self.table.insert(tuple, conn) {
            Ok(key) => key,
            Err(_) => {
                debug_assert!(false, "two live TCP connections with one 5-tuple: {tuple}");
                self.shared.listeners[i]
                    .active
                    .fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        let conn = self.table.get_mut(key).expect("just inserted");
        // Optimistic: the client may have sent its first bytes already.
        conn.front.ready.readable = true;
        conn.front.ready.writable = true;
        if let Err(e) = self.poll.registry().register(
            &mut conn.front.stream,
            Slot::Front(key).token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("{tuple}: cannot register the client socket: {e}");
            self.close(key, "register failed");
            return;
        }
        self.timers
            .schedule(self.now + first_check, Due { key, id });
        self.connect_next(key);
    }

    /// Starts a connect to the next target the balancer picks, skipping targets already tried;
    /// closes the client when no attempt is left (`retries` used up, or no target left to
    /// try) or when Ballast itself is out of descriptors or memory.
    fn connect_next(&mut self, key: usize) {
        loop {
            let Some(conn) = self.table.get_mut(key) else {
                return;
            };
            let config = &self.shared.listeners[conn.listener].config;
            if conn.tried.len() > config.retries as usize {
                return self.give_up(key);
            }
            let group = &self.shared.groups[conn.group];
            let exclude = balancer::retry_exclusions(&conn.tried, group.targets.len());
            let request = balancer::Request { tuple: conn.tuple };
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
            let mut started = open_back(&self.poll, address, key);
            if started.as_ref().is_err_and(is_resource_exhaustion) && self.reserve.take().is_some()
            {
                // What the reserve descriptor is for: this client, already accepted, still gets
                // its target socket. Accepting waits until the reserve can be held again.
                started = open_back(&self.poll, address, key);
            }
            match started {
                Ok(s) => {
                    conn.back = Some(Endpoint::new(s));
                    // Counted from the connect on, so least_connections sees a burst of new
                    // connections before any of them is established.
                    group.targets[t].active.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    // Out of descriptors even so (a retry, or another worker took the one the
                    // reserve freed). Not the target's fault, and every other target would fail
                    // the same way: close this client, and leave the next ones in the listen
                    // backlog until descriptors free up.
                    conn.target = None;
                    let listener = conn.listener;
                    self.close(key, &describe(&e));
                    // After the close, which would otherwise end the pause at once.
                    return self.pause_accepts(listener, "cannot open a socket to a target", &e);
                }
                Err(e) => {
                    group.targets[t]
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    log::debug!("{}: connect to {address} failed: {e}", conn.tuple);
                    conn.last_error = Some(format!("{address}: {}", describe(&e)));
                }
            }
        }
    }

    /// The current connect attempt failed with `reason`: try the next target or give up.
    fn connect_failed(&mut self, key: usize, reason: String) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let had_back = conn.back.take().map(|mut back| {
            let _ = self.poll.registry().deregister(&mut back.stream);
        });
        if let Some(t) = conn.target {
            let target = &self.shared.groups[conn.group].targets[t];
            if had_back.is_some() {
                target.active.fetch_sub(1, Ordering::Relaxed);
            }
            target.connect_failures.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "{}: connect to {} failed: {reason}",
                conn.tuple,
                target.address
            );
            conn.last_error = Some(format!("{}: {reason}", target.address));
        }
        self.connect_next(key);
    }

    fn give_up(&mut self, key: usize) {
        if let Some(conn) = self.table.get_mut(key) {
            let listener = &self.shared.listeners[conn.listener].config;
            log::warn!(
                "listener {}: closing client {}: no target accepted the connection after {} \
                 attempt(s) (last: {})",
                listener.name,
                conn.tuple.client,
                conn.tried.len(),
                conn.last_error.as_deref().unwrap_or("no target to try")
            );
        }
        self.close(key, "no target");
    }

    pub(super) fn handle_front_event(&mut self, key: usize, event: &Event) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        mark(&mut conn.front.ready, event);
        if conn.state() == State::Established {
            self.drive(key);
        }
    }

    pub(super) fn handle_back_event(&mut self, key: usize, event: &Event) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let state = conn.state();
        let Some(back) = conn.back.as_mut() else {
            return;
        };
        mark(&mut back.ready, event);
        match state {
            State::Established => self.drive(key),
            State::Connecting => {
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
                match result {
                    Ok(()) => self.established(key),
                    Err(reason) => self.connect_failed(key, reason),
                }
            }
        }
    }

    fn established(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        conn.set_state(State::Established);
        conn.last_active = self.now;
        if let Some(back) = conn.back.as_mut() {
            back.ready.readable = true;
            back.ready.writable = true;
        }
        if let Some(t) = conn.target {
            let group = &self.shared.groups[conn.group];
            let target = &group.targets[t];
            target.total.fetch_add(1, Ordering::Relaxed);
            balancer::remember(group, conn.tuple.client.ip(), t, self.now);
            log::debug!("{}: connected to {}", conn.tuple, target.address);
        }
        self.drive(key);
    }

    /// Moves bytes both ways until both would block; closes the connection when it is done.
    pub(super) fn drive(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let Some(back) = conn.back.as_mut() else {
            return;
        };
        let up = conn.up.pump(
            &mut conn.front,
            back,
            &mut self.pool,
            PUMP_BUDGET,
            conn.down.done(),
        );
        let down = conn.down.pump(
            back,
            &mut conn.front,
            &mut self.pool,
            PUMP_BUDGET,
            conn.up.done(),
        );
        let (up, down) = match (up, down) {
            (Ok(up), Ok(down)) => (up, down),
            (Err(e), _) | (_, Err(e)) => {
                let reason = describe(&e);
                self.close(key, &reason);
                return;
            }
        };
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
            self.close(key, "done");
        } else if up.more || down.more {
            let id = conn.id;
            self.ready.push_back(Ready::Conn { key, id });
        }
    }

    /// Deregisters and closes both sockets, releases buffers, updates counters and removes the
    /// table entry.
    pub(super) fn close(&mut self, key: usize, reason: &str) {
        // No deregister: closing a socket removes it from epoll (we never dup fds), and
        // two epoll_ctl calls per connection are measurable at high connection rates.
        let Some(mut conn) = self.table.remove(key) else {
            return;
        };
        conn.up.close(&mut self.pool);
        conn.down.close(&mut self.pool);
        self.descriptors_freed();
        let listener = &self.shared.listeners[conn.listener];
        let before = listener.active.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "listener active count below zero");
        if self.listeners[conn.listener].full {
            self.ready.push_back(Ready::Listener(conn.listener));
        }
        let target = conn
            .target
            .map(|t| &self.shared.groups[conn.group].targets[t]);
        if let (Some(_), Some(target)) = (&conn.back, target) {
            let before = target.active.fetch_sub(1, Ordering::Relaxed);
            debug_assert!(before > 0, "target active count below zero");
        }
        self.access.record(&Entry {
            protocol: "tcp",
            listener: &listener.config.name,
            client: conn.tuple.client,
            target: target
                .filter(|_| conn.state() == State::Established)
                .map(|t| t.address),
            duration: self.now.saturating_duration_since(conn.started),
            bytes_up: conn.up.bytes,
            bytes_down: conn.down.bytes,
            datagrams: None,
            reason,
        });
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
            let (deadline, connecting) = match conn.state() {
                State::Connecting => (conn.attempt_started + config.connect_timeout, true),
                State::Established => (conn.last_active + config.idle_timeout, false),
            };
            let (connect_timeout, idle_timeout) = (config.connect_timeout, config.idle_timeout);
            if deadline > self.now {
                self.timers.schedule(deadline, due);
                continue;
            }
            if connecting {
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
                let reason = format!("idle for {}", humantime::format_duration(idle_timeout));
                self.close(due.key, &reason);
            }
        }
    }
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
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        ready.readable = true;
    }
    if event.is_read_closed() || event.is_error() {
        ready.read_closed = true;
    }
    if event.is_writable() || event.is_write_closed() || event.is_error() {
        ready.writable = true;
    }
}

/// Opens a non-blocking connect to `address` and registers it as the target side of
/// connection `key`.
fn open_back(poll: &mio::Poll, address: SocketAddr, key: usize) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(address)?;
    s.set_nodelay(true)?;
    poll.registry().register(
        &mut s,
        Slot::Back(key).token(),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(s)
}

/// Whether `e` means this process ran out of descriptors or kernel memory (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), as opposed to a fault of the peer.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
