//! Supervised worker threads: a worker whose loop panics or whose poll fails is replaced while
//! the others go on accepting.
//!
//! The dying thread catches its own panic, resets its connections and ends its sessions through
//! the usual close paths (giving back the shared counts they held, see
//! [`Worker::abandon`]), and reports the crash; the main thread then starts a new worker with a
//! fresh poll and fresh SO_REUSEPORT sockets for the current generation, and swaps its message
//! link in [`crate::control::Control`]. Clients of the dead worker see resets, never clean ends; connections
//! queued on its listening sockets are reset by the kernel when those close.
//!
//! What cannot be recovered ends the process at once with a message, rather than leaving it
//! half alive (systemd's `Restart=` takes over): a panic while abandoning (the worker's state is
//! beyond trust), a new worker that cannot start, or more than [`MAX_RESTARTS`] crashes within
//! [`RESTART_WINDOW`] (a crash loop).

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use mio::{Poll, Waker};

use crate::access_log::AccessLog;
use crate::bind::Bound;
use crate::generation::Generation;
use crate::steering::Steering;
use crate::worker::{Worker, WorkerLink, WAKER_TOKEN};

/// Most worker crashes tolerated within [`RESTART_WINDOW`]; one more aborts the process.
pub(crate) const MAX_RESTARTS: usize = 5;
/// The window [`MAX_RESTARTS`] is counted over.
pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// A worker and the link other threads reach it by, before its thread starts.
pub(crate) fn new_worker(
    id: usize,
    generation: &Arc<Generation>,
    sockets: Vec<(usize, Bound)>,
    access: AccessLog,
    steering: &Arc<Steering>,
) -> io::Result<(Worker, WorkerLink)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
    let (messages_tx, messages) = unbounded();
    let worker = Worker::new(
        id,
        poll,
        generation.clone(),
        sockets,
        messages,
        access,
        steering.clone(),
    )?;
    let link = WorkerLink {
        messages: messages_tx,
        waker,
    };
    Ok((worker, link))
}

/// Runs `worker` on its own thread. `on_exit(crashed)` is called when the thread ends: `false`
/// after a stop, `true` after a panic or a poll error (once the worker has been abandoned).
///
/// # Errors
/// When the thread cannot be spawned.
pub(crate) fn spawn_worker(
    id: usize,
    mut worker: Worker,
    on_exit: impl FnOnce(bool) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ballast-worker-{id}"))
        .spawn(move || {
            let crashed = match catch_unwind(AssertUnwindSafe(|| worker.run())) {
                Ok(Ok(())) => false,
                Ok(Err(e)) => {
                    log::error!("worker {id}: poll failed: {e}; replacing the worker");
                    true
                }
                Err(_) => {
                    // The panic message is already on stderr (the default hook).
                    log::error!("worker {id} panicked; replacing the worker");
                    true
                }
            };
            if crashed && catch_unwind(AssertUnwindSafe(|| worker.abandon())).is_err() {
                fatal(&format!(
                    "worker {id} panicked again while closing its connections"
                ));
            }
            drop(worker);
            on_exit(crashed);
        })
}

/// Counts crashes in a sliding window (see [`MAX_RESTARTS`]).
#[derive(Debug, Default)]
pub(crate) struct RestartBudget {
    crashes: VecDeque<Instant>,
}

impl RestartBudget {
    /// Counts a crash at `now`; false when it is one too many.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        while self
            .crashes
            .front()
            .is_some_and(|&t| now.duration_since(t) > RESTART_WINDOW)
        {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        self.crashes.len() <= MAX_RESTARTS
    }
}

/// Logs `why` and aborts the process at once: a state that cannot be recovered must not keep
/// running half alive.
pub(crate) fn fatal(why: &str) -> ! {
    log::error!("{why}: aborting");
    eprintln!("ballast: {why}: aborting");
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_few_crashes_per_window() {
        let t0 = Instant::now();
        let mut b = RestartBudget::default();
        for i in 0..MAX_RESTARTS {
            assert!(b.allow(t0 + Duration::from_secs(i as u64)));
        }
        assert!(!b.allow(t0 + Duration::from_secs(10)));
        // Long after: the old crashes no longer count.
        assert!(b.allow(t0 + RESTART_WINDOW * 3));
    }
}
