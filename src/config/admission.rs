//! What a listener admits and where it routes before any target is picked: per-source limits,
//! allow/deny rules, PROXY protocol headers read from balancers in front, and SNI routes.

use std::time::Duration;

/// `per_source:` of a listener, as validated ([`crate::per_source`] enforces it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerSource {
    /// Most open connections (TCP) or sessions (UDP) per source.
    pub max_open: Option<u32>,
    /// New connections (or sessions) per source: a token bucket refilled with `count` tokens
    /// every `per_ms` milliseconds, holding at most `burst`.
    pub rate: Option<Rate>,
    /// Prefix lengths that make a source.
    pub ipv4_prefix: u8,
    /// As above, for IPv6.
    pub ipv6_prefix: u8,
    /// Words per table (a power of two).
    pub table_size: usize,
}

/// A token bucket's rate (`20/s`, `600/m`) and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens per period.
    pub count: u32,
    /// The period, milliseconds (1,000 or 60,000).
    pub per_ms: u32,
    /// Most tokens saved up (new connections in one go).
    pub burst: u32,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.per_ms == 60_000 { "m" } else { "s" };
        write!(f, "{}/{unit} (burst {})", self.count, self.burst)
    }
}

/// `routes:` of a TCP listener: the target group by the server name of the client's TLS
/// ClientHello, read without consuming it ([`crate::sni`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoutes {
    /// In file order; the first exact match wins, then the first wildcard match.
    pub routes: Vec<SniRoute>,
    /// How long a client may take to send its whole ClientHello.
    pub timeout: Duration,
    /// What happens to a client with no server name, no ClientHello in time, or no TLS.
    pub otherwise: NoServerName,
    /// PostgreSQL clients (`sslmode=require`) open with an SSLRequest before their
    /// ClientHello: Ballast answers `S`, reads the ClientHello, and replays the SSLRequest
    /// to the target, whose `S` it does not pass on.
    pub postgres_starttls: bool,
}

/// One route: a server name (lowercase; `*.example.com` covers one label) and its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// The name, or `*.` and a suffix.
    pub server_name: String,
    /// Index into the target groups.
    pub target_group: usize,
}

impl SniRoutes {
    /// The group for `name`: an exact route, else a wildcard route, else `None`.
    pub fn group_for(&self, name: &str) -> Option<usize> {
        let exact = self.routes.iter().find(|r| r.server_name == name);
        exact
            .or_else(|| {
                self.routes.iter().find(|r| {
                    r.server_name.starts_with("*.") && crate::sni::matches(&r.server_name, name)
                })
            })
            .map(|r| r.target_group)
    }
}

/// `without_server_name:` of a listener with `routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoServerName {
    /// To the listener's `target_group` (the default route).
    #[default]
    Default,
    /// Reset.
    Close,
}

/// Default `client_hello_timeout`.
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// `accept_proxy_protocol:` of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptProxy {
    /// Peers allowed to send a header (the balancers in front); any other peer is closed.
    pub trusted: Vec<ipnet::IpNet>,
    /// How long a client may take to send its whole header.
    pub timeout: Duration,
}

impl AcceptProxy {
    /// Whether `peer` may send a PROXY header (an IPv4-mapped address counts as IPv4).
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        in_any(&self.trusted, peer)
    }
}

/// Whether one of `nets` holds `ip`, an IPv4-mapped IPv6 address taken as its IPv4 address
/// (what a dual-stack socket reports for IPv4 clients).
fn in_any(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// Default `accept_proxy_protocol.timeout`.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(3);

/// `allow:` and `deny:` of a listener: a client is let in when no `deny` network holds it and,
/// if `allow` is not empty, an `allow` network does (deny wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Networks let in; empty: every client not denied.
    pub allow: Vec<ipnet::IpNet>,
    /// Networks refused.
    pub deny: Vec<ipnet::IpNet>,
}

impl AccessRules {
    /// Whether `ip` may connect. An IPv4-mapped IPv6 address is judged as the IPv4 address.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !in_any(&self.deny, ip) && (self.allow.is_empty() || in_any(&self.allow, ip))
    }

    /// Whether there is any rule to check.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}
