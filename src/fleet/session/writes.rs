//! What this node writes to etcd: the changes the admin API asks of the fleet (one
//! transaction each), its own record, and its bids for the leadership of groups.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, KeyValue, PutOptions, Txn, TxnOp};

use super::super::keys::{Key, TargetRecord};
use super::{timed, Fleet, Trouble, LEASE_TTL};
use crate::control::fleet::{FleetChange, FleetError, FleetNode, FleetRequest};
use crate::control::ChangeError;

impl Fleet {
    /// An event on this node's own record: deleted (its lease expired), it is written again;
    /// written under another lease, another node has this id — said, not fought over (each
    /// rewriting the other's would never end).
    pub(super) fn own_record(&mut self, put: bool, kv: &KeyValue) {
        if !put {
            self.record = None;
        } else if kv.lease() != self.lease {
            if let Some(more) = self.twins.allow(Instant::now()) {
                log::warn!(
                    "fleet {}: another node writes this node's id `{}` (lease {:x}, this \
                     node's {:x}): give every node its own cluster.node_id ({more} more \
                     since the last warning)",
                    self.cluster.etcd.prefix,
                    self.cluster.node_id,
                    kv.lease(),
                    self.lease
                );
            }
        }
    }

    /// Stands for leader of each group with scaling hooks or DNS discovery that has none:
    /// creates its leader key under this node's `lease` if no other node holds it (the first
    /// writer wins; the others see its key and follow). A leader that stops renewing its
    /// lease loses the key with it, and the others stand again.
    pub(super) async fn campaign(
        &mut self,
        client: &mut Client,
        lease: i64,
    ) -> Result<(), Trouble> {
        let Some(control) = self.control.upgrade() else {
            return Ok(());
        };
        let generation = control.generation();
        drop(control);
        let open: Vec<String> = generation
            .groups
            .iter()
            .filter(|g| !g.removed)
            .filter(|g| g.config.scaling.is_some() || !g.config.discover.is_empty())
            .map(|g| g.name().to_string())
            .filter(|name| {
                // No leader, or one with no live record (written by hand, or by a node gone
                // whose key outlived it), or this node under a lease of an earlier session
                // (moved to this one's, so leadership does not lapse when that expires).
                let mine = self.view.leaders.get(name) == Some(&self.cluster.node_id)
                    && self.view.leader_leases.get(name) != Some(&lease);
                mine || self
                    .view
                    .leaders
                    .get(name)
                    .is_none_or(|id| !self.view.nodes.contains_key(id))
            })
            .collect();
        for group in open {
            let key = self.keys.key(&Key::Leader(group.clone()));
            let held = match self.view.leaders.get(&group) {
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
                Some(id) => Compare::value(key.clone(), CompareOp::Equal, id.clone()),
            };
            let txn = Txn::new().when([held]).and_then([TxnOp::put(
                key,
                self.cluster.node_id.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
            if timed(client.txn(txn)).await?.succeeded() {
                log::info!(
                    "fleet {}: this node ({}) now runs target group {group}'s scaling hooks \
                     and discovery for the fleet",
                    self.cluster.etcd.prefix,
                    self.cluster.node_id
                );
            }
        }
        Ok(())
    }

    /// Writes this node's record when it changed (or `force`); `None` once `control` is
    /// gone.
    pub(super) async fn write_record(
        &mut self,
        client: &mut Client,
        lease: i64,
        force: bool,
    ) -> Result<Option<()>, Trouble> {
        let Some(control) = self.control.upgrade() else {
            return Ok(None);
        };
        let generation = control.generation();
        // What this node serves, also for comparing the others with (`/fleet`).
        let served = crate::control::fleet::served_digest(&generation);
        self.link
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state
            .clone_from(&served);
        let record = FleetNode {
            id: self.cluster.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: generation.generation,
            ready: control.node().readiness(&generation).is_empty(),
            revision: self.state_revision,
            state: served.clone(),
            open: generation
                .groups
                .iter()
                .flat_map(|g| g.targets.iter().map(move |t| (g, t)))
                .filter(|(_, t)| t.admin_state() != crate::target::AdminState::Active)
                .map(|(g, t)| {
                    let key = format!("{}/{}", g.name(), t.address);
                    (key, t.active.load(Ordering::Relaxed))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            left: false,
        };
        drop(control);
        // Written when it changed, or was deleted (see `own_record`).
        if !force && self.record.as_ref() == Some(&record) {
            return Ok(Some(()));
        }
        let key = self.keys.key(&Key::Node(record.id.clone()));
        if force && self.record.is_none() {
            // At start, a record under another lease: another live node has this id (or this node's
            // last run, whose lease has not expired yet).
            let held = timed(client.get(key.clone(), None)).await?;
            if held.kvs().iter().any(|kv| kv.lease() != lease) {
                log::warn!(
                    "fleet {}: another node's record has this node's id `{}` (its lease {:x}): \
                     give every node its own cluster.node_id (if it is this node's last run, \
                     its record expires within {LEASE_TTL} s)",
                    self.cluster.etcd.prefix,
                    record.id,
                    held.kvs().first().map_or(0, KeyValue::lease)
                );
            }
        }
        self.put_record(client, lease, &record).await?;
        self.record = Some(record);
        Ok(Some(()))
    }

    /// Marks in etcd the nodes seen gone without leaving (the first to see it writes the
    /// time), and takes away marks older than their memory, or of nodes back.
    pub(super) async fn mark_gone(&mut self, client: &mut Client) -> Result<(), Trouble> {
        let now = crate::control::fleet::unix_ms();
        for id in std::mem::take(&mut self.to_mark) {
            let key = self.keys.key(&Key::Gone(id));
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, now.to_string(), None)]);
            timed(client.txn(txn)).await?;
        }
        let memory = super::VANISHED_MEMORY.as_millis() as u64;
        let stale: Vec<(String, u64)> = self
            .view
            .gone
            .iter()
            .filter(|(id, since)| {
                self.view.nodes.contains_key(*id) || now.saturating_sub(**since) >= memory
            })
            .map(|(id, since)| (id.clone(), *since))
            .collect();
        for (id, since) in stale {
            let key = self.keys.key(&Key::Gone(id));
            let txn = Txn::new()
                .when([Compare::value(
                    key.clone(),
                    CompareOp::Equal,
                    since.to_string(),
                )])
                .and_then([TxnOp::delete(key, None)]);
            timed(client.txn(txn)).await?;
        }
        Ok(())
    }

    /// Puts `record` as this node's, under `lease`.
    pub(super) async fn put_record(
        &self,
        client: &mut Client,
        lease: i64,
        record: &FleetNode,
    ) -> Result<(), Trouble> {
        let value = serde_json::to_vec(record).unwrap_or_default();
        let key = self.keys.key(&Key::Node(record.id.clone()));
        let options = PutOptions::new().with_lease(lease);
        timed(client.put(key, value, Some(options))).await?;
        Ok(())
    }

    /// Writes what `request` asks, once this node's checks pass it; answers with the
    /// revision that holds it.
    pub(super) async fn write(&mut self, client: &mut Client, request: FleetRequest) {
        let answer = match self.transactions(&request.change) {
            Err(e) => Err(e),
            Ok(steps) => self.run_steps(client, &request, steps).await,
        };
        if let Ok(revision) = &answer {
            log::info!(
                "fleet {}: wrote {:?} at revision {revision}",
                self.cluster.etcd.prefix,
                request.change
            );
        }
        let _ = request.reply.send(answer);
    }

    /// Runs `steps` in order (each fenced for a leader's write), stopping at the first that
    /// fails: the revision of the last.
    async fn run_steps(
        &self,
        client: &mut Client,
        request: &FleetRequest,
        steps: Vec<Txn>,
    ) -> Result<i64, FleetError> {
        let group = request.change.group();
        let mut revision = 0;
        for txn in steps {
            let txn = if request.as_leader {
                // Fenced: only while etcd still names this node the group's leader.
                let leader = self.keys.key(&Key::Leader(group.to_string()));
                let me = self.cluster.node_id.clone();
                Txn::new()
                    .when([Compare::value(leader, CompareOp::Equal, me)])
                    .and_then([TxnOp::txn(txn)])
            } else {
                txn
            };
            let r = timed(client.txn(txn)).await.map_err(|e| {
                self.link.errors.fetch_add(1, Ordering::Relaxed);
                FleetError::Store(format!(
                    "{e}; it may or may not have been written: look with `ballast targets`"
                ))
            })?;
            if request.as_leader && !r.succeeded() {
                return Err(FleetError::Store(format!(
                    "this node no longer leads target group {group}: nothing written"
                )));
            }
            revision = r.header().map_or(revision, |h| h.revision());
        }
        Ok(revision)
    }

    /// The transaction that makes `change`. A change to a group's list (add, remove,
    /// weight) first hands the whole list to the fleet when it holds none yet (the
    /// `seeded` key and every target, as this node has it), else changes the one target.
    fn transactions(&self, change: &FleetChange) -> Result<Vec<Txn>, FleetError> {
        let control = self
            .control
            .upgrade()
            .ok_or_else(|| FleetError::Store("stopping".into()))?;
        let list = control.plan_fleet_change(change)?;
        let group = change.group().to_string();
        let target_key = |a: SocketAddr| self.keys.key(&Key::Target(group.clone(), a));
        let state_key = |a: SocketAddr| self.keys.key(&Key::State(group.clone(), a));
        // A target the fleet has as discovered stays so (a weight change keeps the mark);
        // with a discovery change, what it found now is.
        let marked = match change {
            FleetChange::Discover { found, .. } => found.clone(),
            _ => self.view.group(&group).discovered(),
        };
        let record = |t: &crate::config::TargetConfig| {
            let mut r = TargetRecord::of(t);
            r.discovered = marked.contains_key(&t.address);
            serde_json::to_vec(&r).unwrap_or_default()
        };
        if let FleetChange::State { address, state, .. } = change {
            // Written even when it is `active` (not deleted): a write always makes an event,
            // which the writer waits to have applied.
            let op = TxnOp::put(state_key(*address), state.as_str(), None);
            return Ok(vec![Txn::new().and_then([op])]);
        }
        let list = list
            .ok_or_else(|| FleetError::Refused(ChangeError::Invalid("nothing to change".into())))?;
        let seeded = self.keys.key(&Key::Seeded(group.clone()));
        // Seeding clears what is left of an earlier list first (third review: a list left
        // behind after its `seeded` key was deleted came back).
        let mut seed = vec![TxnOp::put(
            seeded.clone(),
            self.cluster.node_id.clone(),
            None,
        )];
        seed.extend(
            list.iter()
                .map(|t| TxnOp::put(target_key(t.address), record(t), None)),
        );
        let one = match change {
            FleetChange::Add { target, .. } => {
                vec![TxnOp::put(target_key(target.address), record(target), None)]
            }
            FleetChange::Weight { address, .. } => list
                .iter()
                .filter(|t| t.address == *address)
                .map(|t| TxnOp::put(target_key(t.address), record(t), None))
                .collect(),
            FleetChange::Remove { address, .. } => {
                seed.push(TxnOp::delete(state_key(*address), None));
                vec![
                    TxnOp::delete(target_key(*address), None),
                    TxnOp::delete(state_key(*address), None),
                ]
            }
            FleetChange::Discover { before, found, .. } => {
                let gone = before.keys().filter(|a| !found.contains_key(a));
                for &a in gone.clone() {
                    seed.push(TxnOp::delete(state_key(a), None));
                }
                let mut ops: Vec<TxnOp> = list
                    .iter()
                    .filter(|t| found.contains_key(&t.address))
                    .filter(|t| {
                        // An operator's target DNS also lists keeps its record.
                        before.contains_key(&t.address)
                            || !self.view.group(&group).targets.contains_key(&t.address)
                    })
                    .map(|t| TxnOp::put(target_key(t.address), record(t), None))
                    .collect();
                for &a in gone {
                    ops.push(TxnOp::delete(target_key(a), None));
                    ops.push(TxnOp::delete(state_key(a), None));
                }
                ops
            }
            FleetChange::State { .. } => Vec::new(),
        };
        // The fleet holds a list: the one target changes (a concurrent change of another
        // target stands). It holds none, or an empty one (every node serves its file's
        // list): the change is made to this node's file list and handed over whole (second
        // review: writing the one target left the fleet with it alone) — only if no other
        // node did so since this one looked (third review: two at once, one undid the
        // other); else refused, to be tried again on the list the fleet now holds.
        let view = self.view.group(&group);
        if view.seeded && !view.targets.is_empty() {
            return Ok(vec![Txn::new().and_then(one)]);
        }
        let unchanged = || {
            if view.seeded {
                Compare::mod_revision(seeded.clone(), CompareOp::Equal, view.seeded_revision)
            } else {
                Compare::version(seeded.clone(), CompareOp::Equal, 0)
            }
        };
        // Two steps, as etcd takes no range and a key of it in one transaction: what is left
        // of an earlier list goes (third review: a list left behind after its `seeded` key
        // was deleted came back), then the list — each only while no other node handed the
        // fleet one since this node looked; if one did, this change is made to that list
        // instead (third review: two at once, the later undid the earlier).
        let targets = self.keys.targets_of(&group);
        let clear = TxnOp::delete(targets, Some(DeleteOptions::new().with_prefix()));
        Ok(vec![
            Txn::new().when([unchanged()]).and_then([clear]),
            Txn::new().when([unchanged()]).and_then(seed).or_else(one),
        ])
    }
}
