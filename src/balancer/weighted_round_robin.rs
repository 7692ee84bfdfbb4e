//! `weighted_round_robin`: smooth weighted round robin.
//!
//! The algorithm is nginx's (`ngx_http_upstream_get_peer`, 2012): each step adds every
//! target's weight to its running score, picks the highest score, and subtracts the total weight
//! from the winner. Over one cycle of `sum(weights)` steps each target is picked exactly
//! `weight` times, interleaved rather than in bursts: 1:2:3 gives `c b a c b c`, never `c c c`.

use super::schedule::Schedule;
use super::{eligible, Balancer, Request};
use crate::target::TargetGroup;

/// Smooth weighted round robin over the healthy targets, one cycle shared by all workers.
#[derive(Debug, Default)]
pub(crate) struct WeightedRoundRobin {
    schedule: Schedule,
}

impl Balancer for WeightedRoundRobin {
    fn pick(&mut self, group: &TargetGroup, _: &Request, exclude: &[usize]) -> Option<usize> {
        self.schedule.pick(group, exclude, |g, health| {
            let members = eligible(g, health);
            let weights: Vec<u32> = members.iter().map(|&i| g.targets[i].weight).collect();
            smooth_cycle(&weights)
                .into_iter()
                .map(|k| members[k])
                .collect()
        })
    }
}

/// Longest cycle built, entries: a bound on each worker's memory (8 bytes an entry) and on the
/// rebuild's time (`O(MAX_CYCLE × targets)`), whatever the weights (each up to 10,000).
pub(crate) const MAX_CYCLE: u64 = 1 << 16;

/// One full cycle of smooth weighted round robin over `weights` (indices into `weights`).
/// Weights are first divided by their greatest common divisor, so 100:200 cycles like 1:2.
/// Length: `sum(weights) / gcd`, exact shares, up to [`MAX_CYCLE`]; beyond it the weights are
/// scaled down in proportion (each at least 1), so each share is within one pick per cycle of
/// exact. Empty input gives an empty cycle. For example (a test below keeps it so),
/// `smooth_cycle(&[1, 2, 3])` is `[2, 1, 0, 2, 1, 2]` and `smooth_cycle(&[5, 5])` is `[0, 1]`.
pub(crate) fn smooth_cycle(weights: &[u32]) -> Vec<usize> {
    let g = weights
        .iter()
        .fold(0, |a, &w| super::gcd(a, u64::from(w)))
        .max(1) as u32;
    let mut w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let sum: i64 = w.iter().sum();
    if sum as u64 > MAX_CYCLE {
        // Room for the floor of 1 each target keeps (at most MAX_CYCLE / 2 targets assumed).
        let room = (MAX_CYCLE as i64 - w.len() as i64).max(MAX_CYCLE as i64 / 2);
        w = w.iter().map(|&x| (x * room / sum).max(1)).collect();
    }
    let total: i64 = w.iter().sum();
    let mut score = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (s, wi) in score.iter_mut().zip(&w) {
            *s += wi;
        }
        // Ties go to the lowest index, so every worker builds the same cycle.
        let best = (0..w.len()).fold(0, |b, i| if score[i] > score[b] { i } else { b });
        score[best] -= total;
        cycle.push(best);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_weights_interleave_and_common_factors_cancel() {
        assert_eq!(smooth_cycle(&[1, 2, 3]), [2, 1, 0, 2, 1, 2]);
        assert_eq!(smooth_cycle(&[5, 5]), [0, 1]);
    }

    #[test]
    fn large_weights_give_a_bounded_cycle_with_near_exact_shares() {
        // 300 targets with weights up to 10,000: Σ ≈ 1.5 million, far above the bound.
        let weights: Vec<u32> = (0..300).map(|i| 1 + (i * 7919) % 10_000).collect();
        let cycle = smooth_cycle(&weights);
        assert!(cycle.len() as u64 <= MAX_CYCLE, "{}", cycle.len());
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut counts = vec![0usize; weights.len()];
        for &i in &cycle {
            counts[i] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let want = f64::from(w) / total * cycle.len() as f64;
            assert!(
                (counts[i] as f64 - want).abs() <= 1.0 + want * 0.01,
                "target {i} (weight {w}): {} picks, want {want:.1}",
                counts[i]
            );
        }
    }

    #[test]
    fn small_weights_stay_exact() {
        let cycle = smooth_cycle(&[10_000, 1]);
        assert_eq!(cycle.len(), 10_001);
        assert_eq!(cycle.iter().filter(|&&i| i == 1).count(), 1);
    }
    use crate::balancer::tests::{group, request};

    #[test]
    fn cycle_is_exact_and_smooth() {
        let c = smooth_cycle(&[1, 2, 3]);
        assert_eq!(c, [2, 1, 0, 2, 1, 2]);
        assert_eq!(smooth_cycle(&[100, 200, 300]), c, "gcd reduced");
        assert!(smooth_cycle(&[]).is_empty());
        // Never more than ceil(w / others) in a row for the heaviest.
        let c = smooth_cycle(&[1, 1, 10]);
        let longest = c.split(|&i| i != 2).map(|run| run.len()).max().unwrap();
        assert!(longest <= 5, "{c:?}");
    }

    proptest::proptest! {
        /// Over each full cycle every target gets exactly its weight (after the gcd), and the
        /// shared cursor keeps that true across workers taking turns at random.
        #[test]
        fn exact_proportions_over_each_cycle(
            weights in proptest::collection::vec(1u32..12, 1..10),
            turns in proptest::collection::vec(proptest::bool::ANY, 1..200),
        ) {
            let g = group(&weights);
            let gcd = weights.iter().fold(0, |a, &w| super::super::gcd(a, u64::from(w))) as u32;
            let cycle: u32 = weights.iter().map(|w| w / gcd).sum();
            let (mut a, mut b) = (WeightedRoundRobin::default(), WeightedRoundRobin::default());
            for round in 0..3 {
                let mut counts = vec![0u32; weights.len()];
                for k in 0..cycle as usize {
                    let w = if turns[(round * 7 + k) % turns.len()] { &mut a } else { &mut b };
                    counts[w.pick(&g, &request(1), &[]).unwrap()] += 1;
                }
                let want: Vec<u32> = weights.iter().map(|w| w / gcd).collect();
                proptest::prop_assert_eq!(counts, want);
            }
        }
    }

    #[test]
    fn proportions_over_many_cycles_and_health_changes() {
        let g = group(&[1, 2, 3]);
        let mut b = WeightedRoundRobin::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b.pick(&g, &request(1), &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 100, 150]);
        g.set_healthy(2, false);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[b.pick(&g, &request(1), &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [10, 20, 0]);
    }
}
