//! A soak: a running Ballast under a mix of everything a long life brings, then checks that
//! nothing was lost and nothing leaked.
//!
//! ```text
//! cargo run --release --example soak -- --ballast target/release/ballast --duration 600 --out DIR
//! ```
//!
//! `examples/soak.sh` builds Ballast and runs this. It starts its own targets on 127.0.0.1 and
//! a Ballast (2 workers) in front of them, then for `--duration` seconds runs at once:
//! - **new connection per request**: random 1–16 KiB echoed, bytes compared;
//! - **keep-alive**: connections of 200 echoed requests each;
//! - **bulk with urgent bytes**: 1–4 MiB through `forwarding: splice` with one urgent byte
//!   (MSG_OOB) somewhere in it, SHA-256 compared;
//! - **resets**: clients that send and reset mid-stream;
//! - **slow readers**: 2 MiB read 16 KiB at a time with pauses;
//! - **UDP flows** answered by their target (≥ 95% of replies expected), and a **spoofed
//!   flood** of flows from ever new source ports that the target never answers;
//! - **churn**: reloads (`POST /reload`), targets drained and enabled, a target added and
//!   removed through the API.
//!
//! Checks at the end: no stream with wrong bytes and no clean end after loss (every
//! stream either whole or ended by an error, never a short clean EOF), the UDP flows' replies,
//! the process's descriptors and RSS back within 10% of a baseline taken after a warm-up, and
//! the counters in `/metrics` consistent with `/connections` for a known set of open
//! connections and sessions. Prints a summary (also written to `DIR/summary.txt`); exits 1
//! when a check fails.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(10);

/// Outcomes of one kind of stream.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Ended by an error (a reset, a refused connect): allowed, counted.
    failed: AtomicU64,
    /// Wrong bytes, or a clean end before every byte: never allowed.
    bad: AtomicU64,
}

impl Tally {
    fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Failed => &self.failed,
            Outcome::Bad(why) => {
                eprintln!("soak: BAD stream: {why}");
                &self.bad
            }
        }
        .fetch_add(1, Relaxed);
    }
}

enum Outcome {
    Ok,
    Failed,
    Bad(String),
}

/// The deterministic bytes a bulk target sends for `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn set_timeouts(s: &TcpStream) {
    let _ = s.set_read_timeout(Some(WAIT));
    let _ = s.set_write_timeout(Some(WAIT));
}

/// Reads to the end: the bytes, and whether the end was clean (EOF) or an error.
fn read_to_end(s: &mut TcpStream, pace: Option<Duration>) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (got, false),
        }
        if let Some(p) = pace {
            std::thread::sleep(p);
        }
    }
}

/// Judges a stream that should have carried `want`.
fn judge(got: &[u8], clean: bool, want: &[u8], what: &str) -> Outcome {
    if got.len() > want.len() || got != &want[..got.len()] {
        return Outcome::Bad(format!(
            "{what}: wrong bytes ({} of {})",
            got.len(),
            want.len()
        ));
    }
    match (got.len() == want.len(), clean) {
        (true, true) => Outcome::Ok,
        (false, true) => Outcome::Bad(format!(
            "{what}: clean end after {} of {} bytes",
            got.len(),
            want.len()
        )),
        (_, false) => Outcome::Failed,
    }
}

// ---- targets ----

/// An echo target: echoes until EOF, then ends.
fn echo_target() -> SocketAddr {
    serve(|mut s| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// A bulk target: reads `len seed urgent_at\n`, sends `pattern(len, seed)` with the byte at
/// `urgent_at` as urgent data (none when past the end), then ends.
fn bulk_target() -> SocketAddr {
    serve(|mut s| {
        let _ = socket2::SockRef::from(&s).set_out_of_band_inline(true);
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let text = String::from_utf8_lossy(&line).to_string();
        let f: Vec<usize> = text.split(' ').filter_map(|x| x.parse().ok()).collect();
        let [len, seed, urgent] = f[..] else {
            return; // a health check
        };
        let data = pattern(len, seed as u64);
        let sent = if urgent < len {
            s.write_all(&data[..urgent])
                .and_then(|()| socket2::SockRef::from(&s).send_out_of_band(&data[urgent..=urgent]))
                .and_then(|_| s.write_all(&data[urgent + 1..]))
        } else {
            s.write_all(&data)
        };
        if sent.is_ok() {
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read(&mut b); // until the client is done
        }
    })
}

fn serve(handler: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            set_timeouts(&s);
            std::thread::spawn(move || handler(s));
        }
    });
    addr
}

/// A UDP target answering datagrams that start with `L` (the real flows) and ignoring the
/// rest (the spoofed flood, whose sessions are never answered).
fn udp_target() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if buf[..n].starts_with(b"L") || &buf[..n] == b"ping" {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

// ---- Ballast ----

struct Lb {
    child: Child,
    admin: SocketAddr,
    tcp: SocketAddr,
    bulk: SocketAddr,
    udp: SocketAddr,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Lb {
    fn start(
        bin: &str,
        dir: &std::path::Path,
        echo: &[SocketAddr],
        bulk: SocketAddr,
        udp: SocketAddr,
    ) -> Lb {
        let (admin, tcp, bulk_port) = (free_port(), free_port(), free_port());
        let udp_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let targets = |a: &[SocketAddr]| {
            a.iter()
                .map(|t| format!("{{address: '{t}'}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let check = "health_check: {protocol: tcp, interval: 1s, timeout: 500ms}";
        let yaml = format!(
            "workers: 2\naccess_log: off\nadmin: {{bind: '127.0.0.1:{admin}'}}\nlisteners:\n\
             \x20 - {{name: echo, protocol: tcp, bind: '127.0.0.1:{tcp}', target_group: echo, idle_timeout: 30s}}\n\
             \x20 - {{name: bulk, protocol: tcp, bind: '127.0.0.1:{bulk_port}', target_group: bulk, forwarding: splice, idle_timeout: 30s}}\n\
             \x20 - {{name: udp, protocol: udp, bind: '127.0.0.1:{udp_port}', target_group: udp, udp: {{session_idle_timeout: 5s}}}}\n\
             target_groups:\n\
             \x20 - {{name: echo, algorithm: least_connections, drain_timeout: 5s, {check}, targets: [{}]}}\n\
             \x20 - {{name: bulk, {check}, targets: [{}]}}\n\
             \x20 - {{name: udp, health_check: {{protocol: udp, send: ping, expect: ping, interval: 1s, timeout: 500ms}}, targets: [{}]}}\n",
            targets(echo),
            targets(&[bulk]),
            targets(&[udp]),
        );
        let path = dir.join("soak.yaml");
        std::fs::write(&path, yaml).unwrap();
        let log = std::fs::File::create(dir.join("ballast.log")).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ballast");
        let lb = Lb {
            child,
            admin: ([127, 0, 0, 1], admin).into(),
            tcp: ([127, 0, 0, 1], tcp).into(),
            bulk: ([127, 0, 0, 1], bulk_port).into(),
            udp: ([127, 0, 0, 1], udp_port).into(),
        };
        let deadline = Instant::now() + WAIT;
        while http(lb.admin, "GET", "/healthz").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "ballast not ready; see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lb
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open descriptors and resident memory (KiB).
    fn footprint(&self) -> (usize, u64) {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count());
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        (fds, rss)
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `METHOD path` to the admin API (HTTP/1.0): (status, body); (0, error) when it fails.
fn http(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&admin, WAIT)?;
        set_timeouts(&s);
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        let status = r.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((status, r.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
    };
    attempt().unwrap_or_else(|e| (0, e.to_string()))
}

fn post_json(admin: SocketAddr, path: &str, body: &str) -> u16 {
    let attempt = || -> std::io::Result<u16> {
        let mut s = TcpStream::connect_timeout(&admin, WAIT)?;
        set_timeouts(&s);
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0))
    };
    attempt().unwrap_or(0)
}

/// The sum of every sample of `name` in `/metrics` (0 when absent).
fn metric(admin: SocketAddr, name: &str) -> f64 {
    http(admin, "GET", "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- load ----

fn echo_once(addr: SocketAddr, rng: &mut impl Rng) -> Outcome {
    let want = pattern(rng.gen_range(1024..16 * 1024), rng.gen());
    let Ok(mut s) = TcpStream::connect_timeout(&addr, WAIT) else {
        return Outcome::Failed;
    };
    set_timeouts(&s);
    let mut w = s.try_clone().unwrap();
    let sent = want.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent)
            .and_then(|()| w.shutdown(Shutdown::Write))
            .is_ok()
    });
    let (got, clean) = read_to_end(&mut s, None);
    let _ = writer.join();
    judge(&got, clean, &want, "echo")
}

fn keep_alive(addr: SocketAddr, rng: &mut impl Rng, stop: &AtomicBool) -> Outcome {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, WAIT) else {
        return Outcome::Failed;
    };
    set_timeouts(&s);
    for _ in 0..200 {
        if stop.load(Relaxed) {
            break;
        }
        let want = pattern(rng.gen_range(16..2048), rng.gen());
        if s.write_all(&want).is_err() {
            return Outcome::Failed;
        }
        let mut got = vec![0u8; want.len()];
        let mut n = 0;
        while n < got.len() {
            match s.read(&mut got[n..]) {
                Ok(0) => {
                    return Outcome::Bad(format!(
                        "keep-alive: clean end after {n} of {}",
                        want.len()
                    ))
                }
                Ok(k) => n += k,
                Err(_) => return Outcome::Failed,
            }
        }
        if got != want {
            return Outcome::Bad("keep-alive: wrong bytes".into());
        }
    }
    Outcome::Ok
}

fn bulk_once(addr: SocketAddr, rng: &mut impl Rng, slow: bool) -> Outcome {
    let len = if slow {
        2 << 20
    } else {
        rng.gen_range(1 << 20..4 << 20)
    };
    let seed: u32 = rng.gen();
    let urgent = if slow { len } else { rng.gen_range(0..len) };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, WAIT) else {
        return Outcome::Failed;
    };
    set_timeouts(&s);
    let _ = socket2::SockRef::from(&s).set_out_of_band_inline(true);
    if writeln!(s, "{len} {seed} {urgent}").is_err() {
        return Outcome::Failed;
    }
    let pace = slow.then_some(Duration::from_millis(2));
    let (got, clean) = read_to_end(&mut s, pace);
    let want = pattern(len, u64::from(seed));
    if got.len() == want.len() && clean && Sha256::digest(&got) != Sha256::digest(&want) {
        return Outcome::Bad("bulk: SHA-256 differs".into());
    }
    judge(
        &got,
        clean,
        &want,
        if slow { "slow reader" } else { "bulk+urgent" },
    )
}

fn reset_once(addr: SocketAddr, rng: &mut impl Rng) -> Outcome {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, WAIT) else {
        return Outcome::Failed;
    };
    set_timeouts(&s);
    let _ = s.write_all(&pattern(rng.gen_range(1..64 * 1024), 9));
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
    // Paced: a reset costs a few syscalls, and unpaced they would crowd out the rest.
    std::thread::sleep(Duration::from_millis(5));
    Outcome::Ok
}

/// A UDP flow: one datagram every 10 ms until `stop`; returns (sent, answered).
fn udp_flow(addr: SocketAddr, id: u32, stop: &AtomicBool) -> (u64, u64) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut sent, mut answered) = (0, 0);
    let mut buf = [0u8; 64];
    while !stop.load(Relaxed) {
        let msg = format!("L{id}:{sent}");
        if s.send(msg.as_bytes()).is_ok() {
            sent += 1;
            // Late replies to earlier datagrams are skipped until this one's comes.
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                match s.recv(&mut buf) {
                    Ok(n) if &buf[..n] == msg.as_bytes() => {
                        answered += 1;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (sent, answered)
}

/// Flows from new source ports the target never answers: `rate` per second until `stop`.
fn udp_flood(addr: SocketAddr, rate: u32, stop: &AtomicBool) -> u64 {
    let mut sent = 0;
    while !stop.load(Relaxed) {
        let round = Instant::now();
        let sockets: Vec<UdpSocket> = (0..rate / 10)
            .filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok())
            .collect();
        for s in &sockets {
            if s.send_to(b"spoofed", addr).is_ok() {
                sent += 1;
            }
        }
        drop(sockets);
        std::thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
    }
    sent
}

fn churn(lb_admin: SocketAddr, echo: &[SocketAddr], spare: SocketAddr, stop: &AtomicBool) -> u64 {
    let mut steps = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    while !stop.load(Relaxed) {
        let t = echo[rng.gen_range(0..echo.len())];
        let ok = match steps % 4 {
            0 => http(lb_admin, "POST", "/reload").0 == 200,
            1 => {
                post_json(
                    lb_admin,
                    &format!("/target-groups/echo/targets/{t}/drain"),
                    "",
                ) == 200
                    && post_json(
                        lb_admin,
                        &format!("/target-groups/echo/targets/{t}/enable"),
                        "",
                    ) == 200
            }
            2 => {
                post_json(
                    lb_admin,
                    "/target-groups/echo/targets",
                    &format!("{{\"address\": \"{spare}\"}}"),
                ) == 201
            }
            _ => {
                http(
                    lb_admin,
                    "DELETE",
                    &format!("/target-groups/echo/targets/{spare}"),
                )
                .0 == 200
            }
        };
        if !ok {
            eprintln!("soak: churn step {} failed", steps % 4);
        }
        steps += 1;
        std::thread::sleep(Duration::from_millis(750));
    }
    steps
}

/// What one run of the mix did.
struct Mix {
    /// Per stream kind, its outcomes.
    tallies: Vec<(&'static str, Arc<Tally>)>,
    /// UDP datagrams of the real flows sent and answered.
    udp: (u64, u64),
    /// Flooding flows sent.
    flooded: u64,
    /// Churn steps taken.
    steps: u64,
}

/// Runs the whole mix for `secs`.
fn run_mix(lb: &Lb, echo: &[SocketAddr], spare: SocketAddr, secs: u64) -> Mix {
    let stop = Arc::new(AtomicBool::new(false));
    let kinds: [(&'static str, usize); 5] = [
        ("echo", 4),
        ("keep-alive", 2),
        ("bulk+urgent", 2),
        ("resets", 1),
        ("slow reader", 2),
    ];
    let mut tallies = Vec::new();
    let mut threads = Vec::new();
    for (kind, n) in kinds {
        let tally = Arc::new(Tally::default());
        tallies.push((kind, tally.clone()));
        for i in 0..n {
            let (tally, stop) = (tally.clone(), stop.clone());
            let (tcp, bulk) = (lb.tcp, lb.bulk);
            threads.push(std::thread::spawn(move || {
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(i as u64 * 1000 + kind.len() as u64);
                while !stop.load(Relaxed) {
                    tally.record(match kind {
                        "echo" => echo_once(tcp, &mut rng),
                        "keep-alive" => keep_alive(tcp, &mut rng, &stop),
                        "bulk+urgent" => bulk_once(bulk, &mut rng, false),
                        "resets" => reset_once(tcp, &mut rng),
                        _ => bulk_once(bulk, &mut rng, true),
                    });
                }
            }));
        }
    }
    let flows: Vec<_> = (0..4)
        .map(|id| {
            let (stop, udp) = (stop.clone(), lb.udp);
            std::thread::spawn(move || udp_flow(udp, id, &stop))
        })
        .collect();
    let flood = {
        let (stop, udp) = (stop.clone(), lb.udp);
        std::thread::spawn(move || udp_flood(udp, 2000, &stop))
    };
    let churner = {
        let (stop, admin, echo) = (stop.clone(), lb.admin, echo.to_vec());
        std::thread::spawn(move || churn(admin, &echo, spare, &stop))
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let udp = flows
        .into_iter()
        .filter_map(|f| f.join().ok())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let flooded = flood.join().unwrap_or(0);
    let steps = churner.join().unwrap_or(0);
    Mix {
        tallies,
        udp,
        flooded,
        steps,
    }
}

/// Waits (at most 30 s) until Ballast holds no connection and no session.
fn quiesce(lb: &Lb) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (status, body) = http(lb.admin, "GET", "/connections");
        if status == 200 && body.contains("\"connections\":[]") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Opens 20 echo connections and 5 UDP flows and checks `/metrics` against `/connections`.
fn counters_agree(lb: &Lb) -> Result<String, String> {
    let held: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&lb.tcp, WAIT).unwrap();
            set_timeouts(&s);
            s.write_all(b"x").unwrap();
            s.read_exact(&mut [0u8; 1]).unwrap();
            s
        })
        .collect();
    let flows: Vec<UdpSocket> = (0..5)
        .map(|i| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(lb.udp).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.send(format!("L-check{i}").as_bytes()).unwrap();
            s.recv(&mut [0u8; 64]).unwrap();
            s
        })
        .collect();
    let body = http(lb.admin, "GET", "/connections").1;
    let tcp = body.matches("\"protocol\":\"tcp\"").count();
    let udp = body.matches("\"protocol\":\"udp\"").count();
    let listener_active = metric(lb.admin, "ballast_listener_active");
    let target_active = metric(lb.admin, "ballast_target_active");
    let workers = metric(lb.admin, "ballast_worker_connections");
    let seen = format!(
        "/connections: {tcp} tcp, {udp} udp; /metrics: listener_active {listener_active}, \
         target_active {target_active}, worker_connections {workers}"
    );
    drop((held, flows));
    let agree = tcp == 20
        && udp == 5
        && listener_active == 25.0
        && target_active == 25.0
        && workers == 20.0;
    if agree {
        Ok(seen)
    } else {
        Err(seen)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bin = arg("--ballast").unwrap_or_else(|| "target/release/ballast".into());
    let secs: u64 = arg("--duration")
        .and_then(|d| d.parse().ok())
        .unwrap_or(600);
    let dir = std::path::PathBuf::from(arg("--out").unwrap_or_else(|| "target/soak".into()));
    std::fs::create_dir_all(&dir).unwrap();

    let echo: Vec<SocketAddr> = (0..3).map(|_| echo_target()).collect();
    let spare = echo_target();
    let lb = Lb::start(&bin, &dir, &echo, bulk_target(), udp_target());
    eprintln!(
        "soak: ballast pid {} ({}), {secs} s; log in {}",
        lb.pid(),
        bin,
        dir.display()
    );

    // Warm-up: pools and tables reach their working size before the baseline.
    let warm = (secs / 10).clamp(20, 120);
    let _ = run_mix(&lb, &echo, spare, warm);
    let quiet_before = quiesce(&lb);
    let before = lb.footprint();
    let started = Instant::now();
    let Mix {
        tallies,
        udp: (udp_sent, udp_answered),
        flooded,
        steps,
    } = run_mix(&lb, &echo, spare, secs);
    let ran = started.elapsed();
    let quiet_after = quiesce(&lb);
    let after = lb.footprint();
    let counters = counters_agree(&lb);
    let alive = http(lb.admin, "GET", "/healthz").0 == 200;

    let mut out = String::new();
    let mut failed = Vec::new();
    out += &format!(
        "soak: {:.0} s of load after a {warm} s warm-up; Ballast {bin}\n",
        ran.as_secs_f64()
    );
    out += "stream kind       ok        failed(error)  bad(wrong bytes / clean end after loss)\n";
    for (kind, t) in &tallies {
        let (ok, f, bad) = (
            t.ok.load(Relaxed),
            t.failed.load(Relaxed),
            t.bad.load(Relaxed),
        );
        out += &format!("{kind:<16}  {ok:<8}  {f:<13}  {bad}\n");
        if bad > 0 {
            failed.push(format!("{bad} bad {kind} streams"));
        }
    }
    let share = udp_answered as f64 / udp_sent.max(1) as f64;
    out += &format!(
        "udp flows: {udp_answered} of {udp_sent} answered ({:.1}%) beside {flooded} flooding flows\n",
        share * 100.0
    );
    if share < 0.95 {
        failed.push(format!("UDP flows got {:.1}% of replies", share * 100.0));
    }
    out += &format!("churn: {steps} steps (reload, drain+enable, add, remove)\n");
    let within = |a: f64, b: f64| (b - a).abs() <= 0.10 * a.max(1.0);
    out += &format!(
        "descriptors: {} at start, {} at end; RSS: {} KiB at start, {} KiB at end (quiet: {quiet_before}/{quiet_after})\n",
        before.0, after.0, before.1, after.1
    );
    if !quiet_after {
        failed.push("connections still open 30 s after the load stopped".into());
    }
    if !within(before.0 as f64, after.0 as f64) {
        failed.push(format!("descriptors {} -> {}", before.0, after.0));
    }
    if !within(before.1 as f64, after.1 as f64) {
        failed.push(format!("RSS {} -> {} KiB", before.1, after.1));
    }
    match &counters {
        Ok(seen) => out += &format!("counters agree: {seen}\n"),
        Err(seen) => {
            out += &format!("counters DISAGREE: {seen}\n");
            failed.push("counters disagree".into());
        }
    }
    if !alive {
        failed.push("/healthz not 200 at the end".into());
    }
    out += &if failed.is_empty() {
        "result: PASS\n".to_string()
    } else {
        format!("result: FAIL: {}\n", failed.join("; "))
    };
    print!("{out}");
    std::fs::write(dir.join("summary.txt"), &out).unwrap();
    drop(lb); // stops Ballast: `exit` runs no destructors
    std::process::exit(i32::from(!failed.is_empty()));
}
