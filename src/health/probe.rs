//! One health check in flight: a non-blocking state machine driven by the prober's poll.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::event::{Event, Source};
use mio::net::{TcpStream, UdpSocket};

use crate::config::steps::{CheckStep, MAX_EXPECT_BYTES};
use crate::config::HealthCheckKind;
use crate::net::describe;
use crate::tls::io::{flush, handshake, read_plain, write_plain, Handshake, UncleanEnd};

/// Largest HTTP response head read before giving up on finding the status line.
const MAX_STATUS_LINE: usize = 4096;

/// Result of one finished check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed, with a short reason such as `connection refused` or `HTTP status 503`.
    Fail(String),
}

/// Largest UDP reply examined, bytes.
const MAX_UDP_REPLY: usize = 65536;

#[derive(Debug)]
enum Phase {
    Connecting,
    /// `target_tls`: the TLS handshake (its failure is the check's, with the reason).
    Handshake,
    /// Running the steps: the PROXY header and HTTP request as sends, then `steps:`.
    Steps {
        index: usize,
        /// Bytes of the current `send` written so far.
        written: usize,
        /// Bytes received and not yet matched by an `expect`.
        received: Vec<u8>,
    },
    /// HTTP: reading the status line.
    Status {
        head: Vec<u8>,
    },
}

/// A TCP, HTTP or send/expect check in flight.
#[derive(Debug)]
struct TcpCheck {
    stream: TcpStream,
    /// What to do once connected: a PROXY header and an HTTP request as sends, `steps:`.
    steps: Vec<CheckStep>,
    /// Whether an HTTP status line is awaited after the steps (else they passing is a pass).
    http: bool,
    /// `target_tls`: the session, set up before the connect.
    tls: Option<Box<rustls::Connection>>,
    /// `target_tls`: the PROXY header, sent in the clear before the handshake.
    preface: Vec<u8>,
    phase: Phase,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpCheck),
    Udp { socket: UdpSocket, expect: Vec<u8> },
}

/// A check of one target: a TCP connect; for HTTP, `GET path` and the status line; for
/// send/expect checks, their steps; for UDP, a datagram out and one back.
#[derive(Debug)]
pub(crate) struct Probe {
    socket: Socket,
}

impl Probe {
    /// Starts a check of `addr`: a non-blocking connect (TCP, HTTP, steps) or the probe
    /// datagram (UDP), each preceded by a PROXY protocol header when `proxy` says which (v2
    /// LOCAL or v1 UNKNOWN, [`crate::proxy_protocol::local_header`]; a TCP check then passes
    /// once the header is sent). With `tls` (the group's `target_tls`) a TCP check passes once
    /// the TLS handshake does, and HTTP and steps go over TLS. Register [`Probe::source`] for
    /// readable and writable events and feed them to [`Probe::handle_event`].
    ///
    /// # Errors
    /// When the socket cannot be created, or the connect or send fails at once (e.g. no route).
    pub(crate) fn start(
        addr: SocketAddr,
        kind: &HealthCheckKind,
        proxy: Option<crate::proxy_protocol::Version>,
        tls: Option<&crate::config::TargetTls>,
    ) -> io::Result<Probe> {
        let header = proxy.map_or(Vec::new(), crate::proxy_protocol::local_header);
        if let HealthCheckKind::Udp { send, expect } = kind {
            let local = match addr {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
            };
            let socket = UdpSocket::bind(local)?;
            socket.connect(addr)?;
            socket.send(&[&header[..], send].concat())?;
            return Ok(Probe {
                socket: Socket::Udp {
                    socket,
                    expect: expect.clone(),
                },
            });
        }
        let stream = TcpStream::connect(addr)?;
        let mut steps = Vec::new();
        // With TLS the PROXY header goes first in the clear, then the handshake.
        let preface = match tls {
            Some(_) => header,
            None if header.is_empty() => Vec::new(),
            None => {
                steps.push(CheckStep::Send(header));
                Vec::new()
            }
        };
        let http = match kind {
            HealthCheckKind::Tcp | HealthCheckKind::Udp { .. } => false,
            HealthCheckKind::Steps { steps: s } => {
                steps.extend(s.iter().cloned());
                false
            }
            HealthCheckKind::Http { path } => {
                steps.push(CheckStep::Send(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ballast-health-check\r\n\
                         Accept: */*\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                ));
                true
            }
        };
        let tls = match tls {
            Some(t) => Some(Box::new(t.session(addr.ip()).map_err(io::Error::other)?)),
            None => None,
        };
        Ok(Probe {
            socket: Socket::Tcp(TcpCheck {
                stream,
                steps,
                http,
                preface,
                tls,
                phase: Phase::Connecting,
            }),
        })
    }

    /// The socket to register with the poll.
    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match &mut self.socket {
            Socket::Tcp(c) => &mut c.stream,
            Socket::Udp { socket, .. } => socket,
        }
    }

    /// Advances the check on a readiness event; returns the outcome once it is known.
    pub(crate) fn handle_event(&mut self, event: &Event) -> Option<Outcome> {
        match self.advance(event) {
            Ok(outcome) => outcome,
            Err(e) => Some(Outcome::Fail(describe(&e))),
        }
    }

    /// What the check is waiting for, for the message when it times out: an `expect` step's
    /// pattern and what was received instead.
    pub(crate) fn waiting_for(&self) -> Option<String> {
        let Socket::Tcp(check) = &self.socket else {
            return None;
        };
        let Phase::Steps {
            index, received, ..
        } = &check.phase
        else {
            return None;
        };
        match check.steps.get(*index) {
            Some(CheckStep::Expect(pattern, _)) if received.is_empty() => {
                Some(format!("waiting for {pattern}"))
            }
            Some(CheckStep::Expect(pattern, _)) => Some(format!(
                "waiting for {pattern}; received {}",
                preview(received)
            )),
            _ => None,
        }
    }

    fn advance(&mut self, event: &Event) -> io::Result<Option<Outcome>> {
        match &mut self.socket {
            Socket::Udp { socket, expect } => advance_udp(socket, expect),
            Socket::Tcp(check) => check.advance(event),
        }
    }
}

/// Reads the reply to a UDP probe.
fn advance_udp(socket: &UdpSocket, expect: &[u8]) -> io::Result<Option<Outcome>> {
    let mut reply = vec![0u8; MAX_UDP_REPLY];
    loop {
        return match socket.recv(&mut reply) {
            Ok(n) if expect.is_empty() || contains(&reply[..n], expect) => Ok(Some(Outcome::Pass)),
            Ok(n) => Ok(Some(Outcome::Fail(format!(
                "the {n}-byte reply lacks the expected bytes"
            )))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Some(Outcome::Fail(
                "connection refused (ICMP port unreachable)".into(),
            ))),
            Err(e) => Err(e),
        };
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The start of `bytes` as text for a failure message (at most 80 characters, line breaks
/// shown as `\r\n`).
fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(80).collect();
    let more = if text.chars().count() > 80 { "…" } else { "" };
    format!("`{}{more}`", cut.escape_debug())
}

/// Writes plaintext to `stream` (through `tls` when the check has it).
fn send(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::Connection>,
    bytes: &[u8],
) -> io::Result<usize> {
    match tls {
        Some(t) => write_plain(t, stream, bytes),
        None => stream.write(bytes),
    }
}

/// Reads plaintext from `stream` (through `tls` when the check has it, first sending what it
/// holds).
fn recv(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::Connection>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match tls {
        Some(t) => {
            flush(t, stream)?;
            read_plain(t, stream, buf, UncleanEnd::Eof)
        }
        None => stream.read(buf),
    }
}

impl TcpCheck {
    /// Reads plaintext (through TLS when the check has it).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv(&mut self.stream, self.tls.as_deref_mut(), buf)
    }

    /// Advances the check: connect, handshake, steps, status line.
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
            // A fresh socket's send buffer takes a PROXY header whole.
            if !self.preface.is_empty() && self.stream.write(&self.preface)? < self.preface.len() {
                return Ok(Some(Outcome::Fail("PROXY header cut short".into())));
            }
            self.phase = Phase::Handshake;
        }
        if let Phase::Handshake = self.phase {
            if let Some(t) = self.tls.as_deref_mut() {
                match handshake(t, &mut self.stream) {
                    Handshake::Wait => return Ok(None),
                    Handshake::Failed(e) => return Ok(Some(Outcome::Fail(e.to_string()))),
                    Handshake::Done => {}
                }
            }
            self.phase = Phase::Steps {
                index: 0,
                written: 0,
                received: Vec::new(),
            };
        }
        if let Some(outcome) = self.run_steps()? {
            return Ok(Some(outcome));
        }
        if let Phase::Status { .. } = self.phase {
            return self.read_status();
        }
        Ok(None)
    }

    /// Runs the steps as far as the socket allows; `Some` once one failed or (without HTTP)
    /// all passed. Moves to `Status` after the last one for HTTP checks.
    fn run_steps(&mut self) -> io::Result<Option<Outcome>> {
        let TcpCheck {
            stream,
            steps,
            http,
            tls,
            phase,
            ..
        } = self;
        let Phase::Steps {
            index,
            written,
            received,
        } = phase
        else {
            return Ok(None);
        };
        let mut chunk = [0u8; 2048];
        while let Some(step) = steps.get(*index) {
            match step {
                CheckStep::Send(bytes) => {
                    match send(stream, tls.as_deref_mut(), &bytes[*written..]) {
                        Ok(n) => *written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                    if *written == bytes.len() {
                        (*index, *written) = (*index + 1, 0);
                    }
                }
                CheckStep::Expect(pattern, unless) => {
                    let found = pattern.find_end(received);
                    if let Some(u) = unless {
                        if let Some(bad) = u.find_end(received) {
                            if found.is_none_or(|good| bad < good) {
                                return Ok(Some(Outcome::Fail(format!(
                                    "got {u} instead of {pattern}"
                                ))));
                            }
                        }
                    }
                    if let Some(end) = found {
                        received.drain(..end);
                        *index += 1;
                        continue;
                    }
                    if received.len() >= MAX_EXPECT_BYTES {
                        return Ok(Some(Outcome::Fail(format!(
                            "no {pattern} in the first {MAX_EXPECT_BYTES} bytes: {}",
                            preview(received)
                        ))));
                    }
                    match recv(stream, tls.as_deref_mut(), &mut chunk) {
                        Ok(0) if received.is_empty() => {
                            return Ok(Some(Outcome::Fail(format!("closed before {pattern}"))))
                        }
                        Ok(0) => {
                            return Ok(Some(Outcome::Fail(format!(
                                "expected {pattern}, got {}",
                                preview(received)
                            ))))
                        }
                        Ok(n) => received.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if *http {
            *phase = Phase::Status { head: Vec::new() };
            return Ok(None);
        }
        Ok(Some(Outcome::Pass))
    }

    /// Reads the HTTP status line.
    fn read_status(&mut self) -> io::Result<Option<Outcome>> {
        let mut chunk = [0u8; 1024];
        loop {
            if let Phase::Status { head } = &self.phase {
                if let Some(outcome) = parse_status(head) {
                    return Ok(Some(outcome));
                }
                if head.len() >= MAX_STATUS_LINE {
                    return Ok(Some(Outcome::Fail("no HTTP status line".into())));
                }
            }
            let got = self.recv(&mut chunk);
            let Phase::Status { head } = &mut self.phase else {
                return Ok(None);
            };
            match got {
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
