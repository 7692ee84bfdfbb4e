//! The admin API on a real `ballast` process: health, targets, Prometheus metrics, tokens.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    common::http(addr, method, path, token, "")
}

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http(addr, "GET", path, token)
}

fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "POST", path, None)
}

#[test]
fn healthz_targets_and_metrics_match_the_traffic() {
    let (a, b) = (Backend::start(named("a")), Backend::start(named("b")));
    let lb = Ballast::start(&config(
        "round_robin",
        &[(a.addr, 1), (b.addr, 1)],
        "",
        NO_CHECKS,
    ));
    let addr = lb.addr("l");
    let admin = lb.admin_addr();
    assert_eq!(
        get(admin, "/healthz", None),
        (200, r#"{"status":"ready"}"#.to_string())
    );
    for _ in 0..10 {
        assert_eq!(fetch(addr).unwrap().len(), 2);
    }
    let (status, body) = get(admin, "/targets", None);
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let targets = &doc["target_groups"][0]["targets"];
    assert_eq!(targets[0]["total"], 5, "{body}");
    assert_eq!(targets[1]["total"], 5, "{body}");
    assert_eq!(targets[0]["health"], "healthy");
    assert_eq!(
        targets[0]["bytes_from_target"], 10,
        "\"a\\n\" five times: {body}"
    );

    wait_until("the first check of a finished", || {
        let doc: serde_json::Value = serde_json::from_str(&get(admin, "/targets", None).1).unwrap();
        doc["target_groups"][0]["targets"][0]["last_check"]["checks"] == 1
    });
    let (scrape, text) = scrape(admin);
    let value = |name: &str, target: SocketAddr| {
        sample(&scrape, name, "target", &target.to_string())
            .unwrap_or_else(|| panic!("no {name} for {target}:\n{text}"))
    };
    assert_eq!(value("ballast_target_connections_total", a.addr), 5.0);
    assert_eq!(value("ballast_target_bytes_received_total", b.addr), 10.0);
    assert_eq!(value("ballast_target_healthy", a.addr), 1.0);
    // The first check runs at start: one latency in the histogram, under the 1 s timeout.
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "ballast_target_check_latency_seconds"
                && s.labels.get("target") == Some(&a.addr.to_string())
        })
        .map(|s| s.value.clone());
    match histogram {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            let le_1s = buckets.iter().find(|b| b.less_than == 1.0).unwrap();
            assert_eq!(le_1s.count, 1.0, "{text}");
        }
        other => panic!(
            "no check latency histogram for {}: {other:?}\n{text}",
            a.addr
        ),
    }
    assert_eq!(get(admin, "/nope", None).0, 404);
}

#[test]
fn a_token_is_required_when_configured() {
    let (lb, _echo, _dir) = start_with_token("");
    let admin = lb.admin_addr();
    let (status, body) = get(admin, "/targets", None);
    assert_eq!(status, 401);
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(get(admin, "/targets", Some("wrong")).0, 401);
    assert_eq!(get(admin, "/targets", Some("s3cret")).0, 200);
    // The open endpoints stay open to HEAD, which answers as GET does (without the body).
    for path in ["/healthz", "/livez"] {
        assert_eq!(get(admin, path, None).0, 200, "GET {path}");
        assert_eq!(
            http(admin, "HEAD", path, None),
            (200, String::new()),
            "HEAD {path}"
        );
    }
    assert_eq!(http(admin, "HEAD", "/targets", None).0, 401);
}

/// Writes a request head to a new connection to `admin` and keeps the connection.
fn send_head(admin: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&admin, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// A body over the API's 64 KiB is answered 413 (Payload Too Large), and nothing changes.
#[test]
fn an_oversized_body_is_answered_413() {
    let lb = Ballast::start(&config("round_robin", &[(dead_addr(), 1)], "", NO_CHECKS));
    let admin = lb.admin_addr();
    let body = format!(
        r#"{{"address": "127.0.0.1:9", "pad": "{}"}}"#,
        "x".repeat(70_000)
    );
    let (status, said) = common::http(admin, "POST", "/target-groups/g/targets", None, &body);
    assert_eq!(status, 413, "{said}");
    assert!(said.contains("over 65536 bytes"), "{said}");
    assert_eq!(group_targets(admin, "g").len(), 1);
}

/// A body promised and never sent is given up at its deadline (408, closed); an open endpoint
/// answers without waiting for one; and 4,500 connections holding stalled bodies or sending
/// nothing at all (more than the API's 4,096 slots) never keep `/healthz` from answering.
#[test]
fn stalled_bodies_and_idle_connections_never_keep_healthz_out() {
    let lb = Ballast::start(&config("round_robin", &[(dead_addr(), 1)], "", NO_CHECKS));
    let admin = lb.admin_addr();
    let stalled_post = format!(
        "POST /node/enable HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: 10\r\n\r\n"
    );
    let stalled_get = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n";

    let mut post = send_head(admin, &stalled_post);
    let started = Instant::now();
    let mut get_one = send_head(admin, stalled_get);
    let mut answer = [0u8; 12];
    get_one.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200", "answered without its body");
    assert!(started.elapsed() < Duration::from_secs(1));
    let mut response = String::new();
    let _ = post.read_to_string(&mut response); // ends at the close
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&waited),
        "given up after {waited:?}"
    );

    // Opened from 15 threads: a loopback SYN is now and then lost here, and a connect then
    // waits a second for its retransmission; in parallel those seconds overlap.
    let held: Vec<TcpStream> = std::thread::scope(|scope| {
        let opening: Vec<_> = (0..15)
            .map(|t| {
                let stalled_post = &stalled_post;
                scope.spawn(move || {
                    (0..300)
                        .map(|i| match (t + i) % 2 {
                            0 => send_head(admin, stalled_post),
                            _ => TcpStream::connect_timeout(&admin, WAIT).unwrap(), // nothing
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        opening
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    assert_eq!(held.len(), 4500);
    for round in 0..5 {
        let t = Instant::now();
        let (status, body) = get(admin, "/healthz", None);
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "round {round}: /healthz took {:?} with 4,500 stalled connections",
            t.elapsed()
        );
    }
    drop(held);
}

#[test]
fn a_non_loopback_admin_without_a_token_is_refused_at_start() {
    let stderr = run_refused(&format!(
        "admin: {{bind: '0.0.0.0:0'}}\n{}",
        config("round_robin", &[(dead_addr(), 1)], "", NO_CHECKS)
    ));
    assert!(
        stderr.contains("admin.bind") && stderr.contains("token_file"),
        "{stderr}"
    );
}

#[test]
fn a_drained_target_gets_no_new_connections_and_keeps_its_open_ones() {
    let (a, b) = (
        Backend::start(named_echo("a")),
        Backend::start(named_echo("b")),
    );
    let lb = Ballast::start(&config(
        "round_robin",
        &[(a.addr, 1), (b.addr, 1)],
        "",
        NO_CHECKS,
    ));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let mut on_a = loop {
        let (s, name) = open_named(addr);
        if name == "a" {
            break s;
        }
    };
    let (status, body) = post(admin, &format!("/target-groups/g/targets/{}/drain", a.addr));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"admin_state\":\"draining\""), "{body}");
    for _ in 0..20 {
        assert_eq!(
            open_named(addr).1,
            "b",
            "a draining target got a new connection"
        );
    }
    // The open connection to a goes on, and /targets counts it.
    on_a.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    on_a.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
    let doc: serde_json::Value = serde_json::from_str(&get(admin, "/targets", None).1).unwrap();
    let target_a = &doc["target_groups"][0]["targets"][0];
    assert_eq!(target_a["admin_state"], "draining");
    assert_eq!(target_a["active"], 1, "{doc}");
    // Enabled again, it takes its turn.
    assert_eq!(
        post(
            admin,
            &format!("/target-groups/g/targets/{}/enable", a.addr)
        )
        .0,
        200
    );
    let names: Vec<String> = (0..4).map(|_| open_named(addr).1).collect();
    assert!(names.contains(&"a".to_string()), "{names:?}");
    // Bad requests change nothing and say why.
    let (status, body) = post(admin, "/target-groups/nope/targets/1.2.3.4:5/drain");
    assert_eq!(status, 404);
    assert!(body.contains("unknown target group `nope`"), "{body}");
    let (status, body) = post(admin, "/target-groups/g/targets/127.0.0.1:1/drain");
    assert_eq!(status, 404);
    assert!(body.contains("has no target"), "{body}");
    assert_eq!(
        get(
            admin,
            &format!("/target-groups/g/targets/{}/drain", a.addr),
            None
        )
        .0,
        405
    );
}

#[test]
fn connections_lists_the_workers_tables() {
    let echo = Backend::start(echo());
    let lb = Ballast::start(&config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let mut conns: Vec<TcpStream> = (0..3).map(|_| client(addr)).collect();
    for c in conns.iter_mut() {
        c.write_all(b"hello").unwrap();
        c.read_exact(&mut [0u8; 5]).unwrap();
    }
    let (status, body) = get(admin, "/connections", None);
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = doc["connections"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{body}");
    let clients: Vec<String> = conns
        .iter()
        .map(|c| c.local_addr().unwrap().to_string())
        .collect();
    for entry in list {
        assert_eq!(entry["protocol"], "tcp");
        assert_eq!(entry["listener"], "l");
        assert_eq!(entry["target"], echo.addr.to_string());
        assert_eq!(entry["stage"], "established");
        assert_eq!(entry["bytes_up"], 5);
        assert_eq!(entry["bytes_down"], 5);
        assert!(
            clients.contains(&entry["client"].as_str().unwrap().to_string()),
            "{entry}"
        );
    }
    let doc: serde_json::Value =
        serde_json::from_str(&get(admin, "/connections?limit=2", None).1).unwrap();
    assert_eq!(doc["connections"].as_array().unwrap().len(), 2);
    let (status, body) = get(admin, "/connections?limit=many", None);
    assert_eq!(status, 400);
    assert!(body.contains("limit must be a whole number"), "{body}");
}

#[test]
fn disable_closes_what_is_left_after_the_drain_timeout() {
    let (targets, lb, mut on_a) = a_connection_on_a("300ms");
    let (addr, admin, a) = (lb.addr("l"), lb.admin_addr(), &targets[0]);
    let disabled = std::time::Instant::now();
    let (status, body) = post(
        admin,
        &format!("/target-groups/g/targets/{}/disable", a.addr),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"admin_state\":\"disabled\""), "{body}");
    assert_eq!(open_named(addr).1, "b");
    // Still open during the drain timeout...
    on_a.write_all(b"x").unwrap();
    on_a.read_exact(&mut [0u8; 1]).unwrap();
    // ...and closed once it has passed.
    let mut rest = Vec::new();
    let r = on_a.read_to_end(&mut rest);
    let closed_after = disabled.elapsed();
    // EOF or a reset: closed by Ballast, not a read timeout.
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert!(
        closed_after >= std::time::Duration::from_millis(250)
            && closed_after < std::time::Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    // The drain is over: a is disabled and holds nothing.
    wait_target(admin, "g", a.addr, WAIT, "disabled, nothing open", |t| {
        t["admin_state"] == "disabled" && t["active"] == 0
    });
}

/// Ballast in front of an echo target, its admin API requiring the token `s3cret` (`extra`:
/// more admin keys); the temporary directory holds the token file.
fn start_with_token(extra: &str) -> (Ballast, Backend, tempfile::TempDir) {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let yaml = with_token(
        dir.path(),
        extra,
        &config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS),
    );
    (Ballast::start(&yaml), echo, dir)
}

/// A raw request to the admin API (no helper's defaults): the status line's code, or 0 when
/// the connection closed without one.
fn raw(admin: std::net::SocketAddr, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn cross_site_style_changes_are_refused_without_a_token() {
    let echo = Backend::start(echo());
    let lb = Ballast::start(&config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS));
    let admin = lb.admin_addr();
    let drain = format!("/target-groups/g/targets/{}/drain", echo.addr);
    // A form post from a web page: no JSON content type.
    let form = format!(
        "POST {drain} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(admin, &form), 415);
    // A DNS-rebound page: JSON, but its own host name.
    let rebound = format!(
        "POST {drain} HTTP/1.1\r\nHost: evil.example:{}\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    assert_eq!(raw(admin, &rebound), 403);
    // Nothing changed; reads stay open to any Host.
    let (_, body) = get(admin, "/targets", None);
    assert!(body.contains("\"admin_state\":\"active\""), "{body}");
    let read = "GET /targets HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(admin, read), 200);
    // The API's own clients (the CLI, the test helper) send JSON and the address.
    assert_eq!(post(admin, &drain).0, 200);
}

#[test]
fn idle_connections_and_an_endless_header_do_not_keep_an_authorised_request_waiting() {
    use std::io::Write;
    let (lb, _echo, _dir) = start_with_token("");
    let admin = lb.admin_addr();
    let idle: Vec<std::net::TcpStream> = (0..2000)
        .map(|_| std::net::TcpStream::connect_timeout(&admin, WAIT).unwrap())
        .collect();
    // An endless header line, written as fast as the server takes it.
    let endless = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect_timeout(&admin, WAIT).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        let _ = s.write_all(b"GET /targets HTTP/1.1\r\nX-Endless: ");
        let chunk = [b'a'; 4096];
        let mut sent = 0usize;
        while s.write_all(&chunk).is_ok() && sent < 64 << 20 {
            sent += chunk.len();
        }
        sent
    });
    let started = std::time::Instant::now();
    assert_eq!(get(admin, "/targets", Some("s3cret")).0, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let sent = endless.join().unwrap();
    // The server stops reading past its head limit (16 KiB) and closes; what the kernel's
    // socket buffers took on loopback is a few MiB at most, far from the 64 MiB offered.
    assert!(
        sent < 32 << 20,
        "the server kept reading an endless header: {sent} bytes"
    );
    drop(idle);
}

#[test]
fn the_unix_socket_serves_the_api_to_its_owner_only() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let socket = std::env::temp_dir().join(format!("ballast-admin-{}.sock", std::process::id()));
    let (lb, echo, _dir) = start_with_token(&format!(", unix: '{}'", socket.display()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // No token over the socket: its permissions are the authentication.
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /targets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&echo.addr.to_string()), "{out}");
    let mut lb = lb;
    lb.terminate();
    lb.wait_exit(WAIT).expect("stops");
    assert!(!socket.exists(), "removed at a graceful stop");
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, "s3cret");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = run_refused(&format!(
        "admin: {{bind: '127.0.0.1:0', token_file: '{}'}}\n{}",
        token_file.display(),
        config("round_robin", &[(dead_addr(), 1)], "", NO_CHECKS)
    ));
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// A disable's drain timer belongs to that disable: disabled, enabled and disabled again, the
/// target's connections get the second disable's whole `drain_timeout` (the first one's timer
/// closed them early).
#[test]
fn a_disable_timer_from_before_an_enable_closes_nothing() {
    let (targets, lb, mut on_a) = a_connection_on_a("1s");
    let (admin, a) = (lb.admin_addr(), &targets[0]);
    let target = |verb: &str| format!("/target-groups/g/targets/{}/{verb}", a.addr);
    let first = std::time::Instant::now();
    assert_eq!(post(admin, &target("disable")).0, 200);
    assert_eq!(post(admin, &target("enable")).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(500)); // the second disable, later
    assert_eq!(post(admin, &target("disable")).0, 200);
    // Past the first disable's deadline (1 s), within the second's (1.5 s): still open.
    std::thread::sleep(std::time::Duration::from_millis(1250).saturating_sub(first.elapsed()));
    on_a.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    on_a.read_exact(&mut one)
        .expect("closed by the first disable's timer");
}

/// Targets `a` and `b` behind a Ballast whose group drains for `drain_timeout`, and a
/// connection that reached `a`.
fn a_connection_on_a(drain_timeout: &str) -> ([Backend; 2], Ballast, TcpStream) {
    let targets = [
        Backend::start(named_echo("a")),
        Backend::start(named_echo("b")),
    ];
    let health = format!("    drain_timeout: {drain_timeout}\n{NO_CHECKS}");
    let addrs = [(targets[0].addr, 1), (targets[1].addr, 1)];
    let lb = Ballast::start(&config("round_robin", &addrs, "", &health));
    let on_a = loop {
        let (s, name) = open_named(lb.addr("l"));
        if name == "a" {
            break s;
        }
    };
    (targets, lb, on_a)
}

/// `?format=csv`: the tables as a spreadsheet takes them, one row per target or listener.
#[test]
fn targets_and_listeners_export_as_csv() {
    let a = Backend::start(named("a"));
    let dead = dead_addr();
    let lb = Ballast::start(&config(
        "round_robin",
        &[(a.addr, 1), (dead, 3)],
        "    deny: [127.0.0.2/32]\n",
        "    health_check: {protocol: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}\n",
    ));
    let admin = lb.admin_addr();
    wait_health(admin, "g", dead, "unhealthy");
    let (status, csv) = get(admin, "/targets?format=csv", None);
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a row per target: {csv}");
    assert!(
        lines[0].starts_with("group,target,health,admin_state,weight,"),
        "{csv}"
    );
    let row = lines
        .iter()
        .find(|l| l.contains(&dead.to_string()))
        .unwrap();
    assert!(
        row.starts_with(&format!("g,{dead},unhealthy,active,3,"))
            && row.contains(",connection refused,"),
        "{row}"
    );
    let (status, csv) = get(admin, "/listeners?format=csv", None);
    assert_eq!(status, 200, "{csv}");
    assert!(
        csv.starts_with("listener,protocol,bind,target_group,"),
        "{csv}"
    );
    assert!(
        csv.lines().next().unwrap().contains(",refused_denied,"),
        "{csv}"
    );
    assert!(
        csv.lines().nth(1).unwrap().starts_with("l,tcp,127.0.0.1:"),
        "{csv}"
    );
}

/// Drains undone before their drain_timeout leave nothing behind: no thread sleeps out each
/// cancelled timer (500 disable/enable cycles made 500 threads before).
#[test]
fn cancelled_drain_timers_do_not_pile_up_threads() {
    let a = Backend::start(named("a"));
    let lb = Ballast::start(&format!(
        "{}    drain_timeout: 10m\n",
        config(
            "round_robin",
            &[(a.addr, 1), (dead_addr(), 1)],
            "",
            NO_CHECKS
        )
    ));
    let admin = lb.admin_addr();
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", lb.pid()))
            .unwrap()
            .count()
    };
    let path = format!("/target-groups/g/targets/{}", a.addr);
    let cycles = |n: usize| {
        for _ in 0..n {
            assert_eq!(post(admin, &format!("{path}/disable")).0, 200);
            assert_eq!(post(admin, &format!("{path}/enable")).0, 200);
        }
    };
    // Warm up: the timer thread and the admin API's handler pool are there after this.
    cycles(10);
    let before = threads();
    cycles(200);
    let after = threads();
    assert!(
        after <= before + 1,
        "{before} threads before, {after} after"
    );
}

/// A request being served when Ballast is told to stop is answered before the API closes
/// (its connection is not dropped under it; a change is refused with 503, as it would be
/// lost); then the process ends.
#[test]
fn a_request_in_flight_at_stop_is_answered() {
    let mut lb = Ballast::start(&config("round_robin", &[(dead_addr(), 1)], "", NO_CHECKS));
    let admin = lb.admin_addr();
    let body = r#"{"address": "127.0.0.1:9", "backup": true}"#;
    let mut s = send_head(
        admin,
        &format!(
            "POST /target-groups/g/targets HTTP/1.1\r\nHost: {admin}\r\nContent-Type: \
             application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
    );
    // "100 Continue": the handler is reading the body, so the request is being served.
    let mut continued = [0u8; 25];
    s.read_exact(&mut continued).unwrap();
    assert!(
        continued.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&continued)
    );
    lb.terminate();
    lb.wait_log("admin API: stopping; 1 connection get", WAIT);
    s.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    // Answered, and honestly: a change made now would be lost with the process.
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("nothing was changed"), "{answer}");
    assert!(lb.wait_exit(WAIT).is_some(), "still running after SIGTERM");
}
