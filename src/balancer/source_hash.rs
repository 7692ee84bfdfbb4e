//! `source_hash`: the client IP picks the target, by weighted rendezvous hashing (highest
//! random weight: Thaler and Ravishankar, IEEE/ACM ToN 1998; weights as in Schindelhauer and
//! Schomaker, "Weighted Distributed Hash Tables", SPAA 2005: score = -w / ln(u)).
//!
//! Client IPs hash (FNV-1a + SplitMix64, fixed) into one of [`BUCKETS`] buckets, and each
//! bucket goes to the target with the highest score for it. The bucket winners are computed off
//! the data path into a lookup table (at start, and on the prober thread when health changes),
//! so a pick is one hash and one load. Every worker, every restart and every Ballast node maps
//! a client the same way; when a target leaves, only the buckets it won move — only the clients
//! that were on it.

use std::net::SocketAddr;

use super::{candidates, Balancer, Request};
use crate::hash::{fnv1a, hash_ip, mix};
use crate::target::table::LookupTable;
use crate::target::TargetGroup;

/// Buckets of client IPs: enough that each of a few hundred targets gets its weight's share
/// within a few percent.
pub(crate) const BUCKETS: usize = 65536;

/// Weighted rendezvous hashing of the client IP over the candidates.
#[derive(Debug, Default)]
pub(crate) struct SourceHash;

/// A target's fixed hash seed, from its address.
fn seed(target: SocketAddr) -> u64 {
    fnv1a(target.to_string().as_bytes(), 0)
}

/// The score of a target (its `seed` and `weight`) for `bucket`: highest wins.
fn score(bucket: u64, seed: u64, weight: u32) -> f64 {
    let h = mix(seed ^ mix(bucket));
    // u in (0, 1): never 0, so ln(u) < 0 and the score is positive.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// The winner of `bucket` among `targets` (`(seed, weight, index)`).
fn winner(bucket: u64, targets: &[(u64, u32, usize)]) -> Option<usize> {
    targets
        .iter()
        .max_by(|a, b| score(bucket, a.0, a.1).total_cmp(&score(bucket, b.0, b.1)))
        .map(|t| t.2)
}

fn scored(group: &TargetGroup, pool: &[usize]) -> Vec<(u64, u32, usize)> {
    pool.iter()
        .map(|&i| (seed(group.targets[i].address), group.targets[i].weight, i))
        .collect()
}

/// The bucket table for `group`'s eligible targets.
pub(crate) fn for_group(group: &TargetGroup) -> LookupTable {
    let targets = scored(group, &candidates(group, &[]));
    if targets.is_empty() {
        return LookupTable::new(Vec::new());
    }
    let slots = (0..BUCKETS as u64)
        .map(|b| winner(b, &targets).unwrap_or(0) as u32)
        .collect();
    LookupTable::new(slots)
}

impl Balancer for SourceHash {
    fn pick(&mut self, group: &TargetGroup, request: &Request, exclude: &[usize]) -> Option<usize> {
        let hash = request
            .key
            .map_or_else(|| hash_ip(request.tuple.client.ip()), mix);
        let bucket = hash % BUCKETS as u64;
        if let Some(t) = group.lookup_table().and_then(|table| table.lookup(bucket)) {
            if !exclude.contains(&t) {
                return Some(t);
            }
        }
        // A retry: the bucket's winner among the targets not yet tried.
        winner(bucket, &scored(group, &candidates(group, exclude)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::tests::{group, request};
    use crate::conntrack::FiveTuple;
    use proptest::prelude::*;

    fn from_ip(ip: [u8; 4]) -> Request {
        let mut r = request(1000);
        r.tuple = FiveTuple {
            client: SocketAddr::from((ip, 1000)),
            ..r.tuple
        };
        r
    }

    #[test]
    fn same_ip_same_target_whatever_the_port() {
        let g = group(&[1, 1, 1, 1]);
        let a = SourceHash.pick(&g, &request(1), &[]);
        for port in 2..50 {
            assert_eq!(SourceHash.pick(&g, &request(port), &[]), a);
        }
    }

    #[test]
    fn spread_follows_weights() {
        let g = group(&[1, 1, 2]);
        let mut counts = [0; 3];
        for i in 0..40_000u32 {
            let ip = i.to_be_bytes();
            counts[SourceHash.pick(&g, &from_ip(ip), &[]).unwrap()] += 1;
        }
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.5).abs() < 0.02, "{counts:?}");
    }

    proptest! {
        /// A client maps to the same target in every worker (a fresh balancer each time) and
        /// after a restart; removing a target moves only the clients that were on it.
        #[test]
        fn stable_and_minimal_disruption(ip in any::<[u8; 4]>(), n in 2usize..12, gone in 0usize..12) {
            let gone = gone % n;
            let g = group(&vec![1; n]);
            let before = SourceHash.pick(&g, &from_ip(ip), &[]).unwrap();
            prop_assert_eq!(SourceHash.pick(&group(&vec![1; n]), &from_ip(ip), &[]), Some(before));
            g.set_healthy(gone, false);
            let after = SourceHash.pick(&g, &from_ip(ip), &[]).unwrap();
            if before != gone {
                prop_assert_eq!(after, before);
            } else {
                prop_assert_ne!(after, gone);
            }
        }
    }
}
