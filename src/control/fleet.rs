//! The control plane's side of a fleet (`cluster:`): the target lists the fleet holds (kept
//! across reloads, as `discover:`'s are), the changes the admin API asks of the fleet, and
//! the link to the thread that talks to etcd ([`crate::fleet`], above this layer). The fleet
//! thread applies what etcd says through the same methods the admin API uses
//! ([`Control::set_fleet_targets`], [`Control::set_admin_state`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::targets::{
    group_config, target_config, with_target_added, with_target_removed, with_weight,
};
use super::{ChangeError, Control, Summary};
use crate::config::{self, Config, TargetConfig};
use crate::target::AdminState;

/// A change the admin API (or CLI) asks of the whole fleet: written to etcd, then applied by
/// every node, this one included, when its watch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetChange {
    /// A target's admin state (drain, disable, enable).
    State {
        /// Target group name.
        group: String,
        /// The target.
        address: SocketAddr,
        /// Its new state (never `Removed`: that is [`FleetChange::Remove`]).
        state: AdminState,
    },
    /// A target added.
    Add {
        /// Target group name.
        group: String,
        /// The target (its tokens stay on this node: tokens are not kept in the fleet).
        target: TargetConfig,
    },
    /// A target removed (it drains).
    Remove {
        /// Target group name.
        group: String,
        /// The target.
        address: SocketAddr,
    },
    /// What DNS discovery (`discover:`) found for the group, on the group's leader: targets
    /// new to the group are added, those it found before (`before`, the fleet's targets
    /// marked discovered) and no longer finds are removed, weights follow; a found address
    /// that is also an operator's target keeps the operator's settings.
    Discover {
        /// Target group name.
        group: String,
        /// The fleet's discovered targets now: address → weight.
        before: BTreeMap<SocketAddr, u32>,
        /// What discovery found: address → weight.
        found: BTreeMap<SocketAddr, u32>,
    },
    /// A target's weight.
    Weight {
        /// Target group name.
        group: String,
        /// The target.
        address: SocketAddr,
        /// 1 to [`config::MAX_WEIGHT`].
        weight: u32,
    },
}

impl FleetChange {
    /// The group it changes.
    pub fn group(&self) -> &str {
        match self {
            FleetChange::State { group, .. }
            | FleetChange::Add { group, .. }
            | FleetChange::Remove { group, .. }
            | FleetChange::Discover { group, .. }
            | FleetChange::Weight { group, .. } => group,
        }
    }
}

/// A change for the fleet thread, and where its answer goes: the etcd revision that holds
/// it, or why it was refused (nothing written then).
#[derive(Debug)]
pub struct FleetRequest {
    /// What to change.
    pub change: FleetChange,
    /// Made as the group's leader (a scaling hook's or discovery's): written only while
    /// etcd still names this node the group's leader, so a leader that was frozen past its
    /// lease, and has not seen another take over, cannot act twice.
    pub as_leader: bool,
    /// The answer.
    pub reply: crossbeam_channel::Sender<Result<i64, FleetError>>,
}

/// Why a fleet change was not made.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// This node's checks refuse it (as the admin API's would).
    #[error(transparent)]
    Refused(#[from] ChangeError),
    /// etcd did not take it (unreachable, timed out, refused): nothing changed.
    #[error("etcd: {0}")]
    Store(String),
}

impl FleetError {
    /// The HTTP status the admin API answers with: the refusal's, or 503.
    pub fn status(&self) -> u16 {
        match self {
            FleetError::Refused(e) => e.status(),
            FleetError::Store(_) => 503,
        }
    }
}

/// One node's record in etcd (`<prefix>/nodes/<id>`, held by the node's lease: a node that
/// stops renewing it drops out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetNode {
    /// `cluster.node_id`.
    pub id: String,
    /// Ballast's version.
    pub version: String,
    /// Its running configuration's generation.
    pub generation: u64,
    /// Whether its `/healthz` says ready.
    pub ready: bool,
    /// The etcd revision of the fleet state it has applied.
    pub revision: i64,
    /// A digest of the fleet state it has applied (targets and admin states): nodes in step
    /// have the same one, whatever revisions they saw on the way.
    #[serde(default)]
    pub state: String,
    /// Connections still open on it to targets out of service (draining, disabled, removed),
    /// by `group/address`: what a fleet-wide drain waits for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub open: BTreeMap<String, u64>,
    /// Written as it stops, just before its lease is given up: it leaves, and its
    /// connections end with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
}

/// What the fleet thread knows, for `/fleet`, `/metrics` and the status page.
#[derive(Debug, Clone, Default)]
pub struct FleetStatus {
    /// Whether the last exchange with etcd worked.
    pub connected: bool,
    /// The revision of the fleet state this node applied.
    pub applied_revision: i64,
    /// The last error talking to etcd, while not connected.
    pub last_error: Option<String>,
    /// Every node's record (this one's as last written), by id.
    pub nodes: BTreeMap<String, FleetNode>,
    /// The node that runs each group's scaling hooks and DNS discovery, by group name.
    pub leaders: BTreeMap<String, String>,
    /// The fleet's targets that DNS discovery found, by group name: address → weight.
    pub discovered: BTreeMap<String, BTreeMap<SocketAddr, u32>>,
    /// The digest of the state this node applied (see [`FleetNode::state`]).
    pub state: String,
    /// Until when this node's lease surely lives (its last renewal's TTL, less a second):
    /// past it, a node frozen (or cut off) may have lost the groups it led.
    pub lease_until: Option<Instant>,
    /// Nodes whose record went without their saying they leave (its lease expired: crashed,
    /// or cut off from etcd and perhaps still serving), and since when (unix time, ms), as
    /// etcd keeps it for every node; forgotten after 5 minutes, or when they write a record
    /// again.
    pub vanished: BTreeMap<String, u64>,
}

/// The link to the fleet thread.
#[derive(Debug)]
pub struct FleetLink {
    /// This node's id.
    pub node_id: String,
    /// The fleet's key prefix.
    pub prefix: String,
    /// Changes for the fleet thread.
    pub requests: tokio::sync::mpsc::UnboundedSender<FleetRequest>,
    /// What it knows.
    pub status: Mutex<FleetStatus>,
    /// Failed exchanges with etcd, counted (`ballast_fleet_etcd_errors_total`).
    pub errors: AtomicU64,
    /// Changes from etcd this node could not apply (a group it does not have, a list its
    /// checks refuse), counted.
    pub apply_errors: AtomicU64,
    /// Fleet changes waiting for etcd now (at most [`FleetLink::MAX_WAITING`]).
    pub waiting: AtomicUsize,
    /// Told when the node stops: the fleet thread gives its lease up.
    pub leave: tokio::sync::Notify,
    /// Where the fleet thread says it has given its lease up.
    pub left: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
}

impl FleetLink {
    /// Longest wait for the fleet thread's answer (etcd's own timeouts are shorter).
    const ANSWER_WAIT: Duration = Duration::from_secs(6);
    /// Most fleet changes waiting for etcd at once; others wait their turn.
    pub const MAX_WAITING: usize = 3;
    /// Longest wait for a turn; past it, a change is refused (503).
    const TURN_WAIT: Duration = Duration::from_secs(1);
    /// Longest wait, once etcd holds a change, for this node to have applied it.
    const APPLY_WAIT: Duration = Duration::from_secs(3);

    /// Writes `change` to the fleet and waits (at most 3 s) until this node has applied it;
    /// blocks the calling thread (never a worker's). Returns the etcd revision that holds it.
    ///
    /// # Errors
    /// [`FleetError::Refused`] by this node's checks (nothing written);
    /// [`FleetError::Store`] when etcd did not take it, did not answer within 10 s, or the
    /// fleet thread has stopped.
    pub fn write(&self, change: FleetChange) -> Result<i64, FleetError> {
        self.write_as(change, false)
    }

    /// [`FleetLink::write`] as the group's leader (see [`FleetRequest::as_leader`]).
    ///
    /// # Errors
    /// As [`FleetLink::write`]; [`FleetError::Store`] too when etcd no longer names this node
    /// the group's leader.
    pub fn write_as_leader(&self, change: FleetChange) -> Result<i64, FleetError> {
        self.write_as(change, true)
    }

    fn write_as(&self, change: FleetChange, as_leader: bool) -> Result<i64, FleetError> {
        // Each waits on one of the admin API's few handler threads: at most MAX_WAITING wait
        // for etcd, the others for a turn (briefly: with etcd answering, turns take
        // milliseconds), so reads always find a thread.
        let asked = Instant::now();
        while self.waiting.fetch_add(1, Ordering::AcqRel) >= Self::MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if asked.elapsed() >= Self::TURN_WAIT {
                return Err(FleetError::Store(format!(
                    "{} fleet changes are waiting for etcd already; nothing changed: retry",
                    Self::MAX_WAITING
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let result = self.write_one(change, as_leader);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// [`FleetLink::write`], once admitted.
    fn write_one(&self, change: FleetChange, as_leader: bool) -> Result<i64, FleetError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = FleetRequest {
            change,
            as_leader,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err(FleetError::Store("the fleet thread has stopped".into()));
        }
        let revision = answer.recv_timeout(Self::ANSWER_WAIT).map_err(|_| {
            FleetError::Store(format!(
                "no answer within {:?}: the change may or may not be made",
                Self::ANSWER_WAIT
            ))
        })??;
        // Every write puts or deletes a key that exists, so an event at its revision comes.
        let deadline = Instant::now() + Self::APPLY_WAIT;
        while self.applied_revision() < revision && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(revision)
    }

    /// At a stop: has the fleet thread give its lease up (this node's record and the groups
    /// it leads go at once, so another node leads), waiting at most `wait`.
    pub fn leave_fleet(&self, wait: Duration) {
        self.leave.notify_one();
        let _ = self.left.1.recv_timeout(wait);
    }

    /// The revision of the fleet's state this node has applied.
    pub fn applied_revision(&self) -> i64 {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .applied_revision
    }

    /// Connections the other nodes of the fleet still have open to `address` of `group`, as
    /// their records say (a target out of service only); `None` while a node has not applied
    /// the state this one has (its record cannot tell yet: records follow within 0.2 s), or
    /// a node is gone without leaving (see [`FleetStatus::vanished`]).
    pub fn open_elsewhere(&self, group: &str, address: SocketAddr) -> Option<u64> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{group}/{address}");
        if !status.vanished.is_empty() {
            return None;
        }
        let others = status.nodes.values().filter(|n| n.id != self.node_id);
        let mut open = 0;
        for n in others {
            if n.state != status.state {
                return None;
            }
            open += n.open.get(&key).copied().unwrap_or(0);
        }
        Some(open)
    }

    /// The fleet's targets of group `group` that DNS discovery found.
    pub fn discovered(&self, group: &str) -> BTreeMap<SocketAddr, u32> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.discovered.get(group).cloned().unwrap_or_default()
    }

    /// Whether this node runs group `group`'s scaling hooks and DNS discovery for the
    /// fleet: it holds the group's leader key and etcd answers (while it does not, no node
    /// can write what they find, so none runs them).
    pub fn leads(&self, group: &str) -> bool {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.connected
            && status.lease_until.is_some_and(|t| Instant::now() < t)
            && status.leaders.get(group) == Some(&self.node_id)
    }
}

/// The fleet's part of [`Control`].
#[derive(Debug, Default)]
pub(super) struct FleetPart {
    /// The target lists the fleet holds, by group name.
    targets: Mutex<BTreeMap<String, Vec<TargetConfig>>>,
    link: OnceLock<Arc<FleetLink>>,
}

impl Control {
    /// The link to the fleet thread, with `cluster:`.
    pub fn fleet(&self) -> Option<&Arc<FleetLink>> {
        self.fleet.link.get()
    }

    /// Sets the link to the fleet thread (once; later calls are ignored).
    pub fn set_fleet_link(&self, link: Arc<FleetLink>) {
        let _ = self.fleet.link.set(link);
    }

    /// What `change` makes of its group's target list under the running configuration, with
    /// the checks the admin API makes: the list after an add, a removal or a weight; `None`
    /// for an admin state (the target must exist).
    ///
    /// # Errors
    /// As [`Control::add_target`], [`Control::remove_target`], [`Control::set_weight`] and
    /// [`Control::set_admin_state`].
    pub fn plan_fleet_change(
        &self,
        change: &FleetChange,
    ) -> Result<Option<Vec<TargetConfig>>, ChangeError> {
        let mut config = self.generation().config.clone();
        let group = change.group();
        // The fleet holds no list for the group: every node serves its file's, so the change
        // is made to that (read again; a file that no longer loads refuses it, rather than
        // hand the fleet whatever this node still runs).
        let held = self
            .fleet
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(group);
        if !held && !matches!(change, FleetChange::State { .. }) {
            let file = file_targets(&config, group)?;
            group_config(&mut config, group)?.targets = file;
        }
        let config = match change {
            FleetChange::State { address, .. } => {
                target_config(&config, group, *address)?;
                return Ok(None);
            }
            FleetChange::Add { target, .. } if !target.tokens.is_empty() => {
                return Err(ChangeError::Invalid(format!(
                    "tokens are kept per node, not in the fleet: add {} without tokens, then \
                     give them on each node (`ballast tokens`), or add it to this node only \
                     (`--local`)",
                    target.address
                )))
            }
            FleetChange::Add { target, .. } => with_target_added(config, group, target.clone())?,
            FleetChange::Remove { address, .. } => with_target_removed(config, group, *address)?.0,
            FleetChange::Weight {
                address, weight, ..
            } => with_weight(config, group, *address, *weight)?,
            FleetChange::Discover { before, found, .. } => {
                with_discovered(config, group, before, found)?
            }
        };
        Ok(Some(targets_of(&config, group)))
    }

    /// The fleet's target list for group `group` is `list` (`None` or empty: the fleet holds
    /// none, and the group goes back to its file's list, read again). Targets new to the
    /// group are added (they take traffic once their check passes), missing ones removed
    /// (they drain, closed after `drain_timeout`), changed ones updated; a target keeps the
    /// tokens it has here. Returns `None` when nothing changed.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for a group this node does not have; [`ChangeError::Invalid`]
    /// for an empty list or one the group's checks refuse. The running list stays.
    pub fn set_fleet_targets(
        self: &Arc<Self>,
        group: &str,
        list: Option<Vec<TargetConfig>>,
    ) -> Result<Option<Summary>, ChangeError> {
        let _guard = self.locked();
        let mut lists = self.fleet.targets.lock().unwrap_or_else(|e| e.into_inner());
        let mut config = self.generation().config.clone();
        // No list (or an empty one) in the fleet: the file's list, on every node alike.
        let held = list.filter(|l| !l.is_empty());
        let mut list = match &held {
            Some(list) => list.clone(),
            None if lists.remove(group).is_none() => return Ok(None),
            None => file_targets(&config, group)?,
        };
        let g = group_config(&mut config, group)?;
        keep_tokens(&mut list, &g.targets);
        if same_targets(&g.targets, &list) {
            if held.is_some() {
                lists.insert(group.to_string(), list);
            }
            return Ok(None);
        }
        let before: Vec<SocketAddr> = g.targets.iter().map(|t| t.address).collect();
        g.targets = list.clone();
        config::check_group(g).map_err(|(_, m)| ChangeError::Invalid(m))?;
        let drain = g.drain_timeout;
        let summary = self.apply_locked(config)?;
        if held.is_some() {
            lists.insert(group.to_string(), list.clone());
        }
        let generation = self.generation();
        if let Some((gi, g)) = generation.group(group) {
            for address in before
                .iter()
                .filter(|a| !list.iter().any(|t| t.address == **a))
            {
                if let Some((ti, _)) =
                    g.targets.iter().enumerate().find(|(_, t)| {
                        t.address == *address && t.admin_state() == AdminState::Removed
                    })
                {
                    self.close_after(gi, ti, drain, AdminState::Removed);
                }
            }
        }
        Ok(Some(summary))
    }

    /// A reload's `config` keeps the fleet's target lists for the groups it still has.
    pub(super) fn keep_fleet(&self, config: &mut Config) {
        let lists = self.fleet.targets.lock().unwrap_or_else(|e| e.into_inner());
        for g in &mut config.target_groups {
            if let Some(list) = lists.get(&g.name) {
                let mut list = list.clone();
                keep_tokens(&mut list, &g.targets);
                g.targets = list;
            }
        }
    }
}

/// `config` with group `group`'s targets changed from what discovery found `before` to
/// what it found now (`found`): as [`Control::set_discovered`] does on a node of its own.
fn with_discovered(
    mut config: Config,
    group: &str,
    before: &BTreeMap<SocketAddr, u32>,
    found: &BTreeMap<SocketAddr, u32>,
) -> Result<Config, ChangeError> {
    let g = group_config(&mut config, group)?;
    g.targets
        .retain(|t| !before.contains_key(&t.address) || found.contains_key(&t.address));
    for (&address, &weight) in found {
        match g.targets.iter_mut().find(|t| t.address == address) {
            Some(t) if before.contains_key(&address) => t.weight = weight,
            Some(_) => {} // an operator's target: its settings stay
            None => g.targets.push(TargetConfig::new(address, weight)),
        }
    }
    if g.targets.is_empty() {
        return Err(ChangeError::Invalid(format!(
            "discovery found nothing for `{group}` and it has no other target: keeping the \
             last ones"
        )));
    }
    config::check_group(g).map_err(|(_, m)| ChangeError::Invalid(m))?;
    Ok(config)
}

/// A digest of what `generation` serves (FNV-1a, 64 bits, hex): each group's targets in
/// service (address, weight, backup, max_connections, server_id) and their admin states.
/// Nodes in step serve alike, so have the same one; a node whose file list differs, or that
/// could not apply a change, shows.
pub(crate) fn served_digest(generation: &crate::generation::Generation) -> String {
    let mut groups: Vec<_> = generation.groups.iter().filter(|g| !g.removed).collect();
    groups.sort_by(|a, b| a.name().cmp(b.name()));
    let mut text = String::new();
    for g in groups {
        text += &format!("{:?}\n", g.name());
        let mut targets: Vec<_> = g
            .targets
            .iter()
            .filter(|t| t.admin_state() != AdminState::Removed)
            .collect();
        targets.sort_by_key(|t| t.address);
        for t in targets {
            let c = g.config.targets.iter().find(|c| c.address == t.address);
            let record = c.map(|c| (c.weight, c.backup, c.max_connections, c.server_id));
            text += &format!(" {} {record:?} {}\n", t.address, t.admin_state());
        }
    }
    format!("{:016x}", crate::hash::fnv1a(text.as_bytes(), 0))
}

/// Now, as unix time in milliseconds (0 before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The targets group `group` has in the file `config` was read from (read again).
///
/// # Errors
/// [`ChangeError::Config`] when the file no longer loads; [`ChangeError::NotFound`] when it
/// no longer has the group.
fn file_targets(config: &Config, group: &str) -> Result<Vec<TargetConfig>, ChangeError> {
    let file = config::load(&config.path)?;
    let targets = targets_of(&file, group);
    if targets.is_empty() {
        return Err(ChangeError::NotFound(format!(
            "{} no longer has target group `{group}`",
            config.path.display()
        )));
    }
    Ok(targets)
}

/// The targets of group `group` in `config` (empty for an unknown group).
fn targets_of(config: &Config, group: &str) -> Vec<TargetConfig> {
    config
        .target_groups
        .iter()
        .find(|g| g.name == group)
        .map(|g| g.targets.clone())
        .unwrap_or_default()
}

/// Each target of `list` takes the tokens its address has in `current`.
fn keep_tokens(list: &mut [TargetConfig], current: &[TargetConfig]) {
    for t in list {
        if let Some(c) = current.iter().find(|c| c.address == t.address) {
            t.tokens.clone_from(&c.tokens);
        }
    }
}

/// Whether `a` and `b` hold the same targets, whatever their order.
fn same_targets(a: &[TargetConfig], b: &[TargetConfig]) -> bool {
    let sorted = |l: &[TargetConfig]| {
        let mut l = l.to_vec();
        l.sort_by_key(|t| t.address);
        l
    };
    sorted(a) == sorted(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_targets_in_another_order_are_no_change() {
        let a = TargetConfig::new("127.0.0.1:1".parse().unwrap(), 1);
        let b = TargetConfig::new("127.0.0.1:2".parse().unwrap(), 1);
        assert!(same_targets(
            &[a.clone(), b.clone()],
            &[b.clone(), a.clone()]
        ));
        let mut heavier = b.clone();
        heavier.weight = 2;
        assert!(!same_targets(&[a.clone(), b], &[a, heavier]));
    }
}
