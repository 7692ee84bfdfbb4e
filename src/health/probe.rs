//! One health check in flight: a non-blocking state machine driven by the prober's poll.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::event::{Event, Source};
use mio::net::{TcpStream, UdpSocket};

use crate::config::HealthCheckKind;
use crate::net::describe;

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

/// Largest UDP reply examined, bytes.
const MAX_UDP_REPLY: usize = 65536;

#[derive(Debug)]
enum Phase {
    Connecting,
    /// `target_tls`: the TLS handshake (its failure is the check's, with the reason).
    Handshake,
    Sending {
        written: usize,
    },
    Reading {
        head: Vec<u8>,
    },
}

#[derive(Debug)]
enum Socket {
    Tcp {
        stream: TcpStream,
        /// Bytes to send once connected (a PROXY header, an HTTP request), if any.
        request: Option<Vec<u8>>,
        /// Whether an HTTP status line is awaited after the request (else sent is passed).
        http: bool,
        /// `target_tls`: the session, set up before the connect.
        tls: Option<Box<rustls::Connection>>,
        /// `target_tls`: the PROXY header, sent in the clear before the handshake.
        preface: Vec<u8>,
        phase: Phase,
    },
    Udp {
        socket: UdpSocket,
        expect: Vec<u8>,
    },
}

/// A check of one target: a TCP connect; for HTTP, `GET path` and the status line; for UDP, a
/// datagram out and one back.
#[derive(Debug)]
pub struct Probe {
    socket: Socket,
}

impl Probe {
    /// Starts a check of `addr`: a non-blocking connect (TCP, HTTP) or the probe datagram
    /// (UDP), each preceded by a PROXY protocol header when `proxy` says which (v2 LOCAL or
    /// v1 UNKNOWN, [`crate::proxy_protocol::local_header`]; a TCP check then passes once the
    /// header is sent). With `tls` (the group's `target_tls`) a TCP check passes once the TLS
    /// handshake does, and an HTTP check is HTTPS. Register [`Probe::source`] for readable and writable events and feed
    /// them to [`Probe::handle_event`].
    ///
    /// # Errors
    /// When the socket cannot be created, or the connect or send fails at once (e.g. no route).
    pub fn start(
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
        // With TLS the PROXY header goes first in the clear, then the handshake.
        let (preface, mut request) = match tls {
            Some(_) => (header, Vec::new()),
            None => (Vec::new(), header),
        };
        let http = match kind {
            HealthCheckKind::Tcp | HealthCheckKind::Udp { .. } => false,
            HealthCheckKind::Http { path } => {
                request.extend_from_slice(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ballast-health-check\r\n\
                         Accept: */*\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
                true
            }
        };
        let tls = match tls {
            Some(t) => Some(Box::new(t.session(addr.ip()).map_err(io::Error::other)?)),
            None => None,
        };
        Ok(Probe {
            socket: Socket::Tcp {
                stream,
                request: (!request.is_empty()).then_some(request),
                http,
                preface,
                tls,
                phase: Phase::Connecting,
            },
        })
    }

    /// The socket to register with the poll.
    pub fn source(&mut self) -> &mut dyn Source {
        match &mut self.socket {
            Socket::Tcp { stream, .. } => stream,
            Socket::Udp { socket, .. } => socket,
        }
    }

    /// Advances the check on a readiness event; returns the outcome once it is known.
    pub fn handle_event(&mut self, event: &Event) -> Option<Outcome> {
        match self.advance(event) {
            Ok(outcome) => outcome,
            Err(e) => Some(Outcome::Fail(describe(&e))),
        }
    }

    fn advance(&mut self, event: &Event) -> io::Result<Option<Outcome>> {
        match &mut self.socket {
            Socket::Udp { socket, expect } => advance_udp(socket, expect),
            Socket::Tcp {
                stream,
                request,
                http,
                tls,
                preface,
                phase,
            } => {
                let tls = tls.as_deref_mut().map(|t| (t, &preface[..]));
                advance_tcp(stream, request.as_deref(), *http, tls, phase, event)
            }
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

/// Advances a TCP or HTTP check.
fn advance_tcp(
    stream: &mut TcpStream,
    request: Option<&[u8]>,
    http: bool,
    tls: Option<(&mut rustls::Connection, &[u8])>,
    phase: &mut Phase,
    event: &Event,
) -> io::Result<Option<Outcome>> {
    use crate::tls::io::{flush, handshake, read_plain, write_plain, Handshake};
    let (mut tls, preface) = match tls {
        Some((t, p)) => (Some(t), p),
        None => (None, &[][..]),
    };
    {
        if let Phase::Connecting = phase {
            if let Some(e) = stream.take_error()? {
                return Err(e);
            }
            match stream.peer_addr() {
                Ok(_) => {}
                // Spurious wake-up: the connect is still in progress.
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !event.is_error() => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
            // A fresh socket's send buffer takes a PROXY header whole.
            if !preface.is_empty() && stream.write(preface)? < preface.len() {
                return Ok(Some(Outcome::Fail("PROXY header cut short".into())));
            }
            *phase = Phase::Handshake;
        }
        if let Phase::Handshake = phase {
            if let Some(t) = tls.as_deref_mut() {
                match handshake(t, stream) {
                    Handshake::Wait => return Ok(None),
                    Handshake::Failed(e) => return Ok(Some(Outcome::Fail(e.to_string()))),
                    Handshake::Done => {}
                }
            }
            if request.is_none() {
                return Ok(Some(Outcome::Pass));
            }
            *phase = Phase::Sending { written: 0 };
        }
        if let Phase::Sending { written } = phase {
            let request = request.unwrap_or_default();
            while *written < request.len() {
                let rest = &request[*written..];
                let sent = match tls.as_deref_mut() {
                    Some(t) => write_plain(t, stream, rest),
                    None => stream.write(rest),
                };
                match sent {
                    Ok(n) => *written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !http {
                return Ok(Some(Outcome::Pass)); // a TCP check with a PROXY header
            }
            *phase = Phase::Reading { head: Vec::new() };
        }
        if let Phase::Reading { head } = phase {
            if let Some(t) = tls.as_deref_mut() {
                match flush(t, stream) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            let mut chunk = [0u8; 1024];
            loop {
                if let Some(outcome) = parse_status(head) {
                    return Ok(Some(outcome));
                }
                if head.len() >= MAX_STATUS_LINE {
                    return Ok(Some(Outcome::Fail("no HTTP status line".into())));
                }
                let got = match tls.as_deref_mut() {
                    Some(t) => read_plain(t, stream, &mut chunk),
                    None => stream.read(&mut chunk),
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
