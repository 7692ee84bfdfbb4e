//! A real PostgreSQL with `ssl=on` behind SNI routing with `postgres_starttls`: psql with
//! `sslmode=verify-full` sends its SSLRequest, Ballast answers it, routes by the SNI psql sends
//! (libpq 14+), replays the SSLRequest to PostgreSQL, and psql verifies PostgreSQL's own
//! certificate. `.ci/run` installs PostgreSQL; the server runs as the `postgres` user (it
//! refuses root) from a cluster this test makes with initdb and removes.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// PostgreSQL's server programs (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> PathBuf {
    let dir = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run `bash .ci/run` (apt-get install postgresql)");
    let mut versions: Vec<PathBuf> = dir.map(|e| e.unwrap().path().join("bin")).collect();
    versions.sort();
    let bin = versions.pop().expect("no PostgreSQL version found");
    assert!(
        bin.join("initdb").exists(),
        "{} has no initdb",
        bin.display()
    );
    bin
}

/// Runs `program` as the `postgres` user (its uid and gid set at exec, so the child is the
/// program itself and a signal reaches it).
fn as_postgres(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "no `postgres` user: install PostgreSQL (`bash .ci/run`)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let mut c = Command::new(program);
    c.gid(id("-g")).uid(id("-u")).env("HOME", "/tmp");
    c
}

/// A PostgreSQL server killed when dropped.
struct Postgres {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// A fresh cluster with `ssl=on` and a certificate from `pki` for `name`.
    fn start(pki: &Pki, name: &str) -> Postgres {
        Self::start_with(pki, name, true)
    }

    /// As [`Postgres::start`], with `ssl` on or off.
    fn start_with(pki: &Pki, name: &str, ssl: bool) -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let init = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let (cert, key) = pki.leaf_pem(&[name]);
        for (file, text, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
            let path = data.join(file);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let chown = Command::new("chown")
                .arg("postgres")
                .arg(&path)
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let port = free_port();
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-k"])
            .arg(dir.path())
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                if ssl { "ssl=on" } else { "ssl=off" },
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Postgres {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown; wait so the data directory can go.
        // SAFETY: kill(2) with a pid we spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// psql through `addr` asking for `host` (SNI and certificate name) with full verification.
fn psql(addr: SocketAddr, host: &str, ca: &Path, query: &str) -> Result<String, String> {
    let conninfo = format!(
        "hostaddr={} host={host} port={} user=postgres dbname=postgres sslmode=verify-full \
         sslrootcert={} connect_timeout=5",
        addr.ip(),
        addr.port(),
        ca.display()
    );
    let out = Command::new("psql")
        .args([&conninfo, "-tAXc", query])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
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
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let (cert, key) = pki.leaf_pem(&["db.example.com"]);
    std::fs::write(dir.path().join("lb.pem"), cert).unwrap();
    std::fs::write(dir.path().join("lb.key"), key).unwrap();
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
