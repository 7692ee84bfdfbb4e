//! Health checks end to end: a target that dies is taken out within its thresholds without a
//! single failed client connection, and comes back after it returns.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const INTERVAL_MS: u64 = 300;
const HEALTHY: u64 = 2;
const UNHEALTHY: u64 = 2;

/// A client that opens sequential connections until told to stop, recording who answered.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    answers: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (s, f, a) = (stop.clone(), failures.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                match fetch(addr) {
                    Ok(name) if !name.is_empty() => a
                        .lock()
                        .unwrap()
                        .push((Instant::now(), name.trim().to_string())),
                    other => {
                        eprintln!("client connection failed: {other:?}");
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            failures,
            answers,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap();
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        (self.failures.load(Ordering::Relaxed), answers)
    }
}

#[test]
fn killed_target_goes_unhealthy_in_time_and_comes_back() {
    let a = Backend::start(named("a"));
    let mut b = Backend::start(named("b"));
    let c = Backend::start(named("c"));
    let health = format!(
        "    health_check: {{protocol: tcp, interval: {INTERVAL_MS}ms, timeout: 200ms, \
         healthy_threshold: {HEALTHY}, unhealthy_threshold: {UNHEALTHY}}}\n"
    );
    let yaml = config(
        "round_robin",
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        "",
        &health,
    );
    let lb = Ballast::start(&yaml);
    let (b_addr, admin) = (b.addr, lb.admin_addr());
    let load = Load::start(lb.addr("l"));
    // Let traffic reach every target first.
    wait_until("traffic", || b.accepted.load(Ordering::Relaxed) >= 3);

    let killed = Instant::now();
    b.stop();
    let interval = Duration::from_millis(INTERVAL_MS);
    let bound = interval * (UNHEALTHY as u32 + 1);
    wait_target(admin, "g", b_addr, bound * 2, "unhealthy", |t| {
        t["health"] == "unhealthy"
    });
    let took = killed.elapsed();
    assert!(
        took <= bound + Duration::from_millis(150),
        "unhealthy after {took:?}, bound {bound:?}"
    );
    let unhealthy_at = Instant::now();

    // While b is down, a and c keep serving and b gets nothing.
    wait_until("traffic", || {
        load.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > unhealthy_at)
            .count()
            >= 30
    });

    let restarted = Instant::now();
    let b2 = Backend::start_on(b_addr, named("b"));
    let bound = interval * (HEALTHY as u32 + 1);
    let t = wait_target(admin, "g", b_addr, bound * 2, "healthy", |t| {
        t["health"] == "healthy"
    });
    let took = restarted.elapsed();
    let passes = t["last_check"]["consecutive_passes"].as_u64();
    assert!(passes >= Some(HEALTHY), "healthy after fewer passes: {t}");
    assert!(
        took <= bound + Duration::from_millis(150),
        "healthy after {took:?}, bound {bound:?}"
    );
    wait_until("traffic", || b2.accepted.load(Ordering::Relaxed) >= 5);
    let (failures, answers) = load.finish();

    assert_eq!(failures, 0, "client connections failed while a target died");
    let down: HashMap<&str, usize> = answers
        .iter()
        .filter(|(t, _)| *t > unhealthy_at && *t < restarted)
        .fold(HashMap::new(), |mut m, (_, n)| {
            *m.entry(n.as_str()).or_insert(0) += 1;
            m
        });
    assert_eq!(
        down.get("b"),
        None,
        "an unhealthy target was sent traffic: {down:?}"
    );
    assert!(down["a"] >= 10 && down["c"] >= 10, "{down:?}");
}

#[test]
fn http_check_follows_the_status_code() {
    // Answers every request with the status in `status`; counts requests.
    let status = Arc::new(Mutex::new(200u16));
    let s2 = status.clone();
    let target = Backend::start(Arc::new(move |mut s: TcpStream| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        if head.starts_with(b"GET /healthz HTTP/1.1\r\n") {
            let code = *s2.lock().unwrap();
            let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
        } else {
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n");
        }
    }));
    let health =
        "    health_check: {protocol: http, path: /healthz, interval: 200ms, timeout: 150ms, \
                  healthy_threshold: 1, unhealthy_threshold: 1}\n";
    let lb = Ballast::start(&config("round_robin", &[(target.addr, 1)], "", health));
    *status.lock().unwrap() = 503;
    // What the operator reads: why the target failed (only the log says), and a warning that
    // the group now fails open.
    let line = lb.wait_log(&format!("{} is now unhealthy", target.addr), WAIT);
    assert!(line.contains("HTTP status 503"), "{line}");
    let line = lb.wait_log("every target is unhealthy; failing open", WAIT);
    assert!(line.contains("WARN"), "{line}");
    *status.lock().unwrap() = 302;
    wait_health(lb.admin_addr(), "g", target.addr, "healthy");
}
