//! A target group's `queue:` (HAProxy's `maxqueue` and `timeout queue`): connections that find
//! every target at its `max_connections` wait, accepted and held, in arrival order, and go to
//! a target the moment a place frees; past `queue.max` or `queue.timeout` they are reset and
//! counted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// A target that holds each connection `hold` (its work), then answers `ok` and closes,
/// counting how many it holds at once (the most in `peak`).
fn slow_target(hold: Duration) -> (Backend, Arc<AtomicUsize>) {
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, p) = (now.clone(), peak.clone());
    let backend = Backend::start(Arc::new(move |mut s: TcpStream| {
        // Counted once its client's byte is in (a health check's connect sends none).
        let mut byte = [0u8; 1];
        if s.read_exact(&mut byte).is_err() {
            return;
        }
        let held = n.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(held, Ordering::SeqCst);
        std::thread::sleep(hold);
        n.fetch_sub(1, Ordering::SeqCst);
        let _ = s.write_all(b"ok");
    }));
    (backend, peak)
}

/// Ballast over `target` at most 10 connections at once, with `queue`.
fn queued(target: &Backend, queue: &str) -> Ballast {
    Ballast::start(&format!(
        "workers: 2\nlisteners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', \
         target_group: g}}\ntarget_groups:\n  - name: g\n{NO_CHECKS}    queue: {queue}\n    \
         targets: [{{address: '{}', max_connections: 10}}]\n",
        target.addr
    ))
}

/// `n` clients at once, each sending a byte and reading to the end: how many read `ok`.
fn clients(addr: SocketAddr, n: usize) -> usize {
    std::thread::scope(|scope| {
        let all: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    let _ = s.write_all(b"x");
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    got == b"ok"
                })
            })
            .collect();
        all.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&ok| ok)
            .count()
    })
}

fn queue_metric(lb: &Ballast, name: &str, labels: &[(&str, &str)]) -> f64 {
    labelled(&scrape(lb.admin_addr()).0, name, labels).unwrap_or(-1.0)
}

/// 50 clients against a target limited to 10 at once, each held 200 ms: all 50 are served,
/// never more than 10 at the target, none refused; the waits show in `/metrics`.
#[test]
fn fifty_clients_wait_their_turn_for_ten_places() {
    let (target, peak) = slow_target(Duration::from_millis(200));
    let lb = queued(&target, "{max: 100, timeout: 10s}");
    assert_eq!(clients(lb.addr("l"), 50), 50);
    assert!(peak.load(Ordering::SeqCst) <= 10, "{peak:?} at once");
    let served = queue_metric(&lb, "ballast_target_group_queue_served_total", &[]);
    assert!(served >= 30.0, "{served} waited");
    let refused: f64 = ["full", "timeout"]
        .iter()
        .map(|r| {
            queue_metric(
                &lb,
                "ballast_target_group_queue_refused_total",
                &[("reason", r)],
            )
        })
        .sum();
    assert_eq!(refused, 0.0);
    let waited = queue_metric(&lb, "ballast_target_group_queue_wait_seconds_total", &[]);
    assert!(waited > 0.2, "{waited} s waited in all");
    assert_eq!(
        queue_metric(&lb, "ballast_target_group_queue_waiting", &[]),
        0.0
    );
}

/// With a 100 ms queue timeout and targets held 1 s, the 40 that cannot get a place in time
/// are reset and counted as timed out; with room for 5 in the queue, 35 are refused at once.
#[test]
fn the_overflow_is_refused_and_counted() {
    let (target, _) = slow_target(Duration::from_secs(1));
    let lb = queued(&target, "{max: 100, timeout: 100ms}");
    assert_eq!(clients(lb.addr("l"), 50), 10);
    let timeout = [("reason", "timeout")];
    assert_eq!(
        queue_metric(&lb, "ballast_target_group_queue_refused_total", &timeout),
        40.0
    );
    drop(lb);
    let lb = queued(&target, "{max: 5, timeout: 10s}");
    assert_eq!(
        clients(lb.addr("l"), 50),
        15,
        "10 at once, then the 5 that waited"
    );
    let full = [("reason", "full")];
    assert_eq!(
        queue_metric(&lb, "ballast_target_group_queue_refused_total", &full),
        35.0
    );
    assert_eq!(
        queue_metric(&lb, "ballast_target_group_queue_served_total", &[]),
        5.0
    );
}

/// A client that keeps its socket open after the target said goodbye and closed (a refused
/// login, say) holds no place: the target's `max_connections` counts it no more, and the
/// next clients are served at once, without waiting in the queue.
#[test]
fn a_client_that_never_closes_after_the_target_did_holds_no_place() {
    let bye = Backend::start(named("bye"));
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n{NO_CHECKS}    queue: {{max: 10, timeout: 500ms}}\n    \
         targets: [{{address: '{}', max_connections: 2}}]\n",
        bye.addr
    ));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb.addr("l")).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut line = [0u8; 4];
        s.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"bye\n");
        held.push(s); // open, for as long as the test runs
    }
    let active = || group_targets(lb.admin_addr(), "g")[0]["active"].as_u64();
    // At once, not when some timeout ends the connections.
    common::netns::wait_for("the places given back", Duration::from_secs(2), || {
        active() == Some(0)
    });
    for _ in 0..4 {
        assert_eq!(fetch(lb.addr("l")).unwrap(), "bye\n");
    }
    let timeout = [("reason", "timeout")];
    assert_eq!(
        queue_metric(&lb, "ballast_target_group_queue_refused_total", &timeout),
        0.0
    );
    drop(held);
}

/// A reload that removes `queue:` while clients wait: they wait no longer (reset at once, as
/// no queue will serve them in order and its metrics are gone), not until the old timeout.
#[test]
fn clients_waiting_in_a_queue_a_reload_removes_are_let_go() {
    let (target, _) = slow_target(Duration::from_secs(5));
    let yaml = |queue: &str| {
        format!(
            "listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', \
             target_group: g}}\ntarget_groups:\n  - name: g\n{NO_CHECKS}{queue}    \
             targets: [{{address: '{}', max_connections: 1}}]\n",
            target.addr
        )
    };
    let lb = Ballast::start(&yaml("    queue: {max: 10, timeout: 30s}\n"));
    let open = |n| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(lb.addr("l")).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                s.write_all(b"x").unwrap();
                s
            })
            .collect()
    };
    let held = open(1);
    wait_until("the one place taken", || {
        group_targets(lb.admin_addr(), "g")[0]["active"] == 1
    });
    let waiting = open(3);
    wait_until("three waiting", || {
        queue_metric(&lb, "ballast_target_group_queue_waiting", &[]) == 3.0
    });
    lb.rewrite_config(&yaml(""));
    let (status, body) = http(lb.admin_addr(), "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    for mut s in waiting {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty(), "{got:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "let go after {:?}",
        started.elapsed()
    );
    drop(held);
}

/// A target that refuses connects while its health check has not noticed yet: a client
/// whose connect it refused waits in the queue for the live target (full), instead of being
/// reset because the dead one is not full.
#[test]
fn a_refused_connect_waits_in_the_queue_for_the_live_target() {
    let (target, peak) = slow_target(Duration::from_millis(200));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let lb = Ballast::start(&format!(
        "workers: 1\nlisteners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', \
         target_group: g, retries: 2}}\ntarget_groups:\n  - name: g\n{NO_CHECKS}    \
         queue: {{max: 20, timeout: 10s}}\n    targets: [{{address: '{}', max_connections: 1}}, \
         {{address: '{dead_addr}', max_connections: 1}}]\n",
        target.addr
    ));
    assert_eq!(
        clients(lb.addr("l"), 4),
        4,
        "every client served by the live target"
    );
    assert!(peak.load(Ordering::SeqCst) <= 1);
}

/// A PostgreSQL client that gives up while queued (closes its side: psql's Ctrl-C) leaves the
/// queue at once and is never connected to the server.
#[test]
fn a_postgresql_client_that_leaves_the_queue_is_never_connected() {
    let (target, _) = slow_target(Duration::from_millis(1500));
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g, \
         postgres: {{routes: [{{database: d, target_group: g}}]}}}}\ntarget_groups:\n  - \
         name: g\n{NO_CHECKS}    queue: {{max: 10, timeout: 10s}}\n    \
         targets: [{{address: '{}', max_connections: 1}}]\n",
        target.addr
    ));
    let startup = {
        let body = b"\x00\x03\x00\x00user\0u\0database\0d\0\0";
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    };
    let open = || {
        let mut s = TcpStream::connect(lb.addr("l")).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&startup).unwrap();
        s
    };
    let held = open();
    wait_until("the one place taken", || {
        group_targets(lb.admin_addr(), "g")[0]["active"] == 1
    });
    let gone = open();
    wait_until("one waiting", || {
        queue_metric(&lb, "ballast_target_group_queue_waiting", &[]) == 1.0
    });
    gone.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("it left the queue", || {
        queue_metric(&lb, "ballast_target_group_queue_waiting", &[]) == 0.0
    });
    drop(held);
    wait_until("the held one done", || {
        group_targets(lb.admin_addr(), "g")[0]["active"] == 0
    });
    assert_eq!(
        group_targets(lb.admin_addr(), "g")[0]["total"],
        1,
        "never connected"
    );
}

/// A target that answers, then closes 10.5 s later (past the 10 s a client gets once the
/// target has ended its side): the connection ends `done`, not `idle`: the client's wait runs
/// from the target's close, not from its last byte.
#[test]
fn a_target_that_closes_long_after_its_answer_ends_done_not_idle() {
    let slow_bye = Backend::start(Arc::new(|mut s: TcpStream| {
        let _ = s.write_all(b"hi\n");
        std::thread::sleep(Duration::from_millis(10_500));
    }));
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n",
        slow_bye.addr
    ));
    let mut s = TcpStream::connect(lb.addr("l")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hi\n");
    drop(s);
    wait_until("the access log line", || lb.log().contains("reason="));
    let log = lb.log();
    let line = log.lines().find(|l| l.contains("reason=")).unwrap();
    assert!(line.ends_with("reason=done"), "{line}");
}
