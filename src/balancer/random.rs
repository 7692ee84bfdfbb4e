//! `random`: a target drawn at random, in proportion to weights.

use super::{candidates, weighted_choice, Balancer, EligibleCache, Request};
use crate::hash::Rng;
use crate::target::TargetGroup;

/// Weighted random choice among the candidates; each worker has its own generator.
#[derive(Debug)]
pub(crate) struct Random {
    rng: Rng,
    cache: EligibleCache,
}

impl Random {
    /// A balancer drawing from `rng`.
    pub(crate) fn new(rng: Rng) -> Self {
        Random {
            rng,
            cache: EligibleCache::default(),
        }
    }
}

impl Balancer for Random {
    fn pick(&mut self, group: &TargetGroup, _: &Request, exclude: &[usize]) -> Option<usize> {
        if exclude.is_empty() {
            return self.cache.refresh(group).draw(&mut self.rng);
        }
        weighted_choice(group, &candidates(group, exclude), &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::{group, request};

    #[test]
    fn follows_weights_and_skips_excluded() {
        let g = group(&[1, 3]);
        let mut r = Random::new(Rng::new(1));
        let mut counts = [0; 2];
        for _ in 0..40_000 {
            counts[r.pick(&g, &request(1), &[]).unwrap()] += 1;
        }
        let share = counts[1] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{counts:?}");
        assert_eq!(r.pick(&g, &request(1), &[1]), Some(0));
        assert_eq!(r.pick(&g, &request(1), &[0, 1]), None);
    }
}
