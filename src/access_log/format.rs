//! The access log's line formats: logfmt (the default, `key=value` in a fixed order), JSON
//! (one object per line, numbers as numbers, absent values as `null`), and the operator's
//! template of `{field}`s ([`crate::config::access_log::parse_template`]). Each writes one
//! line, newline included, straight into the worker's buffer.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use super::Entry;
use crate::config::access_log::{Piece, FIELDS};
use crate::config::LogFormat;

/// Writes the line for `entry` at `now` in `format`.
///
/// # Errors
/// As `out`'s writes.
pub(crate) fn write_entry(
    out: &mut impl Write,
    now: SystemTime,
    e: &Entry,
    format: &LogFormat,
) -> io::Result<()> {
    match format {
        LogFormat::Logfmt => write_line(out, now, e),
        LogFormat::Json => {
            out.write_all(b"{")?;
            let mut first = true;
            for (i, name) in FIELDS.iter().enumerate() {
                let v = value(i, now, e);
                if matches!(v, Value::Absent) {
                    continue; // datagrams on a TCP line, connect_ms on a UDP one
                }
                if !first {
                    out.write_all(b",")?;
                }
                first = false;
                write!(out, "\"{name}\":")?;
                v.json(out)?;
            }
            out.write_all(b"}\n")
        }
        LogFormat::Template(pieces) => {
            for p in pieces {
                match p {
                    Piece::Text(t) => out.write_all(t.as_bytes())?,
                    Piece::Field(i) => value(*i, now, e).text(out)?,
                }
            }
            out.write_all(b"\n")
        }
    }
}

/// One field's value.
enum Value<'a> {
    Text(&'a str),
    Time(SystemTime),
    Address(SocketAddr),
    Ip(IpAddr),
    Whole(u64),
    Millis(f64),
    /// Known to be none (no target reached): `-`, JSON `null`.
    None,
    /// Not a field of this kind of line (datagrams of a TCP connection): left out of JSON.
    Absent,
}

/// Field `i` of [`FIELDS`] for `e`.
fn value<'a>(i: usize, now: SystemTime, e: &'a Entry) -> Value<'a> {
    let tcp = e.datagrams.is_none();
    match FIELDS.get(i).copied().unwrap_or("") {
        "time" => Value::Time(now),
        "protocol" => Value::Text(e.protocol),
        "listener" => Value::Text(e.listener),
        "client" => Value::Address(e.client),
        "client_ip" => Value::Ip(e.client.ip()),
        "client_port" => Value::Whole(u64::from(e.client.port())),
        "target" => e.target.map_or(Value::None, Value::Address),
        "duration_ms" => Value::Whole(e.duration.as_millis() as u64),
        "bytes_up" => Value::Whole(e.bytes_up),
        "bytes_down" => Value::Whole(e.bytes_down),
        "datagrams_up" => e
            .datagrams
            .map_or(Value::Absent, |(up, _)| Value::Whole(up)),
        "datagrams_down" => e.datagrams.map_or(Value::Absent, |(_, d)| Value::Whole(d)),
        "retries" if tcp => Value::Whole(u64::from(e.retries)),
        "connect_ms" if tcp => e
            .connect
            .map_or(Value::None, |c| Value::Millis(c.as_secs_f64() * 1e3)),
        "reason" => Value::Text(e.reason),
        _ => Value::Absent,
    }
}

impl<'a> Value<'a> {
    /// As a template writes it: text bare, none and absent as `-`.
    fn text(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Value::Text(t) => out.write_all(t.as_bytes()),
            Value::Time(t) => write!(out, "{}", humantime::format_rfc3339_millis(*t)),
            Value::Address(a) => write!(out, "{a}"),
            Value::Ip(ip) => write!(out, "{ip}"),
            Value::Whole(n) => write!(out, "{n}"),
            Value::Millis(ms) => write!(out, "{ms:.3}"),
            Value::None | Value::Absent => out.write_all(b"-"),
        }
    }

    /// As JSON: strings quoted and escaped (a listener's name is the operator's text).
    fn json(&self, out: &mut impl Write) -> io::Result<()> {
        let string = |out: &mut _, s: &str| serde_json::to_writer(out, s).map_err(io::Error::from);
        match self {
            Value::Text(t) => string(out, t),
            Value::Time(t) => string(out, &humantime::format_rfc3339_millis(*t).to_string()),
            Value::Address(a) => string(out, &a.to_string()),
            Value::Ip(ip) => string(out, &ip.to_string()),
            Value::Whole(n) => write!(out, "{n}"),
            Value::Millis(ms) => write!(out, "{ms:.3}"),
            Value::None | Value::Absent => out.write_all(b"null"),
        }
    }
}

/// Writes the line for `entry` at `now`, newline included.
///
/// # Errors
/// As `out`'s writes.
fn write_line(out: &mut impl Write, now: SystemTime, e: &Entry) -> io::Result<()> {
    write!(
        out,
        "{} {} listener={} client={} target={} duration_ms={} bytes_up={} bytes_down={}",
        humantime::format_rfc3339_millis(now),
        e.protocol,
        e.listener,
        e.client,
        Target(e.target),
        e.duration.as_millis(),
        e.bytes_up,
        e.bytes_down,
    )?;
    if let Some((up, down)) = e.datagrams {
        write!(out, " datagrams_up={up} datagrams_down={down}")?;
    } else {
        write!(out, " retries={}", e.retries)?;
        match e.connect {
            Some(c) => write!(out, " connect_ms={:.3}", c.as_secs_f64() * 1e3)?,
            None => write!(out, " connect_ms=-")?,
        }
    }
    writeln!(out, " reason={}", Underscored(e.reason))
}

/// The line for `entry` at `now`, as a string (for the tests).
#[cfg(test)]
fn format_line(now: SystemTime, e: &Entry) -> String {
    let mut line = Vec::new();
    let _ = write_line(&mut line, now, e);
    String::from_utf8_lossy(&line).into_owned()
}

/// A target address, or `-` for none.
struct Target(Option<SocketAddr>);

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Text with its spaces written as underscores, so a value stays one logfmt token.
struct Underscored<'a>(&'a str);

impl std::fmt::Display for Underscored<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.0.split(' ').enumerate() {
            if i > 0 {
                f.write_str("_")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn line_format() {
        let e = Entry {
            protocol: "udp",
            listener: "dns",
            client: "127.0.0.1:41000".parse().unwrap(),
            target: Some("127.0.0.1:5301".parse().unwrap()),
            duration: Duration::from_millis(3),
            bytes_up: 32,
            bytes_down: 48,
            datagrams: Some((1, 1)),
            retries: 0,
            connect: None,
            reason: "max_responses",
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(
            format_line(at, &e),
            "2026-11-18T11:06:40.123Z udp listener=dns client=127.0.0.1:41000 \
             target=127.0.0.1:5301 duration_ms=3 bytes_up=32 bytes_down=48 datagrams_up=1 \
             datagrams_down=1 reason=max_responses\n"
        );
        let e = Entry {
            target: None,
            datagrams: None,
            protocol: "tcp",
            reason: "no target",
            ..e
        };
        assert!(format_line(at, &e).ends_with(
            "target=- duration_ms=3 bytes_up=32 bytes_down=48 retries=0 connect_ms=- \
             reason=no_target\n"
        ));
        let e = Entry {
            target: Some("127.0.0.1:5432".parse().unwrap()),
            retries: 2,
            connect: Some(Duration::from_micros(1_250)),
            reason: "done",
            ..e
        };
        assert!(format_line(at, &e)
            .ends_with("bytes_up=32 bytes_down=48 retries=2 connect_ms=1.250 reason=done\n"));
    }

    #[test]
    fn json_and_template_lines() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let tcp = Entry {
            protocol: "tcp",
            listener: "p\"g",
            client: "[2001:db8::7]:50432".parse().unwrap(),
            target: None,
            duration: Duration::from_millis(12),
            bytes_up: 3,
            bytes_down: 0,
            datagrams: None,
            retries: 2,
            connect: None,
            reason: "no target",
        };
        let line = |e: &Entry, f: &LogFormat| {
            let mut out = Vec::new();
            write_entry(&mut out, at, e, f).unwrap();
            String::from_utf8(out).unwrap()
        };
        let json = line(&tcp, &LogFormat::Json);
        assert!(json.ends_with("}\n") && json.lines().count() == 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["time"], "2026-11-18T11:06:40.123Z");
        assert_eq!(v["listener"], "p\"g", "escaped: {json}");
        assert_eq!(v["client_ip"], "2001:db8::7");
        assert_eq!(v["client_port"], 50432);
        assert_eq!(v["target"], serde_json::Value::Null);
        assert_eq!(
            (v["retries"].as_u64(), v["connect_ms"].is_null()),
            (Some(2), true)
        );
        assert!(
            v.get("datagrams_up").is_none(),
            "not a field of a TCP line: {json}"
        );
        let udp = Entry {
            protocol: "udp",
            target: Some("127.0.0.1:53".parse().unwrap()),
            datagrams: Some((1, 2)),
            ..tcp.clone()
        };
        let v: serde_json::Value = serde_json::from_str(&line(&udp, &LogFormat::Json)).unwrap();
        assert_eq!(
            (v["datagrams_up"].as_u64(), v["datagrams_down"].as_u64()),
            (Some(1), Some(2))
        );
        assert!(v.get("retries").is_none());
        let template = crate::config::access_log::parse_template(
            "{client_ip} {target} {connect_ms} {{{reason}}}",
        )
        .unwrap();
        assert_eq!(
            line(&tcp, &LogFormat::Template(template)),
            "2001:db8::7 - - {no target}\n"
        );
    }
}
