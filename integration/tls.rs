//! TLS termination (`protocol: tls`), TLS to targets (`target_tls`) and certificates that
//! reload, with real clients: curl, openssl s_client, redis-cli and redis-benchmark over TLS,
//! rustls clients for the byte-exact checks. Certificates are made in the test with rcgen
//! (`common::pki`), written to files as an operator would.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::pki::{tls_target, Pki};
use common::*;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// A directory with the CA's certificate (`ca.pem`) and PEM files written by [`Files::leaf`].
struct Files {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Files {
    fn new() -> Files {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
            pki: Pki::new(),
        };
        std::fs::write(files.path("ca.pem"), files.pki.ca.pem()).unwrap();
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a certificate for `names` and its key as `{stem}.pem` and `{stem}.key`;
    /// returns the YAML `{cert: …, key: …}` for them.
    fn leaf(&self, stem: &str, names: &[&str]) -> String {
        let (cert, key) = self.pki.leaf_pem(names);
        std::fs::write(self.path(&format!("{stem}.pem")), cert).unwrap();
        std::fs::write(self.path(&format!("{stem}.key")), key).unwrap();
        format!(
            "{{cert: {}, key: {}}}",
            self.path(&format!("{stem}.pem")).display(),
            self.path(&format!("{stem}.key")).display()
        )
    }

    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }
}

/// A `tls` listener `l` with `certificates` (YAML list items) and `extra` keys under `tls:`,
/// in front of `target`.
fn tls_config(certificates: &[String], extra: &str, target: SocketAddr) -> String {
    let certs: String = certificates
        .iter()
        .map(|c| format!("        - {c}\n"))
        .collect();
    format!(
        "listeners:\n  - name: l\n    protocol: tls\n    bind: 127.0.0.1:0\n    target_group: g\n\
         \x20   tls:\n      certificates:\n{certs}{extra}\
         target_groups:\n  - name: g\n{NO_CHECKS}    targets:\n      - address: {target}\n"
    )
}

/// An HTTP/1.1 server answering every request with `body`.
fn http_target(body: &'static str) -> Backend {
    Backend::start(Arc::new(move |mut s: TcpStream| {
        let _ = s.set_read_timeout(Some(WAIT));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }))
}

/// Runs `openssl s_client` against `addr` asking for `name`, trusting `ca`; returns its
/// output (the certificate's subject and the verification result).
fn s_client(addr: SocketAddr, name: &str, ca: &str) -> String {
    s_client_with(addr, name, ca, &[]).1
}

/// As [`s_client`], with `extra` options (`-tls1_2`): whether it succeeded, and its output.
fn s_client_with(addr: SocketAddr, name: &str, ca: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(["-servername", name, "-CAfile", ca, "-verify_return_error"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A rustls client config trusting the CA in `files`.
fn client_config(files: &Files) -> Arc<rustls::ClientConfig> {
    files.pki.client_config()
}

/// A TLS connection to `addr` asking for `name`, handshake done.
fn connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    let server = ServerName::try_from(name.to_string()).unwrap();
    let tls = rustls::ClientConnection::new(config.clone(), server).unwrap();
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// The DNS names of the certificate a server presented.
fn peer_names(conn: &rustls::ClientConnection) -> Vec<String> {
    let der = &conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn curl_and_openssl_reach_a_plain_target_through_a_tls_listener() {
    let files = Files::new();
    let web = files.leaf("web", &["web.test"]);
    let api = files.leaf("api", &["*.api.test"]);
    let target = http_target("hello from the plain target");
    let lb = Ballast::start(&tls_config(&[web, api], "", target.addr));
    let addr = lb.addr("l");

    let out = Command::new("timeout")
        .args(["10", "curl", "-sS", "--cacert", &files.ca()])
        .args(["--resolve", &format!("web.test:{}:127.0.0.1", addr.port())])
        .arg(format!("https://web.test:{}/", addr.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the plain target"
    );

    // Each name gets its certificate; a wildcard covers one label; an unknown name (and no
    // SNI) gets the first certificate listed.
    let wild = s_client(addr, "v1.api.test", &files.ca());
    assert!(wild.contains("CN = *.api.test"), "{wild}");
    assert!(wild.contains("Verify return code: 0 (ok)"), "{wild}");
    let other = s_client(addr, "nobody.test", &files.ca());
    assert!(other.contains("CN = web.test"), "{other}");
    // TLS 1.2 clients too (min_version defaults to 1.2).
    let (_, v12) = s_client_with(addr, "web.test", &files.ca(), &["-tls1_2"]);
    assert!(
        v12.contains("Protocol  : TLSv1.2") && v12.contains("Verify return code: 0 (ok)"),
        "{v12}"
    );

    // A rustls client: the name it asked for and the certificate's.
    let config = client_config(&files);
    let s = connect(&config, addr, "web.test");
    assert_eq!(peer_names(&s.conn), ["web.test"]);
    drop(s);

    let (scrape, text) = scrape(lb.admin_addr());
    let handshakes = sample(
        &scrape,
        "ballast_listener_tls_handshakes_total",
        "listener",
        "l",
    )
    .unwrap_or(0.0);
    assert!(handshakes >= 4.0, "{text}");
    let expiry = sample(
        &scrape,
        "ballast_tls_certificate_expiry_seconds",
        "certificate",
        &files.path("web.pem").display().to_string(),
    )
    .unwrap_or(0.0);
    // rcgen's default validity ends in 4096.
    assert!(expiry > 86_400.0 * 365.0, "{text}");
}

#[test]
fn bad_client_hellos_are_reset_counted_and_never_reach_a_target() {
    let files = Files::new();
    let web = files.leaf("web", &["web.test"]);
    let target = http_target("should not be reached");
    let lb = Ballast::start(&tls_config(
        &[web],
        "      handshake_timeout: 300ms\n",
        target.addr,
    ));
    let addr = lb.addr("l");
    // Plain HTTP on a TLS port.
    let mut c = client(addr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let result = c.read_to_end(&mut answer);
    assert!(
        answer.iter().all(|&b| b != b'H') && !answer.starts_with(b"HTTP"),
        "got an answer: {answer:?}"
    );
    // An alert at most, then a reset (or the close that follows the alert).
    let _ = result;
    // A client that sends nothing: reset after the handshake timeout.
    let mut idle = client(addr);
    let mut buf = [0u8; 16];
    let r = idle.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    let failures = |reason: &str| {
        let (s, _) = scrape(lb.admin_addr());
        sample(
            &s,
            "ballast_listener_tls_handshake_failures_total",
            "reason",
            reason,
        )
    };
    wait_until("both failures counted", || {
        failures("malformed") == Some(1.0) && failures("timeout") == Some(1.0)
    });
    // The target saw the health check's connect only: no connection was forwarded.
    let (s, text) = scrape(lb.admin_addr());
    let forwarded = sample(
        &s,
        "ballast_target_connections_total",
        "target",
        &target.addr.to_string(),
    );
    assert_eq!(
        forwarded,
        Some(0.0),
        "a failed handshake reached the target: {text}"
    );
}

/// 64 MiB of the same pseudo-random bytes for a given `seed`.
fn payload(seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut bytes = vec![0u8; 64 << 20];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

#[test]
fn sixty_four_mib_each_way_through_a_tls_listener_arrive_whole() {
    // The target hashes what it reads until EOF, answers with the SHA-256, then sends
    // 64 MiB of its own and closes.
    let target = Backend::start(Arc::new(|mut s: TcpStream| {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hash.update(&buf[..n]),
                Err(_) => return,
            }
        }
        let _ = s.write_all(&hash.finalize());
        let _ = s.write_all(&payload(2));
    }));
    let files = Files::new();
    let web = files.leaf("web", &["web.test"]);
    let lb = Ballast::start(&tls_config(&[web], "", target.addr));
    let config = client_config(&files);
    let mut s = connect(&config, lb.addr("l"), "web.test");
    let up = payload(1);
    s.write_all(&up).unwrap();
    // The end of the upload: close_notify, then the FIN; Ballast passes it on as an EOF.
    s.conn.send_close_notify();
    s.flush().unwrap();
    s.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut down = Vec::with_capacity(32 + (64 << 20));
    s.read_to_end(&mut down)
        .expect("a clean end: Ballast's close_notify after the target's FIN");
    assert_eq!(down.len(), 32 + (64 << 20), "bytes lost or added");
    assert_eq!(&down[..32], &Sha256::digest(&up)[..], "the upload differs");
    assert_eq!(
        Sha256::digest(&down[32..]),
        Sha256::digest(payload(2)),
        "the download differs"
    );
}

/// Replaces the file at `path` with `contents` in one step (a rename), as deploy tools do.
fn replace(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The DER of the certificate a new handshake with `addr` gets.
fn served_certificate(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Vec<u8> {
    let s = connect(config, addr, "web.test");
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

/// Sends a line on an open TLS connection to an echo target and reads it back.
fn echo_line(s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, line: &str) {
    s.write_all(line.as_bytes()).unwrap();
    let mut back = vec![0u8; line.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, line.as_bytes());
}

#[test]
fn certificates_reload_when_their_files_change_and_open_connections_stay() {
    let files = Files::new();
    let web = files.leaf("web", &["web.test"]);
    let target = Backend::start(echo());
    let lb = Ballast::start(&tls_config(&[web], "", target.addr));
    let addr = lb.addr("l");
    let config = client_config(&files);
    let first = served_certificate(&config, addr);
    let mut open: Vec<_> = (0..20)
        .map(|_| connect(&config, addr, "web.test"))
        .collect();
    for (i, s) in open.iter_mut().enumerate() {
        echo_line(s, &format!("before {i}\n"));
    }

    // A new certificate and key, each file replaced whole.
    let (cert, key) = files.pki.leaf_pem(&["web.test"]);
    replace(&files.path("web.key"), &key);
    replace(&files.path("web.pem"), &cert);
    let mut second = Vec::new();
    wait_until("new handshakes get the new certificate", || {
        second = served_certificate(&config, addr);
        second != first
    });
    for (i, s) in open.iter_mut().enumerate() {
        echo_line(s, &format!("after {i}\n"));
    }

    // A broken key: refused, the file named (what the operator reads: the test's point), the
    // running certificate kept.
    let from = lb.log_len();
    replace(
        &files.path("web.key"),
        "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n",
    );
    let line = lb.wait_log_after("certificates not reloaded", from, WAIT);
    assert!(
        line.contains(&files.path("web.key").display().to_string()),
        "{line}"
    );
    assert!(
        line.contains("listeners[0].tls.certificates[0].key"),
        "{line}"
    );
    assert_eq!(served_certificate(&config, addr), second);
    for (i, s) in open.iter_mut().enumerate() {
        echo_line(s, &format!("still {i}\n"));
    }
}

/// A target group `g` of `target` with `target_tls` (`tls` is its YAML flow mapping) and
/// quick checks, behind a plain TCP listener `l`.
fn target_tls_config(target: SocketAddr, tls: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    protocol: tcp\n    bind: 127.0.0.1:0\n    target_group: g\n\
         \x20   retries: 0\n\
         target_groups:\n  - name: g\n    target_tls: {tls}\n\
         \x20   health_check: {{protocol: tcp, interval: 200ms, timeout: 150ms, \
         healthy_threshold: 1, unhealthy_threshold: 1}}\n\
         \x20   targets:\n      - address: {target}\n"
    )
}

#[test]
fn target_tls_verifies_the_target_and_a_foreign_certificate_is_refused_with_the_reason() {
    let files = Files::new();
    let good = tls_target(&files.pki, &["db.test"], "db");
    let tls = format!("{{ca: {}, server_name: db.test}}", files.ca());
    let lb = Ballast::start(&target_tls_config(good, &tls));
    let mut c = client(lb.addr("l"));
    c.write_all(b"select 1\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&mut c).read_line(&mut reply).unwrap();
    assert_eq!(
        reply, "db:select 1\n",
        "the plain client went through TLS to the target"
    );
    let line = lb.log();
    assert!(!line.contains("is now unhealthy"), "{line}");

    // A target whose certificate another CA signed: the check fails and says why, and a
    // client is reset rather than sent to it.
    let foreign = Pki::new();
    let impostor = tls_target(&foreign, &["db.test"], "impostor");
    let lb = Ballast::start(&target_tls_config(impostor, &tls));
    // Why shows only in the log (the test's point).
    let line = lb.wait_log(&format!("{impostor} is now unhealthy"), WAIT);
    assert!(line.contains("invalid peer certificate"), "{line}");
    let mut c = client(lb.addr("l"));
    c.write_all(b"select 1\n").unwrap();
    let mut got = Vec::new();
    let r = c.read_to_end(&mut got);
    assert!(got.is_empty(), "the impostor answered: {got:?}");
    assert!(r.is_err(), "a reset, not a clean end: {r:?}");
}

#[test]
fn redis_cli_and_redis_benchmark_over_a_tls_listener() {
    let (_server, redis) = redis_server(&[]);
    let files = Files::new();
    let cert = files.leaf("redis", &["redis.test"]);
    let lb = Ballast::start(&tls_config(&[cert], "", redis));
    let port = lb.addr("l").port().to_string();
    let ca = files.ca();
    let tls_args = [
        "--tls",
        "--cacert",
        &ca,
        "--sni",
        "redis.test",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
    ];
    let cli = |args: &[&str]| redis_cli(&[&tls_args[..], args].concat());
    assert_eq!(cli(&["SET", "ballast", "over tls"]), "OK");
    assert_eq!(cli(&["GET", "ballast"]), "over tls");
    assert_redis_benchmark(&[&tls_args[..], &["-c", "50"]].concat());
}

/// `ballast check` on `yaml`: (exit code, stdout, stderr).
fn check(yaml: &str) -> (i32, String, String) {
    let file = write_config(yaml);
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["check", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_names_and_expiry_and_a_mismatched_key_is_named() {
    let files = Files::new();
    let web = files.leaf("web", &["web.test", "*.web.test"]);
    let target = Backend::start(echo());
    let (code, out, err) = check(&tls_config(
        &[web],
        "      min_version: 1.3\n      alpn: [h2, http/1.1]\n",
        target.addr,
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("terminates TLS 1.3+, ALPN [h2, http/1.1]"),
        "{out}"
    );
    assert!(out.contains("web.test, *.web.test; valid "), "{out}");
    assert!(out.contains("days left"), "{out}");

    // Another certificate's key beside web.pem: refused at load, the key and file named.
    files.leaf("other", &["other.test"]);
    let mismatched = format!(
        "{{cert: {}, key: {}}}",
        files.path("web.pem").display(),
        files.path("other.key").display()
    );
    let (code, _, err) = check(&tls_config(&[mismatched], "", target.addr));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("listeners[0].tls.certificates[0].key"),
        "{err}"
    );
    assert!(
        err.contains("is not the key of the certificate in"),
        "{err}"
    );
    assert!(
        err.contains(&files.path("other.key").display().to_string()),
        "{err}"
    );
    // A missing file, named.
    let missing = format!("{{cert: {}/nope.pem, key: x}}", files.dir.path().display());
    let (code, _, err) = check(&tls_config(&[missing], "", target.addr));
    assert_eq!(code, 2);
    assert!(
        err.contains("listeners[0].tls.certificates[0].cert") && err.contains("nope.pem"),
        "{err}"
    );
}

#[test]
fn min_version_1_3_refuses_a_tls_1_2_client_and_counts_it() {
    let files = Files::new();
    let web = files.leaf("web", &["web.test"]);
    let target = Backend::start(echo());
    let lb = Ballast::start(&tls_config(&[web], "      min_version: 1.3\n", target.addr));
    let addr = lb.addr("l");
    let (served, _) = s_client_with(addr, "web.test", &files.ca(), &["-tls1_2"]);
    assert!(!served, "a TLS 1.2 client was served");
    let ok = s_client(addr, "web.test", &files.ca());
    assert!(
        ok.contains("TLSv1.3") && ok.contains("Verify return code: 0 (ok)"),
        "{ok}"
    );
    wait_until("the refusal counted", || {
        let (s, _) = scrape(lb.admin_addr());
        sample(
            &s,
            "ballast_listener_tls_handshake_failures_total",
            "reason",
            "incompatible",
        ) == Some(1.0)
    });
}

#[test]
fn a_second_connection_resumes_by_ticket_on_either_worker() {
    let files = Files::new();
    let web = files.leaf("web", &["web.test"]);
    let target = Backend::start(echo());
    let lb = Ballast::start(&tls_config(&[web], "", target.addr));
    let addr = lb.addr("l");
    let config = client_config(&files);
    let mut first = connect(&config, addr, "web.test");
    // TLS 1.3 tickets come after the handshake: read them with the first echo.
    echo_line(&mut first, "one\n");
    assert_eq!(
        first.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // Each connection lands on either worker (SO_REUSEPORT): every one resumes, as the
    // ticket keys are the process's.
    for i in 0..6 {
        let mut s = connect(&config, addr, "web.test");
        echo_line(&mut s, &format!("again {i}\n"));
        assert_eq!(
            s.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "connection {i}"
        );
    }
    let (s, text) = scrape(lb.admin_addr());
    let resumed = sample(
        &s,
        "ballast_listener_tls_resumed_handshakes_total",
        "listener",
        "l",
    );
    assert_eq!(resumed, Some(6.0), "{text}");
}

/// A TLS target that answers the first line with `part of an answer` and then ends its
/// stream: with a close_notify first when `clean`, else with a bare TCP FIN (what an attacker
/// between Ballast and the target would send to cut an answer short).
fn target_that_ends(pki: &Pki, clean: bool) -> SocketAddr {
    let (chain, key) = pki.leaf(&["db.test"]);
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(WAIT)).unwrap();
                let session = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(session, tcp);
                let mut line = String::new();
                if BufReader::new(&mut tls).read_line(&mut line).unwrap_or(0) == 0 {
                    return; // a health check's connection
                }
                tls.write_all(b"part of an answer").unwrap();
                if clean {
                    tls.conn.send_close_notify();
                    tls.flush().unwrap();
                }
                tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
                let _ = tls.sock.read(&mut [0u8; 1]); // until Ballast closes
            });
        }
    });
    addr
}

/// With `target_tls`, a target's FIN without a close_notify (a truncation an attacker on the
/// path could make) reaches the plain client as a reset after the bytes before it; with a
/// close_notify, as a clean end.
#[test]
fn a_target_fin_without_close_notify_reaches_the_client_as_a_reset() {
    let files = Files::new();
    let tls = format!("{{ca: {}, server_name: db.test}}", files.ca());
    for clean in [true, false] {
        let target = target_that_ends(&files.pki, clean);
        let lb = Ballast::start(&target_tls_config(target, &tls));
        let mut c = client(lb.addr("l"));
        c.write_all(b"select 1\n").unwrap();
        let mut got = Vec::new();
        let end = c.read_to_end(&mut got);
        assert_eq!(got, b"part of an answer", "clean {clean}");
        if clean {
            assert!(end.is_ok(), "a close_notify is a clean end: {end:?}");
        } else {
            assert_eq!(
                end.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionReset),
                "a bare FIN from the target is an abort"
            );
        }
    }
}
