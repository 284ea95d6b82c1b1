//! The input layout the fuzz targets share: `[settings, n, cut_1 .. cut_n, data ..]`.
//!
//! The bytes under test (`data`) are contiguous at the end, so a seed is a valid frame stream or
//! message with a short prefix, and libFuzzer's mutations and comparison hints land on those bytes
//! directly. (The `arbitrary` encoding of `Vec<u8>` interleaves a continue-byte before every element,
//! which valid seeds cannot be written in by hand.) `seeds/make_seeds.py` writes seeds in this layout.

use std::ops::Range;

/// One fuzz input, split into its parts; missing parts read as zero or empty, so every byte string
/// is an input.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Target-specific switches (role, window bits, ...).
    pub settings: u8,
    /// Piece sizes to cut `data` into: each byte `c` is a piece of `c + 1` bytes, cycled.
    pub cuts: &'a [u8],
    /// The bytes under test.
    pub data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits `raw` as `[settings, n, n cut bytes, data]`.
    pub fn parse(raw: &'a [u8]) -> Self {
        let settings = raw.first().copied().unwrap_or(0);
        let n = raw.get(1).copied().unwrap_or(0) as usize;
        let rest = raw.get(2..).unwrap_or(&[]);
        let (cuts, data) = rest.split_at(n.min(rest.len()));
        Input {
            settings,
            cuts,
            data,
        }
    }
}

/// The ranges that cut `0..len` into pieces of the sizes `cuts` gives (`c` → `c + 1` bytes, cycled;
/// no cuts: one piece).
pub fn pieces(len: usize, cuts: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut sizes = cuts.iter().map(|&c| c as usize + 1).cycle();
    let mut from = 0;
    std::iter::from_fn(move || {
        (from < len).then(|| {
            let to = (from + sizes.next().unwrap_or(len)).min(len);
            let piece = from..to;
            from = to;
            piece
        })
    })
}

/// Splits `data` into messages, each a big-endian `u16` length and that many bytes (the last one
/// takes what is left if it is shorter).
pub fn messages(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (len, tail) = match rest {
            [] => return None,
            [hi, lo, tail @ ..] => (u16::from_be_bytes([*hi, *lo]) as usize, tail),
            [_] => (0, &[][..]),
        };
        let (msg, after) = tail.split_at(len.min(tail.len()));
        rest = after;
        Some(msg)
    })
}
