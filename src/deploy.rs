//! `ballast deploy`: the rolling deploy, target by target, over the admin API.
//!
//! For each target of the group, in the order `GET /targets` lists them: drain it; wait until
//! its active connections reach 0 or `drain_timeout` passes; run the command with `{address}`
//! replaced by the target's address; wait until its health check has passed
//! `healthy_threshold` times since the command ended (at most `wait_healthy`); enable it (a
//! target that was disabled before the deploy is deployed but left disabled). The command runs
//! at most `exec_timeout`. The first failure stops the deploy: that target is left disabled,
//! the rest untouched. One line per step goes to `out`.
//!
//! The waits poll the API every 100 ms: the API has no event stream, and each wait is bounded.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{find_target, open_connections, target_path, AdminClient, ClientError};
use crate::progress::{connections_open, Progress};

/// How often the waits ask the API.
const POLL: Duration = Duration::from_millis(100);

/// What `ballast deploy` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct DeployPlan {
    /// The target group to deploy.
    pub group: String,
    /// Shell command run (by `sh -c`) for each target, `{address}` replaced by its address.
    pub exec: String,
    /// Longest wait for a draining target's connections to finish.
    pub drain_timeout: Duration,
    /// Longest wait for a restarted target to pass its health checks.
    pub wait_healthy: Duration,
    /// Longest run of the command; past it the command is killed and the step fails.
    pub exec_timeout: Duration,
}

/// Why the deploy stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The admin API refused a request or could not be reached.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// The group does not exist or has no targets.
    #[error("target group `{0}` is unknown or has no targets")]
    NoTargets(String),
    /// The API listed a target address that is not `ip:port`: it is never put into a shell
    /// command.
    #[error("target group `{group}` lists `{address}`, not an ip:port address; nothing deployed")]
    BadAddress {
        /// The group.
        group: String,
        /// What the API listed.
        address: String,
    },
    /// A step failed for `target`; it is left disabled and the targets after it untouched.
    #[error(
        "deploy stopped at {target}: {why}; {target} is left disabled; not deployed: {rest:?}"
    )]
    Step {
        /// The target whose step failed.
        target: String,
        /// What failed.
        why: String,
        /// Targets not deployed.
        rest: Vec<String>,
    },
}

/// Runs `plan` against the API behind `client`, printing progress to `out`.
///
/// # Errors
/// [`DeployError::Step`] at the first failed step (the target is disabled first), or
/// [`DeployError::Api`] / [`DeployError::NoTargets`] / [`DeployError::BadAddress`] before
/// anything changed.
pub(crate) fn deploy(
    client: &AdminClient,
    plan: &DeployPlan,
    out: &mut dyn Write,
) -> Result<(), DeployError> {
    let doc = client.get("/targets")?;
    let group = doc["target_groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == plan.group.as_str()))
        .ok_or_else(|| DeployError::NoTargets(plan.group.clone()))?;
    let threshold = group["healthy_threshold"].as_u64().unwrap_or(1);
    let addresses: Vec<String> = group["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| t["admin_state"] != "removed")
                .filter_map(|t| t["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // Each address goes into a shell command: only a parsed ip:port, written back by us.
    let addresses = addresses
        .into_iter()
        .map(|a| match a.parse::<std::net::SocketAddr>() {
            Ok(parsed) => Ok(parsed.to_string()),
            Err(_) => Err(DeployError::BadAddress {
                group: plan.group.clone(),
                address: a,
            }),
        })
        .collect::<Result<Vec<String>, DeployError>>()?;
    if addresses.is_empty() {
        return Err(DeployError::NoTargets(plan.group.clone()));
    }
    let n = addresses.len();
    for (i, address) in addresses.iter().enumerate() {
        let step = Step {
            client,
            plan,
            address,
            label: format!("[{}/{n}] {address}", i + 1),
        };
        if let Err(why) = step.run(threshold, out) {
            let _ = writeln!(out, "{}: failed: {why}; disabling it", step.label);
            if let Err(e) = client.post(&target_path(&plan.group, address, "/disable"), None) {
                let _ = writeln!(out, "{}: cannot disable it: {e}", step.label);
            }
            return Err(DeployError::Step {
                target: address.clone(),
                why,
                rest: addresses[i + 1..].to_vec(),
            });
        }
    }
    let _ = writeln!(
        out,
        "deploy of {} done: {}",
        plan.group,
        crate::progress::count(n as u64, "target")
    );
    Ok(())
}

/// Runs `command` with `sh -c`, stdin closed, output to ours; fails on a non-zero exit or when
/// it runs past `limit`. It runs in its own process group, so a timeout kills all it started,
/// not just the shell.
fn run_command(command: &str, limit: Duration) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("`{command}` failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on the process group we created (its id is the child's pid).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "`{command}` still running after {}; killed",
                    humantime::format_duration(limit)
                ));
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return Err(format!("cannot wait for `{command}`: {e}")),
        }
    }
}

struct Step<'a> {
    client: &'a AdminClient,
    plan: &'a DeployPlan,
    address: &'a str,
    label: String,
}

impl Step<'_> {
    fn run(&self, threshold: u64, out: &mut dyn Write) -> Result<(), String> {
        let say = |out: &mut dyn Write, what: String| {
            let _ = writeln!(out, "{}: {what}", self.label);
            let _ = out.flush();
        };
        // An operator took this one out of service: deploy it, but leave it out.
        let was_disabled = self.target()?["admin_state"] == "disabled";
        if was_disabled {
            say(
                out,
                "disabled before the deploy: takes no new connections".into(),
            );
        } else {
            self.post("/drain")?;
            say(out, "draining".into());
        }
        let started = Instant::now();
        let active = self.wait_for(
            self.plan.drain_timeout,
            |t| open_connections(t) == Some(0),
            |t| match open_connections(t) {
                Some(n) => format!("draining: {}", connections_open(n)),
                None => "draining: waiting for every node of the fleet".into(),
            },
            out,
        )?;
        if active {
            say(
                out,
                format!("drained in {:.1}s", started.elapsed().as_secs_f64()),
            );
        } else {
            let open = open_connections(&self.target()?).map_or(
                "connections on some node of the fleet unknown".into(),
                crate::progress::connections_open,
            );
            say(
                out,
                format!(
                    "drain timeout ({}) passed with {open}; going on",
                    humantime::format_duration(self.plan.drain_timeout),
                ),
            );
        }

        let command = self.plan.exec.replace("{address}", self.address);
        say(out, format!("running `{command}`"));
        run_command(&command, self.plan.exec_timeout)?;

        // Checks counted from here: passes from before the command prove nothing.
        let checks_before = self.target()?["last_check"]["checks"].as_u64().unwrap_or(0);
        say(out, format!("waiting for {threshold} passed health checks"));
        let passed = |t: &Value| {
            let c = &t["last_check"];
            let since = c["checks"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(checks_before);
            since.min(c["consecutive_passes"].as_u64().unwrap_or(0))
        };
        let healthy = self.wait_for(
            self.plan.wait_healthy,
            |t| t["health"] == "healthy" && passed(t) >= threshold,
            |t| {
                format!(
                    "{}: {} of {threshold} checks passed",
                    t["health"].as_str().unwrap_or("?"),
                    passed(t).min(threshold)
                )
            },
            out,
        )?;
        if !healthy {
            return Err(format!(
                "not healthy within {}",
                humantime::format_duration(self.plan.wait_healthy)
            ));
        }
        if was_disabled {
            say(
                out,
                "healthy; left disabled, as it was before the deploy".into(),
            );
        } else {
            self.post("/enable")?;
            say(out, "healthy; enabled".into());
        }
        Ok(())
    }

    fn post(&self, action: &str) -> Result<(), String> {
        self.client
            .post(&target_path(&self.plan.group, self.address, action), None)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn target(&self) -> Result<Value, String> {
        let doc = self.client.get("/targets").map_err(|e| e.to_string())?;
        find_target(&doc, &self.plan.group, self.address)
            .cloned()
            .ok_or_else(|| format!("{} is no longer in {}", self.address, self.plan.group))
    }

    /// Polls the target until `done` holds (true) or `limit` passes (false), showing
    /// `status` of it as live progress ([`Progress`]).
    fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
        status: impl Fn(&Value) -> String,
        out: &mut dyn Write,
    ) -> Result<bool, String> {
        let deadline = Instant::now() + limit;
        let mut progress = Progress::start(&self.label);
        loop {
            let target = self.target()?;
            if done(&target) {
                return Ok(true);
            }
            progress.update(&status(&target), out);
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};

    #[test]
    fn an_address_that_is_not_ip_port_never_reaches_the_shell() {
        // A fake admin API whose /targets lists a shell command as an address.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let body = r#"{"target_groups": [{"name": "g", "healthy_threshold": 1, "targets":
                [{"address": "127.0.0.1:1; touch /tmp/pwned", "admin_state": "active"}]}]}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.read(&mut [0u8; 1]);
        });
        let client = AdminClient::new(&base, None).unwrap();
        let plan = DeployPlan {
            group: "g".into(),
            exec: "echo {address} > /dev/null".into(),
            drain_timeout: Duration::from_secs(1),
            wait_healthy: Duration::from_secs(1),
            exec_timeout: Duration::from_secs(1),
        };
        let mut out = Vec::new();
        let err = deploy(&client, &plan, &mut out).unwrap_err();
        assert!(matches!(err, DeployError::BadAddress { .. }), "{err}");
        assert!(err.to_string().contains("not an ip:port"), "{err}");
        assert!(String::from_utf8_lossy(&out).find("running").is_none());
        server.join().unwrap();
    }
}
