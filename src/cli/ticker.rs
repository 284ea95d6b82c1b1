//! `ringws ticker --bridge URL`: the market feed's synthetic quotes published into a broker, for
//! `ringws serve --mode feed --rate 0 --bridge URL` nodes to deliver (the market-data ingester of
//! a deployment with several nodes). It serves no clients.

use super::bridge::BridgeArgs;
use super::note;
use super::top::signals::StopSignals;
use clap::Args;
use ringws_cli::bridge::publisher::PublisherThread;
use ringws_cli::feed::{FeedConfig, MAX_RATE, MAX_SYMBOLS, Ticker, symbol_names};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Options of `ringws ticker`.
#[derive(Debug, Args)]
pub struct TickerArgs {
    #[command(flatten)]
    bridge: BridgeArgs,
    /// Number of symbols (BTC-USD, ETH-USD, ... then generated names), 1 to 100000.
    #[arg(long, default_value_t = FeedConfig::default().symbols)]
    symbols: usize,
    /// Quotes published per second over all symbols, 1 to 10000000.
    #[arg(long, default_value_t = FeedConfig::default().rate)]
    rate: u64,
    /// Publish quotes as binary messages instead of JSON text (layout in docs/cli.md).
    #[arg(long)]
    binary: bool,
}

/// Publishes until SIGINT or SIGTERM, then reports what was dropped.
pub fn run(args: TickerArgs) -> ExitCode {
    if !(1..=MAX_SYMBOLS).contains(&args.symbols) {
        note!("error: invalid --symbols: it must be between 1 and {MAX_SYMBOLS}");
        return ExitCode::FAILURE;
    }
    if !(1..=MAX_RATE).contains(&args.rate) {
        note!("error: invalid --rate: it must be between 1 and {MAX_RATE}");
        return ExitCode::FAILURE;
    }
    if args.bridge.bridge_all {
        note!("error: --bridge-all is an option of serve (the ticker subscribes to nothing)");
        return ExitCode::FAILURE;
    }
    let opts = match args.bridge.options("ringws ticker".into()) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            note!(
                "error: ringws ticker needs --bridge URL (nats://HOST:PORT or redis://HOST:PORT)"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            note!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread starts, so that they all inherit the mask.
    let signals = match StopSignals::block() {
        Ok(s) => s,
        Err(e) => {
            note!("error: cannot block SIGINT/SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let names = symbol_names(args.symbols);
    let url = opts.url.url.clone();
    let (link, sink) = match PublisherThread::start(opts, &names) {
        Ok(started) => started,
        Err(e) => {
            note!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = FeedConfig {
        symbols: args.symbols,
        rate: args.rate,
        binary: args.binary,
        ..FeedConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let ticker = std::thread::spawn(move || {
        let mut ticker = Ticker::new(&names, cfg, sink);
        ticker.publish_all();
        ticker.run(&s);
    });
    note!(
        "ticker publishing {} quotes/s over {} symbols to {url}",
        args.rate,
        args.symbols
    );
    // A year: the wait ends with a signal.
    while signals
        .wait_until(Instant::now() + Duration::from_secs(365 * 24 * 3600))
        .is_none()
    {}
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let dropped = link.link().dropped();
    drop(link);
    note!("ticker stopped; {dropped} quotes dropped while the broker was unreachable");
    ExitCode::SUCCESS
}
