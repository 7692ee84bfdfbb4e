//! The admin API with `cluster:`: changes to targets go to the fleet (etcd) unless the
//! request says `local=1`, and `GET /fleet` lists the fleet's nodes.

use std::sync::Arc;

use serde_json::json;

use super::{error, json_response, query, Reply};
use crate::control::fleet::{FleetChange, FleetLink};
use crate::control::Control;

/// The fleet a change of `url` goes to: `None` without `cluster:`, or with `local=1`
/// (`true`).
pub(super) fn fleet<'c>(control: &'c Control, url: &str) -> Option<&'c Arc<FleetLink>> {
    let local = matches!(query(url, "local"), Some("1" | "true"));
    control.fleet().filter(|_| !local)
}

/// Writes `change` to the fleet (see [`FleetLink::write`]): the etcd revision that holds it,
/// or the reply to send (the refusal's 4xx, 503 when etcd did not take it).
pub(super) fn write(link: &FleetLink, change: FleetChange) -> Result<i64, Reply> {
    link.write(change)
        .map_err(|e| error(e.status(), &e.to_string()))
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
    // In step: the same state applied, whatever revisions each saw on the way (a node that
    // read the state whole never saw the revisions of deletes before it).
    let latest = s
        .nodes
        .values()
        .map(|n| n.revision)
        .chain([s.applied_revision])
        .max();
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
                "state": n.state,
                // This node's own record may lag what it serves by a tick (0.2 s).
                "up_to_date": n.state == s.state || n.id == link.node_id,
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
            "latest_revision": latest.unwrap_or(0),
            "state": s.state,
            "nodes": nodes,
            "vanished": s.vanished.iter().map(|(id, since)| json!({
                "id": id,
                "seconds_ago": crate::control::fleet::unix_ms().saturating_sub(*since) / 1000,
            })).collect::<Vec<_>>(),
            "leaders": s.leaders,
        }),
    )
}
