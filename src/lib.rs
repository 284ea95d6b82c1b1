//! `ringws-cli`: the `ringws` command line (`src/main.rs`: serve, load, check, top) and, as this
//! library, the market-data feed it serves with `ringws serve --mode feed` ([`feed`]), which
//! `examples/market_feed.rs` and the integration tests use too, and the broker bridges behind
//! `--bridge` and `ringws ticker` ([`bridge`]: NATS and Redis clients on a thread of their own).
//!
//! Not published: applications depend on the `ringws` library (the engine and the protocol), which
//! pulls in none of the CLI's crates (clap, mimalloc, tracing-subscriber, hdrhistogram, JSON).

pub mod bridge;
pub mod feed;
pub mod settings;
