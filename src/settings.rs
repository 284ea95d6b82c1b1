//! The engine's settings as the command line shows them: which option sets which setting, and the
//! help text of those options, made from the engine's own table ([`ringws::Config::SETTINGS`]) so
//! that a default or a requirement is written once, in the engine.

use ringws::{Config, Setting};

/// The engine's settings (`EngineError::InvalidConfig::setting`, as the builder names them) and the
/// command-line options that set them, so errors name what the user typed. Settings without an
/// option (the engine's own, such as `max_topics`) keep the engine's wording.
pub const FLAGS: &[(&str, &str)] = &[
    ("bind", "--addr"),
    ("workers", "--workers"),
    ("backlog", "--backlog"),
    ("max_connections", "--max-connections"),
    ("max_message_size", "--max-message-size"),
    ("max_backpressure", "--max-backpressure"),
    ("buffer_size", "--buffer-size"),
    ("buffer_count", "--buffer-count"),
    ("incremental_buffers", "--incremental-buffers"),
    ("recv_bundles", "--recv-bundles"),
    ("no_sq_array", "--no-sq-array"),
    ("skip_cancel_completions", "--skip-cancel-completions"),
    ("msg_ring", "--msg-ring"),
    ("batch_wait", "--batch-wait"),
    ("direct_descriptors", "--direct-descriptors"),
    ("send_zc_threshold", "--send-zc-threshold"),
    ("recv_into_threshold", "--recv-into-threshold"),
    ("ring_entries", "--ring-entries"),
    ("socket_send_buffer", "--send-buffer"),
    ("idle_timeout", "--idle-timeout"),
    ("ping_interval", "--ping-interval"),
    ("pong_timeout", "--pong-timeout"),
    ("message_timeout", "--message-timeout"),
    ("max_total_connections", "--max-total-connections"),
    ("max_connections_per_ip", "--max-connections-per-ip"),
    ("allowed_origins", "--allow-origin"),
    ("subprotocols", "--subprotocol"),
    ("require_subprotocol", "--require-subprotocol"),
    ("message_rate", "--message-rate"),
    ("message_burst", "--message-burst"),
    ("ping_rate", "--ping-rate"),
    ("ping_burst", "--ping-burst"),
    ("max_assembly_memory", "--max-assembly-memory"),
    ("admin_addr", "--admin-addr"),
    ("tls_bind", "--tls-addr"),
    ("drain_delay", "--drain-delay"),
    ("health_timeout", "--health-timeout"),
    ("deflate.server_max_window_bits", "--deflate-window-bits"),
    ("deflate.client_max_window_bits", "--deflate-window-bits"),
    // The market feed's settings (ringws_cli::feed::Feed::new).
    ("max_history_memory", "--max-history-memory"),
    ("symbols", "--symbols"),
    ("rate", "--rate"),
    ("history", "--history"),
];

/// The option that sets the engine setting `setting`, if there is one.
pub fn flag_of(setting: &str) -> Option<&'static str> {
    FLAGS.iter().find(|(s, _)| *s == setting).map(|(_, f)| *f)
}

/// The engine's setting `name` (which must exist: a typo is a bug caught by the tests).
fn setting(name: &str) -> &'static Setting {
    Config::SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no engine setting {name}"))
}

/// A doc comment as plain text: one line, intra-doc links and code marks removed.
fn plain(doc: &str) -> String {
    let joined = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(joined.len());
    let mut rest = joined.as_str();
    // `[text](target)` -> `text`.
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            let target = &after[close + 2..];
            target.find(')').map(|end| (close, close + 2 + end + 1))
        }) {
            Some((close, skip)) => {
                out.push_str(&after[..close]);
                rest = &after[skip..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace('`', "")
}

/// The first sentence of `text`.
fn first_sentence(text: &str) -> &str {
    match text.find(". ") {
        Some(i) => &text[..=i],
        None => text,
    }
}

/// The short help of the option that sets `name`: what it does, and the engine's default.
pub fn help(name: &str) -> String {
    let s = setting(name);
    format!("{} [default: {}]", first_sentence(&plain(s.doc)), s.default)
}

/// The long help (`--help`) of the option that sets `name`: what it does, what a value must be,
/// and the engine's default; `unit` says what the option counts in, if the setting's own type does
/// not (durations are given in seconds).
pub fn long_help(name: &str, unit: Option<&str>) -> String {
    let s = setting(name);
    let unit = unit.map(|u| format!(" In {u}.")).unwrap_or_default();
    format!(
        "{}{unit} It must be {}.\n[default: {}]",
        plain(s.doc),
        s.requirement,
        s.default
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_names_a_real_setting() {
        for (name, flag) in FLAGS {
            let engine = Config::SETTINGS.iter().any(|s| s.name == *name);
            let other =
                name.starts_with("deflate.") || matches!(*name, "symbols" | "rate" | "history");
            assert!(
                engine || other,
                "{flag} sets {name}, which is not a setting"
            );
        }
    }

    #[test]
    fn docs_become_plain_text() {
        assert_eq!(
            plain("Whether [`Server::run`](crate::Server::run) turns `SIGINT`\n/// x"),
            "Whether Server::run turns SIGINT /// x"
        );
        assert_eq!(plain("a [b] c"), "a [b] c");
        assert!(help("buffer_count").ends_with("[default: 512]"));
        assert!(long_help("idle_timeout", Some("seconds")).contains("In seconds."));
    }
}
