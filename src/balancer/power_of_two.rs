//! `power_of_two`: two random choices, the less loaded wins (Mitzenmacher, "The Power of Two
//! Choices in Randomized Load Balancing", IEEE TPDS 2001).

use super::{candidates, less_loaded, weighted_choice, Balancer, EligibleCache, Request};
use crate::hash::Rng;
use crate::target::TargetGroup;

/// Two weighted random draws; the one with fewer active connections per weight wins (the first
/// on a tie).
#[derive(Debug)]
pub(crate) struct PowerOfTwo {
    rng: Rng,
    cache: EligibleCache,
}

impl PowerOfTwo {
    /// A balancer drawing from `rng`.
    pub(crate) fn new(rng: Rng) -> Self {
        PowerOfTwo {
            rng,
            cache: EligibleCache::default(),
        }
    }
}

impl Balancer for PowerOfTwo {
    fn pick(&mut self, group: &TargetGroup, _: &Request, exclude: &[usize]) -> Option<usize> {
        let (a, b) = if exclude.is_empty() {
            let cache = self.cache.refresh(group);
            (cache.draw(&mut self.rng)?, cache.draw(&mut self.rng)?)
        } else {
            let pool = candidates(group, exclude);
            (
                weighted_choice(group, &pool, &mut self.rng)?,
                weighted_choice(group, &pool, &mut self.rng)?,
            )
        };
        Some(if less_loaded(group, b, a) { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::{group, request};
    use std::sync::atomic::Ordering;

    #[test]
    fn never_picks_the_most_loaded_of_two() {
        let g = group(&[1, 1]);
        g.targets[0].active.store(10, Ordering::Relaxed);
        let mut p = PowerOfTwo::new(Rng::new(3));
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[p.pick(&g, &request(1), &[]).unwrap()] += 1;
        }
        // Target 0 wins only when both draws are 0: about a quarter of the time.
        assert!(counts[0] > 150 && counts[0] < 350, "{counts:?}");
    }
}
