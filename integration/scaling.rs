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

/// When each line containing `needle` was logged, as the log's own timestamps say.
fn times(log: &str, needle: &str) -> Vec<Duration> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            // [2026-12-03T15:05:13.773Z INFO …
            let t = l.get(12..24)?; // 15:05:13.773
            let mut parts = t.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(Duration::from_secs_f64(h * 3600.0 + m * 60.0 + s))
        })
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
    let addr = lb.addr("l");
    // Eight clients on the one target: 8 per target, above 3.
    let mut held: Vec<(TcpStream, String)> = (0..8).map(|_| open(addr)).collect();
    assert!(held.iter().all(|(_, n)| n == "a"));
    lb.wait_log("scale_out: active_connections_per_target is 8.00", WAIT);
    let added = lb.wait_log("scaling: add 127.0.0.1:", WAIT);
    let port = added.rsplit(':').next().unwrap().trim().to_string();
    lb.wait_log(&format!("127.0.0.1:{port} is now healthy"), WAIT);
    // The new backend takes the next clients (least_connections: it has none).
    let (s, name) = open(addr);
    assert_eq!(name, format!("b{port}"), "the started backend serves");
    held.push((s, name));
    // Still 9 over 2 targets (> 3): a second scale_out, but only after the cooldown.
    let deadline = Instant::now() + 4 * WAIT;
    while times(&lb.log(), "scale_out: active_connections_per_target").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second scale_out:\n{}",
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(100)); // polls the log, a state no event announces
    }
    let runs = times(&lb.log(), "scale_out: active_connections_per_target");
    let dones = times(&lb.log(), "scale_out: command done");
    assert!(
        runs[1] >= dones[0] + Duration::from_millis(2900),
        "the second run came within the cooldown: runs {runs:?}, first done {:?}",
        dones[0]
    );
    lb.wait_log("scaling: add 127.0.0.1:", WAIT);
    // Three targets now: 9 / 3 = 3, not above 3; max_targets reached anyway.

    // The load goes: below 1 per target for 1 s, one target drained and removed, its
    // backend stopped by the hook.
    drop(held);
    let line = lb.wait_log("scale_in: active_connections_per_target is 0.00", 2 * WAIT);
    let removed = line.rsplit("for ").next().unwrap().trim().to_string();
    lb.wait_log("scale_in: command done", WAIT);
    let (_, body) = http(lb.admin_addr(), "GET", "/targets", None, "");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let state = doc["target_groups"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == removed.as_str())
        .map(|t| t["admin_state"].as_str().unwrap().to_string());
    assert!(
        state.is_none() || state.as_deref() == Some("removed"),
        "{removed} still in service: {body}"
    );
    let (scrape, text) = scrape(lb.admin_addr());
    let ok = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ballast_scaling_runs_total")
        .filter(|s| s.labels.get("result") == Some("ok"))
        .count();
    assert!(ok >= 2, "{text}");
}
