//! The admin API's connections: accepted on its TCP and UNIX sockets, each served by hyper
//! under a slot ([`super::slots`]), and wound down at a stop or an upgrade so that no request
//! a client sent goes unanswered: the listeners' backlogs are drained, a connection whose
//! first request is on its way gets [`FIRST_REQUEST_GRACE`] for it, requests being served are
//! answered (changes refused with 503: they would be lost), all within
//! [`STOP_GRACE`](super::server::STOP_GRACE).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::server::{Origin, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD, MAX_HEADERS, STOP_GRACE};
use super::slots::{Held, Slots, Taken};
use crate::control::Control;
use crate::throttle::LogLimiter;

/// Pause after an accept error (EMFILE and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At a stop, how long a connection that has sent no request yet gets for its first one (a
/// client that connected just before the stop and is sending it now).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// A socket hyper can serve.
trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// Accepts on both sockets until `stopped` turns true; then drains their backlogs, closes
/// them, and waits (up to [`STOP_GRACE`]) for the connections to answer what they were sent.
pub(super) async fn serve(
    control: Arc<Control>,
    tcp: std::net::TcpListener,
    unix: Option<std::os::unix::net::UnixListener>,
    mut stopped: watch::Receiver<bool>,
) {
    let tcp = match tokio::net::TcpListener::from_std(tcp) {
        Ok(l) => l,
        Err(e) => return log::error!("admin API: cannot serve its socket: {e}"),
    };
    let local = tcp
        .local_addr()
        .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into());
    let unix = unix.and_then(|l| tokio::net::UnixListener::from_std(l).ok());
    let mut admit = Admit {
        control,
        stopped: stopped.clone(),
        slots: Slots::new(MAX_CONNECTIONS),
        evictions: LogLimiter::default(),
        refused: LogLimiter::default(),
        connections: JoinSet::new(),
    };
    loop {
        while admit.connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = accept(&tcp, unix.as_ref(), local) => a,
            _ = stopped.changed() => break,
        };
        match accepted {
            Ok((stream, origin)) => admit.admit(stream, origin),
            Err(e) => {
                if let Some(more) = admit.refused.allow(Instant::now()) {
                    log::warn!(
                        "admin API: accept failed ({e}); trying again in 100 ms ({more} more \
                         such failures since the last report)"
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // Clients that connected before the stop wait in the backlogs: closing the listeners
    // would reset them (a UNIX socket's backlog is not shared with a new process).
    while let Ok(Ok((stream, origin))) =
        tokio::time::timeout(Duration::ZERO, accept(&tcp, unix.as_ref(), local)).await
    {
        admit.admit(stream, origin);
    }
    drop((tcp, unix));
    // After an upgrade the new process answers every request from here on.
    log::info!("admin API: no longer accepting");
    admit.wind_down().await;
}

/// Admits connections and keeps their tasks.
struct Admit {
    control: Arc<Control>,
    stopped: watch::Receiver<bool>,
    slots: Slots,
    evictions: LogLimiter,
    refused: LogLimiter,
    connections: JoinSet<()>,
}

impl Admit {
    /// Serves `stream` under a slot (closing the oldest idle connection when all are taken,
    /// or `stream` itself when every slot serves a request).
    fn admit(&mut self, stream: Box<dyn Connection>, origin: Origin) {
        let held = match self.slots.take() {
            Taken::Free(held) => held,
            Taken::Evicted(held) => {
                if let Some(more) = self.evictions.allow(Instant::now()) {
                    log::warn!(
                        "admin API: {MAX_CONNECTIONS} connections open; closed the oldest idle \
                         one to serve a new one ({more} more since the last report)"
                    );
                }
                held
            }
            Taken::Full => {
                if let Some(more) = self.refused.allow(Instant::now()) {
                    log::warn!(
                        "admin API: {MAX_CONNECTIONS} requests being served; closing new \
                         connections ({more} more since the last report)"
                    );
                }
                return; // `stream` is dropped: closed
            }
        };
        let task = connection(
            self.control.clone(),
            stream,
            origin,
            held,
            self.stopped.clone(),
        );
        self.connections.spawn(task);
    }

    /// Waits (up to [`STOP_GRACE`]) for the connections to finish what they were sent.
    async fn wind_down(mut self) {
        while self.connections.try_join_next().is_some() {}
        if self.connections.is_empty() {
            return;
        }
        let counted = |n: usize| format!("{n} connection{}", if n == 1 { "" } else { "s" });
        log::info!(
            "admin API: stopping; {} get up to {} to finish their requests",
            counted(self.connections.len()),
            humantime::format_duration(STOP_GRACE)
        );
        let connections = &mut self.connections;
        let finished = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, finished).await.is_err() {
            log::warn!(
                "admin API: {} still open after {}; closing them",
                counted(self.connections.len()),
                humantime::format_duration(STOP_GRACE)
            );
        }
    }
}

/// One connection, served by hyper until it ends, its slot is taken for another, or a stop
/// winds it down: a request on its way (none received yet) gets [`FIRST_REQUEST_GRACE`], a
/// request being served is answered, then it closes.
async fn connection(
    control: Arc<Control>,
    stream: Box<dyn Connection>,
    origin: Origin,
    held: Held,
    mut stopping: watch::Receiver<bool>,
) {
    let slot = held.slot().clone();
    let started = Arc::new(AtomicBool::new(false));
    let (first, stop_seen) = (started.clone(), stopping.clone());
    let service = service_fn(move |request| {
        first.store(true, Ordering::Release);
        super::server::handle(
            control.clone(),
            request,
            origin,
            slot.clone(),
            stop_seen.clone(),
        )
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let stop = async {
        if !*stopping.borrow_and_update() {
            let _ = stopping.changed().await;
        }
    };
    tokio::select! {
        _ = connection.as_mut() => return,
        // Evicted to make room: dropping the connection closes it.
        _ = held.slot().evicted() => return,
        _ = stop => {}
    }
    if !started.load(Ordering::Acquire) {
        let first_request = async {
            while !started.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::timeout(FIRST_REQUEST_GRACE, first_request) => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.as_mut().await;
    drop(held);
}

/// The next connection on either socket, with where it came in (`local`: the TCP socket's
/// address).
async fn accept(
    tcp: &tokio::net::TcpListener,
    unix: Option<&tokio::net::UnixListener>,
    local: std::net::SocketAddr,
) -> io::Result<(Box<dyn Connection>, Origin)> {
    tokio::select! {
        a = tcp.accept() => a.map(|(s, _)| (Box::new(s) as Box<dyn Connection>, Origin::Tcp(local))),
        a = accept_unix(unix) => a.map(|s| (Box::new(s) as Box<dyn Connection>, Origin::Unix)),
    }
}

/// The next UNIX connection, or never when there is no UNIX socket.
async fn accept_unix(l: Option<&tokio::net::UnixListener>) -> io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}
