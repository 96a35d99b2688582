use std::process::ExitCode;

use clap::Parser;
use servicenow_operator::{
    cli::{Cli, Command},
    run::{self, StartError},
};

/// mimalloc, not glibc's malloc: allocation is on every request's path (glibc's malloc and free
/// took 17 % of the webhook receiver's CPU, measured with perf). Built with `no_thp`: mimalloc
/// turns transparent huge pages off for the process, which on a host that has them "always"
/// would back its arena with 2 MiB pages (20–25 MiB more resident memory, measured).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Run(args) => serve(run::run(*args)),
        Command::Controller(args) => serve(run::controller(*args)),
        Command::Public(args) => serve(run::public(*args)),
    }
}

/// Runs `process` (`run`, `controller` or `public`) to its end on a new async runtime.
fn serve(process: impl Future<Output = Result<(), StartError>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(process) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "servicenow-operator stopped");
            eprintln!("servicenow-operator: {error}");
            ExitCode::FAILURE
        }
    }
}
