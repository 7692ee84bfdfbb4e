//! Bounded waits: every wait in these tests ends by [`WAIT`].

use std::time::{Duration, Instant};

/// Longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded by [`WAIT`]) until `cond` holds; panics naming `what` otherwise. For
/// states no event announces (a file's contents, an fd count), so it polls.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The file at `path` once it has at least `lines` lines (bounded wait; the access log is
/// written once per event-loop turn).
pub fn wait_for_lines(path: &std::path::Path, lines: usize) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    wait_until(&format!("{lines} lines in {}", path.display()), || {
        read().lines().count() >= lines
    });
    read()
}

/// Waits (bounded) until something accepts on `addr`.
pub fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
