//! Socket activation: systemd's own `systemd-socket-activate` binds the listener's socket,
//! and on the first connection or datagram starts Ballast with it as descriptor 3
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`). That first client is served (it waited in
//! the passed socket's queue), traffic flows, a socket named after a listener serves it
//! whatever its address, and what cannot work is refused with what to change.

mod common;

use std::io::{BufRead, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const NO_CHECKS: &str =
    "    health_check: {protocol: udp, send: ping, interval: 60s, timeout: 1s}\n";

#[test]
fn a_passed_tcp_socket_serves_its_first_client_and_every_worker_shares_it() {
    let target = Backend::start(named("a"));
    let addr = free_addr();
    let yaml = config("round_robin", &[(target.addr, 1)], "", "")
        .replace("bind: 127.0.0.1:0", &format!("bind: '{addr}'"));
    let mut first = None;
    let listen = format!("--listen={addr}");
    let lb = Ballast::start_activated(&yaml, &[&listen], || {
        // Accepted by the manager's socket before Ballast runs; waits in its queue.
        first = Some(TcpStream::connect(addr).unwrap());
    });
    let mut first = first.unwrap();
    first.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = String::new();
    first.read_to_string(&mut reply).unwrap();
    assert_eq!(reply.trim(), "a", "the client that started Ballast");
    assert_eq!(lb.addr("l"), addr);
    for _ in 0..20 {
        assert_eq!(fetch(addr).unwrap().trim(), "a");
    }
    let log = lb.log();
    assert!(
        log.contains("listener l takes 1 sockets from the service manager")
            && log.contains("shared by every worker"),
        "{log}"
    );
    // The shared socket is no reuseport group to steer; that is no steering failure.
    let load_aware = unlabelled(lb.admin_addr(), "ballast_accept_steering_load_aware");
    assert_eq!(load_aware, Some(1.0), "{}", log);
}

#[test]
fn a_udp_socket_named_after_its_listener_serves_it_from_the_first_datagram() {
    let echo = UdpBackend::start(udp_echo());
    let addr = free_udp_addr();
    // The listener asks for port 0: the name, not the address, matches the passed socket.
    let yaml = udp_config(&[echo.addr], "", NO_CHECKS).replace("workers: 2", "workers: 1");
    let client = udp_client(addr);
    let (listen, name) = (format!("--listen={addr}"), "--fdname=l");
    let lb = Ballast::start_activated(&yaml, &["--datagram", &listen, name], || {
        client.send(b"first").unwrap();
    });
    let mut buf = [0u8; 64];
    let n = client
        .recv(&mut buf)
        .expect("the datagram that started Ballast");
    assert_eq!(&buf[..n], b"first");
    assert_eq!(lb.addr("l"), addr);
    client.send(b"second").unwrap();
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"second");
    assert!(lb.log().contains("udp socket on"), "{}", lb.log());
}

#[test]
fn a_udp_socket_that_two_workers_cannot_share_is_refused_with_what_to_change() {
    need("systemd-socket-activate");
    let echo = UdpBackend::start(udp_echo());
    let addr = free_udp_addr();
    let yaml = udp_config(&[echo.addr], "", NO_CHECKS)
        .replace("bind: 127.0.0.1:0", &format!("bind: '{addr}'"));
    let file = write_config(&yaml);
    let mut child = Command::new("systemd-socket-activate")
        .args(["--datagram", &format!("--listen={addr}")])
        .arg(env!("CARGO_BIN_EXE_ballast"))
        .args(["run", "--config"])
        .arg(file.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap(); // "Listening on …": the socket is bound
    assert!(line.starts_with("Listening on"), "{line}");
    udp_client(addr).send(b"start").unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("Ballast still runs with a UDP socket it cannot share");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let stderr = line + &rest;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ReusePort=yes") && stderr.contains("workers: 1"),
        "{stderr}"
    );
}

/// A worker that crashes under socket activation comes back on the socket the service
/// manager passed (a fresh SO_REUSEPORT socket cannot be bound beside it: the whole process
/// used to abort), and the passed socket gets the options Ballast's own have: urgent data
/// stays in the stream (SO_OOBINLINE on the accepted sockets).
#[test]
fn a_restarted_worker_serves_the_passed_socket_again_and_urgent_data_stays_in_line() {
    use std::io::Write;
    let target = Backend::start(std::sync::Arc::new(|s: TcpStream| {
        socket2::SockRef::from(&s)
            .set_out_of_band_inline(true)
            .unwrap();
        echo()(s)
    }));
    let addr = free_addr();
    let yaml = config("round_robin", &[(target.addr, 1)], "", "")
        .replace("bind: 127.0.0.1:0", &format!("bind: '{addr}'"));
    let listen = format!("--listen={addr}");
    let lb = Ballast::start_activated(&yaml, &[&listen], || {
        drop(TcpStream::connect(addr).unwrap());
    });
    let admin = lb.admin_addr();
    for (restarts, worker) in [(1.0, "0"), (2.0, "1")] {
        let (status, body) = http(
            admin,
            "POST",
            &format!("/debug/panic/worker/{worker}"),
            None,
            "",
        );
        assert_eq!(status, 202, "{body}");
        wait_restarts(admin, "worker", restarts);
    }
    for i in 0..20 {
        let mut s = client(addr);
        s.write_all(b"ab").unwrap();
        let sent = socket2::SockRef::from(&s).send_out_of_band(b"!").unwrap();
        assert_eq!(sent, 1);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "ab!", "connection {i} after the restarts");
    }
}
