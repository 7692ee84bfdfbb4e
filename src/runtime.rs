//! Starting and stopping the process: binds every listener for every worker, starts the
//! workers and the prober, waits for a signal, and stops gracefully.
//!
//! Every socket is bound before any thread starts, so a bad bind (address in use, no
//! permission) fails the start with nothing half-running.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::access_log::{AccessLog, Writer};
use crate::activation::{Activated, ActivationError};
use crate::admin::Admin;
pub use crate::bind::Sockets;
use crate::bind::{bind_all, BindError, Spares};
use crate::config::{descriptors_needed, open_file_limit, AcceptSteering, Config};
use crate::control::Control;
use crate::generation::Generation;
use crate::handover::{fit_workers, HandoverError, Inherited, Offer, Shared};
use crate::health::Prober;
use crate::steering::Steering;
use crate::supervise::{
    fatal, new_worker, spawn_worker, RestartBudget, MAX_RESTARTS, RESTART_WINDOW,
};
use crate::worker::{Message, WorkerLink};

/// Why the process could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener's address could not be bound (a configuration problem: exit code 2).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Any other failure to start or run (threads, polls, signals).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The admin API's address could not be bound (a configuration problem: exit code 2).
    #[error("cannot bind the admin API on {addr} (config {config}): {source}")]
    AdminBind {
        /// Address from the config.
        addr: SocketAddr,
        /// The config file.
        config: String,
        /// The error.
        source: io::Error,
    },
    /// The access log file could not be opened (a configuration problem: exit code 2).
    #[error("cannot open access_log {path} (config {config}): {source}")]
    AccessLog {
        /// The access log path.
        path: String,
        /// The config file.
        config: String,
        /// The OS error.
        source: io::Error,
    },
    /// A worker thread ended unexpectedly.
    #[error("worker {0} stopped unexpectedly")]
    WorkerDied(usize),
    /// `upgrade_socket` cannot be served: another Ballast serves it, or it cannot be bound
    /// (a configuration problem: exit code 2).
    #[error("upgrade_socket {path} (config {config}): {source}")]
    UpgradeSocket {
        /// The path.
        path: String,
        /// The config file.
        config: String,
        /// Why.
        source: io::Error,
    },
    /// `--upgrade-from`: the running process's sockets could not be taken over.
    #[error(transparent)]
    Handover(#[from] HandoverError),
    /// The sockets a service manager passed cannot be used (a configuration problem: exit
    /// code 2).
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// The fleet (`cluster:`) cannot start: etcd refused the login (a configuration
    /// problem: exit code 2).
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetStartError),
    /// A group has `source: client` and this process may not make transparent sockets (a
    /// configuration problem: exit code 2).
    #[error("target group {group} (config {config}): {source}")]
    Transparent {
        /// The group.
        group: String,
        /// The configuration file.
        config: String,
        /// Why (EPERM without CAP_NET_ADMIN).
        source: io::Error,
    },
}

impl RunError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
        let what = what.into();
        move |source| RunError::Io { what, source }
    }
}

enum Event {
    Signal(i32),
    WorkerExited {
        id: usize,
        crashed: bool,
    },
    /// A new process has taken the listening sockets over (`upgrade_socket`).
    HandedOver,
}

struct WorkerHandle {
    link: WorkerLink,
    thread: JoinHandle<()>,
}

/// Warns when the open-file limit (RLIMIT_NOFILE) is below what `config`'s limits may need
/// ([`descriptors_needed`]), naming what to raise: past it, accepting pauses on EMFILE.
fn check_descriptor_limit(config: &Config) {
    let Some(limit) = open_file_limit() else {
        return;
    };
    if let Some(need) = descriptors_needed(config).filter(|&n| n > limit) {
        log::warn!(
            "the open-file limit is {limit} but max_connections and udp.max_sessions may need \
             {need} descriptors (more while splice pipes are in use): raise it (`ulimit -n`, \
             systemd LimitNOFILE=) to at least {}, or accepting will pause when it runs out",
            need * 2
        );
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("workers", &self.handles.len())
            .field("generation", &self.generation().generation)
            .finish_non_exhaustive()
    }
}

/// A started Ballast: workers and prober running. Stop it with [`Running::stop`].
pub struct Running {
    control: Arc<Control>,
    handles: Vec<WorkerHandle>,
    prober: Option<Prober>,
    admin: Option<Admin>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    budget: RestartBudget,
    /// The access log's writer thread; stopped after the workers.
    access: Option<Writer>,
    /// `upgrade_socket`, when configured.
    offer: Option<Offer>,
    /// Sockets a restarted worker takes again rather than binding afresh.
    spares: Spares,
    /// A new process serves the listening sockets now: stop without telling the service
    /// manager (it follows the new process's MAINPID).
    handed_over: bool,
}

/// Starts the access log's writer thread as `generation` configures it.
fn start_access_log(generation: &Generation) -> Result<Writer, RunError> {
    Writer::start(&generation.config.access_log).map_err(|source| RunError::AccessLog {
        path: generation.config.access_log.sink.to_string(),
        config: generation.config.path.display().to_string(),
        source,
    })
}

/// What worker `id`'s thread calls as it ends: counts a crashed worker down (readiness) and
/// tells the main thread.
fn exit_reporter(
    id: usize,
    events: &Sender<Event>,
    control: &Arc<Control>,
) -> impl FnOnce(bool) + Send + 'static {
    let (events, control) = (events.clone(), control.clone());
    move |crashed| {
        if crashed {
            control.node().worker_down();
        }
        let _ = events.send(Event::WorkerExited { id, crashed });
    }
}

/// Binds every listener, then starts the prober and the workers.
///
/// # Errors
/// [`RunError::Bind`] when a listener cannot be bound (nothing is started then);
/// [`RunError::Io`] when a thread or poll cannot be set up.
pub fn start(config: Config) -> Result<Running, RunError> {
    start_from(config, Sockets::None)
}

/// As [`start`], with `given` sockets: handed over by a running Ballast (`--upgrade-from`;
/// once this process is ready it tells that one to stop accepting, [`crate::handover`]), or
/// passed by a service manager ([`crate::activation`]; those no listener takes are closed).
///
/// # Errors
/// As [`start`], and [`RunError::UpgradeSocket`] when `upgrade_socket` cannot be served.
pub fn start_from(mut config: Config, mut given: Sockets) -> Result<Running, RunError> {
    check_descriptor_limit(&config);
    if let Some(g) = config
        .target_groups
        .iter()
        .find(|g| g.source == crate::config::SourceAddress::Client)
    {
        crate::net::transparent_allowed().map_err(|source| RunError::Transparent {
            group: g.name.clone(),
            config: config.path.display().to_string(),
            source,
        })?;
    }
    for advice in crate::config::advice(&config) {
        log::warn!("{advice}");
    }
    match (&given, &config.upgrade_socket) {
        (Sockets::Upgrade(i), _) => fit_workers(&mut config, i),
        (_, Some(path)) => Offer::check_free(path).map_err(|source| RunError::UpgradeSocket {
            path: path.display().to_string(),
            config: config.path.display().to_string(),
            source,
        })?,
        (_, None) => {}
    }
    let admin_socket = match &mut given {
        Sockets::Upgrade(i) => i.admin_socket(config.admin.bind),
        _ => None,
    };
    let sockets = bind_all(&mut config, &mut given)?;
    let spares = Spares::keep(&config, &sockets).map_err(RunError::io(
        "cannot keep copies of the service manager's sockets",
    ))?;
    let upgrading = matches!(given, Sockets::Upgrade(_));
    let inherited = match given {
        Sockets::Upgrade(i) => Some(i),
        Sockets::Activation(a) => {
            a.finish();
            None
        }
        Sockets::None => None,
    };
    let workers = config.workers;
    let generation = Generation::new(config);
    let (events_tx, events) = unbounded();
    let access = start_access_log(&generation)?;
    // Workers and their links first, so the admin API can reach every worker.
    let steering = Arc::new(match generation.config.accept_steering {
        AcceptSteering::LeastConnections => Steering::new(workers),
        AcceptSteering::Hash => Steering::hash_only(workers),
    });
    let mut built = Vec::with_capacity(workers);
    for (id, sockets) in sockets.into_iter().enumerate() {
        let access = access.handle();
        let sockets = sockets.into_iter().enumerate().collect();
        built.push(
            new_worker(id, &generation, sockets, access, &steering)
                .map_err(RunError::io("cannot set up a worker"))?,
        );
    }
    let links = built.iter().map(|(_, link)| link.clone()).collect();
    let control = Control::with_steering(generation.clone(), links, steering);
    let admin = Admin::start(control.clone(), admin_socket, upgrading).map_err(|source| {
        RunError::AdminBind {
            addr: generation.config.admin.bind,
            config: generation.config.path.display().to_string(),
            source,
        }
    })?;
    let prober = Prober::start(control.clone()).map_err(RunError::io("cannot start the prober"))?;
    crate::cert_watch::start(&control)
        .map_err(RunError::io("cannot start the certificate watcher"))?;
    crate::discovery::start(&control).map_err(RunError::io("cannot start DNS discovery"))?;
    crate::scaling::start(&control).map_err(RunError::io("cannot start the scaling hooks"))?;
    // Before the workers accept: a restarted node serves the fleet's targets, not its file's.
    crate::fleet::start(&control)?;
    let mut running = Running {
        control,
        handles: Vec::with_capacity(workers),
        prober: Some(prober),
        admin: Some(admin),
        events_tx: events_tx.clone(),
        events,
        budget: RestartBudget::default(),
        access: Some(access),
        offer: None,
        spares,
        handed_over: false,
    };
    for (id, (worker, link)) in built.into_iter().enumerate() {
        let reporter = exit_reporter(id, &events_tx, &running.control);
        let thread =
            spawn_worker(id, worker, reporter).map_err(RunError::io("cannot start a worker"))?;
        running.handles.push(WorkerHandle { link, thread });
    }
    log::info!("ballast running with {workers} workers");
    crate::notify::ready(
        &running.generation(),
        running.admin.as_ref().map(Admin::addr),
    );
    if let Some(i) = inherited {
        match i.finish() {
            Ok(pid) => log::info!("upgrade: serving; process {pid} stops accepting and drains"),
            Err(e) => log::warn!("{e}"),
        }
    }
    running.offer = running.serve_upgrades()?;
    Ok(running)
}

impl Running {
    /// Serves `upgrade_socket`, when configured.
    fn serve_upgrades(&self) -> Result<Option<Offer>, RunError> {
        let generation = self.generation();
        let Some(path) = &generation.config.upgrade_socket else {
            return Ok(None);
        };
        let (control, rejoin) = (self.control.clone(), self.control.clone());
        let events = self.events_tx.clone();
        let admin = self.admin.as_ref().and_then(|a| match a.share() {
            Ok(shared) => Some(shared),
            Err(e) => {
                log::warn!("upgrade: the admin API's socket cannot be shared ({e}): a new process binds its own");
                None
            }
        });
        Offer::serve(
            path,
            move || Shared {
                listeners: control.share_sockets(),
                admin: admin.as_ref().and_then(|(addr, l)| {
                    l.try_clone()
                        .ok()
                        .map(|l| (*addr, std::os::fd::OwnedFd::from(l)))
                }),
            },
            move || {
                let _ = events.send(Event::HandedOver);
            },
            move || rejoin.rejoin_steering(),
        )
        .map(Some)
        .map_err(|source| RunError::UpgradeSocket {
            path: path.display().to_string(),
            config: generation.config.path.display().to_string(),
            source,
        })
    }

    /// The current generation of the state shared with the workers and the prober (health,
    /// counters).
    pub fn generation(&self) -> Arc<Generation> {
        self.control.generation()
    }

    /// Blocks until one of `signals` is SIGINT or SIGTERM, or a worker ends on its own; a
    /// SIGHUP reloads the configuration file meanwhile.
    ///
    /// # Errors
    /// [`RunError::Io`] when the signal thread cannot start;
    /// [`RunError::WorkerDied`] when a worker ended.
    pub fn wait_for_signal(&mut self, mut signals: Signals) -> Result<(), RunError> {
        let signal_tx = self.events_tx.clone();
        std::thread::Builder::new()
            .name("ballast-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal_tx.send(Event::Signal(signal)).is_err() {
                        return;
                    }
                }
            })
            .map_err(RunError::io("cannot start the signal thread"))?;
        let events = self.events.clone();
        // Set once SIGTERM begins a drain with `shutdown_grace`: the stop comes at its end.
        let mut grace_ends: Option<std::time::Instant> = None;
        loop {
            let event = match grace_ends {
                Some(deadline) => match events.recv_deadline(deadline) {
                    Ok(event) => event,
                    Err(_) => {
                        log::info!("shutdown_grace over: stopping");
                        return Ok(());
                    }
                },
                None => match events.recv() {
                    Ok(event) => event,
                    Err(_) => return Ok(()),
                },
            };
            match event {
                Event::Signal(SIGUSR1) => {
                    if let Some(a) = &self.access {
                        a.reopen();
                    }
                    log::info!("SIGUSR1: reopening the access log");
                }
                Event::Signal(SIGHUP) => {
                    log::info!("SIGHUP: reloading the configuration");
                    crate::notify::reloading();
                    // Either way the service manager hears it is ready again: a refusal is
                    // logged by reload, which says why in STATUS=; the running
                    // configuration stays.
                    let _ = self.control.reload();
                }
                Event::Signal(SIGTERM)
                    if grace_ends.is_none()
                        && !self.generation().config.shutdown_grace.is_zero()
                        && self.control.node().accepting() =>
                {
                    let grace = self.generation().config.shutdown_grace;
                    log::info!(
                        "SIGTERM: /healthz fails now; accepting for shutdown_grace {} more, \
                         then stopping (SIGINT or a second SIGTERM stops at once)",
                        humantime::format_duration(grace)
                    );
                    self.control.drain_node(grace);
                    grace_ends = Some(std::time::Instant::now() + grace);
                }
                Event::Signal(signal) => {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    log::info!(
                        "{name}: stopping; open connections get up to {}",
                        humantime::format_duration(self.generation().config.shutdown_timeout)
                    );
                    return Ok(());
                }
                Event::HandedOver => {
                    log::info!(
                        "upgrade: a new process serves the listeners; stopping accepting, open \
                         connections get up to {}",
                        humantime::format_duration(self.generation().config.shutdown_timeout)
                    );
                    self.handed_over = true;
                    // The new process serves the admin API now (on the same TCP address, and
                    // its own UNIX socket at the same path): this one stops accepting, and
                    // answers the requests it was serving without holding this thread.
                    if let Some(a) = &self.admin {
                        a.stop_accepting();
                    }
                    return Ok(());
                }
                Event::WorkerExited { id, crashed: true } => self.restart_worker(id),
                Event::WorkerExited { id, crashed: false } => {
                    log::error!("worker {id} stopped unexpectedly; stopping");
                    return Err(RunError::WorkerDied(id));
                }
            }
        }
    }

    /// Replaces worker `id`, whose thread ended in a crash (see [`crate::supervise`]): fresh
    /// sockets for every listener of the current generation, a fresh poll, a new thread.
    /// Aborts the process when that fails or when crashes come too often.
    fn restart_worker(&mut self, id: usize) {
        if !self.budget.allow(std::time::Instant::now()) {
            fatal(&format!(
                "worker {id} crashed more than {MAX_RESTARTS} times within {}s",
                RESTART_WINDOW.as_secs()
            ));
        }
        let reporter = exit_reporter(id, &self.events_tx, &self.control);
        let mut thread = None;
        let started = self.control.replace_worker(id, |generation| {
            // Under the change lock, so no drain or enable slips in between.
            let accepting = self.control.node().accepting();
            let mut sockets = Vec::new();
            for (i, l) in generation.listeners.iter().enumerate() {
                // A drained node's workers hold no listening sockets.
                if !l.removed && accepting {
                    sockets.push((i, self.spares.socket_for(&l.config, id)?));
                }
            }
            let access = self
                .access
                .as_ref()
                .map_or_else(AccessLog::off, Writer::handle);
            let (worker, link) =
                new_worker(id, generation, sockets, access, self.control.steering())?;
            thread = Some(spawn_worker(id, worker, reporter)?);
            Ok::<_, io::Error>(link)
        });
        let thread = match (started, thread) {
            (Ok(()), Some(thread)) => thread,
            (Err(e), _) => fatal(&format!("worker {id} crashed and cannot be restarted: {e}")),
            (Ok(()), None) => fatal(&format!("worker {id} crashed and was not restarted")),
        };
        self.control
            .restarts()
            .worker
            .fetch_add(1, Ordering::Relaxed);
        self.control.node().worker_up();
        let link = self.control.workers()[id].clone();
        let old = std::mem::replace(&mut self.handles[id], WorkerHandle { link, thread });
        let _ = old.thread.join();
        log::error!("worker {id} restarted with fresh sockets");
    }

    /// Stops gracefully: listeners close at once, open connections get up to
    /// `shutdown_timeout` to finish; returns when every thread has ended.
    pub fn stop(mut self) {
        self.control.node().stopping();
        // Out of the fleet first: its record and the groups it leads go now, not when its
        // lease expires, so another node takes the scaling hooks and discovery over at once.
        if let Some(fleet) = self.control.fleet() {
            fleet.leave_fleet(std::time::Duration::from_secs(1));
        }
        if !self.handed_over {
            crate::notify::stopping();
        }
        // After a handover the path is the new process's, whatever its inode (a file bound
        // right after ours was removed may get our inode number back).
        if let Some(offer) = self.offer.take().filter(|_| !self.handed_over) {
            offer.remove();
        }
        let (closed_tx, closed) = unbounded();
        for h in &self.handles {
            h.link.send(Message::Stop(closed_tx.clone()));
        }
        drop(closed_tx);
        // Every live worker answers once its listening sockets are closed; a worker that has
        // ended never will, hence the bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let acks = (0..self.handles.len())
            .take_while(|_| closed.recv_deadline(deadline).is_ok())
            .count();
        let generation = self.generation();
        let open: usize = generation
            .listeners
            .iter()
            .map(|l| l.active.load(std::sync::atomic::Ordering::Acquire))
            .sum();
        log::info!(
            "stopped accepting on every listener ({acks} workers); waiting up to {} for {open} \
             open connections",
            humantime::format_duration(generation.config.shutdown_timeout)
        );
        for h in self.handles.drain(..) {
            let _ = h.thread.join();
        }
        if let Some(a) = self.access.take() {
            a.stop();
        }
        if let Some(p) = self.prober.take() {
            p.stop();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        log::info!("stopped");
    }
}

/// Runs Ballast with `config` until SIGINT or SIGTERM (or a new process takes over), then
/// stops gracefully. With `upgrade_from`, first takes the listening sockets of the Ballast
/// serving that `upgrade_socket`.
///
/// # Errors
/// As [`start_from`] and [`Running::wait_for_signal`], [`RunError::Handover`] when the sockets
/// cannot be taken over, and [`RunError::Io`] when the signal handlers cannot be installed.
pub fn run(config: Config, upgrade_from: Option<&Path>) -> Result<(), RunError> {
    // Handlers first: a SIGTERM right after "running" is logged must stop us gracefully.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .map_err(RunError::io("cannot install signal handlers"))?;
    let activated = Activated::from_env()?;
    let given = match (upgrade_from.map(Inherited::take).transpose()?, activated) {
        (Some(i), activated) => {
            log::info!("upgrade: took the listening sockets of process {}", i.pid);
            if let Some(a) = activated {
                a.finish();
            }
            Sockets::Upgrade(i)
        }
        (None, Some(a)) => Sockets::Activation(a),
        (None, None) => Sockets::None,
    };
    let mut running = start_from(config, given)?;
    let result = running.wait_for_signal(signals);
    running.stop();
    result
}
