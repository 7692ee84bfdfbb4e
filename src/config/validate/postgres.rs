//! `postgres:` of a listener: its routes, each to a target group that exists and matching on
//! at least one field.

use super::super::file::{FilePostgres, FilePostgresRoute};
use super::super::*;
use super::{ByName, Wrong};

/// The `postgres:` section at `key` (`listeners[i].postgres`) of a listener of `protocol`.
///
/// # Errors
/// `(key, message)` of its first problem: a UDP listener, a route naming no field or an
/// unknown group, a `*` anywhere but at a pattern's end, an empty database or user.
pub(super) fn postgres(
    key: &str,
    raw: FilePostgres,
    protocol: Protocol,
    group_index: &ByName,
) -> Result<PostgresRouting, Wrong> {
    if protocol == Protocol::Udp {
        return Err((
            key.to_string(),
            "PostgreSQL routing applies to tcp and tls listeners only".into(),
        ));
    }
    let routes = raw
        .routes
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, r)| route(&format!("{key}.routes[{j}]"), r, group_index))
        .collect::<Result<_, _>>()?;
    Ok(PostgresRouting {
        routes,
        without_route: raw.without_route.unwrap_or_default(),
        startup_timeout: raw.startup_timeout.map_or(DEFAULT_STARTUP_TIMEOUT, |d| d.0),
    })
}

fn route(rkey: &str, r: FilePostgresRoute, group_index: &ByName) -> Result<PostgresRoute, Wrong> {
    let Some(&target_group) = group_index.get(&r.target_group) else {
        return Err((
            format!("{rkey}.target_group"),
            format!(
                "route names target group `{}`, which is not defined",
                r.target_group
            ),
        ));
    };
    let pattern = |field: &str, p: Option<String>| -> Result<Option<NamePattern>, Wrong> {
        match p {
            Some(p) if p.trim_end_matches('*').contains('*') || p.ends_with("**") => Err((
                format!("{rkey}.{field}"),
                format!("`{p}`: a `*` goes only at the end (a prefix and `*`), or alone"),
            )),
            // PostgreSQL has no database or role with an empty name (a client that sends
            // none for database means its user's): `''` would never match. An empty
            // application_name is the one a client that sets none has, so it may be matched.
            Some(p) if p.is_empty() && field != "application_name" => Err((
                format!("{rkey}.{field}"),
                format!(
                    "an empty {field} never matches: PostgreSQL has no {field} named ``; \
                     remove the key to match every {field}, or write `*`"
                ),
            )),
            p => Ok(p.map(NamePattern)),
        }
    };
    let route = PostgresRoute {
        database: pattern("database", r.database)?,
        user: pattern("user", r.user)?,
        application_name: pattern("application_name", r.application_name)?,
        target_group,
    };
    if route.database.is_none() && route.user.is_none() && route.application_name.is_none() {
        return Err((
            rkey.to_string(),
            "a route matches on at least one of database, user, application_name".into(),
        ));
    }
    Ok(route)
}
