//! The worker's side of the `Connecting` and `TargetPreamble` stages: asking the balancer
//! for a target, opening the socket, telling a finished connect from a failed one, retries,
//! and PostgreSQL's SSLRequest to the target. What counts as a try and when to give up is
//! the connection's ([`crate::tcp::Attempts`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use mio::net::TcpStream;

use super::{Tag, TokenSlot, Worker, CONN_INTEREST};
use crate::balancer;
use crate::net::describe;
use crate::tcp::pump::Endpoint;
use crate::tcp::target_preamble::{TargetHello, TargetStep};
use crate::tcp::{Action, Queued, Reset};

impl Worker {
    /// Starts a connect to the next target the balancer picks, skipping targets already tried;
    /// closes the client when no attempt is left (`retries` used up, or no target left to
    /// try) or when Ballast itself is out of descriptors or memory.
    pub(super) fn connect_next(&mut self, key: usize) {
        loop {
            let tag = self.new_tag();
            let Some(conn) = self.table.get_mut(key) else {
                return;
            };
            let listener = &self.generation.listeners[conn.listener];
            let retries = listener.config.retries;
            let g = conn.group;
            let group = &self.generation.groups[g];
            let request = balancer::Request::new(conn.request_tuple());
            let Some(attempts) = conn.attempts() else {
                return;
            };
            if !attempts.may_try(retries) {
                return self.give_up(key);
            }
            let picked = match attempts.pinned {
                // A PostgreSQL cancel: to the target that issued its key, once.
                Some(_) if !attempts.tried.is_empty() => None,
                Some(t) => Some(t),
                None => {
                    let exclude = balancer::retry_exclusions(&attempts.tried, group.targets.len());
                    self.pickers[g].choose(group, self.now, &request, exclude)
                }
            };
            let Some(t) = picked else {
                // Every target at its max_connections: wait in the group's queue, if it has one.
                if let Some(q) = group.config.queue.filter(|_| {
                    attempts.pinned.is_none()
                        && attempts.current.is_none()
                        && !group.has_room_besides(&attempts.tried)
                }) {
                    return self.enqueue(key, g, q);
                }
                return self.give_up(key);
            };
            // The place first: another worker may have taken the last one since the pick.
            let place = match attempts.pinned {
                Some(_) => group.targets[t].hold(), // a cancel is never refused a place
                None => match group.targets[t].try_hold() {
                    Some(place) => place,
                    None => continue, // full now: the next pick leaves it out
                },
            };
            if !attempts.tried.is_empty() {
                listener.retries.fetch_add(1, Ordering::Relaxed);
            }
            if attempts.queued.is_some() {
                conn.leave_queue(self.now, true);
            }
            let address = group.targets[t].address;
            let source = (group.config.source == crate::config::SourceAddress::Client)
                .then(|| conn.client().ip());
            let mut started = open_back(&self.poll, address, source, key, tag);
            if started.as_ref().is_err_and(is_out_of_descriptors) && self.reserve.take().is_some() {
                // What the reserve descriptor is for: this client, already accepted, still gets
                // its target socket. Accepting waits until the reserve can be held again.
                started = open_back(&self.poll, address, source, key, tag);
            }
            match started {
                Ok(s) => {
                    conn.connecting(t, Endpoint::new(s, tag), Some(place), self.now);
                    return;
                }
                Err(e) if is_local_exhaustion(&e) => {
                    // Out of descriptors even so (a retry, or another worker took the one the
                    // reserve freed), or out of local ports (EADDRNOTAVAIL). Not the target's
                    // fault, and every other target would likely fail the same way: reset this
                    // client, and leave the next ones in the listen backlog a while.
                    let listener = conn.listener;
                    self.close(key, &describe(&e), Reset::BOTH);
                    // After the close, which would otherwise end the pause at once.
                    return self.pause_accepts(listener, "cannot open a socket to a target", &e);
                }
                Err(e) if source.is_some() && crate::net::source_unusable(&e) => {
                    // The client's address cannot be a source (another family than the
                    // target's, one a PROXY header made up): the client's problem, not the
                    // target's, so it counts against no target (outlier detection).
                    let (i, client) = (conn.listener, conn.client());
                    if let Some(more) = self.listeners[i].give_ups.allow(self.now) {
                        log::warn!(
                            "listener {}: resetting client {client}: `source: client` cannot \
                             connect to {address} from its address ({}; {more} more such \
                             clients since the last report)",
                            self.generation.listeners[i].config.name,
                            describe(&e)
                        );
                    }
                    return self.close(key, "source_unusable", Reset::BOTH);
                }
                Err(e) => {
                    let target = &group.targets[t];
                    target.connect_failures.fetch_add(1, Ordering::Relaxed);
                    target.note_failure();
                    log::debug!("{}: connect to {address} failed: {e}", conn.tuple);
                    let why = format!("{address}: {}", describe(&e));
                    match conn.open_failed(t, why, retries) {
                        Action::Connect => continue,
                        _ => return self.give_up(key),
                    }
                }
            }
        }
    }

    /// Every target of group `g` is at its `max_connections`: connection `key` waits in the
    /// group's queue `q` (at the back; at the front again when it waited already and another
    /// worker took the place it was woken for), or is reset when `q.max` wait already.
    fn enqueue(&mut self, key: usize, g: usize, q: crate::config::Queue) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let id = conn.id;
        if self.queues.len() <= g {
            self.queues.resize_with(g + 1, VecDeque::new);
        }
        if conn.is_queued() {
            self.queues[g].push_front((key, id));
            return;
        }
        let Some(place) = crate::target::queue::enter(&self.generation.groups[g].queue, q.max)
        else {
            return self.close(key, "queue_full", Reset::BOTH);
        };
        let until = self.now + q.timeout;
        if let Some(a) = conn.attempts() {
            a.queued = Some(Box::new(Queued {
                place,
                since: self.now,
                until,
            }));
        }
        self.queues[g].push_back((key, id));
        self.timers.schedule(until, crate::timers::Due { key, id });
    }

    /// After a reload: connections waiting in a queue that is gone (`queue:` removed, or its
    /// group) wait no longer. Each goes to a target if one has room now, else is reset
    /// (`queue_removed`): nothing would serve it in order any more, and it must not wait
    /// unseen (the queue's metrics go with its configuration).
    pub(super) fn release_removed_queues(&mut self) {
        for g in 0..self.queues.len() {
            let group = self.generation.groups.get(g);
            if group.is_some_and(|x| x.config.queue.is_some() && !x.removed) {
                continue;
            }
            for (key, id) in std::mem::take(&mut self.queues[g]) {
                let waiting = self
                    .table
                    .get_mut(key)
                    .is_some_and(|c| c.id == id && c.is_queued());
                if !waiting {
                    continue;
                }
                let group = &self.generation.groups[g];
                if !group.removed && group.has_room() {
                    self.connect_next(key);
                } else {
                    self.close(key, "queue_removed", Reset::BOTH);
                }
            }
        }
    }

    /// Connects the connections waiting in the groups' queues, first come first served, while
    /// their group has a target with room (freed by a connection that ended here or on
    /// another worker). Called every turn of the loop; entries of connections that stopped
    /// waiting are dropped on the way.
    pub(super) fn serve_queues(&mut self) {
        for g in 0..self.queues.len() {
            while let Some(&(key, id)) = self.queues[g].front() {
                let waiting = self
                    .table
                    .get_mut(key)
                    .is_some_and(|c| c.id == id && c.is_queued());
                if !waiting {
                    self.queues[g].pop_front();
                    continue;
                }
                if !self.generation.groups[g].has_room() {
                    break;
                }
                self.queues[g].pop_front();
                self.connect_next(key);
                if self.queues[g].front() == Some(&(key, id)) {
                    break; // another worker took the place first: it waits on at the head
                }
            }
        }
    }

    /// The current connect attempt failed with `reason`: try the next target or give up.
    pub(super) fn connect_failed(&mut self, key: usize, reason: String) {
        self.attempt_failed(key, reason, true);
    }

    /// The attempt in flight did not reach a usable target: the next target is tried (or
    /// the client reset). `charge`: the target's connect failures and passive health count
    /// it (not so for a server that is up but declined what the client asked of it).
    fn attempt_failed(&mut self, key: usize, reason: String, charge: bool) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let retries = self.generation.listeners[conn.listener].config.retries;
        let group = &self.generation.groups[conn.group];
        let address = conn.target().map(|t| group.targets[t].address);
        let why = match address {
            Some(a) => format!("{a}: {reason}"),
            None => reason,
        };
        log::debug!("{}: connect failed: {why}", conn.tuple);
        let (failed, next) = conn.connect_failed(why, retries);
        if let Some(target) = failed.map(|t| &group.targets[t]).filter(|_| charge) {
            target.connect_failures.fetch_add(1, Ordering::Relaxed);
            target.note_failure();
        }
        self.act(key, next);
    }

    /// No target accepted the client: it is reset (a clean EOF would read as an empty answer).
    pub(super) fn give_up(&mut self, key: usize) {
        if let Some(conn) = self.table.get_mut(key) {
            let (i, client) = (conn.listener, conn.tuple.client);
            let tried = conn.attempts_made();
            let last = conn.attempts().and_then(|a| a.last_error.take());
            if let Some(unlogged) = self.listeners[i].give_ups.allow(self.now) {
                log::warn!(
                    "listener {}: resetting client {client}: no target accepted the connection \
                     after {tried} attempt(s) (last: {}; {unlogged} more such clients since the \
                     last report)",
                    self.generation.listeners[i].config.name,
                    last.as_deref().unwrap_or("no target to try"),
                );
            }
        }
        self.close(key, "no target", Reset::BOTH);
    }

    /// A `Connecting` connection's target socket had an event: connected (on to the target's
    /// preamble, if its group or listener needs one, else established), failed (the next
    /// target), or neither yet.
    pub(super) fn connect_event(&mut self, key: usize, ev: crate::tcp::Event) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        match conn.connect_outcome(ev) {
            None => {}
            Some(Ok(())) => self.connected(key),
            Some(Err(reason)) => self.connect_failed(key, reason),
        }
    }

    /// The attempt in flight connected: what its target is sent first, if anything (an
    /// SSLRequest for `postgres_starttls`; the PROXY header and a TLS session for
    /// `target_tls`), then established.
    fn connected(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let group = &self.generation.groups[conn.group];
        let postgres = conn.attempts().is_some_and(|a| a.postgres);
        let hello = match (&group.config.target_tls, conn.target()) {
            _ if postgres => TargetHello::SslRequest,
            (Some(tls), Some(t)) => match tls.session(group.targets[t].address.ip()) {
                Ok(session) => TargetHello::Tls {
                    header: group.config.proxy_protocol.map(|v| {
                        crate::proxy_protocol::header(v, conn.client(), conn.local(), false)
                    }),
                    session: Box::new(session),
                },
                Err(e) => return self.connect_failed(key, format!("TLS: {e}")),
            },
            _ => return self.established(key),
        };
        let step = conn.start_target_preamble(hello);
        self.target_step(key, step);
    }

    /// `TargetPreamble`: the target's socket had an event.
    pub(super) fn target_preamble_event(&mut self, key: usize) {
        if let Some(conn) = self.table.get_mut(key) {
            let step = conn.target_preamble_event();
            self.target_step(key, step);
        }
    }

    /// Carries out where the target's preamble stands.
    fn target_step(&mut self, key: usize, step: TargetStep) {
        match step {
            TargetStep::Wait => {}
            TargetStep::Done => self.established(key),
            TargetStep::Failed(reason) => self.connect_failed(key, reason),
            TargetStep::Declined(reason) => {
                self.declined(key, &reason);
                self.attempt_failed(key, reason, false);
            }
        }
    }

    /// A target declined the TLS a `postgres_starttls` client asked for (answered `N`): a
    /// misconfiguration the operator must hear of (rate-limited), not the client's fault.
    fn declined(&mut self, key: usize, reason: &str) {
        let Some(conn) = self.table.get(key) else {
            return;
        };
        let (i, g) = (conn.listener, conn.group);
        let address = conn
            .target()
            .map(|t| self.generation.groups[g].targets[t].address);
        if let (Some(a), Some(more)) = (address, self.listeners[i].give_ups.allow(self.now)) {
            log::warn!(
                "listener {}: target {a} {reason}: its server does not take TLS, which \
                 postgres_starttls passes through to it (ssl = on there); tried the next \
                 target, not counted against this one's health ({more} more since the last \
                 report)",
                self.generation.listeners[i].config.name,
            );
        }
    }
}

/// Opens a non-blocking connect to `address` (from `source`, the client's address, for
/// `source: client`) and registers it as the target side of connection `key` with `tag`.
/// TCP_NODELAY (no Nagle delay added) and SO_OOBINLINE (urgent data stays in the stream) are
/// set, as the listener sets them for accepted clients.
fn open_back(
    poll: &mio::Poll,
    address: SocketAddr,
    source: Option<std::net::IpAddr>,
    key: usize,
    tag: Tag,
) -> io::Result<TcpStream> {
    let mut s = match source {
        Some(ip) => TcpStream::from_std(crate::net::connect_from(address, ip)?),
        None => {
            let s = TcpStream::connect(address)?;
            s.set_nodelay(true)?;
            socket2::SockRef::from(&s).set_out_of_band_inline(true)?;
            s
        }
    };
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

impl Worker {
    /// A PostgreSQL client whose StartupMessage was read, refused before any server took it
    /// (`reason`: no target, a full or timed-out queue, an unusable source): told why with
    /// a FATAL `ErrorResponse` psql prints, then closed with a FIN rather than reset (a reset
    /// would lose the message). Returns the resets still to do.
    pub(super) fn tell_postgres_client(&mut self, key: usize, reason: &str, reset: Reset) -> Reset {
        let Some(conn) = self.table.get_mut(key) else {
            return reset;
        };
        let l = &self.generation.listeners[conn.listener].config;
        let group = &self.generation.groups[conn.group].config;
        let told = l.postgres.is_some()
            && reset.front
            && conn
                .attempts()
                .is_some_and(|a| a.watch_key && a.pinned.is_none());
        if !told {
            return reset;
        }
        let name = &group.name;
        let queue = group.queue.map(|q| q.timeout);
        let (sqlstate, message) = match reason {
            "no target" => (
                "08001",
                format!("no server of target group \"{name}\" could take the connection"),
            ),
            "queue_full" => (
                "53300",
                format!("every server of target group \"{name}\" is full and so is its queue"),
            ),
            "queue_timeout" => (
                "53300",
                format!(
                    "no server of target group \"{name}\" had room within {}",
                    queue.map_or_else(String::new, |t| format!("{t:?}"))
                ),
            ),
            "queue_removed" => (
                "53300",
                format!("every server of target group \"{name}\" is full (its queue was removed)"),
            ),
            "source_unusable" => (
                "08001",
                "this client's address cannot be the source of a connection to its server".into(),
            ),
            _ => return reset,
        };
        conn.answer_and_finish(&crate::postgres::error_response(sqlstate, &message));
        Reset {
            front: false,
            ..reset
        }
    }
}
