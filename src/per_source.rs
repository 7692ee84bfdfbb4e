//! Per-source limits of one listener (`per_source:`): open connections (TCP) or sessions (UDP)
//! per source, and a token bucket of new connections per source, shared by all workers
//! without a lock and bounded in memory, as the stickiness table is.
//!
//! A *source* is the client address cut to a prefix (`ipv4_prefix`, default /32;
//! `ipv6_prefix`, default /64, what one IPv6 host usually holds). Each table is a fixed array
//! of `table_size` atomic words (a power of two), used as a count-min sketch (Cormode and
//! Muthukrishnan, "An improved data stream summary: the count-min sketch and its
//! applications", J. Algorithms 2005): a source maps to [`WAYS`] words by a hash keyed per
//! process, and counts in all of them.
//! - Open connections: each of a source's words counts the open connections of every source
//!   that maps to it, so the smallest of them is at least the source's own count; a source is
//!   admitted only while that smallest count is below `max_connections`.
//! - New connections: each word is a token bucket. A source is admitted when one of its
//!   buckets holds a token, and then takes a token from every one of them (a bucket short of
//!   a whole token drops to zero). Each of its buckets thus sees at least the source's own
//!   withdrawals and never holds more than the source's own bucket would; a shared bucket
//!   only empties sooner.
//!
//! So sharing a word can only make a limit stricter, never looser, and the keyed hash keeps
//! anyone from choosing sources that share words with a victim (the key is random per process
//! and never leaves it). A source shares both its words with others with a chance of about
//! (2 × sources / table_size)^2, and only then is it refused for their connections.
//!
//! Open counts are exact under concurrency (counted first, taken back when over). A rate
//! decision reads a source's buckets one at a time: two workers admitting the same source in
//! the same microsecond may each find a token in a different bucket, one connection more.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{PerSource, Rate};
use crate::hash::{keyed_ip, TableKey};

/// Words per source (hash functions of the sketch).
const WAYS: usize = 2;
/// Token bucket fixed point: units per token.
const UNIT: u64 = 256;
/// Bits of a bucket's time (milliseconds since the tables were made: 2^39 ms is 17 years, so
/// it never wraps in a process's life) and of its tokens (in [`UNIT`]s). The top bit marks a
/// bucket in use; a word of 0 is a bucket never used, full.
const TIME_BITS: u32 = 39;
const TOKEN_BITS: u32 = 24;
const USED: u64 = 1 << 63;
const _: () = assert!(TIME_BITS + TOKEN_BITS < 64);

/// Why a source was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// At `max_connections` / `max_sessions`.
    Open,
    /// Its token bucket is empty.
    Rate,
}

/// The tables of one listener.
#[derive(Debug)]
pub struct SourceLimits {
    limits: PerSource,
    open: Arc<[AtomicU64]>,
    buckets: Box<[AtomicU64]>,
    /// The hash key, random per table.
    key: TableKey,
    epoch: Instant,
}

/// A source's place under `max_open`, given back when dropped (as `ListenerPlace`).
#[derive(Debug)]
pub struct SourcePlace {
    table: Arc<[AtomicU64]>,
    words: [usize; WAYS],
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        release(&self.table, &self.words);
    }
}

/// Takes one count back from each of `words` of `table`.
fn release(table: &[AtomicU64], words: &[usize]) {
    for &i in words {
        if let Some(w) = table.get(i) {
            let before = w.fetch_sub(1, Ordering::AcqRel);
            debug_assert!(before > 0, "a source count went below zero");
        }
    }
}

impl SourceLimits {
    /// Empty tables for `limits`.
    pub fn new(limits: PerSource) -> SourceLimits {
        let size = limits.table_size.max(1).next_power_of_two();
        let words = |on: bool| -> Vec<AtomicU64> {
            (0..if on { size } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect()
        };
        SourceLimits {
            open: words(limits.max_open.is_some()).into(),
            buckets: words(limits.rate.is_some()).into(),
            limits,
            key: TableKey::new(),
            epoch: Instant::now(),
        }
    }

    /// The limits these tables enforce.
    pub fn limits(&self) -> &PerSource {
        &self.limits
    }

    /// The words of `ip`'s source (its prefix) in either table (both have the same power-of-two
    /// size when present): two halves of one keyed hash ([`TableKey`]).
    fn words(&self, ip: IpAddr) -> [usize; WAYS] {
        let len = self.open.len().max(self.buckets.len());
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let cut = match ip {
            IpAddr::V4(v4) => {
                let keep = u32::from(self.limits.ipv4_prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
                IpAddr::from((u32::from(v4) & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let keep = u32::from(self.limits.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::from((u128::from(v6) & mask).to_be_bytes())
            }
        };
        let h = keyed_ip(&self.key, cut);
        let mask = len.wrapping_sub(1);
        [(h as usize) & mask, ((h >> 32) as usize) & mask]
    }

    /// Admits a new connection (or session) from `ip`: takes a token when a rate is set and
    /// a place when `max_open` is; the place is given back when dropped.
    ///
    /// # Errors
    /// [`Over`] when the source is at its limit (nothing is taken then).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<Option<SourcePlace>, Over> {
        let words = self.words(ip);
        let place = match self.limits.max_open {
            Some(max) => Some(self.take_place(words, max)?),
            None => None,
        };
        if let Some(rate) = self.limits.rate {
            let now_ms = (now.saturating_duration_since(self.epoch).as_millis() as u64)
                .min((1 << TIME_BITS) - 1);
            if !self.take_tokens(words, rate, now_ms) {
                return Err(Over::Rate); // `place` is dropped: given back
            }
        }
        Ok(place)
    }

    /// Counts one more open connection in each of `words` unless the smallest count there
    /// (at least this source's own) has reached `max`. Counted first and taken back when over,
    /// so two workers admitting at once can both be refused but never both pass the limit.
    fn take_place(&self, words: [usize; WAYS], max: u32) -> Result<SourcePlace, Over> {
        let mut smallest = u64::MAX;
        for &i in &words {
            if let Some(w) = self.open.get(i) {
                smallest = smallest.min(w.fetch_add(1, Ordering::AcqRel));
            }
        }
        if smallest >= u64::from(max) {
            release(&self.open, &words);
            return Err(Over::Open);
        }
        Ok(SourcePlace {
            table: self.open.clone(),
            words,
        })
    }

    /// Admits a new connection when one of `words`' buckets holds a token, and then takes a
    /// token from each of them (what a bucket lacks of a whole token, it loses: it never
    /// holds more than the source's own bucket would).
    fn take_tokens(&self, words: [usize; WAYS], rate: Rate, now_ms: u64) -> bool {
        // The two words may be one (a small table): take from it once.
        let distinct = if words[0] == words[1] { 1 } else { WAYS };
        let mut had = [false; WAYS];
        for (n, &i) in words.iter().take(distinct).enumerate() {
            if let Some(w) = self.buckets.get(i) {
                had[n] = update(w, rate, now_ms, |tokens| tokens.checked_sub(UNIT));
            }
        }
        if !had.contains(&true) {
            return false;
        }
        for (n, &i) in words.iter().take(distinct).enumerate() {
            if let (false, Some(w)) = (had[n], self.buckets.get(i)) {
                update(w, rate, now_ms, |_| Some(0));
            }
        }
        true
    }
}

/// The tokens (in [`UNIT`]s) a bucket holds at most.
fn full(rate: Rate) -> u64 {
    (u64::from(rate.burst) * UNIT).min((1 << TOKEN_BITS) - 1)
}

/// `(time, tokens)` of bucket word `current` at `now_ms`, refilled at `rate`.
fn refilled(current: u64, rate: Rate, now_ms: u64) -> (u64, u64) {
    let time_mask = (1u64 << TIME_BITS) - 1;
    let token_mask = (1u64 << TOKEN_BITS) - 1;
    if current & USED == 0 {
        return (now_ms, full(rate)); // never used: full
    }
    let (at, tokens) = ((current >> TOKEN_BITS) & time_mask, current & token_mask);
    let elapsed = now_ms.saturating_sub(at);
    let refill = elapsed
        .saturating_mul(u64::from(rate.count) * UNIT)
        .checked_div(u64::from(rate.per_ms))
        .unwrap_or(u64::MAX);
    if refill == 0 {
        // Keep the time, so fractions of a token add up over later calls.
        (at, tokens)
    } else {
        (now_ms, tokens.saturating_add(refill).min(full(rate)))
    }
}

/// The word for a bucket holding `tokens` as of `at`.
fn bucket(at: u64, tokens: u64) -> u64 {
    USED | (at << TOKEN_BITS) | tokens
}

/// Refills bucket `w` at `rate` as of `now_ms` and sets its tokens to what `take` makes of
/// them; `None` from `take` leaves the bucket as it was. Returns whether `take` gave `Some`.
fn update(w: &AtomicU64, rate: Rate, now_ms: u64, take: impl Fn(u64) -> Option<u64>) -> bool {
    let mut current = w.load(Ordering::Acquire);
    loop {
        let (at, tokens) = refilled(current, rate, now_ms);
        let Some(left) = take(tokens) else {
            return false;
        };
        let next = bucket(at, left);
        match w.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max_open: Option<u32>, rate: Option<(u32, u32)>) -> SourceLimits {
        SourceLimits::new(PerSource {
            max_open,
            rate: rate.map(|(count, burst)| Rate {
                count,
                per_ms: 1000,
                burst,
            }),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_size: 1024,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn open_places_are_bounded_per_source_and_given_back() {
        let t = limits(Some(3), None);
        let now = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| t.admit(ip("10.0.0.1"), now).unwrap())
            .collect();
        assert_eq!(t.admit(ip("10.0.0.1"), now).unwrap_err(), Over::Open);
        // Another source is not affected.
        assert!(t.admit(ip("10.0.0.2"), now).is_ok());
        drop(held);
        assert!(t.admit(ip("10.0.0.1"), now).is_ok());
    }

    #[test]
    fn a_prefix_makes_one_source() {
        let t = SourceLimits::new(PerSource {
            max_open: Some(1),
            rate: None,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            table_size: 1024,
        });
        let now = Instant::now();
        let _a = t.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(t.admit(ip("10.0.0.200"), now).unwrap_err(), Over::Open);
        let _b = t.admit(ip("2001:db8::1"), now).unwrap();
        assert_eq!(t.admit(ip("2001:db8::ffff"), now).unwrap_err(), Over::Open);
        assert!(t.admit(ip("2001:db8:0:1::1"), now).is_ok(), "another /64");
    }

    #[test]
    fn the_token_bucket_allows_the_burst_then_the_rate() {
        let t = limits(None, Some((10, 5)));
        let start = Instant::now();
        let ok = (0..20)
            .filter(|_| t.admit(ip("10.0.0.1"), start).is_ok())
            .count();
        assert_eq!(ok, 5, "the burst");
        // Over 10 simulated seconds, 10/s: about 100 more, never more than 100 + burst.
        let mut admitted = 0;
        for ms in (1..=10_000).step_by(7) {
            let now = start + Duration::from_millis(ms);
            admitted += usize::from(t.admit(ip("10.0.0.1"), now).is_ok());
        }
        assert!((95..=105).contains(&admitted), "{admitted}");
        // Slow rates keep their fractions: 1/s polled every 100 ms.
        let t = limits(None, Some((1, 1)));
        let start = Instant::now();
        let mut admitted = 0;
        for ms in (0..=10_000).step_by(100) {
            admitted += usize::from(
                t.admit(ip("10.0.0.1"), start + Duration::from_millis(ms))
                    .is_ok(),
            );
        }
        assert_eq!(admitted, 11);
    }

    /// Tables of one word: every source shares it.
    fn one_word(max_open: Option<u32>, rate: Option<(u32, u32, u32)>) -> SourceLimits {
        SourceLimits::new(PerSource {
            max_open,
            rate: rate.map(|(count, per_ms, burst)| Rate {
                count,
                per_ms,
                burst,
            }),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_size: 1,
        })
    }

    #[test]
    fn sources_sharing_a_word_are_held_to_their_limits_or_stricter() {
        // Two sources alternating on one bucket of 1/min, burst 1: one connection in all,
        // never a full bucket each (a bucket taken over used to start full: 100 of 100).
        let t = one_word(None, Some((1, 60_000, 1)));
        let start = Instant::now();
        let admitted = (0..100)
            .filter(|&i| {
                let who = if i % 2 == 0 {
                    "10.0.0.170"
                } else {
                    "10.0.1.189"
                };
                t.admit(ip(who), start + Duration::from_millis(i * 10))
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 1);
        // Open connections: one count for both, never more than max_open together, and never
        // one source's count spread over several words (4 x max_open before).
        let t = one_word(Some(3), None);
        let now = Instant::now();
        let mut held = Vec::new();
        for i in 0..20 {
            let who = if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" };
            if let Ok(place) = t.admit(ip(who), now) {
                held.push(place);
            }
            if i % 5 == 4 {
                held.remove(0); // some end, so the words empty and fill again
            }
        }
        assert!(held.len() <= 3, "{} open", held.len());
        drop(held);
        assert_eq!(
            t.open[0].load(Ordering::Acquire),
            0,
            "every place given back"
        );
    }

    #[test]
    fn the_rate_holds_for_500_interleaved_sources() {
        // 1/min, burst 1, in the default-sized table: three rounds of 500 sources admit each
        // source once at most (608 of 1,500 with the old unkeyed, owner-tagged buckets).
        let t = SourceLimits::new(PerSource {
            max_open: None,
            rate: Some(Rate {
                count: 1,
                per_ms: 60_000,
                burst: 1,
            }),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_size: 4096,
        });
        let mut rng = crate::hash::Rng::new(7);
        let sources: Vec<IpAddr> = (0..500)
            .map(|_| IpAddr::from((rng.next_u64() as u32).to_be_bytes()))
            .collect();
        let start = Instant::now();
        let mut admitted = 0;
        for round in 0..3u64 {
            for (i, &s) in sources.iter().enumerate() {
                let now = start + Duration::from_millis(round * 1000 + i as u64);
                admitted += usize::from(t.admit(s, now).is_ok());
            }
        }
        assert!(admitted <= 500, "{admitted} admitted");
        // A source is refused only when both its buckets were emptied by others: about
        // sum((2i / 4096)^2) for i < 500, 10 of 500, expected.
        assert!(
            admitted >= 470,
            "few sources lose to shared buckets: {admitted}"
        );
    }

    #[test]
    fn concurrent_admits_never_pass_max_open() {
        let t = std::sync::Arc::new(limits(Some(5), None));
        let now = Instant::now();
        let held: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let t = &t;
                    s.spawn(move || {
                        (0..50)
                            .filter_map(|_| t.admit(ip("10.0.0.9"), now).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert!(
            held.len() <= 5 && !held.is_empty(),
            "{} admitted",
            held.len()
        );
    }
}
