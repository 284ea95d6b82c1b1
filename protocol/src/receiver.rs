//! The per-connection receive state machine. Being implemented; signatures fixed.

use crate::close::CloseFrame;
use crate::error::Error;
use crate::frame::Role;

/// Receive limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload one frame may declare (1009 above it). Default 16 MiB.
    pub max_frame_size: u64,
    /// Largest message across its fragments (1009 above it). Default 16 MiB.
    pub max_message_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
        }
    }
}

/// One thing the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message (UTF-8 validated).
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its payload.
    Ping(&'a [u8]),
    /// A pong with its payload.
    Pong(&'a [u8]),
    /// A close frame (`None`: no status code).
    Close(Option<CloseFrame<'a>>),
}

/// Decodes one connection's incoming byte stream into events.
#[derive(Debug)]
pub struct Receiver {
    _role: Role,
    _limits: Limits,
}

impl Receiver {
    /// A receiver for the given role and limits.
    pub fn new(role: Role, limits: Limits) -> Self {
        Self {
            _role: role,
            _limits: limits,
        }
    }

    /// Decodes from `buf`, unmasking in place; returns bytes consumed and at most one event.
    pub fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<(usize, Option<Event<'a>>), Error> {
        let _ = buf;
        todo!()
    }
}
