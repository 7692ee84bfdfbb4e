//! Command-line interface (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer until SIGINT or SIGTERM.
    Run {
        /// YAML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate the configuration and print what `run` would start.
    Check {
        /// YAML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}
