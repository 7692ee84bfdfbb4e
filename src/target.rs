//! Targets and target groups as the running process shares them between threads.
//!
//! Configuration is immutable; what changes at run time is small and lock-free: each target's
//! health (flipped by the prober), its active-connection count and traffic counters (updated by
//! the workers), and each group's round-robin position (shared by the workers so the split is
//! exact across them). Everything here is atomics in an `Arc`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::balancer::sticky::StickyTable;
use crate::balancer::table::LookupTable;
use crate::balancer::{maglev, source_hash};
use crate::config::{Algorithm, Config, ListenerConfig, TargetGroupConfig};

/// Run-time state of one target.
#[derive(Debug)]
pub struct Target {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share for weighted algorithms (≥ 1).
    pub weight: u32,
    /// Used only when no primary target is healthy.
    pub backup: bool,
    /// [`AdminState`] as a number: set through the admin API.
    admin_state: AtomicU8,
    /// Most open connections to this target across all workers.
    pub max_connections: Option<u64>,
    healthy: AtomicBool,
    /// When the target last turned healthy, in ms since the group's epoch; `u64::MAX` when it
    /// has been healthy since the start (no slow start then).
    healthy_since_ms: AtomicU64,
    /// Open connections (connecting or established) and UDP sessions to this target, across
    /// all workers.
    pub active: AtomicU64,
    /// Connections established to this target since start.
    pub total: AtomicU64,
    /// Connect attempts that failed (refused, unreachable, timed out).
    pub connect_failures: AtomicU64,
    /// Bytes sent from clients to this target.
    pub bytes_to_target: AtomicU64,
    /// Bytes sent from this target to clients.
    pub bytes_from_target: AtomicU64,
    /// Moving average of the target's response time in µs (0: no sample yet); see
    /// [`Target::record_response`].
    response_ewma_us: AtomicU64,
}

/// Whether a target takes new connections, as operators set it through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes new connections (when healthy).
    Active = 0,
    /// Takes no new connections or sessions; existing ones go on.
    Draining = 1,
    /// Drained, and what was still open after the group's `drain_timeout` was closed.
    Disabled = 2,
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        })
    }
}

/// Weight of a new sample in the response-time average.
const EWMA_ALPHA: f64 = 0.3;

impl Target {
    /// Folds one response time into the target's exponentially weighted moving average
    /// (α = 0.3). Concurrent updates from several workers may lose one another; an average
    /// does not mind.
    pub fn record_response(&self, sample: std::time::Duration) {
        let sample_us = (sample.as_micros() as u64).max(1);
        let old = self.response_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample_us
        } else {
            (old as f64 + EWMA_ALPHA * (sample_us as f64 - old as f64)).max(1.0) as u64
        };
        self.response_ewma_us.store(new, Ordering::Relaxed);
    }

    /// The moving average of response times in µs; 0 before the first sample.
    pub fn response_ewma_us(&self) -> u64 {
        self.response_ewma_us.load(Ordering::Relaxed)
    }

    /// Whether the target is at its `max_connections`.
    pub fn is_full(&self) -> bool {
        self.max_connections
            .is_some_and(|max| self.active.load(Ordering::Relaxed) >= max)
    }

    /// The target's admin state.
    pub fn admin_state(&self) -> AdminState {
        match self.admin_state.load(Ordering::Acquire) {
            0 => AdminState::Active,
            1 => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }

    /// Whether the target may take new connections at all (its admin state is active).
    pub fn in_service(&self) -> bool {
        self.admin_state() == AdminState::Active
    }

    /// Whether the prober currently counts this target healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// Run-time state of one target group.
#[derive(Debug)]
pub struct TargetGroup {
    /// The group's validated configuration.
    pub config: TargetGroupConfig,
    /// Targets, in config order (indices match `config.targets`).
    pub targets: Vec<Target>,
    /// Shared position of the group's round-robin schedules.
    pub cursor: AtomicUsize,
    /// Bumped after every health change, so workers know to rebuild their schedules.
    health_generation: AtomicU64,
    /// Client IP → target, when the group has `stickiness`.
    pub sticky: Option<StickyTable>,
    /// When the group was built: the zero of the sticky table's clock.
    pub epoch: Instant,
    /// The lookup table of `maglev` and `source_hash`, rebuilt by whoever changes health (the
    /// prober thread) and swapped in whole.
    table: Option<ArcSwap<LookupTable>>,
}

impl TargetGroup {
    fn new(config: &TargetGroupConfig) -> Self {
        let targets = config
            .targets
            .iter()
            .map(|t| Target {
                address: t.address,
                weight: t.weight,
                backup: t.backup,
                admin_state: AtomicU8::new(AdminState::Active as u8),
                max_connections: t.max_connections,
                // Targets start healthy: traffic flows at once, and the prober takes a target
                // out after `unhealthy_threshold` failures.
                healthy: AtomicBool::new(true),
                healthy_since_ms: AtomicU64::new(u64::MAX),
                active: AtomicU64::new(0),
                total: AtomicU64::new(0),
                connect_failures: AtomicU64::new(0),
                bytes_to_target: AtomicU64::new(0),
                bytes_from_target: AtomicU64::new(0),
                response_ewma_us: AtomicU64::new(0),
            })
            .collect();
        let mut group = TargetGroup {
            config: config.clone(),
            targets,
            cursor: AtomicUsize::new(0),
            health_generation: AtomicU64::new(0),
            table: None,
            sticky: config
                .stickiness
                .map(|st| StickyTable::new(st.max_entries, st.timeout)),
            epoch: Instant::now(),
        };
        group.table = group.build_table().map(ArcSwap::from_pointee);
        group
    }

    /// A fresh lookup table for the current health, for the algorithms that use one.
    fn build_table(&self) -> Option<LookupTable> {
        match self.config.algorithm {
            Algorithm::Maglev => Some(maglev::for_group(self, self.config.maglev_table_size)),
            Algorithm::SourceHash => Some(source_hash::for_group(self)),
            _ => None,
        }
    }

    /// The current lookup table (`None` for algorithms without one).
    pub fn lookup_table(&self) -> Option<Arc<LookupTable>> {
        self.table.as_ref().map(|t| t.load_full())
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Marks target `index` healthy or not; returns whether that changed anything.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        let target = &self.targets[index];
        if healthy && !target.is_healthy() {
            // Before the flip, so no worker sees the target healthy without its ramp.
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            target.healthy_since_ms.store(now_ms, Ordering::Release);
        }
        let was = target.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            self.eligibility_changed();
        }
        was != healthy
    }

    /// Sets target `index`'s admin state; returns whether that changed anything.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn set_admin_state(&self, index: usize, state: AdminState) -> bool {
        let was = self.targets[index]
            .admin_state
            .swap(state as u8, Ordering::AcqRel);
        if was != state as u8 {
            self.eligibility_changed();
        }
        was != state as u8
    }

    /// Health or admin state changed: rebuild the lookup table and tell the workers' caches.
    fn eligibility_changed(&self) {
        // Off the data path: this runs on the prober or admin thread; workers keep using the
        // old table until the new one is stored.
        if let (Some(table), Some(fresh)) = (&self.table, self.build_table()) {
            table.store(Arc::new(fresh));
        }
        self.health_generation.fetch_add(1, Ordering::Release);
    }

    /// The share of its picks target `index` keeps at `now` under `slow_start`: from 1/20
    /// right after it turned healthy up to 1 (full) once `slow_start` has passed; 1 without
    /// slow start or for targets healthy since the start.
    pub fn slow_start_share(&self, index: usize, now: Instant) -> f64 {
        let Some(ramp) = self.config.slow_start else {
            return 1.0;
        };
        let since = self.targets[index].healthy_since_ms.load(Ordering::Acquire);
        if since == u64::MAX {
            return 1.0;
        }
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let elapsed = now_ms.saturating_sub(since) as f64;
        (elapsed / ramp.as_millis() as f64).clamp(0.05, 1.0)
    }

    /// Whether a new connection can go anywhere: some eligible target is below its
    /// `max_connections` (always true when no target has a limit). Listeners check this before
    /// accepting, so clients wait in the backlog rather than being accepted and dropped.
    pub fn has_room(&self) -> bool {
        if self.targets.iter().all(|t| t.max_connections.is_none()) {
            return true;
        }
        crate::balancer::eligible(self, &self.health())
            .into_iter()
            .any(|i| !self.targets[i].is_full())
    }

    /// A number that changes whenever any target's health changes.
    pub fn health_generation(&self) -> u64 {
        self.health_generation.load(Ordering::Acquire)
    }

    /// Health of every target, in order.
    pub fn health(&self) -> Vec<bool> {
        self.targets.iter().map(Target::is_healthy).collect()
    }
}

/// Run-time state of one listener shared by the workers.
#[derive(Debug)]
pub struct ListenerState {
    /// The listener's validated configuration.
    pub config: ListenerConfig,
    /// Open client connections (TCP) or sessions (UDP) across all workers, for
    /// `max_connections` and `udp.max_sessions`.
    pub active: AtomicUsize,
    /// Client connections accepted (TCP) or sessions created (UDP) since start.
    pub accepted: AtomicU64,
    /// Datagrams dropped (UDP): new flows past `max_sessions`, no target, full socket buffers.
    pub dropped: AtomicU64,
}

/// Everything the threads share: built once from a [`Config`].
#[derive(Debug)]
pub struct Shared {
    /// The configuration this state was built from.
    pub config: Config,
    /// One per configured listener, same order.
    pub listeners: Vec<ListenerState>,
    /// One per configured target group, same order.
    pub groups: Vec<TargetGroup>,
}

impl Shared {
    /// Builds the shared state for `config`, every target healthy and every counter zero.
    pub fn new(config: Config) -> Arc<Self> {
        let groups = config.target_groups.iter().map(TargetGroup::new).collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerState {
                config: l.clone(),
                active: AtomicUsize::new(0),
                accepted: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            })
            .collect();
        Arc::new(Shared {
            config,
            listeners,
            groups,
        })
    }
}
