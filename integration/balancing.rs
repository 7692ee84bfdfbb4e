//! Balancing algorithms end to end: which target real connections land on.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

fn counts(conns: &[(TcpStream, String)]) -> [usize; 3] {
    let mut c = [0; 3];
    for (_, name) in conns {
        c[["a", "b", "c"].iter().position(|n| n == name).unwrap()] += 1;
    }
    c
}

#[test]
fn least_connections_fills_the_target_that_lost_connections() {
    let (a, b, c) = (
        Backend::start(named_echo("a")),
        Backend::start(named_echo("b")),
        Backend::start(named_echo("c")),
    );
    let yaml = config(
        "least_connections",
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        "",
        NO_CHECKS,
    );
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("l");
    let mut conns: Vec<(TcpStream, String)> = (0..90).map(|_| open_named(addr)).collect();
    let spread = counts(&conns);
    assert!(
        spread.iter().max().unwrap() - spread.iter().min().unwrap() <= 1,
        "90 long-lived connections: {spread:?}"
    );
    // Close 20 of a's connections. Each close is complete once the client reads EOF: Ballast
    // passes the target's EOF on by closing the client socket, after updating its counts.
    let mut closed = 0;
    conns.retain_mut(|(s, name)| {
        if name == "a" && closed < 20 {
            closed += 1;
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("EOF after the close");
            false
        } else {
            true
        }
    });
    // The next 20 must all go to a, the least loaded.
    let fresh: Vec<(TcpStream, String)> = (0..20).map(|_| open_named(addr)).collect();
    assert_eq!(counts(&fresh), [20, 0, 0], "new connections went elsewhere");
    conns.extend(fresh);
    let spread = counts(&conns);
    assert_eq!(spread, [30, 30, 30], "{spread:?}");
}

/// All of one client's connections land on one target, and all move together to one other
/// target when it dies; `extra` is the group's algorithm settings.
fn client_stays_together(algorithm: &str, extra: &str) {
    let mut backends: Vec<Backend> = ["a", "b", "c"]
        .into_iter()
        .map(|n| Backend::start(named_echo(n)))
        .collect();
    let health = format!(
        "{extra}    health_check: {{protocol: tcp, interval: 200ms, timeout: 100ms, \
         unhealthy_threshold: 1}}\n"
    );
    let targets: Vec<(SocketAddr, u32)> = backends.iter().map(|b| (b.addr, 1)).collect();
    let lb = Ballast::start(&config(algorithm, &targets, "", &health));
    let addr = lb.addr("l");
    let names: Vec<String> = (0..30).map(|_| open_named(addr).1).collect();
    assert!(
        names.iter().all(|n| *n == names[0]),
        "{algorithm}: {names:?}"
    );
    let first = ["a", "b", "c"].iter().position(|n| *n == names[0]).unwrap();
    let dead = backends[first].addr;
    backends[first].stop();
    wait_health(lb.admin_addr(), "g", dead, "unhealthy");
    let names: Vec<String> = (0..30).map(|_| open_named(addr).1).collect();
    assert!(
        names.iter().all(|n| *n == names[0]),
        "{algorithm} after a death: {names:?}"
    );
    assert_ne!(names[0], ["a", "b", "c"][first]);
}

#[test]
fn source_hash_keeps_a_client_on_one_target() {
    client_stays_together("source_hash", "");
}

#[test]
fn maglev_by_source_ip_keeps_a_client_on_one_target() {
    client_stays_together("maglev", "    hash_key: source_ip\n");
}

#[test]
fn maglev_by_five_tuple_spreads_one_clients_connections() {
    let backends: Vec<Backend> = ["a", "b", "c"]
        .into_iter()
        .map(|n| Backend::start(named_echo(n)))
        .collect();
    let targets: Vec<(SocketAddr, u32)> = backends.iter().map(|b| (b.addr, 1)).collect();
    let lb = Ballast::start(&config("maglev", &targets, "", NO_CHECKS));
    let addr = lb.addr("l");
    let conns: Vec<(TcpStream, String)> = (0..90).map(|_| open_named(addr)).collect();
    let spread = counts(&conns);
    // Each connection's 5-tuple differs (its port): 90 hash to all three, near evenly.
    assert!(spread.iter().all(|&c| c >= 15), "{spread:?}");
}

#[test]
fn stickiness_keeps_a_client_on_its_target_until_it_turns_unhealthy() {
    // round_robin alone would spread the client's connections over all three.
    client_stays_together(
        "round_robin",
        "    stickiness: {timeout: 1m, max_entries: 1000}\n",
    );
}

#[test]
fn slow_start_ramps_a_returning_targets_share_up() {
    let a = Backend::start(named_echo("a"));
    let b_addr = free_addr();
    let health = "    slow_start: 2s\n    health_check: {protocol: tcp, interval: 100ms, \
                  timeout: 50ms, healthy_threshold: 1, unhealthy_threshold: 1}\n";
    let lb = Ballast::start(&config(
        "round_robin",
        &[(a.addr, 1), (b_addr, 1)],
        "",
        health,
    ));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    wait_health(admin, "g", b_addr, "unhealthy");
    let _b = Backend::start_on(b_addr, named_echo("b"));
    wait_health(admin, "g", b_addr, "healthy");
    let t0 = std::time::Instant::now();
    // b's share per 0.5 s window over the 2 s ramp (and a little after).
    let mut windows = [(0usize, 0usize); 5];
    while t0.elapsed() < std::time::Duration::from_millis(2500) {
        let w = (t0.elapsed().as_millis() / 500) as usize;
        let (s, name) = open_named(addr);
        drop(s);
        if w < windows.len() {
            windows[w].0 += usize::from(name == "b");
            windows[w].1 += 1;
        }
    }
    let shares: Vec<f64> = windows
        .iter()
        .map(|(b, n)| *b as f64 / (*n).max(1) as f64)
        .collect();
    for pair in shares.windows(2).take(3) {
        assert!(pair[0] < pair[1], "b's share did not rise: {shares:?}");
    }
    assert!(
        shares[0] < 0.2,
        "b started with too big a share: {shares:?}"
    );
    assert!(
        shares[4] > 0.4,
        "b did not reach its full share: {shares:?}"
    );
}

/// Reads a request line, waits `delay`, answers with its name and closes.
fn delayed(name: &'static str, delay_ms: u64) -> Handler {
    Arc::new(move |s: TcpStream| {
        let mut line = String::new();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        if reader.read_line(&mut line).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms)); // the slow target itself
        let _ = (&s).write_all(format!("{name}\n").as_bytes());
    })
}

#[test]
fn least_response_time_prefers_the_fast_target() {
    let fast = Backend::start(delayed("fast", 0));
    let slow = Backend::start(delayed("slow", 50));
    let lb = Ballast::start(&config(
        "least_response_time",
        &[(fast.addr, 1), (slow.addr, 1)],
        "",
        NO_CHECKS,
    ));
    let addr = lb.addr("l");
    let mut fast_count = 0;
    for _ in 0..60 {
        let mut s = client(addr);
        s.write_all(b"ping\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        fast_count += usize::from(answer.trim() == "fast");
    }
    assert!(
        fast_count >= 50,
        "only {fast_count} of 60 went to the fast target"
    );
}

#[test]
fn full_targets_are_skipped_and_clients_wait_when_all_are_full() {
    let a = Backend::start(named_echo("a"));
    let b = Backend::start(named_echo("b"));
    let yaml = format!(
        "workers: 2\nlisteners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n    algorithm: round_robin\n{NO_CHECKS}    targets:\n\
         \x20     - {{address: '{}', max_connections: 2}}\n\
         \x20     - {{address: '{}', max_connections: 1}}\n",
        a.addr, b.addr
    );
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("l");
    let mut open_conns: Vec<(TcpStream, String)> = (0..3).map(|_| open_named(addr)).collect();
    let names: Vec<&str> = open_conns.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "a").count(), 2, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "b").count(), 1, "{names:?}");
    // The fourth is left in the backlog: connected by the kernel, not served.
    let fourth = client(addr);
    fourth
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut reader = BufReader::new(fourth.try_clone().unwrap());
    let mut line = String::new();
    assert!(
        reader.read_line(&mut line).is_err(),
        "served past every max_connections: {line}"
    );
    // b's connection ends; the fourth is accepted and goes to b.
    let pos = open_conns.iter().position(|(_, n)| n == "b").unwrap();
    let (mut s, _) = open_conns.remove(pos);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.read_to_end(&mut Vec::new()).unwrap();
    fourth.set_read_timeout(Some(WAIT)).unwrap();
    reader.read_line(&mut line).expect("served once b had room");
    assert_eq!(line.trim(), "b");
}
