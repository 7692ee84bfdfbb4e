//! Real servers behind Ballast, driven by their own clients: iperf3 and Redis.
//! `.ci/run` installs iperf3 and redis-server; without them these tests fail and say so.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use common::*;

/// A port free for both TCP and UDP below the kernel's ephemeral range (32768 and up by
/// default). A UDP listener's SO_REUSEPORT group admits any socket of the same user that asks
/// for the same port with SO_REUSEPORT — as dig's own sockets do — so a listener on an
/// ephemeral port can have a client's socket join it and read datagrams meant for Ballast.
fn port_below_ephemeral() -> u16 {
    let start = 20000 + (std::process::id() % 5000) as u16;
    (start..32000)
        .find(|&p| {
            TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        })
        .expect("a free port below 32000")
}

/// Runs `iperf3 -c 127.0.0.1 -p port ARGS -J` (bounded) and returns its JSON report.
fn iperf3_client(port: u16, args: &[&str]) -> serde_json::Value {
    let out = Command::new("timeout")
        .args([
            "30",
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-J",
        ])
        .args(args)
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 {args:?} failed: {json}");
    serde_json::from_str(&json).expect("iperf3 -J output")
}

fn front(target: SocketAddr, health_port: Option<u16>) -> Ballast {
    let port = health_port.map_or(String::new(), |p| format!(", port: {p}"));
    let health = format!("    health_check: {{protocol: tcp, interval: 5s, timeout: 1s{port}}}\n");
    Ballast::start(&config("round_robin", &[(target, 1)], "", &health))
}

#[test]
fn iperf3_through_ballast() {
    let (_server, target) = Server::start("iperf3", &["-s", "-B", "127.0.0.1", "-p", "{port}"]);
    // iperf3 -s takes every connection for a test and, when one ends (a probe's connect and
    // close does), closes and re-opens its listening socket: a connect in that gap is refused,
    // one in the old backlog is reset. So the check goes to a side port, as conf/iperf.yaml
    // recommends.
    let side = Backend::start(std::sync::Arc::new(|_| {}));
    let lb = front(target, Some(side.addr.port()));
    let addr = lb.addr("l");
    let report = iperf3_client(addr.port(), &["-t", "2"]);
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no end.sum_received.bytes in {report}"));
    assert!(bytes > 0, "iperf3 moved no bytes");
}

#[test]
fn redis_benchmark_through_ballast() {
    let (_server, target) = redis_server(&[]);
    let lb = front(target, None);
    let lport = lb.addr("l").port().to_string();
    let at = ["-h", "127.0.0.1", "-p", lport.as_str()];
    assert_eq!(
        redis_cli(&[&at[..], &["SET", "ballast", "works"]].concat()),
        "OK"
    );
    assert_eq!(redis_cli(&[&at[..], &["GET", "ballast"]].concat()), "works");
    assert_redis_benchmark(&at);
}

/// A DNS query for `a.ballast.test` type A (id 0x1234, recursion desired), in hex.
const QUERY_A: &str = "12 34 01 00 00 01 00 00 00 00 00 00 \
                       01 61 07 62 61 6c 6c 61 73 74 04 74 65 73 74 00 00 01 00 01";

fn dnsmasq_named(name: &str) -> (Server, SocketAddr) {
    dnsmasq(&[
        "--host-record=a.ballast.test,127.0.0.53",
        &format!("--txt-record=who.ballast.test,{name}"),
    ])
}

fn dig(port: u16, args: &[&str]) -> String {
    need("dig");
    let out = Command::new("timeout")
        .args([
            "60",
            "dig",
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+tries=1",
            "+timeout=3",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn dns_through_ballast_with_two_dnsmasq_servers() {
    let (_dns1, a1) = dnsmasq_named("dns1");
    let (_dns2, a2) = dnsmasq_named("dns2");
    let yaml = format!(
        "listeners:\n  - name: dns\n    protocol: udp\n    bind: 127.0.0.1:{}\n    target_group: dns\n\
         \x20   udp: {{max_responses: 1, session_idle_timeout: 5s}}\n\
         target_groups:\n  - name: dns\n    health_check: {{protocol: udp, send: {{hex: '{QUERY_A}'}}, \
         expect: {{hex: '7f 00 00 35'}}, interval: 1s, timeout: 500ms}}\n\
         \x20   targets:\n      - address: {a1}\n      - address: {a2}\n",
        port_below_ephemeral()
    );
    let lb = Ballast::start(&yaml);
    let port = lb.addr("dns").port();
    assert_eq!(dig(port, &["a.ballast.test"]).trim(), "127.0.0.53");
    let who: Vec<String> = (0..4)
        .map(|_| dig(port, &["who.ballast.test", "TXT"]).trim().to_string())
        .collect();
    assert!(who.contains(&"\"dns1\"".to_string()), "{who:?}");
    assert!(who.contains(&"\"dns2\"".to_string()), "{who:?}");
    // 2,000 queries, each its own flow (dig opens a socket per query), none lost.
    let batch = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(batch.path(), "a.ballast.test\n".repeat(2000)).unwrap();
    let answers = dig(port, &["-f", batch.path().to_str().unwrap()]);
    let good = answers.lines().filter(|l| *l == "127.0.0.53").count();
    assert_eq!(
        good,
        2000,
        "lost or wrong answers:\n{}",
        answers
            .lines()
            .filter(|l| *l != "127.0.0.53")
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn iperf3_udp_through_a_tcp_and_a_udp_listener_on_one_port() {
    let (_server, target) = Server::start("iperf3", &["-s", "-B", "127.0.0.1", "-p", "{port}"]);
    let side = Backend::start(std::sync::Arc::new(|_| {}));
    let port = free_port();
    let yaml = format!(
        "listeners:\n\
         \x20 - {{name: iperf-tcp, protocol: tcp, bind: '127.0.0.1:{port}', target_group: iperf}}\n\
         \x20 - {{name: iperf-udp, protocol: udp, bind: '127.0.0.1:{port}', target_group: iperf}}\n\
         target_groups:\n  - name: iperf\n    health_check: {{protocol: tcp, port: {}, interval: 5s, timeout: 1s}}\n\
         \x20   targets: [{{address: '{target}'}}]\n",
        side.addr.port()
    );
    let _lb = Ballast::start(&yaml);
    let report = iperf3_client(port, &["-u", "-b", "20M", "-l", "1400", "-t", "2"]);
    let sum = &report["end"]["sum"];
    let packets = sum["packets"].as_u64().unwrap_or(0);
    let lost = sum["lost_percent"].as_f64().unwrap_or(100.0);
    assert!(packets > 1000, "too few packets: {sum}");
    assert!(lost < 5.0, "{lost}% lost at 20 Mbit/s on loopback: {sum}");
}
