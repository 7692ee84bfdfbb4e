//! The TLS keys of the file: a `tls` listener's `tls:` and a group's `target_tls:`, their
//! files loaded when the config is ([`crate::tls`] builds the rustls configurations), and
//! built afresh for a certificate reload. Relative file paths are taken from the directory of
//! the config file, so a config and its certificates move together.

use std::path::Path;
use std::time::Duration;

use super::file::{FileKeyPair, FileTargetTls, FileTls};
use super::{Config, ConfigError, TargetTls, TlsListener};

/// Default `tls.handshake_timeout`.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `tls:` of the listener at `key`: its files loaded, its server configuration built;
/// `default_alpn` offered when the file gives no `alpn`.
pub(super) fn tls_listener(
    key: &str,
    raw: FileTls,
    base: &Path,
    default_alpn: &[&str],
) -> Result<TlsListener, (String, String)> {
    let key = format!("{key}.tls");
    if raw.certificates.is_empty() {
        return Err((
            format!("{key}.certificates"),
            "list at least one {cert: FILE, key: FILE}; the first is the default certificate"
                .into(),
        ));
    }
    let alpn = raw
        .alpn
        .unwrap_or_else(|| default_alpn.iter().map(ToString::to_string).collect());
    if let Some(bad) = alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        return Err((
            format!("{key}.alpn"),
            format!("`{bad}`: an ALPN protocol name is 1 to 255 bytes (h2, http/1.1, …)"),
        ));
    }
    let certificates: Vec<_> = raw
        .certificates
        .into_iter()
        .map(|p| pair(base, p))
        .collect();
    let min_version = raw.min_version.map(|v| v.0).unwrap_or_default();
    let session_tickets = raw.session_tickets.unwrap_or(true);
    let server = build_server(&key, &certificates, min_version, &alpn, session_tickets)?;
    Ok(TlsListener {
        certificates,
        min_version,
        alpn,
        handshake_timeout: raw
            .handshake_timeout
            .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |d| d.0),
        session_tickets,
        server,
    })
}

/// A listener's server side, its files read now; errors keyed under `key` (its `tls`).
fn build_server(
    key: &str,
    certificates: &[crate::tls::KeyPairFiles],
    min_version: crate::tls::TlsVersion,
    alpn: &[String],
    tickets: bool,
) -> Result<crate::tls::ServerSide, (String, String)> {
    crate::tls::server_config(certificates, min_version, alpn, tickets)
        .map_err(|(i, part, m)| (format!("{key}.certificates[{i}].{}", part.key()), m))
}

/// A `{cert, key}` pair, relative paths taken from `base` (the config file's directory).
fn pair(base: &Path, raw: FileKeyPair) -> crate::tls::KeyPairFiles {
    crate::tls::KeyPairFiles {
        cert: base.join(raw.cert),
        key: base.join(raw.key),
    }
}

/// `target_tls:` of the group at `key`: its files loaded, its client configuration built.
pub(super) fn target_tls(
    key: &str,
    raw: FileTargetTls,
    base: &Path,
) -> Result<TargetTls, (String, String)> {
    let key = format!("{key}.target_tls");
    if let Some(name) = &raw.server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err((
                format!("{key}.server_name"),
                format!("`{name}` is not a DNS name or an IP address"),
            ));
        }
    }
    let verify = raw.verify.unwrap_or(true);
    if !verify && raw.ca.is_some() {
        return Err((
            format!("{key}.ca"),
            "`ca` is for verifying; with `verify: false` leave it out".into(),
        ));
    }
    let client_cert = raw.client_cert.map(|p| pair(base, p));
    let ca = raw.ca.map(|p| base.join(p));
    let client = crate::tls::client_config(ca.as_deref(), client_cert.as_ref(), verify)
        .map_err(|(k, m)| (format!("{key}.{k}"), m))?;
    Ok(TargetTls {
        ca,
        server_name: raw.server_name,
        client_cert,
        verify,
        client,
    })
}

/// `config` with every TLS configuration built afresh from its files (certificates that
/// changed on disk), everything else as it is.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key and file of the first certificate, key or CA file
/// that no longer loads.
pub(crate) fn reload_tls(config: &Config) -> Result<Config, ConfigError> {
    let invalid = |(key, message): (String, String)| ConfigError::Invalid {
        path: config.path.clone(),
        key,
        message,
    };
    let mut next = config.clone();
    for (i, l) in next.listeners.iter_mut().enumerate() {
        if let Some(tls) = l.tls.as_mut() {
            tls.server = build_server(
                &format!("listeners[{i}].tls"),
                &tls.certificates,
                tls.min_version,
                &tls.alpn,
                tls.session_tickets,
            )
            .map_err(invalid)?;
        }
    }
    for (i, g) in next.target_groups.iter_mut().enumerate() {
        if let Some(t) = g.target_tls.as_mut() {
            t.client = crate::tls::client_config(t.ca.as_deref(), t.client_cert.as_ref(), t.verify)
                .map_err(|(k, m)| invalid((format!("target_groups[{i}].target_tls.{k}"), m)))?;
        }
    }
    Ok(next)
}
