//! Command-line interface (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Ballast: an L4 (TCP and UDP) load balancer.
#[derive(Debug, Parser)]
#[command(name = "ballast", version, about)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (overrides RUST_LOG; default info).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<log::LevelFilter>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the admin API of a running Ballast is: `--admin`, else the `admin:` section of
/// `--config` (or of /etc/ballast/ballast.yaml when it exists), else the default address.
#[derive(Debug, Clone, Args)]
pub struct Api {
    /// The admin API: http://HOST:PORT, HOST:PORT or unix:/PATH (default: found from the
    /// config, else http://127.0.0.1:7390). Env: BALLAST_ADMIN (a flag, --admin or
    /// --config, wins over either variable).
    #[arg(long, value_name = "URL", global = true)]
    pub admin: Option<String>,
    /// The running Ballast's configuration file: its `admin:` section says where the API is
    /// (its UNIX socket when this user may use it, else `bind`) and which token to send
    /// (default /etc/ballast/ballast.yaml when it exists). Env: BALLAST_CONFIG.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// File holding the bearer token (default: the config's `admin.token_file`).
    #[arg(long, value_name = "FILE", env = "BALLAST_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// One target of one group.
#[derive(Debug, Clone, Args)]
pub struct TargetRef {
    /// Target group name.
    pub group: String,
    /// Target address, as `GET /targets` lists it (e.g. 10.0.0.5:5432).
    pub address: String,
    /// With a `cluster:`, change this node only (default: the fleet's state in etcd, which
    /// every node applies).
    #[arg(long)]
    pub local: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s, true)
}

/// `ballast fleet …`.
#[derive(Debug, Clone, Subcommand)]
pub enum FleetAction {
    /// Every node of the fleet as this node sees it in etcd (exit 1 when a node has not
    /// applied the latest change, or etcd is not reached).
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `ballast node …`.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeAction {
    /// `/healthz` fails at once (the VIP or route moves away); listeners keep accepting for
    /// the grace, then close; open connections go on.
    Drain {
        /// How long listeners keep accepting (default: the config's `node_drain_grace`, 5s).
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        grace: Option<Duration>,
    },
    /// Serve again after a drain (listeners are bound again if they had closed).
    Enable,
    /// Print the node's state: serving, draining, drained or stopping, and readiness.
    Status,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer until SIGINT or SIGTERM (SIGHUP reloads the config).
    Run {
        /// YAML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from the Ballast serving this `upgrade_socket`
        /// (zero-downtime restart or upgrade); it stops accepting once this one serves.
        #[arg(long, value_name = "SOCKET")]
        upgrade_from: Option<PathBuf>,
    },
    /// Validate the configuration and print what `run` would start.
    Check {
        /// YAML configuration file.
        #[arg(long, short, value_name = "FILE", required_unless_present = "explain")]
        config: Option<PathBuf>,
        /// Explain a configuration key instead: its meaning, form and defaults, and for a
        /// section its keys (e.g. `listeners.tls.min_version`, `target_groups.health_check`;
        /// `.` for the top level). From the same types that read the file.
        #[arg(long, value_name = "KEY")]
        explain: Option<String>,
        /// Also bind every listener's address as `run` would, and close it again: fails
        /// when another process serves one (on a node where Ballast runs, its own
        /// listeners count as in use).
        #[arg(long)]
        probe_binds: bool,
    },
    /// Print the configuration file's JSON Schema (for YAML language servers and editors).
    Schema,
    /// Print a shell completion script: `ballast completions bash > /etc/bash_completion.d/ballast`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `ballast man | man -l -`.
    Man,
    /// The subcommands that talk to a running Ballast's admin API (flattened: `ballast
    /// targets`, `ballast drain …`, as the others).
    #[command(flatten)]
    Api(ApiCommand),
}

/// The subcommands that talk to a running Ballast's admin API ([`crate::ctl`] runs them).
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// List target groups and targets of a running Ballast: health, state, connections.
    Targets {
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List open connections and UDP sessions of a running Ballast.
    Connections {
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
        /// Most entries to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending new connections to a target; open ones go on.
    Drain {
        /// The target.
        #[command(flatten)]
        target: TargetRef,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
        /// Wait until the target's active connections reach 0 (exit 1 if `--timeout` passes).
        #[arg(long)]
        wait: bool,
        /// Longest `--wait`.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
        timeout: Duration,
    },
    /// Put a drained or disabled target back in service.
    Enable {
        /// The target.
        #[command(flatten)]
        target: TargetRef,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// Drain a target, then close what is still open after the group's drain_timeout.
    Disable {
        /// The target.
        #[command(flatten)]
        target: TargetRef,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// Add a target to a group (it takes traffic once it passes its health check).
    Add {
        /// The target.
        #[command(flatten)]
        target: TargetRef,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
        /// Relative share for weighted algorithms.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Use only when no primary target is healthy.
        #[arg(long)]
        backup: bool,
        /// At most this many connections at once (further ones try another target, or wait
        /// in the group's queue).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_connections: Option<u64>,
        /// Its QUIC-LB server ID (groups with a `quic:` listener), decimal or 0x-hex.
        #[arg(long, value_name = "ID", value_parser = parse_server_id)]
        server_id: Option<u64>,
        /// A token a `token:` listener routes to it (text, or `base64:…`); repeatable.
        #[arg(long = "token", value_name = "TOKEN")]
        tokens: Vec<String>,
    },
    /// Remove a target from a group: it drains, and what is open after drain_timeout is closed.
    Remove {
        /// The target.
        #[command(flatten)]
        target: TargetRef,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// Set a target's weight (1 to 10000) for weighted algorithms, until the next reload.
    Weight {
        /// The target.
        #[command(flatten)]
        target: TargetRef,
        /// The new weight.
        weight: u32,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// Add or remove the tokens a `token:` listener routes to a target (a matchmaker placing
    /// or releasing players), until the next reload; prints the target's tokens.
    Tokens {
        /// The target.
        #[command(flatten)]
        target: TargetRef,
        /// A token to add (text, or `base64:…`); repeatable.
        #[arg(long, value_name = "TOKEN")]
        add: Vec<String>,
        /// A token to remove; repeatable.
        #[arg(long, value_name = "TOKEN")]
        remove: Vec<String>,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// End one TCP connection (both sides reset) or UDP session, by the ID `ballast
    /// connections` lists.
    Disconnect {
        /// The connection's ID (WORKER.N).
        id: String,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// Re-read the configuration file of a running Ballast (as SIGHUP), and wait for the
    /// outcome: exit 1 with the reason when the file is refused (systemd's ExecReload).
    Reload {
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// Exit 0 when the running Ballast is ready to serve (`GET /healthz` answers 200), 1 with
    /// the reasons otherwise: for keepalived's `track_script` and BGP speakers' checks.
    Health {
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
        /// Longest wait for the answer (no answer: exit 1).
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
        timeout: Duration,
        /// Print nothing when ready.
        #[arg(long, short)]
        quiet: bool,
    },
    /// The fleet this node is part of (`cluster:`): every node, its version, generation,
    /// readiness and whether it has applied the fleet's latest change.
    Fleet {
        /// What to do.
        #[command(subcommand)]
        action: FleetAction,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// The node's own service state: drain it before maintenance, enable it after.
    Node {
        /// What to do.
        #[command(subcommand)]
        action: NodeAction,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
    /// Rolling deploy: for each target of a group, drain, run a command, wait healthy, enable.
    Deploy {
        /// Target group to deploy.
        #[arg(long)]
        group: String,
        /// Shell command run for each target; `{address}` is replaced by its address.
        #[arg(long, value_name = "CMD")]
        exec: String,
        /// Longest wait for a target's connections to finish before running the command.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
        drain_timeout: Duration,
        /// Longest wait for a target to pass its health check after the command.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
        wait_healthy: Duration,
        /// Longest run of the command for one target; past it, it is killed and the deploy stops.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration)]
        exec_timeout: Duration,
        /// Where the admin API is.
        #[command(flatten)]
        api: Api,
    },
}

/// The manual page (roff): clap's sections from this command line, then FILES, SIGNALS, EXIT
/// STATUS and CONFIGURATION (every key of the file, from the schema `check --explain`
/// reads).
///
/// # Errors
/// Writing to `out` failed.
pub fn manual(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cli = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cli).render(out)?;
    out.write_all(MANUAL_SECTIONS.as_bytes())?;
    writeln!(out, ".SH CONFIGURATION")?;
    writeln!(
        out,
        "The YAML file's keys (\\fBballast check \\-\\-explain\\fR \\fIKEY\\fR prints one; \
         \\fBballast schema\\fR the JSON Schema). A key inside a list (listeners, \
         target_groups, targets) is a key of each entry."
    )?;
    for (key, form, description) in crate::config::schema::reference() {
        let form = if form.starts_with("a section") {
            "section".to_string()
        } else {
            form
        };
        writeln!(out, ".TP\n\\fB{}\\fR ({})", roff(&key), roff(&form))?;
        writeln!(out, "{}", roff(&description))?;
    }
    Ok(())
}

/// Text safe in a roff line: backslashes doubled, a leading `.` or `'` escaped.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

/// The hand-written sections of the manual page.
const MANUAL_SECTIONS: &str = r#".SH FILES
.TP
\fB/etc/ballast/ballast.yaml\fR
The configuration (the packaged unit runs \fBballast run \-\-config\fR with it; the API
subcommands read its \fBadmin:\fR section to find the admin API).
.TP
\fB/run/ballast/admin.sock\fR
The admin API's UNIX socket in the packaged configuration (\fBadmin.unix\fR).
.TP
\fB/var/log/ballast/\fR
Where the packaged unit lets the service write (\fBaccess_log:\fR).
.TP
\fB/usr/share/ballast/ballast.schema.json\fR
The configuration's JSON Schema, for editors.
.SH ENVIRONMENT
.TP
\fBBALLAST_ADMIN\fR, \fBBALLAST_CONFIG\fR, \fBBALLAST_TOKEN_FILE\fR
Defaults for \fB\-\-admin\fR, \fB\-\-config\fR and \fB\-\-token\-file\fR of the API subcommands.
.TP
\fBRUST_LOG\fR
Log filter (\fB\-\-log\-level\fR overrides it).
.TP
\fBNOTIFY_SOCKET\fR, \fBLISTEN_FDS\fR
systemd's notification socket and socket activation.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the configuration file (as \fBballast reload\fR, which also reports the outcome).
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: listeners close (after \fBshutdown_grace\fR for SIGTERM, with /healthz failing meanwhile),
open connections get \fBshutdown_timeout\fR to finish. A second signal stops at once.
.TP
\fBSIGUSR1\fR
Reopen the access log file (logrotate).
.SH EXIT STATUS
.TP
\fB0\fR
Success, including a graceful stop.
.TP
\fB1\fR
A runtime failure; for the API subcommands, an API that refused the request or could not be
reached, or \fBballast health\fR finding the node not ready.
.TP
\fB2\fR
Bad usage, or a configuration \fBrun\fR or \fBcheck\fR refuses (including an address in use
or a file that cannot be written).
"#;

/// A server ID as `--server-id` takes it: decimal, or hex after `0x`.
fn parse_server_id(text: &str) -> Result<u64, String> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|e| format!("`{text}`: {e}"))
}
