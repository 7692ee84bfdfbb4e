//! Supervision's bookkeeping and, for tests only, fault injection.
//!
//! [`Restarts`] counts the threads replaced after a panic (workers, the prober, admin request
//! handlers); `/metrics` shows them. [`Faults`] lets the admin API make a thread panic on
//! purpose (`POST /debug/panic/{worker/N|prober|admin}`), so the tests can prove the
//! supervision. It exists only in debug builds and with the `fault-injection` feature: a release
//! build has neither the endpoint nor the checks ([`Faults::ENABLED`] is false).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Threads replaced (or, for admin requests, caught) after a panic, since start.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    /// Worker threads restarted.
    pub worker: AtomicU64,
    /// Prober restarts.
    pub prober: AtomicU64,
    /// Admin API requests whose handler panicked (the admin thread goes on).
    pub admin: AtomicU64,
}

impl Restarts {
    /// `(thread label, count)` for each kind, as `/metrics` shows them.
    pub(crate) fn counts(&self) -> [(&'static str, u64); 3] {
        [
            ("worker", self.worker.load(Ordering::Relaxed)),
            ("prober", self.prober.load(Ordering::Relaxed)),
            ("admin", self.admin.load(Ordering::Relaxed)),
        ]
    }
}

/// Panics asked for by a test (see the module docs); workers get theirs as a command.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    prober: AtomicBool,
}

impl Faults {
    /// Whether fault injection is built in: debug builds and the `fault-injection` feature.
    pub(crate) const ENABLED: bool = cfg!(any(debug_assertions, feature = "fault-injection"));

    /// Asks the prober to panic at its next loop turn.
    pub(crate) fn panic_prober(&self) {
        self.prober.store(true, Ordering::Release);
    }

    /// Panics if a prober panic was asked for (never when not [`Faults::ENABLED`]).
    pub(crate) fn check_prober(&self) {
        if Self::ENABLED && self.prober.swap(false, Ordering::AcqRel) {
            injected_panic("the prober");
        }
    }
}

/// How many registrations short of their wrap point a worker's wrapping counters start, from
/// the environment variable `BALLAST_FAULT_NEAR_WRAP` (a number), read once; `None` when it is
/// unset or fault injection is not built in ([`Faults::ENABLED`]). Lets a test proxy across a
/// wrap in a few dozen connections instead of millions: the worker's socket tags (24 bits,
/// wrapping after 2^24 registrations) and its UDP session ids (whose low 24 bits are their
/// sockets' tags).
pub(crate) fn near_wrap() -> Option<u32> {
    static NEAR: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *NEAR.get_or_init(|| number_from_env("BALLAST_FAULT_NEAR_WRAP"))
}

/// How long a worker lingers before it closes its listeners for a node drain, in ms, from
/// `BALLAST_FAULT_SLOW_CLOSE` (read once; `None` when unset or fault injection is not built
/// in): a busy worker, for the test that a drain is over only once every listener is closed.
pub(crate) fn slow_close() -> Option<std::time::Duration> {
    static SLOW: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    SLOW.get_or_init(|| number_from_env("BALLAST_FAULT_SLOW_CLOSE"))
        .map(|ms| std::time::Duration::from_millis(ms.into()))
}

/// A number from the environment variable `name`, when set and fault injection is built in
/// (else `None`, with a warning when it was set but cannot be used).
fn number_from_env(name: &str) -> Option<u32> {
    let value = std::env::var(name).ok()?;
    if !Faults::ENABLED {
        log::warn!("{name} ignored: fault injection is not built in");
        return None;
    }
    match value.parse() {
        Ok(n) => Some(n),
        Err(e) => {
            log::warn!("{name}={value:?} ignored: {e}");
            None
        }
    }
}

/// Panics on purpose, naming `thread` (tests of the supervision only).
pub(crate) fn injected_panic(thread: &str) -> ! {
    panic!("injected fault: {thread} panic asked for through the admin API");
}
