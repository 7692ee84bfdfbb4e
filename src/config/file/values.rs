//! The values of the file that check themselves while parsing (addresses, networks,
//! durations, bounded numbers, rates, payloads, TLS versions), so `serde_yaml` attaches the key
//! path, line and column to the error; and the parsers the admin API and the command line share
//! with them.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A rate written `20/s` or `600/m`: (count, period in ms).
#[derive(Debug, Clone, Copy)]
pub struct RateText(pub u32, pub u32);

impl<'de> Deserialize<'de> for RateText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_with(d, "a rate such as 20/s or 600/m", parse_rate)
    }
}

/// `20/s` or `600/m` (also `/min`), the count 1 to 1,000,000.
fn parse_rate(s: &str) -> Result<RateText, String> {
    let bad = || format!("`{s}` is not a rate: write e.g. 20/s or 600/m");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let per_ms = match unit.trim() {
        "s" => 1000,
        "m" | "min" => 60_000,
        _ => return Err(bad()),
    };
    if n == 0 || n > 1_000_000 {
        return Err(format!("`{s}`: the count must be 1 to 1000000"));
    }
    Ok(RateText(n, per_ms))
}

/// Deserializes a string through `parse`; `expecting` names the accepted forms. The error
/// is raised inside the visitor, so serde_yaml attaches the key path, line and column.
fn from_str_with<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.parse)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V { expecting, parse })
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or one address (`/32`,
/// `/128`); host bits are cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_with(
            d,
            "a network such as 10.0.0.0/8 or 2001:db8::/32, or one address",
            |s| parse_cidr(s).map(Cidr),
        )
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (one host); host bits are cleared.
///
/// # Errors
/// A message quoting `text`.
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("`{text}` is not a network (10.0.0.0/8, 2001:db8::/32) or an address"))
}

/// A TLS version, `1.2` or `1.3` (a YAML number or a string).
#[derive(Debug, Clone, Copy)]
pub struct VersionText(pub crate::tls::TlsVersion);

impl<'de> Deserialize<'de> for VersionText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = VersionText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TLS version: 1.2 or 1.3")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<VersionText, E> {
                s.parse().map(VersionText).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<VersionText, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// What an `expect` step looks for: text, `{hex: "…"}`, or `{regex: "…"}`.
#[derive(Debug, Clone)]
pub enum Matcher {
    Bytes(Vec<u8>),
    Regex(String),
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor { regex: true })
    }
}

/// Bytes written as text (`send: "ping"`) or as hex (`send: {hex: "00 01 ff"}`; spaces are
/// ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(PayloadVisitor { regex: false })? {
            Matcher::Bytes(b) => Ok(Payload(b)),
            Matcher::Regex(_) => Err(de::Error::custom("a regex only goes in `expect`")),
        }
    }
}

/// Text, `{hex: "…"}`, and (with `regex`) `{regex: "…"}`.
struct PayloadVisitor {
    regex: bool,
}

impl<'de> de::Visitor<'de> for PayloadVisitor {
    type Value = Matcher;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.regex {
            f.write_str(
                "text such as \"+PONG\", {hex: \"2b 50\"}, or {regex: \"role:(master|slave)\"}",
            )
        } else {
            f.write_str("text such as \"ping\", or {hex: \"70 69 6e 67\"}")
        }
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Matcher::Bytes(s.as_bytes().to_vec()))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let forms = if self.regex {
            "{hex: \"...\"} or {regex: \"...\"}"
        } else {
            "{hex: \"...\"}"
        };
        let Some((key, value)) = map.next_entry::<String, String>()? else {
            return Err(de::Error::custom(format!("expected {forms}")));
        };
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom(format!(
                "a payload takes one form: {forms}"
            )));
        }
        match key.as_str() {
            "hex" => parse_hex(&value)
                .map(Matcher::Bytes)
                .map_err(de::Error::custom),
            "regex" if self.regex => Ok(Matcher::Regex(value)),
            _ => Err(de::Error::custom(format!(
                "unknown payload form `{key}`; write text, or {forms}"
            ))),
        }
    }
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("hex `{text}` has an odd number of digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap_or("??");
            u8::from_str_radix(pair, 16).map_err(|_| format!("bad hex digits `{pair}` in `{text}`"))
        })
        .collect()
}

/// A socket address written as `ip:port` or `host:port` (resolved once, at load; the first
/// address the resolver returns is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address(pub SocketAddr);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_with(
            d,
            "an address such as 127.0.0.1:5432 or db.internal:5432",
            |s| parse_address(s).map(Address),
        )
    }
}

/// `ip:port`, or `host:port` resolved now (the first address the resolver returns), as a
/// target or bind address is written in the config and in admin API requests.
///
/// # Errors
/// A message naming `text`: no port, a name that does not resolve.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!(
            "bad address `{text}`: expected ip:port or host:port"
        ));
    }
    // Fuzzing must not send name lookups anywhere: names are refused there.
    if cfg!(fuzzing) {
        return Err(format!(
            "bad address `{text}`: names are not resolved while fuzzing"
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("bad address `{text}`: the name resolves to no address")),
        Err(e) => Err(format!("bad address `{text}`: {e}")),
    }
}

/// A listener's `bind`: an address as [`Address`] takes it, or `:PORT` / `*:PORT` for every
/// IPv4 address ([`parse_bind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub SocketAddr);

impl<'de> Deserialize<'de> for BindAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_with(
            d,
            "an address such as 127.0.0.1:5432, [::]:5432, or :5432 for every address",
            |s| parse_bind(s).map(BindAddress),
        )
    }
}

/// A listener's bind address: `:5432` and `*:5432` mean every IPv4 address (`0.0.0.0:5432`),
/// as HAProxy's `bind :5432` and nginx's `listen 5432` do; anything else as
/// [`parse_address`]. Not dual-stack: Ballast's IPv6 sockets are IPV6_V6ONLY (see
/// `net::listening_socket`), so one socket never mixes IPv4 clients in as `::ffff:a.b.c.d`, which
/// `allow`/`deny` networks and per-source prefixes written for IPv4 would not match; an IPv6
/// listener is a second one on `[::]:5432`.
///
/// # Errors
/// A message naming `text`: a port that is not a number from 0 to 65535, or as
/// [`parse_address`].
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let trimmed = text.trim();
    let port = trimmed
        .strip_prefix("*:")
        .or_else(|| trimmed.strip_prefix(':').filter(|p| !p.starts_with(':')));
    match port {
        Some(port) => port
            .parse::<u16>()
            .map(|port| SocketAddr::from(([0, 0, 0, 0], port)))
            .map_err(|_| format!("bad address `{text}`: `{port}` is not a port (0 to 65535)")),
        None if trimmed.starts_with("::") || trimmed == "*" => Err(format!(
            "bad address `{text}`: write :PORT for every IPv4 address, [::]:PORT for IPv6"
        )),
        None => parse_address(text),
    }
}

/// Largest target weight (config and admin API): weights are relative, and a bound keeps every
/// sum and product of weights far from overflow.
pub const MAX_WEIGHT: u64 = 10_000;
/// Largest `udp.batch`: the kernel's `recvmmsg`/`sendmmsg` cap (UIO_MAXIOV); a larger batch
/// would be cut short and taken for a drained socket.
pub const MAX_BATCH: u64 = 1024;
/// Longest duration any setting takes: 30 days. Deadlines are `Instant + duration`, which
/// panics on overflow; nothing a balancer waits for is longer.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// An integer in `MIN..=MAX`; out of range is a parse error naming the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor, so the error carries the key path and line.
        struct V<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> de::Visitor<'_> for V<MIN, MAX> {
            type Value = Bounded<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an integer from {MIN} to {MAX}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if (MIN..=MAX).contains(&v) {
                    Ok(Bounded(v))
                } else {
                    Err(E::custom(format!(
                        "{v} is out of range: expected {MIN} to {MAX}"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "{v} is out of range: expected {MIN} to {MAX}"
                    ))),
                }
            }
        }
        d.deserialize_u64(V::<MIN, MAX>)
    }
}

/// Parses a duration setting: humantime syntax (`500ms`, `2s`, `5m`), at most
/// [`MAX_DURATION`], and greater than zero unless `zero_ok`.
///
/// # Errors
/// A message quoting `text`.
pub fn parse_duration(text: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("bad duration `{text}`: {e} (write e.g. 500ms, 2s, 5m)"))?;
    if d.is_zero() && !zero_ok {
        return Err(format!("duration `{text}` must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{text}` is too long: at most {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// Reads a duration setting as [`parse_duration`] does, inside the deserializer so the error
/// carries the key path and line; a bare number is refused with a hint to add a unit.
struct DurationVisitor {
    zero_ok: bool,
}

impl de::Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.zero_ok {
            "a duration such as 0s, 500ms, 2s or 5m"
        } else {
            "a duration greater than zero such as 500ms, 2s or 5m"
        })
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        parse_duration(s, self.zero_ok).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "bad duration `{v}`: give a unit, e.g. {v}s or {v}ms"
        )))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_i64(v as i64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "bad duration `{v}`: give a unit, e.g. 500ms"
        )))
    }
}

/// A duration written as `0s`, `500ms`, `2s`, `5m` (humantime syntax), at most
/// [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundedDuration(pub Duration);

impl<'de> Deserialize<'de> for BoundedDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor { zero_ok: true })
            .map(BoundedDuration)
    }
}

/// A duration written as `500ms`, `2s`, `5m` (humantime syntax) that must be greater than zero
/// and at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositiveDuration(pub Duration);

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor { zero_ok: false })
            .map(PositiveDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_accepts_ip_and_host_forms() {
        assert_eq!(
            parse_address("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            parse_address("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(parse_address("localhost:80").unwrap().port(), 80);
        assert!(parse_address("127.0.0.1").unwrap_err().contains("ip:port"));
        assert!(parse_address("1.2.3.4:99999").is_err());
    }

    #[test]
    fn bind_takes_every_address_forms() {
        let any: SocketAddr = "0.0.0.0:5432".parse().unwrap();
        assert_eq!(parse_bind(":5432").unwrap(), any);
        assert_eq!(parse_bind("*:5432").unwrap(), any);
        assert_eq!(parse_bind(" :0").unwrap().port(), 0);
        assert_eq!(
            parse_bind("[::]:5432").unwrap(),
            "[::]:5432".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(parse_bind("127.0.0.1:1").unwrap().port(), 1);
        for bad in [":", "*:", ":99999", "*:x", ":::5432", "*", ":5432:1"] {
            let e = parse_bind(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        // A target or the admin API takes no `:PORT`.
        assert!(parse_address(":5432").is_err());
    }

    #[test]
    fn payloads_as_text_or_hex() {
        let p: Payload = serde_yaml::from_str("ping").unwrap();
        assert_eq!(p.0, b"ping");
        let p: Payload = serde_yaml::from_str("{hex: '00 ff 10'}").unwrap();
        assert_eq!(p.0, [0, 255, 16]);
        assert!(serde_yaml::from_str::<Payload>("{hex: 'abc'}").is_err());
        assert!(serde_yaml::from_str::<Payload>("{hex: 'zz'}").is_err());
        assert!(serde_yaml::from_str::<Payload>("{base64: 'AA=='}").is_err());
    }

    #[test]
    fn durations_need_units_and_must_be_positive() {
        let ok: PositiveDuration = serde_yaml::from_str("500ms").unwrap();
        assert_eq!(ok.0, Duration::from_millis(500));
        for bad in ["0s", "-1s", "5", "fast"] {
            assert!(
                serde_yaml::from_str::<PositiveDuration>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
