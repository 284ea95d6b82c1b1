//! User-data tokens: what every submission carries so that its completion can be routed back.
//!
//! 64 bits: the operation in bits 56-63, the low 24 bits of the connection slot's generation in
//! 32-55, the slot in 0-31. The generation lets a completion that arrives after its slot was freed
//! and reused be recognised as stale (the engine frees a slot only after its operations completed,
//! so this is a second line of defence, checked in release builds).

/// The operation a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// The listener's multishot accept.
    Accept = 1,
    /// A connection's multishot receive.
    Recv = 2,
    /// A connection's send.
    Send = 3,
    /// The worker's tick timer.
    Tick = 4,
    /// The multishot poll on the worker's wake-up eventfd (publications, shutdown).
    Wake = 5,
    /// A cancellation (its own completion carries nothing of interest).
    Cancel = 6,
    /// A client connection's connect.
    Connect = 7,
    /// The wake-up a handler asked for with `Context::wake_at`.
    Wakeup = 8,
    /// A wake-up another worker's ring posted to this one (`IORING_OP_MSG_RING`): publications
    /// arrived.
    Woken = 9,
    /// A wake-up this worker posted to worker `slot`'s ring; completes only if it failed.
    Posted = 10,
}

impl Op {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Accept,
            2 => Self::Recv,
            3 => Self::Send,
            4 => Self::Tick,
            5 => Self::Wake,
            6 => Self::Cancel,
            7 => Self::Connect,
            8 => Self::Wakeup,
            9 => Self::Woken,
            10 => Self::Posted,
            _ => return None,
        })
    }
}

/// Bits of the generation a token keeps.
pub(crate) const GENERATION_BITS: u32 = 0xff_ffff;

/// An operation on a slot (or on the worker: slot 0) at a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    /// The operation.
    pub op: Op,
    /// The connection slot (0 for worker-level operations).
    pub slot: u32,
    /// The low 24 bits of the slot's generation (or a sequence number for worker-level operations).
    pub generation: u32,
}

impl Token {
    /// A token for `op` on `slot` at `generation` (only its low 24 bits are kept).
    pub fn new(op: Op, slot: u32, generation: u32) -> Self {
        Self {
            op,
            slot,
            generation: generation & GENERATION_BITS,
        }
    }

    /// A token for a worker-level operation.
    pub fn worker(op: Op) -> Self {
        Self::new(op, 0, 0)
    }

    /// Whether this token names `generation` of its slot (compared on the bits a token keeps).
    pub fn is_generation(&self, generation: u32) -> bool {
        self.generation == generation & GENERATION_BITS
    }

    /// The 64-bit user data.
    pub fn encode(self) -> u64 {
        (self.op as u64) << 56 | u64::from(self.generation) << 32 | u64::from(self.slot)
    }

    /// Splits user data; `None` for an unknown operation.
    pub fn decode(ud: u64) -> Option<Self> {
        Some(Self {
            op: Op::from_u8((ud >> 56) as u8)?,
            slot: ud as u32,
            generation: (ud >> 32) as u32 & GENERATION_BITS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = Token::new(Op::Send, 123_456, 0x1234_5678);
        assert_eq!(Token::decode(t.encode()), Some(t));
        assert_eq!(t.generation, 0x34_5678);
        assert!(t.is_generation(0x1234_5678) && t.is_generation(0x0034_5678));
        assert!(!t.is_generation(0x1234_5679));
        let t = Token::new(Op::Recv, u32::MAX, u32::MAX);
        assert_eq!(Token::decode(t.encode()), Some(t));
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(11 << 56), None);
    }
}
