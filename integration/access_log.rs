//! The access log never stalls forwarding, and reopens its file on SIGUSR1 (logrotate).

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

fn round_trip(addr: std::net::SocketAddr, i: usize) {
    let mut s = client(addr);
    let msg = format!("hello {i}");
    s.write_all(msg.as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn sigusr1_reopens_the_access_log_file() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {}\n{}",
        path.display(),
        config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS)
    );
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("l");
    round_trip(addr, 0);
    round_trip(addr, 1);
    wait_for_lines(&path, 2);
    // logrotate: rename, then signal.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let mark = lb.log_len();
    lb.signal(libc::SIGUSR1);
    lb.wait_log_after("SIGUSR1: reopening the access log", mark, WAIT);
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
    let yaml = format!(
        "access_log: {}\n{}",
        fifo.display(),
        config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS)
    );
    let lb = Ballast::start(&yaml);
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
