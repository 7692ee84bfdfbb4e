//! `ballast`: parses the command line, sets up logging, runs, and maps errors to exit codes
//! (0 ok, 2 bad usage or bad config, 1 runtime failure).

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use ballast::cli::{ApiCommand, Cli, Command};
use ballast::config;
use ballast::preflight::Finding;
use ballast::runtime::{self, RunError};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if !matches!(cli.command, Command::Run { .. }) {
        // A command whose output is piped into `head` ends quietly when the pipe closes, as
        // other Unix tools do, instead of failing on EPIPE ("Broken pipe"). Not for `run`:
        // its sockets and splice pipes must never raise SIGPIPE.
        // SAFETY: signal(2) with a valid signal number and SIG_DFL; no handler is installed.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = cli.log_level {
        logger.filter_level(level);
    }
    logger.format_timestamp_millis().init();

    match cli.command {
        Command::Api(api_command) => api(&api_command),
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
        Command::Schema => {
            println!("{:#}", config::schema::schema());
            ExitCode::SUCCESS
        }
        Command::Check {
            explain: Some(key), ..
        } => explain(&key),
        Command::Check { config: None, .. } => {
            eprintln!("error: check needs --config FILE or --explain KEY");
            ExitCode::from(2)
        }
        Command::Check {
            config: Some(config),
            probe_binds,
            ..
        } => check(&config, probe_binds),
        Command::Run {
            config,
            upgrade_from,
        } => run(&config, upgrade_from.as_deref()),
    }
}

/// The subcommands that talk to a running Ballast's admin API: exit 1 when it fails.
fn api(command: &ApiCommand) -> ExitCode {
    match ballast::ctl::run(command, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cli = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cli, "ballast", &mut std::io::stdout());
    ExitCode::SUCCESS
}

fn man() -> ExitCode {
    match ballast::cli::manual(&mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `check --explain KEY`: exit 2 for a key the configuration does not have.
fn explain(key: &str) -> ExitCode {
    match config::schema::explain(key) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `check --config FILE`: the plan on stdout, then what was probed of the host (`ok:`, `not probed:`) on
/// stdout, what `run` would do in a lesser way (`warning:`) and what it would fail on (`error:`)
/// on stderr; exit 2 for either kind of error.
fn check(path: &Path, probe_binds: bool) -> ExitCode {
    match config::load(path) {
        Ok(c) => {
            config::plan::print(&c);
            let mut failed = false;
            for finding in ballast::preflight::probe(&c, probe_binds) {
                match finding {
                    Finding::Ok(m) => println!("ok: {m}"),
                    Finding::NotProbed(m) => println!("not probed: {m}"),
                    Finding::Degraded(m) => eprintln!("warning: {m}"),
                    Finding::Fails(m) => {
                        eprintln!("error: {m}");
                        failed = true;
                    }
                }
            }
            if failed {
                eprintln!(
                    "error: {} is valid as a file, but `run` would fail on this host (above)",
                    path.display()
                );
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e @ config::ConfigError::Problems(_)) => {
            // One problem a line, `file:line:column: key: message`, for editors to jump to.
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `run`: exit 2 for a bad configuration or what it names (addresses, files), 1 for a failure
/// while running.
fn run(path: &Path, upgrade_from: Option<&Path>) -> ExitCode {
    // Absolute (symlinks kept, so a reload follows a swapped link): reloads read the same
    // file whatever the working directory, and `/node` names it so a CLI started elsewhere
    // recognises it.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let c = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                log::error!("{line}");
            }
            return ExitCode::from(2);
        }
    };
    match runtime::run(c, upgrade_from) {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (RunError::Bind(_)
            | RunError::AccessLog { .. }
            | RunError::UpgradeSocket { .. }
            | RunError::Activation(_)
            | RunError::AdminBind { .. }
            | RunError::Transparent { .. }
            | RunError::Fleet(_)),
        ) => {
            log::error!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
