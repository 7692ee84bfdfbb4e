//! The YAML file as written: raw structs that mirror the file one to one.
//!
//! Every struct denies unknown keys, and the value types that can be checked on their own
//! (addresses, durations, thresholds) are checked while parsing, so `serde_yaml` attaches the
//! key path, line and column to the error. Checks that need the whole file (duplicate names,
//! references between listeners and groups) live in [`super::validate`](mod@super::validate). The sections are
//! here; the values that check themselves are in [`values`].

pub(super) mod env;
pub(super) mod include;
mod values;

use std::num::{NonZeroU16, NonZeroU32};

use schemars::JsonSchema;
use serde::Deserialize;

pub use values::{
    parse_address, parse_bind, parse_cidr, parse_duration, MAX_BATCH, MAX_DURATION, MAX_WEIGHT,
};
pub(super) use values::{
    Address, BindAddress, Bounded, BoundedDuration, Cidr, Matcher, Payload, PositiveDuration,
    RateText, VersionText,
};

use super::{AcceptSteering, Algorithm, Forwarding, HashKey, OnUnhealthy, Readiness};

/// The whole file. `L` and `G` are what each entry of `listeners` and `target_groups` is read
/// as: the entries themselves, or `IgnoredAny` when the loader reads the rest of the file
/// without them to report every error ([`super::load()`]).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "L: Deserialize<'de>, G: Deserialize<'de>")
)]
#[schemars(rename = "FileConfig", description = "The whole file.")]
pub struct FileConfig<L = FileListener, G = FileTargetGroup> {
    /// Other files holding more `listeners` and `target_groups` (and nothing else): paths or
    /// globs (`*`, `?` in the file name only), relative to this file's directory; each glob's
    /// files in name order. A glob may match nothing (its directory must exist); a named
    /// file must exist. Included files include nothing further; a reload reads them again.
    pub include: Option<Vec<String>>,
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
    /// `off`, `stderr`, or a file path (logfmt, every listener); or a section: `to` (off |
    /// stderr | syslog | a file path), `format` (logfmt | json | a template), `listeners`,
    /// `syslog` (see "Access log").
    pub access_log: Option<super::access_log::FileAccessLog>,
    /// The admin API.
    pub admin: Option<FileAdmin>,
    /// DNS servers for `discover:` (default: the system's).
    pub resolvers: Option<Vec<Address>>,
    /// Optional: a fleet kept in step through etcd: `node_id`, `etcd` (`endpoints`,
    /// `prefix`, `tls`, `username`, `password_file`). Targets and admin states then come
    /// from etcd; listeners, groups and checks from this file.
    pub cluster: Option<super::cluster::FileCluster>,
    /// At least one listener, counting those of included files (which may hold them all).
    #[serde(default)]
    pub listeners: Vec<L>,
    /// The target groups the listeners name (here or in included files).
    #[serde(default)]
    pub target_groups: Vec<G>,
}

/// A file named by `include:`: more listeners and target groups, nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileIncluded<L = FileListener, G = FileTargetGroup> {
    /// Listeners, after the main file's (and earlier included files').
    #[serde(default = "Vec::new")]
    pub listeners: Vec<L>,
    /// Target groups, likewise.
    #[serde(default = "Vec::new")]
    pub target_groups: Vec<G>,
}

/// `admin:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// Default 127.0.0.1:7390; a non-loopback address needs token_file.
    pub bind: Option<Address>,
    /// Optional: requests then need `Authorization: Bearer <token>` (the file must be mode
    /// 0600).
    pub token_file: Option<String>,
    /// Optional: the same API on a UNIX socket (mode 0600).
    pub unix: Option<String>,
    /// Optional, default false: over TCP only reads (status page, metrics, health) are
    /// answered; changes go through `unix` (403 otherwise). For a loopback API without a
    /// token on a host with other users.
    pub read_only: Option<bool>,
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
    /// `ip:port` or `host:port`, or `:port` (`*:port`) for every IPv4 address (0.0.0.0; `[::]:port`
    /// for IPv6); port 0 picks a free port (logged at start).
    pub bind: BindAddress,
    /// Optional: only traffic arriving on this interface (SO_BINDTODEVICE); with bind 0.0.0.0
    /// or `[::]`, every address of that interface.
    pub interface: Option<String>,
    /// Optional: bind an address no interface holds yet (IP_FREEBIND), e.g. a VIP keepalived
    /// will move here; the host-wide alternative is `sysctl net.ipv4.ip_nonlocal_bind=1`
    /// (net.ipv6.ip_nonlocal_bind).
    pub freebind: Option<bool>,
    /// Optional: what /healthz needs of this listener: node (default: its group counts toward
    /// the node's reach: unready only when no group of such listeners has a healthy target in
    /// service) | healthy_target (its own group must have one) | listening. Drained and
    /// disabled targets never count against readiness.
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
    /// With routes, default 3s: the ClientHello must arrive by then (from the PROXY header's
    /// end when one is read, else from the accept).
    pub client_hello_timeout: Option<PositiveDuration>,
    /// With routes: default (to target_group) | close (reset).
    pub without_server_name: Option<super::NoServerName>,
    /// With routes: answer PostgreSQL's SSLRequest, route by the SNI that follows, replay the
    /// SSLRequest to the target; on a tls listener (routes then optional): answer it,
    /// terminate, targets get plain.
    pub postgres_starttls: Option<bool>,
    /// TLS only (required there).
    pub tls: Option<FileTls>,
    /// Optional, tcp/tls: PostgreSQL clients: route by the StartupMessage (below); cancel
    /// requests go to the server that issued their key.
    pub postgres: Option<FilePostgres>,
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
    /// Optional, udp only: QUIC connection-ID routing (QUIC-LB, below): a packet goes to the
    /// target whose `server_id` its connection ID carries, from whatever address it comes.
    pub quic: Option<FileQuic>,
    /// Optional, udp only: token routing (Quilkin's model, below): each datagram carries a
    /// token naming its target; unknown tokens are dropped.
    pub token: Option<FileToken>,
}

/// `token:` of a UDP listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    /// Where each datagram carries its token: prefix (its first `size` octets) | suffix
    /// (its last).
    pub capture: crate::config::TokenCapture,
    /// The token's length in octets (1 to 64); every target's tokens have it.
    pub size: Bounded<1, 64>,
    /// Optional, default true: the token is removed before the datagram goes to the target.
    pub strip: Option<bool>,
}

/// `quic:` of a UDP listener (draft-ietf-quic-load-balancers-19).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileQuic {
    /// Octets of server ID in each connection ID (1 to 8); each target's `server_id` must fit.
    pub server_id_length: Bounded<1, 8>,
    /// Optional, default 4: octets of nonce after the server ID (at least 4; the two at most
    /// 19).
    pub nonce_length: Option<Bounded<4, 18>>,
    /// Optional, default plaintext: plaintext (the server ID readable by anyone) |
    /// block_cipher (AES-128 with `key_file`; observers cannot link a migrated connection).
    pub algorithm: Option<crate::config::QuicAlgorithm>,
    /// With block_cipher: a file (mode 600) holding the 16-octet key as 32 hex digits,
    /// the same on every node and server; relative paths are the config file's directory's.
    pub key_file: Option<String>,
    /// Optional, default 0: the configuration's codepoint (0 to 6), the first three bits of
    /// each connection ID. A new key (or new lengths) takes another codepoint, the old
    /// configuration staying under `retiring:` while servers change over.
    pub config_rotation: Option<Bounded<0, 6>>,
    /// Optional, default 1 + server_id_length + nonce_length: the length of the connection IDs
    /// the servers issue (short headers do not carry it), when they append octets of their
    /// own.
    pub connection_id_length: Option<Bounded<6, 20>>,
    /// Optional: the configuration being replaced, routed beside this one until every server
    /// issues IDs of the new one (a key rotation, §3 of the draft): IDs of either codepoint
    /// reach their server. Same keys as here but connection_id_length; its config_rotation
    /// must differ.
    pub retiring: Option<FileQuicRetiring>,
}

/// `quic.retiring:`: an older QUIC-LB configuration still routed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileQuicRetiring {
    /// Octets of server ID in its connection IDs (1 to 8); each target's `server_id` must fit.
    pub server_id_length: Bounded<1, 8>,
    /// Optional, default 4: octets of nonce after the server ID.
    pub nonce_length: Option<Bounded<4, 18>>,
    /// Optional, default plaintext: plaintext | block_cipher (with `key_file`).
    pub algorithm: Option<crate::config::QuicAlgorithm>,
    /// With block_cipher: its key file (mode 600, 32 hex digits).
    pub key_file: Option<String>,
    /// Its codepoint (0 to 6): not the current configuration's.
    pub config_rotation: Bounded<0, 6>,
}

/// `agent_check:` of a target group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAgentCheck {
    /// The agent's TCP port on each target's host.
    pub port: NonZeroU16,
    /// Optional, default 2s: time between two questions to one agent.
    pub interval: Option<PositiveDuration>,
    /// Optional, default 1s: an agent that has not answered a line by then is skipped (its
    /// last word stands).
    pub timeout: Option<PositiveDuration>,
    /// Optional: text sent once connected (HAProxy's agent-send), e.g. "lag\n".
    pub send: Option<String>,
}

/// `queue:` of a target group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileQueue {
    /// Connections waiting at most, across all workers (1 to 1,000,000); past it new ones
    /// are reset (counted).
    pub max: Bounded<1, 1_000_000>,
    /// Optional, default 5s: a connection waiting this long is reset (counted).
    pub timeout: Option<PositiveDuration>,
}

/// `postgres:` of a listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePostgres {
    /// Optional: in order, the first whose every given field matches wins. Each names a
    /// target_group and at least one of database, user, application_name (exact, or a prefix
    /// and `*`).
    pub routes: Option<Vec<FilePostgresRoute>>,
    /// Optional, default refuse: refuse (an error naming the database; a mistyped name never
    /// sends a password to another cluster) | default (to target_group).
    pub without_route: Option<super::WithoutRoute>,
    /// Optional, default 10s: the StartupMessage must have come by then.
    pub startup_timeout: Option<PositiveDuration>,
}

/// One `postgres.routes:` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePostgresRoute {
    /// The database (the user name when the client names none).
    pub database: Option<String>,
    /// The user name.
    pub user: Option<String>,
    /// The client's application_name.
    pub application_name: Option<String>,
    /// The target group for clients that match.
    pub target_group: String,
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

/// `accept_proxy_protocol:` of a TCP listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAcceptProxy {
    /// Required: the only peers allowed to send one (others are reset).
    pub trusted: Vec<Cidr>,
    /// Optional, default 3s: the whole header must arrive within it of the accept (a
    /// ClientHello or TLS handshake after it has its own timeout).
    pub timeout: Option<PositiveDuration>,
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
    /// Optional, default 10s: from accept (from the PROXY header's end with
    /// accept_proxy_protocol) to a finished handshake.
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
    /// Optional, tcp: when every target is at its max_connections, new connections wait
    /// (accepted and held, in arrival order on each worker) instead of staying in the listen backlog.
    pub queue: Option<FileQueue>,
    /// Optional; every key has the default shown.
    pub health_check: Option<FileHealthCheck>,
    /// Optional: an agent on each target reports its state and weight (HAProxy's agent-check
    /// protocol: `up`, `down`, `drain`, `maint`, `ready`, `75%`).
    pub agent_check: Option<FileAgentCheck>,
    /// Optional, default balancer, tcp: balancer | client — connect to targets from the
    /// client's address (IP_TRANSPARENT: needs CAP_NET_ADMIN and return traffic routed
    /// through this host, see conf/tproxy/).
    pub source: Option<super::SourceAddress>,
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
    /// `{when: <metric> below <value> for <duration>, exec: <command>}`: asks for one
    /// target fewer.
    pub scale_in: Option<FileScalingRule>,
    /// Default 1m: from the end of one command to the next.
    pub cooldown: Option<BoundedDuration>,
    /// Default 1: scale_in never leaves fewer targets.
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
    /// or 3xx status; udp: sends `send`, passes on a reply (containing `expect`, if set);
    /// quic: sends a packet of a reserved QUIC version, passes on the Version Negotiation
    /// every QUIC server must answer.
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
    /// TCP only, optional: `send`/`expect` steps after the connect, run in order. A step's
    /// `unless` (optional) fails the check at once if it comes before its `expect`.
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

/// `health_check.protocol:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileHealthProtocol {
    Tcp,
    Http,
    Udp,
    Quic,
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
    /// Optional, with a `quic:` listener: the server ID this target's QUIC server encodes in
    /// its connection IDs (unique in the group; fits the listener's server_id_length).
    pub server_id: Option<u64>,
    /// Optional, with a `token:` listener: the tokens whose datagrams go to this target
    /// (each `size` octets: text, or `base64:` and the octets encoded), unique in the group.
    pub tokens: Option<Vec<String>>,
}
