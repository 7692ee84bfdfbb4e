//! The service manager's notification protocol (`sd_notify(3)`): with `NOTIFY_SOCKET` set (by
//! systemd for `Type=notify` units, or by anything else that wants to know), Ballast sends
//! `READY=1` once every listener is bound and every thread runs, `RELOADING=1` / `READY=1`
//! around a SIGHUP reload, `STOPPING=1` when it begins to stop, and a `STATUS=` line each
//! time. Beside them, for tools and tests, it sends where it listens, machine-readably:
//! `X_BALLAST_ADMIN=ip:port` and `X_BALLAST_LISTENERS=name=ip:port,...` (the addresses bound,
//! port 0 resolved; systemd ignores variables it does not know).
//!
//! Without `NOTIFY_SOCKET` every call does nothing. Failures are logged at debug and never
//! stop the service.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;

use crate::generation::Generation;

/// Sends `message` (newline-separated `KEY=value` assignments) to `NOTIFY_SOCKET`, if set: a
/// path, or an abstract socket name written with a leading `@`.
pub(crate) fn send(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &target),
        }
    });
    if let Err(e) = result {
        log::debug!("NOTIFY_SOCKET {target:?}: cannot notify: {e}");
    }
}

/// `X_BALLAST_LISTENERS=name=ip:port,...` for the listeners `generation` serves.
fn listeners(generation: &Generation) -> String {
    let list: Vec<String> = generation
        .listeners
        .iter()
        .filter(|l| !l.removed)
        .map(|l| format!("{}={}", l.config.name, l.config.bind))
        .collect();
    format!("X_BALLAST_LISTENERS={}", list.join(","))
}

/// Ready to serve: every listener bound, every thread started.
pub(crate) fn ready(generation: &Generation, admin: Option<SocketAddr>) {
    let admin = admin.map_or(String::new(), |a| format!("X_BALLAST_ADMIN={a}\n"));
    send(&format!(
        "READY=1\nSTATUS=serving {} listeners with {} workers\n{admin}{}\nMAINPID={}",
        generation.listeners.iter().filter(|l| !l.removed).count(),
        generation.config.workers,
        listeners(generation),
        std::process::id()
    ));
}

/// A reload (SIGHUP) begins; `CLOCK_MONOTONIC` as `Type=notify-reload` asks.
pub(crate) fn reloading() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// A change (reload, target or listener added) is applied: ready again, with the listeners
/// now served.
pub(crate) fn changed(generation: &Generation) {
    send(&format!(
        "READY=1\nSTATUS=generation {} applied\n{}",
        generation.generation,
        listeners(generation)
    ));
}

/// A change of state worth showing in `systemctl status` (a node drain).
pub(crate) fn status(message: &str) {
    send(&format!("STATUS={message}"));
}

/// A reload was refused (`why`, its first line): ready again with the running generation,
/// and the reason in `STATUS=` (`systemctl status` shows it).
pub(crate) fn refused(generation: &Generation, why: &str) {
    send(&format!(
        "READY=1\nSTATUS=reload refused, generation {} stays: {}",
        generation.generation,
        why.lines().next().unwrap_or_default()
    ));
}

/// A graceful stop begins.
pub(crate) fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}
