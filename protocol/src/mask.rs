//! In-place payload unmasking (RFC 6455 §5.3), SIMD-dispatched at run time.
//!
//! Byte `i` of a masked payload is XORed with `key[i % 4]`. Every function here takes a `phase` (the
//! payload offset of `buf[0]`, used mod 4), so a payload split across receive buffers unmasks in
//! several calls: the second call passes `phase + first_len`. XOR is its own inverse, so the same
//! functions mask outgoing client payloads.
//!
//! [`unmask`] detects the widest instruction set once ([`simd_level`]); after that a call costs one
//! relaxed load and a direct jump. Every vector width is a multiple of 4, so one broadcast of the
//! phase-rotated key serves a whole run of vectors. There is no byte-at-a-time tail: the last
//! vector (or word) of a buffer overlaps the one before it, and is loaded before anything is
//! stored, so both compute the same output bytes. Buffers of four vectors or more are also split
//! so that the body's stores are vector-aligned (a payload follows a 2- to 14-byte header, so it
//! is almost never aligned itself).
//!
//! The `unsafe` here (intrinsics and raw-pointer vector loads and stores) is what the SIMD costs;
//! the safe alternative is [`unmask_word`], which LLVM already vectorises with SSE2. Measured
//! against it:
//! - On the 2-core Zen 4 development box (`cargo bench --bench protocol -- unmask`): AVX-512
//!   unmasks 1 KiB at ~100 GB/s and 16 KiB at ~115 GB/s, about the one-store-per-cycle limit,
//!   roughly twice [`unmask_word`].
//! - On a shared 2-core AMD EPYC with AVX2 and no AVX-512, both in one run, interleaved
//!   (`cargo run --release -p ringws-protocol --example unsafe_costs -- unmask`, fastest of 201
//!   rounds): the AVX2 path takes 0.85x (16 B), 0.61x (125 B), 0.53x (1 KiB), 0.48x (16 KiB),
//!   0.58x (64 KiB) and 0.76x (1 MiB, out of L2) the time of [`unmask_word`], and 0.85x to 0.39x
//!   its instructions (`... -- callgrind unmask`). The criterion bench there, noisier: 1.4x to 2.5x
//!   the throughput of [`unmask_word`] at every size from 16 B to 1 MiB.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// XORs `buf` in place with `key`, starting at mask phase `phase` (byte `i` of `buf` is XORed with
/// `key[(phase + i) % 4]`), so a payload split across buffers unmasks correctly in several calls.
///
/// Uses the fastest implementation the running CPU supports (see [`simd_level`]).
///
/// ```
/// use ringws_protocol::mask::unmask;
/// // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d, unmasked in two pieces.
/// let mut payload = *b"\x7f\x9f\x4d\x51\x58";
/// let key = [0x37, 0xfa, 0x21, 0x3d];
/// let (a, b) = payload.split_at_mut(3);
/// unmask(a, key, 0);
/// unmask(b, key, 3);
/// assert_eq!(&payload, b"Hello");
/// ```
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    // SAFETY: `unmask_with` needs `level.is_supported()`. `simd_level` returns either `detect()`,
    // the first level whose run-time feature detection succeeded, or the level at the index cached
    // in `LEVEL`, which only `detect` stores, with that same level's index.
    unsafe { unmask_with(simd_level(), buf, key, phase) }
}

/// The byte-at-a-time reference implementation: obviously correct, used to check the others.
pub fn unmask_naive(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase.wrapping_add(i)) & 3];
    }
}

/// The portable implementation: eight bytes at a time with a 64-bit key, then the short path for
/// the last 0 to 7 bytes.
///
/// This is what [`unmask`] uses on CPUs without a supported vector unit. Never inlined, so that
/// [`unmask`]'s dispatch stays a few instructions wherever it is inlined.
#[inline(never)]
pub fn unmask_word(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let k = u64::from(rotated_key(key, phase)) * 0x1_0000_0001;
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_le_bytes((*w).try_into().expect("chunks of 8")) ^ k;
        w.copy_from_slice(&x.to_le_bytes());
    }
    // Whole words advance the phase by multiples of 4: the tail starts at the same phase.
    unmask_short(words.into_remainder(), key, phase);
}

/// Buffers under 16 bytes: two overlapping 8- or 4-byte words (the first and the last, both read
/// before either is written), or single bytes under 4. The vector paths end with it.
#[inline]
fn unmask_short(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let len = buf.len();
    debug_assert!(len < 16);
    let k_first = rotated_key(key, phase);
    // The last word starts at `len - 8` or `len - 4`, both congruent to `len` mod 4.
    let k_last = rotated_key(key, phase.wrapping_add(len));
    if len >= 8 {
        let (k_first, k_last) = (
            u64::from(k_first) * 0x1_0000_0001,
            u64::from(k_last) * 0x1_0000_0001,
        );
        let a = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) ^ k_first;
        let b = u64::from_le_bytes(buf[len - 8..].try_into().expect("8 bytes")) ^ k_last;
        buf[..8].copy_from_slice(&a.to_le_bytes());
        buf[len - 8..].copy_from_slice(&b.to_le_bytes());
    } else if len >= 4 {
        let a = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) ^ k_first;
        let b = u32::from_le_bytes(buf[len - 4..].try_into().expect("4 bytes")) ^ k_last;
        buf[..4].copy_from_slice(&a.to_le_bytes());
        buf[len - 4..].copy_from_slice(&b.to_le_bytes());
    } else {
        unmask_naive(buf, key, phase);
    }
}

/// The key as a little-endian `u32` rotated so that its byte 0 applies to `buf[0]` at `phase`.
#[inline]
fn rotated_key(key: [u8; 4], phase: usize) -> u32 {
    u32::from_le_bytes(key).rotate_right(8 * (phase & 3) as u32)
}

/// An implementation [`unmask`] can dispatch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// x86_64 AVX-512 (F): 64-byte vectors.
    Avx512,
    /// x86_64 AVX2: 32-byte vectors.
    Avx2,
    /// x86_64 SSE2: 16-byte vectors (always present on x86_64).
    Sse2,
    /// aarch64 NEON: 16-byte vectors.
    Neon,
    /// No vector unit: [`unmask_word`].
    Portable,
}

impl SimdLevel {
    /// Levels in order of preference; [`SimdLevel::Portable`] is always supported.
    const PREFERENCE: [SimdLevel; 5] = [
        SimdLevel::Avx512,
        SimdLevel::Avx2,
        SimdLevel::Sse2,
        SimdLevel::Neon,
        SimdLevel::Portable,
    ];

    /// Whether the running CPU can execute this level's implementation.
    fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Sse2 => is_x86_feature_detected!("sse2"),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            SimdLevel::Portable => true,
            // Every other level belongs to another architecture.
            _ => false,
        }
    }
}

impl fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Sse2 => "sse2",
            SimdLevel::Neon => "neon",
            SimdLevel::Portable => "portable",
        })
    }
}

/// The detected level as an index into [`SimdLevel::PREFERENCE`]; [`UNDETECTED`] until the first
/// call to [`simd_level`]. Only [`detect`] stores to it, and only a level it found supported.
static LEVEL: AtomicU8 = AtomicU8::new(UNDETECTED);
const UNDETECTED: u8 = u8::MAX;

/// The implementation [`unmask`] dispatches to on this CPU: the first supported of AVX-512, AVX2,
/// SSE2, NEON, portable. Detected on the first call, then read from a cache (one relaxed load).
///
/// ```
/// let level = ringws_protocol::mask::simd_level();
/// println!("unmasking with {level}");
/// ```
#[inline]
pub fn simd_level() -> SimdLevel {
    match SimdLevel::PREFERENCE.get(usize::from(LEVEL.load(Ordering::Relaxed))) {
        Some(&level) => level,
        None => detect(),
    }
}

#[cold]
fn detect() -> SimdLevel {
    let index = SimdLevel::PREFERENCE
        .iter()
        .position(|l| l.is_supported())
        .expect("the portable level is always supported");
    // Racing threads detect the same level; whichever store lands last is equally right.
    LEVEL.store(index as u8, Ordering::Relaxed);
    SimdLevel::PREFERENCE[index]
}

/// Unmasks with `level`'s implementation. Inlined into [`unmask`], it compiles to a compare and a
/// direct jump per level; the implementations themselves are never inlined here, so the dispatch
/// has no prologue of its own (an indirect call through a cached fn pointer measured ~0.7 ns
/// slower per call).
///
/// # Safety
/// `level.is_supported()` must be true on the running CPU.
#[inline(always)]
unsafe fn unmask_with(level: SimdLevel, buf: &mut [u8], key: [u8; 4], phase: usize) {
    match level {
        // SAFETY: the caller guarantees `level.is_supported()`, i.e. AVX-512F was detected.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::unmask_avx512(buf, key, phase) },
        // SAFETY: the caller guarantees `level.is_supported()`, i.e. AVX2 was detected.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::unmask_avx2(buf, key, phase) },
        // SAFETY: the caller guarantees `level.is_supported()`, i.e. SSE2 was detected.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Sse2 => unsafe { x86::unmask_sse2(buf, key, phase) },
        // SAFETY: the caller guarantees `level.is_supported()`, i.e. NEON was detected.
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => unsafe { arm::unmask_neon(buf, key, phase) },
        _ => unmask_word(buf, key, phase),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{rotated_key, unmask_short};
    use std::arch::x86_64::*;

    /// Defines a vector implementation (vectors of `W` bytes; buffers under `W` go to `$short`).
    ///
    /// From `W` to `4W - 1` bytes: 1 to 3 vectors from the start, then the last vector, which
    /// overlaps them and was loaded first. From `4W` bytes, three overlapping pieces:
    ///
    /// 1. the first vector (`head`) and the last vector (`tail`), both unaligned, are loaded and
    ///    unmasked *before anything is stored*, each with the key rotated for its own offset;
    /// 2. the body, from the first `W`-aligned address, is unmasked in place in whole aligned
    ///    vectors (no store straddles a cache line), four per loop turn;
    /// 3. `head` and `tail` are stored last, where the body did not already cover them.
    ///
    /// Where pieces overlap they hold the same bytes (each was computed from the original input
    /// with the key for its offset), so the order of the stores does not matter. Masked AVX-512
    /// loads/stores would also avoid a scalar tail, but measured ~7 ns each on Zen 4.
    macro_rules! unmask_vectors {
        (
            $(#[$doc:meta])*
            fn $name:ident, feature = $feature:literal, $V:ty,
            $set1:ident, $loadu:ident, $storeu:ident, $xor:ident, short = $short:path
        ) => {
            $(#[$doc])*
            #[target_feature(enable = $feature)]
            #[inline(never)] // SSE2 is baseline on x86_64: keep it out of `unmask`'s dispatch
            pub(super) fn $name(buf: &mut [u8], key: [u8; 4], phase: usize) {
                const W: usize = size_of::<$V>();
                let len = buf.len();
                if len < W {
                    return $short(buf, key, phase);
                }
                let p = buf.as_mut_ptr();
                let k_tail = $set1(rotated_key(key, phase.wrapping_add(len - W)) as i32);
                if len < 4 * W {
                    // 1 to 3 vectors from `p` (aligning would cost more than the split stores it
                    // saves), then the last vector, overlapping the others.
                    let k = $set1(rotated_key(key, phase) as i32);
                    let vectors = len / W;
                    // SAFETY: vector i < vectors is [p+W*i, p+W*(i+1)) with W*vectors <= len; the
                    // tail is [p+len-W, p+len), in bounds as len >= W, and is loaded before any
                    // store. The unaligned load/store intrinsics accept any address.
                    unsafe {
                        let tail_at = p.add(len - W).cast::<$V>();
                        let tail = $xor($loadu(tail_at), k_tail);
                        let body = p.cast::<$V>();
                        for i in 0..3 {
                            if i < vectors {
                                $storeu(body.add(i), $xor($loadu(body.add(i)), k));
                            }
                        }
                        $storeu(tail_at, tail);
                    }
                    return;
                }
                // Bytes before the first W-aligned address (0..W); the body is the rest.
                let skip = p.addr().wrapping_neg() & (W - 1);
                let vectors = (len - skip) / W;
                let k_head = $set1(rotated_key(key, phase) as i32);
                let k_body = $set1(rotated_key(key, phase.wrapping_add(skip)) as i32);
                // SAFETY: all pointers are derived from `p` and stay inside `buf`: the head is
                // [p, p+W) and the tail [p+len-W, p+len), both in bounds as len >= W; body vector i
                // (i < vectors) is [body+W*i, body+W*(i+1)) with skip + W*vectors <= len. The
                // unaligned load/store intrinsics accept any address. `buf` is not used again while
                // the raw pointers are live.
                unsafe {
                    let head_at = p.cast::<$V>();
                    let tail_at = p.add(len - W).cast::<$V>();
                    let head = $xor($loadu(head_at), k_head);
                    let tail = $xor($loadu(tail_at), k_tail);
                    let body = p.add(skip).cast::<$V>();
                    let mut i = 0;
                    while i + 4 <= vectors {
                        let v0 = $loadu(body.add(i));
                        let v1 = $loadu(body.add(i + 1));
                        let v2 = $loadu(body.add(i + 2));
                        let v3 = $loadu(body.add(i + 3));
                        $storeu(body.add(i), $xor(v0, k_body));
                        $storeu(body.add(i + 1), $xor(v1, k_body));
                        $storeu(body.add(i + 2), $xor(v2, k_body));
                        $storeu(body.add(i + 3), $xor(v3, k_body));
                        i += 4;
                    }
                    // 0 to 3 vectors left: straight-line code, not a loop LLVM would unroll again.
                    for _ in 0..3 {
                        if i < vectors {
                            $storeu(body.add(i), $xor($loadu(body.add(i)), k_body));
                            i += 1;
                        }
                    }
                    if skip != 0 {
                        $storeu(head_at, head);
                    }
                    if skip + W * vectors != len {
                        $storeu(tail_at, tail);
                    }
                }
            }
        };
    }

    unmask_vectors! {
        /// AVX-512F: 64-byte vectors; buffers under 64 bytes take the AVX2 short path.
        fn unmask_avx512, feature = "avx512f", __m512i,
        _mm512_set1_epi32, _mm512_loadu_si512, _mm512_storeu_si512, _mm512_xor_si512,
        short = unmask_short_avx2
    }

    unmask_vectors! {
        /// AVX2: 32-byte vectors; buffers under 32 bytes take the short path.
        fn unmask_avx2, feature = "avx2", __m256i,
        _mm256_set1_epi32, _mm256_loadu_si256, _mm256_storeu_si256, _mm256_xor_si256,
        short = unmask_short_avx2
    }

    unmask_vectors! {
        /// SSE2: 16-byte vectors; buffers under 16 bytes take the portable short path.
        fn unmask_sse2, feature = "sse2", __m128i,
        _mm_set1_epi32, _mm_loadu_si128, _mm_storeu_si128, _mm_xor_si128,
        short = unmask_short
    }

    /// Buffers under 64 bytes: two overlapping 32- or 16-byte vectors (first and last), both loaded
    /// before either is stored, or the portable short path under 16 bytes. (A masked AVX-512
    /// load/store pair would avoid the branches, but measured ~7 ns per call on Zen 4.)
    #[target_feature(enable = "avx2")]
    #[inline]
    fn unmask_short_avx2(buf: &mut [u8], key: [u8; 4], phase: usize) {
        let len = buf.len();
        debug_assert!(len < 64);
        let k_first = rotated_key(key, phase) as i32;
        let k_last = rotated_key(key, phase.wrapping_add(len)) as i32;
        let p = buf.as_mut_ptr();
        if len >= 32 {
            // SAFETY: 32 <= len, so [p, p+32) and [p+len-32, p+len) are inside `buf`; unaligned
            // access is allowed; both loads happen before either store.
            unsafe {
                let (a_at, b_at) = (p.cast::<__m256i>(), p.add(len - 32).cast::<__m256i>());
                let (a, b) = (_mm256_loadu_si256(a_at), _mm256_loadu_si256(b_at));
                _mm256_storeu_si256(a_at, _mm256_xor_si256(a, _mm256_set1_epi32(k_first)));
                _mm256_storeu_si256(b_at, _mm256_xor_si256(b, _mm256_set1_epi32(k_last)));
            }
        } else if len >= 16 {
            // SAFETY: 16 <= len, so [p, p+16) and [p+len-16, p+len) are inside `buf`; unaligned
            // access is allowed; both loads happen before either store.
            unsafe {
                let (a_at, b_at) = (p.cast::<__m128i>(), p.add(len - 16).cast::<__m128i>());
                let (a, b) = (_mm_loadu_si128(a_at), _mm_loadu_si128(b_at));
                _mm_storeu_si128(a_at, _mm_xor_si128(a, _mm_set1_epi32(k_first)));
                _mm_storeu_si128(b_at, _mm_xor_si128(b, _mm_set1_epi32(k_last)));
            }
        } else {
            unmask_short(buf, key, phase);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{rotated_key, unmask_short};
    use std::arch::aarch64::*;

    /// NEON: 64 bytes per loop turn, then single 16-byte vectors, then the short path.
    #[target_feature(enable = "neon")]
    #[inline(never)] // NEON is baseline on aarch64: keep it out of `unmask`'s dispatch
    pub(super) fn unmask_neon(buf: &mut [u8], key: [u8; 4], phase: usize) {
        // Built from bytes, so lane order cannot depend on the target's endianness.
        let kb = rotated_key(key, phase).to_le_bytes();
        let pattern: [u8; 16] = std::array::from_fn(|i| kb[i % 4]);
        // SAFETY: `pattern` is 16 readable bytes.
        let k = unsafe { vld1q_u8(pattern.as_ptr()) };
        let mut blocks = buf.chunks_exact_mut(64);
        for b in &mut blocks {
            let p = b.as_mut_ptr();
            // SAFETY: `b` is 64 bytes, so the four 16-byte vectors at p, p+16, p+32, p+48 are in
            // bounds; vld1q/vst1q on u8 have no alignment requirement.
            unsafe {
                let v0 = vld1q_u8(p);
                let v1 = vld1q_u8(p.add(16));
                let v2 = vld1q_u8(p.add(32));
                let v3 = vld1q_u8(p.add(48));
                vst1q_u8(p, veorq_u8(v0, k));
                vst1q_u8(p.add(16), veorq_u8(v1, k));
                vst1q_u8(p.add(32), veorq_u8(v2, k));
                vst1q_u8(p.add(48), veorq_u8(v3, k));
            }
        }
        let mut vectors = blocks.into_remainder().chunks_exact_mut(16);
        for v in &mut vectors {
            let p = v.as_mut_ptr();
            // SAFETY: `v` is exactly 16 bytes; vld1q/vst1q on u8 have no alignment requirement.
            unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), k)) };
        }
        // Whole vectors advance the phase by multiples of 4.
        unmask_short(vectors.into_remainder(), key, phase);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every level this CPU can run, each tested directly (not only the dispatched one).
    fn levels() -> Vec<SimdLevel> {
        SimdLevel::PREFERENCE
            .into_iter()
            .filter(|l| l.is_supported())
            .collect()
    }

    /// Runs one level's implementation directly.
    fn run(level: SimdLevel, buf: &mut [u8], key: [u8; 4], phase: usize) {
        assert!(level.is_supported());
        // SAFETY: just checked that the CPU supports `level`.
        unsafe { unmask_with(level, buf, key, phase) }
    }

    /// Deterministic, non-repeating test bytes (period 251, prime to 4 and to every vector width).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn rotated_key_puts_the_phase_byte_first() {
        let key = [1, 2, 3, 4];
        assert_eq!(rotated_key(key, 0).to_le_bytes(), [1, 2, 3, 4]);
        assert_eq!(rotated_key(key, 1).to_le_bytes(), [2, 3, 4, 1]);
        assert_eq!(rotated_key(key, 2).to_le_bytes(), [3, 4, 1, 2]);
        assert_eq!(rotated_key(key, 7).to_le_bytes(), [4, 1, 2, 3]);
    }

    #[test]
    fn naive_matches_rfc_example() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut p = *b"\x7f\x9f\x4d\x51\x58";
        unmask_naive(&mut p, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&p, b"Hello");
    }

    #[test]
    fn huge_phase_wraps() {
        let key = [0x11, 0x22, 0x33, 0x44];
        for level in levels() {
            let mut a = pattern(100);
            let mut b = a.clone();
            run(level, &mut a, key, usize::MAX); // usize::MAX % 4 == 3
            unmask_naive(&mut b, key, 3);
            assert_eq!(a, b, "{level}");
        }
    }

    #[test]
    fn detected_level_is_supported_and_stable() {
        let level = simd_level();
        assert!(level.is_supported());
        assert_eq!(simd_level(), level);
        assert_eq!(Some(level), levels().first().copied());
        assert!(levels().contains(&SimdLevel::Portable));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            levels().contains(&SimdLevel::Avx512),
            is_x86_feature_detected!("avx512f")
        );
        #[cfg(target_arch = "x86_64")]
        assert_ne!(level, SimdLevel::Portable, "x86_64 always has SSE2");
    }

    #[test]
    fn display_names() {
        let names: Vec<String> = SimdLevel::PREFERENCE
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(names, ["avx512", "avx2", "sse2", "neon", "portable"]);
    }

    /// Every length across the head/unrolled/tail boundaries of every level, at every alignment mod
    /// 64 and every phase, with a key whose bytes all differ so a wrong rotation shows.
    #[test]
    fn exhaustive_small_lengths_offsets_phases() {
        let key = [0xa1, 0xb2, 0xc3, 0xd4];
        let src = pattern(600);
        let all = levels();
        let mut want = Vec::new();
        let mut got = Vec::new();
        for len in 0..=520 {
            for offset in [0, 1, 2, 3, 5, 7, 8, 15, 31, 33, 63] {
                for phase in 0..4 {
                    want.clear();
                    want.extend_from_slice(&src[..offset + len]);
                    unmask_naive(&mut want[offset..], key, phase);
                    for &level in &all {
                        got.clear();
                        got.extend_from_slice(&src[..offset + len]);
                        run(level, &mut got[offset..], key, phase);
                        assert_eq!(got, want, "{level} len {len} offset {offset} phase {phase}");
                    }
                    got.clear();
                    got.extend_from_slice(&src[..offset + len]);
                    unmask_word(&mut got[offset..], key, phase);
                    assert_eq!(got, want, "word len {len} offset {offset} phase {phase}");
                }
            }
        }
    }

    /// Masking twice restores the input (the same functions mask and unmask).
    #[test]
    fn involution() {
        let key = [9, 8, 7, 6];
        for level in levels() {
            let orig = pattern(4099);
            let mut buf = orig.clone();
            run(level, &mut buf, key, 2);
            assert_ne!(buf, orig);
            run(level, &mut buf, key, 2);
            assert_eq!(buf, orig, "{level}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random lengths, offsets (alignment), keys and phases: every implementation equals the
        /// reference, and the region around the slice is untouched.
        #[test]
        fn all_levels_match_naive(
            len in 0usize..=70_000,
            offset in 0usize..64,
            key in any::<[u8; 4]>(),
            phase in any::<usize>(),
            seed in any::<u8>(),
        ) {
            let src: Vec<u8> = (0..offset + len + 64)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            let region = offset..offset + len;
            let mut want = src.clone();
            unmask_naive(&mut want[region.clone()], key, phase);

            let mut got = src.clone();
            unmask(&mut got[region.clone()], key, phase);
            prop_assert_eq!(&got, &want, "dispatched");

            let mut got = src.clone();
            unmask_word(&mut got[region.clone()], key, phase);
            prop_assert_eq!(&got, &want, "word");

            for level in levels() {
                let mut got = src.clone();
                run(level, &mut got[region.clone()], key, phase);
                prop_assert_eq!(&got, &want, "{}", level);
            }
        }

        /// Unmasking a payload in two pieces with the phase carried equals one call.
        #[test]
        fn split_with_carried_phase(
            len in 0usize..=70_000,
            cut in any::<prop::sample::Index>(),
            key in any::<[u8; 4]>(),
            phase in any::<usize>(),
        ) {
            let src = pattern(len);
            let mut whole = src.clone();
            unmask_naive(&mut whole, key, phase);
            let at = cut.index(len + 1);
            for level in levels() {
                let mut parts = src.clone();
                let (a, b) = parts.split_at_mut(at);
                run(level, a, key, phase);
                run(level, b, key, phase.wrapping_add(at));
                prop_assert_eq!(&parts, &whole, "{} cut at {}", level, at);
            }
            let mut parts = src.clone();
            let (a, b) = parts.split_at_mut(at);
            unmask(a, key, phase);
            unmask(b, key, phase.wrapping_add(at));
            prop_assert_eq!(&parts, &whole, "dispatched cut at {}", at);
        }
    }
}
