//! SNI routing without termination: the ClientHello's server name picks the target group, and
//! the TLS session is between the client and the target (the client verifies the target's own
//! certificate, which Ballast never holds). Certificates are made in the test with rcgen; the
//! TLS ends are rustls.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::pki::{serve_tls, tls_target, Pki};
use common::*;
use rustls::pki_types::ServerName;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// A TLS client of `addr` asking for `name` and verifying the certificate against the test
/// CA: what the server answers to one line, or the handshake's error.
fn ask(pki: &Pki, addr: SocketAddr, name: &str) -> Result<String, String> {
    let tcp = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let server = ServerName::try_from(name.to_string()).unwrap();
    let tls = rustls::ClientConnection::new(pki.client_config(), server).unwrap();
    let mut stream = BufReader::new(rustls::StreamOwned::new(tls, tcp));
    stream
        .get_mut()
        .write_all(b"hello\n")
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    stream.read_line(&mut line).map_err(|e| e.to_string())?;
    Ok(line)
}

/// A test CA, and Ballast (listener `l`, more listener keys in `extra`) routing
/// `a.example.com` to a TLS target `a`, `*.wild.example` to a TLS target `w` (certificate for
/// `x.wild.example`), and everything else to a plain `named_echo("plain")` server.
fn router(extra: &str) -> (Pki, Ballast, Backend) {
    let pki = Pki::new();
    let a = tls_target(&pki, &["a.example.com"], "a");
    let w = tls_target(&pki, &["x.wild.example"], "w");
    let plain = Backend::start(named_echo("plain"));
    let lb = Ballast::start(&router_yaml(plain.addr, a, w, extra, false));
    (pki, lb, plain)
}

/// The config of [`router`]; `reordered` lists the groups in another order, after a new one.
fn router_yaml(
    default: SocketAddr,
    a: SocketAddr,
    w: SocketAddr,
    extra: &str,
    reordered: bool,
) -> String {
    let groups = [
        format!("  - name: default\n{NO_CHECKS}    targets: [{{address: '{default}'}}]\n"),
        format!("  - name: a\n{NO_CHECKS}    targets: [{{address: '{a}'}}]\n"),
        format!("  - name: w\n{NO_CHECKS}    targets: [{{address: '{w}'}}]\n"),
    ];
    let groups = if reordered {
        format!(
            "  - name: new\n{NO_CHECKS}    targets: [{{address: '{default}'}}]\n{}{}{}",
            groups[2], groups[1], groups[0]
        )
    } else {
        groups.concat()
    };
    format!(
        "workers: 2\nlisteners:\n  - name: l\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
         target_group: default\n    routes:\n      - {{server_name: a.example.com, target_group: a}}\n      \
         - {{server_name: '*.wild.example', target_group: w}}\n{extra}target_groups:\n{groups}"
    )
}

#[test]
fn server_names_pick_the_group_and_the_handshake_is_the_targets() {
    let (pki, lb, _plain) = router("");
    let addr = lb.addr("l");
    // The client verifies the certificate for the name it asked: only the target holds it.
    assert_eq!(ask(&pki, addr, "a.example.com").unwrap(), "a:hello\n");
    assert_eq!(ask(&pki, addr, "x.wild.example").unwrap(), "w:hello\n");
    // A name no route has goes to the default route (a plain server here: no handshake).
    assert!(ask(&pki, addr, "nobody.example.com").is_err());
    // A client that is not TLS at all: the default route, bytes unchanged.
    assert_eq!(echo_once(addr, b"not tls"), b"plain\nnot tls");
}

#[test]
fn without_server_name_close_resets_clients_no_route_takes() {
    let extra = "    without_server_name: close\n    client_hello_timeout: 300ms\n";
    let (pki, lb, _plain) = router(extra);
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    assert_eq!(ask(&pki, addr, "a.example.com").unwrap(), "a:hello\n");
    let mut s = client(addr);
    s.write_all(b"not tls").unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    // A client that says nothing: closed after client_hello_timeout.
    let mut silent = client(addr);
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
    wait_until("both refused", || {
        sample(
            &scrape(admin).0,
            "ballast_listener_refused_total",
            "reason",
            "no_route",
        ) == Some(2.0)
    });
    assert!(ask(&pki, addr, "nobody.example.com").is_err());
}

#[test]
fn routes_follow_their_groups_across_a_reload_that_reorders_them() {
    let pki = Pki::new();
    let a = tls_target(&pki, &["a.example.com"], "a");
    let w = tls_target(&pki, &["x.wild.example"], "w");
    let plain = Backend::start(named_echo("plain"));
    let lb = Ballast::start(&router_yaml(plain.addr, a, w, "", false));
    let (addr, admin) = (lb.addr("l"), lb.admin_addr());
    assert_eq!(ask(&pki, addr, "a.example.com").unwrap(), "a:hello\n");
    lb.rewrite_config(&router_yaml(plain.addr, a, w, "", true));
    assert_eq!(http(admin, "POST", "/reload", None, "").0, 200);
    assert_eq!(ask(&pki, addr, "a.example.com").unwrap(), "a:hello\n");
    assert_eq!(ask(&pki, addr, "x.wild.example").unwrap(), "w:hello\n");
    assert_eq!(echo_once(addr, b"not tls"), b"plain\nnot tls");
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A PostgreSQL-like TLS target: expects an SSLRequest, answers `answer` (`S` or `N`), then
/// (after `S`) a TLS handshake for `names` and lines answered `pg:{line}`.
fn postgres_target(pki: &Pki, names: &[&str], answer: u8) -> SocketAddr {
    serve_tls(pki, names, "pg", move |tcp| {
        let mut request = [0u8; 8];
        // A health check, or not PostgreSQL, sends no SSLRequest.
        tcp.read_exact(&mut request).is_ok()
            && request == SSL_REQUEST
            && tcp.write_all(&[answer]).is_ok()
            && answer == b'S'
    })
}

#[test]
fn postgres_clients_sslrequest_is_answered_then_routed_by_name_and_replayed() {
    let pki = Pki::new();
    let refusing = postgres_target(&pki, &["db.example.com"], b'N');
    let db = postgres_target(&pki, &["db.example.com"], b'S');
    let plain = Backend::start(named_echo("plain"));
    let yaml = format!(
        "workers: 2\nlisteners:\n  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
         target_group: default\n    postgres_starttls: true\n    routes:\n      \
         - {{server_name: db.example.com, target_group: db}}\ntarget_groups:\n  \
         - name: default\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n  \
         - name: db\n    algorithm: round_robin\n{NO_CHECKS}    targets: [{{address: '{refusing}'}}, {{address: '{db}'}}]\n",
        plain.addr
    );
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("pg");
    for _ in 0..4 {
        // As libpq with sslmode=require: SSLRequest, `S`, then TLS with SNI.
        let mut tcp = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.write_all(&SSL_REQUEST).unwrap();
        let mut welcome = [0u8; 1];
        tcp.read_exact(&mut welcome).unwrap();
        assert_eq!(&welcome, b"S");
        // The target refusing TLS (`N`) is passed over: the next one serves.
        assert_eq!(ask_over_tls(&pki, tcp), "pg:select 1\n");
    }
    // ... and its health is not charged: the server is up, a client asked what it lacks.
    let targets = group_targets(lb.admin_addr(), "db");
    let declined = targets
        .iter()
        .find(|t| t["address"] == refusing.to_string())
        .expect("the refusing target listed");
    assert_eq!(declined["connect_failures"], 0, "{declined}");
    // A client without an SSLRequest (plain PostgreSQL) takes the default route unchanged.
    assert_eq!(
        echo_once(addr, b"\0\0\0\x08plain"),
        b"plain\n\0\0\0\x08plain"
    );
}

/// Beside `postgres:` routing, a client that opens with a ClientHello itself (PostgreSQL 17's
/// `sslnegotiation=direct`) passes through by its name: no StartupMessage is looked for in its
/// TLS, no SSLRequest is replayed to its server.
#[test]
fn a_direct_tls_postgres_client_passes_through_by_name() {
    let pki = Pki::new();
    let db = tls_target(&pki, &["db.example.com"], "pg");
    let plain = Backend::start(named_echo("plain"));
    let yaml = format!(
        "workers: 1\nlisteners:\n  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
         target_group: default\n    postgres_starttls: true\n    routes:\n      \
         - {{server_name: db.example.com, target_group: db}}\n    postgres: {{without_route: \
         default}}\ntarget_groups:\n  - name: default\n{NO_CHECKS}    targets: [{{address: \
         '{}'}}]\n  - name: db\n{NO_CHECKS}    targets: [{{address: '{db}'}}]\n",
        plain.addr
    );
    // With postgres_starttls and without it (a listener that answers SSLRequests `N`).
    for yaml in [
        yaml.clone(),
        yaml.replace("    postgres_starttls: true\n", ""),
    ] {
        let lb = Ballast::start(&yaml);
        let tcp = TcpStream::connect_timeout(&lb.addr("pg"), WAIT).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        assert_eq!(ask_over_tls(&pki, tcp), "pg:select 1\n", "{yaml}");
    }
}

/// Over TLS to db.example.com on `tcp`: `select 1`, and the line answered.
fn ask_over_tls(pki: &Pki, tcp: TcpStream) -> String {
    let name = ServerName::try_from("db.example.com").unwrap();
    let tls = rustls::ClientConnection::new(pki.client_config(), name).unwrap();
    let mut stream = BufReader::new(rustls::StreamOwned::new(tls, tcp));
    stream.get_mut().write_all(b"select 1\n").unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    line
}

/// `openssl s_server -www` on a free port with a certificate for `name` from `pki`, files in
/// `dir`: it answers an HTTPS GET with a status page naming its own certificate.
fn openssl_server(pki: &Pki, dir: &std::path::Path, name: &str) -> (Server, SocketAddr) {
    let (cert, key) = pki.leaf_pem(&[name]);
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    Server::start(
        "openssl",
        &[
            "s_server",
            "-accept",
            "{port}",
            "-cert",
            cert_path.to_str().unwrap(),
            "-key",
            key_path.to_str().unwrap(),
            "-www",
            "-quiet",
        ],
    )
}

/// `curl https://{name}:{port}/` through `addr`, trusting `ca`: the page, or curl's error.
fn curl(addr: SocketAddr, name: &str, ca: &std::path::Path) -> Result<String, String> {
    let out = std::process::Command::new("timeout")
        .args(["10", "curl", "-sS", "--cacert", ca.to_str().unwrap()])
        .args(["--resolve", &format!("{name}:{}:127.0.0.1", addr.port())])
        .arg(format!("https://{name}:{}/", addr.port()))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn openssl_servers_behind_routes_complete_the_handshake_with_curl() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let (_a, a) = openssl_server(&pki, dir.path(), "a.example.com");
    let (_w, w) = openssl_server(&pki, dir.path(), "x.wild.example");
    let plain = Backend::start(named_echo("plain"));
    let lb = Ballast::start(&router_yaml(plain.addr, a, w, "", false));
    let addr = lb.addr("l");
    // curl verifies the certificate for the name it asked for, which only that s_server
    // holds: the session is the target's, Ballast only routed it.
    for name in ["a.example.com", "x.wild.example"] {
        let page = curl(addr, name, &ca).unwrap();
        // The page quotes the s_server's command line: its own certificate file.
        assert!(page.contains(&format!("{name}.pem")), "{page}");
    }
    // Another name goes to the default route, a plain server: no handshake there.
    assert!(curl(addr, "nobody.example.com", &ca).is_err());
    // A client that is not TLS: the default route, bytes unchanged.
    assert_eq!(echo_once(addr, b"not tls"), b"plain\nnot tls");
}
