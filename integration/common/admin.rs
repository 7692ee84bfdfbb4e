//! A small client of the admin API: requests, `/metrics` parsed, and bounded waits for the
//! state they show (a target's health, a counter's value).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::waits::{wait_state, WAIT};

/// `METHOD path` over HTTP/1.0 with an optional bearer token and body; returns (status, body).
/// Panics when no HTTP response comes back (see [`try_http`]).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    try_http(addr, method, path, token, body).unwrap()
}

/// As [`http`]; an error when the connection fails or closes without a response.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// `GET path` from the admin API at `admin`, which must answer 200, parsed as JSON.
pub fn get_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(admin, "GET", path, None, "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `GET /metrics` from the admin API at `admin`, parsed by a Prometheus text-format parser.
pub fn scrape(admin: SocketAddr) -> (prometheus_parse::Scrape, String) {
    let (status, text) = http(admin, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    (parsed, text)
}

/// The value of the sample `name` whose label `key` is `value` (counters, gauges; a
/// histogram's `_count` and `_sum` are untyped samples of their own name).
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    key: &str,
    value: &str,
) -> Option<f64> {
    labelled(scrape, name, &[(key, value)])
}

/// As [`sample`], for the sample whose labels include every `(key, value)` of `labels`.
pub fn labelled(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The value of the gauge or counter `name` that has no labels, from a live Ballast's
/// `/metrics` at `admin`.
pub fn unlabelled(admin: SocketAddr, name: &str) -> Option<f64> {
    let (scrape, _) = scrape(admin);
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.is_empty())
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => Some(v),
            _ => None,
        })
}

/// Waits (bounded by `timeout`) until the sample `name` with `labels` in `/metrics` at
/// `admin` is there and `done` holds for its value; returns the value. Panics with the last
/// value seen (`None`: no such sample).
#[track_caller]
pub fn wait_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    mut done: impl FnMut(f64) -> bool,
) -> f64 {
    let what = format!("{name}{labels:?} in /metrics");
    wait_state(
        &what,
        timeout,
        || labelled(&scrape(admin).0, name, labels),
        |v| v.is_some_and(&mut done),
    )
    .unwrap()
}

/// The targets of group `group` as `GET /targets` at `admin` lists them, as JSON.
pub fn group_targets(admin: SocketAddr, group: &str) -> Vec<serde_json::Value> {
    let doc = get_json(admin, "/targets");
    doc["target_groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["name"] == group)
        .flat_map(|g| g["targets"].as_array().unwrap().clone())
        .collect()
}

/// Target `address` of group `group` as `GET /targets` at `admin` shows it; `None` while it
/// is not listed.
pub fn target_in(
    admin: SocketAddr,
    group: &str,
    address: impl std::fmt::Display,
) -> Option<serde_json::Value> {
    let address = address.to_string();
    group_targets(admin, group)
        .into_iter()
        .find(|t| t["address"] == address.as_str())
}

/// Waits (bounded by `timeout`) until `GET /targets` at `admin` lists `address` in `group`
/// and `done` holds for it; returns its JSON. Panics naming `what` and the target as last seen.
#[track_caller]
pub fn wait_target(
    admin: SocketAddr,
    group: &str,
    address: impl std::fmt::Display,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let what = format!("{address} in group {group}: {what}");
    wait_state(
        &what,
        timeout,
        || target_in(admin, group, &address),
        |t| t.as_ref().is_some_and(&mut done),
    )
    .unwrap()
}

/// Waits (bounded by [`WAIT`]) until `GET /targets` at `admin` shows `address` of `group`
/// with `health` (`healthy` or `unhealthy`); returns its JSON.
#[track_caller]
pub fn wait_health(
    admin: SocketAddr,
    group: &str,
    address: impl std::fmt::Display,
    health: &str,
) -> serde_json::Value {
    wait_target(admin, group, address, WAIT, health, |t| {
        t["health"] == health
    })
}

/// Waits (bounded by [`WAIT`]) until `GET /targets` at `admin` shows at least `checks`
/// finished health checks of `address` in `group` (the prober closes a check's socket before
/// it counts it).
#[track_caller]
pub fn wait_checks(
    admin: SocketAddr,
    group: &str,
    address: impl std::fmt::Display,
    checks: u64,
) -> serde_json::Value {
    let what = format!("{checks} checks done");
    wait_target(admin, group, address, WAIT, &what, |t| {
        t["last_check"]["checks"].as_u64() >= Some(checks)
    })
}

/// Waits (bounded by [`WAIT`]) until `/metrics` at `admin` counts `n` restarts of `thread`
/// threads (`worker`, `prober`, `admin`); a worker is counted once its replacement runs.
#[track_caller]
pub fn wait_restarts(admin: SocketAddr, thread: &str, n: f64) {
    let labels = [("thread", thread)];
    wait_metric(admin, "ballast_thread_restarts_total", &labels, WAIT, |v| {
        v == n
    });
}
