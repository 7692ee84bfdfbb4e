//! A throwaway etcd (Debian's `etcd-server`) for the fleet tests: its own data directory and
//! free ports on 127.0.0.1, stopped and started again on the same data, optionally with TLS
//! (client certificates required) or with authentication on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::pki::Pki;
use super::servers::need;
use super::tcp_backends::free_port;
use super::waits::wait_listening;

/// TLS files for etcd and its clients, in the etcd's directory.
pub struct EtcdTls {
    /// The CA both sides trust.
    pub ca: PathBuf,
    /// A client certificate and key etcd accepts.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// An etcd server killed (by PID) when dropped.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Where clients reach it.
    pub client: SocketAddr,
    peer: SocketAddr,
    /// With TLS: its files.
    pub tls: Option<EtcdTls>,
}

impl Etcd {
    /// A plain (http) etcd.
    pub fn start() -> Etcd {
        Self::launch(None)
    }

    /// An etcd that speaks TLS only and asks clients for a certificate signed by `pki`.
    pub fn start_tls(pki: &Pki) -> Etcd {
        Self::launch(Some(pki))
    }

    fn launch(pki: Option<&Pki>) -> Etcd {
        need("etcd");
        let dir = tempfile::tempdir().unwrap();
        let tls = pki.map(|pki| {
            let (cert, key) = pki.leaf_pem(&["127.0.0.1", "localhost"]);
            std::fs::write(dir.path().join("server.pem"), cert).unwrap();
            std::fs::write(dir.path().join("server.key"), key).unwrap();
            let (cert, key) = pki.leaf_pem(&["ballast"]);
            let files = EtcdTls {
                ca: dir.path().join("ca.pem"),
                client_cert: dir.path().join("client.pem"),
                client_key: dir.path().join("client.key"),
            };
            std::fs::write(&files.ca, pki.ca.pem()).unwrap();
            std::fs::write(&files.client_cert, cert).unwrap();
            std::fs::write(&files.client_key, key).unwrap();
            files
        });
        let mut e = Etcd {
            child: None,
            client: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            peer: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            dir,
            tls,
        };
        e.resume();
        e
    }

    /// The client URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// Starts it again (after [`Etcd::stop`]) on the same data and ports; waits until it
    /// listens.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let data = self.dir.path().join("data");
        let peer = format!("http://{}", self.peer);
        let mut c = Command::new("etcd");
        c.args(["--name", "default", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")]);
        if self.tls.is_some() {
            let d = self.dir.path();
            c.arg("--cert-file")
                .arg(d.join("server.pem"))
                .arg("--key-file")
                .arg(d.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(d.join("ca.pem"))
                .arg("--client-cert-auth");
        }
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        self.child = Some(
            c.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_listening(self.client);
    }

    /// Kills it (its data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl ARGS` against it (v3 API, with its TLS files); panics when it fails;
    /// returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "--command-timeout", "5s"]);
        if let Some(t) = &self.tls {
            c.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        let out = c.args(args).output().expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Stops it, loses its data (as a member rebuilt empty, or a restore gone wrong), and
    /// starts it again: a new cluster at revision 1.
    pub fn wipe(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.dir.path().join("data")).unwrap();
        self.resume();
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let status: serde_json::Value =
            serde_json::from_str(&self.ctl(&["endpoint", "status", "-w", "json"])).unwrap();
        status[0]["Status"]["header"]["revision"].as_i64().unwrap()
    }

    /// `etcdctl put KEY` with the value read from `value` (on stdin: an argument is limited
    /// to 128 KiB).
    pub fn put_file(&self, key: &str, value: &Path) {
        let file = std::fs::File::open(value).unwrap();
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "--command-timeout", "10s"]);
        let out = c.args(["put", key]).stdin(file).output().expect("etcdctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A scratch directory that lives as long as it (for password files and such).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
