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
}

impl Default for Node {
    fn default() -> Node {
        Node {
            state: Mutex::new((Service::Serving, 0)),
            workers_down: AtomicUsize::new(0),
        }
    }
}

impl Node {
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
    /// is. Ready means: serving (not draining, drained or stopping), every worker running,
    /// and every listener whose `readiness` is `healthy_target` has at least one target that
    /// is healthy and in service in its group (a backup counts; the
    /// fail-open of [`crate::target::TargetGroup::eligible`] does not). Listeners with `readiness: listening` need
    /// only be open, which they are whenever the node is serving.
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
        for l in generation.listeners.iter().filter(|l| !l.removed) {
            if l.config.readiness != Readiness::HealthyTarget {
                continue;
            }
            let group = &generation.groups[l.config.target_group];
            // Not `eligible`, which fails open to every target when none is healthy.
            let health = group.health();
            let any = (0..health.len()).any(|i| health[i] && group.targets[i].in_service());
            if !any {
                reasons.push(format!(
                    "listener {}: target group {} has no healthy target in service",
                    l.config.name,
                    group.name()
                ));
            }
        }
        reasons
    }
}

/// How long a drain keeps accepting: `grace`, or none.
pub(crate) fn draining_until(grace: Duration) -> Service {
    Service::Draining {
        until: Instant::now() + grace,
    }
}
