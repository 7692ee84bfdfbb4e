//! `listeners:`: each listener's protocol, address, limits, access rules, PROXY protocol,
//! per-source limits and SNI routes, checked against the target groups they name (its `tls` is
//! [`super::super::tls`]'s, its `udp:` settings sized in [`super::super::descriptors`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use super::super::descriptors::UdpExplicit;
use super::super::file::*;
use super::super::tls::tls_listener;
use super::super::*;
use super::{unique_name, ByName, Wrong};

/// The listeners that are right, in the file's order, with the UDP limits each set itself
/// (`None` for TCP): the others are sized from the open-file limit once every listener is
/// known. Each wrong listener's first problem is pushed to `wrong`; a group that is itself
/// wrong (`None` in `target_groups`) is not checked against. `base` is where relative TLS
/// files are.
pub(super) fn listeners(
    raw: Vec<FileListener>,
    group_index: &ByName,
    target_groups: &[Option<TargetGroupConfig>],
    base: &Path,
    wrong: &mut Vec<Wrong>,
) -> (Vec<ListenerConfig>, Vec<Option<UdpExplicit>>) {
    let mut listener_names = HashMap::new();
    let mut listeners = Vec::with_capacity(raw.len());
    // Per listener, the UDP limits it set itself: the rest are sized from the open-file limit
    // once every listener is known.
    let mut udp_explicit = Vec::with_capacity(raw.len());
    for (i, l) in raw.into_iter().enumerate() {
        let key = format!("listeners[{i}]");
        let checked = unique_name(&mut listener_names, &l.name, i, "listener", "listeners")
            .map_err(|m| (format!("{key}.name"), m))
            .and_then(|()| listener(&key, l, group_index, target_groups, &listeners, base));
        match checked {
            Ok((listener, explicit)) => {
                listeners.push(listener);
                udp_explicit.push(explicit);
            }
            Err(w) => wrong.push(w),
        }
    }
    (listeners, udp_explicit)
}

/// The listener at `key`, checked against the groups and the listeners before it, with the
/// UDP limits it set itself.
///
/// # Errors
/// `(key, message)` of its first problem.
fn listener(
    key: &str,
    l: FileListener,
    group_index: &ByName,
    target_groups: &[Option<TargetGroupConfig>],
    listeners: &[ListenerConfig],
    base: &Path,
) -> Result<(ListenerConfig, Option<UdpExplicit>), Wrong> {
    let mut udp_explicit = None;
    let protocol = match l.protocol {
        FileProtocol::Tcp | FileProtocol::Tls => Protocol::Tcp,
        FileProtocol::Udp => Protocol::Udp,
    };
    let tls = match (l.protocol, l.tls) {
        (FileProtocol::Tls, Some(raw)) => {
            // PostgreSQL 17's direct TLS (sslnegotiation=direct) wants its ALPN accepted.
            let default_alpn: &[&str] = if l.postgres.is_some() {
                &["postgresql"]
            } else {
                &[]
            };
            Some(tls_listener(key, raw, base, default_alpn)?)
        }
        (FileProtocol::Tls, None) => {
            return Err((
                format!("{key}.tls"),
                "a tls listener needs `tls: {certificates: [{cert: FILE, key: FILE}]}`".into(),
            ))
        }
        (_, Some(_)) => {
            return Err((
                format!("{key}.tls"),
                "`tls` goes with `protocol: tls`".into(),
            ))
        }
        (_, None) => None,
    };
    let udp = match (protocol, l.udp) {
        (Protocol::Tcp, Some(_)) => {
            return Err((
                format!("{key}.udp"),
                "`udp` settings apply to udp listeners only".into(),
            ))
        }
        (Protocol::Tcp, None) => None,
        (Protocol::Udp, raw) => {
            let tcp_only = [
                (
                    "max_connections",
                    l.max_connections.is_some(),
                    "udp.max_sessions",
                ),
                ("connect_timeout", l.connect_timeout.is_some(), ""),
                (
                    "idle_timeout",
                    l.idle_timeout.is_some(),
                    "udp.session_idle_timeout",
                ),
                ("retries", l.retries.is_some(), ""),
                ("forwarding", l.forwarding.is_some(), ""),
            ];
            if let Some((name, _, instead)) = tcp_only.iter().find(|(_, set, _)| *set) {
                let hint = if instead.is_empty() {
                    String::new()
                } else {
                    format!("; for udp use `{instead}`")
                };
                return Err((
                    format!("{key}.{name}"),
                    format!("`{name}` applies to tcp listeners only{hint}"),
                ));
            }
            let (settings, explicit) = udp_settings(raw);
            udp_explicit = Some(explicit);
            Some(settings)
        }
    };
    let Some(&target_group) = group_index.get(&l.target_group) else {
        return Err((
            format!("{key}.target_group"),
            format!(
                "listener `{}` names target group `{}`, which is not defined",
                l.name, l.target_group
            ),
        ));
    };
    if let Some(other) = listeners.iter().find(|x: &&ListenerConfig| {
        x.bind == l.bind.0 && x.protocol == protocol && l.bind.0.port() != 0
    }) {
        return Err((
            format!("{key}.bind"),
            format!("{} is already bound by listener `{}`", l.bind.0, other.name),
        ));
    }
    if let Some(name) = &l.interface {
        check_interface(name).map_err(|m| (format!("{key}.interface"), m))?;
    }
    if protocol == Protocol::Udp {
        if l.accept_proxy_protocol.is_some() {
            return Err((
                format!("{key}.accept_proxy_protocol"),
                "reading PROXY protocol headers applies to tcp listeners only".into(),
            ));
        }
        if target_groups
            .get(target_group)
            .and_then(Option::as_ref)
            .and_then(|g| g.proxy_protocol)
            == Some(crate::proxy_protocol::Version::V1)
        {
            return Err((
                format!("{key}.target_group"),
                format!(
                    "udp listener `{}` uses target group `{}`, whose `proxy_protocol: v1` is \
                     TCP-only; use v2 (which has a UDP form)",
                    l.name, l.target_group
                ),
            ));
        }
    }
    let accept_proxy = match l.accept_proxy_protocol {
        None => None,
        Some(a) if a.trusted.is_empty() => {
            return Err((
                format!("{key}.accept_proxy_protocol.trusted"),
                "list the networks of the balancers in front (e.g. [10.0.0.0/8]); a header \
                 from anyone else is refused"
                    .into(),
            ))
        }
        Some(a) => Some(AcceptProxy {
            trusted: a.trusted.into_iter().map(|c| c.0).collect(),
            timeout: a.timeout.map_or(DEFAULT_PROXY_TIMEOUT, |d| d.0),
        }),
    };
    let per_source = match l.per_source {
        None => None,
        Some(p) => Some(per_source(key, protocol, p)?),
    };
    // A tls listener may answer PostgreSQL's SSLRequest without routing by name.
    let routes = match l.routes {
        None if tls.is_some() && l.postgres_starttls == Some(true) => Some(Vec::new()),
        r => r,
    };
    let sni = match routes {
        None => {
            for (name, set) in [
                ("client_hello_timeout", l.client_hello_timeout.is_some()),
                ("without_server_name", l.without_server_name.is_some()),
                ("postgres_starttls", l.postgres_starttls.is_some()),
            ] {
                if set {
                    return Err((
                        format!("{key}.{name}"),
                        format!("`{name}` goes with `routes` (or, for postgres_starttls, `protocol: tls`)"),
                    ));
                }
            }
            None
        }
        Some(_) if protocol == Protocol::Udp => {
            return Err((
                format!("{key}.routes"),
                "SNI routes apply to tcp listeners only".into(),
            ))
        }
        Some(_) if tls.is_some() && l.client_hello_timeout.is_some() => {
            return Err((
                format!("{key}.client_hello_timeout"),
                "on a tls listener `tls.handshake_timeout` covers the ClientHello".into(),
            ))
        }
        Some(raw_routes) => {
            let routes = sni_routes(key, raw_routes, group_index)?;
            Some(SniRoutes {
                routes,
                timeout: l
                    .client_hello_timeout
                    .map_or(DEFAULT_CLIENT_HELLO_TIMEOUT, |d| d.0),
                otherwise: l.without_server_name.unwrap_or_default(),
                postgres_starttls: l.postgres_starttls.unwrap_or(false),
            })
        }
    };
    if let Some(s) = sni
        .as_ref()
        .filter(|s| s.postgres_starttls && tls.is_none())
    {
        let groups = std::iter::once(target_group).chain(s.routes.iter().map(|r| r.target_group));
        if let Some(g) = groups
            .filter_map(|g| target_groups.get(g).and_then(Option::as_ref))
            .find(|g| g.target_tls.is_some())
        {
            return Err((
                format!("{key}.postgres_starttls"),
                format!(
                    "target group `{}` has `target_tls`, but this listener passes the \
                     client's own TLS through; use `protocol: tls` to terminate it here",
                    g.name
                ),
            ));
        }
    }
    let postgres = match l.postgres {
        None => None,
        Some(p) => Some(super::postgres::postgres(
            &format!("{key}.postgres"),
            p,
            protocol,
            group_index,
        )?),
    };
    let quic = match l.quic {
        None => None,
        Some(q) => Some(super::quic::quic(
            &format!("{key}.quic"),
            q,
            protocol,
            target_groups.get(target_group).and_then(Option::as_ref),
            base,
        )?),
    };
    let token = match l.token {
        None => None,
        Some(t) => Some(super::quic::token(
            &format!("{key}.token"),
            t,
            protocol,
            quic.is_some(),
            target_groups.get(target_group).and_then(Option::as_ref),
        )?),
    };
    let access = AccessRules {
        allow: l
            .allow
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.0)
            .collect(),
        deny: l
            .deny
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.0)
            .collect(),
    };
    let listener = ListenerConfig {
        name: l.name,
        protocol,
        bind: l.bind.0,
        interface: l.interface,
        freebind: l.freebind.unwrap_or(false),
        readiness: l.readiness.unwrap_or_default(),
        accept_proxy,
        access,
        per_source,
        sni,
        tls,
        postgres,
        quic,
        token,
        target_group,
        max_connections: l.max_connections.map(|n| n.get() as usize),
        connect_timeout: l.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
        idle_timeout: l.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
        retries: l.retries.unwrap_or(DEFAULT_RETRIES),
        forwarding: l.forwarding.unwrap_or(Forwarding::Auto),
        udp,
    };
    Ok((listener, udp_explicit))
}

/// A UDP listener's settings, and the limits it set itself (the others are sized later, see
/// [`udp_defaults`](super::super::descriptors::udp_defaults)).
fn udp_settings(raw: Option<FileUdp>) -> (UdpSettings, UdpExplicit) {
    let defaults = UdpSettings::default();
    let Some(u) = raw else {
        return (defaults, UdpExplicit::default());
    };
    let explicit = UdpExplicit {
        max_sessions: u.max_sessions.map(|n| n.get() as usize),
        max_unreplied: u.max_unreplied.map(|n| n.get() as usize),
    };
    let settings = UdpSettings {
        session_idle_timeout: u
            .session_idle_timeout
            .map_or(defaults.session_idle_timeout, |d| d.0),
        max_sessions: explicit.max_sessions.unwrap_or(defaults.max_sessions),
        max_unreplied: explicit.max_unreplied.unwrap_or(defaults.max_unreplied),
        max_responses: u.max_responses.unwrap_or(defaults.max_responses),
        unreplied_timeout: u
            .unreplied_timeout
            .map_or(defaults.unreplied_timeout, |d| d.0),
        on_unhealthy: u.on_unhealthy.unwrap_or(OnUnhealthy::Rebalance),
        batch: u.batch.map_or(defaults.batch, |n| n.0 as usize),
    };
    (settings, explicit)
}

/// A network interface name as Linux takes it: 1 to 15 bytes (IFNAMSIZ less the NUL), no
/// `/`, whitespace or NUL. Whether the interface exists is known only at bind time.
fn check_interface(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name `{name}` must be 1 to 15 bytes long (Linux's IFNAMSIZ)"
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\0' || c.is_whitespace())
    {
        return Err(format!(
            "interface name `{name}` has a `/`, a space or a NUL, which Linux refuses"
        ));
    }
    Ok(())
}

/// `per_source:` of a listener speaking `protocol`.
fn per_source(key: &str, protocol: Protocol, p: FilePerSource) -> Result<PerSource, Wrong> {
    let (open, wrong, instead) = match protocol {
        Protocol::Tcp => (
            p.max_connections,
            p.max_sessions.is_some(),
            "max_connections",
        ),
        Protocol::Udp => (p.max_sessions, p.max_connections.is_some(), "max_sessions"),
    };
    if wrong {
        return Err((
            format!("{key}.per_source"),
            format!("a {protocol} listener limits sources with `{instead}`"),
        ));
    }
    if p.burst.is_some() && p.connection_rate.is_none() {
        return Err((
            format!("{key}.per_source.burst"),
            "`burst` goes with `connection_rate`".into(),
        ));
    }
    Ok(PerSource {
        max_open: open.map(NonZeroU32::get),
        rate: p.connection_rate.map(|r| Rate {
            count: r.0,
            per_ms: r.1,
            // Default burst: one period's worth, at least one.
            burst: p.burst.map_or(r.0.max(1), NonZeroU32::get),
        }),
        ipv4_prefix: p.ipv4_prefix.map_or(32, |b| b.0 as u8),
        ipv6_prefix: p.ipv6_prefix.map_or(64, |b| b.0 as u8),
        table_size: p.table_size.map_or(65_536, |b| b.0 as usize),
    })
}

/// `routes:` of a listener: each server name (a host name, or a wildcard `*.` and one), to a
/// target group that exists.
fn sni_routes(
    key: &str,
    raw: Vec<FileRoute>,
    group_index: &ByName,
) -> Result<Vec<SniRoute>, Wrong> {
    let mut routes = Vec::with_capacity(raw.len());
    for (j, r) in raw.into_iter().enumerate() {
        let rkey = format!("{key}.routes[{j}]");
        let name = r.server_name.trim().to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        if bare.is_empty()
            || bare.contains('*')
            || !bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err((
                format!("{rkey}.server_name"),
                format!(
                    "`{}` is not a host name (letters, digits, `-`, `.`; a wildcard \
                     only as a leading `*.`)",
                    r.server_name
                ),
            ));
        }
        let Some(&g) = group_index.get(&r.target_group) else {
            return Err((
                format!("{rkey}.target_group"),
                format!(
                    "route names target group `{}`, which is not defined",
                    r.target_group
                ),
            ));
        };
        routes.push(SniRoute {
            server_name: name,
            target_group: g,
        });
    }
    Ok(routes)
}
