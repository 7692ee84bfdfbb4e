//! A `ballast run` process started from a YAML string: its log, its notifications, signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::configs::write_config;
use super::notify;
use super::waits::{socket_bound, wait_state, WAIT};

/// Lines a process has printed, with a condition variable to wait for more.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    more: Condvar,
    closed: AtomicBool,
}

thread_local! {
    /// Capabilities the next launch on this thread drops (see [`Ballast::start_without`]).
    static DROP_CAPS: std::cell::Cell<&'static [u32]> = const { std::cell::Cell::new(&[]) };
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

    /// As [`Ballast::start`], with more arguments to `ballast run` (e.g. `--upgrade-from`).
    pub fn start_with_args(yaml: &str, args: &[&str]) -> Ballast {
        Self::launch(yaml, "info", None, args)
    }

    /// As [`Ballast::start`], with a log level and optionally a lower open-file limit.
    pub fn start_with(yaml: &str, level: &str, fd_limit: Option<u64>) -> Ballast {
        Self::launch(yaml, level, fd_limit, &[])
    }

    /// As [`Ballast::start`], with these environment variables set for the process (e.g.
    /// `BALLAST_FAULT_NEAR_WRAP`).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Ballast {
        Self::launch_as(yaml, "info", None, &[], env, &[], || {})
    }

    /// As [`Ballast::start`], under systemd's `systemd-socket-activate` with `activate` (its
    /// `--listen`, `--datagram`, `--fdname` arguments): it binds those sockets, and starts
    /// Ballast with them (`LISTEN_FDS`) on the first connection or datagram, which `trigger`
    /// sends. Returns once Ballast is ready.
    pub fn start_activated(yaml: &str, activate: &[&str], trigger: impl FnOnce()) -> Ballast {
        Self::launch_as(yaml, "info", None, &[], &[], activate, trigger)
    }

    fn launch(yaml: &str, level: &str, fd_limit: Option<u64>, args: &[&str]) -> Ballast {
        Self::launch_as(yaml, level, fd_limit, args, &[], &[], || {})
    }

    /// As [`Ballast::start`], without the capabilities `caps` (numbers, as in
    /// `linux/capability.h`): dropped from the bounding set before the exec, so root's Ballast
    /// starts without them, as under a service manager's `CapabilityBoundingSet=`.
    pub fn start_without(yaml: &str, caps: &'static [u32]) -> Ballast {
        DROP_CAPS.with(|d| d.set(caps));
        let b = Self::launch_as(yaml, "info", None, &[], &[], &[], || {});
        DROP_CAPS.with(|d| d.set(&[]));
        b
    }

    /// Starts `ballast run`, directly or (with `activate`) under `systemd-socket-activate`,
    /// calls `trigger`, and waits until Ballast is ready.
    fn launch_as(
        yaml: &str,
        level: &str,
        fd_limit: Option<u64>,
        args: &[&str],
        env: &[(&str, &str)],
        activate: &[&str],
        trigger: impl FnOnce(),
    ) -> Ballast {
        let config = write_config(&with_admin(yaml));
        let notifications = notify::Notifications::new();
        let mut command = if activate.is_empty() {
            Command::new(env!("CARGO_BIN_EXE_ballast"))
        } else {
            super::servers::need("systemd-socket-activate");
            // It passes the launched program only the variables it is told to.
            let mut c = Command::new("systemd-socket-activate");
            c.args(activate)
                .arg(format!(
                    "--setenv=NOTIFY_SOCKET={}",
                    notifications.path().display()
                ))
                .arg(env!("CARGO_BIN_EXE_ballast"));
            c
        };
        let caps = DROP_CAPS.with(|d| d.get());
        if !caps.is_empty() {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and changes only the child's bounding set.
            unsafe {
                command.pre_exec(move || {
                    for &cap in caps {
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
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
        let mut child = command
            .envs(env.iter().copied())
            .env("NOTIFY_SOCKET", notifications.path())
            .args(["run", "--log-level", level, "--config"])
            .arg(config.path())
            .args(args)
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
        // The manager's sockets must be bound before `trigger` can reach them.
        let udp = activate.contains(&"--datagram");
        for addr in activate.iter().filter_map(|a| a.strip_prefix("--listen=")) {
            let addr: SocketAddr = addr.parse().expect("--listen=IP:PORT");
            // Unbound, what it has printed so far (bound: `Ok`, all there is to it).
            let _ = wait_state(
                &format!("systemd-socket-activate to bind {addr}"),
                WAIT,
                || socket_bound(addr, udp).then_some(()).ok_or_else(|| b.log()),
                Result::is_ok,
            );
        }
        trigger();
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
    /// Only where a test checks what is logged (a message for the operator): state is waited
    /// for through the admin API, `/metrics` or the notifications (`waits.rs`, `admin.rs`),
    /// not through the wording of a message, which is for people and changes.
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

/// Runs `ballast run` on `yaml`, which must be refused at start (exit code 2); returns its
/// standard error.
pub fn run_refused(yaml: &str) -> String {
    let file = write_config(&with_admin(yaml));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["run", "--config"])
        .arg(file.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    // Read on a thread so a process that never ends cannot hold the test past WAIT.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running {WAIT:?} after start: {}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    stderr
}

/// A finished command's standard output, as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished command's standard error, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
