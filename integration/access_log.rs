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

/// Two listeners in front of the same echo target: `a` and `b`.
fn two_listeners(access_log: &str, echo: &Backend) -> Ballast {
    Ballast::start(&format!(
        "workers: 2\naccess_log: {access_log}\nlisteners:\n\
         \x20 - {{name: a, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         \x20 - {{name: b, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n",
        echo.addr
    ))
}

/// `format: json` writes one JSON object per line; `listeners:` keeps only theirs.
#[test]
fn a_json_access_log_for_one_listener() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.json");
    let lb = two_listeners(
        &format!("{{to: '{}', format: json, listeners: [a]}}", path.display()),
        &echo,
    );
    for i in 0..3 {
        round_trip(lb.addr("b"), i); // not logged
        round_trip(lb.addr("a"), i);
    }
    // Each b connection ended before its a twin: were b logged, its lines would be among
    // the first.
    let text = wait_for_lines(&path, 3);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for v in &lines {
        assert_eq!(v["listener"], "a", "{v}");
        assert_eq!(v["target"], echo.addr.to_string());
        assert_eq!(
            (v["bytes_up"].as_u64(), v["reason"].as_str()),
            (Some(7), Some("done"))
        );
        assert_eq!(v["client_ip"], "127.0.0.1");
    }
}

/// `to: syslog`: RFC 5424 messages over a UNIX datagram socket (as /dev/log) or UDP, one per
/// connection, in the chosen format.
#[test]
fn the_access_log_goes_to_syslog_over_a_unix_socket_or_udp() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log.sock");
    let unix = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    unix.set_read_timeout(Some(WAIT)).unwrap();
    let lb = two_listeners(
        &format!(
            "{{to: syslog, syslog: {{address: '{}', facility: local3, tag: lb-edge}}, \
             format: '{{client}} -> {{target}} {{reason}}'}}",
            socket.display()
        ),
        &echo,
    );
    round_trip(lb.addr("a"), 0);
    let mut buf = [0u8; 2048];
    let n = unix.recv(&mut buf).expect("a syslog message");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    // <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG; local3.info = 19 * 8 + 6.
    let fields: Vec<&str> = message.splitn(8, ' ').collect();
    assert_eq!(fields[0], "<158>1", "{message}");
    assert_eq!(fields[3], "lb-edge", "{message}");
    assert_eq!(fields[4], lb.pid().to_string(), "{message}");
    assert!(
        fields[7].starts_with("127.0.0.1:")
            && fields[7].ends_with(&format!(" -> {} done", echo.addr)),
        "{message}"
    );
    drop(lb);

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(WAIT)).unwrap();
    let lb = two_listeners(
        &format!(
            "{{to: syslog, syslog: {{address: '{}'}}}}",
            udp.local_addr().unwrap()
        ),
        &echo,
    );
    round_trip(lb.addr("b"), 1);
    let n = udp.recv(&mut buf).expect("a syslog datagram");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        message.starts_with("<134>1 "),
        "local0.info by default: {message}"
    );
    assert!(message.contains(" ballast "), "{message}");
    assert!(
        message.contains(" tcp listener=b client=127.0.0.1:"),
        "logfmt: {message}"
    );
}

/// A syslog socket nobody listens on is refused at start (exit 2) and by `check`.
#[test]
fn an_unreachable_syslog_socket_is_refused_at_start() {
    let echo = Backend::start(echo());
    let yaml = format!(
        "access_log: {{to: syslog, syslog: {{address: /nonexistent/log.sock}}}}\n{}",
        config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS)
    );
    let stderr = run_refused(&yaml);
    assert!(
        stderr.contains("syslog unix:/nonexistent/log.sock"),
        "{stderr}"
    );
}

/// A syslog daemon that stops reading never holds Ballast: forwarding goes on, lines are
/// dropped and counted, and SIGTERM still stops it at once. A daemon restarted on the same
/// socket gets lines again without a SIGUSR1.
#[test]
fn a_syslog_daemon_that_stalls_or_restarts_never_holds_ballast() {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log.sock");
    let stalled = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    let mut lb = two_listeners(
        &format!(
            "{{to: syslog, syslog: {{address: '{}'}}}}",
            socket.display()
        ),
        &echo,
    );
    // The kernel queues a handful of datagrams for a reader that never reads.
    for i in 0..200 {
        round_trip(lb.addr("a"), i);
    }
    let admin = lb.admin_addr();
    wait_metric(
        admin,
        "ballast_access_log_dropped_lines_total",
        &[],
        WAIT,
        |v| v > 0.0,
    );
    // The daemon restarts: a new socket at the same path. Lines reach it again.
    drop(stalled);
    std::fs::remove_file(&socket).unwrap();
    let fresh = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut i = 0;
    wait_until("a line at the restarted daemon", || {
        round_trip(lb.addr("b"), i);
        i += 1;
        fresh.recv(&mut buf).is_ok()
    });
    assert!(String::from_utf8_lossy(&buf).contains("listener=b"));
    // A stalled daemon again, then SIGTERM: the process ends promptly.
    for i in 0..100 {
        round_trip(lb.addr("a"), i);
    }
    let asked = Instant::now();
    lb.terminate();
    assert!(lb.wait_exit(WAIT).is_some(), "still running after SIGTERM");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
}

/// Round trips through listener `a` of `lb` (numbered from `i`, `batch` between looks) until
/// `/metrics` counts dropped access-log lines; returns the next number.
fn until_lines_dropped(lb: &Ballast, mut i: usize, batch: usize, what: &str) -> usize {
    let admin = lb.admin_addr();
    wait_until(what, || {
        for _ in 0..batch {
            round_trip(lb.addr("a"), i);
            i += 1;
        }
        labelled(
            &scrape(admin).0,
            "ballast_access_log_dropped_lines_total",
            &[],
        )
        .is_some_and(|v| v > 0.0)
    });
    i
}

/// An echo target, and Ballast logging to a syslog daemon listening on a UNIX stream socket
/// (`log.sock` in the directory returned).
fn behind_a_stream_daemon() -> (
    Backend,
    tempfile::TempDir,
    std::os::unix::net::UnixListener,
    Ballast,
) {
    let echo = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let daemon = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let lb = two_listeners(
        &format!("{{to: syslog, syslog: {{address: '{}'}}}}", path.display()),
        &echo,
    );
    (echo, dir, daemon, lb)
}

/// A syslog daemon on a UNIX *stream* socket (rsyslog can listen so): lines arrive NUL-ended;
/// a daemon that stops reading costs dropped lines, never a stalled stop; one that closes
/// the connection gets a new one; one whose listen backlog is full is refused at start at
/// once instead of holding it.
#[test]
fn a_syslog_daemon_on_a_stream_socket_never_holds_ballast() {
    use std::io::Read;
    let (echo, dir, daemon, mut lb) = behind_a_stream_daemon();
    let path = dir.path().join("log.sock");
    let (mut reading, _) = daemon.accept().unwrap();
    reading.set_read_timeout(Some(WAIT)).unwrap();
    round_trip(lb.addr("a"), 0);
    let mut got = Vec::new();
    while !got.contains(&0u8) {
        let mut buf = [0u8; 4096];
        let n = reading.read(&mut buf).expect("a syslog message");
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let message = String::from_utf8_lossy(&got);
    assert!(message.contains(" tcp listener=a "), "{message}");

    // The daemon closes: Ballast connects again and lines flow on the new connection.
    drop(reading);
    let mut i = 1;
    daemon.set_nonblocking(true).unwrap();
    let mut again = None;
    wait_until("a new connection from Ballast", || {
        round_trip(lb.addr("b"), i);
        i += 1;
        again = daemon.accept().ok().map(|(s, _)| s);
        again.is_some()
    });
    let stalled = again.unwrap();
    // Now the daemon stops reading: its socket buffer fills, writes time out, lines are
    // dropped and counted while forwarding goes on.
    stalled.set_nonblocking(false).unwrap();
    i = until_lines_dropped(&lb, i, 200, "lines dropped at a stalled stream");
    // Lines still queued for the stalled daemon: SIGTERM ends the process promptly.
    for _ in 0..2000 {
        round_trip(lb.addr("a"), i);
        i += 1;
    }
    let asked = Instant::now();
    lb.terminate();
    assert!(lb.wait_exit(WAIT).is_some(), "still running after SIGTERM");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    drop(stalled);
    drop(daemon);

    // A daemon whose listen backlog is full: start is refused with the reason, at once.
    std::fs::remove_file(&path).unwrap();
    let full = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    full.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
    full.listen(0).unwrap();
    let mut waiting = Vec::new();
    loop {
        let c = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        if c.connect(&socket2::SockAddr::unix(&path).unwrap()).is_err() {
            break;
        }
        waiting.push(c);
        assert!(waiting.len() < 64, "the backlog never filled");
    }
    let stderr = run_refused(&format!(
        "access_log: {{to: syslog, syslog: {{address: '{}'}}}}\n{}",
        path.display(),
        config("round_robin", &[(echo.addr, 1)], "", NO_CHECKS)
    ));
    assert!(stderr.contains("listen backlog is full"), "{stderr}");
}

/// A syslog daemon on a stream socket that reads, but slowly (a few KiB every 300 ms: every
/// write makes a little progress, so no write ever times out) never holds a stop: past a
/// second the lines still queued are dropped, counted.
#[test]
fn a_slow_syslog_daemon_never_holds_a_stop() {
    use std::io::Read;
    let (_echo, _dir, daemon, mut lb) = behind_a_stream_daemon();
    let (mut slow, _) = daemon.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 3000];
        // The daemon's pace, not a wait for anything: it ends when Ballast closes.
        while slow.read(&mut buf).is_ok_and(|n| n > 0) {
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    until_lines_dropped(&lb, 0, 500, "lines queued behind the slow daemon");
    let asked = Instant::now();
    lb.terminate();
    assert!(lb.wait_exit(WAIT).is_some(), "still running after SIGTERM");
    // About a second of writing, then the rest dropped (not the 3 s backstop that leaves a
    // blocked writer behind).
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        !lb.log().contains("writer is still blocked"),
        "{}",
        lb.log()
    );
    reader.join().unwrap();
}
