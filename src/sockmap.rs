//! Established TCP connections forwarded inside the kernel (`forwarding: sockmap`, issue 28:
//! the loader and the kernel half; the worker does not use it yet).
//!
//! Both sockets of a connection go into one BPF `SOCKHASH`, each **under its peer's socket
//! cookie**, and an `SK_SKB` verdict program attached to the map runs on every segment either
//! socket receives: it looks up the receiving socket's own cookie — which finds its peer —
//! and redirects the bytes to that peer's egress (`bpf_sk_redirect_hash`), as Cilium's and
//! Envoy's socket-level redirection do. One map, one lookup, no per-connection state in the
//! program: eleven instructions (see [`program`]).
//!
//! A socket whose peer is not (or no longer) in the map keeps its bytes: the redirect fails,
//! the program still answers `SK_PASS`, and the bytes land in the socket's own receive queue,
//! where the worker reads them as it does today. So a connection half taken out of the map
//! never drops a byte here; what the worker must still order is the bytes the kernel already
//! queued for the peer against those it reads itself (the hard cases the issue lists).
//!
//! What the kernel does not do, measured here (Linux 6.18, before the worker may use this):
//! - **No backpressure.** A redirected segment leaves the receiving socket at once and waits
//!   in the peer's psock queue, unbounded: with the target not reading, a client pushed
//!   512 MiB in under 3 s and the host's available memory fell by as much. The worker must
//!   bound it itself, or a slow target lets any client fill the kernel's memory. The program
//!   cannot read the peer's acknowledgements (`bpf_tcp_sock` is refused to `SK_SKB`
//!   programs; the sockhash lookup of the peer is allowed): so a per-pair budget the program
//!   checks (bytes redirected ≤ budget, else the pair is diverted to the worker for good),
//!   refilled by the worker from the peer's `tcpi_bytes_acked` + `SIOCOUTQ` — on a timer, or
//!   when the program asks through a ring buffer the worker polls.
//! - **A FIN overtakes queued bytes.** The client's FIN reaches the worker (a read of 0) while
//!   redirected bytes still wait in that queue; a `shutdown(SHUT_WR)` of the peer at once
//!   ended the stream after 3.9 MiB of 64 MiB. Before passing a FIN on, the worker must see
//!   the queue empty: bytes redirected to the peer (a counter in the program) equal to what
//!   the peer's socket has taken (`tcpi_bytes_acked` + `SIOCOUTQ`).
//!
//! Needs `CAP_BPF` and `CAP_NET_ADMIN` (or root) and a kernel with `CONFIG_BPF_STREAM_PARSER`
//! (Linux ≥ 5.13 for the parser-less `BPF_SK_SKB_VERDICT`, else the stream verdict).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::bpf::*;

const MAP_TYPE_SOCKHASH: u32 = 18;
const PROG_TYPE_SK_SKB: u32 = 14;
/// `BPF_SK_SKB_VERDICT` (Linux 5.13): a verdict per segment, without a stream parser.
const ATTACH_SK_SKB_VERDICT: u32 = 38;
/// `BPF_SK_SKB_STREAM_VERDICT`: the older attachment, through the stream parser.
const ATTACH_SK_SKB_STREAM_VERDICT: u32 = 5;
const FN_GET_SOCKET_COOKIE: i32 = 46;
const FN_SK_REDIRECT_HASH: i32 = 72;
const SK_PASS: i32 = 1;
/// `SO_COOKIE` (asm-generic/socket.h): the socket's 64-bit cookie, unique while it lives.
const SO_COOKIE: libc::c_int = 57;

/// The map and its verdict program; sockets join and leave in pairs.
#[derive(Debug)]
pub(crate) struct Sockmap {
    map: OwnedFd,
    program: OwnedFd,
    /// The attachment made: [`ATTACH_SK_SKB_VERDICT`] or the stream verdict.
    attach_type: u32,
}

impl Sockmap {
    /// A map for `pairs` connections (2 × `pairs` sockets) with the program attached.
    ///
    /// # Errors
    /// Why the kernel refused (no CAP_BPF, no sockmap support, the verifier's last line).
    pub(crate) fn new(pairs: usize) -> io::Result<Sockmap> {
        let map = create_map(MAP_TYPE_SOCKHASH, 8, 8, 2 * pairs.max(1), 0)?;
        let program = load_program(
            PROG_TYPE_SK_SKB,
            &program(map.as_raw_fd()),
            "sockmap verdict",
        )?;
        let mut attach_type = ATTACH_SK_SKB_VERDICT;
        if let Err(e) = attach(map.as_raw_fd(), program.as_raw_fd(), attach_type) {
            log::debug!("sockmap: BPF_SK_SKB_VERDICT refused ({e}); the stream verdict then");
            attach_type = ATTACH_SK_SKB_STREAM_VERDICT;
            attach(map.as_raw_fd(), program.as_raw_fd(), attach_type)?;
        }
        Ok(Sockmap {
            map,
            program,
            attach_type,
        })
    }

    /// From now on the kernel moves what `a` receives to `b`'s egress and back. Both must be
    /// established TCP sockets with nothing left in their receive queues that the caller has
    /// not read (bytes already queued stay there, for the caller).
    ///
    /// # Errors
    /// The kernel's (a socket not established: EOPNOTSUPP; the map full: E2BIG); on error
    /// neither socket is in the map.
    pub(crate) fn join(&self, a: RawFd, b: RawFd) -> io::Result<()> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        let map = self.map.as_raw_fd();
        update_elem(map, &cb, &(a as u64))?;
        if let Err(e) = update_elem(map, &ca, &(b as u64)) {
            let _ = delete_elem(map, &cb);
            return Err(e);
        }
        Ok(())
    }

    /// Takes the pair `a`, `b` out of the map: what each receives from then on stays in its
    /// own receive queue. Sockets the kernel closed have left already (not an error).
    pub(crate) fn leave(&self, a: RawFd, b: RawFd) {
        let map = self.map.as_raw_fd();
        for fd in [a, b] {
            if let Ok(c) = cookie(fd) {
                let _ = delete_elem(map, &c);
            }
        }
    }
}

impl Drop for Sockmap {
    fn drop(&mut self) {
        let _ = detach(
            self.map.as_raw_fd(),
            self.program.as_raw_fd(),
            self.attach_type,
        );
    }
}

/// `fd`'s socket cookie.
///
/// # Errors
/// getsockopt's.
fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes through a valid pointer to a u64.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The verdict program over map `map`. Registers: r1 the `__sk_buff`, r6 a copy of it (r1 to
/// r5 do not survive a call).
pub(crate) fn program(map: RawFd) -> Vec<Insn> {
    let mut p = Vec::with_capacity(12);
    p.push(insn(MOV64_X, 6, 1, 0, 0)); // r6 = skb
    p.push(insn(CALL, 0, 0, 0, FN_GET_SOCKET_COOKIE)); // r0 = cookie of the receiving socket
    p.push(insn(STX_DW, 10, 0, -8, 0)); // key on the stack: *(u64 *)(fp - 8) = r0
    p.push(insn(MOV64_X, 1, 6, 0, 0)); // r1 = skb
    load_map_fd(&mut p, 2, map); // r2 = the SOCKHASH (two instructions)
    p.push(insn(MOV64_X, 3, 10, 0, 0)); // r3 = fp
    p.push(insn(ADD64_K, 3, 0, 0, -8)); //   - 8: the key
    p.push(insn(MOV64_K, 4, 0, 0, 0)); // r4 = 0: to the peer's egress (not BPF_F_INGRESS)
    p.push(insn(CALL, 0, 0, 0, FN_SK_REDIRECT_HASH)); // the peer, stored under our cookie
    p.push(insn(MOV64_K, 0, 0, 0, SK_PASS)); // redirected, or (no peer) kept for the worker
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// A connected pair on loopback: (the connecting side, the accepted side).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        for t in [&c, &s] {
            t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        (c, s)
    }

    #[test]
    fn the_program_keeps_what_it_cannot_redirect() {
        let p = program(7);
        assert_eq!(p.len(), 12);
        assert_eq!((p[10].code, p[10].imm), (MOV64_K, SK_PASS));
        assert_eq!(p[11].code, EXIT);
        assert_eq!(p[9].imm, FN_SK_REDIRECT_HASH);
    }

    /// A client ↔ (a, b) ↔ server chain: with a and b in the map, what the client sends
    /// reaches the server and back without this process reading a byte of it (a and b stay
    /// empty); taken out, bytes go to a and b's own receive queues again.
    #[test]
    fn joined_sockets_forward_in_the_kernel_and_leave_cleanly() {
        let sockmap = Sockmap::new(4).expect("sockmap (root, CONFIG_BPF_STREAM_PARSER)");
        assert_eq!(
            sockmap.attach_type, ATTACH_SK_SKB_VERDICT,
            "Linux ≥ 5.13 here"
        );
        let (mut client, a) = pair();
        let (b, mut server) = pair();
        sockmap.join(a.as_raw_fd(), b.as_raw_fd()).unwrap();
        let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            let mut client = client.try_clone().unwrap();
            std::thread::spawn(move || client.write_all(&payload).unwrap())
        };
        let mut got = vec![0u8; payload.len()];
        server.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == payload, "every byte, in order");
        server.write_all(b"pong").unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
        // Nothing reached this process's side of the pair.
        a.set_nonblocking(true).unwrap();
        assert!(
            matches!((&a).read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        );

        sockmap.leave(a.as_raw_fd(), b.as_raw_fd());
        client.write_all(b"after").unwrap();
        a.set_nonblocking(false).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut after = [0u8; 5];
        (&a).read_exact(&mut after).unwrap();
        assert_eq!(&after, b"after", "kept for the worker once out of the map");
    }
}
