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
