//! Binding listeners: one SO_REUSEPORT socket per listener per worker, every one bound before
//! any thread starts (at start) or before a change is applied (on reload), so a bad address
//! fails with nothing half-done. Used by the runtime, the control plane and the supervisor.

use std::io;
use std::net::SocketAddr;

use crate::config::{Config, Protocol};
use crate::net::{reuseport_tcp_listener, reuseport_udp_socket};

/// A listener's address could not be bound (a configuration problem: exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("cannot bind listener {name} on {addr} (config {path}): {source}")]
pub struct BindError {
    /// Listener name.
    pub name: String,
    /// Address from the config.
    pub addr: SocketAddr,
    /// The config file.
    pub path: String,
    /// The OS error.
    pub source: io::Error,
}

/// One worker's socket for one listener, bound and (for TCP) listening.
#[derive(Debug)]
pub enum Bound {
    /// A TCP listener's listening socket.
    Tcp(std::net::TcpListener),
    /// A UDP listener's socket.
    Udp(std::net::UdpSocket),
}

impl Bound {
    /// A fresh SO_REUSEPORT socket for a listener of `protocol` on `addr` (bound to
    /// `interface` when given; see [`crate::net`]).
    ///
    /// # Errors
    /// As the bind; an unknown interface is named.
    pub fn bind(
        protocol: Protocol,
        addr: SocketAddr,
        interface: Option<&str>,
    ) -> io::Result<Bound> {
        let bound = match protocol {
            Protocol::Tcp => reuseport_tcp_listener(addr, interface).map(Bound::Tcp),
            Protocol::Udp => reuseport_udp_socket(addr, interface).map(Bound::Udp),
        };
        bound.map_err(|e| match interface {
            Some(name) if e.raw_os_error() == Some(libc::ENODEV) => io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface named `{name}` (`interface`)"),
            ),
            _ => e,
        })
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Bound::Tcp(s) => s.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }
}

/// Binds every listener of `config` for every worker: see [`bind_listeners`].
///
/// # Errors
/// [`BindError`] naming the listener.
pub(crate) fn bind_all(config: &mut Config) -> Result<Vec<Vec<Bound>>, BindError> {
    let all: Vec<usize> = (0..config.listeners.len()).collect();
    bind_listeners(config, &all)
}

/// Binds listeners `which` (indices into `config.listeners`) for `config.workers` workers: per
/// worker, one socket per listener in that order. Port 0 is resolved by the first bind, the
/// other workers bind the port it got, and the listener's `bind` is set to it (so a reload can
/// tell the listener is the same). Logs one line per listener.
///
/// # Errors
/// [`BindError`] naming the listener; sockets bound so far are closed.
pub(crate) fn bind_listeners(
    config: &mut Config,
    which: &[usize],
) -> Result<Vec<Vec<Bound>>, BindError> {
    let mut per_worker: Vec<Vec<Bound>> = (0..config.workers).map(|_| Vec::new()).collect();
    for &i in which {
        let l = &mut config.listeners[i];
        let mut addr = l.bind;
        for sockets in per_worker.iter_mut() {
            let interface = l.interface.as_deref();
            let socket = Bound::bind(l.protocol, addr, interface).map_err(|source| BindError {
                name: l.name.clone(),
                addr: l.bind,
                path: config.path.display().to_string(),
                source,
            })?;
            if addr.port() == 0 {
                addr = socket.local_addr().map_err(|source| BindError {
                    name: l.name.clone(),
                    addr: l.bind,
                    path: config.path.display().to_string(),
                    source,
                })?;
            }
            sockets.push(socket);
        }
        l.bind = addr;
        let group = &config.target_groups[l.target_group];
        log::info!(
            "listener {} ({}) on {} -> target group {} ({}, {} targets)",
            l.name,
            l.protocol,
            l.endpoint(),
            group.name,
            group.algorithm,
            group.targets.len()
        );
    }
    Ok(per_worker)
}
