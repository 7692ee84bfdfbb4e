//! The control plane: the one place that changes the running configuration.
//!
//! [`Control`] holds the current generation ([`Generation`]) in an `ArcSwap` and serialises every
//! change behind a mutex (never taken on the data path): hot reload from the file (SIGHUP,
//! `POST /reload`), targets added and removed through the admin API, admin states, and the
//! prober's health flips. A change builds the next generation, binds the sockets of new
//! listeners first (so a bad address fails the change with nothing applied), stores it, and
//! hands it to every worker over its message channel, waking its poll. Changes to targets
//! (the admin API's, discovery's, the prober's) are in [`targets`].

pub(crate) mod fleet;
mod later;
mod targets;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::bind::{bind_each, bind_listeners, BindError};
use crate::config::{self, Config, ConfigError, TargetConfig};
use crate::fault::{Faults, Restarts};
use crate::generation::Generation;
use crate::handover::{by_listener, ListenerInfo};
use crate::node::{draining_until, Node, Service};
use crate::scaling::{ScalingControl, ScalingStats};
use crate::steering::Steering;
use crate::target::AdminState;
use crate::worker::{ConnInfo, Message, WorkerLink};

/// Longest a node drain waits for the workers to close their listeners (a worker being
/// replaced after a crash may not answer).
const LISTENERS_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Why a change was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The new file does not load (read, parse or validation error, naming file and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new listener's address cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The request itself is wrong (bad address, last target of a group, …).
    #[error("{0}")]
    Invalid(String),
    /// No such group or target.
    #[error("{0}")]
    NotFound(String),
    /// The target is already in the group.
    #[error("{0}")]
    Conflict(String),
}

impl ChangeError {
    /// The HTTP status the admin API answers with.
    pub fn status(&self) -> u16 {
        match self {
            ChangeError::NotFound(_) => 404,
            ChangeError::Conflict(_) => 409,
            _ => 400,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The generation now running.
    pub generation: u64,
    /// Listener names added, removed.
    pub listeners_added: Vec<String>,
    /// Listener names removed (their open connections go on).
    pub listeners_removed: Vec<String>,
    /// `group/address` of targets added.
    pub targets_added: Vec<String>,
    /// `group/address` of targets removed (they drain).
    pub targets_removed: Vec<String>,
}

/// The running configuration and the way to change it.
pub struct Control {
    current: ArcSwap<Generation>,
    lock: Mutex<()>,
    /// Replaced when a worker is restarted (under `lock`); read by the admin API.
    workers: RwLock<Vec<WorkerLink>>,
    prober: OnceLock<Arc<mio::Waker>>,
    restarts: Restarts,
    faults: Faults,
    node: Node,
    /// Targets found by `discover:`, by group name: address → weight (kept across reloads).
    discovered: Mutex<HashMap<String, BTreeMap<SocketAddr, u32>>>,
    /// What the scaling hooks saw and did, by group name (for `/metrics`).
    scaling: Mutex<BTreeMap<String, ScalingStats>>,
    /// How new TCP connections are spread across workers, and the workers' loads.
    steering: Arc<Steering>,
    /// Graces and drain timeouts waiting to act.
    later: later::Later,
    /// With `cluster:`: the fleet's target lists (kept across reloads) and the link to the
    /// thread that talks to etcd.
    fleet: fleet::FleetPart,
}

impl ScalingControl for Control {
    fn generation(&self) -> Arc<Generation> {
        Control::generation(self)
    }

    /// In a fleet, through etcd: every node adds it.
    fn add_target(&self, group: &str, target: TargetConfig) -> Result<(), String> {
        if let Some(fleet) = self.fleet() {
            let change = fleet::FleetChange::Add {
                group: group.to_string(),
                target,
            };
            let written = fleet.write_as_leader(change);
            return written.map(drop).map_err(|e| e.to_string());
        }
        Control::add_target(self, group, target)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// In a fleet, through etcd: every node removes it.
    fn remove_target(self: &Arc<Self>, group: &str, address: SocketAddr) -> Result<(), String> {
        if let Some(fleet) = self.fleet() {
            let change = fleet::FleetChange::Remove {
                group: group.to_string(),
                address,
            };
            let written = fleet.write_as_leader(change);
            return written.map(drop).map_err(|e| e.to_string());
        }
        Control::remove_target(self, group, address)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn scaling_stats(&self) -> &Mutex<BTreeMap<String, ScalingStats>> {
        &self.scaling
    }

    fn leads(&self, group: &str) -> bool {
        self.fleet().is_none_or(|f| f.leads(group))
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("generation", &self.generation().generation)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Control over `generation` (the first one), reaching the workers through `workers`.
    pub fn new(generation: Arc<Generation>, workers: Vec<WorkerLink>) -> Arc<Control> {
        let steering = Arc::new(Steering::hash_only(generation.config.workers));
        Control::with_steering(generation, workers, steering)
    }

    /// As [`Control::new`], with the process's connection steering (see [`crate::steering`]),
    /// which restarted workers join and `/metrics` reads.
    pub(crate) fn with_steering(
        generation: Arc<Generation>,
        workers: Vec<WorkerLink>,
        steering: Arc<Steering>,
    ) -> Arc<Control> {
        Arc::new(Control {
            steering,
            current: ArcSwap::new(generation),
            lock: Mutex::new(()),
            workers: RwLock::new(workers),
            prober: OnceLock::new(),
            restarts: Restarts::default(),
            faults: Faults::default(),
            node: Node::default(),
            discovered: Mutex::default(),
            scaling: Mutex::default(),
            later: later::Later::default(),
            fleet: fleet::FleetPart::default(),
        })
    }

    /// The current generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Threads restarted after a panic.
    pub(crate) fn restarts(&self) -> &Restarts {
        &self.restarts
    }

    /// Panics asked for by tests (debug builds and the `fault-injection` feature only).
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The node's service state (drain) and readiness.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// What the scaling hooks saw and did, by group name (for `/metrics`).
    pub(crate) fn scaling_stats(&self) -> &Mutex<BTreeMap<String, ScalingStats>> {
        &self.scaling
    }

    /// How new TCP connections are spread across workers, and the workers' loads (restarted
    /// workers join it).
    pub(crate) fn steering(&self) -> &Arc<Steering> {
        &self.steering
    }

    /// The workers' message links (a copy: a restarted worker gets a new one).
    pub fn workers(&self) -> Vec<WorkerLink> {
        self.workers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every worker's connection table, at most `limit` entries in all (see
    /// [`Control::ask_workers`]).
    pub fn connections(&self, limit: usize) -> Vec<ConnInfo> {
        let mut entries: Vec<ConnInfo> = self
            .ask_workers(|reply| Message::Snapshot { limit, reply })
            .into_iter()
            .flatten()
            .collect();
        entries.truncate(limit);
        entries
    }

    /// Ends connection or UDP session `id` of worker `worker` (as `GET /connections` names
    /// it): a TCP connection is reset on both sides, a session ends; the access log says
    /// `admin_closed`.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] when that worker has no such entry (it ended already, or
    /// the worker did not answer within a second).
    pub fn close_connection(&self, worker: usize, id: u64) -> Result<(), ChangeError> {
        let missing = || ChangeError::NotFound(format!("no connection or session {worker}.{id}"));
        let link = self.workers().get(worker).cloned().ok_or_else(missing)?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        if !link.send(Message::CloseConnection { id, reply }) {
            return Err(missing());
        }
        match answer.recv_timeout(Duration::from_secs(1)) {
            Ok(true) => {
                log::info!("connection {worker}.{id} closed (admin API)");
                Ok(())
            }
            _ => Err(missing()),
        }
    }

    /// Sends every worker the message `ask` makes around a reply channel (each is woken
    /// through its poll and answers between two events) and collects the answers; a worker
    /// that does not answer within a second is left out rather than waited for.
    fn ask_workers<T>(&self, ask: impl Fn(crossbeam_channel::Sender<T>) -> Message) -> Vec<T> {
        let (reply, replies) = crossbeam_channel::unbounded();
        let asked = self
            .workers()
            .iter()
            .filter(|w| w.send(ask(reply.clone())))
            .count();
        drop(reply);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        (0..asked)
            .map_while(|_| replies.recv_deadline(deadline).ok())
            .collect()
    }

    /// Duplicates of every worker's listening sockets, grouped by listener in listener order,
    /// for a handover ([`crate::handover`]); a worker that does not answer is left out (the
    /// new process binds fresh sockets beside the ones it got).
    pub(crate) fn share_sockets(&self) -> Vec<(ListenerInfo, Vec<std::os::fd::OwnedFd>)> {
        let answers = self.ask_workers(Message::ShareSockets);
        self.steering.release();
        let generation = self.generation();
        by_listener(answers, |i| {
            let l = generation.listeners.get(i).filter(|l| !l.removed)?;
            Some(ListenerInfo {
                name: l.config.name.clone(),
                protocol: l.config.protocol,
                bind: l.config.bind,
                interface: l.config.interface.clone(),
            })
        })
    }

    /// After a handover that took the sockets out of their steering arrays failed: every
    /// worker puts its sockets back, and placement is load-aware again.
    pub(crate) fn rejoin_steering(&self) {
        let joined = self.ask_workers(Message::JoinSteering).len();
        if joined == self.workers().len() {
            self.steering.rejoined();
        } else {
            log::warn!(
                "upgrade: {} of {} workers put their sockets back into the steering arrays; \
                 the kernel's hash places new connections",
                joined,
                self.workers().len()
            );
        }
    }

    /// Asks worker `n` to panic (tests of the supervision; see `fault::Faults`); false when there
    /// is no such worker.
    pub fn panic_worker(&self, n: usize) -> bool {
        self.workers()
            .get(n)
            .is_some_and(|link| link.send(Message::Panic))
    }

    /// Replaces worker `id` (whose thread ended in a panic): `start` builds and starts the new
    /// worker for the current generation and returns its link. Runs under the change lock, so
    /// no reload can slip between the generation `start` sees and the link stored.
    ///
    /// # Errors
    /// As `start`; the old link stays then.
    pub fn replace_worker<E>(
        &self,
        id: usize,
        start: impl FnOnce(&Arc<Generation>) -> Result<WorkerLink, E>,
    ) -> Result<(), E> {
        let _locked = self.locked();
        let link = start(&self.generation())?;
        let mut workers = self.workers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = workers.get_mut(id) {
            *slot = link;
        }
        Ok(())
    }

    /// Node drain (`POST /node/drain`, `ballast node drain`, SIGTERM with `shutdown_grace`):
    /// `/healthz` fails at once; listeners keep accepting for `grace`, then close (UDP
    /// sessions end with them, as their replies leave through the listeners' sockets); open
    /// connections go on. Returns the state after the call; draining an already draining or
    /// drained node changes nothing.
    pub fn drain_node(self: &Arc<Self>, grace: Duration) -> Service {
        let _guard = self.locked();
        let (now, _) = self.node.service();
        if now != Service::Serving {
            return now;
        }
        let next = draining_until(grace);
        let Some(epoch) = self.node.set(next, None) else {
            return self.node.service().0;
        };
        log::info!(
            "node drain: /healthz fails now; listeners close in {}",
            humantime::format_duration(grace)
        );
        crate::notify::status(&format!(
            "draining: listeners close in {}",
            humantime::format_duration(grace)
        ));
        if grace.is_zero() {
            self.close_listeners(epoch);
            return self.node.service().0;
        }
        let spawned = self.after("ballast-grace", grace, move |control| {
            let _guard = control.locked();
            control.close_listeners(epoch);
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the drain grace timer ({e}); closing listeners now");
            self.close_listeners(epoch);
        }
        next
    }

    /// The end of a drain's grace: closes every worker's listeners if the node is still in
    /// the drain begun at transition `epoch`. Called under the change lock.
    fn close_listeners(&self, epoch: u64) {
        if self.node.set(Service::Drained, Some(epoch)).is_none() {
            return; // enabled (or stopping) meanwhile
        }
        // Drained means closed: an enable right after binds every address afresh, and a
        // socket a worker has not closed yet would look like another process serving it.
        let (done, closed) = crossbeam_channel::unbounded();
        let asked = self
            .workers()
            .iter()
            .filter(|w| w.send(Message::CloseListeners(done.clone())))
            .count();
        let deadline = std::time::Instant::now() + LISTENERS_CLOSE_WAIT;
        for _ in 0..asked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if closed.recv_timeout(left).is_err() {
                log::warn!(
                    "node drain: a worker did not close its listeners within {}",
                    humantime::format_duration(LISTENERS_CLOSE_WAIT)
                );
                break;
            }
        }
        log::info!("node drained: listeners closed; open connections go on");
        crate::notify::status("drained: not accepting");
    }

    /// Undoes a node drain (`POST /node/enable`, `ballast node enable`): a draining node is
    /// ready again at once; a drained one binds every listener afresh first.
    ///
    /// # Errors
    /// [`ChangeError::Bind`] when a listener cannot be bound again (the node stays drained);
    /// [`ChangeError::Invalid`] while the process is stopping.
    pub fn enable_node(&self) -> Result<Service, ChangeError> {
        let _guard = self.locked();
        let (now, epoch) = self.node.service();
        match now {
            Service::Serving => {}
            Service::Draining { .. } => {
                self.node.set(Service::Serving, Some(epoch));
            }
            Service::Drained => {
                let generation = self.generation();
                let live: Vec<usize> = (0..generation.listeners.len())
                    .filter(|&i| !generation.listeners[i].removed)
                    .collect();
                let configs: Vec<_> = live
                    .iter()
                    .map(|&i| &generation.listeners[i].config)
                    .collect();
                let (sockets, _) =
                    bind_each(&configs, generation.config.workers, &generation.config.path)?;
                self.node.set(Service::Serving, Some(epoch));
                for (link, sockets) in self.workers().iter().zip(sockets) {
                    link.send(Message::Reload {
                        generation: generation.clone(),
                        sockets: live.iter().copied().zip(sockets).collect(),
                    });
                }
            }
            Service::Stopping => {
                return Err(ChangeError::Invalid("the process is stopping".into()));
            }
        }
        log::info!("node enabled: serving");
        crate::notify::changed(&self.generation());
        Ok(Service::Serving)
    }

    /// Registers the prober's waker, so it learns of new generations at once.
    pub fn set_prober_waker(&self, waker: Arc<mio::Waker>) {
        let _ = self.prober.set(waker);
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves nothing half-done that matters here: every
        // change is built aside and stored in one step.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the configuration file and applies it (SIGHUP, `POST /reload`).
    ///
    /// # Errors
    /// As [`Control::apply`]; the running configuration stays.
    pub fn reload(&self) -> Result<Summary, ChangeError> {
        let path = self.generation().config.path.clone();
        let result = config::load(&path)
            .map_err(ChangeError::from)
            .and_then(|mut config| {
                self.keep_discovered(&mut config);
                self.keep_fleet(&mut config);
                let dropped = targets::tokens_dropped(&self.generation().config, &config);
                let summary = self.apply(config)?;
                if dropped > 0 {
                    // Tokens the API added last until a reload: say so, or a reload for
                    // another reason silently sends every match in progress nowhere.
                    log::warn!(
                        "reload: {dropped} token(s) routed until now are not in {} (added \
                         through the admin API, or taken out of the file): their datagrams \
                         are dropped from now on",
                        path.display()
                    );
                }
                Ok(summary)
            });
        match &result {
            Ok(s) => log::info!(
                "reloaded {}: generation {}; listeners +{:?} -{:?}; targets +{:?} -{:?}",
                path.display(),
                s.generation,
                s.listeners_added,
                s.listeners_removed,
                s.targets_added,
                s.targets_removed
            ),
            Err(e) => {
                log::error!("reload refused, the running configuration stays: {e}");
                crate::notify::refused(&self.generation(), &e.to_string());
            }
        }
        result
    }

    /// Builds every TLS configuration afresh from its files (certificates, keys, CA files),
    /// the rest of the running configuration as it is, and applies it: new handshakes use the
    /// new certificates, open connections keep their sessions.
    ///
    /// # Errors
    /// [`ChangeError::Config`] naming the file that no longer loads; the running
    /// certificates stay.
    pub fn reload_certificates(&self) -> Result<Summary, ChangeError> {
        let _guard = self.locked();
        let config = crate::config::reload_tls(&self.generation().config)?;
        self.apply_locked(config)
    }

    /// Applies `config` as the next generation: listeners added and removed, groups and
    /// targets updated, algorithms rebuilt. Open connections and sessions keep their targets;
    /// removed targets drain. `workers`, `accept_steering`, `admin` and `access_log` take a
    /// restart: a change to them is logged and ignored.
    ///
    /// # Errors
    /// [`ChangeError::Bind`] when a new listener cannot be bound; nothing changes then.
    pub fn apply(&self, config: Config) -> Result<Summary, ChangeError> {
        let _guard = self.locked();
        self.apply_locked(config)
    }

    fn apply_locked(&self, mut config: Config) -> Result<Summary, ChangeError> {
        let old = self.generation();
        for (what, changed) in [
            ("workers", config.workers != old.config.workers),
            (
                "accept_steering",
                config.accept_steering != old.config.accept_steering,
            ),
            ("admin", config.admin != old.config.admin),
            ("access_log", config.access_log != old.config.access_log),
            ("cluster", config.cluster != old.config.cluster),
        ] {
            if changed {
                log::warn!("reload: a change to `{what}` takes a restart; keeping the running one");
            }
        }
        if let Some(g) = config
            .target_groups
            .iter()
            .find(|g| g.source == crate::config::SourceAddress::Client)
        {
            crate::net::transparent_allowed()
                .map_err(|e| ChangeError::Invalid(format!("target group {}: {e}", g.name)))?;
        }
        config.workers = old.config.workers;
        config.accept_steering = old.config.accept_steering;
        config.admin = old.config.admin.clone();
        config.access_log = old.config.access_log.clone();
        config.cluster = old.config.cluster.clone();

        let added_at = old.added_listeners(&config);
        if old.listeners.len() + added_at.len() > crate::worker::MAX_LISTENERS {
            // Removed listeners keep their index (and token) until a restart.
            return Err(ChangeError::Invalid(format!(
                "more than {} listeners added since start; restart Ballast to add more",
                crate::worker::MAX_LISTENERS
            )));
        }
        // A drained node binds nothing: `enable_node` opens every listener.
        let bind_now = if self.node.accepting() {
            &added_at[..]
        } else {
            &[]
        };
        let mut sockets = bind_listeners(&mut config, bind_now)?;

        let (next, added) = old.successor(config);
        let next = Arc::new(next);
        self.current.store(next.clone());
        crate::notify::changed(&next);
        for (w, link) in self.workers().iter().enumerate() {
            let mine: Vec<_> = added
                .iter()
                .copied()
                .zip(std::mem::take(&mut sockets[w]))
                .collect();
            link.send(Message::Reload {
                generation: next.clone(),
                sockets: mine,
            });
        }
        if let Some(w) = self.prober.get() {
            let _ = w.wake();
        }
        self.steering.retain(
            next.listeners
                .iter()
                .filter(|l| !l.removed)
                .map(|l| l.config.bind),
        );
        Ok(summarize(&old, &next))
    }

    /// Runs `then` after `wait` (a grace or a drain_timeout, not a stand-in for an event) on
    /// the control plane's timer thread ([`later`]), so the caller answers at once.
    ///
    /// # Errors
    /// When the timer thread cannot start.
    fn after(
        self: &Arc<Self>,
        name: &str,
        wait: Duration,
        then: impl FnOnce(&Arc<Control>) + Send + 'static,
    ) -> std::io::Result<()> {
        let at = std::time::Instant::now() + wait;
        self.later
            .at(at, name, Arc::downgrade(self), Box::new(then))
    }
}

/// What changed from `old` to `next`.
fn summarize(old: &Generation, next: &Generation) -> Summary {
    let live_listeners = |s: &Generation| -> Vec<String> {
        s.listeners
            .iter()
            .filter(|l| !l.removed)
            .map(|l| format!("{}@{}", l.config.name, l.config.bind))
            .collect()
    };
    let live_targets = |s: &Generation| -> Vec<String> {
        s.groups
            .iter()
            .filter(|g| !g.removed)
            .flat_map(|g| {
                g.targets
                    .iter()
                    .filter(|t| t.admin_state() != AdminState::Removed)
                    .map(move |t| format!("{}/{}", g.name(), t.address))
            })
            .collect()
    };
    let diff = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    let (l0, l1) = (live_listeners(old), live_listeners(next));
    // Targets of `old` as they were before the change marked them removed: its config.
    let t0: Vec<String> = old
        .config
        .target_groups
        .iter()
        .flat_map(|g| {
            g.targets
                .iter()
                .map(move |t| format!("{}/{}", g.name, t.address))
        })
        .collect();
    let t1 = live_targets(next);
    Summary {
        generation: next.generation,
        listeners_added: diff(&l1, &l0),
        listeners_removed: diff(&l0, &l1),
        targets_added: diff(&t1, &t0),
        targets_removed: diff(&t0, &t1),
    }
}
