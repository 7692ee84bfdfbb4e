//! A long life in a few seconds: counters that wrap, started next to their wrap point
//! (`BALLAST_FAULT_NEAR_WRAP`, fault-injection builds), and the faults a months-long run meets.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const NO_CHECKS: &str = "    health_check: {protocol: tcp, interval: 60s, timeout: 1s}\n";

/// One worker whose socket tags start 20 short of their wrap (2^24): 40 connections (two
/// registrations each) proxy across it, each echoing its own bytes; a long-lived connection
/// opened before the wrap keeps working after it; UDP sessions whose ids cross the wrap too.
#[test]
fn connections_and_sessions_are_served_across_the_tag_wrap() {
    let echo_target = Backend::start(echo());
    let udp_target = UdpBackend::start(udp_echo());
    let yaml = format!(
        "workers: 1\nlisteners:\n  - {{name: t, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n  \
         - {{name: u, protocol: udp, bind: '127.0.0.1:0', target_group: ug}}\n\
         target_groups:\n  - name: g\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n  \
         - name: ug\n    health_check: {{protocol: udp, interval: 60s, timeout: 1s, send: ping, expect: ping}}\n    \
         targets: [{{address: '{}'}}]\n",
        echo_target.addr, udp_target.addr
    );
    let lb = Ballast::start_with_env(&yaml, &[("BALLAST_FAULT_NEAR_WRAP", "20")]);
    let (tcp, udp) = (lb.addr("t"), lb.addr("u"));
    let short = Duration::from_secs(3);

    let mut held = client(tcp);
    held.set_read_timeout(Some(short)).unwrap();
    let echo_on = |s: &mut std::net::TcpStream, what: &str| {
        let mut back = vec![0u8; what.len()];
        s.write_all(what.as_bytes()).unwrap();
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("{what}: no echo ({e}); log:\n{}", lb.log()));
        assert_eq!(back, what.as_bytes());
    };
    echo_on(&mut held, "before the wrap");
    for i in 0..40 {
        let mut s = client(tcp);
        s.set_read_timeout(Some(short)).unwrap();
        echo_on(&mut s, &format!("connection {i}"));
    }
    echo_on(&mut held, "after the wrap");

    for i in 0..40 {
        let c = udp_client(udp);
        c.set_read_timeout(Some(short)).unwrap();
        let what = format!("flow {i}");
        c.send(what.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = c
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: no reply ({e}); log:\n{}", lb.log()));
        assert_eq!(&buf[..n], what.as_bytes());
    }
}

/// `len` bytes from a seeded generator.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Sends `stream` with its byte at `mark` as urgent data (MSG_OOB): the bytes before it, the
/// urgent byte, the rest. Returns the whole stream as the peer must see it (in line).
fn send_with_urgent_byte(s: &mut std::net::TcpStream, stream: &[u8], mark: usize) {
    s.write_all(&stream[..mark]).unwrap();
    let sent = socket2::SockRef::from(&*s)
        .send_out_of_band(&stream[mark..mark + 1])
        .unwrap();
    assert_eq!(sent, 1);
    s.write_all(&stream[mark + 1..]).unwrap();
}

/// Reads `s` (urgent data in line) to its end: the SHA-256 and length of what came, or the
/// error that ended it.
fn read_to_end_digest(s: &mut std::net::TcpStream) -> Result<(usize, Vec<u8>), String> {
    use sha2::{Digest, Sha256};
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .map_err(|e| format!("{e} after {} bytes", got.len()))?;
    Ok((got.len(), Sha256::digest(&got).to_vec()))
}

/// With `forwarding: splice`, 512 KiB, one urgent byte and 512 KiB more reach the other side
/// whole and in order (the urgent byte in line), in both directions. splice(2) stops at the
/// urgent mark for good; a stream used to stall there.
#[test]
fn an_urgent_byte_on_a_spliced_stream_is_delivered_in_order_both_ways() {
    use sha2::{Digest, Sha256};
    const HALF: usize = 512 * 1024;
    let up = random_bytes(2 * HALF + 1, 1);
    let down = random_bytes(2 * HALF + 1, 2);
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reply = down.clone();
    let target = Backend::start(std::sync::Arc::new(move |mut s: std::net::TcpStream| {
        socket2::SockRef::from(&s)
            .set_out_of_band_inline(true)
            .unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        let seen = read_to_end_digest(&mut s);
        if seen == Ok((0, Sha256::digest(b"").to_vec())) {
            return; // the health check's connection
        }
        let _ = seen_tx.send(seen);
        send_with_urgent_byte(&mut s, &reply, HALF);
        let _ = s.shutdown(std::net::Shutdown::Write);
    }));
    let yaml = format!(
        "workers: 1\nlisteners:\n  - {{name: t, protocol: tcp, bind: '127.0.0.1:0', target_group: g, \
         forwarding: splice}}\ntarget_groups:\n  - name: g\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n",
        target.addr
    );
    let lb = Ballast::start(&yaml);
    let mut c = client(lb.addr("t"));
    socket2::SockRef::from(&c)
        .set_out_of_band_inline(true)
        .unwrap();
    send_with_urgent_byte(&mut c, &up, HALF);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let upstream = seen_rx
        .recv_timeout(WAIT)
        .expect("the target saw the client's end");
    assert_eq!(
        upstream,
        Ok((up.len(), Sha256::digest(&up).to_vec())),
        "client to target"
    );
    assert_eq!(
        read_to_end_digest(&mut c),
        Ok((down.len(), Sha256::digest(&down).to_vec())),
        "target to client"
    );
}

/// A spliced connection that goes idle gives its pipes back: 50 keep-alive connections that
/// each carried 256 KiB through `forwarding: splice` hold their two sockets each, not four
/// pipe descriptors more (pipes are pooled per worker, at most 32 kept free).
#[test]
fn idle_spliced_connections_hold_no_pipes() {
    let echo_target = Backend::start(echo());
    let yaml = format!(
        "workers: 1\nlisteners:\n  - {{name: t, protocol: tcp, bind: '127.0.0.1:0', target_group: g, \
         forwarding: splice}}\ntarget_groups:\n  - name: g\n{NO_CHECKS}    targets: [{{address: '{}'}}]\n",
        echo_target.addr
    );
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("t");
    // The start-up health check's socket must be gone before the baseline (closed before the
    // check is counted).
    wait_checks(lb.admin_addr(), "g", echo_target.addr, 1);
    let baseline = lb.fd_count();
    let payload = random_bytes(256 * 1024, 3);
    let held: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = client(addr);
            let mut reader = s.try_clone().unwrap();
            let expect = payload.clone();
            let echoed = std::thread::spawn(move || {
                let mut back = vec![0u8; expect.len()];
                reader.read_exact(&mut back).unwrap();
                back == expect
            });
            s.write_all(&payload).unwrap();
            assert!(echoed.join().unwrap(), "echo differs");
            s
        })
        .collect();
    let extra = lb.fd_count() - baseline;
    assert!(
        extra <= 2 * 50 + 2 * 32,
        "{extra} descriptors for 50 idle connections (2 sockets each, pipes pooled)"
    );
    drop(held);
}

/// A client that closed cleanly and comes back at once from the same port (Linux lets its SYN
/// reuse Ballast's TIME_WAIT) must not cut off what it uploaded: the old connection finishes
/// on its own and its target gets every byte and a clean end. (It was taken for a client
/// that reset: the target got a truncated upload and a reset.)
#[test]
fn a_clean_close_then_the_same_port_again_loses_nothing() {
    use socket2::{Domain, Socket, Type};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::{mpsc, Arc, Mutex};
    const UPLOAD: usize = 4 << 20;
    let (tx, rx) = mpsc::channel::<(usize, bool)>();
    let tx = Arc::new(Mutex::new(tx));
    // The target answers and ends its side first, then reads the upload late (so Ballast
    // still holds part of it when the client is long done), and says what it got.
    let target = Backend::start(Arc::new(move |mut s: TcpStream| {
        if s.write_all(b"answer").is_err() {
            return;
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        std::thread::sleep(Duration::from_millis(1500));
        let mut got = 0;
        let mut buf = [0u8; 65536];
        let clean = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(_) => break false,
            }
        };
        let _ = tx.lock().unwrap().send((got, clean));
    }));
    // Health checks on another port: a probe reaching this target closes with "answer"
    // unread, which resets — read here as a cut connection (seen under load).
    let checked = Backend::start(Arc::new(|_s: TcpStream| {}));
    let checks = format!(
        "    health_check: {{protocol: tcp, port: {}, interval: 60s, timeout: 10s}}\n",
        checked.addr.port()
    );
    let yaml = config("round_robin", &[(target.addr, 1)], "", &checks)
        .replacen("workers: 2", "workers: 1", 1)
        .replacen(
            "    target_group: g\n",
            "    target_group: g\n    forwarding: buffered\n",
            1,
        );
    let lb = Ballast::start(&yaml);
    let addr = lb.addr("l");
    let local = SocketAddr::from(([127, 0, 0, 1], stable_port()));
    let connect_from = |local: SocketAddr| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&local.into()).unwrap();
        s.connect(&addr.into()).unwrap();
        TcpStream::from(s)
    };
    let mut first = connect_from(local);
    first.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"answer");
    first.write_all(&vec![7u8; UPLOAD]).unwrap();
    first.shutdown(std::net::Shutdown::Write).unwrap();
    // Until the client's side is closed (its FIN acknowledged), then the same port again.
    wait_until("the client's socket to close", || tcp_state(&first) == 7);
    drop(first);
    let _second = connect_from(local);
    // The second connection uploads nothing: the first connection's report is the one
    // that got bytes, or the one cut.
    let (got, clean) = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(20)).ok())
        .find(|&(got, clean)| got > 0 || !clean)
        .expect("the first connection's target never finished");
    assert_eq!((got, clean), (UPLOAD, true), "the first upload was cut");
}

/// The kernel's TCP state of `s` (`tcpi_state`; 7 is TCP_CLOSE).
fn tcp_state(s: &std::net::TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0);
    info.tcpi_state
}
