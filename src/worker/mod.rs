//! A worker: one thread, one mio `Poll`, its own SO_REUSEPORT listening sockets and its own
//! connection table. Nothing on this path takes a lock.
//!
//! Token plan (see [`TokenSlot`]): `0` is the waker, `1..=MAX_LISTENERS` the listeners, and from
//! [`CONN_BASE`] on three tokens per slab key `k`: `CONN_BASE + 3k` for the client side and
//! `CONN_BASE + 3k + 1` for the target side of TCP connection `k`, and `CONN_BASE + 3k + 2`
//! for the upstream socket of UDP session `k` (sessions have their own table and keys). These
//! fill the token's low [`TAG_SHIFT`] bits; the bits above hold a *tag*, a number the worker
//! gives each socket it registers ([`Tag`]), kept beside the socket.
//!
//! Why tags: slab keys are reused at once, and one `poll` batch can hold an event for a socket
//! that an earlier event of the same batch closed (edge-triggered epoll keeps reporting
//! RDHUP/ERR). Had the key been handed to a new client meanwhile, that stale event would be
//! applied to it: a short read taken as EOF, a connecting target taken as established. An event
//! whose tag is not its socket's current tag is dropped. (Freeing keys only after the batch, as
//! sozu does, would do as well but holds every closed entry until the batch ends; tokio packs a
//! generation into its tokens the same way.) Tags wrap after 2^24 registrations, far more than
//! one batch (1,024 events) can span.
//!
//! Every drain loop is capped (accepts per wake, bytes per direction per wake); work left over
//! goes on a ready queue that the next loop turn runs before sleeping, because with
//! edge-triggered readiness no new event would come for it.
// The data path: nothing reachable from network input may panic (lib.rs's "Lint policy";
// integration/layers.rs checks the block). Unit tests may unwrap. Indexing stays allowed here: the indices are the worker's own
// (listener, group and target indices of a generation, which later generations only extend;
// slot keys of its tables), never taken from the network; `tcp/` and `udp/`, which parse what
// arrives, deny unchecked indexing too.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

mod connect;
mod kernel;
mod listen;
mod routed;
mod tcp;
mod udp;

use listen::{reserve_descriptor, ListenSocket, ListenerSlot, FULL_RECHECK};

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::UdpSocket;
use mio::{Events, Poll, Token};

use crate::access_log::AccessLog;
use crate::balancer::Picker;
use crate::bind::Bound;
use crate::config::Protocol;
use crate::conntrack::ConnTable;
use crate::generation::Generation;
use crate::steering::Steering;
use crate::tcp::pump::BufferPool;
use crate::tcp::Connection;
use crate::timers::Timers;
use crate::udp::batch::Batch;
use crate::udp::session::SessionTable;

/// The waker's token.
pub(crate) const WAKER_TOKEN: Token = Token(0);
/// Most listeners one worker serves.
pub(crate) const MAX_LISTENERS: usize = 1 << 16;
/// First connection token.
pub(crate) const CONN_BASE: usize = 1 << 20;

/// Bytes per direction per wake before yielding to other connections.
const PUMP_BUDGET: usize = 512 * 1024;
/// How often a worker with connections in a group's queue looks for room freed by another
/// worker (room freed by its own connections is seen in the same turn of its loop).
const QUEUE_RECHECK: Duration = Duration::from_millis(1);
/// Interest in both sockets of a connection: PRIORITY too, so urgent data is noticed (reads
/// stop short at the urgent mark, see `Readiness::urgent`).
const CONN_INTEREST: mio::Interest = mio::Interest::READABLE
    .add(mio::Interest::WRITABLE)
    .add(mio::Interest::PRIORITY);
/// Bits of a token below its tag.
pub(crate) const TAG_SHIFT: u32 = 40;
/// Mask of a tag's bits (24: the rest of a 64-bit token).
pub(crate) const TAG_MASK: u32 = (1 << 24) - 1;
const _: () = assert!(usize::BITS == 64, "the token plan needs 64-bit tokens");

/// The number a worker gives a socket when it registers it, carried in the socket's tokens:
/// an event whose tag differs from the socket's current one is stale (see the module docs).
pub(crate) type Tag = u32;

/// The tag of a UDP session's upstream socket: the low bits of the session's id, unique per
/// worker.
fn session_tag(id: u64) -> Tag {
    id as Tag & TAG_MASK
}

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSlot {
    /// The worker's waker (messages are waiting).
    Waker,
    /// Listener index.
    Listener(usize),
    /// Client side of the connection with this slab key, and the socket's tag.
    Front(usize, Tag),
    /// Target side of the connection with this slab key, and the socket's tag.
    Back(usize, Tag),
    /// Upstream socket of the UDP session with this key, and the socket's tag.
    Session(usize, Tag),
}

impl TokenSlot {
    /// The slot a token stands for.
    pub(crate) fn of(token: Token) -> TokenSlot {
        let tag = (token.0 >> TAG_SHIFT) as Tag & TAG_MASK;
        match token.0 & ((1 << TAG_SHIFT) - 1) {
            0 => TokenSlot::Waker,
            t if t < CONN_BASE => TokenSlot::Listener(t - 1),
            t => match (t - CONN_BASE) % 3 {
                0 => TokenSlot::Front((t - CONN_BASE) / 3, tag),
                1 => TokenSlot::Back((t - CONN_BASE) / 3, tag),
                _ => TokenSlot::Session((t - CONN_BASE) / 3, tag),
            },
        }
    }

    /// The token for this slot.
    pub(crate) fn token(self) -> Token {
        let tagged = |k: usize, side: usize, tag: Tag| {
            debug_assert!(
                CONN_BASE + 3 * k + side < 1 << TAG_SHIFT,
                "slab key {k} too large"
            );
            (((tag & TAG_MASK) as usize) << TAG_SHIFT) | (CONN_BASE + 3 * k + side)
        };
        Token(match self {
            TokenSlot::Waker => 0,
            TokenSlot::Listener(i) => 1 + i,
            TokenSlot::Front(k, tag) => tagged(k, 0, tag),
            TokenSlot::Back(k, tag) => tagged(k, 1, tag),
            TokenSlot::Session(k, tag) => tagged(k, 2, tag),
        })
    }
}

/// A command from the main or admin thread.
#[derive(Debug)]
pub enum Message {
    /// Stop accepting, let open connections finish up to `shutdown_timeout`, then exit. The
    /// worker sends its id on the channel once its listening sockets are closed.
    Stop(crossbeam_channel::Sender<usize>),
    /// Reset every TCP connection to target `target` of group `group`, and end its UDP
    /// sessions when `sessions` (a disabled target's drain_timeout has passed: `disabled`;
    /// a target marked unhealthy in a group with `on_unhealthy: close`: `target_unhealthy`,
    /// connections only). `reason` goes to the access log.
    CloseTarget {
        /// Group index.
        group: usize,
        /// Target index in the group.
        target: usize,
        /// Whether UDP sessions end too.
        sessions: bool,
        /// The access log's reason.
        reason: &'static str,
    },
    /// Switch to the next generation of the configuration: `sockets` are this worker's
    /// sockets for the listeners it adds (by listener index); listeners marked removed close
    /// (their TCP connections go on; their UDP sessions end, as replies leave through the
    /// listener's socket).
    Reload {
        /// The new generation.
        generation: Arc<Generation>,
        /// `(listener index, socket)` for each new listener.
        sockets: Vec<(usize, Bound)>,
    },
    /// Close every listening socket and end every UDP session (a node drain's grace is
    /// over); TCP connections go on; then say so on the channel (the node is drained once
    /// every worker has, so an enable that follows binds addresses nobody holds). A `Reload`
    /// with sockets opens listeners again.
    CloseListeners(crossbeam_channel::Sender<()>),
    /// Send a duplicate of each of this worker's listening sockets, by listener index (a
    /// handover to a new process: the sockets, and their backlogs, outlive this process).
    ShareSockets(crossbeam_channel::Sender<Vec<(usize, std::os::fd::OwnedFd)>>),
    /// Put the TCP listening sockets back into their steering arrays (a handover that took
    /// them out failed); answers once done.
    JoinSteering(crossbeam_channel::Sender<()>),
    /// Panic now (tests of the supervision; ignored unless `fault::Faults::ENABLED`).
    Panic,
    /// End the TCP connection (reset on both sides) or UDP session with this id, and say on
    /// `reply` whether there was one.
    CloseConnection {
        /// The connection's or session's id (unique within the worker).
        id: u64,
        /// Whether it was found.
        reply: crossbeam_channel::Sender<bool>,
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
    /// Unique within its worker for the worker's life (the admin API's id is
    /// `{worker}.{id}`).
    pub id: u64,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// The client's address: as a PROXY header declared it (as the access log has it), else
    /// the peer's.
    pub client: SocketAddr,
    /// The address the connection came from (the client, or the proxy in front that sent a
    /// PROXY header): the client side of the 5-tuple.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: String,
    /// The address the client connected or sent to (the listener side of the 5-tuple; on a
    /// wildcard listener, the host address the client used).
    pub local: SocketAddr,
    /// The target, once one is connected (TCP) or chosen (UDP).
    pub target: Option<SocketAddr>,
    /// Where the connection is in its life (`preamble`, `connecting`, `established`,
    /// `closing`); `session` for a UDP session.
    pub stage: String,
    /// Since accept or the flow's first datagram.
    pub age: Duration,
    /// Bytes client → target.
    pub bytes_up: u64,
    /// Bytes target → client.
    pub bytes_down: u64,
    /// The worker whose table holds it (for UDP, the kernel's SO_REUSEPORT hash of the
    /// flow's 4-tuple chose it).
    pub worker: usize,
}

/// How another thread reaches a worker: its command channel and the waker of its poll.
#[derive(Debug, Clone)]
pub struct WorkerLink {
    /// Commands to the worker.
    pub messages: crossbeam_channel::Sender<Message>,
    /// Wakes the worker's poll so it reads its messages.
    pub waker: Arc<mio::Waker>,
}

impl WorkerLink {
    /// Sends `command` and wakes the worker; false when the worker is gone.
    pub fn send(&self, message: Message) -> bool {
        self.messages.send(message).is_ok() && self.waker.wake().is_ok()
    }
}

/// Work that must run again without waiting for an event.
#[derive(Debug, Clone, Copy)]
enum Ready {
    Listener(usize),
    Conn { key: usize, id: u64 },
    Session { key: usize, id: u64 },
}

/// The largest `udp.batch` of `generation`'s UDP listeners (the size of a worker's datagram
/// buffers); `None` without UDP listeners.
fn udp_batch_size(generation: &Generation) -> Option<usize> {
    generation
        .listeners
        .iter()
        .filter(|l| !l.removed)
        .filter_map(|l| l.config.udp.as_ref().map(|u| u.batch))
        .max()
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("connections", &self.table.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// The event loop of one worker thread.
pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    generation: Arc<Generation>,
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
    messages: Receiver<Message>,
    stop_deadline: Option<Instant>,
    access: AccessLog,
    next_id: u64,
    /// The tag for the next socket registered (see [`Tag`]).
    next_tag: Tag,
    now: Instant,
    /// Where this worker publishes its load (see [`crate::steering`]).
    steering: Arc<Steering>,
    /// The connection count last published.
    published: usize,
    /// Per target group (by index): connections waiting in its `queue:`, in arrival order
    /// (`(key, id)`; entries of connections that stopped waiting are dropped lazily).
    queues: Vec<VecDeque<(usize, u64)>>,
    /// `forwarding: sockmap`: the maps, the joined connections, the sweep.
    kernel: kernel::Kernel,
}

impl Worker {
    /// A worker over `sockets` (`(listener index, socket)` for each listener of `generation` it
    /// serves, already bound and, for TCP, listening; non-blocking) that takes messages from
    /// `messages` and writes its access-log lines to `access`. The caller makes the waker on
    /// `poll`'s registry with [`WAKER_TOKEN`].
    ///
    /// # Errors
    /// When a socket cannot be registered with `poll`.
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        generation: Arc<Generation>,
        sockets: Vec<(usize, Bound)>,
        messages: Receiver<Message>,
        access: AccessLog,
        steering: Arc<Steering>,
    ) -> io::Result<Worker> {
        let mut listeners: Vec<ListenerSlot> = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets {
            while listeners.len() < i {
                listeners.push(ListenerSlot::closed());
            }
            listeners.push(ListenerSlot::register(&poll, i, socket, (&steering, id))?);
        }
        while listeners.len() < generation.listeners.len() {
            listeners.push(ListenerSlot::closed());
        }
        // `forwarding: sockmap`: the maps are made now, so a kernel that refuses them is
        // said at start, not at the first connection.
        let mut kernel = kernel::Kernel::default();
        if let Some(l) = generation
            .listeners
            .iter()
            .find(|l| l.config.forwarding == crate::config::Forwarding::Sockmap)
        {
            let _ = kernel.prepare(id, &l.config.name);
        }
        let batch = udp_batch_size(&generation).map(Batch::new);
        let pickers = generation.groups.iter().map(Picker::new).collect();
        // Tests of the long life start the wrapping counters just short of their wrap.
        let first_tag = crate::fault::near_wrap().map_or(0, |n| TAG_MASK - n.min(TAG_MASK));
        Ok(Worker {
            id,
            poll,
            generation,
            listeners,
            table: ConnTable::default(),
            sessions: SessionTable::with_ids_after(first_tag.into()),
            batch,
            pickers,
            timers: Timers::default(),
            pool: BufferPool::default(),
            ready: VecDeque::new(),
            starved: false,
            reserve: Some(reserve_descriptor()?),
            messages,
            stop_deadline: None,
            access,
            next_id: 0,
            next_tag: first_tag,
            now: Instant::now(),
            steering,
            published: 0,
            queues: Vec::new(),
            kernel,
        })
    }

    /// Runs the event loop until a [`Message::Stop`] has been handled and every connection has
    /// finished (or `shutdown_timeout` has passed).
    ///
    /// # Errors
    /// When polling fails for a reason other than an interrupted call.
    pub(crate) fn run(&mut self) -> io::Result<()> {
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
                match TokenSlot::of(event.token()) {
                    TokenSlot::Waker => self.handle_messages(),
                    TokenSlot::Listener(i) => self.handle_listener(i),
                    TokenSlot::Front(key, tag) => self.handle_front_event(key, tag, event),
                    TokenSlot::Back(key, tag) => self.handle_back_event(key, tag, event),
                    TokenSlot::Session(key, tag) => {
                        if self
                            .sessions
                            .get_mut(key)
                            .is_some_and(|s| session_tag(s.id) == tag)
                        {
                            self.handle_session_event(key);
                        }
                    }
                }
            }
            self.run_ready();
            self.serve_queues();
            self.run_timers();
            self.sweep_kernel();
            self.expire_sessions();
            self.resume_listeners();
            self.access.flush();
            if self.table.len() != self.published {
                self.published = self.table.len();
                self.steering.publish(self.id, self.published);
            }
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
                        self.close(key, "shutdown timeout", crate::tcp::Reset::BOTH);
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
        if let Some(t) = self.kernel.next_sweep() {
            consider(t);
        }
        // A place freed on another worker wakes no one here: look again soon.
        if self.queues.iter().any(|q| !q.is_empty()) {
            consider(self.now + QUEUE_RECHECK);
        }
        next.map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn handle_messages(&mut self) {
        loop {
            match self.messages.try_recv() {
                Ok(Message::Stop(closed)) => {
                    self.begin_stop();
                    let _ = closed.send(self.id);
                }
                Ok(Message::Snapshot { limit, reply }) => {
                    let _ = reply.send(self.snapshot(limit));
                }
                Ok(Message::CloseConnection { id, reply }) => {
                    let _ = reply.send(self.close_by_id(id));
                }
                Ok(Message::CloseTarget {
                    group,
                    target,
                    sessions,
                    reason,
                }) => self.close_target(group, target, sessions, reason),
                Ok(Message::Panic) => {
                    if crate::fault::Faults::ENABLED {
                        crate::fault::injected_panic(&format!("worker {}", self.id));
                    }
                }
                Ok(Message::Reload {
                    generation,
                    sockets,
                }) => self.reload(generation, sockets),
                Ok(Message::CloseListeners(done)) => {
                    if let Some(pause) = crate::fault::slow_close() {
                        std::thread::sleep(pause); // a busy worker (tests only)
                    }
                    self.close_listeners("node_drained");
                    let _ = done.send(());
                }
                Ok(Message::ShareSockets(reply)) => {
                    let _ = reply.send(self.share_sockets());
                }
                Ok(Message::JoinSteering(reply)) => {
                    self.join_steering();
                    let _ = reply.send(());
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

    fn reload(&mut self, generation: Arc<Generation>, sockets: Vec<(usize, Bound)>) {
        for (index, socket) in sockets {
            if self.stop_deadline.is_some() {
                break; // stopping: new listeners would only be closed again
            }
            match ListenerSlot::register(&self.poll, index, socket, (&self.steering, self.id)) {
                Ok(slot) => {
                    while self.listeners.len() <= index {
                        self.listeners.push(ListenerSlot::closed());
                    }
                    self.listeners[index] = slot;
                }
                Err(e) => log::error!(
                    "worker {}: cannot register listener {}: {e}",
                    self.id,
                    generation.listeners[index].config.name
                ),
            }
        }
        let mut closed = Vec::new();
        for (i, state) in generation.listeners.iter().enumerate() {
            if state.removed && self.listeners.get(i).is_some_and(|s| s.socket.is_some()) {
                self.listeners[i].close(&self.poll);
                closed.push(i);
            }
        }
        self.end_sessions_where(|s| closed.contains(&s.listener), "listener removed");
        let want = udp_batch_size(&generation);
        if want.is_some_and(|w| self.batch.as_ref().is_none_or(|b| b.capacity() < w)) {
            self.batch = want.map(Batch::new);
        }
        self.pickers = generation.groups.iter().map(Picker::new).collect();
        self.generation = generation;
        self.release_removed_queues();
        // New listeners may have clients waiting already; edge-triggered, so look now.
        for i in 0..self.listeners.len() {
            self.ready.push_back(Ready::Listener(i));
        }
    }

    fn close_target(&mut self, group: usize, target: usize, sessions: bool, reason: &str) {
        let on_target = |g: usize, t: Option<usize>| g == group && t == Some(target);
        let keys: Vec<usize> = self
            .table
            .keys()
            .into_iter()
            .filter(|&k| {
                self.table
                    .get_mut(k)
                    .is_some_and(|c| on_target(c.group, c.target()))
            })
            .collect();
        for key in keys {
            self.close(key, reason, crate::tcp::Reset::BOTH);
        }
        if sessions {
            self.end_sessions_where(|s| on_target(s.group, Some(s.target)), reason);
        }
    }

    /// Ends the connection or session `id` (an operator's request); whether there was one.
    fn close_by_id(&mut self, id: u64) -> bool {
        let key = self
            .table
            .keys()
            .into_iter()
            .find(|&k| self.table.get_mut(k).is_some_and(|c| c.id == id));
        if let Some(key) = key {
            self.close(key, "admin_closed", crate::tcp::Reset::BOTH);
            return true;
        }
        self.end_sessions_where(|s| s.id == id, "admin_closed") > 0
    }

    fn snapshot(&mut self, limit: usize) -> Vec<ConnInfo> {
        let mut out = Vec::new();
        for key in self.table.keys().into_iter().take(limit) {
            let Some(conn) = self.table.get_mut(key) else {
                continue;
            };
            let target = conn
                .reached()
                .map(|t| self.generation.groups[conn.group].targets[t].address);
            let (bytes_up, bytes_down) = conn.bytes();
            out.push(ConnInfo {
                id: conn.id,
                protocol: Protocol::Tcp,
                client: conn.client(),
                peer: conn.tuple.client,
                listener: self.generation.listeners[conn.listener].config.name.clone(),
                local: conn.tuple.listener,
                target,
                stage: conn.stage.to_string(),
                age: self.now.saturating_duration_since(conn.started),
                bytes_up,
                bytes_down,
                worker: self.id,
            });
        }
        let left = limit.saturating_sub(out.len());
        for s in self.sessions.iter().take(left) {
            out.push(ConnInfo {
                id: s.id,
                protocol: Protocol::Udp,
                client: s.tuple.client,
                peer: s.tuple.client,
                listener: self.generation.listeners[s.listener].config.name.clone(),
                local: udp::session_address(self.listeners[s.listener].local, s.reply_from),
                target: Some(self.generation.groups[s.group].targets[s.target].address),
                stage: "session".to_string(),
                age: self.now.saturating_duration_since(s.started),
                bytes_up: s.up.bytes,
                bytes_down: s.down.bytes,
                worker: self.id,
            });
        }
        out
    }

    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.close_listeners("stopping");
        let timeout = self.generation.config.shutdown_timeout;
        self.stop_deadline = Some(self.now + timeout);
        log::debug!(
            "worker {}: stopped accepting; {} open connections",
            self.id,
            self.table.len()
        );
    }

    /// Closes every listening socket; UDP sessions end with them (their replies leave
    /// through the listeners' sockets), logged with `reason`.
    fn close_listeners(&mut self, reason: &str) {
        for slot in &mut self.listeners {
            slot.close(&self.poll);
        }
        self.end_all_sessions(reason);
    }

    /// A duplicate of each open listening socket, by listener index (`dup(2)`: the same
    /// socket, with its backlog, under a second descriptor). A socket that cannot be
    /// duplicated (EMFILE) is left out and logged; the taker binds a fresh one then.
    fn share_sockets(&self) -> Vec<(usize, std::os::fd::OwnedFd)> {
        use std::os::fd::AsFd;
        let mut out = Vec::new();
        for (i, slot) in self.listeners.iter().enumerate() {
            let fd = match &slot.socket {
                Some(ListenSocket::Tcp(s)) => s.as_fd().try_clone_to_owned(),
                Some(ListenSocket::Udp(s)) => s.as_fd().try_clone_to_owned(),
                None => continue,
            };
            match fd {
                Ok(fd) => out.push((i, fd)),
                Err(e) => log::error!("worker {}: cannot share listener {i}: {e}", self.id),
            }
        }
        out
    }

    /// Puts each TCP listening socket back into its listener's steering array.
    fn join_steering(&self) {
        use std::os::fd::AsRawFd;
        for slot in &self.listeners {
            if let Some(ListenSocket::Tcp(s)) = &slot.socket {
                if let Ok(local) = s.local_addr() {
                    self.steering.join(self.id, local, s.as_raw_fd());
                }
            }
        }
    }

    /// After this worker's loop ended in a panic or a poll error: resets every connection and
    /// ends every session through the usual close paths, which give back the shared counts
    /// it held (active connections per listener and target), so `least_connections` and
    /// `max_connections` stay true; flushes the access log. The listening sockets close when
    /// the worker is dropped; the other workers' go on accepting.
    pub(crate) fn abandon(&mut self) {
        let keys = self.table.keys();
        log::error!(
            "worker {}: resetting {} connections and ending {} sessions",
            self.id,
            keys.len(),
            self.sessions.len()
        );
        self.now = Instant::now();
        for key in keys {
            self.close(key, "worker_restart", crate::tcp::Reset::BOTH);
        }
        self.end_all_sessions("worker_restart");
        // Its sockets close with it, and the SYNs steered to them with them: publish an empty
        // worker at once (the replacement publishes only on a change from 0, so a stale count
        // left here would keep steering every new connection away from it).
        self.published = 0;
        self.steering.accept_queue_empty(self.id, 0);
        self.access.flush();
    }

    /// A fresh tag for a socket about to be registered.
    ///
    /// Tags wrap at [`TAG_MASK`], not at `u32::MAX`: a token carries only the low 24 bits, and
    /// the event handlers compare the tag from the token with the one stored beside the
    /// socket, so a stored tag above the mask would never match and every event of that
    /// socket would be dropped as stale (a worker stopped serving after 2^23 connections).
    fn new_tag(&mut self) -> Tag {
        self.next_tag = self.next_tag.wrapping_add(1) & TAG_MASK;
        self.next_tag
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
}
