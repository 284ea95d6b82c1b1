//! Subcommands of the `ringws` binary, one module each.

pub mod check;
pub mod deflate;
pub mod limits;
pub mod load;
pub mod serve;

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings and errors).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Applies the builder setting `set` when its command-line option was given, so each option is
/// one line instead of an `if let` per option.
pub fn given<T>(
    b: ringws::ServerBuilder,
    value: Option<T>,
    set: fn(ringws::ServerBuilder, T) -> ringws::ServerBuilder,
) -> ringws::ServerBuilder {
    match value {
        Some(v) => set(b, v),
        None => b,
    }
}
