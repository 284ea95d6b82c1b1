//! The market-data feed as a library user builds it: `cargo run --release --example market_feed`,
//! then open http://127.0.0.1:9002/ for the live page, or subscribe from any WebSocket client with
//! `{"op":"subscribe","symbols":["BTC-USD","ETH-USD"]}`. Same implementation as
//! `ringws serve --mode feed` ([`ringws_cli::feed`]).
use ringws::EngineError;
use ringws_cli::feed::{Feed, FeedConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), EngineError> {
    let feed = Feed::new(FeedConfig {
        symbols: 100,
        rate: 1_000,
        binary: false,
        ..FeedConfig::default()
    })?;
    let builder = ringws::Server::builder()
        .bind("127.0.0.1:9002")
        .handle_signals(true);
    feed.serve(builder, |on| {
        eprintln!(
            "market feed on http://{}/ ({} workers); Ctrl-C stops it",
            on.addr, on.workers
        )
    })
}
