//! The `Preamble` stage driven without a kernel: a PROXY protocol header and a TLS
//! ClientHello split at every point a seed chooses (down to one byte per read), a client that
//! closes or resets in the middle, and the timeouts. Whatever the split, the decision is the
//! same, and the bytes that go to the target first are the ones the client sent.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::net::{Rng, SimSocket, Wire};
use crate::config::Protocol;
use crate::conntrack::FiveTuple;
use crate::generation::Generation;
use crate::listener::Refusal;
use crate::tcp::preamble::{Expiry, Step};
use crate::tcp::pump::Endpoint;
use crate::tcp::{Action, Connection, Stage};

/// A generation of one listener with `listener_extra` (YAML lines under it) over groups
/// `web` (index 0) and `db` (index 1).
fn generation(listener_extra: &str) -> Arc<Generation> {
    let yaml = format!(
        "listeners:\n  - name: l\n    protocol: tcp\n    bind: 127.0.0.1:7000\n    \
         target_group: web\n{listener_extra}target_groups:\n  - name: web\n    targets: \
         [{{address: 127.0.0.1:7001}}]\n  - name: db\n    targets: [{{address: \
         127.0.0.1:7002}}]\n"
    );
    Generation::new(crate::config::parse(Path::new("t.yaml"), &yaml).unwrap())
}

/// A client connection in its preamble, over a fresh wire.
fn accepted(rng: &mut Rng) -> (Connection<SimSocket>, Rc<RefCell<Wire>>) {
    let wire = Rc::new(RefCell::new(Wire::new("client", rng)));
    wire.borrow_mut().rcv_cap = usize::MAX;
    let tuple = FiveTuple {
        protocol: Protocol::Tcp,
        client: SocketAddr::from(([10, 0, 0, 1], 40000)),
        listener: SocketAddr::from(([127, 0, 0, 1], 7000)),
    };
    let front = Endpoint::new(SimSocket(wire.clone()), 1);
    (Connection::new(1, 0, 0, tuple, front, Instant::now()), wire)
}

/// Feeds `bytes` to the preamble in pieces the seed chooses (one byte to all of it), as
/// client events, then its FIN (`Some(true)`) or reset (`Some(false)`) if `end` says;
/// returns the first step that is not `Wait` (or the last), and the connection.
fn feed(
    generation: &Generation,
    bytes: &[u8],
    seed: u64,
    end: Option<bool>,
) -> (Step, Connection<SimSocket>) {
    let (step, conn, _) = feed_counted(generation, bytes, seed, end);
    (step, conn)
}

/// As [`feed`], also saying how many of `bytes` the client had sent by then.
fn feed_counted(
    generation: &Generation,
    bytes: &[u8],
    seed: u64,
    end: Option<bool>,
) -> (Step, Connection<SimSocket>, usize) {
    let mut rng = Rng::new(seed);
    let (mut conn, wire) = accepted(&mut rng);
    let listener = &generation.listeners[0];
    let mut sent = 0;
    loop {
        let n = match rng.below(3) {
            0 => 1,
            1 => rng.upto(8),
            _ => rng.upto(bytes.len().max(1)),
        }
        .min(bytes.len() - sent);
        wire.borrow_mut().to_ballast.extend(&bytes[sent..sent + n]);
        sent += n;
        if sent == bytes.len() {
            match end {
                Some(true) => wire.borrow_mut().peer_fin = true,
                Some(false) => wire.borrow_mut().peer_rst = true,
                None => {}
            }
        }
        conn.front.ready.readable = true;
        let step = conn.read_preamble(listener, Instant::now());
        match step {
            Step::Wait if sent < bytes.len() => continue,
            step => return (step, conn, sent),
        }
    }
}

/// The bytes queued for the target once the preamble is done (`group`'s header first).
fn first_bytes(generation: &Generation, conn: &mut Connection<SimSocket>) -> Vec<u8> {
    let group = &generation.groups[conn.group].config;
    assert_eq!(conn.start_connecting(group), Action::Connect);
    match &mut conn.stage {
        Stage::Connecting(a) => std::mem::take(&mut a.first),
        other => panic!("not connecting: {other}"),
    }
}

#[test]
fn a_proxy_header_split_anywhere_declares_the_same_client() {
    let g = generation("    accept_proxy_protocol: {trusted: [10.0.0.0/8]}\n");
    let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\n";
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let bytes = [&header[..], &payload[..]].concat();
    for seed in 0..500 {
        let (step, mut conn, sent) = feed_counted(&g, &bytes, seed, None);
        assert!(matches!(step, Step::Done), "seed {seed}: {step:?}");
        assert_eq!(
            conn.client(),
            "192.0.2.7:5555".parse().unwrap(),
            "seed {seed}"
        );
        assert_eq!(
            conn.local(),
            "198.51.100.1:443".parse().unwrap(),
            "seed {seed}"
        );
        // What came after the header goes to the target first, whatever was read with it.
        let mut first = first_bytes(&g, &mut conn);
        first.extend(conn.front.stream.0.borrow().to_ballast.iter().copied());
        first.extend(&bytes[sent..]);
        assert_eq!(first, payload, "seed {seed}");
    }
}

#[test]
fn a_proxy_header_cut_short_is_refused_or_the_client_is_gone() {
    let g = generation("    accept_proxy_protocol: {trusted: [10.0.0.0/8]}\n");
    let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\n";
    for seed in 0..200 {
        let cut = 1 + (seed as usize % (header.len() - 1));
        let (step, _) = feed(&g, &header[..cut], seed, Some(true));
        assert!(
            matches!(step, Step::Refused(Refusal::BadProxyHeader)),
            "FIN after {cut} bytes, seed {seed}: {step:?}"
        );
        let (step, _) = feed(&g, &header[..cut], seed, Some(false));
        assert!(
            matches!(step, Step::ClientGone),
            "RST after {cut}, seed {seed}: {step:?}"
        );
        let (step, _) = feed(&g, b"PROXY TCP4 nonsense here\r\n", seed, None);
        assert!(
            matches!(step, Step::Refused(Refusal::BadProxyHeader)),
            "seed {seed}"
        );
    }
}

/// A real ClientHello (rustls) naming `name`.
fn client_hello(name: &'static str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut client =
        rustls::ClientConnection::new(Arc::new(config), name.try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    client.write_tls(&mut out).unwrap();
    out
}

#[test]
fn a_client_hello_split_anywhere_routes_the_same_and_is_passed_on_whole() {
    let routes = "    routes: [{server_name: db.example.com, target_group: db}]\n";
    let g = generation(routes);
    let hello = client_hello("db.example.com");
    for seed in 0..300 {
        let (step, mut conn, sent) = feed_counted(&g, &hello, seed, None);
        assert!(matches!(step, Step::Done), "seed {seed}: {step:?}");
        assert_eq!(conn.group, 1, "seed {seed}: not routed to db");
        // Peeked, not consumed: the target gets the ClientHello as the client sent it.
        let mut first = first_bytes(&g, &mut conn);
        first.extend(conn.front.stream.0.borrow().to_ballast.iter().copied());
        first.extend(&hello[sent..]);
        assert_eq!(first, hello, "seed {seed}");
    }
    let other = client_hello("www.example.com");
    let (step, conn) = feed(&g, &other, 1, None);
    assert!(
        matches!(step, Step::Done) && conn.group == 0,
        "unknown name: default route"
    );
    let close = generation(&format!("{routes}    without_server_name: close\n"));
    let (step, _) = feed(&close, &other, 1, None);
    assert!(matches!(step, Step::Refused(Refusal::NoRoute)), "{step:?}");
    let (step, conn) = feed(&g, b"SSH-2.0-OpenSSH_9.2\r\n", 1, None);
    assert!(
        matches!(step, Step::Done) && conn.group == 0,
        "not TLS: default route"
    );
}

#[test]
fn a_late_preamble_ends_by_the_listener_options() {
    let mut rng = Rng::new(1);
    let proxy = generation("    accept_proxy_protocol: {trusted: [10.0.0.0/8]}\n");
    let (conn, _) = accepted(&mut rng);
    let config = &proxy.listeners[0].config;
    assert_eq!(
        conn.preamble_expired(config),
        Expiry::Refused(Refusal::ProxyTimeout)
    );
    let routes = "    routes: [{server_name: db.example.com, target_group: db}]\n";
    let sni = generation(routes);
    let (mut conn, _) = accepted(&mut rng);
    assert_eq!(
        conn.read_preamble(&sni.listeners[0], Instant::now()),
        Step::Wait
    );
    assert_eq!(
        conn.preamble_expired(&sni.listeners[0].config),
        Expiry::DefaultRoute
    );
    let close = generation(&format!("{routes}    without_server_name: close\n"));
    let (mut conn, _) = accepted(&mut rng);
    assert_eq!(
        conn.read_preamble(&close.listeners[0], Instant::now()),
        Step::Wait
    );
    assert_eq!(
        conn.preamble_expired(&close.listeners[0].config),
        Expiry::Refused(Refusal::NoRoute)
    );
}
