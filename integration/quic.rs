//! `quic:` listeners (QUIC-LB connection-ID routing) with real QUIC: quinn servers issuing
//! connection IDs that name their server ID, a quinn client through Ballast. A client that
//! moves to a new address mid-stream (`Endpoint::rebind`) keeps its connection: its packets
//! carry the server's connection ID, and Ballast sends them to that server from whatever
//! address they come. Without `quic:` the same move breaks the connection.

mod common;
#[path = "common/quic.rs"]
mod quic_common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ballast::quic::lb::LbConfig;
use common::*;
use quic_common::*;

/// The key of the block_cipher tests (the draft's test-vector key).
const KEY: &str = "8f95f09245765f80256934e50c66207f";

/// A key file Ballast accepts (mode 600) in `dir`.
fn key_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("quic.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn lb_config() -> LbConfig {
    let key: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&KEY[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    LbConfig::new(0, 2, 6, Some(key.try_into().unwrap())).unwrap()
}

/// Ballast with one UDP listener over `servers` (server IDs 1, 2, …), one worker and
/// round_robin (so a second session of a client goes to the other server), with `quic`
/// (the `quic:` line, or nothing).
fn ballast(servers: &[&QuicServer], quic: &str) -> Ballast {
    let targets: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{{address: '{}', server_id: {}}}", s.addr, i + 1))
        .collect();
    Ballast::start(&format!(
        "workers: 1\nlisteners:\n  - {{name: q, protocol: udp, bind: '127.0.0.1:0', \
         target_group: g{quic}}}\ntarget_groups:\n  - name: g\n    \
         health_check: {{protocol: udp, send: ping, interval: 60s, timeout: 1s}}\n    \
         targets: [{}]\n",
        targets.join(", ")
    ))
}

/// Through `to`: a connection, one stream, 64 KiB echoed, then the client moves to a new
/// local port, another 64 KiB echoed, and the server's name. `Err` if the connection broke.
fn stream_across_a_move(to: SocketAddr) -> Result<(Vec<u8>, String), String> {
    runtime().block_on(async {
        let endpoint = client_endpoint();
        let conn = endpoint
            .connect(to, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut echoed = vec![0u8; chunk.len()];
        send.write_all(&chunk).await.map_err(|e| e.to_string())?;
        recv.read_exact(&mut echoed)
            .await
            .map_err(|e| e.to_string())?;
        let mut all = echoed.clone();
        endpoint
            .rebind(UdpSocket::bind("127.0.0.1:0").unwrap())
            .map_err(|e| e.to_string())?;
        send.write_all(&chunk).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let rest = tokio::time::timeout(Duration::from_secs(8), recv.read_to_end(1 << 20))
            .await
            .map_err(|_| "no answer after the move".to_string())?
            .map_err(|e| e.to_string())?;
        all.extend_from_slice(&rest);
        let name = String::from_utf8_lossy(&all[2 * chunk.len()..]).to_string();
        all.truncate(2 * chunk.len());
        conn.close(0u32.into(), b"done");
        Ok((all, name))
    })
}

#[test]
fn a_client_that_moves_mid_stream_stays_on_its_server() {
    let lb = lb_config();
    let (a, b) = (
        QuicServer::start("a", Some(lb.clone()), 1),
        QuicServer::start("b", Some(lb), 2),
    );
    let dir = tempfile::tempdir().unwrap();
    let quic = format!(
        ", quic: {{server_id_length: 2, nonce_length: 6, algorithm: block_cipher, \
         key_file: '{}'}}",
        key_file(&dir).display()
    );
    let lb = ballast(&[&a, &b], &quic);
    let (data, name) = stream_across_a_move(lb.addr("q")).expect("the stream survives the move");
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        data,
        [chunk.clone(), chunk].concat(),
        "every byte, in order"
    );
    let server = if name == "a" { &a } else { &b };
    // One connection in all, on the server that answered, seen from two addresses: a new path
    // of the same connection, not a new connection.
    assert_eq!(
        a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst),
        1
    );
    let paths = server.paths.lock().unwrap().clone();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(paths[0].len() >= 2, "the server saw the move: {paths:?}");
    let (metrics, text) = scrape(lb.admin_addr());
    let routed = |route: &str| {
        labelled(
            &metrics,
            "ballast_listener_quic_datagrams_total",
            &[("route", route)],
        )
        .unwrap_or(0.0)
    };
    assert!(routed("connection_id") > 0.0, "{text}");
    assert!(routed("balanced") > 0.0, "the Initial: {text}");
    let migrations = labelled(&metrics, "ballast_listener_quic_migrations_total", &[]);
    assert!(migrations.is_some_and(|m| m >= 1.0), "{text}");
}

/// `health_check: {protocol: quic}`: a QUIC server passes (it answers a reserved version
/// with Version Negotiation), a UDP echo server and a closed port fail.
#[test]
fn a_quic_health_check_tells_a_quic_server_from_others() {
    let server = QuicServer::start("a", None, 0);
    let echo = UdpBackend::start(udp_echo());
    let closed = free_udp_addr();
    let lb = Ballast::start(&format!(
        "listeners:\n  - {{name: q, protocol: udp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n    health_check: {{protocol: quic, interval: 200ms, \
         timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n    \
         targets: [{{address: '{}'}}, {{address: '{}'}}, {{address: '{}'}}]\n",
        server.addr, echo.addr, closed
    ));
    let admin = lb.admin_addr();
    // Targets start healthy: wait until each has been checked three times, then look.
    wait_until("three checks of each", || {
        group_targets(admin, "g")
            .iter()
            .all(|t| t["last_check"]["checks"].as_u64().is_some_and(|n| n >= 3))
    });
    let seen: Vec<(String, String)> = group_targets(admin, "g")
        .iter()
        .map(|t| {
            (
                t["health"].as_str().unwrap().to_string(),
                t["last_check"]["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("healthy", "pass"),
        ("unhealthy", "fail"),
        ("unhealthy", "fail"),
    ];
    assert_eq!(
        seen,
        want.map(|(h, r)| (h.to_string(), r.to_string())),
        "QUIC server, echo server, closed port"
    );
}

/// A key rotation in progress: server a still issues IDs of the old configuration
/// (block_cipher, codepoint 0), server b those of the new one (plaintext, codepoint 1, shorter
/// IDs); with the old one under `retiring:` a client of either keeps its connection across a
/// move.
#[test]
fn during_a_key_rotation_both_configurations_route() {
    let old = lb_config();
    let new = LbConfig::new(1, 2, 4, None).unwrap();
    let (a, b) = (
        QuicServer::start("a", Some(old), 1),
        QuicServer::start("b", Some(new), 2),
    );
    let dir = tempfile::tempdir().unwrap();
    let quic = format!(
        ", quic: {{server_id_length: 2, config_rotation: 1, retiring: {{server_id_length: 2, \
         nonce_length: 6, algorithm: block_cipher, key_file: '{}', config_rotation: 0}}}}",
        key_file(&dir).display()
    );
    let lb = ballast(&[&a, &b], &quic);
    let mut served = Vec::new();
    for _ in 0..2 {
        let (data, name) =
            stream_across_a_move(lb.addr("q")).expect("the stream survives the move");
        assert_eq!(data.len(), 128 * 1024);
        served.push(name);
    }
    served.sort();
    assert_eq!(served, ["a", "b"], "one connection on each server");
}

/// The same move without `quic:`: the new address is a new flow, round_robin sends it to the
/// other server, which knows nothing of the connection: it breaks.
#[test]
fn without_quic_routing_the_same_move_breaks_the_connection() {
    let lb = lb_config();
    let (a, b) = (
        QuicServer::start("a", Some(lb.clone()), 1),
        QuicServer::start("b", Some(lb), 2),
    );
    let lb = ballast(&[&a, &b], "");
    assert!(stream_across_a_move(lb.addr("q")).is_err());
}

/// Crafted packets (plaintext QUIC-LB, server IDs of one octet): an Initial whose client-chosen
/// connection ID happens to look like this configuration's, naming no server, is balanced and
/// not counted as an unknown server ID (only IDs a server must have issued are); a short
/// header naming no server is; an Initial naming a server whose health check fails is
/// balanced to a healthy one, as a new connection is; a v1 connection ID over 20 octets is
/// not QUIC (the fallback).
#[test]
fn crafted_packets_are_routed_and_counted_as_documented() {
    let a = UdpBackend::start(udp_tagged(1));
    // Answers datagrams but not the health check: unhealthy, though it echoes.
    let sick: UdpHandler = std::sync::Arc::new(|d: &[u8], _| (d != b"ping").then(|| vec![3]));
    let c = UdpBackend::start(sick);
    let lb = Ballast::start(&format!(
        "workers: 1\nlisteners:\n  - {{name: q, protocol: udp, bind: '127.0.0.1:0', \
         target_group: g, quic: {{server_id_length: 1, nonce_length: 4}}}}\n\
         target_groups:\n  - name: g\n    algorithm: maglev\n    \
         health_check: {{protocol: udp, send: ping, expect: pong, interval: 100ms, \
         timeout: 100ms, unhealthy_threshold: 1}}\n    \
         targets: [{{address: '{}', server_id: 1}}, {{address: '{}', server_id: 3}}]\n",
        a.addr, c.addr
    ));
    let (addr, admin) = (lb.addr("q"), lb.admin_addr());
    wait_health(admin, "g", c.addr, "unhealthy");
    wait_health(admin, "g", a.addr, "healthy");
    let lb_config = LbConfig::new(0, 1, 4, None).unwrap();
    let initial = |server_id: u64, nonce: u8| {
        let dcid = lb_config.encode(server_id, &[nonce; 4], 0).unwrap();
        let mut p = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
        p.extend_from_slice(&dcid);
        p.push(0); // no source connection ID
        p.extend_from_slice(b"hello");
        p
    };
    let reply = |packet: &[u8]| {
        let s = udp_client(addr);
        s.send(packet).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).expect("a reply");
        buf[..n].to_vec()
    };
    let counted = || {
        let (m, _) = scrape(admin);
        let route = |r: &str| {
            labelled(&m, "ballast_listener_quic_datagrams_total", &[("route", r)]).unwrap_or(0.0)
        };
        let unknown =
            labelled(&m, "ballast_listener_quic_unknown_server_id_total", &[]).unwrap_or(0.0);
        (route("balanced"), route("fallback"), unknown)
    };
    // Initials naming server 3, which fails its checks: balanced, so to a.
    for nonce in 0..10 {
        assert_eq!(reply(&initial(3, nonce))[0], 1, "to the healthy server");
    }
    // Initials naming server 9 (no target): balanced, not unknown.
    let (balanced, fallback, unknown) = counted();
    for nonce in 0..10 {
        reply(&initial(9, nonce));
    }
    wait_until("counted", || counted().0 >= balanced + 10.0);
    assert_eq!(counted(), (balanced + 10.0, fallback, unknown));
    // Short headers naming server 9: routed by 5-tuple, and the ID counted as unknown.
    for nonce in 0..3 {
        let mut p = vec![0x40];
        p.extend_from_slice(&lb_config.encode(9, &[nonce; 4], 0).unwrap());
        p.extend_from_slice(b"short");
        reply(&p);
    }
    wait_until("counted", || counted().1 >= fallback + 3.0);
    assert_eq!(counted(), (balanced + 10.0, fallback + 3.0, unknown + 3.0));
    // A v1 Initial with a 21-octet connection ID: not QUIC, the fallback.
    let mut p = vec![0xc0, 0, 0, 0, 1, 21];
    p.extend_from_slice(&[9; 21]);
    p.push(0);
    reply(&p);
    wait_until("counted", || counted().1 >= fallback + 4.0);
    assert_eq!(counted().0, balanced + 10.0);
    // A removed target keeps the flow already on it (until its drain_timeout); a short
    // header naming it from another address goes by 5-tuple to a server in service, and its
    // ID is a target's, so neither counts unknown.
    let short = |nonce: u8| {
        let mut p = vec![0x40];
        p.extend_from_slice(&lb_config.encode(3, &[nonce; 4], 0).unwrap());
        p.extend_from_slice(b"short");
        p
    };
    let on_c = udp_client(addr);
    let exchange = |packet: &[u8]| {
        on_c.send(packet).unwrap();
        let mut buf = [0u8; 64];
        on_c.recv(&mut buf).expect("a reply");
        buf[0]
    };
    assert_eq!(
        exchange(&short(1)),
        3,
        "short headers go by their ID, health aside"
    );
    let remove = format!("/target-groups/g/targets/{}", c.addr);
    let (status, body) = http(admin, "DELETE", &remove, None, "");
    assert!(status == 200 || status == 204, "{status} {body}");
    assert_eq!(
        exchange(&short(2)),
        3,
        "the flow on the removed target goes on"
    );
    assert_eq!(
        reply(&short(3))[0],
        1,
        "another address: to the server in service"
    );
    wait_until("counted", || counted().1 >= fallback + 5.0);
    assert_eq!(counted(), (balanced + 10.0, fallback + 5.0, unknown + 3.0));
    // Tokens for a group no `token:` listener serves would route nothing: refused.
    let path = format!("/target-groups/g/targets/{}/tokens", a.addr);
    let (status, body) = http(admin, "POST", &path, None, r#"{"add": ["abcdefgh"]}"#);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("has `token:`"), "{body}");
}
