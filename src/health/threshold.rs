//! Consecutive-result counting: when a stream of check results flips a target's health.

/// A change of health decided by [`Thresholds::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The target reached `healthy_threshold` consecutive passes.
    BecameHealthy {
        /// Consecutive passes counted.
        passes: u32,
    },
    /// The target reached `unhealthy_threshold` consecutive failures.
    BecameUnhealthy {
        /// Consecutive failures counted.
        failures: u32,
    },
}

/// Health of one target as its checks have found it, with the run of equal results so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    healthy: bool,
    run: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Thresholds {
    /// A healthy target (targets start healthy) with these thresholds (each ≥ 1).
    pub(crate) fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        debug_assert!(healthy_threshold >= 1 && unhealthy_threshold >= 1);
        Thresholds {
            healthy: true,
            run: 0,
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    /// The same thresholds for a target whose health is currently `healthy` (a target added
    /// at run time starts unhealthy).
    pub(crate) fn starting(mut self, healthy: bool) -> Self {
        self.healthy = healthy;
        self
    }

    /// Current health.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Counts one check result; returns the transition when this result completes a run of
    /// `healthy_threshold` passes (while unhealthy) or `unhealthy_threshold` failures (while
    /// healthy). A result that agrees with the current health resets the opposite run.
    pub(crate) fn record(&mut self, passed: bool) -> Option<Transition> {
        if passed == self.healthy {
            self.run = 0;
            return None;
        }
        self.run += 1;
        let needed = if passed {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        };
        if self.run < needed {
            return None;
        }
        self.healthy = passed;
        let run = std::mem::take(&mut self.run);
        Some(if passed {
            Transition::BecameHealthy { passes: run }
        } else {
            Transition::BecameUnhealthy { failures: run }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_consecutive_runs() {
        let mut t = Thresholds::new(2, 3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a pass resets the failure run");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(
            t.record(false),
            Some(Transition::BecameUnhealthy { failures: 3 })
        );
        assert!(!t.is_healthy());
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None, "a failure resets the pass run");
        assert_eq!(t.record(true), None);
        assert_eq!(
            t.record(true),
            Some(Transition::BecameHealthy { passes: 2 })
        );
        assert!(t.is_healthy());
    }

    #[test]
    fn threshold_one_flips_at_once() {
        let mut t = Thresholds::new(1, 1);
        assert!(t.record(false).is_some());
        assert!(t.record(true).is_some());
    }
}
