//! The node's own service state, for whatever puts it in front of clients (a VRRP VIP moved by
//! keepalived, a BGP route announced by BIRD, a DNS record): serving, draining (still
//! accepting, `/healthz` already failing, so the VIP or route moves away first), drained (not
//! accepting), and whether it is ready to serve at all ([`Node::readiness`]).
//!
//! The control plane ([`crate::control::Control`]) drives the transitions; this module only
//! keeps the state and judges readiness, so both stay in one place.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Readiness;
use crate::generation::Generation;

/// Where the node is in a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Accepting, and ready when [`Node::readiness`] finds nothing wrong.
    Serving,
    /// `/healthz` fails; listeners still accept until the grace ends (clients that arrive by
    /// old routes are served).
    Draining {
        /// When the grace ends and listeners close.
        until: Instant,
    },
    /// Listeners closed; open connections finish. `ballast node enable` opens them again.
    Drained,
    /// The process is stopping (SIGTERM, SIGINT, or a handover to a new process).
    Stopping,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Serving => "serving",
            Service::Draining { .. } => "draining",
            Service::Drained => "drained",
            Service::Stopping => "stopping",
        })
    }
}

/// The node's service state and the liveness of its workers.
#[derive(Debug)]
pub(crate) struct Node {
    /// The state, and a count of transitions so a grace timer can tell it is stale.
    state: Mutex<(Service, u64)>,
    /// Workers whose thread has ended in a crash and is not yet replaced.
    workers_down: AtomicUsize,
    /// When the process started serving (the status page's uptime).
    started: Instant,
}

impl Default for Node {
    fn default() -> Node {
        Node {
            state: Mutex::new((Service::Serving, 0)),
            workers_down: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }
}

impl Node {
    /// How long since the process started serving.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The current state and its transition number.
    pub(crate) fn service(&self) -> (Service, u64) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `next` if the state is still at transition `epoch` (`None`: whatever it is);
    /// returns the new transition number, or `None` when it had moved on meanwhile.
    pub(crate) fn set(&self, next: Service, epoch: Option<u64>) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if epoch.is_some_and(|e| e != state.1) || state.0 == Service::Stopping {
            return None;
        }
        *state = (next, state.1 + 1);
        Some(state.1)
    }

    /// Marks the process as stopping: ends any drain, and nothing moves it back.
    pub(crate) fn stopping(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = (Service::Stopping, state.1 + 1);
    }

    /// Whether the listeners are open (serving or draining).
    pub(crate) fn accepting(&self) -> bool {
        matches!(
            self.service().0,
            Service::Serving | Service::Draining { .. }
        )
    }

    /// A worker's thread ended in a crash (called on that thread as it ends).
    pub(crate) fn worker_down(&self) {
        self.workers_down.fetch_add(1, Ordering::AcqRel);
    }

    /// A crashed worker was replaced.
    pub(crate) fn worker_up(&self) {
        let _ = self
            .workers_down
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Why the node is not ready to serve (`GET /healthz`, `ballast health`); empty when it
    /// is. Ready means: serving (not draining, drained or stopping; a serving node's
    /// listeners are bound), every worker running, and the targets as each listener's
    /// [`Readiness`] asks: for `node` listeners (the default), at least one healthy target in
    /// service among all their groups' targets in service; for a `healthy_target` listener,
    /// one in its own group. A target is healthy here when the prober says so (the fail-open
    /// of [`crate::target::TargetGroup::eligible`] does not count); targets drained or
    /// disabled by an operator count neither way, so a group emptied by a drain is no fault.
    pub(crate) fn readiness(&self, generation: &Generation) -> Vec<String> {
        let mut reasons = Vec::new();
        match self.service().0 {
            Service::Serving => {}
            Service::Draining { until } => reasons.push(format!(
                "node draining: listeners close in {} ms (`ballast node enable` undoes it)",
                until.saturating_duration_since(Instant::now()).as_millis()
            )),
            Service::Drained => {
                reasons.push("node drained: not accepting (`ballast node enable`)".into())
            }
            Service::Stopping => reasons.push("stopping".into()),
        }
        let down = self.workers_down.load(Ordering::Acquire);
        if down > 0 {
            reasons.push(format!("{down} worker(s) restarting after a crash"));
        }
        // Groups of `node` listeners with targets in service: (group index, any healthy).
        let mut reach: Vec<(usize, bool)> = Vec::new();
        for l in generation.listeners.iter().filter(|l| !l.removed) {
            // Its default group, and the groups its SNI and PostgreSQL routes lead to.
            for (i, g) in l.config.route_groups().enumerate() {
                let Some(healthy) = in_service_healthy(&generation.groups[g]) else {
                    continue; // nothing in service: drained by an operator, or empty
                };
                match l.config.readiness {
                    Readiness::Listening => {}
                    // The opt-in is about the listener's own (default) group.
                    Readiness::HealthyTarget if i == 0 && !healthy => reasons.push(format!(
                        "listener {}: target group {} has no healthy target in service",
                        l.config.name,
                        generation.groups[g].name()
                    )),
                    Readiness::HealthyTarget => {}
                    Readiness::Node if !reach.iter().any(|&(seen, _)| seen == g) => {
                        reach.push((g, healthy))
                    }
                    Readiness::Node => {}
                }
            }
        }
        if !reach.is_empty() && reach.iter().all(|&(_, healthy)| !healthy) {
            let names: Vec<&str> = reach
                .iter()
                .map(|&(g, _)| generation.groups[g].name())
                .collect();
            reasons.push(format!(
                "no target reachable from this node: every target in service is unhealthy \
                 (target groups {})",
                names.join(", ")
            ));
        }
        reasons
    }
}

/// Whether `group` has a healthy target in service; `None` when it has none in service.
fn in_service_healthy(group: &crate::target::TargetGroup) -> Option<bool> {
    let health = group.health();
    let mut any = None;
    for (i, target) in group.targets.iter().enumerate() {
        if target.in_service() {
            let healthy = health.get(i).copied().unwrap_or(false);
            any = Some(any.unwrap_or(false) || healthy);
        }
    }
    any
}

/// How long a drain keeps accepting: `grace`, or none.
pub(crate) fn draining_until(grace: Duration) -> Service {
    Service::Draining {
        until: Instant::now() + grace,
    }
}
