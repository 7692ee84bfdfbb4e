//! What a connection asks of a TCP socket, as a trait: the kernel's socket
//! ([`mio::net::TcpStream`]) in the worker, a simulated one in the deterministic simulation
//! (`tcp::sim`, tests only). The pump and the stages call nothing else, so every ordering of
//! partial reads and writes, `EAGAIN`, FIN, RST and urgent marks can be tried without a kernel.
//!
//! Pipes stay real (`pipe2(2)`) in both: the simulation moves bytes into and out of them with
//! `read(2)`/`write(2)`, which is deterministic, where the kernel's socket uses `splice(2)`.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::pool::splice;

/// A connected, non-blocking TCP socket.
///
/// Errors are the socket's own (`WouldBlock` when it cannot make progress now); nothing here
/// blocks.
pub(crate) trait Socket: Read + Write + fmt::Debug {
    /// Sends the FIN (`shutdown(SHUT_WR)`): the peer reads end of stream after what was
    /// written.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Moves at most `len` bytes from the socket's receive queue into the pipe whose write end
    /// is `pipe` (`splice(2)`). `Ok(0)` at end of stream; stops short of the urgent mark like
    /// the kernel (see [`Socket::at_urgent_mark`]).
    fn splice_in(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize>;

    /// Moves at most `len` bytes from the pipe whose read end is `pipe` to the socket.
    fn splice_out(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize>;

    /// Whether the next byte to read is at the urgent mark (`SIOCATMARK`). `splice(2)` never
    /// moves the urgent byte (`tcp_read_sock` stops at the mark whatever SO_OOBINLINE says):
    /// it returns `EAGAIN` for good, or 0 once the peer's FIN is in; a `recv` with
    /// SO_OOBINLINE reads it in line, and past it the kernel forgets the mark and splicing
    /// works again.
    fn at_urgent_mark(&self) -> bool;

    /// Bytes written and not yet acknowledged by the peer (`SIOCOUTQ`), 0 once the kernel
    /// holds the connection closed: what a reset would discard.
    fn unacknowledged(&self) -> usize;

    /// Bytes received and not yet read (`SIOCINQ`): what a close would lose.
    fn unread(&self) -> usize;

    /// Makes the coming close (the drop) send a reset instead of a FIN (`SO_LINGER {1, 0}`).
    fn reset_on_close(&self);

    /// The socket's pending error (`SO_ERROR`), taken: how a connect ended.
    fn take_error(&self) -> io::Result<Option<io::Error>>;

    /// The peer's address; `NotConnected` while a connect is in flight.
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr>;
}

impl Socket for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn splice_in(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        splice(self.as_raw_fd(), pipe.as_raw_fd(), len)
    }

    fn splice_out(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        splice(pipe.as_raw_fd(), self.as_raw_fd(), len)
    }

    fn at_urgent_mark(&self) -> bool {
        /// `SIOCATMARK` from `<linux/sockios.h>` (libc does not export it).
        const SIOCATMARK: libc::c_ulong = 0x8905;
        let mut at: libc::c_int = 0;
        // SAFETY: SIOCATMARK writes one int through the pointer, which is valid.
        let r = unsafe { libc::ioctl(self.as_raw_fd(), SIOCATMARK as _, &mut at) };
        r == 0 && at != 0
    }

    fn unacknowledged(&self) -> usize {
        if closed(self) {
            return 0;
        }
        int_ioctl(self, libc::TIOCOUTQ)
    }

    fn unread(&self) -> usize {
        int_ioctl(self, libc::FIONREAD)
    }

    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        mio::net::TcpStream::take_error(self)
    }

    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        mio::net::TcpStream::peer_addr(self)
    }
}

/// An ioctl that writes one int (SIOCOUTQ, SIOCINQ); 0 when it cannot be asked.
fn int_ioctl(socket: &mio::net::TcpStream, request: libc::c_ulong) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests used here write one int through the pointer, which is valid.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, &mut n) };
    if r < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

/// Whether the kernel holds the connection closed (`TCP_CLOSE` in `TCP_INFO`): the peer reset
/// it, or it timed out. SIOCOUTQ keeps its count after a reset, but nothing will be
/// acknowledged any more.
fn closed(socket: &mio::net::TcpStream) -> bool {
    /// `TCP_CLOSE` of the kernel's TCP states (`<netinet/tcp.h>`).
    const TCP_CLOSE: u8 = 7;
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    r == 0 && info.tcpi_state == TCP_CLOSE
}
