//! One health check in flight: a non-blocking state machine driven by the prober's poll.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::event::Event;
use mio::net::TcpStream;

use crate::config::HealthCheckKind;

/// Largest HTTP response head read before giving up on finding the status line.
const MAX_STATUS_LINE: usize = 4096;

/// Result of one finished check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed, with a short reason such as `connection refused` or `HTTP status 503`.
    Fail(String),
}

#[derive(Debug)]
enum Phase {
    Connecting,
    Sending { written: usize },
    Reading { head: Vec<u8> },
}

/// A check of one target: connect, and for HTTP send `GET path` and read the status line.
#[derive(Debug)]
pub struct Probe {
    stream: TcpStream,
    request: Option<Vec<u8>>,
    phase: Phase,
}

impl Probe {
    /// Starts a non-blocking connect to `addr`. Register [`Probe::stream`] for readable and
    /// writable events and feed them to [`Probe::handle_event`].
    ///
    /// # Errors
    /// When the socket cannot be created or the connect fails at once (e.g. no route).
    pub fn start(addr: SocketAddr, kind: &HealthCheckKind) -> io::Result<Probe> {
        let stream = TcpStream::connect(addr)?;
        let request = match kind {
            HealthCheckKind::Tcp => None,
            HealthCheckKind::Http { path } => Some(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ballast-health-check\r\n\
                     Accept: */*\r\nConnection: close\r\n\r\n"
                )
                .into_bytes(),
            ),
        };
        Ok(Probe {
            stream,
            request,
            phase: Phase::Connecting,
        })
    }

    /// The socket to register with the poll.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Advances the check on a readiness event; returns the outcome once it is known.
    pub fn handle_event(&mut self, event: &Event) -> Option<Outcome> {
        match self.advance(event) {
            Ok(outcome) => outcome,
            Err(e) => Some(Outcome::Fail(describe(&e))),
        }
    }

    fn advance(&mut self, event: &Event) -> io::Result<Option<Outcome>> {
        if let Phase::Connecting = self.phase {
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            match self.stream.peer_addr() {
                Ok(_) => {}
                // Spurious wake-up: the connect is still in progress.
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !event.is_error() => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
            if self.request.is_none() {
                return Ok(Some(Outcome::Pass));
            }
            self.phase = Phase::Sending { written: 0 };
        }
        if let Phase::Sending { written } = &mut self.phase {
            let request = self.request.as_deref().unwrap_or_default();
            while *written < request.len() {
                match self.stream.write(&request[*written..]) {
                    Ok(n) => *written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.phase = Phase::Reading { head: Vec::new() };
        }
        if let Phase::Reading { head } = &mut self.phase {
            let mut chunk = [0u8; 1024];
            loop {
                if let Some(outcome) = parse_status(head) {
                    return Ok(Some(outcome));
                }
                if head.len() >= MAX_STATUS_LINE {
                    return Ok(Some(Outcome::Fail("no HTTP status line".into())));
                }
                match self.stream.read(&mut chunk) {
                    Ok(0) => {
                        return Ok(Some(Outcome::Fail(
                            "connection closed before the HTTP status line".into(),
                        )))
                    }
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    }
}

/// Reads `HTTP/1.x NNN ...` from the start of `head`: 2xx and 3xx pass. `None` until a whole
/// line has arrived.
fn parse_status(head: &[u8]) -> Option<Outcome> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&head[..end]);
    let mut parts = line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    Some(match status {
        Some(200..=399) => Outcome::Pass,
        Some(code) => Outcome::Fail(format!("HTTP status {code}")),
        None => Outcome::Fail(format!("bad HTTP status line `{}`", line.trim())),
    })
}

/// A short lower-case reason for a failed check: `connection refused`, `timed out`, ….
pub fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(Outcome::Pass));
        assert_eq!(
            parse_status(b"HTTP/1.0 302 Found\r\nLoc"),
            Some(Outcome::Pass)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(Outcome::Fail("HTTP status 503".into()))
        );
        assert_eq!(parse_status(b"HTTP/1.1 200 O"), None);
        assert!(matches!(
            parse_status(b"SSH-2.0\r\n"),
            Some(Outcome::Fail(_))
        ));
    }
}
