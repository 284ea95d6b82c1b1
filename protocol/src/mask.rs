//! In-place payload unmasking (RFC 6455 §5.3), SIMD-dispatched at run time.
// STUB: being implemented (AVX-512/AVX2/SSE2/NEON + word fallback).

/// XORs `buf` in place with `key`, starting at mask phase `phase` (byte `i` of `buf` is XORed with
/// `key[(phase + i) % 4]`), so a payload split across buffers unmasks correctly in several calls.
pub fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    unmask_naive(buf, key, phase)
}

/// The byte-at-a-time reference implementation.
pub fn unmask_naive(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) & 3];
    }
}
