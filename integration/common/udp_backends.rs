//! UDP backends on real sockets and UDP clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::waits::WAIT;

/// What a UDP backend answers to a datagram from an address: `None` sends nothing.
pub type UdpHandler = Arc<dyn Fn(&[u8], SocketAddr) -> Option<Vec<u8>> + Send + Sync>;

/// A UDP server on 127.0.0.1 answering each datagram with `handler`.
pub struct UdpBackend {
    pub addr: SocketAddr,
    /// Datagrams received so far.
    pub received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    /// Starts on a free port.
    pub fn start(handler: UdpHandler) -> UdpBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Starts on `addr` (e.g. to restart a stopped backend on its old port).
    pub fn start_on(addr: SocketAddr, handler: UdpHandler) -> UdpBackend {
        let socket = std::net::UdpSocket::bind(addr).expect("bind udp backend");
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue; // e.g. an ICMP error for an earlier reply
                };
                if s.load(Ordering::Acquire) {
                    return; // drops the socket: datagrams now get ICMP port unreachable
                }
                r.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = handler(&buf[..n], from) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        UdpBackend {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and closes the socket; returns once it is closed.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let waker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let _ = waker.send_to(b"stop", self.addr);
            t.join().unwrap();
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Echoes each datagram unchanged.
pub fn udp_echo() -> UdpHandler {
    Arc::new(|d: &[u8], _| Some(d.to_vec()))
}

/// Answers `[id, from.port (2 bytes, big-endian)] + datagram`, so a client sees which target
/// and which upstream socket carried its flow. Health probes (`ping`) get `pong`.
pub fn udp_tagged(id: u8) -> UdpHandler {
    Arc::new(move |d: &[u8], from: SocketAddr| {
        if d == b"ping" {
            return Some(b"pong".to_vec());
        }
        let mut reply = vec![id];
        reply.extend_from_slice(&from.port().to_be_bytes());
        reply.extend_from_slice(d);
        Some(reply)
    })
}

/// A UDP client socket connected to `addr`, with bounded reads.
pub fn udp_client(addr: SocketAddr) -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// An address on 127.0.0.1 whose UDP port is free right now (bound, then closed).
pub fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
