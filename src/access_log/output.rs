//! Where the access log's writer thread writes: standard error, a file, or a syslog daemon.
//!
//! A syslog daemon is reached without ever waiting on it for long: a datagram socket never
//! blocks (a full queue drops the line, counted); a stream socket (rsyslog's `imuxsock` can
//! be either) is connected without blocking (a daemon whose listen backlog is full refuses at
//! once, rather than holding start or a reconnect) and given [`SYSLOG_WRITE`] per write. A
//! stream write that fails or times out may have sent part of a message, so the connection is
//! given up and made again ([`Output::broken_by`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::time::Duration;

use super::Sink;
use crate::config::{SyslogAddress, SyslogTarget};

/// Longest write to a syslog daemon over a stream socket.
pub(super) const SYSLOG_WRITE: Duration = Duration::from_secs(1);

type Logger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter5424>;

/// Where the writer thread writes.
pub(super) enum Output {
    Stderr,
    File(File),
    Syslog(Box<Logger>),
}

impl Output {
    /// Opens `sink`; `None` when the access log is off.
    ///
    /// # Errors
    /// When the file cannot be opened for appending, or the syslog daemon cannot be reached
    /// (no socket, nobody listening, a full listen backlog, an unknown facility).
    pub(super) fn open(sink: &Sink) -> io::Result<Option<Output>> {
        Ok(match sink {
            Sink::Off => None,
            Sink::Stderr => Some(Output::Stderr),
            Sink::File(path) => Some(Output::File(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            Sink::Syslog(target) => Some(Output::Syslog(Box::new(syslog_logger(target).map_err(
                |e| io::Error::new(e.kind(), format!("syslog {}: {e}", target.address)),
            )?))),
        })
    }

    /// Whether the write failure `e` leaves this output unusable until it is opened again:
    /// any failure on a syslog stream (part of a message may have gone out, so the daemon
    /// would read the next one as its tail), and a syslog datagram socket whose daemon went
    /// away (a full queue, `WouldBlock`, is only a dropped line).
    pub(super) fn broken_by(&self, e: &io::Error) -> bool {
        match self {
            Output::Syslog(logger) => match logger.backend {
                syslog::LoggerBackend::Unix(_) | syslog::LoggerBackend::Udp(..) => {
                    e.kind() != io::ErrorKind::WouldBlock
                }
                syslog::LoggerBackend::UnixStream(_) | syslog::LoggerBackend::Tcp(_) => true,
            },
            Output::Stderr | Output::File(_) => false,
        }
    }

    /// Writes the buffer's lines; on failure, how many of them were lost, and why. A syslog
    /// daemon is given lines only until `deadline` (a stop's: a daemon that reads slowly
    /// would otherwise hold it a write timeout per line); the rest are lost.
    pub(super) fn write_lines(
        &mut self,
        bytes: &[u8],
        deadline: Option<std::time::Instant>,
    ) -> Result<(), (usize, io::Error)> {
        let lines = || bytes.iter().filter(|&&b| b == b'\n').count();
        match self {
            Output::Stderr => io::stderr()
                .lock()
                .write_all(bytes)
                .map_err(|e| (lines(), e)),
            Output::File(f) => f.write_all(bytes).map_err(|e| (lines(), e)),
            // One RFC 5424 message per line; the first failure loses the rest of the buffer,
            // counted.
            Output::Syslog(logger) => {
                let all: Vec<&[u8]> = bytes
                    .split(|&b| b == b'\n')
                    .filter(|line| !line.is_empty())
                    .collect();
                for (i, line) in all.iter().enumerate() {
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        let e = io::Error::new(
                            io::ErrorKind::TimedOut,
                            "stopping: the syslog daemon takes lines too slowly",
                        );
                        return Err((all.len() - i, e));
                    }
                    let text = String::from_utf8_lossy(line);
                    if let Err(e) = logger.info((0u32, std::collections::BTreeMap::new(), text)) {
                        let e = match e {
                            syslog::Error::Io(e) | syslog::Error::Write(e) => e,
                            other => io::Error::other(other.to_string()),
                        };
                        return Err((all.len() - i, e));
                    }
                }
                Ok(())
            }
        }
    }
}

/// A syslog client for `target`: RFC 5424 over its UNIX socket (datagram, or stream when
/// the daemon listens on one) or UDP.
fn syslog_logger(target: &SyslogTarget) -> io::Result<Logger> {
    let formatter = syslog::Formatter5424 {
        facility: target
            .facility
            .parse()
            .map_err(|_| io::Error::other(format!("unknown facility {}", target.facility)))?,
        hostname: syslog::Formatter5424::default().hostname,
        process: target.tag.clone(),
        pid: std::process::id(),
    };
    let backend = match &target.address {
        SyslogAddress::Unix(path) => unix_backend(path)?,
        SyslogAddress::Udp(server) => {
            let local: SocketAddr = if server.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = std::net::UdpSocket::bind(local)?;
            socket.set_nonblocking(true)?;
            syslog::LoggerBackend::Udp(socket, *server)
        }
    };
    Ok(syslog::Logger { formatter, backend })
}

/// The daemon's UNIX socket, datagram first (as `/dev/log` is), else stream.
pub(super) fn unix_backend(path: &Path) -> io::Result<syslog::LoggerBackend> {
    let datagram = UnixDatagram::unbound()?;
    match datagram.connect(path) {
        Ok(()) => {
            datagram.set_nonblocking(true)?;
            return Ok(syslog::LoggerBackend::Unix(datagram));
        }
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {}
        Err(e) => return Err(e),
    }
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    // Non-blocking connect: a UNIX stream socket connects at once or, its backlog full,
    // answers EAGAIN (a blocking connect would wait for the daemon to accept, for ever).
    socket.set_nonblocking(true)?;
    socket
        .connect(&socket2::SockAddr::unix(path)?)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    e.kind(),
                    "the daemon is not accepting connections (its listen backlog is full)",
                )
            } else {
                e
            }
        })?;
    socket.set_nonblocking(false)?;
    socket.set_write_timeout(Some(SYSLOG_WRITE))?;
    Ok(syslog::LoggerBackend::UnixStream(io::BufWriter::new(
        UnixStream::from(socket),
    )))
}
