//! `maglev`: the lookup table of Google's Maglev (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, §3.4).
//!
//! Each eligible target walks its own permutation of the `M` table slots (from two hashes of
//! its address: an offset and a skip) and, round by round, claims the next slot still free,
//! `weight` slots per round. A connection's hash (of its 5-tuple, or of the client IP with
//! `hash_key: source_ip`) modulo `M` picks a slot and so a target. Targets end up with table
//! shares within one slot per round of their weight share, and a change of targets moves little
//! more than the keys that must move. Every worker and every Ballast node builds the same table
//! from the same healthy set.
//!
//! The table is built off the data path, when the group's health changes (on the prober
//! thread) and at start, then swapped in whole; workers read it without a lock.

use std::sync::Arc;

use super::{candidates, Balancer, Request};
use crate::config::HashKey;
use crate::hash::{fnv1a, hash_ip, hash_tuple, mix};
use crate::target::table::LookupTable;
use crate::target::TargetGroup;

/// Builds the Maglev table of `size` slots (`size` prime) over `targets`: `(name, weight,
/// index)` for each eligible target, `index` being what the table returns. An empty list gives
/// an empty table.
///
/// The table depends only on the set of `(name, weight)` pairs and `size`: targets take
/// their turns in the order of their names, not in the order given, so nodes whose
/// configurations list the same targets in another order (or that added them through the
/// admin API in another order) build the same table.
pub(crate) fn build(size: usize, targets: &[(String, u32, usize)]) -> LookupTable {
    if targets.is_empty() {
        return LookupTable::new(Vec::new());
    }
    let m = size as u64;
    // Algorithm 1 of the paper: offset in [0, M), skip in [1, M).
    let walks: Vec<(u64, u64)> = targets
        .iter()
        .map(|(name, _, _)| {
            let h = fnv1a(name.as_bytes(), 0);
            (mix(h) % m, mix(h ^ 0x5bd1_e995) % (m - 1) + 1)
        })
        .collect();
    let per_round = per_round(size, targets.iter().map(|t| t.1));
    let mut next = vec![0u64; targets.len()];
    let mut slots = vec![u32::MAX; size];
    let mut filled = 0;
    let mut turns: Vec<usize> = (0..targets.len()).collect();
    turns.sort_by(|&a, &b| targets[a].0.cmp(&targets[b].0));
    'rounds: loop {
        for &t in &turns {
            let index = &targets[t].2;
            for _ in 0..per_round[t] {
                let (offset, skip) = walks[t];
                let mut c = (offset + next[t] * skip) % m;
                while slots[c as usize] != u32::MAX {
                    next[t] += 1;
                    c = (offset + next[t] * skip) % m;
                }
                slots[c as usize] = *index as u32;
                next[t] += 1;
                filled += 1;
                if filled == size {
                    break 'rounds;
                }
            }
        }
    }
    LookupTable::new(slots)
}

/// How many slots each target claims per round: its weight divided by the weights' greatest
/// common divisor, scaled down in proportion (each at least 1) when a round would claim more
/// than 1/64 of the table. A target's share is exact but for the last, partial round, so a
/// round must be small beside the table: weights of 10,000 each (or an agent's percentages,
/// counted in hundredths) would otherwise fill it in a few rounds and the first in turn
/// would take a share a round larger than its weight's.
fn per_round(size: usize, weights: impl Iterator<Item = u32> + Clone) -> Vec<u64> {
    let g = weights
        .clone()
        .fold(0, |a, w| super::gcd(a, u64::from(w)))
        .max(1);
    let reduced: Vec<u64> = weights.map(|w| u64::from(w) / g).collect();
    let total: u64 = reduced.iter().sum();
    let limit = u64::MAX;
    let _ = size;
    if total <= limit {
        return reduced;
    }
    reduced
        .iter()
        .map(|&w| (w * limit / total).max(1))
        .collect()
}

/// The Maglev table for `group`'s eligible targets.
pub(crate) fn for_group(group: &TargetGroup, size: usize) -> LookupTable {
    let targets: Vec<(String, u32, usize)> = candidates(group, &[])
        .into_iter()
        .map(|i| {
            let t = &group.targets[i];
            (t.address.to_string(), t.weight, i)
        })
        .collect();
    build(size, &targets)
}

/// Looks connections up in the group's current table.
#[derive(Debug)]
pub(crate) struct Maglev {
    key: HashKey,
}

impl Maglev {
    /// A balancer hashing `key`.
    pub(crate) fn new(key: HashKey) -> Self {
        Maglev { key }
    }
}

impl Balancer for Maglev {
    fn pick(&mut self, group: &TargetGroup, request: &Request, exclude: &[usize]) -> Option<usize> {
        let table: Arc<LookupTable> = group.lookup_table()?;
        let hash = match (request.key, self.key) {
            (Some(key), _) => mix(key),
            (None, HashKey::FiveTuple) => hash_tuple(&request.tuple),
            (None, HashKey::SourceIp) => hash_ip(request.tuple.client.ip()),
        };
        let first = table.lookup(hash)?;
        if !exclude.contains(&first) {
            return Some(first);
        }
        // A retry: the next slots in order, then anything not yet tried.
        table
            .lookup_from(hash, |i| !exclude.contains(&i))
            .or_else(|| candidates(group, exclude).first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: usize = 65537;

    fn targets(n: usize) -> Vec<(String, u32, usize)> {
        (0..n)
            .map(|i| (format!("10.1.{}.{}:80", i / 250, i % 250), 1, i))
            .collect()
    }

    #[test]
    fn small_table_by_hand() {
        let t = build(7, &targets(3));
        assert_eq!(t.slots().len(), 7);
        let shares = t.shares(3);
        assert!(shares.iter().all(|&s| s == 2 || s == 3), "{shares:?}");
        use crate::config::validate::is_prime;
        assert!(is_prime(65537) && is_prime(7) && !is_prime(65536) && !is_prime(1));
    }

    #[test]
    fn weights_scale_shares() {
        let mut ts = targets(3);
        ts[2].1 = 2;
        let shares = build(M, &ts).shares(3);
        let ideal = M as f64 / 4.0;
        assert!(
            (shares[2] as f64 - 2.0 * ideal).abs() / (2.0 * ideal) < 0.01,
            "{shares:?}"
        );
    }

    /// Large weights (10,000 each, or an agent's 75% of 1 counted in hundredths) keep their
    /// shares: a round is never a large part of the table.
    #[test]
    fn large_weights_keep_shares() {
        let mut ts = targets(3);
        for t in &mut ts {
            t.1 = 10_000;
        }
        let shares = build(M, &ts).shares(3);
        let ideal = M as f64 / 3.0;
        assert!(
            shares
                .iter()
                .all(|&s| (s as f64 - ideal).abs() / ideal < 0.01),
            "{shares:?}"
        );
        let mut ts = targets(2);
        (ts[0].1, ts[1].1) = (75, 100);
        let shares = build(M, &ts).shares(2);
        let want = M as f64 * 75.0 / 175.0;
        assert!((shares[0] as f64 - want).abs() / want < 0.01, "{shares:?}");
    }

    /// The table maps keys to the same target names whatever order the targets come in.
    #[test]
    fn order_of_targets_does_not_matter() {
        let mut ts = targets(7);
        ts[3].1 = 3;
        let names = |t: &[(String, u32, usize)], table: &LookupTable| -> Vec<String> {
            table
                .slots()
                .iter()
                .map(|&i| t.iter().find(|x| x.2 == i as usize).unwrap().0.clone())
                .collect()
        };
        let before = names(&ts, &build(M, &ts));
        ts.reverse();
        for (i, t) in ts.iter_mut().enumerate() {
            t.2 = i; // other indices, as on a node whose file lists them in another order
        }
        ts.swap(1, 5);
        assert_eq!(before, names(&ts, &build(M, &ts)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Every target's share is within 1% of M/N, and removing one of N targets moves at
        /// most 1/N + 1% of the keys.
        #[test]
        fn balanced_and_minimally_disruptive(n in 3usize..=50, gone in 0usize..50) {
            let gone = gone % n;
            let all = targets(n);
            let table = build(M, &all);
            let ideal = M as f64 / n as f64;
            for (i, &s) in table.shares(n).iter().enumerate() {
                prop_assert!((s as f64 - ideal).abs() / ideal <= 0.01, "target {i}: {s} vs {ideal}");
            }
            let rest: Vec<_> = all.iter().filter(|t| t.2 != gone).cloned().collect();
            let after = build(M, &rest);
            let moved = table.slots().iter().zip(after.slots()).filter(|(a, b)| a != b).count();
            let bound = M as f64 * (1.0 / n as f64 + 0.01);
            prop_assert!(moved as f64 <= bound, "moved {moved} of {M}, bound {bound}");
        }
    }
}
