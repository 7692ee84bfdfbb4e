//! Whole-file checks: from the raw [`FileConfig`] to a [`Config`] that cannot be invalid.

mod admin;
mod groups;
mod listeners;
mod postgres;
mod quic;

use std::collections::HashMap;
use std::path::Path;

pub use groups::check_group;
#[cfg(test)]
pub(crate) use groups::is_prime;

/// A key path and what is wrong there; the loader names the file, line and column.
pub(crate) type Wrong = (String, String);

/// Indices by name (of target groups, of listeners).
type ByName = HashMap<String, usize>;

use super::descriptors::udp_defaults;
use super::file::*;
use super::*;

/// Builds a [`Config`] from the parsed file (its included files' entries merged in), or
/// finds everything wrong with it: every listener and every target group is checked, each for
/// its first problem.
///
/// # Errors
/// `(key path, message)` for each problem, in file order: no listeners, duplicate listener or
/// group names (the message ends `first at KEY`, the first one's key), a listener naming a
/// missing group, an empty target list, an `http` check without `path` (or a `path` on a
/// `tcp` check), port 0 in a target or health check, a health-check `timeout` longer than its
/// `interval`, TCP-only keys on a UDP listener (and `udp:` on a TCP one), a udp check without
/// `send`.
pub fn validate(path: &Path, raw: FileConfig) -> Result<Config, Vec<Wrong>> {
    // Files given relative (TLS files, the token file, sockets, the access log) are found
    // beside the config file, wherever Ballast or the CLI was started.
    let base = path.parent().unwrap_or(Path::new(""));
    let mut wrong = Vec::new();
    if raw.listeners.is_empty() {
        wrong.push(("listeners".into(), "at least one listener is needed".into()));
    }
    let (target_groups, group_index) = groups::target_groups(raw.target_groups, base, &mut wrong);
    let (listeners, udp_explicit) = listeners::listeners(
        raw.listeners,
        &group_index,
        &target_groups,
        base,
        &mut wrong,
    );
    let admin = admin::admin(raw.admin, base)
        .map_err(|w| wrong.push(w))
        .ok();
    let upgrade_socket = match raw.upgrade_socket.as_deref() {
        None => None,
        Some("") => {
            wrong.push((
                "upgrade_socket".into(),
                "give a path for the UNIX socket, or leave the key out".into(),
            ));
            None
        }
        Some(p) => {
            let path = beside(base, Path::new(p));
            if let Err(m) = socket_path(&path) {
                wrong.push(("upgrade_socket".into(), m));
            }
            Some(path)
        }
    };
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    let mut access_log = super::access_log::validate(raw.access_log, &names)
        .map_err(|w| wrong.push(w))
        .unwrap_or_default();
    if let AccessLogSink::File(p) = &mut access_log.sink {
        *p = beside(base, p);
    }
    let cluster = match raw.cluster.map(|c| super::cluster::validate(c, base)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(w)) => {
            wrong.push(w);
            None
        }
    };
    let (Some(admin), true) = (admin, wrong.is_empty()) else {
        return Err(wrong);
    };
    let target_groups = target_groups.into_iter().flatten().collect();

    let workers = match raw.workers {
        Some(n) => n.get() as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut listeners = listeners;
    let sized = udp_defaults(&listeners, &udp_explicit, workers, open_file_limit());
    for (l, sized) in listeners.iter_mut().zip(sized) {
        if let (Some(u), Some((sessions, unreplied))) = (l.udp.as_mut(), sized) {
            u.max_sessions = sessions;
            u.max_unreplied = unreplied;
        }
    }
    let resolvers = raw
        .resolvers
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.0)
        .collect();
    Ok(Config {
        path: path.to_path_buf(),
        included: Vec::new(),
        admin,
        resolvers,
        cluster,
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
        upgrade_socket,
        access_log,
        listeners,
        target_groups,
    })
}

/// The secret in `file` (found from `base` when relative), trimmed: for the option at `key`.
///
/// # Errors
/// `(key, message)` when the file cannot be read, is readable by group or others, or is empty.
pub(super) fn read_secret(key: &str, base: &Path, file: &str) -> Result<String, Wrong> {
    use std::os::unix::fs::PermissionsExt;
    let file = beside(base, Path::new(file)).display().to_string();
    let wrong = |m: String| (key.to_string(), m);
    let mode = std::fs::metadata(&file)
        .map(|m| m.permissions().mode())
        .map_err(|e| wrong(format!("cannot read {file}: {e}")))?;
    if mode & 0o077 != 0 {
        return Err(wrong(format!(
            "{file} can be read by group or others (mode {:o}): `chmod 600 {file}`",
            mode & 0o777
        )));
    }
    let text =
        std::fs::read_to_string(&file).map_err(|e| wrong(format!("cannot read {file}: {e}")))?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(wrong(format!("{file} is empty")));
    }
    Ok(secret)
}

/// `path` as found from `base` (the config file's directory) when relative.
pub(crate) fn beside(base: &Path, path: &Path) -> std::path::PathBuf {
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_path_buf()
    }
}

/// Refuses a UNIX socket path too long for `sun_path` once Ballast's temporary name is added.
pub(crate) fn socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    let max = crate::net::MAX_SOCKET_PATH;
    if len > max {
        return Err(format!(
            "{}: {len} bytes, at most {max} (a UNIX socket's path holds 107, and Ballast binds \
             a temporary name 12 bytes longer first)",
            path.display()
        ));
    }
    Ok(())
}

/// The longest listener or target group name.
const MAX_NAME: usize = 64;

/// Records `name` (of a `what`, at `index` of the list `list`) and refuses it when empty or
/// seen before; the message then ends with the first one's key (`first at listeners[0].name`),
/// which the loader turns into its file, line and column.
fn unique_name(
    seen: &mut HashMap<String, usize>,
    name: &str,
    index: usize,
    what: &str,
    list: &str,
) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    // Names go into log lines (`listener=NAME`), metric labels, URL paths and terminals: no
    // spaces, separators or control characters there.
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-:@+".contains(c);
    if name.len() > MAX_NAME || !name.chars().all(allowed) {
        return Err(format!(
            "`{}`: a name is letters, digits and . _ - : @ +, at most {MAX_NAME}",
            name.escape_default()
        ));
    }
    if name == "." || name == ".." {
        // A URL path segment of its own (`/target-groups/../targets`) resolves away.
        return Err(format!("`{name}` cannot be a name: it is a path segment"));
    }
    match seen.entry(name.to_string()) {
        std::collections::hash_map::Entry::Occupied(first) => Err(format!(
            "duplicate {what} name `{name}`, first at {list}[{}].name",
            first.get()
        )),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(index);
            Ok(())
        }
    }
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
        assert_eq!(
            e,
            "test.yaml:9:5: listeners[0].max_conections: unknown field `max_conections`: did \
             you mean `max_connections`?"
        );
        let e = err(&GOOD.replace("interval: 2s", "interval: 0s"));
        assert!(e.contains("target_groups[0].health_check.interval"), "{e}");
        assert!(e.contains("greater than zero"), "{e}");
        let e = err(&GOOD.replace("healthy_threshold: 3", "healthy_threshold: 0"));
        assert!(e.contains("healthy_threshold"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:5433", "127.0.0.1:notaport"));
        assert!(e.contains("targets[1].address"), "{e}");
    }

    /// Names go into URL paths, log lines and metric labels: only the safe characters, and
    /// never a path segment of its own.
    #[test]
    fn names_are_refused_where_a_url_or_a_log_line_would_misread_them() {
        for bad in [".", "..", "a b", "a/b", "", &"n".repeat(65)] {
            let e = err(&GOOD.replace(
                "  - name: pg\n    algorithm",
                &format!("  - name: '{bad}'\n    algorithm"),
            ));
            assert!(e.contains("target_groups[0].name"), "{bad}: {e}");
        }
        for good in ["pg.primary", "a-b_c:d@e+f", "...", &"n".repeat(64)] {
            let yaml = GOOD
                .replace("target_group: pg", &format!("target_group: '{good}'"))
                .replace(
                    "  - name: pg\n    algorithm",
                    &format!("  - name: '{good}'\n    algorithm"),
                );
            assert!(parse_str(&yaml).is_ok(), "{good}");
        }
    }

    /// Relative paths are the config file's directory's; a socket path too long for
    /// `sun_path` (with the temporary name) is refused where `check` sees it.
    #[test]
    fn relative_paths_are_beside_the_file_and_socket_paths_fit() {
        let with_admin = |admin: &str| format!("admin: {admin}\n{GOOD}");
        let c = parse(
            Path::new("/etc/ballast/b.yaml"),
            &with_admin("{unix: run/admin.sock}\nupgrade_socket: up.sock\naccess_log: a.log"),
        )
        .unwrap();
        assert_eq!(
            c.admin.unix.as_deref(),
            Some(Path::new("/etc/ballast/run/admin.sock"))
        );
        assert_eq!(
            c.upgrade_socket.as_deref(),
            Some(Path::new("/etc/ballast/up.sock"))
        );
        assert_eq!(
            c.access_log.sink,
            AccessLogSink::File("/etc/ballast/a.log".into())
        );
        let long = format!("/tmp/{}", "s".repeat(91));
        let e = err(&with_admin(&format!("{{unix: '{long}'}}")));
        assert!(e.contains("admin.unix") && e.contains("at most 95"), "{e}");
        assert!(parse_str(&with_admin(&format!("{{unix: '{}'}}", &long[..95]))).is_ok());
    }

    #[test]
    fn cross_key_rules() {
        let two = GOOD.replace(
            "target_groups:",
            "  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:6433\n    target_group: pg\ntarget_groups:",
        );
        assert!(err(&two).contains("listeners[1].name: duplicate listener name `pg`"));
        let e = err(&GOOD.replace("target_group: pg", "target_group: nope"));
        assert!(
            e.starts_with("test.yaml:8:19: listeners[0].target_group: "),
            "{e}"
        );
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
