//! Whole-file checks: from the raw [`FileConfig`] to a [`Config`] that cannot be invalid.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use super::check::health_check;
use super::descriptors::{udp_defaults, UdpExplicit};
use super::discover::discover;
use super::file::*;
use super::tls::{target_tls, tls_listener};
use super::*;

/// The rules of a group that depend on its target list, checked again when the admin API adds
/// a target: a `maglev` table must be a prime of at least 100 × targets; `stickiness` takes up
/// to 65,536 targets.
///
/// # Errors
/// `(key under the group, message)`.
pub fn check_group(group: &TargetGroupConfig) -> Result<(), (&'static str, String)> {
    let n = group.targets.len();
    if group.algorithm == Algorithm::Maglev {
        let least = 100 * n;
        let size = group.maglev_table_size;
        if !is_prime(size) || size < least {
            return Err((
                "maglev_table_size",
                format!(
                    "must be a prime of at least 100 × targets ({least}); 65537 serves up to 655 targets"
                ),
            ));
        }
    }
    if group.stickiness.is_some() && n > 1 << 16 {
        return Err((
            "stickiness",
            "stickiness supports groups of up to 65,536 targets".into(),
        ));
    }
    Ok(())
}

/// Whether `n` is prime (trial division; table sizes are small): `maglev_table_size` must be
/// (Maglev, NSDI 2016, §3.4).
pub(crate) fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Builds a [`Config`] from the parsed file.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key for: no listeners, duplicate listener or group
/// names, a listener naming a missing group, an empty target list, an `http` check without `path` (or a `path` on a `tcp` check), port 0 in a target
/// or health check, a health-check `timeout` longer than its `interval`, TCP-only keys on a
/// UDP listener (and `udp:` on a TCP one), a udp check without `send`.
pub fn validate(path: &Path, raw: FileConfig) -> Result<Config, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    // TLS files given relative are found beside the config file.
    let base = path.parent().unwrap_or(Path::new(""));
    if raw.listeners.is_empty() {
        return Err(invalid(
            "listeners".into(),
            "at least one listener is needed".into(),
        ));
    }

    let mut group_index = HashMap::new();
    let mut target_groups = Vec::with_capacity(raw.target_groups.len());
    for (i, g) in raw.target_groups.into_iter().enumerate() {
        let key = format!("target_groups[{i}]");
        unique_name(&mut group_index, &g.name, i, "target group")
            .map_err(|m| invalid(format!("{key}.name"), m))?;
        let discover =
            discover(&key, g.discover.unwrap_or_default()).map_err(|(k, m)| invalid(k, m))?;
        if g.targets.is_empty() && discover.is_empty() {
            return Err(invalid(
                format!("{key}.targets"),
                format!(
                    "target group `{}` has no targets; list at least one (or `discover` them)",
                    g.name
                ),
            ));
        }
        let mut targets = Vec::with_capacity(g.targets.len());
        for (j, t) in g.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{j}].address");
            if t.address.0.port() == 0 {
                return Err(invalid(tkey, "target port must not be 0".into()));
            }
            if targets
                .iter()
                .any(|x: &TargetConfig| x.address == t.address.0)
            {
                return Err(invalid(
                    tkey,
                    format!("duplicate target {} in group `{}`", t.address.0, g.name),
                ));
            }
            targets.push(TargetConfig {
                address: t.address.0,
                weight: t.weight.map_or(1, |w| w.0 as u32),
                backup: t.backup.unwrap_or(false),
                max_connections: t.max_connections.map(|n| u64::from(n.get())),
            });
        }
        let check_sends = g.health_check.as_ref().and_then(|h| h.proxy_protocol);
        let mut health_check =
            health_check(&key, g.health_check).map_err(|(k, m)| invalid(k, m))?;
        health_check.proxy_protocol =
            match (g.proxy_protocol, check_sends) {
                (Some(v), None | Some(true)) => Some(v),
                (None, Some(true)) => return Err(invalid(
                    format!("{key}.health_check.proxy_protocol"),
                    "checks send the group's PROXY protocol version: set `proxy_protocol: v1 | \
                     v2` on the group"
                        .into(),
                )),
                (_, Some(false)) | (None, None) => None,
            };
        let algorithm = g.algorithm.unwrap_or(Algorithm::RoundRobin);
        if algorithm != Algorithm::Maglev {
            for (name, set) in [
                ("hash_key", g.hash_key.is_some()),
                ("maglev_table_size", g.maglev_table_size.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        format!("{key}.{name}"),
                        format!("`{name}` applies to `algorithm: maglev` only"),
                    ));
                }
            }
        }
        let maglev_table_size = g.maglev_table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
        target_groups.push(TargetGroupConfig {
            name: g.name,
            algorithm,
            hash_key: g.hash_key.unwrap_or(HashKey::FiveTuple),
            maglev_table_size,
            stickiness: g.stickiness.map(|st| Stickiness {
                timeout: st.timeout.map_or(Duration::from_secs(600), |d| d.0),
                max_entries: st.max_entries.map_or(100_000, |n| n.get() as usize),
            }),
            slow_start: g.slow_start.map(|d| d.0),
            drain_timeout: g.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
            proxy_protocol: g.proxy_protocol,
            on_unhealthy: g.on_unhealthy.unwrap_or_default(),
            discover,
            scaling: match g.scaling {
                Some(raw) => {
                    Some(super::scaling::scaling(&key, raw).map_err(|(k, m)| invalid(k, m))?)
                }
                None => None,
            },
            outlier_detection: match g.outlier_detection {
                None => None,
                Some(o) => {
                    let od = OutlierDetection {
                        consecutive_failures: o.consecutive_failures.map_or(5, NonZeroU32::get),
                        base_ejection: o.base_ejection.map_or(Duration::from_secs(30), |d| d.0),
                        max_ejection: o.max_ejection.map_or(Duration::from_secs(300), |d| d.0),
                        max_ejected_percent: o.max_ejected_percent.map_or(50, |b| b.0 as u32),
                    };
                    if od.max_ejection < od.base_ejection {
                        return Err(invalid(
                            format!("{key}.outlier_detection.max_ejection"),
                            "must not be shorter than base_ejection".into(),
                        ));
                    }
                    Some(od)
                }
            },
            target_tls: match g.target_tls {
                Some(raw) => Some(target_tls(&key, raw, base).map_err(|(k, m)| invalid(k, m))?),
                None => None,
            },
            health_check,
            targets,
        });
        let group = target_groups.last().expect("just pushed");
        check_group(group).map_err(|m| invalid(format!("{key}.{}", m.0), m.1))?;
    }

    let mut listener_names = HashMap::new();
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    // Per listener, the UDP limits it set itself: the rest are sized from the open-file limit
    // once every listener is known.
    let mut udp_explicit = Vec::with_capacity(raw.listeners.len());
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let key = format!("listeners[{i}]");
        unique_name(&mut listener_names, &l.name, i, "listener")
            .map_err(|m| invalid(format!("{key}.name"), m))?;
        let protocol = match l.protocol {
            FileProtocol::Tcp | FileProtocol::Tls => Protocol::Tcp,
            FileProtocol::Udp => Protocol::Udp,
        };
        let tls = match (l.protocol, l.tls) {
            (FileProtocol::Tls, Some(raw)) => {
                Some(tls_listener(&key, raw, base).map_err(|(k, m)| invalid(k, m))?)
            }
            (FileProtocol::Tls, None) => {
                return Err(invalid(
                    format!("{key}.tls"),
                    "a tls listener needs `tls: {certificates: [{cert: FILE, key: FILE}]}`".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(invalid(
                    format!("{key}.tls"),
                    "`tls` goes with `protocol: tls`".into(),
                ))
            }
            (_, None) => None,
        };
        let udp = match (protocol, l.udp) {
            (Protocol::Tcp, Some(_)) => {
                return Err(invalid(
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
                    return Err(invalid(
                        format!("{key}.{name}"),
                        format!("`{name}` applies to tcp listeners only{hint}"),
                    ));
                }
                let (settings, explicit) = udp_settings(raw);
                udp_explicit.push(Some(explicit));
                Some(settings)
            }
        };
        if protocol == Protocol::Tcp {
            udp_explicit.push(None);
        }
        let Some(&target_group) = group_index.get(&l.target_group) else {
            return Err(invalid(
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
            return Err(invalid(
                format!("{key}.bind"),
                format!("{} is already bound by listener `{}`", l.bind.0, other.name),
            ));
        }
        if let Some(name) = &l.interface {
            check_interface(name).map_err(|m| invalid(format!("{key}.interface"), m))?;
        }
        if protocol == Protocol::Udp {
            if l.accept_proxy_protocol.is_some() {
                return Err(invalid(
                    format!("{key}.accept_proxy_protocol"),
                    "reading PROXY protocol headers applies to tcp listeners only".into(),
                ));
            }
            if target_groups[target_group].proxy_protocol
                == Some(crate::proxy_protocol::Version::V1)
            {
                return Err(invalid(
                    format!("{key}.target_group"),
                    format!(
                        "udp listener `{}` uses target group `{}`, whose `proxy_protocol: v1` is \
                         TCP-only; use v2 (which has a UDP form)",
                        l.name, l.target_group
                    ),
                ));
            }
        }
        let accept_proxy =
            match l.accept_proxy_protocol {
                None => None,
                Some(a) if a.trusted.is_empty() => return Err(invalid(
                    format!("{key}.accept_proxy_protocol.trusted"),
                    "list the networks of the balancers in front (e.g. [10.0.0.0/8]); a header \
                     from anyone else is refused"
                        .into(),
                )),
                Some(a) => Some(AcceptProxy {
                    trusted: a.trusted.into_iter().map(|c| c.0).collect(),
                    timeout: a.timeout.map_or(DEFAULT_PROXY_TIMEOUT, |d| d.0),
                }),
            };
        let per_source = match l.per_source {
            None => None,
            Some(p) => {
                let (open, wrong, instead) = match protocol {
                    Protocol::Tcp => (
                        p.max_connections,
                        p.max_sessions.is_some(),
                        "max_connections",
                    ),
                    Protocol::Udp => (p.max_sessions, p.max_connections.is_some(), "max_sessions"),
                };
                if wrong {
                    return Err(invalid(
                        format!("{key}.per_source"),
                        format!("a {protocol} listener limits sources with `{instead}`"),
                    ));
                }
                if p.burst.is_some() && p.connection_rate.is_none() {
                    return Err(invalid(
                        format!("{key}.per_source.burst"),
                        "`burst` goes with `connection_rate`".into(),
                    ));
                }
                Some(PerSource {
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
                        return Err(invalid(
                            format!("{key}.{name}"),
                            format!("`{name}` goes with `routes` (or, for postgres_starttls, `protocol: tls`)"),
                        ));
                    }
                }
                None
            }
            Some(_) if protocol == Protocol::Udp => {
                return Err(invalid(
                    format!("{key}.routes"),
                    "SNI routes apply to tcp listeners only".into(),
                ))
            }
            Some(_) if tls.is_some() && l.client_hello_timeout.is_some() => {
                return Err(invalid(
                    format!("{key}.client_hello_timeout"),
                    "on a tls listener `tls.handshake_timeout` covers the ClientHello".into(),
                ))
            }
            Some(raw_routes) => {
                let mut routes = Vec::with_capacity(raw_routes.len());
                for (j, r) in raw_routes.into_iter().enumerate() {
                    let rkey = format!("{key}.routes[{j}]");
                    let name = r.server_name.trim().to_ascii_lowercase();
                    let bare = name.strip_prefix("*.").unwrap_or(&name);
                    if bare.is_empty()
                        || bare.contains('*')
                        || !bare
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    {
                        return Err(invalid(
                            format!("{rkey}.server_name"),
                            format!(
                                "`{}` is not a host name (letters, digits, `-`, `.`; a wildcard \
                                 only as a leading `*.`)",
                                r.server_name
                            ),
                        ));
                    }
                    let Some(&g) = group_index.get(&r.target_group) else {
                        return Err(invalid(
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
            let groups =
                std::iter::once(target_group).chain(s.routes.iter().map(|r| r.target_group));
            if let Some(g) = groups
                .map(|g| &target_groups[g])
                .find(|g| g.target_tls.is_some())
            {
                return Err(invalid(
                    format!("{key}.postgres_starttls"),
                    format!(
                        "target group `{}` has `target_tls`, but this listener passes the \
                         client's own TLS through; use `protocol: tls` to terminate it here",
                        g.name
                    ),
                ));
            }
        }
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
        listeners.push(ListenerConfig {
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
            target_group,
            max_connections: l.max_connections.map(|n| n.get() as usize),
            connect_timeout: l.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            idle_timeout: l.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
            retries: l.retries.unwrap_or(DEFAULT_RETRIES),
            forwarding: l.forwarding.unwrap_or(Forwarding::Auto),
            udp,
        });
    }

    let workers = match raw.workers {
        Some(n) => n.get() as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let sized = udp_defaults(&listeners, &udp_explicit, workers, open_file_limit());
    for (l, sized) in listeners.iter_mut().zip(sized) {
        if let (Some(u), Some((sessions, unreplied))) = (l.udp.as_mut(), sized) {
            u.max_sessions = sessions;
            u.max_unreplied = unreplied;
        }
    }
    let admin = admin(raw.admin).map_err(|(k, m)| invalid(k, m))?;
    let resolvers = raw
        .resolvers
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.0)
        .collect();
    Ok(Config {
        path: path.to_path_buf(),
        admin,
        resolvers,
        workers,
        accept_steering: raw
            .accept_steering
            .unwrap_or(AcceptSteering::LeastConnections),
        shutdown_timeout: raw
            .shutdown_timeout
            .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
        shutdown_grace: raw.shutdown_grace.map_or(Duration::ZERO, |d| d.0),
        node_drain_grace: raw
            .node_drain_grace
            .map_or(DEFAULT_NODE_DRAIN_GRACE, |d| d.0),
        upgrade_socket: match raw.upgrade_socket.as_deref() {
            None => None,
            Some("") => {
                return Err(invalid(
                    "upgrade_socket".into(),
                    "give a path for the UNIX socket, or leave the key out".into(),
                ))
            }
            Some(p) => Some(p.into()),
        },
        access_log: match raw.access_log.as_deref() {
            None | Some("stderr") => super::AccessLogSink::Stderr,
            Some("off") => super::AccessLogSink::Off,
            Some("") => {
                return Err(invalid(
                    "access_log".into(),
                    "give `off`, `stderr` or a file path".into(),
                ))
            }
            Some(path) => super::AccessLogSink::File(path.into()),
        },
        listeners,
        target_groups,
    })
}

fn admin(raw: Option<FileAdmin>) -> Result<AdminConfig, (String, String)> {
    let raw = raw.unwrap_or(FileAdmin {
        bind: None,
        token_file: None,
        unix: None,
    });
    let bind = raw.bind.map_or_else(
        || DEFAULT_ADMIN_BIND.parse().expect("a valid default"),
        |a| a.0,
    );
    let token = match raw.token_file {
        None => None,
        Some(file) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file)
                .map(|m| m.permissions().mode())
                .map_err(|e| {
                    (
                        "admin.token_file".to_string(),
                        format!("cannot read {file}: {e}"),
                    )
                })?;
            if mode & 0o077 != 0 {
                return Err((
                    "admin.token_file".into(),
                    format!(
                        "{file} can be read by group or others (mode {:o}): `chmod 600 {file}`",
                        mode & 0o777
                    ),
                ));
            }
            let text = std::fs::read_to_string(&file).map_err(|e| {
                (
                    "admin.token_file".to_string(),
                    format!("cannot read {file}: {e}"),
                )
            })?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(("admin.token_file".into(), format!("{file} is empty")));
            }
            Some(token)
        }
    };
    if !bind.ip().is_loopback() && token.is_none() {
        return Err((
            "admin.bind".into(),
            format!(
                "{bind} is reachable from other hosts: set admin.token_file, or bind 127.0.0.1"
            ),
        ));
    }
    let unix = match raw.unix.as_deref() {
        None => None,
        Some("") => {
            return Err((
                "admin.unix".into(),
                "give a path, or leave the key out".into(),
            ))
        }
        Some(p) => Some(p.into()),
    };
    Ok(AdminConfig { bind, token, unix })
}

/// A UDP listener's settings, and the limits it set itself (the others are sized later, see
/// [`udp_defaults`]).
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

/// Records `name` (of a `what`, at `index`) and refuses it when empty or seen before.
fn unique_name(
    seen: &mut HashMap<String, usize>,
    name: &str,
    index: usize,
    what: &str,
) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if seen.insert(name.to_string(), index).is_some() {
        return Err(format!("duplicate {what} name `{name}`"));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
workers: 2
shutdown_timeout: 10s
listeners:
  - name: pg
    protocol: tcp
    bind: 127.0.0.1:6432
    target_group: pg
    max_connections: 100
    connect_timeout: 3s
target_groups:
  - name: pg
    algorithm: weighted_round_robin
    health_check:
      protocol: http
      path: /healthz
      interval: 2s
      timeout: 500ms
      healthy_threshold: 3
    targets:
      - address: 127.0.0.1:5432
        weight: 2
      - address: 127.0.0.1:5433
";

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.yaml"), text)
    }

    fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn accept_steering_is_least_connections_or_hash() {
        let hash = parse_str(&GOOD.replace("workers: 2", "workers: 2\naccept_steering: hash"));
        assert_eq!(hash.unwrap().accept_steering, AcceptSteering::Hash);
        let e = err(&GOOD.replace("workers: 2", "workers: 2\naccept_steering: random"));
        assert!(
            e.contains("accept_steering") && e.contains("least_connections"),
            "{e}"
        );
    }

    #[test]
    fn good_file_fills_defaults() {
        let c = parse_str(GOOD).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.accept_steering, AcceptSteering::LeastConnections);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        let l = &c.listeners[0];
        assert_eq!(l.max_connections, Some(100));
        assert_eq!(l.connect_timeout, Duration::from_secs(3));
        assert_eq!(l.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(l.retries, 2);
        let g = &c.target_groups[l.target_group];
        assert_eq!(g.algorithm, Algorithm::WeightedRoundRobin);
        assert_eq!(g.health_check.healthy_threshold, 3);
        assert_eq!(g.health_check.unhealthy_threshold, 2);
        assert_eq!(g.targets[0].weight, 2);
        assert_eq!(g.targets[1].weight, 1);
    }

    #[test]
    fn parse_errors_name_file_key_and_line() {
        let e = err(&GOOD.replace("max_connections: 100", "max_conections: 100"));
        assert!(e.contains("test.yaml"), "{e}");
        assert!(e.contains("unknown field `max_conections`"), "{e}");
        assert!(e.contains("line 9"), "{e}");
        let e = err(&GOOD.replace("interval: 2s", "interval: 0s"));
        assert!(e.contains("target_groups[0].health_check.interval"), "{e}");
        assert!(e.contains("greater than zero"), "{e}");
        let e = err(&GOOD.replace("healthy_threshold: 3", "healthy_threshold: 0"));
        assert!(e.contains("healthy_threshold"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:5433", "127.0.0.1:notaport"));
        assert!(e.contains("targets[1].address"), "{e}");
    }

    #[test]
    fn cross_key_rules() {
        let two = GOOD.replace(
            "target_groups:",
            "  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:6433\n    target_group: pg\ntarget_groups:",
        );
        assert!(err(&two).contains("listeners[1].name: duplicate listener name `pg`"));
        let e = err(&GOOD.replace("target_group: pg", "target_group: nope"));
        assert!(e.contains("listeners[0].target_group"), "{e}");
        let e = err(&GOOD.replace("protocol: tcp", "protocol: udp"));
        assert!(
            e.contains("listeners[0].max_connections: `max_connections` applies to tcp"),
            "{e}"
        );
        let e = err(&GOOD.replace("timeout: 500ms", "timeout: 5s"));
        assert!(e.contains("must not exceed interval"), "{e}");
        let e = err(&GOOD.replace("path: /healthz", "port: 8080"));
        assert!(e.contains("http checks need a `path`"), "{e}");
        let maglev = GOOD.replace("weighted_round_robin", "maglev");
        let c = parse_str(&maglev.replace(
            "    health_check:",
            "    hash_key: source_ip\n    health_check:",
        ))
        .unwrap();
        assert_eq!(c.target_groups[0].hash_key, HashKey::SourceIp);
        assert_eq!(c.target_groups[0].maglev_table_size, 65537);
        let e = err(&GOOD.replace(
            "    health_check:",
            "    hash_key: source_ip\n    health_check:",
        ));
        assert!(
            e.contains("target_groups[0].hash_key: `hash_key` applies to `algorithm: maglev` only"),
            "{e}"
        );
        let e = err(&maglev.replace(
            "    health_check:",
            "    maglev_table_size: 65536\n    health_check:",
        ));
        assert!(e.contains("must be a prime"), "{e}");
        let e = err(&maglev.replace(
            "    health_check:",
            "    maglev_table_size: 101\n    health_check:",
        ));
        assert!(e.contains("at least 100 × targets (200)"), "{e}");
    }
}
