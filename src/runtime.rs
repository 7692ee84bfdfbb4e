//! Starting and stopping the process: binds every listener for every worker, starts the
//! workers and the prober, waits for a signal, and stops gracefully.
//!
//! Every socket is bound before any thread starts, so a bad bind (address in use, no
//! permission) fails the start with nothing half-running.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Sender};
use mio::{Poll, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Config;
use crate::health::Prober;
use crate::net::reuseport_tcp_listener;
use crate::target::Shared;
use crate::worker::{Command, Worker, WAKER};

/// Why the process could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener's address could not be bound (a configuration problem: exit code 2).
    #[error("cannot bind listener {name} on {addr} (config {path}): {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address from the config.
        addr: SocketAddr,
        /// The config file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// Any other failure to start or run (threads, polls, signals).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A worker thread ended unexpectedly.
    #[error("worker {0} stopped unexpectedly")]
    WorkerDied(usize),
}

impl RunError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
        let what = what.into();
        move |source| RunError::Io { what, source }
    }
}

enum Event {
    Signal(i32),
    WorkerExited(usize),
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

/// Binds one socket per listener per worker. Port 0 is resolved by the first bind, and the
/// other workers bind the port it got.
///
/// # Errors
/// [`RunError::Bind`] naming the listener.
pub fn bind_all(config: &Config) -> Result<Vec<Vec<std::net::TcpListener>>, RunError> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..config.workers).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        let mut addr = l.bind;
        for sockets in per_worker.iter_mut() {
            let socket = reuseport_tcp_listener(addr).map_err(|source| RunError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                path: config.path.display().to_string(),
                source,
            })?;
            if addr.port() == 0 {
                addr = socket.local_addr().map_err(RunError::io("local address"))?;
            }
            sockets.push(socket);
        }
        let group = &config.target_groups[l.target_group];
        log::info!(
            "listener {} ({}) on {addr} -> target group {} ({}, {} targets)",
            l.name,
            l.protocol,
            group.name,
            group.algorithm,
            group.targets.len()
        );
    }
    Ok(per_worker)
}

/// Runs Ballast with `config` until SIGINT or SIGTERM, then stops gracefully: listeners close,
/// open connections get up to `shutdown_timeout` to finish.
///
/// # Errors
/// [`RunError::Bind`] when a listener cannot be bound; [`RunError::Io`] when a thread, poll or
/// signal handler cannot be set up; [`RunError::WorkerDied`] when a worker ends on its own.
pub fn run(config: Config) -> Result<(), RunError> {
    let sockets = bind_all(&config)?;
    let workers = config.workers;
    let shared = Shared::new(config);
    let (events_tx, events) = unbounded();

    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(RunError::io("cannot install signal handlers"))?;
    let signal_tx = events_tx.clone();
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

    let prober = Prober::start(shared.clone()).map_err(RunError::io("cannot start the prober"))?;

    let mut handles = Vec::with_capacity(workers);
    for (id, sockets) in sockets.into_iter().enumerate() {
        let poll = Poll::new().map_err(RunError::io("cannot create a poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(RunError::io("waker"))?);
        let (commands_tx, commands) = unbounded();
        let worker = Worker::new(id, poll, shared.clone(), sockets, commands)
            .map_err(RunError::io("cannot register listeners"))?;
        let exit_tx = events_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ballast-worker-{id}"))
            .spawn(move || {
                // Tell the main thread when this worker ends, however it ends (panics too).
                struct Exit(usize, Sender<Event>);
                impl Drop for Exit {
                    fn drop(&mut self) {
                        let _ = self.1.send(Event::WorkerExited(self.0));
                    }
                }
                let _exit = Exit(id, exit_tx);
                if let Err(e) = worker.run() {
                    log::error!("worker {id}: {e}");
                }
            })
            .map_err(RunError::io("cannot start a worker"))?;
        handles.push(WorkerHandle {
            commands: commands_tx,
            waker,
            thread,
        });
    }
    log::info!("ballast running with {workers} workers");

    let mut result = Ok(());
    for event in events.iter() {
        match event {
            Event::Signal(SIGHUP) => {
                log::warn!("SIGHUP: hot reload is not available yet; the running config stays")
            }
            Event::Signal(signal) => {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                log::info!(
                    "{name}: stopping; open connections get up to {}",
                    humantime::format_duration(shared.config.shutdown_timeout)
                );
                break;
            }
            Event::WorkerExited(id) => {
                log::error!("worker {id} stopped unexpectedly; stopping");
                result = Err(RunError::WorkerDied(id));
                break;
            }
        }
    }
    for h in &handles {
        let _ = h.commands.send(Command::Stop);
        let _ = h.waker.wake();
    }
    for h in handles {
        let _ = h.thread.join();
    }
    prober.stop();
    log::info!("stopped");
    result
}
