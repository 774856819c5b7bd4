//! The unquantized float types: F32 (copy), F16 and BF16 (rounded casts), with ggml's exact
//! rounding (REFERENCE §2.2).
//!
//! * fp16: round to nearest even, subnormals kept, overflow → ±inf, NaN → 0x7E00 | sign
//!   (`ggml_compute_fp32_to_fp16`). `half` does the rounding (F16C when the CPU has it); NaNs are
//!   canonicalised afterwards because `half` keeps NaN payload bits.
//! * bf16: NaN → quiet (top 16 bits | 0x40); otherwise add 0x7FFF + bit 16 and shift right 16
//!   (`ggml_compute_fp32_to_bf16`).
//!
//! Rows have no blocks here, so these are plain slice functions rather than [`crate::block::Block`]
//! types.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// ggml's fp32 → bf16 bits.
#[inline]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// ggml's fp32 → fp16 bits.
#[inline]
pub(crate) fn f32_to_f16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7e00 | ((x.to_bits() >> 16) as u16 & 0x8000);
    }
    f16::from_f32(x).to_bits()
}

/// F32 → F32: the little-endian bytes.
pub(crate) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (o, v) in dst.chunks_exact_mut(4).zip(src) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// F32 → F16, in pieces so the vectorised `half` conversion can be used without a whole-row
/// temporary.
pub(crate) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    const PIECE: usize = 1024;
    let mut tmp = [f16::ZERO; PIECE];
    for (s, d) in src.chunks(PIECE).zip(dst.chunks_mut(PIECE * 2)) {
        let t = &mut tmp[..s.len()];
        t.convert_from_f32_slice(s);
        for ((o, h), &x) in d.chunks_exact_mut(2).zip(t.iter()).zip(s) {
            let bits = if x.is_nan() {
                f32_to_f16_bits(x)
            } else {
                h.to_bits()
            };
            o.copy_from_slice(&bits.to_le_bytes());
        }
    }
}

/// F32 → BF16.
pub(crate) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
        o.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
    }
}

/// F32 bytes → f32.
pub(crate) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// F16 bytes → f32 (exact).
pub(crate) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// BF16 bytes → f32 (exact).
pub(crate) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nans() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3·2^-8 is halfway too, and rounds up to the even neighbour.
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0xff81_0000)), 0xffc1);
        // The largest finite f32 overflows to inf, as in ggml.
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
    }

    #[test]
    fn bf16_matches_half_on_non_nan_bit_patterns() {
        for u in (0..=u32::MAX).step_by(65_537) {
            let x = f32::from_bits(u);
            if !x.is_nan() {
                assert_eq!(f32_to_bf16_bits(x), bf16::from_f32(x).to_bits(), "{u:#x}");
            }
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even_with_subnormals_and_canonical_nan() {
        let src = [
            1.0,
            1.0 + 2f32.powi(-11),
            65520.0,
            -65519.0,
            2f32.powi(-25),
            3.0 * 2f32.powi(-25),
            f32::from_bits(0x7f80_0123),
            f32::from_bits(0xffc0_0000),
        ];
        let mut dst = [0u8; 16];
        quantize_f16(&src, &mut dst);
        let bits: Vec<u16> = dst
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(
            bits,
            [0x3c00, 0x3c00, 0x7c00, 0xfbff, 0x0000, 0x0002, 0x7e00, 0xfe00]
        );
    }

    #[test]
    fn float_roundtrips_are_exact() {
        let src = [0.0f32, -0.0, 1.5, -3.25, 1e-3, 65504.0];
        let mut b = [0u8; 24];
        quantize_f32(&src, &mut b);
        let mut back = [0f32; 6];
        dequantize_f32(&b, &mut back);
        assert_eq!(src, back);
        let mut h = [0u8; 12];
        quantize_bf16(&src, &mut h);
        dequantize_bf16(&h, &mut back);
        for (a, &x) in back.iter().zip(&src) {
            assert_eq!(a.to_bits(), bf16::from_f32(x).to_f32().to_bits());
        }
    }
}

/// The f32 values stored little-endian in `bytes`, borrowed without a copy, when they can be
/// (a little-endian target, `bytes` 4-byte aligned and a whole number of values); `None`
/// otherwise, and the caller decodes with [`crate::dequantize_rows`].
///
/// Exists so quantizing an F32 GGUF reads its mmap in place: the copy into a chunk buffer was
/// a measurable share of the fast types' time.
pub fn f32_view(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little")
        && bytes.len().is_multiple_of(4)
        && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>())
    {
        // SAFETY: the pointer is aligned for f32 and the length is a whole number of f32s
        // (both checked above); every bit pattern is a valid f32; the result borrows `bytes`,
        // so the memory outlives it and is not mutated meanwhile; on a little-endian target
        // the in-memory representation is the file's.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) })
    } else {
        None
    }
}

/// Index of the first NaN or ±Inf in `values`, if any.
///
/// Exists because every quantized input is validated (llama.cpp's `ggml_validate_row_data`);
/// the test runs over 64 values at a time with a branch-free OR of "exponent all ones", which
/// vectorises, and only a block that contains a bad value is searched for its index.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    const EXP: u32 = 0x7f80_0000;
    let mut chunks = values.chunks_exact(64);
    let mut base = 0;
    for c in &mut chunks {
        let mut bad = false;
        for v in c {
            bad |= v.to_bits() & EXP == EXP;
        }
        if bad {
            return c.iter().position(|v| !v.is_finite()).map(|i| base + i);
        }
        base += 64;
    }
    chunks
        .remainder()
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| base + i)
}

#[cfg(test)]
mod view_tests {
    use super::*;

    #[test]
    fn f32_view_borrows_aligned_bytes_and_refuses_the_rest() {
        let vals: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        // A Vec<u8> from the global allocator is at least 4-byte aligned here; test both.
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(4);
        match f32_view(&bytes) {
            Some(v) => assert_eq!(v, &vals[..]),
            None => assert!(!aligned),
        }
        let off = if aligned { 1 } else { 0 };
        assert!(f32_view(&bytes[off..off + 8]).is_none() || !aligned);
        assert!(f32_view(&bytes[..7]).is_none());
    }

    #[test]
    fn first_non_finite_finds_the_first_bad_value() {
        let mut v = vec![1.0f32; 300];
        assert_eq!(first_non_finite(&v), None);
        for (i, bad) in [
            (0, f32::NAN),
            (63, f32::INFINITY),
            (64, f32::NEG_INFINITY),
            (299, f32::NAN),
        ] {
            let mut w = v.clone();
            w[i] = bad;
            if i < 299 {
                w[299] = f32::NAN;
            }
            assert_eq!(first_non_finite(&w), Some(i), "{i}");
        }
        v[200] = f32::MAX;
        v[201] = f32::MIN_POSITIVE / 2.0;
        assert_eq!(first_non_finite(&v), None);
    }
}
