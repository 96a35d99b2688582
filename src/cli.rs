//! Command-line interface: the subcommands and their flags.

use clap::{Parser, Subcommand};

/// The servicenow-operator binary.
#[derive(Debug, Parser)]
#[command(name = "servicenow-operator", version, about = "Kubernetes operator for ServiceNow connections")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller and its HTTP listeners.
    Run(RunArgs),
    /// Print the ServiceNowConnection CustomResourceDefinition as YAML.
    Crd,
    /// Print the version.
    Version,
}

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}
