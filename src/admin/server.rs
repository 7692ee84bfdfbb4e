//! The admin API's HTTP server: hyper (HTTP/1.1) on a one-thread tokio runtime of its own,
//! so no client can hold a thread or much memory before it is authenticated:
//! - a connection is a task, not a thread; at most [`MAX_CONNECTIONS`] at once: past that the
//!   oldest connection that is only waiting (for a head, a body or its next request) is
//!   closed to make room ([`super::slots`]), so a flood of idle or stalled connections cannot
//!   keep a health check out;
//! - request heads are bounded ([`MAX_HEAD`] bytes, [`MAX_HEADERS`] headers) and must arrive
//!   within [`HEADER_TIMEOUT`]; an endless header line is cut off, not buffered;
//! - the token is checked from the head before any body is read; a body is read only for
//!   methods that carry one (POST, PUT, PATCH, DELETE), at most [`super::MAX_BODY`] bytes,
//!   within [`BODY_TIMEOUT`] (else 408 and the connection closes); any other request is
//!   answered without waiting for a body it announced;
//! - handlers (which may wait on the workers or read the config file) run on a small blocking
//!   pool, each inside `catch_unwind`: a panic costs its request a 500, never the server;
//! - accept errors (EMFILE when descriptors run out) pause accepting briefly instead of
//!   ending the server; clients wait in the listen backlog meanwhile.
//!
//! With no token configured, requests that change anything (POST, DELETE) must carry
//! `Content-Type: application/json` and a `Host` naming the API's own address, which a web
//! page in a browser on the same host cannot forge (cross-site requests, DNS rebinding). The
//! optional UNIX socket (`admin.unix`, mode 0600) is guarded by its file permissions instead.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, Response};
use tokio::sync::watch;

use super::slots::Slot;
use super::{answer, authorized, error, Method, Reply, MAX_BODY};
use crate::control::Control;

/// Connections served at once (TCP and UNIX together).
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// Largest request head, bytes (hyper's read buffer).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a request.
pub(crate) const MAX_HEADERS: usize = 64;
/// A request head must be read within this long.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`).
const ADMIN_BACKLOG: i32 = 4096;
/// A request body must be read within this long.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Handler threads (blocking pool): enough that fleet changes waiting for etcd (at most
/// `FleetLink::MAX_WAITING`, and a few waiting their turn) leave some for reads.
const HANDLER_THREADS: usize = 8;
/// At a stop or an upgrade, how long requests already being served get to finish (their
/// answers are sent, then the connections closed), at most.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin {
    /// The TCP socket bound to this address.
    Tcp(SocketAddr),
    /// The UNIX socket.
    Unix,
}

/// The running server: its thread and the way to stop it.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    /// The UNIX socket's path and inode (removed at stop only if still this one).
    unix: Option<(PathBuf, u64)>,
    /// A duplicate of the TCP socket, to hand over to a new process (an upgrade).
    handover: std::net::TcpListener,
}

impl Server {
    /// Serves on a new thread: on `inherited` (the TCP socket a running Ballast handed over,
    /// [`crate::handover`]) or else a socket bound to `bind`, and on `unix` (mode 0600,
    /// replacing a stale socket file there, a live one only when `upgrading` (the running
    /// Ballast's), never another kind of file).
    ///
    /// # Errors
    /// When an address cannot be bound, the UNIX path holds something other than a socket
    /// or (not `upgrading`) a socket another process serves, or the thread cannot start.
    pub(crate) fn start(
        control: Arc<Control>,
        bind: SocketAddr,
        unix: Option<&Path>,
        inherited: Option<std::os::fd::OwnedFd>,
        upgrading: bool,
    ) -> io::Result<Server> {
        let tcp = match inherited {
            Some(fd) => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                l
            }
            None => listen(bind)?,
        };
        let addr = tcp.local_addr()?;
        let handover = tcp.try_clone()?;
        let unix_listener = match unix {
            None => None,
            Some(path) => {
                let (l, inode) = crate::net::bind_unix_socket(path, upgrading).map_err(|e| {
                    io::Error::new(e.kind(), format!("admin.unix {}: {e}", path.display()))
                })?;
                l.set_nonblocking(true)?;
                Some((l, inode))
            }
        };
        let unix_socket = unix_listener.as_ref().map(|(_, inode)| *inode);
        let unix_listener = unix_listener.map(|(l, _)| l);
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("ballast-admin".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(HANDLER_THREADS)
                    .build();
                match runtime {
                    Ok(rt) => {
                        rt.block_on(super::accept::serve(control, tcp, unix_listener, stopped));
                        // A handler still running past STOP_GRACE (a stuck one) is left
                        // behind rather than waited for.
                        rt.shutdown_timeout(Duration::from_millis(100));
                    }
                    Err(e) => log::error!("admin API: cannot start its runtime: {e}"),
                }
            })?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
            unix: unix.map(Path::to_path_buf).zip(unix_socket),
            handover,
        })
    }

    /// Where the API listens (TCP).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Another duplicate of the TCP socket, for a handover.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated.
    pub(crate) fn share(&self) -> io::Result<std::net::TcpListener> {
        self.handover.try_clone()
    }

    /// Stops accepting and asks each connection to close once the request it is serving
    /// has been answered; returns at once ([`Server::stop`] waits).
    pub(crate) fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops accepting, lets the requests being served finish (up to [`STOP_GRACE`]), closes
    /// the connections, waits for the thread; removes the UNIX socket.
    pub(crate) fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((path, inode)) = &self.unix {
            crate::net::remove_unix_socket(path, *inode);
        }
    }
}

/// The API's TCP socket, bound and listening (non-blocking) with a backlog of
/// [`ADMIN_BACKLOG`]: std's 128 overflows while a flood of connections is being accepted, and
/// a health check that arrives then waits a second for its SYN's retransmission.
fn listen(bind: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&bind.into())?;
    socket.listen(ADMIN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One request: the cross-site checks, the token (before any body is read), the body
/// (bounded), then [`answer`] on the blocking pool.
pub(super) async fn handle(
    control: Arc<Control>,
    request: Request<Incoming>,
    origin: Origin,
    slot: Arc<Slot>,
    stopping: watch::Receiver<bool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    // HEAD is GET without the body (hyper leaves it out): judged as GET everywhere, so an
    // open endpoint stays open to HEAD.
    let judged = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    let url = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let path = parts.uri.path().to_string();
    let generation = control.generation();
    let (token, ambient) = match credentials(&parts.headers) {
        Some(Credentials::Bearer(t)) => (Some(t), false),
        Some(Credentials::Basic(t)) => (Some(t), true),
        None => (None, false),
    };
    if let Origin::Tcp(local) = origin {
        if let Err(reply) = same_origin(&generation, &judged, &parts.headers, local, ambient) {
            return Ok(respond(reply));
        }
        if !authorized(&generation, &judged, &path, token.as_deref()) {
            return Ok(respond(error(401, "missing or wrong bearer token")));
        }
        if generation.config.admin.read_only && judged != Method::GET {
            return Ok(respond(error(
                403,
                "the admin API answers only reads over TCP here (admin.read_only): make \
                 changes through its UNIX socket (`ballast … --config FILE`, as root or \
                 Ballast's user)",
            )));
        }
    }
    // Over the UNIX socket the file's permissions authenticate: the configured token stands
    // in for the one not sent.
    let token = match origin {
        Origin::Unix => generation.config.admin.token.clone(),
        Origin::Tcp(_) => token,
    };
    let body = if takes_body(&judged) {
        let read = Limited::new(body, MAX_BODY).collect();
        match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(b)) => String::from_utf8(b.to_bytes().to_vec())
                .map_err(|_| "the request body is not UTF-8".to_string()),
            // The rest of the body is not read: the connection cannot go on after these.
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                let message = format!("the request body is over {MAX_BODY} bytes");
                return Ok(closing(respond(error(413, &message))));
            }
            Ok(Err(_)) => Err(format!(
                "cannot read the request body (at most {MAX_BODY} bytes)"
            )),
            Err(_) => {
                let message = format!("the request body did not arrive within {BODY_TIMEOUT:?}");
                return Ok(closing(respond(error(408, &message))));
            }
        }
    } else {
        // Not read: hyper closes the connection after the answer rather than wait for it.
        drop(body);
        Ok(String::new())
    };
    // Stopping (or a new process serves the API now): a change made here would be lost.
    if judged != Method::GET && *stopping.borrow() {
        return Ok(respond(error(
            503,
            "Ballast is stopping, or a new process has taken over its API: nothing was \
             changed; send the request again",
        )));
    }
    // Health checks are answered here, from a few atomics: behind the blocking pool they
    // would wait for every request queued there (thousands of pipelined /metrics, say).
    if judged == Method::GET && matches!(path.as_str(), "/healthz" | "/livez") {
        return Ok(respond(answer(
            &control,
            &method,
            &url,
            token.as_deref(),
            || body,
        )));
    }
    let handling = slot.clone();
    let handled = tokio::task::spawn_blocking(move || {
        // Busy (not evictable) only while a handler runs: a request queued behind others may
        // be closed to make room, or a client pipelining requests could hold every slot.
        handling.set_busy(true);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer(&control, &method, &url, token.as_deref(), || body)
        }));
        handling.set_busy(false);
        if result.is_err() {
            control.restarts().admin.fetch_add(1, Ordering::Relaxed);
            log::error!("admin API: a request handler panicked; serving on");
        }
        result
    })
    .await;
    Ok(respond(match handled {
        Ok(Ok(reply)) => reply,
        _ => error(500, "the request failed inside Ballast (see its log)"),
    }))
}

/// Whether requests of `method` carry a body this API reads.
fn takes_body(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// When the browser could have sent the request on its own — no token is configured, or
/// the token came as Basic credentials, which a browser attaches to any request to this
/// origin once the operator has logged in to the status page — a request that changes
/// something must show it comes from a client of the API rather than from another web
/// page: `Content-Type: application/json` (a form or a simple cross-site request cannot send
/// it without a CORS preflight, which this API never answers) and a `Host` naming the API's
/// own address (a DNS-rebound page sends its own name). Reads stay open to any Host (`curl`
/// by name works); a bearer token is never sent by a browser unasked.
fn same_origin(
    generation: &crate::generation::Generation,
    method: &Method,
    headers: &HeaderMap,
    local: SocketAddr,
    ambient: bool,
) -> Result<(), Reply> {
    let explicit = generation.config.admin.token.is_some() && !ambient;
    if explicit || matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(error(
            415,
            "changes need `Content-Type: application/json` (cross-site requests are refused)",
        ));
    }
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !names_this_api(local, host) {
        return Err(error(
            403,
            &format!("Host `{host}` is not this API's address ({local}); refused"),
        ));
    }
    Ok(())
}

/// Whether `host` (a `Host` header) names the API at `local`: its address, on loopback the
/// usual loopback names, and when bound to every address (`0.0.0.0`, `[::]`) any IP address
/// literal — a browser sends an address literal only when the page was opened by that
/// address, never for a page of another site, which would send its own name — always with
/// the API's port.
fn names_this_api(local: SocketAddr, host: &str) -> bool {
    let port = local.port();
    let Some((name, given_port)) = host.rsplit_once(':') else {
        return false;
    };
    if given_port.parse::<u16>().ok() != Some(port) {
        return false;
    }
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name)
        .parse::<std::net::IpAddr>()
        .ok();
    let loopback_name = name.eq_ignore_ascii_case("localhost");
    match literal {
        _ if local.ip().is_unspecified() => literal.is_some() || loopback_name,
        Some(ip) => ip == local.ip() || (local.ip().is_loopback() && ip.is_loopback()),
        None => local.ip().is_loopback() && loopback_name,
    }
}

/// The token a request carries.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `Authorization: Bearer <token>`: API clients.
    Bearer(String),
    /// `Authorization: Basic base64(<any user>:<token>)` (RFC 7617): what a browser sends
    /// after the log-in prompt of the status page; the user name is ignored.
    Basic(String),
}

/// The token in `headers`' `Authorization`, if any (a malformed one counts as none: 401).
fn credentials(headers: &HeaderMap) -> Option<Credentials> {
    use base64::Engine;
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Credentials::Bearer(rest.trim().to_string()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (_user, password) = pair.split_once(':')?;
    Some(Credentials::Basic(password.to_string()))
}

/// Headers on every answer: nothing here is cached or framed by another site (the status
/// page's buttons cannot be clickjacked), content types are not sniffed, and the page may
/// load only its own script and style.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
];

/// The challenge on a 401: browsers opening the status page show their log-in prompt (any
/// user name, the token as password); API clients send `Authorization: Bearer`.
const CHALLENGE: &str = "Basic realm=\"Ballast admin API\", charset=\"UTF-8\"";

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    use hyper::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if reply.status == 401 {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    }
    response
}

/// `reply`, telling the client the connection closes after it.
fn closing<B>(mut reply: Response<B>) -> Response<B> {
    reply.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_apis_accept_their_usual_names() {
        let lo: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        for host in [
            "localhost:9100",
            "127.0.0.1:9100",
            "[::1]:9100",
            "LOCALHOST:9100",
        ] {
            assert!(names_this_api(lo, host), "{host}");
        }
        for host in [
            "evil.test:9100",
            "127.0.0.1:80",
            "localhost",
            "10.0.0.5:9100",
        ] {
            assert!(!names_this_api(lo, host), "{host}");
        }
        let one: SocketAddr = "10.0.0.5:9100".parse().unwrap();
        assert!(names_this_api(one, "10.0.0.5:9100"));
        assert!(!names_this_api(one, "localhost:9100"));
        assert!(!names_this_api(one, "10.0.0.6:9100"));
    }

    #[test]
    fn an_api_on_every_address_accepts_address_literals_never_names() {
        for bind in ["0.0.0.0:9100", "[::]:9100"] {
            let any: SocketAddr = bind.parse().unwrap();
            for host in ["10.0.0.5:9100", "[2001:db8::1]:9100", "localhost:9100"] {
                assert!(names_this_api(any, host), "{bind} {host}");
            }
            for host in ["evil.test:9100", "10.0.0.5:9101", "0.0.0.0"] {
                assert!(!names_this_api(any, host), "{bind} {host}");
            }
        }
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_basic_credentials_carry_the_token() {
        let bearer = credentials(&with_auth("Bearer s3cret"));
        assert_eq!(bearer, Some(Credentials::Bearer("s3cret".into())));
        // "admin:s3cret:x" — the password may hold colons.
        let basic = credentials(&with_auth("Basic YWRtaW46czNjcmV0Ong="));
        assert_eq!(basic, Some(Credentials::Basic("s3cret:x".into())));
        assert_eq!(credentials(&with_auth("Basic !!!")), None);
        assert_eq!(credentials(&with_auth("Digest x")), None);
        assert_eq!(credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn security_headers_are_valid_header_values() {
        let r = respond(super::super::error(401, "no"));
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm="));
    }
}
