//! A fleet kept in step through etcd (`cluster:`): three Ballast nodes and a real etcd
//! (Debian's etcd-server, started by each test on its own ports and data). A change made
//! through one node's CLI reaches every node; a restarted node takes the fleet's state, not
//! its file's; etcd going away costs no connection.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;

const CHECKS: &str = "    health_check: {protocol: tcp, interval: 100ms, timeout: 100ms, \
                      healthy_threshold: 1, unhealthy_threshold: 1}\n";

/// A node's configuration: listener `web` on a free port in front of group `web` (weighted
/// round robin over `targets`), in the fleet `/ballast/test` of `etcd`; `etcd_extra` adds
/// keys to `cluster.etcd`.
fn node_yaml(etcd: &Etcd, id: &str, targets: &[SocketAddr], etcd_extra: &str) -> String {
    node_yaml_with(etcd, id, targets, etcd_extra, "")
}

/// As [`node_yaml`], with `group_extra` (whole lines) in group `web`.
fn node_yaml_with(
    etcd: &Etcd,
    id: &str,
    targets: &[SocketAddr],
    etcd_extra: &str,
    group_extra: &str,
) -> String {
    let targets: String = targets
        .iter()
        .map(|t| format!("      - {{address: '{t}'}}\n"))
        .collect();
    format!(
        "workers: 1\n\
         cluster:\n  node_id: {id}\n  etcd: {{endpoints: ['{}'], prefix: /ballast/test{etcd_extra}}}\n\
         listeners:\n  - {{name: web, protocol: tcp, bind: '127.0.0.1:0', target_group: web}}\n\
         target_groups:\n  - name: web\n    algorithm: weighted_round_robin\n{CHECKS}{group_extra}    targets:\n{targets}",
        etcd.url()
    )
}

/// Runs `ballast ARGS --admin ADMIN` (the CLI, as an operator would).
fn cli(admin: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .args(["--admin", &admin.to_string()])
        .env_remove("BALLAST_ADMIN")
        .env_remove("BALLAST_CONFIG")
        .env_remove("BALLAST_TOKEN_FILE")
        .output()
        .expect("run ballast")
}

/// As [`cli`], asserting success; returns stdout.
#[track_caller]
fn cli_ok(admin: SocketAddr, args: &[&str]) -> String {
    let out = cli(admin, args);
    assert!(
        out.status.success(),
        "ballast {}: {}{}",
        args.join(" "),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The name the target behind `lb`'s listener `web` answers with (one new connection).
fn answer(lb: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(lb)?;
    s.set_read_timeout(Some(WAIT))?;
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed without a name"));
    }
    Ok(line.trim().to_string())
}

/// The admin state of `target` on `node`.
fn state(node: &Ballast, target: SocketAddr) -> String {
    target_in(node.admin_addr(), "web", target)
        .map(|t| t["admin_state"].as_str().unwrap_or("?").to_string())
        .unwrap_or_else(|| "absent".into())
}

/// Waits (at most `timeout` for each node) until every node of `nodes` shows `target` in
/// one of `states` (`absent`: not listed).
#[track_caller]
fn wait_every(nodes: &[Ballast], target: SocketAddr, states: &[&str], timeout: Duration) {
    for (i, n) in nodes.iter().enumerate() {
        let what = format!("node {}: {target} {}", i + 1, states.join(" or "));
        wait_state(
            &what,
            timeout,
            || state(n, target),
            |s| states.contains(&s.as_str()),
        );
    }
}

/// How many connections `node` has sent to `target` so far.
fn total(node: &Ballast, target: SocketAddr) -> u64 {
    target_in(node.admin_addr(), "web", target).map_or(0, |t| t["total"].as_u64().unwrap())
}

/// Three nodes of the fleet in front of `targets`, each with every target healthy.
fn three_nodes(etcd: &Etcd, targets: &[SocketAddr]) -> Vec<Ballast> {
    let nodes: Vec<Ballast> = (1..=3)
        .map(|i| Ballast::start(&node_yaml(etcd, &format!("n{i}"), targets, "")))
        .collect();
    for n in &nodes {
        for &t in targets {
            wait_health(n.admin_addr(), "web", t, "healthy");
        }
    }
    nodes
}

#[test]
fn a_drain_through_one_node_stops_new_connections_on_every_node_within_a_second() {
    let etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    let start = Instant::now();
    let said = cli_ok(
        nodes[0].admin_addr(),
        &["drain", "web", &a.addr.to_string()],
    );
    assert!(said.contains("draining"), "{said}");
    for (i, n) in nodes.iter().enumerate() {
        wait_state(
            &format!("node {} to drain {}", i + 1, a.addr),
            Duration::from_secs(1).saturating_sub(start.elapsed()),
            || state(n, a.addr),
            |s| s == "draining",
        );
    }
    // New connections through every node go to b only: counted per node.
    for (i, n) in nodes.iter().enumerate() {
        let before = total(n, a.addr);
        for _ in 0..10 {
            assert_eq!(answer(n.addr("web")).unwrap(), "b", "node {}", i + 1);
        }
        assert_eq!(
            total(n, a.addr),
            before,
            "node {} sent a connection to a",
            i + 1
        );
    }
    // The fleet's view: every node in step (their records follow within a moment).
    let status = wait_state(
        "fleet status to say every node is in step",
        Duration::from_secs(2),
        || cli(nodes[2].admin_addr(), &["fleet", "status"]),
        |o| o.status.success(),
    );
    let status = stdout(&status);
    for id in ["n1", "n2", "n3"] {
        assert!(status.contains(id), "{status}");
    }
    // etcd holds it, under the prefix.
    let held = etcd.ctl(&["get", "--prefix", "/ballast/test/groups/web/states/"]);
    assert!(held.contains("draining"), "{held}");
    // A change that changes nothing (b is active) answers at once, not after a timeout.
    let asked = Instant::now();
    cli_ok(
        nodes[1].admin_addr(),
        &["enable", "web", &b.addr.to_string()],
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // A fourth node started with node 1's id is told so.
    let twin = Ballast::start(&node_yaml(&etcd, "n1", &[a.addr, b.addr], ""));
    twin.wait_log("another node's record has this node's id `n1`", WAIT);
    // ... and the two do not fight over the record (review: ~525 writes/s without end).
    twin.signal(libc::SIGHUP); // its generation differs from node 1's from now on
    twin.wait_log("reloaded", WAIT);
    let before = etcd.revision();
    std::thread::sleep(Duration::from_secs(2));
    let written = etcd.revision() - before;
    assert!(
        written <= 5,
        "{written} writes in 2 s with nothing changing"
    );
    drop(twin);
    // `--local` keeps a change on one node: enabled on node 3 only.
    cli_ok(
        nodes[2].admin_addr(),
        &["enable", "web", &a.addr.to_string(), "--local"],
    );
    assert_eq!(state(&nodes[2], a.addr), "active");
    assert_eq!(state(&nodes[0], a.addr), "draining");
    assert_eq!(state(&nodes[1], a.addr), "draining");
}

#[test]
fn an_added_target_is_served_by_every_node_and_a_restarted_node_takes_the_fleets_state() {
    let etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let c = Backend::start(named("c"));
    let mut nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    let said = cli_ok(nodes[1].admin_addr(), &["add", "web", &c.addr.to_string()]);
    assert!(said.contains("added"), "{said}");
    cli_ok(
        nodes[1].admin_addr(),
        &["drain", "web", &a.addr.to_string()],
    );
    for (i, n) in nodes.iter().enumerate() {
        wait_health(n.admin_addr(), "web", c.addr, "healthy");
        // b and c share what a no longer takes: c answers within a few connections.
        let seen: Vec<String> = (0..6).map(|_| answer(n.addr("web")).unwrap()).collect();
        assert!(seen.iter().any(|s| s == "c"), "node {}: {seen:?}", i + 1);
        assert!(!seen.iter().any(|s| s == "a"), "node {}: {seen:?}", i + 1);
    }
    // Node 3 restarts with its file (a and b only): it comes back with the fleet's state.
    let yaml = node_yaml(&etcd, "n3", &[a.addr, b.addr], "");
    drop(nodes.pop());
    let n3 = Ballast::start(&yaml);
    assert_eq!(state(&n3, c.addr), "active", "{}", n3.log());
    assert_eq!(state(&n3, a.addr), "draining", "{}", n3.log());
    // Removed and reweighted through node 3: every node follows.
    cli_ok(n3.admin_addr(), &["remove", "web", &b.addr.to_string()]);
    cli_ok(
        n3.admin_addr(),
        &["weight", "web", &c.addr.to_string(), "7"],
    );
    nodes.push(n3);
    for n in &nodes {
        wait_target(n.admin_addr(), "web", c.addr, WAIT, "weight 7", |t| {
            t["weight"] == 7
        });
        // Removed: listed as such while connections remain, then gone.
        wait_state(
            "b removed",
            WAIT,
            || state(n, b.addr),
            |s| s == "removed" || s == "absent",
        );
    }
    // A refused change is refused before etcd: nothing is written.
    let out = cli(nodes[0].admin_addr(), &["remove", "web", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    // Tokens stay per node: an add with tokens through the fleet says so.
    let out = cli(
        nodes[0].admin_addr(),
        &["add", "web", "127.0.0.1:9", "--token", "match-1"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("tokens are kept per node"),
        "{}",
        stderr(&out)
    );
    // A reload keeps the fleet's targets, not the file's.
    nodes[0].signal(libc::SIGHUP);
    nodes[0].wait_log("reloaded", WAIT);
    assert_eq!(state(&nodes[0], c.addr), "active");
    assert!(matches!(
        state(&nodes[0], b.addr).as_str(),
        "removed" | "absent"
    ));
}

#[test]
fn etcd_away_for_ten_seconds_under_load_fails_no_connection_and_later_changes_reach_every_node() {
    let mut etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    cli_ok(
        nodes[0].admin_addr(),
        &["drain", "web", &a.addr.to_string()],
    );
    let listeners: Vec<SocketAddr> = nodes.iter().map(|n| n.addr("web")).collect();
    // ~100 connections a second through the three nodes, for the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match answer(listeners[i % 3]) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            errors
        })
    };
    etcd.stop();
    let away = Instant::now();
    for n in &nodes {
        wait_metric(
            n.admin_addr(),
            "ballast_fleet_etcd_connected",
            &[],
            WAIT,
            |v| v == 0.0,
        );
    }
    // Away: the state stays, readiness too, and a fleet change says why it cannot be made.
    let out = cli(
        nodes[1].admin_addr(),
        &["enable", "web", &a.addr.to_string()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    for n in &nodes {
        assert_eq!(state(n, a.addr), "draining");
        assert_eq!(get_json(n.admin_addr(), "/healthz")["status"], "ready");
    }
    std::thread::sleep(Duration::from_secs(10).saturating_sub(away.elapsed()));
    etcd.resume();
    for n in &nodes {
        wait_metric(
            n.admin_addr(),
            "ballast_fleet_etcd_connected",
            &[],
            WAIT,
            |v| v == 1.0,
        );
    }
    // Back: a change reaches every node.
    cli_ok(
        nodes[2].admin_addr(),
        &["enable", "web", &a.addr.to_string()],
    );
    cli_ok(
        nodes[2].admin_addr(),
        &["drain", "web", &b.addr.to_string()],
    );
    for n in &nodes {
        wait_state(
            "a enabled, b drained",
            WAIT,
            || (state(n, a.addr), state(n, b.addr)),
            |s| s.0 == "active" && s.1 == "draining",
        );
    }
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 500, "only {ok} connections in the outage's ~12 s");
    // Errors were counted, and said once per interval, not once per retry.
    let (scrape, _) = scrape(nodes[0].admin_addr());
    let errors = labelled(&scrape, "ballast_fleet_etcd_errors_total", &[]).unwrap();
    assert!(errors >= 1.0, "{errors}");
    let warnings = nodes[0]
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("fleet /ballast/test: etcd"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings in ~10 s:\n{}",
        nodes[0].log()
    );
}

#[test]
fn tls_with_client_certificates_and_a_password() {
    let pki = common::pki::Pki::new();
    let etcd = Etcd::start_tls(&pki);
    // Authentication on, with a root user (etcd's own rule) and a user for the fleet.
    etcd.ctl(&["user", "add", "root:rootpw"]);
    etcd.ctl(&["user", "add", "ballast:s3cret"]);
    etcd.ctl(&["role", "add", "fleet"]);
    etcd.ctl(&[
        "role",
        "grant-permission",
        "fleet",
        "--prefix=true",
        "readwrite",
        "/ballast/test/",
    ]);
    etcd.ctl(&["user", "grant-role", "ballast", "fleet"]);
    etcd.ctl(&["auth", "enable"]);
    let t = etcd.tls.as_ref().unwrap();
    let password = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = etcd.dir().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p.display().to_string()
    };
    let tls = format!(
        ", tls: {{ca: '{}', cert: '{}', key: '{}'}}",
        t.ca.display(),
        t.client_cert.display(),
        t.client_key.display()
    );
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    // A wrong password: a clear error at start (exit 2), within seconds, not a hang.
    let wrong = format!(
        "{tls}, username: ballast, password_file: '{}'",
        password("bad", "nope")
    );
    let started = Instant::now();
    let said = run_refused(&node_yaml(&etcd, "n1", &[a.addr, b.addr], &wrong));
    assert!(said.contains("etcd refused the login"), "{said}");
    assert!(said.contains("ballast"), "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The right one: two nodes in step over TLS.
    let right = format!(
        "{tls}, username: ballast, password_file: '{}'",
        password("ok", "s3cret")
    );
    let n1 = Ballast::start(&node_yaml(&etcd, "n1", &[a.addr, b.addr], &right));
    let n2 = Ballast::start(&node_yaml(&etcd, "n2", &[a.addr, b.addr], &right));
    cli_ok(n1.admin_addr(), &["drain", "web", &a.addr.to_string()]);
    wait_state(
        "n2 drains a",
        WAIT,
        || state(&n2, a.addr),
        |s| s == "draining",
    );
    // Without a client certificate etcd does not answer: the node serves its file's state
    // and says why.
    let no_cert = format!(", tls: {{ca: '{}'}}", t.ca.display());
    let n3 = Ballast::start(&node_yaml(&etcd, "n3", &[a.addr, b.addr], &no_cert));
    assert_eq!(state(&n3, a.addr), "active");
    n3.wait_log("not reached", WAIT);
    let _ = std::io::stderr().flush();
}

#[test]
fn a_scaling_hook_runs_once_per_decision_in_a_fleet_of_three() {
    let mut etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let c = Backend::start(named("c"));
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Always true with no load: one decision, then max_targets holds (a long cooldown).
    // It takes 2 s (as starting capacity does): every node's condition holds meanwhile.
    let hook = format!(
        "echo $BALLAST_ACTION >> {}; sleep 2; echo add {}",
        runs.display(),
        c.addr
    );
    let scaling = format!(
        "    scaling:\n      scale_out: {{when: active_connections_per_target below 1 for 1s, \
         exec: '{hook}'}}\n      cooldown: 60s\n      max_targets: 2\n      timeout: 10s\n"
    );
    let nodes: Vec<Ballast> = (1..=3)
        .map(|i| {
            Ballast::start(&node_yaml_with(
                &etcd,
                &format!("n{i}"),
                &[a.addr],
                "",
                &scaling,
            ))
        })
        .collect();
    // One node leads the group; the target its hook printed reaches all three.
    for n in &nodes {
        wait_health(n.admin_addr(), "web", c.addr, "healthy");
    }
    let leaders: Vec<String> = nodes
        .iter()
        .map(|n| get_json(n.admin_addr(), "/fleet")["leaders"]["web"].to_string())
        .collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && l != "null"),
        "{leaders:?}"
    );
    // Three nodes sampled the same condition for seconds: the command ran once.
    std::thread::sleep(Duration::from_secs(3));
    let ran = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        ran.lines().count(),
        1,
        "the hook ran {} times: {ran}",
        ran.lines().count()
    );
    let leader = leaders[0].trim_matches('"').to_string();
    // etcd restarts: each node starts a session with a new lease, and the leader moves its
    // key to it (else the key would lapse with the old lease and leadership move for
    // nothing).
    etcd.stop();
    etcd.resume();
    let lease_of = |key: &str| {
        let doc: serde_json::Value =
            serde_json::from_str(&etcd.ctl(&["get", key, "-w", "json"])).unwrap();
        doc["kvs"][0]["lease"].as_i64()
    };
    let record = format!("/ballast/test/nodes/{leader}");
    wait_state(
        "the leader key under the leader's new lease",
        WAIT,
        || (lease_of("/ballast/test/leaders/web"), lease_of(&record)),
        |(k, r)| k.is_some() && k == r,
    );
    // The leader stops: another node takes the group over (its lease is revoked or expires).
    let mut nodes = nodes;
    let at = nodes
        .iter()
        .position(|n| get_json(n.admin_addr(), "/fleet")["node_id"] == leader.as_str())
        .unwrap();
    // A graceful stop gives the lease up: another node leads within moments, not after the
    // lease's 10 s.
    let mut gone = nodes.remove(at);
    gone.terminate();
    gone.wait_exit(WAIT);
    let next = wait_state(
        "another node to lead group web",
        Duration::from_secs(2),
        || get_json(nodes[0].admin_addr(), "/fleet")["leaders"]["web"].clone(),
        |l| l.is_string() && *l != leader.as_str(),
    );
    assert_ne!(next, leader.as_str());
}

#[test]
fn dns_discovery_is_looked_up_by_one_node_and_applied_by_all() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let a = Backend::start(named("a"));
    let d = Backend::start_on("127.0.0.2:0".parse().unwrap(), named("d"));
    std::fs::write(&hosts, "127.0.0.2 web.test\n").unwrap();
    let (dns, dns_addr) = dnsmasq(&[
        &format!("--addn-hosts={}", hosts.display()),
        "--local-ttl=1",
        "--log-queries",
        &format!("--log-facility={}", dir.path().join("dns.log").display()),
    ]);
    let discover = format!(
        "    discover: [{{dns: 'web.test:{}', min_ttl: 1s, max_ttl: 1s}}]\n",
        d.addr.port()
    );
    let nodes: Vec<Ballast> = (1..=3)
        .map(|i| {
            let yaml = node_yaml_with(&etcd, &format!("n{i}"), &[a.addr], "", &discover);
            Ballast::start(&format!("resolvers: ['{dns_addr}']\n{yaml}"))
        })
        .collect();
    for n in &nodes {
        wait_health(n.admin_addr(), "web", d.addr, "healthy");
    }
    // Marked discovered in etcd, and looked up by the leader only: over 3 s of 1 s TTLs,
    // about 6 lookups (one node), not about 18 (three).
    let held = etcd.ctl(&["get", "--prefix", "/ballast/test/groups/web/targets/"]);
    assert!(held.contains("\"discovered\":true"), "{held}");
    let lookups = || {
        let log = std::fs::read_to_string(dir.path().join("dns.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("query[A] web.test"))
            .count()
    };
    let before = lookups();
    std::thread::sleep(Duration::from_secs(6));
    let made = lookups() - before;
    assert!(
        (1..=10).contains(&made),
        "{made} lookups in 6 s from three nodes"
    );
    // The name moves to 127.0.0.3: every node adds the new address and removes the old.
    let e = Backend::start_on(
        format!("127.0.0.3:{}", d.addr.port()).parse().unwrap(),
        named("e"),
    );
    std::fs::write(&hosts, "127.0.0.3 web.test\n").unwrap();
    // SAFETY: kill(2) on the dnsmasq this test started: SIGHUP re-reads --addn-hosts.
    unsafe { libc::kill(dns.0.id() as i32, libc::SIGHUP) };
    for n in &nodes {
        wait_health(n.admin_addr(), "web", e.addr, "healthy");
        wait_state(
            "d removed",
            WAIT,
            || state(n, d.addr),
            |s| s == "removed" || s == "absent",
        );
    }
    drop(dns);
}

/// `n` consecutive free ports on 127.0.0.1 (the first of them), below the kernel's
/// ephemeral range (so no connection of another test takes one meanwhile).
fn free_run(n: u16) -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let base = rng.gen_range(20_000..30_000);
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports in 20000-30000");
}

#[test]
fn the_shipped_recipe_runs_a_fleet_of_three_on_one_host() {
    use std::os::unix::process::CommandExt;
    common::servers::need("etcd");
    let (etcd, admin, port) = (free_run(2), free_run(4), free_run(4));
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/fleet/run.sh");
    let mut run = Command::new("bash")
        .arg(script)
        .env("BALLAST", env!("CARGO_BIN_EXE_ballast"))
        .env("ETCD_PORT", etcd.to_string())
        .env("ETCD_PEER_PORT", (etcd + 1).to_string())
        .env("ADMIN_BASE", admin.to_string())
        .env("PORT_BASE", port.to_string())
        .env("TARGET_A_PORT", a.addr.port().to_string())
        .env("TARGET_B_PORT", b.addr.port().to_string())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    struct Group(u32);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the process group this test started (run.sh and its jobs).
            unsafe { libc::kill(-(self.0 as i32), libc::SIGTERM) };
        }
    }
    let _group = Group(run.id());
    let admins: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("127.0.0.1:{}", admin + i).parse().unwrap())
        .collect();
    for &n in &admins {
        wait_listening(n);
        wait_health(n, "web", a.addr, "healthy");
    }
    cli_ok(admins[0], &["drain", "web", &a.addr.to_string()]);
    for &n in &admins {
        wait_target(n, "web", a.addr, Duration::from_secs(1), "draining", |t| {
            t["admin_state"] == "draining"
        });
    }
    let lb: SocketAddr = format!("127.0.0.1:{}", port + 3).parse().unwrap();
    assert_eq!(answer(lb).unwrap(), "b");
    let status = wait_state(
        "fleet status to say every node is in step",
        Duration::from_secs(2),
        || cli(admins[2], &["fleet", "status"]),
        |o| o.status.success(),
    );
    let status = stdout(&status);
    assert!(
        status.contains("node1") && status.contains("node3"),
        "{status}"
    );
    drop(_group);
    let _ = run.wait();
}

#[test]
fn a_node_frozen_through_an_etcd_restart_and_a_compaction_takes_the_fleets_state() {
    let mut etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let (n1, n2) = (
        Ballast::start(&node_yaml(&etcd, "n1", &[a.addr, b.addr], "")),
        Ballast::start(&node_yaml(&etcd, "n2", &[a.addr, b.addr], "")),
    );
    cli_ok(n2.admin_addr(), &["drain", "web", &a.addr.to_string()]);
    wait_state(
        "n1 drains a",
        WAIT,
        || state(&n1, a.addr),
        |s| s == "draining",
    );
    // n1 is frozen while etcd restarts (its connection is gone), changes are made and the
    // history compacted: when it wakes, the revision it would resume from is gone.
    n1.signal(libc::SIGSTOP);
    etcd.stop();
    etcd.resume();
    wait_metric(
        n2.admin_addr(),
        "ballast_fleet_etcd_connected",
        &[],
        WAIT,
        |v| v == 1.0,
    );
    cli_ok(n2.admin_addr(), &["enable", "web", &a.addr.to_string()]);
    cli_ok(n2.admin_addr(), &["drain", "web", &b.addr.to_string()]);
    etcd.ctl(&["compact", &etcd.revision().to_string()]);
    n1.signal(libc::SIGCONT);
    wait_state(
        "n1 has the fleet's state",
        WAIT,
        || (state(&n1, a.addr), state(&n1, b.addr)),
        |s| s.0 == "active" && s.1 == "draining",
    );
}

#[test]
fn a_burst_of_changes_through_every_node_settles_at_once() {
    let etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    let admins: Vec<SocketAddr> = nodes.iter().map(|n| n.admin_addr()).collect();
    // 12 targets added, reweighted, drained and half removed, through the three nodes at
    // once (the review's burst wrote node records for 25 s after it ended).
    let threads: Vec<_> = (0..12u16)
        .map(|i| {
            let admin = admins[usize::from(i) % 3];
            std::thread::spawn(move || {
                let t = format!("127.0.0.2:{}", 20000 + i);
                for args in [
                    vec!["add", "web", &t],
                    vec!["weight", "web", &t, "3"],
                    vec!["drain", "web", &t],
                ] {
                    cli_ok(admin, &args);
                }
                if i % 2 == 0 {
                    cli_ok(admin, &["remove", "web", &t]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ended = etcd.revision();
    // Settled: every node in step within a second, and etcd quiet after.
    wait_state(
        "every node in step",
        Duration::from_secs(2),
        || cli(admins[0], &["fleet", "status"]),
        |o| o.status.success(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = etcd.revision() - ended;
    assert!(after <= 20, "{after} writes in the 2 s after the burst");
    for n in &nodes {
        let live: Vec<String> = group_targets(n.admin_addr(), "web")
            .iter()
            .filter(|t| t["admin_state"] != "removed")
            .map(|t| format!("{} {} {}", t["address"], t["weight"], t["admin_state"]))
            .collect();
        assert_eq!(live.len(), 2 + 6, "{live:?}");
    }
    // And a change now takes effect at once.
    cli_ok(admins[1], &["drain", "web", &a.addr.to_string()]);
    wait_every(&nodes, a.addr, &["draining"], Duration::from_secs(1));
}

#[test]
fn an_etcd_that_lost_its_data_is_followed_from_scratch() {
    let mut etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    cli_ok(
        nodes[0].admin_addr(),
        &["drain", "web", &b.addr.to_string()],
    );
    wait_every(&nodes, b.addr, &["draining"], WAIT);
    // etcd comes back empty (revision 1): the nodes follow what it holds now, not the
    // revisions they had seen (the review: every later change was ignored).
    etcd.wipe();
    wait_every(&nodes, b.addr, &["active"], WAIT);
    cli_ok(
        nodes[1].admin_addr(),
        &["drain", "web", &a.addr.to_string()],
    );
    wait_every(&nodes, a.addr, &["draining"], Duration::from_secs(2));
}

#[test]
fn hand_written_values_large_or_bad_leave_every_node_agreeing() {
    let etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let c = Backend::start(named("c"));
    let mut nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    cli_ok(nodes[0].admin_addr(), &["add", "web", &c.addr.to_string()]);
    cli_ok(
        nodes[0].admin_addr(),
        &["drain", "web", &a.addr.to_string()],
    );
    // 4.8 MB under the prefix, in keys Ballast does not use (more than gRPC's default 4 MiB
    // answer).
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), vec![b'x'; 1_200_000]).unwrap();
    for i in 0..4 {
        etcd.put_file(&format!("/ballast/test/junk/{i}"), junk.path());
    }
    // A target record that does not parse: as no key, on the running nodes and on one
    // started now alike.
    let bad = format!("/ballast/test/groups/web/targets/{}", b.addr);
    etcd.ctl(&["put", &bad, "{\"weight\":1,"]);
    wait_every(&nodes, b.addr, &["removed", "absent"], WAIT);
    drop(nodes.pop());
    let n3 = Ballast::start(&node_yaml(&etcd, "n3", &[a.addr, b.addr], ""));
    assert_eq!(state(&n3, a.addr), "draining", "{}", n3.log());
    assert_eq!(state(&n3, c.addr), "active", "{}", n3.log());
    assert_eq!(state(&n3, b.addr), "absent", "{}", n3.log());
    nodes.push(n3);
    wait_state(
        "every node in step",
        Duration::from_secs(2),
        || cli(nodes[0].admin_addr(), &["fleet", "status"]),
        |o| o.status.success(),
    );
    // Every target key deleted (the list emptied): the file's list again, everywhere.
    etcd.ctl(&["del", "--prefix", "/ballast/test/groups/web/targets/"]);
    for n in &nodes {
        wait_state(
            "the file's list",
            WAIT,
            || (state(n, b.addr), state(n, c.addr)),
            |s| s.0 == "active" && (s.1 == "removed" || s.1 == "absent"),
        );
    }
    // The next change is made to that list, whole (second review: the fleet was left with
    // the added target alone, every other one gone from every node).
    cli_ok(nodes[1].admin_addr(), &["add", "web", &c.addr.to_string()]);
    for n in &nodes {
        wait_state(
            "a, b and c",
            WAIT,
            || [a.addr, b.addr, c.addr].map(|t| state(n, t)),
            |s| s.iter().all(|s| s == "active" || s == "draining"),
        );
    }
}

/// The lease of node `id`'s record, as etcdctl takes it (hex).
fn node_lease(etcd: &Etcd, id: &str) -> String {
    let key = format!("/ballast/test/nodes/{id}");
    let doc: serde_json::Value =
        serde_json::from_str(&etcd.ctl(&["get", &key, "-w", "json"])).unwrap();
    format!("{:x}", doc["kvs"][0]["lease"].as_i64().unwrap())
}

#[test]
fn a_node_gone_without_leaving_keeps_a_drain_from_calling_itself_done() {
    let etcd = Etcd::start();
    let a = Backend::start(named_echo("a"));
    let b = Backend::start(named_echo("b"));
    let mut nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    // Node 3 is cut off (frozen; its record's lease revoked, as when it expires): it may
    // still be serving connections to a, which no record counts.
    nodes[2].signal(libc::SIGSTOP);
    etcd.ctl(&["lease", "revoke", &node_lease(&etcd, "n3")]);
    let gone = |n: &Ballast| get_json(n.admin_addr(), "/fleet")["vanished"].clone();
    wait_state(
        "n3 gone without leaving",
        WAIT,
        || gone(&nodes[0]),
        |v| v.as_array().is_some_and(|v| !v.is_empty()),
    );
    // Node 1 restarts meanwhile: it knows too (the mark is in etcd, not in a process).
    let mut first = nodes.remove(0);
    first.terminate();
    first.wait_exit(WAIT);
    nodes.insert(
        0,
        Ballast::start(&node_yaml(&etcd, "n1", &[a.addr, b.addr], "")),
    );
    wait_state(
        "the restarted node knows n3 gone",
        WAIT,
        || gone(&nodes[0]),
        |v| v.as_array().is_some_and(|v| !v.is_empty()),
    );
    let vanished = || gone(&nodes[0]);
    let a_addr = a.addr.to_string();
    let drain_wait = |timeout| {
        cli(
            nodes[0].admin_addr(),
            &["drain", "web", &a_addr, "--wait", "--timeout", timeout],
        )
    };
    let out = drain_wait("1s");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("waiting for every node"),
        "{}",
        stderr(&out)
    );
    let out = cli(nodes[0].admin_addr(), &["fleet", "status"]);
    assert!(
        stderr(&out).contains("gone without leaving"),
        "{}",
        stderr(&out)
    );
    // Back: its record again, and the drain's wait ends.
    nodes[2].signal(libc::SIGCONT);
    let out = drain_wait("10s");
    assert!(out.status.success(), "{}", stderr(&out));
    // A node that stops leaves: no one calls it gone.
    nodes[1].terminate();
    let count = || {
        get_json(nodes[0].admin_addr(), "/fleet")["nodes"]
            .as_array()
            .unwrap()
            .len()
    };
    wait_state("n2's record gone", WAIT, count, |n| *n == 2);
    assert_eq!(vanished(), serde_json::json!([]));
}

#[test]
fn a_node_cut_off_while_etcd_is_rebuilt_follows_the_new_history() {
    let mut etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    let b_addr = b.addr.to_string();
    cli_ok(nodes[0].admin_addr(), &["weight", "web", &b_addr, "2"]);
    wait_target(
        nodes[2].admin_addr(),
        "web",
        b.addr,
        WAIT,
        "weight 2",
        |t| t["weight"] == 2,
    );
    // Node 3 frozen while etcd is rebuilt empty and its revisions climb past node 3's.
    nodes[2].signal(libc::SIGSTOP);
    etcd.wipe();
    let admin = nodes[0].admin_addr();
    wait_metric(admin, "ballast_fleet_etcd_connected", &[], WAIT, |v| {
        v == 1.0
    });
    cli_ok(admin, &["drain", "web", &a.addr.to_string()]);
    for w in 3..20 {
        cli_ok(admin, &["weight", "web", &b_addr, &w.to_string()]);
    }
    nodes[2].signal(libc::SIGCONT);
    let seen = || {
        let weight = target_in(nodes[2].admin_addr(), "web", b.addr).map(|t| t["weight"].clone());
        (weight, state(&nodes[2], a.addr))
    };
    wait_state("node 3 follows the rebuilt etcd", WAIT, seen, |(w, a)| {
        *w == Some(serde_json::json!(19)) && a == "draining"
    });
}

#[test]
fn a_drain_waits_for_the_connections_of_every_node() {
    let etcd = Etcd::start();
    let a = Backend::start(named_echo("a"));
    let b = Backend::start(named_echo("b"));
    let nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    // One connection to a, through node 2, held open.
    let held = (0..10)
        .find_map(|_| {
            let s = TcpStream::connect(nodes[1].addr("web")).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut name = String::new();
            BufReader::new(&s).read_line(&mut name).unwrap();
            (name.trim() == "a").then_some(s)
        })
        .expect("a connection to a");
    // Drained through node 1, which has no connection to a: the wait is for node 2's.
    let a_addr = a.addr.to_string();
    let drain_wait = |timeout| {
        cli(
            nodes[0].admin_addr(),
            &["drain", "web", &a_addr, "--wait", "--timeout", timeout],
        )
    };
    let out = drain_wait("2s");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("1 connection"), "{}", stderr(&out));
    let doc = target_in(nodes[0].admin_addr(), "web", a.addr).unwrap();
    assert_eq!(
        (doc["active"].as_u64(), doc["fleet_active"].as_u64()),
        (Some(0), Some(1))
    );
    drop(held);
    let out = drain_wait("5s");
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("drained"), "{said}");
}

#[test]
fn a_group_whose_list_is_gone_is_handed_back_whole_and_once() {
    let etcd = Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let c = Backend::start(named("c"));
    let d = Backend::start(named("d"));
    let nodes = three_nodes(&etcd, &[a.addr, b.addr]);
    let admin = |i: usize| nodes[i].admin_addr();
    let listed = |i: usize| {
        let mut l: Vec<String> = group_targets(admin(i), "web")
            .iter()
            .filter(|t| t["admin_state"] != "removed")
            .map(|t| t["address"].as_str().unwrap().to_string())
            .collect();
        l.sort();
        l
    };
    let sorted = |l: &[SocketAddr]| {
        let mut l: Vec<String> = l.iter().map(ToString::to_string).collect();
        l.sort();
        l
    };
    cli_ok(admin(0), &["add", "web", &c.addr.to_string()]);
    // Only `seeded` deleted: every node serves its file's list (a, b); a remove through the
    // fleet is made to that list, and c, left behind in etcd, does not come back (third
    // review).
    etcd.ctl(&["del", "/ballast/test/groups/web/seeded"]);
    for i in 0..3 {
        wait_state(
            "the file's list",
            WAIT,
            || listed(i),
            |l| *l == sorted(&[a.addr, b.addr]),
        );
    }
    cli_ok(admin(1), &["remove", "web", &b.addr.to_string()]);
    for i in 0..3 {
        wait_state("a alone", WAIT, || listed(i), |l| *l == sorted(&[a.addr]));
    }
    // Every target key deleted, then two nodes change the group at once: both hold.
    etcd.ctl(&["del", "--prefix", "/ballast/test/groups/web/targets/"]);
    for i in 0..3 {
        wait_state(
            "the file's list",
            WAIT,
            || listed(i),
            |l| *l == sorted(&[a.addr, b.addr]),
        );
    }
    let (c_addr, d_addr) = (c.addr.to_string(), d.addr.to_string());
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| cli(admin(0), &["add", "web", &c_addr]));
        let two = s.spawn(|| cli(admin(1), &["add", "web", &d_addr]));
        (one.join().unwrap(), two.join().unwrap())
    });
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(two.status.success(), "{}", stderr(&two));
    let want = [a.addr, b.addr, c.addr, d.addr];
    for i in 0..3 {
        wait_state(
            "every change that was made",
            WAIT,
            || listed(i),
            |l| *l == sorted(&want),
        );
    }
    // A node whose file no longer loads when the list goes: it says so, refuses to hand
    // the fleet its old list, and shows as not in step.
    nodes[2].rewrite_config("listeners: [\n");
    etcd.ctl(&["del", "--prefix", "/ballast/test/groups/"]);
    for i in 0..2 {
        wait_state(
            "the file's list",
            WAIT,
            || listed(i),
            |l| *l == sorted(&[a.addr, b.addr]),
        );
    }
    let out = cli(admin(2), &["add", "web", &d_addr]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(".yaml"),
        "names the file: {}",
        stderr(&out)
    );
    wait_state(
        "node 3 not in step",
        WAIT,
        || cli(admin(0), &["fleet", "status"]),
        |o| !o.status.success() && stderr(o).contains("n3"),
    );
}
