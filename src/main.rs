use std::process::ExitCode;

use clap::Parser;
use servicenow_operator::cli::{Cli, Command};

fn main() -> ExitCode {
    match Cli::parse().command {
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
        Command::Run(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("failed to start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(servicenow_operator::run::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "servicenow-operator stopped");
                    eprintln!("servicenow-operator: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
