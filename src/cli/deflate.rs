//! The permessage-deflate options shared by `ringws serve` and `ringws load`.

use clap::{Args, ValueEnum};
use ringws::DeflateConfig;

/// Which directions keep their compression context from message to message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Takeover {
    /// Neither: every message is compressed from a fresh window; nothing kept per connection.
    None,
    /// The client's messages only (the default policy): the server compresses with one shared
    /// compressor per worker and keeps a ~48 KB decompressor per connection.
    Client,
    /// The server's messages only: the server keeps a ~250-380 KB compressor per connection.
    Server,
    /// Both: best compression, largest memory per connection.
    Both,
}

/// permessage-deflate (RFC 7692) options.
#[derive(Debug, Clone, Args)]
pub struct DeflateArgs {
    /// Negotiate permessage-deflate (serve: accept clients' offers; load: offer it).
    #[arg(long)]
    pub deflate: bool,
    /// With --deflate: which directions keep their compression context between messages.
    #[arg(long, value_enum, default_value_t = Takeover::Client, requires = "deflate")]
    pub deflate_takeover: Takeover,
    /// With --deflate: largest LZ77 window, in bits (8-15), for both directions.
    #[arg(long, default_value_t = 15, requires = "deflate")]
    pub deflate_window_bits: u8,
    /// With --deflate: messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = DeflateConfig::default().min_compress_size, requires = "deflate")]
    pub deflate_min_size: usize,
}

impl DeflateArgs {
    /// The policy the options describe, or `None` without `--deflate`.
    pub fn policy(&self) -> Option<DeflateConfig> {
        let (server, client) = match self.deflate_takeover {
            Takeover::None => (false, false),
            Takeover::Client => (false, true),
            Takeover::Server => (true, false),
            Takeover::Both => (true, true),
        };
        self.deflate.then(|| DeflateConfig {
            server_max_window_bits: self.deflate_window_bits,
            client_max_window_bits: self.deflate_window_bits,
            server_no_context_takeover: !server,
            client_no_context_takeover: !client,
            min_compress_size: self.deflate_min_size,
            ..DeflateConfig::default()
        })
    }
}
