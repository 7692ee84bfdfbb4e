//! Game servers behind one port. `token:` listeners (Quilkin's TokenRouter model): each
//! datagram carries a token naming its target; Ballast strips it and sends the datagram there,
//! whatever address it comes from. Unknown tokens are dropped and counted, never sent to a
//! guess. And a drained UDP target keeps its players: no new sessions, every live one flows.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// Target `i`'s token: 8 octets.
fn token(i: usize) -> String {
    format!("tok{i:05}")
}

/// One datagram to `to` from a fresh socket: the reply, or `None` within `wait`.
fn ask(to: SocketAddr, datagram: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(datagram, to).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// `ballast ARGS --admin http://ADMIN`, run to its end.
fn cli(admin: SocketAddr, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .args(["--admin", &format!("http://{admin}")])
        .output()
        .unwrap()
}

#[test]
fn a_hundred_servers_behind_one_port_each_reached_by_its_tokens() {
    let targets: Vec<UdpBackend> = (0..100)
        .map(|i| UdpBackend::start(udp_tagged(i as u8)))
        .collect();
    let list: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{{address: '{}', tokens: ['{}']}}", t.addr, token(i)))
        .collect();
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: t, protocol: udp, bind: '127.0.0.1:0', target_group: g, \
         token: {{capture: prefix, size: 8}}}}\n  - {{name: s, protocol: udp, bind: \
         '127.0.0.1:0', target_group: g, token: {{capture: suffix, size: 8, strip: false}}}}\n\
         target_groups:\n  - name: g\n    \
         health_check: {{protocol: udp, send: ping, expect: pong, interval: 60s, timeout: 1s}}\n    \
         targets: [{}]\n",
        list.join(", ")
    ));
    let (addr, admin) = (lb.addr("t"), lb.admin_addr());

    // 1,000 clients, ten at a time: each reaches the target of its token, which sees the
    // datagram without it.
    std::thread::scope(|scope| {
        for part in 0..10 {
            scope.spawn(move || {
                for c in (part * 100)..(part * 100 + 100) {
                    let t = c % 100;
                    let payload = format!("hello {c}");
                    let reply = ask(addr, format!("{}{payload}", token(t)).as_bytes(), WAIT)
                        .unwrap_or_else(|| panic!("client {c}: no reply"));
                    assert_eq!(reply[0] as usize, t, "client {c}");
                    assert_eq!(
                        &reply[3..],
                        payload.as_bytes(),
                        "client {c}: token stripped"
                    );
                }
            });
        }
    });

    // The suffix listener, strip: false: the target sees the token at the end.
    let reply = ask(lb.addr("s"), format!("ping!{}", token(42)).as_bytes(), WAIT).unwrap();
    assert_eq!(reply[0], 42);
    assert_eq!(&reply[3..], format!("ping!{}", token(42)).as_bytes());

    // Unknown tokens, and datagrams too short for one: dropped, counted, delivered nowhere.
    let received = || -> usize {
        targets
            .iter()
            .map(|t| t.received.load(std::sync::atomic::Ordering::SeqCst))
            .sum()
    };
    let before = received();
    for bad in [&b"nobody00 hello"[..], b"tok0000", b"tok99999 x"] {
        assert_eq!(ask(addr, bad, Duration::from_millis(200)), None);
    }
    let unknown = || {
        labelled(
            &scrape(admin).0,
            "ballast_listener_token_datagrams_total",
            &[("listener", "t"), ("route", "unknown")],
        )
    };
    wait_until("3 unknown counted", || unknown() == Some(3.0));
    assert_eq!(received(), before, "nothing delivered");
    let routed = labelled(
        &scrape(admin).0,
        "ballast_listener_token_datagrams_total",
        &[("listener", "t"), ("route", "routed")],
    );
    assert_eq!(routed, Some(1000.0));

    // A matchmaker places a player: the token added through the API is routed within a
    // second.
    let path = format!("/target-groups/g/targets/{}/tokens", targets[7].addr);
    let started = Instant::now();
    let (status, body) = http(admin, "POST", &path, None, r#"{"add": ["player77"]}"#);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("player77") && body.contains("tok00007"),
        "{body}"
    );
    let reply = ask(addr, b"player77 joined", Duration::from_secs(1)).expect("routed");
    assert_eq!((reply[0], &reply[3..]), (7, &b" joined"[..]));
    assert!(started.elapsed() < Duration::from_secs(1));

    // Mistakes: a token another target holds (409), one of another size (400), a bad body.
    let path3 = format!("/target-groups/g/targets/{}/tokens", targets[3].addr);
    let (status, body) = http(admin, "POST", &path3, None, r#"{"add": ["player77"]}"#);
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(admin, "POST", &path3, None, r#"{"add": ["short"]}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tokens of 8"), "{body}");
    let (status, _) = http(admin, "POST", &path3, None, r#"{"add": "player78"}"#);
    assert_eq!(status, 400);
    // A server ID in a group no `quic:` listener serves would route nothing.
    let body = format!(r#"{{"address": "{}", "server_id": 3}}"#, free_udp_addr());
    let (status, said) = http(admin, "POST", "/target-groups/g/targets", None, &body);
    assert_eq!(status, 409, "{said}");
    assert!(said.contains("has `quic:`"), "{said}");
    // The CLI does the same.
    let out = cli(
        admin,
        &[
            "tokens",
            "g",
            &targets[9].addr.to_string(),
            "--add",
            "player99",
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("tokens [tok00009, player99]"), "{said}");
    let reply = ask(addr, b"player99!", WAIT).expect("routed");
    assert_eq!(reply[0], 9);
    let listed = group_targets(admin, "g")
        .into_iter()
        .find(|t| t["address"] == targets[9].addr.to_string())
        .unwrap();
    assert_eq!(
        listed["tokens"],
        serde_json::json!(["tok00009", "player99"])
    );
    // A new server, added with its first token by the CLI: routed by it.
    let newcomer = UdpBackend::start(udp_tagged(200));
    let newcomer_addr = newcomer.addr.to_string();
    let out = cli(admin, &["add", "g", &newcomer_addr, "--token", "newbie01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = ask(addr, b"newbie01hi", WAIT).expect("routed");
    assert_eq!((reply[0], &reply[3..]), (200, &b"hi"[..]));
    // Removed: no longer routed.
    let (status, body) = http(admin, "POST", &path, None, r#"{"remove": ["player77"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ask(addr, b"player77 again", Duration::from_millis(300)),
        None
    );

    // One client whose token changes: its session moves, and each target it is moved to
    // counts it in `total` (so `active` never exceeds `total`).
    let total = |i: usize| {
        group_targets(admin, "g")
            .into_iter()
            .find(|t| t["address"] == targets[i].addr.to_string())
            .unwrap()["total"]
            .as_u64()
            .unwrap()
    };
    let before = (total(5), total(6));
    let s = udp_client(addr);
    let mut buf = [0u8; 64];
    for t in [5, 6, 5] {
        s.send(format!("{}hop", token(t)).as_bytes()).unwrap();
        let n = s.recv(&mut buf).unwrap();
        assert_eq!((buf[0] as usize, &buf[3..n]), (t, &b"hop"[..]));
    }
    assert_eq!((total(5), total(6)), (before.0 + 2, before.1 + 1));
}

/// Draining a UDP target: its 20 live sessions keep every reply, from the same target, while
/// new flows go elsewhere; a drained target takes no new token, and its players' tokens still
/// reach it.
#[test]
fn a_drained_udp_target_keeps_its_players_and_takes_no_new_ones() {
    let (a, b) = (
        UdpBackend::start(udp_tagged(1)),
        UdpBackend::start(udp_tagged(2)),
    );
    let lb = Ballast::start(&format!(
        "workers: 2\nlisteners:\n  - {{name: u, protocol: udp, bind: '127.0.0.1:0', \
         target_group: g}}\n  - {{name: t, protocol: udp, bind: '127.0.0.1:0', target_group: \
         g, token: {{capture: prefix, size: 8}}}}\ntarget_groups:\n  - name: g\n    \
         health_check: {{protocol: udp, send: ping, expect: pong, interval: 60s, timeout: 1s}}\n    \
         targets: [{{address: '{}', tokens: [player01]}}, {{address: '{}'}}]\n",
        a.addr, b.addr
    ));
    let (addr, admin) = (lb.addr("u"), lb.admin_addr());
    // 20 players, each a flow with a session; remember which target each is on.
    let players: Vec<std::net::UdpSocket> = (0..20).map(|_| udp_client(addr)).collect();
    let on: Vec<u8> = players
        .iter()
        .map(|p| {
            p.send(b"join").unwrap();
            let mut buf = [0u8; 64];
            let n = p.recv(&mut buf).unwrap();
            assert_eq!(&buf[3..n], b"join");
            buf[0]
        })
        .collect();
    let on_a = on.iter().filter(|&&t| t == 1).count();
    assert!(on_a > 0 && on_a < 20, "{on:?}");

    let drain = format!("/target-groups/g/targets/{}/drain", a.addr);
    assert_eq!(http(admin, "POST", &drain, None, "").0, 200);
    // Every live session: five more exchanges each, every reply back, from its own target.
    for round in 0..5 {
        for (p, &target) in players.iter().zip(&on) {
            let said = format!("move {round}");
            p.send(said.as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = p.recv(&mut buf).expect("a reply through the drain");
            assert_eq!((buf[0], &buf[3..n]), (target, said.as_bytes()));
        }
    }
    // New players: none to the drained target.
    for _ in 0..10 {
        let p = udp_client(addr);
        p.send(b"join").unwrap();
        let mut buf = [0u8; 64];
        p.recv(&mut buf).unwrap();
        assert_eq!(buf[0], 2, "a new session on the drained target");
    }
    // Tokens: the drained target takes no new one; its player's token still reaches it.
    let tokens = format!("/target-groups/g/targets/{}/tokens", a.addr);
    let (status, body) = http(admin, "POST", &tokens, None, r#"{"add": ["player02"]}"#);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("draining"), "{body}");
    let reply = ask(lb.addr("t"), b"player01 still here", WAIT).unwrap();
    assert_eq!((reply[0], &reply[3..]), (1, &b" still here"[..]));
    // A matchmaker's retry of a token the drained target holds already changes nothing.
    let (status, body) = http(admin, "POST", &tokens, None, r#"{"add": ["player01"]}"#);
    assert_eq!(status, 200, "{body}");

    // A reload drops the tokens the API added (the file's stay), and says how many.
    let other = format!("/target-groups/g/targets/{}/tokens", b.addr);
    let (status, body) = http(admin, "POST", &other, None, r#"{"add": ["player09"]}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(admin, "POST", "/reload", None, "").0, 200);
    lb.wait_log("reload: 1 token(s) routed until now are not in", WAIT);
}

/// `ballast deploy` on a UDP group: each target in turn drains (its players keep every
/// reply, and stay on it), is "deployed" once its sessions have ended, and comes back; the
/// deploy succeeds and no datagram of a live session goes unanswered.
#[test]
fn a_rolling_deploy_of_udp_targets_loses_no_player_datagram() {
    let (a, b) = (
        UdpBackend::start(udp_tagged(1)),
        UdpBackend::start(udp_tagged(2)),
    );
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: u, protocol: udp, bind: '127.0.0.1:0', target_group: g, \
         udp: {{session_idle_timeout: 500ms}}}}\ntarget_groups:\n  - name: g\n    \
         health_check: {{protocol: udp, send: ping, expect: pong, interval: 200ms, \
         timeout: 150ms, healthy_threshold: 1}}\n    \
         targets: [{{address: '{}'}}, {{address: '{}'}}]\n",
        a.addr, b.addr
    ));
    let (addr, admin) = (lb.addr("u"), lb.admin_addr());
    let players: Vec<_> = (0..10)
        .map(|p| {
            std::thread::spawn(move || {
                let s = udp_client(addr);
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let (mut on, mut lost, mut moved) = (None, 0, 0);
                let until = Instant::now() + Duration::from_secs(2);
                let mut k = 0;
                while Instant::now() < until {
                    let said = format!("p{p} m{k}");
                    s.send(said.as_bytes()).unwrap();
                    let mut buf = [0u8; 64];
                    match s.recv(&mut buf) {
                        Ok(n) if &buf[3..n] == said.as_bytes() => {
                            moved += usize::from(on.is_some_and(|t| t != buf[0]));
                            on = Some(buf[0]);
                        }
                        _ => lost += 1,
                    }
                    k += 1;
                    std::thread::sleep(Duration::from_millis(30));
                }
                (lost, moved, k)
            })
        })
        .collect();
    let deploy = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "deploy",
            "--group",
            "g",
            "--exec",
            "true",
            "--drain-timeout",
            "10s",
        ])
        .args([
            "--wait-healthy",
            "10s",
            "--admin",
            &format!("http://{admin}"),
        ])
        .output()
        .unwrap();
    for p in players {
        let (lost, moved, sent) = p.join().unwrap();
        assert_eq!((lost, moved), (0, 0), "of {sent} datagrams");
    }
    assert!(
        deploy.status.success(),
        "{}{}",
        String::from_utf8_lossy(&deploy.stdout),
        String::from_utf8_lossy(&deploy.stderr)
    );
    let states: Vec<String> = group_targets(admin, "g")
        .iter()
        .map(|t| t["admin_state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["active", "active"]);
}

/// A UDP server that keeps every datagram it gets (and answers the health check only).
fn recorder() -> (UdpBackend, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    let handler: UdpHandler = std::sync::Arc::new(move |d: &[u8], _| {
        if d == b"ping" {
            return Some(b"pong".to_vec());
        }
        kept.lock().unwrap().push(d.to_vec());
        None
    });
    (UdpBackend::start(handler), seen)
}

/// One client socket whose datagrams name two targets in turn, sent back to back so that
/// they share the worker's receive batches (a session moves between them): each reaches the
/// target its token names, in order. (Gathered by session, a run went up after the session
/// had moved: 18 of 40 to the wrong server, token already stripped.)
#[test]
fn datagrams_of_one_flow_naming_two_targets_each_reach_their_own() {
    let ((a, to_a), (b, to_b)) = (recorder(), recorder());
    let lb = Ballast::start(&format!(
        "workers: 1\nlisteners:\n  - {{name: t, protocol: udp, bind: '127.0.0.1:0', \
         target_group: g, token: {{capture: prefix, size: 8}}}}\ntarget_groups:\n  - name: g\n    \
         health_check: {{protocol: udp, send: ping, expect: pong, interval: 60s, timeout: 1s}}\n    \
         targets: [{{address: '{}', tokens: [match001]}}, {{address: '{}', tokens: [match003]}}]\n",
        a.addr, b.addr
    ));
    let player = udp_client(lb.addr("t"));
    let (mut want_a, mut want_b) = (Vec::new(), Vec::new());
    for i in 0..64 {
        let seq = format!("seq{i:03}").into_bytes();
        let (token, want) = match (i / 2) % 2 {
            0 => ("match001", &mut want_a),
            _ => ("match003", &mut want_b),
        };
        player.send(&[token.as_bytes(), &seq].concat()).unwrap();
        want.push(seq);
    }
    wait_until("64 datagrams at the targets", || {
        to_a.lock().unwrap().len() + to_b.lock().unwrap().len() >= 64
    });
    assert_eq!(*to_a.lock().unwrap(), want_a, "match001's server");
    assert_eq!(*to_b.lock().unwrap(), want_b, "match003's server");
}

/// `disable` (as `remove`) lets what is open go on for the group's `drain_timeout`: a player
/// already on the target keeps reaching it by its token; a new flow with that token is not
/// sent to it (dropped, counted unknown); once the drain_timeout has closed the player's
/// session, its datagrams go nowhere either.
#[test]
fn a_disabled_targets_players_go_on_until_its_drain_timeout() {
    players_go_on_until_the_drain_timeout("POST", "/disable");
}

/// As a disable: a removed target's tokens still reach it for the players already on it
/// (the file no longer lists them, the target lingers until its flows end).
#[test]
fn a_removed_targets_players_go_on_until_its_drain_timeout() {
    players_go_on_until_the_drain_timeout("DELETE", "");
}

/// A player on target a, then `method` on a's path with `suffix`: see the tests above.
fn players_go_on_until_the_drain_timeout(method: &str, suffix: &str) {
    let (a, b) = (
        UdpBackend::start(udp_tagged(1)),
        UdpBackend::start(udp_tagged(2)),
    );
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: t, protocol: udp, bind: '127.0.0.1:0', target_group: g, \
         token: {{capture: prefix, size: 8}}}}\ntarget_groups:\n  - name: g\n    \
         drain_timeout: 2s\n    \
         health_check: {{protocol: udp, send: ping, expect: pong, interval: 60s, timeout: 1s}}\n    \
         targets: [{{address: '{}', tokens: [player01]}}, {{address: '{}'}}]\n",
        a.addr, b.addr
    ));
    let (addr, admin) = (lb.addr("t"), lb.admin_addr());
    let player = udp_client(addr);
    let exchange = |said: &[u8]| {
        player.send(&[b"player01", said].concat()).unwrap();
        let mut buf = [0u8; 64];
        let n = player.recv(&mut buf).expect("a reply");
        (buf[0], buf[3..n].to_vec())
    };
    assert_eq!(exchange(b"join"), (1, b"join".to_vec()));
    let disable = format!("/target-groups/g/targets/{}{suffix}", a.addr);
    let disabled = Instant::now();
    let (status, body) = http(admin, method, &disable, None, "");
    assert!(status == 200 || status == 204, "{status} {body}");
    for round in 0..5 {
        let said = format!("still {round}").into_bytes();
        assert_eq!(
            exchange(&said),
            (1, said),
            "a live player through the disable"
        );
    }
    assert!(
        disabled.elapsed() < Duration::from_secs(2),
        "too slow to mean anything"
    );
    let unknown = || {
        let (m, _) = scrape(admin);
        labelled(
            &m,
            "ballast_listener_token_datagrams_total",
            &[("route", "unknown")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(unknown(), 0.0);
    assert_eq!(
        ask(addr, b"player01 new", Duration::from_millis(300)),
        None,
        "a new flow sent to a disabled target"
    );
    wait_until("the new flow counted", || unknown() == 1.0);
    // After the drain_timeout: the session is closed, and the player's next datagram (a new
    // flow) goes nowhere.
    wait_until("the player's session closed", || {
        player.send(b"player01 late").unwrap();
        let mut buf = [0u8; 64];
        player
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        player.recv(&mut buf).is_err()
    });
    assert!(
        disabled.elapsed() >= Duration::from_secs(2),
        "closed before drain_timeout"
    );
}
