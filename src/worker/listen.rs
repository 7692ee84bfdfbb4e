//! The listener side of a worker: its sockets for the listeners, accepting TCP clients within
//! budgets and limits, and pausing when descriptors run out (EMFILE and the like), with one
//! descriptor held in reserve so an accepted client always gets its target socket.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Poll};

use super::{Ready, TokenSlot, Worker};
use crate::bind::Bound;
use crate::steering::Steering;
use crate::throttle::LogLimiter;

/// Accepts per listener per wake before yielding to other work.
const ACCEPT_BUDGET: usize = 64;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often a listener at `max_connections` re-checks for room freed by other workers.
pub(super) const FULL_RECHECK: Duration = Duration::from_millis(20);

/// A descriptor to hold in reserve: an unbound UDP socket (no port, no file system).
pub(super) fn reserve_descriptor() -> io::Result<socket2::Socket> {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
}

/// A worker's socket for one listener.
#[derive(Debug)]
pub(super) enum ListenSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// One listener as this worker holds it.
#[derive(Debug)]
pub(super) struct ListenerSlot {
    pub(super) socket: Option<ListenSocket>,
    pub(super) local: SocketAddr,
    /// Accepting paused after a resource error, until then.
    pub(super) paused_until: Option<Instant>,
    /// At `max_connections`: accept again when a connection closes.
    pub(super) full: bool,
    /// Accept errors (TCP), at most one line per [`crate::throttle::LOG_EVERY`].
    pub(super) accept_errors: LogLimiter,
    /// Dropped datagrams (UDP), likewise.
    pub(super) drops: LogLimiter,
    /// Clients reset because no target accepted them, likewise.
    pub(super) give_ups: LogLimiter,
    /// UDP upstream sockets that could not be opened (EMFILE, no local port), likewise.
    pub(super) upstream_errors: LogLimiter,
    /// Unanswered UDP sessions ended to make room: summarised at most once per interval
    /// instead of an access-log line each (a spoofed flood would write one per flow).
    pub(super) evictions: LogLimiter,
}

impl ListenerSlot {
    /// Registers `socket`, the socket of listener `index`, with `poll`; a TCP socket joins
    /// its listener's load-aware steering as worker `worker` (see [`crate::steering`]).
    pub(super) fn register(
        poll: &Poll,
        index: usize,
        socket: Bound,
        (steering, worker): (&Steering, usize),
    ) -> io::Result<ListenerSlot> {
        let local = socket.local_addr()?;
        let token = TokenSlot::Listener(index).token();
        let socket = match socket {
            Bound::Tcp(s) => {
                steering.join(worker, local, s.as_raw_fd());
                let mut s = TcpListener::from_std(s);
                poll.registry()
                    .register(&mut s, token, Interest::READABLE)?;
                ListenSocket::Tcp(s)
            }
            Bound::Udp(s) => {
                let mut s = UdpSocket::from_std(s);
                poll.registry()
                    .register(&mut s, token, Interest::READABLE)?;
                ListenSocket::Udp(s)
            }
        };
        Ok(ListenerSlot {
            socket: Some(socket),
            local,
            paused_until: None,
            full: false,
            accept_errors: LogLimiter::default(),
            drops: LogLimiter::default(),
            give_ups: LogLimiter::default(),
            upstream_errors: LogLimiter::default(),
            evictions: LogLimiter::default(),
        })
    }

    /// A slot without a socket (an index this worker never had a socket for).
    pub(super) fn closed() -> ListenerSlot {
        ListenerSlot {
            socket: None,
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            paused_until: None,
            full: false,
            accept_errors: LogLimiter::default(),
            drops: LogLimiter::default(),
            give_ups: LogLimiter::default(),
            upstream_errors: LogLimiter::default(),
            evictions: LogLimiter::default(),
        }
    }

    /// Deregisters and closes the socket, if open.
    pub(super) fn close(&mut self, poll: &Poll) {
        match self.socket.take() {
            Some(ListenSocket::Tcp(mut s)) => {
                let _ = poll.registry().deregister(&mut s);
            }
            Some(ListenSocket::Udp(mut s)) => {
                let _ = poll.registry().deregister(&mut s);
            }
            None => {}
        }
        self.full = false;
        self.paused_until = None;
    }
}

impl Worker {
    pub(super) fn resume_listeners(&mut self) {
        for i in 0..self.listeners.len() {
            let slot = &mut self.listeners[i];
            if slot.paused_until.is_some_and(|t| t <= self.now) {
                slot.paused_until = None;
                self.handle_listener(i);
            } else if slot.full {
                self.accept(i);
            }
        }
    }

    /// Stops accepting on listener `i` for [`ACCEPT_BACKOFF`] after `e`, a resource error
    /// (EMFILE and the like) met by `what`; clients meanwhile wait in the listen backlog.
    /// Logs at most one line per [`crate::throttle::LOG_EVERY`], with the count of those not logged.
    pub(super) fn pause_accepts(&mut self, i: usize, what: &str, e: &io::Error) {
        self.starved = true;
        let slot = &mut self.listeners[i];
        slot.paused_until = Some(self.now + ACCEPT_BACKOFF);
        if let Some(unlogged) = slot.accept_errors.allow(self.now) {
            log::warn!(
                "listener {}: {what}: {}; pausing accepts for {}ms ({unlogged} more such errors \
                 since the last report)",
                self.generation.listeners[i].config.name,
                crate::net::describe(e),
                ACCEPT_BACKOFF.as_millis(),
            );
        }
    }

    /// A connection or session closed, freeing descriptors: listeners paused by
    /// [`Worker::pause_accepts`] accept again now rather than at the end of their pause.
    /// (Closes in other workers free descriptors too; the pause's end covers those.)
    pub(super) fn descriptors_freed(&mut self) {
        if !std::mem::take(&mut self.starved) {
            return;
        }
        for (i, slot) in self.listeners.iter_mut().enumerate() {
            if slot.paused_until.take().is_some() {
                self.ready.push_back(Ready::Listener(i));
            }
        }
    }

    /// Listener `i` is readable (or has work left over).
    pub(super) fn handle_listener(&mut self, i: usize) {
        match self.listeners[i].socket {
            Some(ListenSocket::Tcp(_)) => self.accept(i),
            Some(ListenSocket::Udp(_)) => self.handle_datagrams(i),
            None => {}
        }
    }

    /// Accepts up to [`ACCEPT_BUDGET`] clients on listener `i`.
    pub(super) fn accept(&mut self, i: usize) {
        let generation = self.generation.clone();
        let state = &generation.listeners[i];
        let max = state.config.max_connections;
        for _ in 0..ACCEPT_BUDGET {
            if self.listeners[i].paused_until.is_some() {
                return;
            }
            if self.reserve.is_none() {
                match reserve_descriptor() {
                    Ok(reserve) => self.reserve = Some(reserve),
                    Err(e) => return self.pause_accepts(i, "no descriptor to hold in reserve", &e),
                }
            }
            let slot = &mut self.listeners[i];
            let Some(ListenSocket::Tcp(socket)) = slot.socket.as_ref() else {
                return;
            };
            // Every target at its max_connections (and the group's queue, if any, full too):
            // leave the client in the backlog.
            // A listener with routes learns the group only from what the client sends: its
            // default group being full must not keep the others' clients out.
            let routed = state.config.sni.is_some() || state.config.postgres.is_some();
            if !routed && !generation.groups[state.config.target_group].can_accept() {
                slot.full = true;
                return;
            }
            // Reserve a place first, so workers together never exceed max_connections.
            let Some(place) = state.reserve(max) else {
                slot.full = true;
                return;
            };
            slot.full = false;
            match socket.accept() {
                Ok((stream, peer)) => {
                    state.accepted.fetch_add(1, Ordering::Relaxed);
                    self.handle_accepted(i, stream, peer, place);
                }
                Err(e) => {
                    drop(place);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            // Everything steered here so far is accepted (see steering).
                            self.published = self.table.len();
                            self.steering.accept_queue_empty(self.id, self.published);
                            return;
                        }
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                        _ => {
                            // EMFILE, ENFILE, ENOBUFS, ENOMEM…: retrying at once would spin.
                            self.pause_accepts(i, "accept failed", &e);
                            return;
                        }
                    }
                }
            }
        }
        self.ready.push_back(Ready::Listener(i));
    }
}
