//! Ballast nodes in pairs and fleets, in network namespaces this test creates and removes:
//! an active/standby pair under keepalived (VRRP), and an ECMP fleet of three nodes each
//! announcing the VIP with BIRD 2 to a router. Both run the recipes in `conf/ha/` as they
//! are, with only the paths of the binaries put in. Needs root, keepalived and bird2 (which
//! `.ci/run` installs).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{in_netns, run, wait_for, Lab};
use common::*;

const BALLAST: &str = env!("CARGO_BIN_EXE_ballast");

fn recipe(path: &str) -> String {
    format!("{}/conf/ha/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Whether `ballast health` passes inside namespace `ns`.
fn ready(ns: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            BALLAST,
            "health",
            "--quiet",
            "--timeout",
            "1s",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// One connection to `vip` from inside namespace `ns`: what the target said (a line).
fn connect_from(ns: &str, vip: SocketAddr, timeout: Duration) -> Result<String, String> {
    in_netns(ns, move || exchange(vip, timeout))
}

/// One connection to `vip` from this thread's namespace: what the target said (a line),
/// after checking the echo of what was sent.
fn exchange(vip: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&vip, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(b"hello\n").map_err(|e| format!("write: {e}"))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    match out.split_once('\n') {
        Some((who, "hello\n")) => Ok(who.to_string()),
        _ => Err(format!("answer {out:?}")),
    }
}

/// Says which node's address the connection came from, then echoes until EOF.
fn peer_echo() -> Handler {
    Arc::new(|mut s: TcpStream| {
        let who = s
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        if s.write_all(format!("{who}\n").as_bytes()).is_err() {
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

/// TCP servers on `addrs` inside namespace `ns`; stopped (from inside it) by the returned
/// closure.
fn targets_in(ns: &str, addrs: &[&str]) -> impl FnOnce() {
    let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
    let backends = in_netns(ns, move || {
        addrs
            .into_iter()
            .map(|a| Backend::start_on(a, peer_echo()))
            .collect::<Vec<_>>()
    });
    let ns = ns.to_string();
    move || in_netns(&ns, move || drop(backends))
}

/// Starts Ballast with the recipe `config` inside namespace `short`.
fn start_ballast(lab: &mut Lab, short: &str, config: &str) -> usize {
    lab.spawn(
        short,
        &format!("ballast-{short}"),
        BALLAST,
        &["run", "--config", config],
    )
}

/// Whether namespace `short` holds address `addr` on `dev`.
fn holds(lab: &Lab, short: &str, dev: &str, addr: &str) -> bool {
    lab.ip_output(short, &["-4", "addr", "show", "dev", dev])
        .contains(&format!("inet {addr}/"))
}

#[test]
fn vrrp_pair_moves_the_vip_when_the_active_ballast_dies_and_keeps_it_when_it_returns() {
    let mut lab = Lab::new("vr");
    for n in ["sw", "a", "b", "c", "t"] {
        lab.add(n);
    }
    lab.ip("sw", &["link", "add", "br0", "type", "bridge"]);
    lab.ip("sw", &["link", "set", "br0", "up"]);
    for (n, addr) in [
        ("a", "10.77.0.11/24"),
        ("b", "10.77.0.12/24"),
        ("c", "10.77.0.50/24"),
        ("t", "10.77.0.21/24"),
    ] {
        let port = format!("p{n}");
        lab.link(n, "eth0", "sw", &port);
        lab.ip("sw", &["link", "set", &port, "master", "br0"]);
        lab.ip(n, &["addr", "add", addr, "dev", "eth0"]);
    }
    lab.ip("t", &["addr", "add", "10.77.0.22/24", "dev", "eth0"]);
    let stop_targets = targets_in(&lab.ns("t"), &["10.77.0.21:5432", "10.77.0.22:5432"]);

    let config = recipe("keepalived/ballast.yaml");
    let ballast_a = start_ballast(&mut lab, "a", &config);
    start_ballast(&mut lab, "b", &config);
    let (ns_a, ns_b, ns_c) = (lab.ns("a"), lab.ns("b"), lab.ns("c"));
    wait_for("both nodes ready", WAIT, || ready(&ns_a) && ready(&ns_b));

    let conf = std::fs::read_to_string(recipe("keepalived/keepalived.conf"))
        .unwrap()
        .replace("/usr/local/bin/ballast", BALLAST)
        .replace("/etc/ballast/ha/notify.sh", &recipe("keepalived/notify.sh"));
    let conf_path = lab.dir().join("keepalived.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut keepalived = Vec::new();
    for n in ["a", "b"] {
        let dir = lab.dir().to_path_buf();
        let pid = |what: &str| dir.join(format!("{n}-{what}.pid")).display().to_string();
        let (main, vrrp) = (pid("main"), pid("vrrp"));
        let conf = conf_path.display().to_string();
        keepalived.push(lab.spawn(
            n,
            &format!("keepalived-{n}"),
            "keepalived",
            &[
                "-n", "-l", "-D", "-P", "-f", &conf, "-i", n, "-p", &main, "-r", &vrrp,
            ],
        ));
    }
    let vip: SocketAddr = "10.77.0.100:5432".parse().unwrap();
    wait_for(
        "A (priority 150) takes the VIP",
        Duration::from_secs(20),
        || holds(&lab, "a", "eth0", "10.77.0.100"),
    );
    let served = connect_from(&ns_c, vip, WAIT).unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert!(served.starts_with("10.77.0.11"), "served via {served}");

    // A's Ballast dies: its health check fails, keepalived puts A in FAULT, B takes the VIP.
    lab.process(ballast_a).kill();
    let killed = Instant::now();
    let took = wait_for(
        "new connections succeed again",
        Duration::from_secs(10),
        || connect_from(&ns_c, vip, Duration::from_millis(300)).is_ok(),
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(3),
        "failover took {took:?}\n{}",
        lab.logs()
    );
    eprintln!(
        "vrrp: connections succeed again {:?} after the kill",
        killed.elapsed()
    );
    assert!(holds(&lab, "b", "eth0", "10.77.0.100"));
    assert!(!holds(&lab, "a", "eth0", "10.77.0.100"));
    assert!(connect_from(&ns_c, vip, WAIT)
        .unwrap()
        .starts_with("10.77.0.12"));

    // A long connection through B must live through A's return.
    let mut long = in_netns(&ns_c, move || {
        TcpStream::connect_timeout(&vip, WAIT).unwrap()
    });
    long.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = [0u8; 11];
    long.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"10.77.0.12\n");

    // A comes back: ready again, keepalived takes it out of FAULT to BACKUP, and with
    // `nopreempt` it leaves the VIP with B. Watch for a while: every connection succeeds.
    start_ballast(&mut lab, "a", &config);
    wait_for("A ready again", WAIT, || ready(&ns_a));
    let ka = keepalived[0];
    wait_for("keepalived moves A from FAULT to BACKUP", WAIT, || {
        let log = lab.process(ka).log();
        log.rfind("Entering BACKUP STATE") > log.rfind("Entering FAULT STATE")
            && log.contains("Entering FAULT STATE")
    });
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        // five advert intervals: ample for a preemption to happen, were it configured
        let who = connect_from(&ns_c, vip, WAIT).unwrap_or_else(|e| panic!("{e}"));
        assert!(who.starts_with("10.77.0.12"), "the VIP moved back to A");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(holds(&lab, "b", "eth0", "10.77.0.100"));
    long.write_all(b"still here").unwrap();
    let mut echoed = [0u8; 10];
    long.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"still here");
    drop(long);
    stop_targets();
}

/// Next hops of the router's route to the VIP.
fn next_hops(lab: &Lab) -> usize {
    let routes = lab.ip_output("r", &["-4", "route", "show", "10.88.100.1"]);
    match routes.matches("nexthop via").count() {
        0 if routes.contains("via") => 1,
        n => n,
    }
}

/// A client making ~100 new connections per second to `vip` from namespace `ns` until
/// stopped; returns every failure.
struct Load {
    stop: Arc<AtomicBool>,
    /// When each failed connection began and ended, and why.
    failures: Arc<Mutex<Vec<(Instant, Instant, String)>>>,
    /// When each served connection began, and the node the target saw.
    served: Arc<Mutex<Vec<(Instant, String)>>>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ns: &str, vip: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (s, f, d, ok, ns) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            served.clone(),
            ns.to_string(),
        );
        let thread = std::thread::spawn(move || {
            in_netns(&ns, move || {
                while !s.load(Ordering::Acquire) {
                    let began = Instant::now();
                    match exchange(vip, Duration::from_secs(3)) {
                        Ok(who) => {
                            ok.lock().unwrap().push((began, who));
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => f.lock().unwrap().push((began, Instant::now(), e)),
                    }
                    std::thread::sleep(Duration::from_millis(10)); // the pace: ~100/s
                }
            })
        });
        Load {
            stop,
            failures,
            served,
            done,
            thread: Some(thread),
        }
    }

    /// Connections begun after `since` that node `who` served.
    fn served_by(&self, who: &str, since: Instant) -> usize {
        let served = self.served.lock().unwrap();
        served
            .iter()
            .filter(|(t, w)| *t >= since && w == who)
            .count()
    }

    fn finish(mut self) -> (usize, Vec<(Instant, Instant, String)>) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn ecmp_fleet_spreads_flows_drains_without_failures_and_drops_a_dead_node() {
    let mut lab = Lab::new("ec");
    for n in ["r", "c", "t", "e", "n1", "n2", "n3"] {
        lab.add(n);
    }
    lab.ip("r", &["link", "add", "br0", "type", "bridge"]);
    lab.ip("r", &["addr", "add", "10.88.0.1/24", "dev", "br0"]);
    lab.ip("r", &["link", "set", "br0", "up"]);
    lab.sysctl("r", "net.ipv4.ip_forward", "1");
    lab.sysctl("r", "net.ipv4.fib_multipath_hash_policy", "1");
    lab.link("c", "eth0", "r", "eth1");
    lab.ip("c", &["addr", "add", "10.88.1.2/24", "dev", "eth0"]);
    lab.ip("r", &["addr", "add", "10.88.1.1/24", "dev", "eth1"]);
    lab.ip("c", &["route", "add", "default", "via", "10.88.1.1"]);
    for (n, addr) in [
        ("n1", "10.88.0.11/24"),
        ("n2", "10.88.0.12/24"),
        ("n3", "10.88.0.13/24"),
        ("t", "10.88.0.21/24"),
    ] {
        let port = format!("p{n}");
        lab.link(n, "eth0", "r", &port);
        lab.ip("r", &["link", "set", &port, "master", "br0"]);
        lab.ip(n, &["addr", "add", addr, "dev", "eth0"]);
        lab.ip(n, &["route", "add", "default", "via", "10.88.0.1"]);
    }
    lab.ip("t", &["addr", "add", "10.88.0.22/24", "dev", "eth0"]);
    let stop_targets = targets_in(&lab.ns("t"), &["10.88.0.21:5432", "10.88.0.22:5432"]);
    // The fleet's etcd (the recipe's cluster:), on the nodes' network.
    lab.link("e", "eth0", "r", "pe");
    lab.ip("r", &["link", "set", "pe", "master", "br0"]);
    lab.ip("e", &["addr", "add", "10.88.0.30/24", "dev", "eth0"]);
    let etcd_dir = lab.dir().join("etcd").display().to_string();
    lab.spawn(
        "e",
        "etcd",
        "etcd",
        &[
            "--name=e",
            &format!("--data-dir={etcd_dir}"),
            "--listen-client-urls=http://10.88.0.30:2379",
            "--advertise-client-urls=http://10.88.0.30:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=e=http://127.0.0.1:2380",
        ],
    );
    let ns_e = lab.ns("e");
    wait_for("etcd answers", WAIT, || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_e,
                "etcdctl",
                "--endpoints=10.88.0.30:2379",
            ])
            .args(["endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|o| o.status.success())
    });

    let dir = lab.dir().to_path_buf();
    let ctl = |n: &str| dir.join(format!("{n}.ctl")).display().to_string();
    let pid = |n: &str| dir.join(format!("{n}-bird.pid")).display().to_string();
    let router_conf = recipe("bgp/bird-router.conf");
    lab.spawn(
        "r",
        "bird-r",
        "bird",
        &["-f", "-c", &router_conf, "-s", &ctl("r"), "-P", &pid("r")],
    );
    let (node_conf, config) = (recipe("bgp/bird-node.conf"), recipe("bgp/ballast.yaml"));
    let (mut ballast, mut checks) = (Vec::new(), Vec::new());
    for n in ["n1", "n2", "n3"] {
        lab.ip(n, &["addr", "add", "10.88.100.1/32", "dev", "lo"]);
        ballast.push(lab.spawn(
            n,
            &format!("ballast-{n}"),
            "env",
            &[
                &format!("BALLAST_NODE_ID={n}"),
                BALLAST,
                "run",
                "--config",
                &config,
            ],
        ));
        lab.spawn(
            n,
            &format!("bird-{n}"),
            "bird",
            &["-f", "-c", &node_conf, "-s", &ctl(n), "-P", &pid(n)],
        );
        checks.push(lab.spawn(
            n,
            &format!("route-check-{n}"),
            "env",
            &[
                &format!("BALLAST={BALLAST}"),
                "INTERVAL=0.2",
                &recipe("bgp/route-check.sh"),
                &ctl(n),
            ],
        ));
    }
    wait_for(
        "the router has three next hops for the VIP",
        Duration::from_secs(30),
        || next_hops(&lab) == 3,
    );
    let vip: SocketAddr = "10.88.100.1:5432".parse().unwrap();
    let ns_c = lab.ns("c");

    // Flows spread over the three nodes (the target sees which node connected).
    let mut per_node = std::collections::HashMap::new();
    for _ in 0..150 {
        let who = connect_from(&ns_c, vip, WAIT).unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
        *per_node.entry(who).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&n| n >= 15), "{per_node:?}");

    // One source of truth: a target drained through n3 is drained on all three within a
    // second, and enabled again through n2.
    let on = |n: &str, args: &[&str]| {
        let mut all = vec!["netns", "exec"];
        let ns = lab.ns(n);
        all.push(&ns);
        all.push(BALLAST);
        all.extend_from_slice(args);
        run("ip", &all)
    };
    let state_on = |n: &str| {
        let doc: serde_json::Value = serde_json::from_str(&on(n, &["targets", "--json"])).unwrap();
        doc["target_groups"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == "10.88.0.22:5432")
            .map(|t| t["admin_state"].as_str().unwrap().to_string())
            .unwrap()
    };
    for (through, action, want) in [("n3", "drain", "draining"), ("n2", "enable", "active")] {
        on(through, &[action, "db", "10.88.0.22:5432"]);
        for n in ["n1", "n2", "n3"] {
            wait_for(
                &format!("{n}: 10.88.0.22 {want}"),
                Duration::from_secs(1),
                || state_on(n) == want,
            );
        }
    }

    // Drain n1 under load: the route is withdrawn before its listeners close, and no
    // connection fails.
    let load = Load::start(&ns_c, vip);
    wait_for("load flows", WAIT, || {
        load.done.load(Ordering::Relaxed) > 50
    });
    // The route's withdrawal is held back for a moment (n1's route-check paused), as when
    // routers converge slowly: flows keep arriving at n1, which must serve them.
    lab.process(checks[0]).signal(libc::SIGSTOP);
    let drained = Instant::now();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.ns("n1"),
            BALLAST,
            "node",
            "drain", // with the default grace (node_drain_grace, 5s)
        ],
    );
    let at_drain = load.done.load(Ordering::Relaxed);
    wait_for("load goes on while the route stays", WAIT, || {
        load.done.load(Ordering::Relaxed) > at_drain + 40
    });
    assert_eq!(next_hops(&lab), 3);
    let late = load.served_by("10.88.0.11", drained);
    assert!(late > 0, "no connection reached n1 after its drain began");
    lab.process(checks[0]).signal(libc::SIGCONT);
    // When the router's next hops change: between the last look that saw three and the
    // first that saw two, looking every few milliseconds.
    let mut last_seen_three = Instant::now();
    while next_hops(&lab) == 3 {
        last_seen_three = Instant::now();
        assert!(
            drained.elapsed() < Duration::from_secs(5),
            "not withdrawn within the default grace"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let switch = (last_seen_three, Instant::now());
    let withdrawn = drained.elapsed();
    eprintln!(
        "ecmp: route withdrawn {withdrawn:?} after the drain began; {late} connections served \
         by n1 meanwhile"
    );
    assert!(
        withdrawn < Duration::from_secs(5),
        "withdrawn only after the grace"
    );
    let ns_1 = lab.ns("n1");
    wait_for("n1 stops accepting", WAIT, || {
        run("ip", &["netns", "exec", &ns_1, BALLAST, "node", "status"]).contains("drained")
    });
    let after = load.done.load(Ordering::Relaxed);
    wait_for("load goes on after the drain", WAIT, || {
        load.done.load(Ordering::Relaxed) > after + 50
    });
    let (done, failures) = load.finish();
    // Plain ECMP (hash-threshold) remaps part of the hash space when a next hop leaves: the
    // packets of a connection in flight at that instant may go on to another node, which
    // resets it. No L4 balancer without shared state can prevent that (see the README);
    // every other connection must succeed.
    let (at_switch, unexplained): (Vec<_>, Vec<_>) = failures
        .into_iter()
        .partition(|(began, ended, _)| *began <= switch.1 && *ended >= switch.0);
    eprintln!(
        "ecmp: {done} connections during the drain; {} failed, in flight as the router's \
         next hops changed ({:?} window)",
        at_switch.len(),
        switch.1 - switch.0
    );
    let messages = |v: &[(Instant, Instant, String)]| -> Vec<String> {
        v.iter().map(|f| f.2.clone()).collect()
    };
    assert!(
        unexplained.is_empty(),
        "{} of {done} failed outside the route change: {:?}",
        unexplained.len(),
        messages(&unexplained)
    );
    assert!(at_switch.len() <= 3, "{:?}", messages(&at_switch));

    // n2 vanishes (its link goes down, nothing says goodbye): its route goes within the BGP
    // hold time (3 s), and new connections succeed after it.
    let vanished = Instant::now();
    lab.ip("r", &["link", "set", "pn2", "down"]);
    wait_for("n2's route is gone", Duration::from_secs(10), || {
        next_hops(&lab) == 1
    });
    eprintln!(
        "ecmp: a vanished node's route gone after {:?}",
        vanished.elapsed()
    );
    assert!(
        vanished.elapsed() <= Duration::from_secs(5),
        "took {:?}, hold time is 3 s",
        vanished.elapsed()
    );
    for _ in 0..50 {
        let who = connect_from(&ns_c, vip, WAIT).unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
        assert!(who.starts_with("10.88.0.13"), "served via {who}");
    }
    let _ = ballast;
    stop_targets();
}
