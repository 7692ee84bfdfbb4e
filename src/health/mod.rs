//! The prober: one thread that runs every target group's health checks on their own schedule.
//!
//! Each target has a slot: when its next check is due, the check's non-blocking state machine
//! ([`probe::Probe`]) and its deadline. One mio `Poll` drives every check in flight; the poll
//! timeout is the nearest due time or deadline. Results go through [`threshold::Thresholds`];
//! a transition flips the target's shared health atomic, which the workers read without a
//! lock. Unhealthy targets keep being checked, so they come back after `healthy_threshold`
//! passes.

mod agent;
mod outlier;
pub(crate) mod probe;
pub(crate) mod threshold;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::control::Control;
use crate::generation::Generation;
use crate::target::AdminState;
use probe::{Outcome, Probe};
use threshold::{Thresholds, Transition};

const PROBER_WAKER_TOKEN: Token = Token(usize::MAX);
/// Agent questions' tokens: this plus their slot's index (health checks' are the index).
const AGENT_TOKEN_BASE: usize = 1 << 40;

/// Whether every target of `group` still in it is unhealthy (the group fails open then).
fn all_down(group: &crate::target::TargetGroup) -> bool {
    group
        .targets
        .iter()
        .filter(|t| t.admin_state() != AdminState::Removed)
        .all(|t| !t.is_healthy())
}

/// Handle to the running prober thread.
#[derive(Debug)]
pub(crate) struct Prober {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Starts the prober thread for every target of every group of `control`'s current
    /// generation, following later generations (it registers its waker with `control`).
    ///
    /// # Errors
    /// When the poll or its waker cannot be created, or the thread cannot be spawned.
    pub(crate) fn start(control: Arc<Control>) -> io::Result<Prober> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), PROBER_WAKER_TOKEN)?);
        control.set_prober_waker(waker.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = ProberLoop::new(control, poll, stop.clone());
        let thread = std::thread::Builder::new()
            .name("ballast-prober".into())
            .spawn(move || state.run_supervised())?;
        Ok(Prober {
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One target's checking state.
struct ProbeSlot {
    group: usize,
    target: usize,
    /// Address checked: the target's, or its host with the check's `port`.
    address: SocketAddr,
    next_due: Instant,
    /// The check running: its probe, when it started, its deadline.
    in_flight: Option<(Probe, Instant, Instant)>,
    thresholds: Thresholds,
}

struct ProberLoop {
    control: Arc<Control>,
    /// The generation the slots were built for.
    generation: Arc<Generation>,
    poll: Poll,
    stop: Arc<AtomicBool>,
    slots: Vec<ProbeSlot>,
    /// Outlier detection's ejected targets and when they come back.
    ejections: outlier::Ejections,
    /// One per target of a group with `agent_check`.
    agents: Vec<agent::AgentSlot>,
}

impl ProberLoop {
    fn new(control: Arc<Control>, poll: Poll, stop: Arc<AtomicBool>) -> Self {
        let generation = control.generation();
        let mut prober = ProberLoop {
            control,
            generation: generation.clone(),
            poll,
            stop,
            slots: Vec::new(),
            ejections: outlier::Ejections::default(),
            agents: Vec::new(),
        };
        prober.resync(generation);
        prober
    }

    /// Rebuilds the slots for `generation`: a target checked before keeps its slot
    /// (schedule, check in flight, consecutive results); a new target is checked at once;
    /// removed targets and groups are no longer checked.
    fn resync(&mut self, generation: Arc<Generation>) {
        let now = Instant::now();
        let mut old: Vec<Option<ProbeSlot>> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(Some)
            .collect();
        for (gi, group) in generation.groups.iter().enumerate() {
            if group.removed {
                continue;
            }
            let hc = &group.config.health_check;
            for (ti, target) in group.targets.iter().enumerate() {
                if target.admin_state() == AdminState::Removed {
                    continue;
                }
                let mut address = target.address;
                if let Some(port) = hc.port {
                    address.set_port(port);
                }
                let kept = take_kept(&mut old, (gi, ti, address), |s: &ProbeSlot| {
                    (s.group, s.target, s.address)
                });
                let thresholds = Thresholds::new(hc.healthy_threshold, hc.unhealthy_threshold);
                self.slots.push(match kept {
                    Some(slot) => ProbeSlot {
                        thresholds: thresholds.starting(slot.thresholds.is_healthy()),
                        ..slot
                    },
                    None => ProbeSlot {
                        group: gi,
                        target: ti,
                        address,
                        // First checks at once, so a dead target is found within its
                        // thresholds and a new one is taken in as soon as it passes.
                        next_due: now,
                        in_flight: None,
                        thresholds: thresholds.starting(target.is_healthy()),
                    },
                });
            }
        }
        // Checks of targets no longer checked are dropped; those kept get their new token.
        for slot in old.into_iter().flatten() {
            if let Some((mut probe, _, _)) = slot.in_flight {
                let _ = self.poll.registry().deregister(probe.source());
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some((probe, _, _)) = slot.in_flight.as_mut() {
                let _ = self.poll.registry().reregister(
                    probe.source(),
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                );
            }
        }
        self.resync_agents(&generation);
        self.generation = generation;
    }

    /// Rebuilds the agent slots for `generation`, as [`ProberLoop::resync`] does the checks'.
    fn resync_agents(&mut self, generation: &Generation) {
        let now = Instant::now();
        let mut old: Vec<Option<agent::AgentSlot>> = std::mem::take(&mut self.agents)
            .into_iter()
            .map(Some)
            .collect();
        for (gi, group) in generation.groups.iter().enumerate() {
            let Some(check) = group.config.agent_check.as_ref().filter(|_| !group.removed) else {
                self.forget_agents(gi, group);
                continue;
            };
            for (ti, target) in group.targets.iter().enumerate() {
                if target.admin_state() == AdminState::Removed {
                    continue;
                }
                let mut address = target.address;
                address.set_port(check.port);
                let kept = take_kept(&mut old, (gi, ti, address), |s: &agent::AgentSlot| {
                    (s.group, s.target, s.address)
                });
                self.agents.push(kept.unwrap_or(agent::AgentSlot {
                    group: gi,
                    target: ti,
                    address,
                    next_due: now,
                    in_flight: None,
                    malformed_logged: false,
                }));
            }
        }
        for slot in old.into_iter().flatten() {
            if let Some((mut probe, _)) = slot.in_flight {
                let _ = self.poll.registry().deregister(probe.source());
            }
        }
        for (i, slot) in self.agents.iter_mut().enumerate() {
            if let Some((probe, _)) = slot.in_flight.as_mut() {
                let _ = self.poll.registry().reregister(
                    probe.source(),
                    Token(AGENT_TOKEN_BASE + i),
                    Interest::READABLE | Interest::WRITABLE,
                );
            }
        }
    }

    /// Group `gi` has no `agent_check` (any more): what its targets' agents last said no
    /// longer counts. A drain or `maint` ends, a weight percentage goes back to 100, and a
    /// target an agent held `down` is as healthy as its check says (or healthy without one).
    fn forget_agents(&self, gi: usize, group: &crate::target::TargetGroup) {
        for (ti, target) in group.targets.iter().enumerate() {
            if let Ok(mut record) = target.agent_record.lock() {
                *record = None;
            }
            if group.set_agent_mode(ti, crate::target::AgentMode::Ready) {
                log::info!(
                    "target group {}: {}: agent_check removed; what its agent said (drain or \
                     maint) no longer counts",
                    group.name(),
                    target.address
                );
            }
            // The weights of this generation were built without the agent's percentage.
            target.set_agent_percent(100);
            if target.set_agent_down(false) && !group.removed {
                self.control
                    .set_healthy(gi, ti, self.check_says_healthy(gi, ti));
            }
        }
    }

    /// Whether target `ti` of group `gi` is healthy by its active check alone (healthy when
    /// it has none).
    fn check_says_healthy(&self, gi: usize, ti: usize) -> bool {
        self.slots
            .iter()
            .find(|s| (s.group, s.target) == (gi, ti))
            .is_none_or(|s| s.thresholds.is_healthy())
    }

    /// Runs the loop; a panic in it is caught, counted and logged, and the loop starts again
    /// with fresh slots (checks in flight are dropped; target health stays as it was and the
    /// next checks go on from there), so health states never silently freeze.
    fn run_supervised(&mut self) {
        loop {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
            if outcome.is_ok() {
                return;
            }
            self.control
                .restarts()
                .prober
                .fetch_add(1, Ordering::Relaxed);
            log::error!("the prober panicked; restarting it with fresh checks");
            self.slots.clear();
            self.agents.clear();
            let generation = self.control.generation();
            self.resync(generation.clone());
            self.generation = generation;
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Acquire) {
            self.control.faults().check_prober();
            let current = self.control.generation();
            if current.generation != self.generation.generation {
                self.resync(current);
            }
            let now = Instant::now();
            self.start_due(now);
            self.expire(now);
            self.ask_agents(now);
            let sweep = self.ejections.sweep(&self.generation, &self.control, now);
            let agents = self
                .agents
                .iter()
                .map(|s| s.in_flight.as_ref().map_or(s.next_due, |(_, d)| *d));
            let timeout = self
                .slots
                .iter()
                .map(|s| s.in_flight.as_ref().map_or(s.next_due, |(_, _, d)| *d))
                .chain(agents)
                .min()
                .map(|t| t.saturating_duration_since(now));
            let timeout = match (timeout, sweep) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("health prober: poll failed: {e}; checks paused for 1s");
                    std::thread::sleep(Duration::from_secs(1));
                }
                continue;
            }
            for event in events.iter() {
                let i = event.token().0;
                if i == PROBER_WAKER_TOKEN.0 {
                    continue;
                }
                if let Some(a) = i.checked_sub(AGENT_TOKEN_BASE) {
                    let answer = match self.agents.get_mut(a).and_then(|s| s.in_flight.as_mut()) {
                        Some((probe, _)) => probe.handle_event(event),
                        None => None,
                    };
                    if let Some(answer) = answer {
                        self.agent_answered(a, answer);
                    }
                    continue;
                }
                if i >= self.slots.len() {
                    continue;
                }
                let outcome = match self.slots[i].in_flight.as_mut() {
                    Some((probe, _, _)) => probe.handle_event(event),
                    None => None,
                };
                if let Some(outcome) = outcome {
                    self.finish(i, outcome);
                }
            }
        }
    }

    fn start_due(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.in_flight.is_some() || slot.next_due > now {
                continue;
            }
            let group = &self.generation.groups[slot.group].config;
            let (hc, group_tls) = (&group.health_check, group.target_tls.as_ref());
            // Keep the schedule on its grid, but never fire a backlog of missed checks.
            slot.next_due += hc.interval;
            if slot.next_due <= now {
                slot.next_due = now + hc.interval;
            }
            let started = Probe::start(slot.address, &hc.kind, hc.proxy_protocol, group_tls)
                .and_then(|mut p| {
                    self.poll.registry().register(
                        p.source(),
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    Ok(p)
                });
            match started {
                Ok(p) => slot.in_flight = Some((p, now, now + hc.timeout)),
                Err(e) => self.finish(i, Outcome::Fail(crate::net::describe(&e))),
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if matches!(&self.slots[i].in_flight, Some((_, _, deadline)) if *deadline <= now) {
                let timeout = self.generation.groups[self.slots[i].group]
                    .config
                    .health_check
                    .timeout;
                let waiting = match &self.slots[i].in_flight {
                    Some((probe, _, _)) => probe.waiting_for(),
                    None => None,
                };
                let reason = match waiting {
                    Some(w) => format!(
                        "timed out after {} {w}",
                        humantime::format_duration(timeout)
                    ),
                    None => format!("timed out after {}", humantime::format_duration(timeout)),
                };
                self.finish(i, Outcome::Fail(reason));
            }
        }
    }

    fn finish(&mut self, i: usize, outcome: Outcome) {
        let slot = &mut self.slots[i];
        let started = match slot.in_flight.take() {
            Some((mut probe, started, _)) => {
                let _ = self.poll.registry().deregister(probe.source());
                started
            }
            None => Instant::now(), // the check could not even start
        };
        let group = &self.generation.groups[slot.group];
        let address = group.targets[slot.target].address;
        let passed = outcome == Outcome::Pass;
        // A reason may quote the target's own bytes (a status line, an answer): control
        // characters are escaped and the length bounded before it reaches logs, terminals
        // (`ballast targets`) and the API.
        let outcome = match outcome {
            Outcome::Fail(reason) => Outcome::Fail(printable(&reason)),
            pass => pass,
        };
        let failure = match &outcome {
            Outcome::Pass => None,
            Outcome::Fail(reason) => Some(reason.as_str()),
        };
        group.targets[slot.target]
            .checks
            .record(failure, started.elapsed());
        log::debug!(
            "target group {}: check of {address} ({}): {outcome:?}",
            group.name(),
            slot.address
        );
        let Some(transition) = slot.thresholds.record(passed) else {
            return;
        };
        let all_down_before = all_down(group);
        // An agent that says `down` keeps the target out whatever its check says.
        let agent_down = group.targets[slot.target].agent_down();
        self.control.set_healthy(
            slot.group,
            slot.target,
            slot.thresholds.is_healthy() && !agent_down,
        );
        match (transition, &outcome) {
            (Transition::BecameUnhealthy { failures }, Outcome::Fail(reason)) => log::info!(
                "target group {}: {address} is now unhealthy after {failures} failed checks: {reason}",
                group.name()
            ),
            (Transition::BecameHealthy { passes }, _) => log::info!(
                "target group {}: {address} is now healthy after {passes} passed checks",
                group.name()
            ),
            (Transition::BecameUnhealthy { failures }, Outcome::Pass) => {
                debug_assert!(false, "a pass cannot make a target unhealthy");
                log::info!(
                    "target group {}: {address} is now unhealthy after {failures} failed checks",
                    group.name()
                )
            }
        }
        fail_open_changed(group, all_down_before);
    }
}

/// Logs `group` starting or ending to fail open, given whether every target was down before
/// the change just made (a check's verdict or an agent's `down`/`up`).
fn fail_open_changed(group: &crate::target::TargetGroup, all_down_before: bool) {
    let all_down = all_down(group);
    if all_down && !all_down_before {
        log::warn!(
            "target group {}: every target is unhealthy; failing open (sending to all {} targets)",
            group.name(),
            group.targets.len()
        );
    } else if all_down_before && !all_down {
        log::info!(
            "target group {}: a healthy target is back; no longer failing open",
            group.name()
        );
    }
}

/// Takes out of `old` the slot whose `(group, target, address)` (by `key_of`) is `key`: a
/// target checked before keeps its slot across a new generation.
fn take_kept<T>(
    old: &mut [Option<T>],
    key: (usize, usize, SocketAddr),
    key_of: impl Fn(&T) -> (usize, usize, SocketAddr),
) -> Option<T> {
    old.iter_mut()
        .find(|s| s.as_ref().is_some_and(|s| key_of(s) == key))
        .and_then(Option::take)
}

/// The longest failure reason kept, in characters.
const MAX_REASON: usize = 200;

/// `reason` safe to print: control characters escaped (`\u{1b}`, `\r`), at most
/// [`MAX_REASON`] characters (then `…`).
fn printable(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MAX_REASON + 3));
    for (i, c) in reason.chars().enumerate() {
        if i == MAX_REASON {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn reasons_from_targets_cannot_drive_a_terminal() {
        assert_eq!(
            super::printable("bad HTTP status line `\u{1b}[31mpass\r\u{7}`"),
            "bad HTTP status line `\\u{1b}[31mpass\\r\\u{7}`"
        );
        let long = super::printable(&"x".repeat(5000));
        assert_eq!(long.chars().count(), super::MAX_REASON + 1);
    }
}
