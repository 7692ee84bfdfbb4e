//! Certificates that reload when their files change: a thread looks at every file the TLS
//! configurations were built from (listeners' certificates and keys, `target_tls` CA and
//! client certificates) once a second, and when one changed (its modification time, size or
//! inode: an in-place write, a rename over it, a symlink swapped as Kubernetes does with
//! secrets) asks [`Control::reload_certificates`] to build them afresh. Open connections keep
//! the sessions they have; a file that no longer loads is refused, named in the log, and the
//! running certificates stay.
//!
//! Polling rather than inotify: one `stat` per file per second costs nothing, and it sees
//! every way a file is replaced, whichever directory the change was made in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::control::Control;
use crate::generation::Generation;

/// How often the files are looked at.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file.
type Stamp = Option<(SystemTime, u64, u64)>;

/// Every file the TLS configurations of `generation` were read from.
fn files(generation: &Generation) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for l in generation.config.listeners.iter() {
        if let Some(tls) = &l.tls {
            for pair in &tls.certificates {
                out.push(pair.cert.clone());
                out.push(pair.key.clone());
            }
        }
    }
    for g in &generation.config.target_groups {
        if let Some(t) = &g.target_tls {
            out.extend(t.ca.clone());
            if let Some(pair) = &t.client_cert {
                out.push(pair.cert.clone());
                out.push(pair.key.clone());
            }
        }
    }
    out
}

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Each file's current stamp.
fn stamps(generation: &Generation) -> BTreeMap<PathBuf, Stamp> {
    files(generation)
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// Starts the watcher thread; it ends by itself once `control` is dropped.
///
/// # Errors
/// When the thread cannot be spawned.
pub(crate) fn start(control: &Arc<Control>) -> std::io::Result<()> {
    let weak: Weak<Control> = Arc::downgrade(control);
    // The first look now, not a second later: a file replaced meanwhile is a change.
    let mut seen = stamps(&control.generation());
    std::thread::Builder::new()
        .name("ballast-certs".into())
        .spawn(move || {
            loop {
                std::thread::sleep(INTERVAL);
                let Some(control) = weak.upgrade() else {
                    return;
                };
                let now = stamps(&control.generation());
                // A file new to the watch (a reload added it) is not a change.
                let changed: Vec<_> = now
                    .iter()
                    .filter(|(p, s)| seen.get(*p).is_some_and(|old| old != *s))
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                seen = now;
                if changed.is_empty() {
                    continue;
                }
                log::info!("TLS files changed ({}): reloading", changed.join(", "));
                match control.reload_certificates() {
                    Ok(s) => log::info!("certificates reloaded: generation {}", s.generation),
                    Err(e) => log::error!("certificates not reloaded, the running ones stay: {e}"),
                }
            }
        })
        .map(drop)
}
