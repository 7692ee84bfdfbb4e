//! The admin API: a small HTTP server (tiny_http) on its own thread, JSON in and out.
//!
//! - `GET /healthz`: Ballast's own liveness.
//! - `GET /targets`: per group and target: health, weight, backup, active and total
//!   connections, bytes each way, connect failures.
//! - `GET /metrics`: Prometheus text exposition ([`metrics`]).
//! - `GET /connections?limit=N`: the workers' connection tables (asked over their command
//!   channels, each woken through its poll's waker).
//! - `POST /target-groups/{group}/targets/{address}/drain`: the target takes no new
//!   connections or sessions; existing ones go on (`GET /targets` shows how many remain).
//! - `POST /target-groups/{group}/targets/{address}/disable`: drain, then close what is still
//!   open after the group's `drain_timeout`.
//! - `POST /target-groups/{group}/targets/{address}/enable`: back in service.
//!
//! With `admin.token_file`, every request needs `Authorization: Bearer <token>` (401
//! otherwise). Errors are `{"error": "..."}` with a 4xx status.

pub mod metrics;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::target::{AdminState, Shared};
use crate::worker::{Command, WorkerLink};

/// The running admin server.
pub struct Admin {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Admin {
    /// Binds `shared.config.admin.bind` and serves on a new thread.
    ///
    /// # Errors
    /// When the address cannot be bound or the thread cannot start.
    pub fn start(shared: Arc<Shared>, workers: Vec<WorkerLink>) -> io::Result<Admin> {
        let bind = shared.config.admin.bind;
        let server = Arc::new(Server::http(bind).map_err(|e| io::Error::other(e.to_string()))?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("admin server has no IP address"))?;
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("ballast-admin".into())
            .spawn(move || {
                for request in s.incoming_requests() {
                    handle(&shared, &workers, request);
                }
            })?;
        log::info!("admin API on http://{addr}");
        Ok(Admin {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json_response(status: u16, body: serde_json::Value) -> Response<io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(Header::from_bytes("Content-Type", "application/json").expect("valid header"))
}

fn error(status: u16, message: &str) -> Response<io::Cursor<Vec<u8>>> {
    json_response(status, json!({ "error": message }))
}

fn authorized(shared: &Shared, request: &Request) -> bool {
    let Some(token) = &shared.config.admin.token else {
        return true;
    };
    request.headers().iter().any(|h| {
        h.field.equiv("Authorization")
            && h.value.as_str().strip_prefix("Bearer ") == Some(token.as_str())
    })
}

fn handle(shared: &Arc<Shared>, workers: &[WorkerLink], request: Request) {
    let response = if !authorized(shared, &request) {
        error(401, "missing or wrong bearer token")
    } else {
        let path = request.url().split('?').next().unwrap_or("").to_string();
        match (request.method(), path.as_str()) {
            (Method::Get, "/healthz") => json_response(200, json!({ "status": "ok" })),
            (Method::Get, "/targets") => json_response(200, targets(shared)),
            (Method::Get, "/connections") => match limit(request.url()) {
                Ok(limit) => json_response(200, connections(workers, limit)),
                Err(message) => error(400, &message),
            },
            (Method::Get, "/metrics") => Response::from_data(metrics::encode(shared).into_bytes())
                .with_header(
                    Header::from_bytes(
                        "Content-Type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .expect("valid header"),
                ),
            (_, "/healthz" | "/targets" | "/metrics" | "/connections") => {
                error(405, "method not allowed")
            }
            (method, _) if path.starts_with("/target-groups/") => {
                target_action(shared, workers, method, &path)
            }
            _ => error(404, &format!("no such endpoint: {path}")),
        }
    };
    if let Err(e) = request.respond(response) {
        log::debug!("admin API: cannot answer: {e}");
    }
}

/// `limit=N` from a query string; 1,000 when absent.
fn limit(url: &str) -> Result<usize, String> {
    let Some(query) = url.split_once('?').map(|(_, q)| q) else {
        return Ok(1000);
    };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return v
                .parse()
                .map_err(|_| format!("limit must be a whole number, not `{v}`"));
        }
    }
    Ok(1000)
}

/// `GET /connections`: every worker's connection table, at most `limit` entries in all.
fn connections(workers: &[WorkerLink], limit: usize) -> serde_json::Value {
    let (reply, replies) = crossbeam_channel::unbounded();
    let asked = workers
        .iter()
        .filter(|w| {
            w.send(Command::Snapshot {
                limit,
                reply: reply.clone(),
            })
        })
        .count();
    drop(reply);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut entries = Vec::new();
    for _ in 0..asked {
        let Ok(batch) = replies.recv_deadline(deadline) else {
            break; // a worker that does not answer in time is left out, not waited for
        };
        entries.extend(batch);
    }
    entries.truncate(limit);
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|c| {
            json!({
                "protocol": c.protocol.to_string(),
                "client": c.client.to_string(),
                "listener": c.listener,
                "target": c.target.map(|t| t.to_string()),
                "age_ms": c.age.as_millis() as u64,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
            })
        })
        .collect();
    json!({ "connections": list })
}

/// `POST /target-groups/{group}/targets/{address}/{drain|enable}`.
fn target_action(
    shared: &Arc<Shared>,
    workers: &[WorkerLink],
    method: &Method,
    path: &str,
) -> Response<io::Cursor<Vec<u8>>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["target-groups", group, "targets", address, action] = parts[..] else {
        return error(404, &format!("no such endpoint: {path}"));
    };
    if *method != Method::Post {
        return error(405, "use POST");
    }
    let state = match action {
        "drain" => AdminState::Draining,
        "enable" => AdminState::Active,
        "disable" => AdminState::Disabled,
        other => {
            return error(
                404,
                &format!("unknown action `{other}`: drain, disable or enable"),
            )
        }
    };
    let Some(gi) = shared.groups.iter().position(|g| g.name() == group) else {
        return error(404, &format!("unknown target group `{group}`"));
    };
    let g = &shared.groups[gi];
    let address = percent_decode(address);
    let Some(i) = g
        .targets
        .iter()
        .position(|t| t.address.to_string() == address)
    else {
        return error(
            404,
            &format!("target group `{group}` has no target `{address}`"),
        );
    };
    if g.set_admin_state(i, state) {
        log::info!("target group {group}: {address} is now {state} (admin API)");
        if state == AdminState::Disabled {
            close_after_drain_timeout(shared, workers, gi, i);
        }
    }
    json_response(200, target_json(&g.targets[i]))
}

/// After the group's `drain_timeout`, closes whatever is still open to target `index` of
/// group `g` — unless it was enabled again meanwhile. A timer thread waits, so the API answers
/// at once.
fn close_after_drain_timeout(shared: &Arc<Shared>, workers: &[WorkerLink], g: usize, index: usize) {
    let wait = shared.groups[g].config.drain_timeout;
    let (shared, workers) = (shared.clone(), workers.to_vec());
    let spawned = std::thread::Builder::new()
        .name("ballast-disable".into())
        .spawn(move || {
            std::thread::sleep(wait); // the drain_timeout itself, not a stand-in for an event
            let target = &shared.groups[g].targets[index];
            if target.admin_state() == AdminState::Disabled {
                log::info!(
                    "target group {}: {}: drain_timeout passed; closing what is still open",
                    shared.groups[g].name(),
                    target.address
                );
                for w in &workers {
                    w.send(Command::CloseTarget {
                        group: g,
                        target: index,
                    });
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the disable timer: {e}");
    }
}

/// Undoes the percent-encoding a client may apply to `[`, `]` and `:` in an address.
fn percent_decode(s: &str) -> String {
    s.replace("%5B", "[")
        .replace("%5b", "[")
        .replace("%5D", "]")
        .replace("%5d", "]")
        .replace("%3A", ":")
        .replace("%3a", ":")
}

fn target_json(t: &crate::target::Target) -> serde_json::Value {
    json!({
        "address": t.address.to_string(),
        "weight": t.weight,
        "backup": t.backup,
        "health": if t.is_healthy() { "healthy" } else { "unhealthy" },
        "admin_state": t.admin_state().to_string(),
        "active": t.active.load(Ordering::Relaxed),
        "total": t.total.load(Ordering::Relaxed),
        "connect_failures": t.connect_failures.load(Ordering::Relaxed),
        "bytes_to_target": t.bytes_to_target.load(Ordering::Relaxed),
        "bytes_from_target": t.bytes_from_target.load(Ordering::Relaxed),
    })
}

/// The `GET /targets` document.
fn targets(shared: &Shared) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = shared
        .groups
        .iter()
        .map(|g| {
            let targets: Vec<serde_json::Value> = g.targets.iter().map(target_json).collect();
            json!({
                "name": g.name(),
                "algorithm": g.config.algorithm.to_string(),
                "targets": targets,
            })
        })
        .collect();
    json!({ "target_groups": groups })
}
