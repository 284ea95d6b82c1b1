//! Masking keys for client frames.
//!
//! RFC 6455 §5.3 asks for a fresh key per frame, "derived from a strong source of entropy", so that
//! script-chosen payloads cannot be made to look like other protocols on the wire. Keys come from
//! the kernel's CSPRNG, `getrandom(2)`, fetched 256 at a time into a per-thread buffer: one system
//! call per 256 frames (a few nanoseconds per frame), unpredictable by construction, and no
//! generator of our own to get wrong. Payloads are masked while they are copied into the output
//! queue, so masking adds no copy.

use std::cell::RefCell;

/// Keys fetched per `getrandom` call.
const KEY_BATCH: usize = 256;

/// A per-thread batch of masking keys from the kernel's CSPRNG.
struct KeyPool {
    keys: [u8; 4 * KEY_BATCH],
    next: usize,
}

thread_local! {
    static KEYS: RefCell<KeyPool> = const {
        RefCell::new(KeyPool { keys: [0; 4 * KEY_BATCH], next: KEY_BATCH })
    };
}

/// A fresh, unpredictable masking key.
///
/// # Panics
///
/// If the kernel's random source fails, which Linux does not do once booted (the same contract as
/// [`ClientHandshake::new`](ringws_protocol::handshake::ClientHandshake::new)).
pub(crate) fn mask_key() -> [u8; 4] {
    KEYS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.next == KEY_BATCH {
            getrandom::fill(&mut pool.keys).expect("the OS random source failed");
            pool.next = 0;
        }
        let i = pool.next * 4;
        pool.next += 1;
        [
            pool.keys[i],
            pool.keys[i + 1],
            pool.keys[i + 2],
            pool.keys[i + 3],
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keys_vary_across_batches() {
        let keys: Vec<[u8; 4]> = (0..3 * KEY_BATCH).map(|_| mask_key()).collect();
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        // 768 draws from 2^32 values: a repeat has probability ~7e-5; allow a couple.
        assert!(
            distinct.len() >= keys.len() - 2,
            "{} distinct of {}",
            distinct.len(),
            keys.len()
        );
        assert_ne!(
            keys[..KEY_BATCH],
            keys[KEY_BATCH..2 * KEY_BATCH],
            "each batch is refilled"
        );
    }
}
