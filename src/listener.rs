//! A listener as the threads share it: its configuration in one generation, and the counters
//! and places that outlive generations (kept across reloads while the listener keeps its name,
//! protocol and address): connections open and accepted, datagrams, refusals at the front door
//! ([`Refusal`]), TLS handshakes and their failures ([`HandshakeFailure`]), and the places
//! under `max_connections` ([`ListenerPlace`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::ListenerConfig;
use crate::per_source::SourceLimits;
use crate::postgres::CancelKeys;

/// One listener as a generation sees it; dereferences to its counters, which are kept across
/// reloads while the listener keeps its name, protocol and address.
#[derive(Debug)]
pub struct ListenerState {
    /// The listener's validated configuration, its `target_group` an index into
    /// [`crate::generation::Generation::groups`].
    pub config: ListenerConfig,
    /// The listener is gone from the configuration: workers have closed its sockets.
    pub removed: bool,
    /// Its per-source tables (`per_source:`), kept across reloads while the limits stay.
    pub sources: Option<Arc<SourceLimits>>,
    /// `postgres:`: the cancel keys of its open connections, kept across reloads while the
    /// listener has `postgres:`.
    pub(crate) cancel_keys: Option<Arc<CancelKeys>>,
    stats: Arc<ListenerStats>,
}

impl std::ops::Deref for ListenerState {
    type Target = ListenerStats;
    fn deref(&self) -> &ListenerStats {
        &self.stats
    }
}

/// A listener's counters, shared by the workers.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open client connections (TCP) or sessions (UDP) across all workers, for
    /// `max_connections` and `udp.max_sessions`.
    pub active: AtomicUsize,
    /// Client connections accepted (TCP) or sessions created (UDP) since start.
    pub accepted: AtomicU64,
    /// Datagrams dropped (UDP): new flows past `max_sessions`, no target, full socket buffers.
    pub dropped: AtomicU64,
    /// Connect attempts after a failed one (TCP).
    pub retries: AtomicU64,
    /// Datagrams forwarded client → target (UDP).
    pub datagrams_up: AtomicU64,
    /// Datagrams forwarded target → client (UDP).
    pub datagrams_down: AtomicU64,
    /// UDP sessions ended unanswered to make room for a new flow (the table was full).
    pub evicted: AtomicU64,
    /// Clients refused before any target was touched, by [`Refusal`] (its index).
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// TLS handshakes completed (`protocol: tls`).
    pub tls_handshakes: AtomicU64,
    /// Of those, sessions resumed (a ticket or a session ID) rather than a full handshake.
    pub tls_resumed: AtomicU64,
    /// TLS handshakes failed, by [`HandshakeFailure`] (its index).
    pub tls_failed: [AtomicU64; HandshakeFailure::ALL.len()],
    /// `postgres:`: cancel requests sent to the server that issued their key.
    pub cancels_routed: AtomicU64,
    /// `postgres:`: cancel requests whose key no open connection holds (closed, as the
    /// server would).
    pub cancels_unknown: AtomicU64,
    /// `quic:` and `token:`: how datagrams were routed.
    pub routed: RouteStats,
    /// `forwarding: sockmap`: how connections were taken, by [`SockmapOutcome`] (its index).
    pub sockmap: [AtomicU64; SockmapOutcome::ALL.len()],
    /// `forwarding: sockmap`: directions that left the kernel before their end because they
    /// spent their budget (bulk, or a destination that stopped reading) and went on in buffers.
    pub sockmap_diverted: AtomicU64,
    /// `forwarding: sockmap`: bytes clients or targets sent twice (a retransmission that
    /// overlapped what had arrived) that the kernel path cut before forwarding.
    pub sockmap_trimmed: AtomicU64,
}

/// What `forwarding: sockmap` did with an established connection (counted per listener in
/// `/metrics` as `ballast_listener_sockmap_connections_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockmapOutcome {
    /// Joined: the kernel forwards it.
    Joined,
    /// TLS on a side, or a PostgreSQL key watch still open: forwarded in user space.
    NotPlain,
    /// The worker's maps were full: forwarded in user space.
    MapFull,
    /// The maps or the program could not be made (no CAP_BPF/CAP_NET_ADMIN/CAP_PERFMON, an older kernel):
    /// forwarded in user space (logged once per worker).
    Unavailable,
    /// The kernel refused the sockets (e.g. one closed meanwhile): forwarded in user space.
    Refused,
}

impl SockmapOutcome {
    /// Every outcome, in counter order.
    pub const ALL: [SockmapOutcome; 5] = [
        SockmapOutcome::Joined,
        SockmapOutcome::NotPlain,
        SockmapOutcome::MapFull,
        SockmapOutcome::Unavailable,
        SockmapOutcome::Refused,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            SockmapOutcome::Joined => "joined",
            SockmapOutcome::NotPlain => "not_plain",
            SockmapOutcome::MapFull => "map_full",
            SockmapOutcome::Unavailable => "unavailable",
            SockmapOutcome::Refused => "refused",
        }
    }
}

/// A routing listener's datagrams, by how they were routed (each counted once, but
/// `unknown_server_id`, a part of `fallback`, and `migrations`, a part of
/// `by_connection_id`).
#[derive(Debug, Default)]
pub struct RouteStats {
    /// To the target whose server ID their connection ID carries.
    pub by_connection_id: AtomicU64,
    /// Initial and 0-RTT packets of new flows, balanced on their connection ID.
    pub balanced: AtomicU64,
    /// By their 5-tuple: not QUIC, or an ID no server of the group issued.
    pub fallback: AtomicU64,
    /// Of the fallback: IDs of this configuration naming no target of the group.
    pub unknown_server_id: AtomicU64,
    /// Short header packets from an address without a session: a client that moved.
    pub migrations: AtomicU64,
    /// `token:`: to the target listing their token.
    pub by_token: AtomicU64,
    /// `token:`: dropped, no target lists their token.
    pub unknown_token: AtomicU64,
}

/// Why a client's TLS handshake failed (counted per listener in `/metrics` as
/// `ballast_listener_tls_handshake_failures_total{reason}`; the client is reset, no target is
/// touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not complete within `tls.handshake_timeout`.
    Timeout,
    /// The client closed or reset during the handshake.
    ClientClosed,
    /// Not TLS, or a malformed TLS message.
    Malformed,
    /// No TLS version, cipher suite, key exchange group or signature scheme in common.
    Incompatible,
    /// The client sent an alert: most often it refused the certificate (unknown CA, a name
    /// that does not match).
    ClientAlert,
    /// `tls.alpn` is set and the client offered none of those protocols.
    NoApplicationProtocol,
    /// Anything else rustls refused.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in counter order.
    pub const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::ClientClosed,
        HandshakeFailure::Malformed,
        HandshakeFailure::Incompatible,
        HandshakeFailure::ClientAlert,
        HandshakeFailure::NoApplicationProtocol,
        HandshakeFailure::Other,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ClientClosed => "client_closed",
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::ClientAlert => "client_alert",
            HandshakeFailure::NoApplicationProtocol => "no_application_protocol",
            HandshakeFailure::Other => "other",
        }
    }

    /// The reason for a failed handshake.
    pub fn of(e: &crate::tls::io::HandshakeError) -> HandshakeFailure {
        use crate::tls::io::HandshakeError;
        match e {
            HandshakeError::Closed | HandshakeError::Io(_) => HandshakeFailure::ClientClosed,
            HandshakeError::Tls(e) => match e {
                rustls::Error::InvalidMessage(_)
                | rustls::Error::InappropriateMessage { .. }
                | rustls::Error::InappropriateHandshakeMessage { .. } => {
                    HandshakeFailure::Malformed
                }
                rustls::Error::PeerIncompatible(_) => HandshakeFailure::Incompatible,
                rustls::Error::AlertReceived(_) => HandshakeFailure::ClientAlert,
                rustls::Error::NoApplicationProtocol => HandshakeFailure::NoApplicationProtocol,
                _ => HandshakeFailure::Other,
            },
        }
    }
}

impl ListenerStats {
    /// Counts one connection taken by `forwarding: sockmap` as `how`.
    pub fn sockmap_took(&self, how: SockmapOutcome) {
        if let Some(c) = self.sockmap.get(how as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one failed TLS handshake.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        if let Some(c) = self.tls_failed.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one client (or datagram) refused for `why`.
    pub fn refuse(&self, why: Refusal) {
        self.refuse_many(why, 1);
    }

    /// Counts `n` datagrams refused for `why`.
    pub fn refuse_many(&self, why: Refusal, n: usize) {
        if let Some(c) = self.refused.get(why as usize) {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Why a client was refused at the front door (counted per listener in `/metrics` as
/// `ballast_listener_refused_total{reason}`, never logged one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is outside `allow` or inside `deny` (TCP connection or UDP datagram).
    Denied,
    /// `accept_proxy_protocol`: the peer is not in `trusted`.
    UntrustedProxy,
    /// `accept_proxy_protocol`: no valid PROXY header (malformed, oversize, or the client
    /// closed first).
    BadProxyHeader,
    /// `accept_proxy_protocol`: the header was not complete within its timeout.
    ProxyTimeout,
    /// `per_source`: the source has `max_connections` / `max_sessions` open.
    SourceLimit,
    /// `per_source`: the source's `connection_rate` is used up.
    SourceRate,
    /// `routes` with `without_server_name: close`: no route for the client's ClientHello (no
    /// TLS, no server name, an unknown one, or none in time); `postgres.routes` with
    /// `without_route: refuse`: none for the client's database, user and application.
    NoRoute,
    /// `postgres:`: the client's StartupMessage was malformed, too long (over 10,000 bytes),
    /// of another protocol, or not whole within `startup_timeout`.
    BadStartup,
}

impl From<crate::per_source::Over> for Refusal {
    fn from(over: crate::per_source::Over) -> Refusal {
        match over {
            crate::per_source::Over::Open => Refusal::SourceLimit,
            crate::per_source::Over::Rate => Refusal::SourceRate,
        }
    }
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 8] = [
        Refusal::Denied,
        Refusal::UntrustedProxy,
        Refusal::BadProxyHeader,
        Refusal::ProxyTimeout,
        Refusal::SourceLimit,
        Refusal::SourceRate,
        Refusal::NoRoute,
        Refusal::BadStartup,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::UntrustedProxy => "untrusted_proxy",
            Refusal::BadProxyHeader => "bad_proxy_header",
            Refusal::ProxyTimeout => "proxy_timeout",
            Refusal::SourceLimit => "source_limit",
            Refusal::SourceRate => "source_rate",
            Refusal::NoRoute => "no_route",
            Refusal::BadStartup => "bad_startup",
        }
    }
}

/// A place under a listener's `max_connections` (TCP) or `udp.max_sessions` (UDP), held by
/// one connection or session and given back when dropped: every way out (a close, a failed
/// accept, a worker that panics and unwinds) gives it back, with no decrement to pair by hand.
#[derive(Debug)]
pub struct ListenerPlace(Arc<ListenerStats>);

impl Drop for ListenerPlace {
    fn drop(&mut self) {
        let before = self.0.active.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "listener active count below zero");
    }
}

impl ListenerState {
    /// A listener new to this process: counters at zero, fresh per-source tables.
    pub(crate) fn new(config: ListenerConfig) -> ListenerState {
        ListenerState {
            sources: source_tables(&config, None),
            cancel_keys: config.postgres.as_ref().map(|_| Arc::default()),
            config,
            removed: false,
            stats: Arc::default(),
        }
    }

    /// This listener in the next generation, as `config` (`removed` when it is gone): its
    /// counters go on, and its per-source tables while their limits stay.
    pub(crate) fn successor(&self, config: ListenerConfig, removed: bool) -> ListenerState {
        ListenerState {
            sources: source_tables(&config, self.sources.as_ref()),
            cancel_keys: config
                .postgres
                .as_ref()
                .map(|_| self.cancel_keys.clone().unwrap_or_default()),
            config,
            removed,
            stats: self.stats.clone(),
        }
    }

    /// Takes a place, unless `max` are taken already across all workers (`None`: no limit).
    /// Reserved before accepting, so workers together never exceed the limit.
    pub fn reserve(&self, max: Option<usize>) -> Option<ListenerPlace> {
        // Taken only while under the limit (compare-and-swap), so the count never reads
        // over it, not even for an instant a scrape could see.
        self.stats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                max.is_none_or(|m| n < m).then_some(n + 1)
            })
            .ok()
            .map(|_| ListenerPlace(self.stats.clone()))
    }
}

/// The per-source tables for listener `config`: `old`'s when its limits are the same (open
/// connections stay counted across a reload), fresh ones otherwise.
fn source_tables(
    config: &ListenerConfig,
    old: Option<&Arc<SourceLimits>>,
) -> Option<Arc<SourceLimits>> {
    let limits = config.per_source.as_ref()?;
    match old {
        Some(t) if t.limits() == limits => Some(t.clone()),
        _ => Some(Arc::new(SourceLimits::new(limits.clone()))),
    }
}
