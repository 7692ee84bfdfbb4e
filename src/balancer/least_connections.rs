//! `least_connections`: the target with the fewest active connections per unit of weight,
//! counted across all workers (the targets' shared atomics), ties broken in rotation.

use std::sync::atomic::Ordering;

use super::{candidates, Balancer, EligibleCache, Request};
use crate::target::TargetGroup;

/// Fewest active connections per weight; among equals, the next in a rotation shared by the
/// workers (the group's cursor), so equal targets take turns instead of the first one winning.
#[derive(Debug, Default)]
pub struct LeastConnections {
    cache: EligibleCache,
}

impl Balancer for LeastConnections {
    fn pick(&mut self, group: &TargetGroup, _: &Request, exclude: &[usize]) -> Option<usize> {
        if !exclude.is_empty() {
            let pool: Vec<(usize, u32)> = candidates(group, exclude)
                .into_iter()
                .map(|i| (i, group.targets[i].weight))
                .collect();
            return least_loaded(group, &pool);
        }
        least_loaded(group, self.cache.refresh(group).members())
    }
}

/// The least loaded of `pool` (`(index, weight)`), scanning from the group's rotating cursor.
fn least_loaded(group: &TargetGroup, pool: &[(usize, u32)]) -> Option<usize> {
    let n = pool.len();
    if n == 0 {
        return None;
    }
    let start = group.cursor.fetch_add(1, Ordering::Relaxed) % n;
    let (mut best, mut best_active, mut best_weight) = (pool[start].0, u64::MAX, 1u32);
    for &(i, w) in pool[start..].iter().chain(&pool[..start]) {
        let active = group.targets[i].active.load(Ordering::Relaxed);
        // active / w < best_active / best_weight, cross-multiplied: exact, no division.
        if u128::from(active) * u128::from(best_weight) < u128::from(best_active) * u128::from(w) {
            (best, best_active, best_weight) = (i, active, w);
        }
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::{group, request};
    use proptest::prelude::*;

    fn set_active(g: &TargetGroup, active: &[u64]) {
        for (t, &a) in g.targets.iter().zip(active) {
            t.active.store(a, Ordering::Relaxed);
        }
    }

    #[test]
    fn picks_the_least_loaded_per_weight() {
        let g = group(&[1, 2, 1]);
        set_active(&g, &[3, 4, 5]); // per weight: 3, 2, 5
        assert_eq!(
            LeastConnections::default().pick(&g, &request(1), &[]),
            Some(1)
        );
        assert_eq!(
            LeastConnections::default().pick(&g, &request(1), &[1]),
            Some(0)
        );
    }

    #[test]
    fn ties_rotate() {
        let g = group(&[1, 1, 1]);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                LeastConnections::default()
                    .pick(&g, &request(1), &[])
                    .unwrap()
            })
            .collect();
        let mut counts = [0; 3];
        for p in picks {
            counts[p] += 1;
        }
        assert_eq!(counts, [2, 2, 2]);
    }

    proptest! {
        /// The pick is always a minimum of active/weight among healthy, non-excluded targets.
        #[test]
        fn always_picks_a_minimum(
            targets in prop::collection::vec((1u32..10, 0u64..50, any::<bool>()), 1..20),
            exclude_mask in any::<u32>(),
        ) {
            let weights: Vec<u32> = targets.iter().map(|t| t.0).collect();
            let g = group(&weights);
            for (i, (_, active, healthy)) in targets.iter().enumerate() {
                g.targets[i].active.store(*active, Ordering::Relaxed);
                g.set_healthy(i, *healthy);
            }
            let exclude: Vec<usize> = (0..targets.len()).filter(|i| exclude_mask >> i & 1 == 1).collect();
            let pool = candidates(&g, &exclude);
            match LeastConnections::default().pick(&g, &request(1), &exclude) {
                None => prop_assert!(pool.is_empty()),
                Some(p) => {
                    prop_assert!(pool.contains(&p));
                    for &i in &pool {
                        prop_assert!(!crate::balancer::less_loaded(&g, i, p), "{i} is less loaded than the pick {p}");
                    }
                }
            }
        }
    }
}
