//! A fleet kept in step through etcd (`cluster:`): a thread with its own (single-threaded)
//! tokio runtime and an etcd client (`etcd-client`) reads the fleet's keys
//! ([`keys`]), watches them, and applies every change through the admin API's own path
//! ([`Control::set_fleet_targets`], [`Control::set_admin_state`]); it writes the changes the
//! admin API asks of the fleet ([`crate::control::fleet::FleetChange`]) and this node's
//! record, held by a lease.
//!
//! Faults: etcd unreachable → the node keeps serving with the state it applied last,
//! readiness untouched, one warning per 10 s, `ballast_fleet_etcd_connected` 0; etcd back →
//! the watch resumes from the revision after the last one applied (a compacted revision: the
//! whole state is read again and only its differences applied, so nothing flaps). At start a
//! refused login (wrong user or password) stops Ballast with that error; an unreachable etcd
//! does not (the file's targets serve until it answers).

mod keys;
mod session;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::fleet::{FleetLink, FleetStatus};
use crate::control::Control;

/// Longest the start waits for etcd's state before serving the file's.
const START_WAIT: Duration = Duration::from_secs(5);

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetStartError {
    /// etcd refused this node's credentials (or its permissions on the prefix).
    #[error(
        "etcd refused the login of cluster.etcd.username `{user}` (config {config}): {message}"
    )]
    Login {
        /// The user.
        user: String,
        /// The config file.
        config: String,
        /// etcd's words.
        message: String,
    },
    /// The thread could not be started.
    #[error("cannot start the fleet thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// How the first exchange with etcd went.
#[derive(Debug)]
pub(crate) enum First {
    /// The fleet's state at this revision is applied.
    Applied(i64),
    /// Credentials refused: the message.
    Refused(String),
    /// Not reached (yet): why.
    Unreachable(String),
}

/// Starts the fleet thread when the configuration has `cluster:`, and waits (at most 5 s)
/// for etcd's state to be applied, so a restarted node serves the fleet's targets, not its
/// file's. The thread ends once `control` is dropped.
///
/// # Errors
/// [`FleetStartError::Login`] when etcd refuses the credentials; [`FleetStartError::Thread`].
pub(crate) fn start(control: &Arc<Control>) -> Result<(), FleetStartError> {
    let generation = control.generation();
    let Some(cluster) = generation.config.cluster.clone() else {
        return Ok(());
    };
    let (requests, incoming) = tokio::sync::mpsc::unbounded_channel();
    let link = Arc::new(FleetLink {
        node_id: cluster.node_id.clone(),
        prefix: cluster.etcd.prefix.clone(),
        requests,
        status: Mutex::new(FleetStatus::default()),
        errors: AtomicU64::new(0),
        apply_errors: AtomicU64::new(0),
        waiting: AtomicUsize::new(0),
        leave: tokio::sync::Notify::new(),
        left: crossbeam_channel::bounded(1),
    });
    control.set_fleet_link(link.clone());
    let (first_tx, first) = crossbeam_channel::bounded(1);
    let weak = Arc::downgrade(control);
    let thread_cluster = cluster.clone();
    std::thread::Builder::new()
        .name("ballast-fleet".into())
        .spawn(move || session::run(weak, thread_cluster, link, incoming, first_tx))?;
    let endpoints = cluster.etcd.endpoints.join(", ");
    match first.recv_timeout(START_WAIT) {
        Ok(First::Applied(revision)) => log::info!(
            "fleet {} (node {}): applied etcd's state at revision {revision} ({endpoints})",
            cluster.etcd.prefix,
            cluster.node_id
        ),
        Ok(First::Refused(message)) => {
            return Err(FleetStartError::Login {
                user: cluster
                    .etcd
                    .user
                    .map(|(u, _)| u)
                    .unwrap_or_else(|| "(none)".into()),
                config: generation.config.path.display().to_string(),
                message,
            })
        }
        Ok(First::Unreachable(why)) => log::warn!(
            "fleet {}: etcd ({endpoints}) not reached: {why}; serving the file's targets \
             until it answers",
            cluster.etcd.prefix
        ),
        Err(_) => log::warn!(
            "fleet {}: etcd ({endpoints}) did not answer within {START_WAIT:?}; serving the \
             file's targets until it answers",
            cluster.etcd.prefix
        ),
    }
    Ok(())
}
