//! Socket set-up that the standard library does not offer: SO_REUSEPORT listeners, bound to
//! one network interface when asked, and destination addresses of datagrams on wildcard UDP
//! listeners.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

mod unix_socket;

pub(crate) use unix_socket::{
    bind_unix_socket, remove_unix_socket, unix_socket_live, MAX_SOCKET_PATH,
};

/// A short lower-case reason for an I/O error, for logs and check results: `connection
/// refused`, `timed out`, … (the OS error number left out).
pub(crate) fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Backlog asked of `listen(2)`; the kernel caps it at `net.core.somaxconn`.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking TCP listening socket on `addr` with SO_REUSEADDR and SO_REUSEPORT, so each
/// worker can bind its own socket to the same address and the kernel spreads new connections
/// across them. TCP_NODELAY is set on the listener: Linux copies it to every accepted socket,
/// which saves a `setsockopt` per connection (a balancer must not add Nagle's delay).
///
/// With `interface` (a name such as `lo` or `eth0`), only connections arriving on that
/// interface are accepted (SO_BINDTODEVICE).
///
/// # Errors
/// When the socket cannot be created or bound (e.g. `AddrInUse` when another process holds the
/// address without SO_REUSEPORT; `ENODEV` for an unknown interface) or cannot listen.
pub(crate) fn reuseport_tcp_listener(
    addr: SocketAddr,
    options: ListenOptions<'_>,
) -> io::Result<std::net::TcpListener> {
    let socket = reuseport_socket(addr, Type::STREAM, Protocol::TCP, options)?;
    for_accepted_sockets(socket2::SockRef::from(&socket))?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Sets on a TCP listening socket what its accepted sockets must have (Linux copies both to
/// every accepted socket, which saves a `setsockopt` per connection): TCP_NODELAY (a balancer
/// must not add Nagle's delay) and SO_OOBINLINE (urgent data stays in the stream, not taken
/// out as one out-of-band byte, which would truncate what the target sees). Also for sockets
/// Ballast did not make (a service manager's).
///
/// # Errors
/// As `setsockopt(2)`.
pub(crate) fn for_accepted_sockets(socket: socket2::SockRef<'_>) -> io::Result<()> {
    socket.set_nodelay(true)?;
    socket.set_out_of_band_inline(true)
}

/// How a listening socket is bound besides its address.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListenOptions<'a> {
    /// SO_BINDTODEVICE: only traffic arriving on this interface.
    pub(crate) interface: Option<&'a str>,
    /// IP_FREEBIND / IPV6_FREEBIND: the address need not be on any interface yet.
    pub(crate) freebind: bool,
}

/// A non-blocking, close-on-exec socket for `addr` with IPV6_V6ONLY for IPv6 (so `[::]` and
/// `0.0.0.0` listeners can coexist) and `options` applied, not yet bound to `addr`.
fn listening_socket(
    addr: SocketAddr,
    kind: Type,
    protocol: Protocol,
    options: ListenOptions<'_>,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if let Some(name) = options.interface {
        socket.bind_device(Some(name.as_bytes()))?;
    }
    if options.freebind {
        if addr.is_ipv6() {
            socket.set_freebind_ipv6(true)?;
        } else {
            socket.set_freebind(true)?;
        }
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket)
}

/// As [`listening_socket`], with SO_REUSEADDR and SO_REUSEPORT.
fn reuseport_socket(
    addr: SocketAddr,
    kind: Type,
    protocol: Protocol,
    options: ListenOptions<'_>,
) -> io::Result<Socket> {
    let socket = listening_socket(addr, kind, protocol, options)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    Ok(socket)
}

/// Whether another socket already serves `addr` (TCP when `stream`, else UDP) with `options`:
/// a probe socket without SO_REUSEPORT is bound and closed, and that bind fails with
/// `AddrInUse` beside any socket bound there (for TCP, SO_REUSEADDR keeps connections in
/// TIME_WAIT from counting; a listening socket still does).
///
/// # Errors
/// When the probe cannot be made, or its bind fails otherwise (an unknown interface, an
/// address no interface holds).
pub(crate) fn served_elsewhere(
    addr: SocketAddr,
    stream: bool,
    options: ListenOptions<'_>,
) -> io::Result<bool> {
    let (kind, protocol) = if stream {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let probe = listening_socket(addr, kind, protocol, options)?;
    if stream {
        probe.set_reuse_address(true)?;
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(true),
        Err(e) => Err(e),
    }
}

/// Socket buffer size asked for UDP sockets, bytes: bursts of small datagrams overflow the
/// default (about 208 KiB) long before the worker falls behind on average. The kernel caps it
/// at `net.core.rmem_max` / `wmem_max`.
pub(crate) const UDP_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket on `addr` with SO_REUSEADDR and SO_REUSEPORT, so each worker binds
/// its own and the kernel hashes each flow (its 4-tuple) to one of them; bound to `interface`
/// as for TCP. On a wildcard address (`0.0.0.0`, `[::]`) the socket reports each datagram's
/// destination address (IP_PKTINFO, IPV6_RECVPKTINFO), which replies then leave from.
///
/// # Errors
/// When the socket cannot be created or bound (e.g. `AddrInUse` when another process holds the
/// address without SO_REUSEPORT; `ENODEV` for an unknown interface).
pub(crate) fn reuseport_udp_socket(
    addr: SocketAddr,
    options: ListenOptions<'_>,
) -> io::Result<std::net::UdpSocket> {
    let socket = reuseport_socket(addr, Type::DGRAM, Protocol::UDP, options)?;
    if addr.ip().is_unspecified() {
        let (level, name) = if addr.is_ipv6() {
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
        } else {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        };
        set_flag(&socket, level, name)?;
    }
    // Best effort: a smaller buffer still works, it only drops bursts sooner.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Sets the integer socket option `level`/`name` to 1 (socket2 has no call for these).
fn set_flag(socket: &Socket, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to a c_int of the length given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A non-blocking UDP socket on an ephemeral port, connected to `target`: the upstream side of
/// one UDP session (the NAT mapping).
///
/// # Errors
/// When the socket cannot be created, bound or connected.
pub(crate) fn connected_udp_socket(target: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    socket.connect(&target.into())?;
    Ok(socket.into())
}

/// A non-blocking connect to `target` from `source` (the client's address, any port), with
/// `IP_TRANSPARENT` (`IPV6_TRANSPARENT`) so the host may bind an address it does not hold:
/// `source: client`. TCP_NODELAY and SO_OOBINLINE are set, as for every target socket. An
/// IPv4-mapped `source` counts as IPv4.
///
/// # Errors
/// `InvalidInput` when `source` and `target` are of different families, or `source` is
/// unspecified, multicast, broadcast or the target's own (a PROXY header can declare anything); see
/// [`source_unusable`]; `PermissionDenied` without CAP_NET_ADMIN; the socket's, bind's or
/// connect's error.
pub(crate) fn connect_from(
    target: SocketAddr,
    source: std::net::IpAddr,
) -> io::Result<std::net::TcpStream> {
    let source = match source {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    let unusable = source.is_unspecified()
        || source.is_multicast()
        || matches!(source, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if unusable {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source: client: the client address {source} cannot be a source"),
        ));
    }
    if source == target.ip() && !is_local(source) {
        // A PROXY header naming the target itself: the SYN would reach the target from its
        // own address, which it drops, and the connect would time out against a healthy
        // target. (A client on this host, the target's too, is an ordinary local connect.)
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source: client: the client address {source} is the target's own"),
        ));
    }
    if source.is_ipv4() != target.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source: client: the client {source} and the target {target} differ in family"),
        ));
    }
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    set_transparent(&socket, target.is_ipv6())?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.set_out_of_band_inline(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Whether `ip` is an address of this host: a plain bind to it (no `IP_TRANSPARENT`) works.
fn is_local(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Sets `IP_TRANSPARENT` (or `IPV6_TRANSPARENT`) on `socket`.
fn set_transparent(socket: &Socket, v6: bool) -> io::Result<()> {
    if !v6 {
        return socket.set_ip_transparent(true);
    }
    let on: libc::c_int = 1;
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process may make transparent sockets (`source: client`): CAP_NET_ADMIN or
/// CAP_NET_RAW (either lets Linux set IP_TRANSPARENT).
///
/// # Errors
/// `PermissionDenied` (EPERM) naming what is missing; the socket's error.
pub(crate) fn transparent_allowed() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_ip_transparent(true).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "`source: client` connects from clients' addresses (IP_TRANSPARENT), which \
                 needs CAP_NET_ADMIN (or CAP_NET_RAW): run as root, or give the service \
                 AmbientCapabilities=CAP_NET_ADMIN",
            )
        } else {
            e
        }
    })
}

/// Whether `e`, from [`connect_from`], is the client address's fault (it cannot be used as a
/// source: another family, unspecified, multicast, the target's own, or refused by the bind),
/// not the target's.
pub(crate) fn source_unusable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::AddrNotAvailable
    ) || e.raw_os_error() == Some(libc::EINVAL)
}

#[cfg(test)]
mod source_tests {
    use super::*;

    /// A client address that cannot be a source is the client's problem, said before any
    /// socket is made (so it never counts against the target).
    #[test]
    fn unusable_client_addresses_are_refused_as_such() {
        let target: SocketAddr = "10.0.2.10:5432".parse().unwrap();
        for source in [
            "::1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "10.0.2.10",
        ] {
            let e = connect_from(target, source.parse().unwrap()).unwrap_err();
            assert!(source_unusable(&e), "{source}: {e}");
        }
        // An IPv4-mapped IPv6 client is its IPv4 address: not refused for its family.
        let mapped = connect_from(target, "::ffff:10.0.1.2".parse().unwrap());
        assert!(mapped
            .err()
            .is_none_or(|e| !e.to_string().contains("differ in family")));
    }
}
