//! What each end sees when the other aborts, through any TCP proxy: Ballast, HAProxy, nginx.
//!
//! ```text
//! cargo run --release --example abort_semantics -- LIVE DEAD
//! ```
//!
//! Runs a test target on 127.0.0.1:7301 (the proxy's `LIVE` listener must forward there) and
//! expects the proxy's `DEAD` listener to forward to 127.0.0.1:7302, where nothing listens.
//! `examples/abort_semantics.sh` starts Ballast, HAProxy and nginx that way and runs this
//! against each. Scenarios (the client's first byte tells the target which one):
//! - `client reset`: the client sends a request, then resets; what does the target see?
//! - `target reset`: the target sends 1,000 bytes, then resets; what does the client see?
//! - `upload answered early`: the target reads 1 KiB of an upload, answers 10 KiB and closes
//!   (a reset, as its receive buffer is not empty); what does the uploading client get?
//! - `half-close`: the client sends a request and shuts down its write side; the target
//!   answers and closes; both should see clean ends.
//! - `no target`: the proxy cannot connect; what does the client see?

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

const TARGET: &str = "127.0.0.1:7301";
const WAIT: Duration = Duration::from_secs(5);

/// How a stream ended for its reader.
fn ending(s: &mut TcpStream) -> (usize, String) {
    let mut total = 0;
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + WAIT;
    loop {
        if Instant::now() > deadline {
            return (total, "still open".into());
        }
        match s.read(&mut buf) {
            Ok(0) => return (total, "clean EOF (FIN)".into()),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (total, "reset".into()),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return (total, "still open".into())
            }
            Err(e) => return (total, format!("error: {e}")),
        }
    }
}

fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// The test target: one thread per connection, behaviour chosen by the first byte; what it
/// saw goes to `seen`.
fn target(listener: TcpListener, seen: Sender<String>) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let seen = seen.clone();
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(WAIT));
            let mut first = [0u8; 1];
            if s.read_exact(&mut first).is_err() {
                return; // a health check
            }
            match first[0] {
                b'C' => {
                    let mut request = [0u8; 16];
                    let _ = s.read_exact(&mut request);
                    let _ = s.write_all(b"k");
                    let (_, how) = ending(&mut s);
                    let _ = seen.send(how);
                }
                b'T' => {
                    let _ = s.write_all(&[b't'; 1000]);
                    reset(s);
                }
                b'U' => {
                    let mut head = [0u8; 1024];
                    let _ = s.read_exact(&mut head);
                    let _ = s.write_all(&[b'a'; 10 * 1024]);
                }
                b'H' => {
                    let (n, how) = ending(&mut s);
                    let _ = s.write_all(format!("got {n}").as_bytes());
                    let _ = s.shutdown(Shutdown::Write);
                    let (_, after) = ending(&mut s);
                    let _ = seen.send(format!("request {how}, then {after}"));
                }
                _ => {}
            }
        });
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the proxy");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn client_reset(live: SocketAddr, seen: &Receiver<String>) -> String {
    let mut s = connect(live);
    s.write_all(b"C0123456789abcdef").unwrap();
    let mut ack = [0u8; 1];
    let _ = s.read_exact(&mut ack);
    reset(s);
    let how = seen.recv_timeout(WAIT * 2).unwrap_or("nothing".into());
    format!("target sees: {how}")
}

fn target_reset(live: SocketAddr) -> String {
    let mut s = connect(live);
    s.write_all(b"T").unwrap();
    let (n, how) = ending(&mut s);
    format!("client gets {n} of 1000 bytes, then: {how}")
}

fn upload_answered_early(live: SocketAddr) -> String {
    let s = connect(live);
    let mut w = s.try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        let _ = w.write_all(b"U");
        let chunk = [b'u'; 64 * 1024];
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Err(e) = w.write_all(&chunk) {
                return match e.kind() {
                    ErrorKind::ConnectionReset => "reset".to_string(),
                    ErrorKind::BrokenPipe => "broken pipe (a reset or a close)".to_string(),
                    _ => format!("error: {e}"),
                };
            }
        }
        "still open".to_string()
    });
    let mut r = s;
    let (n, how) = ending(&mut r);
    // A socket reports its error to one call: the uploader's write may take it.
    let upload = uploader.join().unwrap_or_default();
    format!("client gets {n} of 10240 bytes, then: {how}; its upload: {upload}")
}

fn half_close(live: SocketAddr, seen: &Receiver<String>) -> String {
    let mut s = connect(live);
    s.write_all(b"Hrequest").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (n, how) = ending(&mut s);
    drop(s);
    let target = seen.recv_timeout(WAIT * 2).unwrap_or("nothing".into());
    format!("client gets {n} bytes, then {how}; target: {target}")
}

fn no_target(dead: SocketAddr) -> String {
    let mut s = connect(dead);
    let (n, how) = ending(&mut s);
    format!("client gets {n} bytes, then: {how}")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [live, dead] = [&args.first(), &args.get(1)].map(|a| {
        a.expect("usage: abort_semantics LIVE_PROXY_ADDR DEAD_PROXY_ADDR")
            .parse::<SocketAddr>()
            .expect("an ip:port")
    });
    let listener = TcpListener::bind(TARGET).expect("bind the test target on 127.0.0.1:7301");
    let (tx, seen) = bounded(16);
    std::thread::spawn(move || target(listener, tx));
    println!("client reset:          {}", client_reset(live, &seen));
    println!("target reset:          {}", target_reset(live));
    println!("upload answered early: {}", upload_answered_early(live));
    println!("half-close:            {}", half_close(live, &seen));
    println!("no target:             {}", no_target(dead));
}
