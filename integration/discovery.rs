//! DNS discovery with a real dnsmasq whose answers the test changes: A records (`{dns:
//! host:port}`) and SRV records (`{srv: name}`) become targets after passing their checks,
//! vanished ones drain, a stopped dnsmasq keeps the last targets, and churn through the admin
//! API reuses removed targets' indices. `.ci/run` installs dnsmasq.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;

/// dnsmasq on a free port answering from `hosts` (re-read on SIGHUP, TTL 1 s) and with an SRV
/// record `_db._tcp.test` → `db.test:{srv_port}`, weight 7.
fn dnsmasq_for(hosts: &Path, srv_port: u16) -> (Server, SocketAddr) {
    dnsmasq(&[
        "--local-ttl=1",
        &format!("--addn-hosts={}", hosts.display()),
        &format!("--srv-host=_db._tcp.test,db.test,{srv_port},0,7"),
    ])
}

/// The targets of group `group` in `GET /targets`: (address, health, admin state, weight).
fn targets(lb: &Ballast, group: &str) -> Vec<(String, String, String, u64)> {
    group_targets(lb.admin_addr(), group)
        .iter()
        .map(|t| {
            (
                t["address"].as_str().unwrap().to_string(),
                t["health"].as_str().unwrap().to_string(),
                t["admin_state"].as_str().unwrap().to_string(),
                t["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn dns_and_srv_answers_become_targets_and_follow_the_changes() {
    need("dnsmasq");
    // Two backends on one port, on 127.0.0.2 and 127.0.0.3.
    let two = Backend::start_on("127.0.0.2:0".parse().unwrap(), named("two"));
    let port = two.addr.port();
    let three = Backend::start_on(SocketAddr::from(([127, 0, 0, 3], port)), named("three"));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.2 db.test\n").unwrap();
    let (mut dns, dns_addr) = dnsmasq_for(&hosts, port);
    let checks = "    health_check: {protocol: tcp, interval: 200ms, timeout: 150ms, \
                  healthy_threshold: 2, unhealthy_threshold: 1}\n";
    let yaml = format!(
        "resolvers: ['{dns_addr}']\n\
         listeners:\n  - {{name: a, protocol: tcp, bind: '127.0.0.1:0', target_group: by-a}}\n\
         \x20 - {{name: srv, protocol: tcp, bind: '127.0.0.1:0', target_group: by-srv}}\n\
         target_groups:\n  - name: by-a\n{checks}\
         \x20   discover: [{{dns: 'db.test:{port}', min_ttl: 200ms, max_ttl: 1s}}]\n\
         \x20 - name: by-srv\n{checks}\
         \x20   discover: [{{srv: _db._tcp.test, min_ttl: 200ms, max_ttl: 1s}}]\n"
    );
    let lb = Ballast::start(&yaml);
    let admin = lb.admin_addr();
    // Found, checked twice (healthy_threshold 2: passes are counted before the health
    // changes), then served.
    let t = wait_health(admin, "by-a", format!("127.0.0.2:{port}"), "healthy");
    let passes = t["last_check"]["consecutive_passes"].as_u64();
    assert!(passes >= Some(2), "healthy after fewer passes: {t}");
    assert_eq!(fetch(lb.addr("a")).unwrap(), "two\n");
    wait_until("the SRV target served", || {
        fetch(lb.addr("srv")).is_ok_and(|s| s == "two\n")
    });
    let srv = targets(&lb, "by-srv");
    assert_eq!(srv.len(), 1, "{srv:?}");
    assert_eq!(srv[0].3, 7, "the SRV record's weight: {srv:?}");

    // The answer changes (dnsmasq re-reads its hosts file on SIGHUP): .3 comes, .2 drains.
    std::fs::write(&hosts, "127.0.0.3 db.test\n").unwrap();
    // SAFETY: kill(2) on the dnsmasq we spawned.
    unsafe { libc::kill(dns.0.id() as i32, libc::SIGHUP) };
    for group in ["by-a", "by-srv"] {
        wait_health(admin, group, format!("127.0.0.3:{port}"), "healthy");
    }
    wait_until("the old address gone from both groups", || {
        ["by-a", "by-srv"].iter().all(|g| {
            targets(&lb, g)
                .iter()
                .all(|t| t.0 != format!("127.0.0.2:{port}") || t.2 == "removed")
        })
    });
    for listener in ["a", "srv"] {
        assert_eq!(fetch(lb.addr(listener)).unwrap(), "three\n");
    }

    // dnsmasq stops: lookups fail, the last answer stays.
    let _ = dns.0.kill();
    let _ = dns.0.wait();
    // A failed lookup shows in no counter or API field, only in this warning.
    let from = lb.log_len();
    lb.wait_log_after("keeping the last answer", from, WAIT);
    for _ in 0..5 {
        assert_eq!(fetch(lb.addr("a")).unwrap(), "three\n");
    }
    let a = targets(&lb, "by-a");
    assert!(
        a.iter()
            .any(|t| t.0 == format!("127.0.0.3:{port}") && t.2 == "active"),
        "{a:?}"
    );
    drop(three);
}

/// The port of the one target `config` gave group `g`.
fn lb_target_port(lb: &Ballast) -> u16 {
    let (_, body) = http(lb.admin_addr(), "GET", "/targets", None, "");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let address = doc["target_groups"][0]["targets"][0]["address"]
        .as_str()
        .unwrap();
    address.parse::<SocketAddr>().unwrap().port()
}

#[test]
fn target_churn_reuses_removed_targets_slots() {
    let lb = Ballast::start(&config(
        "round_robin",
        &[(dead_addr(), 1)],
        "",
        "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n",
    ));
    let admin = lb.admin_addr();
    let taken = lb_target_port(&lb);
    let slots = || {
        sample(
            &scrape(admin).0,
            "ballast_target_group_slots",
            "target_group",
            "g",
        )
        .unwrap()
    };
    assert_eq!(slots(), 1.0);
    let started = std::time::Instant::now();
    let mut times = Vec::new();
    for p in (0..1001u16).filter(|p| 40000 + p != taken).take(1000) {
        let t = std::time::Instant::now();
        let body = format!("{{\"address\": \"127.0.0.1:{}\"}}", 40000 + p);
        let (status, text) = http(admin, "POST", "/target-groups/g/targets", None, &body);
        assert_eq!(status, 201, "{text}");
        let path = format!("/target-groups/g/targets/127.0.0.1:{}", 40000 + p);
        let (status, text) = http(admin, "DELETE", &path, None, "");
        assert!(status < 300, "{status} {text}");
        times.push(t.elapsed());
        assert!(started.elapsed() < 4 * WAIT, "churn too slow");
    }
    // 1,000 targets came and went: each new one took the last one's slot.
    assert!(slots() <= 2.0, "slots: {}", slots());
    // And a cycle takes as long at the end as at the start (medians of 100).
    let median = |s: &[std::time::Duration]| {
        let mut v = s.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let (first, last) = (median(&times[..100]), median(&times[900..]));
    assert!(last < first * 3, "cycles slowed from {first:?} to {last:?}");
}
