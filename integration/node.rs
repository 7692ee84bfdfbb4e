//! The node as keepalived, a BGP speaker or an operator sees it: readiness (`/healthz`,
//! `ballast health`), node drain and enable (`ballast node`), SIGTERM with `shutdown_grace`,
//! and `freebind`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";
const FAST_CHECKS: &str = "    health_check: {protocol: tcp, interval: 100ms, timeout: 100ms, \
                           healthy_threshold: 1, unhealthy_threshold: 1}\n";

/// Runs the `ballast` binary with `args` against the admin API at `admin`: (exit code,
/// stdout + stderr).
fn cli(admin: SocketAddr, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .args(["--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn healthz(admin: SocketAddr) -> (u16, String) {
    http(admin, "GET", "/healthz", None, "")
}

/// A connection through `addr` reaches a target (`named` or `named_echo` "a") and comes
/// back whole.
fn served(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
        s.set_read_timeout(Some(WAIT))?;
        s.write_all(b"ping")?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    attempt().is_ok_and(|s| s.starts_with("a\n"))
}

#[test]
fn healthz_fails_with_the_reason_when_the_node_reaches_no_target() {
    let mut target = Backend::start(named_echo("a"));
    let lb = Ballast::start(&config("round_robin", &[(target.addr, 1)], "", FAST_CHECKS));
    let admin = lb.admin_addr();
    assert_eq!(healthz(admin), (200, r#"{"status":"ready"}"#.into()));
    assert_eq!(cli(admin, &["health"]), (0, "ready\n".into()));
    target.stop();
    wait_until("/healthz turns 503", || healthz(admin).0 == 503);
    let (_, body) = healthz(admin);
    assert!(
        body.contains(
            "no target reachable from this node: every target in service is unhealthy \
             (target groups g)"
        ),
        "{body}"
    );
    let (code, text) = cli(admin, &["health"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no target reachable"), "{text}");
    // Liveness is another question: the process is fine.
    assert_eq!(http(admin, "GET", "/livez", None, "").0, 200);
    // The target comes back: ready again.
    let _back = Backend::start_on(target.addr, named_echo("a"));
    wait_until("/healthz turns 200", || healthz(admin).0 == 200);
}

#[test]
fn a_listener_marked_listening_is_ready_without_healthy_targets() {
    let mut target = Backend::start(named_echo("a"));
    let yaml = config(
        "round_robin",
        &[(target.addr, 1)],
        "    readiness: listening\n",
        FAST_CHECKS,
    );
    let lb = Ballast::start(&yaml);
    let admin = lb.admin_addr();
    target.stop();
    wait_until("the target is marked unhealthy", || {
        http(admin, "GET", "/targets", None, "")
            .1
            .contains("\"unhealthy\"")
    });
    assert_eq!(healthz(admin).0, 200);
}

/// Two services on one node, a PostgreSQL-like group `pg` with one target and a Redis-like
/// group `redis`. By default (`readiness: node`) neither an operator draining pg's only
/// target nor that target dying makes the node unready: Redis keeps its VIP. With
/// `readiness: healthy_target` on pg's listener, the dead target does; the drain still does
/// not (intended, not a fault).
fn two_services(pg: SocketAddr, redis: SocketAddr, pg_readiness: &str) -> String {
    [
        "workers: 1".to_string(),
        "listeners:".into(),
        format!(
            "  - {{name: pg, protocol: tcp, bind: 127.0.0.1:0, target_group: pg{pg_readiness}}}"
        ),
        "  - {name: redis, protocol: tcp, bind: 127.0.0.1:0, target_group: redis}".into(),
        "target_groups:".into(),
        format!("  - name: pg\n{FAST_CHECKS}    targets: [{{address: '{pg}'}}]"),
        format!("  - name: redis\n{FAST_CHECKS}    targets: [{{address: '{redis}'}}]\n"),
    ]
    .join("\n")
}

#[test]
fn an_admin_drain_or_one_dead_service_leaves_the_node_ready() {
    let mut pg = Backend::start(named_echo("a"));
    let redis = Backend::start(named_echo("a"));
    let lb = Ballast::start(&two_services(pg.addr, redis.addr, ""));
    let admin = lb.admin_addr();
    wait_health(admin, "pg", pg.addr, "healthy");
    assert_eq!(healthz(admin).0, 200);
    // The operator drains pg's only target: intended, the node stays ready.
    let drain = format!("/target-groups/pg/targets/{}/drain", pg.addr);
    assert_eq!(http(admin, "POST", &drain, None, "").0, 200);
    assert_eq!(healthz(admin), (200, r#"{"status":"ready"}"#.into()));
    // Monitoring sees the drain too (BallastTargetDown leaves drained targets out).
    let pg_addr = pg.addr.to_string();
    let state = |state: &str| {
        let labels = [
            ("target_group", "pg"),
            ("target", pg_addr.as_str()),
            ("state", state),
        ];
        labelled(&scrape(admin).0, "ballast_target_admin_state", &labels)
    };
    assert_eq!((state("draining"), state("active")), (Some(1.0), Some(0.0)));
    let enable = format!("/target-groups/pg/targets/{}/enable", pg.addr);
    assert_eq!(http(admin, "POST", &enable, None, "").0, 200);
    // pg's target dies: the node still reaches redis's, and stays ready.
    pg.stop();
    wait_health(admin, "pg", pg.addr, "unhealthy");
    assert_eq!(healthz(admin), (200, r#"{"status":"ready"}"#.into()));
    assert!(served(lb.addr("redis")));
    // The status page's node line agrees with /healthz.
    assert_eq!(get_json(admin, "/node")["ready"], true);
}

#[test]
fn healthy_target_readiness_is_an_opt_in_that_a_drain_does_not_trip() {
    let mut pg = Backend::start(named_echo("a"));
    let redis = Backend::start(named_echo("a"));
    let lb = Ballast::start(&two_services(
        pg.addr,
        redis.addr,
        ", readiness: healthy_target",
    ));
    let admin = lb.admin_addr();
    wait_health(admin, "pg", pg.addr, "healthy");
    let drain = format!("/target-groups/pg/targets/{}/drain", pg.addr);
    assert_eq!(http(admin, "POST", &drain, None, "").0, 200);
    assert_eq!(healthz(admin).0, 200, "a drained group is no fault");
    let enable = format!("/target-groups/pg/targets/{}/enable", pg.addr);
    assert_eq!(http(admin, "POST", &enable, None, "").0, 200);
    pg.stop();
    wait_until("/healthz turns 503", || healthz(admin).0 == 503);
    let (_, body) = healthz(admin);
    assert!(
        body.contains("listener pg: target group pg has no healthy target in service"),
        "{body}"
    );
    assert_eq!(get_json(admin, "/node")["ready"], false);
}

#[test]
fn health_fails_when_nothing_answers() {
    let (code, text) = cli(dead_addr(), &["health", "--timeout", "500ms"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot reach the admin API"), "{text}");
}

#[test]
fn node_drain_fails_healthz_at_once_keeps_accepting_for_the_grace_then_closes() {
    let target = Backend::start(named_echo("a"));
    // Closed by the drain and bound again by the enable: a port no bind(:0) is given.
    let yaml = on_stable_port(&config("round_robin", &[(target.addr, 1)], "", NO_CHECKS));
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    // A connection open before the drain must live through it.
    let mut open = client(addr);
    open.write_all(b"1").unwrap();
    let mut buf = [0u8; 16];
    let n = open.read(&mut buf).unwrap();
    assert!(n > 0);

    let started = Instant::now();
    let (code, text) = cli(admin, &["node", "drain", "--grace", "2s"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("node: draining, not ready"), "{text}");
    assert_eq!(healthz(admin).0, 503, "healthz must fail at once");
    assert!(healthz(admin).1.contains("node draining"));
    let (metrics, _) = scrape(admin);
    assert_eq!(
        sample(&metrics, "ballast_node_state", "state", "draining"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "ballast_node_state", "state", "serving"),
        Some(0.0)
    );
    let ready = metrics
        .samples
        .iter()
        .find(|x| x.metric == "ballast_node_ready");
    assert!(
        matches!(ready.map(|x| &x.value), Some(prometheus_parse::Value::Gauge(v)) if *v == 0.0),
        "{ready:?}"
    );
    // Clients arriving by old routes during the grace are served.
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(served(addr), "refused during the grace");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("listeners close after the grace", || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    assert!(started.elapsed() >= Duration::from_secs(2));
    let (_, status) = cli(admin, &["node", "status"]);
    assert!(status.starts_with("node: drained, not ready"), "{status}");
    // The connection opened before goes on.
    open.write_all(b"2").unwrap();
    let n = open.read(&mut buf).unwrap();
    assert!(n > 0, "the open connection ended");

    let (code, text) = cli(admin, &["node", "enable"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("node: serving, ready"), "{text}");
    assert!(served(addr), "not accepting after enable");
    assert_eq!(healthz(admin).0, 200);
}

#[test]
fn node_enable_during_the_grace_keeps_the_listeners() {
    let target = Backend::start(named_echo("a"));
    let lb = Ballast::start(&config("round_robin", &[(target.addr, 1)], "", NO_CHECKS));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    assert_eq!(http(admin, "POST", "/node/drain?grace=1s", None, "").0, 202);
    assert_eq!(healthz(admin).0, 503);
    assert_eq!(http(admin, "POST", "/node/enable", None, "").0, 200);
    assert_eq!(healthz(admin).0, 200);
    // Past the old grace, still accepting: the stale timer did nothing.
    std::thread::sleep(Duration::from_millis(1300)); // longer than the cancelled grace
    assert!(served(addr));
    assert_eq!(
        http(admin, "POST", "/node/drain?grace=forever", None, "").0,
        400
    );
}

#[test]
fn sigterm_with_shutdown_grace_fails_healthz_then_keeps_accepting_then_exits() {
    let target = Backend::start(named_echo("a"));
    let yaml = config("round_robin", &[(target.addr, 1)], "", NO_CHECKS).replacen(
        "shutdown_timeout: 5s\n",
        "shutdown_timeout: 5s\nshutdown_grace: 2s\n",
        1,
    );
    let mut lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let started = Instant::now();
    lb.terminate();
    wait_until("healthz fails after SIGTERM", || {
        try_http(admin, "GET", "/healthz", None, "").is_ok_and(|(s, _)| s == 503)
    });
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(served(addr), "refused during shutdown_grace");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = lb.wait_exit(WAIT).expect("exits after the grace");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "stopped before the grace ended"
    );
}

#[test]
fn freebind_listens_on_an_address_no_interface_holds() {
    let target = Backend::start(named_echo("a"));
    // 192.0.2.0/24 is TEST-NET-1: on no interface of this machine.
    let listener =
        "  - name: vip\n    protocol: tcp\n    bind: 192.0.2.10:0\n    target_group: g\n";
    let yaml = config("round_robin", &[(target.addr, 1)], "", NO_CHECKS).replacen(
        "target_groups:",
        &format!("{listener}    freebind: true\ntarget_groups:"),
        1,
    );
    let lb = Ballast::start(&yaml);
    assert_eq!(lb.addr("vip").ip().to_string(), "192.0.2.10");
    drop(lb);

    let refused = config("round_robin", &[(target.addr, 1)], "", NO_CHECKS).replacen(
        "target_groups:",
        &format!("{listener}target_groups:"),
        1,
    );
    let stderr = run_refused(&refused);
    assert!(stderr.contains("set `freebind: true`"), "{stderr}");
}

/// `drained` means the listeners are closed: an enable right after a drain with no grace
/// binds every address again (it was refused, now and then, as "another process already
/// serves" the address, while a worker had not yet closed its socket).
#[test]
fn an_enable_right_after_a_drain_binds_again() {
    let target = Backend::start(named_echo("a"));
    let yaml = on_stable_port(&config("round_robin", &[(target.addr, 1)], "", NO_CHECKS));
    // Workers that take 200 ms to get to the drain's message, as busy ones may.
    let lb = Ballast::start_with_env(&yaml, &[("BALLAST_FAULT_SLOW_CLOSE", "200")]);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    for round in 0..5 {
        assert_eq!(http(admin, "POST", "/node/drain?grace=0s", None, "").0, 202);
        let (status, body) = http(admin, "POST", "/node/enable", None, "");
        assert_eq!(status, 200, "round {round}: {body}");
    }
    assert!(served(addr), "not accepting after the last enable");
}

/// A group reached only through SNI routes counts toward the node's reach like a listener's
/// own: its healthy target keeps the node ready while the default route's group is down.
#[test]
fn groups_behind_sni_routes_count_toward_readiness() {
    let web = Backend::start(named_echo("a"));
    let yaml = format!(
        "workers: 1\nlisteners:\n  - {{name: sni, protocol: tcp, bind: '127.0.0.1:0', target_group: dead, \
         routes: [{{server_name: app.example.com, target_group: web}}]}}\n\
         target_groups:\n  - name: dead\n{FAST_CHECKS}    targets: [{{address: '{}'}}]\n\
         \x20 - name: web\n{FAST_CHECKS}    targets: [{{address: '{}'}}]\n",
        dead_addr(),
        web.addr
    );
    let lb = Ballast::start(&yaml);
    let admin = lb.admin_addr();
    wait_health(admin, "web", web.addr, "healthy");
    wait_until("the dead group's target unhealthy", || {
        group_targets(admin, "dead")[0]["health"] == "unhealthy"
    });
    assert_eq!(healthz(admin), (200, r#"{"status":"ready"}"#.into()));
}
