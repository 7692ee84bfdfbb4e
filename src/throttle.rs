//! Rate-limited logging of recurring events (accept errors, drops, refused connections):
//! bursts of the same failure must not become bursts of log lines.

use std::time::{Duration, Instant};

/// At most one log line per this interval for one recurring event, with the count of the
/// others.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets through one log line per [`LOG_EVERY`] for a recurring event, counting the rest.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    logged: Option<Instant>,
    unlogged: u64,
}

impl LogLimiter {
    /// Counts one event; returns `Some(events not logged since the last line)` when this one
    /// may be logged.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .logged
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}
