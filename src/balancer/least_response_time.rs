//! `least_response_time`: the lowest moving average of response time, weighted by load.
//!
//! A target's score is its response-time EWMA (see [`crate::target::TargetState::record_response`]:
//! for TCP, the time from the connect's start, or from the first bytes sent to the target when
//! the client speaks first, to the target's first bytes back; for UDP, from the session's first
//! datagram to the first reply) times its active connections plus one, divided by its weight.
//! The lowest score wins; a target without a sample yet scores 0, so every target gets measured;
//! ties go round in turn.

use std::sync::atomic::Ordering;

use super::{candidates, Balancer, EligibleCache, Request};
use crate::target::TargetGroup;

/// Lowest `ewma × (active + 1) / weight`.
#[derive(Debug, Default)]
pub(crate) struct LeastResponseTime {
    cache: EligibleCache,
}

fn score(group: &TargetGroup, i: usize, w: u32) -> f64 {
    let t = &group.targets[i];
    let active = t.active.load(Ordering::Relaxed) as f64;
    t.response_ewma_us() as f64 * (active + 1.0) / f64::from(w)
}

fn lowest(group: &TargetGroup, pool: &[(usize, u32)]) -> Option<usize> {
    let n = pool.len();
    if n == 0 {
        return None;
    }
    let start = group.cursor.fetch_add(1, Ordering::Relaxed) % n;
    let mut best: Option<(usize, f64)> = None;
    for &(i, w) in pool[start..].iter().chain(&pool[..start]) {
        let s = score(group, i, w);
        if best.is_none_or(|(_, b)| s < b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

impl Balancer for LeastResponseTime {
    fn pick(&mut self, group: &TargetGroup, _: &Request, exclude: &[usize]) -> Option<usize> {
        if exclude.is_empty() {
            return lowest(group, self.cache.refresh(group).members());
        }
        let pool: Vec<(usize, u32)> = candidates(group, exclude)
            .into_iter()
            .map(|i| (i, group.targets[i].weight))
            .collect();
        lowest(group, &pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::{group, request};
    use std::time::Duration;

    #[test]
    fn unsampled_first_then_the_fastest_weighted_by_load() {
        let g = group(&[1, 1]);
        let mut b = LeastResponseTime::default();
        g.targets[0].record_response(Duration::from_millis(1));
        assert_eq!(
            b.pick(&g, &request(1), &[]),
            Some(1),
            "unmeasured target first"
        );
        g.targets[1].record_response(Duration::from_millis(50));
        assert_eq!(b.pick(&g, &request(1), &[]), Some(0));
        // 1 ms × 60 active beats 50 ms × 1 no longer.
        g.targets[0].active.store(59, Ordering::Relaxed);
        assert_eq!(b.pick(&g, &request(1), &[]), Some(1));
    }

    #[test]
    fn ewma_moves_toward_samples() {
        let g = group(&[1]);
        let t = &g.targets[0];
        t.record_response(Duration::from_micros(1000));
        assert_eq!(t.response_ewma_us(), 1000);
        t.record_response(Duration::from_micros(2000));
        assert_eq!(t.response_ewma_us(), 1300);
    }
}
