//! Streaming UTF-8 validation that fails at the first byte that cannot be valid.
// STUB: being implemented.

/// A streaming UTF-8 validator: feed chunks of one message in order, then call [`finish`](Self::finish).
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// Validates the next chunk; fails as soon as a byte can no longer start or continue valid UTF-8.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), crate::Error> {
        let _ = (self.partial, self.partial_len, chunk);
        Ok(())
    }

    /// Declares the end of the message: fails if a code point is left incomplete. Resets the state.
    pub fn finish(&mut self) -> Result<(), crate::Error> {
        Ok(())
    }
}
