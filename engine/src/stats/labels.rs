//! The label values of the engine's metrics: small, fixed sets (never a connection, an address
//! or a free-form string), so that every series a scrape shows is known in advance.

/// A fixed set of label values.
pub trait Label: Copy + Eq + std::fmt::Debug + 'static {
    /// The label's name in the Prometheus exposition (`reason`, `kind`, `code`, ...).
    const KEY: &'static str;
    /// Every value, in index order.
    const ALL: &'static [Self];
    /// The value as the exposition writes it.
    fn name(self) -> &'static str;
    /// The value's position in [`ALL`](Self::ALL).
    fn index(self) -> usize;
}

macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident, $key:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl Label for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[$(Self::$variant,)*];
            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
            #[inline]
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_enum! {
    /// Why a connection was refused before it opened: the reasons the rejection counter and the
    /// rate-limited log lines both carry.
    Rejection, "reason" {
        /// Over `max_connections` (per worker) or `max_total_connections`: answered 503.
        Limit = "limit",
        /// Over `max_connections_per_ip`: answered 429.
        PerIp = "per_ip",
        /// An `Origin` not in `allowed_origins`: answered 403.
        Origin = "origin",
        /// None of the server's subprotocols offered under `require_subprotocol`: answered 400.
        Subprotocol = "subprotocol",
        /// A malformed request or an invalid upgrade: answered with the RFC's status.
        HandshakeError = "handshake_error",
        /// No complete request within `handshake_timeout`: dropped.
        HandshakeTimeout = "handshake_timeout",
        /// Refused by the handler's `on_upgrade`.
        Handler = "handler",
    }
}

label_enum! {
    /// The kind of a WebSocket message or control frame.
    MessageKind, "kind" {
        /// A text message.
        Text = "text",
        /// A binary message.
        Binary = "binary",
        /// A ping.
        Ping = "ping",
        /// A pong.
        Pong = "pong",
        /// A close frame.
        Close = "close",
    }
}

label_enum! {
    /// A connection timer.
    TimerKind, "kind" {
        /// `handshake_timeout` expired: the connection is dropped.
        Handshake = "handshake",
        /// `idle_timeout` expired: closed with 1001.
        Idle = "idle",
        /// `ping_interval` passed: a keep-alive ping was sent.
        Ping = "ping",
        /// `pong_timeout` expired after a ping: dropped.
        Pong = "pong",
        /// `close_timeout` expired during the close handshake: dropped.
        Close = "close",
        /// `message_timeout` expired on a partly received message: closed with 1008.
        Message = "message",
    }
}

label_enum! {
    /// Which side started closing a connection.
    Side, "side" {
        /// This server (a close from a callback, a limit, a timeout, shutdown).
        Local = "local",
        /// The peer (its Close frame, or its TCP connection ending).
        Peer = "peer",
    }
}

/// Declares a label over a table of numeric codes, with `other` for any code not in it.
macro_rules! code_label {
    ($(#[$doc:meta])* $name:ident, $key:literal, [$($code:literal),* $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u16);

        impl $name {
            const TABLE: &'static [(u16, &'static str)] =
                &[$(($code, stringify!($code)),)* (0, "other")];
            /// Entries of the table, `other` included.
            pub(crate) const COUNT: usize = Self::TABLE.len();
        }

        impl Label for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[$($name($code),)* $name(0)];
            fn name(self) -> &'static str {
                Self::TABLE[self.index()].1
            }
            #[inline]
            fn index(self) -> usize {
                Self::TABLE
                    .iter()
                    .position(|(c, _)| *c == self.0 && *c != 0)
                    .unwrap_or(Self::COUNT - 1)
            }
        }
    };
}

code_label! {
    /// A close code (RFC 6455 §7.4.1) as a label: the codes 1000-1015 the RFC defines, and `other`
    /// for the rest (codes an application picks, 3000-4999, are not told apart).
    CloseStatus, "code",
    [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015]
}

code_label! {
    /// An HTTP status the server answered an upgrade request with, as a label: the statuses the
    /// engine writes itself, and `other` for the rest (a handler's own refusals).
    HttpStatus, "status",
    [101, 400, 401, 403, 404, 405, 413, 426, 429, 431, 500, 501, 503, 505]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consistent<L: Label>() {
        for (i, l) in L::ALL.iter().enumerate() {
            assert_eq!(l.index(), i, "{l:?}");
            assert!(!l.name().is_empty());
        }
    }

    #[test]
    fn every_label_indexes_its_own_position() {
        consistent::<Rejection>();
        consistent::<MessageKind>();
        consistent::<TimerKind>();
        consistent::<Side>();
        consistent::<CloseStatus>();
        consistent::<HttpStatus>();
    }

    #[test]
    fn unknown_codes_and_statuses_are_other() {
        assert_eq!(CloseStatus(4001).name(), "other");
        assert_eq!(CloseStatus(1004).name(), "other");
        assert_eq!(CloseStatus(1009).name(), "1009");
        assert_eq!(HttpStatus(418).name(), "other");
        assert_eq!(HttpStatus(0).name(), "other");
        assert_eq!(HttpStatus(101).name(), "101");
    }
}
