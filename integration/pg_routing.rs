//! PostgreSQL behind one listener with `postgres:` (real PostgreSQL 15 servers): routes by
//! the StartupMessage's database, plain and with `sslmode=verify-full` through a TLS listener;
//! a readable error for a database no route takes; cancel requests (psql's Ctrl-C) reaching
//! the server that runs the query, whatever worker and target they land on; and malformed,
//! oversized and slow startup packets answered with an error, never crashing a worker.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::postgres::{psql, Postgres};
use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// A `postgres:` listener `pg` over `groups` (name, server address); `postgres` is the
/// section's body (flow style) and `listener_extra` more listener keys.
fn pg_config(listener_extra: &str, postgres: &str, groups: &[(&str, SocketAddr)]) -> String {
    let mut yaml = format!(
        "workers: 2\nlisteners:\n  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
         target_group: {}\n{listener_extra}    postgres: {postgres}\ntarget_groups:\n",
        groups[0].0
    );
    for (name, addr) in groups {
        yaml += &format!("  - name: {name}\n{NO_CHECKS}    targets: [{{address: '{addr}'}}]\n");
    }
    yaml
}

/// `psql -d a` and `psql -d b` on one address reach their own clusters; a prefix route takes
/// every database it covers; a database no route takes gets an error psql prints, naming it.
#[test]
fn one_address_reaches_each_database_s_own_cluster() {
    let pki = Pki::new();
    let (a, b) = (
        Postgres::start_with(&pki, "a", false),
        Postgres::start_with(&pki, "b", false),
    );
    a.sql("postgres", "create database alpha");
    b.sql("postgres", "create database beta");
    b.sql("postgres", "create database beta_eu");
    let lb = Ballast::start(&pg_config(
        "",
        "{routes: [{database: alpha, target_group: a}, {database: 'beta*', target_group: b}]}",
        &[("a", a.addr), ("b", b.addr)],
    ));
    let addr = lb.addr("pg");
    let port = "select inet_server_port()";
    for (database, server) in [("alpha", &a), ("beta", &b), ("beta_eu", &b)] {
        let got = psql(addr, database, "", port).unwrap_or_else(|e| panic!("{database}: {e}"));
        assert_eq!(got, server.addr.port().to_string(), "{database}");
    }
    let refused = psql(addr, "gamma", "", port).unwrap_err();
    assert!(
        refused.contains("FATAL:  no route for database \"gamma\" (user \"postgres\")"),
        "{refused}"
    );
    let scrape = scrape(lb.admin_addr()).0;
    let no_route = labelled(
        &scrape,
        "ballast_listener_refused_total",
        &[("reason", "no_route")],
    );
    assert_eq!(no_route, Some(1.0));
}

/// Through a `tls` listener (`postgres_starttls`), psql with `sslmode=verify-full` verifies
/// Ballast's certificate, and the StartupMessage read after the handshake routes it.
#[test]
fn verify_full_clients_are_routed_by_the_database_after_the_handshake() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_files(dir.path(), &["db.example.com"]);
    let (a, b) = (
        Postgres::start_with(&pki, "a", false),
        Postgres::start_with(&pki, "b", false),
    );
    a.sql("postgres", "create database alpha");
    b.sql("postgres", "create database beta");
    let yaml = pg_config(
        &format!(
            "    postgres_starttls: true\n    tls:\n      certificates:\n        \
             - {{cert: {0}/lb.pem, key: {0}/lb.key}}\n",
            dir.path().display()
        ),
        "{routes: [{database: alpha, target_group: a}, {database: beta, target_group: b}]}",
        &[("a", a.addr), ("b", b.addr)],
    )
    .replace("protocol: tcp\n    bind", "protocol: tls\n    bind");
    let lb = Ballast::start(&yaml);
    let tls = format!(
        "host=db.example.com sslmode=verify-full sslrootcert={}",
        ca.display()
    );
    let query = "select inet_server_port()";
    for (database, server) in [("alpha", &a), ("beta", &b)] {
        let got = psql(lb.addr("pg"), database, &tls, query).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, server.addr.port().to_string(), "{database}");
    }
    let refused = psql(lb.addr("pg"), "gamma", &tls, query).unwrap_err();
    assert!(
        refused.contains("no route for database \"gamma\""),
        "{refused}"
    );
    // Ctrl-C: libpq sends the cancel in the clear, before any TLS.
    let conninfo = format!(
        "hostaddr=127.0.0.1 port={} user=postgres dbname=alpha connect_timeout=5 {tls}",
        lb.addr("pg").port()
    );
    ctrl_c_cancels(&conninfo, &[&a], "over TLS");
    // A client without TLS is told, readably.
    let refused = psql(lb.addr("pg"), "alpha", "sslmode=disable", query).unwrap_err();
    assert!(
        refused.contains("FATAL:  this listener takes TLS only"),
        "{refused}"
    );
}

/// On a `tls` listener the StartupMessage has its own `startup_timeout`, from the handshake's
/// end: a client that finishes its handshake and says nothing is answered 08P01 well before
/// the handshake timeout, and one that took longer than `startup_timeout` to start its
/// handshake (within the handshake timeout) is still served.
#[test]
fn the_startup_message_has_its_own_time_after_the_handshake() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write_files(dir.path(), &["db.example.com"]);
    let a = Postgres::start_with(&pki, "a", false);
    let yaml = pg_config(
        &format!(
            "    postgres_starttls: true\n    tls:\n      handshake_timeout: 3s\n      \
             certificates:\n        - {{cert: {0}/lb.pem, key: {0}/lb.key}}\n",
            dir.path().display()
        ),
        "{startup_timeout: 400ms}",
        &[("a", a.addr)],
    )
    .replace("protocol: tcp\n    bind", "protocol: tls\n    bind");
    let lb = Ballast::start(&yaml);
    let handshake = |delay: Duration| {
        let mut tcp = TcpStream::connect(lb.addr("pg")).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        // A slow client: its SSLRequest comes late (the stimulus, not a wait for Ballast).
        std::thread::sleep(delay);
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .unwrap();
        let mut s = [0u8; 1];
        tcp.read_exact(&mut s).unwrap();
        assert_eq!(&s, b"S");
        let name = rustls::pki_types::ServerName::try_from("db.example.com").unwrap();
        // As libpq 17 offers it; a `postgres:` listener accepts it by default.
        let mut config = (*pki.client_config()).clone();
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).unwrap();
        }
        assert_eq!(tls.alpn_protocol(), Some(&b"postgresql"[..]));
        rustls::StreamOwned::new(tls, tcp)
    };
    // Silent after the handshake, prompt or late to it: refused at startup_timeout from the
    // handshake's end, not at the handshake's 3 s.
    for delay in [Duration::ZERO, Duration::from_millis(800)] {
        let mut silent = handshake(delay);
        let done = Instant::now();
        let mut got = Vec::new();
        let _ = silent.read_to_end(&mut got);
        let waited = done.elapsed();
        assert_eq!(got.first(), Some(&b'E'), "{got:?}");
        assert!(
            String::from_utf8_lossy(&got).contains("no whole startup packet in time"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
            "{delay:?} late: {waited:?}"
        );
    }
    // Late to start (past startup_timeout from the accept), prompt after: served.
    let mut late = handshake(Duration::from_millis(800));
    late.write_all(&startup("postgres", "postgres")).unwrap();
    let mut first = [0u8; 1];
    late.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"R", "the server's authentication request");
}

/// SNI routes keep working beside the StartupMessage's: on a `tcp` listener with
/// `postgres_starttls`, a client whose TLS passes through to its server is routed by the name
/// it asks for, and a plain one by its database.
#[test]
fn passthrough_tls_clients_go_by_name_and_plain_ones_by_database() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let secure = Postgres::start_with(&pki, "db.example.com", true);
    let plain = Postgres::start_with(&pki, "a", false);
    plain.sql("postgres", "create database alpha");
    let lb = Ballast::start(&pg_config(
        "    postgres_starttls: true\n    routes: [{server_name: db.example.com, target_group: \
         secure}]\n",
        "{routes: [{database: alpha, target_group: plain}]}",
        &[("plain", plain.addr), ("secure", secure.addr)],
    ));
    let query =
        "select inet_server_port() || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let tls = format!(
        "host=db.example.com sslmode=verify-full sslrootcert={}",
        ca.display()
    );
    let got = psql(lb.addr("pg"), "postgres", &tls, query).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got,
        format!("{} true", secure.addr.port()),
        "PostgreSQL's own TLS"
    );
    let got =
        psql(lb.addr("pg"), "alpha", "sslmode=disable", query).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, format!("{} false", plain.addr.port()));
}

/// psql's Ctrl-C (SIGINT: libpq's PQcancel on a new connection, with the key the server
/// sent) cancels a `pg_sleep(30)` within a second, with two workers and three targets: each
/// cancel reaches the server running the query.
#[test]
fn ctrl_c_in_psql_cancels_the_query_on_its_own_server() {
    let pki = Pki::new();
    let servers: Vec<Postgres> = ["a", "b", "c"]
        .iter()
        .map(|n| Postgres::start_with(&pki, n, false))
        .collect();
    let mut yaml = pg_config("", "{}", &[("g", servers[0].addr)]);
    yaml = yaml.replace(
        &format!("targets: [{{address: '{}'}}]", servers[0].addr),
        &format!(
            "targets: [{}]",
            servers
                .iter()
                .map(|s| format!("{{address: '{}'}}", s.addr))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let lb = Ballast::start(&yaml);
    let conninfo = format!(
        "hostaddr=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
        lb.addr("pg").port()
    );
    let servers: Vec<&Postgres> = servers.iter().collect();
    for round in 0..6 {
        ctrl_c_cancels(&conninfo, &servers, &format!("round {round}"));
    }
    let scrape = scrape(lb.admin_addr()).0;
    assert_eq!(
        labelled(
            &scrape,
            "ballast_listener_postgres_cancels_total",
            &[("result", "routed")]
        ),
        Some(6.0)
    );
}

/// Runs `select pg_sleep(30)` in psql through `conninfo`, presses Ctrl-C (SIGINT) once one of
/// `servers` runs it, and checks the query was cancelled within a second (`what` names the
/// case in failures).
fn ctrl_c_cancels(conninfo: &str, servers: &[&Postgres], what: &str) {
    let sleeping = || -> usize {
        servers
            .iter()
            .map(|s| {
                s.sql(
                    "postgres",
                    "select count(*) from pg_stat_activity where state = 'active' and \
                     query like 'select pg_sleep%'",
                )
                .parse::<usize>()
                .unwrap()
            })
            .sum()
    };
    let mut client = Command::new("psql")
        .args([conninfo, "-Xc", "select pg_sleep(30)"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the query running", || sleeping() == 1);
    let asked = Instant::now();
    // SAFETY: kill(2) with the pid of a child we spawned.
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    let mut ended = None;
    while asked.elapsed() < Duration::from_secs(5) {
        if let Some(status) = client.try_wait().unwrap() {
            ended = Some((status, asked.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some((_, took)) = ended else {
        let _ = client.kill();
        let _ = client.wait();
        panic!("{what}: psql still waiting 5 s after Ctrl-C: the cancel went astray");
    };
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{what}: {stderr}"
    );
    assert!(took < Duration::from_secs(1), "{what}: {took:?}");
    wait_until("no query left running", || sleeping() == 0);
}

/// A protocol 3.0 StartupMessage for `user` and `database`.
fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0, 0, 3, 0, 0];
    p.extend_from_slice(format!("user\0{user}\0database\0{database}\0\0").as_bytes());
    let len = (p.len() as u32).to_be_bytes();
    p[..4].copy_from_slice(&len);
    p
}

/// The `ErrorResponse` Ballast answered with: its SQLSTATE and message.
fn error_from(addr: SocketAddr, send: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(send);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    // Encryption requests before it were answered `N`, a byte each.
    let answers = got.iter().take_while(|&&b| b == b'N').count();
    got.drain(..answers);
    assert_eq!(got.first(), Some(&b'E'), "{got:?}");
    let text = String::from_utf8_lossy(&got[5..]).into_owned();
    let field = |code: char| {
        text.split('\0')
            .find_map(|f| f.strip_prefix(code))
            .unwrap_or_default()
            .to_string()
    };
    (field('C'), field('M'))
}

/// Malformed, oversized and late startup packets are answered with SQLSTATE 08P01 (what psql
/// would print) and closed; encryption requests on a plain listener are answered `N` (each
/// once: a repeat is refused as PostgreSQL refuses it); an
/// unknown cancel key is closed without a word; and 10,000 random first packets never stop a
/// worker: psql works afterwards and no worker restarted.
#[test]
fn bad_startup_packets_get_an_error_and_never_crash_a_worker() {
    let pki = Pki::new();
    let a = Postgres::start_with(&pki, "a", false);
    let lb = Ballast::start(&pg_config("", "{startup_timeout: 300ms}", &[("a", a.addr)]));
    let addr = lb.addr("pg");
    // Protocol 2, an over-long length, a broken layout, and nothing at all (late).
    let (code, message) = error_from(addr, &[0, 0, 0, 8, 0, 2, 0, 0]);
    assert_eq!(code, "08P01");
    assert!(
        message.contains("unsupported frontend protocol 2.0"),
        "{message}"
    );
    let (code, message) = error_from(addr, &[0, 1, 0, 0, 0, 3, 0, 0]);
    assert_eq!(
        (code.as_str(), message.contains("too long")),
        ("08P01", true),
        "{message}"
    );
    let (code, _) = error_from(addr, &[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r']);
    assert_eq!(code, "08P01");
    let asked = Instant::now();
    let (code, message) = error_from(addr, &[]);
    assert_eq!(code, "08P01");
    assert!(message.contains("in time"), "{message}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    // SSLRequest, then GSSENCRequest: `N` each, then the StartupMessage goes on.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut one = [0u8; 1];
    for code in [[0x04, 0xd2, 0x16, 0x2f], [0x04, 0xd2, 0x16, 0x30]] {
        s.write_all(&[0, 0, 0, 8]).unwrap();
        s.write_all(&code).unwrap();
        s.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"N");
    }
    drop(s);
    // The same request twice: the server's answer to a client that loops, 08P01.
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let (code, message) = error_from(addr, &[ssl, ssl].concat());
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("a second SSLRequest"), "{message}");
    // A cancel nobody's key matches: closed, nothing said.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 1, 2, 3, 4])
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // 10,000 random first packets, half with a plausible header, from 8 threads.
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            scope.spawn(move || {
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut next = || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for _ in 0..1250 {
                    let len = (next() % 300) as usize;
                    let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if next() % 2 == 0 && len >= 8 {
                        let declared = (next() % 400) as u32;
                        bytes[..4].copy_from_slice(&declared.to_be_bytes());
                        bytes[4..6].copy_from_slice(&[0, 3]);
                    }
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = s.write_all(&bytes);
                    if next() % 8 == 0 {
                        // Wait for the answer (or the close) now and then.
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                    }
                }
            });
        }
    });
    let got = psql(addr, "postgres", "", "select 1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, "1");
    let scrape = scrape(lb.admin_addr()).0;
    assert_eq!(
        labelled(
            &scrape,
            "ballast_thread_restarts_total",
            &[("thread", "worker")]
        ),
        Some(0.0)
    );
    let bad = labelled(
        &scrape,
        "ballast_listener_refused_total",
        &[("reason", "bad_startup")],
    );
    assert!(bad.is_some_and(|n| n > 1000.0), "{bad:?}");
}

/// A reload that reorders, adds or removes target groups keeps every PostgreSQL route on the
/// group it names (the running generation numbers groups its own way): a mistyped index would
/// send a user's password to another cluster.
#[test]
fn routes_follow_their_groups_across_reloads() {
    let main = Backend::start(named("main"));
    let billing = Backend::start(named("billing"));
    let extra = Backend::start(named("extra"));
    let group = |name: &str, addr: SocketAddr| {
        format!("  - name: {name}\n{NO_CHECKS}    targets: [{{address: '{addr}'}}]\n")
    };
    let yaml = |groups: &[String]| {
        format!(
            "workers: 2\nlisteners:\n  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
             target_group: main\n    postgres: {{routes: [{{database: billing, target_group: \
             billing}}], without_route: default}}\ntarget_groups:\n{}",
            groups.concat()
        )
    };
    let (m, b, x) = (
        group("main", main.addr),
        group("billing", billing.addr),
        group("extra", extra.addr),
    );
    let lb = Ballast::start(&yaml(&[m.clone(), b.clone()]));
    let admin = lb.admin_addr();
    let reached = |database: &str| {
        let mut s = TcpStream::connect(lb.addr("pg")).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&startup("u", database)).unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        got.trim().to_string()
    };
    assert_eq!(
        (reached("billing"), reached("other")),
        ("billing".into(), "main".into())
    );
    for groups in [
        vec![b.clone(), m.clone()],            // swapped
        vec![x.clone(), b.clone(), m.clone()], // one added first
        vec![b.clone(), m.clone()],            // and removed again
        vec![m.clone(), x.clone(), b.clone()],
    ] {
        let bound = format!("bind: {}", lb.addr("pg"));
        lb.rewrite_config(&yaml(&groups).replace("bind: 127.0.0.1:0", &bound));
        let (status, body) = http(admin, "POST", "/reload", None, "");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (reached("billing"), reached("other")),
            ("billing".into(), "main".into()),
            "after a reload to {groups:?}"
        );
    }
}

/// A `tcp` listener routing by SNI (`postgres_starttls`) and by StartupMessage: libpq's
/// `gssencmode=prefer` order (GSSENCRequest, then SSLRequest) gets `N` then `S`; a plain client
/// slower than `client_hello_timeout` is still routed by its database (refused here, as no
/// route takes it), never sent to the listener's group unread; a silent one gets 08P01 at
/// `startup_timeout` after the ClientHello's time.
#[test]
fn a_slow_plain_client_beside_sni_routes_is_still_routed_by_its_database() {
    let main = Backend::start(named("main"));
    let lb = Ballast::start(&format!(
        "workers: 1\nlisteners:\n  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
         target_group: main\n    postgres_starttls: true\n    client_hello_timeout: 300ms\n    \
         routes: [{{server_name: db.example.com, target_group: main}}]\n    \
         postgres: {{routes: [{{database: billing, target_group: main}}], startup_timeout: \
         400ms}}\ntarget_groups:\n  - name: main\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n",
        main.addr
    ));
    let addr = lb.addr("pg");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut one = [0u8; 1];
    for (request, answer) in [
        ([0x04, 0xd2, 0x16, 0x30], b"N"),
        ([0x04, 0xd2, 0x16, 0x2f], b"S"),
    ] {
        s.write_all(&[0, 0, 0, 8]).unwrap();
        s.write_all(&request).unwrap();
        s.read_exact(&mut one).unwrap();
        assert_eq!(&one, answer);
    }
    drop(s);
    // Late with its StartupMessage (the pause is the stimulus): routed by database, so
    // refused, not passed to `main`.
    let startup = startup("u", "other");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&startup[..2]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.write_all(&startup[2..]).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("no route for database \"other\""), "{text}");
    // Silent: the ClientHello's 300 ms, then the StartupMessage's 400 ms.
    let (code, message) = error_from(addr, &[]);
    assert_eq!(code, "08P01", "{message}");
    // Told `S`, then silent: it owes a ClientHello; refused when none comes in time, never
    // connected to the listener's group unread.
    let accepted = || main.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let before = accepted();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    s.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"S");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(accepted(), before, "main never reached");
    // One that gives up (its FIN) before a whole packet.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&startup[..3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    // Each is in the access log, with why.
    for reason in ["no_route", "startup_timeout", "client_closed"] {
        wait_until(reason, || lb.log().contains(&format!("reason={reason}")));
    }
}

/// A PostgreSQL client refused after its StartupMessage was read is told why, as psql prints
/// it (a FATAL with its SQLSTATE, then a clean close), not reset: a queue that had no room in
/// time (53300), a group with no server that answers (08001).
#[test]
fn a_client_refused_after_its_startup_message_is_told_why() {
    let held = Backend::start(named_echo("held"));
    let lb = Ballast::start(&format!(
        "workers: 1\nlisteners:\n  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
         target_group: full\n    retries: 0\n    postgres: {{routes: [{{database: gone, \
         target_group: gone}}], without_route: default}}\ntarget_groups:\n  - name: full\n\
         {NO_CHECKS}    queue: {{max: 5, timeout: 200ms}}\n    \
         targets: [{{address: '{}', max_connections: 1}}]\n  - name: gone\n\
         {NO_CHECKS}    targets: [{{address: '{}'}}]\n",
        held.addr,
        dead_addr()
    ));
    // The one place, held.
    let mut first = TcpStream::connect(lb.addr("pg")).unwrap();
    first.set_read_timeout(Some(WAIT)).unwrap();
    first.write_all(&startup("u", "db")).unwrap();
    let mut hello = [0u8; 5];
    first.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"held\n");
    let (code, message) = error_from(lb.addr("pg"), &startup("u", "db"));
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("had room within 200ms"), "{message}");
    let (code, message) = error_from(lb.addr("pg"), &startup("u", "gone"));
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("target group \"gone\""), "{message}");
    drop(first);
}
