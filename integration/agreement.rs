//! Every node picks the same target: three Ballast nodes, each in its own network namespace
//! listening on the same address (as nodes behind one VIP do), with the same five targets
//! listed in different orders, different worker counts, and a different history of admin
//! changes, receive the same 10,000 UDP flows; `maglev` (5-tuple key) and `source_hash`
//! (client IP) must send each flow to the same target on every node, and after one target
//! is removed, at most 1/N + 1% of the flows may move.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::netns::{in_netns, run, wait_for, Lab};
use common::*;

const BALLAST: &str = env!("CARGO_BIN_EXE_ballast");
const FLOWS: usize = 10_000;
const TARGETS: u16 = 5;
const LISTENER: &str = "127.0.0.1:5300";

/// Flow `i`: its own client address (127.1.x.y) and port, the same on every node.
fn flow(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, 30_000 + (i % 997) as u16))
}

/// The node config: targets 127.0.0.1:7001..7005 starting at `first` (another order on each
/// node), `workers` workers.
fn node_config(algorithm: &str, first: u16, workers: u32) -> String {
    let mut yaml = format!(
        "workers: {workers}\nlisteners:\n  - name: l\n    protocol: udp\n    bind: {LISTENER}\n    \
         target_group: g\n    udp: {{session_idle_timeout: 1s}}\ntarget_groups:\n  - name: g\n    \
         algorithm: {algorithm}\n    health_check: {{protocol: udp, send: ping, expect: pong, \
         interval: 500ms, timeout: 300ms}}\n    targets:\n"
    );
    for k in 0..TARGETS {
        yaml += &format!(
            "      - address: 127.0.0.1:{}\n",
            7001 + (first + k) % TARGETS
        );
    }
    yaml
}

/// Sends every flow through the node in namespace `ns`; returns the id of the target that
/// answered each (0: no answer after a retry).
fn picks(ns: &str) -> Vec<u8> {
    in_netns(ns, || {
        let listener: SocketAddr = LISTENER.parse().unwrap();
        let mut ids = Vec::with_capacity(FLOWS);
        for chunk in (0..FLOWS).collect::<Vec<_>>().chunks(500) {
            let sockets: Vec<UdpSocket> = chunk
                .iter()
                .map(|&i| {
                    let s = UdpSocket::bind(flow(i)).unwrap();
                    s.connect(listener).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    s.send(b"which").unwrap();
                    s
                })
                .collect();
            for s in &sockets {
                let mut buf = [0u8; 64];
                let id = match s.recv(&mut buf) {
                    Ok(n) if n > 3 => buf[0],
                    _ => {
                        let _ = s.send(b"which");
                        match s.recv(&mut buf) {
                            Ok(n) if n > 3 => buf[0],
                            _ => 0,
                        }
                    }
                };
                ids.push(id);
            }
        }
        ids
    })
}

/// `ballast ARGS…` inside namespace `ns` (its admin API on the default address there).
fn ballast_in(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns, BALLAST];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn sessions_ended(ns: &str) -> bool {
    ballast_in(ns, &["connections", "--json"]).contains("\"connections\": []")
}

fn agreement(algorithm: &str) {
    let mut lab = Lab::new(&format!("ag{}", &algorithm[..1]));
    let nodes: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| lab.add(n)).collect();
    let mut backends = Vec::new();
    for (k, ns) in nodes.iter().enumerate() {
        // The same five targets (by address) in every namespace.
        backends.push(in_netns(ns, || {
            (1..=TARGETS)
                .map(|t| {
                    let addr = format!("127.0.0.1:{}", 7000 + t).parse().unwrap();
                    UdpBackend::start_on(addr, udp_tagged(t as u8))
                })
                .collect::<Vec<_>>()
        }));
        let config = lab.dir().join(format!("n{k}.yaml"));
        std::fs::write(&config, node_config(algorithm, k as u16 * 2, k as u32 + 1)).unwrap();
        let short = format!("n{}", k + 1);
        lab.spawn(
            &short,
            &format!("ballast-{short}"),
            BALLAST,
            &["run", "--config", config.to_str().unwrap()],
        );
    }
    for ns in &nodes {
        wait_for("the node is ready", WAIT, || {
            Command::new("ip")
                .args(["netns", "exec", ns, BALLAST, "health", "--quiet"])
                .status()
                .is_ok_and(|s| s.success())
        });
    }
    // Node 2 has another history: target 3 drained and enabled again, so its table was built
    // from other healthy sets before this one.
    ballast_in(&nodes[1], &["drain", "g", "127.0.0.1:7003"]);
    ballast_in(&nodes[1], &["enable", "g", "127.0.0.1:7003"]);

    let before: Vec<Vec<u8>> = nodes.iter().map(|ns| picks(ns)).collect();
    assert!(
        !before[0].contains(&0),
        "some flows had no answer\n{}",
        lab.logs()
    );
    for (n, p) in before.iter().enumerate().skip(1) {
        let differ = p.iter().zip(&before[0]).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "node {} disagrees with node 1 on {differ} flows",
            n + 1
        );
    }
    let share = |t: u8| before[0].iter().filter(|&&x| x == t).count();
    for t in 1..=TARGETS as u8 {
        assert!(share(t) > FLOWS / 10, "target {t} got {} flows", share(t));
    }

    // Target 4 leaves every node; once the old sessions have ended, the same flows again.
    for ns in &nodes {
        ballast_in(ns, &["remove", "g", "127.0.0.1:7004"]);
    }
    for ns in &nodes {
        wait_for("sessions end", Duration::from_secs(15), || {
            sessions_ended(ns)
        });
    }
    let after: Vec<Vec<u8>> = nodes.iter().map(|ns| picks(ns)).collect();
    for (n, p) in after.iter().enumerate() {
        assert!(
            !p.contains(&0) && !p.contains(&4),
            "node {}: a flow unanswered or on the removed target",
            n + 1
        );
        let differ = p.iter().zip(&after[0]).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "after the removal, node {} disagrees on {differ} flows",
            n + 1
        );
    }
    let moved = before[0]
        .iter()
        .zip(&after[0])
        .filter(|(a, b)| a != b)
        .count();
    let bound = FLOWS as f64 * (1.0 / f64::from(TARGETS) + 0.01);
    assert!(
        moved as f64 <= bound,
        "{algorithm}: {moved} of {FLOWS} flows moved; at most {bound} may"
    );
    eprintln!("{algorithm}: {moved} of {FLOWS} flows moved when 1 of {TARGETS} targets left");
    for (ns, b) in nodes.iter().zip(backends) {
        in_netns(ns, move || drop(b));
    }
}

#[test]
fn maglev_nodes_agree_and_move_little() {
    agreement("maglev");
}

#[test]
fn source_hash_nodes_agree_and_move_little() {
    agreement("source_hash");
}
