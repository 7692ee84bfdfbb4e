//! `least_connections`: the target with the fewest active connections per unit of weight,
//! counted across all workers (the targets' shared atomics), ties broken in rotation.
//!
//! A pick is one pass over the eligible targets (about 85 ns for 100 targets; see the README).
//! To keep that pass free of divisions and wide multiplications, each target's load
//! `active / weight` is compared as the 64-bit integer `active × scale`, where `scale` is
//! `L / weight` for `L` the least common multiple of the eligible targets' weights: exact, and
//! equal ratios give equal keys, so ties rotate. Only when `L` exceeds 2^32 (several large,
//! coprime weights) is `scale` `2^32 / weight` rounded down; the order is then still exact
//! while `active < 2^32 / (w₁ × w₂)` for the two targets compared, since two distinct ratios
//! differ by at least `1 / (w₁ × w₂)`.

use std::sync::atomic::Ordering;

use super::{candidates, Balancer, EligibleCache, Request};
use std::sync::Arc;

use crate::target::{TargetGroup, TargetState};

/// Fewest active connections per weight; among equals, the next in a rotation shared by the
/// workers (the group's cursor), so equal targets take turns instead of the first one winning.
#[derive(Debug, Default)]
pub(crate) struct LeastConnections {
    cache: EligibleCache,
    /// One per member of `cache`, rebuilt with it.
    scaled: Vec<Member>,
    generation: Option<u64>,
}

impl Balancer for LeastConnections {
    fn pick(&mut self, group: &TargetGroup, _: &Request, exclude: &[usize]) -> Option<usize> {
        if !exclude.is_empty() {
            let pool: Vec<(usize, u32)> = candidates(group, exclude)
                .into_iter()
                .map(|i| (i, group.targets[i].weight))
                .collect();
            return least_loaded(group, &scaled(group, &pool));
        }
        let generation = group.health_generation();
        if self.generation != Some(generation) {
            self.scaled = scaled(group, self.cache.refresh(group).members());
            self.generation = Some(generation);
        }
        least_loaded(group, &self.scaled)
    }
}

/// A target in the scan: its index, the scale of its load (see the module docs), and its
/// state, held directly so the scan reads each counter with one load.
#[derive(Debug, Clone)]
struct Member {
    index: usize,
    scale: u64,
    state: Arc<TargetState>,
}

/// A [`Member`] for each `(index, weight)` of `group`.
fn scaled(group: &TargetGroup, members: &[(usize, u32)]) -> Vec<Member> {
    const LIMIT: u64 = 1 << 32;
    let lcm = members.iter().try_fold(1u64, |l, &(_, w)| {
        let w = u64::from(w);
        let next = l / super::gcd(l, w) * w;
        (next <= LIMIT).then_some(next)
    });
    let numerator = lcm.unwrap_or(LIMIT);
    members
        .iter()
        .map(|&(i, w)| Member {
            index: i,
            scale: numerator / u64::from(w),
            state: group.targets[i].state().clone(),
        })
        .collect()
}

/// The least loaded of `pool`, scanning from the group's rotating cursor so the first minimum
/// found is the next in rotation.
fn least_loaded(group: &TargetGroup, pool: &[Member]) -> Option<usize> {
    let n = pool.len();
    if n == 0 {
        return None;
    }
    let start = group.cursor.fetch_add(1, Ordering::Relaxed) % n;
    // Two halves scanned separately (a chained iterator costs a branch per element); a
    // minimum in the first half wins ties against one in the second, which is the rotation.
    let (head, tail) = pool.split_at(start);
    let (a, a_key) = min_key(tail);
    let (b, b_key) = min_key(head);
    Some(if b_key < a_key { b } else { a })
}

/// The first `(index, key)` with the smallest key in `pool` (`usize::MAX, u64::MAX` if empty).
fn min_key(pool: &[Member]) -> (usize, u64) {
    let (mut best, mut best_key) = (usize::MAX, u64::MAX);
    for m in pool {
        // `as u32` is exact: each connection or session holds a file descriptor, and Linux caps
        // a process's open files below 2^31 (fs.nr_open). With `scale` ≤ 2^32 the product fits.
        let key = u64::from(m.state.active.load(Ordering::Relaxed) as u32) * m.scale;
        // Branch-free select: the winner changes rarely, a mispredicted branch costs more.
        let less = key < best_key;
        best = if less { m.index } else { best };
        best_key = if less { key } else { best_key };
    }
    (best, best_key)
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
    fn scales_are_the_lcm_over_the_weight_or_a_fixed_point_fallback() {
        let g = group(&[1, 2, 3]);
        let scales = |weights: &[(usize, u32)]| -> Vec<(usize, u64)> {
            scaled(&g, weights)
                .iter()
                .map(|m| (m.index, m.scale))
                .collect()
        };
        assert_eq!(scales(&[(0, 1), (1, 2), (2, 3)]), [(0, 6), (1, 3), (2, 2)]);
        // Coprime weights whose product passes 2^32: 2^32 / weight.
        let s = scales(&[(0, 65_521), (1, 65_519), (2, 65_497)]);
        assert_eq!(s[0].1, (1u64 << 32) / 65_521);
        assert!(s.iter().all(|&(_, scale)| scale <= 1 << 32));
    }

    #[test]
    fn equal_ratios_of_different_weights_take_turns() {
        let g = group(&[1, 2]);
        set_active(&g, &[3, 6]);
        let mut counts = [0; 2];
        for _ in 0..4 {
            counts[LeastConnections::default()
                .pick(&g, &request(1), &[])
                .unwrap()] += 1;
        }
        assert_eq!(counts, [2, 2]);
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
