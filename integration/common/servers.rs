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
