//! A test certificate authority (rcgen) and its leaf certificates, for TLS tests.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use super::waits::WAIT;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA and leaf certificates it signs.
pub struct Pki {
    /// The CA's certificate.
    pub ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    /// A new CA.
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Ballast test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// A certificate for `names` and its key.
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf_params(names)
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// A rustls client trusting this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Pki {
    /// Writes into `dir` the CA (`ca.pem`, for clients to verify with) and a certificate for
    /// `names` with its key (`lb.pem`, `lb.key`, for a listener's `tls:`); returns the CA's path.
    pub fn write_files(&self, dir: &std::path::Path, names: &[&str]) -> std::path::PathBuf {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, self.ca.pem()).unwrap();
        let (cert, key) = self.leaf_pem(names);
        std::fs::write(dir.join("lb.pem"), cert).unwrap();
        std::fs::write(dir.join("lb.key"), key).unwrap();
        ca
    }

    /// A certificate for `names` and its key, PEM-encoded (for servers that read files).
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf_params(names)
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A leaf's parameters: `names` as subject alternative names, the first as its common name
/// (OpenSSL takes a leaf whose subject equals its issuer's for self-signed).
fn leaf_params(names: &[&str]) -> rcgen::CertificateParams {
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    params
}

/// A TLS server on 127.0.0.1 with a certificate for `names`: answers each line with
/// `{tag}:{line}`.
pub fn tls_target(pki: &Pki, names: &[&str], tag: &'static str) -> SocketAddr {
    serve_tls(pki, names, tag, |_| true)
}

/// As [`tls_target`], running `before` on each connection first (the handshake follows only
/// when it returns true).
pub fn serve_tls(
    pki: &Pki,
    names: &[&str],
    tag: &'static str,
    before: impl Fn(&mut TcpStream) -> bool + Send + Sync + 'static,
) -> SocketAddr {
    let (chain, key) = pki.leaf(names);
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let before = Arc::new(before);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut tcp) = conn else { continue };
            let (config, before) = (config.clone(), before.clone());
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(WAIT));
                if !before(&mut tcp) {
                    return;
                }
                let Ok(tls) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut stream = BufReader::new(rustls::StreamOwned::new(tls, tcp));
                let mut line = String::new();
                while matches!(stream.read_line(&mut line), Ok(n) if n > 0) {
                    let reply = format!("{tag}:{line}");
                    if stream.get_mut().write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}
