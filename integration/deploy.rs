//! The CLI over the admin API, and `ballast deploy` restarting real backends under load.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

const CHECKS: &str = "    health_check: {protocol: tcp, interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}\n";
/// Bytes per chunk of a stream.
const CHUNK: usize = 1024;

/// Runs `ballast ARGS --admin http://ADMIN`.
fn ballast(admin: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .args(["--admin", &format!("http://{admin}")])
        .output()
        .expect("run ballast")
}

/// A backend that reads a line `K` and answers its name, then `K` chunks of [`CHUNK`] bytes
/// (chunk `i` filled with `i % 251`) 10 ms apart, then closes: `K = 0` is a quick request,
/// `K = 100` a stream of about a second. Once `killed` is set, its streams end at once, cut
/// short, as a killed process's would.
fn streamer(name: &'static str, killed: Arc<AtomicBool>) -> Handler {
    Arc::new(move |mut s: TcpStream| {
        let mut line = String::new();
        if BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .is_err()
        {
            return;
        }
        let chunks: usize = line.trim().parse().unwrap_or(0);
        if s.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        for i in 0..chunks {
            std::thread::sleep(Duration::from_millis(10));
            if killed.load(Ordering::Acquire) {
                return;
            }
            if s.write_all(&[(i % 251) as u8; CHUNK]).is_err() {
                return;
            }
        }
    })
}

/// One request for `chunks` chunks through `addr`; checks every byte. Returns the target's
/// name, or what went wrong.
fn request(addr: SocketAddr, chunks: usize) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("{chunks}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut data = Vec::new();
    s.read_to_end(&mut data).map_err(|e| format!("read: {e}"))?;
    let newline = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no name line")?;
    let name = String::from_utf8_lossy(&data[..newline]).into_owned();
    let body = &data[newline + 1..];
    if body.len() != chunks * CHUNK {
        return Err(format!(
            "{name}: {} of {} bytes",
            body.len(),
            chunks * CHUNK
        ));
    }
    for (i, chunk) in body.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != (i % 251) as u8) {
            return Err(format!("{name}: chunk {i} corrupted"));
        }
    }
    Ok(name)
}

/// A backend and the flag that kills its open connections.
type Killable = (Backend, Arc<AtomicBool>);

/// Three streamer backends that a deploy command can restart: it connects to `control`,
/// sends a target address, and gets `ok` once that backend was stopped and started again.
struct Fleet {
    /// Each backend with the flag that kills its open connections.
    backends: Arc<Mutex<HashMap<SocketAddr, Killable>>>,
    control: SocketAddr,
    restarts: Arc<AtomicUsize>,
}

impl Fleet {
    fn start() -> Fleet {
        let names = ["a", "b", "c"];
        let backends: HashMap<SocketAddr, Killable> = names
            .iter()
            .map(|n| {
                let killed = Arc::new(AtomicBool::new(false));
                let b = Backend::start(streamer(n, killed.clone()));
                (b.addr, (b, killed))
            })
            .collect();
        let backends = Arc::new(Mutex::new(backends));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let control = listener.local_addr().unwrap();
        let restarts = Arc::new(AtomicUsize::new(0));
        let (fleet, count) = (backends.clone(), restarts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let _ = BufReader::new(conn.try_clone().unwrap()).read_line(&mut line);
                let Ok(addr) = line.trim().parse::<SocketAddr>() else {
                    let _ = conn.write_all(b"bad address\n");
                    continue;
                };
                let mut fleet = fleet.lock().unwrap();
                let Some((mut old, killed)) = fleet.remove(&addr) else {
                    let _ = conn.write_all(b"unknown\n");
                    continue;
                };
                old.stop();
                killed.store(true, Ordering::Release);
                let name = ["a", "b", "c"][count.fetch_add(1, Ordering::SeqCst) % 3];
                // The restart itself: the target is down for a moment.
                std::thread::sleep(Duration::from_millis(200));
                let killed = Arc::new(AtomicBool::new(false));
                let new = Backend::start_on(addr, streamer(name, killed.clone()));
                fleet.insert(addr, (new, killed));
                let _ = conn.write_all(b"ok\n");
            }
        });
        Fleet {
            backends,
            control,
            restarts,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        let mut a: Vec<SocketAddr> = self.backends.lock().unwrap().keys().copied().collect();
        a.sort();
        a
    }

    /// The deploy command that restarts `{address}` through the control port.
    fn restart_command(&self) -> String {
        format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{}; echo {{address}} >&3; read -r reply <&3; test \"$reply\" = ok'",
            self.control.port()
        )
    }
}

/// Client threads until stopped: `quick` threads opening a short connection every 10 ms
/// (about 200 connections/s together), `streams` threads each streaming about a second at a
/// time and starting another when one ends. Every failure is kept.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, quick: usize, streams: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..quick + streams)
            .map(|i| {
                let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
                let chunks = if i < quick { 0 } else { 100 };
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match request(addr, chunks) {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                0
                            }
                        };
                        if chunks == 0 {
                            std::thread::sleep(Duration::from_millis(10)); // the request rate
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failures,
            threads,
        }
    }

    /// Stops the clients (each finishes its request); returns (requests done, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::Relaxed), failures)
    }
}

/// `ballast deploy --group g --exec EXEC --wait-healthy 20s EXTRA…`.
fn deploy(admin: SocketAddr, exec: &str, extra: &[&str]) -> Output {
    let args = [
        "deploy",
        "--group",
        "g",
        "--exec",
        exec,
        "--wait-healthy",
        "20s",
    ];
    ballast(admin, &[&args[..], extra].concat())
}

/// `ballast deploy` of group `g`, restarting each target of `fleet`.
fn deploy_fleet(admin: SocketAddr, fleet: &Fleet, drain_timeout: &str) -> Output {
    deploy(
        admin,
        &fleet.restart_command(),
        &["--drain-timeout", drain_timeout],
    )
}

fn fleet_config(fleet: &Fleet) -> String {
    let targets: Vec<(SocketAddr, u32)> = fleet.addrs().into_iter().map(|a| (a, 1)).collect();
    config("round_robin", &targets, "", CHECKS)
}

#[test]
fn rolling_deploy_under_load_fails_no_connection() {
    let fleet = Fleet::start();
    let lb = Ballast::start(&fleet_config(&fleet));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let load = Load::start(addr, 2, 20);
    wait_until("load running", || load.done.load(Ordering::Relaxed) > 50);

    let out = deploy_fleet(admin, &fleet, "5s");
    let (done, failures) = load.finish();
    assert!(
        out.status.success(),
        "deploy failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(fleet.restarts.load(Ordering::SeqCst), 3, "{}", stdout(&out));
    assert_eq!(
        stdout(&out).matches("healthy; enabled").count(),
        3,
        "{}",
        stdout(&out)
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        done + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(done > 200, "the load ran: {done} requests");
}

#[test]
fn a_failed_step_stops_the_deploy_and_leaves_that_target_disabled() {
    let fleet = Fleet::start();
    let lb = Ballast::start(&fleet_config(&fleet));
    let admin = lb.admin_addr();
    let addrs = fleet.addrs();
    // The command fails for the second target.
    let exec = format!(
        "test {{address}} != {} && {}",
        addrs[1],
        fleet.restart_command()
    );
    let out = deploy(admin, &exec, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("deploy stopped at {}", addrs[1]))
            && err.contains(&addrs[2].to_string()),
        "says where it stopped and what is left: {err}"
    );
    assert_eq!(fleet.restarts.load(Ordering::SeqCst), 1);
    assert_eq!(
        states(admin, &addrs),
        ["active", "disabled", "active"],
        "the failed one disabled, the rest untouched"
    );
}

#[test]
fn cli_subcommands_over_the_api() {
    let (a, b) = (Backend::start(named_echo("a")), Backend::start(named("b")));
    let lb = Ballast::start(&config(
        "round_robin",
        &[(a.addr, 1), (b.addr, 1)],
        "",
        CHECKS,
    ));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());

    let out = ballast(admin, &["targets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains(&a.addr.to_string()) && table.contains(&b.addr.to_string()),
        "{table}"
    );

    // A connection to a, then drain a with --wait: it returns once the connection closes.
    let (conn, name) = {
        let mut found = None;
        wait_until("a connection to a", || {
            let (s, n) = open_named(addr);
            if n == "a" {
                found = Some((s, n));
            }
            found.is_some()
        });
        found.unwrap()
    };
    assert_eq!(name, "a");
    let a_addr = a.addr.to_string();
    let drain = std::thread::spawn(move || {
        ballast(
            admin,
            &["drain", "g", &a_addr, "--wait", "--timeout", "20s"],
        )
    });
    wait_until("a is draining", || {
        stdout(&ballast(admin, &["targets"])).contains("draining")
    });
    for _ in 0..10 {
        assert_eq!(
            open_named(addr).1,
            "b",
            "a draining target gets nothing new"
        );
    }
    drop(conn);
    let out = drain.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("drained"), "{}", stdout(&out));
    // Piped, the wait's progress comes as plain lines.
    let progress = format!("{a}: draining: 1 connection open (", a = a.addr);
    assert!(stdout(&out).contains(&progress), "{}", stdout(&out));

    let out = ballast(admin, &["enable", "g", &a.addr.to_string()]);
    assert!(stdout(&out).contains("active"), "{}", stdout(&out));
    let out = ballast(admin, &["connections"]);
    assert!(out.status.success() && stdout(&out).starts_with("ID "));
    let out = ballast(admin, &["reload"]);
    assert!(stdout(&out).contains("generation 1"), "{}", stdout(&out));

    let out = ballast(admin, &["drain", "g", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
}

#[test]
fn a_stream_longer_than_the_drain_timeout_is_closed_cleanly_not_hung() {
    let fleet = Fleet::start();
    let lb = Ballast::start(&fleet_config(&fleet));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    // Long streams (5 s) on every target, so the first target drained has one open.
    let streams: Vec<JoinHandle<Result<String, String>>> = (0..3)
        .map(|_| std::thread::spawn(move || request(addr, 500)))
        .collect();
    wait_until("three streams open", || {
        let (_, body) = http(admin, "GET", "/targets", None, "");
        body.matches("\"active\":1").count() == 3
    });
    let out = deploy_fleet(admin, &fleet, "300ms");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("drain timeout (300ms) passed with 1 connection open"));
    for s in streams {
        // Each ends (EOF, within the client's bounded read) short of its bytes: closed, not hung.
        let result = s.join().unwrap();
        let message = result.expect_err("the stream was cut by the restart");
        assert!(message.contains("of 512000 bytes"), "{message}");
    }
}

#[test]
fn cli_sends_the_token_from_token_file() {
    let a = Backend::start(named("a"));
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("token"), dir.path().join("wrong"));
    std::fs::write(&bad, "guess\n").unwrap();
    let yaml = with_token(
        dir.path(),
        "",
        &config("round_robin", &[(a.addr, 1)], "", CHECKS),
    );
    let lb = Ballast::start(&yaml);
    let admin = lb.admin_addr();
    let with = |file: &std::path::Path| {
        ballast(admin, &["targets", "--token-file", file.to_str().unwrap()])
    };
    let out = with(&good);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&a.addr.to_string()));
    let out = with(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let out = ballast(admin, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "no token: refused");
}

/// `admin_state` of each of `addrs`, from `GET /targets`.
fn states(admin: SocketAddr, addrs: &[SocketAddr]) -> Vec<String> {
    let (_, body) = http(admin, "GET", "/targets", None, "");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let targets = doc["target_groups"][0]["targets"]
        .as_array()
        .unwrap()
        .clone();
    addrs
        .iter()
        .map(|a| {
            let t = targets
                .iter()
                .find(|t| t["address"] == a.to_string())
                .unwrap();
            t["admin_state"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_hung_command_is_killed_and_stops_the_deploy() {
    let fleet = Fleet::start();
    let lb = Ballast::start(&fleet_config(&fleet));
    let admin = lb.admin_addr();
    let out = deploy(admin, "sleep 30", &["--exec-timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("still running after 300ms; killed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        states(admin, &fleet.addrs()),
        ["disabled", "active", "active"]
    );
}

#[test]
fn a_target_disabled_before_the_deploy_is_deployed_and_left_disabled() {
    let fleet = Fleet::start();
    let lb = Ballast::start(&fleet_config(&fleet));
    let admin = lb.admin_addr();
    let addrs = fleet.addrs();
    let path = format!("/target-groups/g/targets/{}/disable", addrs[1]);
    assert_eq!(http(admin, "POST", &path, None, "").0, 200);
    let out = deploy_fleet(admin, &fleet, "5s");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(fleet.restarts.load(Ordering::SeqCst), 3);
    assert!(stdout(&out).contains("left disabled, as it was before the deploy"));
    assert_eq!(states(admin, &addrs), ["active", "disabled", "active"]);
}

#[test]
fn on_a_terminal_drain_wait_redraws_one_progress_line() {
    need("script");
    let a = Backend::start(named_echo("a"));
    let lb = Ballast::start(&config("round_robin", &[(a.addr, 1)], "", CHECKS));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let (conn, name) = open_named(addr);
    assert_eq!(name, "a");
    // `script` gives the command a pseudo-terminal and copies what it draws to our pipe.
    let command = format!(
        "{} drain g {} --wait --timeout 20s --admin http://{admin}",
        env!("CARGO_BIN_EXE_ballast"),
        a.addr
    );
    let mut child = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let drawn = Arc::new(Mutex::new(Vec::new()));
    let mut pty = child.stdout.take().unwrap();
    let sink = drawn.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pty.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&drawn.lock().unwrap()).into_owned();
    wait_until("the spinner's line", || {
        text().contains("draining: 1 connection open")
    });
    drop(conn);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let out = text();
    assert!(status.success(), "{out}");
    assert!(out.contains("drained"), "{out}");
    // Redrawn in place (carriage return, erase line), then cleared: not one line per poll.
    assert!(out.contains("\r\u{1b}[2K"), "{out:?}");
    let plain = format!("{}: draining: 1 connection open (0s)\r\n", a.addr);
    assert!(!out.contains(&plain), "{out:?}");
}
