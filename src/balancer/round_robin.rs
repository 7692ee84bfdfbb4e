//! `round_robin`: each eligible target in turn, weights ignored.

use super::schedule::Schedule;
use super::{eligible, Balancer, Request};
use crate::target::TargetGroup;

/// Round robin over the healthy targets, one cycle shared by all workers of the group.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    schedule: Schedule,
}

impl Balancer for RoundRobin {
    fn pick(&mut self, group: &TargetGroup, _: &Request, exclude: &[usize]) -> Option<usize> {
        self.schedule.pick(group, exclude, eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::{group, request};

    #[test]
    fn cycles_over_healthy_targets_only() {
        let g = group(&[1, 5, 1]);
        let mut a = RoundRobin::default();
        let picks: Vec<_> = (0..6)
            .map(|_| a.pick(&g, &request(1), &[]).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        g.set_healthy(1, false);
        let picks: Vec<_> = (0..4)
            .map(|_| a.pick(&g, &request(1), &[]).unwrap())
            .collect();
        assert!(picks.iter().all(|&i| i != 1));
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
    }

    #[test]
    fn two_workers_share_one_cycle() {
        let g = group(&[1, 1, 1]);
        let (mut a, mut b) = (RoundRobin::default(), RoundRobin::default());
        let mut counts = [0; 3];
        for k in 0..300 {
            let w: &mut RoundRobin = if k % 7 < 3 { &mut a } else { &mut b };
            counts[w.pick(&g, &request(1), &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn exclusion_and_fail_open() {
        let g = group(&[1, 1, 1]);
        let mut a = RoundRobin::default();
        for _ in 0..5 {
            assert_eq!(a.pick(&g, &request(1), &[0, 2]), Some(1));
        }
        assert_eq!(a.pick(&g, &request(1), &[0, 1, 2]), None);
        for i in 0..3 {
            g.set_healthy(i, false);
        }
        let mut seen = [false; 3];
        for _ in 0..3 {
            seen[a.pick(&g, &request(1), &[]).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3], "all unhealthy: every target used");
        // A healthy target exhausted by retries falls back to an unhealthy one.
        g.set_healthy(0, true);
        assert_eq!(a.pick(&g, &request(1), &[0]).map(|i| i != 0), Some(true));
    }
}
