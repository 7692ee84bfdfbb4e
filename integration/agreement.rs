//! Every node picks the same target: three Ballast nodes, each in its own network namespace
//! listening on the same address (as nodes behind one VIP do), with the same five targets
//! listed in different orders, different worker counts, and a different history of admin
//! changes, receive the same 10,000 UDP flows; `maglev` (5-tuple key) and `source_hash`
//! (client IP) must send each flow to the same target on every node, and after one target
//! is removed, at most 1/N + 1% of the flows may move. With `quic:` (QUIC-LB), 10,000
//! connection IDs reach the target whose server ID they carry on every node, and Initial
//! packets (client-chosen IDs) from different addresses meet the same target on every node.

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
    let datagrams: Vec<(SocketAddr, Vec<u8>)> =
        (0..FLOWS).map(|i| (flow(i), b"which".to_vec())).collect();
    routed(ns, &datagrams)
}

/// Sends each `(from, datagram)` through the node in namespace `ns`, each from its own
/// socket; returns the id of the target that answered each (0: no answer after a retry).
fn routed(ns: &str, datagrams: &[(SocketAddr, Vec<u8>)]) -> Vec<u8> {
    let datagrams = datagrams.to_vec();
    in_netns(ns, move || {
        let listener: SocketAddr = LISTENER.parse().unwrap();
        let mut ids = Vec::with_capacity(datagrams.len());
        for chunk in datagrams.chunks(500) {
            let sockets: Vec<(&Vec<u8>, UdpSocket)> = chunk
                .iter()
                .map(|(from, datagram)| {
                    let s = UdpSocket::bind(from).unwrap();
                    s.connect(listener).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    s.send(datagram).unwrap();
                    (datagram, s)
                })
                .collect();
            for (datagram, s) in &sockets {
                let mut buf = [0u8; 2048];
                let id = match s.recv(&mut buf) {
                    Ok(n) if n > 3 => buf[0],
                    _ => {
                        let _ = s.send(datagram);
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

/// Three nodes in namespaces, each with the five targets (ids 1–5) and `config(node)`;
/// returns the lab, the namespaces and the targets (to drop in their namespaces).
fn three_nodes(
    name: &str,
    config: impl Fn(usize, &std::path::Path) -> String,
) -> (Lab, Vec<String>, Vec<Vec<UdpBackend>>) {
    let mut lab = Lab::new(name);
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
        let yaml = config(k, lab.dir());
        let config = lab.dir().join(format!("n{k}.yaml"));
        std::fs::write(&config, yaml).unwrap();
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
    (lab, nodes, backends)
}

fn agreement(algorithm: &str) {
    let (lab, nodes, backends) = three_nodes(&format!("ag{}", &algorithm[..1]), |k, _| {
        node_config(algorithm, k as u16 * 2, k as u32 + 1)
    });
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

/// QUIC-LB across nodes: the same `quic:` configuration (block cipher) on three nodes whose
/// files list the targets in other orders and run other worker counts. 10,000 short header
/// packets, each with a connection ID naming server 1–5, reach that server on every node;
/// 2,000 Initial packets (connection IDs the client chose), sent to each node from another
/// address, meet the same target on every node (balanced on the ID, under maglev).
#[test]
fn quic_nodes_route_every_connection_id_alike() {
    use std::os::unix::fs::PermissionsExt;
    const KEY: &str = "fdf726a9893ec05c0632d3956680baf0";
    let config = |k: usize, dir: &std::path::Path| {
        let key = dir.join("quic.key");
        std::fs::write(&key, KEY).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        node_config("maglev", k as u16 * 2, k as u32 + 1)
            .replace(
                "    udp: {session_idle_timeout: 1s}\n",
                &format!(
                    "    udp: {{session_idle_timeout: 1s}}\n    quic: {{server_id_length: 2, \
                     algorithm: block_cipher, key_file: '{}'}}\n",
                    key.display()
                ),
            )
            .lines()
            .map(|l| match l.strip_prefix("      - address: 127.0.0.1:") {
                Some(port) => format!(
                    "      - {{address: '127.0.0.1:{port}', server_id: {}}}\n",
                    port.parse::<u16>().unwrap() - 7000
                ),
                None => format!("{l}\n"),
            })
            .collect::<String>()
    };
    let (_lab, nodes, backends) = three_nodes("agq", config);
    let key: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&KEY[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let lb = ballast::quic::lb::LbConfig::new(0, 2, 4, Some(key.try_into().unwrap())).unwrap();
    // Short headers: first octet 0x40 | random bits, the 7-octet ID, a payload.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut want = Vec::with_capacity(FLOWS);
    let shorts: Vec<(SocketAddr, Vec<u8>)> = (0..FLOWS)
        .map(|i| {
            let server = 1 + (next() % u64::from(TARGETS));
            want.push(server as u8);
            let mut packet = vec![0x40 | (next() as u8 & 0x3f)];
            packet.extend(
                lb.encode(server, &next().to_be_bytes(), next() as u8)
                    .unwrap(),
            );
            packet.extend_from_slice(b"1-RTT payload");
            (flow(i), packet)
        })
        .collect();
    for (n, ns) in nodes.iter().enumerate() {
        let got = routed(ns, &shorts);
        let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "node {}: {wrong} of {FLOWS} IDs misrouted", n + 1);
    }
    // Initials: v1, a random 8-octet ID, no source ID; each node sees them from other clients
    // (and none from an address that has a session already).
    let initials: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let mut p = vec![0xc0, 0, 0, 0, 1, 8];
            p.extend_from_slice(&next().to_be_bytes());
            p.push(0);
            p.extend_from_slice(&[0u8; 64]);
            p
        })
        .collect();
    let by_node: Vec<Vec<u8>> = nodes
        .iter()
        .enumerate()
        .map(|(n, ns)| {
            let sent: Vec<(SocketAddr, Vec<u8>)> = initials
                .iter()
                .enumerate()
                .map(|(i, p)| (flow(FLOWS + i + 2000 * n), p.clone()))
                .collect();
            routed(ns, &sent)
        })
        .collect();
    assert!(!by_node[0].contains(&0), "an Initial unanswered");
    for (n, got) in by_node.iter().enumerate().skip(1) {
        let differ = got.iter().zip(&by_node[0]).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "node {} routes {differ} Initials elsewhere",
            n + 1
        );
    }
    let spread: Vec<usize> = (1..=TARGETS as u8)
        .map(|t| by_node[0].iter().filter(|&&x| x == t).count())
        .collect();
    assert!(spread.iter().all(|&c| c > 200), "{spread:?}");
    for (ns, b) in nodes.iter().zip(backends) {
        in_netns(ns, move || drop(b));
    }
}
