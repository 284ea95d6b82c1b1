//! The admission and abuse-limit options of `ringws serve` (origin allowlist, subprotocols,
//! connection counts, message and ping rates, assembly memory, message timeout). Unset options keep
//! the engine's defaults (see the README's settings table).

use super::given;
use clap::Args;
use ringws::ServerBuilder;
use ringws_cli::settings::{help, long_help};
use std::time::Duration;

/// Admission and abuse limits.
#[derive(Debug, Args)]
pub struct LimitArgs {
    #[arg(long, help = help("max_total_connections"), long_help = long_help("max_total_connections", None))]
    max_total_connections: Option<usize>,
    #[arg(long, help = help("max_connections_per_ip"), long_help = long_help("max_connections_per_ip", None))]
    max_connections_per_ip: Option<usize>,
    #[arg(long = "allow-origin", value_name = "ORIGIN", help = help("allowed_origins"), long_help = long_help("allowed_origins", None))]
    allowed_origins: Vec<String>,
    /// With --allow-origin: refuse (403) upgrades without an Origin header too.
    #[arg(long)]
    deny_missing_origin: bool,
    #[arg(long = "subprotocol", value_name = "NAME", help = help("subprotocols"), long_help = long_help("subprotocols", None))]
    subprotocols: Vec<String>,
    #[arg(long, help = help("require_subprotocol"), long_help = long_help("require_subprotocol", None))]
    require_subprotocol: bool,
    #[arg(long, help = help("message_rate"), long_help = long_help("message_rate", None))]
    message_rate: Option<u32>,
    #[arg(long, help = help("message_burst"), long_help = long_help("message_burst", None))]
    message_burst: Option<u32>,
    #[arg(long, help = help("ping_rate"), long_help = long_help("ping_rate", None))]
    ping_rate: Option<u32>,
    #[arg(long, help = help("ping_burst"), long_help = long_help("ping_burst", None))]
    ping_burst: Option<u32>,
    #[arg(long, value_name = "BYTES", help = help("max_assembly_memory"), long_help = long_help("max_assembly_memory", Some("bytes")))]
    max_assembly_memory: Option<usize>,
    #[arg(long, value_name = "SECONDS", help = help("message_timeout"), long_help = long_help("message_timeout", Some("seconds")))]
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
