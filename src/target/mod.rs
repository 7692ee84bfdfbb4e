//! Targets and target groups as the running process shares them between threads.
//!
//! Groups and targets belong to one generation ([`Generation`](crate::generation::Generation)); a target keeps its index in its
//! group while anything may refer to it (a removed one stays as a tombstone,
//! [`AdminState::Removed`], until its last connection or session has ended; then a new target
//! may take the index), so a connection that recorded `(group, target)` indices finds the same
//! target in any later generation.
//!
//! What changes while a generation runs is small and lock-free: each target's [`TargetState`]
//! (health flipped by the prober, admin state, connection and traffic counters updated by the
//! workers) and each group's round-robin position. A target's state lives in its own `Arc`,
//! carried from one generation to the next, so counters survive a reload.

pub(crate) mod queue;
pub(crate) mod record;
pub(crate) mod sticky;
pub(crate) mod table;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{TargetConfig, TargetGroupConfig};
use sticky::StickyTable;
use table::LookupTable;

/// One target as a generation sees it: its configured parameters, and its run-time state
/// (shared with the other generations; `Target` dereferences to it).
#[derive(Debug)]
pub struct Target {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share for weighted algorithms (≥ 1): the configured weight, or in a group
    /// with `agent_check` the configured weight × the agent's percentage (so 75% of a weight
    /// of 1 is 75 against its peers' 100, not 1 again).
    pub weight: u32,
    /// The weight the file or the admin API gave (1 to `MAX_WEIGHT`).
    pub configured_weight: u32,
    /// The QUIC-LB server ID its server encodes in its connection IDs (`quic:` listeners).
    pub server_id: Option<u64>,
    /// Used only when no primary target is healthy.
    pub backup: bool,
    /// Most open connections to this target across all workers.
    pub max_connections: Option<u64>,
    state: Arc<TargetState>,
}

impl std::ops::Deref for Target {
    type Target = TargetState;
    fn deref(&self) -> &TargetState {
        &self.state
    }
}

/// The run-time state of one target, kept across reloads while the target stays in its group.
#[derive(Debug)]
pub struct TargetState {
    /// [`AdminState`] as a number: set through the admin API.
    admin_state: AtomicU8,
    /// How many times the admin state changed: a timer set at one change (a disable's
    /// `drain_timeout`) acts only if no other change came since.
    admin_changes: AtomicU64,
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
    /// [`TargetState::record_response`].
    response_ewma_us: AtomicU64,
    /// What the prober last saw, for the admin API and metrics.
    pub checks: crate::target::record::CheckRecord,
    /// Passive checks (`outlier_detection`): data connections in a row that failed (a failed
    /// connect, or the target reset the connection); a clean end sets it back to 0.
    pub consecutive_failures: AtomicU32,
    /// Ejected by outlier detection: no new connections until the prober lets it back.
    ejected: AtomicBool,
    /// Times ejected since start.
    pub ejections: AtomicU64,
    /// Ejections with no clean connection in between (the back-off's exponent).
    pub ejections_in_row: AtomicU32,
    /// `agent_check`: what the target's agent last said ([`AgentMode`] as a number).
    agent_mode: AtomicU8,
    /// `agent_check`: the weight, as a percentage of the configured one, the agent last gave
    /// (100 until it says otherwise).
    agent_percent: AtomicU32,
    /// `agent_check`: the agent said `down` (the target counts as unhealthy, whatever its
    /// health check says, until it says `up`).
    agent_down: AtomicBool,
    /// `agent_check`: its last line (or why there was none), for the admin API.
    pub agent_record: std::sync::Mutex<Option<AgentRecord>>,
}

/// What an agent said (`agent_check`), as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Its last line (escaped, bounded), or why no line came.
    pub said: String,
    /// Whether that was a line (not a failure to reach the agent).
    pub answered: bool,
    /// When, ms since the Unix epoch.
    pub at_unix_ms: u64,
}

/// What a target's agent asks of it (`agent_check`), beside the operator's [`AdminState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// Takes new connections (`ready`, or nothing said).
    Ready = 0,
    /// Takes no new connections; existing ones go on (`drain`, or a weight of `0%`).
    Drain = 1,
    /// Maintenance: takes no new connections (`maint`).
    Maint = 2,
}

impl AgentMode {
    /// The mode's name, as the admin API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Ready => "ready",
            AgentMode::Drain => "drain",
            AgentMode::Maint => "maint",
        }
    }
}

impl TargetState {
    fn new(healthy: bool) -> Arc<TargetState> {
        Arc::new(TargetState {
            admin_state: AtomicU8::new(AdminState::Active as u8),
            admin_changes: AtomicU64::new(0),
            healthy: AtomicBool::new(healthy),
            healthy_since_ms: AtomicU64::new(u64::MAX),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_target: AtomicU64::new(0),
            bytes_from_target: AtomicU64::new(0),
            response_ewma_us: AtomicU64::new(0),
            checks: Default::default(),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejections: AtomicU64::new(0),
            ejections_in_row: AtomicU32::new(0),
            agent_mode: AtomicU8::new(AgentMode::Ready as u8),
            agent_percent: AtomicU32::new(100),
            agent_down: AtomicBool::new(false),
            agent_record: std::sync::Mutex::new(None),
        })
    }
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
    /// No longer in its group (a reload dropped it, or `DELETE` through the admin API): takes
    /// nothing new, is not checked, and disappears from the API once its connections end.
    Removed = 3,
}

impl AdminState {
    /// The state's name, as the admin API and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
            AdminState::Removed => "removed",
        }
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Weight of a new sample in the response-time average.
const EWMA_ALPHA: f64 = 0.3;

impl TargetState {
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

    /// Sets the admin state; returns whether that changed it.
    fn set_admin_state(&self, state: AdminState) -> bool {
        let was = self.admin_state.swap(state as u8, Ordering::AcqRel);
        if was != state as u8 {
            self.admin_changes.fetch_add(1, Ordering::AcqRel);
            self.checks.state_changed();
        }
        was != state as u8
    }

    /// How many times the admin state has changed (see `admin_changes`).
    pub fn admin_changes(&self) -> u64 {
        self.admin_changes.load(Ordering::Acquire)
    }

    /// The target's admin state.
    pub fn admin_state(&self) -> AdminState {
        match self.admin_state.load(Ordering::Acquire) {
            0 => AdminState::Active,
            1 => AdminState::Draining,
            2 => AdminState::Disabled,
            _ => AdminState::Removed,
        }
    }

    /// Whether the target may take new connections at all: its admin state is active, and
    /// its agent (if any) says neither `drain` nor `maint` nor a weight of `0%`.
    pub fn in_service(&self) -> bool {
        self.admin_state() == AdminState::Active
            && self.agent_mode() == AgentMode::Ready
            && self.agent_percent() > 0
    }

    /// What the target's agent last asked (`ready` without an agent).
    pub fn agent_mode(&self) -> AgentMode {
        match self.agent_mode.load(Ordering::Acquire) {
            0 => AgentMode::Ready,
            1 => AgentMode::Drain,
            _ => AgentMode::Maint,
        }
    }

    /// The weight the agent gave, as a percentage of the configured one (100 without one).
    pub fn agent_percent(&self) -> u32 {
        self.agent_percent.load(Ordering::Acquire)
    }

    /// Whether the agent said `down`.
    pub fn agent_down(&self) -> bool {
        self.agent_down.load(Ordering::Acquire)
    }

    /// Sets the agent's weight percentage; returns whether it changed (the group's weights
    /// are then rebuilt by the control plane).
    pub(crate) fn set_agent_percent(&self, percent: u32) -> bool {
        self.agent_percent.swap(percent, Ordering::AcqRel) != percent
    }

    /// Sets whether the agent says `down`; returns whether it changed.
    pub(crate) fn set_agent_down(&self, down: bool) -> bool {
        self.agent_down.swap(down, Ordering::AcqRel) != down
    }

    /// Whether the prober currently counts this target healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether outlier detection has ejected the target.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Whether the balancer may pick the target for new connections, health-wise: healthy
    /// and not ejected.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// A data connection to the target failed: a connect that failed, or a reset from it.
    /// The count saturates: a target failing for days at thousands of connections a second
    /// must not wrap to 0 and look fine to outlier detection.
    pub fn note_failure(&self) {
        let _ = self
            .consecutive_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    /// A data connection to the target ended cleanly (stores only when there is something to
    /// clear, so the common case writes nothing shared).
    pub fn note_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections_in_row.load(Ordering::Relaxed) != 0 {
            self.ejections_in_row.store(0, Ordering::Relaxed);
        }
    }
}

/// One open connection or UDP session to a target, counted in its `active` gauge and
/// given back when dropped (see [`Target::hold`]).
#[derive(Debug)]
pub struct TargetPlace(Arc<TargetState>);

impl Drop for TargetPlace {
    fn drop(&mut self) {
        let before = self.0.active.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "target active count below zero");
    }
}

impl Target {
    /// Counts one more connection or session to this target until the place is dropped
    /// (`least_connections` and `max_connections` read the count).
    pub fn hold(&self) -> TargetPlace {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        TargetPlace(self.state.clone())
    }

    /// As [`Target::hold`], unless the target is at its `max_connections` (across all
    /// workers: the count is taken by compare-and-swap, so two workers never both take the
    /// last place).
    pub fn try_hold(&self) -> Option<TargetPlace> {
        // Taken only while under the limit (compare-and-swap): the count never reads over
        // `max_connections`, not even for an instant.
        let max = self.max_connections;
        self.state
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                max.is_none_or(|m| n < m).then_some(n + 1)
            })
            .ok()
            .map(|_| TargetPlace(self.state.clone()))
    }

    /// The target's run-time state, shared with the other generations.
    pub fn state(&self) -> &Arc<TargetState> {
        &self.state
    }

    /// Whether the target is at its `max_connections`.
    pub fn is_full(&self) -> bool {
        self.max_connections
            .is_some_and(|max| self.active.load(Ordering::Relaxed) >= max)
    }

    /// The target `config` in a group whose agents' percentages count (`agent`) or not.
    fn with_state(config: &TargetConfig, state: Arc<TargetState>, agent: bool) -> Target {
        // In a group with agents every weight is counted in hundredths, so a percentage
        // scales even a weight of 1 (never below 1: a weight of 0% is a drain, in
        // `in_service`). All of a group's weights scale alike: shares are unchanged.
        let weight = if agent {
            (u64::from(config.weight) * u64::from(state.agent_percent()))
                .clamp(1, u64::from(u32::MAX)) as u32
        } else {
            config.weight
        };
        Target {
            address: config.address,
            weight,
            configured_weight: config.weight,
            server_id: config.server_id,
            backup: config.backup,
            max_connections: config.max_connections,
            state,
        }
    }
}

/// Run-time state of one target group.
#[derive(Debug)]
pub struct TargetGroup {
    /// The group's validated configuration (its `targets` list is the file's; see `targets`).
    pub config: TargetGroupConfig,
    /// Targets by index: those of the first generation in config order, then targets added
    /// later. An index never changes; removed targets stay, as [`AdminState::Removed`].
    pub targets: Vec<Target>,
    /// Shared position of the group's round-robin schedules.
    pub cursor: AtomicUsize,
    /// Bumped after every health change, so workers know to rebuild their schedules.
    health_generation: AtomicU64,
    /// Client IP → target, when the group has `stickiness` (kept across reloads).
    pub sticky: Option<Arc<StickyTable>>,
    /// Its queue's count and statistics (`queue:`; kept across reloads).
    pub queue: Arc<queue::QueueStats>,
    /// When the group was first built: the zero of the sticky table's and slow start's clocks.
    pub epoch: Instant,
    /// The lookup table of `maglev` and `source_hash`, rebuilt by whoever changes health (the
    /// prober thread) and swapped in whole.
    table: Option<ArcSwap<LookupTable>>,
    /// The group is gone from the configuration (kept so indices stay valid).
    pub removed: bool,
    /// Builds `table` for the current health (from the balancer; `None`: no table).
    table_builder: Option<TableBuilder>,
    /// Targets by QUIC-LB server ID (removed targets left out).
    server_ids: std::collections::HashMap<u64, usize>,
    /// Targets by token (`token:` listeners; removed targets left out).
    tokens: std::collections::HashMap<Box<[u8]>, usize>,
    /// The target being taken out (turning unhealthy or ejected), `usize::MAX` for none: it
    /// counts as unavailable while the table is rebuilt without it, before its own flag
    /// flips, so no worker finds it gone while the table still names it (one client's
    /// connections move together, to the table's next choice). Set only under the control
    /// plane's lock.
    leaving: AtomicUsize,
}

/// Builds a group's lookup table for its current health (`maglev`, `source_hash`).
pub(crate) type TableBuilder = fn(&TargetGroup) -> LookupTable;

/// Which [`TableBuilder`] a group configured so needs, if any: the balancer's answer, passed
/// in so this module does not depend on the algorithms.
pub(crate) type TableBuilders = fn(&TargetGroupConfig) -> Option<TableBuilder>;

impl TargetGroup {
    /// A group for `config`, every target healthy; `tables` says which lookup table it keeps.
    pub(crate) fn new(config: &TargetGroupConfig, tables: TableBuilders) -> Self {
        // Targets start healthy: traffic flows at once, and the prober takes a target out
        // after `unhealthy_threshold` failures.
        let targets = config
            .targets
            .iter()
            .map(|t| Target::with_state(t, TargetState::new(true), config.agent_check.is_some()))
            .collect();
        let queue = Arc::default();
        Self::assemble(config, targets, None, queue, Instant::now(), false, tables)
    }

    fn assemble(
        config: &TargetGroupConfig,
        targets: Vec<Target>,
        sticky: Option<Arc<StickyTable>>,
        queue: Arc<queue::QueueStats>,
        epoch: Instant,
        removed: bool,
        tables: TableBuilders,
    ) -> Self {
        let sticky = match (config.stickiness, sticky) {
            (Some(st), Some(old)) if old.matches(st.max_entries, st.timeout) => Some(old),
            (Some(st), _) => Some(Arc::new(StickyTable::new(st.max_entries, st.timeout))),
            (None, _) => None,
        };
        let mut group = TargetGroup {
            config: config.clone(),
            targets,
            cursor: AtomicUsize::new(0),
            health_generation: AtomicU64::new(0),
            leaving: AtomicUsize::new(usize::MAX),
            table: None,
            sticky,
            queue,
            epoch,
            removed,
            table_builder: tables(config),
            server_ids: std::collections::HashMap::new(),
            tokens: std::collections::HashMap::new(),
        };
        // A removed target still serving flows keeps its server ID for them (until they end),
        // unless a configured target has taken it.
        let removed = |t: &Target| t.admin_state() == AdminState::Removed;
        let (serving, lingering): (Vec<_>, Vec<_>) = group
            .targets
            .iter()
            .enumerate()
            .partition(|(_, t)| !removed(t));
        for (i, t) in serving.into_iter().chain(
            lingering
                .into_iter()
                .filter(|(_, t)| t.active.load(Ordering::Acquire) > 0),
        ) {
            if let Some(id) = t.server_id {
                group.server_ids.entry(id).or_insert(i);
            }
        }
        if config.targets.iter().any(|t| !t.tokens.is_empty()) {
            // Targets by address once, not a scan per configured target (groups from
            // discovery may be large).
            let index: std::collections::HashMap<SocketAddr, usize> = group
                .targets
                .iter()
                .enumerate()
                .filter(|(_, t)| t.admin_state() != AdminState::Removed)
                .map(|(i, t)| (t.address, i))
                .collect();
            group.tokens = config
                .targets
                .iter()
                .filter_map(|t| Some((*index.get(&t.address)?, &t.tokens)))
                .flat_map(|(i, tokens)| tokens.iter().map(move |k| (k.clone(), i)))
                .collect();
        }
        group.table = group.build_table().map(ArcSwap::from_pointee);
        group
    }

    /// This group in the next generation, configured by `config` (`None`: the group was
    /// removed). Targets keep their index and state; targets no longer configured become
    /// [`AdminState::Removed`]; configured targets not yet present are appended, unhealthy
    /// until they pass `healthy_threshold` checks (so a new target takes traffic only once it
    /// answers); a removed target configured again is back in service, likewise unhealthy
    /// until checked. Marks the removals and revivals on the shared states at once.
    pub(crate) fn successor(
        &self,
        next: Option<&TargetGroupConfig>,
        tables: TableBuilders,
    ) -> TargetGroup {
        let wanted: &[TargetConfig] = next.map_or(&[], |c| &c.targets);
        let agent = next.is_some_and(|c| c.agent_check.is_some());
        let mut targets: Vec<Target> = Vec::with_capacity(self.targets.len());
        for old in &self.targets {
            let state = old.state.clone();
            match wanted.iter().find(|t| t.address == old.address) {
                Some(t) => {
                    if state.admin_state() == AdminState::Removed {
                        state.healthy.store(false, Ordering::Release);
                        state.set_admin_state(AdminState::Active);
                    }
                    targets.push(Target::with_state(t, state, agent));
                }
                None => {
                    state.set_admin_state(AdminState::Removed);
                    targets.push(Target { state, ..*old });
                }
            }
        }
        for t in wanted {
            if targets.iter().any(|x| x.address == t.address) {
                continue;
            }
            let fresh = Target::with_state(t, TargetState::new(false), agent);
            // A removed target whose last connection has ended gives its slot to a new one,
            // so churn (DNS discovery, the admin API) does not grow the group for ever.
            match targets.iter().position(|x| {
                x.admin_state() == AdminState::Removed && x.active.load(Ordering::Acquire) == 0
            }) {
                Some(free) => targets[free] = fresh,
                None => targets.push(fresh),
            }
        }
        let config = next.unwrap_or(&self.config);
        let mut group = Self::assemble(
            config,
            targets,
            self.sticky.clone(),
            self.queue.clone(),
            self.epoch,
            next.is_none(),
            tables,
        );
        // A removed target still serving flows keeps its tokens for them (until its
        // drain_timeout closes them), unless a configured target has taken them: its players
        // go on, as a disabled target's do.
        for (token, &i) in &self.tokens {
            let lingering = group.targets.get(i).is_some_and(|t| {
                t.admin_state() == AdminState::Removed
                    && t.address == self.targets[i].address
                    && t.active.load(Ordering::Acquire) > 0
            });
            if lingering {
                group.tokens.entry(token.clone()).or_insert(i);
            }
        }
        group
    }

    /// A fresh lookup table for the current health, for the algorithms that use one.
    fn build_table(&self) -> Option<LookupTable> {
        self.table_builder.map(|build| build(self))
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
        if !healthy && target.is_healthy() {
            self.leaving_first(index);
        }
        let was = target.healthy.swap(healthy, Ordering::AcqRel);
        self.leaving.store(usize::MAX, Ordering::Release);
        if was != healthy {
            target.checks.state_changed();
            if healthy {
                // After the flip: a table naming a target its workers still find down
                // would send its clients elsewhere meanwhile.
                self.eligibility_changed();
            }
        }
        was != healthy
    }

    /// Target `index` is about to be taken out: the table is rebuilt without it first (see
    /// `leaving`).
    fn leaving_first(&self, index: usize) {
        self.leaving.store(index, Ordering::Release);
        self.eligibility_changed();
    }

    /// Whether target `index` may be picked, health-wise (healthy and not ejected),
    /// counting a target being taken out as gone already.
    pub fn available(&self, index: usize) -> bool {
        self.leaving.load(Ordering::Acquire) != index
            && self.targets.get(index).is_some_and(|t| t.is_available())
    }

    /// Ejects target `index` (outlier detection) or lets it back; returns whether that
    /// changed anything. Letting it back clears its failure count.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn set_ejected(&self, index: usize, ejected: bool) -> bool {
        let target = &self.targets[index];
        if !ejected {
            target.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if ejected && !target.is_ejected() {
            self.leaving_first(index);
        }
        let was = target.ejected.swap(ejected, Ordering::AcqRel);
        self.leaving.store(usize::MAX, Ordering::Release);
        if was != ejected {
            if ejected {
                target.ejections.fetch_add(1, Ordering::Relaxed);
                let _ = target.ejections_in_row.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |k| k.checked_add(1),
                );
            } else {
                self.eligibility_changed();
            }
        }
        was != ejected
    }

    /// Sets target `index`'s admin state; returns whether that changed anything.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn set_admin_state(&self, index: usize, state: AdminState) -> bool {
        let changed = self.targets[index].set_admin_state(state);
        if changed {
            self.eligibility_changed();
        }
        changed
    }

    /// The target listing `token`, whatever its state: a disabled or removed target's token
    /// still names it, for the flows already on it (until `drain_timeout` closes them); see
    /// [`GroupState::keeps_flows`] for new ones.
    pub fn by_token(&self, token: &[u8]) -> Option<usize> {
        self.tokens.get(token).copied()
    }

    /// The target whose QUIC-LB server ID is `id`, whatever its state (as [`GroupState::by_token`]).
    pub fn by_server_id(&self, id: u64) -> Option<usize> {
        self.server_ids.get(&id).copied()
    }

    /// Whether target `t` takes flows routed to it by ID or token that are not on it yet:
    /// active, or draining (a drain keeps what a target serves, and a player's or
    /// connection's new address is still what it serves).
    pub fn keeps_flows(&self, t: usize) -> bool {
        self.targets
            .get(t)
            .is_some_and(|t| matches!(t.admin_state(), AdminState::Active | AdminState::Draining))
    }

    /// Sets what target `index`'s agent asks; returns whether that changed anything.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn set_agent_mode(&self, index: usize, mode: AgentMode) -> bool {
        let changed = self.targets[index]
            .agent_mode
            .swap(mode as u8, Ordering::AcqRel)
            != mode as u8;
        if changed {
            self.targets[index].checks.state_changed();
            self.eligibility_changed();
        }
        changed
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
        self.target_has_room()
    }

    /// Whether a new connection may be accepted: some target has room, or the group has a
    /// queue (which makes it wait, or refuses it when `queue.max` wait already: a client
    /// past the queue is told so at once rather than left in the listen backlog).
    pub fn can_accept(&self) -> bool {
        self.config.queue.is_some() || self.has_room()
    }

    /// Some eligible target is below its `max_connections`.
    /// Whether a target this connection has not tried yet (`tried`) has room: with none, a
    /// connection whose connect failed waits in the queue for a place on a target that works,
    /// rather than being reset because the failed one is not full.
    pub fn has_room_besides(&self, tried: &[usize]) -> bool {
        if self.targets.iter().all(|t| t.max_connections.is_none()) {
            return true;
        }
        self.eligible(&self.health())
            .into_iter()
            .any(|i| !tried.contains(&i) && !self.targets[i].is_full())
    }

    fn target_has_room(&self) -> bool {
        self.eligible(&self.health())
            .into_iter()
            .any(|i| !self.targets[i].is_full())
    }

    /// The targets a pick may choose from, given every target's `health`: the healthy
    /// primaries; when none, the healthy backups (`backup: true`); when none either, every
    /// target in service (fail open: a health check that is wrong about every target must not
    /// take the service down). Draining targets never take new connections.
    pub fn eligible(&self, health: &[bool]) -> Vec<usize> {
        let healthy = |backup: bool| -> Vec<usize> {
            (0..health.len())
                .filter(|&i| health[i] && self.targets[i].backup == backup)
                .filter(|&i| self.targets[i].in_service())
                .collect()
        };
        let primaries = healthy(false);
        if !primaries.is_empty() {
            return primaries;
        }
        let backups = healthy(true);
        if !backups.is_empty() {
            return backups;
        }
        (0..health.len())
            .filter(|&i| self.targets[i].in_service())
            .collect()
    }

    /// A number that changes whenever any target's health changes.
    pub fn health_generation(&self) -> u64 {
        self.health_generation.load(Ordering::Acquire)
    }

    /// Health of every target, in order, as the balancer takes it: healthy and not ejected
    /// by outlier detection ([`TargetState::is_available`]).
    pub fn health(&self) -> Vec<bool> {
        let leaving = self.leaving.load(Ordering::Acquire);
        let up = |(i, t): (usize, &Target)| i != leaving && t.is_available();
        self.targets.iter().enumerate().map(up).collect()
    }
}

impl TargetGroup {
    /// The target at `address` that is not removed, with its index.
    pub fn target(&self, address: SocketAddr) -> Option<(usize, &Target)> {
        self.targets
            .iter()
            .enumerate()
            .find(|(_, t)| t.address == address && t.admin_state() != AdminState::Removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_saturate_at_their_wrap_point() {
        let t = TargetState::new(true);
        t.consecutive_failures
            .store(u32::MAX - 1, Ordering::Relaxed);
        t.note_failure();
        t.note_failure();
        assert_eq!(t.consecutive_failures.load(Ordering::Relaxed), u32::MAX);
        t.note_success();
        assert_eq!(t.consecutive_failures.load(Ordering::Relaxed), 0);
    }

    thread_local! {
        /// What each table build saw: the group's health for picks, and the targets' own flags.
        static BUILDS: std::cell::RefCell<Vec<(Vec<bool>, Vec<bool>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    fn recording_builder(g: &TargetGroup) -> LookupTable {
        let flags = g.targets.iter().map(|t| t.is_available()).collect();
        BUILDS.with(|b| b.borrow_mut().push((g.health(), flags)));
        LookupTable::new(Vec::new())
    }

    /// A target taken out (unhealthy, or ejected) is out of the table before it is out of the
    /// workers' picks: the table is rebuilt without it while its own flag still says
    /// available, so a worker never finds it gone while the table still names it (it then sent
    /// a client's connections to a fallback until the new table came, and one client's
    /// connections split). A target coming back is in the picks before it is in the table.
    #[test]
    fn a_target_leaves_the_table_before_it_leaves_the_picks() {
        let yaml =
            "listeners:\n  - {name: l, protocol: tcp, bind: '127.0.0.1:1', target_group: g}\n\
                    target_groups:\n  - name: g\n    algorithm: maglev\n    targets:\n      \
                    - {address: '127.0.0.1:1001'}\n      - {address: '127.0.0.1:1002'}\n";
        let config = crate::config::parse(std::path::Path::new("t.yaml"), yaml).unwrap();
        let group = TargetGroup::new(&config.target_groups[0], |_| Some(recording_builder));
        BUILDS.with(|b| b.borrow_mut().clear());
        assert!(group.set_healthy(0, false));
        assert!(group.set_healthy(0, true));
        assert!(group.set_ejected(1, true));
        assert!(group.set_ejected(1, false));
        let builds = BUILDS.with(|b| b.borrow().clone());
        let (t, f) = (true, false);
        assert_eq!(
            builds,
            [
                // 0 leaving: out of the table (and the picks) while its flag still says up.
                (vec![f, t], vec![t, t]),
                // 0 back: in the table after its flag.
                (vec![t, t], vec![t, t]),
                // 1 ejected: the same as 0 leaving.
                (vec![t, f], vec![t, t]),
                (vec![t, t], vec![t, t]),
            ]
        );
        assert!(group.targets[0].is_available() && group.available(0));
    }
}
