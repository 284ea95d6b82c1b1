//! The admission and abuse-limit options of `ringws serve` (origin allowlist, subprotocols,
//! connection counts, message and ping rates, assembly memory, message timeout). Unset options keep
//! the engine's defaults (see the README's limits table).

use super::given;
use clap::Args;
use ringws::ServerBuilder;
use std::time::Duration;

/// Admission and abuse limits.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Connections over all workers before new ones get 503 (default: no limit beyond
    /// --max-connections per worker).
    #[arg(long)]
    max_total_connections: Option<usize>,
    /// Connections per client IP address before new ones get 429 (default: no limit).
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Allow WebSocket upgrades from this origin only (repeatable): `https://example.com`, or
    /// `https://*.example.com` for its subdomains; others get 403 (default: any origin).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// With --allow-origin: refuse (403) upgrades without an Origin header too.
    #[arg(long)]
    deny_missing_origin: bool,
    /// A subprotocol this server speaks (repeatable, most preferred first); the first one the
    /// client offers is selected.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Refuse (400) upgrades that offer none of the --subprotocol names.
    #[arg(long)]
    require_subprotocol: bool,
    /// Messages per second per connection before it is closed with 1008 (default: no limit).
    #[arg(long)]
    message_rate: Option<u32>,
    /// Messages back to back under --message-rate (default 100).
    #[arg(long)]
    message_burst: Option<u32>,
    /// Client pings answered per second per connection (default 20; 0: no limit); more are
    /// ignored, a further --ping-burst of them closes with 1008.
    #[arg(long)]
    ping_rate: Option<u32>,
    /// Pings back to back under --ping-rate (default 100).
    #[arg(long)]
    ping_burst: Option<u32>,
    /// Bytes of partly received messages over all connections before the connection passing it
    /// is closed with 1009 (default 268435456 = 256 MiB; 0: no limit).
    #[arg(long)]
    max_assembly_memory: Option<usize>,
    /// Seconds to receive a frame or message once begun, else Close 1008 (default 30; 0
    /// disables).
    #[arg(long)]
    message_timeout: Option<u64>,
}

impl LimitArgs {
    /// Applies the options that were given to `b`.
    pub fn apply(self, mut b: ServerBuilder) -> ServerBuilder {
        b = given(
            b,
            self.max_total_connections,
            ServerBuilder::max_total_connections,
        );
        b = given(
            b,
            self.max_connections_per_ip,
            ServerBuilder::max_connections_per_ip,
        );
        if !self.allowed_origins.is_empty() {
            b = b.allowed_origins(self.allowed_origins);
        }
        if self.deny_missing_origin {
            b = b.allow_missing_origin(false);
        }
        if !self.subprotocols.is_empty() {
            b = b.subprotocols(self.subprotocols);
        }
        if self.require_subprotocol {
            b = b.require_subprotocol(true);
        }
        b = given(b, self.message_rate, ServerBuilder::message_rate);
        b = given(b, self.message_burst, ServerBuilder::message_burst);
        b = given(b, self.ping_rate, ServerBuilder::ping_rate);
        b = given(b, self.ping_burst, ServerBuilder::ping_burst);
        b = given(
            b,
            self.max_assembly_memory,
            ServerBuilder::max_assembly_memory,
        );
        b = given(
            b,
            self.message_timeout.map(Duration::from_secs),
            ServerBuilder::message_timeout,
        );
        b
    }
}
