use std::process::ExitCode;

use clap::Parser;
use servicenow_operator::cli::{Cli, Command, LogFormat, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match servicenow_operator::crd::yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("failed to render the CRD: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("servicenow-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(args),
    }
}

fn run(RunArgs { log_format, log_filter }: RunArgs) -> ExitCode {
    let builder = tracing_subscriber::fmt().with_env_filter(log_filter);
    match log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    tracing::info!("servicenow-operator starting; the controller is not implemented yet");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tokio::signal::ctrl_c()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("failed to wait for a shutdown signal: {error}");
            ExitCode::FAILURE
        }
    }
}
