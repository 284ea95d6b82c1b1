//! A receive straight into a buffer of the engine's own (a large frame's assembly buffer), outside
//! the provided-buffer ring: the buffer moves in here while the kernel may write into it, the way
//! a send's chunks move into a [`Flight`](super::Flight), and comes back only with the receive's
//! own completion.

use super::Token;
use tracing::error;

/// A buffer a one-shot receive writes into, after its current length, up to `room` bytes.
pub(crate) struct Landing {
    buf: Vec<u8>,
    /// Bytes the receive may write after `buf.len()`; never more than the spare capacity.
    room: usize,
    /// The token of the receive in the air, if one is.
    busy: Option<Token>,
}

impl Landing {
    /// A landing for up to `room` bytes after `buf`'s length (cut to its spare capacity).
    pub fn new(buf: Vec<u8>, room: usize) -> Self {
        let room = room.min(buf.capacity() - buf.len());
        Self {
            buf,
            room,
            busy: None,
        }
    }

    /// Puts the receive in the air under `token` and returns where the kernel may write and how
    /// much (`None` if one is in the air already or there is no room).
    pub(super) fn arm(&mut self, token: Token) -> Option<(*mut u8, u32)> {
        if self.busy.is_some() || self.room == 0 {
            return None;
        }
        self.busy = Some(token);
        let len = u32::try_from(self.room).unwrap_or(u32::MAX);
        Some((self.buf.spare_capacity_mut().as_mut_ptr().cast(), len))
    }

    /// The receive could not be submitted: it is not in the air.
    pub(super) fn disarm(&mut self, token: Token) {
        if self.busy == Some(token) {
            self.busy = None;
        }
    }

    /// The buffer back, if no receive is in the air (`Err(self)` otherwise).
    pub fn reclaim(mut self) -> Result<Vec<u8>, Self> {
        if self.busy.is_some() {
            return Err(self);
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Takes the completion of the receive with `token` (its result `result`: bytes written, or
    /// an error) and gives the buffer back with the bytes written appended. `Err(self)` for a
    /// completion of no receive in the air here: the buffer stays (leaked if dropped), since a
    /// completion that does not belong here must never release memory the kernel may write.
    pub fn land(mut self, token: Token, result: i32) -> Result<Vec<u8>, Self> {
        if self.busy != Some(token) {
            error!(?token, busy = ?self.busy, "receive completion for no receive in the air");
            return Err(self);
        }
        self.busy = None;
        let written = usize::try_from(result).unwrap_or(0);
        if written > self.room {
            // The kernel writes at most the length it was given: not reached.
            error!(
                ?token,
                written,
                room = self.room,
                "a receive wrote past its room"
            );
        }
        let len = self.buf.len() + written.min(self.room);
        // SAFETY: the receive was given `buf`'s spare capacity from its length on, `room` bytes of
        // it (`arm`), and `result` is the count of bytes it wrote there from the start (the
        // completion of that very receive: `busy` matched its token). So the first `len` bytes
        // are initialized, and `len` is within the capacity (`room` was cut to it in `new`).
        unsafe { self.buf.set_len(len) };
        Ok(std::mem::take(&mut self.buf))
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if self.busy.is_some() {
            error!(token = ?self.busy, "a receive's buffer is dropped while the kernel may write it; leaking it");
            std::mem::forget(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Op;

    #[test]
    fn the_buffer_comes_back_only_with_its_receive_and_grows_by_what_was_written() {
        let mut buf = Vec::with_capacity(16);
        buf.extend_from_slice(b"abc");
        let at = buf.as_ptr();
        let mut landing = Landing::new(buf, 100);
        assert_eq!(landing.room, 13, "cut to the spare capacity");
        let token = Token::new(Op::Recv, 7, 1);
        let (ptr, len) = landing.arm(token).unwrap();
        assert_eq!((ptr.cast_const(), len), (at.wrapping_add(3), 13));
        assert!(landing.arm(token).is_none(), "one receive at a time");
        // SAFETY: a test writing as the kernel would, within the room.
        unsafe { std::ptr::copy_nonoverlapping(b"defg".as_ptr(), ptr, 4) };
        let other = Token::new(Op::Recv, 7, 2);
        let landing = landing.land(other, 4).expect_err("a foreign completion");
        let buf = landing.land(token, 4).ok().unwrap();
        assert_eq!((buf.as_slice(), buf.as_ptr()), (&b"abcdefg"[..], at));
    }

    #[test]
    fn an_error_or_the_end_gives_the_buffer_back_unchanged() {
        let token = Token::new(Op::Recv, 1, 1);
        for result in [0, -libc::ECANCELED] {
            let mut landing = Landing::new(b"xy".to_vec(), 0);
            assert!(landing.arm(token).is_none(), "no room");
            let mut buf = Vec::with_capacity(8);
            buf.push(1);
            let mut landing = Landing::new(buf, 4);
            landing.arm(token).unwrap();
            assert_eq!(landing.land(token, result).ok().unwrap(), [1]);
        }
    }
}
