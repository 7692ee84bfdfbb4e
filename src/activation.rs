//! Socket activation (`sd_listen_fds(3)`): a service manager (systemd's `.socket` units,
//! `systemd-socket-activate`) binds the listening sockets and passes them as descriptors 3,
//! 4, … with `LISTEN_FDS=N`, `LISTEN_PID=<our pid>` and optionally
//! `LISTEN_FDNAMES=name:name:…` (`FileDescriptorName=`).
//!
//! Each passed socket serves the listener of the same name (`FileDescriptorName=` set to the
//! listener's name), else the listener of the same protocol and address. A TCP socket is
//! shared by every worker (one accept queue; the manager's socket cannot join a
//! SO_REUSEPORT group of ours when it was made by another user, so it is not tried). A UDP
//! socket cannot be shared (a flow's datagrams would be split between the workers' session
//! tables): each passed socket serves one worker, and the other workers bind sockets of their
//! own beside it, which needs `ReusePort=yes` on the `.socket` unit and the same user; when
//! that fails the error says so.
//!
//! The variables are removed from the environment once read, so programs Ballast runs
//! (scaling hooks) do not take the sockets for theirs.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::config::Protocol;

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Why the passed sockets cannot be used (a configuration problem: exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A variable is malformed.
    #[error("socket activation: {name}={value:?}: {why}")]
    Variable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A passed descriptor is not a socket Ballast can serve.
    #[error("socket activation: descriptor {fd}{}: {why}", name.as_ref().map_or(String::new(), |n| format!(" ({n})")))]
    Socket {
        /// The descriptor.
        fd: RawFd,
        /// Its name from `LISTEN_FDNAMES`, if any.
        name: Option<String>,
        /// What is wrong.
        why: String,
    },
}

/// One passed socket.
#[derive(Debug)]
struct Passed {
    /// Its `LISTEN_FDNAMES` entry, if any.
    name: Option<String>,
    protocol: Protocol,
    addr: SocketAddr,
    fd: OwnedFd,
}

/// The sockets a service manager passed, not yet given to a listener.
#[derive(Debug, Default)]
pub struct Activated {
    passed: Vec<Passed>,
}

/// What one listener gets from [`Activated::sockets_for`].
#[derive(Debug, Default)]
pub(crate) struct Provided {
    /// The sockets, at most one per worker.
    pub fds: Vec<OwnedFd>,
    /// The workers beyond `fds.len()` share these sockets (TCP) instead of binding their own.
    pub share: bool,
}

impl Activated {
    /// The sockets passed to this process, from `LISTEN_PID`, `LISTEN_FDS` and
    /// `LISTEN_FDNAMES`; `None` when there are none or they are meant for another process.
    /// The variables are removed from the environment either way.
    ///
    /// # Errors
    /// [`ActivationError`] when a variable is malformed or a descriptor is not an IPv4 or
    /// IPv6 stream (listening) or datagram socket.
    pub fn from_env() -> Result<Option<Activated>, ActivationError> {
        let var = |name| std::env::var(name).ok();
        let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY (edition 2021: safe fn): called before any thread of ours starts.
            std::env::remove_var(name);
        }
        let (Some(pid), Some(fds)) = (pid, fds) else {
            return Ok(None);
        };
        let bad = |name, value: &str, why: &str| ActivationError::Variable {
            name,
            value: value.to_string(),
            why: why.to_string(),
        };
        let pid: u32 = pid
            .parse()
            .map_err(|_| bad("LISTEN_PID", &pid, "not a process id"))?;
        if pid != std::process::id() {
            log::info!("socket activation: LISTEN_PID is {pid}, not this process; ignored");
            return Ok(None);
        }
        let count: RawFd = fds
            .parse()
            .ok()
            .filter(|n| (0..=4096).contains(n))
            .ok_or_else(|| bad("LISTEN_FDS", &fds, "not a count of descriptors"))?;
        let names: Vec<Option<String>> = match &names {
            None => vec![None; count as usize],
            Some(list) => {
                let names: Vec<Option<String>> = list
                    .split(':')
                    .map(|n| Some(n.to_string()).filter(|n| !n.is_empty()))
                    .collect();
                if names.len() != count as usize {
                    let why = format!("{} names for {count} descriptors", names.len());
                    return Err(bad("LISTEN_FDNAMES", list, &why));
                }
                names
            }
        };
        let mut passed = Vec::with_capacity(names.len());
        for (fd, name) in (FIRST_FD..FIRST_FD + count).zip(names) {
            passed.push(Passed::check(fd, name)?);
        }
        for p in &passed {
            log::info!(
                "socket activation: {} socket on {}{} from the service manager",
                p.protocol,
                p.addr,
                p.name
                    .as_ref()
                    .map_or(String::new(), |n| format!(" named {n}"))
            );
        }
        Ok(Some(Activated { passed }))
    }

    /// The passed sockets for listener `name` of `protocol` on `bind`: those named `name`,
    /// else those of the same protocol bound to `bind`; each is given once.
    pub(crate) fn sockets_for(
        &mut self,
        name: &str,
        protocol: Protocol,
        bind: SocketAddr,
    ) -> Provided {
        let named = self.passed.iter().any(|p| p.name.as_deref() == Some(name));
        let (mine, rest): (Vec<Passed>, Vec<Passed>) =
            std::mem::take(&mut self.passed).into_iter().partition(|p| {
                p.protocol == protocol
                    && if named {
                        p.name.as_deref() == Some(name)
                    } else {
                        p.addr == bind
                    }
            });
        self.passed = rest;
        Provided {
            fds: mine.into_iter().map(|p| p.fd).collect(),
            share: protocol == Protocol::Tcp,
        }
    }

    /// Closes the sockets no listener took, saying which.
    pub(crate) fn finish(self) {
        for p in self.passed {
            log::warn!(
                "socket activation: the {} socket on {}{} matches no listener (by name or \
                 protocol and address); closed",
                p.protocol,
                p.addr,
                p.name.map_or(String::new(), |n| format!(" named {n}"))
            );
        }
    }
}

impl Passed {
    /// Takes descriptor `fd`: an IPv4 or IPv6 socket, listening if a stream; made
    /// close-on-exec and non-blocking.
    fn check(fd: RawFd, name: Option<String>) -> Result<Passed, ActivationError> {
        let fail = |why: String| ActivationError::Socket {
            fd,
            name: name.clone(),
            why,
        };
        // SAFETY: fcntl on a descriptor number; an unopened one gives EBADF.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(fail(std::io::Error::last_os_error().to_string()));
        }
        // SAFETY: the descriptor is open (fcntl succeeded) and passed to us to own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = socket2::SockRef::from(&owned);
        let kind = socket
            .r#type()
            .map_err(|e| fail(format!("not a socket ({e})")))?;
        let protocol = if kind == socket2::Type::STREAM {
            Protocol::Tcp
        } else if kind == socket2::Type::DGRAM {
            Protocol::Udp
        } else {
            return Err(fail("neither a stream nor a datagram socket".into()));
        };
        let addr = socket
            .local_addr()
            .map_err(|e| fail(e.to_string()))?
            .as_socket()
            .ok_or_else(|| {
                fail("not an IPv4 or IPv6 socket (UNIX sockets are not served)".into())
            })?;
        if protocol == Protocol::Tcp && !socket.is_listener().unwrap_or(false) {
            return Err(fail(
                "a stream socket that is not listening (Accept=no is needed)".into(),
            ));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| fail(e.to_string()))?;
        debug_assert_eq!(owned.as_raw_fd(), fd);
        Ok(Passed {
            name,
            protocol,
            addr,
            fd: owned,
        })
    }
}
