//! The CLI subcommands that talk to a running Ballast over its admin API: `targets`,
//! `connections`, `drain`, `enable`, `disable`, `add`, `remove`, `weight`, `tokens`, `disconnect`,
//! `reload`, `deploy`, `health`, `node`.
//! Output goes to stdout; errors are returned for `main` to print (exit 1).

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::{Api, ApiCommand, FleetAction, NodeAction, TargetRef};
use crate::client::{find_target, open_connections, target_path, AdminClient, ClientError, Where};
use crate::deploy::{deploy, DeployError, DeployPlan};
use crate::progress::{connections_open, Progress};

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The API refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The deploy stopped.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// `drain --wait` ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// `ballast health`: the node answered that it is not ready.
    #[error("not ready: {}", .0.join("; "))]
    NotReady(Vec<String>),
    /// `ballast fleet status`: a node is behind, or etcd is not reached.
    #[error("{0}")]
    Fleet(String),
}

/// The API as `api` says where it is; when found from a configuration file, checked to be
/// the instance that runs that file.
fn client(api: &Api) -> Result<AdminClient, ClientError> {
    // A flag wins over the environment: `--config F` with BALLAST_ADMIN set (for another
    // instance, say) asks the instance F names. Then BALLAST_ADMIN, then BALLAST_CONFIG.
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let (env_admin, env_config) = (env("BALLAST_ADMIN"), env("BALLAST_CONFIG"));
    let (admin, config) = match (&api.admin, &api.config) {
        (None, None) => match (&env_admin, &env_config) {
            (Some(a), _) => (a.to_str(), None),
            (None, c) => (None, c.as_deref().map(std::path::Path::new)),
        },
        (a, c) => (a.as_deref(), c.as_deref()),
    };
    let c = AdminClient::locate(&Where {
        admin,
        config,
        token_file: api.token_file.as_deref(),
    })?;
    c.verify()?;
    Ok(c)
}

/// Runs `command` (one of the API subcommands), printing to `out`.
///
/// # Errors
/// As [`CtlError`].
pub fn run(command: &ApiCommand, out: &mut dyn Write) -> Result<(), CtlError> {
    match command {
        ApiCommand::Targets { api, json } => {
            let doc = client(api)?.get("/targets")?;
            if *json {
                let _ = writeln!(out, "{doc:#}");
            } else {
                print_targets(&doc, out);
            }
        }
        ApiCommand::Connections { api, limit, json } => {
            let doc = client(api)?.get(&format!("/connections?limit={limit}"))?;
            if *json {
                let _ = writeln!(out, "{doc:#}");
            } else {
                print_connections(&doc, out);
            }
        }
        ApiCommand::Drain {
            target,
            api,
            wait,
            timeout,
        } => {
            let c = client(api)?;
            let t = c.post(&path(target, "/drain"), None)?;
            let _ = writeln!(out, "{}: {}", target.address, text(&t["admin_state"]));
            if *wait {
                wait_drained(&c, target, *timeout, out)?;
            }
        }
        ApiCommand::Enable { target, api } | ApiCommand::Disable { target, api } => {
            let action = if matches!(command, ApiCommand::Enable { .. }) {
                "/enable"
            } else {
                "/disable"
            };
            let t = client(api)?.post(&path(target, action), None)?;
            // Enabled, but its agent still keeps it out: say so, or the operator believes it
            // serves again.
            let agent = &t["agent"];
            let held = match agent["mode"].as_str() {
                _ if t["admin_state"] != "active" => None,
                Some(mode @ ("drain" | "maint")) => Some(format!(
                    "its agent says {mode}: no new connections until it says ready"
                )),
                _ if agent["weight_percent"] == 0 => Some(
                    "its agent says 0%: no new connections until it gives a weight".to_string(),
                ),
                _ if agent["down"] == true => {
                    Some("its agent says down: unhealthy until it says up".to_string())
                }
                _ => None,
            };
            let agent = held.map_or(String::new(), |why| format!(" (but {why})"));
            let _ = writeln!(
                out,
                "{}: {}{agent}",
                target.address,
                text(&t["admin_state"])
            );
        }
        ApiCommand::Add {
            target,
            api,
            weight,
            backup,
            max_connections,
            server_id,
            tokens,
        } => {
            let body = json!({
                "address": target.address,
                "weight": weight,
                "backup": backup,
                "max_connections": max_connections,
                "server_id": server_id,
                "tokens": tokens,
            });
            let s = client(api)?.post(
                &local(
                    target,
                    target_path(&target.group, "", "").trim_end_matches('/'),
                ),
                Some(&body),
            )?;
            // Datagrams carrying its tokens go to it whatever its health (a match lives on
            // one server): say so, not that traffic waits for the check.
            let _ = writeln!(
                out,
                "added {} to {} (generation {}); {}",
                target.address,
                target.group,
                s["generation"],
                if tokens.is_empty() {
                    "it takes traffic once its check passes"
                } else {
                    "datagrams with its tokens reach it now; other traffic once its check passes"
                }
            );
        }
        ApiCommand::Remove { target, api } => {
            client(api)?.delete(&path(target, ""))?;
            let _ = writeln!(
                out,
                "removed {} from {}; it drains",
                target.address, target.group
            );
        }
        ApiCommand::Weight {
            target,
            weight,
            api,
        } => {
            let body = json!({ "weight": weight });
            let t = client(api)?.post(&path(target, "/weight"), Some(&body))?;
            let _ = writeln!(out, "{}: weight {}", target.address, text(&t["weight"]));
        }
        ApiCommand::Tokens {
            target,
            add,
            remove,
            api,
        } => {
            let body = json!({ "add": add, "remove": remove });
            let t = client(api)?.post(&path(target, "/tokens"), Some(&body))?;
            let tokens: Vec<String> = t["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let _ = writeln!(out, "{}: tokens [{}]", target.address, tokens.join(", "));
        }
        ApiCommand::Disconnect { id, api } => {
            client(api)?.delete(&format!("/connections/{id}"))?;
            let _ = writeln!(out, "{id}: closed");
        }
        ApiCommand::Reload { api } => {
            let s = client(api)?.post("/reload", None)?;
            let _ = writeln!(out, "reloaded: generation {}", s["generation"]);
            for (what, key) in [
                ("listeners added", "listeners_added"),
                ("listeners removed", "listeners_removed"),
                ("targets added", "targets_added"),
                ("targets removed", "targets_removed"),
            ] {
                if s[key].as_array().is_some_and(|a| !a.is_empty()) {
                    let _ = writeln!(out, "  {what}: {}", list(&s[key]));
                }
            }
        }
        ApiCommand::Deploy {
            group,
            exec,
            drain_timeout,
            wait_healthy,
            exec_timeout,
            api,
        } => {
            let plan = DeployPlan {
                group: group.clone(),
                exec: exec.clone(),
                drain_timeout: *drain_timeout,
                wait_healthy: *wait_healthy,
                exec_timeout: *exec_timeout,
            };
            deploy(&client(api)?, &plan, out)?;
        }
        ApiCommand::Health {
            api,
            timeout,
            quiet,
        } => {
            health(&client(api)?.with_timeout(*timeout))?;
            if !quiet {
                let _ = writeln!(out, "ready");
            }
        }
        ApiCommand::Fleet {
            action: FleetAction::Status { json },
            api,
        } => {
            let doc = client(api)?.get("/fleet")?;
            if *json {
                let _ = writeln!(out, "{doc:#}");
            } else {
                print_fleet(&doc, out);
            }
            let behind: Vec<&str> = doc["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["up_to_date"] != true)
                .filter_map(|n| n["id"].as_str())
                .collect();
            if doc["etcd_connected"] != true {
                return Err(CtlError::Fleet(format!(
                    "etcd not reached: {}",
                    text(&doc["last_error"])
                )));
            }
            if !behind.is_empty() {
                return Err(CtlError::Fleet(format!(
                    "not in step (another fleet state applied): {}",
                    behind.join(", ")
                )));
            }
            let vanished: Vec<String> = doc["vanished"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| format!("{} ({} s ago)", text(&v["id"]), v["seconds_ago"]))
                .collect();
            if !vanished.is_empty() {
                return Err(CtlError::Fleet(format!(
                    "gone without leaving (crashed, or cut off from etcd and perhaps still \
                     serving): {}",
                    vanished.join(", ")
                )));
            }
        }
        ApiCommand::Node { action, api } => {
            let c = client(api)?;
            let doc = match action {
                NodeAction::Drain { grace } => {
                    let query =
                        grace.map_or(String::new(), |g| format!("?grace={}ms", g.as_millis()));
                    c.post(&format!("/node/drain{query}"), None)?
                }
                NodeAction::Enable => c.post("/node/enable", None)?,
                NodeAction::Status => c.get("/node")?,
            };
            print_node(&doc, out);
        }
    }
    Ok(())
}

/// `GET /healthz`: `Ok` on 200; the reasons on 503.
fn health(c: &AdminClient) -> Result<(), CtlError> {
    match c.get("/healthz") {
        Ok(_) => Ok(()),
        Err(ClientError::Status {
            status: 503,
            message,
        }) => {
            let doc: Value = serde_json::from_str(&message).unwrap_or(Value::Null);
            let reasons = doc["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_else(|| vec![message]);
            Err(CtlError::NotReady(reasons))
        }
        Err(e) => Err(e.into()),
    }
}

/// A table of `GET /fleet`'s nodes.
fn print_fleet(doc: &Value, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "fleet {} (etcd {}; revision {})",
        text(&doc["prefix"]),
        if doc["etcd_connected"] == true {
            "connected"
        } else {
            "NOT REACHED"
        },
        doc["latest_revision"]
    );
    let _ = writeln!(
        out,
        "{:<24} {:<10} {:>10} {:<9} {:>9} applied",
        "NODE", "VERSION", "GENERATION", "READY", "REVISION"
    );
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let me = if n["this_node"] == true { " *" } else { "" };
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:>10} {:<9} {:>9} {}",
            format!("{}{me}", text(&n["id"])),
            text(&n["version"]),
            n["generation"],
            if n["ready"] == true {
                "ready"
            } else {
                "not ready"
            },
            n["revision"],
            if n["up_to_date"] == true {
                "in step"
            } else {
                "NOT IN STEP"
            }
        );
    }
}

/// One line for `GET /node` (and a drain's or enable's answer), then the reasons.
fn print_node(doc: &Value, out: &mut dyn Write) {
    let mut line = format!(
        "node: {}, {}",
        doc["service"].as_str().unwrap_or("?"),
        if doc["ready"] == true {
            "ready"
        } else {
            "not ready"
        }
    );
    if let Some(ms) = doc["listeners_close_in_ms"].as_u64() {
        line += &format!(", listeners close in {ms} ms");
    }
    let _ = writeln!(out, "{line}");
    for r in doc["reasons"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}", r.as_str().unwrap_or_default());
    }
}

/// The API path of `target` with `suffix`, asking for this node only with `--local`.
fn path(target: &TargetRef, suffix: &str) -> String {
    let path = target_path(&target.group, &target.address, suffix);
    local(target, path.trim_end_matches('/'))
}

/// `path`, with `?local=1` when `target` says `--local`.
fn local(target: &TargetRef, path: &str) -> String {
    if target.local {
        format!("{path}?local=1")
    } else {
        path.to_string()
    }
}

/// Polls until the target's active connections reach 0, at most `timeout`.
fn wait_drained(
    c: &AdminClient,
    target: &TargetRef,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::start(&target.address);
    loop {
        let doc = c.get("/targets")?;
        // Gone from the list: removed, nothing open. `None`: a node of the fleet has not
        // applied the drain yet.
        let open =
            find_target(&doc, &target.group, &target.address).map_or(Some(0), open_connections);
        if open == Some(0) {
            drop(progress);
            let _ = writeln!(out, "{}: drained", target.address);
            return Ok(());
        }
        let status = open.map_or(
            "draining: waiting for every node of the fleet".into(),
            |n| format!("draining: {}", connections_open(n)),
        );
        if Instant::now() >= deadline {
            return Err(CtlError::Timeout(format!(
                "{}: {status} after {}",
                target.address,
                humantime::format_duration(timeout)
            )));
        }
        progress.update(&status, out);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A JSON list of strings (or a number) as `a, b, c`; `none` when empty.
fn list(v: &Value) -> String {
    match v.as_array() {
        Some(items) if items.is_empty() => "none".into(),
        Some(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        None => text(v),
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Milliseconds since the Unix epoch now.
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `12s`, `5m`, `3h`, `2d` ago: how long since `at_unix_ms` (`-` for none), one unit.
fn ago(at_unix_ms: &Value, now_ms: u64) -> String {
    let Some(at) = at_unix_ms.as_u64() else {
        return "-".into();
    };
    let s = now_ms.saturating_sub(at) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The last check, and why the last failed one failed while the target is not healthy (a
/// target passing its way back up says why it went down): `pass`, `fail: connection
/// refused`, `pass (failed 40s ago: connection refused)`.
fn last_check(t: &Value, now_ms: u64) -> String {
    let result = text(&t["last_check"]["result"]);
    let failure = &t["last_failure"];
    match (result.as_str(), failure["reason"].as_str()) {
        ("fail", Some(r)) => format!("fail: {r}"),
        ("pass", Some(r)) if t["health"] != "healthy" => {
            format!(
                "pass (failed {} ago: {r})",
                ago(&failure["at_unix_ms"], now_ms)
            )
        }
        _ => result,
    }
}

fn print_targets(doc: &Value, out: &mut dyn Write) {
    let now = unix_ms_now();
    let _ = writeln!(
        out,
        "{:<16} {:<24} {:<9} {:<9} {:>5} {:>7} {:>9} {:>6}  LAST CHECK",
        "GROUP", "TARGET", "HEALTH", "STATE", "SINCE", "ACTIVE", "TOTAL", "WEIGHT"
    );
    for g in doc["target_groups"].as_array().into_iter().flatten() {
        for t in g["targets"].as_array().into_iter().flatten() {
            let health = match (t["ejected"].as_bool(), t["health"].as_str()) {
                (Some(true), _) => "ejected".to_string(),
                _ if t["agent"]["down"] == true => "agt:down".to_string(),
                _ => text(&t["health"]),
            };
            // What the target's agent asks shows where the operator looks: an agent's drain
            // is not the operator's, but the target takes no new connections all the same;
            // with both, both show (an operator's enable would not bring it back).
            let state = match t["agent"]["mode"].as_str() {
                Some(mode @ ("drain" | "maint")) if t["admin_state"] == "active" => {
                    format!("agt:{mode}")
                }
                Some(mode @ ("drain" | "maint")) => {
                    format!("{},agt:{mode}", text(&t["admin_state"]))
                }
                _ => text(&t["admin_state"]),
            };
            // Open connections, out of the target's max_connections when it has one.
            let active = match t["max_connections"].as_u64() {
                Some(max) => format!("{}/{max}", text(&t["active"])),
                None => text(&t["active"]),
            };
            let weight = match t["agent"]["weight_percent"].as_u64() {
                Some(p) if p != 100 => format!("{}@{p}%", text(&t["weight"])),
                _ => text(&t["weight"]),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:<9} {:<9} {:>5} {:>7} {:>9} {:>6}  {}",
                text(&g["name"]),
                text(&t["address"]),
                health,
                state,
                ago(&t["last_state_change_unix_ms"], now),
                active,
                text(&t["total"]),
                weight,
                last_check(t, now),
            );
        }
    }
}

fn print_connections(doc: &Value, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "{:<10} {:<5} {:<24} {:<24} {:<16} {:<24} {:<24} {:>9} {:>12} {:>12}",
        "ID",
        "PROTO",
        "CLIENT",
        "PEER",
        "LISTENER",
        "LOCAL",
        "TARGET",
        "AGE_MS",
        "BYTES_UP",
        "BYTES_DOWN"
    );
    for c in doc["connections"].as_array().into_iter().flatten() {
        // The peer when a PROXY header named another client (the balancer in front), else `-`.
        let peer = if c["peer"] == c["client"] || c["peer"].is_null() {
            "-".to_string()
        } else {
            text(&c["peer"])
        };
        let _ = writeln!(
            out,
            "{:<10} {:<5} {:<24} {:<24} {:<16} {:<24} {:<24} {:>9} {:>12} {:>12}",
            text(&c["id"]),
            text(&c["protocol"]),
            text(&c["client"]),
            peer,
            text(&c["listener"]),
            text(&c["local"]),
            text(&c["target"]),
            text(&c["age_ms"]),
            text(&c["bytes_up"]),
            text(&c["bytes_down"]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PEER column names the balancer in front only when a PROXY header named another
    /// client.
    #[test]
    fn connections_show_the_peer_only_when_it_is_not_the_client() {
        let doc = serde_json::json!({"connections": [
            {"id": "0.1", "protocol": "tcp", "client": "203.0.113.9:4243",
             "peer": "10.0.0.5:51000", "listener": "l", "local": "10.0.0.1:80"},
            {"id": "0.2", "protocol": "tcp", "client": "10.0.0.7:1234",
             "peer": "10.0.0.7:1234", "listener": "l", "local": "10.0.0.1:80"},
        ]});
        let mut out = Vec::new();
        print_connections(&doc, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("CLIENT") && lines[0].contains("PEER"),
            "{text}"
        );
        assert!(lines[1].contains("203.0.113.9:4243") && lines[1].contains("10.0.0.5:51000"));
        let fields: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(fields[2..4], ["10.0.0.7:1234", "-"], "{text}");
    }
}
