//! Socket set-up that the standard library does not offer: SO_REUSEPORT listeners.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog asked of `listen(2)`; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking TCP listening socket on `addr` with SO_REUSEADDR and SO_REUSEPORT, so each
/// worker can bind its own socket to the same address and the kernel spreads new connections
/// across them. TCP_NODELAY is set on the listener: Linux copies it to every accepted socket,
/// which saves a `setsockopt` per connection (a balancer must not add Nagle's delay).
///
/// # Errors
/// When the socket cannot be created or bound (e.g. `AddrInUse` when another process holds the
/// address without SO_REUSEPORT) or cannot listen.
pub fn reuseport_tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
