//! End-to-end UDP load balancing through a real `ballast` process on 127.0.0.1.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// A UDP check that runs once at start and then every minute: out of the way of fd counts.
const NO_CHECKS: &str =
    "    health_check: {protocol: udp, send: ping, interval: 60s, timeout: 1s}\n";

/// Sends datagram `seq` (4 bytes, big-endian, then `pad` bytes) and returns the reply's
/// `(target id, upstream port, seq)`.
fn parse_tagged(reply: &[u8]) -> (u8, u16, u32) {
    assert!(reply.len() >= 7, "short reply {reply:?}");
    (
        reply[0],
        u16::from_be_bytes([reply[1], reply[2]]),
        u32::from_be_bytes(reply[3..7].try_into().unwrap()),
    )
}

#[test]
fn fifty_flows_of_a_thousand_datagrams_stay_whole_ordered_and_pinned() {
    let targets: Vec<UdpBackend> = (1..=3)
        .map(|id| UdpBackend::start(udp_tagged(id)))
        .collect();
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    let lb = Ballast::start(&udp_config(&addrs, "session_idle_timeout: 30s", NO_CHECKS));
    let listener = lb.addr("l");
    let clients: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut buf = [0u8; 2048];
                let mut seen = HashSet::new();
                const WINDOW: u32 = 8;
                let mut next_reply = 0u32;
                for seq in 0u32..1000 {
                    let mut datagram = seq.to_be_bytes().to_vec();
                    datagram.extend_from_slice(&[0xab; 60]);
                    s.send_to(&datagram, listener).unwrap();
                    while seq + 1 - next_reply >= WINDOW || (seq == 999 && next_reply < 1000) {
                        let (n, from) = s.recv_from(&mut buf).expect("reply lost");
                        assert_eq!(from, listener, "reply not from the listener's address");
                        assert_eq!(n, 3 + 64, "datagram boundaries kept");
                        let (id, port, got) = parse_tagged(&buf[..n]);
                        assert_eq!(got, next_reply, "replies in order");
                        seen.insert((id, port));
                        next_reply += 1;
                    }
                }
                seen
            })
        })
        .collect();
    let mut flows_per_target: HashMap<u8, usize> = HashMap::new();
    for c in clients {
        let seen = c.join().unwrap();
        // One target and one upstream socket for the whole flow: had the flow moved to the
        // other worker, a second session with another upstream port would show here.
        assert_eq!(
            seen.len(),
            1,
            "flow moved between targets or workers: {seen:?}"
        );
        let (id, _) = seen.into_iter().next().unwrap();
        *flows_per_target.entry(id).or_insert(0) += 1;
    }
    let mut counts: Vec<usize> = flows_per_target.values().copied().collect();
    counts.sort();
    assert_eq!(counts, [16, 17, 17], "{flows_per_target:?}");
}

#[test]
fn empty_and_largest_datagrams_pass_intact() {
    let echo = UdpBackend::start(udp_echo());
    let lb = Ballast::start(&udp_config(&[echo.addr], "", NO_CHECKS));
    let s = udp_client(lb.addr("l"));
    let mut buf = vec![0u8; 65536];
    for len in [0usize, 1, 1472, 65507] {
        let datagram: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        s.send(&datagram).unwrap();
        let n = s.recv(&mut buf).expect("reply");
        assert_eq!(&buf[..n], &datagram[..], "{len}-byte datagram changed");
    }
}

/// How many of process `pid`'s UDP sockets are connected to `peer` (IPv4): its descriptors'
/// socket inodes matched against `/proc/PID/net/udp`.
fn upstream_sockets(pid: u32, peer: std::net::SocketAddr) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let want = proc_net_address(peer);
    proc_net_rows(&format!("/proc/{pid}/net/udp"))
        .iter()
        .filter(|f| f.len() > 9 && f[2] == want && inodes.contains(&f[9]))
        .count()
}

#[test]
fn idle_sessions_end_and_close_their_sockets() {
    let echo = UdpBackend::start(udp_echo());
    // 1s: long enough that no session expires while the 20 are still being opened on a
    // loaded machine (the fd count right after would then be short of 20).
    let yaml = udp_config(&[echo.addr], "session_idle_timeout: 1s", NO_CHECKS);
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("l");
    // The one check at start is over: its socket is closed.
    wait_checks(lb.admin_addr(), "g", echo.addr, 1);
    // Ballast's sockets connected to the echo backend: the sessions' upstream sockets (counted
    // by what they are, not by the process's descriptor count, which other threads move).
    let upstream = || upstream_sockets(lb.pid(), echo.addr);
    assert_eq!(upstream(), 0);
    let clients: Vec<_> = (0..20).map(|_| udp_client(addr)).collect();
    for c in &clients {
        c.send(b"hi").unwrap();
        assert_eq!(c.recv(&mut [0u8; 8]).unwrap(), 2);
    }
    assert_eq!(upstream(), 20, "one upstream socket per session");
    wait_until("sessions expire and close their sockets", || {
        upstream() == 0
    });
    // A flow that comes back gets a new session.
    clients[0].send(b"again").unwrap();
    assert_eq!(clients[0].recv(&mut [0u8; 8]).unwrap(), 5);
}

#[test]
fn max_sessions_drops_new_flows_and_keeps_the_old_ones() {
    let echo = UdpBackend::start(udp_echo());
    let lb = Ballast::start(&udp_config(&[echo.addr], "max_sessions: 10", NO_CHECKS));
    let addr = lb.addr("l");
    let clients: Vec<_> = (0..10).map(|_| udp_client(addr)).collect();
    for c in &clients {
        c.send(b"1").unwrap();
        c.recv(&mut [0u8; 8]).unwrap();
    }
    let eleventh = udp_client(addr);
    eleventh
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    eleventh.send(b"11").unwrap();
    assert!(
        eleventh.recv(&mut [0u8; 8]).is_err(),
        "the 11th flow was served"
    );
    let dropped = [("listener", "l")];
    wait_metric(
        lb.admin_addr(),
        "ballast_listener_dropped_datagrams_total",
        &dropped,
        WAIT,
        |n| n >= 1.0,
    );
    for c in &clients {
        c.send(b"2").unwrap();
        assert_eq!(
            c.recv(&mut [0u8; 8]).unwrap(),
            1,
            "an existing flow stopped working"
        );
    }
}

/// Two targets checked every 200ms; kills the first and returns, per flow, the target id of
/// the first reply after the kill (or None when a flow got no reply within `window`).
struct Killed {
    lb: Ballast,
    /// Per flow, the target id of the first reply after the kill, if any.
    after: Vec<Option<u8>>,
    /// From the kill to `GET /targets` showing the target unhealthy.
    unhealthy_after: Duration,
    /// The four flows.
    clients: Vec<std::net::UdpSocket>,
    /// Both targets (the first restarted), kept alive for the rest of the test.
    _targets: (UdpBackend, UdpBackend),
}

fn kill_a_target(on_unhealthy: &str) -> Killed {
    let mut one = UdpBackend::start(udp_tagged(1));
    let two = UdpBackend::start(udp_tagged(2));
    let health = "    health_check: {protocol: udp, send: ping, expect: pong, interval: 200ms, \
                  timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 2}\n";
    let lb = Ballast::start_with_level(
        &udp_config(
            &[one.addr, two.addr],
            &format!("on_unhealthy: {on_unhealthy}"),
            health,
        ),
        "debug",
    );
    let addr = lb.addr("l");
    let clients: Vec<_> = (0..4).map(|_| udp_client(addr)).collect();
    let mut before = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        c.send(&(i as u32).to_be_bytes()).unwrap();
        let mut buf = [0u8; 16];
        let n = c.recv(&mut buf).unwrap();
        before.push(parse_tagged(&buf[..n]).0);
    }
    assert_eq!(
        before.iter().filter(|&&id| id == 1).count(),
        2,
        "{before:?}"
    );
    let (one_addr, admin) = (one.addr, lb.admin_addr());
    let killed = Instant::now();
    let _ = addr;
    one.stop();
    wait_health(admin, "g", one_addr, "unhealthy");
    let unhealthy_after = killed.elapsed();
    let mut after = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c.send(&(100 + i as u32).to_be_bytes()).unwrap();
        let mut buf = [0u8; 16];
        after.push(c.recv(&mut buf).ok().map(|n| parse_tagged(&buf[..n]).0));
    }
    // The flows on the dead target: under `keep` they stay there, so restarting it on its
    // port brings their replies back from it.
    let restarted = UdpBackend::start_on(one_addr, udp_tagged(1));
    Killed {
        lb,
        after,
        unhealthy_after,
        clients,
        _targets: (restarted, two),
    }
}

#[test]
fn rebalance_moves_flows_off_a_dead_target() {
    let k = kill_a_target("rebalance");
    // unhealthy_threshold × interval plus one interval
    let bound = Duration::from_millis(2 * 200 + 200);
    assert!(
        k.unhealthy_after <= bound + Duration::from_millis(150),
        "{:?}",
        k.unhealthy_after
    );
    assert_eq!(
        k.after,
        vec![Some(2); 4],
        "every flow answered by the live target"
    );
}

#[test]
fn keep_leaves_flows_on_their_target_and_icmp_disturbs_no_one() {
    let k = kill_a_target("keep");
    // Flows on the live target were not disturbed by the dead one's ICMP errors; flows on
    // the dead one got nothing.
    assert_eq!(
        k.after.iter().filter(|r| **r == Some(2)).count(),
        2,
        "{:?}",
        k.after
    );
    assert_eq!(
        k.after.iter().filter(|r| r.is_none()).count(),
        2,
        "{:?}",
        k.after
    );
    // Kept flows are back on their target as soon as it is (no health change needed).
    for (c, r) in k.clients.iter().zip(&k.after) {
        if r.is_none() {
            c.set_read_timeout(Some(WAIT)).unwrap();
            c.send(&9u32.to_be_bytes()).unwrap();
            let mut buf = [0u8; 16];
            let n = c
                .recv(&mut buf)
                .expect("kept flow answered by its restarted target");
            assert_eq!(parse_tagged(&buf[..n]).0, 1);
        }
    }
    // The listener keeps serving new flows.
    let fresh = udp_client(k.lb.addr("l"));
    fresh.send(&7u32.to_be_bytes()).unwrap();
    let mut buf = [0u8; 16];
    let n = fresh.recv(&mut buf).unwrap();
    assert!(parse_tagged(&buf[..n]).0 > 0);
}

#[test]
fn access_log_has_a_line_per_session() {
    let echo = UdpBackend::start(udp_echo());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {}\n{}",
        path.display(),
        udp_config(&[echo.addr], "max_responses: 1", NO_CHECKS)
    );
    let lb = Ballast::start(&yaml);
    let c = udp_client(lb.addr("l"));
    c.send(b"0123456789").unwrap();
    assert_eq!(c.recv(&mut [0u8; 16]).unwrap(), 10);
    let text = wait_for_lines(&path, 1);
    assert!(text.contains(" udp listener=l client="), "{text}");
    assert!(
        text.contains(
            "bytes_up=10 bytes_down=10 datagrams_up=1 datagrams_down=1 reason=max_responses"
        ),
        "{text}"
    );
}

#[test]
fn metrics_count_sessions_and_datagrams() {
    let echo = UdpBackend::start(udp_echo());
    let lb = Ballast::start(&udp_config(&[echo.addr], "", NO_CHECKS));
    let c = udp_client(lb.addr("l"));
    for i in 0..10u8 {
        c.send(&[i; 20]).unwrap();
        assert_eq!(c.recv(&mut [0u8; 32]).unwrap(), 20);
    }
    let (scrape, text) = scrape(lb.admin_addr());
    let listener = |name: &str| sample(&scrape, name, "listener", "l").unwrap_or(f64::NAN);
    assert_eq!(
        listener("ballast_listener_datagrams_up_total"),
        10.0,
        "{text}"
    );
    assert_eq!(
        listener("ballast_listener_datagrams_down_total"),
        10.0,
        "{text}"
    );
    assert_eq!(
        listener("ballast_listener_accepted_total"),
        1.0,
        "one session: {text}"
    );
    assert_eq!(listener("ballast_listener_active"), 1.0, "{text}");
    let target = |name: &str| sample(&scrape, name, "target", &echo.addr.to_string());
    assert_eq!(
        target("ballast_target_bytes_sent_total"),
        Some(200.0),
        "{text}"
    );
}

#[test]
fn a_wildcard_listener_replies_from_the_address_each_client_sent_to() {
    let echo = UdpBackend::start(udp_echo());
    // 0.0.0.0 on the loopback interface: every 127.x.y.z address, nothing off this machine.
    let yaml = udp_config(&[echo.addr], "", NO_CHECKS)
        .replace("bind: 127.0.0.1:0", "bind: 0.0.0.0:0\n    interface: lo")
        .replace(
            "target_groups:",
            "  - {name: l6, protocol: udp, bind: '[::]:0', interface: lo, target_group: g}\n\
             target_groups:",
        );
    let lb = Ballast::start(&yaml);
    let port = lb.addr("l").port();
    let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let mut buf = [0u8; 64];

    // One client socket, three host addresses: three flows, each answered from its own.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    for round in 0..3u8 {
        for (i, ip) in ["127.0.0.2", "127.0.0.3", "127.0.0.1"].iter().enumerate() {
            client.send_to(&[i as u8, round], at(ip)).unwrap();
            let (n, from) = client.recv_from(&mut buf).expect("reply lost");
            assert_eq!(from, at(ip), "reply not from the address sent to");
            assert_eq!(&buf[..n], &[i as u8, round]);
        }
    }
    // A burst: replies leave in batches (GSO where the sizes allow), each with its source.
    for seq in 0..50u8 {
        client.send_to(&[9, seq], at("127.0.0.2")).unwrap();
    }
    for seq in 0..50u8 {
        let (n, from) = client.recv_from(&mut buf).expect("reply lost");
        assert_eq!((from, &buf[..n]), (at("127.0.0.2"), &[9, seq][..]));
    }
    // IPv6 takes its own control messages (IPV6_PKTINFO).
    let v6 = UdpSocket::bind("[::1]:0").unwrap();
    v6.set_read_timeout(Some(WAIT)).unwrap();
    let l6: SocketAddr = format!("[::1]:{}", lb.addr("l6").port()).parse().unwrap();
    v6.connect(l6).unwrap();
    v6.send(b"six").unwrap();
    let n = v6.recv(&mut buf).expect("IPv6 reply lost");
    assert_eq!(&buf[..n], b"six");

    // A connected socket (as DNS resolvers and game clients use) takes replies only from the
    // address it is connected to: it hears back at all only if the source is right.
    let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.set_read_timeout(Some(WAIT)).unwrap();
    connected.connect(at("127.0.0.4")).unwrap();
    connected.send(b"hello").unwrap();
    let n = connected
        .recv(&mut buf)
        .expect("reply dropped: wrong source address");
    assert_eq!(&buf[..n], b"hello");

    // Each flow is its own session, keyed by the address the client used.
    let (status, body) = http(lb.admin_addr(), "GET", "/connections", None, "");
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut locals: Vec<String> = doc["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["local"].as_str().unwrap().to_string())
        .collect();
    locals.sort();
    let mut want: Vec<String> = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|ip| at(ip).to_string())
        .collect();
    want.push(l6.to_string());
    assert_eq!(locals, want, "{body}");
}
