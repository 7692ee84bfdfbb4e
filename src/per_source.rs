//! Per-source limits of one listener (`per_source:`): open connections (TCP) or sessions (UDP)
//! per source, and a token bucket of new connections per source, shared by all workers
//! without a lock and bounded in memory, as the stickiness table is.
//!
//! A *source* is the client address cut to a prefix (`ipv4_prefix`, default /32;
//! `ipv6_prefix`, default /64, what one IPv6 host usually holds). Each table is a fixed array
//! of `table_size` atomic words (a power of two). A source's counter lives in the first of
//! [`PROBES`] consecutive words that carries its 16-bit tag or is free; when all are taken by
//! other sources (a full or attacked table), the source goes uncounted rather than refused:
//! the table trades exactness under collisions for a fixed size, and never blames a source
//! for another's connections.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{PerSource, Rate};
use crate::hash::hash_ip;

/// Words tried per source.
const PROBES: usize = 4;
/// Token bucket fixed point: units per token.
const UNIT: u64 = 256;
/// Bits of the bucket's time (milliseconds, wrapping) and of its tokens.
const TIME_BITS: u32 = 24;
const TOKEN_BITS: u32 = 24;

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
    epoch: Instant,
}

/// A source's place under `max_open`, given back when dropped (as `ListenerPlace`).
#[derive(Debug)]
pub struct SourcePlace {
    table: Arc<[AtomicU64]>,
    word: usize,
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        if let Some(w) = self.table.get(self.word) {
            w.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl SourceLimits {
    /// Empty tables for `limits`.
    pub fn new(limits: PerSource) -> SourceLimits {
        let size = limits.table_size.max(PROBES).next_power_of_two();
        let words = |on: bool| -> Vec<AtomicU64> {
            (0..if on { size } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect()
        };
        SourceLimits {
            open: words(limits.max_open.is_some()).into(),
            buckets: words(limits.rate.is_some()).into(),
            limits,
            epoch: Instant::now(),
        }
    }

    /// The limits these tables enforce.
    pub fn limits(&self) -> &PerSource {
        &self.limits
    }

    /// The hash of `ip`'s source (its prefix).
    fn source(&self, ip: IpAddr) -> u64 {
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
        hash_ip(cut)
    }

    /// Admits a new connection (or session) from `ip`: takes a token when a rate is set and
    /// a place when `max_open` is; the place is given back when dropped.
    ///
    /// # Errors
    /// [`Over`] when the source is at its limit (nothing is taken then).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<Option<SourcePlace>, Over> {
        let h = self.source(ip);
        let place = match self.limits.max_open {
            Some(max) => self.take_place(h, max)?,
            None => None,
        };
        if let Some(rate) = self.limits.rate {
            if !self.take_token(h, rate, now) {
                return Err(Over::Rate); // `place` is dropped: given back
            }
        }
        Ok(place)
    }

    /// Counts one more open connection of source `h` unless it has `max` already.
    fn take_place(&self, h: u64, max: u32) -> Result<Option<SourcePlace>, Over> {
        let tag = (h >> 48).max(1);
        let mask = self.open.len().wrapping_sub(1);
        for probe in 0..PROBES {
            let word = (h as usize).wrapping_add(probe) & mask;
            let Some(w) = self.open.get(word) else {
                return Ok(None);
            };
            let mut current = w.load(Ordering::Acquire);
            loop {
                let (owner, count) = (current >> 48, current & ((1 << 48) - 1));
                let next = if owner == tag && count > 0 {
                    if count >= u64::from(max) {
                        return Err(Over::Open);
                    }
                    current + 1
                } else if count == 0 {
                    (tag << 48) | 1 // free: this source takes the word
                } else {
                    break; // another source's: try the next word
                };
                match w.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        return Ok(Some(SourcePlace {
                            table: self.open.clone(),
                            word,
                        }))
                    }
                    Err(seen) => current = seen,
                }
            }
        }
        Ok(None) // every word taken by other sources: uncounted (see the module docs)
    }

    /// Takes one token from source `h`'s bucket.
    fn take_token(&self, h: u64, rate: Rate, now: Instant) -> bool {
        let tag = (h >> 48).max(1);
        let Some(w) = self
            .buckets
            .get((h as usize) & (self.buckets.len().wrapping_sub(1)))
        else {
            return true;
        };
        let time_mask = (1u64 << TIME_BITS) - 1;
        let token_mask = (1u64 << TOKEN_BITS) - 1;
        let full = (u64::from(rate.burst) * UNIT).min(token_mask);
        let now_ms = (now.saturating_duration_since(self.epoch).as_millis() as u64) & time_mask;
        let mut current = w.load(Ordering::Acquire);
        loop {
            let owner = current >> (TIME_BITS + TOKEN_BITS);
            let (mut at, mut tokens) = ((current >> TOKEN_BITS) & time_mask, current & token_mask);
            if owner != tag || current == 0 {
                // Another source's bucket (or none): this source starts with a full one.
                (at, tokens) = (now_ms, full);
            } else {
                let elapsed = now_ms.wrapping_sub(at) & time_mask;
                if elapsed >= 1 << (TIME_BITS - 1) {
                    (at, tokens) = (now_ms, full); // idle for hours: full again
                } else {
                    let refill =
                        elapsed * u64::from(rate.count) * UNIT / u64::from(rate.per_ms.max(1));
                    if refill > 0 {
                        // Advance the time only with what it paid for, so fractions add up.
                        (at, tokens) = (now_ms, (tokens + refill).min(full));
                    }
                }
            }
            if tokens < UNIT {
                return false;
            }
            let next = (tag << (TIME_BITS + TOKEN_BITS)) | (at << TOKEN_BITS) | (tokens - UNIT);
            match w.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
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
}
