//! `health_check:` of a target group: the kind of check (TCP connect, send/expect steps or
//! `redis:`, HTTP, UDP), its port, timing and thresholds, checked together.

use super::file::{FileHealthCheck, FileHealthProtocol};
use super::{HealthCheckConfig, HealthCheckKind};

/// Validates the `health_check:` of the group at `group_key` (the defaults when absent).
///
/// # Errors
/// `(key, message)`: a key of another check kind (`path` on a tcp check, `send` on an http
/// one), an http check without `path`, a udp check without `send`, bad steps, port 0, a
/// `timeout` longer than the `interval`.
pub(super) fn health_check(
    group_key: &str,
    raw: Option<FileHealthCheck>,
) -> Result<HealthCheckConfig, (String, String)> {
    let defaults = HealthCheckConfig::default();
    let Some(h) = raw else {
        return Ok(defaults);
    };
    let key = format!("{group_key}.health_check");
    let protocol = h.protocol.unwrap_or(FileHealthProtocol::Tcp);
    if protocol != FileHealthProtocol::Udp {
        for (name, set) in [("send", h.send.is_some()), ("expect", h.expect.is_some())] {
            if set {
                return Err((
                    format!("{key}.{name}"),
                    format!(
                        "`{name}` applies to udp checks only; set `protocol: udp` or remove it \
                         (a quic check sends its own probe)"
                    ),
                ));
            }
        }
    }
    if protocol != FileHealthProtocol::Tcp {
        for (name, set) in [("steps", h.steps.is_some()), ("redis", h.redis.is_some())] {
            if set {
                return Err((
                    format!("{key}.{name}"),
                    format!("`{name}` applies to tcp checks only"),
                ));
            }
        }
    }
    let script = match (h.steps, h.redis) {
        (Some(_), Some(_)) => {
            return Err((
                format!("{key}.redis"),
                "`redis` is a ready-made list of steps: give `steps` or `redis`, not both".into(),
            ))
        }
        (Some(raw), None) => Some(super::steps::steps(&format!("{key}.steps"), raw)?),
        (None, Some(r)) => Some(super::steps::redis(&r)),
        (None, None) => None,
    };
    let kind = match (protocol, h.path) {
        (FileHealthProtocol::Udp | FileHealthProtocol::Quic, Some(_)) => {
            return Err((
                format!("{key}.path"),
                "`path` applies to http checks only".into(),
            ))
        }
        (FileHealthProtocol::Udp, None) => {
            let Some(send) = h.send else {
                return Err((
                    format!("{key}.send"),
                    "udp checks need a `send` payload (text, or {hex: \"...\"})".into(),
                ));
            };
            if send.0.is_empty() {
                return Err((format!("{key}.send"), "must not be empty".into()));
            }
            HealthCheckKind::Udp {
                send: send.0,
                expect: h.expect.map_or(Vec::new(), |e| e.0),
            }
        }
        // A probe every QUIC server answers, whatever its versions: Version Negotiation.
        (FileHealthProtocol::Quic, None) => {
            let (send, expect) = crate::quic::version_probe();
            HealthCheckKind::Udp { send, expect }
        }
        (FileHealthProtocol::Tcp, None) => match script {
            Some(steps) => HealthCheckKind::Steps { steps },
            None => HealthCheckKind::Tcp,
        },
        (FileHealthProtocol::Tcp, Some(_)) => {
            return Err((
                format!("{key}.path"),
                "`path` applies to http checks only; set `protocol: http` or remove it".into(),
            ))
        }
        (FileHealthProtocol::Http, None) => {
            return Err((
                format!("{key}.path"),
                "http checks need a `path`, e.g. /healthz".into(),
            ))
        }
        (FileHealthProtocol::Http, Some(p)) if !p.starts_with('/') => {
            return Err((format!("{key}.path"), format!("`{p}` must start with /")))
        }
        (FileHealthProtocol::Http, Some(p)) if p.chars().any(|c| c.is_whitespace()) => {
            return Err((format!("{key}.path"), "must not contain whitespace".into()))
        }
        (FileHealthProtocol::Http, Some(path)) => HealthCheckKind::Http { path },
    };
    if h.port == Some(0) {
        return Err((format!("{key}.port"), "must not be 0".into()));
    }
    let interval = h.interval.map_or(defaults.interval, |d| d.0);
    let timeout = h.timeout.map_or(defaults.timeout, |d| d.0);
    if timeout > interval {
        return Err((
            format!("{key}.timeout"),
            format!(
                "timeout ({}) must not exceed interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    Ok(HealthCheckConfig {
        proxy_protocol: None, // set from the group's
        kind,
        port: h.port,
        interval,
        timeout,
        healthy_threshold: h
            .healthy_threshold
            .map_or(defaults.healthy_threshold, |n| n.get()),
        unhealthy_threshold: h
            .unhealthy_threshold
            .map_or(defaults.unhealthy_threshold, |n| n.get()),
    })
}
