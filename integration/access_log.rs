//! The access log never stalls forwarding, and reopens its file on SIGUSR1 (logrotate).

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// Ballast in front of `echo` with its access log at `path`.
fn start_logging_to(path: &std::path::Path, echo: &Backend) -> Ballast {
    Ballast::start(&format!(
        "access_log: {}\n{}",
        path.display(),
        config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS)
    ))
}

fn round_trip(addr: std::net::SocketAddr, i: usize) {
    let msg = format!("hello {i}");
    assert_eq!(echo_once(addr, msg.as_bytes()), msg.as_bytes());
}

#[test]
fn sigusr1_reopens_the_access_log_file() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let lb = start_logging_to(&path, &echo);
    let addr = lb.addr("l");
    round_trip(addr, 0);
    round_trip(addr, 1);
    wait_for_lines(&path, 2);
    // logrotate: rename, then signal.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    lb.signal(libc::SIGUSR1);
    // The writer thread has reopened the file once one is at the path again: it creates it,
    // and nothing else does.
    wait_until("the access log reopened at its path", || path.exists());
    round_trip(addr, 2);
    let fresh = wait_for_lines(&path, 1);
    assert_eq!(fresh.lines().count(), 1, "{fresh}");
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        2
    );
}

#[test]
fn an_access_log_nobody_reads_never_stalls_forwarding() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A reader that never reads: Ballast's open succeeds, then the pipe (64 KiB) fills.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let lb = start_logging_to(&fifo, &echo);
    let addr = lb.addr("l");
    // ~150 bytes a line: 3,000 lines are several times what the pipe holds.
    let started = Instant::now();
    for i in 0..3000 {
        round_trip(addr, i);
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "forwarding slowed to {:?}",
        started.elapsed()
    );
    let admin = lb.admin_addr();
    wait_until("dropped lines counted", || {
        scrape(admin).0.samples.iter().any(|s| {
            s.metric == "ballast_access_log_dropped_lines_total"
                && matches!(
                    s.value,
                    prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n)
                        if n > 0.0
                )
        })
    });
}

#[test]
fn access_log_has_a_line_per_finished_connection() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let lb = start_logging_to(&path, &echo);
    let addr = lb.addr("l");
    for i in 0..5u8 {
        echo_once(addr, &vec![i; 100 + usize::from(i)]);
    }
    let text = wait_for_lines(&path, 5);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    for i in 0..5 {
        let want = format!("bytes_up={} bytes_down={} retries=0", 100 + i, 100 + i);
        assert!(
            lines.iter().any(|l| l.contains(&want)),
            "no line with {want}: {text}"
        );
    }
    for l in &lines {
        assert!(l.contains(" tcp listener=l client=127.0.0.1:"), "{l}");
        assert!(l.contains(" retries=0 connect_ms="), "{l}");
        assert!(l.contains(&format!("target={}", echo.addr)), "{l}");
    }
}

/// A connection that reached its target only after a refused one says so: `retries=1`, and
/// the time until a target accepted (`connect_ms`); one that went straight there, `retries=0`.
#[test]
fn access_log_lines_count_retries_and_time_to_connect() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    // Round robin over a refusing target and a live one: connections try the refusing one
    // first at least half the time (its single failed check leaves it healthy: threshold 3).
    let lb = Ballast::start(&format!(
        "access_log: {}\n{}",
        path.display(),
        config(
            "round_robin",
            &[(dead_addr(), 1), (echo.addr, 1)],
            "",
            NO_CHECKS
        )
    ));
    let addr = lb.addr("l");
    for i in 0..4 {
        round_trip(addr, i);
    }
    let text = wait_for_lines(&path, 4);
    let connect_ms = |l: &str| -> f64 {
        let v = l.split(" connect_ms=").nth(1).unwrap().split(' ').next();
        v.unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("connect_ms in {l}"))
    };
    let retried = text.lines().filter(|l| l.contains(" retries=1 ")).count();
    let direct = text.lines().filter(|l| l.contains(" retries=0 ")).count();
    assert!(retried >= 2 && retried + direct == 4, "{text}");
    for l in text.lines() {
        assert!(l.contains(&format!("target={}", echo.addr)), "{l}");
        assert!(l.ends_with("reason=done"), "{l}");
        assert!((0.0..1000.0).contains(&connect_ms(l)), "{l}");
    }
}
