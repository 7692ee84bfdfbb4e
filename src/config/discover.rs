//! `discover:` of a target group: the DNS names whose addresses become targets
//! ([`crate::discovery`] looks them up).

use std::time::Duration;

use super::file::FileDiscover;
use super::{Discover, DiscoverSource};

/// `discover:` of the group at `key`.
pub(super) fn discover(
    key: &str,
    raw: Vec<FileDiscover>,
) -> Result<Vec<Discover>, (String, String)> {
    raw.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let dkey = format!("{key}.discover[{i}]");
            let source = match (d.dns, d.srv) {
                (Some(dns), None) => {
                    let bad = || {
                        (
                            format!("{dkey}.dns"),
                            format!("`{dns}` is not host:port (e.g. db.internal:5432)"),
                        )
                    };
                    let (host, port) = dns.rsplit_once(':').ok_or_else(bad)?;
                    let port: u16 = port.parse().map_err(|_| bad())?;
                    if host.is_empty() || port == 0 {
                        return Err(bad());
                    }
                    DiscoverSource::Dns {
                        host: host.to_string(),
                        port,
                    }
                }
                (None, Some(name)) if !name.trim().is_empty() => DiscoverSource::Srv {
                    name: name.trim().to_string(),
                },
                _ => {
                    return Err((
                        dkey,
                        "give one of {dns: host:port} or {srv: _service._tcp.name}".into(),
                    ))
                }
            };
            let min_ttl = d.min_ttl.map_or(Duration::from_secs(5), |t| t.0);
            let max_ttl = d.max_ttl.map_or(Duration::from_secs(300), |t| t.0);
            if max_ttl < min_ttl {
                return Err((
                    format!("{dkey}.max_ttl"),
                    "must not be shorter than min_ttl".into(),
                ));
            }
            Ok(Discover {
                source,
                min_ttl,
                max_ttl,
            })
        })
        .collect()
}
