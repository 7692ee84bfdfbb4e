//! Load-aware placement of new TCP connections across workers (`src/steering.rs`): each
//! connection goes to the worker with the fewest open connections, not where the kernel's
//! reuseport hash of its 4-tuple would put it. Read through `ballast_worker_connections`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// Open connections per worker, as `/metrics` reports them.
fn per_worker(admin: SocketAddr) -> (f64, f64) {
    let (scrape, _) = scrape(admin);
    let w = |n: &str| sample(&scrape, "ballast_worker_connections", "worker", n).unwrap();
    (w("0"), w("1"))
}

/// Opens one connection through `addr` and waits until its byte comes back (the connection
/// reached the target) and `admin`'s counts include it (`expected` connections in all).
fn open_one(addr: SocketAddr, admin: SocketAddr, expected: f64) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    wait_until("the workers to publish the new connection", || {
        let (a, b) = per_worker(admin);
        a + b == expected
    });
    s
}

/// Opens `n` connections one at a time and after each checks that the two workers' counts
/// differ by at most one. Under the kernel's hash the counts walk apart: a random walk of
/// `n` steps stays within ±1 with a chance of about 2^-(n/2) (2^-12 for 24).
fn open_alternating(addr: SocketAddr, admin: SocketAddr, n: usize) -> Vec<TcpStream> {
    let (base0, base1) = per_worker(admin);
    let mut conns = Vec::new();
    for i in 1..=n {
        conns.push(open_one(addr, admin, base0 + base1 + i as f64));
        let counts = per_worker(admin);
        assert!(
            (counts.0 - counts.1).abs() <= 1.0,
            "after {i} connections opened one by one the workers hold {counts:?}"
        );
    }
    conns
}

/// `ballast_accept_steering_load_aware` and `..._configured_load_aware` from `/metrics`.
fn steering_gauges(admin: SocketAddr) -> (Option<f64>, Option<f64>) {
    (
        unlabelled(admin, "ballast_accept_steering_load_aware"),
        unlabelled(admin, "ballast_accept_steering_configured_load_aware"),
    )
}

#[test]
fn connections_opened_one_by_one_alternate_between_the_workers() {
    let target = Backend::start(echo());
    let lb = Ballast::start(&config("round_robin", &[(target.addr, 1)], "", NO_CHECKS));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    assert_eq!(
        steering_gauges(admin),
        (Some(1.0), Some(1.0)),
        "the kernel refused the steering program (root and Linux 5.5 needed)"
    );
    let mut conns = open_alternating(addr, admin, 24);
    // Keep the first 12 but four of one parity (one worker's, as they alternated), so the
    // workers are left 2 and 6 apart; the next connections must all go to the one with
    // fewer until they are level.
    conns = conns
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i < 12 && !(i % 2 == 0 && *i < 8))
        .map(|(_, s)| s)
        .collect();
    let kept = conns.len() as f64;
    wait_until("closed connections to leave the counts", || {
        let (a, b) = per_worker(admin);
        a + b == kept
    });
    let (a, b) = per_worker(admin);
    let gap = (a - b).abs() as usize;
    for k in 1..=gap {
        conns.push(open_one(addr, admin, kept + k as f64));
    }
    let (a2, b2) = per_worker(admin);
    assert_eq!(
        a2, b2,
        "from {a} / {b}, {gap} new connections should have gone to the emptier worker"
    );
}

/// A worker that panics holding connections publishes an empty load as it goes, so its
/// replacement is steered the next connections instead of starving beside a stale count.
#[test]
fn a_restarted_worker_gets_the_next_connections() {
    let target = Backend::start(echo());
    let lb = Ballast::start(&config("round_robin", &[(target.addr, 1)], "", NO_CHECKS));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let mut conns = open_alternating(addr, admin, 20);
    assert_eq!(per_worker(admin), (10.0, 10.0));
    assert_eq!(
        http(admin, "POST", "/debug/panic/worker/0", None, "").0,
        202
    );
    wait_restarts(admin, "worker", 1.0);
    wait_until("the restarted worker to count 0 connections", || {
        per_worker(admin) == (0.0, 10.0)
    });
    for k in 1..=10 {
        conns.push(open_one(addr, admin, 10.0 + k as f64));
    }
    assert_eq!(per_worker(admin), (10.0, 10.0), "all ten to the new worker");
}

/// A handover takes the sockets out of the steering arrays (a socket can be in one only);
/// when the new process then never says it has taken over, the old one puts them back and
/// places by load again (it used to go on with the kernel's hash, saying load-aware).
#[test]
fn a_failed_upgrade_puts_the_sockets_back_into_steering() {
    use std::os::unix::net::UnixStream;
    let target = Backend::start(echo());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let yaml = config("round_robin", &[(target.addr, 1)], "", NO_CHECKS).replacen(
        "shutdown_timeout: 5s\n",
        &format!(
            "shutdown_timeout: 5s\nupgrade_socket: {}\n",
            socket.display()
        ),
        1,
    );
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    // A new process that asks for the sockets, reads what it is offered, and goes away. (The
    // handover thread binds its socket beside the listeners: it may not be there yet.)
    wait_until("the upgrade socket", || socket.exists());
    let mut c = UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"take\n").unwrap();
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut header).unwrap();
    // The sockets were taken out of steering before the header was sent.
    assert_eq!(
        steering_gauges(admin).0,
        Some(0.0),
        "released for the handover"
    );
    drop(c);
    // The handover broke off: the old process puts the sockets back.
    wait_until("placement to be load-aware again", || {
        steering_gauges(admin).0 == Some(1.0)
    });
    drop(open_alternating(addr, admin, 24));
}

#[test]
fn listeners_bound_afresh_after_a_node_drain_are_steered_too() {
    let target = Backend::start(echo());
    // A port below the ephemeral range: the drain gives it back, and a parallel test's
    // bind(:0) must not take it before the enable binds it again.
    let yaml = on_stable_port(&config("round_robin", &[(target.addr, 1)], "", NO_CHECKS));
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    assert_eq!(http(admin, "POST", "/node/drain?grace=0s", None, "").0, 202);
    wait_until("the node to be drained", || {
        http(admin, "GET", "/node", None, "")
            .1
            .contains("\"drained\"")
    });
    assert_eq!(http(admin, "POST", "/node/enable", None, "").0, 200);
    wait_listening(addr);
    // wait_listening's own probe connection must be gone before counting from zero.
    wait_until("the probe connection to close", || {
        per_worker(admin) == (0.0, 0.0)
    });
    let conns = open_alternating(addr, admin, 20);
    drop(conns);
}

#[test]
fn a_listener_removed_by_a_reload_leaves_no_steering_descriptors_behind() {
    let target = Backend::start(echo());
    let extra = "  - name: m\n    protocol: tcp\n    bind: 127.0.0.1:0\n    target_group: g\n";
    let yaml = config("round_robin", &[(target.addr, 1)], extra, NO_CHECKS);
    let lb = Ballast::start(&yaml);
    let admin = lb.admin_addr();
    assert_eq!(fetch_echo(lb.addr("m")), "ping");
    let l = lb.addr("l");
    wait_until("the connection to m to close", || {
        per_worker(admin) == (0.0, 0.0)
    });
    let before = lb.fd_count();
    let without_m = config("round_robin", &[(target.addr, 1)], "", NO_CHECKS).replacen(
        "bind: 127.0.0.1:0",
        &format!("bind: '{l}'"),
        1,
    );
    lb.rewrite_config(&without_m);
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    // m's socket per worker (2), and its socket array and program (2).
    wait_until("m's descriptors to close", || lb.fd_count() + 4 <= before);
    assert_eq!(fetch_echo(l), "ping");
}

/// Sends `ping` to the echo target behind `addr`; what came back.
fn fetch_echo(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = client(addr);
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn accept_steering_hash_leaves_placement_to_the_kernel() {
    let target = Backend::start(echo());
    let yaml = config("round_robin", &[(target.addr, 1)], "", NO_CHECKS).replacen(
        "workers: 2\n",
        "workers: 2\naccept_steering: hash\n",
        1,
    );
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    assert_eq!(steering_gauges(admin), (Some(0.0), Some(0.0)));
    // Still counted per worker, and served.
    let _conn = open_one(addr, admin, 1.0);
}

/// Runs Ballast as `nobody` with the capabilities `caps` (setpriv's `+bpf,...` form; empty for
/// none) and returns what `/metrics` says of the steering.
fn load_aware_as_nobody(caps: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    need("setpriv");
    // Everything `nobody` must reach: a world-readable directory, config and binary copy.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("ballast");
    std::fs::copy(env!("CARGO_BIN_EXE_ballast"), &bin).unwrap();
    let target = Backend::start(echo());
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = config("round_robin", &[(target.addr, 1)], "", NO_CHECKS).replacen(
        "workers: 2\n",
        &format!("workers: 2\nadmin: {{bind: \"{admin}\"}}\n"),
        1,
    );
    let path = dir.path().join("ballast.yaml");
    std::fs::write(&path, yaml).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut args = vec!["--reuid=nobody", "--regid=nogroup", "--clear-groups"];
    let (inh, ambient) = (
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
    );
    if !caps.is_empty() {
        args.extend([inh.as_str(), ambient.as_str()]);
    }
    let mut child = std::process::Command::new("setpriv")
        .args(args)
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    wait_until("the admin API of the unprivileged Ballast", || {
        let Ok((200, text)) = try_http(admin, "GET", "/metrics", None, "") else {
            return false;
        };
        line = text
            .lines()
            .find(|l| l.starts_with("ballast_accept_steering_load_aware "))
            .unwrap_or_default()
            .to_string();
        true
    });
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn cap_bpf_alone_is_enough_and_without_it_the_hash_is_used() {
    assert_eq!(
        load_aware_as_nobody("+bpf"),
        "ballast_accept_steering_load_aware 1",
        "as nobody with CAP_BPF (what conf/systemd/ballast.service grants)"
    );
    assert_eq!(
        load_aware_as_nobody(""),
        "ballast_accept_steering_load_aware 0",
        "as nobody without capabilities"
    );
}
