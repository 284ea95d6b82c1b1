//! The `ringws` command line: `ringws serve` runs the benchmark echo server, `ringws load` loads a
//! server with WebSocket clients and measures it, `ringws check` checks the host, `ringws top`
//! shows a running server's metrics live.

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

mod cli;

/// mimalloc: faster than the system allocator for the small, short-lived allocations of handshakes
/// and large-message assembly, and it returns memory to the OS under churn.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns what the calling thread's heap holds freed to the OS. mimalloc purges freed pages only
/// when the thread next calls it, so a worker that goes idle after a burst of handshakes would keep
/// them resident (40-130 bytes per idle connection at 10,000); the handlers call this from
/// [`ringws::Handler::on_idle`], once per quiet spell, never while traffic flows.
pub(crate) fn collect_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; it
    // works on the calling thread's heap, which nothing else touches during the call.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// A WebSocket (RFC 6455) server engine on io_uring.
#[derive(Debug, Parser)]
#[command(name = "ringws", version, about)]
struct Cli {
    /// How log lines on stderr are written: text, or one JSON object per line (RUST_LOG filters
    /// them either way).
    #[arg(long, global = true, value_enum, default_value_t = cli::LogFormat::Text)]
    log_format: cli::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WebSocket server (the echo server by default).
    Serve(Box<cli::serve::ServeArgs>),
    /// Check this host for a connection target: kernel, io_uring features, limits, sysctls, CPUs.
    Check(cli::check::CheckArgs),
    /// Load a WebSocket server: many connections, verified echoes, latency percentiles.
    Load(Box<cli::load::LoadArgs>),
    /// Show a running server's /metrics live: connections, rates and loop-turn p99 per worker.
    ///
    /// Every --interval seconds: per worker and in total, open connections, data messages and
    /// payload bytes per second in and out, deliveries, backpressure events and drops per second,
    /// slow-consumer disconnects since the start, and the p99 of the interval's event-loop turns
    /// (the upper bound of its histogram bucket), under a line with the server's version, uptime
    /// and state. Rates are the increase between two scrapes over the time between them. A server
    /// that cannot be read is retried; Ctrl-C or SIGTERM ends the view (exit status 0).
    Top(cli::top::TopArgs),
    /// Publish the market feed's synthetic quotes into a message broker (NATS or Redis), for
    /// `serve --mode feed --rate 0 --bridge URL` nodes to deliver; serves no clients.
    Ticker(cli::ticker::TickerArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(mut e) => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            let subcommand = args
                .iter()
                .find(|a| !a.starts_with('-'))
                .map(String::as_str);
            cli::hint(&mut e, &mut Cli::command(), subcommand);
            e.exit()
        }
    };
    if let Command::Serve(args) = &cli.command
        && let Err(message) = args.check()
    {
        let mut cmd = Cli::command();
        cmd.build();
        let serve = cmd.find_subcommand_mut("serve").expect("serve exists");
        serve
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit()
    }
    cli::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Check(args) => return cli::check::run(args),
        Command::Load(args) => return cli::load::run(*args),
        Command::Top(args) => return cli::top::run(args),
        Command::Ticker(args) => return cli::ticker::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::note!("error: {}", cli::describe(&e));
            ExitCode::FAILURE
        }
    }
}
