//! A small client of the admin API: requests, and `/metrics` parsed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::waits::WAIT;

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
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(key) == Some(value))
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
