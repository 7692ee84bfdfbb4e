//! Keeps the admin API's HTTP server accepting when descriptors run out.
//!
//! tiny_http 0.12 ends its accept thread at the first accept error (EMFILE, when Ballast is out
//! of descriptors) and panics in it when the `try_clone` of an accepted connection fails the
//! same way; either way the server accepts nothing more, and its listening socket closes with
//! the thread. So Ballast holds the listening socket itself, hands tiny_http a duplicate, notices
//! the end of the accept thread (an error from `recv`, or a panic in tiny_http's code seen by a
//! panic hook) and starts a new server on the same socket: clients wait in the listen backlog
//! meanwhile, and the API answers again as soon as descriptors are free.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use tiny_http::{Request, Server};

/// Wait before starting a new server after the last one stopped accepting.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line this often about restarts, with the count of the others.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Set by the panic hook when code in tiny_http panics (its accept thread is then gone).
static TINY_HTTP_PANICKED: AtomicBool = AtomicBool::new(false);

/// Wraps the process's panic hook once: a panic located in tiny_http's sources sets
/// [`TINY_HTTP_PANICKED`]; every panic is still reported by the previous hook.
fn watch_tiny_http_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("tiny_http"))
            {
                TINY_HTTP_PANICKED.store(true, Ordering::Release);
            }
            previous(info);
        }));
    });
}

/// The admin API's listening socket and the tiny_http server accepting on it, restarted when
/// it stops accepting.
pub struct Supervised {
    listener: TcpListener,
    server: Option<Server>,
    /// No new server before then.
    retry_at: Option<Instant>,
    logged: Option<Instant>,
    unlogged: u64,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("listener", &self.listener)
            .field("serving", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

impl Supervised {
    /// Binds `addr` (port 0 picks a free port) and starts serving on it.
    ///
    /// # Errors
    /// When the address cannot be bound (e.g. `AddrInUse`) or the first server cannot start.
    pub fn bind(addr: SocketAddr) -> io::Result<Supervised> {
        watch_tiny_http_panics();
        let listener = TcpListener::bind(addr)?;
        let server = serve(&listener)?;
        Ok(Supervised {
            listener,
            server: Some(server),
            retry_at: None,
            logged: None,
            unlogged: 0,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next request, waiting at most about `timeout`; `None` when none came (or while
    /// the server is being restarted).
    pub fn next(&mut self, timeout: Duration) -> Option<Request> {
        if TINY_HTTP_PANICKED.swap(false, Ordering::AcqRel) && self.server.is_some() {
            self.stopped("a panic in its accept thread");
        }
        let Some(server) = &self.server else {
            self.restart(timeout);
            return None;
        };
        match server.recv_timeout(timeout) {
            Ok(request) => request,
            Err(e) => {
                self.stopped(&format!("accept failed: {e}"));
                None
            }
        }
    }

    /// The server stopped accepting (`why`): drop it, and start another after
    /// [`RESTART_BACKOFF`].
    fn stopped(&mut self, why: &str) {
        // Dropping the server closes only its duplicate of the listening socket.
        self.server = None;
        self.retry_at = Some(Instant::now() + RESTART_BACKOFF);
        let now = Instant::now();
        if self
            .logged
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        self.logged = Some(now);
        log::warn!(
            "admin API stopped accepting ({why}); serving again in {}ms on the same socket \
             ({} more such restarts since the last report)",
            RESTART_BACKOFF.as_millis(),
            std::mem::take(&mut self.unlogged)
        );
    }

    /// Starts a new server once the backoff has passed, sleeping at most `timeout` for it.
    fn restart(&mut self, timeout: Duration) {
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                std::thread::sleep((at - now).min(timeout));
                return;
            }
        }
        match serve(&self.listener) {
            Ok(server) => {
                self.server = Some(server);
                self.retry_at = None;
            }
            // Still out of descriptors (the duplicate needs one): try again later.
            Err(e) => self.stopped(&format!("cannot restart: {e}")),
        }
    }
}

/// A tiny_http server accepting on a duplicate of `listener`.
fn serve(listener: &TcpListener) -> io::Result<Server> {
    Server::from_listener(listener.try_clone()?, None).map_err(|e| io::Error::other(e.to_string()))
}
