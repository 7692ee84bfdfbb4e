//! Balancing: which target of a group gets the next connection.
//!
//! One trait, [`Balancer`], and one file per algorithm. A worker owns one balancer per target
//! group; balancers read shared state (health, the group's cursor) but do no I/O, so they are
//! tested deterministically.
//!
//! Both round-robin algorithms share one mechanism ([`schedule`]): a cycle of target indices
//! computed from the healthy set alone, indexed by the group's shared atomic cursor. Every worker
//! computes the same cycle for the same healthy set, so N workers together walk one cycle and
//! the split across targets is exact, with no lock.

pub mod round_robin;
pub mod schedule;
pub mod weighted_round_robin;

use crate::config::Algorithm;
use crate::target::TargetGroup;

/// Picks targets for new connections of one target group.
pub trait Balancer: Send {
    /// Returns the index (into `group.targets`) of the target for a new connection, never one in
    /// `exclude` (targets that already failed this connection). Prefers healthy targets; when
    /// every target is unhealthy, picks among all (fail open). Returns `None` only when every
    /// target is excluded.
    fn pick(&mut self, group: &TargetGroup, exclude: &[usize]) -> Option<usize>;
}

/// Builds the balancer for `algorithm`.
pub fn for_algorithm(algorithm: Algorithm) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::default()),
        Algorithm::WeightedRoundRobin => {
            Box::new(weighted_round_robin::WeightedRoundRobin::default())
        }
    }
}

/// The targets a retry must avoid: those tried since every target of the group was last tried.
/// With `tried` in attempt order and `targets` targets, a connection first tries distinct
/// targets; once all have failed it may try them again, in a new round (so a one-target group
/// still gets its `retries`, as HAProxy retries the same server).
pub fn retry_exclusions(tried: &[usize], targets: usize) -> &[usize] {
    if targets == 0 {
        return tried;
    }
    &tried[(tried.len() / targets) * targets..]
}

/// The targets a pick may choose from: the healthy ones, or all of them when none is healthy
/// (fail open: a health check that is wrong about every target must not take the service down).
pub fn eligible(health: &[bool]) -> Vec<usize> {
    let healthy: Vec<usize> = (0..health.len()).filter(|&i| health[i]).collect();
    if healthy.is_empty() {
        (0..health.len()).collect()
    } else {
        healthy
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::retry_exclusions;

    #[test]
    fn retries_avoid_tried_targets_until_all_were_tried() {
        assert_eq!(retry_exclusions(&[], 3), &[] as &[usize]);
        assert_eq!(retry_exclusions(&[2, 0], 3), &[2, 0]);
        assert_eq!(retry_exclusions(&[2, 0, 1], 3), &[] as &[usize]);
        assert_eq!(retry_exclusions(&[2, 0, 1, 2], 3), &[2]);
        assert_eq!(retry_exclusions(&[0, 0], 1), &[] as &[usize]);
    }

    use std::path::Path;

    use crate::config;
    use crate::target::{Shared, TargetGroup};

    /// A group of targets on 127.0.0.1:1001.. with these weights.
    pub fn group(weights: &[u32]) -> TargetGroup {
        let mut yaml = String::from(
            "listeners:\n  - {name: l, protocol: tcp, bind: '127.0.0.1:1', target_group: g}\n\
             target_groups:\n  - name: g\n    targets:\n",
        );
        for (i, w) in weights.iter().enumerate() {
            yaml += &format!(
                "      - {{address: '127.0.0.1:{}', weight: {w}}}\n",
                1001 + i
            );
        }
        let cfg = config::parse(Path::new("t.yaml"), &yaml).unwrap();
        let shared = Shared::new(cfg);
        std::sync::Arc::try_unwrap(shared)
            .unwrap()
            .groups
            .pop()
            .unwrap()
    }
}
