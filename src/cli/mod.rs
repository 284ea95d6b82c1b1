//! Subcommands of the `ringws` binary, one module each, and what they share: logging, stdout that
//! tolerates a reader that went away, and error messages in terms of the command-line options.

pub mod bridge;
pub mod check;
pub mod deflate;
pub mod limits;
pub mod load;
pub mod serve;
pub mod ticker;
pub mod top;

use clap::ValueEnum;
use ringws::EngineError;
use ringws_cli::settings::{FLAGS, flag_of};
use std::io::{self, Write};

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event: time, level, target, message and fields (colored on a terminal).
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields.message` and the event's
    /// other fields, `span`/`spans`), for log collectors.
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default: warnings and errors).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed, or a pipe whose reader went away) is
        // dropped: by default the subscriber reports it with `eprintln!`, which panics then.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `eprintln!` that ignores a stderr that cannot be written (closed, or a pipe whose reader went
/// away: `ringws load ... 2>&1 | head`) instead of panicking.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// Writes a report to stdout. A reader that went away before the end (`EPIPE`: `ringws check --json |
/// head -1`) ends the output quietly: the rest is dropped and `Ok` returned, so the command exits
/// as it would have (`println!` panics instead). Other write errors are returned.
///
/// Rust ignores SIGPIPE, so a closed pipe shows up here as `BrokenPipe` rather than killing the
/// process; the engine relies on that for its sockets, so it is not restored.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// [`print`], reporting a failure other than a closed pipe on stderr; `false` then.
pub fn print_or_report(text: &str) -> bool {
    match print(text) {
        Ok(()) => true,
        Err(e) => {
            note!("error: writing to stdout: {e}");
            false
        }
    }
}

/// An engine error as the command line says it: an out-of-range setting is named by its option
/// (`invalid --buffer-count: it must be ...`), including settings named in the requirement.
pub fn describe(e: &EngineError) -> String {
    match e {
        EngineError::InvalidConfig {
            setting,
            requirement,
        } => match flag_of(setting) {
            Some(flag) => {
                let mut requirement = (*requirement).to_string();
                // Settings named in the requirement ("at least max_message_size"); only names with
                // an underscore, so plain words such as "rate" stay words.
                for (s, f) in FLAGS.iter().filter(|(s, _)| s.contains('_')) {
                    requirement = requirement.replace(s, f);
                }
                format!("invalid {flag}: it must be {requirement}")
            }
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// Adds a hint to a command-line error where clap's own would mislead: `serve --port 9001` (or
/// `--host`) gets "a similar argument exists: '--subprotocol'" from clap's fuzzy matching, while the
/// address and port are one option, `--addr HOST:PORT`. `subcommand` is the one on the command line
/// and `cmd` the whole command (for the subcommand's usage line, instead of clap's usage of its
/// suggestion).
pub fn hint(e: &mut clap::Error, cmd: &mut clap::Command, subcommand: Option<&str>) {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return;
    };
    let name = arg.split('=').next().unwrap_or_default();
    let tip = match (subcommand, name) {
        (Some("serve"), "--port" | "--host" | "--bind" | "--listen") => {
            "the address and port are one option: --addr HOST:PORT (e.g. --addr 127.0.0.1:9001)"
        }
        (Some("load"), "--port" | "--host" | "--addr" | "--server") => {
            "the server is one option: --url ws://HOST:PORT/PATH (e.g. --url ws://127.0.0.1:9001/)"
        }
        _ => return,
    };
    e.remove(ContextKind::SuggestedArg);
    e.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![tip.to_string().into()]),
    );
    cmd.build();
    if let Some(sub) = subcommand.and_then(|name| cmd.find_subcommand_mut(name)) {
        e.insert(
            ContextKind::Usage,
            ContextValue::StyledStr(sub.render_usage()),
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_named_by_their_option() {
        let e = EngineError::InvalidConfig {
            setting: "buffer_count",
            requirement: "a power of two between 1 and 32768",
        };
        assert_eq!(
            describe(&e),
            "invalid --buffer-count: it must be a power of two between 1 and 32768"
        );
        let e = EngineError::InvalidConfig {
            setting: "max_assembly_memory",
            requirement: "at least max_message_size (0: none)",
        };
        assert_eq!(
            describe(&e),
            "invalid --max-assembly-memory: it must be at least --max-message-size (0: none)"
        );
        // A setting without an option keeps the engine's words.
        let e = EngineError::InvalidConfig {
            setting: "max_topics",
            requirement: "between 1 and 16777216",
        };
        assert_eq!(describe(&e), e.to_string());
    }

    #[test]
    fn every_option_in_the_table_exists() {
        use clap::CommandFactory as _;
        let cmd = crate::Cli::command();
        let serve = cmd.find_subcommand("serve").expect("serve");
        for (setting, flag) in FLAGS {
            let long = flag.trim_start_matches("--");
            assert!(
                serve.get_arguments().any(|a| a.get_long() == Some(long)),
                "{setting}: serve has no {flag}"
            );
        }
    }
}
