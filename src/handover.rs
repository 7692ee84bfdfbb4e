//! Zero-downtime restart and upgrade: a running Ballast hands its listening sockets to a new
//! process over a UNIX socket (`upgrade_socket`), as HAProxy's `-x` and Envoy's hot restart
//! do; the new one serves on the very same sockets, then the old one stops accepting and
//! drains.
//!
//! Taking the sockets over, rather than binding new ones beside them, is what keeps the
//! clients waiting in a backlog: Linux resets the queue of a SO_REUSEPORT socket when it is
//! closed (unless `net.ipv4.tcp_migrate_req` is set), but a socket passed with SCM_RIGHTS is
//! the same socket in both processes and lives until the last descriptor closes.
//!
//! The exchange, on one connection to `upgrade_socket` (new process N, running process R):
//! 1. N sends `take\n`.
//! 2. R asks each worker for duplicates of its listening sockets and sends a header (4-byte
//!    big-endian length, then JSON: `{"pid", "listeners": [{"name", "protocol", "bind",
//!    "interface", "sockets"}], "admin"}`), then the descriptors in that order, and last the
//!    admin API's TCP socket when `admin` names its address, at most 64 per `sendmsg`
//!    (SCM_RIGHTS, one data byte each). The admin API is handed over like a listener, so a
//!    health check waiting in its backlog is answered by N, not reset.
//! 3. N binds its configuration, using a handed-over socket wherever a listener has the same
//!    protocol, address and interface (fresh sockets for the rest), starts, says READY (with
//!    its `MAINPID`) and sends `taken\n`.
//! 4. R stops accepting (its duplicates close; the sockets live on in N), ends its UDP
//!    sessions, lets its TCP connections finish up to `shutdown_timeout`, and exits. If N
//!    closes the connection without `taken`, R goes on serving as if nothing happened.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Protocol};

/// Descriptors sent per message (the kernel's SCM_MAX_FD is 253).
pub(crate) const FDS_PER_MESSAGE: usize = 64;
/// Longest wait for the other side during the exchange of sockets.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the new process to say `taken` after it got the sockets.
const TAKEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest header accepted.
const MAX_HEADER: u32 = 1 << 20;

/// Why a handover failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The running process could not be reached or the exchange broke off.
    #[error("upgrade from {path}: {what}: {source}")]
    Io {
        /// The `upgrade_socket` path.
        path: String,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The other side sent something that is not the protocol.
    #[error("upgrade from {path}: {message}")]
    Protocol {
        /// The `upgrade_socket` path.
        path: String,
        /// What was wrong.
        message: String,
    },
}

/// One listener as the running process describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Described {
    name: String,
    protocol: String,
    bind: SocketAddr,
    interface: Option<String>,
    sockets: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    pid: u32,
    listeners: Vec<Described>,
    /// The admin API's TCP address, when its socket follows the listeners' (absent from an
    /// older Ballast's header).
    #[serde(default)]
    admin: Option<SocketAddr>,
}

/// What the running side hands over: its listeners' sockets, and the admin API's.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Each listener and its sockets (one per worker).
    pub(crate) listeners: Vec<(ListenerInfo, Vec<OwnedFd>)>,
    /// The admin API's TCP socket and its address.
    pub(crate) admin: Option<(SocketAddr, OwnedFd)>,
}

/// Listening sockets taken over from a running process, not yet used.
#[derive(Debug)]
pub struct Inherited {
    /// The running process's id.
    pub pid: u32,
    listeners: Vec<(Described, Vec<OwnedFd>)>,
    admin: Option<(SocketAddr, OwnedFd)>,
    connection: UnixStream,
    path: PathBuf,
}

impl Inherited {
    /// Takes the sockets of the Ballast serving `upgrade_socket` at `path`: steps 1 and 2 of
    /// the exchange.
    ///
    /// # Errors
    /// [`HandoverError`] when nothing serves `path`, or the exchange breaks off or is garbled.
    pub fn take(path: &Path) -> Result<Inherited, HandoverError> {
        let io_err = |what| {
            let path = path.display().to_string();
            move |source| HandoverError::Io { path, what, source }
        };
        let mut c = UnixStream::connect(path).map_err(io_err("cannot connect"))?;
        c.set_read_timeout(Some(EXCHANGE_TIMEOUT))
            .and_then(|()| c.set_write_timeout(Some(EXCHANGE_TIMEOUT)))
            .and_then(|()| c.write_all(b"take\n"))
            .map_err(io_err("cannot ask for the sockets"))?;
        let mut len = [0u8; 4];
        c.read_exact(&mut len).map_err(io_err("no answer"))?;
        let len = u32::from_be_bytes(len);
        let garbled = |message: String| HandoverError::Protocol {
            path: path.display().to_string(),
            message,
        };
        if len > MAX_HEADER {
            return Err(garbled(format!("header of {len} bytes")));
        }
        let mut header = vec![0u8; len as usize];
        c.read_exact(&mut header)
            .map_err(io_err("cut off in the header"))?;
        let header: Header =
            serde_json::from_slice(&header).map_err(|e| garbled(format!("bad header: {e}")))?;
        let total: usize = header.listeners.iter().map(|l| l.sockets).sum::<usize>()
            + usize::from(header.admin.is_some());
        let mut fds = Vec::with_capacity(total);
        while fds.len() < total {
            let got = recv_fds(&c, FDS_PER_MESSAGE).map_err(io_err("cannot receive sockets"))?;
            if got.is_empty() {
                return Err(garbled(format!(
                    "closed after {} of {total} sockets",
                    fds.len()
                )));
            }
            fds.extend(got);
        }
        let admin = match header.admin {
            Some(addr) => fds.pop().map(|fd| (addr, fd)),
            None => None,
        };
        let mut fds = fds.into_iter();
        let listeners = header
            .listeners
            .into_iter()
            .map(|d| {
                let mine = fds.by_ref().take(d.sockets).collect();
                (d, mine)
            })
            .collect();
        Ok(Inherited {
            pid: header.pid,
            listeners,
            admin,
            connection: c,
            path: path.to_path_buf(),
        })
    }

    /// Most sockets handed over for one listener: the running process's worker count.
    pub fn workers(&self) -> usize {
        self.listeners
            .iter()
            .map(|(_, fds)| fds.len())
            .max()
            .unwrap_or(0)
    }

    /// The sockets handed over for a listener of `protocol` on `bind` (the configured address;
    /// port 0 matches the listener of the same name and IP) with `interface`, if any; each is
    /// taken once.
    pub(crate) fn sockets_for(
        &mut self,
        name: &str,
        protocol: Protocol,
        bind: SocketAddr,
        interface: Option<&str>,
    ) -> Vec<OwnedFd> {
        let Some((_, fds)) = self.listeners.iter_mut().find(|(d, fds)| {
            !fds.is_empty()
                && d.protocol == protocol.to_string()
                && d.interface.as_deref() == interface
                && (d.bind == bind
                    || (bind.port() == 0 && d.name == name && d.bind.ip() == bind.ip()))
        }) else {
            return Vec::new();
        };
        std::mem::take(fds)
    }

    /// The admin API's TCP socket handed over, if its address is `bind` (taken once).
    pub(crate) fn admin_socket(&mut self, bind: SocketAddr) -> Option<OwnedFd> {
        match self.admin.take() {
            Some((addr, fd)) if addr == bind => Some(fd),
            other => {
                self.admin = other;
                None
            }
        }
    }

    /// Step 3's end: tells the running process this one serves now, so it stops accepting.
    /// Sockets not taken by any listener are closed here (the new configuration dropped them).
    ///
    /// # Errors
    /// [`HandoverError::Io`] when the running process is gone; it stops anyway when it sees
    /// the connection close, but will not have heard `taken`.
    pub fn finish(mut self) -> Result<u32, HandoverError> {
        for (d, fds) in &self.listeners {
            if !fds.is_empty() {
                log::info!(
                    "upgrade: listener {} ({} on {}) is not in the new configuration; its \
                     sockets close",
                    d.name,
                    d.protocol,
                    d.bind
                );
            }
        }
        self.listeners.clear();
        let path = self.path.display().to_string();
        self.connection
            .write_all(b"taken\n")
            .map_err(|source| HandoverError::Io {
                path,
                what: "cannot tell the running process",
                source,
            })?;
        Ok(self.pid)
    }
}

/// The running side: serves `upgrade_socket` on its own thread.
#[derive(Debug)]
pub(crate) struct Offer {
    path: PathBuf,
    inode: u64,
}

impl Offer {
    /// Checks, before anything is bound, that no running Ballast serves `path`: a second
    /// process would join its listeners' SO_REUSEPORT groups unnoticed.
    ///
    /// # Errors
    /// `AddrInUse` naming `--upgrade-from` when something answers on `path`.
    pub(crate) fn check_free(path: &Path) -> io::Result<()> {
        if crate::net::unix_socket_live(path) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "a running Ballast serves it: start with `--upgrade-from {}` to take over \
                     from it",
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Binds `path` (mode 0600; a file already there is replaced, see [`Offer::check_free`])
    /// and serves handovers on a new thread: `share` collects duplicates of the listening
    /// sockets with their description, and `taken` is called once a new process has said
    /// `taken`; after that the thread ends.
    ///
    /// # Errors
    /// When `path` cannot be bound.
    pub(crate) fn serve(
        path: &Path,
        share: impl Fn() -> Shared + Send + 'static,
        taken: impl FnOnce() + Send + 'static,
        failed: impl Fn() + Send + 'static,
    ) -> io::Result<Offer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Checked free (check_free) or taken over from the running Ballast (an upgrade).
        let (listener, inode) = crate::net::bind_unix_socket(path, true)?;
        std::thread::Builder::new()
            .name("ballast-upgrade".into())
            .spawn(move || {
                for c in listener.incoming() {
                    let Ok(c) = c else { continue };
                    // Whether this exchange got as far as sharing (and so releasing) the sockets.
                    let shared = std::cell::Cell::new(false);
                    let sharing = || {
                        shared.set(true);
                        share()
                    };
                    match offer(c, &sharing) {
                        Ok(true) => {
                            taken();
                            return;
                        }
                        Ok(false) => {}
                        Err(e) => log::warn!("upgrade: handover broke off: {e}; serving on"),
                    }
                    if shared.get() {
                        failed();
                    }
                }
            })?;
        log::info!("upgrade_socket on {}", path.display());
        Ok(Offer {
            path: path.to_path_buf(),
            inode,
        })
    }

    /// Removes the socket file, unless a new process has bound its own there meanwhile.
    pub(crate) fn remove(&self) {
        crate::net::remove_unix_socket(&self.path, self.inode);
    }
}

/// What the new process needs to know of a listener to match it with its own.
#[derive(Debug, Clone)]
pub(crate) struct ListenerInfo {
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    pub(crate) bind: SocketAddr,
    pub(crate) interface: Option<String>,
}

/// Step 2 and 4 on one connection: `Ok(true)` once the new process has said `taken`.
fn offer(mut c: UnixStream, share: &impl Fn() -> Shared) -> io::Result<bool> {
    c.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    c.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut ask = [0u8; 5];
    c.read_exact(&mut ask)?;
    if &ask != b"take\n" {
        return Ok(false);
    }
    let Shared { listeners, admin } = share();
    let header = Header {
        pid: std::process::id(),
        listeners: listeners
            .iter()
            .map(|(l, fds)| Described {
                name: l.name.clone(),
                protocol: l.protocol.to_string(),
                bind: l.bind,
                interface: l.interface.clone(),
                sockets: fds.len(),
            })
            .collect(),
        admin: admin.as_ref().map(|(addr, _)| *addr),
    };
    let header = serde_json::to_vec(&header).map_err(io::Error::other)?;
    c.write_all(&(header.len() as u32).to_be_bytes())?;
    c.write_all(&header)?;
    let fds: Vec<RawFd> = listeners
        .iter()
        .flat_map(|(_, fds)| fds.iter().map(AsRawFd::as_raw_fd))
        .chain(admin.as_ref().map(|(_, fd)| fd.as_raw_fd()))
        .collect();
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        send_fds(&c, chunk)?;
    }
    log::info!(
        "upgrade: handed {} listening sockets of {} listeners to a new process; waiting for it \
         to serve",
        fds.len(),
        listeners.len()
    );
    // Our duplicates close here; the new process holds its own.
    drop(listeners);
    drop(admin);
    c.set_read_timeout(Some(TAKEN_TIMEOUT))?;
    let mut said = [0u8; 6];
    match c.read_exact(&mut said) {
        Ok(()) if &said == b"taken\n" => Ok(true),
        Ok(()) => Ok(false),
        Err(e) => {
            log::warn!("upgrade: the new process did not take over ({e}); serving on");
            Ok(false)
        }
    }
}

/// An iovec over the one data byte that carries each batch of descriptors.
fn one_byte(data: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// A msghdr over `iov` and the control buffer `control`; both must outlive its use.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid; the fields set below point at the caller's buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    msg
}

/// Sends `fds` (at most [`FDS_PER_MESSAGE`]) over `c` as SCM_RIGHTS with one data byte.
fn send_fds(c: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut data = [b'F'];
    let mut iov = one_byte(&mut data);
    let msg = message(&mut iov, &mut control);
    // SAFETY: `control` holds CMSG_SPACE(bytes), room for one header and `fds`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
    }
    // SAFETY: `msg` points at live buffers; the socket is ours.
    let sent = unsafe { libc::sendmsg(c.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message of at most `max` descriptors (close-on-exec); empty at end of stream.
fn recv_fds(c: &UnixStream, max: usize) -> io::Result<Vec<OwnedFd>> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((max * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut data = [0u8; 1];
    let mut iov = one_byte(&mut data);
    let mut msg = message(&mut iov, &mut control);
    // SAFETY: `msg` points at live buffers; the socket is ours.
    let n = unsafe { libc::recvmsg(c.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen with well-formed headers;
    // every descriptor in an SCM_RIGHTS message is new and ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors cut off (MSG_CTRUNC)"));
    }
    if n == 0 && fds.is_empty() {
        return Ok(Vec::new());
    }
    Ok(fds)
}

/// Groups `(worker, [(listener index, fd)])` answers by listener, in listener order.
pub(crate) fn by_listener(
    answers: Vec<Vec<(usize, OwnedFd)>>,
    describe: impl Fn(usize) -> Option<ListenerInfo>,
) -> Vec<(ListenerInfo, Vec<OwnedFd>)> {
    let mut grouped: BTreeMap<usize, Vec<OwnedFd>> = BTreeMap::new();
    for answer in answers {
        for (i, fd) in answer {
            grouped.entry(i).or_default().push(fd);
        }
    }
    grouped
        .into_iter()
        .filter_map(|(i, fds)| Some((describe(i)?, fds)))
        .collect()
}

/// For `config` taking over from `inherited`: raises `workers` to the running process's
/// count when it was higher (a worker's socket that nobody accepts on would strand its
/// backlog), with a warning.
pub(crate) fn fit_workers(config: &mut Config, inherited: &Inherited) {
    let theirs = inherited.workers();
    if theirs > config.workers {
        log::warn!(
            "upgrade: the running process has {theirs} sockets per listener and this one is \
             configured for {} workers; running {theirs} workers so every socket's backlog is \
             served (restart without --upgrade-from to change the count)",
            config.workers
        );
        config.workers = theirs;
    }
}
