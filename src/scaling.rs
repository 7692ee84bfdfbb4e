//! Scaling hooks (`scaling:` on a target group): a thread samples each such group's load every
//! second — open connections per target in service, new connections per second, the targets'
//! mean response time — and when a rule's condition has held for its duration, runs its
//! command (`sh -c`), one at a time per group, with a timeout, and never sooner than
//! `cooldown` after the last one ended.
//!
//! - **scale_out** (only below `max_targets`): the command starts capacity and prints
//!   `add ADDRESS [WEIGHT]` lines, applied as `POST /target-groups/…/targets` (the new targets
//!   take traffic once they pass their health check).
//! - **scale_in** (only above `min_targets`): Ballast picks the target in service with the
//!   fewest open connections (of equals, the one added last), removes it (it drains: no new connections, what is open after
//!   `drain_timeout` is closed), then runs the command with that target named, to stop it. It
//!   may print `remove ADDRESS` lines too.
//!
//! The command gets the group's state as JSON on stdin and `BALLAST_TARGET_GROUP`,
//! `BALLAST_ACTION`, `BALLAST_METRIC`, `BALLAST_VALUE`, `BALLAST_TARGETS` (targets in the
//! group) and, for scale_in, `BALLAST_TARGET` in its environment. Every decision is logged
//! with its reason; `/metrics` has the samples and the runs by result.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::scaling::{Scaling, ScalingMetric, ScalingRule};
use crate::config::TargetConfig;
use crate::generation::Generation;
use crate::target::{AdminState, TargetGroup};

/// How often the groups' load is sampled.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// One group's scaling: the last samples of its metrics and the commands run (for `/metrics`).
#[derive(Debug, Default, Clone)]
pub(crate) struct ScalingStats {
    /// The last sample of each metric, by name.
    pub(crate) samples: BTreeMap<&'static str, f64>,
    /// Commands run, by (action, result): `scale_out`/`scale_in`, `ok`/`failed`/`timeout`.
    pub(crate) runs: BTreeMap<(&'static str, &'static str), u64>,
}

/// What the scaling hooks need of the control plane, which implements it: the hooks sit below
/// it (`crate::control` holds their statistics), reaching it only through this.
pub(crate) trait ScalingControl: Send + Sync + 'static {
    /// The current generation.
    fn generation(&self) -> Arc<Generation>;
    /// Adds `target` to `group`; the error is the refusal's message.
    fn add_target(&self, group: &str, target: TargetConfig) -> Result<(), String>;
    /// Removes the target at `address` from `group` (it drains); the error is the refusal's
    /// message.
    fn remove_target(self: &Arc<Self>, group: &str, address: SocketAddr) -> Result<(), String>;
    /// What the hooks saw and did, by group name.
    fn scaling_stats(&self) -> &Mutex<BTreeMap<String, ScalingStats>>;
    /// Whether this node decides for group `group`: always on a node of its own; in a fleet
    /// (`cluster:`), only the group's leader (the others sample, and follow what it adds and
    /// removes).
    fn leads(&self, group: &str) -> bool;
}

/// A group's scaling state between ticks.
#[derive(Debug, Default)]
struct GroupState {
    out_since: Option<Instant>,
    in_since: Option<Instant>,
    /// When the last command ended (the cooldown runs from there).
    last_end: Option<Instant>,
    running: bool,
    /// Connections established so far, and when counted (for the rate).
    last_total: Option<(u64, Instant)>,
}

/// Starts the scaling thread; it ends by itself once `control` is dropped.
///
/// # Errors
/// When the thread cannot be spawned.
pub(crate) fn start<C: ScalingControl>(control: &Arc<C>) -> std::io::Result<()> {
    let weak = Arc::downgrade(control);
    std::thread::Builder::new()
        .name("ballast-scaling".into())
        .spawn(move || run(weak))
        .map(drop)
}

fn run<C: ScalingControl>(control: Weak<C>) {
    let mut groups: BTreeMap<String, GroupState> = BTreeMap::new();
    let (done_tx, done) = mpsc::channel::<String>();
    loop {
        std::thread::sleep(TICK);
        let Some(control) = control.upgrade() else {
            return;
        };
        while let Ok(name) = done.try_recv() {
            if let Some(g) = groups.get_mut(&name) {
                g.running = false;
                g.last_end = Some(Instant::now());
            }
        }
        let generation = control.generation();
        groups.retain(|name, _| {
            generation
                .group(name)
                .is_some_and(|(_, g)| g.config.scaling.is_some())
        });
        for group in generation.groups.iter().filter(|g| !g.removed) {
            let Some(scaling) = &group.config.scaling else {
                continue;
            };
            let state = groups.entry(group.name().to_string()).or_default();
            let now = Instant::now();
            let samples = sample(group, state, now);
            if let Ok(mut stats) = control.scaling_stats().lock() {
                let entry = stats.entry(group.name().to_string()).or_default();
                for (metric, value) in &samples {
                    entry.samples.insert(metric.name(), *value);
                }
            }
            if !control.leads(group.name()) {
                // A follower: its conditions start afresh should it become the leader.
                state.out_since = None;
                state.in_since = None;
                continue;
            }
            if let Some(action) = decide(group, scaling, state, &samples, now) {
                state.running = true;
                state.out_since = None;
                state.in_since = None;
                launch(&control, group, scaling, action, done_tx.clone());
            }
        }
    }
}

/// The group's metrics now.
fn sample(group: &TargetGroup, state: &mut GroupState, now: Instant) -> Vec<(ScalingMetric, f64)> {
    let serving: Vec<_> = group
        .targets
        .iter()
        .filter(|t| t.in_service() && t.is_available())
        .collect();
    let active: u64 = serving
        .iter()
        .map(|t| t.active.load(Ordering::Relaxed))
        .sum();
    let per_target = active as f64 / serving.len().max(1) as f64;
    let total: u64 = group
        .targets
        .iter()
        .map(|t| t.total.load(Ordering::Relaxed))
        .sum();
    let rate = match state.last_total {
        Some((before, at)) if now > at => {
            total.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()
        }
        _ => 0.0,
    };
    state.last_total = Some((total, now));
    let times: Vec<u64> = serving
        .iter()
        .map(|t| t.response_ewma_us())
        .filter(|&us| us > 0)
        .collect();
    let mean_ms = if times.is_empty() {
        0.0
    } else {
        times.iter().sum::<u64>() as f64 / times.len() as f64 / 1000.0
    };
    vec![
        (ScalingMetric::ActiveConnectionsPerTarget, per_target),
        (ScalingMetric::NewConnectionsPerSecond, rate),
        (ScalingMetric::MeanResponseTimeMs, mean_ms),
    ]
}

/// What to run, if anything.
#[derive(Debug, Clone)]
struct Action {
    /// `scale_out` or `scale_in`.
    name: &'static str,
    rule: ScalingRule,
    value: f64,
    /// scale_in: the target taken out.
    target: Option<SocketAddr>,
}

/// Tracks how long each rule's condition has held; returns the action once one is due.
fn decide(
    group: &TargetGroup,
    scaling: &Scaling,
    state: &mut GroupState,
    samples: &[(ScalingMetric, f64)],
    now: Instant,
) -> Option<Action> {
    let value = |rule: &ScalingRule| {
        samples
            .iter()
            .find(|(m, _)| *m == rule.metric)
            .map_or(0.0, |(_, v)| *v)
    };
    let held = |rule: &ScalingRule, since: &mut Option<Instant>| {
        if rule.holds(value(rule)) {
            let start = *since.get_or_insert(now);
            now.duration_since(start) >= rule.sustained
        } else {
            *since = None;
            false
        }
    };
    let out_due = scaling
        .scale_out
        .as_ref()
        .is_some_and(|r| held(r, &mut state.out_since));
    let in_due = scaling
        .scale_in
        .as_ref()
        .is_some_and(|r| held(r, &mut state.in_since));
    let cooling = state
        .last_end
        .is_some_and(|end| now.duration_since(end) < scaling.cooldown);
    if state.running || cooling {
        return None;
    }
    let live: Vec<usize> = (0..group.targets.len())
        .filter(|&i| group.targets[i].admin_state() != AdminState::Removed)
        .collect();
    if out_due && live.len() < scaling.max_targets {
        let rule = scaling.scale_out.clone()?;
        return Some(Action {
            name: "scale_out",
            value: value(&rule),
            rule,
            target: None,
        });
    }
    if in_due && live.len() > scaling.min_targets {
        let rule = scaling.scale_in.clone()?;
        // The target in service with the fewest open connections goes (not a backup); of
        // equals, the one added last (the one a scale-out most likely started).
        let target = live
            .iter()
            .map(|&i| (i, &group.targets[i]))
            .filter(|(_, t)| t.in_service() && !t.backup)
            .min_by_key(|(i, t)| (t.active.load(Ordering::Relaxed), std::cmp::Reverse(*i)))?
            .1
            .address;
        return Some(Action {
            name: "scale_in",
            value: value(&rule),
            rule,
            target: Some(target),
        });
    }
    None
}

/// Runs `action`'s command on its own thread; sends the group's name on `done` at the end.
fn launch<C: ScalingControl>(
    control: &Arc<C>,
    group: &TargetGroup,
    scaling: &Scaling,
    action: Action,
    done: mpsc::Sender<String>,
) {
    let name = group.name().to_string();
    let live = group
        .targets
        .iter()
        .filter(|t| t.admin_state() != AdminState::Removed)
        .count();
    log::info!(
        "target group {name}: {}: {} is {:.2} ({}); running `{}`{}",
        action.name,
        action.rule.metric.name(),
        action.value,
        action.rule,
        action.rule.exec,
        action.target.map_or(String::new(), |t| format!(" for {t}"))
    );
    if let Some(target) = action.target {
        if let Err(e) = control.remove_target(&name, target) {
            log::warn!("target group {name}: scale_in: cannot remove {target}: {e}");
            record(control, &name, action.name, "failed");
            let _ = done.send(name);
            return;
        }
    }
    let state = serde_json::json!({
        "target_group": name,
        "action": action.name,
        "metric": action.rule.metric.name(),
        "value": action.value,
        "threshold": action.rule.value,
        "target": action.target.map(|t| t.to_string()),
        "targets": group.targets.iter()
            .filter(|t| t.admin_state() != AdminState::Removed)
            .map(|t| serde_json::json!({
                "address": t.address.to_string(),
                "health": if t.is_healthy() { "healthy" } else { "unhealthy" },
                "admin_state": t.admin_state().to_string(),
                "active": t.active.load(Ordering::Relaxed),
            }))
            .collect::<Vec<_>>(),
    });
    let control = control.clone();
    let timeout = scaling.timeout;
    let spawned = std::thread::Builder::new()
        .name("ballast-scaling-hook".into())
        .spawn(move || {
            let result = execute(&action, &name, live, &state.to_string(), timeout);
            let outcome = match result {
                Ok(out) => {
                    apply(&control, &name, &out);
                    log::info!("target group {name}: {}: command done", action.name);
                    "ok"
                }
                Err(Failure::Timeout) => {
                    log::warn!(
                        "target group {name}: {}: command killed after {}",
                        action.name,
                        humantime::format_duration(timeout)
                    );
                    "timeout"
                }
                Err(Failure::Other(e)) => {
                    log::warn!("target group {name}: {}: command failed: {e}", action.name);
                    "failed"
                }
            };
            record(&control, &name, action.name, outcome);
            let _ = done.send(name);
        });
    if let Err(e) = spawned {
        log::warn!("scaling: cannot start the command's thread: {e}");
    }
}

fn record<C: ScalingControl>(
    control: &Arc<C>,
    group: &str,
    action: &'static str,
    result: &'static str,
) {
    if let Ok(mut stats) = control.scaling_stats().lock() {
        *stats
            .entry(group.to_string())
            .or_default()
            .runs
            .entry((action, result))
            .or_default() += 1;
    }
}

enum Failure {
    Timeout,
    Other(String),
}

/// Runs the command; its standard output when it exits 0 within `timeout`.
fn execute(
    action: &Action,
    group: &str,
    targets: usize,
    state: &str,
    timeout: Duration,
) -> Result<String, Failure> {
    let mut child = Command::new("sh")
        .args(["-c", &action.rule.exec])
        .env("BALLAST_TARGET_GROUP", group)
        .env("BALLAST_ACTION", action.name)
        .env("BALLAST_METRIC", action.rule.metric.name())
        .env("BALLAST_VALUE", format!("{:.3}", action.value))
        .env("BALLAST_TARGETS", targets.to_string())
        .env(
            "BALLAST_TARGET",
            action.target.map_or(String::new(), |t| t.to_string()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Failure::Other(format!("cannot start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state.as_bytes());
    }
    // Read the output on the side, so a chatty command never blocks on a full pipe.
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.take(1 << 20).read_to_string(&mut text);
        }
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::Timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Failure::Other(e.to_string())),
        }
    };
    let out = reader.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(Failure::Other(format!("{status}")))
    }
}

/// Applies the `add ADDRESS [WEIGHT]` and `remove ADDRESS` lines a command printed.
fn apply<C: ScalingControl>(control: &Arc<C>, group: &str, out: &str) {
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words[..] {
            ["add", address] | ["add", address, _] => {
                let weight = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(1);
                address
                    .parse::<SocketAddr>()
                    .map_err(|e| e.to_string())
                    .and_then(|address| {
                        control.add_target(group, TargetConfig::new(address, weight))
                    })
            }
            ["remove", address] => address
                .parse::<SocketAddr>()
                .map_err(|e| e.to_string())
                .and_then(|a| control.remove_target(group, a)),
            _ => {
                log::debug!("target group {group}: scaling command said `{line}` (ignored)");
                continue;
            }
        };
        match result {
            Ok(_) => log::info!("target group {group}: scaling: {line}"),
            Err(e) => log::warn!("target group {group}: scaling: `{line}` not applied: {e}"),
        }
    }
}
