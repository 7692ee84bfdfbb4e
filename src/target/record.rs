//! What the prober last saw of a target, for `GET /targets` and `/metrics`: the last check's
//! result and time, when the target last changed state, and a histogram of check latencies.
//! Written by the prober (and by state changes), read by the admin thread; plain atomics.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds of the check-latency histogram's buckets, in seconds (the last bucket, +Inf,
/// is implied).
pub(crate) const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The last check's result and time, the last state change, and check latencies of one target.
#[derive(Debug, Default)]
pub struct CheckRecord {
    /// 0: no check yet; 1: passed; 2: failed.
    last_result: AtomicU8,
    /// When the last check ended, in ms since the Unix epoch (0: never).
    last_check_ms: AtomicU64,
    /// When health or admin state last changed, in ms since the Unix epoch (0: never).
    last_change_ms: AtomicU64,
    /// Checks per latency bucket (non-cumulative; the last is +Inf).
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
    /// How long the last check took, in µs.
    last_latency_us: AtomicU64,
    /// Passes since the last failure.
    consecutive_passes: AtomicU64,
    /// Why the last failed check failed, and when (ms since the Unix epoch). Behind a lock:
    /// written by the prober once per failed check, read by the admin API; never by a worker.
    last_failure: Mutex<Option<Failure>>,
}

/// One failed check: why, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What the check saw, as the log says it (`connection refused`, `expected "+PONG"`,
    /// `timed out after 1s waiting for the answer`, a TLS error, …).
    pub reason: String,
    /// When the check ended, in ms since the Unix epoch.
    pub at_unix_ms: u64,
}

/// A copy of a [`CheckRecord`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSnapshot {
    /// The last check's result: `Some(true)` passed, `Some(false)` failed, `None` no check yet.
    pub last_passed: Option<bool>,
    /// When the last check ended (ms since the Unix epoch; 0: never).
    pub last_check_ms: u64,
    /// When health or admin state last changed (ms since the Unix epoch; 0: never).
    pub last_change_ms: u64,
    /// Sum of check latencies, in seconds.
    pub latency_sum_s: f64,
    /// How long the last check took, in seconds (0 before the first check).
    pub last_latency_s: f64,
    /// Number of checks.
    pub count: u64,
    /// Checks passed since the last failure.
    pub consecutive_passes: u64,
    /// The last failed check (kept after later passes: "why was it down?").
    pub last_failure: Option<Failure>,
    /// `(upper bound in seconds, checks in this bucket)`, non-cumulative, +Inf last.
    pub buckets: Vec<(f64, u64)>,
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CheckRecord {
    /// Records one finished check: passed (`failure` is `None`) or failed and why, and how
    /// long it took (a timeout counts as the time waited).
    pub fn record(&self, failure: Option<&str>, latency: Duration) {
        let now = unix_ms();
        self.last_result
            .store(if failure.is_none() { 1 } else { 2 }, Ordering::Relaxed);
        self.last_check_ms.store(now, Ordering::Relaxed);
        match failure {
            None => {
                self.consecutive_passes.fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => {
                self.consecutive_passes.store(0, Ordering::Relaxed);
                let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
                *last = Some(Failure {
                    reason: reason.to_string(),
                    at_unix_ms: now,
                });
            }
        }
        let s = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.last_latency_us.store(us, Ordering::Relaxed);
    }

    /// Notes that the target's health or admin state changed now.
    pub fn state_changed(&self) {
        self.last_change_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// The record as it is now.
    pub fn snapshot(&self) -> CheckSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        CheckSnapshot {
            last_passed: match self.last_result.load(Ordering::Relaxed) {
                0 => None,
                r => Some(r == 1),
            },
            last_check_ms: self.last_check_ms.load(Ordering::Relaxed),
            last_change_ms: self.last_change_ms.load(Ordering::Relaxed),
            latency_sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            last_latency_s: self.last_latency_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: counts.iter().sum(),
            consecutive_passes: self.consecutive_passes.load(Ordering::Relaxed),
            last_failure: self
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            buckets: LATENCY_BUCKETS_S
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(counts)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets() {
        let r = CheckRecord::default();
        assert_eq!(r.snapshot().last_passed, None);
        r.record(None, Duration::from_micros(300));
        assert_eq!(r.snapshot().last_failure, None);
        r.record(Some("connection refused"), Duration::from_millis(30));
        r.record(Some("timed out after 10s"), Duration::from_secs(10));
        let s = r.snapshot();
        assert_eq!(s.last_passed, Some(false));
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[6], (0.05, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((s.latency_sum_s - 10.0303).abs() < 1e-9);
        assert!(s.last_check_ms > 0);
        assert_eq!(s.consecutive_passes, 0);
        assert!((s.last_latency_s - 10.0).abs() < 1e-9);
        r.record(None, Duration::from_millis(1));
        assert_eq!(r.snapshot().consecutive_passes, 1);
        let failure = r.snapshot().last_failure.expect("kept after a pass");
        assert_eq!(failure.reason, "timed out after 10s");
        assert!(failure.at_unix_ms > 0);
        assert!((r.snapshot().last_latency_s - 0.001).abs() < 1e-9);
    }
}
