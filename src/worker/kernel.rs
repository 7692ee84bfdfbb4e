//! `forwarding: sockmap` in the worker: joining established connections to the worker's maps
//! ([`crate::sockmap`]), taking directions out of the kernel when their source ends or its
//! bytes stay with the worker ([`crate::tcp::kernel`] decides), and a sweep every
//! [`SWEEP`] that raises budgets, counts the kernel's bytes for the access log and the
//! target's counters, and notes activity for the idle timeout.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Worker;
use crate::config::Forwarding;
use crate::listener::SockmapOutcome;
use crate::sockmap::{has_input, received, taken, Sockmap};
use crate::tcp::kernel::{Dir, Gate, KernelPath, SWEEP, WINDOW};
use crate::tcp::{Action, Connection, Stage};
use crate::timers::Due;

/// Bytes a side may have sent that sit in the kernel's queue, out of every socket buffer,
/// before its connection is reset ([`Worker::kernel_overflow`]): well above a socket's
/// largest receive buffer (`tcp_rmem`'s 6 MiB) plus a budget window.
const OVERFLOW: u64 = 32 << 20;

/// Connections one worker's maps can hold (two sockets each); the next ones forward in user
/// space (`map_full`) until some end. About 6 MB of kernel memory per worker.
const PAIRS: usize = 16_384;

/// A worker's kernel path.
#[derive(Debug, Default)]
pub(super) struct Kernel {
    /// The maps and the program, once made (at the first connection that asks); why not, once
    /// that failed (logged then, not again).
    map: Option<Result<Sockmap, String>>,
    /// Joined connections, `(key, id)`; entries of those that ended leave at the next sweep.
    joined: Vec<(usize, u64)>,
    /// When the next sweep is due (`None` with nothing joined).
    next_sweep: Option<Instant>,
}

impl Kernel {
    /// Whether the maps could not be made (connections then forward as `auto`).
    pub(super) fn unavailable(&self) -> bool {
        matches!(self.map, Some(Err(_)))
    }

    /// The maps and the program, made at the first call (for a `sockmap` listener named
    /// `listener`, of worker `worker`); when the kernel refuses them, the warning is logged
    /// then, and every later call fails at once.
    pub(super) fn prepare(&mut self, worker: usize, listener: &str) -> Result<&mut Sockmap, ()> {
        let map = self.map.get_or_insert_with(|| {
            Sockmap::new(PAIRS).map_err(|e| {
                log::warn!(
                    "worker {worker}: forwarding: sockmap is unavailable ({e}); listener \
                     {listener} forwards in user space instead (it needs CAP_BPF, \
                     CAP_NET_ADMIN and CAP_PERFMON, and Linux >= 5.13 with \
                     CONFIG_BPF_STREAM_PARSER and BTF)"
                );
                e.to_string()
            })
        });
        map.as_mut().map_err(|_| ())
    }

    /// When the worker must wake for the next sweep.
    pub(super) fn next_sweep(&self) -> Option<Instant> {
        self.next_sweep
    }
}

impl Worker {
    /// After a drive that left connection `key` with nothing to do: on a `sockmap` listener,
    /// joins it to the maps if it is plain and quiet (nothing held, nothing unread reported,
    /// no side ended); a connection that cannot be joined is counted once and forwards in
    /// user space.
    pub(super) fn try_join(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let listener = &self.generation.listeners[conn.listener];
        if listener.config.forwarding != Forwarding::Sockmap {
            return;
        }
        let Stage::Established(flow) = &mut conn.stage else {
            return;
        };
        if flow.kernel_tried {
            return;
        }
        if self.kernel.unavailable() {
            flow.kernel_tried = true;
            return listener.sockmap_took(SockmapOutcome::Unavailable);
        }
        let front = &conn.front;
        let back = &flow.back;
        let plain = front.transport.can_splice()
            && back.transport.can_splice()
            && flow.postgres.as_ref().is_none_or(|w| w.done());
        if !plain {
            flow.kernel_tried = true;
            return listener.sockmap_took(SockmapOutcome::NotPlain);
        }
        let quiet = |e: &crate::tcp::pump::Endpoint| {
            !(e.aborted || e.ready.readable || e.ready.read_closed || e.ready.error)
        };
        let quiet = quiet(front)
            && quiet(back)
            && flow.up.pending() == 0
            && flow.down.pending() == 0
            && !(flow.up.eof || flow.down.eof || flow.up.done() || flow.down.done());
        if !quiet {
            return; // at a later drive
        }
        flow.kernel_tried = true;
        // Made at the worker's start, unless a reload brought the first sockmap listener.
        let Ok(map) = self.kernel.prepare(self.id, &listener.config.name) else {
            return listener.sockmap_took(SockmapOutcome::Unavailable);
        };
        // What each socket has given up so far (received, less what is still unread in it),
        // read before the join while its unread count is still the socket's own: the end of
        // a direction is checked against it (`Way::all_accounted`).
        let (Some(up), Some(down)) = (consumed(front), consumed(back)) else {
            flow.kernel_tried = false;
            return; // bytes arriving as it looked: at a later drive
        };
        match map.join(front.stream.as_raw_fd(), back.stream.as_raw_fd(), WINDOW) {
            Ok(pair) => {
                let mut k = KernelPath::new(pair);
                (k.up.consumed_at_join, k.up.bytes_at_join) = (up, flow.up.bytes);
                (k.down.consumed_at_join, k.down.bytes_at_join) = (down, flow.down.bytes);
                flow.kernel = Some(Box::new(k));
                self.kernel.joined.push((key, conn.id));
                self.kernel.next_sweep.get_or_insert(self.now + SWEEP);
                listener.sockmap_took(SockmapOutcome::Joined);
                log::trace!("{}: forwarded by the kernel", conn.tuple);
            }
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => {
                listener.sockmap_took(SockmapOutcome::MapFull);
            }
            Err(e) => {
                log::debug!("{}: sockmap refused the sockets: {e}", conn.tuple);
                listener.sockmap_took(SockmapOutcome::Refused);
            }
        }
    }

    /// Before a drive of a joined connection: a direction whose source reported its FIN, an
    /// error, or bytes kept in its own queue starts leaving the kernel (later bytes stay in
    /// that queue too); a leaving one becomes the pump's once the kernel's queue towards its
    /// destination is empty (or the destination is gone). While one waits, a recheck is
    /// scheduled (no event says when the queue empties).
    pub(super) fn settle(&mut self, key: usize) {
        let Some(Ok(map)) = &self.kernel.map else {
            return;
        };
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let id = conn.id;
        let Stage::Established(flow) = &mut conn.stage else {
            return;
        };
        if flow
            .kernel
            .as_deref()
            .is_some_and(|k| map.unsafe_to_forward(k.pair.a) || map.unsafe_to_forward(k.pair.b))
        {
            log::warn!(
                "{}: the kernel path could not tell which bytes of a segment had come before \
                 (a retransmission); reset rather than risk forwarding them twice",
                conn.tuple
            );
            return self.close(key, "kernel_overlap", crate::tcp::Reset::BOTH);
        }
        let Some(k) = flow.kernel.as_deref_mut() else {
            return;
        };
        let listener = &self.generation.listeners[conn.listener];
        let front = &mut conn.front;
        let back = &mut flow.back;
        for dir in Dir::BOTH {
            let slot = k.source_slot(dir);
            let (src, dst) = match dir {
                Dir::Up => (&mut *front, &*back),
                Dir::Down => (&mut *back, &*front),
            };
            let way = k.way_mut(dir);
            if way.gate == Gate::Kernel {
                let r = src.ready;
                let spent = map.diverted(slot);
                let kept = spent
                    || r.read_closed
                    || r.error
                    || dst.aborted
                    || (r.readable
                        && has_input(src.stream.as_raw_fd()).unwrap_or_else(|e| {
                            // A reset the peek took: kept here, passed on as one (a read
                            // would now find a clean end).
                            src.abort(&e);
                            true
                        }));
                if !kept {
                    src.ready.readable = false;
                    continue;
                }
                if spent {
                    listener.sockmap_diverted.fetch_add(1, Ordering::Relaxed);
                }
                // From here every segment the source receives stays in its queue, in order.
                map.divert(slot);
                way.verdicts_at_divert = map.verdicts_started(slot);
                way.gate = Gate::Leaving;
                way.left_at = Some(self.now);
                log::trace!(
                    "{}: {dir:?} leaves the kernel (budget spent: {spent}; {r:?})",
                    conn.tuple
                );
                // The program may be redirecting a segment as the slot is diverted (it read
                // the flag before): look at the queue only once that verdict has finished,
                // and after a recheck's wait.
                if !dst.aborted {
                    continue;
                }
            }
            let verdicts_done = map.verdicts_finished(slot) >= way.verdicts_at_divert;
            if way.gate == Gate::Leaving
                && (dst.aborted || (verdicts_done && way.settled_since_leaving(self.now)))
            {
                // A destination that reset or failed takes nothing more: what waits for it
                // is lost whatever the worker does, and its own error ends the direction.
                let drained = dst.aborted
                    || dst.ready.error
                    || match map.in_flight(&k.pair, dir == Dir::Up, dst.stream.as_raw_fd()) {
                        Ok(n) => {
                            k.way_mut(dir).in_flight = n;
                            n == 0
                        }
                        Err(_) => true,
                    };
                if drained {
                    log::trace!("{}: {dir:?} is the worker's", conn.tuple);
                    let way = k.way_mut(dir);
                    way.gate = Gate::User;
                    way.in_flight = 0;
                    src.ready.readable = true;
                    match dir {
                        Dir::Up => flow.up.hold_end = true,
                        Dir::Down => flow.down.hold_end = true,
                    }
                }
            }
        }
        if k.waiting() {
            if let Some(at) = k.next_recheck(self.now) {
                self.timers.schedule(at, Due { key, id });
            }
        } else if k.recheck.take().is_some() {
            // The rechecks may have used up the connection's timer entry: one for its idle
            // timeout again.
            let idle = super::tcp::timeouts(&listener.config).idle;
            let at = flow.last_active + flow.idle_limit(idle);
            self.timers.schedule(at, Due { key, id });
        }
    }

    /// After a drive of a joined connection: a direction whose source's read returned 0
    /// while its end is held (see `Half::hold_end`) ends now if every byte that source
    /// received is accounted for (redirected, or read); else the bytes the kernel still holds
    /// for it come first (a wake-up when they reach its queue, and a recheck meanwhile).
    /// True when an end was released: drive again.
    pub(super) fn release_ends(&mut self, key: usize) -> bool {
        // Without maps no end is held: no lookup on every drive of every connection.
        if self.kernel.map.is_none()
            || !self
                .table
                .get_mut(key)
                .and_then(|c| c.stage.flow())
                .is_some_and(|f| f.up.end_seen || f.down.end_seen)
        {
            return false;
        }
        self.count_kernel_bytes(key, false);
        let now = self.now;
        let Some(conn) = self.table.get_mut(key) else {
            return false;
        };
        let id = conn.id;
        let front = conn.front.stream.as_raw_fd();
        let Some(flow) = conn.stage.flow_mut() else {
            return false;
        };
        let back = flow.back.stream.as_raw_fd();
        let Some(k) = flow.kernel.as_deref_mut() else {
            return false;
        };
        let (mut released, mut waiting) = (false, false);
        for (way, half, src) in [
            (&k.up, &mut flow.up, front),
            (&k.down, &mut flow.down, back),
        ] {
            if !(half.hold_end && half.end_seen) {
                continue;
            }
            // A socket that cannot say (closed under it) has nothing more to give.
            let complete = received(src).map_or(true, |r| {
                way.all_accounted(r, half.bytes, half.pending() as u64)
            });
            if complete {
                (half.hold_end, half.end_seen, half.eof) = (false, false, true);
                released = true;
            } else {
                waiting = true;
            }
        }
        k.ends_waiting = waiting;
        if waiting {
            if let Some(at) = k.next_recheck(now) {
                self.timers.schedule(at, Due { key, id });
            }
        }
        released
    }

    /// A timer entry of connection `key` came due: true when it was a joined connection's
    /// recheck (handled here: a drive, which settles first), false for its own timer — whose decision
    /// then needs the kernel's byte counts and queues first (activity, what an idle close
    /// would cut), which this takes.
    pub(super) fn kernel_timer(&mut self, key: usize) -> bool {
        let now = self.now;
        let Some(conn) = self.table.get_mut(key) else {
            return false;
        };
        let established = matches!(conn.stage, Stage::Established(_));
        let Some(k) = conn.stage.flow_mut().and_then(|f| f.kernel.as_deref_mut()) else {
            return false;
        };
        if k.recheck.is_some_and(|(at, _)| at <= now) {
            if established {
                self.drive(key); // which settles first
                                 // Rechecks come every 200 ms at most while a direction leaves: the
                                 // connection's own deadline (its idle timeout) must not wait behind them.
                let own_due = self.table.get(key).is_some_and(|c| {
                    let t = super::tcp::timeouts(&self.generation.listeners[c.listener].config);
                    c.deadline(&t).is_some_and(|at| at <= now)
                });
                if !own_due {
                    return true;
                }
                self.count_kernel_bytes(key, true);
                return false;
            }
            // Closing: nothing settles any more, so a recheck would stay due and take every
            // later timer of the connection for itself — its closing wait and idle timeout
            // never ran, and a connection whose client reset mid-leave stayed open for good
            // (outside review). The connection's own timer decides from here.
            k.recheck = None;
        }
        self.count_kernel_bytes(key, true);
        false
    }

    /// Every [`SWEEP`]: counts the kernel's bytes of every joined connection and raises the
    /// budgets of directions whose destination took bytes; forgets connections that ended.
    pub(super) fn sweep_kernel(&mut self) {
        if self.kernel.next_sweep.is_none_or(|at| at > self.now) {
            return;
        }
        let mut joined = std::mem::take(&mut self.kernel.joined);
        joined.retain(|&(key, id)| {
            let live = self
                .table
                .get_mut(key)
                .is_some_and(|c| c.id == id && c.stage.flow().is_some_and(|f| f.kernel.is_some()));
            if live {
                self.count_kernel_bytes(key, false);
                if self.kernel_overflow(key) {
                    log::warn!(
                        "connection {key}: more than {} MiB a side sent is held in the \
                         kernel's queue, out of any socket buffer (a client pushing while \
                         not reading?): reset",
                        OVERFLOW >> 20
                    );
                    self.close(key, "kernel_overflow", crate::tcp::Reset::BOTH);
                    return false;
                }
            }
            live
        });
        self.kernel.next_sweep = (!joined.is_empty()).then(|| self.now + SWEEP);
        self.kernel.joined = joined;
    }

    /// Whether a direction of connection `key` that left the kernel has more than
    /// [`OVERFLOW`] bytes its source received and neither the program redirected nor the
    /// worker read: kept bytes queued behind the other direction's in the source socket's
    /// BPF queue, acknowledged by TCP and charged to no socket buffer — a client that pushes
    /// while not reading a slowly streamed answer grew it without bound (outside review).
    fn kernel_overflow(&mut self, key: usize) -> bool {
        let Some(conn) = self.table.get_mut(key) else {
            return false;
        };
        let front = conn.front.stream.as_raw_fd();
        let Some(flow) = conn.stage.flow_mut() else {
            return false;
        };
        let back = flow.back.stream.as_raw_fd();
        let Some(k) = flow.kernel.as_deref() else {
            return false;
        };
        [(&k.up, &flow.up, front), (&k.down, &flow.down, back)]
            .into_iter()
            .filter(|(way, ..)| way.gate != Gate::Kernel)
            .any(|(way, half, src)| {
                received(src)
                    .is_ok_and(|r| way.held(r, half.bytes, half.pending() as u64) > OVERFLOW)
            })
    }

    /// Counts what the kernel moved for connection `key` since the last count (the flow's
    /// byte counts, the target's counters, its activity); raises the budget of a direction
    /// still in the kernel once half of it is spent; with `queues`, also notes what each
    /// kernel direction still has queued towards its destination.
    fn count_kernel_bytes(&mut self, key: usize, queues: bool) {
        let Some(Ok(map)) = &self.kernel.map else {
            return;
        };
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let front = conn.front.stream.as_raw_fd();
        let group = &self.generation.groups[conn.group];
        let Some(flow) = conn.stage.flow_mut() else {
            return;
        };
        let Some(k) = flow.kernel.as_deref_mut() else {
            return;
        };
        let back = flow.back.stream.as_raw_fd();
        let trimmed = k.count_trimmed(map.trimmed(k.pair.a) + map.trimmed(k.pair.b));
        if trimmed > 0 {
            let listener = &self.generation.listeners[conn.listener];
            listener
                .sockmap_trimmed
                .fetch_add(trimmed, Ordering::Relaxed);
        }
        let redirected = [
            (Dir::Up, map.redirected(k.pair.a)),
            (Dir::Down, map.redirected(k.pair.b)),
        ];
        let (up, down) = (k.up.count(redirected[0].1), k.down.count(redirected[1].1));
        if up + down > 0 {
            flow.up.bytes += up;
            flow.down.bytes += down;
            flow.last_active = self.now;
            if let Some(t) = group.targets.get(flow.target) {
                t.bytes_to_target.fetch_add(up, Ordering::Relaxed);
                t.bytes_from_target.fetch_add(down, Ordering::Relaxed);
            }
        }
        for (dir, redirected) in redirected {
            let to = match dir {
                Dir::Up => back,
                Dir::Down => front,
            };
            let (slot, base) = (k.source_slot(dir), k.destination_base(dir));
            let way = k.way_mut(dir);
            if way.gate != Gate::Kernel || !(way.budget_low(redirected) || queues) {
                continue;
            }
            let Ok(since) = taken(to).map(|t| t.saturating_sub(base)) else {
                continue;
            };
            way.in_flight = redirected.saturating_sub(since);
            if let Some(budget) = way.raised_budget(redirected, since) {
                way.budget = budget;
                map.set_budget(slot, budget);
            }
        }
    }

    /// Takes connection `conn` (leaving the table) out of the maps, its last kernel bytes
    /// counted first.
    pub(super) fn unjoin(&mut self, conn: &mut Connection) {
        let Some(Ok(map)) = &mut self.kernel.map else {
            return;
        };
        let front = conn.front.stream.as_raw_fd();
        let Some(flow) = conn.stage.flow_mut() else {
            return;
        };
        let Some(k) = flow.kernel.take() else {
            return;
        };
        let mut k = *k;
        log::trace!(
            "{}: leaves the maps: redirected up {} down {} trimmed {} {}; front: {}; back: {}; ways {:?} {:?}",
            conn.tuple,
            map.redirected(k.pair.a),
            map.redirected(k.pair.b),
            map.trimmed(k.pair.a),
            map.trimmed(k.pair.b),
            crate::sockmap::describe(front),
            crate::sockmap::describe(flow.back.stream.as_raw_fd()),
            k.up,
            k.down
        );
        let listener = &self.generation.listeners[conn.listener];
        let trimmed = k.count_trimmed(map.trimmed(k.pair.a) + map.trimmed(k.pair.b));
        listener
            .sockmap_trimmed
            .fetch_add(trimmed, Ordering::Relaxed);
        let up = k.up.count(map.redirected(k.pair.a));
        let down = k.down.count(map.redirected(k.pair.b));
        flow.up.bytes += up;
        flow.down.bytes += down;
        if let Some(t) = self.generation.groups[conn.group].targets.get(flow.target) {
            t.bytes_to_target.fetch_add(up, Ordering::Relaxed);
            t.bytes_from_target.fetch_add(down, Ordering::Relaxed);
        }
        map.leave(front, flow.back.stream.as_raw_fd(), k.pair);
    }
}

/// Bytes socket `e` has given up to readers so far (`tcpi_bytes_received` less what is
/// unread), from a consistent look: `None` when bytes arrived while it looked, or it could not.
fn consumed(e: &crate::tcp::pump::Endpoint) -> Option<u64> {
    let fd = e.stream.as_raw_fd();
    let before = received(fd).ok()?;
    let unread = e.unread() as u64;
    (received(fd).ok()? == before).then(|| before.saturating_sub(unread))
}

/// Whether `action`, the end of a drive, leaves the connection waiting for events: the
/// moment to try a join.
pub(super) fn settled(action: &Action) -> bool {
    matches!(action, Action::Wait | Action::Schedule(_))
}
