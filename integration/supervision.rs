//! Supervised threads: a worker, the prober or an admin handler that panics is replaced (or
//! caught), counted in `/metrics`, and the service goes on. Panics are injected through the
//! debug-only `POST /debug/panic/...` endpoint (tests run debug builds).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use common::*;

const FAST_CHECKS: &str = "    health_check: {protocol: tcp, interval: 100ms, timeout: 100ms, \
                           healthy_threshold: 1, unhealthy_threshold: 1}\n";

fn restarts(admin: std::net::SocketAddr, thread: &str) -> f64 {
    sample(
        &scrape(admin).0,
        "ballast_thread_restarts_total",
        "thread",
        thread,
    )
    .unwrap_or(-1.0)
}

fn active(admin: std::net::SocketAddr) -> (f64, f64) {
    let (s, _) = scrape(admin);
    (
        sample(&s, "ballast_listener_active", "listener", "l").unwrap_or(-1.0),
        s.samples
            .iter()
            .filter(|x| x.metric == "ballast_target_active")
            .map(|x| match x.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => 0.0,
            })
            .sum(),
    )
}

#[test]
fn a_worker_that_panics_is_replaced_and_the_others_finish_their_streams() {
    let echo = Backend::start(echo());
    let lb = Ballast::start(&config("round_robin", &[(echo.addr, 1)], "", FAST_CHECKS));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    // 20 open streams, spread by the kernel over both workers.
    let mut streams: Vec<TcpStream> = (0..20).map(|_| client(addr)).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(format!("before {i}\n").as_bytes()).unwrap();
        let mut buf = vec![0u8; format!("before {i}\n").len()];
        s.read_exact(&mut buf).unwrap();
    }
    let (status, body) = http(admin, "POST", "/debug/panic/worker/0", None, "");
    assert_eq!(status, 202, "{body}");
    wait_restarts(admin, "worker", 1.0);
    // Streams on worker 1 go on to a whole, clean end; those on worker 0 were reset, never
    // ended cleanly with bytes missing.
    let (mut whole, mut reset) = (0, 0);
    for (i, mut s) in streams.into_iter().enumerate() {
        let msg = format!("after {i}\n");
        let sent = s
            .write_all(msg.as_bytes())
            .and_then(|()| s.shutdown(Shutdown::Write));
        let mut got = Vec::new();
        match (sent, s.read_to_end(&mut got)) {
            (Ok(()), Ok(_)) => {
                assert_eq!(
                    got,
                    msg.as_bytes(),
                    "stream {i} ended cleanly with wrong bytes"
                );
                whole += 1;
            }
            _ => reset += 1,
        }
    }
    assert!(whole >= 1 && reset >= 1, "whole {whole}, reset {reset}");
    // New connections are served, by both workers (the new one has fresh sockets).
    for i in 0..40 {
        let mut s = client(addr);
        s.write_all(b"new").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "new", "connection {i} after the restart");
    }
    // Counts held by the dead worker were given back.
    wait_until("active counts back to zero", || active(admin) == (0.0, 0.0));
    assert!(lb.log().contains("worker_restart") || reset == 0);
}

#[test]
fn a_single_worker_that_panics_is_replaced_and_serves_again() {
    let echo = Backend::start(named_echo("a"));
    let yaml = config("round_robin", &[(echo.addr, 1)], "", FAST_CHECKS)
        .replace("workers: 2", "workers: 1");
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    assert_eq!(open_named(addr).1, "a");
    assert_eq!(
        http(admin, "POST", "/debug/panic/worker/0", None, "").0,
        202
    );
    wait_restarts(admin, "worker", 1.0);
    for _ in 0..5 {
        assert_eq!(open_named(addr).1, "a");
    }
    assert_eq!(restarts(admin, "worker"), 1.0);
    assert_eq!(
        http(admin, "POST", "/debug/panic/worker/7", None, "").0,
        404
    );
}

#[test]
fn a_prober_that_panics_restarts_and_health_still_flips() {
    let mut target = Backend::start(named("a"));
    let lb = Ballast::start(&config("round_robin", &[(target.addr, 1)], "", FAST_CHECKS));
    let admin = lb.admin_addr();
    assert_eq!(http(admin, "POST", "/debug/panic/prober", None, "").0, 202);
    wait_restarts(admin, "prober", 1.0);
    target.stop();
    wait_until("the stopped target turns unhealthy", || {
        let (_, body) = http(admin, "GET", "/targets", None, "");
        body.contains("\"health\":\"unhealthy\"")
    });
}

#[test]
fn an_admin_handler_that_panics_costs_one_request_only() {
    let target = Backend::start(named("a"));
    let lb = Ballast::start(&config("round_robin", &[(target.addr, 1)], "", FAST_CHECKS));
    let admin = lb.admin_addr();
    let answered = try_http(admin, "POST", "/debug/panic/admin", None, "");
    assert!(
        answered.as_ref().map_or(true, |(status, _)| *status == 500),
        "{answered:?}"
    );
    assert_eq!(http(admin, "GET", "/livez", None, "").0, 200);
    assert_eq!(restarts(admin, "admin"), 1.0);
}
