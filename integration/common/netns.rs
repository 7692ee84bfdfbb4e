//! Network namespaces for tests of several hosts on one machine: created by a [`Lab`], which
//! also starts the processes that run inside them and removes everything when dropped.
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); without it, a test fails saying so.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `ip args…`, panicking with its output when it fails.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs `program args…`, panicking with its output when it fails; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A process started inside a namespace, its output going to a file.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// What it has printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (to `ip netns exec`, which has exec'd the program: same pid).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

/// Namespaces and the processes in them; all removed on drop.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    processes: Vec<Process>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A lab whose namespaces are named `{tag}{pid}-…` (unique per test process).
    pub fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("{tag}{}", std::process::id()),
            namespaces: Vec::new(),
            processes: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A scratch directory that lives as long as the lab.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The full name of namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Creates namespace `short` with its loopback up.
    pub fn add(&mut self, short: &str) -> String {
        let name = self.ns(short);
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("cannot run `ip` (iproute2)");
        assert!(
            out.status.success(),
            "cannot create network namespace {name} (these tests need root, as CI runs \
             them): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair: `a_if` in namespace `a`, `b_if` in `b`, both up.
    pub fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        let (a, b) = (self.ns(a), self.ns(b));
        ip(&[
            "link", "add", a_if, "netns", &a, "type", "veth", "peer", "name", b_if, "netns", &b,
        ]);
        ip(&["-n", &a, "link", "set", a_if, "up"]);
        ip(&["-n", &b, "link", "set", b_if, "up"]);
    }

    /// Runs `ip -n NS args…` in namespace `short`.
    pub fn ip(&self, short: &str, args: &[&str]) {
        let ns = self.ns(short);
        let mut all = vec!["-n", &ns];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Output of `ip -n NS args…`.
    pub fn ip_output(&self, short: &str, args: &[&str]) -> String {
        let ns = self.ns(short);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Sets sysctl `key` to `value` inside namespace `short`.
    pub fn sysctl(&self, short: &str, key: &str, value: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(short),
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ],
        );
    }

    /// Starts `program args…` inside namespace `short`; its output goes to `{log}.log` in
    /// the lab's directory. Killed when the lab is dropped.
    pub fn spawn(&mut self, short: &str, log: &str, program: &str, args: &[&str]) -> usize {
        let path = self.dir().join(format!("{log}.log"));
        let file = File::create(&path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(short), program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        self.processes.push(Process { child, log: path });
        self.processes.len() - 1
    }

    /// Process number `i` (as [`Lab::spawn`] returned it).
    pub fn process(&mut self, i: usize) -> &mut Process {
        &mut self.processes[i]
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.processes {
            out += &format!("--- {}\n{}\n", p.log.display(), p.log());
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.processes {
            p.kill();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a new thread that has entered network namespace `name` (setns): sockets it
/// creates live in that namespace, and may be used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on this thread only, with a namespace file we opened.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Waits until `cond` holds, polling every 50 ms, at most `limit`; returns how long it took.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}
