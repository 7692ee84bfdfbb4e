//! The control plane's timers: a node drain's grace, a disabled or removed target's
//! drain_timeout. One thread, started with the first timer, sleeps until the earliest is due
//! and runs it; a timer a later change made moot runs and finds nothing to do (each checks
//! that the state it was set for still holds). A thread per timer would sleep out every
//! cancelled drain: an operator (or a script) draining and enabling in a loop piled up
//! hundreds of sleeping threads.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Instant;

use super::Control;

/// What runs when a timer is due.
type Job = Box<dyn FnOnce(&Arc<Control>) + Send>;

/// Pending timers and their thread.
#[derive(Default)]
pub(super) struct Later {
    state: Arc<(Mutex<Pending>, Condvar)>,
}

#[derive(Default)]
struct Pending {
    /// Due times, earliest first, with each job's number.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    jobs: HashMap<u64, (String, Job)>,
    next: u64,
    /// The thread runs (started with the first timer).
    started: bool,
}

impl std::fmt::Debug for Later {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.state.0.lock().map_or(0, |p| p.jobs.len());
        write!(f, "Later {{ pending: {pending} }}")
    }
}

impl Later {
    /// Runs `job` (named `name` in the log) at `at` on the timer thread, with `control` if it
    /// still exists then.
    ///
    /// # Errors
    /// When the timer thread cannot start (the first timer only).
    pub(super) fn at(
        &self,
        at: Instant,
        name: &str,
        control: Weak<Control>,
        job: Job,
    ) -> std::io::Result<()> {
        let (lock, wake) = &*self.state;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !p.started {
            let state = self.state.clone();
            std::thread::Builder::new()
                .name("ballast-timers".into())
                .spawn(move || run(&state, &control))?;
            p.started = true;
        }
        let n = p.next;
        p.next += 1;
        p.due.push(Reverse((at, n)));
        p.jobs.insert(n, (name.to_string(), job));
        wake.notify_one();
        Ok(())
    }
}

/// The timer thread: runs each job once due; ends when the control plane is gone.
fn run(state: &(Mutex<Pending>, Condvar), control: &Weak<Control>) {
    let (lock, wake) = state;
    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        match p.due.peek().copied() {
            Some(Reverse((at, n))) if at <= now => {
                p.due.pop();
                let Some((name, job)) = p.jobs.remove(&n) else {
                    continue;
                };
                drop(p);
                let Some(control) = control.upgrade() else {
                    return;
                };
                log::debug!("timer {name} due");
                // A job that panics costs itself, not the timers after it.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&control)));
                if ran.is_err() {
                    log::error!("timer {name} panicked; the other timers go on");
                }
                drop(control);
                p = lock.lock().unwrap_or_else(|e| e.into_inner());
            }
            Some(Reverse((at, _))) => {
                p = wake
                    .wait_timeout(p, at - now)
                    .map_or_else(|e| e.into_inner().0, |(p, _)| p);
            }
            None => {
                if control.strong_count() == 0 {
                    return;
                }
                // Woken by the next timer; the bound lets a dropped control plane end it.
                p = wake
                    .wait_timeout(p, std::time::Duration::from_secs(60))
                    .map_or_else(|e| e.into_inner().0, |(p, _)| p);
            }
        }
    }
}
