//! The worker's side of UDP: datagrams from a listener to their session's target, replies
//! back to the client from the listener's socket, sessions created, rebalanced and ended.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use mio::net::UdpSocket;
use mio::Interest;

use super::{ListenSocket, Ready, TokenSlot, Worker};
use crate::access_log::Entry;
use crate::balancer::{remember, Request};
use crate::config::{OnUnhealthy, Protocol};
use crate::conntrack::FiveTuple;
use crate::generation::Refusal;
use crate::net::connected_udp_socket;
use crate::udp::batch::Batch;
use crate::udp::session::Session;

/// `recvmmsg` calls per socket per wake before yielding to other work.
const RECV_ROUNDS: usize = 16;

/// How a flow's first datagram (or a routed one) finds its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    /// The flow's session, or the group's algorithm for a new one (keyed on this, when set,
    /// instead of the flow).
    Pick(Option<u64>),
    /// This target (QUIC-LB routing): a new session goes there, and a session of the flow to
    /// another target is moved to it.
    Target(usize),
}

/// Which way datagrams of a session go.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// Client → target.
    Up,
    /// Target → client.
    Down,
}

impl Worker {
    /// Reads datagrams from UDP listener `i` and sends each up its session's socket.
    pub(super) fn handle_datagrams(&mut self, i: usize) {
        let Some(ListenSocket::Udp(socket)) = &self.listeners[i].socket else {
            return;
        };
        let fd = socket.as_raw_fd();
        // A wildcard listener learns each datagram's destination, to key its session by the
        // real 5-tuple and reply from that address.
        let wildcard = self.listeners[i].local.ip().is_unspecified();
        let Some(vlen) = self.generation.listeners[i]
            .config
            .udp
            .as_ref()
            .map(|u| u.batch)
        else {
            return;
        };
        // Taken out for the loop, so sessions and counters can be borrowed meanwhile.
        let Some(mut batch) = self.batch.take() else {
            return;
        };
        let quic = self.generation.listeners[i].config.quic.clone();
        let token = self.generation.listeners[i].config.token;
        let mut counts = super::routed::RouteCounts::default();
        let mut drained = false;
        for _ in 0..RECV_ROUNDS {
            let n = match batch.recv(fd, vlen, wildcard) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("listener {i}: recv failed: {e}");
                    }
                    drained = true;
                    break;
                }
            };
            // Consecutive datagrams of one flow go up in one sendmmsg.
            let mut start = 0;
            while start < n {
                let flow = (batch.source(start), batch.local(start));
                let mut end = start + 1;
                while end < n && (batch.source(end), batch.local(end)) == flow {
                    end += 1;
                }
                if flow.0.is_some_and(|c| self.refuses(i, c, flow.1)) {
                    self.generation.listeners[i].refuse_many(Refusal::Denied, end - start);
                } else if let Some(q) = &quic {
                    self.route_quic(i, q, &mut batch, start..end, &mut counts);
                } else if let Some(t) = token {
                    self.route_tokens(i, t, &mut batch, start..end, &mut counts);
                } else {
                    match flow
                        .0
                        .map(|c| self.session_for(i, c, flow.1, Choice::Pick(None)))
                    {
                        Some(Ok(key)) => self.send_up(key, &mut batch, start..end),
                        Some(Err(Some(why))) => {
                            self.generation.listeners[i].refuse_many(why, end - start)
                        }
                        Some(Err(None)) | None => self.count_drops(i, end - start, "no session"),
                    }
                }
                start = end;
            }
            if n < vlen {
                drained = true; // a short batch emptied the socket
                break;
            }
        }
        self.batch = Some(batch);
        if quic.is_some() || token.is_some() {
            self.add_route_counts(i, &counts);
        }
        if !drained {
            self.ready.push_back(Ready::Listener(i));
        }
    }

    /// The 5-tuple of `client`'s flow to `local` on listener `i`.
    pub(super) fn flow(&self, i: usize, client: SocketAddr, local: Option<IpAddr>) -> FiveTuple {
        FiveTuple {
            protocol: Protocol::Udp,
            client,
            listener: session_address(self.listeners[i].local, local),
        }
    }

    /// The front door for UDP: whether listener `i`'s access rules refuse a datagram from
    /// `client` (to `local`) that has no session yet. Datagrams of an existing session pass
    /// (rules are judged at a flow's first datagram). Refused datagrams are counted, never
    /// logged one by one.
    fn refuses(&self, i: usize, client: SocketAddr, local: Option<IpAddr>) -> bool {
        let access = &self.generation.listeners[i].config.access;
        if access.is_empty() || access.admits(client.ip()) {
            return false;
        }
        self.sessions.find(&self.flow(i, client, local)).is_none()
    }

    /// The session of `client` on listener `i`: found, or created for the first datagram of a
    /// flow, its target as `choice` says (a session found is moved to the target `choice`
    /// names, if another). `local` is the address the client sent to, known on a wildcard
    /// listener. `Err` (the datagram is dropped, with the refusal to count if any) at
    /// `max_sessions`, or when no upstream socket can be made.
    pub(super) fn session_for(
        &mut self,
        i: usize,
        client: SocketAddr,
        local: Option<IpAddr>,
        choice: Choice,
    ) -> Result<usize, Option<Refusal>> {
        let tuple = self.flow(i, client, local);
        if let Some(key) = self.sessions.find(&tuple) {
            match choice {
                Choice::Target(t) => self.move_session(key, t, "its connection ID names it"),
                Choice::Pick(_) => self.maybe_rebalance(key),
            }
            return Ok(key);
        }
        let generation = self.generation.clone();
        let state = &generation.listeners[i];
        let settings = state.config.udp.as_ref().ok_or(None)?;
        // Per-source limits, at a flow's first datagram (a place held by the session).
        let source_place = match &state.sources {
            None => None,
            Some(t) => match t.admit(client.ip(), self.now) {
                Ok(place) => place,
                Err(over) => return Err(Some(Refusal::from(over))),
            },
        };
        // Over this worker's share of `max_unreplied` (see `unreplied_per_worker` for why a
        // share), or with `max_sessions` full: the oldest session no reply has come to makes
        // room, as a SYN backlog drops its oldest, so a flood of unanswered flows pushes out
        // its own kind and never an answered session.
        if self.sessions.unreplied(i) >= settings.unreplied_per_worker(generation.config.workers) {
            self.evict_oldest_unreplied(i);
        }
        let mut place = state.reserve(Some(settings.max_sessions));
        if place.is_none() && self.evict_oldest_unreplied(i) {
            place = state.reserve(Some(settings.max_sessions));
        }
        let Some(place) = place else {
            if let Some(unlogged) = self.listeners[i].drops.allow(self.now) {
                log::warn!(
                    "listener {}: max_sessions ({}) reached; dropping datagrams of new flows \
                     ({unlogged} more dropped since the last report)",
                    state.config.name,
                    settings.max_sessions
                );
            }
            return Err(None);
        };
        let g = state.config.target_group;
        let group = &generation.groups[g];
        let target = match choice {
            Choice::Target(t) => Some(t),
            Choice::Pick(key) => {
                let request = Request { tuple, key };
                let t = self.pickers[g].choose(group, self.now, &request, &[]);
                if let Some(t) = t {
                    remember(group, client.ip(), t, self.now);
                }
                t
            }
        };
        let socket = target.map(|t| connected_udp_socket(group.targets[t].address));
        let (t, socket) = match (target, socket) {
            (Some(t), Some(Ok(s))) => (t, UdpSocket::from_std(s)),
            (_, other) => {
                if let Some(Err(e)) = other {
                    // EMFILE, no local port…: counted with the drops, logged at most once
                    // per interval, however hard the flood.
                    if let Some(unlogged) = self.listeners[i].upstream_errors.allow(self.now) {
                        log::warn!(
                            "listener {}: cannot open an upstream socket: {} ({unlogged} more \
                             such failures since the last report)",
                            state.config.name,
                            crate::net::describe(&e)
                        );
                    }
                }
                return Err(None);
            }
        };
        let mut session = Session::new(
            i,
            g,
            tuple,
            t,
            socket,
            settings.session_idle_timeout,
            settings.max_responses,
            self.now,
        );
        session.reply_from = local;
        session.unreplied_timeout = Some(settings.unreplied_timeout);
        session.place = Some(place);
        session.source_place = source_place;
        session.proxy_header = group.config.proxy_protocol.map(|v| {
            crate::proxy_protocol::header(v, client, tuple.listener, true).into_boxed_slice()
        });
        session.target_place = Some(group.targets[t].hold());
        let Ok(key) = self.sessions.insert(session) else {
            return Err(None); // the session and its places are dropped
        };
        let target = &group.targets[t];
        target.total.fetch_add(1, Ordering::Relaxed);
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let session = self.sessions.get_mut(key).ok_or(None)?;
        if let Err(e) = self.poll.registry().register(
            &mut session.upstream,
            TokenSlot::Session(key, super::session_tag(session.id)).token(),
            Interest::READABLE,
        ) {
            log::warn!("{tuple}: cannot register the upstream socket: {e}");
            self.end_session(key, "register failed");
            return Err(None);
        }
        log::debug!("{tuple}: new session to {}", target.address);
        Ok(key)
    }

    /// Ends listener `i`'s oldest session that has had no reply, if any (counted as
    /// evicted); whether there was one.
    fn evict_oldest_unreplied(&mut self, i: usize) -> bool {
        let Some(old) = self.sessions.evict_unreplied(i) else {
            return false;
        };
        self.generation.listeners[i]
            .evicted
            .fetch_add(1, Ordering::Relaxed);
        self.finish_session(old, "evicted");
        true
    }

    /// With `on_unhealthy: rebalance`, moves a session whose target turned unhealthy to a
    /// healthy one by connecting its upstream socket there (the client sees nothing change).
    fn maybe_rebalance(&mut self, key: usize) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let listener = &self.generation.listeners[session.listener].config;
        if listener.udp.as_ref().map(|u| u.on_unhealthy) != Some(OnUnhealthy::Rebalance) {
            return;
        }
        let group = &self.generation.groups[session.group];
        let old = session.target;
        if group.targets[old].is_healthy() {
            return;
        }
        let request = Request::new(FiveTuple {
            protocol: Protocol::Udp,
            client: session.tuple.client,
            listener: session_address(self.listeners[session.listener].local, session.reply_from),
        });
        let Some(t) = self.pickers[session.group]
            .balancer()
            .pick(group, &request, &[old])
        else {
            return;
        };
        if !group.targets[t].is_healthy() {
            return; // every target is down: stay where we are (fail open)
        }
        self.move_session(key, t, "unhealthy");
    }

    /// Moves session `key` to target `t` of its group (nothing when it is there already): its
    /// upstream socket is connected there, so the client sees nothing change. `why` the old
    /// target was left, for the log.
    fn move_session(&mut self, key: usize, t: usize, why: &str) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let old = session.target;
        if old == t {
            return;
        }
        let group = &self.generation.groups[session.group];
        if let Err(e) = session.upstream.connect(group.targets[t].address) {
            log::debug!(
                "session of {}: cannot move to {}: {e}",
                session.tuple.client,
                group.targets[t].address
            );
            return;
        }
        session.target = t;
        session.target_place = Some(group.targets[t].hold()); // the old one is given back
                                                              // A session new to this target: its `total` counts it, as it counts every session it
                                                              // is given (so `active` never exceeds `total`).
        group.targets[t].total.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "session of {}: moved from {} ({why}) to {}",
            session.tuple.client,
            group.targets[old].address,
            group.targets[t].address
        );
    }

    /// Sends datagrams `range` of `batch` up session `key`'s socket.
    pub(super) fn send_up(&mut self, key: usize, batch: &mut Batch, range: Range<usize>) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let fd = session.upstream.as_raw_fd();
        let header = session.proxy_header.as_deref();
        let send = |batch: &mut Batch| match header {
            Some(h) => batch.send_prefixed(fd, range.clone(), h),
            None => batch.send(fd, range.clone(), None, None),
        };
        let mut result = send(batch);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused) {
            // The target's ICMP port unreachable for an earlier datagram was reported by this
            // call instead of sending: try once more.
            result = send(batch);
        }
        let sent = result.unwrap_or(0);
        self.account(key, Way::Up, batch, range, sent);
    }

    /// Counts what session `key` moved one way: `sent` of the datagrams in `range` of `batch`
    /// (the first `sent` of them), into the session's traffic, its target's bytes and its
    /// listener's datagrams; the rest as drops. The one bookkeeping of both ways.
    fn account(&mut self, key: usize, way: Way, batch: &Batch, range: Range<usize>, sent: usize) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let traffic = match way {
            Way::Up => &mut session.up,
            Way::Down => &mut session.down,
        };
        let mut bytes = 0;
        for i in range.start..range.start + sent {
            let len = batch.payload(i).len();
            traffic.add(len);
            bytes += len as u64;
        }
        session.last_active = self.now;
        let (listener, group, target) = (session.listener, session.group, session.target);
        let (target, listener_state) = (
            &self.generation.groups[group].targets[target],
            &self.generation.listeners[listener],
        );
        let (target_bytes, datagrams, why) = match way {
            Way::Up => (
                &target.bytes_to_target,
                &listener_state.datagrams_up,
                "upstream socket full or refused",
            ),
            Way::Down => (
                &target.bytes_from_target,
                &listener_state.datagrams_down,
                "listener socket full",
            ),
        };
        target_bytes.fetch_add(bytes, Ordering::Relaxed);
        datagrams.fetch_add(sent as u64, Ordering::Relaxed);
        if sent < range.len() {
            self.count_drops(listener, range.len() - sent, why);
        }
    }

    /// Replies arrived on session `key`'s upstream socket: send them to the client from the
    /// listener's socket, and end the session after `max_responses`.
    pub(super) fn handle_session_event(&mut self, key: usize) {
        let Some(mut batch) = self.batch.take() else {
            return;
        };
        let mut drained = false;
        for _ in 0..RECV_ROUNDS {
            let Some(session) = self.sessions.get_mut(key) else {
                drained = true;
                break;
            };
            let (listener, client, from) =
                (session.listener, session.tuple.client, session.reply_from);
            let vlen = self.generation.listeners[listener]
                .config
                .udp
                .as_ref()
                .map_or(1, |u| u.batch);
            let max = vlen.min(session.replies_left() as usize);
            let n = match batch.recv(session.upstream.as_raw_fd(), max, false) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The target's ICMP port unreachable: reported once, then reading goes on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("session of {client}: upstream recv failed: {e}");
                    }
                    drained = true;
                    break;
                }
            };
            let Some(ListenSocket::Udp(socket)) = &self.listeners[listener].socket else {
                drained = true;
                break;
            };
            let sent = batch
                .send(socket.as_raw_fd(), 0..n, Some(client), from)
                .unwrap_or(0);
            let first = session.responses == 0;
            if first {
                // The first reply: the target's response time, for least_response_time.
                self.generation.groups[session.group].targets[session.target]
                    .record_response(self.now.saturating_duration_since(session.started));
            }
            session.responses = session.responses.saturating_add(n as u32);
            let done = session.replies_done();
            if first {
                // Answered (even if the client's side dropped the reply): no longer counted
                // under max_unreplied, nor evicted as unanswered.
                self.sessions.mark_replied(key);
            }
            self.account(key, Way::Down, &batch, 0..n, sent);
            if done {
                self.end_session(key, "max_responses");
                drained = true;
                break;
            }
            if n < max {
                drained = true;
                break;
            }
        }
        self.batch = Some(batch);
        if !drained {
            if let Some(id) = self.sessions.get_mut(key).map(|s| s.id) {
                self.ready.push_back(Ready::Session { key, id });
            }
        }
    }

    pub(super) fn count_drops(&mut self, listener: usize, n: usize, why: &str) {
        let state = &self.generation.listeners[listener];
        state.dropped.fetch_add(n as u64, Ordering::Relaxed);
        log::trace!(
            "listener {}: dropped {n} datagrams: {why}",
            state.config.name
        );
    }

    /// Ends sessions idle past their timeout.
    pub(super) fn expire_sessions(&mut self) {
        for session in self.sessions.expire(self.now) {
            let reason = if session.replied() {
                "idle"
            } else {
                "unreplied"
            };
            self.finish_session(session, reason);
        }
    }

    /// Ends the sessions `pick` selects; returns how many.
    pub(super) fn end_sessions_where(
        &mut self,
        pick: impl Fn(&Session<UdpSocket>) -> bool,
        reason: &str,
    ) -> usize {
        let ended = self.sessions.drain_where(pick);
        let n = ended.len();
        for session in ended {
            self.finish_session(session, reason);
        }
        n
    }

    /// Ends every session (the worker is stopping).
    pub(super) fn end_all_sessions(&mut self, reason: &str) {
        for session in self.sessions.drain() {
            self.finish_session(session, reason);
        }
    }

    fn end_session(&mut self, key: usize, reason: &str) {
        if let Some(session) = self.sessions.remove(key) {
            self.finish_session(session, reason);
        }
    }

    /// Counters and log for a session leaving the table; dropping it closes its socket.
    fn finish_session(&mut self, mut session: Session<UdpSocket>, reason: &str) {
        // Give back its places under the listener's and the target's limits.
        session.place = None;
        session.target_place = None;
        self.descriptors_freed();
        let listener = &self.generation.listeners[session.listener].config.name;
        if reason == "evicted" && session.down.datagrams == 0 {
            // Never answered and pushed out by newer flows: a flood's own kind, counted in
            // `ballast_listener_evicted_sessions_total` and summarised here, since an access-log
            // line per spoofed flow would turn a flood into a flood of log lines.
            if let Some(slot) = self.listeners.get_mut(session.listener) {
                if let Some(more) = slot.evictions.allow(self.now) {
                    log::info!(
                        "listener {listener}: ended {} unanswered sessions to make room for new \
                         flows since the last report (not in the access log one by one)",
                        more + 1
                    );
                }
            }
            return;
        }
        let target = &self.generation.groups[session.group].targets[session.target];
        self.access.record(&Entry {
            protocol: "udp",
            listener,
            client: session.tuple.client,
            target: Some(target.address),
            duration: self.now.saturating_duration_since(session.started),
            bytes_up: session.up.bytes,
            bytes_down: session.down.bytes,
            datagrams: Some((session.up.datagrams, session.down.datagrams)),
            retries: 0,
            connect: None,
            reason,
        });
    }
}

/// The listener side of a UDP 5-tuple: `bound`, the listener's address, with `local` (the
/// address the client sent to) in place of a wildcard address.
pub(super) fn session_address(bound: SocketAddr, local: Option<IpAddr>) -> SocketAddr {
    SocketAddr::new(local.unwrap_or(bound.ip()), bound.port())
}
