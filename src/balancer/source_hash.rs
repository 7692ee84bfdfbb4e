//! `source_hash`: the client IP picks the target, by weighted rendezvous hashing (highest
//! random weight: Thaler and Ravishankar, IEEE/ACM ToN 1998; weights as in Schindelhauer and
//! Schomaker, "Weighted Distributed Hash Tables", SPAA 2005: score = -w / ln(u)).
//!
//! Every target gets a score from a hash of (client IP, target address); the highest wins. The
//! hash is fixed (FNV-1a + SplitMix64), so every worker, every restart and every Ballast node
//! maps a client the same way; when a target leaves, only the clients whose best it was move.

use std::net::SocketAddr;

use super::hash::{fnv1a, hash_ip, mix};
use super::{candidates, Balancer, Request};
use crate::target::TargetGroup;

/// Weighted rendezvous hashing of the client IP over the candidates.
#[derive(Debug, Default)]
pub struct SourceHash;

/// The score of `target` (weight `weight`) for a client whose IP hashes to `key`.
pub fn score(key: u64, target: SocketAddr, weight: u32) -> f64 {
    let h = mix(fnv1a(target.to_string().as_bytes(), key));
    // u in (0, 1): never 0, so ln(u) < 0 and the score is positive.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

impl Balancer for SourceHash {
    fn pick(&mut self, group: &TargetGroup, request: &Request, exclude: &[usize]) -> Option<usize> {
        let key = hash_ip(request.tuple.client.ip());
        candidates(group, exclude).into_iter().max_by(|&a, &b| {
            let (ta, tb) = (&group.targets[a], &group.targets[b]);
            score(key, ta.address, ta.weight).total_cmp(&score(key, tb.address, tb.weight))
        })
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
