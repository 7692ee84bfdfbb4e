//! A real PostgreSQL server for the tests: a cluster made with initdb in a temporary
//! directory, run as the `postgres` user (it refuses root), killed and removed when dropped.
//! `.ci/run` installs PostgreSQL.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::Pki;
use super::tcp_backends::free_port;
use super::waits::WAIT;

/// PostgreSQL's server programs (`/usr/lib/postgresql/<version>/bin`).
pub fn postgres_bin() -> PathBuf {
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
pub fn as_postgres(program: &Path) -> Command {
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
pub struct Postgres {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A fresh cluster (trust authentication, superuser `postgres`) in `data` of a new temporary
/// directory, not started.
pub fn initdb() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = dir.path().join("data");
    let init = as_postgres(&postgres_bin().join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    (dir, data)
}

impl Postgres {
    /// A fresh cluster with `ssl=on` and a certificate from `pki` for `name`.
    pub fn start(pki: &Pki, name: &str) -> Postgres {
        Self::start_with(pki, name, true)
    }

    /// As [`Postgres::start`], with `ssl` on or off.
    pub fn start_with(pki: &Pki, name: &str, ssl: bool) -> Postgres {
        let (dir, data) = initdb();
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
        Self::run(dir, ssl)
    }

    /// A streaming replica of `primary` (pg_basebackup -R), running, with ssl off.
    pub fn replica_of(primary: &Postgres) -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let backup = as_postgres(&bin.join("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &primary.addr.port().to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(
            backup.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&backup.stderr)
        );
        Self::run(dir, false)
    }

    /// Starts the server on the cluster in `dir`/data, on a free port, and waits until it
    /// listens.
    fn run(dir: tempfile::TempDir, ssl: bool) -> Postgres {
        let bin = postgres_bin();
        let data = dir.path().join("data");
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

impl Postgres {
    /// Runs `sql` on this server directly (not through Ballast) as `postgres`, in `database`;
    /// returns psql's unaligned output.
    ///
    /// # Panics
    /// When psql fails.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.addr.port().to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-tAXc",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// psql through `addr` to `database` with `extra` conninfo; its output, or its error text.
pub fn psql(addr: SocketAddr, database: &str, extra: &str, query: &str) -> Result<String, String> {
    let conninfo = format!(
        "hostaddr={} port={} user=postgres dbname={database} connect_timeout=5 {extra}",
        addr.ip(),
        addr.port(),
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
