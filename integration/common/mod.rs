//! Generation helpers for the end-to-end tests: a Ballast process started from a YAML string, and
//! small backends on real sockets. Every wait is bounded.
#![allow(dead_code)]

pub mod notify;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Lines a process has printed, with a condition variable to wait for more.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    more: Condvar,
    closed: AtomicBool,
}

/// A running `ballast run` process.
pub struct Ballast {
    child: Child,
    log: Arc<Lines>,
    /// What it tells through `NOTIFY_SOCKET`: readiness, its admin and listener addresses.
    pub notifications: notify::Notifications,
    _config: tempfile::NamedTempFile,
}

impl Ballast {
    /// Starts `ballast run` on `yaml` and waits until it is running.
    pub fn start(yaml: &str) -> Ballast {
        Self::start_with_level(yaml, "info")
    }

    /// As [`Ballast::start`], with a log level.
    pub fn start_with_level(yaml: &str, level: &str) -> Ballast {
        Self::start_with(yaml, level, None)
    }

    /// As [`Ballast::start`], with a log level and optionally a lower open-file limit.
    pub fn start_with(yaml: &str, level: &str, fd_limit: Option<u64>) -> Ballast {
        let config = write_config(&with_admin(yaml));
        let mut command = Command::new(env!("CARGO_BIN_EXE_ballast"));
        if let Some(limit) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
            unsafe {
                command.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let notifications = notify::Notifications::new();
        let mut child = command
            .env("NOTIFY_SOCKET", notifications.path())
            .args(["run", "--log-level", level, "--config"])
            .arg(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ballast");
        let log = Arc::new(Lines::default());
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("BALLAST_TEST_ECHO").is_some() {
                    eprintln!("ballast: {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.more.notify_all();
            }
            sink.closed.store(true, Ordering::Release);
            sink.more.notify_all();
        });
        let b = Ballast {
            child,
            log,
            notifications,
            _config: config,
        };
        if b.notifications
            .wait(WAIT, |s| s.ready.then_some(()))
            .is_none()
        {
            panic!("ballast sent no READY=1 within {WAIT:?}; log:\n{}", b.log());
        }
        b
    }

    /// The address listener `name` is bound to (as `NOTIFY_SOCKET` last reported it).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.notifications
            .wait(WAIT, |s| s.listeners.get(name).copied())
            .unwrap_or_else(|| panic!("no listener {name} reported; log:\n{}", self.log()))
    }

    /// The admin API's address (as `NOTIFY_SOCKET` reported it).
    pub fn admin_addr(&self) -> SocketAddr {
        self.notifications
            .wait(WAIT, |s| s.admin)
            .unwrap_or_else(|| panic!("no admin address reported; log:\n{}", self.log()))
    }

    /// Waits until a log line contains `needle`; returns it. Panics with the log on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_after(needle, 0, timeout)
    }

    /// As [`Ballast::wait_log`], looking only at lines from index `from` on.
    pub fn wait_log_after(&self, needle: &str, from: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().skip(from).find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline || self.log.closed.load(Ordering::Acquire) {
                panic!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    lines.join("\n")
                );
            }
            lines = self.log.more.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Number of log lines so far (a mark for [`Ballast::wait_log_after`]).
    pub fn log_len(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// The configuration file it runs from.
    pub fn config_path(&self) -> &std::path::Path {
        self._config.path()
    }

    /// Rewrites its configuration file with `yaml` (for a reload; the admin API stays where it
    /// is, as a reload keeps it).
    pub fn rewrite_config(&self, yaml: &str) {
        std::fs::write(self.config_path(), with_admin(yaml)).unwrap();
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `yaml` with an admin API on a free port unless it sets `admin:` (tests run side by side).
fn with_admin(yaml: &str) -> String {
    if yaml.contains("admin:") {
        yaml.to_string()
    } else {
        format!("admin: {{bind: '127.0.0.1:0'}}\n{yaml}")
    }
}

/// `METHOD path` over HTTP/1.0 with an optional bearer token and body; returns (status, body).
/// Panics when no HTTP response comes back (see [`try_http`]).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    try_http(addr, method, path, token, body).unwrap()
}

/// As [`http`]; an error when the connection fails or closes without a response.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: admin\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// `GET /metrics` from the admin API at `admin`, parsed by a Prometheus text-format parser.
pub fn scrape(admin: SocketAddr) -> (prometheus_parse::Scrape, String) {
    let (status, text) = http(admin, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    (parsed, text)
}

/// The value of the sample `name` whose label `key` is `value` (counters, gauges; a
/// histogram's `_count` and `_sum` are untyped samples of their own name).
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    key: &str,
    value: &str,
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(key) == Some(value))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Writes `yaml` to a temporary file.
pub fn write_config(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("ballast-test-")
        .suffix(".yaml")
        .tempfile()
        .unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

/// What a backend does with each accepted connection.
pub type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP server on 127.0.0.1 running `handler` on a thread per connection.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts on a free port.
    pub fn start(handler: Handler) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Starts on `addr` (e.g. to restart a stopped backend on its old port).
    pub fn start_on(addr: SocketAddr, handler: Handler) -> Backend {
        let listener = TcpListener::bind(addr).expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    return; // drops the listener: new connects are refused
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                let h = handler.clone();
                std::thread::spawn(move || h(conn));
            }
        });
        Backend {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting and closes the listening socket; returns once it is closed.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `name\n` and closes.
pub fn named(name: &'static str) -> Handler {
    Arc::new(move |mut s: TcpStream| {
        let _ = s.write_all(format!("{name}\n").as_bytes());
    })
}

/// Says its name (a line), then echoes until EOF.
pub fn named_echo(name: &'static str) -> Handler {
    Arc::new(move |mut s: TcpStream| {
        if s.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// Echoes every byte until EOF, then shuts down its write side.
pub fn echo() -> Handler {
    Arc::new(|mut s: TcpStream| {
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

/// Connects to `addr` and reads everything until EOF, with bounded waits.
pub fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sends `bytes` through `addr`, half-closes, and returns everything read back until EOF.
pub fn echo_once(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = client(addr);
    s.write_all(bytes).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

/// A connected client with bounded reads and writes.
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to ballast");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// A config with one listener `l` on a free port in front of group `g` with these targets.
pub fn config(
    algorithm: &str,
    targets: &[(SocketAddr, u32)],
    extra_listener: &str,
    health: &str,
) -> String {
    let mut yaml = format!(
        "workers: 2\nshutdown_timeout: 5s\nlisteners:\n  - name: l\n    protocol: tcp\n    bind: 127.0.0.1:0\n    target_group: g\n{extra_listener}\
         target_groups:\n  - name: g\n    algorithm: {algorithm}\n{health}    targets:\n"
    );
    for (addr, weight) in targets {
        yaml += &format!("      - address: {addr}\n        weight: {weight}\n");
    }
    yaml
}

/// Waits (bounded by [`WAIT`]) until `cond` holds; panics naming `what` otherwise. For
/// states no event announces (a file's contents, an fd count), so it polls.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The file at `path` once it has at least `lines` lines (bounded wait; the access log is
/// written once per event-loop turn).
pub fn wait_for_lines(path: &std::path::Path, lines: usize) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    wait_until(&format!("{lines} lines in {}", path.display()), || {
        read().lines().count() >= lines
    });
    read()
}

/// A connection through `addr` and the name its target sent first (a line, read byte by
/// byte so nothing after it is consumed).
pub fn open_named(addr: SocketAddr) -> (TcpStream, String) {
    let s = client(addr);
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    let mut r = s.try_clone().unwrap();
    while r.read(&mut byte).expect("target name") == 1 && byte[0] != b'\n' {
        name.push(byte[0]);
    }
    (s, String::from_utf8(name).unwrap())
}

/// An address on 127.0.0.1 whose connects never complete: a listener with a full backlog that
/// never accepts, so SYNs to it go unanswered. Keep the returned sockets alive meanwhile.
pub fn silent_target() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let silent = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    silent
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    silent.listen(0).unwrap();
    let addr = silent.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![silent];
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        held.push(s);
    }
    (addr, held)
}

/// Closes `s` with a reset (RST) instead of a FIN: `SO_LINGER {on, 0}`, then close.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// An address on 127.0.0.1 where nothing listens (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// What a UDP backend answers to a datagram from an address: `None` sends nothing.
pub type UdpHandler = Arc<dyn Fn(&[u8], SocketAddr) -> Option<Vec<u8>> + Send + Sync>;

/// A UDP server on 127.0.0.1 answering each datagram with `handler`.
pub struct UdpBackend {
    pub addr: SocketAddr,
    /// Datagrams received so far.
    pub received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    /// Starts on a free port.
    pub fn start(handler: UdpHandler) -> UdpBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Starts on `addr` (e.g. to restart a stopped backend on its old port).
    pub fn start_on(addr: SocketAddr, handler: UdpHandler) -> UdpBackend {
        let socket = std::net::UdpSocket::bind(addr).expect("bind udp backend");
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue; // e.g. an ICMP error for an earlier reply
                };
                if s.load(Ordering::Acquire) {
                    return; // drops the socket: datagrams now get ICMP port unreachable
                }
                r.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = handler(&buf[..n], from) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        UdpBackend {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and closes the socket; returns once it is closed.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let waker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let _ = waker.send_to(b"stop", self.addr);
            t.join().unwrap();
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Echoes each datagram unchanged.
pub fn udp_echo() -> UdpHandler {
    Arc::new(|d: &[u8], _| Some(d.to_vec()))
}

/// Answers `[id, from.port (2 bytes, big-endian)] + datagram`, so a client sees which target
/// and which upstream socket carried its flow. Health probes (`ping`) get `pong`.
pub fn udp_tagged(id: u8) -> UdpHandler {
    Arc::new(move |d: &[u8], from: SocketAddr| {
        if d == b"ping" {
            return Some(b"pong".to_vec());
        }
        let mut reply = vec![id];
        reply.extend_from_slice(&from.port().to_be_bytes());
        reply.extend_from_slice(d);
        Some(reply)
    })
}

/// A UDP client socket connected to `addr`, with bounded reads.
pub fn udp_client(addr: SocketAddr) -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// A config with one UDP listener `l` on a free port in front of group `g`.
pub fn udp_config(targets: &[SocketAddr], udp: &str, health: &str) -> String {
    let mut yaml = format!(
        "workers: 2\nshutdown_timeout: 5s\nlisteners:\n  - name: l\n    protocol: udp\n    bind: 127.0.0.1:0\n    target_group: g\n    udp: {{{udp}}}\n\
         target_groups:\n  - name: g\n    algorithm: round_robin\n{health}    targets:\n"
    );
    for addr in targets {
        yaml += &format!("      - address: {addr}\n");
    }
    yaml
}
