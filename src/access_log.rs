//! The access log: one line per finished TCP connection or UDP session.
//!
//! ```text
//! 2026-11-21T01:20:00.123Z tcp listener=pg client=127.0.0.1:50432 target=127.0.0.1:5432 duration_ms=1520 bytes_up=310 bytes_down=18022 reason=done
//! 2026-11-21T01:20:01.004Z udp listener=dns client=127.0.0.1:41000 target=127.0.0.1:5301 duration_ms=1 bytes_up=32 bytes_down=48 datagrams_up=1 datagrams_down=1 reason=max_responses
//! ```
//!
//! Fields are `key=value` (logfmt), in this order; `target=-` when no target was reached.
//! `bytes_up` go client → target, `bytes_down` target → client. `reason` is why it ended:
//! `done` (both sides finished), `client_reset` / `target_reset` (that side aborted first; the
//! other side was reset), `idle`, `max_responses`, `no target`, `disabled`, `listener removed`,
//! `shutdown timeout`, `stopping`, or a local error (`too many open files`, …).
//!
//! Each worker buffers its lines and writes them once per event-loop turn, in one `write` of
//! whole lines (the file is opened for appending), so workers never interleave within a line
//! and the data path makes no syscall per connection for logging.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Where access-log lines go (`access_log:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Not written.
    Off,
    /// Standard error, beside the process's own log.
    Stderr,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

/// One finished connection or session.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// `tcp` or `udp`.
    pub protocol: &'a str,
    /// Listener name.
    pub listener: &'a str,
    /// Client address.
    pub client: SocketAddr,
    /// Target reached, if any.
    pub target: Option<SocketAddr>,
    /// From accept (or first datagram) to the end.
    pub duration: Duration,
    /// Bytes client → target.
    pub bytes_up: u64,
    /// Bytes target → client.
    pub bytes_down: u64,
    /// Datagrams up and down (UDP only).
    pub datagrams: Option<(u64, u64)>,
    /// Why it ended.
    pub reason: &'a str,
}

/// One worker's writer.
pub struct AccessLog {
    out: Option<BufWriter<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessLog {{ on: {} }}", self.out.is_some())
    }
}

impl AccessLog {
    /// A writer for `sink`.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(sink: &Sink) -> io::Result<AccessLog> {
        let out: Option<Box<dyn Write + Send>> = match sink {
            Sink::Off => None,
            Sink::Stderr => Some(Box::new(io::stderr())),
            Sink::File(path) => Some(Box::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        };
        Ok(AccessLog {
            out: out.map(|w| BufWriter::with_capacity(64 * 1024, w)),
        })
    }

    /// Whether lines are written at all.
    pub fn is_on(&self) -> bool {
        self.out.is_some()
    }

    /// Buffers the line for `entry` (no allocation: it is formatted straight into the buffer).
    pub fn record(&mut self, entry: &Entry) {
        if let Some(out) = self.out.as_mut() {
            let _ = write_line(out, SystemTime::now(), entry);
        }
    }

    /// Writes buffered lines out; called once per event-loop turn. A failed write drops them
    /// (the access log must never stop traffic).
    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if !out.buffer().is_empty() {
                if let Err(e) = out.flush() {
                    log::warn!("access log: write failed: {e}");
                }
            }
        }
    }
}

/// Writes the line for `entry` at `now`, newline included.
///
/// # Errors
/// As `out`'s writes.
pub fn write_line(out: &mut impl Write, now: SystemTime, e: &Entry) -> io::Result<()> {
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
    }
    writeln!(out, " reason={}", Underscored(e.reason))
}

/// The line for `entry` at `now`, as a string.
pub fn format_line(now: SystemTime, e: &Entry) -> String {
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
        assert!(format_line(at, &e)
            .ends_with("target=- duration_ms=3 bytes_up=32 bytes_down=48 reason=no_target\n"));
    }
}
