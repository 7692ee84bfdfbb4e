//! The admin API's and the upgrade's UNIX listening sockets: made so nobody the mode excludes
//! ever connects, never in another process's place, never over a file that is not a socket.
//!
//! Two Ballasts starting at once take turns: the socket's directory is locked (`flock`, only
//! Ballast takes it) while one checks the path and puts its socket there.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// The longest path of a UNIX socket Ballast makes: `sun_path` holds 107 bytes, and the
/// socket is first bound under a temporary name 12 bytes longer (`.PID.tmp`).
pub(crate) const MAX_SOCKET_PATH: usize = 95;

/// How long a start waits for another Ballast to finish putting its socket in the directory.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A UNIX listening socket at `path`, mode 0600 before it accepts anything (bound under a
/// temporary name in the same directory, restricted, then made to listen and renamed over
/// `path`), and its inode (for [`remove_unix_socket`]). A stale socket file at `path` is
/// replaced; a live one (a process accepts on it, or holds a socket of another type there)
/// only when `replace_live` (a new Ballast taking over from a running one); anything else
/// there is left alone.
///
/// # Errors
/// `AlreadyExists` when `path` (or the temporary name) holds something other than a socket
/// (a typo must not delete a file); `AddrInUse` when a process serves `path` and not
/// `replace_live`; `WouldBlock` when another Ballast holds the directory's lock for
/// [`LOCK_WAIT`]; otherwise the bind's, chmod's, listen's or rename's error.
pub(crate) fn bind_unix_socket(
    path: &Path,
    replace_live: bool,
) -> io::Result<(std::os::unix::net::UnixListener, u64)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let _lock = DirLock::take(dir)?;
    if let Some(kind) = not_a_socket(path) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is {kind}: refusing to replace it",
                path.display()
            ),
        ));
    }
    if !replace_live && unix_socket_live(path) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process holds a socket at {}: refusing to take its place",
                path.display()
            ),
        ));
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    if let Some(kind) = not_a_socket(&temporary) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} (the temporary name of {}) exists and is {kind}",
                temporary.display(),
                path.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(&temporary);
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // Restricted between bind (which creates the file, with the umask's mode) and listen:
    // a connect before listen is refused, so nobody the mode excludes ever gets in.
    let placed = socket
        .bind(&socket2::SockAddr::unix(&temporary)?)
        .and_then(|()| std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600)))
        .and_then(|()| socket.listen(1024))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    let inode = std::fs::metadata(path)?.ino();
    Ok((socket.into(), inode))
}

/// What is at `path` when it is there and not a socket ("a directory", "a file", …).
fn not_a_socket(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    Some(if kind.is_socket() {
        return None;
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else {
        "not a socket"
    })
}

/// Whether a process holds the UNIX socket at `path`: a stream connect succeeds or finds
/// its backlog full, or a socket of another type (datagram, seqpacket) is bound there. A
/// stale socket file refuses the connect. Never waits.
pub(crate) fn unix_socket_live(path: &Path) -> bool {
    let Ok(socket) = Socket::new(Domain::UNIX, Type::STREAM, None) else {
        return false;
    };
    let Ok(address) = socket2::SockAddr::unix(path) else {
        return false;
    };
    let _ = socket.set_nonblocking(true);
    match socket.connect(&address) {
        Ok(()) => true,
        Err(e) => {
            e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EPROTOTYPE)
        }
    }
}

/// Removes the UNIX socket at `path` if it is still the one with `inode` (not one another
/// process bound there since, as a new Ballast taking over does).
pub(crate) fn remove_unix_socket(path: &Path, inode: u64) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == inode) {
        let _ = std::fs::remove_file(path);
    }
}

/// An exclusive `flock` on a directory, released when dropped (the descriptor closes).
struct DirLock {
    _dir: std::fs::File,
}

impl DirLock {
    /// Locks `dir`, waiting at most [`LOCK_WAIT`] for another holder.
    fn take(dir: &Path) -> io::Result<DirLock> {
        let file = std::fs::File::open(dir)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            // SAFETY: flock(2) on a descriptor `file` owns, for as long as it lives.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(DirLock { _dir: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} stays locked by another Ballast starting", dir.display()),
                ));
            }
            // Bounded (LOCK_WAIT): another start holds it for a bind and a rename.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
