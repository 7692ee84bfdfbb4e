//! The access log: one line per finished TCP connection or UDP session.
//!
//! ```text
//! 2026-11-21T01:20:00.123Z tcp listener=pg client=127.0.0.1:50432 target=127.0.0.1:5432 duration_ms=1520 bytes_up=310 bytes_down=18022 retries=1 connect_ms=0.412 reason=done
//! 2026-11-21T01:20:01.004Z udp listener=dns client=127.0.0.1:41000 target=127.0.0.1:5301 duration_ms=1 bytes_up=32 bytes_down=48 datagrams_up=1 datagrams_down=1 reason=max_responses
//! ```
//!
//! Fields are `key=value` (logfmt), in this order; `target=-` when no target was reached.
//! `bytes_up` go client → target, `bytes_down` target → client. TCP lines carry `retries`
//! (connect attempts after the first: targets that refused or timed out before one accepted,
//! or before giving up) and `connect_ms` (from the first attempt's start until a target
//! accepted, µs precision; `-` when none did). `reason` is why it ended:
//! `done` (both sides finished), `client_reset` / `target_reset` (that side aborted first; the
//! other side was reset), `idle`, `max_responses`, `no target`, `disabled`, `listener removed`,
//! `shutdown timeout`, `stopping`, `worker_restart`, `node_drained`, `preamble_timeout`, or a
//! local error (`too many open files`, …).
//!
//! Each worker formats its lines into a buffer (no allocation per line) and, once per
//! event-loop turn, hands the buffer to the **writer thread** over a bounded queue without
//! waiting ([`AccessLog::flush`]). Only the writer thread touches the file, in one `write` of
//! whole lines per buffer (the file is opened for appending), so workers never interleave
//! within a line and a slow disk or a full pipe never stalls forwarding: when the queue is full
//! the buffer's lines are dropped and counted ([`DROPPED_LINES`], `/metrics`), and the writer
//! reports drops in the log at most every 10 s. Buffers go back to the workers for reuse.
//!
//! [`Writer::reopen`] (SIGUSR1) makes the writer close and reopen the file by its path: the
//! logrotate way (rename the file, then signal; or `copytruncate` without a signal).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// Buffers of lines waiting for the writer thread, at most (each one worker's lines of one
/// event-loop turn). Past this, lines are dropped rather than the worker made to wait.
pub(crate) const QUEUE: usize = 1024;
/// Access-log lines dropped since start because the writer could not keep up (or its writes
/// failed). Process-wide, as the access log is.
pub(crate) static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);
/// How often the writer reports dropped lines, at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How often the writer tries to reach a syslog daemon that went away, at most.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// Longest write to a syslog daemon over a stream socket.
const SYSLOG_WRITE: Duration = Duration::from_secs(1);

pub(crate) use crate::config::AccessLogSink as Sink;
use crate::config::{AccessLogConfig, LogFormat, SyslogAddress};

mod format;

/// One finished connection or session.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
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
    /// TCP: connect attempts after the first (0 when the first target accepted).
    pub retries: u32,
    /// TCP: from the first connect attempt's start until a target accepted (`None` when
    /// none did, and for UDP).
    pub connect: Option<Duration>,
    /// Why it ended.
    pub reason: &'a str,
}

/// One worker's side of the access log: a buffer of formatted lines and the writer's queue.
pub(crate) struct AccessLog {
    /// `None` when the access log is off.
    queue: Option<Queue>,
    buf: Vec<u8>,
    format: Arc<LogFormat>,
    /// Only these listeners' lines (`access_log.listeners`); `None` for all.
    listeners: Option<Arc<[String]>>,
}

struct Queue {
    lines: Sender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessLog {{ on: {} }}", self.queue.is_some())
    }
}

impl AccessLog {
    /// An access log that writes nothing.
    pub(crate) fn off() -> AccessLog {
        AccessLog {
            queue: None,
            buf: Vec::new(),
            format: Arc::new(LogFormat::Logfmt),
            listeners: None,
        }
    }

    /// Buffers the line for `entry` (formatted straight into the buffer), unless its
    /// listener is not one the log is for.
    pub(crate) fn record(&mut self, entry: &Entry) {
        if self.queue.is_none() {
            return;
        }
        if let Some(only) = &self.listeners {
            if !only.iter().any(|l| l == entry.listener) {
                return;
            }
        }
        let _ = format::write_entry(&mut self.buf, SystemTime::now(), entry, &self.format);
    }

    /// Hands the buffered lines to the writer thread; called once per event-loop turn. Never
    /// waits: with the writer's queue full the lines are dropped and counted.
    pub(crate) fn flush(&mut self) {
        let Some(queue) = &self.queue else {
            return;
        };
        if self.buf.is_empty() {
            return;
        }
        let next = queue.spare.try_recv().unwrap_or_default();
        let lines = std::mem::replace(&mut self.buf, next);
        match queue.lines.try_send(lines) {
            Ok(()) => {}
            Err(TrySendError::Full(mut lines) | TrySendError::Disconnected(mut lines)) => {
                let n = lines.iter().filter(|&&b| b == b'\n').count();
                DROPPED_LINES.fetch_add(n as u64, Ordering::Relaxed);
                lines.clear();
                self.buf = lines;
            }
        }
    }
}

/// The access log's writer thread (none when the access log is off).
pub(crate) struct Writer {
    sink: Sink,
    format: Arc<LogFormat>,
    listeners: Option<Arc<[String]>>,
    lines: Option<Sender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    reopen: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer {{ sink: {:?} }}", self.sink)
    }
}

impl Writer {
    /// Opens `config`'s sink and starts the writer thread.
    ///
    /// # Errors
    /// When the file cannot be opened for appending, the syslog socket cannot be reached, or
    /// the thread cannot start.
    pub(crate) fn start(config: &AccessLogConfig) -> io::Result<Writer> {
        let sink = &config.sink;
        let (lines_tx, lines) = bounded::<Vec<u8>>(QUEUE);
        let (spare_tx, spare) = bounded::<Vec<u8>>(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            sink: sink.clone(),
            format: Arc::new(config.format.clone()),
            listeners: config.listeners.as_deref().map(Arc::from),
            lines: None,
            spare,
            reopen: reopen.clone(),
            thread: None,
        };
        let Some(out) = Output::open(sink)? else {
            return Ok(writer);
        };
        let sink_for_thread = sink.clone();
        writer.thread = Some(
            std::thread::Builder::new()
                .name("ballast-access-log".into())
                .spawn(move || write_loop(out, &sink_for_thread, &lines, &spare_tx, &reopen))?,
        );
        writer.lines = Some(lines_tx);
        Ok(writer)
    }

    /// A worker's side of this access log.
    pub(crate) fn handle(&self) -> AccessLog {
        AccessLog {
            queue: self.lines.as_ref().map(|lines| Queue {
                lines: lines.clone(),
                spare: self.spare.clone(),
            }),
            buf: Vec::new(),
            format: self.format.clone(),
            listeners: self.listeners.clone(),
        }
    }

    /// Asks the writer to reopen the file by its path before its next write (SIGUSR1).
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // Wake the writer if it is idle; with the queue full it reopens at its next buffer.
        if let Some(lines) = &self.lines {
            let _ = lines.try_send(Vec::new());
        }
    }

    /// Writes what the workers handed over, then stops the thread. Call after the workers
    /// have ended.
    pub(crate) fn stop(mut self) {
        self.lines = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the writer thread writes.
enum Output {
    Stderr,
    File(File),
    Syslog(Box<syslog::Logger<syslog::LoggerBackend, syslog::Formatter5424>>),
}

impl Output {
    fn open(sink: &Sink) -> io::Result<Option<Output>> {
        Ok(match sink {
            Sink::Off => None,
            Sink::Stderr => Some(Output::Stderr),
            Sink::File(path) => Some(Output::File(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            Sink::Syslog(target) => Some(Output::Syslog(Box::new(syslog_logger(target)?))),
        })
    }

    /// Writes the buffer's lines; on failure, how many of them were lost, and why.
    fn write_lines(&mut self, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
        let lines = || bytes.iter().filter(|&&b| b == b'\n').count();
        match self {
            Output::Stderr => io::stderr()
                .lock()
                .write_all(bytes)
                .map_err(|e| (lines(), e)),
            Output::File(f) => f.write_all(bytes).map_err(|e| (lines(), e)),
            // One RFC 5424 message per line. The socket never blocks (a daemon that stops
            // reading must not hold the writer, nor the stop that waits for it): the first
            // failure loses the rest of the buffer, counted.
            Output::Syslog(logger) => {
                let all: Vec<&[u8]> = bytes
                    .split(|&b| b == b'\n')
                    .filter(|line| !line.is_empty())
                    .collect();
                for (i, line) in all.iter().enumerate() {
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

/// A syslog client for `target`: RFC 5424 over its UNIX socket or UDP.
fn syslog_logger(
    target: &crate::config::SyslogTarget,
) -> io::Result<syslog::Logger<syslog::LoggerBackend, syslog::Formatter5424>> {
    let formatter = syslog::Formatter5424 {
        facility: target
            .facility
            .parse()
            .map_err(|_| io::Error::other(format!("unknown facility {}", target.facility)))?,
        hostname: syslog::Formatter5424::default().hostname,
        process: target.tag.clone(),
        pid: std::process::id(),
    };
    let connected = match &target.address {
        SyslogAddress::Unix(path) => syslog::unix_custom(formatter, path),
        SyslogAddress::Udp(server) => {
            let local: SocketAddr = if server.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            syslog::udp(formatter, local, *server)
        }
    };
    let logger =
        connected.map_err(|e| io::Error::other(format!("syslog {}: {e}", target.address)))?;
    // Never block on the daemon: datagrams are dropped (and counted) when its queue is full;
    // a stream is given a second per write.
    match &logger.backend {
        syslog::LoggerBackend::Unix(s) => s.set_nonblocking(true)?,
        syslog::LoggerBackend::Udp(s, _) => s.set_nonblocking(true)?,
        syslog::LoggerBackend::UnixStream(s) => {
            s.get_ref().set_write_timeout(Some(SYSLOG_WRITE))?
        }
        syslog::LoggerBackend::Tcp(s) => s.get_ref().set_write_timeout(Some(SYSLOG_WRITE))?,
    }
    Ok(logger)
}

/// The writer thread: writes each buffer, reopens the file when asked, reports drops. Ends
/// when every worker's sender is gone.
fn write_loop(
    mut out: Output,
    sink: &Sink,
    lines: &Receiver<Vec<u8>>,
    spare: &Sender<Vec<u8>>,
    reopen: &AtomicBool,
) {
    let mut reported = 0u64;
    let mut last_report: Option<Instant> = None;
    let mut write_errors = 0u64;
    // A syslog daemon that went away (restarted, its socket replaced): connect again, at most
    // once per RECONNECT_EVERY, instead of failing every line until a SIGUSR1.
    let mut reconnect_at: Option<Instant> = None;
    for mut buf in lines.iter() {
        if reconnect_at.is_some_and(|t| Instant::now() >= t) {
            match Output::open(sink) {
                Ok(Some(o)) => {
                    out = o;
                    reconnect_at = None;
                    log::info!("access log: connected to {sink} again");
                }
                Ok(None) => reconnect_at = None,
                Err(_) => reconnect_at = Some(Instant::now() + RECONNECT_EVERY),
            }
        }
        if reopen.swap(false, Ordering::AcqRel) {
            match Output::open(sink) {
                Ok(Some(o)) => {
                    out = o;
                    log::info!("access log reopened");
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("access log: cannot reopen {sink:?}: {e}; keeping the old file")
                }
            }
        }
        if !buf.is_empty() {
            if let Err((lost, e)) = out.write_lines(&buf) {
                DROPPED_LINES.fetch_add(lost as u64, Ordering::Relaxed);
                // A full queue is the daemon being slow (counted, reported below); anything
                // else is a write that failed.
                if e.kind() != io::ErrorKind::WouldBlock {
                    write_errors += 1;
                    if write_errors == 1 || write_errors.is_power_of_two() {
                        log::warn!("access log: write failed ({write_errors} so far): {e}");
                    }
                    if matches!(sink, Sink::Syslog(_)) {
                        reconnect_at.get_or_insert(Instant::now() + RECONNECT_EVERY);
                    }
                }
            }
        }
        let dropped = DROPPED_LINES.load(Ordering::Relaxed);
        if dropped > reported && last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            log::warn!(
                "access log: {} lines dropped since the last report ({dropped} in all): the \
                 writer cannot keep up with the traffic, or its writes fail",
                dropped - reported
            );
            reported = dropped;
            last_report = Some(Instant::now());
        }
        buf.clear();
        if buf.capacity() <= 1 << 20 {
            let _ = spare.try_send(buf);
        }
    }
}
