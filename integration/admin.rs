//! The admin API on a real `ballast` process: health, targets, Prometheus metrics, tokens.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// `GET path` with an optional bearer token; returns (status, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n{auth}\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
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
        (200, r#"{"status":"ok"}"#.to_string())
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

    let (status, text) = get(admin, "/metrics", None);
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    let value = |name: &str, target: SocketAddr| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("target") == Some(&target.to_string()))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} for {target}:\n{text}"))
    };
    assert_eq!(value("ballast_target_connections_total", a.addr), 5.0);
    assert_eq!(value("ballast_target_bytes_received_total", b.addr), 10.0);
    assert_eq!(value("ballast_target_healthy", a.addr), 1.0);
    assert_eq!(get(admin, "/nope", None).0, 404);
}

#[test]
fn a_token_is_required_when_configured() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let yaml = format!(
        "admin: {{bind: '127.0.0.1:0', token_file: '{}'}}\n{}",
        token_file.display(),
        config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS)
    );
    let lb = Ballast::start(&yaml);
    let admin = lb.admin_addr();
    let (status, body) = get(admin, "/targets", None);
    assert_eq!(status, 401);
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(get(admin, "/targets", Some("wrong")).0, 401);
    assert_eq!(get(admin, "/targets", Some("s3cret")).0, 200);
}

#[test]
fn a_non_loopback_admin_without_a_token_is_refused_at_start() {
    let file = write_config(&format!(
        "admin: {{bind: '0.0.0.0:0'}}\n{}",
        config("round_robin", &[(dead_addr(), 1)], "", NO_CHECKS)
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["run", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("admin.bind") && stderr.contains("token_file"),
        "{stderr}"
    );
}
