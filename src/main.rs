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
            servicenow_operator::telemetry::init_logging(&args.telemetry);
            tracing::error!("the controller is not wired yet");
            ExitCode::FAILURE
        }
    }
}
