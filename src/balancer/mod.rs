//! Balancing: which target of a group gets the next connection.
//!
//! One trait, [`Balancer`], and one file per algorithm. A worker owns one balancer per target
//! group; balancers read shared state (health, the group's cursor) but do no I/O, so they are
//! tested deterministically.
//!
//! Both round-robin algorithms share one mechanism ([`schedule`]): a cycle of target indices
//! computed from the healthy set alone, indexed by the group's shared atomic cursor. Every worker
//! computes the same cycle for the same healthy set, so N workers together walk one cycle and
//! the split across targets is exact, with no lock.

pub(crate) mod least_connections;
pub(crate) mod least_response_time;
pub(crate) mod maglev;
pub(crate) mod power_of_two;
pub(crate) mod random;
pub(crate) mod round_robin;
pub(crate) mod schedule;
pub(crate) mod source_hash;
pub(crate) mod weighted_round_robin;

use std::sync::atomic::Ordering;

use crate::config::{Algorithm, HashKey};
use crate::conntrack::FiveTuple;
use crate::target::{TableBuilder, TargetGroup};

/// What is known of a new connection or flow when a target is picked.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Its 5-tuple (the client's address is what `source_hash` keys on).
    pub tuple: FiveTuple,
    /// What the hashing algorithms (`maglev`, `source_hash`) key on instead of the tuple or
    /// the client's address, when set: a QUIC Initial's destination connection ID, hashed, so
    /// a retransmitted Initial from another address or node lands on the same target.
    pub key: Option<u64>,
}

impl Request {
    /// A request for the flow `tuple`, with no key of its own.
    pub fn new(tuple: FiveTuple) -> Request {
        Request { tuple, key: None }
    }
}

/// Picks targets for new connections of one target group.
pub trait Balancer: Send {
    /// Returns the index (into `group.targets`) of the target for `request`, never one in
    /// `exclude` (targets that already failed this connection). Prefers healthy targets; when
    /// every target is unhealthy, picks among all (fail open). Returns `None` only when every
    /// target is excluded.
    fn pick(&mut self, group: &TargetGroup, request: &Request, exclude: &[usize]) -> Option<usize>;
}

/// Builds the balancer for `algorithm` (`hash_key` is what `maglev` hashes).
pub fn for_algorithm(algorithm: Algorithm, hash_key: HashKey) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::default()),
        Algorithm::WeightedRoundRobin => {
            Box::new(weighted_round_robin::WeightedRoundRobin::default())
        }
        Algorithm::LeastConnections => Box::new(least_connections::LeastConnections::default()),
        Algorithm::Random => Box::new(random::Random::new(crate::hash::Rng::from_entropy())),
        Algorithm::PowerOfTwo => Box::new(power_of_two::PowerOfTwo::new(
            crate::hash::Rng::from_entropy(),
        )),
        Algorithm::SourceHash => Box::new(source_hash::SourceHash),
        Algorithm::Maglev => Box::new(maglev::Maglev::new(hash_key)),
        Algorithm::LeastResponseTime => Box::new(least_response_time::LeastResponseTime::default()),
    }
}

/// One worker's copy of a group's [`eligible`] targets with their weights and running weight
/// sums, rebuilt only when the group's health changes, so a pick without exclusions reads no
/// health and allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct EligibleCache {
    generation: Option<u64>,
    members: Vec<(usize, u32)>,
    prefix: Vec<u64>,
}

impl EligibleCache {
    /// Brings the cache up to date with `group`'s health.
    pub(crate) fn refresh(&mut self, group: &TargetGroup) -> &Self {
        let generation = group.health_generation();
        if self.generation != Some(generation) {
            self.members = eligible(group, &group.health())
                .into_iter()
                .map(|i| (i, group.targets[i].weight))
                .collect();
            let mut sum = 0;
            self.prefix = self
                .members
                .iter()
                .map(|&(_, w)| {
                    sum += u64::from(w);
                    sum
                })
                .collect();
            self.generation = Some(generation);
        }
        self
    }

    /// `(target index, weight)` of each eligible target.
    pub(crate) fn members(&self) -> &[(usize, u32)] {
        &self.members
    }

    /// A member drawn with probability proportional to its weight.
    pub(crate) fn draw(&self, rng: &mut crate::hash::Rng) -> Option<usize> {
        let total = *self.prefix.last()?;
        let point = rng.below(total);
        let k = self.prefix.partition_point(|&p| p <= point);
        self.members.get(k).map(|&(i, _)| i)
    }
}

/// The [`eligible`] targets not in `exclude`; when a retry has excluded all of those, any
/// healthy target not yet tried, then any target not yet tried.
pub(crate) fn candidates(group: &TargetGroup, exclude: &[usize]) -> Vec<usize> {
    let health = group.health();
    let untried = |i: &usize| !exclude.contains(i);
    let pool: Vec<usize> = eligible(group, &health)
        .into_iter()
        .filter(untried)
        .collect();
    if !pool.is_empty() {
        return pool;
    }
    let in_service = |i: &usize| group.targets[*i].in_service();
    let healthy: Vec<usize> = (0..health.len())
        .filter(|&i| health[i])
        .filter(untried)
        .filter(in_service)
        .collect();
    if healthy.is_empty() {
        (0..health.len())
            .filter(untried)
            .filter(in_service)
            .collect()
    } else {
        healthy
    }
}

/// The greatest common divisor of `a` and `b` (Euclid); `gcd(0, b)` is `b`.
pub(crate) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Active connections of target `i` (across workers).
fn active(group: &TargetGroup, i: usize) -> u64 {
    group.targets[i].active.load(Ordering::Relaxed)
}

/// Whether target `a` is less loaded than target `b`: fewer active connections per unit of
/// weight (compared by cross-multiplying, no division).
pub(crate) fn less_loaded(group: &TargetGroup, a: usize, b: usize) -> bool {
    let (wa, wb) = (
        u128::from(group.targets[a].weight),
        u128::from(group.targets[b].weight),
    );
    u128::from(active(group, a)) * wb < u128::from(active(group, b)) * wa
}

/// A candidate chosen with probability proportional to its weight.
fn weighted_choice(
    group: &TargetGroup,
    candidates: &[usize],
    rng: &mut crate::hash::Rng,
) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .map(|&i| u64::from(group.targets[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.below(total);
    for &i in candidates {
        let w = u64::from(group.targets[i].weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    candidates.last().copied()
}

/// The targets a retry must avoid: those tried since every target of the group was last tried.
/// With `tried` in attempt order and `targets` targets, a connection first tries distinct
/// targets; once all have failed it may try them again, in a new round (so a one-target group
/// still gets its `retries`, as HAProxy retries the same server).
pub(crate) fn retry_exclusions(tried: &[usize], targets: usize) -> &[usize] {
    if targets == 0 {
        return tried;
    }
    &tried[(tried.len() / targets) * targets..]
}

/// One worker's chooser for one target group: stickiness first, then the group's algorithm,
/// then slow start's damping of targets that just turned healthy.
pub(crate) struct Picker {
    balancer: Box<dyn Balancer>,
    /// Per target: slow start's accumulated share, in picks (see [`Picker::choose`]).
    credits: Vec<f64>,
}

impl std::fmt::Debug for Picker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Picker").finish_non_exhaustive()
    }
}

impl Picker {
    /// A chooser for `group` using its configured algorithm.
    pub(crate) fn new(group: &TargetGroup) -> Picker {
        Picker {
            balancer: for_algorithm(group.config.algorithm, group.config.hash_key),
            credits: vec![0.0; group.targets.len()],
        }
    }

    /// Picks a target of `group` for `request`, never one in `exclude`:
    /// 1. the client's sticky target, when the group has `stickiness` and the entry is fresh,
    ///    the target healthy, not full and not excluded;
    /// 2. else the algorithm's pick among the targets not excluded and below their
    ///    `max_connections` (`None` when only full ones are left);
    /// 3. in `slow_start`, a target that turned healthy `t` ago takes only a share
    ///    `max(t / slow_start, 1/20)` of its picks: each pick adds that share to its credit and
    ///    it is kept only when the credit reaches a whole pick, else the algorithm picks again
    ///    without it. Deterministic, so the ramp is smooth, not noisy.
    ///
    /// `now` is the caller's clock.
    pub(crate) fn choose(
        &mut self,
        group: &TargetGroup,
        now: std::time::Instant,
        request: &Request,
        exclude: &[usize],
    ) -> Option<usize> {
        if let Some(sticky) = &group.sticky {
            let now_ms = now.saturating_duration_since(group.epoch).as_millis() as u64;
            if let Some(t) = sticky.get(request.tuple.client.ip(), now_ms) {
                if t < group.targets.len()
                    && group.available(t)
                    && group.targets[t].in_service()
                    && !group.targets[t].is_full()
                    && !exclude.contains(&t)
                {
                    return Some(t);
                }
            }
        }
        // Targets at their max_connections are out of the running, like tried ones.
        let with_full: Vec<usize>;
        let exclude = if group.targets.iter().any(|t| t.max_connections.is_some()) {
            with_full = exclude
                .iter()
                .copied()
                .chain((0..group.targets.len()).filter(|&i| group.targets[i].is_full()))
                .collect();
            &with_full[..]
        } else {
            exclude
        };
        let t = self.balancer.pick(group, request, exclude)?;
        if exclude.contains(&t) {
            return None; // only full or tried targets were left
        }
        let share = group.slow_start_share(t, now);
        if share >= 1.0 {
            return Some(t);
        }
        self.credits[t] += share;
        if self.credits[t] >= 1.0 {
            self.credits[t] -= 1.0;
            return Some(t);
        }
        let mut without: Vec<usize> = exclude.to_vec();
        without.push(t);
        Some(self.balancer.pick(group, request, &without).unwrap_or(t))
    }

    /// The algorithm alone (no stickiness, no slow start): for moving a UDP session.
    pub(crate) fn balancer(&mut self) -> &mut dyn Balancer {
        self.balancer.as_mut()
    }
}

/// Records that `client` reached `target` (a connection established, a session created), for
/// stickiness.
pub(crate) fn remember(
    group: &TargetGroup,
    client: std::net::IpAddr,
    target: usize,
    now: std::time::Instant,
) {
    if let Some(sticky) = &group.sticky {
        let now_ms = now.saturating_duration_since(group.epoch).as_millis() as u64;
        sticky.put(client, target, now_ms);
    }
}

/// The targets a pick may choose from, given every target's `health`: see
/// [`TargetGroup::eligible`].
pub(crate) fn eligible(group: &TargetGroup, health: &[bool]) -> Vec<usize> {
    group.eligible(health)
}

/// The lookup table a group configured as `config` keeps, rebuilt on every health change:
/// Maglev's (NSDI 2016, §3.4) or source_hash's rendezvous buckets; `None` for the others.
pub(crate) fn table_builder(config: &crate::config::TargetGroupConfig) -> Option<TableBuilder> {
    match config.algorithm {
        Algorithm::Maglev => Some(|g| maglev::for_group(g, g.config.maglev_table_size)),
        Algorithm::SourceHash => Some(source_hash::for_group),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::retry_exclusions;

    use crate::config::HashKey;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the algorithm, a backup is never picked while a primary is healthy, and
        /// a healthy backup is picked when no primary is.
        #[test]
        fn backups_only_when_no_primary_is_healthy(
            targets in prop::collection::vec((1u32..4, any::<bool>(), any::<bool>()), 1..8),
            port in any::<u16>(),
        ) {
            for algorithm in ["round_robin", "weighted_round_robin", "least_connections",
                              "random", "power_of_two", "source_hash", "maglev"] {
                let spec: Vec<(u32, bool)> = targets.iter().map(|t| (t.0, t.1)).collect();
                let g = group_with(algorithm, &spec);
                for (i, t) in targets.iter().enumerate() {
                    g.set_healthy(i, t.2);
                }
                let algo = g.config.algorithm;
                let mut b = super::for_algorithm(algo, HashKey::FiveTuple);
                let pick = b.pick(&g, &request(port), &[]).unwrap();
                let primary_up = targets.iter().any(|t| !t.1 && t.2);
                let backup_up = targets.iter().any(|t| t.1 && t.2);
                if primary_up {
                    prop_assert!(!targets[pick].1, "{} picked backup {}", algo, pick);
                } else if backup_up {
                    prop_assert!(targets[pick].1 && targets[pick].2, "{} skipped the backups", algo);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the algorithm and health, a draining target is never picked for a new
        /// connection, even on a retry; with every target draining there is no pick.
        #[test]
        fn draining_targets_are_never_picked(
            targets in prop::collection::vec((any::<bool>(), any::<bool>()), 1..8),
            port in any::<u16>(),
            tried in 0usize..8,
        ) {
            for algorithm in ["round_robin", "weighted_round_robin", "least_connections",
                              "random", "power_of_two", "source_hash", "maglev",
                              "least_response_time"] {
                let g = group_with(algorithm, &vec![(1, false); targets.len()]);
                for (i, (healthy, draining)) in targets.iter().enumerate() {
                    g.set_healthy(i, *healthy);
                    if *draining {
                        g.set_admin_state(i, crate::target::AdminState::Draining);
                    }
                }
                let mut b = super::for_algorithm(g.config.algorithm, HashKey::FiveTuple);
                let exclude: Vec<usize> = (0..tried.min(targets.len())).collect();
                let pick = b.pick(&g, &request(port), &exclude);
                let all_draining = targets.iter().all(|t| t.1);
                match pick {
                    None => prop_assert!(
                        all_draining || (0..targets.len()).all(|i| targets[i].1 || exclude.contains(&i)),
                        "{} picked nothing", algorithm
                    ),
                    Some(p) => prop_assert!(!targets[p].1, "{} picked draining {}", algorithm, p),
                }
            }
        }
    }

    #[test]
    fn retries_avoid_tried_targets_until_all_were_tried() {
        assert_eq!(retry_exclusions(&[], 3), &[] as &[usize]);
        assert_eq!(retry_exclusions(&[2, 0], 3), &[2, 0]);
        assert_eq!(retry_exclusions(&[2, 0, 1], 3), &[] as &[usize]);
        assert_eq!(retry_exclusions(&[2, 0, 1, 2], 3), &[2]);
        assert_eq!(retry_exclusions(&[0, 0], 1), &[] as &[usize]);
    }

    use std::path::Path;

    use crate::config;
    use crate::generation::Generation;
    use crate::target::TargetGroup;

    /// A request from 127.0.0.1:`port`.
    pub(crate) fn request(port: u16) -> super::Request {
        super::Request::new(crate::conntrack::FiveTuple {
            protocol: crate::config::Protocol::Tcp,
            client: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            listener: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        })
    }

    /// A group of targets on 127.0.0.1:1001.. with these weights.
    pub(crate) fn group(weights: &[u32]) -> TargetGroup {
        let targets: Vec<(u32, bool)> = weights.iter().map(|&w| (w, false)).collect();
        group_with("round_robin", &targets)
    }

    /// A group with `algorithm` over targets on 127.0.0.1:1001.. as `(weight, backup)`.
    pub(crate) fn group_with(algorithm: &str, targets: &[(u32, bool)]) -> TargetGroup {
        let mut yaml = format!(
            "listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:1', target_group: g}}\n\
             target_groups:\n  - name: g\n    algorithm: {algorithm}\n    targets:\n"
        );
        for (i, (w, backup)) in targets.iter().enumerate() {
            yaml += &format!(
                "      - {{address: '127.0.0.1:{}', weight: {w}, backup: {backup}}}\n",
                1001 + i
            );
        }
        let cfg = config::parse(Path::new("t.yaml"), &yaml).unwrap();
        let generation = Generation::new(cfg);
        std::sync::Arc::try_unwrap(generation)
            .unwrap()
            .groups
            .pop()
            .unwrap()
    }
}
