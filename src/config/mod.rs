//! Configuration: the YAML file ([`file`](mod@file)) and the validated [`Config`] built from it.
//!
//! Loading happens in two layers. `serde_yaml` parses the text into the raw `File*` structs,
//! which refuse unknown keys and check single values (addresses, durations, thresholds) with the
//! key path, line and column in the message; `${VAR}` is substituted in values as they are read
//! (`file::env`), and `include:` brings in more listeners and target groups (`file::include`).
//! [`validate`](mod@validate) then checks the files as a whole and builds a [`Config`], which
//! cannot hold an invalid value: every listener names a group that exists (by index), every
//! group has at least one target, every duration is positive. [`load`](mod@load) runs both and
//! reports every error at once, each a [`Problem`] with its file, line and column.

pub mod access_log;
mod admission;
mod check;
pub mod cluster;
mod descriptors;
mod discover;
mod file;
mod load;
pub mod plan;
mod postgres;
mod problem;
mod quic;
pub mod scaling;
pub mod schema;
pub mod steps;
mod tls;
mod udp;
pub(crate) mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use access_log::{AccessLogConfig, AccessLogSink, LogFormat, SyslogAddress, SyslogTarget};
pub use admission::{
    AcceptProxy, AccessRules, NoServerName, PerSource, Rate, SniRoute, SniRoutes,
    DEFAULT_CLIENT_HELLO_TIMEOUT, DEFAULT_PROXY_TIMEOUT,
};
pub use descriptors::{descriptors_needed, open_file_limit};
pub(crate) use file::env::{expand as expand_env, process_env};
pub use file::{
    parse_address, parse_bind, parse_cidr, parse_duration, MAX_BATCH, MAX_DURATION, MAX_WEIGHT,
};
pub use load::{load, parse};
pub use postgres::{
    NamePattern, PostgresRoute, PostgresRouting, WithoutRoute, DEFAULT_STARTUP_TIMEOUT,
};
pub use problem::Problem;
pub use quic::{
    parse_token, show_token, QuicAlgorithm, QuicKey, QuicRouting, RetiringLb, TokenCapture,
    TokenRouting, DEFAULT_NONCE_LENGTH,
};
pub(crate) use tls::reload_tls;
pub use udp::{
    OnUnhealthy, UdpSettings, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_IDLE_TIMEOUT,
    DEFAULT_UDP_BATCH, DEFAULT_UNREPLIED_TIMEOUT,
};
pub(crate) use validate::beside;
pub use validate::{check_group, validate};

/// Default `connect_timeout` of a listener.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `idle_timeout` of a listener.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `retries` of a listener.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `node_drain_grace`: the shipped keepalived recipe moves the VIP within about 1 s of
/// `/healthz` failing (1 s checks, `fall 1`), the BIRD one withdraws the route within about
/// 2 s (1 s route check, then the update reaches the router); 5 s covers both with room.
pub const DEFAULT_NODE_DRAIN_GRACE: Duration = Duration::from_secs(5);
/// A validated configuration. Immutable once built.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The files its `include:` brought in, in the order read.
    pub included: Vec<PathBuf>,
    /// Number of worker threads (event loops), at least 1.
    pub workers: usize,
    /// How new TCP connections are spread over the workers.
    pub accept_steering: AcceptSteering,
    /// How long a graceful stop waits for open connections before closing them.
    pub shutdown_timeout: Duration,
    /// After SIGTERM (or `POST /node/drain`), how long listeners keep accepting while
    /// `/healthz` already answers 503, so a VIP or route moves away before the node stops
    /// taking clients; zero (the default) stops accepting at once.
    pub shutdown_grace: Duration,
    /// After a node drain that names no grace (`ballast node drain`, `POST /node/drain`), how
    /// long listeners keep accepting while `/healthz` already answers 503: by default
    /// [`DEFAULT_NODE_DRAIN_GRACE`], longer than the shipped keepalived and BIRD recipes take
    /// to move traffic away, so a drain with the defaults fails no connection still routed
    /// here. (A drain is a planned step in a fleet; SIGTERM's `shutdown_grace` stays 0 by
    /// default so a plain stop is prompt.)
    pub node_drain_grace: Duration,
    /// Where a running Ballast hands its listening sockets to a new process
    /// (`ballast run --upgrade-from PATH`); `None`: no handover.
    pub upgrade_socket: Option<PathBuf>,
    /// Where access-log lines go.
    pub access_log: AccessLogConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Target groups, in file order; listeners refer to them by index.
    pub target_groups: Vec<TargetGroupConfig>,
    /// DNS servers asked for `discover:`; empty: the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// The fleet this node is part of (`cluster:`), whose targets and admin states live in
    /// etcd; `None`: a node on its own.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// One `discover:` source of a target group: names resolved again and again, their
/// addresses becoming the group's targets ([`crate::discovery`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Discover {
    /// What to look up.
    pub source: DiscoverSource,
    /// Shortest time between two lookups, whatever the record's TTL says.
    pub min_ttl: Duration,
    /// Longest time between two lookups.
    pub max_ttl: Duration,
}

/// What a `discover:` entry looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoverSource {
    /// A and AAAA records of `host`, each address a target on `port`.
    Dns {
        /// The name.
        host: String,
        /// The targets' port.
        port: u16,
    },
    /// SRV records of `name`: each record's target host (its A/AAAA addresses) on the
    /// record's port, with the record's weight; only the lowest priority is used.
    Srv {
        /// The service name, e.g. `_pg._tcp.service.consul`.
        name: String,
    },
}

impl std::fmt::Display for DiscoverSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoverSource::Dns { host, port } => write!(f, "dns {host}:{port}"),
            DiscoverSource::Srv { name } => write!(f, "srv {name}"),
        }
    }
}

/// Default `admin.bind`.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:7390";

/// The admin API's settings (`Debug` leaves the token out).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the HTTP API listens; port 0 picks a free port (logged at start).
    pub bind: SocketAddr,
    /// The bearer token every request must carry, read from `token_file` at load.
    pub token: Option<String>,
    /// A UNIX socket (mode 0600) serving the same API, as HAProxy's stats socket: its file
    /// permissions are its authentication (no token asked there).
    pub unix: Option<PathBuf>,
    /// The TCP API answers reads only (GET: status page, metrics, health); changes go
    /// through the UNIX socket. For a loopback API without a token on a host with other
    /// users (the packaged default).
    pub read_only: bool,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("unix", &self.unix)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Transport protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP: a connection per client, proxied byte for byte.
    Tcp,
    /// UDP: a session per client flow, proxied datagram for datagram.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How new TCP connections are spread over the workers (`accept_steering:`; see
/// "Spreading connections across workers" in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AcceptSteering {
    /// To the worker with the fewest open connections, by a reuseport eBPF program (the
    /// kernel's hash where the program cannot be loaded). The default.
    LeastConnections,
    /// The kernel's reuseport hash of the client's address and port.
    Hash,
}

/// How a TCP listener moves bytes between client and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Start with a pooled buffer; switch a direction to `splice(2)` once one read fills the
    /// buffer (bulk data), as HAProxy's `splice-auto` does. The default.
    Auto,
    /// Always `splice(2)` through a per-direction pipe (zero-copy, two syscalls per chunk).
    Splice,
    /// Always `read`/`write` through a pooled user-space buffer.
    Buffered,
    /// Once a plain connection is established, the kernel moves its bytes (a BPF `SOCKHASH`
    /// and an `SK_SKB` verdict program, see "Forwarding in the kernel" in the README): no
    /// wake-up of Ballast per message. A direction whose source sends its FIN, an error, or
    /// more than the kernel may hold for a destination that does not read goes back to
    /// buffers (never splice: a socket in the map is read through its own queue). Connections
    /// with TLS on either side or a PostgreSQL watch still open, and every connection where the
    /// kernel refuses the program (no CAP_BPF/CAP_NET_ADMIN/CAP_PERFMON), forward as `auto`
    /// does, counted in `ballast_listener_sockmap_connections_total`. Opt-in.
    Sockmap,
}

/// What a listener needs for the node to count as ready (`GET /healthz`, `ballast health`).
/// Targets an operator drained or disabled never count against readiness: a drain is
/// intended, not a fault of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// The default: its sockets are open, and its target group counts toward the node's
    /// reach: the node is unready only when, of every target in service in the groups of all
    /// such listeners, it sees none healthy (its own network is the likelier fault then, and
    /// a peer may see them). One group without a healthy target leaves the node, and every
    /// other service on it, ready.
    #[default]
    Node,
    /// Its sockets are open and its target group has at least one healthy target in service
    /// (backup targets count), unless every target of the group is drained or disabled:
    /// opt-in, for a node that serves one service and should step aside without it.
    HealthyTarget,
    /// Its sockets are open; the targets' health does not matter (when every node shares the
    /// targets, withdrawing every node at once gains nothing).
    Listening,
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Readiness::Node => "node",
            Readiness::HealthyTarget => "healthy_target",
            Readiness::Listening => "listening",
        })
    }
}

/// What a valid configuration may still get wrong, in words (`check` prints each as a warning,
/// `run` logs it at start): weights given to a `round_robin` group, which ignores them (as it
/// ignores an agent's percentage); a queue no target can fill; `source: client` or a queue on
/// a group only UDP listeners use (TCP-only settings); tokens or server IDs no listener of the
/// group routes by; a
/// target group that only UDP listeners use, left with the default health check, checks its
/// targets with TCP connects, which a UDP-only server fails (every target then unhealthy,
/// traffic sent to all of them, and the node unready when it has no other group).
pub fn advice(c: &Config) -> Vec<String> {
    let mut said = Vec::new();
    for (i, g) in c.target_groups.iter().enumerate() {
        let users: Vec<&ListenerConfig> = c
            .listeners
            .iter()
            .filter(|l| l.route_groups().any(|g| g == i))
            .collect();
        let udp_only = !users.is_empty() && users.iter().all(|l| l.protocol == Protocol::Udp);
        let weighted = g.targets.iter().any(|t| t.weight != 1);
        if g.algorithm == Algorithm::RoundRobin && weighted {
            said.push(format!(
                "target group {} gives its targets weights but uses round_robin, which ignores \
                 them: use weighted_round_robin for the weights to count",
                g.name
            ));
        }
        if g.algorithm == Algorithm::RoundRobin && g.agent_check.is_some() {
            said.push(format!(
                "target group {} has an agent_check but uses round_robin, which ignores \
                 weights: an agent's percentage (`75%`) changes nothing (drain, maint, down \
                 and 0% still count); use weighted_round_robin or least_connections",
                g.name
            ));
        }
        if !udp_only && g.queue.is_some() && g.targets.iter().all(|t| t.max_connections.is_none()) {
            said.push(format!(
                "target group {} has a queue but no target sets max_connections: nothing \
                 is ever full, so nothing waits",
                g.name
            ));
        }
        // Routing keys no listener of the group reads (a file that lost its `token:`).
        let unread = [
            (
                g.targets.iter().any(|t| !t.tokens.is_empty()),
                users.iter().any(|l| l.token.is_some()),
                "tokens",
                "token:",
            ),
            (
                g.targets.iter().any(|t| t.server_id.is_some()),
                users.iter().any(|l| l.quic.is_some()),
                "server_id",
                "quic:",
            ),
        ];
        for (_, _, key, section) in unread.iter().filter(|(set, read, ..)| *set && !read) {
            said.push(format!(
                "target group {} gives targets {key}, but no listener of the group has \
                 `{section}`: they route nothing",
                g.name
            ));
        }
        // TCP-only settings on a group only UDP listeners use do nothing: say so, rather
        // than let an operator believe datagrams keep the client's address or wait.
        let tcp_only = [
            (g.source == SourceAddress::Client, "source: client"),
            (g.queue.is_some(), "queue"),
        ];
        for (_, key) in tcp_only.iter().filter(|(set, _)| udp_only && *set) {
            said.push(format!(
                "target group {} sets {key}, which applies to TCP connections only, but only \
                 UDP listeners use it: it changes nothing",
                g.name
            ));
        }
        let quic = users.iter().any(|l| l.quic.is_some());
        if udp_only && !g.health_check_given {
            said.push(format!(
                "target group {} serves UDP listeners only but checks its targets with TCP \
                 connects (no health_check given): a UDP-only server fails them; set \
                 health_check: {}",
                g.name,
                if quic {
                    "{protocol: quic}"
                } else {
                    "{protocol: udp, send: …, expect: …}"
                }
            ));
        }
        if quic && !matches!(g.algorithm, Algorithm::Maglev | Algorithm::SourceHash) {
            said.push(format!(
                "target group {} balances QUIC Initials with {}, which does not hash their \
                 connection ID: a retransmitted Initial from another address, or one reaching \
                 another node, may meet another server; use algorithm: maglev",
                g.name, g.algorithm
            ));
        }
    }
    for l in &c.listeners {
        let passthrough = l.sni.as_ref().filter(|s| s.postgres_starttls);
        if let (Some(sni), Some(_), None) = (passthrough, &l.postgres, &l.tls) {
            if sni.otherwise == NoServerName::Default {
                said.push(format!(
                    "listener {} passes PostgreSQL TLS through by server name and routes plain \
                     clients by database: a TLS client that names no server (libpq connecting \
                     to an IP address, sslmode=prefer) goes to target group {} unread; \
                     `without_server_name: close` makes such a libpq retry without TLS, routed \
                     by its database",
                    l.name, c.target_groups[l.target_group].name
                ));
            }
        }
    }
    said
}

/// One validated listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Address to listen on; port 0 picks a free port (logged at start).
    pub bind: SocketAddr,
    /// Network interface the listener is bound to (SO_BINDTODEVICE): only traffic arriving
    /// on it is taken. `None`: every interface that has `bind`'s address.
    pub interface: Option<String>,
    /// IP_FREEBIND / IPV6_FREEBIND: bind `bind` even when no interface holds the address yet
    /// (a standby node listening on a VIP keepalived has not moved to it), as
    /// `net.ipv4.ip_nonlocal_bind = 1` does for the whole host.
    pub freebind: bool,
    /// What `/healthz` requires of this listener besides its sockets being open.
    pub readiness: Readiness,
    /// Read a PROXY protocol header (v1 or v2) from each client first (TCP): `None` when the
    /// listener takes clients directly.
    pub accept_proxy: Option<AcceptProxy>,
    /// Which clients may connect (TCP) or open sessions (UDP).
    pub access: AccessRules,
    /// Limits per client source (`per_source:`), when set.
    pub per_source: Option<PerSource>,
    /// SNI routing (`routes:`), when set; `target_group` is then the default route. Without
    /// `tls`, the ClientHello is read without consuming it (no termination); with it, the
    /// routes pick by the server name of the terminated session.
    pub sni: Option<SniRoutes>,
    /// `protocol: tls`: TLS terminated here, the target gets the plaintext.
    pub tls: Option<TlsListener>,
    /// `postgres:`: each client's StartupMessage is read (after TLS, on a `tls` listener) to
    /// route it, and cancel requests go to the server that issued their key.
    pub postgres: Option<PostgresRouting>,
    /// `quic:` (UDP): packets go to the target whose server ID their connection ID carries.
    pub quic: Option<QuicRouting>,
    /// `token:` (UDP): datagrams go to the target listing their token.
    pub token: Option<TokenRouting>,
    /// Index into [`Config::target_groups`].
    pub target_group: usize,
    /// Most open client connections across all workers; `None` is unlimited.
    pub max_connections: Option<usize>,
    /// How long one connect attempt to a target may take.
    pub connect_timeout: Duration,
    /// No bytes either way for this long closes the connection.
    pub idle_timeout: Duration,
    /// Further targets tried after a failed connect.
    pub retries: u32,
    /// Byte-moving strategy (TCP).
    pub forwarding: Forwarding,
    /// Session settings; `Some` exactly for UDP listeners.
    pub udp: Option<UdpSettings>,
}

impl ListenerConfig {
    /// The target groups its clients may reach: its `target_group`, then those of its SNI
    /// routes and its PostgreSQL routes (an index may repeat).
    pub fn route_groups(&self) -> impl Iterator<Item = usize> + '_ {
        let sni = self
            .sni
            .iter()
            .flat_map(|s| &s.routes)
            .map(|r| r.target_group);
        let pg = self
            .postgres
            .iter()
            .flat_map(|p| &p.routes)
            .map(|r| r.target_group);
        std::iter::once(self.target_group).chain(sni).chain(pg)
    }

    /// The same references as [`Self::route_groups`], to rewrite: a reload renumbers groups
    /// by where the running generation holds them, and every one must follow (one list, so
    /// a new kind of route cannot be forgotten in one place and not the other).
    pub fn route_groups_mut(&mut self) -> impl Iterator<Item = &mut usize> + '_ {
        let sni = self
            .sni
            .iter_mut()
            .flat_map(|s| &mut s.routes)
            .map(|r| &mut r.target_group);
        let pg = self
            .postgres
            .iter_mut()
            .flat_map(|p| &mut p.routes)
            .map(|r| &mut r.target_group);
        std::iter::once(&mut self.target_group).chain(sni).chain(pg)
    }

    /// `tcp`, `udp` or `tls`, as the file says (a `tls` listener is TCP underneath).
    pub fn kind(&self) -> &'static str {
        match (self.protocol, &self.tls) {
            (_, Some(_)) => "tls",
            (Protocol::Tcp, None) => "tcp",
            (Protocol::Udp, None) => "udp",
        }
    }

    /// Where the listener listens, for logs: `bind`, and the interface when it has one
    /// (`0.0.0.0:53 (interface eth0)`).
    pub fn endpoint(&self) -> String {
        match &self.interface {
            Some(name) => format!("{} (interface {name})", self.bind),
            None => self.bind.to_string(),
        }
    }
}

impl std::fmt::Display for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Forwarding::Auto => "auto",
            Forwarding::Splice => "splice",
            Forwarding::Buffered => "buffered",
            Forwarding::Sockmap => "sockmap",
        })
    }
}

/// `outlier_detection:` of a target group: passive checks on the data path (Envoy's outlier
/// detection, HAProxy's `observe layer4`). A target whose data connections fail
/// `consecutive_failures` times in a row (a failed connect, or a reset from the target) is
/// ejected — no new connections — for `base_ejection` × 2^(k−1), k its ejections with no clean
/// connection in between, at most `max_ejection`; at most `max_ejected_percent` of the
/// group's targets are ejected at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Failures in a row that eject (≥ 1).
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// Most targets of the group ejected at once, in percent of its targets (0 to 100; at
    /// least one target is always allowed out when the percentage allows any).
    pub max_ejected_percent: u32,
}

impl OutlierDetection {
    /// How long the `k`-th ejection in a row lasts (k ≥ 1).
    pub fn ejection(&self, k: u32) -> Duration {
        let factor = 1u32 << k.saturating_sub(1).min(16);
        self.base_ejection
            .saturating_mul(factor)
            .min(self.max_ejection)
    }
}

/// `on_unhealthy:` of a target group: what happens to a target's open TCP connections when
/// its health check marks it unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnhealthyConnections {
    /// They go on (the default): only new connections avoid the target.
    #[default]
    Keep,
    /// They are reset at once, so clients reconnect to a healthy target (a database primary
    /// that lost its role must not take more writes; HAProxy's `on-marked-down
    /// shutdown-sessions`).
    Close,
}

/// The source address of a group's TCP connections to its targets (`source:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceAddress {
    /// The host's own (the default): targets see Ballast.
    #[default]
    Balancer,
    /// The client's (IP_TRANSPARENT; HAProxy's `usesrc clientip`): targets see the client,
    /// as `pg_stat_activity.client_addr` and `pg_hba.conf` need. Needs CAP_NET_ADMIN and
    /// return traffic routed through this host (conf/tproxy/).
    Client,
}

/// Balancing algorithm of a target group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each healthy target in turn, ignoring weights.
    RoundRobin,
    /// Smooth weighted round robin (nginx's), in proportion to weights.
    WeightedRoundRobin,
    /// Fewest active connections per unit of weight, ties in rotation.
    LeastConnections,
    /// A weighted random target.
    Random,
    /// Two weighted random targets; the one with fewer active connections per weight wins.
    PowerOfTwo,
    /// The client IP picks the target (rendezvous hashing).
    SourceHash,
    /// Google's Maglev lookup table over a hash of the 5-tuple or the client IP.
    Maglev,
    /// Lowest moving average of the target's response time, weighted by active connections.
    LeastResponseTime,
}

/// Session persistence: a client IP keeps its target while the target is healthy and the
/// entry is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stickiness {
    /// An entry unused for this long expires.
    pub timeout: Duration,
    /// Most entries kept (the table is bounded; rounded up to a power of two).
    pub max_entries: usize,
}

/// What `maglev` hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The whole 5-tuple: each connection or flow on its own.
    FiveTuple,
    /// The client IP: all of a client's connections to one target.
    SourceIp,
}

/// Default `maglev_table_size`: a prime, ≥ 100 × targets for groups of up to 655 targets.
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 65537;

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::Random => "random",
            Algorithm::PowerOfTwo => "power_of_two",
            Algorithm::SourceHash => "source_hash",
            Algorithm::Maglev => "maglev",
            Algorithm::LeastResponseTime => "least_response_time",
        })
    }
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// Passes when a TCP connect completes.
    Tcp,
    /// Passes when `GET path` answers with a 2xx or 3xx status.
    Http {
        /// Request path, starting with `/`.
        path: String,
    },
    /// Connects, then runs `steps` in order (send bytes, expect a pattern); passes when the
    /// last step does (`steps:`, `redis:`).
    Steps {
        /// At least one.
        steps: Vec<steps::CheckStep>,
    },
    /// Sends `send` in one datagram; passes when a reply arrives within the timeout that
    /// contains `expect` (any reply when `expect` is empty).
    Udp {
        /// The probe datagram.
        send: Vec<u8>,
        /// Bytes the reply must contain.
        expect: Vec<u8>,
    },
}

/// A validated health check.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// What to check.
    pub kind: HealthCheckKind,
    /// Port to probe; `None` is the target's own port.
    pub port: Option<u16>,
    /// Time between the starts of two checks of one target.
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy target healthy (≥ 1).
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy target unhealthy (≥ 1).
    pub unhealthy_threshold: u32,
    /// A PROXY protocol header sent first (v2 LOCAL or v1 UNKNOWN): by default whenever the
    /// group sends one, as targets that require it refuse checks without it.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            port: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            proxy_protocol: None,
        }
    }
}

/// `tls:` of a `protocol: tls` listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Certificate and key files, in config order; the first is the default certificate.
    pub certificates: Vec<crate::tls::KeyPairFiles>,
    /// The lowest TLS version accepted.
    pub min_version: crate::tls::TlsVersion,
    /// ALPN protocols offered, in order of preference (`h2`, `http/1.1`, …); empty: none.
    pub alpn: Vec<String>,
    /// How long a client may take over its handshake, from accept.
    pub handshake_timeout: Duration,
    /// Session resumption by tickets (on by default).
    pub session_tickets: bool,
    /// Built from the files above when the config was loaded.
    pub server: crate::tls::ServerSide,
}

/// `target_tls:` of a target group.
#[derive(Debug, Clone)]
pub struct TargetTls {
    /// CA certificates (PEM) that targets' certificates must chain to; `None`: the system's.
    pub ca: Option<PathBuf>,
    /// The name targets' certificates must carry (and the SNI sent); `None`: the target's IP
    /// address, as an IP SAN.
    pub server_name: Option<String>,
    /// The certificate presented when a target asks for one (mutual TLS).
    pub client_cert: Option<crate::tls::KeyPairFiles>,
    /// Whether targets' certificates are verified (default true).
    pub verify: bool,
    /// Built from the above when the config was loaded.
    pub client: Arc<rustls::ClientConfig>,
}

impl TargetTls {
    /// A new session toward the target at `address`.
    ///
    /// # Errors
    /// rustls' (never in practice).
    pub fn session(&self, address: std::net::IpAddr) -> Result<rustls::Connection, rustls::Error> {
        let name = crate::tls::target_name(self.server_name.as_deref(), address);
        crate::tls::client_session(&self.client, name)
    }
}

/// One validated target group.
#[derive(Debug, Clone)]
pub struct TargetGroupConfig {
    /// Unique name.
    pub name: String,
    /// Balancing algorithm.
    pub algorithm: Algorithm,
    /// What `maglev` hashes.
    pub hash_key: HashKey,
    /// Slots in the `maglev` table (a prime ≥ 100 × targets).
    pub maglev_table_size: usize,
    /// Session persistence by client IP, when configured.
    pub stickiness: Option<Stickiness>,
    /// How long a target that turns healthy takes to ramp up to its full share.
    pub slow_start: Option<Duration>,
    /// How long `disable` lets a target's open connections finish before closing them.
    pub drain_timeout: Duration,
    /// The PROXY protocol header sent to targets before any client byte (TCP) or before each
    /// datagram (UDP, v2 only); `None`: none.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// What happens to a target's open TCP connections when it turns unhealthy.
    pub on_unhealthy: UnhealthyConnections,
    /// Passive checks (`outlier_detection:`), when set.
    pub outlier_detection: Option<OutlierDetection>,
    /// Where more targets come from (`discover:`): DNS names looked up again at their TTL.
    pub discover: Vec<Discover>,
    /// Scaling hooks (`scaling:`), when set.
    pub scaling: Option<scaling::Scaling>,
    /// TLS to the targets (`target_tls:`), health checks included; `None`: plain TCP.
    pub target_tls: Option<TargetTls>,
    /// `queue:`: TCP connections that find every target at its `max_connections` wait, in
    /// arrival order on each worker, instead of being left in the listen backlog.
    pub queue: Option<Queue>,
    /// Health check run by the prober.
    pub health_check: HealthCheckConfig,
    /// `agent_check:`: an agent on each target's host reports its state and weight.
    pub agent_check: Option<AgentCheck>,
    /// Whose address TCP connections to the targets come from.
    pub source: SourceAddress,
    /// Whether the file set `health_check:` (else the defaults: a TCP connect every 2 s).
    pub health_check_given: bool,
    /// At least one target.
    pub targets: Vec<TargetConfig>,
}

/// A target group's `agent_check:` (HAProxy's `agent-check`, `agent-port`, `agent-inter`,
/// `agent-send`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCheck {
    /// The agent's TCP port on each target's host.
    pub port: u16,
    /// Time between two questions to one agent.
    pub interval: Duration,
    /// How long an agent may take to answer a line.
    pub timeout: Duration,
    /// Sent once connected (may be empty).
    pub send: Vec<u8>,
}

/// A target group's `queue:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// Connections waiting at most, across all workers.
    pub max: usize,
    /// Longest wait.
    pub timeout: Duration,
}

/// Default `queue.timeout`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// One validated target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share for weighted algorithms (≥ 1).
    pub weight: u32,
    /// Used only when no primary (non-backup) target is healthy.
    pub backup: bool,
    /// Most open connections (or UDP sessions) to this target across all workers.
    pub max_connections: Option<u64>,
    /// The QUIC-LB server ID its QUIC server encodes in its connection IDs (`quic:`).
    pub server_id: Option<u64>,
    /// The tokens whose datagrams go to this target (`token:` listeners), as octets.
    pub tokens: Vec<Box<[u8]>>,
}

impl TargetConfig {
    /// A primary target at `address` with `weight` and no connection limit: what DNS
    /// discovery and scaling hooks add.
    pub fn new(address: SocketAddr, weight: u32) -> TargetConfig {
        TargetConfig {
            address,
            weight,
            backup: false,
            max_connections: None,
            server_id: None,
            tokens: Vec::new(),
        }
    }
}

/// Why a configuration was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The main file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// What is wrong in the files (syntax, unknown key, bad value, a rule that spans keys),
    /// all of it, one problem a line: `file:line:column: key.path: message`.
    #[error("{}", lines(.0))]
    Problems(Vec<Problem>),
    /// A TLS file no longer loads on a certificate reload (the configuration file is not read
    /// again, so there is no line to name).
    #[error("bad config {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Key path, e.g. `listeners[1].tls.certificates[0].cert`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// One problem a line.
fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

#[cfg(test)]
mod debug_tests {
    use super::AdminConfig;

    #[test]
    fn the_admin_token_never_shows_in_debug_output() {
        let admin = AdminConfig {
            bind: "127.0.0.1:7390".parse().unwrap(),
            token: Some("s3cret-token".into()),
            unix: None,
            read_only: false,
        };
        let shown = format!("{admin:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("7390"),
            "{shown}"
        );
    }
}
