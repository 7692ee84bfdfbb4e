//! Targets whose role changes: a Redis primary fails over to its replica. The `redis: {role:
//! master}` check (send/expect steps) follows the role, and `on_unhealthy: close` resets the
//! connections still open to the old primary, so clients reconnect to the new one. Real
//! `redis-server`s (`.ci/run` installs them).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// `redis-cli` against the server at `addr`.
fn cli_at(addr: SocketAddr, args: &[&str]) -> String {
    let port = addr.port().to_string();
    redis_cli(&[&["-h", "127.0.0.1", "-p", port.as_str()][..], args].concat())
}

/// One RESP client connection: inline commands, one reply line each.
struct Client(BufReader<TcpStream>);

impl Client {
    fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, WAIT)?;
        s.set_read_timeout(Some(WAIT))?;
        Ok(Client(BufReader::new(s)))
    }

    /// Sends `command`; the reply's first line, or the error (a reset, an EOF).
    fn ask(&mut self, command: &str) -> std::io::Result<String> {
        self.0
            .get_mut()
            .write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        if self.0.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end().to_string())
    }
}

#[test]
fn a_redis_failover_moves_writes_to_the_new_primary_and_resets_the_old_ones() {
    need("redis-server");
    let (_a, a) = redis_server(&[]);
    let (_b, b) = redis_server(&[]);
    assert_eq!(
        cli_at(b, &["REPLICAOF", "127.0.0.1", &a.port().to_string()]),
        "OK"
    );
    let interval_ms = 200;
    let yaml = format!(
        "listeners:\n  - name: l\n    protocol: tcp\n    bind: 127.0.0.1:0\n    target_group: redis\n\
         target_groups:\n  - name: redis\n    on_unhealthy: close\n\
         \x20   health_check: {{protocol: tcp, redis: {{role: master}}, interval: {interval_ms}ms, \
         timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n\
         \x20   targets:\n      - address: {a}\n      - address: {b}\n"
    );
    let lb = Ballast::start(&yaml);
    // Targets start healthy; the replica's first check takes it out. Why shows only in the
    // log: at once when the INFO reply shows the other role, not at the check's timeout.
    let line = lb.wait_log(&format!("{b} is now unhealthy"), WAIT);
    assert!(
        line.contains("got `role:slave` instead of `role:master`"),
        "the reason names the role: {line}"
    );
    let addr = lb.addr("l");
    let mut old = Client::connect(addr).unwrap();
    assert_eq!(old.ask("SET before failover").unwrap(), "+OK");
    assert_eq!(cli_at(a, &["GET", "before"]), "failover");

    // Failover: the replica is promoted, the old primary follows it.
    let swapped = Instant::now();
    assert_eq!(cli_at(b, &["REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(
        cli_at(a, &["REPLICAOF", "127.0.0.1", &b.port().to_string()]),
        "OK"
    );
    // A writer through Ballast the whole time, reconnecting after each error.
    let mut errors = 0;
    let mut writes_after = 0;
    let mut client: Option<Client> = None;
    let window = Duration::from_millis(2 * interval_ms + interval_ms + 300);
    let mut i = 0;
    while writes_after < 200 {
        assert!(
            swapped.elapsed() < WAIT,
            "writes never settled on the new primary"
        );
        i += 1;
        let reply = match client.as_mut() {
            Some(c) => c.ask(&format!("SET k{i} v{i}")),
            None => Client::connect(addr).and_then(|mut c| {
                let r = c.ask(&format!("SET k{i} v{i}"));
                client = Some(c);
                r
            }),
        };
        match reply {
            Ok(r) if r == "+OK" => {
                if swapped.elapsed() > window {
                    writes_after += 1;
                }
            }
            other => {
                // Only within the window: the old primary refusing (READONLY), a reset.
                assert!(
                    swapped.elapsed() <= window,
                    "write {i} failed after the window: {other:?}"
                );
                errors += 1;
                client = None;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    let admin = lb.admin_addr();
    wait_health(admin, "redis", a, "unhealthy");
    wait_health(admin, "redis", b, "healthy");
    // The connection opened before the failover was reset, not left writing to a replica.
    assert!(
        old.ask("PING").is_err(),
        "the old primary's connection stayed open"
    );
    let log = lb.log();
    assert!(log.contains("reason=target_unhealthy"), "{log}");
    // Every write after the window is on the new primary.
    assert_eq!(cli_at(b, &["GET", &format!("k{i}")]), format!("v{i}"));
    eprintln!("failover: {errors} failed writes within {window:?} of the swap");
}

#[test]
fn outlier_detection_ejects_a_target_its_active_check_calls_healthy() {
    // The bad target's data port refuses connections while its check port (a side port)
    // accepts them: the active check will never notice.
    let side = Backend::start(std::sync::Arc::new(|_| {}));
    let bad = dead_addr();
    let good = Backend::start(named("good"));
    let yaml = format!(
        "listeners:\n  - name: l\n    protocol: tcp\n    bind: 127.0.0.1:0\n    target_group: g\n\
         \x20   retries: 1\n\
         target_groups:\n  - name: g\n\
         \x20   outlier_detection: {{consecutive_failures: 3, base_ejection: 1s, max_ejection: 10s}}\n\
         \x20   health_check: {{protocol: tcp, port: {side}, interval: 60s, timeout: 1s}}\n\
         \x20   targets:\n      - address: {bad}\n      - address: {}\n",
        good.addr,
        side = side.addr.port(),
    );
    // Both targets listen on 127.0.0.1: the check port is the side backend for both.
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let target = || target_in(admin, "g", bad).expect("the bad target listed");
    // Every client is served (the retry goes to the good target) while the bad one fails;
    // three failures in a row eject it (the sweep runs every 50 ms).
    for _ in 0..6 {
        assert_eq!(fetch(addr).unwrap(), "good\n");
    }
    let t = wait_target(admin, "g", bad, WAIT, "ejected", |t| t["ejected"] == true);
    assert_eq!(t["ejections"], 1, "{t}");
    assert_eq!(t["health"], "healthy", "the active check still passes: {t}");
    // While ejected, no connection tries it.
    let failures = t["connect_failures"].as_u64().unwrap();
    for _ in 0..20 {
        assert_eq!(fetch(addr).unwrap(), "good\n");
    }
    let t = target();
    if t["ejected"] == true {
        assert_eq!(t["connect_failures"].as_u64().unwrap(), failures, "{t}");
    }
    // It comes back after base_ejection, fails again, and the next ejection is twice as long.
    wait_target(admin, "g", bad, WAIT, "back", |t| t["ejected"] == false);
    wait_state(
        "a second ejection, with clients served meanwhile",
        WAIT,
        || {
            assert_eq!(fetch(addr).unwrap(), "good\n");
            target()["ejections"].as_u64()
        },
        |ejections| *ejections == Some(2),
    );
    // How long an ejection lasts shows only in the operator's message: base_ejection, then
    // twice that (the first line is in by the time the second is).
    lb.wait_log(&format!("{bad} ejected for 2s"), WAIT);
    let log = lb.log();
    assert!(log.contains(&format!("{bad} ejected for 1s")), "{log}");
    let (scrape, text) = scrape(lb.admin_addr());
    let ejections = sample(
        &scrape,
        "ballast_target_ejections_total",
        "target",
        &bad.to_string(),
    );
    assert_eq!(ejections, Some(2.0), "{text}");
}
