//! Floods of unanswered UDP flows (issue 23): on the default limits, and pinned to one worker.
//! The flood's sources are fresh sockets on 127.0.0.x (loopback takes any 127/8 source), one
//! datagram each, to a target that answers only `legit` datagrams, so their sessions stay
//! unreplied as a spoofed flood's would.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The open-file limit Ballast runs under here: small, so the flood reaches it quickly.
const FD_LIMIT: u64 = 4096;

/// A target that echoes datagrams starting with `legit` and ignores everything else.
fn legit_only() -> UdpHandler {
    Arc::new(|d: &[u8], _| d.starts_with(b"legit").then(|| d.to_vec()))
}

/// Sends `what` from `s` (connected to the listener) until its echo comes back, again after
/// each `every` without it, for at most `within`; whether it came back.
fn ask(s: &UdpSocket, what: &[u8], every: Duration, within: Duration) -> bool {
    s.set_read_timeout(Some(every)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    while started.elapsed() < within {
        s.send(what).unwrap();
        let asked = Instant::now();
        // Stale echoes of earlier tries are skipped.
        while asked.elapsed() < every {
            match s.recv(&mut buf) {
                Ok(n) if &buf[..n] == what => return true,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    false
}

/// A socket on `127.0.0.{host}` with a fresh port, connected to `addr`.
fn source(host: u8, addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(("127.0.0.".to_string() + &host.to_string(), 0)).unwrap();
    s.connect(addr).unwrap();
    s
}

/// Sends `total` datagrams to `addr` at `rate` per second, each from a new socket (a new
/// flow), counting them in `sent`.
fn flood(addr: SocketAddr, total: usize, rate: f64, sent: &AtomicUsize) {
    let started = Instant::now();
    for i in 0..total {
        // Sources 127.0.0.10 to 127.0.0.249, so no two flows share a 4-tuple for long.
        let s = source(10 + (i % 240) as u8, addr);
        let _ = s.send(b"flood"); // the kernel may drop what overflows a buffer
        sent.store(i + 1, Ordering::Relaxed);
        if i % 100 == 99 {
            // Paced: no faster than `rate` (a rate, not a wait for anything).
            let due = started + Duration::from_secs_f64((i + 1) as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_flood_on_the_default_limits_keeps_descriptors_low_and_flows_served() {
    let target = UdpBackend::start(legit_only());
    // Every udp key at its default.
    let yaml = udp_config(&[target.addr], "", "");
    let lb = Ballast::start_with(&yaml, "info", Some(FD_LIMIT));
    let (addr, admin, pid) = (lb.addr("l"), lb.admin_addr(), lb.pid());
    let established = udp_client(addr);
    let every = Duration::from_millis(300);
    assert!(
        ask(&established, b"legit 0", every, WAIT),
        "no answer before the flood"
    );

    const TOTAL: usize = 30_000;
    let sent = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let (peak, (asked, answered), newcomer) = std::thread::scope(|scope| {
        let flooder = scope.spawn(|| {
            flood(addr, TOTAL, 10_000.0, &sent);
            done.store(true, Ordering::Release);
        });
        let watcher = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Acquire) {
                peak = peak.max(fds(pid));
                std::thread::sleep(Duration::from_millis(20)); // a sampling period
            }
            peak
        });
        // The established flow: one request at a time, each given a second.
        let talker = scope.spawn(|| {
            let (mut asked, mut answered) = (0, 0);
            established
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Acquire) {
                asked += 1;
                let what = format!("legit {asked}");
                established.send(what.as_bytes()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline {
                    match established.recv(&mut buf) {
                        Ok(n) if &buf[..n] == what.as_bytes() => {
                            answered += 1;
                            break;
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(5)); // the flow's own pace
            }
            (asked, answered)
        });
        // A new flow, started once two thirds of the flood have been sent.
        wait_until("two thirds of the flood sent", || {
            sent.load(Ordering::Relaxed) >= TOTAL * 2 / 3
        });
        let newcomer = ask(
            &udp_client(addr),
            b"legit newcomer",
            every,
            Duration::from_secs(2),
        );
        flooder.join().unwrap();
        (watcher.join().unwrap(), talker.join().unwrap(), newcomer)
    });
    let evicted = sample(
        &scrape(admin).0,
        "ballast_listener_evicted_sessions_total",
        "listener",
        "l",
    );
    eprintln!(
        "peak descriptors {peak} of {FD_LIMIT}; established flow answered {answered} of {asked}; \
         new flow served: {newcomer}; evicted {evicted:?}"
    );
    assert!(
        peak <= FD_LIMIT as usize / 4,
        "Ballast held {peak} descriptors (limit {FD_LIMIT})"
    );
    assert!(newcomer, "a new flow during the flood was not served");
    assert!(
        answered * 100 >= asked * 95,
        "the established flow got {answered} of {asked} replies"
    );
    assert!(
        evicted.is_some_and(|e| e >= (TOTAL / 2) as f64),
        "the flood did not reach the table: evicted {evicted:?}"
    );
    // The flood's sessions are summarised, not written to the access log one by one.
    let log = lb.log();
    let lines = log.matches("reason=evicted").count();
    assert_eq!(
        lines, 0,
        "{lines} access-log lines for evicted flooding sessions"
    );
    assert!(
        log.contains("unanswered sessions to make room"),
        "no summary of the evictions"
    );
}

/// Each UDP session's client and the worker holding it, from `/connections`.
fn session_workers(admin: SocketAddr) -> HashMap<SocketAddr, u64> {
    get_json(admin, "/connections?limit=10000")["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["protocol"] == "udp")
        .map(|c| {
            (
                c["client"].as_str().unwrap().parse().unwrap(),
                c["worker"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_flood_pinned_to_one_worker_leaves_new_flows_on_the_other_served() {
    let target = UdpBackend::start(legit_only());
    // Two workers (udp_config's), a shared bound of 100, and unanswered sessions that end
    // 1s after their last datagram (so sources found below free their places quickly).
    let yaml = udp_config(
        &[target.addr],
        "max_sessions: 100, unreplied_timeout: 1s",
        "",
    );
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());

    // Which worker a flow lands on is the kernel's SO_REUSEPORT hash of its 4-tuple: find
    // sources for each worker by sending from fresh sockets, 40 at a time (well under the
    // bound), and reading where their sessions are.
    let mut by_worker: [Vec<UdpSocket>; 2] = [Vec::new(), Vec::new()];
    for round in 0.. {
        if by_worker[0].len() >= 150 && by_worker[1].len() >= 10 {
            break;
        }
        assert!(round < 30, "30 rounds did not find the sources");
        let fresh: Vec<UdpSocket> = (0..40).map(|_| source(2, addr)).collect();
        let mut found = HashMap::new();
        wait_until("the round's sessions are listed", || {
            for s in &fresh {
                // Again for any not listed yet (a datagram lost on a loaded loopback).
                if !found.contains_key(&s.local_addr().unwrap()) {
                    s.send(b"probe").unwrap();
                }
            }
            let listed = session_workers(admin);
            for s in &fresh {
                let client = s.local_addr().unwrap();
                if let Some(&w) = listed.get(&client) {
                    found.insert(client, w);
                }
            }
            found.len() == fresh.len()
        });
        for s in fresh {
            let w = found[&s.local_addr().unwrap()] as usize;
            by_worker[w].push(s);
        }
    }
    let [on_0, on_1] = by_worker;
    let others: Vec<SocketAddr> = on_1.iter().map(|s| s.local_addr().unwrap()).collect();

    let evicted = || {
        sample(
            &scrape(admin).0,
            "ballast_listener_evicted_sessions_total",
            "listener",
            "l",
        )
        .unwrap_or(0.0)
    };
    let stop = AtomicBool::new(false);
    let served = std::thread::scope(|scope| {
        // The flood: 150 flows on worker 0, each sending again every 50ms or so (inside
        // unreplied_timeout, so its session stays while it has one).
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                for s in &on_0 {
                    let _ = s.send(b"flood");
                }
                std::thread::sleep(Duration::from_millis(50)); // the flood's pace
            }
        });
        // The sources found for worker 1 have no session left; then the flood churns through
        // worker 0's room (each of its flows without a session evicts the oldest one) long
        // enough to have taken any place worker 1's sessions gave back.
        wait_until("worker 1's sources have no session", || {
            let listed = session_workers(admin);
            others.iter().all(|c| !listed.contains_key(c))
        });
        let before = evicted();
        wait_until("the flood churns on worker 0", || {
            evicted() >= before + 4.0 * on_0.len() as f64
        });
        // New flows on worker 1, while the flood goes on.
        let served: Vec<bool> = on_1
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, s)| {
                let what = format!("legit {i}");
                ask(
                    s,
                    what.as_bytes(),
                    Duration::from_millis(300),
                    Duration::from_secs(2),
                )
            })
            .collect();
        stop.store(true, Ordering::Release);
        served
    });
    let dropped = served.iter().filter(|&&s| !s).count();
    assert_eq!(
        dropped, 0,
        "{dropped} of 10 new flows on worker 1 were not served during a flood on worker 0"
    );
}
