//! Element types of safetensors files and their decoding to f32 into caller buffers.
//!
//! Decoding never allocates: the caller owns the output (a tile of a tensor), so a 671B checkpoint
//! streams through a bounded amount of memory. F8_E4M3 goes through a 256-entry table built at
//! compile time; BF16 is a shift; F16 uses `half`'s slice conversion (F16C at run time).

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Element type of a stored tensor: our own enum so callers don't depend on the `safetensors`
/// crate's `#[non_exhaustive]` one, and so unknown or sub-byte types are rejected when a header is
/// read rather than when data is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// FP8 e4m3fn (DeepSeek-V3/R1 weights): no infinities, 0x7f/0xff are NaN.
    F8E4M3,
    /// FP8 e5m2 (IEEE-like, with infinities).
    F8E5M2,
    /// FP8 e8m0 (exponent-only microscaling scale).
    F8E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16 (R1-Distill weights, DeepSeek norms and embeddings).
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision (DeepSeek `weight_scale_inv`, `e_score_correction_bias`).
    F32,
    /// Complex with two f32 parts.
    C64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE double precision.
    F64,
}

impl Dtype {
    /// Every dtype, for tables and tests.
    pub const ALL: [Dtype; 17] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::F8E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::I64,
        Dtype::U64,
        Dtype::F64,
    ];

    /// Bytes per element, to check a tensor's byte length against its shape.
    pub const fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F8E8M0 => {
                1
            }
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::C64 | Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// The spelling used in safetensors headers (`"F8_E4M3"`, `"BF16"`, …), for messages and
    /// for writing headers.
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F64 => "F64",
        }
    }

    /// Parses a safetensors header dtype string; `None` for unknown ones and for the sub-byte
    /// types (F4, F6_*) and FNUZ variants, which no checkpoint r1q reads uses.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether [`decode_to_f32`] can decode this dtype.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
        )
    }

    /// The `safetensors` crate's dtype, for writing files with it (fixtures, tests).
    pub fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            Dtype::Bool => S::BOOL,
            Dtype::U8 => S::U8,
            Dtype::I8 => S::I8,
            Dtype::F8E4M3 => S::F8_E4M3,
            Dtype::F8E5M2 => S::F8_E5M2,
            Dtype::F8E8M0 => S::F8_E8M0,
            Dtype::I16 => S::I16,
            Dtype::U16 => S::U16,
            Dtype::F16 => S::F16,
            Dtype::BF16 => S::BF16,
            Dtype::I32 => S::I32,
            Dtype::U32 => S::U32,
            Dtype::F32 => S::F32,
            Dtype::C64 => S::C64,
            Dtype::I64 => S::I64,
            Dtype::U64 => S::U64,
            Dtype::F64 => S::F64,
        }
    }
}

impl TryFrom<safetensors::Dtype> for Dtype {
    type Error = DecodeError;

    /// Maps the crate's dtype to ours; sub-byte and FNUZ types are unsupported.
    fn try_from(d: safetensors::Dtype) -> Result<Self, DecodeError> {
        let name = d.to_string();
        Dtype::from_name(&name).ok_or(DecodeError::UnknownDtype(name))
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a buffer could not be decoded (the caller adds file and tensor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The dtype is not a floating-point type we decode to f32.
    #[error("cannot decode dtype {0} to f32")]
    Unsupported(Dtype),
    /// A dtype string with no counterpart in [`Dtype`].
    #[error("unknown dtype \"{0}\"")]
    UnknownDtype(String),
    /// Source bytes and destination elements disagree.
    #[error(
        "{src_bytes} bytes of {dtype} cannot fill {dst_len} f32 values (need {expected} bytes)"
    )]
    Length {
        /// The source dtype.
        dtype: Dtype,
        /// Source length in bytes.
        src_bytes: usize,
        /// Destination length in elements.
        dst_len: usize,
        /// Bytes the destination needs.
        expected: usize,
    },
}

/// Bits of the f32 equal to the e4m3fn value with byte `b` (exact: every e4m3 value is an f32).
const fn e4m3_bits(b: u8) -> u32 {
    let sign = ((b >> 7) as u32) << 31;
    let exp = ((b >> 3) & 0xf) as i32;
    let man = (b & 7) as u32;
    if exp == 15 && man == 7 {
        return sign | 0x7fc0_0000; // NaN (e4m3fn has no infinities)
    }
    if exp == 0 {
        if man == 0 {
            return sign; // ±0
        }
        // Subnormal: 2^-6 · man/8. Normalise so the leading 1 becomes the implicit bit.
        let mut m = man;
        let mut e = -6i32;
        while m & 8 == 0 {
            m <<= 1;
            e -= 1;
        }
        return sign | (((e + 127) as u32) << 23) | ((m & 7) << 20);
    }
    sign | (((exp - 7 + 127) as u32) << 23) | (man << 20)
}

const fn build_e4m3_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f32::from_bits(e4m3_bits(i as u8));
        i += 1;
    }
    t
}

/// F8_E4M3 (e4m3fn) byte → f32, for all 256 codes; built at compile time. Index it with the byte.
pub static FP8_E4M3_TO_F32: [f32; 256] = build_e4m3_table();

/// Decodes one F8_E4M3 (e4m3fn) byte: sign, 4-bit exponent (bias 7), 3-bit mantissa, subnormals,
/// no infinities, 0x7f/0xff NaN.
pub const fn fp8_e4m3_to_f32(b: u8) -> f32 {
    f32::from_bits(e4m3_bits(b))
}

const fn build_e5m2_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        // e5m2 is the top byte of an IEEE half.
        t[i] = half::f16::from_bits((i as u16) << 8).to_f32_const();
        i += 1;
    }
    t
}

/// F8_E5M2 byte → f32 (IEEE-like: the high byte of an f16).
static FP8_E5M2_TO_F32: [f32; 256] = build_e5m2_table();

/// Elements converted per step of the F16 path (a stack buffer of this many u16).
const F16_CHUNK: usize = 1024;

/// Decodes `src` (little-endian elements of `dtype`) into `dst`, one f32 per element.
///
/// Exists so every reader (converter tiles, forward pass, benchmarks) shares one exact decoder.
/// `src.len()` must be `dst.len() * dtype.size()`. Floating-point dtypes only.
pub fn decode_to_f32(dtype: Dtype, src: &[u8], dst: &mut [f32]) -> Result<(), DecodeError> {
    if !dtype.is_float() {
        return Err(DecodeError::Unsupported(dtype));
    }
    let expected = dst.len().saturating_mul(dtype.size());
    if src.len() != expected {
        return Err(DecodeError::Length {
            dtype,
            src_bytes: src.len(),
            dst_len: dst.len(),
            expected,
        });
    }
    match dtype {
        Dtype::F8E4M3 => {
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = FP8_E4M3_TO_F32[b as usize];
            }
        }
        Dtype::F8E5M2 => {
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = FP8_E5M2_TO_F32[b as usize];
            }
        }
        Dtype::BF16 => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                // bf16 is the top half of an f32: exact widening.
                *d = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        Dtype::F16 => {
            let mut bits = [0u16; F16_CHUNK];
            for (d, s) in dst.chunks_mut(F16_CHUNK).zip(src.chunks(F16_CHUNK * 2)) {
                let n = d.len();
                for (o, b) in bits.iter_mut().zip(s.chunks_exact(2)) {
                    *o = u16::from_le_bytes([b[0], b[1]]);
                }
                let halves: &[half::f16] = bits[..n].reinterpret_cast();
                halves.convert_to_f32_slice(d);
            }
        }
        Dtype::F32 => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F64 => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(8)) {
                *d = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
            }
        }
        _ => return Err(DecodeError::Unsupported(dtype)),
    }
    Ok(())
}

/// Rounds every value to the nearest bf16 (ties to even) in place, keeping f32 storage.
///
/// DeepSeek's `fp8_cast_bf16.py` and a `convert --outtype bf16` pipeline quantize bf16(fp8·s),
/// not the f32 product (REFERENCE §4.1, trap 9): apply this to a dequantized tile to reproduce
/// that pipeline bit for bit.
///
/// Same result as `half::bf16::from_f32` (round to nearest, ties to even; NaN stays NaN, made
/// quiet), written branch-free so the loop vectorizes.
pub fn round_to_bf16(values: &mut [f32]) {
    for v in values {
        let x = v.to_bits();
        let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) & 0xffff_0000;
        let nan = (x | 0x0040_0000) & 0xffff_0000;
        let is_nan = x & 0x7fff_ffff > 0x7f80_0000;
        *v = f32::from_bits(if is_nan { nan } else { rounded });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward float formula, independent of the bit construction.
    fn e4m3_formula(b: u8) -> f32 {
        let s = if b & 0x80 != 0 { -1.0f64 } else { 1.0 };
        let e = i32::from((b >> 3) & 0xf);
        let m = f64::from(b & 7);
        if e == 15 && m == 7.0 {
            return f32::NAN;
        }
        let v = if e == 0 {
            (m / 8.0) * 2f64.powi(-6)
        } else {
            (1.0 + m / 8.0) * 2f64.powi(e - 7)
        };
        (s * v) as f32
    }

    #[test]
    fn e4m3_table_matches_formula_on_all_codes() {
        for b in 0..=255u8 {
            let got = FP8_E4M3_TO_F32[b as usize];
            let want = e4m3_formula(b);
            if want.is_nan() {
                assert!(got.is_nan(), "code {b:#04x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "code {b:#04x}");
            }
        }
        assert_eq!(FP8_E4M3_TO_F32[0x7e], 448.0);
        assert_eq!(FP8_E4M3_TO_F32[0x01], 2f32.powi(-9));
        assert!(FP8_E4M3_TO_F32[0x7f].is_nan() && FP8_E4M3_TO_F32[0xff].is_nan());
        assert_eq!(FP8_E4M3_TO_F32[0x80].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn decodes_float_types() {
        let mut out = [0f32; 3];
        let bf: Vec<u8> = [1.5f32, -2.0, 0.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        decode_to_f32(Dtype::BF16, &bf, &mut out).unwrap();
        assert_eq!(out, [1.5, -2.0, 0.0]);
        let f16: Vec<u8> = [0.25f32, 65504.0, -1.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        decode_to_f32(Dtype::F16, &f16, &mut out).unwrap();
        assert_eq!(out, [0.25, 65504.0, -1.0]);
        let f32b: Vec<u8> = [1e-3f32, 7.0, -0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        decode_to_f32(Dtype::F32, &f32b, &mut out).unwrap();
        assert_eq!(out, [1e-3, 7.0, -0.5]);
        decode_to_f32(Dtype::F8E5M2, &[0x3c, 0x7c, 0xc0], &mut out).unwrap();
        assert_eq!(out, [1.0, f32::INFINITY, -2.0]);
    }

    #[test]
    fn f16_longer_than_one_chunk() {
        let n = F16_CHUNK * 2 + 17;
        let src: Vec<u8> = (0..n)
            .flat_map(|i| half::f16::from_f32((i % 1000) as f32 * 0.5).to_le_bytes())
            .collect();
        let mut out = vec![0f32; n];
        decode_to_f32(Dtype::F16, &src, &mut out).unwrap();
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (i % 1000) as f32 * 0.5));
    }

    #[test]
    fn rejects_bad_requests() {
        let mut out = [0f32; 2];
        assert_eq!(
            decode_to_f32(Dtype::I32, &[0; 8], &mut out),
            Err(DecodeError::Unsupported(Dtype::I32))
        );
        let err = decode_to_f32(Dtype::BF16, &[0; 3], &mut out).unwrap_err();
        assert!(err.to_string().contains("need 4 bytes"), "{err}");
    }

    #[test]
    fn names_round_trip_and_match_the_crate() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
            assert_eq!(Dtype::try_from(d.to_safetensors()), Ok(d));
            assert_eq!(d.to_safetensors().bitsize(), d.size() * 8);
        }
        assert_eq!(Dtype::from_name("F4"), None);
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        let mut v = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
        round_to_bf16(&mut v);
        assert_eq!(v, [1.0, 1.0 + 2f32.powi(-6)]);
    }

    #[test]
    fn bf16_rounding_matches_half_across_bit_patterns() {
        let mut bits: Vec<u32> = (0..=u32::MAX).step_by(4099).collect();
        bits.extend([
            0x7f7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x0000_8000,
            0x0001_8000,
            0x3f80_8000,
            0x3f81_8000,
            0x8000_0000,
        ]);
        for b in bits {
            let mut v = [f32::from_bits(b)];
            round_to_bf16(&mut v);
            let want = half::bf16::from_f32(f32::from_bits(b)).to_f32();
            assert_eq!(v[0].to_bits(), want.to_bits(), "bits {b:#010x}");
        }
    }
}
