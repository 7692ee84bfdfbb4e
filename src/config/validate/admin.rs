//! `admin:`: where the admin API listens, and its bearer token.

use super::super::file::*;
use super::super::*;

/// The admin API's settings (defaults when the section is left out).
///
/// # Errors
/// `(key, message)`: an unreadable, empty or group- or world-readable token file, a bind
/// address reachable from other hosts without a token, an empty `unix` path.
/// Relative paths (`token_file`, `unix`) are taken from `base`, the config file's directory.
pub(super) fn admin(
    raw: Option<FileAdmin>,
    base: &std::path::Path,
) -> Result<AdminConfig, (String, String)> {
    let raw = raw.unwrap_or(FileAdmin {
        bind: None,
        token_file: None,
        unix: None,
        read_only: None,
    });
    let bind = raw.bind.map_or_else(
        || DEFAULT_ADMIN_BIND.parse().expect("a valid default"),
        |a| a.0,
    );
    let token = match raw.token_file {
        None => None,
        Some(file) => Some(super::read_secret("admin.token_file", base, &file)?),
    };
    if !bind.ip().is_loopback() && token.is_none() {
        return Err((
            "admin.bind".into(),
            format!(
                "{bind} is reachable from other hosts: set admin.token_file, or bind 127.0.0.1"
            ),
        ));
    }
    let unix = match raw.unix.as_deref() {
        None => None,
        Some("") => {
            return Err((
                "admin.unix".into(),
                "give a path, or leave the key out".into(),
            ))
        }
        Some(p) => {
            let path = super::beside(base, std::path::Path::new(p));
            super::socket_path(&path).map_err(|m| ("admin.unix".to_string(), m))?;
            Some(path)
        }
    };
    Ok(AdminConfig {
        bind,
        token,
        unix,
        read_only: raw.read_only.unwrap_or(false),
    })
}
