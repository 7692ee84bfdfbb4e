//! The YAML file as written: raw structs that mirror the file one to one.
//!
//! Every struct denies unknown keys, and the value types that can be checked on their own
//! (addresses, durations, thresholds) are checked while parsing, so `serde_yaml` attaches the
//! key path, line and column to the error. Checks that need the whole file (duplicate names,
//! references between listeners and groups) live in [`super::validate`].

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{AcceptSteering, Algorithm, Forwarding, HashKey, OnUnhealthy, Readiness};

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Worker threads (event loops); default: one per available core.
    pub workers: Option<NonZeroU32>,
    /// How new TCP connections are spread over the workers.
    pub accept_steering: Option<AcceptSteering>,
    /// How long a graceful stop waits for open connections (zero allowed).
    pub shutdown_timeout: Option<BoundedDuration>,
    /// How long listeners keep accepting after SIGTERM, `/healthz` already failing (zero
    /// allowed).
    pub shutdown_grace: Option<BoundedDuration>,
    /// How long listeners keep accepting after a node drain that names no grace, `/healthz`
    /// already failing (default 5s; zero allowed).
    pub node_drain_grace: Option<BoundedDuration>,
    /// UNIX socket path on which a new process takes the listening sockets over.
    pub upgrade_socket: Option<String>,
    /// `off`, `stderr`, or a file path.
    pub access_log: Option<String>,
    /// The admin API.
    pub admin: Option<FileAdmin>,
    /// DNS servers for `discover:` (default: the system's).
    pub resolvers: Option<Vec<Address>>,
    /// At least one listener.
    pub listeners: Vec<FileListener>,
    /// The target groups the listeners name.
    pub target_groups: Vec<FileTargetGroup>,
}

/// `admin:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// Default 127.0.0.1:9100; a non-loopback address needs token_file.
    pub bind: Option<Address>,
    /// Optional: requests then need `Authorization: Bearer <token>` (the file must be mode
    /// 0600).
    pub token_file: Option<String>,
    /// Optional: the same API on a UNIX socket (mode 0600).
    pub unix: Option<String>,
}

/// One `listeners:` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    /// Unique.
    pub name: String,
    /// Tcp | udp | tls (a tcp and a udp listener may share an address); tls: TLS ends here,
    /// targets get plain TCP (see "TLS" below).
    pub protocol: FileProtocol,
    /// `ip:port` or `host:port`; port 0 picks a free port (logged at start).
    pub bind: Address,
    /// Optional: only traffic arriving on this interface (SO_BINDTODEVICE); with bind 0.0.0.0
    /// or [::], every address of that interface.
    pub interface: Option<String>,
    /// Optional: bind an address no interface holds yet (IP_FREEBIND), e.g. a VIP keepalived
    /// will move here; the host-wide alternative is `sysctl net.ipv4.ip_nonlocal_bind=1`
    /// (net.ipv6.ip_nonlocal_bind).
    pub freebind: Option<bool>,
    /// Optional: what /healthz needs of this listener: healthy_target (default: a healthy
    /// target in service in its group) | listening.
    pub readiness: Option<Readiness>,
    /// Optional, tcp only: a balancer in front sends a PROXY header (v1 or v2).
    pub accept_proxy_protocol: Option<FileAcceptProxy>,
    /// Optional: only these clients (CIDRs or addresses); default everyone.
    pub allow: Option<Vec<Cidr>>,
    /// Optional: never these (deny wins over allow); refused TCP clients are reset, refused UDP
    /// datagrams dropped, before any target is touched.
    pub deny: Option<Vec<Cidr>>,
    /// Optional: limits per client source, shared by all workers.
    pub per_source: Option<FilePerSource>,
    /// Optional, tcp only: SNI routing without termination (below).
    pub routes: Option<Vec<FileRoute>>,
    /// With routes, default 3s: the ClientHello must arrive by then.
    pub client_hello_timeout: Option<PositiveDuration>,
    /// With routes: default (to target_group) | close (reset).
    pub without_server_name: Option<super::NoServerName>,
    /// With routes: answer PostgreSQL's SSLRequest, route by the SNI that follows, replay the
    /// SSLRequest to the target; on a tls listener (routes then optional): answer it,
    /// terminate, targets get plain.
    pub postgres_starttls: Option<bool>,
    /// TLS only (required there).
    pub tls: Option<FileTls>,
    /// A target_groups[].name.
    pub target_group: String,
    /// Optional, default unlimited; at the limit Ballast stops accepting and new clients wait
    /// in the listen backlog (counted across all workers).
    pub max_connections: Option<NonZeroU32>,
    /// Optional, default 5s: one connect attempt to a target.
    pub connect_timeout: Option<PositiveDuration>,
    /// Optional, default 1h: no bytes either way for this long → close.
    pub idle_timeout: Option<PositiveDuration>,
    /// Optional, default 2: other targets tried when a connect fails.
    pub retries: Option<u32>,
    /// Optional, default auto: auto | splice | buffered (see the README). max_connections,
    /// connect_timeout, idle_timeout, retries and forwarding are TCP-only; a udp listener takes
    /// `udp:` instead.
    pub forwarding: Option<Forwarding>,
    /// UDP listeners only, every key optional: session timeouts and limits, batching.
    pub udp: Option<FileUdp>,
}

/// One `routes:` entry of a TCP listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// The server name (lowercase), exact or `*.` and a suffix covering one label.
    pub server_name: String,
    /// The target group for clients asking for that name.
    pub target_group: String,
}

/// `per_source:` of a listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePerSource {
    /// TCP: open connections per source (max_sessions: the same for udp).
    pub max_connections: Option<NonZeroU32>,
    /// UDP: open sessions per source.
    pub max_sessions: Option<NonZeroU32>,
    /// New connections (udp: sessions) per source, token bucket: N/s or N/m.
    pub connection_rate: Option<RateText>,
    /// Optional, default one period's count: tokens saved up.
    pub burst: Option<NonZeroU32>,
    /// Optional, default 32: a source is this prefix of the IPv4 address.
    pub ipv4_prefix: Option<Bounded<1, 32>>,
    /// Optional, default 64: a source is this prefix of the IPv6 address.
    pub ipv6_prefix: Option<Bounded<1, 128>>,
    /// Optional: words per table (fixed memory: 8 bytes each).
    pub table_size: Option<Bounded<64, { 1 << 24 }>>,
}

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

/// `accept_proxy_protocol:` of a TCP listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAcceptProxy {
    /// Required: the only peers allowed to send one (others are reset).
    pub trusted: Vec<Cidr>,
    /// Optional, default 3s: the whole header must arrive within it.
    pub timeout: Option<PositiveDuration>,
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

/// `udp:` of a UDP listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUdp {
    /// Default 30s: no datagram either way for this long → the session ends, its socket closed.
    pub session_idle_timeout: Option<PositiveDuration>,
    /// Default 5s: a session the target has not answered yet ends after this (as conntrack's
    /// unreplied timeout), and is evicted first when full.
    pub unreplied_timeout: Option<PositiveDuration>,
    /// Default: the listener's share of the open-file limit (one descriptor a session), at
    /// most 100000; across all workers: datagrams of new flows past it are dropped.
    pub max_sessions: Option<NonZeroU32>,
    /// Default: an eighth of the open-file limit's share, at most max_sessions: sessions the
    /// target has not answered yet, split evenly across the workers; past a worker's share its
    /// oldest unanswered session ends to make room (as a SYN backlog).
    pub max_unreplied: Option<NonZeroU32>,
    /// Default 0 (unlimited); 1 = DNS-style: the session ends after one reply.
    pub max_responses: Option<u32>,
    /// Default rebalance: move a session to a healthy target at its next datagram | keep.
    pub on_unhealthy: Option<OnUnhealthy>,
    /// Default 32: datagrams per recvmmsg/sendmmsg, 1 to 1024 (1 = plain recvfrom/sendto).
    pub batch: Option<Bounded<1, { MAX_BATCH }>>,
}

/// `protocol:` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileProtocol {
    Tcp,
    Udp,
    Tls,
}

/// `tls:` of a `protocol: tls` listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Chosen by SNI: exact names, then `*.` wildcards, from each.
    pub certificates: Vec<FileKeyPair>,
    /// Optional, default 1.2: 1.2 | 1.3.
    pub min_version: Option<VersionText>,
    /// Optional: ALPN protocols offered, in order of preference.
    pub alpn: Option<Vec<String>>,
    /// Optional, default 10s: from accept to a finished handshake.
    pub handshake_timeout: Option<PositiveDuration>,
    /// Optional, default true: resumption by tickets (valid on every worker).
    pub session_tickets: Option<bool>,
}

/// A certificate chain file and its key file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileKeyPair {
    /// PEM file: the certificate chain, leaf first (relative paths: from the config file's
    /// directory).
    pub cert: String,
    /// PEM file: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// `target_tls:` of a target group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTargetTls {
    /// Optional, default the system's trust store.
    pub ca: Option<String>,
    /// Optional, default each target's IP (then an IP SAN); also the SNI.
    pub server_name: Option<String>,
    /// Optional: for targets that ask (mTLS).
    pub client_cert: Option<FileKeyPair>,
    /// Optional, default true; false: encrypted, not authenticated.
    pub verify: Option<bool>,
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

/// One `target_groups:` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTargetGroup {
    /// Unique.
    pub name: String,
    /// Optional, default round_robin: round_robin | weighted_round_robin | least_connections |
    /// random | power_of_two | source_hash | maglev | least_response_time.
    pub algorithm: Option<Algorithm>,
    /// Maglev only, default five_tuple: five_tuple | source_ip.
    pub hash_key: Option<HashKey>,
    /// Maglev only: a prime ≥ 100 × targets.
    pub maglev_table_size: Option<usize>,
    /// Optional: a client IP keeps its target, whatever the algorithm.
    pub stickiness: Option<FileStickiness>,
    /// Optional: a target that turns healthy ramps from 1/20 of its share to all of it over
    /// this long.
    pub slow_start: Option<PositiveDuration>,
    /// Optional, default 30s: how long `disable` lets connections finish.
    pub drain_timeout: Option<PositiveDuration>,
    /// Optional: send a PROXY protocol header to targets: v1 | v2 (TCP: before the first client
    /// byte; UDP, v2 only: before every datagram).
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// Optional, default keep: keep | close — close resets a target's open TCP connections when
    /// its check marks it unhealthy (a demoted primary).
    pub on_unhealthy: Option<super::UnhealthyConnections>,
    /// Optional: passive checks on the data path (see "Targets that come and go").
    pub outlier_detection: Option<FileOutlierDetection>,
    /// Optional: hooks that add and remove targets (see "Targets that come and go").
    pub scaling: Option<FileScaling>,
    /// Optional: TLS to the targets (health checks too), verified by default.
    pub target_tls: Option<FileTargetTls>,
    /// Optional; every key has the default shown.
    pub health_check: Option<FileHealthCheck>,
    /// Optional: targets from DNS, re-resolved at the answer's TTL.
    pub discover: Option<Vec<FileDiscover>>,
    /// At least one, unless `discover` finds them.
    #[serde(default)]
    pub targets: Vec<FileTarget>,
}

/// One `discover:` entry of a target group: `{dns: host:port}` or `{srv: name}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDiscover {
    /// `host:port`: every A/AAAA address of host becomes a target on this port.
    pub dns: Option<String>,
    /// An SRV name: port and weight from each record.
    pub srv: Option<String>,
    /// Default 5s: the answer's TTL is clamped to at least this.
    pub min_ttl: Option<PositiveDuration>,
    /// Default 5m: and at most this.
    pub max_ttl: Option<PositiveDuration>,
}

/// `scaling:` of a target group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileScaling {
    /// `{when: <metric> above <value> for <duration>, exec: <command>}`: asks for more targets.
    pub scale_out: Option<FileScalingRule>,
    /// `{when: <metric> below <value> for <duration>, exec: <command>}`: asks for fewer.
    pub scale_in: Option<FileScalingRule>,
    /// Default 1m: from the end of one command to the next.
    pub cooldown: Option<BoundedDuration>,
    /// Default 1; max_targets default 100.
    pub min_targets: Option<NonZeroU32>,
    /// Default 100: scale_out never runs at or past this many targets.
    pub max_targets: Option<NonZeroU32>,
    /// Default 1m: a command running longer is killed.
    pub timeout: Option<PositiveDuration>,
}

/// `scale_out:` / `scale_in:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileScalingRule {
    /// `<metric> above|below <value> for <duration>`; metrics: active_connections_per_target,
    /// new_connections_per_second, mean_response_time_ms.
    pub when: String,
    /// Command run with `sh -c`: the group's state as JSON on stdin; BALLAST_TARGET_GROUP,
    /// BALLAST_ACTION, BALLAST_METRIC, BALLAST_VALUE, BALLAST_TARGETS (and for scale_in
    /// BALLAST_TARGET) in its environment.
    pub exec: String,
}

/// `outlier_detection:` of a target group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileOutlierDetection {
    /// Failed connects or resets from the target in a row that eject it.
    pub consecutive_failures: Option<NonZeroU32>,
    /// First ejection; doubled for each ejection in a row, up to.
    pub base_ejection: Option<PositiveDuration>,
    /// This.
    pub max_ejection: Option<PositiveDuration>,
    /// Most of the group's targets out at once (at least one).
    pub max_ejected_percent: Option<Bounded<0, 100>>,
}

/// `stickiness:` of a target group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileStickiness {
    /// While the target is healthy and the entry was used this recently.
    pub timeout: Option<PositiveDuration>,
    /// The table is bounded (rounded up to a power of two).
    pub max_entries: Option<NonZeroU32>,
}

/// `health_check:` of a target group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    /// Default tcp. tcp: passes when a connect completes; http: GET `path`, passes on a 2xx
    /// or 3xx status; udp: sends `send`, passes on a reply (containing `expect`, if set).
    pub protocol: Option<FileHealthProtocol>,
    /// Optional, default: the target's own port.
    pub port: Option<u16>,
    /// HTTP only (required there).
    pub path: Option<String>,
    /// Default 2s: time between two checks of one target.
    pub interval: Option<PositiveDuration>,
    /// Default 1s: one check's limit; must not exceed interval.
    pub timeout: Option<PositiveDuration>,
    /// Default 2: consecutive passes that make an unhealthy target healthy.
    pub healthy_threshold: Option<NonZeroU32>,
    /// Default 2: consecutive failures that make a healthy target unhealthy.
    pub unhealthy_threshold: Option<NonZeroU32>,
    /// UDP only (required there): text, or {hex: "70 69 6e 67"}.
    pub send: Option<Payload>,
    /// UDP only, optional: bytes the reply must contain.
    pub expect: Option<Payload>,
    /// TCP only, optional: send/expect after the connect, in order `unless` (optional) fails
    /// the check at once if it comes first.
    pub steps: Option<Vec<FileStep>>,
    /// TCP only, optional, instead of steps: PING, INFO replication shows role:master (replica:
    /// role:slave), QUIT; `password` sends AUTH.
    pub redis: Option<FileRedisCheck>,
    /// Default: true when the group sends one — checks send a v2 LOCAL (v1 `PROXY UNKNOWN`)
    /// header first; false to leave it out.
    pub proxy_protocol: Option<bool>,
}

/// One `steps:` entry of a TCP check: `{send: …}` or `{expect: …}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileStep {
    /// Bytes to write: text, or {hex: "…"}.
    pub send: Option<Payload>,
    /// Bytes (text, {hex: "…"}) or {regex: "…"} the reply must contain, read until found or the
    /// timeout.
    pub expect: Option<Matcher>,
    /// Optional, with expect: fails the check at once when this shows up first.
    pub unless: Option<Matcher>,
}

/// `redis:` of a health check: a Redis server in the given replication role.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRedisCheck {
    /// master (INFO replication shows role:master) | replica (role:slave).
    pub role: RedisRole,
    /// Optional: sent with AUTH first.
    pub password: Option<String>,
}

/// A Redis server's replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RedisRole {
    /// `role:master`: takes writes.
    Master,
    /// `role:slave` in `INFO replication`: a replica.
    Replica,
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

/// `health_check.protocol:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileHealthProtocol {
    Tcp,
    Http,
    Udp,
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

/// One `targets:` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTarget {
    /// `ip:port` or `host:port` (resolved once, at start).
    pub address: Address,
    /// Optional, default 1 (1 to 10000); used by every algorithm but round_robin.
    pub weight: Option<Bounded<1, { MAX_WEIGHT }>>,
    /// Optional; a backup target is used only when no primary is healthy.
    pub backup: Option<bool>,
    /// Optional: a full target is skipped; when every target is full, listeners stop accepting
    /// and new clients wait in the backlog.
    pub max_connections: Option<NonZeroU32>,
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
