//! `postgres:` of a TCP or TLS listener: Ballast reads each client's StartupMessage (after
//! the TLS handshake on a `tls` listener) and routes by its `database`, `user` and
//! `application_name`; cancel requests go to the server that issued their key
//! ([`crate::postgres`]).

use std::time::Duration;

/// Default `startup_timeout`: the StartupMessage must have come by then (from the accept, the
/// PROXY header's end, or the start of the TLS handshake).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's PostgreSQL routing, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresRouting {
    /// In file order; the first whose every given field matches wins.
    pub routes: Vec<PostgresRoute>,
    /// What happens to a client no route matches.
    pub without_route: WithoutRoute,
    /// How long a client may take to send its StartupMessage.
    pub startup_timeout: Duration,
}

/// One route: the fields a StartupMessage must match (at least one given), and its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresRoute {
    /// The database (or, when the client names none, its user name, as the server does).
    pub database: Option<NamePattern>,
    /// The user name.
    pub user: Option<NamePattern>,
    /// `application_name` (empty when the client sets none).
    pub application_name: Option<NamePattern>,
    /// Index into the target groups.
    pub target_group: usize,
}

/// A name to match: exact, or a prefix followed by `*` (`*` alone matches every name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(pub String);

impl NamePattern {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
}

impl PostgresRouting {
    /// The group of the first route matching `database`, `user` and `application_name`.
    pub fn group_for(&self, database: &str, user: &str, application_name: &str) -> Option<usize> {
        let fits = |p: &Option<NamePattern>, v: &str| p.as_ref().is_none_or(|p| p.matches(v));
        self.routes
            .iter()
            .find(|r| {
                fits(&r.database, database)
                    && fits(&r.user, user)
                    && fits(&r.application_name, application_name)
            })
            .map(|r| r.target_group)
    }
}

/// `without_route:` of a listener's `postgres:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WithoutRoute {
    /// Refused with an ErrorResponse naming the database (SQLSTATE 3D000): a mistyped
    /// database never sends the user's password to another cluster.
    #[default]
    Refuse,
    /// To the listener's `target_group`.
    Default,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_route_whose_fields_all_match_wins() {
        let p = |s: &str| Some(NamePattern(s.into()));
        let routing = PostgresRouting {
            routes: vec![
                PostgresRoute {
                    database: p("billing"),
                    user: None,
                    application_name: None,
                    target_group: 1,
                },
                PostgresRoute {
                    database: p("analytics_*"),
                    user: p("reporter"),
                    application_name: None,
                    target_group: 2,
                },
                PostgresRoute {
                    database: None,
                    user: None,
                    application_name: p("pgbench"),
                    target_group: 3,
                },
            ],
            without_route: WithoutRoute::Refuse,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        };
        assert_eq!(routing.group_for("billing", "ann", ""), Some(1));
        assert_eq!(routing.group_for("billing2", "ann", ""), None);
        assert_eq!(routing.group_for("analytics_eu", "reporter", ""), Some(2));
        assert_eq!(routing.group_for("analytics_eu", "ann", ""), None);
        assert_eq!(routing.group_for("x", "ann", "pgbench"), Some(3));
        assert!(NamePattern("*".into()).matches(""));
    }
}
