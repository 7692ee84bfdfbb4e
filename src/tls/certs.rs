//! Certificates and keys from PEM files, what they name and when they expire, and the server
//! certificate chosen by the client's SNI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain file and its private key file (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// What a certificate file's leaf says, for `ballast check` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The file it was read from.
    pub file: PathBuf,
    /// The DNS names it is valid for, lowercase (`*.example.com` for a wildcard): its
    /// subjectAltName DNS entries, or its subject CN when it has none.
    pub names: Vec<String>,
    /// Valid from, UNIX seconds.
    pub not_before: i64,
    /// Valid until, UNIX seconds.
    pub not_after: i64,
}

/// Which file of a pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The certificate file.
    Cert,
    /// The key file.
    Key,
}

impl Part {
    /// The config key: `cert` or `key`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Part::Cert => "cert",
            Part::Key => "key",
        }
    }
}

/// Reads every certificate in the PEM file `path`.
///
/// # Errors
/// A message naming `path`: unreadable, not PEM, or no `CERTIFICATE` block.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block in it", path.display()));
    }
    Ok(certs)
}

/// Reads the private key in the PEM file `path`.
///
/// # Errors
/// A message naming `path`: unreadable, or no private key block in it.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: no private key in it ({e})", path.display()))
}

/// Loads a certificate chain and its key, checks that they belong together and that the key
/// is of a kind rustls signs with (RSA, ECDSA P-256/P-384, Ed25519), and reads the leaf's
/// names and validity.
///
/// # Errors
/// `(which file, message naming it)`.
pub(crate) fn load_pair(
    files: &KeyPairFiles,
) -> Result<(Arc<CertifiedKey>, CertInfo), (Part, String)> {
    let chain = read_certs(&files.cert).map_err(|m| (Part::Cert, m))?;
    let key = read_key(&files.key).map_err(|m| (Part::Key, m))?;
    let info = describe(&files.cert, &chain[0]).map_err(|m| (Part::Cert, m))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        (
            Part::Key,
            format!("{}: unusable private key ({e})", files.key.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        (
            Part::Key,
            format!(
                "{} is not the key of the certificate in {}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })?;
    Ok((Arc::new(certified), info))
}

/// The names and validity of certificate `der`, read from `file`.
fn describe(file: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("{}: not an X.509 certificate ({e})", file.display()))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let validity = cert.validity();
    Ok(CertInfo {
        file: file.to_path_buf(),
        names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// The server certificate for a ClientHello: the first certificate (in config order) whose
/// names match the SNI exactly, else one whose `*.` wildcard covers its first label, else the
/// first certificate listed (the default, also for clients without SNI). Among certificates
/// for the same name, the first whose key can sign with a scheme the client offers (an RSA
/// and an ECDSA certificate may be listed side by side).
#[derive(Debug)]
pub(crate) struct ByServerName {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    all: Vec<Arc<CertifiedKey>>,
}

impl ByServerName {
    /// Indexes `pairs` by the names in their infos; the first is the default.
    pub(crate) fn new(pairs: &[(Arc<CertifiedKey>, CertInfo)]) -> ByServerName {
        let mut exact: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        for (key, info) in pairs {
            for name in &info.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_default(),
                    None => exact.entry(name.clone()).or_default(),
                }
                .push(key.clone());
            }
        }
        ByServerName {
            exact,
            wildcard,
            all: pairs.iter().map(|(k, _)| k.clone()).collect(),
        }
    }

    /// The candidates for server name `name` (lowercase), best first.
    fn candidates(&self, name: Option<&str>) -> &[Arc<CertifiedKey>] {
        let Some(name) = name else {
            return &self.all;
        };
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        let parent = name.split_once('.').map(|(_, rest)| rest);
        if let Some(c) = parent.and_then(|p| self.wildcard.get(p)) {
            return c;
        }
        &self.all
    }
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let schemes = hello.signature_schemes();
        let candidates = self.candidates(name.as_deref());
        candidates
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| candidates.first())
            .cloned()
    }
}
