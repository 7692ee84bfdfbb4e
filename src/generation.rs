//! One *generation* of the running configuration, as every thread shares it: listeners,
//! target groups and targets, immutable once built, in an `Arc`.
//!
//! A hot reload or a target added through the admin API builds the next generation with
//! [`Generation::successor`] and hands it to every thread. Indices never move between generations:
//! a listener or group keeps its index for the life of the process (one that is removed stays as
//! a tombstone), and a target while anything refers to it (a removed target's index goes to a
//! new one only once its connections and sessions have ended), so whatever recorded an index
//! finds the same thing in any later generation. What changes while a generation runs (health, admin states, counters)
//! lives in atomics shared by all generations.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::balancer::table_builder;
use crate::config::{Config, ListenerConfig};
use crate::per_source::SourceLimits;
use crate::target::TargetGroup;

/// One listener as a generation sees it; dereferences to its counters, which are kept across
/// reloads while the listener keeps its name, protocol and address.
#[derive(Debug)]
pub struct ListenerState {
    /// The listener's validated configuration, its `target_group` an index into
    /// [`Generation::groups`].
    pub config: ListenerConfig,
    /// The listener is gone from the configuration: workers have closed its sockets.
    pub removed: bool,
    /// Its per-source tables (`per_source:`), kept across reloads while the limits stay.
    pub sources: Option<Arc<SourceLimits>>,
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
    /// TLS, no server name, an unknown one, or none in time).
    NoRoute,
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
    pub const ALL: [Refusal; 7] = [
        Refusal::Denied,
        Refusal::UntrustedProxy,
        Refusal::BadProxyHeader,
        Refusal::ProxyTimeout,
        Refusal::SourceLimit,
        Refusal::SourceRate,
        Refusal::NoRoute,
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
    /// Takes a place, unless `max` are taken already across all workers (`None`: no limit).
    /// Reserved before accepting, so workers together never exceed the limit.
    pub fn reserve(&self, max: Option<usize>) -> Option<ListenerPlace> {
        let before = self.stats.active.fetch_add(1, Ordering::AcqRel);
        let place = ListenerPlace(self.stats.clone());
        // Over the limit: dropping `place` gives the place straight back.
        max.is_none_or(|m| before < m).then_some(place)
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

/// Everything the threads share: one generation, built from a [`Config`].
#[derive(Debug)]
pub struct Generation {
    /// The configuration this generation was built from, as written (file order).
    pub config: Config,
    /// Listeners by index (the first generation's in config order, then those added later;
    /// removed ones stay, with `removed` set).
    pub listeners: Vec<ListenerState>,
    /// Target groups by index, likewise.
    pub groups: Vec<TargetGroup>,
    /// 0 for the first generation, then 1, 2, … for each applied change.
    pub generation: u64,
}

impl Generation {
    /// Builds the first generation for `config`, every target healthy and every counter zero.
    /// Listeners' `bind` should be the addresses they got (port 0 resolved).
    pub fn new(config: Config) -> Arc<Self> {
        let groups = config
            .target_groups
            .iter()
            .map(|c| TargetGroup::new(c, table_builder))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerState {
                config: l.clone(),
                removed: false,
                sources: source_tables(l, None),
                stats: Arc::default(),
            })
            .collect();
        Arc::new(Generation {
            config,
            listeners,
            groups,
            generation: 0,
        })
    }

    /// The next generation for `config`, matching groups and listeners by name (see
    /// [`TargetGroup`] for targets). A listener whose protocol or bind address changed counts
    /// as removed and added again. Returns it with the indices of the listeners that are new
    /// (they need sockets). Marks removed and revived targets on their shared state at once:
    /// call it only to apply the result.
    pub fn successor(&self, config: Config) -> (Generation, Vec<usize>) {
        let mut groups: Vec<TargetGroup> = self
            .groups
            .iter()
            .map(|g| {
                let next = config
                    .target_groups
                    .iter()
                    .find(|c| c.name == g.config.name && !g.removed);
                g.successor(next, table_builder)
            })
            .collect();
        for c in &config.target_groups {
            if !groups.iter().any(|g| g.config.name == c.name && !g.removed) {
                groups.push(TargetGroup::new(c, table_builder)); // healthy, as at start
            }
        }
        // Listeners name groups by their index in `config`; ours are by name.
        let index = |i: usize| {
            let name = &config.target_groups[i].name;
            groups
                .iter()
                .position(|g| &g.config.name == name && !g.removed)
                .expect("every configured group has an index")
        };
        let layout = |mut l: ListenerConfig| {
            l.target_group = index(l.target_group);
            if let Some(sni) = l.sni.as_mut() {
                for r in &mut sni.routes {
                    r.target_group = index(r.target_group);
                }
            }
            l
        };
        let mut listeners: Vec<ListenerState> = self
            .listeners
            .iter()
            .map(|old| {
                let next = config
                    .listeners
                    .iter()
                    .find(|c| !old.removed && same_socket(c, &old.config));
                let config = next.map_or_else(|| old.config.clone(), |c| layout(c.clone()));
                ListenerState {
                    sources: source_tables(&config, old.sources.as_ref()),
                    config,
                    removed: next.is_none(),
                    stats: old.stats.clone(),
                }
            })
            .collect();
        let mut added = Vec::new();
        for i in self.added_listeners(&config) {
            added.push(listeners.len());
            let c = layout(config.listeners[i].clone());
            listeners.push(ListenerState {
                sources: source_tables(&c, None),
                config: c,
                removed: false,
                stats: Arc::default(),
            });
        }
        let next = Generation {
            config,
            listeners,
            groups,
            generation: self.generation + 1,
        };
        (next, added)
    }

    /// Indices (into `config.listeners`) of the listeners that [`Generation::successor`] would
    /// add: those with no live listener of the same name, protocol and address.
    pub fn added_listeners(&self, config: &Config) -> Vec<usize> {
        (0..config.listeners.len())
            .filter(|&i| {
                !self
                    .listeners
                    .iter()
                    .any(|l| !l.removed && same_socket(&config.listeners[i], &l.config))
            })
            .collect()
    }

    /// The group named `name` (not removed), with its index.
    pub fn group(&self, name: &str) -> Option<(usize, &TargetGroup)> {
        self.groups
            .iter()
            .enumerate()
            .find(|(_, g)| !g.removed && g.config.name == name)
    }
}

/// Whether the running listener `old` (its `bind` the address it got) serves `new` as
/// configured: same name and protocol, and the same address, or the same IP when `new` asks for
/// port 0 (any port: the one it has will do).
fn same_socket(new: &ListenerConfig, old: &ListenerConfig) -> bool {
    let address = new.bind == old.bind || (new.bind.port() == 0 && new.bind.ip() == old.bind.ip());
    new.name == old.name
        && new.protocol == old.protocol
        && address
        && new.interface == old.interface
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::config;
    use crate::target::AdminState;

    /// Listeners `(name, bind)` in front of group `g`, and groups `(name, algorithm, ports)`
    /// of targets on 127.0.0.1.
    fn config(listeners: &[(&str, &str)], groups: &[(&str, &str, &[u16])]) -> Config {
        let mut yaml = "listeners:\n".to_string();
        for (name, bind) in listeners {
            yaml += &format!(
                "  - {{name: {name}, protocol: tcp, bind: '{bind}', target_group: {}}}\n",
                groups[0].0
            );
        }
        yaml += "target_groups:\n";
        for (name, algorithm, ports) in groups {
            yaml += &format!("  - name: {name}\n    algorithm: {algorithm}\n    targets:\n");
            for p in *ports {
                yaml += &format!("      - {{address: '127.0.0.1:{p}'}}\n");
            }
        }
        config::parse(Path::new("t.yaml"), &yaml).unwrap()
    }

    fn addresses(g: &TargetGroup) -> Vec<(u16, AdminState)> {
        g.targets
            .iter()
            .map(|t| (t.address.port(), t.admin_state()))
            .collect()
    }

    #[test]
    fn places_are_given_back_when_dropped_and_never_exceed_the_limit() {
        let g = Generation::new(config(&[("l", "127.0.0.1:7000")], &[("g", "random", &[1])]));
        let (l, t) = (&g.listeners[0], &g.groups[0].targets[0]);
        let a = l.reserve(Some(2)).expect("first place");
        let b = l.reserve(Some(2)).expect("second place");
        assert!(l.reserve(Some(2)).is_none(), "a third past max 2");
        assert_eq!(
            l.active.load(Ordering::Relaxed),
            2,
            "a refused place is given back"
        );
        let held = (t.hold(), t.hold());
        assert_eq!(t.active.load(Ordering::Relaxed), 2);
        drop((a, held));
        assert_eq!(l.active.load(Ordering::Relaxed), 1);
        assert_eq!(t.active.load(Ordering::Relaxed), 0);
        drop(b);
        assert_eq!(l.active.load(Ordering::Relaxed), 0);
        assert!(l.reserve(None).is_some(), "no limit");
    }

    #[test]
    fn targets_keep_their_index_and_state_across_generations() {
        let first = Generation::new(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "round_robin", &[1, 2, 3])],
        ));
        first.groups[0].targets[1]
            .active
            .store(5, Ordering::Relaxed);
        // 1 still has a connection: its slot stays its own while it drains.
        first.groups[0].targets[0]
            .active
            .store(1, Ordering::Relaxed);
        first.groups[0].set_admin_state(2, AdminState::Draining);

        // 1 goes, 4 comes, the algorithm changes.
        let (second, added) = first.successor(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "least_connections", &[2, 3, 4])],
        ));
        assert!(added.is_empty(), "same listener, same sockets");
        let g = &second.groups[0];
        use AdminState::*;
        assert_eq!(
            addresses(g),
            [(1, Removed), (2, Active), (3, Draining), (4, Active)]
        );
        assert_eq!(g.config.algorithm, config::Algorithm::LeastConnections);
        assert_eq!(
            g.targets[1].active.load(Ordering::Relaxed),
            5,
            "counters carried"
        );
        assert!(
            !g.targets[3].is_healthy(),
            "a new target waits for its checks"
        );
        assert!(g.targets[1].is_healthy());
        assert_eq!(
            first.groups[0].targets[0].admin_state(),
            Removed,
            "the state is shared: older generations see the removal"
        );

        // 1 comes back: same index, in service, unhealthy until checked.
        let (third, _) = second.successor(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "least_connections", &[1, 2, 3, 4])],
        ));
        let g = &third.groups[0];
        assert_eq!(
            addresses(g),
            [(1, Active), (2, Active), (3, Draining), (4, Active)]
        );
        assert!(!g.targets[0].is_healthy());
        assert_eq!(third.generation, 2);

        // 4 goes with no connection open and 5 comes: 5 takes 4's slot.
        let (fourth, _) = third.successor(config(
            &[("l", "127.0.0.1:7000")],
            &[("g", "least_connections", &[1, 2, 3, 5])],
        ));
        let g = &fourth.groups[0];
        assert_eq!(
            addresses(g),
            [(1, Active), (2, Active), (3, Draining), (5, Active)]
        );
        assert!(!g.targets[3].is_healthy(), "a fresh state, not 4's");
    }

    #[test]
    fn groups_and_listeners_are_matched_by_name_and_address() {
        let first = Generation::new(config(
            &[("l", "127.0.0.1:7000"), ("m", "127.0.0.1:7001")],
            &[("g", "round_robin", &[1]), ("h", "round_robin", &[2])],
        ));
        first.listeners[0].accepted.store(9, Ordering::Relaxed);
        // m moves to another port; n is new; h goes, k comes; l asks for port 0 (any: it keeps
        // the one it has).
        let (next, added) = first.successor(config(
            &[
                ("l", "127.0.0.1:0"),
                ("m", "127.0.0.1:7002"),
                ("n", "127.0.0.1:7003"),
            ],
            &[("g", "round_robin", &[1]), ("k", "round_robin", &[3])],
        ));
        let live: Vec<(&str, bool)> = next
            .listeners
            .iter()
            .map(|l| (l.config.name.as_str(), l.removed))
            .collect();
        assert_eq!(
            live,
            [("l", false), ("m", true), ("m", false), ("n", false)]
        );
        assert_eq!(added, [2, 3], "indices of the listeners that need sockets");
        assert_eq!(next.listeners[0].accepted.load(Ordering::Relaxed), 9);
        let groups: Vec<(&str, bool)> = next.groups.iter().map(|g| (g.name(), g.removed)).collect();
        assert_eq!(groups, [("g", false), ("h", true), ("k", false)]);
        assert_eq!(next.groups[1].targets[0].admin_state(), AdminState::Removed);
        assert_eq!(next.group("k").map(|(i, _)| i), Some(2));
        assert_eq!(next.group("h").map(|(i, _)| i), None);
    }
}
