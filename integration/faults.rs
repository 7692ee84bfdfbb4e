//! Faults tell the truth: bytes and aborts pass through Ballast as they would between the two
//! ends directly. A reset stays a reset, a failure never looks like a clean answer, and what one
//! side sent before it went away still reaches the other.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// Ballast in front of `targets` with an access log; returns it and the log's path.
fn start(targets: &[SocketAddr], listener: &str) -> (Ballast, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let weighted: Vec<(SocketAddr, u32)> = targets.iter().map(|&a| (a, 1)).collect();
    let yaml = format!(
        "access_log: {}\n{}",
        dir.path().join("access.log").display(),
        config("round_robin", &weighted, listener, NO_CHECKS)
    );
    (Ballast::start(&yaml), dir)
}

/// The access log's lines once it has `n`.
fn access_lines(dir: &tempfile::TempDir, n: usize) -> String {
    wait_for_lines(&dir.path().join("access.log"), n)
}

/// Asserts that the one connection in the access log ended with `reason`.
fn assert_ended_with(dir: &tempfile::TempDir, reason: &str) {
    let log = access_lines(dir, 1);
    assert!(log.contains(&format!("reason={reason}")), "{log}");
}

/// Reads until EOF or an error; returns the bytes and how it ended.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (out, Err(e.kind())),
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn an_upload_answered_early_still_gets_the_whole_answer() {
    // The target reads 1 KiB of a large upload, answers 10 KiB and closes (with the rest of the
    // upload unread, its close is a reset). The client, still sending, must get the answer.
    for round in 0..10 {
        let answer = pattern(10 * 1024);
        let sent = answer.clone();
        let target = Backend::start(Arc::new(move |mut s: TcpStream| {
            let mut first = [0u8; 1024];
            if s.read_exact(&mut first).is_ok() {
                let _ = s.write_all(&sent);
            }
        }));
        let (lb, _dir) = start(&[target.addr], "");
        let s = client(lb.addr("l"));
        let mut w = s.try_clone().unwrap();
        let uploader = std::thread::spawn(move || {
            let chunk = vec![b'u'; 64 * 1024];
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline && w.write_all(&chunk).is_ok() {}
        });
        let mut r = s;
        let (got, _end) = read_all(&mut r);
        uploader.join().unwrap();
        assert_eq!(got.len(), answer.len(), "round {round}: answer cut short");
        assert!(got == answer, "round {round}: answer changed");
    }
}

#[test]
fn a_client_reset_reaches_the_target_as_a_reset() {
    const REQUEST: &[u8] = b"BEGIN; INSERT half a transaction";
    let (got_tx, got_rx) = crossbeam_channel::bounded(1);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let target = Backend::start(Arc::new(move |mut s: TcpStream| {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut first = [0u8; REQUEST.len()];
        // Health checks connect and close without a byte: not the client.
        if s.read_exact(&mut first).is_ok() {
            let _ = got_tx.send(first.to_vec());
            let _ = tx.send(read_all(&mut s));
        }
    }));
    let (lb, dir) = start(&[target.addr], "");
    let mut s = client(lb.addr("l"));
    s.write_all(REQUEST).unwrap();
    // The target has the request's first part; now the client aborts.
    let first = got_rx.recv_timeout(WAIT).expect("target got the bytes");
    assert_eq!(first, REQUEST);
    reset(s);
    let (rest, end) = rx.recv_timeout(WAIT).expect("target saw the end");
    assert!(rest.is_empty());
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "the target must see the client's abort, not a clean end of a complete request"
    );
    assert_ended_with(&dir, "client_reset");
}

/// A client of a target that answers (and perhaps resets) the moment it accepts: a blocking
/// connect, since `connect_timeout`'s poll-then-`SO_ERROR` would report a reset that arrives
/// as it waits as a failed connect.
fn answered_client(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to ballast");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// A target that answers and resets the moment it accepts, 1,000 times: its reset often
/// arrives before Ballast has seen the connect end, so the connect's event already carries
/// the error. Every client must still get the answer, then a reset — not a retry (the target
/// did accept: the same bytes again, or no target at all after three tries, was what a
/// client got when that error was taken for a failed connect).
#[test]
fn a_target_that_answers_and_resets_at_once_is_connected_not_retried() {
    let target = Backend::start(Arc::new(|mut s: TcpStream| {
        if s.write_all(&pattern(1000)).is_ok() {
            reset(s);
        }
    }));
    let (lb, dir) = start(&[target.addr], "");
    for i in 0..1000 {
        let mut s = answered_client(lb.addr("l"));
        let (got, end) = read_all(&mut s);
        assert_eq!(
            got,
            pattern(1000),
            "connection {i}: the bytes before the reset"
        );
        assert_eq!(end, Err(ErrorKind::ConnectionReset), "connection {i}");
    }
    let log = access_lines(&dir, 1000);
    assert_eq!(log.matches("reason=target_reset").count(), 1000, "{log}");
    assert!(
        !log.contains("retries=1") && !log.contains("retries=2"),
        "{log}"
    );
}

#[test]
fn a_target_reset_reaches_the_client_after_its_bytes() {
    // Written and reset at once: Ballast may well see the bytes and the reset in one event.
    let target = Backend::start(Arc::new(|mut s: TcpStream| {
        if s.write_all(&pattern(1000)).is_ok() {
            reset(s);
        }
    }));
    let (lb, dir) = start(&[target.addr], "");
    let mut s = answered_client(lb.addr("l"));
    let (got, end) = read_all(&mut s);
    assert_eq!(got, pattern(1000), "the bytes before the reset");
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "a crashed target's truncated answer must not end like a whole one"
    );
    assert_ended_with(&dir, "target_reset");
}

#[test]
fn a_normal_half_close_ends_with_fin_on_both_sides() {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let target = Backend::start(Arc::new(move |mut s: TcpStream| {
        let (got, end) = read_all(&mut s);
        if got.is_empty() {
            return; // a health check
        }
        let _ = s.write_all(&got);
        let _ = s.shutdown(Shutdown::Write);
        // Wait for Ballast to close; a reset here would show as an error.
        let (rest, close) = read_all(&mut s);
        let _ = tx.send((got.len(), end, rest.len(), close));
    }));
    let (lb, dir) = start(&[target.addr], "");
    let mut s = client(lb.addr("l"));
    s.write_all(&pattern(5000)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, end) = read_all(&mut s);
    assert_eq!(got, pattern(5000));
    assert_eq!(end, Ok(()), "client: clean EOF");
    drop(s);
    let (n, end, rest, close) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((n, end), (5000, Ok(())), "target: whole request, then EOF");
    assert_eq!(
        (rest, close),
        (0, Ok(())),
        "target: a clean close, no reset"
    );
    assert_ended_with(&dir, "done");
}

#[test]
fn a_client_no_target_accepts_is_reset_not_closed() {
    let (lb, dir) = start(&[dead_addr(), dead_addr()], "");
    // The reset may come so soon that the connect itself reports it.
    let (got, end) = match TcpStream::connect_timeout(&lb.addr("l"), WAIT) {
        Ok(mut s) => {
            s.set_read_timeout(Some(WAIT)).unwrap();
            read_all(&mut s)
        }
        Err(e) => (Vec::new(), Err(e.kind())),
    };
    assert!(got.is_empty());
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "an empty clean EOF would read as an empty answer"
    );
    assert_ended_with(&dir, "no_target");
}

#[test]
fn a_client_that_resets_while_its_connect_is_pending_is_freed_at_once() {
    let (silent, _held) = silent_target();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "access_log: {}\n{}",
        dir.path().join("access.log").display(),
        config(
            "round_robin",
            &[(silent, 1)],
            "    connect_timeout: 30s\n",
            NO_CHECKS
        )
    );
    let lb = Ballast::start(&yaml);
    // The check at start connects to the silent target too, and holds a socket until its
    // timeout: counted once it is over (the prober closes its socket before it counts).
    wait_checks(lb.admin_addr(), "g", silent, 1);
    // Ballast's own sockets still connecting (SYN_SENT) to the silent target: counted from
    // the kernel's table, by the socket inodes Ballast holds (the test holds connects to it
    // too; a descriptor count would also move with the admin API's own connections).
    let connecting = || {
        let inodes: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{}/fd", lb.pid()))
                .map(|d| {
                    d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                        .filter_map(|l| {
                            let l = l.to_string_lossy().into_owned();
                            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
        let remote = proc_net_address(silent);
        proc_net_rows("/proc/net/tcp")
            .iter()
            .filter(|f| f.len() > 9 && f[2] == remote && f[3] == "02" && inodes.contains(&f[9]))
            .count()
    };
    assert_eq!(connecting(), 0);
    let s = client(lb.addr("l"));
    wait_until("Ballast connecting to the silent target", || {
        connecting() == 1
    });
    let started = Instant::now();
    reset(s);
    wait_until("the connect abandoned", || connecting() == 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "freed only after {:?} (connect_timeout is 30s)",
        started.elapsed()
    );
    assert_ended_with(&dir, "client_reset");
}

#[test]
fn urgent_data_neither_stalls_nor_truncates_a_stream() {
    let echo = Backend::start(echo());
    let (lb, _dir) = start(&[echo.addr], "");
    let mut s = client(lb.addr("l"));
    s.write_all(b"abc").unwrap();
    // SAFETY: send(2) on an open socket with a valid one-byte buffer.
    let n = unsafe {
        use std::os::fd::AsRawFd;
        libc::send(s.as_raw_fd(), b"U".as_ptr().cast(), 1, libc::MSG_OOB)
    };
    assert_eq!(n, 1);
    s.write_all(b"def").unwrap();
    // No EOF: a reader that stopped at the urgent mark would wait for more data forever.
    let mut got = [0u8; 7];
    s.read_exact(&mut got)
        .expect("all seven bytes, the urgent one in place");
    assert_eq!(&got, b"abcUdef");
}

/// What happened to one streaming client.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicUsize,
    /// Ended with an error (reset, refused): a failure the client can tell from an answer.
    errors: AtomicUsize,
    /// Ended with a clean EOF and wrong or missing bytes: a lie.
    bad: AtomicUsize,
    first_bad: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(what);
    }
}

/// One echo stream of a random 1..=256 KiB payload: write, half-close, read the echo, compare
/// SHA-256 digests.
fn stream_once(addr: SocketAddr, rng: &mut impl rand::RngCore, tally: &Tally) {
    use sha2::{Digest, Sha256};
    let len = 1 + (rng.next_u32() as usize % (256 * 1024));
    let mut payload = vec![0u8; len];
    rng.fill_bytes(&mut payload);
    let s = match TcpStream::connect_timeout(&addr, WAIT) {
        Ok(s) => s,
        Err(e) => return tally.error(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&payload)
            .and_then(|()| w.shutdown(Shutdown::Write))
            .map(|()| Sha256::digest(&payload))
    });
    let mut r = s;
    let (echoed, end) = read_all(&mut r);
    let written = writer.join().unwrap();
    match (end, written) {
        (Ok(()), Ok(digest)) if Sha256::digest(&echoed) == digest => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        }
        (Ok(()), Ok(_)) => {
            tally.bad.fetch_add(1, Ordering::Relaxed);
            tally
                .first_bad
                .lock()
                .unwrap()
                .get_or_insert(format!("clean EOF after {} of {len} bytes", echoed.len()));
        }
        // A socket's error is reported to one call only: the writer may have taken the reset
        // the reader would otherwise have seen. Either way this client saw it.
        (Ok(()), Err(e)) => tally.error(format!("write: {e}")),
        (Err(e), _) => tally.error(format!("read: {e:?} after {} bytes", echoed.len())),
    }
}

/// 16 clients streaming while 4 more connect and reset over and over, for `secs`; `pause`
/// between resets per resetting client (`None`: as fast as they can).
fn churn(secs: u64, pause: Option<Duration>) -> (Arc<Tally>, usize) {
    // One churn at a time: the paced one must not run beside the overload.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let echo = Backend::start(echo());
    let (lb, _dir) = start(&[echo.addr], "    idle_timeout: 30s\n");
    let addr = lb.addr("l");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let resets = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for seed in 0..16u64 {
        let (stop, tally) = (stop.clone(), tally.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) {
                stream_once(addr, &mut rng, &tally);
            }
        }));
    }
    for _ in 0..4 {
        let (stop, resets) = (stop.clone(), resets.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, WAIT) {
                    let _ = s.write_all(b"x");
                    reset(s);
                    resets.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    (tally, resets.load(Ordering::Relaxed))
}

#[test]
fn churn_paced_resets_leave_every_stream_whole() {
    let (tally, resets) = churn(20, Some(Duration::from_millis(2)));
    let (ok, errors, bad) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.bad.load(Ordering::Relaxed),
    );
    eprintln!("paced churn: {ok} streams whole, {errors} errors, {bad} bad, {resets} resets");
    assert!(ok >= 100, "too few streams to mean anything: {ok}");
    assert!(resets >= 1000, "too few resets to mean anything: {resets}");
    assert_eq!(
        (errors, bad),
        (0, 0),
        "first bad: {:?}; first error: {:?}",
        tally.first_bad.lock().unwrap(),
        tally.first_error.lock().unwrap()
    );
}

#[test]
fn churn_overload_may_fail_streams_but_never_with_a_clean_eof() {
    let (tally, resets) = churn(20, None);
    let (ok, errors, bad) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.bad.load(Ordering::Relaxed),
    );
    eprintln!(
        "overload churn: {ok} streams whole, {errors} errors (first: {:?}), {bad} bad, {resets} \
         resets",
        tally.first_error.lock().unwrap()
    );
    assert!(ok + errors >= 100, "too few streams to mean anything");
    assert_eq!(bad, 0, "first bad: {:?}", tally.first_bad.lock().unwrap());
}

#[test]
fn limits_beyond_the_open_file_limit_are_warned_about_at_start() {
    let echo = Backend::start(echo());
    let yaml = config(
        "round_robin",
        &[(echo.addr, 1)],
        "    max_connections: 1000\n",
        NO_CHECKS,
    );
    let lb = Ballast::start_with(&yaml, "info", Some(256));
    let line = lb.wait_log("the open-file limit is 256", WAIT);
    assert!(line.contains("LimitNOFILE"), "{line}");
    // Within the limit: no warning.
    let lb = Ballast::start_with(&yaml.replace("1000", "50"), "info", Some(256));
    assert!(!lb.log().contains("open-file limit"), "{}", lb.log());
}

#[test]
fn a_target_reset_reaches_a_client_that_is_not_reading() {
    // The target writes 1 MiB and resets at once, while the client reads nothing until
    // Ballast has finished with the connection (its access-log line is written): the bytes
    // wait in buffers along the way (Ballast's, the client's) when the reset comes. The client
    // must then read what arrived and a reset, never a FIN that makes the cut-off look whole.
    let target = Backend::start(Arc::new(|mut s: TcpStream| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_ok() {
            let _ = s.write_all(&pattern(1 << 20));
            reset(s);
        }
    }));
    let (lb, dir) = start(&[target.addr], "    idle_timeout: 1s\n");
    let mut s = client(lb.addr("l"));
    s.write_all(b"go").unwrap();
    let log = access_lines(&dir, 1);
    assert!(
        log.contains("reason=target_reset") || log.contains("reason=idle"),
        "{log}"
    );
    let (got, end) = read_all(&mut s);
    assert!(
        got.len() <= 1 << 20 && got == pattern(got.len()),
        "bytes changed"
    );
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "after {} bytes: must end in a reset",
        got.len()
    );
}

#[test]
fn the_idle_timeout_resets_a_client_whose_answer_it_cuts() {
    // The target sends 16 MiB to a client that reads nothing for longer than idle_timeout:
    // the bytes fill the buffers along the way and the connection goes idle with most of
    // them still on their way. The client must see what arrived and then a reset, never a
    // FIN after ~4 MiB that reads as the whole answer.
    let target = Backend::start(Arc::new(|mut s: TcpStream| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_ok() {
            s.set_write_timeout(Some(WAIT)).unwrap();
            let _ = s.write_all(&pattern(16 << 20));
        }
    }));
    // 3 s, not 1: a target thread starved for a second by the binary's other tests (the
    // churn runs) had sent nothing by then — an idle connection, rightly closed `idle` (seen
    // through sockmap: the target's kernel had acknowledged "go", its thread never wrote).
    let (lb, dir) = start(&[target.addr], "    idle_timeout: 3s\n");
    let mut s = client(lb.addr("l"));
    s.write_all(b"go").unwrap();
    let log = access_lines(&dir, 1);
    assert!(log.contains("reason=idle_bytes_lost"), "{log}");
    let (got, end) = read_all(&mut s);
    assert!(
        got.len() < 16 << 20 && got == pattern(got.len()),
        "bytes changed"
    );
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "after {} bytes: a cut answer must end in a reset",
        got.len()
    );
    drop(lb);
}

#[test]
fn a_client_that_resets_while_ballast_waits_to_reset_it_is_freed_at_once() {
    // As above, with a long idle_timeout: Ballast waits (up to 5 s) for the client to
    // acknowledge the bytes before the target's reset, so as not to discard them with its
    // own reset. When the client resets first, nothing will be acknowledged: the connection
    // must end at once, not hold its descriptors and places for the whole linger.
    let target = Backend::start(Arc::new(|mut s: TcpStream| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_ok() {
            let _ = s.write_all(&pattern(1 << 20));
            reset(s);
        }
    }));
    let (lb, dir) = start(&[target.addr], "    idle_timeout: 60s\n");
    let admin = lb.admin_addr();
    let s = client(lb.addr("l"));
    (&s).write_all(b"go").unwrap();
    wait_until("the connection waits in closing", || {
        http(admin, "GET", "/connections", None, "")
            .1
            .contains("\"closing\"")
    });
    let reset_at = Instant::now();
    reset(s);
    let log = access_lines(&dir, 1);
    let freed = reset_at.elapsed();
    assert!(log.contains("reason=target_reset"), "{log}");
    assert!(
        freed < Duration::from_secs(2),
        "freed {freed:?} after the client's reset (the linger is 5 s)"
    );
}

#[test]
fn the_idle_timeout_resets_an_uploader_whose_upload_it_cuts() {
    // The target never reads, and its listening socket has a 4 KiB receive buffer (so its
    // window stays small from the handshake on); the client uploads 3 MB, half-closes and
    // waits for an answer. Ballast reads the whole upload but can pass on only part of it:
    // at the idle timeout the rest is in its hands. The uploader must see a reset, not a FIN
    // that reads as an empty answer to a whole upload.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.set_recv_buffer_size(4096).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(16).unwrap();
    let target = listener.local_addr().unwrap().as_socket().unwrap();
    let held = std::thread::spawn(move || {
        // Accepts the connection and holds it unread until the test ends.
        let conns: Vec<_> = (0..2).filter_map(|_| listener.accept().ok()).collect();
        conns
    });
    let (lb, dir) = start(&[target], "    idle_timeout: 1s\n");
    let s = TcpStream::connect(lb.addr("l")).unwrap();
    socket2::SockRef::from(&s)
        .set_send_buffer_size(8 << 20)
        .unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(&pattern(3_000_000)).unwrap();
    w.shutdown(Shutdown::Write).unwrap();
    let log = access_lines(&dir, 1);
    assert!(log.contains("reason=idle_bytes_lost"), "{log}");
    let (got, end) = read_all(&mut s.try_clone().unwrap());
    assert!(
        got.is_empty(),
        "the target sent nothing: {} bytes",
        got.len()
    );
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "a cut upload must end in a reset"
    );
    drop(lb);
    let _ = held.join();
}
