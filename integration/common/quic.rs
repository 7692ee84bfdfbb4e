//! Real QUIC for the tests: quinn servers that issue QUIC-LB connection IDs naming their
//! server ID (the way a server behind a `quic:` listener must), and a quinn client.
//!
//! Each server runs on its own thread and runtime. It answers every bidirectional stream by
//! echoing what it reads, then, once the client finishes its side, the server's name; it
//! counts the connections it accepted and remembers the client address each one was last seen
//! at (a migration shows as a new address of the same connection).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast::quic::lb::LbConfig;
use quinn::crypto::rustls::QuicClientConfig;

/// Issues QUIC-LB connection IDs for one server ID.
struct LbCids {
    lb: LbConfig,
    server_id: u64,
}

impl quinn::ConnectionIdGenerator for LbCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let nonce: [u8; 19] = rand::random();
        let low: u8 = rand::random();
        quinn::ConnectionId::new(&self.lb.encode(self.server_id, &nonce, low).unwrap())
    }

    fn cid_len(&self) -> usize {
        self.lb.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A quinn server on 127.0.0.1.
pub struct QuicServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Per connection, the client addresses it was seen at, in order.
    pub paths: Arc<Mutex<Vec<Vec<SocketAddr>>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The certificate every test server presents (for `localhost`), and its DER for clients.
fn certificate() -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (
        cert.cert.der().clone(),
        rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()).into(),
    )
}

impl QuicServer {
    /// A server named `name` issuing connection IDs of `lb` with `server_id` (random ones of
    /// 8 octets when `None`: a server that knows nothing of QUIC-LB).
    pub fn start(name: &str, lb: Option<LbConfig>, server_id: u64) -> QuicServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (count, seen, name) = (connections.clone(), paths.clone(), name.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (cert, key) = certificate();
                let mut server = quinn::ServerConfig::with_single_cert(vec![cert], key).unwrap();
                let mut transport = quinn::TransportConfig::default();
                transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
                server.transport_config(Arc::new(transport));
                let mut endpoint = quinn::EndpointConfig::default();
                if let Some(lb) = lb {
                    endpoint.cid_generator(move || {
                        Box::new(LbCids {
                            lb: lb.clone(),
                            server_id,
                        })
                    });
                }
                let endpoint = quinn::Endpoint::new(
                    endpoint,
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .unwrap();
                let serve = async {
                    while let Some(incoming) = endpoint.accept().await {
                        let Ok(conn) = incoming.await else { continue };
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(vec![conn.remote_address()]);
                        let (seen, name) = (seen.clone(), name.clone());
                        tokio::spawn(async move {
                            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                                let mut buf = vec![0u8; 16 * 1024];
                                while let Ok(Some(k)) = recv.read(&mut buf).await {
                                    let at = conn.remote_address();
                                    {
                                        let mut seen = seen.lock().unwrap();
                                        if seen[n].last() != Some(&at) {
                                            seen[n].push(at);
                                        }
                                    }
                                    if send.write_all(&buf[..k]).await.is_err() {
                                        break;
                                    }
                                }
                                let _ = send.write_all(name.as_bytes()).await;
                                let _ = send.finish();
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
                endpoint.close(0u32.into(), b"bye");
            });
        });
        QuicServer {
            addr,
            connections,
            paths,
            stop: Some(stop),
        }
    }
}

/// A client endpoint on a fresh 127.0.0.1 port that trusts the test servers' certificate
/// (any: the tests check routing, not the handshake), with a 3 s idle timeout so a broken
/// connection fails fast.
pub fn client_endpoint() -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCertificate))
    .with_no_client_auth();
    let mut config =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(3).try_into().unwrap()));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    endpoint
}

/// Accepts any server certificate.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
