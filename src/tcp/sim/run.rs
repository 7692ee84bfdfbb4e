//! One seeded run: the connection, its two peers, the simulated network and clock, and the
//! worker's part (carrying out actions, timers, events) played as the worker plays it.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::net::{Connect, Rng, SimSocket, Wire};
use super::peer::Peer;
use crate::config::{Forwarding, Protocol};
use crate::conntrack::FiveTuple;
use crate::tcp::preamble::SSL_REQUEST;
use crate::tcp::pump::{BufferPool, Endpoint};
use crate::tcp::target_preamble::{TargetHello, TargetStep};
use crate::tcp::{Action, Attempts, Connection, Reset, Stage, Timeouts};

/// A step of the trace printed with a failure.
#[derive(Debug, Clone, Copy)]
#[allow(
    dead_code,
    reason = "the fields are read by Debug, for the failure report"
)]
pub(super) enum Step {
    /// The client (true) or the target sent up to this offset (or its end).
    Sent(bool, usize),
    /// A drive moved this many bytes up and down.
    Moved(usize, usize),
    /// A timer fired and the connection answered.
    Timer(Action),
    /// The connection closed.
    Close(Reset, &'static str),
    /// The target's preamble: over (true), or not yet or failed.
    Target(bool),
    /// A connect to this target started, to end so.
    Connect(usize, Connect),
    /// The attempt in flight failed; what next.
    Failed(Action),
    /// The connection reached its target.
    Established,
}

/// What a run went through, so the test can tell that its seeds reach every path.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    pub(super) gave_up: usize,
    pub(super) established_after_failure: usize,
    pub(super) connect_timeout: usize,
    pub(super) client_gone_early: usize,
    pub(super) closing: usize,
    pub(super) idle_close: usize,
    pub(super) urgent_with_splice: usize,
    pub(super) clean_both_ways: usize,
    pub(super) target_refused: usize,
}

impl Seen {
    pub(super) fn add(&mut self, o: Seen) {
        self.gave_up += o.gave_up;
        self.established_after_failure += o.established_after_failure;
        self.connect_timeout += o.connect_timeout;
        self.client_gone_early += o.client_gone_early;
        self.closing += o.closing;
        self.idle_close += o.idle_close;
        self.urgent_with_splice += o.urgent_with_splice;
        self.clean_both_ways += o.clean_both_ways;
        self.target_refused += o.target_refused;
    }

    /// The paths a default run of seeds must reach, with how often each was reached.
    pub(super) fn paths(&self) -> [(&'static str, usize); 9] {
        [
            ("gave up", self.gave_up),
            (
                "established after a failed connect",
                self.established_after_failure,
            ),
            ("connect timeout", self.connect_timeout),
            ("client gone while connecting", self.client_gone_early),
            ("closing", self.closing),
            ("idle close", self.idle_close),
            ("urgent bytes with splice", self.urgent_with_splice),
            ("clean both ways", self.clean_both_ways),
            ("a target refusing the SSLRequest", self.target_refused),
        ]
    }
}

/// One seeded run.
pub(super) struct Run {
    pub(super) seen: Seen,
    pub(super) seed: u64,
    pub(super) rng: Rng,
    pub(super) now: Instant,
    pub(super) start: Instant,
    pub(super) timeouts: Timeouts,
    pub(super) budget: usize,
    pub(super) pool: BufferPool,
    pub(super) conn: Option<Connection<SimSocket>>,
    pub(super) timers: BinaryHeap<Reverse<Instant>>,
    pub(super) again: bool,
    pub(super) client: Peer,
    pub(super) target: Peer,
    pub(super) forwarding: Forwarding,
    /// `retries` of the listener.
    pub(super) retries: u32,
    /// How a connect to each target of the group ends (the target peer answers the first
    /// one that connects).
    pub(super) fates: Vec<Connect>,
    /// Every socket Ballast opened to a target, to check they are all closed at the end.
    pub(super) attempts: Vec<Rc<RefCell<Wire>>>,
    /// The target socket of the attempt in flight, or of the flow.
    pub(super) back_wire: Option<Rc<RefCell<Wire>>>,
    /// The connection reached its target.
    pub(super) established: bool,
    /// A `postgres_starttls` run: the target's answer to the SSLRequest.
    pub(super) postgres: Option<u8>,
    /// The target has answered it.
    pub(super) answered: bool,
    /// Why the connection closed, once it has.
    pub(super) closed: Option<(Reset, &'static str)>,
    /// It closed because a `Closing` linger ran out (bytes may have been dropped by design).
    pub(super) linger_ran_out: bool,
    /// A trace of the last steps, printed with a failure.
    pub(super) trace: std::collections::VecDeque<(Duration, Step)>,
}

impl Run {
    pub(super) fn new(seed: u64) -> Run {
        let mut rng = Rng::new(seed);
        let start = Instant::now();
        let mut client = Peer::new("client", &mut rng);
        let mut target = Peer::new("target", &mut rng);
        let forwarding = match rng.below(3) {
            0 => Forwarding::Buffered,
            1 => Forwarding::Splice,
            _ => Forwarding::Auto,
        };
        let timeouts = Timeouts {
            header: None,
            preamble: Duration::from_secs(5),
            startup: None,
            connect: Duration::from_secs(5),
            idle: Duration::from_millis(200 + rng.below(3000) as u64),
        };
        let budget = if rng.chance(30) {
            rng.upto(4096)
        } else {
            512 * 1024
        };
        let pool = BufferPool::default();
        let tuple = FiveTuple {
            protocol: Protocol::Tcp,
            client: SocketAddr::from(([10, 0, 0, 1], 40000)),
            listener: SocketAddr::from(([10, 0, 0, 2], 80)),
        };
        // Buffers of a few bytes make every read and write partial: keep those runs short.
        let smallest = [&client, &target]
            .iter()
            .map(|p| p.wire.borrow().smallest_buffer())
            .min()
            .unwrap_or(0);
        if smallest < 64 {
            for p in [&mut client, &mut target] {
                p.shorten(2048);
            }
        }
        // Half the runs go through the connect: targets that refuse, stay silent or accept,
        // `retries`, and bytes read in the preamble that go to the target first.
        let through_connect = rng.chance(50);
        let mut fates = vec![Connect::Open];
        let mut retries = 0;
        let mut first = Vec::new();
        let mut timeouts = timeouts;
        if through_connect {
            fates = (0..rng.upto(4))
                .map(|_| match rng.below(10) {
                    0..=3 => Connect::Open,
                    4..=6 => Connect::Refused,
                    _ => Connect::Silent,
                })
                .collect();
            retries = rng.below(4) as u32;
            timeouts.connect = Duration::from_millis(20 + rng.below(1000) as u64);
            if rng.chance(50) {
                first = (0..rng.upto(300)).map(|_| rng.next() as u8).collect();
            }
        }
        // Some runs are `postgres_starttls` without termination: a target that connects is
        // sent an SSLRequest first and answers `S` (on), or `N` (a refusal: the next target).
        let postgres = through_connect && rng.chance(20);
        let answer = if rng.chance(75) { b'S' } else { b'N' };
        let sent_first = match postgres {
            true => [&SSL_REQUEST[..], &first].concat(),
            false => first.clone(),
        };
        client.prepend(&sent_first);
        target.hold = postgres;
        target.wire.borrow_mut().connected = false;
        let front = Endpoint::new(SimSocket(client.wire.clone()), 1);
        let mut conn = Connection::new(1, 0, 0, tuple, front, start);
        conn.stage = Stage::Connecting(Box::new(Attempts::new(first, postgres)));
        conn.front.ready.readable = true;
        conn.front.ready.writable = true;
        let mut timers = BinaryHeap::new();
        timers.push(Reverse(start + timeouts.first()));
        let mut run = Run {
            seen: Seen::default(),
            seed,
            rng,
            now: start,
            start,
            timeouts,
            budget,
            pool,
            conn: Some(conn),
            timers,
            again: false,
            client,
            target,
            forwarding,
            retries,
            fates,
            attempts: Vec::new(),
            back_wire: None,
            established: false,
            closed: None,
            linger_ran_out: false,
            trace: std::collections::VecDeque::new(),
            postgres: postgres.then_some(answer),
            answered: false,
        };
        run.connect_next();
        if !through_connect {
            run.connected();
        }
        run
    }

    /// Starts a connect to a target not yet tried, as the worker does with the balancer's
    /// pick; gives up when none is left or `retries` are used up.
    pub(super) fn connect_next(&mut self) {
        let Some(a) = self.conn.as_mut().and_then(|c| c.attempts()) else {
            return;
        };
        let untried: Vec<usize> = (0..self.fates.len())
            .filter(|t| !a.tried.contains(t))
            .collect();
        if !a.may_try(self.retries) || untried.is_empty() {
            return self.act(Action::GiveUp);
        }
        let t = untried[self.rng.below(untried.len())];
        let target_free = !self.target.wire.borrow().ballast_closed
            && !self
                .attempts
                .iter()
                .any(|w| Rc::ptr_eq(w, &self.target.wire));
        let fate = match self.fates[t] {
            Connect::Open if !target_free => Connect::Refused,
            fate => fate,
        };
        let wire = if fate == Connect::Open {
            self.target.wire.clone()
        } else {
            Rc::new(RefCell::new(Wire::new("failed target", &mut self.rng)))
        };
        {
            let mut w = wire.borrow_mut();
            w.connect = fate;
            w.connected = fate == Connect::Open;
            match fate {
                Connect::Open => w.signal(|e| e.writable = true),
                Connect::Refused => w.signal(|e| {
                    e.writable = true;
                    e.error = true;
                    e.read_closed = true;
                    e.write_closed = true;
                }),
                Connect::Silent => {}
            }
        }
        self.note(Step::Connect(t, fate));
        self.attempts.push(wire.clone());
        self.back_wire = Some(wire.clone());
        let now = self.now;
        if let Some(conn) = self.conn.as_mut() {
            conn.connecting(t, Endpoint::new(SimSocket(wire), 2), None, now);
        }
    }

    /// The attempt in flight reached its target: on to the target's preamble (the
    /// SSLRequest), or established.
    pub(super) fn connected(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if self.postgres.is_some() {
            let step = conn.start_target_preamble(TargetHello::SslRequest);
            return self.target_step(step);
        }
        self.establish();
    }

    /// Where the target's preamble stands.
    fn target_step(&mut self, step: TargetStep) {
        self.note(Step::Target(matches!(step, TargetStep::Done)));
        match step {
            TargetStep::Wait => {}
            TargetStep::Done => self.establish(),
            TargetStep::Failed(why) | TargetStep::Declined(why) => {
                self.seen.target_refused += 1;
                self.connect_failed(why);
            }
        }
    }

    /// The attempt in flight (and its preamble) is over: established.
    fn establish(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let failed = conn.attempts_made() > 1;
        match conn.establish(self.forwarding, &mut self.pool, self.now) {
            Ok(()) => {
                self.established = true;
                self.seen.established_after_failure += usize::from(failed);
                self.note(Step::Established);
                self.drive();
            }
            Err(action) => self.act(action),
        }
    }

    /// The attempt in flight failed.
    pub(super) fn connect_failed(&mut self, why: String) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let (_, next) = conn.connect_failed(why, self.retries);
        self.note(Step::Failed(next));
        self.act(next);
    }

    pub(super) fn note(&mut self, what: Step) {
        if self.trace.len() == 60 {
            self.trace.pop_front();
        }
        self.trace.push_back((self.now - self.start, what));
    }

    pub(super) fn fail(&self, why: &str) -> ! {
        panic!(
            "simulation seed {} failed: {why}\n  replay: BALLAST_SIM_SEED={} cargo test --lib \
             tcp::sim -- --nocapture\n  last steps:\n    {}\n  client: sent {}/{} end {:?} \
             received {} eof {:?} reset {}\n  target: sent {}/{} end {:?} received {} eof {:?} \
             reset {}\n  closed: {:?}\n  wires:\n    {}\n    {}",
            self.seed,
            self.seed,
            self.trace
                .iter()
                .map(|(at, step)| format!("{at:>10?} {step:?}"))
                .collect::<Vec<_>>()
                .join("\n    "),
            self.client.sent,
            self.client.script.len(),
            self.client.end,
            self.client.received.len(),
            self.client.eof,
            self.client.reset_seen,
            self.target.sent,
            self.target.script.len(),
            self.target.end,
            self.target.received.len(),
            self.target.eof,
            self.target.reset_seen,
            self.closed,
            self.client.wire.borrow().summary(),
            self.target.wire.borrow().summary(),
        )
    }

    /// Carries out what the connection asked, as the worker does.
    pub(super) fn act(&mut self, action: Action) {
        match action {
            Action::Wait => {}
            Action::Again => self.again = true,
            Action::Schedule(at) => self.timers.push(Reverse(at)),
            Action::Close(reset, reason) => self.close(reset, reason),
            Action::Connect => self.connect_next(),
            Action::GiveUp => self.close(Reset::BOTH, "no target"),
            Action::Expired => self.fail("an action of a timer outside a timer"),
        }
    }

    /// Closes the connection as the worker's `remove` does.
    pub(super) fn close(&mut self, reset: Reset, reason: &'static str) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        self.note(Step::Close(reset, reason));
        self.seen.gave_up += usize::from(reason == "no target");
        self.seen.idle_close += usize::from(reason.starts_with("idle"));
        self.seen.closing += usize::from(matches!(conn.stage, Stage::Closing(..)));
        conn.release(reset, &mut self.pool);
        drop(conn);
        self.closed = Some((reset, reason));
    }

    /// Reports the readiness a wire gathered to the connection (one epoll event), then drives
    /// it, as the worker's event handlers do.
    pub(super) fn event(&mut self, front: bool) {
        let wire = if front {
            Some(self.client.wire.clone())
        } else {
            self.back_wire.clone()
        };
        let Some(wire) = wire else {
            return;
        };
        let ev = {
            let mut w = wire.borrow_mut();
            if !w.event_pending || w.ballast_closed {
                return;
            }
            w.event_pending = false;
            std::mem::take(&mut w.event)
        };
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let ready = if front {
            &mut conn.front.ready
        } else {
            match conn.back_mut() {
                Some(b) => &mut b.ready,
                None => return,
            }
        };
        ready.merge(ev.readiness());
        match (&conn.stage, front) {
            (Stage::Established(_), _) => self.drive(),
            (Stage::Connecting(_), true) if ev.error => {
                if let Some(action) = conn.client_gone_early() {
                    self.seen.client_gone_early += 1;
                    self.act(action);
                }
            }
            (Stage::Connecting(_), false) => match conn.connect_outcome(ev) {
                None => {}
                Some(Ok(())) => self.connected(),
                Some(Err(why)) => self.connect_failed(why),
            },
            (Stage::TargetPreamble(_), false) => {
                let step = conn.target_preamble_event();
                self.target_step(step);
            }
            _ => {}
        }
    }

    pub(super) fn drive(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let (moved, action) = conn.drive(&mut self.pool, self.budget, self.now, &self.timeouts);
        if moved.up + moved.down > 0 {
            self.note(Step::Moved(moved.up, moved.down));
        }
        self.act(action);
    }

    /// One step: a peer writes or reads, the network delivers, queued work runs, or time
    /// passes (never past the next timer).
    pub(super) fn step(&mut self) {
        match self.rng.below(8) {
            0 | 1 => self.send(true),
            2 | 3 => self.send(false),
            4 => {
                self.deliver();
            }
            5 => {
                self.read();
            }
            6 if self.again => {
                self.again = false;
                self.drive();
            }
            _ => self.tick(),
        }
        self.events();
    }

    /// Ballast hears of what changed on each socket (in a random order, as epoll reports
    /// them), then the invariants are checked.
    pub(super) fn events(&mut self) {
        let front_first = self.rng.chance(50);
        self.event(front_first);
        self.event(!front_first);
        self.notice_resets();
        self.check();
    }

    /// The client (or the target) sends what it can.
    pub(super) fn send(&mut self, client: bool) {
        let peer = if client {
            &mut self.client
        } else {
            &mut self.target
        };
        if peer.send(&mut self.rng) {
            let sent = peer.sent;
            self.note(Step::Sent(client, sent));
        }
    }

    /// The network carries a random amount toward both peers.
    pub(super) fn deliver(&mut self) -> bool {
        let max = self.rng.upto(64 * 1024);
        let a = self.client.wire.borrow_mut().deliver(max);
        let b = self.target.wire.borrow_mut().deliver(max);
        a || b
    }

    /// Both peers read what reached them, if they still read.
    pub(super) fn read(&mut self) -> bool {
        let a = self.client.read(&mut self.rng, self.target.state());
        let b = self.target.read(&mut self.rng, self.client.state());
        // A PostgreSQL target answers the SSLRequest once it has read it, before anything
        // of its own.
        if let Some(answer) = self.postgres.filter(|_| !self.answered) {
            if self.target.received.len() >= SSL_REQUEST.len() {
                self.answered = true;
                let mut w = self.target.wire.borrow_mut();
                if !w.ballast_closed {
                    w.to_ballast.push_back(answer);
                    w.signal(|e| e.readable = true);
                }
                self.target.hold = answer != b'S';
            }
        }
        a || b
    }

    /// Time passes: up to 20 ms, never past the next timer; due timers run; and in that time
    /// the network and both peers each make a move, so nothing stands still for longer than
    /// a tick unless something is stuck (or a peer stalls on purpose).
    pub(super) fn tick(&mut self) {
        if self.again {
            // The worker's poll does not sleep while a connection waits to be driven again.
            self.again = false;
            return self.drive();
        }
        let step = Duration::from_millis(self.rng.upto(20) as u64);
        let mut next = self.now + step;
        if let Some(Reverse(at)) = self.timers.peek() {
            next = next.min(*at);
        }
        self.now = next.max(self.now);
        while self
            .timers
            .peek()
            .is_some_and(|Reverse(at)| *at <= self.now)
        {
            self.timers.pop();
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            if let Stage::Closing(_, c) = &conn.stage {
                self.linger_ran_out = self.now >= c.until;
            }
            let action = conn.on_timer(self.now, &self.timeouts);
            self.note(Step::Timer(action));
            if action != Action::Expired {
                self.act(action);
                continue;
            }
            // A connect that took too long; then the entry goes no later than the idle
            // timeout from the next attempt's start (as the worker's `reschedule`).
            self.seen.connect_timeout += 1;
            self.connect_failed("timed out".into());
            let t = Timeouts {
                connect: self.timeouts.connect.min(self.timeouts.idle),
                ..self.timeouts
            };
            if let Some(at) = self.conn.as_ref().and_then(|c| c.deadline(&t)) {
                self.timers.push(Reverse(at));
            }
        }
        self.events();
        self.deliver();
        self.read();
        self.events();
        self.send(true);
        self.send(false);
    }

    /// A peer sees a reset once Ballast sent one on its wire.
    pub(super) fn notice_resets(&mut self) {
        for peer in [&mut self.client, &mut self.target] {
            if peer.wire.borrow().reset_by_ballast {
                peer.reset_seen = true;
            }
        }
    }

    pub(super) fn run(&mut self) -> Seen {
        let mut steps = 0u64;
        while self.conn.is_some() {
            self.step();
            steps += 1;
            if steps > 5_000_000 {
                self.fail("the connection never ended");
            }
        }
        // Closed: the network and the peers finish what is left.
        for _ in 0..100_000 {
            let delivered = self.deliver();
            let read = self.read();
            self.notice_resets();
            self.check();
            if !(delivered || read) {
                break;
            }
        }
        self.finish();
        let urgent = !self.client.urgent.is_empty() || !self.target.urgent.is_empty();
        let splice = self.forwarding != Forwarding::Buffered;
        self.seen.urgent_with_splice += usize::from(urgent && splice && self.established);
        let clean = self.client.eof.is_some() && self.target.eof.is_some();
        self.seen.clean_both_ways += usize::from(clean);
        self.seen
    }
}
