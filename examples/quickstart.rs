//! Quickstart: three demo backends behind Ballast, one of them killed and restored.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Starts three small TCP backends on 127.0.0.1:9001-9003 (each answers with its name), runs
//! Ballast in this process with `conf/quickstart.yaml` (listener on 127.0.0.1:8000), sends
//! requests and prints which backend answered each. Then it kills backend 2: traffic moves
//! away at once (failed connects are retried on another target) and the health check marks it
//! unhealthy; it restores backend 2 and shows it healthy and served again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ballast::{config, runtime};

/// A demo backend: answers every connection with `backend N (address)` and closes it.
struct DemoBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DemoBackend {
    fn start(n: usize, addr: SocketAddr) -> std::io::Result<DemoBackend> {
        let listener = TcpListener::bind(addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return; // dropping the listener: connects are refused from now on
                }
                if let Ok(mut conn) = conn {
                    let _ = write!(conn, "backend {n} ({addr})");
                }
            }
        });
        Ok(DemoBackend {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    fn kill(mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn request(to: SocketAddr) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    attempt().unwrap_or_else(|e| format!("FAILED: {e}"))
}

fn send(to: SocketAddr, n: usize) {
    for i in 1..=n {
        println!("  request {i}: answered by {}", request(to));
    }
}

/// Waits (at most `limit`) until target `index` of the first group has health `healthy`.
fn wait_health(running: &runtime::Running, index: usize, healthy: bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let group = &running.generation().groups[0];
    while Instant::now() < deadline {
        if group.targets[index].is_healthy() == healthy {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/quickstart.yaml");
    let config = config::load(&path)?;
    let listen = config.listeners[0].bind;
    let addrs: Vec<SocketAddr> = config.target_groups[0]
        .targets
        .iter()
        .map(|t| t.address)
        .collect();
    let mut backends = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        backends.push(Some(DemoBackend::start(i + 1, *addr).map_err(|e| {
            format!("cannot start demo backend on {addr}: {e} (is something else using it?)")
        })?));
    }
    println!("== three backends up on {addrs:?}; Ballast listening on {listen}");
    let running = runtime::start(config)?;

    println!("== 6 requests, round robin:");
    send(listen, 6);

    println!("== killing backend 2 ({})", addrs[1]);
    if let Some(b) = backends[1].take() {
        b.kill();
    }
    println!("== 6 requests right away (connects to backend 2 fail and are retried elsewhere):");
    send(listen, 6);
    if wait_health(&running, 1, false, Duration::from_secs(10)) {
        println!("== the health check now reports backend 2 unhealthy");
    }
    println!("== 6 requests:");
    send(listen, 6);

    println!("== restoring backend 2");
    backends[1] = Some(DemoBackend::start(2, addrs[1])?);
    if wait_health(&running, 1, true, Duration::from_secs(10)) {
        println!("== the health check reports backend 2 healthy again");
    }
    println!("== 6 requests:");
    send(listen, 6);

    running.stop();
    for b in backends.into_iter().flatten() {
        b.kill();
    }
    Ok(())
}
