//! A worker: one thread, one mio `Poll`, its own SO_REUSEPORT listening sockets and its own
//! connection table. Nothing on this path takes a lock.
//!
//! Token plan (see [`Slot`]): `0` is the waker, `1..=MAX_LISTENERS` the listeners, and from
//! [`CONN_BASE`] on two tokens per connection, `CONN_BASE + 2k` for the client side and
//! `CONN_BASE + 2k + 1` for the target side of the connection with slab key `k`.
//!
//! Every drain loop is capped (accepts per wake, bytes per direction per wake); work left over
//! goes on a ready queue that the next loop turn runs before sleeping, because with
//! edge-triggered readiness no new event would come for it.

mod tcp;
pub mod timers;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::balancer::{self, Balancer};
use crate::conntrack::ConnTable;
use crate::target::Shared;
use crate::tcp::pump::BufferPool;
use crate::tcp::Connection;
use timers::Timers;

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
}

impl Slot {
    /// The slot a token stands for.
    pub fn of(token: Token) -> Slot {
        match token.0 {
            0 => Slot::Waker,
            t if t < CONN_BASE => Slot::Listener(t - 1),
            t if (t - CONN_BASE).is_multiple_of(2) => Slot::Front((t - CONN_BASE) / 2),
            t => Slot::Back((t - CONN_BASE) / 2),
        }
    }

    /// The token for this slot.
    pub fn token(self) -> Token {
        Token(match self {
            Slot::Waker => 0,
            Slot::Listener(i) => 1 + i,
            Slot::Front(k) => CONN_BASE + 2 * k,
            Slot::Back(k) => CONN_BASE + 2 * k + 1,
        })
    }
}

/// A command from the main thread.
#[derive(Debug, Clone)]
pub enum Command {
    /// Stop accepting, let open connections finish up to `shutdown_timeout`, then exit. The
    /// worker sends its id on the channel once its listening sockets are closed.
    Stop(crossbeam_channel::Sender<usize>),
}

/// Work that must run again without waiting for an event.
#[derive(Debug, Clone, Copy)]
enum Ready {
    Listener(usize),
    Conn { key: usize, id: u64 },
}

/// One listener as this worker holds it.
#[derive(Debug)]
struct ListenerSlot {
    socket: Option<TcpListener>,
    local: SocketAddr,
    /// Accepting paused after a resource error, until then.
    paused_until: Option<Instant>,
    /// At `max_connections`: accept again when a connection closes.
    full: bool,
    /// When an accept error was last logged (at most one line per [`ERROR_LOG_EVERY`]).
    error_logged: Option<Instant>,
    /// Accept errors not logged since then.
    errors_unlogged: u64,
}

/// The event loop of one worker thread.
pub struct Worker {
    id: usize,
    poll: Poll,
    shared: Arc<Shared>,
    listeners: Vec<ListenerSlot>,
    table: ConnTable<Connection>,
    balancers: Vec<Box<dyn Balancer>>,
    timers: Timers,
    pool: BufferPool,
    ready: VecDeque<Ready>,
    commands: Receiver<Command>,
    stop_deadline: Option<Instant>,
    next_id: u64,
    now: Instant,
}

impl Worker {
    /// A worker over `sockets` (one per configured listener, in order, already bound and
    /// listening, non-blocking) that takes commands from `commands`. The caller makes the
    /// waker on `poll`'s registry with [`WAKER`].
    ///
    /// # Errors
    /// When a socket cannot be registered with `poll`.
    pub fn new(
        id: usize,
        poll: Poll,
        shared: Arc<Shared>,
        sockets: Vec<std::net::TcpListener>,
        commands: Receiver<Command>,
    ) -> io::Result<Worker> {
        let mut listeners = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let local = socket.local_addr()?;
            let mut socket = TcpListener::from_std(socket);
            poll.registry()
                .register(&mut socket, Slot::Listener(i).token(), Interest::READABLE)?;
            listeners.push(ListenerSlot {
                socket: Some(socket),
                local,
                paused_until: None,
                full: false,
                error_logged: None,
                errors_unlogged: 0,
            });
        }
        let balancers = shared
            .groups
            .iter()
            .map(|g| balancer::for_algorithm(g.config.algorithm))
            .collect();
        Ok(Worker {
            id,
            poll,
            shared,
            listeners,
            table: ConnTable::default(),
            balancers,
            timers: Timers::default(),
            pool: BufferPool::default(),
            ready: VecDeque::new(),
            commands,
            stop_deadline: None,
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
                    Slot::Listener(i) => self.accept(i),
                    Slot::Front(key) => self.handle_front_event(key, event),
                    Slot::Back(key) => self.handle_back_event(key, event),
                }
            }
            self.run_ready();
            self.run_timers();
            self.resume_listeners();
            if let Some(deadline) = self.stop_deadline {
                if self.table.is_empty() {
                    log::debug!("worker {}: every connection finished", self.id);
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
                Err(TryRecvError::Empty) => return,
                // The main thread is gone: nobody can stop us any more, so stop now.
                Err(TryRecvError::Disconnected) => {
                    self.begin_stop();
                    return;
                }
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        for slot in &mut self.listeners {
            if let Some(mut socket) = slot.socket.take() {
                let _ = self.poll.registry().deregister(&mut socket);
            }
            slot.full = false;
            slot.paused_until = None;
        }
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
                Some(Ready::Listener(i)) => self.accept(i),
                Some(Ready::Conn { key, id }) => {
                    if self.table.get_mut(key).is_some_and(|c| c.id == id) {
                        self.drive(key);
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
                self.accept(i);
            } else if slot.full {
                self.accept(i);
            }
        }
    }

    /// Accepts up to [`ACCEPT_BUDGET`] clients on listener `i`.
    fn accept(&mut self, i: usize) {
        let shared = self.shared.clone();
        let state = &shared.listeners[i];
        let max = state.config.max_connections;
        for _ in 0..ACCEPT_BUDGET {
            let slot = &mut self.listeners[i];
            let Some(socket) = slot.socket.as_ref() else {
                return;
            };
            if slot.paused_until.is_some() {
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
                            slot.paused_until = Some(self.now + ACCEPT_BACKOFF);
                            if slot
                                .error_logged
                                .is_some_and(|t| self.now.duration_since(t) < ERROR_LOG_EVERY)
                            {
                                slot.errors_unlogged += 1;
                            } else {
                                log::warn!(
                                    "listener {}: accept failed: {e}; pausing accepts for {}ms \
                                     ({} more accept errors since the last report)",
                                    state.config.name,
                                    ACCEPT_BACKOFF.as_millis(),
                                    slot.errors_unlogged
                                );
                                slot.error_logged = Some(self.now);
                                slot.errors_unlogged = 0;
                            }
                            return;
                        }
                    }
                }
            }
        }
        self.ready.push_back(Ready::Listener(i));
    }
}
