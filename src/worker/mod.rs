//! A worker: one thread, one mio `Poll`, its own SO_REUSEPORT listening sockets and its own
//! connection table. Nothing on this path takes a lock.
//!
//! Token plan (see [`Slot`]): `0` is the waker, `1..=MAX_LISTENERS` the listeners, and from
//! [`CONN_BASE`] on three tokens per slab key `k`: `CONN_BASE + 3k` for the client side and
//! `CONN_BASE + 3k + 1` for the target side of TCP connection `k`, and `CONN_BASE + 3k + 2`
//! for the upstream socket of UDP session `k` (sessions have their own table and keys).
//!
//! Every drain loop is capped (accepts per wake, bytes per direction per wake); work left over
//! goes on a ready queue that the next loop turn runs before sleeping, because with
//! edge-triggered readiness no new event would come for it.

mod tcp;
mod udp;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token};

use crate::access_log::AccessLog;
use crate::balancer::Picker;
use crate::config::Protocol;
use crate::conntrack::ConnTable;
use crate::runtime::Bound;
use crate::shared::Shared;
use crate::tcp::pump::BufferPool;
use crate::tcp::Connection;
use crate::timers::Timers;
use crate::udp::batch::Batch;
use crate::udp::session::SessionTable;

/// The waker's token.
pub const WAKER: Token = Token(0);
/// Most listeners one worker serves.
pub const MAX_LISTENERS: usize = 1 << 16;
/// First connection token.
pub const CONN_BASE: usize = 1 << 20;

/// Accepts per listener per wake before yielding to other work.
const ACCEPT_BUDGET: usize = 64;
/// Bytes per direction per wake before yielding to other connections.
const PUMP_BUDGET: usize = 512 * 1024;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accept errors (EMFILE and the like) come in bursts: log at most one line per listener and
/// worker this often, with the count of those not logged.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often a listener at `max_connections` re-checks for room freed by other workers.
const FULL_RECHECK: Duration = Duration::from_millis(20);

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The worker's waker (commands are waiting).
    Waker,
    /// Listener index.
    Listener(usize),
    /// Client side of the connection with this slab key.
    Front(usize),
    /// Target side of the connection with this slab key.
    Back(usize),
    /// Upstream socket of the UDP session with this key.
    Session(usize),
}

impl Slot {
    /// The slot a token stands for.
    pub fn of(token: Token) -> Slot {
        match token.0 {
            0 => Slot::Waker,
            t if t < CONN_BASE => Slot::Listener(t - 1),
            t => match (t - CONN_BASE) % 3 {
                0 => Slot::Front((t - CONN_BASE) / 3),
                1 => Slot::Back((t - CONN_BASE) / 3),
                _ => Slot::Session((t - CONN_BASE) / 3),
            },
        }
    }

    /// The token for this slot.
    pub fn token(self) -> Token {
        Token(match self {
            Slot::Waker => 0,
            Slot::Listener(i) => 1 + i,
            Slot::Front(k) => CONN_BASE + 3 * k,
            Slot::Back(k) => CONN_BASE + 3 * k + 1,
            Slot::Session(k) => CONN_BASE + 3 * k + 2,
        })
    }
}

/// A command from the main or admin thread.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, let open connections finish up to `shutdown_timeout`, then exit. The
    /// worker sends its id on the channel once its listening sockets are closed.
    Stop(crossbeam_channel::Sender<usize>),
    /// Close every connection and end every session to target `target` of group `group`
    /// (a disabled target's drain_timeout has passed).
    CloseTarget {
        /// Group index.
        group: usize,
        /// Target index in the group.
        target: usize,
    },
    /// Switch to the next generation of the configuration: `sockets` are this worker's
    /// sockets for the listeners it adds (by listener index); listeners marked removed close
    /// (their TCP connections go on; their UDP sessions end, as replies leave through the
    /// listener's socket).
    Reload {
        /// The new generation.
        shared: Arc<Shared>,
        /// `(listener index, socket)` for each new listener.
        sockets: Vec<(usize, Bound)>,
    },
    /// Send up to `limit` entries of the connection table (TCP connections, then UDP
    /// sessions) on `reply`.
    Snapshot {
        /// Most entries to send.
        limit: usize,
        /// Where to send them.
        reply: crossbeam_channel::Sender<Vec<ConnInfo>>,
    },
}

/// One connection-table entry as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// The client's address.
    pub client: SocketAddr,
    /// The listener's name.
    pub listener: String,
    /// The address the client connected or sent to (the listener side of the 5-tuple; on a
    /// wildcard listener, the host address the client used).
    pub local: SocketAddr,
    /// The target, once one is connected (TCP) or chosen (UDP).
    pub target: Option<SocketAddr>,
    /// Since accept or the flow's first datagram.
    pub age: Duration,
    /// Bytes client → target.
    pub bytes_up: u64,
    /// Bytes target → client.
    pub bytes_down: u64,
}

/// How another thread reaches a worker: its command channel and the waker of its poll.
#[derive(Debug, Clone)]
pub struct WorkerLink {
    /// Commands to the worker.
    pub commands: crossbeam_channel::Sender<Command>,
    /// Wakes the worker's poll so it reads its commands.
    pub waker: Arc<mio::Waker>,
}

impl WorkerLink {
    /// Sends `command` and wakes the worker; false when the worker is gone.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok() && self.waker.wake().is_ok()
    }
}

/// Work that must run again without waiting for an event.
#[derive(Debug, Clone, Copy)]
enum Ready {
    Listener(usize),
    Conn { key: usize, id: u64 },
    Session { key: usize, id: u64 },
}

/// Lets through one log line per [`ERROR_LOG_EVERY`] for a recurring event, counting the rest.
#[derive(Debug, Default)]
struct LogLimiter {
    logged: Option<Instant>,
    unlogged: u64,
}

impl LogLimiter {
    /// Counts one event; returns `Some(events not logged since the last line)` when this one
    /// may be logged.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .logged
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// A descriptor to hold in reserve: an unbound UDP socket (no port, no file system).
fn reserve_descriptor() -> io::Result<socket2::Socket> {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
}

/// The largest `udp.batch` of `shared`'s UDP listeners (the size of a worker's datagram
/// buffers); `None` without UDP listeners.
fn udp_batch_size(shared: &Shared) -> Option<usize> {
    shared
        .listeners
        .iter()
        .filter(|l| !l.removed)
        .filter_map(|l| l.config.udp.as_ref().map(|u| u.batch))
        .max()
}

/// A worker's socket for one listener.
#[derive(Debug)]
enum ListenSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// One listener as this worker holds it.
#[derive(Debug)]
struct ListenerSlot {
    socket: Option<ListenSocket>,
    local: SocketAddr,
    /// Accepting paused after a resource error, until then.
    paused_until: Option<Instant>,
    /// At `max_connections`: accept again when a connection closes.
    full: bool,
    /// Accept errors (TCP), at most one line per [`ERROR_LOG_EVERY`].
    accept_errors: LogLimiter,
    /// Dropped datagrams (UDP), likewise.
    drops: LogLimiter,
}

impl ListenerSlot {
    /// Registers `socket`, the socket of listener `index`, with `poll`.
    fn register(poll: &Poll, index: usize, socket: Bound) -> io::Result<ListenerSlot> {
        let local = socket.local_addr()?;
        let token = Slot::Listener(index).token();
        let socket = match socket {
            Bound::Tcp(s) => {
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
        })
    }

    /// A slot without a socket (an index this worker never had a socket for).
    fn closed() -> ListenerSlot {
        ListenerSlot {
            socket: None,
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            paused_until: None,
            full: false,
            accept_errors: LogLimiter::default(),
            drops: LogLimiter::default(),
        }
    }

    /// Deregisters and closes the socket, if open.
    fn close(&mut self, poll: &Poll) {
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

/// The event loop of one worker thread.
pub struct Worker {
    id: usize,
    poll: Poll,
    shared: Arc<Shared>,
    listeners: Vec<ListenerSlot>,
    table: ConnTable<Connection>,
    sessions: SessionTable<UdpSocket>,
    /// Datagram buffers, when the worker has UDP listeners.
    batch: Option<Batch>,
    pickers: Vec<Picker>,
    timers: Timers,
    pool: BufferPool,
    ready: VecDeque<Ready>,
    /// Some listener paused accepting after running out of descriptors (see
    /// [`Worker::descriptors_freed`]).
    starved: bool,
    /// A descriptor held in reserve (an unbound socket): released when opening a target
    /// socket for an accepted client meets EMFILE, so no accepted client is closed for want of
    /// one; accepting waits until it is held again.
    reserve: Option<socket2::Socket>,
    commands: Receiver<Command>,
    stop_deadline: Option<Instant>,
    access: AccessLog,
    next_id: u64,
    now: Instant,
}

impl Worker {
    /// A worker over `sockets` (one per configured listener, in order, already bound and,
    /// for TCP, listening; non-blocking) that takes commands from `commands` and writes its
    /// access-log lines to `access`. The caller makes the
    /// waker on `poll`'s registry with [`WAKER`].
    ///
    /// # Errors
    /// When a socket cannot be registered with `poll`.
    pub fn new(
        id: usize,
        poll: Poll,
        shared: Arc<Shared>,
        sockets: Vec<Bound>,
        commands: Receiver<Command>,
        access: AccessLog,
    ) -> io::Result<Worker> {
        let mut listeners = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            listeners.push(ListenerSlot::register(&poll, i, socket)?);
        }
        let batch = udp_batch_size(&shared).map(Batch::new);
        let pickers = shared.groups.iter().map(Picker::new).collect();
        Ok(Worker {
            id,
            poll,
            shared,
            listeners,
            table: ConnTable::default(),
            sessions: SessionTable::default(),
            batch,
            pickers,
            timers: Timers::default(),
            pool: BufferPool::default(),
            ready: VecDeque::new(),
            starved: false,
            reserve: Some(reserve_descriptor()?),
            commands,
            stop_deadline: None,
            access,
            next_id: 0,
            now: Instant::now(),
        })
    }

    /// Runs the event loop until a [`Command::Stop`] has been handled and every connection has
    /// finished (or `shutdown_timeout` has passed).
    ///
    /// # Errors
    /// When polling fails for a reason other than an interrupted call.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            for event in events.iter() {
                match Slot::of(event.token()) {
                    Slot::Waker => self.handle_commands(),
                    Slot::Listener(i) => self.handle_listener(i),
                    Slot::Front(key) => self.handle_front_event(key, event),
                    Slot::Back(key) => self.handle_back_event(key, event),
                    Slot::Session(key) => self.handle_session_event(key),
                }
            }
            self.run_ready();
            self.run_timers();
            self.expire_sessions();
            self.resume_listeners();
            self.access.flush();
            if let Some(deadline) = self.stop_deadline {
                if self.table.is_empty() && self.sessions.is_empty() {
                    log::debug!("worker {}: every connection finished", self.id);
                    self.access.flush();
                    return Ok(());
                }
                if self.now >= deadline {
                    log::warn!(
                        "worker {}: shutdown_timeout passed; closing {} open connections",
                        self.id,
                        self.table.len()
                    );
                    for key in self.table.keys() {
                        self.close(key, "shutdown timeout");
                    }
                    self.access.flush();
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut next = self.timers.next();
        if let Some(t) = self.sessions.next_deadline() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for slot in &self.listeners {
            if let Some(t) = slot.paused_until {
                consider(t);
            }
            if slot.full {
                consider(self.now + FULL_RECHECK);
            }
        }
        if let Some(t) = self.stop_deadline {
            consider(t);
        }
        next.map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn handle_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Stop(closed)) => {
                    self.begin_stop();
                    let _ = closed.send(self.id);
                }
                Ok(Command::Snapshot { limit, reply }) => {
                    let _ = reply.send(self.snapshot(limit));
                }
                Ok(Command::CloseTarget { group, target }) => self.close_target(group, target),
                Ok(Command::Reload { shared, sockets }) => self.reload(shared, sockets),
                Err(TryRecvError::Empty) => return,
                // The main thread is gone: nobody can stop us any more, so stop now.
                Err(TryRecvError::Disconnected) => {
                    self.begin_stop();
                    return;
                }
            }
        }
    }

    fn reload(&mut self, shared: Arc<Shared>, sockets: Vec<(usize, Bound)>) {
        for (index, socket) in sockets {
            if self.stop_deadline.is_some() {
                break; // stopping: new listeners would only be closed again
            }
            match ListenerSlot::register(&self.poll, index, socket) {
                Ok(slot) => {
                    while self.listeners.len() <= index {
                        self.listeners.push(ListenerSlot::closed());
                    }
                    self.listeners[index] = slot;
                }
                Err(e) => log::error!(
                    "worker {}: cannot register listener {}: {e}",
                    self.id,
                    shared.listeners[index].config.name
                ),
            }
        }
        let mut closed = Vec::new();
        for (i, state) in shared.listeners.iter().enumerate() {
            if state.removed && self.listeners.get(i).is_some_and(|s| s.socket.is_some()) {
                self.listeners[i].close(&self.poll);
                closed.push(i);
            }
        }
        self.end_sessions_where(|s| closed.contains(&s.listener), "listener removed");
        let want = udp_batch_size(&shared);
        if want.is_some_and(|w| self.batch.as_ref().is_none_or(|b| b.capacity() < w)) {
            self.batch = want.map(Batch::new);
        }
        self.pickers = shared.groups.iter().map(Picker::new).collect();
        self.shared = shared;
        // New listeners may have clients waiting already; edge-triggered, so look now.
        for i in 0..self.listeners.len() {
            self.ready.push_back(Ready::Listener(i));
        }
    }

    fn close_target(&mut self, group: usize, target: usize) {
        let on_target = |g: usize, t: Option<usize>| g == group && t == Some(target);
        let keys: Vec<usize> = self
            .table
            .keys()
            .into_iter()
            .filter(|&k| {
                self.table
                    .get_mut(k)
                    .is_some_and(|c| on_target(c.group, c.target))
            })
            .collect();
        for key in keys {
            self.close(key, "disabled");
        }
        self.end_sessions_where(|s| on_target(s.group, Some(s.target)), "disabled");
    }

    fn snapshot(&mut self, limit: usize) -> Vec<ConnInfo> {
        let mut out = Vec::new();
        for key in self.table.keys().into_iter().take(limit) {
            let Some(conn) = self.table.get_mut(key) else {
                continue;
            };
            let target = conn
                .target
                .filter(|_| conn.state() == crate::tcp::State::Established)
                .map(|t| self.shared.groups[conn.group].targets[t].address);
            out.push(ConnInfo {
                protocol: Protocol::Tcp,
                client: conn.tuple.client,
                listener: self.shared.listeners[conn.listener].config.name.clone(),
                local: conn.tuple.listener,
                target,
                age: self.now.saturating_duration_since(conn.started),
                bytes_up: conn.up.bytes,
                bytes_down: conn.down.bytes,
            });
        }
        let left = limit.saturating_sub(out.len());
        for s in self.sessions.iter().take(left) {
            out.push(ConnInfo {
                protocol: Protocol::Udp,
                client: s.client,
                listener: self.shared.listeners[s.listener].config.name.clone(),
                local: udp::session_address(self.listeners[s.listener].local, s.reply_from),
                target: Some(self.shared.groups[s.group].targets[s.target].address),
                age: self.now.saturating_duration_since(s.started),
                bytes_up: s.up.bytes,
                bytes_down: s.down.bytes,
            });
        }
        out
    }

    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        for slot in &mut self.listeners {
            slot.close(&self.poll);
        }
        // Replies leave through the listener sockets, now closed: UDP sessions end here.
        self.end_all_sessions("stopping");
        let timeout = self.shared.config.shutdown_timeout;
        self.stop_deadline = Some(self.now + timeout);
        log::debug!(
            "worker {}: stopped accepting; {} open connections",
            self.id,
            self.table.len()
        );
    }

    fn run_ready(&mut self) {
        for _ in 0..self.ready.len() {
            match self.ready.pop_front() {
                Some(Ready::Listener(i)) => self.handle_listener(i),
                Some(Ready::Conn { key, id }) => {
                    if self.table.get_mut(key).is_some_and(|c| c.id == id) {
                        self.drive(key);
                    }
                }
                Some(Ready::Session { key, id }) => {
                    if self.sessions.get_mut(key).is_some_and(|s| s.id == id) {
                        self.handle_session_event(key);
                    }
                }
                None => break,
            }
        }
    }

    fn resume_listeners(&mut self) {
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
    /// Logs at most one line per [`ERROR_LOG_EVERY`], with the count of those not logged.
    fn pause_accepts(&mut self, i: usize, what: &str, e: &io::Error) {
        self.starved = true;
        let slot = &mut self.listeners[i];
        slot.paused_until = Some(self.now + ACCEPT_BACKOFF);
        if let Some(unlogged) = slot.accept_errors.allow(self.now) {
            log::warn!(
                "listener {}: {what}: {}; pausing accepts for {}ms ({unlogged} more such errors \
                 since the last report)",
                self.shared.listeners[i].config.name,
                crate::health::probe::describe(e),
                ACCEPT_BACKOFF.as_millis(),
            );
        }
    }

    /// A connection or session closed, freeing descriptors: listeners paused by
    /// [`Worker::pause_accepts`] accept again now rather than at the end of their pause.
    /// (Closes in other workers free descriptors too; the pause's end covers those.)
    fn descriptors_freed(&mut self) {
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
    fn handle_listener(&mut self, i: usize) {
        match self.listeners[i].socket {
            Some(ListenSocket::Tcp(_)) => self.accept(i),
            Some(ListenSocket::Udp(_)) => self.handle_datagrams(i),
            None => {}
        }
    }

    /// Accepts up to [`ACCEPT_BUDGET`] clients on listener `i`.
    fn accept(&mut self, i: usize) {
        let shared = self.shared.clone();
        let state = &shared.listeners[i];
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
            // Every target at its max_connections: leave the client in the backlog.
            if !shared.groups[state.config.target_group].has_room() {
                slot.full = true;
                return;
            }
            // Reserve a place first, so workers together never exceed max_connections.
            let before = state
                .active
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            if max.is_some_and(|m| before >= m) {
                state
                    .active
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                slot.full = true;
                return;
            }
            slot.full = false;
            match socket.accept() {
                Ok((stream, peer)) => {
                    state
                        .accepted
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.handle_accepted(i, stream, peer);
                }
                Err(e) => {
                    state
                        .active
                        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
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
