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

use std::io;
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
/// At a stop, how long the writer may go on writing what the workers handed over (to a
/// syslog daemon that reads slowly, say) before the rest is dropped, counted.
const STOP_WRITING: Duration = Duration::from_secs(1);
/// At a stop, how long to wait for the writer thread at most.
const STOP_JOIN: Duration = Duration::from_secs(3);
/// How often the writer tries to reach a syslog daemon that went away, at most.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

pub(crate) use crate::config::AccessLogSink as Sink;
use crate::config::{AccessLogConfig, LogFormat};
use output::Output;

mod format;
mod output;

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
    flags: Arc<Flags>,
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
        let flags = Arc::new(Flags::default());
        let mut writer = Writer {
            sink: sink.clone(),
            format: Arc::new(config.format.clone()),
            listeners: config.listeners.as_deref().map(Arc::from),
            lines: None,
            spare,
            flags: flags.clone(),
            thread: None,
        };
        let Some(out) = Output::open(sink)? else {
            return Ok(writer);
        };
        let sink_for_thread = sink.clone();
        writer.thread = Some(
            std::thread::Builder::new()
                .name("ballast-access-log".into())
                .spawn(move || write_loop(out, &sink_for_thread, &lines, &spare_tx, &flags))?,
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
        self.flags.reopen.store(true, Ordering::Release);
        // Wake the writer if it is idle; with the queue full it reopens at its next buffer.
        if let Some(lines) = &self.lines {
            let _ = lines.try_send(Vec::new());
        }
    }

    /// Writes what the workers handed over, as far as the sink takes it without waiting
    /// (a syslog daemon that went away or stalls loses the rest, counted), then stops the
    /// thread. Call after the workers have ended.
    pub(crate) fn stop(mut self) {
        self.flags.stopping.store(true, Ordering::Release);
        self.lines = None;
        let Some(t) = self.thread.take() else {
            return;
        };
        // A write that blocks for good (a FIFO nobody reads, a file on a hung mount) must
        // not hold the stop: past STOP_JOIN the thread is left to end with the process.
        let deadline = Instant::now() + STOP_JOIN;
        while !t.is_finished() {
            if Instant::now() >= deadline {
                log::warn!(
                    "access log: the writer is still blocked {} into the stop; its last lines \
                     are lost",
                    humantime::format_duration(STOP_JOIN)
                );
                return;
            }
            // Bounded by STOP_JOIN; the writer has no way to say it ended but ending.
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = t.join();
    }
}

/// Connects to the syslog daemon's UNIX socket as `run` would (datagram, else stream, never
/// waiting on a full backlog), then lets go: `ballast check`'s probe.
///
/// # Errors
/// When nothing listens at `path`, or its backlog is full.
pub(crate) fn reach_syslog(path: &std::path::Path) -> io::Result<()> {
    output::unix_backend(path).map(drop)
}

/// What the writer thread is asked between buffers.
#[derive(Debug, Default)]
struct Flags {
    /// Reopen the sink before the next write (SIGUSR1).
    reopen: AtomicBool,
    /// The process is stopping: no more reconnects.
    stopping: AtomicBool,
}

/// The writer thread: writes each buffer, reopens the file when asked, reports drops. Ends
/// when every worker's sender is gone; once `stopping`, it connects to nothing again and
/// gives a syslog daemon lines for at most [`STOP_WRITING`], dropping (counted) the rest.
fn write_loop(
    out: Output,
    sink: &Sink,
    lines: &Receiver<Vec<u8>>,
    spare: &Sender<Vec<u8>>,
    flags: &Flags,
) {
    let mut out = Some(out);
    let mut reported = 0u64;
    let mut last_report: Option<Instant> = None;
    let mut write_errors = 0u64;
    // A syslog daemon that went away (restarted, its socket replaced) or a stream that failed:
    // connect again, at most once per RECONNECT_EVERY, instead of failing every line until a
    // SIGUSR1. Lines meanwhile are dropped, counted.
    let mut reconnect_at: Option<Instant> = None;
    // Once stopping: when to stop writing (see STOP_WRITING).
    let mut stop_by: Option<Instant> = None;
    for mut buf in lines.iter() {
        let stopping = flags.stopping.load(Ordering::Acquire);
        if stopping && stop_by.is_none() {
            stop_by = Some(Instant::now() + STOP_WRITING);
        }
        if !stopping && reconnect_at.is_some_and(|t| Instant::now() >= t) {
            match Output::open(sink) {
                Ok(o) => {
                    out = o;
                    reconnect_at = None;
                    log::info!("access log: connected to {sink} again");
                }
                Err(_) => reconnect_at = Some(Instant::now() + RECONNECT_EVERY),
            }
        }
        if flags.reopen.swap(false, Ordering::AcqRel) {
            match Output::open(sink) {
                Ok(Some(o)) => {
                    out = Some(o);
                    reconnect_at = None;
                    log::info!("access log reopened");
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("access log: cannot reopen {sink:?}: {e}; keeping the old one")
                }
            }
        }
        if !buf.is_empty() {
            let written = match &mut out {
                Some(o) => o.write_lines(&buf, stop_by).map_err(|(lost, e)| {
                    let broken = o.broken_by(&e);
                    (lost, e, broken)
                }),
                None => Err((
                    buf.iter().filter(|&&b| b == b'\n').count(),
                    io::Error::from(io::ErrorKind::NotConnected),
                    false,
                )),
            };
            if let Err((lost, e, broken)) = written {
                DROPPED_LINES.fetch_add(lost as u64, Ordering::Relaxed);
                // A full datagram queue is the daemon being slow (counted, reported below);
                // anything else is a write that failed.
                if out.is_some() && (broken || e.kind() != io::ErrorKind::WouldBlock) {
                    write_errors += 1;
                    if write_errors == 1 || write_errors.is_power_of_two() {
                        log::warn!("access log: write failed ({write_errors} so far): {e}");
                    }
                }
                if broken {
                    out = None;
                    reconnect_at = Some(Instant::now() + RECONNECT_EVERY);
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
