//! Bounded waits: every wait in these tests ends by [`WAIT`].

use std::time::{Duration, Instant};

/// Longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded by [`WAIT`]) until `cond` holds; panics naming `what` otherwise. For
/// states no event announces (a file's contents, an fd count), so it polls.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_state(what, WAIT, &mut cond, |held| *held);
}

/// Polls `look` every 10 ms until `done` accepts what it returns, at most `timeout`; returns
/// that. On timeout, panics naming `what` and the last thing `look` returned. For state the
/// admin API, `/metrics` or the kernel shows (see `admin.rs`'s `wait_target`, `wait_metric`),
/// rather than log lines, whose wording is for people.
#[track_caller]
pub fn wait_state<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut look: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = look();
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last seen: {seen:?}"
        );
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

/// `addr` (IPv4) as the kernel's socket tables (`/proc/net/tcp`, `/proc/net/udp`) write it:
/// the address as the in-memory u32 in hex (little-endian here), then the port.
pub fn proc_net_address(addr: std::net::SocketAddr) -> String {
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 addresses only: {addr}");
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    )
}

/// The rows of a kernel socket table (`/proc/net/udp`, `/proc/PID/net/tcp`…), split into
/// fields: 1 the local address, 2 the remote one, 3 the state, 9 the inode.
pub fn proc_net_rows(table: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(table)
        .unwrap_or_else(|e| panic!("{table}: {e}"))
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Whether the kernel's socket table (`/proc/net/tcp` or `/proc/net/udp` of this network
/// namespace) has a socket bound to `addr` (IPv4), listening if TCP: whoever holds it (a
/// service manager binding for socket activation, say).
pub fn socket_bound(addr: std::net::SocketAddr, udp: bool) -> bool {
    let local = proc_net_address(addr);
    let table = if udp {
        "/proc/net/udp"
    } else {
        "/proc/net/tcp"
    };
    // State 0A is TCP_LISTEN; a bound UDP socket has no other state to wait for.
    proc_net_rows(table)
        .iter()
        .any(|f| f.len() > 3 && f[1] == local && (udp || f[3] == "0A"))
}
