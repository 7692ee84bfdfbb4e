//! Real server processes (redis-server, iperf3, openssl s_server) started for a test and
//! killed by PID when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::tcp_backends::free_port;
use super::waits::wait_listening;

/// A server process killed (by PID) when dropped.
pub struct Server(pub Child);

impl Server {
    /// Starts `program` with `args` (`{port}` replaced by a free port) and waits until it
    /// listens on 127.0.0.1 there.
    pub fn start(program: &str, args: &[&str]) -> (Server, SocketAddr) {
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

pub fn need(tool: &str) {
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

/// A throwaway `redis-server` on 127.0.0.1 (no persistence), with `extra` arguments.
pub fn redis_server(extra: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec![
        "--port",
        "{port}",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.extend_from_slice(extra);
    Server::start("redis-server", &args)
}

/// `redis-cli ARGS` (bounded, `args` include where to connect): stdout trimmed, then stderr.
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "redis-cli"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `redis-benchmark ARGS -t set,get -n 20000 --csv` (bounded by 60 s; `args` say where
/// to connect) and asserts it succeeded with no error and a result for both tests.
pub fn assert_redis_benchmark(args: &[&str]) {
    need("redis-benchmark");
    let out = Command::new("timeout")
        .args(["60", "redis-benchmark"])
        .args(args)
        .args(["-t", "set,get", "-n", "20000", "--csv"])
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

/// dnsmasq on a free port of 127.0.0.1, answering only from `records` (its own options,
/// e.g. `--host-record=…`): no upstream servers, no /etc/hosts.
pub fn dnsmasq(records: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec![
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
    ];
    args.extend_from_slice(records);
    Server::start("dnsmasq", &args)
}
