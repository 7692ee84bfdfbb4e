//! Real servers behind Ballast, driven by their own clients: iperf3 and Redis.
//! `.ci/run` installs iperf3 and redis-server; without them these tests fail and say so.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A server process killed (by PID) when dropped.
struct Server(Child);

impl Server {
    /// Starts `program` with `args` (`{port}` replaced by a free port) and waits until it
    /// listens on 127.0.0.1 there.
    fn start(program: &str, args: &[&str]) -> (Server, SocketAddr) {
        need(program);
        let port = free_port().to_string();
        let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port)).collect();
        let child = Command::new(program)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr);
        (server, addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run `bash .ci/run` or `apt-get install {tool}`"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something accepts on `addr`.
fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let out = Command::new("timeout")
        .args([
            "30",
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-t",
            "2",
            "-J",
        ])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 failed: {json}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("iperf3 -J output");
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no end.sum_received.bytes in {json}"));
    assert!(bytes > 0, "iperf3 moved no bytes");
}

#[test]
fn redis_benchmark_through_ballast() {
    need("redis-benchmark");
    let (_server, target) = Server::start(
        "redis-server",
        &[
            "--port",
            "{port}",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    let lb = front(target, None);
    let lport = lb.addr("l").port().to_string();
    let set = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &lport, "SET", "ballast", "works"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let get = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &lport, "GET", "ballast"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "works");
    let out = Command::new("timeout")
        .args([
            "60",
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            &lport,
            "-t",
            "set,get",
            "-n",
            "20000",
            "--csv",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-benchmark failed: {stdout}\n{stderr}"
    );
    assert!(!stderr.to_lowercase().contains("error"), "{stderr}");
    for test in ["\"SET\"", "\"GET\""] {
        assert!(stdout.contains(test), "no {test} result: {stdout}");
    }
}
