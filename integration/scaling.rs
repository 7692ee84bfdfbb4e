//! Scaling hooks: load through Ballast crosses `scale_out`'s threshold, the hook starts a real
//! backend process and prints its address, the new target takes traffic after its checks;
//! the hook runs at most once per cooldown; when the load falls, `scale_in` drains and removes
//! one target and its hook stops that backend.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A backend process: answers each connection with its name, then holds it open until the
/// client closes.
const BACKEND: &str = r#"
import socket, sys, threading
port, name = int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(128)
def serve(c):
    c.sendall(name.encode() + b"\n")
    while c.recv(1024): pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Kills every backend the hooks started (their pids are in `dir/*.pid`).
struct Started(std::path::PathBuf);

impl Drop for Started {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                if let Ok(pid) = std::fs::read_to_string(entry.path()) {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        // SAFETY: kill(2) on a process the test's hook started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// Opens a connection through `addr` and reads the backend's name.
fn open(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut name = String::new();
    BufReader::new(&s).read_line(&mut name).unwrap();
    (s, name.trim().to_string())
}

/// The addresses of group `g`'s targets in service, as `GET /targets` at `admin` lists them.
fn in_service(admin: std::net::SocketAddr) -> Vec<String> {
    group_targets(admin, "g")
        .iter()
        .filter(|t| t["admin_state"] != "removed")
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn load_scales_out_through_the_hook_once_per_cooldown_then_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let _started = Started(dir.path().to_path_buf());
    let script = dir.path().join("backend.py");
    std::fs::write(&script, BACKEND).unwrap();
    let d = dir.path().display();
    let out = format!(
        "port=$(python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); \
         print(s.getsockname()[1])'); \
         nohup python3 {d}/backend.py $port b$port >/dev/null 2>&1 & echo $! > {d}/$port.pid; \
         echo add 127.0.0.1:$port"
    );
    let scale_in =
        format!("p=${{BALLAST_TARGET##*:}}; [ -f {d}/$p.pid ] && kill $(cat {d}/$p.pid); true");
    // The hooks as scripts, as an operator would keep them.
    std::fs::write(dir.path().join("out.sh"), &out).unwrap();
    std::fs::write(dir.path().join("in.sh"), &scale_in).unwrap();
    let (out, scale_in) = (format!("sh {d}/out.sh"), format!("sh {d}/in.sh"));
    let first = Backend::start(named_echo("a"));
    let yaml = format!(
        "listeners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n    algorithm: least_connections\n\
         \x20   health_check: {{protocol: tcp, interval: 200ms, timeout: 150ms, \
         healthy_threshold: 1, unhealthy_threshold: 1}}\n\
         \x20   scaling:\n\
         \x20     scale_out: {{when: active_connections_per_target above 3 for 1s, exec: '{out}'}}\n\
         \x20     scale_in: {{when: active_connections_per_target below 1 for 1s, exec: '{scale_in}'}}\n\
         \x20     cooldown: 3s\n      min_targets: 1\n      max_targets: 3\n      timeout: 10s\n\
         \x20   targets:\n      - address: {}\n",
        first.addr
    );
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let per_target = [
        ("target_group", "g"),
        ("metric", "active_connections_per_target"),
    ];
    let ok_runs =
        |action: &'static str| [("target_group", "g"), ("action", action), ("result", "ok")];
    let runs = "ballast_scaling_runs_total";
    // Eight clients on the one target: 8 per target, above 3 (sampled so for the rule's 1 s
    // before its command runs).
    let mut held: Vec<(TcpStream, String)> = (0..8).map(|_| open(addr)).collect();
    assert!(held.iter().all(|(_, n)| n == "a"));
    wait_metric(admin, "ballast_scaling_sample", &per_target, WAIT, |v| {
        v == 8.0
    });
    // A run is counted once the target its command printed is added.
    wait_metric(admin, runs, &ok_runs("scale_out"), WAIT, |n| n == 1.0);
    let first_done = Instant::now();
    let added: Vec<String> = in_service(admin)
        .into_iter()
        .filter(|a| *a != first.addr.to_string())
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    wait_health(admin, "g", &added[0], "healthy");
    let port = added[0].rsplit(':').next().unwrap();
    // The new backend takes the next clients (least_connections: it has none).
    let (s, name) = open(addr);
    assert_eq!(name, format!("b{port}"), "the started backend serves");
    held.push((s, name));
    // Still 9 over 2 targets (> 3): a second scale_out, but only after the cooldown, which
    // runs from the first run's end (the second is counted at its own end, later still).
    wait_metric(admin, runs, &ok_runs("scale_out"), 4 * WAIT, |n| n == 2.0);
    let gap = first_done.elapsed();
    assert!(
        gap >= Duration::from_millis(2900),
        "the second run came within the cooldown: done {gap:?} after the first"
    );
    // Three targets now: 9 / 3 = 3, not above 3; max_targets reached anyway.
    assert_eq!(in_service(admin).len(), 3, "{:?}", in_service(admin));

    // The load goes: below 1 per target for 1 s, one target drained and removed, its
    // backend stopped by the hook.
    drop(held);
    wait_metric(
        admin,
        "ballast_scaling_sample",
        &per_target,
        2 * WAIT,
        |v| v == 0.0,
    );
    wait_metric(admin, runs, &ok_runs("scale_in"), 2 * WAIT, |n| n == 1.0);
    let left = in_service(admin);
    assert_eq!(left.len(), 2, "one target removed: {left:?}");
}
