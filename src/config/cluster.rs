//! `cluster:`: a fleet of nodes kept in step through etcd ([`crate::fleet`]). The file form
//! first, then the validated one ([`ClusterConfig`]).
//!
//! ```yaml
//! cluster:
//!   node_id: lb-1                       # default: the host name
//!   etcd:
//!     endpoints: [10.0.0.10:2379, https://10.0.0.11:2379]
//!     prefix: /ballast/prod             # the fleet's keys live under it
//!     tls: {ca: etcd-ca.pem, cert: lb.pem, key: lb-key.pem}   # optional
//!     username: ballast                 # optional, with password_file
//!     password_file: etcd.pass          # mode 0600
//! ```

use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;

/// `cluster:` as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    /// Optional: this node's name in the fleet (its record, `ballast fleet status`); left
    /// out or empty (`${BALLAST_NODE_ID:-}`): the host name. Two nodes must not share one.
    pub node_id: Option<String>,
    /// The etcd cluster that holds the fleet's targets, admin states and node records.
    pub etcd: FileEtcd,
}

/// `cluster.etcd:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEtcd {
    /// etcd's client URLs: `host:port` (http, or https with `tls`), `http://…` or
    /// `https://…`; at least one.
    pub endpoints: Vec<String>,
    /// Where the fleet's keys live, e.g. `/ballast/prod`: every node of one fleet names the
    /// same prefix; another prefix is another fleet.
    pub prefix: String,
    /// Optional: TLS to etcd: `ca` (PEM, the CA that signed etcd's certificate), and `cert`
    /// with `key` for a client certificate etcd asks for.
    pub tls: Option<FileEtcdTls>,
    /// Optional: etcd user (with `password_file`).
    pub username: Option<String>,
    /// With `username`: a file holding the password (mode 0600).
    pub password_file: Option<String>,
}

/// `cluster.etcd.tls:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEtcdTls {
    /// PEM file of the CA that signed etcd's server certificate.
    pub ca: String,
    /// Optional: PEM client certificate (with `key`).
    pub cert: Option<String>,
    /// Optional: PEM private key of `cert`.
    pub key: Option<String>,
}

/// The fleet this node belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name in the fleet.
    pub node_id: String,
    /// Where the fleet's state is.
    pub etcd: EtcdConfig,
}

/// How to reach etcd (`Debug` leaves the password out).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, each with its scheme (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// The fleet's key prefix, without a trailing `/`.
    pub prefix: String,
    /// PEM of the CA, and of the client certificate and key, read at load.
    pub tls: Option<EtcdTls>,
    /// User and password, the password read from `password_file` at load.
    pub user: Option<(String, String)>,
}

/// TLS to etcd: PEM text, read at load.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA's certificate(s).
    pub ca: Vec<u8>,
    /// The client certificate and its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &format!("{} bytes", self.ca.len()))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.as_ref().map(|t| t.identity.is_some()))
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "<redacted>")))
            .finish()
    }
}

/// `cluster:` checked, its files read (relative paths from `base`, the config's directory).
///
/// # Errors
/// `(key, message)`: no endpoint, an endpoint that is not `host:port` or an http(s) URL, an
/// `https://` endpoint without `tls` (or `tls` with an `http://` one), a prefix that does not
/// start with `/` or is only `/`, `username` without `password_file` (or the reverse), a
/// password file that is unreadable, empty or readable by others, a TLS file that cannot be
/// read or holds no PEM block, `cert` without `key`, an empty or unsafe `node_id`.
pub fn validate(raw: FileCluster, base: &Path) -> Result<ClusterConfig, (String, String)> {
    let wrong = |key: &str, m: String| (format!("cluster.{key}"), m);
    let node_id = match raw.node_id.filter(|id| !id.trim().is_empty()) {
        Some(id) => id,
        None => host_name().ok_or_else(|| {
            wrong(
                "node_id",
                "the host name cannot be read: set node_id".into(),
            )
        })?,
    };
    if node_id.is_empty()
        || node_id.len() > 128
        || !node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(wrong(
            "node_id",
            format!("`{node_id}`: 1 to 128 letters, digits, `-`, `_`, `.` or `:`"),
        ));
    }
    let e = raw.etcd;
    let prefix = e.prefix.trim_end_matches('/').to_string();
    if !e.prefix.starts_with('/') || prefix.is_empty() {
        return Err(wrong(
            "etcd.prefix",
            format!(
                "`{}`: a path such as /ballast/prod (starts with `/`, not `/` alone)",
                e.prefix
            ),
        ));
    }
    let tls = match e.tls {
        None => None,
        Some(t) => {
            let ca = pem("etcd.tls.ca", base, &t.ca).map_err(|m| wrong("etcd.tls.ca", m))?;
            let identity = match (t.cert, t.key) {
                (None, None) => None,
                (Some(c), Some(k)) => Some((
                    pem("cert", base, &c).map_err(|m| wrong("etcd.tls.cert", m))?,
                    pem("key", base, &k).map_err(|m| wrong("etcd.tls.key", m))?,
                )),
                (Some(_), None) => return Err(wrong("etcd.tls.key", "cert needs key".into())),
                (None, Some(_)) => return Err(wrong("etcd.tls.cert", "key needs cert".into())),
            };
            Some(EtcdTls { ca, identity })
        }
    };
    if e.endpoints.is_empty() {
        return Err(wrong(
            "etcd.endpoints",
            "at least one, e.g. [127.0.0.1:2379]".into(),
        ));
    }
    let mut endpoints = Vec::with_capacity(e.endpoints.len());
    for (i, raw) in e.endpoints.iter().enumerate() {
        let key = format!("etcd.endpoints[{i}]");
        endpoints.push(endpoint(raw, tls.is_some()).map_err(|m| wrong(&key, m))?);
    }
    let user = match (e.username, e.password_file) {
        (None, None) => None,
        (Some(u), Some(f)) if !u.is_empty() => Some((
            u,
            super::validate::read_secret("cluster.etcd.password_file", base, &f)?,
        )),
        (Some(_), Some(_)) => return Err(wrong("etcd.username", "empty".into())),
        (Some(_), None) => {
            return Err(wrong(
                "etcd.password_file",
                "username needs password_file".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(wrong(
                "etcd.username",
                "password_file needs username".into(),
            ))
        }
    };
    Ok(ClusterConfig {
        node_id,
        etcd: EtcdConfig {
            endpoints,
            prefix,
            tls,
            user,
        },
    })
}

/// Endpoint `raw` with its scheme: `https://` when `tls`, else `http://`, for a bare
/// `host:port`.
fn endpoint(raw: &str, tls: bool) -> Result<String, String> {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some((s, _)) => return Err(format!("`{raw}`: scheme {s}: use http or https")),
        None => (if tls { "https" } else { "http" }, raw),
    };
    match (scheme, tls) {
        ("https", false) => return Err(format!("`{raw}`: https needs cluster.etcd.tls")),
        ("http", true) => return Err(format!("`{raw}`: http with cluster.etcd.tls set")),
        _ => {}
    }
    let rest = rest.trim_end_matches('/');
    let port = rest
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if !host.is_empty() && p != 0 && !rest.contains('/') => {
            Ok(format!("{scheme}://{rest}"))
        }
        _ => Err(format!("`{raw}`: host:port, e.g. 127.0.0.1:2379")),
    }
}

/// The PEM text of `file` (from `base` when relative).
fn pem(what: &str, base: &Path, file: &str) -> Result<Vec<u8>, String> {
    let path = super::validate::beside(base, Path::new(file));
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{}: no PEM block ({what})", path.display()));
    }
    Ok(bytes)
}

/// The host name (uname's nodename), if it can be read.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_a_scheme_that_matches_tls() {
        assert_eq!(
            endpoint("10.0.0.1:2379", false).unwrap(),
            "http://10.0.0.1:2379"
        );
        assert_eq!(endpoint("etcd:2379", true).unwrap(), "https://etcd:2379");
        assert_eq!(
            endpoint("http://[::1]:2379/", false).unwrap(),
            "http://[::1]:2379"
        );
        assert!(endpoint("https://a:2379", false)
            .unwrap_err()
            .contains("needs"));
        assert!(endpoint("http://a:2379", true).is_err());
        assert!(endpoint("a", false).is_err());
        assert!(endpoint("a:0", false).is_err());
        assert!(endpoint("unix://x:1", false).is_err());
        assert!(endpoint("a:1/path", false).is_err());
    }
}
