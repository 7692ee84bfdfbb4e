//! `target_groups:`: each group's targets, algorithm and its options, outlier detection and
//! scaling (its `health_check` is [`super::super::check`]'s, its `target_tls`
//! [`super::super::tls`]'s).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use super::super::check::health_check;
use super::super::discover::discover;
use super::super::file::*;
use super::super::tls::target_tls;
use super::super::*;
use super::{unique_name, ByName, Wrong};

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
    // A token or server ID names one target: a repeat is refused naming both holders.
    let mut tokens: Vec<(&[u8], usize)> = group
        .targets
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.tokens.iter().map(move |k| (&k[..], i)))
        .collect();
    tokens.sort_unstable();
    if let Some(w) = tokens.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err((
            "targets",
            format!(
                "token `{}` is listed twice ({}): a token names one target",
                crate::config::show_token(w[0].0),
                holders(group, w[0].1, w[1].1)
            ),
        ));
    }
    let mut ids: Vec<(u64, usize)> = group
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((t.server_id?, i)))
        .collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err((
            "targets",
            format!(
                "two targets have server_id {} ({}): a QUIC server ID names one target",
                w[0].0,
                holders(group, w[0].1, w[1].1)
            ),
        ));
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

/// The target groups, in the file's order (`None` for one that is wrong), and the index of
/// each by name. Each wrong group's first problem is pushed to `wrong`; `base` is where
/// relative TLS files are.
pub(super) fn target_groups(
    raw: Vec<FileTargetGroup>,
    base: &Path,
    wrong: &mut Vec<Wrong>,
) -> (Vec<Option<TargetGroupConfig>>, ByName) {
    let mut group_index = HashMap::new();
    let mut target_groups = Vec::with_capacity(raw.len());
    for (i, g) in raw.into_iter().enumerate() {
        let key = format!("target_groups[{i}]");
        let group = unique_name(
            &mut group_index,
            &g.name,
            i,
            "target group",
            "target_groups",
        )
        .map_err(|m| (format!("{key}.name"), m))
        .and_then(|()| target_group(&key, g, base));
        target_groups.push(group.map_err(|w| wrong.push(w)).ok());
    }
    (target_groups, group_index)
}

/// The group at `key`.
///
/// # Errors
/// `(key, message)` of its first problem.
fn target_group(key: &str, g: FileTargetGroup, base: &Path) -> Result<TargetGroupConfig, Wrong> {
    let discover = discover(key, g.discover.unwrap_or_default())?;
    if g.targets.is_empty() && discover.is_empty() {
        return Err((
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
            return Err((tkey, "target port must not be 0".into()));
        }
        if targets
            .iter()
            .any(|x: &TargetConfig| x.address == t.address.0)
        {
            return Err((
                tkey,
                format!("duplicate target {} in group `{}`", t.address.0, g.name),
            ));
        }
        targets.push(TargetConfig {
            address: t.address.0,
            weight: t.weight.map_or(1, |w| w.0 as u32),
            backup: t.backup.unwrap_or(false),
            max_connections: t.max_connections.map(|n| u64::from(n.get())),
            server_id: t.server_id,
            tokens: t
                .tokens
                .iter()
                .flatten()
                .map(|text| parse_token(text))
                .collect::<Result<_, _>>()
                .map_err(|m| (format!("{key}.targets[{j}].tokens"), m))?,
        });
    }
    let check_sends = g.health_check.as_ref().and_then(|h| h.proxy_protocol);
    let health_check_given = g.health_check.is_some();
    let mut health_check = health_check(key, g.health_check)?;
    health_check.proxy_protocol = match (g.proxy_protocol, check_sends) {
        (Some(v), None | Some(true)) => Some(v),
        (None, Some(true)) => {
            return Err((
                format!("{key}.health_check.proxy_protocol"),
                "checks send the group's PROXY protocol version: set `proxy_protocol: v1 | \
                 v2` on the group"
                    .into(),
            ))
        }
        (_, Some(false)) | (None, None) => None,
    };
    let algorithm = g.algorithm.unwrap_or(Algorithm::RoundRobin);
    if algorithm != Algorithm::Maglev {
        for (name, set) in [
            ("hash_key", g.hash_key.is_some()),
            ("maglev_table_size", g.maglev_table_size.is_some()),
        ] {
            if set {
                return Err((
                    format!("{key}.{name}"),
                    format!("`{name}` applies to `algorithm: maglev` only"),
                ));
            }
        }
    }
    let maglev_table_size = g.maglev_table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
    let group = TargetGroupConfig {
        name: g.name,
        algorithm,
        hash_key: g.hash_key.unwrap_or(HashKey::FiveTuple),
        maglev_table_size,
        stickiness: g.stickiness.map(|st| Stickiness {
            timeout: st.timeout.map_or(Duration::from_secs(600), |d| d.0),
            max_entries: st.max_entries.map_or(100_000, |n| n.get() as usize),
        }),
        slow_start: g.slow_start.map(|d| d.0),
        source: g.source.unwrap_or_default(),
        agent_check: match g.agent_check {
            None => None,
            Some(a) => {
                let check = AgentCheck {
                    port: a.port.get(),
                    interval: a.interval.map_or(Duration::from_secs(2), |d| d.0),
                    timeout: a.timeout.map_or(Duration::from_secs(1), |d| d.0),
                    send: a.send.map(String::into_bytes).unwrap_or_default(),
                };
                if check.timeout > check.interval {
                    return Err((
                        format!("{key}.agent_check.timeout"),
                        "must not exceed agent_check.interval".into(),
                    ));
                }
                Some(check)
            }
        },
        queue: g.queue.map(|q| Queue {
            max: q.max.0 as usize,
            timeout: q.timeout.map_or(DEFAULT_QUEUE_TIMEOUT, |d| d.0),
        }),
        drain_timeout: g.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
        proxy_protocol: g.proxy_protocol,
        on_unhealthy: g.on_unhealthy.unwrap_or_default(),
        discover,
        scaling: match g.scaling {
            Some(raw) => Some(super::scaling::scaling(key, raw)?),
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
                    return Err((
                        format!("{key}.outlier_detection.max_ejection"),
                        "must not be shorter than base_ejection".into(),
                    ));
                }
                Some(od)
            }
        },
        target_tls: match g.target_tls {
            Some(raw) => Some(target_tls(key, raw, base)?),
            None => None,
        },
        health_check,
        health_check_given,
        targets,
    };
    check_group(&group).map_err(|m| (format!("{key}.{}", m.0), m.1))?;
    Ok(group)
}

/// Targets `a` and `b` of `group`, for a message: `targets[1] 10.0.0.1:7777 and targets[4] …`.
fn holders(group: &TargetGroupConfig, a: usize, b: usize) -> String {
    let one = |i: usize| format!("targets[{i}] {}", group.targets[i].address);
    if a == b {
        format!("{} lists it twice", one(a))
    } else {
        format!("{} and {}", one(a), one(b))
    }
}
