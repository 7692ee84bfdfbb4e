//! What `ballast check` probes beyond the file: what `run` would need of this host. The file's
//! own checks (keys, values, token file modes, certificates) are [`crate::config::load`]'s;
//! here are the files and directories `run` writes (the access log, the upgrade socket, the
//! admin API's UNIX socket) and, with `--probe-binds`, the listeners' addresses, bound as
//! `run` binds them (SO_REUSEPORT, and refused when another process already serves one).
//!
//! Each probe is a [`Finding`]: passed, failed (`check` then exits 2, as `run` would), or
//! not probed and why, so an operator knows what a green `check` did not cover.

use std::ffi::CString;
use std::path::Path;

use crate::config::{AccessLogSink, Config, SyslogAddress};

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// What was probed, and that it would work.
    Ok(String),
    /// What `run` would fail on, and why.
    Fails(String),
    /// What was not probed, and why.
    NotProbed(String),
    /// What `run` would do in a lesser way on this host (it still runs), and why.
    Degraded(String),
}

/// Probes what `config` needs of this host (see the module's doc); binds listeners only when
/// `binds` is set (a running Ballast's own listeners would count as in use).
pub fn probe(config: &Config, binds: bool) -> Vec<Finding> {
    let mut found = Vec::new();
    match &config.access_log.sink {
        AccessLogSink::File(path) => found.push(writable_file("access_log", path)),
        AccessLogSink::Syslog(target) => found.push(match &target.address {
            SyslogAddress::Unix(path) => syslog_socket(path),
            SyslogAddress::Udp(addr) => Finding::NotProbed(format!(
                "access_log syslog udp:{addr} (UDP is not acknowledged: watch the daemon)"
            )),
        }),
        AccessLogSink::Off | AccessLogSink::Stderr => {}
    }
    if let Some(path) = &config.upgrade_socket {
        found.push(socket_directory("upgrade_socket", path));
    }
    if let Some(cluster) = &config.cluster {
        found.extend(cluster.etcd.endpoints.iter().map(|e| etcd_endpoint(e)));
    }
    if let Some(path) = &config.admin.unix {
        found.push(socket_directory("admin.unix", path));
    }
    if binds {
        // One listener at a time, so every address that fails is named, not only the first;
        // one worker's sockets (the others bind beside them the same way).
        let mut bound = Vec::new();
        for l in &config.listeners {
            match crate::bind::bind_each(&[l], 1, &config.path) {
                Ok((sockets, addrs)) => bound.push((sockets, addrs)),
                Err(e) => found.push(Finding::Fails(e.to_string())),
            }
        }
        let addrs: Vec<String> = bound
            .iter()
            .flat_map(|(_, a)| a.iter().map(ToString::to_string))
            .collect();
        if !addrs.is_empty() {
            found.push(Finding::Ok(format!(
                "listeners bound: {}",
                addrs.join(", ")
            )));
        }
        drop(bound);
        found.push(match std::net::TcpListener::bind(config.admin.bind) {
            Ok(_) => Finding::Ok(format!("admin.bind {}: can be bound", config.admin.bind)),
            Err(e) => Finding::Fails(format!(
                "admin.bind {}: cannot bind: {e}",
                config.admin.bind
            )),
        });
        for (key, path) in [
            ("admin.unix", config.admin.unix.as_deref()),
            ("upgrade_socket", config.upgrade_socket.as_deref()),
        ] {
            if let Some(path) = path.filter(|p| crate::net::unix_socket_live(p)) {
                found.push(Finding::Fails(format!(
                    "{key} {}: another process accepts connections on it",
                    path.display()
                )));
            }
        }
    } else {
        found.push(Finding::NotProbed(
            "listener and admin addresses, live sockets at admin.unix and upgrade_socket \
             (--probe-binds binds them as `run` would; on a node where Ballast runs, its own \
             count as in use)"
                .into(),
        ));
    }
    if let Some((i, g)) = config
        .target_groups
        .iter()
        .enumerate()
        .find(|(_, g)| g.source == crate::config::SourceAddress::Client)
    {
        found.push(match crate::net::transparent_allowed() {
            Ok(()) => Finding::Ok(format!(
                "target group {}: source: client: transparent sockets allowed (return traffic \
                 must be routed through this host: conf/tproxy/)",
                g.name
            )),
            Err(e) => Finding::Fails(format!(
                "{}: target_groups[{i}].source ({}): {e}",
                config.path.display(),
                g.name
            )),
        });
    }
    if let Some(l) = config
        .listeners
        .iter()
        .find(|l| l.forwarding == crate::config::Forwarding::Sockmap)
    {
        // The maps and program a worker makes at start, once, and given back at once.
        found.push(match crate::sockmap::Sockmap::new(1) {
            Ok(_) => Finding::Ok(format!(
                "listener {}: forwarding: sockmap: the kernel takes its maps and program",
                l.name
            )),
            Err(e) => Finding::Degraded(format!(
                "listener {}: forwarding: sockmap: the kernel refuses its maps or program here \
                 ({e}); `run` would forward in user space (as auto) — it needs CAP_BPF, \
                 CAP_NET_ADMIN and CAP_PERFMON, and Linux >= 5.13 with CONFIG_BPF_STREAM_PARSER \
                 and BTF",
                l.name
            )),
        });
    }
    found.push(Finding::NotProbed(
        "targets (reachability is the health checks' work once running)".into(),
    ));
    found
}

/// A syslog daemon's UNIX socket `run` would send to: it must take a datagram (or a stream
/// connection, as some daemons listen).
fn syslog_socket(path: &Path) -> Finding {
    match crate::access_log::reach_syslog(path) {
        Ok(()) => Finding::Ok(format!("access_log syslog {}: reachable", path.display())),
        Err(e) => Finding::Fails(format!(
            "access_log syslog {}: cannot connect: {e}",
            path.display()
        )),
    }
}

/// `path` can be appended to by this user: it exists and is writable, or its directory
/// exists and is.
fn writable_file(key: &str, path: &Path) -> Finding {
    if path.exists() {
        return match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => Finding::Ok(format!("{key} {}: writable", path.display())),
            Err(e) => Finding::Fails(format!("{key} {}: cannot open: {e}", path.display())),
        };
    }
    let dir = parent(path);
    match writable_directory(dir) {
        Ok(()) => Finding::Ok(format!(
            "{key} {}: will be created in {}",
            path.display(),
            dir.display()
        )),
        Err(why) => Finding::Fails(format!(
            "{key} {}: cannot be created: {} {why}",
            path.display(),
            dir.display()
        )),
    }
}

/// A socket `run` creates at `path`: its directory must be writable. A directory that does
/// not exist yet is not a failure: a service manager makes it at start (systemd's
/// `RuntimeDirectory=` makes /run/ballast, and removes it at stop).
fn socket_directory(key: &str, path: &Path) -> Finding {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_socket()) {
        return Finding::Fails(format!(
            "{key} {}: exists and is not a socket (run refuses to replace it)",
            path.display()
        ));
    }
    let dir = parent(path);
    if !dir.exists() {
        return Finding::NotProbed(format!(
            "{key} {}: {} does not exist yet (a service manager may make it at start: \
             RuntimeDirectory=)",
            path.display(),
            dir.display()
        ));
    }
    match writable_directory(dir) {
        Ok(()) => Finding::Ok(format!(
            "{key} {}: its directory is writable",
            path.display()
        )),
        Err(why) => Finding::Fails(format!(
            "{key} {}: cannot be created: {} {why}",
            path.display(),
            dir.display()
        )),
    }
}

/// The directory of `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `Ok` when `dir` is a directory this user may create files in; else why not.
fn writable_directory(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Err(e) => return Err(format!("is missing or unreadable ({e})")),
        Ok(m) if !m.is_dir() => return Err("is not a directory".into()),
        Ok(_) => {}
    }
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| "has a NUL byte in its name".to_string())?;
    // SAFETY: access(2) with a valid NUL-terminated path; it only reads the path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "is not writable by this user ({})",
            std::io::Error::last_os_error()
        ))
    }
}

/// Whether etcd endpoint `url` (`http(s)://host:port`) takes a TCP connection within 2 s: a
/// node that cannot reach any serves its file's targets until one answers.
fn etcd_endpoint(url: &str) -> Finding {
    use std::net::ToSocketAddrs;
    let host_port = url.split_once("://").map_or(url, |(_, rest)| rest);
    let reached = host_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|addrs| {
            let mut last = String::from("no address");
            for a in addrs {
                match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)) {
                    Ok(_) => return Ok(a),
                    Err(e) => last = format!("{a}: {e}"),
                }
            }
            Err(last)
        });
    match reached {
        Ok(a) => Finding::Ok(format!(
            "cluster.etcd {url}: reachable over TCP ({a}; TLS and the login are checked by \
             `run`, which stops on a refused login)"
        )),
        Err(e) => Finding::Degraded(format!(
            "cluster.etcd {url}: not reachable ({e}): the node would serve its file's targets \
             until etcd answers"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_probed_where_run_will_write_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("access.log");
        assert!(
            matches!(writable_file("access_log", &file), Finding::Ok(m) if m.contains("will be created"))
        );
        std::fs::write(&file, "").unwrap();
        assert!(
            matches!(writable_file("access_log", &file), Finding::Ok(m) if m.ends_with("writable"))
        );
        let missing = dir.path().join("nope/access.log");
        assert!(
            matches!(writable_file("access_log", &missing), Finding::Fails(m) if m.contains("is missing"))
        );
        assert!(matches!(
            socket_directory("admin.unix", &missing),
            Finding::NotProbed(_)
        ));
        let read_only = dir.path().join("ro");
        std::fs::create_dir(&read_only).unwrap();
        let file_in_it = read_only.join("admin.sock");
        assert!(matches!(
            socket_directory("admin.unix", &file_in_it),
            Finding::Ok(_)
        ));
        // A file where the socket would go: never replaced.
        assert!(
            matches!(socket_directory("admin.unix", &file), Finding::Fails(m) if m.contains("not a socket"))
        );
        // A file where the directory should be.
        let under_file = file.join("x.sock");
        assert!(
            matches!(socket_directory("admin.unix", &under_file), Finding::Fails(m) if m.contains("not a directory"))
        );
    }
}
