//! Changing a running Ballast: hot reload (SIGHUP, `POST /reload`) and targets added and
//! removed through the admin API, under load, on a real process.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::*;

const CHECKS: &str = "    health_check: {protocol: tcp, interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}\n";

/// Clients opening one connection after another through `addr` until stopped, counting the
/// target names they are sent and the connections that failed.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, usize>>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, seen, failures) = (stop.clone(), seen.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match fetch(addr) {
                            Ok(name) if !name.is_empty() => {
                                let name = name.trim_end().to_string();
                                *seen.lock().unwrap().entry(name).or_default() += 1
                            }
                            Ok(_) => failures.lock().unwrap().push("empty answer".into()),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            failures,
            threads,
        }
    }

    fn seen(&self, name: &str) -> usize {
        self.seen.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// Stops the clients; returns (answers per target, failures).
    fn finish(mut self) -> (BTreeMap<String, usize>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let seen = self.seen.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (seen, failures)
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `(address, admin_state)` of every target listed by `GET /targets`, group by group.
fn target_states(admin: SocketAddr) -> Vec<(String, String)> {
    let (status, body) = http(admin, "GET", "/targets", None, "");
    assert_eq!(status, 200);
    let doc = json(&body);
    doc["target_groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["targets"].as_array().unwrap().clone())
        .map(|t| {
            (
                t["address"].as_str().unwrap().to_string(),
                t["admin_state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn reload_adds_a_target_under_load_without_a_failure() {
    let (a, b, c) = (
        Backend::start(named("a")),
        Backend::start(named("b")),
        Backend::start(named("c")),
    );
    let two = config("round_robin", &[(a.addr, 1), (b.addr, 1)], "", CHECKS);
    let lb = Ballast::start(&two);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    // The listener must keep its port across the reload: pin the one it got.
    let pinned = |yaml: String| yaml.replace("bind: 127.0.0.1:0", &format!("bind: {addr}"));
    lb.rewrite_config(&pinned(two.clone()));
    let load = Load::start(addr, 4);
    wait_until("traffic on a and b", || {
        load.seen("a") > 20 && load.seen("b") > 20
    });

    let three = config(
        "round_robin",
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        "",
        CHECKS,
    );
    lb.rewrite_config(&pinned(three));
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    let summary = json(&body);
    assert_eq!(
        summary["targets_added"][0],
        format!("g/{}", c.addr),
        "{body}"
    );
    assert_eq!(summary["listeners_added"].as_array().unwrap().len(), 0);
    wait_until("the new target takes traffic", || load.seen("c") > 20);
    let (seen, failures) = load.finish();
    assert!(failures.is_empty(), "failed connections: {failures:?}");
    assert!(seen["a"] > 20 && seen["b"] > 20, "{seen:?}");
}

#[test]
fn an_invalid_reload_keeps_the_running_config() {
    let a = Backend::start(named("a"));
    let yaml = config("round_robin", &[(a.addr, 1)], "", CHECKS);
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let before = target_states(admin);

    lb.rewrite_config(&yaml.replace("algorithm:", "algorithmm:"));
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 400, "{body}");
    let message = json(&body)["error"].as_str().unwrap().to_string();
    assert!(
        message.starts_with(&format!("{}:", lb.config_path().display()))
            && message.contains(": target_groups[0].algorithmm: unknown field `algorithmm`"),
        "the message names file, line, column and key: {message}"
    );
    assert_eq!(fetch(addr).unwrap(), "a\n", "the old config still serves");
    assert_eq!(target_states(admin), before);

    // SIGHUP with the same file: nothing changes. The service manager hears RELOADING=1,
    // then READY=1 once the attempt is over, refused or not.
    let generation = get_json(admin, "/node")["generation"].clone();
    let mark = lb.notifications.count();
    lb.signal(libc::SIGHUP);
    let said = lb.notifications.wait_line_after(mark, "READY=1", WAIT);
    assert!(said[0].lines().any(|l| l == "RELOADING=1"), "{said:?}");
    assert_eq!(get_json(admin, "/node")["generation"], generation);
    assert_eq!(fetch(addr).unwrap(), "a\n");
    assert_eq!(target_states(admin), before);
}

#[test]
fn sighup_adds_and_removes_listeners_while_connections_go_on() {
    let a = Backend::start(named_echo("a"));
    let yaml = config("round_robin", &[(a.addr, 1)], "", CHECKS);
    let lb = Ballast::start(&yaml);
    let l = lb.addr("l");
    let (mut open, name) = open_named(l);
    assert_eq!(name, "a");

    // Listener `l` goes, listener `m` comes, in front of the same group.
    let m_yaml = yaml.replace("name: l\n", "name: m\n");
    lb.rewrite_config(&m_yaml);
    let admin = lb.admin_addr();
    let generation = |admin| get_json(admin, "/node")["generation"].as_u64();
    let next = generation(admin).map(|g| g + 1);
    lb.signal(libc::SIGHUP);
    wait_state(
        "the reload applied: the next generation in /node",
        WAIT,
        || generation(admin),
        |now| *now == next,
    );
    let m = lb.addr("m");
    assert_eq!(open_named(m).1, "a", "the new listener serves");
    wait_until("the removed listener refuses", || {
        std::net::TcpStream::connect_timeout(&l, WAIT).is_err()
    });
    // The connection accepted by the removed listener goes on.
    use std::io::{Read, Write};
    open.write_all(b"still here").unwrap();
    let mut echoed = [0u8; 10];
    open.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"still here");
}

#[test]
fn targets_added_and_removed_through_the_api() {
    let (a, c) = (
        Backend::start(named_echo("a")),
        Backend::start(named_echo("c")),
    );
    let lb = Ballast::start(&config("round_robin", &[(a.addr, 1)], "", CHECKS));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());

    let add = format!(r#"{{"address": "{}", "weight": 1}}"#, c.addr);
    let (status, body) = http(admin, "POST", "/target-groups/g/targets", None, &add);
    assert_eq!(status, 201, "{body}");
    let (status, _) = http(admin, "POST", "/target-groups/g/targets", None, &add);
    assert_eq!(status, 409, "adding it twice conflicts");

    // c takes traffic once its checks pass; keep one connection to it open.
    let mut on_c = None;
    wait_until("a connection to the new target", || {
        let (s, name) = open_named(addr);
        if name == "c" {
            on_c = Some(s);
        }
        on_c.is_some()
    });
    let mut on_c = on_c.unwrap();

    let path = format!("/target-groups/g/targets/{}", c.addr);
    let (status, body) = http(admin, "DELETE", &path, None, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["targets_removed"][0], format!("g/{}", c.addr));
    for _ in 0..20 {
        assert_eq!(open_named(addr).1, "a", "a removed target gets nothing new");
    }
    let states = target_states(admin);
    assert!(
        states.contains(&(c.addr.to_string(), "removed".into())),
        "listed as removed while a connection remains: {states:?}"
    );
    use std::io::{Read, Write};
    on_c.write_all(b"bytes").unwrap();
    let mut echoed = [0u8; 5];
    on_c.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"bytes", "its open connection goes on");
    drop(on_c);
    wait_until("the removed target leaves the list", || {
        target_states(admin).len() == 1
    });

    let (status, body) = http(
        admin,
        "DELETE",
        &format!("/target-groups/g/targets/{}", a.addr),
        None,
        "",
    );
    assert_eq!(status, 400, "the last target stays: {body}");
}

#[test]
fn bad_requests_get_a_4xx_with_a_message_and_change_nothing() {
    let (a, b) = (Backend::start(named("a")), Backend::start(named("b")));
    let lb = Ballast::start(&config(
        "round_robin",
        &[(a.addr, 1), (b.addr, 1)],
        "",
        CHECKS,
    ));
    let admin = lb.admin_addr();
    let before = target_states(admin);
    let cases: &[(&str, String, &str, u16)] = &[
        (
            "POST",
            "/target-groups/g/targets".into(),
            "{\"address\": ",
            400,
        ),
        ("POST", "/target-groups/g/targets".into(), "[1, 2]", 400),
        (
            "POST",
            "/target-groups/g/targets".into(),
            r#"{"address": "127.0.0.1:1", "wieght": 2}"#,
            400,
        ),
        (
            "POST",
            "/target-groups/g/targets".into(),
            r#"{"address": "not an address"}"#,
            400,
        ),
        (
            "POST",
            "/target-groups/g/targets".into(),
            r#"{"address": "127.0.0.1:1", "weight": 0}"#,
            400,
        ),
        (
            "POST",
            "/target-groups/g/targets".into(),
            r#"{"address": "127.0.0.1:1", "weight": 4000000000}"#,
            400,
        ),
        (
            "POST",
            "/target-groups/g/targets".into(),
            r#"{"address": "127.0.0.1:1", "weight": 10001}"#,
            400,
        ),
        (
            "POST",
            "/target-groups/g/targets".into(),
            r#"{"address": "127.0.0.1:0"}"#,
            400,
        ),
        (
            "POST",
            "/target-groups/nope/targets".into(),
            r#"{"address": "127.0.0.1:1"}"#,
            404,
        ),
        (
            "POST",
            format!("/target-groups/g/targets/{}", a.addr),
            "",
            405,
        ),
        (
            "DELETE",
            "/target-groups/g/targets/127.0.0.1:1".into(),
            "",
            404,
        ),
        (
            "DELETE",
            format!("/target-groups/nope/targets/{}", a.addr),
            "",
            404,
        ),
        (
            "POST",
            "/target-groups/g/targets/127.0.0.1:1/drain".into(),
            "",
            404,
        ),
        (
            "POST",
            format!("/target-groups/g/targets/{}/explode", a.addr),
            "",
            404,
        ),
        ("GET", "/reload".into(), "", 405),
    ];
    for (method, path, body, want) in cases {
        let (status, answer) = http(admin, method, path, None, body);
        assert_eq!(status, *want, "{method} {path} {body}: {answer}");
        let message = json(&answer)["error"].as_str().unwrap_or("").to_string();
        assert!(
            !message.is_empty(),
            "{method} {path}: no message in {answer}"
        );
    }
    assert_eq!(target_states(admin), before, "nothing changed");
}

#[test]
fn udp_sessions_keep_their_target_across_a_reload() {
    let (one, two) = (
        UdpBackend::start(udp_tagged(1)),
        UdpBackend::start(udp_tagged(2)),
    );
    let checks =
        "    health_check: {protocol: udp, send: ping, expect: pong, interval: 200ms, timeout: 150ms}\n";
    let lb = Ballast::start(&udp_config(&[one.addr], "", checks));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    let c = udp_client(addr);
    let mut buf = [0u8; 64];
    let mut ask = |c: &std::net::UdpSocket| {
        c.send(b"hello").unwrap();
        let n = c.recv(&mut buf).unwrap();
        buf[..n][0]
    };
    assert_eq!(ask(&c), 1);

    // Target 2 joins (round robin: new flows alternate once it is healthy).
    let both = udp_config(&[one.addr, two.addr], "", checks)
        .replace("bind: 127.0.0.1:0", &format!("bind: {addr}"));
    lb.rewrite_config(&both);
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    let mut other = None;
    wait_until("a new flow lands on the new target", || {
        let fresh = udp_client(addr);
        if ask(&fresh) == 2 {
            other = Some(fresh);
        }
        other.is_some()
    });
    for _ in 0..20 {
        assert_eq!(ask(&c), 1, "the open session stays on its target");
    }
}

#[test]
fn a_reload_whose_new_listener_cannot_bind_changes_nothing() {
    let a = Backend::start(named("a"));
    let yaml = config("round_robin", &[(a.addr, 1)], "", CHECKS);
    let lb = Ballast::start(&yaml);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    // A port held by a socket without SO_REUSEPORT: Ballast's bind fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "  - {{name: m, protocol: tcp, bind: '{}', target_group: g}}\n",
        taken.local_addr().unwrap()
    );
    lb.rewrite_config(&config("round_robin", &[(a.addr, 1)], &extra, CHECKS));
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot bind listener m"), "{body}");
    let (_, targets) = http(admin, "GET", "/targets", None, "");
    assert_eq!(
        json(&targets)["generation"],
        0,
        "nothing applied: {targets}"
    );
    assert_eq!(fetch(addr).unwrap(), "a\n");
}

#[test]
fn the_service_manager_hears_ready_reloading_and_stopping() {
    let a = Backend::start(named("a"));
    let mut lb = Ballast::start(&config("round_robin", &[(a.addr, 1)], "", CHECKS));
    let first = lb.notifications.messages();
    assert!(first[0].contains("READY=1"), "{first:?}");
    assert!(
        first[0].contains(&format!("MAINPID={}", lb.pid())),
        "{first:?}"
    );
    lb.signal(libc::SIGHUP);
    let reloaded = lb.notifications.wait(WAIT, |s| {
        let i = s
            .messages
            .iter()
            .position(|m| m.contains("RELOADING=1\nMONOTONIC_USEC="))?;
        s.messages[i + 1..]
            .iter()
            .any(|m| m.contains("READY=1"))
            .then_some(())
    });
    assert!(reloaded.is_some(), "{:?}", lb.notifications.messages());
    lb.terminate();
    let stopping = lb.notifications.wait(WAIT, |s| s.stopping.then_some(()));
    assert!(stopping.is_some(), "{:?}", lb.notifications.messages());
    assert!(lb.wait_exit(WAIT).is_some_and(|s| s.success()));
}

/// `include:`: a reload (`POST /reload`, SIGHUP) reads the included files again: a changed
/// one takes effect, a new one adds its listener, a broken one is refused naming it.
#[test]
fn a_reload_reads_the_included_files_again() {
    let (a, b) = (Backend::start(named("a")), Backend::start(named("b")));
    let dir = tempfile::tempdir().unwrap();
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    let group = |target: SocketAddr| {
        format!("target_groups:\n  - name: g\n{CHECKS}    targets: [{{address: '{target}'}}]\n")
    };
    std::fs::write(conf_d.join("10-g.yaml"), group(a.addr)).unwrap();
    let main = format!(
        "workers: 2\ninclude: ['{}/*.yaml']\nlisteners:\n  - {{name: l, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n",
        conf_d.display()
    );
    let lb = Ballast::start(&main);
    let (l, admin) = (lb.addr("l"), lb.admin_addr());
    lb.rewrite_config(&main.replace("127.0.0.1:0", &l.to_string()));
    assert_eq!(fetch(l).unwrap(), "a\n");

    // The included file changes; the main file does not.
    std::fs::write(conf_d.join("10-g.yaml"), group(b.addr)).unwrap();
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["targets_added"][0],
        format!("g/{}", b.addr),
        "{body}"
    );
    wait_until("the changed included file's target serves", || {
        fetch(l).is_ok_and(|name| name == "b\n")
    });

    // A new file in conf.d adds a listener, on SIGHUP.
    std::fs::write(
        conf_d.join("20-m.yaml"),
        "listeners:\n  - {name: m, protocol: tcp, bind: '127.0.0.1:0', target_group: g}\n",
    )
    .unwrap();
    lb.signal(libc::SIGHUP);
    assert_eq!(
        fetch(lb.addr("m")).unwrap(),
        "b\n",
        "the included listener serves"
    );

    // A broken included file is refused, naming it, its line and its key; b still serves.
    let broken = conf_d.join("20-m.yaml");
    std::fs::write(
        &broken,
        "listeners:\n  - {name: m, protocol: tcp, bind: '127.0.0.1:0', target_grup: g}\n",
    )
    .unwrap();
    let (status, body) = http(admin, "POST", "/reload", None, "");
    assert_eq!(status, 400, "{body}");
    let message = json(&body)["error"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!(
            "{}:2:51: listeners[0].target_grup: unknown field `target_grup`: did you mean \
             `target_group`?",
            broken.display()
        )),
        "{message}"
    );
    assert_eq!(fetch(l).unwrap(), "b\n");
}
