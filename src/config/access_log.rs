//! `access_log:`: where the access log goes (a file, stderr, syslog), in which format
//! (logfmt, JSON, or a template of fields), and for which listeners. The file form first, then
//! the validated one ([`AccessLogConfig`]); [`crate::access_log`] writes the lines.
//!
//! ```yaml
//! access_log: /var/log/ballast/access.log    # off | stderr | a file path (logfmt, every listener)
//! access_log:
//!   to: syslog                  # off | stderr | syslog | a file path
//!   syslog: {address: /dev/log, facility: local0, tag: ballast}
//!   format: json                # logfmt (default) | json | a template
//!   listeners: [pg]             # only these listeners' lines (default: all)
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The fields a line can carry, by name: the JSON keys and the template's `{name}`s.
pub const FIELDS: [&str; 15] = [
    "time",
    "protocol",
    "listener",
    "client",
    "client_ip",
    "client_port",
    "target",
    "duration_ms",
    "bytes_up",
    "bytes_down",
    "datagrams_up",
    "datagrams_down",
    "retries",
    "connect_ms",
    "reason",
];

/// `access_log:` as written: a string (where, in logfmt, for every listener) or a section.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum FileAccessLog {
    /// `off`, `stderr`, or a file path.
    Plain(String),
    /// Where, in which format, for which listeners.
    Section(FileAccessLogSection),
}

/// The section form of `access_log:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLogSection {
    /// Default stderr: off | stderr | syslog | a file path.
    pub to: Option<String>,
    /// Default logfmt: logfmt | json | a template of `{field}`s and text (`{{` and `}}` for
    /// braces); fields: time, protocol, listener, client, client_ip, client_port, target,
    /// duration_ms, bytes_up, bytes_down, datagrams_up, datagrams_down, retries, connect_ms,
    /// reason.
    pub format: Option<String>,
    /// Optional: only the connections and sessions of these listeners (default: all).
    pub listeners: Option<Vec<String>>,
    /// With `to: syslog`, every key optional: where and how (RFC 5424).
    pub syslog: Option<FileSyslog>,
}

/// `access_log.syslog:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSyslog {
    /// Default /dev/log: a UNIX socket path, or `host:port` for UDP.
    pub address: Option<String>,
    /// Default local0: kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron,
    /// authpriv, ftp, local0 … local7.
    pub facility: Option<String>,
    /// Default ballast: the APP-NAME field.
    pub tag: Option<String>,
}

// A string or a section, with the section's own errors (unknown keys, line and column) kept:
// serde's untagged enums would replace them with "did not match any variant".
impl<'de> Deserialize<'de> for FileAccessLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = FileAccessLog;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "`off`, `stderr`, a file path, or a section {to, format, listeners, syslog}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileAccessLog, E> {
                Ok(FileAccessLog::Plain(v.to_string()))
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<FileAccessLog, M::Error> {
                FileAccessLogSection::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FileAccessLog::Section)
            }
        }
        d.deserialize_any(Either)
    }
}

/// Where access-log lines go: [`crate::access_log`] writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSink {
    /// Not written.
    Off,
    /// Standard error, beside the process's own log.
    Stderr,
    /// Appended to this file (created if missing).
    File(PathBuf),
    /// Sent to a syslog daemon, one RFC 5424 message per line.
    Syslog(SyslogTarget),
}

impl fmt::Display for AccessLogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessLogSink::Off => f.write_str("off"),
            AccessLogSink::Stderr => f.write_str("stderr"),
            AccessLogSink::File(p) => write!(f, "{}", p.display()),
            AccessLogSink::Syslog(t) => {
                write!(f, "syslog {} ({}, {})", t.address, t.facility, t.tag)
            }
        }
    }
}

impl fmt::Display for AccessLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.sink)?;
        match &self.format {
            LogFormat::Logfmt => {}
            LogFormat::Json => f.write_str(", json")?,
            LogFormat::Template(_) => f.write_str(", template")?,
        }
        if let Some(l) = &self.listeners {
            write!(f, ", listeners {}", l.join(", "))?;
        }
        Ok(())
    }
}

/// Where and how syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// The daemon's socket.
    pub address: SyslogAddress,
    /// The facility's name (`local0`), as the syslog crate parses it.
    pub facility: String,
    /// APP-NAME.
    pub tag: String,
}

/// A syslog daemon's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    /// A UNIX datagram (or stream) socket, e.g. /dev/log.
    Unix(PathBuf),
    /// A UDP address.
    Udp(SocketAddr),
}

impl fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyslogAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            SyslogAddress::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

/// How a line is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` fields in a fixed order (the default).
    Logfmt,
    /// One JSON object per line.
    Json,
    /// The operator's template.
    Template(Vec<Piece>),
}

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text as written.
    Text(String),
    /// A field, by its index in [`FIELDS`].
    Field(usize),
}

/// The validated `access_log:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub sink: AccessLogSink,
    /// How they are written.
    pub format: LogFormat,
    /// Only these listeners' lines, by name; `None` for all.
    pub listeners: Option<Vec<String>>,
}

impl Default for AccessLogConfig {
    fn default() -> AccessLogConfig {
        AccessLogConfig {
            sink: AccessLogSink::Stderr,
            format: LogFormat::Logfmt,
            listeners: None,
        }
    }
}

/// Parses a template: `{field}` for a field of [`FIELDS`], `{{` and `}}` for braces.
///
/// # Errors
/// An unknown field (naming the known ones), an unclosed `{`, a lone `}`, no field at all.
pub fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text_now = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text_now.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text_now.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err(format!("`{{{name}` is not closed by `}}`"));
                }
                let Some(i) = FIELDS.iter().position(|f| *f == name) else {
                    return Err(format!(
                        "unknown field `{{{name}}}`; fields: {}",
                        FIELDS.join(", ")
                    ));
                };
                if !text_now.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text_now)));
                }
                pieces.push(Piece::Field(i));
            }
            '}' => return Err("a lone `}` (write `}}` for one)".into()),
            c => text_now.push(c),
        }
    }
    if !text_now.is_empty() {
        pieces.push(Piece::Text(text_now));
    }
    if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
        return Err("a template needs at least one `{field}`".into());
    }
    Ok(pieces)
}

/// Validates `access_log:` against the listener names of the file.
///
/// # Errors
/// `(key, message)`: an empty path, an unknown format field, a listener the file does not
/// have, a bad syslog address or facility, syslog settings without `to: syslog`.
pub fn validate(
    raw: Option<FileAccessLog>,
    listeners: &[&str],
) -> Result<AccessLogConfig, (String, String)> {
    let section = match raw {
        None => return Ok(AccessLogConfig::default()),
        Some(FileAccessLog::Plain(to)) => FileAccessLogSection {
            to: Some(to),
            format: None,
            listeners: None,
            syslog: None,
        },
        Some(FileAccessLog::Section(s)) => s,
    };
    let sink = match section.to.as_deref() {
        None | Some("stderr") => AccessLogSink::Stderr,
        Some("off") => AccessLogSink::Off,
        Some("syslog") => AccessLogSink::Syslog(syslog(section.syslog.as_ref())?),
        Some("") => {
            return Err((
                "access_log".into(),
                "give `off`, `stderr`, `syslog` or a file path".into(),
            ))
        }
        Some(path) => AccessLogSink::File(path.into()),
    };
    if section.syslog.is_some() && !matches!(sink, AccessLogSink::Syslog(_)) {
        return Err((
            "access_log.syslog".into(),
            "syslog settings need `to: syslog`".into(),
        ));
    }
    let format = match section.format.as_deref() {
        None | Some("logfmt") => LogFormat::Logfmt,
        Some("json") => LogFormat::Json,
        Some(t) => LogFormat::Template(
            parse_template(t).map_err(|m| ("access_log.format".to_string(), m))?,
        ),
    };
    if let Some(names) = &section.listeners {
        if let Some(unknown) = names.iter().find(|n| !listeners.contains(&n.as_str())) {
            return Err((
                "access_log.listeners".into(),
                format!(
                    "no listener named `{unknown}`; listeners: {}",
                    listeners.join(", ")
                ),
            ));
        }
    }
    Ok(AccessLogConfig {
        sink,
        format,
        listeners: section.listeners,
    })
}

fn syslog(raw: Option<&FileSyslog>) -> Result<SyslogTarget, (String, String)> {
    let address = match raw.and_then(|s| s.address.as_deref()) {
        None => SyslogAddress::Unix("/dev/log".into()),
        Some(a) if a.starts_with('/') => SyslogAddress::Unix(a.into()),
        Some(a) => SyslogAddress::Udp(super::parse_address(a).map_err(|m| {
            (
                "access_log.syslog.address".to_string(),
                format!("{m} (a UNIX socket path starts with /)"),
            )
        })?),
    };
    let facility = raw
        .and_then(|s| s.facility.clone())
        .unwrap_or_else(|| "local0".into());
    if facility.parse::<syslog::Facility>().is_err() {
        return Err((
            "access_log.syslog.facility".into(),
            format!(
                "unknown facility `{facility}`: kern, user, mail, daemon, auth, syslog, lpr, \
                 news, uucp, cron, authpriv, ftp, local0 … local7"
            ),
        ));
    }
    let tag = raw
        .and_then(|s| s.tag.clone())
        .unwrap_or_else(|| "ballast".into());
    if tag.is_empty() || tag.len() > 48 || !tag.chars().all(|c| c.is_ascii_graphic()) {
        return Err((
            "access_log.syslog.tag".into(),
            "1 to 48 printable ASCII characters, no spaces (RFC 5424 APP-NAME)".into(),
        ));
    }
    Ok(SyslogTarget {
        address,
        facility,
        tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_fields_and_escape_braces() {
        let t = parse_template("{client} -> {target} {{x}} {bytes_up}B").unwrap();
        assert_eq!(
            t,
            [
                Piece::Field(3),
                Piece::Text(" -> ".into()),
                Piece::Field(6),
                Piece::Text(" {x} ".into()),
                Piece::Field(8),
                Piece::Text("B".into()),
            ]
        );
        for (bad, says) in [
            ("{clinet}", "unknown field `{clinet}`"),
            ("{client", "is not closed"),
            ("a } b {client}", "a lone `}`"),
            ("no fields", "at least one"),
        ] {
            let e = parse_template(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_string_form_and_the_section_form() {
        let parse = |y: &str| serde_yaml::from_str::<FileAccessLog>(y);
        let names = ["pg", "dns"];
        assert_eq!(
            validate(Some(parse("/var/log/a.log").unwrap()), &names).unwrap(),
            AccessLogConfig {
                sink: AccessLogSink::File("/var/log/a.log".into()),
                ..AccessLogConfig::default()
            }
        );
        let c = validate(
            Some(parse("{to: syslog, format: json, listeners: [pg], syslog: {address: '127.0.0.1:514'}}").unwrap()),
            &names,
        )
        .unwrap();
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(c.listeners, Some(vec!["pg".to_string()]));
        assert!(matches!(
            c.sink,
            AccessLogSink::Syslog(SyslogTarget {
                address: SyslogAddress::Udp(_),
                ..
            })
        ));
        let e = parse("{to: stderr, formatt: json}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `formatt`"), "{e}");
        for (yaml, key) in [
            ("{listeners: [web]}", "access_log.listeners"),
            (
                "{to: syslog, syslog: {facility: local9}}",
                "access_log.syslog.facility",
            ),
            ("{to: stderr, syslog: {}}", "access_log.syslog"),
            ("{format: '{nope}'}", "access_log.format"),
            ("''", "access_log"),
        ] {
            let (k, _) = validate(Some(parse(yaml).unwrap()), &names).unwrap_err();
            assert_eq!(k, key, "{yaml}");
        }
    }
}
