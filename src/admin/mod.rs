//! The admin API: a small HTTP server (hyper on a one-thread runtime, [`server`]) on its own
//! thread, JSON in and out.
//!
//! - `GET /healthz`: readiness, for whatever routes clients to this node (keepalived's
//!   `track_script`, a BGP speaker's check, a cloud balancer): 200 `{"status": "ready"}` only
//!   while the node serves; 503 `{"status": "unavailable", "reasons": [...]}` while it drains,
//!   is drained or stopping, a worker is being restarted, no target in service is reachable
//!   from the node, or a listener with `readiness: healthy_target` has no healthy target in
//!   service ([`crate::node::Node::readiness`]).
//! - `GET /livez`: liveness: 200 whenever the admin thread answers, ready or not.
//! - `GET /node`: the node's service state (`serving`, `draining`, `drained`, `stopping`),
//!   whether it is ready, and why not; version, PID, uptime, workers, the configuration
//!   file, generation.
//! - `POST /node/drain[?grace=DURATION]`: node drain: `/healthz` fails at once, listeners keep
//!   accepting for the grace (default `node_drain_grace`, 5 s), then close; open connections go on.
//!   202. `POST /node/enable`: serving again (listeners bound afresh if they had closed).
//! - `GET /`: the live status page ([`page`]): listeners, target groups and targets with
//!   health, admin state, counters and rates, and drain / disable / enable buttons.
//! - `GET /targets`: per group and target: health, admin state, weight, backup, active and
//!   total connections, bytes each way, connect failures, the last check's result, time and
//!   latency, the last failed check's reason and time (`last_failure`: kept after the target
//!   recovers), the time of the last state change; per group with a `queue:`, its size,
//!   timeout, connections waiting now, served after waiting and refused (full, timeout), the
//!   milliseconds they waited in all (served and timed out); `server_id` and `tokens` of
//!   targets that have them; per
//!   target with an `agent_check`, `agent`: what its agent last said (or why it could not be
//!   asked) and what that set (mode `ready`/`drain`/`maint`, weight percent, down).
//! - `GET /listeners`: per listener: protocol, the address bound, target group, SNI and
//!   PostgreSQL routes, open, accepted and refused connections (and refusals by reason).
//! - `GET /targets?format=csv`, `GET /listeners?format=csv`: the same as CSV, one row per
//!   target or listener, for spreadsheets and scripts (as HAProxy's `;csv`).
//! - `GET /metrics`: Prometheus text exposition ([`metrics`]).
//! - `GET /connections?limit=N`: the workers' connection tables (asked over their message
//!   channels, each woken through its poll's waker). `client` is as the access log has it
//!   (a PROXY header's source when one was read), `peer` the 5-tuple's client side.
//! - `POST /target-groups/{group}/targets` with `{"address": "host:port", "weight": 1,
//!   "backup": false, "max_connections": N}` (all but `address` optional): adds a target; it
//!   takes traffic once it passes the group's health check. 201; 409 if already there, or
//!   for a weight other than 1 in a `round_robin` group (which ignores weights).
//! - `DELETE /target-groups/{group}/targets/{address}`: removes a target: it takes nothing
//!   new, its connections go on, what is left after the group's `drain_timeout` is closed.
//! - `POST /target-groups/{group}/targets/{address}/drain`: the target takes no new
//!   connections or sessions; existing ones go on (`GET /targets` shows how many remain).
//! - `POST /target-groups/{group}/targets/{address}/disable`: drain, then close what is still
//!   open after the group's `drain_timeout`.
//! - `POST /target-groups/{group}/targets/{address}/enable`: back in service.
//! - `POST /target-groups/{group}/targets/{address}/weight` with `{"weight": N}` (1 to
//!   10,000): the target's weight, the group's algorithm rebuilt with it; open connections
//!   keep their targets.
//! - `POST /target-groups/{group}/targets/{address}/tokens` with `{"add": ["t0k3n"],
//!   "remove": [...]}` (each optional; a token as text or `base64:…`): the tokens a `token:`
//!   listener routes to the target; 409 for a token another target holds, 400 for one of
//!   another size than a listener reads. Answers the target's tokens.
//! - `DELETE /connections/{id}` (`id` as `GET /connections` lists it, `WORKER.N`): ends that
//!   TCP connection (both sides reset) or UDP session; 404 when it has ended already.
//! - `POST /reload`: re-read the configuration file (as SIGHUP); 400 with the message when it
//!   is invalid, and the running configuration stays.
//! - `POST /debug/panic/{worker/N|prober|admin}`: only in debug builds and with the
//!   `fault-injection` feature (`fault`): makes that thread panic, to test supervision.
//!
//! With `admin.token_file`, every request but `GET /healthz` and `GET /livez` (which checkers
//! call without secrets) needs `Authorization: Bearer <token>`, or HTTP Basic with the token
//! as password (what a browser sends after the status page's log-in prompt; held to the
//! cross-site rules of [`server`]); 401 otherwise. Errors are `{"error": "..."}` with a 4xx
//! status. Targets added or removed and weights set through the API last until the next
//! reload, which applies the file's targets and weights; admin states (drained, disabled) of
//! targets still in the file survive a reload.

mod accept;
mod csv;
mod fleet;
pub(crate) mod metrics;
mod page;
mod server;
mod slots;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use hyper::Method;
use serde_json::json;

use crate::config::TargetConfig;
use crate::control::fleet::FleetChange;
use crate::control::{ChangeError, Control, Summary};
use crate::fault::Faults;
use crate::generation::Generation;
use crate::target::AdminState;

/// The running admin server.
#[derive(Debug)]
pub(crate) struct Admin {
    server: server::Server,
}

impl Admin {
    /// Serves the current configuration's `admin.bind` (on `inherited`, the socket a running
    /// Ballast handed over for that address, or a socket bound now) and `admin.unix`, if set,
    /// on a new thread. `upgrading`: this process takes over from a running Ballast, whose
    /// `admin.unix` socket it replaces (otherwise a live socket there is refused).
    ///
    /// # Errors
    /// When an address cannot be bound (or `admin.unix` is another process's live socket) or
    /// the thread cannot start.
    pub(crate) fn start(
        control: Arc<Control>,
        inherited: Option<std::os::fd::OwnedFd>,
        upgrading: bool,
    ) -> io::Result<Admin> {
        let admin = control.generation().config.admin.clone();
        let server = server::Server::start(
            control,
            admin.bind,
            admin.unix.as_deref(),
            inherited,
            upgrading,
        )?;
        log::info!("admin API on http://{}", server.addr());
        if let Some(path) = &admin.unix {
            log::info!("admin API on unix:{}", path.display());
        }
        Ok(Admin { server })
    }

    /// Where the API listens (TCP).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The TCP socket and its address, duplicated for a new process taking over.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated.
    pub(crate) fn share(&self) -> io::Result<(SocketAddr, std::net::TcpListener)> {
        Ok((self.server.addr(), self.server.share()?))
    }

    /// Stops accepting (a new process serves the API now); the requests being served are
    /// answered in the background. Returns at once; [`Admin::stop`] waits for them.
    pub(crate) fn stop_accepting(&self) {
        self.server.stop_accepting();
    }

    /// Stops serving: the requests being served are answered (up to
    /// [`server::STOP_GRACE`]); waits for the thread.
    pub(crate) fn stop(self) {
        self.server.stop();
    }
}

/// An admin API response: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body: JSON, or the metrics text.
    pub body: Vec<u8>,
}

fn json_response(status: u16, body: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: body.to_string().into_bytes(),
    }
}

fn error(status: u16, message: &str) -> Reply {
    json_response(status, json!({ "error": message }))
}

/// Whether `token` (the bearer token sent, if any) opens `path` under `generation`'s
/// configuration: always without a configured token, and for `GET /healthz` and `/livez`;
/// else it must equal the configured token, compared in constant time (`subtle`).
pub(crate) fn authorized(
    generation: &Generation,
    method: &Method,
    path: &str,
    token: Option<&str>,
) -> bool {
    use subtle::ConstantTimeEq;
    let open = *method == Method::GET && matches!(path, "/healthz" | "/livez");
    match generation.config.admin.token.as_deref() {
        None => true,
        Some(_) if open => true,
        Some(want) => token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(want.as_bytes()))),
    }
}

/// `POST /debug/panic/{worker/N|prober|admin}` (debug builds and the `fault-injection` feature
/// only): makes that thread panic, to test the supervision.
fn inject_panic(control: &Arc<Control>, which: &str) -> Reply {
    match which.split('/').collect::<Vec<_>>()[..] {
        ["worker", n] => match n.parse::<usize>() {
            Ok(i) if control.panic_worker(i) => json_response(202, json!({ "panic": which })),
            _ => error(404, &format!("no worker {n}")),
        },
        ["prober"] => {
            control.faults().panic_prober();
            json_response(202, json!({ "panic": which }))
        }
        ["admin"] => crate::fault::injected_panic("an admin request handler"),
        _ => error(404, &format!("no such thread: {which}")),
    }
}

/// Largest request body read, bytes (a target is a few dozen).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The answer to one admin API request: `method` on `url` (path and query) with the bearer
/// `token` sent, if any; `body` reads the request body, called only by endpoints that take
/// one. Every bad request gets a 4xx with `{"error": "..."}`; nothing here panics on input
/// (fuzzed: `integration/fuzz`), but for the debug-only `/debug/panic/admin`.
pub fn answer(
    control: &Arc<Control>,
    method: &Method,
    url: &str,
    token: Option<&str>,
    body: impl FnOnce() -> Result<String, String>,
) -> Reply {
    let generation = control.generation();
    let path = url.split('?').next().unwrap_or("");
    // HEAD is GET without the body (hyper leaves the body out).
    let method = if *method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    if !authorized(&generation, method, path, token) {
        return error(401, "missing or wrong bearer token");
    }
    match (method, path) {
        (&Method::GET, "/healthz") => {
            let reasons = control.node().readiness(&generation);
            if reasons.is_empty() {
                json_response(200, json!({ "status": "ready" }))
            } else {
                json_response(503, json!({ "status": "unavailable", "reasons": reasons }))
            }
        }
        (&Method::GET, "/livez") => json_response(200, json!({ "status": "alive" })),
        (&Method::GET, "/node") => json_response(200, node_json(control, &generation)),
        (&Method::POST, "/node/drain") => match query_duration(url, "grace") {
            Ok(grace) => {
                control.drain_node(grace.unwrap_or(generation.config.node_drain_grace));
                json_response(202, node_json(control, &generation))
            }
            Err(message) => error(400, &message),
        },
        (&Method::POST, "/node/enable") => match control.enable_node() {
            Ok(_) => json_response(200, node_json(control, &control.generation())),
            Err(e) => error(e.status(), &e.to_string()),
        },
        (&Method::GET, "/targets") if query(url, "format") == Some("csv") => {
            csv::reply(csv::targets(&targets(&generation, control.fleet())))
        }
        (&Method::GET, "/listeners") if query(url, "format") == Some("csv") => {
            csv::reply(csv::listeners(&listeners(&generation)))
        }
        (&Method::GET, "/targets") => json_response(200, targets(&generation, control.fleet())),
        (&Method::GET, "/listeners") => json_response(200, listeners(&generation)),
        (&Method::GET, "/" | page::SCRIPT | page::STYLE) => page::asset(path),
        (&Method::GET, "/connections") => match limit(url) {
            Ok(limit) => json_response(200, connections(control, limit)),
            Err(message) => error(400, &message),
        },
        (&Method::DELETE, _) if path.starts_with("/connections/") => {
            match parse_connection_id(&path["/connections/".len()..]) {
                Ok((worker, id)) => match control.close_connection(worker, id) {
                    Ok(()) => json_response(200, json!({"closed": format!("{worker}.{id}")})),
                    Err(e) => error(e.status(), &e.to_string()),
                },
                Err(message) => error(400, &message),
            }
        }
        (&Method::GET, "/metrics") => Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: metrics::encode(
                &generation,
                control.restarts(),
                control.node(),
                control.scaling_stats(),
                control.steering(),
                control.fleet().map(|f| &**f),
            )
            .into_bytes(),
        },
        (&Method::POST, "/reload") => changed(control.reload(), 200),
        (
            _,
            "/healthz"
            | "/livez"
            | "/node"
            | "/node/drain"
            | "/node/enable"
            | "/targets"
            | "/listeners"
            | "/metrics"
            | "/connections"
            | "/reload"
            | "/"
            | page::SCRIPT
            | page::STYLE,
        ) => error(405, "method not allowed"),
        (&Method::POST, _) if Faults::ENABLED && path.starts_with("/debug/panic/") => {
            inject_panic(control, path.trim_start_matches("/debug/panic/"))
        }
        (&Method::GET, "/fleet") => fleet::status(control),
        (_, "/fleet") => error(405, "method not allowed"),
        (_, _) if path.starts_with("/target-groups/") => {
            target_request(control, method, url, body())
        }
        _ => error(404, &format!("no such endpoint: {path}")),
    }
}

/// The answer to a configuration change: the summary with `status`, or the error's 4xx.
fn changed(result: Result<Summary, ChangeError>, status: u16) -> Reply {
    match result {
        Ok(s) => json_response(
            status,
            json!({
                "generation": s.generation,
                "listeners_added": s.listeners_added,
                "listeners_removed": s.listeners_removed,
                "targets_added": s.targets_added,
                "targets_removed": s.targets_removed,
            }),
        ),
        Err(e) => error(e.status(), &e.to_string()),
    }
}

/// The value of `key=` in `url`'s query string, if present.
fn query<'u>(url: &'u str, key: &str) -> Option<&'u str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// `limit=N` from a query string; 1,000 when absent.
fn limit(url: &str) -> Result<usize, String> {
    match query(url, "limit") {
        None => Ok(1000),
        Some(v) => v
            .parse()
            .map_err(|_| format!("limit must be a whole number, not `{v}`")),
    }
}

/// `key=DURATION` (`10s`, `500ms`, `0s`) from a query string, if present.
fn query_duration(url: &str, key: &str) -> Result<Option<Duration>, String> {
    query(url, key)
        .map(|v| crate::config::parse_duration(v, true).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

/// `GET /node`, and the answer to a node drain or enable.
fn node_json(control: &Control, generation: &Generation) -> serde_json::Value {
    let (service, _) = control.node().service();
    let reasons = control.node().readiness(generation);
    let mut doc = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": control.node().uptime().as_secs(),
        "workers": generation.config.workers,
        "config": generation.config.path.display().to_string(),
        "read_only": generation.config.admin.read_only,
        "generation": generation.generation,
        "service": service.to_string(),
        "ready": reasons.is_empty(),
        "reasons": reasons,
        // Part of a fleet (cluster:): GET /fleet lists it.
        "fleet": control.fleet().map(|f| f.node_id.clone()),
    });
    if let crate::node::Service::Draining { until } = service {
        doc["listeners_close_in_ms"] = json!(until
            .saturating_duration_since(std::time::Instant::now())
            .as_millis() as u64);
    }
    doc
}

/// `GET /connections`: every worker's connection table, at most `limit` entries in all.
fn connections(control: &Control, limit: usize) -> serde_json::Value {
    let entries = control.connections(limit);
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|c| {
            json!({
                "id": format!("{}.{}", c.worker, c.id),
                "protocol": c.protocol.to_string(),
                "client": c.client.to_string(),
                "peer": c.peer.to_string(),
                "listener": c.listener,
                "local": c.local.to_string(),
                "target": c.target.map(|t| t.to_string()),
                "stage": c.stage,
                "age_ms": c.age.as_millis() as u64,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "worker": c.worker,
            })
        })
        .collect();
    json!({ "connections": list })
}

/// The body of `POST /target-groups/{group}/targets`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTarget {
    address: String,
    weight: Option<u32>,
    backup: Option<bool>,
    max_connections: Option<u64>,
    server_id: Option<u64>,
    tokens: Option<Vec<String>>,
}

impl NewTarget {
    fn parse(body: &str) -> Result<TargetConfig, String> {
        let t: NewTarget = serde_json::from_str(body).map_err(|e| format!("bad JSON body: {e}"))?;
        let max = crate::config::MAX_WEIGHT;
        if t.weight.is_some_and(|w| w == 0 || u64::from(w) > max) {
            return Err(format!("weight must be 1 to {max}"));
        }
        if t.max_connections == Some(0) {
            return Err("max_connections must be at least 1".into());
        }
        Ok(TargetConfig {
            address: resolve(&t.address)?,
            weight: t.weight.unwrap_or(1),
            backup: t.backup.unwrap_or(false),
            max_connections: t.max_connections,
            server_id: t.server_id,
            tokens: t
                .tokens
                .iter()
                .flatten()
                .map(|text| crate::config::parse_token(text))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Tokens, as octets.
type Tokens = Vec<Box<[u8]>>;

/// The body of `POST …/tokens`: `{"add": [...], "remove": [...]}` (either optional), each
/// token as text or `base64:…`.
fn parse_tokens(body: &str) -> Result<(Tokens, Tokens), String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Change {
        add: Option<Vec<String>>,
        remove: Option<Vec<String>>,
    }
    let c: Change = serde_json::from_str(body).map_err(|e| {
        format!("expected {{\"add\": [\"token\", …], \"remove\": [\"token\", …]}}: {e}")
    })?;
    let parse = |list: Option<Vec<String>>| -> Result<Tokens, String> {
        list.into_iter()
            .flatten()
            .map(|t| crate::config::parse_token(&t))
            .collect()
    };
    Ok((parse(c.add)?, parse(c.remove)?))
}

/// The body of `POST …/weight`: `{"weight": N}`.
fn parse_weight(body: &str) -> Result<u32, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Weight {
        weight: u32,
    }
    serde_json::from_str::<Weight>(body)
        .map(|w| w.weight)
        .map_err(|e| {
            format!(
                "expected {{\"weight\": N}} (N from 1 to {}): {e}",
                crate::config::MAX_WEIGHT
            )
        })
}

/// A connection's id in the admin API, `{worker}.{id}`.
fn parse_connection_id(text: &str) -> Result<(usize, u64), String> {
    text.split_once('.')
        .and_then(|(w, id)| Some((w.parse().ok()?, id.parse().ok()?)))
        .ok_or_else(|| {
            format!("`{text}` is not a connection id (WORKER.ID, as GET /connections lists them)")
        })
}

/// A target address from a request path or body: percent-decoded (clients may encode `[`, `]`
/// and `:`), then parsed as the config file parses addresses.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    let decoded = percent_encoding::percent_decode_str(address).decode_utf8_lossy();
    crate::config::parse_address(&decoded)
}

/// Everything under `/target-groups/` (`url`: path and query). With `cluster:`, a change
/// goes to the fleet unless the query says `local=1`.
fn target_request(
    control: &Arc<Control>,
    method: &Method,
    url: &str,
    body: Result<String, String>,
) -> Reply {
    let path = url.split('?').next().unwrap_or("");
    let fleet = fleet::fleet(control, url);
    // Each segment percent-decoded on its own: a group named `a/b` arrives as `a%2Fb`.
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (method, &parts[..]) {
        (&Method::POST, ["target-groups", group, "targets"]) => {
            match body.and_then(|b| NewTarget::parse(&b)) {
                Ok(target) => match fleet {
                    Some(link) => {
                        let added = format!("{group}/{}", target.address);
                        let change = FleetChange::Add {
                            group: group.to_string(),
                            target,
                        };
                        fleet_changed(control, fleet::write(link, change), 201, added, "added")
                    }
                    None => changed(control.add_target(group, target), 201),
                },
                Err(message) => error(400, &message),
            }
        }
        (_, ["target-groups", _, "targets"]) => error(405, "use POST"),
        (&Method::DELETE, ["target-groups", group, "targets", address]) => match resolve(address) {
            Ok(address) => match fleet {
                Some(link) => {
                    let change = FleetChange::Remove {
                        group: group.to_string(),
                        address,
                    };
                    let removed = format!("{group}/{address}");
                    fleet_changed(control, fleet::write(link, change), 200, removed, "removed")
                }
                None => changed(control.remove_target(group, address), 200),
            },
            Err(message) => error(400, &message),
        },
        (_, ["target-groups", _, "targets", _]) => error(405, "use DELETE"),
        (&Method::POST, ["target-groups", group, "targets", address, "weight"]) => {
            let weight = match body.and_then(|b| parse_weight(&b)) {
                Ok(w) => w,
                Err(message) => return error(400, &message),
            };
            let address = match resolve(address) {
                Ok(a) => a,
                Err(message) => return error(400, &message),
            };
            if let Some(link) = fleet {
                let change = FleetChange::Weight {
                    group: group.to_string(),
                    address,
                    weight,
                };
                return fleet_target(control, fleet::write(link, change), group, address);
            }
            match control.set_weight(group, address, weight) {
                Ok((g, t)) => {
                    json_response(200, target_json(&control.generation().groups[g].targets[t]))
                }
                Err(e) => error(e.status(), &e.to_string()),
            }
        }
        (&Method::POST, ["target-groups", group, "targets", address, "tokens"]) => {
            let (add, remove) = match body.and_then(|b| parse_tokens(&b)) {
                Ok(change) => change,
                Err(message) => return error(400, &message),
            };
            let address = match resolve(address) {
                Ok(a) => a,
                Err(message) => return error(400, &message),
            };
            match control.change_tokens(group, address, add, &remove) {
                Ok((g, _)) => {
                    let generation = control.generation();
                    let tokens: Vec<String> = generation.groups[g]
                        .config
                        .targets
                        .iter()
                        .find(|t| t.address == address)
                        .map(|t| {
                            t.tokens
                                .iter()
                                .map(|k| crate::config::show_token(k))
                                .collect()
                        })
                        .unwrap_or_default();
                    json_response(
                        200,
                        json!({"address": address.to_string(), "tokens": tokens}),
                    )
                }
                Err(e) => error(e.status(), &e.to_string()),
            }
        }
        (&Method::POST, ["target-groups", group, "targets", address, action]) => {
            let state = match *action {
                "drain" => AdminState::Draining,
                "enable" => AdminState::Active,
                "disable" => AdminState::Disabled,
                other => {
                    return error(
                        404,
                        &format!(
                            "unknown action `{other}`: drain, disable, enable, weight or tokens"
                        ),
                    )
                }
            };
            let address = match resolve(address) {
                Ok(a) => a,
                Err(message) => return error(400, &message),
            };
            if let Some(link) = fleet {
                let change = FleetChange::State {
                    group: group.to_string(),
                    address,
                    state,
                };
                return fleet_target(control, fleet::write(link, change), group, address);
            }
            match control.set_admin_state(group, address, state) {
                Ok((g, t, _)) => {
                    json_response(200, target_json(&control.generation().groups[g].targets[t]))
                }
                Err(e) => error(e.status(), &e.to_string()),
            }
        }
        (_, ["target-groups", _, "targets", _, _]) => error(405, "use POST"),
        _ => error(404, &format!("no such endpoint: {path}")),
    }
}

/// The answer to an add or a removal made through the fleet: as [`changed`]'s, with the
/// etcd revision that holds it.
fn fleet_changed(
    control: &Control,
    written: Result<i64, Reply>,
    status: u16,
    target: String,
    how: &str,
) -> Reply {
    match written {
        Ok(revision) => {
            let (added, removed) = if how == "added" {
                (vec![target], vec![])
            } else {
                (vec![], vec![target])
            };
            json_response(
                status,
                json!({
                    "generation": control.generation().generation,
                    "listeners_added": [],
                    "listeners_removed": [],
                    "targets_added": added,
                    "targets_removed": removed,
                    "fleet_revision": revision,
                }),
            )
        }
        Err(reply) => reply,
    }
}

/// The answer to a target's change made through the fleet: the target as this node now has
/// it, with the etcd revision that holds the change.
fn fleet_target(
    control: &Control,
    written: Result<i64, Reply>,
    group: &str,
    address: std::net::SocketAddr,
) -> Reply {
    let revision = match written {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let generation = control.generation();
    match generation.group(group).and_then(|(_, g)| g.target(address)) {
        Some((_, t)) => {
            let mut doc = target_json(t);
            doc["fleet_revision"] = json!(revision);
            json_response(200, doc)
        }
        None => error(
            404,
            &format!("target group `{group}` has no target {address}"),
        ),
    }
}

fn target_json(t: &crate::target::Target) -> serde_json::Value {
    let checks = t.checks.snapshot();
    let record = t.agent_record.lock().ok().and_then(|r| r.clone());
    let agent = record.map(|r| {
        json!({
            "mode": t.agent_mode().as_str(),
            "weight_percent": t.agent_percent(),
            "down": t.agent_down(),
            "said": r.said,
            "answered": r.answered,
            "at_unix_ms": r.at_unix_ms,
        })
    });
    json!({
        "address": t.address.to_string(),
        "weight": t.configured_weight,
        // What the algorithms use: the weight, or with agent_check weight × the agent's
        // percentage (hundredths); 0 while an agent says `0%` (drained by it).
        "effective_weight": if t.agent_percent() == 0 { 0 } else { t.weight },
        "max_connections": t.max_connections,
        "server_id": t.server_id,
        "backup": t.backup,
        "health": if t.is_healthy() { "healthy" } else { "unhealthy" },
        "admin_state": t.admin_state().to_string(),
        "active": t.active.load(Ordering::Relaxed),
        "total": t.total.load(Ordering::Relaxed),
        "connect_failures": t.connect_failures.load(Ordering::Relaxed),
        "ejected": t.is_ejected(),
        "ejections": t.ejections.load(Ordering::Relaxed),
        "consecutive_failures": t.consecutive_failures.load(Ordering::Relaxed),
        "bytes_to_target": t.bytes_to_target.load(Ordering::Relaxed),
        "bytes_from_target": t.bytes_from_target.load(Ordering::Relaxed),
        "last_check": {
            "result": checks.last_passed.map(|p| if p { "pass" } else { "fail" }),
            "at_unix_ms": (checks.last_check_ms > 0).then_some(checks.last_check_ms),
            "latency_ms": (checks.count > 0).then_some(checks.last_latency_s * 1e3),
            "consecutive_passes": checks.consecutive_passes,
            "checks": checks.count,
        },
        "last_failure": checks.last_failure.as_ref().map(|f| json!({
            "reason": f.reason,
            "at_unix_ms": f.at_unix_ms,
        })),
        "last_state_change_unix_ms": (checks.last_change_ms > 0).then_some(checks.last_change_ms),
        "agent": agent,
    })
}

/// The `GET /targets` document: groups in the configuration, and their targets (removed ones
/// only while connections to them remain).
fn targets(
    generation: &Generation,
    fleet: Option<&Arc<crate::control::fleet::FleetLink>>,
) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = generation
        .groups
        .iter()
        .filter(|g| !g.removed)
        .map(|g| {
            let targets: Vec<serde_json::Value> = g
                .targets
                .iter()
                .filter(|t| {
                    t.admin_state() != AdminState::Removed || t.active.load(Ordering::Relaxed) > 0
                })
                .map(|t| {
                    let mut doc = target_json(t);
                    // In a fleet: its open connections on every node (what a drain's wait,
                    // `drain --wait` and `deploy`, waits for).
                    // `null` while a node has not applied this node's state.
                    if let Some(f) = fleet {
                        let here = t.active.load(Ordering::Relaxed);
                        let elsewhere = f.open_elsewhere(g.name(), t.address);
                        doc["fleet_active"] = json!(elsewhere.map(|n| here + n));
                    }
                    // Its tokens (`token:` listeners), from the group's configuration.
                    let tokens = g.config.targets.iter().find(|c| c.address == t.address);
                    if let Some(c) = tokens.filter(|c| !c.tokens.is_empty()) {
                        doc["tokens"] = c
                            .tokens
                            .iter()
                            .map(|k| crate::config::show_token(k))
                            .collect();
                    }
                    doc
                })
                .collect();
            let queue = g.config.queue.map(|q| {
                json!({
                    "max": q.max,
                    "timeout_ms": q.timeout.as_millis() as u64,
                    "waiting": g.queue.waiting.load(Ordering::Relaxed),
                    "served": g.queue.served.load(Ordering::Relaxed),
                    "refused_full": g.queue.refused_full.load(Ordering::Relaxed),
                    "refused_timeout": g.queue.refused_timeout.load(Ordering::Relaxed),
                    "waited_ms": g.queue.waited_us.load(Ordering::Relaxed) / 1000,
                })
            });
            json!({
                "name": g.name(),
                "algorithm": g.config.algorithm.to_string(),
                "healthy_threshold": g.config.health_check.healthy_threshold,
                "queue": queue,
                "targets": targets,
            })
        })
        .collect();
    json!({ "target_groups": groups, "generation": generation.generation })
}

/// The `GET /listeners` document: each listener served, where it is bound (port 0 resolved),
/// its default target group and SNI routes, and its connection counts.
fn listeners(generation: &Generation) -> serde_json::Value {
    let group = |i: usize| generation.groups.get(i).map(|g| g.name().to_string());
    let list: Vec<serde_json::Value> = generation
        .listeners
        .iter()
        .filter(|l| !l.removed)
        .map(|l| {
            let route = |r: &crate::config::SniRoute| {
                json!({ "server_name": r.server_name, "target_group": group(r.target_group) })
            };
            let routes: Vec<serde_json::Value> =
                l.config.sni.iter().flat_map(|s| &s.routes).map(route).collect();
            let pattern = |p: &Option<crate::config::NamePattern>| p.as_ref().map(|p| p.0.clone());
            let postgres_routes: Vec<serde_json::Value> = l
                .config
                .postgres
                .iter()
                .flat_map(|p| &p.routes)
                .map(|r| {
                    json!({
                        "database": pattern(&r.database),
                        "user": pattern(&r.user),
                        "application_name": pattern(&r.application_name),
                        "target_group": group(r.target_group),
                    })
                })
                .collect();
            let refused: u64 = l.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let by_reason: serde_json::Map<String, serde_json::Value> =
                crate::listener::Refusal::ALL
                    .iter()
                    .map(|&why| {
                        let n = l.refused.get(why as usize).map_or(0, |c| c.load(Ordering::Relaxed));
                        (why.as_str().to_string(), n.into())
                    })
                    .collect();
            json!({
                "name": l.config.name,
                "protocol": l.config.kind(),
                "bind": l.config.endpoint(),
                "target_group": group(l.config.target_group),
                "routes": routes,
                "postgres_routes": postgres_routes,
                "max_connections": l.config.max_connections,
                "active": l.active.load(Ordering::Relaxed),
                "accepted": l.accepted.load(Ordering::Relaxed),
                "refused": refused,
                "refused_by_reason": by_reason,
            })
        })
        .collect();
    json!({ "listeners": list, "generation": generation.generation })
}
