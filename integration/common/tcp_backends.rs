//! TCP backends on real sockets, clients, and addresses that refuse or never answer.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::waits::WAIT;

/// What a backend does with each accepted connection.
pub type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP server on 127.0.0.1 running `handler` on a thread per connection.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts on a free port.
    pub fn start(handler: Handler) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Starts on `addr` (e.g. to restart a stopped backend on its old port).
    pub fn start_on(addr: SocketAddr, handler: Handler) -> Backend {
        let listener = TcpListener::bind(addr).expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    return; // drops the listener: new connects are refused
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                let h = handler.clone();
                std::thread::spawn(move || h(conn));
            }
        });
        Backend {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting and closes the listening socket; returns once it is closed.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `name\n` and closes.
pub fn named(name: &'static str) -> Handler {
    Arc::new(move |mut s: TcpStream| {
        let _ = s.write_all(format!("{name}\n").as_bytes());
    })
}

/// Says its name (a line), then echoes until EOF.
pub fn named_echo(name: &'static str) -> Handler {
    Arc::new(move |mut s: TcpStream| {
        if s.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// Echoes every byte until EOF, then shuts down its write side.
pub fn echo() -> Handler {
    Arc::new(|mut s: TcpStream| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Connects to `addr` and reads everything until EOF, with bounded waits.
pub fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sends `bytes` through `addr`, half-closes, and returns everything read back until EOF.
pub fn echo_once(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = client(addr);
    s.write_all(bytes).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

/// A connected client with bounded reads and writes.
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to ballast");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// A connection through `addr` and the name its target sent first (a line, read byte by
/// byte so nothing after it is consumed).
pub fn open_named(addr: SocketAddr) -> (TcpStream, String) {
    let s = client(addr);
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    let mut r = s.try_clone().unwrap();
    while r.read(&mut byte).expect("target name") == 1 && byte[0] != b'\n' {
        name.push(byte[0]);
    }
    (s, String::from_utf8(name).unwrap())
}

/// An address on 127.0.0.1 whose connects never complete: a listener with a full backlog that
/// never accepts, so SYNs to it go unanswered. Keep the returned sockets alive meanwhile.
pub fn silent_target() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let silent = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    silent
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    silent.listen(0).unwrap();
    let addr = silent.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![silent];
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        held.push(s);
    }
    (addr, held)
}

/// Closes `s` with a reset (RST) instead of a FIN: `SO_LINGER {on, 0}`, then close.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// An address on 127.0.0.1 where nothing listens, and nothing will for the rest of the test
/// process: a socket bound there without listening (a connect gets a reset) is kept open
/// (leaked on purpose), so no other test's `bind(:0)` and no outgoing connect's ephemeral
/// port is given that port meanwhile. A port merely bound and closed was: a target meant to
/// refuse then accepted (and closed cleanly) another test's connections.
pub fn dead_addr() -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(s);
    addr
}

/// A port on 127.0.0.1 free for now (bound, then closed), for a test that binds it later
/// (a target that comes back, a listener passed in by a service manager); unlike
/// [`dead_addr`], another `bind(:0)` may be given it meanwhile, so only for short waits.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A TCP port free on 127.0.0.1 below the kernel's ephemeral range (32768 and up by
/// default): for a listener that closes and binds again (a node drain, then enable), whose
/// port must not be handed meanwhile to another test's `bind(:0)`.
pub fn stable_port() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// `yaml` (from `config`) with its first listener on a [`stable_port`].
pub fn on_stable_port(yaml: &str) -> String {
    yaml.replacen(
        "bind: 127.0.0.1:0",
        &format!("bind: 127.0.0.1:{}", stable_port()),
        1,
    )
}

/// A TCP port free on 127.0.0.1 right now (for a server that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
