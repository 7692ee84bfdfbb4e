//! Binding listeners: one SO_REUSEPORT socket per listener per worker, every one bound before
//! any thread starts (at start) or before a change is applied (on reload), so a bad address
//! fails with nothing half-done. Used by the runtime, the control plane and the supervisor.

use std::io;
use std::net::SocketAddr;

use crate::activation::{Activated, Provided};
use crate::config::{Config, ListenerConfig, Protocol};
use crate::handover::Inherited;
use crate::net::{
    for_accepted_sockets, reuseport_tcp_listener, reuseport_udp_socket, served_elsewhere,
    ListenOptions,
};

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

/// Copies of `sockets` (TCP sockets from a service manager) for workers to share: each
/// leaves its SO_REUSEPORT group's steering alone, so the copies are never joined to a
/// steering array twice ([`crate::steering`] skips sockets without SO_REUSEPORT).
fn share(sockets: &[Bound]) -> io::Result<Vec<Bound>> {
    sockets
        .iter()
        .map(|s| {
            if let Bound::Tcp(t) = s {
                socket2::SockRef::from(t).set_reuse_port(false)?;
            }
            s.try_clone()
        })
        .collect()
}

/// Whether `socket` has SO_REUSEPORT (others may join its group).
fn reuse_port(socket: &Bound) -> bool {
    let r = match socket {
        Bound::Tcp(s) => socket2::SockRef::from(s).reuse_port(),
        Bound::Udp(s) => socket2::SockRef::from(s).reuse_port(),
    };
    r.unwrap_or(false)
}

/// Fails with `AddrInUse` when another socket already serves `addr` for `listener`'s
/// protocol ([`served_elsewhere`]): SO_REUSEPORT would otherwise let a second Ballast (or
/// anything else of the same user with SO_REUSEPORT) join its group silently, and the kernel
/// would split the clients between two processes. Used only where nothing was handed over
/// for the listener (a restart binds beside the worker's own sockets).
fn ensure_free(listener: &ListenerConfig, addr: SocketAddr) -> io::Result<()> {
    let stream = listener.protocol == Protocol::Tcp;
    match served_elsewhere(addr, stream, listen_options(listener)) {
        Ok(true) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "address in use: another process already serves {addr} ({}); stop it, or \
                 take its sockets over with `ballast run --upgrade-from`",
                listener.protocol
            ),
        )),
        // Other errors come again, better explained, from the real bind.
        Ok(false) | Err(_) => Ok(()),
    }
}

/// How `listener`'s sockets are bound besides their address.
fn listen_options(listener: &ListenerConfig) -> ListenOptions<'_> {
    ListenOptions {
        interface: listener.interface.as_deref(),
        freebind: listener.freebind,
    }
}

/// The error of a worker's own socket bound beside a UDP socket from the service manager.
fn beside_activated(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{e}: a worker's own socket beside the one from the service manager; give the \
             .socket unit `ReusePort=yes` and run Ballast as that socket's owner, pass one \
             socket per worker, or set `workers: 1`"
        ),
    )
}

impl Bound {
    /// Another descriptor of the same socket (`dup`).
    ///
    /// # Errors
    /// As `dup(2)`.
    pub fn try_clone(&self) -> io::Result<Bound> {
        Ok(match self {
            Bound::Tcp(s) => Bound::Tcp(s.try_clone()?),
            Bound::Udp(s) => Bound::Udp(s.try_clone()?),
        })
    }

    /// A fresh SO_REUSEPORT socket for `listener` on `addr` (its `bind`, or the port the
    /// first worker's socket got for port 0), with its `interface` and `freebind`; see
    /// [`crate::net`].
    ///
    /// # Errors
    /// As the bind; an unknown interface is named, and an address no interface holds points
    /// to `freebind`.
    pub fn bind(listener: &ListenerConfig, addr: SocketAddr) -> io::Result<Bound> {
        let interface = listener.interface.as_deref();
        let options = listen_options(listener);
        let bound = match listener.protocol {
            Protocol::Tcp => reuseport_tcp_listener(addr, options).map(Bound::Tcp),
            Protocol::Udp => reuseport_udp_socket(addr, options).map(Bound::Udp),
        };
        bound.map_err(|e| match interface {
            Some(name) if e.raw_os_error() == Some(libc::ENODEV) => io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface named `{name}` (`interface`)"),
            ),
            _ if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && !listener.freebind => {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!(
                        "{e}: no interface holds {}; set `freebind: true` to listen before it \
                         arrives (a VIP on a standby node)",
                        addr.ip()
                    ),
                )
            }
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

/// Copies of the sockets of listeners that cannot be bound afresh beside them (sockets a
/// service manager passed without SO_REUSEPORT: a worker's own socket would fail with
/// EADDRINUSE), kept so a worker restarted after a crash gets the socket it had.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    /// Per such listener: its name, its address and one copy per worker.
    kept: Vec<(String, SocketAddr, Vec<Bound>)>,
}

impl Spares {
    /// Copies of `sockets` (per worker, one per listener of `config`, as [`bind_all`] returns
    /// them) for the listeners whose sockets lack SO_REUSEPORT.
    ///
    /// # Errors
    /// As `dup(2)`.
    pub(crate) fn keep(config: &Config, sockets: &[Vec<Bound>]) -> io::Result<Spares> {
        let mut kept = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if sockets
                .first()
                .and_then(|w| w.get(i))
                .is_some_and(|s| !reuse_port(s))
            {
                let copies = sockets
                    .iter()
                    .filter_map(|w| w.get(i))
                    .map(Bound::try_clone)
                    .collect::<io::Result<Vec<_>>>()?;
                kept.push((l.name.clone(), l.bind, copies));
            }
        }
        Ok(Spares { kept })
    }

    /// The socket worker `worker` is to serve `listener` on after a restart: a copy of the one
    /// it started with when that one cannot be bound afresh, else a fresh one ([`Bound::bind`]).
    ///
    /// # Errors
    /// As `dup(2)` or the bind.
    pub(crate) fn socket_for(&self, listener: &ListenerConfig, worker: usize) -> io::Result<Bound> {
        let kept = self
            .kept
            .iter()
            .find(|(name, addr, _)| *name == listener.name && *addr == listener.bind)
            .and_then(|(_, _, copies)| copies.get(worker));
        match kept {
            Some(socket) => socket.try_clone(),
            None => Bound::bind(listener, listener.bind),
        }
    }
}

/// Listening sockets a process starts with, used before any is bound afresh.
#[derive(Debug, Default)]
pub enum Sockets {
    /// None: every listener is bound afresh.
    #[default]
    None,
    /// Handed over by the running Ballast (`--upgrade-from`, [`crate::handover`]).
    Upgrade(Inherited),
    /// Passed by a service manager (`LISTEN_FDS`, [`crate::activation`]).
    Activation(Activated),
}

impl Sockets {
    /// The sockets given for listener `l` (each is given once).
    fn take_for(&mut self, l: &ListenerConfig) -> Provided {
        match self {
            Sockets::None => Provided::default(),
            Sockets::Upgrade(i) => Provided {
                fds: i.sockets_for(&l.name, l.protocol, l.bind, l.interface.as_deref()),
                share: false,
            },
            Sockets::Activation(a) => a.sockets_for(&l.name, l.protocol, l.bind),
        }
    }
}

/// Binds every listener of `config` for every worker: see [`bind_listeners`]. With `given`
/// sockets (an upgrade, socket activation), a listener uses those given for it first.
///
/// # Errors
/// [`BindError`] naming the listener.
pub(crate) fn bind_all(
    config: &mut Config,
    given: &mut Sockets,
) -> Result<Vec<Vec<Bound>>, BindError> {
    let all: Vec<usize> = (0..config.listeners.len()).collect();
    bind_listeners_from(config, &all, given)
}

/// Binds listeners `which` (indices into `config.listeners`) for `config.workers` workers: see
/// [`bind_each`]. Each listener's `bind` is set to the address it got (so a reload can tell
/// the listener is the same). Logs one line per listener.
///
/// # Errors
/// [`BindError`] naming the listener; sockets bound so far are closed.
pub(crate) fn bind_listeners(
    config: &mut Config,
    which: &[usize],
) -> Result<Vec<Vec<Bound>>, BindError> {
    bind_listeners_from(config, which, &mut Sockets::None)
}

/// As [`bind_listeners`], taking `given` sockets first.
fn bind_listeners_from(
    config: &mut Config,
    which: &[usize],
    given: &mut Sockets,
) -> Result<Vec<Vec<Bound>>, BindError> {
    let chosen: Vec<&ListenerConfig> = which.iter().map(|&i| &config.listeners[i]).collect();
    let (sockets, addrs) = bind_each_from(&chosen, config.workers, &config.path, given)?;
    for (&i, addr) in which.iter().zip(addrs) {
        let l = &mut config.listeners[i];
        l.bind = addr;
        let group = &config.target_groups[l.target_group];
        log::info!(
            "listener {} ({}) on {} -> target group {} ({}, {} target{})",
            l.name,
            l.kind(),
            l.endpoint(),
            group.name,
            group.algorithm,
            group.targets.len(),
            if group.targets.len() == 1 { "" } else { "s" }
        );
    }
    Ok(sockets)
}

/// Binds `listeners` for `workers` workers: per worker, one socket per listener in that
/// order, and the address each listener got. Port 0 is resolved by the first bind; the other
/// workers bind the port it got.
///
/// # Errors
/// [`BindError`] naming the listener and `path` (the config file); sockets bound so far are
/// closed.
pub(crate) fn bind_each(
    listeners: &[&ListenerConfig],
    workers: usize,
    path: &std::path::Path,
) -> Result<(Vec<Vec<Bound>>, Vec<SocketAddr>), BindError> {
    bind_each_from(listeners, workers, path, &mut Sockets::None)
}

/// As [`bind_each`]; a listener uses the sockets `given` for it (same protocol, address and
/// interface, or name) before binding fresh ones beside them, which join the same
/// SO_REUSEPORT group, or, for sockets a service manager passed for TCP, sharing those.
fn bind_each_from(
    listeners: &[&ListenerConfig],
    workers: usize,
    path: &std::path::Path,
    given: &mut Sockets,
) -> Result<(Vec<Vec<Bound>>, Vec<SocketAddr>), BindError> {
    let mut per_worker: Vec<Vec<Bound>> = (0..workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::with_capacity(listeners.len());
    for l in listeners {
        let mut addr = l.bind;
        let fail = |source| BindError {
            name: l.name.clone(),
            addr: l.bind,
            path: path.display().to_string(),
            source,
        };
        let provided = given.take_for(l);
        let mut taken: Vec<Bound> = provided
            .fds
            .into_iter()
            .map(|fd| match l.protocol {
                Protocol::Tcp => Bound::Tcp(fd.into()),
                Protocol::Udp => Bound::Udp(fd.into()),
            })
            .collect();
        let activated = matches!(given, Sockets::Activation(_)) && !taken.is_empty();
        for socket in &taken {
            if let Bound::Tcp(t) = socket {
                for_accepted_sockets(socket2::SockRef::from(t)).map_err(fail)?;
            }
        }
        let shared = provided.share && !taken.is_empty();
        if let Some(first) = taken.first() {
            addr = first.local_addr().map_err(fail)?;
            if activated {
                let sharing = if shared {
                    ", shared by every worker (one accept queue)"
                } else {
                    ""
                };
                log::info!(
                    "listener {} takes {} sockets from the service manager on {addr}{sharing}",
                    l.name,
                    taken.len(),
                );
            } else {
                log::info!(
                    "upgrade: listener {} takes over {} sockets on {addr}",
                    l.name,
                    taken.len()
                );
            }
        }
        if activated && !shared && taken.len() < workers && !reuse_port(&taken[0]) {
            // Bound beside it, a worker's own UDP socket would take every datagram (with
            // SO_REUSEADDR, as service managers set it) or fail: say what to change.
            let why = io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} workers, {} sockets, without SO_REUSEPORT",
                    workers,
                    taken.len()
                ),
            );
            return Err(fail(beside_activated(why)));
        }
        if taken.is_empty() && addr.port() != 0 {
            ensure_free(l, addr).map_err(fail)?;
        }
        let pool = if shared {
            share(&taken).map_err(fail)?
        } else {
            Vec::new()
        };
        taken.reverse();
        for (w, sockets) in per_worker.iter_mut().enumerate() {
            let socket = match taken.pop() {
                Some(s) => s,
                None if shared => pool[w % pool.len()].try_clone().map_err(fail)?,
                None => Bound::bind(l, addr)
                    .map_err(|e| fail(if activated { beside_activated(e) } else { e }))?,
            };
            if addr.port() == 0 {
                addr = socket.local_addr().map_err(fail)?;
            }
            sockets.push(socket);
        }
        addrs.push(addr);
    }
    Ok((per_worker, addrs))
}
