//! The fleet thread's work with etcd: connect, read the fleet's keys, watch them, apply
//! what changes, write what the admin API asks and this node's record (under a lease), and
//! start again after a failure.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, TlsOptions,
    WatchOptions, WatchStream,
};
use tokio::sync::mpsc::UnboundedReceiver;

mod writes;

use super::keys::{Key, Keys, View};
use super::First;
use crate::config::cluster::{ClusterConfig, EtcdConfig};
use crate::control::fleet::{FleetError, FleetLink, FleetNode, FleetRequest};
use crate::control::{ChangeError, Control};
use crate::throttle::LogLimiter;

/// A node's record lives this long without renewal (seconds).
const LEASE_TTL: i64 = 10;
/// How long a node gone without leaving is remembered (see `FleetStatus::vanished`).
const VANISHED_MEMORY: Duration = Duration::from_secs(300);
/// How often the lease is renewed.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// How often this node's record is looked at (written when it changed), and leaderless
/// groups stood for.
const RECORD_EVERY: Duration = Duration::from_millis(200);
/// Largest answer taken from etcd (tonic's default is 4 MiB; a range read is paged, a watch
/// message holds one transaction's events).
const MAX_MESSAGE: usize = 64 << 20;
/// Keys per page of a range read.
const PAGE: i64 = 256;
/// Longest wait for one request to etcd.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait before connecting again; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait before connecting again.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What ended a session with etcd.
#[derive(Debug, thiserror::Error)]
enum Trouble {
    #[error("{}", brief(.0))]
    Etcd(#[from] etcd_client::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the watch ended")]
    WatchEnded,
    #[error("this node's lease expired")]
    LeaseLost,
}

impl Trouble {
    /// Whether etcd refused the credentials (not worth retrying at start): gRPC status
    /// UNAUTHENTICATED (16) or PERMISSION_DENIED (7), or etcd's "authentication failed"
    /// (sent as INVALID_ARGUMENT).
    fn refused(&self) -> bool {
        match self {
            Trouble::Etcd(etcd_client::Error::GRpcStatus(s)) => {
                matches!(s.code() as i32, 7 | 16) || s.message().contains("authentication failed")
            }
            _ => false,
        }
    }
}

/// `e` in a line: a gRPC status's message and its deepest cause ("tcp connect error:
/// Connection refused (os error 111)"), not the whole debug chain.
fn brief(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return e.to_string();
    };
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(s);
    let mut deepest = None;
    while let Some(c) = cause {
        deepest = Some(c.to_string());
        cause = c.source();
    }
    match deepest {
        Some(d) if d != s.message() => format!("{}: {d}", s.message()),
        _ => s.message().to_string(),
    }
}

/// The thread's body: a single-threaded runtime driving [`Fleet::run`].
pub(super) fn run(
    control: Weak<Control>,
    cluster: ClusterConfig,
    link: Arc<FleetLink>,
    incoming: UnboundedReceiver<FleetRequest>,
    first: Sender<First>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = first.send(First::Unreachable(format!("no runtime: {e}")));
            log::error!("fleet: cannot start a runtime: {e}; etcd's state is not followed");
            return;
        }
    };
    let fleet = Fleet {
        keys: Keys::new(&cluster.etcd.prefix),
        control,
        cluster,
        link,
        incoming,
        first: Some(first),
        view: View::default(),
        revision: 0,
        state_revision: 0,
        failures: LogLimiter::default(),
        twins: LogLimiter::default(),
        record: None,
        wait: RETRY_FIRST,
        lease: 0,
        leaving: BTreeSet::new(),
        to_mark: Vec::new(),
        cluster_id: 0,
    };
    runtime.block_on(fleet.run());
}

/// The fleet thread's state.
struct Fleet {
    control: Weak<Control>,
    cluster: ClusterConfig,
    keys: Keys,
    link: Arc<FleetLink>,
    incoming: UnboundedReceiver<FleetRequest>,
    /// Told how the first exchange went, then `None`.
    first: Option<Sender<First>>,
    /// The state applied.
    view: View,
    /// The revision the view is complete at (a watch resumes after it).
    revision: i64,
    /// The newest revision of a change to targets or states applied (node records left
    /// out: writing this node's record must not change it).
    state_revision: i64,
    failures: LogLimiter,
    /// Says, at most every 10 s, that another node has this node's id.
    twins: LogLimiter,
    /// This node's record as last written (`None`: to be written again).
    record: Option<FleetNode>,
    /// The wait before the next connect.
    wait: Duration,
    /// This session's lease.
    lease: i64,
    /// Nodes that said, in the events being taken, that they leave.
    leaving: BTreeSet<String>,
    /// Nodes seen gone without leaving, to be marked so in etcd.
    to_mark: Vec<String>,
    /// The etcd cluster followed (its id, from any answer's header).
    cluster_id: u64,
}

impl Fleet {
    /// Serves sessions with etcd until `control` is dropped.
    async fn run(mut self) {
        loop {
            if self.control.strong_count() == 0 {
                return;
            }
            let outcome = match connect(&self.cluster.etcd).await {
                Ok(client) => self.serve(client).await,
                Err(e) => Err(e),
            };
            let Err(e) = outcome else {
                return;
            };
            if let Some(first) = self.first.take() {
                let refused = e.refused();
                let _ = first.send(if refused {
                    First::Refused(e.to_string())
                } else {
                    First::Unreachable(e.to_string())
                });
                if refused {
                    return;
                }
            }
            self.failed(&e);
            let until = tokio::time::Instant::now() + self.wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    () = self.link.leave.notified() => {
                        // No session: no lease to give up.
                        let _ = self.link.left.0.try_send(());
                        return;
                    }
                    request = self.incoming.recv() => match request {
                        Some(r) => {
                            let _ = r.reply.send(Err(FleetError::Store(format!(
                                "unreachable ({e}); nothing changed: retry, or add --local \
                                 (?local=1) to change this node only"
                            ))));
                        }
                        None => return,
                    },
                }
            }
            self.wait = (self.wait * 2).min(RETRY_MAX);
        }
    }

    /// Notes a failed exchange: status, counter, a warning at most every 10 s.
    fn failed(&mut self, e: &Trouble) {
        self.link.errors.fetch_add(1, Ordering::Relaxed);
        {
            let mut status = self.link.status.lock().unwrap_or_else(|p| p.into_inner());
            status.connected = false;
            status.last_error = Some(e.to_string());
        }
        if let Some(unlogged) = self.failures.allow(Instant::now()) {
            log::warn!(
                "fleet {}: etcd ({}): {e}; serving the state applied at revision {} \
                 ({unlogged} more failures since the last warning)",
                self.cluster.etcd.prefix,
                self.cluster.etcd.endpoints.join(", "),
                self.revision
            );
        }
    }

    /// One session: a lease, the state (read whole the first time, else watched from where
    /// it stopped), then events, renewals, this node's record and the admin API's writes
    /// until something fails. `Ok` once `control` is gone.
    async fn serve(&mut self, mut client: Client) -> Result<(), Trouble> {
        let grant = timed(client.lease_grant(LEASE_TTL, None)).await?;
        let lease = grant.id();
        self.renewed(grant.ttl());
        self.lease = lease;
        self.record = None;
        let (mut keeper, mut renewals) = timed(client.lease_keep_alive(lease)).await?;
        if let Some(h) = grant.header() {
            self.same_history(h.cluster_id(), h.revision());
        }
        // The whole state at every (re)connect, only its differences applied: whatever etcd
        // went through meanwhile (a restore, a wipe whose revisions have climbed past this
        // node's, a compaction), the node follows what it holds now (second review: a wipe
        // while a node was cut off left it resuming a watch into another history).
        self.load(&mut client).await?;
        let mut watch = self.watch(&mut client).await?;
        if self.write_record(&mut client, lease, true).await?.is_none() {
            return Ok(());
        }
        {
            let mut status = self.link.status.lock().unwrap_or_else(|p| p.into_inner());
            status.connected = true;
            status.last_error = None;
        }
        if self.wait > RETRY_FIRST {
            log::info!(
                "fleet {}: etcd answers again; following it from revision {}",
                self.cluster.etcd.prefix,
                self.revision
            );
        }
        self.wait = RETRY_FIRST;
        if let Some(first) = self.first.take() {
            let _ = first.send(First::Applied(self.revision));
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        let mut record = tokio::time::interval(RECORD_EVERY);
        loop {
            tokio::select! {
                message = watch.message() => {
                    let Some(m) = message? else {
                        return Err(Trouble::WatchEnded);
                    };
                    if m.compact_revision() > 0 || m.canceled() {
                        log::warn!(
                            "fleet {}: revision {} is compacted away: reading the whole state \
                             again",
                            self.cluster.etcd.prefix,
                            self.revision + 1
                        );
                        self.load(&mut client).await?;
                        watch = self.watch(&mut client).await?;
                        continue;
                    }
                    let events: Vec<(bool, KeyValue)> = m
                        .events()
                        .iter()
                        .filter_map(|e| Some((e.event_type() == EventType::Put, e.kv()?.clone())))
                        .collect();
                    self.take(&events);
                }
                _ = keepalive.tick() => timed(keeper.keep_alive()).await?,
                renewal = renewals.message() => match renewal? {
                    Some(r) if r.ttl() > 0 => self.renewed(r.ttl()),
                    _ => return Err(Trouble::LeaseLost),
                },
                _ = record.tick() => {
                    if self.write_record(&mut client, lease, false).await?.is_none() {
                        let _ = timed(client.lease_revoke(lease)).await;
                        return Ok(());
                    }
                    self.campaign(&mut client, lease).await?;
                    self.mark_gone(&mut client).await?;
                }
                () = self.link.leave.notified() => {
                    // Stopping: said in its record first (the others then know its
                    // connections end with it), then the lease goes, and the record and the
                    // groups it leads with it, so another node leads at once.
                    if let Some(mut record) = self.record.clone() {
                        record.left = true;
                        let _ = self.put_record(&mut client, lease, &record).await;
                    }
                    let _ = timed(client.lease_revoke(lease)).await;
                    let _ = self.link.left.0.try_send(());
                    log::info!("fleet {}: left (lease given up)", self.cluster.etcd.prefix);
                    std::future::pending::<()>().await;
                }
                request = self.incoming.recv() => match request {
                    Some(r) => self.write(&mut client, r).await,
                    None => {
                        // Stopping: the lease goes, and this node's record and leader keys
                        // with it, so another node leads at once.
                        let _ = timed(client.lease_revoke(lease)).await;
                        return Ok(());
                    }
                },
            }
        }
    }

    /// Reads every key of the fleet (in pages, all at one revision) and applies what
    /// differs from the view.
    async fn load(&mut self, client: &mut Client) -> Result<(), Trouble> {
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let all = self.keys.all();
        let end = prefix_end(&all);
        let (mut from, mut revision) = (all.into_bytes(), 0);
        let mut next = View::default();
        let mut state_revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let r = timed(kv.get(from.clone(), Some(options))).await?;
            if revision == 0 {
                revision = r.header().map_or(0, |h| h.revision());
            }
            for kv in r.kvs() {
                if let Some(key) = self.keys.parse(kv.key()) {
                    if !matches!(key, Key::Node(_)) {
                        state_revision = state_revision.max(kv.mod_revision());
                    }
                    if let Err(e) = put_kv(&mut next, key, kv) {
                        self.bad_value(&e);
                    }
                }
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        self.apply(next, revision, state_revision.max(self.state_revision));
        Ok(())
    }

    /// Whether etcd still holds the history this node followed: another cluster (its id)
    /// or a revision below the one applied (etcd restored from a backup, or its data lost)
    /// means the whole state is read again.
    fn same_history(&mut self, cluster_id: u64, revision: i64) {
        let other = self.cluster_id != 0 && cluster_id != self.cluster_id;
        if self.revision > 0 && (other || revision < self.revision) {
            log::warn!(
                "fleet {}: etcd is not the one followed until now ({}): reading the whole \
                 state again",
                self.cluster.etcd.prefix,
                if other {
                    format!("cluster {cluster_id:x}, was {:x}", self.cluster_id)
                } else {
                    format!(
                        "revision {revision}, this node had applied {}",
                        self.revision
                    )
                }
            );
            self.revision = 0;
            self.state_revision = 0;
        }
        self.cluster_id = cluster_id;
    }

    /// A watch of the fleet's keys from the revision after the view's.
    async fn watch(&mut self, client: &mut Client) -> Result<WatchStream, Trouble> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let mut watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        timed(watch.watch(self.keys.all(), Some(options))).await
    }

    /// Takes a watch message's `events` (put or not, and the key): applies the view they
    /// make. A message without events (the watch's `created` answer) changes nothing: its
    /// header is the store's revision, whose events may still be on their way, so only
    /// events move the revision a watch resumes from.
    fn take(&mut self, events: &[(bool, KeyValue)]) {
        if events.is_empty() {
            return;
        }
        let mut next = self.view.clone();
        let mut revision = self.revision;
        let mut state_revision = self.state_revision;
        for (put, kv) in events {
            revision = revision.max(kv.mod_revision());
            let Some(key) = self.keys.parse(kv.key()) else {
                continue;
            };
            match &key {
                Key::Node(id) if *id == self.cluster.node_id => self.own_record(*put, kv),
                // Its last record may come in the same message as its deletion.
                Key::Node(id) if *put && said_it_leaves(kv) => {
                    self.leaving.insert(id.clone());
                }
                Key::Node(_) => {}
                _ => state_revision = state_revision.max(kv.mod_revision()),
            }
            if !put {
                next.delete(key);
            } else if let Err(e) = put_kv(&mut next, key, kv) {
                self.bad_value(&e);
            }
        }
        self.apply(next, revision, state_revision);
    }

    /// The lease was granted or renewed for `ttl` seconds from now.
    fn renewed(&self, ttl: i64) {
        let sure = Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
            .saturating_sub(Duration::from_secs(1));
        let mut status = self.link.status.lock().unwrap_or_else(|p| p.into_inner());
        status.lease_until = Some(Instant::now() + sure);
    }

    /// A value that does not parse: left out, counted, logged.
    fn bad_value(&self, e: &str) {
        self.link.apply_errors.fetch_add(1, Ordering::Relaxed);
        log::warn!("fleet {}: ignored: {e}", self.cluster.etcd.prefix);
    }

    /// Applies `next` (complete at `revision`) through the admin API's path: each group's
    /// target list where the fleet's changed, then each admin state that changed (and those
    /// of targets the list brought).
    fn apply(&mut self, next: View, revision: i64, state_revision: i64) {
        let Some(control) = self.control.upgrade() else {
            return;
        };
        let old = std::mem::take(&mut self.view);
        let groups: BTreeSet<&String> = old.groups.keys().chain(next.groups.keys()).collect();
        for name in groups {
            let (o, n) = (old.group(name), next.group(name));
            let (before, after) = (o.list(), n.list());
            let listed = before != after;
            if listed {
                match control.set_fleet_targets(name, after) {
                    Ok(Some(s)) => log::info!(
                        "fleet: target group {name}: targets +{:?} -{:?} (etcd revision \
                         {revision}; generation {})",
                        s.targets_added,
                        s.targets_removed,
                        s.generation
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        self.link.apply_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "fleet: target group {name}: the fleet's list is not applied: {e}"
                        );
                    }
                }
            }
            let brought = n
                .targets
                .keys()
                .filter(|a| listed && !o.targets.contains_key(a));
            let addresses: BTreeSet<SocketAddr> = o
                .states
                .keys()
                .chain(n.states.keys())
                .chain(brought)
                .copied()
                .collect();
            for a in addresses {
                let want = n.state(a);
                let new_here = listed && n.targets.contains_key(&a) && !o.targets.contains_key(&a);
                if o.state(a) == want && !new_here {
                    continue;
                }
                match control.set_admin_state(name, a, want) {
                    Ok((_, _, true)) => log::info!(
                        "fleet: target group {name}: {a} is now {want} (etcd revision {revision})"
                    ),
                    Ok(_) => {}
                    Err(ChangeError::NotFound(m)) => log::debug!("fleet: {m}"),
                    Err(e) => log::warn!("fleet: target group {name}: {a}: {e}"),
                }
            }
        }
        // Nodes whose record went without their saying they leave (crashed, or cut off from
        // etcd and maybe still serving): remembered a while, so a drain's wait cannot call
        // their connections none.
        let gone: Vec<String> = old
            .nodes
            .iter()
            .filter(|(id, n)| {
                !next.nodes.contains_key(*id)
                    && !n.left
                    && !self.leaving.contains(*id)
                    && **id != self.cluster.node_id
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.leaving.clear();
        for id in &gone {
            log::warn!(
                "fleet {}: node {id} is gone without leaving (its lease expired): its \
                 connections are unknown for {} min",
                self.cluster.etcd.prefix,
                VANISHED_MEMORY.as_secs() / 60
            );
        }
        // Kept in etcd (written at the next tick), so a node started since knows too.
        self.to_mark.extend(gone);
        self.view = next;
        self.revision = revision;
        self.state_revision = state_revision;
        let mut status = self.link.status.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = crate::control::fleet::unix_ms();
        let memory = VANISHED_MEMORY.as_millis() as u64;
        status.vanished = self
            .view
            .gone
            .iter()
            .filter(|(id, since)| {
                !self.view.nodes.contains_key(*id) && now_ms.saturating_sub(**since) < memory
            })
            .map(|(id, since)| (id.clone(), *since))
            .collect();
        for id in &self.to_mark {
            status.vanished.entry(id.clone()).or_insert(now_ms);
        }
        status.applied_revision = state_revision;
        status.nodes = self.view.nodes.clone();
        status.leaders = self.view.leaders.clone();
        status.state = crate::control::fleet::served_digest(&control.generation());
        status.discovered = self
            .view
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), g.discovered()))
            .filter(|(_, d)| !d.is_empty())
            .collect();
    }
}

/// Whether `kv` is a node record that says its node leaves.
fn said_it_leaves(kv: &KeyValue) -> bool {
    serde_json::from_slice::<FleetNode>(kv.value()).is_ok_and(|n| n.left)
}

/// `next.put` of `kv`, noting when a group's `seeded` key was written.
fn put_kv(next: &mut View, key: Key, kv: &KeyValue) -> Result<(), String> {
    match &key {
        Key::Seeded(group) => {
            let g = next.groups.entry(group.clone()).or_default();
            g.seeded_revision = kv.mod_revision();
        }
        Key::Leader(group) => {
            next.leader_leases.insert(group.clone(), kv.lease());
        }
        _ => {}
    }
    next.put(key, kv.value())
}

/// A client of `etcd` (logged in, when it has a user).
async fn connect(etcd: &EtcdConfig) -> Result<Client, Trouble> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT);
    if let Some((user, password)) = &etcd.user {
        options = options.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &etcd.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(t);
    }
    timed(Client::connect(&etcd.endpoints, Some(options))).await
}

/// `f`, or [`Trouble::Timeout`] after twice [`REQUEST_TIMEOUT`] (the client's own timeout
/// covers most requests; this bounds the rest, connecting included).
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Trouble> {
    let limit = REQUEST_TIMEOUT * 2;
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Trouble::Timeout(limit)),
    }
}

/// The first key after every key that starts with `prefix` (its last byte raised; a
/// prefix ends in `/`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}
