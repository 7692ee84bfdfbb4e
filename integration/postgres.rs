//! A real PostgreSQL with `ssl=on` behind SNI routing with `postgres_starttls`: psql with
//! `sslmode=verify-full` sends its SSLRequest, Ballast answers it, routes by the SNI psql sends
//! (libpq 14+), replays the SSLRequest to PostgreSQL, and psql verifies PostgreSQL's own
//! certificate. `.ci/run` installs PostgreSQL; the server runs as the `postgres` user (it
//! refuses root) from a cluster this test makes with initdb and removes.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::pki::Pki;
use common::postgres::Postgres;
use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// psql through `addr` asking for `host` (SNI and certificate name) with full verification.
fn psql(addr: SocketAddr, host: &str, ca: &Path, query: &str) -> Result<String, String> {
    let tls = format!(
        "host={host} sslmode=verify-full sslrootcert={}",
        ca.display()
    );
    common::postgres::psql(addr, "postgres", &tls, query)
}

#[test]
fn psql_with_verify_full_reaches_the_postgres_its_server_name_routes_to() {
    let pki = Pki::new();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let db = Postgres::start(&pki, "db.example.com");
    let reports = Postgres::start(&pki, "reports.example.com");
    let plain = Backend::start(named_echo("plain"));
    let yaml = format!(
        "workers: 2\nlisteners:\n  - name: pg\n    protocol: tcp\n    bind: 127.0.0.1:0\n    \
         target_group: default\n    postgres_starttls: true\n    routes:\n      \
         - {{server_name: db.example.com, target_group: db}}\n      \
         - {{server_name: reports.example.com, target_group: reports}}\ntarget_groups:\n  \
         - name: default\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n  \
         - name: db\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n  \
         - name: reports\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n",
        plain.addr, db.addr, reports.addr
    );
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("pg");
    // Each name reaches its own server: the port each server listens on tells them apart, and
    // the TLS session is PostgreSQL's own (pg_stat_ssl), verified by psql against the CA.
    let query =
        "select inet_server_port() || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let got = psql(addr, "db.example.com", &ca, query).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, format!("{} true", db.addr.port()));
    let got = psql(addr, "reports.example.com", &ca, query).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, format!("{} true", reports.addr.port()));
}

#[test]
fn psql_verifies_ballasts_certificate_and_postgres_gets_plain_postgresql() {
    // TLS ends at Ballast (`protocol: tls` with `postgres_starttls`): PostgreSQL has ssl off.
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_files(dir.path(), &["db.example.com"]);
    let db = Postgres::start_with(&pki, "unused.example.com", false);
    let yaml = format!(
        "listeners:\n  - name: pg\n    protocol: tls\n    bind: 127.0.0.1:0\n    \
         target_group: db\n    postgres_starttls: true\n    tls:\n      certificates:\n        \
         - {{cert: {0}/lb.pem, key: {0}/lb.key}}\ntarget_groups:\n  \
         - name: db\n{NO_CHECKS}    targets: [{{address: '{1}'}}]\n",
        dir.path().display(),
        db.addr
    );
    let lb = Ballast::start(&yaml);
    let query =
        "select inet_server_port() || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()";
    // psql verified Ballast's certificate (verify-full); PostgreSQL saw no TLS.
    let got = psql(lb.addr("pg"), "db.example.com", &ca, query).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, format!("{} false", db.addr.port()));
}
