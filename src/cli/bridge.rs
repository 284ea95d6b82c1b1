//! The broker options shared by `ringws serve --mode feed --bridge URL` and `ringws ticker`.

use clap::Args;
use ringws_cli::bridge::{
    BridgeOptions, BrokerUrl, DEFAULT_MAX_BACKOFF, DEFAULT_PING, DEFAULT_PREFIX, is_subject,
};
use std::time::Duration;

/// Options of a broker link.
#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    /// A message broker that carries publications between nodes: nats://HOST:PORT (NATS core) or
    /// redis://HOST:PORT (Redis pub/sub). serve: subscribe there to the topics this node's clients
    /// want and publish them locally; ticker: publish the quotes there.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub bridge: Option<BrokerUrl>,
    /// With --bridge: subjects (NATS) or channels (Redis) are PREFIX.TOPIC.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX, requires = "bridge")]
    pub bridge_prefix: String,
    /// With --bridge: subscribe to every topic under the prefix instead of only those this node's
    /// clients are subscribed to.
    #[arg(long, requires = "bridge")]
    pub bridge_all: bool,
    /// With --bridge: publications waiting for the broker at most; beyond it, and while the
    /// broker is unreachable, they are counted and dropped.
    #[arg(long, value_name = "N", default_value_t = ringws::DEFAULT_BRIDGE_CAPACITY as u32,
          requires = "bridge", value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub bridge_queue: u32,
    /// With --bridge: longest wait between two reconnect attempts, in seconds (the wait starts at
    /// 10 ms and doubles).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_MAX_BACKOFF.as_secs_f64(), requires = "bridge")]
    pub bridge_max_backoff: f64,
    /// With --bridge: keep-alive ping interval, in seconds: a broker link that stays silent (a
    /// network that drops packets) is taken as lost after three unanswered pings (NATS) or one
    /// ping or publish not answered within it (Redis), then reconnected.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_PING.as_secs_f64(), requires = "bridge")]
    pub bridge_ping: f64,
}

fn parse_url(s: &str) -> Result<BrokerUrl, String> {
    s.parse()
        .map_err(|e: ringws_cli::bridge::BridgeError| e.to_string())
}

impl BridgeArgs {
    /// The bridge's options, if --bridge was given; `name` is what the connection tells the broker.
    pub fn options(&self, name: String) -> Result<Option<BridgeOptions>, String> {
        let Some(url) = self.bridge.clone() else {
            return Ok(None);
        };
        if !is_subject(&self.bridge_prefix) {
            return Err(format!(
                "invalid --bridge-prefix {:?}: it must be dot-separated tokens without whitespace, \
                 '*' or '>'",
                self.bridge_prefix
            ));
        }
        let max_backoff = Duration::try_from_secs_f64(self.bridge_max_backoff)
            .ok()
            .filter(|d| (Duration::from_millis(10)..=Duration::from_secs(3600)).contains(d))
            .ok_or("invalid --bridge-max-backoff: it must be between 0.01 and 3600 seconds")?;
        let mut opts = BridgeOptions::new(url);
        opts.prefix = self.bridge_prefix.clone();
        opts.all = self.bridge_all;
        opts.capacity = self.bridge_queue as usize;
        opts.max_backoff = max_backoff;
        opts.ping = Duration::try_from_secs_f64(self.bridge_ping)
            .ok()
            .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(600)).contains(d))
            .ok_or("invalid --bridge-ping: it must be between 0.1 and 600 seconds")?;
        opts.name = name;
        Ok(Some(opts))
    }
}
