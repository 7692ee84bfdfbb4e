//! Hashes and random numbers for the balancers: fixed, specified functions, so every worker,
//! every restart and every Ballast node maps a key the same way (std's `RandomState` is keyed
//! per process, and `DefaultHasher` is not promised stable across Rust releases).

use std::net::IpAddr;

use crate::conntrack::FiveTuple;

/// FNV-1a, 64-bit (Fowler, Noll, Vo), over `bytes`, starting from `seed` (the FNV offset basis
/// when 0).
pub(crate) fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = if seed == 0 {
        0xcbf2_9ce4_8422_2325
    } else {
        seed
    };
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finalizer (Steele, Lea, Flood, OOPSLA 2014): spreads FNV's weak low bits over
/// all 64.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A per-process random key for tables that a client's address indexes (per-source limits,
/// stickiness): SipHash-1-3 under std's `RandomState`, so nobody outside the process can
/// compute which addresses share a word. Not for anything several nodes must agree on (the
/// balancers' hashes above are fixed for that).
pub(crate) type TableKey = std::collections::hash_map::RandomState;

/// The keyed hash of `ip` under `key` (see [`TableKey`]).
pub(crate) fn keyed_ip(key: &TableKey, ip: IpAddr) -> u64 {
    use std::hash::BuildHasher;
    key.hash_one(ip)
}

/// Hash of an IP address (v4 and v6 alike by their octets).
pub(crate) fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix(fnv1a(&v4.octets(), 0)),
        IpAddr::V6(v6) => mix(fnv1a(&v6.octets(), 0)),
    }
}

/// Hash of a 5-tuple: protocol, client ip and port, listener ip and port.
pub(crate) fn hash_tuple(t: &FiveTuple) -> u64 {
    let mut h = fnv1a(&[t.protocol as u8], 0);
    for addr in [t.client, t.listener] {
        h = match addr.ip() {
            IpAddr::V4(v4) => fnv1a(&v4.octets(), h),
            IpAddr::V6(v6) => fnv1a(&v6.octets(), h),
        };
        h = fnv1a(&addr.port().to_be_bytes(), h);
    }
    mix(h)
}

/// SplitMix64 (Steele, Lea, Flood, OOPSLA 2014): a small, fast, seedable generator, one per
/// worker's balancer; not for anything secret.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator starting from `seed` (tests: the same draws every run).
    #[cfg(test)]
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded from the clock and the thread, different per worker and per run.
    pub(crate) fn from_entropy() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let thread = fnv1a(format!("{:?}", std::thread::current().id()).as_bytes(), 0);
        Rng(mix(nanos ^ thread))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number in `0..n` (`n` ≥ 1), by Lemire's multiply-shift (bias below 2^-32 for the
    /// sizes used here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b"", 0), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", 0), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar", 0), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn rng_is_deterministic_per_seed_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(3) < 3);
            b.below(3);
        }
    }
}
