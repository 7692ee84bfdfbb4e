//! The admin API with `cluster:`: changes to targets go to the fleet (etcd) unless the
//! request says `local=1`, and `GET /fleet` lists the fleet's nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{error, json_response, query, Reply};
use crate::control::fleet::{FleetChange, FleetLink, FleetRequest};
use crate::control::Control;

/// Longest wait for the fleet thread's answer (etcd's own timeouts are shorter).
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Longest wait, once etcd holds a change, for this node to have applied it.
const APPLY_WAIT: Duration = Duration::from_secs(3);

/// The fleet a change of `url` goes to: `None` without `cluster:`, or with `local=1`
/// (`true`).
pub(super) fn fleet<'c>(control: &'c Control, url: &str) -> Option<&'c Arc<FleetLink>> {
    let local = matches!(query(url, "local"), Some("1" | "true"));
    control.fleet().filter(|_| !local)
}

/// Writes `change` to the fleet and waits (at most [`APPLY_WAIT`]) until this node has
/// applied it: the etcd revision that holds it, or the reply to send (the refusal's 4xx,
/// 503 when etcd did not take it).
pub(super) fn write(link: &FleetLink, change: FleetChange) -> Result<i64, Reply> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    if link.requests.send(FleetRequest { change, reply }).is_err() {
        return Err(error(503, "the fleet thread has stopped"));
    }
    let revision = match answer.recv_timeout(ANSWER_WAIT) {
        Ok(Ok(revision)) => revision,
        Ok(Err(e)) => return Err(error(e.status(), &e.to_string())),
        Err(_) => {
            return Err(error(
                503,
                &format!(
                    "no answer from etcd within {ANSWER_WAIT:?}: the change may or may not be made"
                ),
            ))
        }
    };
    let deadline = Instant::now() + APPLY_WAIT;
    while applied(link) < revision && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(revision)
}

/// The revision of the fleet's state this node has applied.
fn applied(link: &FleetLink) -> i64 {
    link.status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .applied_revision
}

/// `GET /fleet`: this node's view of the fleet.
pub(super) fn status(control: &Control) -> Reply {
    let Some(link) = control.fleet() else {
        return error(
            404,
            "this node is not part of a fleet (no `cluster:` in its config)",
        );
    };
    let s = link
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let latest = s
        .nodes
        .values()
        .map(|n| n.revision)
        .chain([s.applied_revision])
        .max()
        .unwrap_or(0);
    let nodes: Vec<_> = s
        .nodes
        .values()
        .map(|n| {
            json!({
                "id": n.id,
                "version": n.version,
                "generation": n.generation,
                "ready": n.ready,
                "revision": n.revision,
                "up_to_date": n.revision >= latest,
                "this_node": n.id == link.node_id,
            })
        })
        .collect();
    json_response(
        200,
        json!({
            "node_id": link.node_id,
            "prefix": link.prefix,
            "etcd_connected": s.connected,
            "last_error": s.last_error,
            "applied_revision": s.applied_revision,
            "latest_revision": latest,
            "nodes": nodes,
        }),
    )
}
