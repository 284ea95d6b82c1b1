//! The `ringws` command line: `ringws serve` runs the benchmark echo server; `load` and `check` are
//! planned subcommands (other issues).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

/// mimalloc: faster than the system allocator for the small, short-lived allocations of handshakes
/// and large-message assembly, and it returns memory to the OS under churn.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A WebSocket (RFC 6455) server engine on io_uring.
#[derive(Debug, Parser)]
#[command(name = "ringws", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WebSocket server (the echo server by default).
    Serve(cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
