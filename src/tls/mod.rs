//! TLS on both sides of a connection, with rustls (ring provider, no OpenSSL):
//! - a `protocol: tls` listener terminates TLS: [`server_config`] builds its configuration,
//!   the certificate chosen by SNI ([`certs::ByServerName`]), session resumption by tickets;
//! - a group's `target_tls` speaks TLS to its targets: [`client_config`], verified by default;
//! - [`io`] drives either session over a non-blocking socket (the workers' transport
//!   `tcp::tls` and the prober's checks use it).
//!
//! The configurations are built when the config file is loaded, so a bad certificate or key
//! is an error naming its file, and a reload (SIGHUP, `POST /reload`, or a certificate file
//! that changed) builds them afresh: connections open before keep the session they have.

pub(crate) mod certs;
pub(crate) mod io;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::ProducesTickets;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub(crate) use certs::{CertInfo, KeyPairFiles, Part};

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

impl std::str::FromStr for TlsVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s
            .trim()
            .trim_start_matches("TLS")
            .trim_start_matches("v")
            .trim()
        {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(format!("`{s}` is not a TLS version: write 1.2 or 1.3")),
        }
    }
}

impl TlsVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::V1_2 => rustls::ALL_VERSIONS,
            TlsVersion::V1_3 => &TLS13_ONLY,
        }
    }
}

/// The ring crypto provider, built once.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// One ticket key set for the whole process, so a ticket issued by one worker (or before a
/// reload) resumes on any other. Keys rotate every 6 hours (rustls' `Ticketer`); `None` if
/// the system's random source failed, and resumption is then by session ID only.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("TLS session tickets off: {e}");
                None
            }
        })
        .clone()
}

/// A `protocol: tls` listener's server side.
#[derive(Debug, Clone)]
pub struct ServerSide {
    /// The configuration each client's session is made from.
    pub config: Arc<ServerConfig>,
    /// What each certificate file holds, in config order (the first is the default).
    pub certificates: Vec<CertInfo>,
}

/// Builds the server configuration of a `tls` listener: `pairs` (at least one; the first is
/// the default certificate), versions from `min_version` up, `alpn` protocols offered in
/// order, session tickets when `tickets` (TLS 1.2 session IDs are always cached, 1,024 per
/// listener).
///
/// # Errors
/// `(index into pairs, which file, message naming the file)`.
pub(crate) fn server_config(
    pairs: &[KeyPairFiles],
    min_version: TlsVersion,
    alpn: &[String],
    tickets: bool,
) -> Result<ServerSide, (usize, Part, String)> {
    let mut loaded = Vec::with_capacity(pairs.len());
    for (i, files) in pairs.iter().enumerate() {
        loaded.push(certs::load_pair(files).map_err(|(part, m)| (i, part, m))?);
    }
    let resolver = certs::ByServerName::new(&loaded);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(min_version.versions())
        .map_err(|e| (0, Part::Cert, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    if tickets {
        if let Some(t) = ticketer() {
            config.ticketer = t;
        }
    } else {
        config.send_tls13_tickets = 0;
    }
    Ok(ServerSide {
        config: Arc::new(config),
        certificates: loaded.into_iter().map(|(_, info)| info).collect(),
    })
}

/// Where `client_config` failed: the key under `target_tls` and the message.
pub(crate) type ClientConfigError = (&'static str, String);

/// Builds the client configuration for a group's `target_tls`: targets' certificates verified
/// against the CA certificates in `ca` (PEM), or the system's trust store when `None`;
/// `client_cert` presented when a target asks (mutual TLS); `verify: false` accepts any
/// certificate (the connection is encrypted but not authenticated).
///
/// # Errors
/// The key (`ca`, `client_cert.cert`, `client_cert.key`) and a message naming the file.
pub(crate) fn client_config(
    ca: Option<&Path>,
    client_cert: Option<&KeyPairFiles>,
    verify: bool,
) -> Result<Arc<ClientConfig>, ClientConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca", e.to_string()))?;
    let builder = if verify {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                for cert in certs::read_certs(path).map_err(|m| ("ca", m))? {
                    roots.add(cert).map_err(|e| {
                        (
                            "ca",
                            format!("{}: unusable CA certificate ({e})", path.display()),
                        )
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err((
                        "ca",
                        "no CA certificates in the system's trust store: name a `ca` file".into(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    };
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = certs::read_certs(&files.cert).map_err(|m| ("client_cert.cert", m))?;
            let key = certs::read_key(&files.key).map_err(|m| ("client_cert.key", m))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("client_cert.key", format!("{}: {e}", files.key.display())))?
        }
    };
    Ok(Arc::new(config))
}

/// `verify: false`: any certificate is accepted, signatures still checked (so the session
/// is with whoever holds the key of the certificate shown, just not a verified one).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name a target's certificate is checked against: `server_name` when configured, else
/// the target's IP address (its certificate must then carry it as an IP SAN).
pub(crate) fn target_name(
    server_name: Option<&str>,
    address: std::net::IpAddr,
) -> ServerName<'static> {
    match server_name.and_then(|n| ServerName::try_from(n.to_string()).ok()) {
        Some(n) => n,
        None => ServerName::IpAddress(address.into()),
    }
}

/// A new client session toward a target.
///
/// # Errors
/// rustls' (out of memory for the first flight, in practice never).
pub(crate) fn client_session(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<rustls::Connection, rustls::Error> {
    rustls::ClientConnection::new(config.clone(), name).map(rustls::Connection::from)
}

/// A new server session for an accepted client.
///
/// # Errors
/// rustls' (never in practice).
pub(crate) fn server_session(
    config: &Arc<ServerConfig>,
) -> Result<rustls::Connection, rustls::Error> {
    rustls::ServerConnection::new(config.clone()).map(rustls::Connection::from)
}
