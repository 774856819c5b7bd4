//! Q4_0 (REFERENCE §2.3, §2.6): 32 values per block, one fp16 scale and 32 unsigned nibbles,
//! y = d·(q − 8).
//!
//! Without importance weights `quantize_row_q4_0_ref`: the element of largest magnitude (with its
//! sign) maps to −8, d = max/−8, q = min(15, trunc(x·(1/d) + 8.5)) — multiplication by the f32
//! reciprocal, truncation as gcc's x86-64 float→int8 conversion does it. With weights
//! `quantize_row_q4_0_impl`: w = qw·√(σ²_row + x²), d = `make_qx_quants(32, 8, x, L, 1, w)`.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::legacy::{
    block32, le_bytes, le_u16, pack_nibbles, put, quantize_row_qx, signed_absmax, unpack, QK,
};
use crate::search::c_trunc_u8;
use formats::ggml_type::GgmlType;

/// `block_q4_0`: `ggml_half d; uint8_t qs[QK4_0/2];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ4_0 {
    /// Scale, fp16 bits.
    pub d: u16,
    /// Byte j: element j in the low nibble, element j + 16 in the high nibble.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl BlockQ4_0 {
    /// Quantizes one whole row with importance weights `qw` (one per value) into `out` (the
    /// row's bytes), as `quantize_row_*_impl`: the weights depend on σ² of the whole row, which
    /// is why this works on rows rather than blocks.
    pub(crate) fn quantize_row_imatrix(x: &[f32], qw: &[f32], out: &mut [u8]) {
        quantize_row_qx(x, qw, out, 8, |d, l| BlockQ4_0 {
            d: f32_to_f16_bits(d),
            qs: pack_nibbles(&l.map(|v| v as u8)),
        });
    }
}

/// `quantize_row_q4_0_ref` of one block, scalar (the reference of the AVX2 path).
fn quantize_scalar(x: &[f32; QK]) -> BlockQ4_0 {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    BlockQ4_0 {
        d: f32_to_f16_bits(d),
        qs: levels_scalar(x, id),
    }
}

/// The packed `qs` of `quantize_row_q4_0_ref`: `MIN(15, (int8_t)(x·id + 8.5f))` per value,
/// stored through `uint8_t`, element j in the low nibble of byte j and j + 16 in the high one
/// (C's loop; the conversion as gcc's `cvttss2si`).
fn levels_scalar(x: &[f32; QK], id: f32) -> [u8; QK / 2] {
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        let xi0 = (c_trunc_u8(x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = (c_trunc_u8(x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
    qs
}

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMS: usize = QK;
    const BYTES: usize = 18;

    fn quantize(x: &[f32]) -> Self {
        let x = block32(x);
        #[cfg(target_arch = "x86_64")]
        if crate::lanes::simd_enabled() {
            // SAFETY: AVX2 is available (checked at run time just above).
            return unsafe { avx2::quantize(x) };
        }
        quantize_scalar(x)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = half::f16::from_bits(self.d).to_f32();
        for (o, &q) in y.iter_mut().zip(&unpack(&self.qs, 0)) {
            *o = (i32::from(q) - 8) as f32 * d;
        }
    }

    fn read(bytes: &[u8]) -> Self {
        BlockQ4_0 {
            d: le_u16(bytes, 0),
            qs: le_bytes(bytes, 2),
        }
    }

    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.qs);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_0, QK};
    use crate::cast::f32_to_f16_bits;
    use crate::lanes::avx2::{ld, low_byte_i8, pack_bytes, signed_absmax};
    use std::arch::x86_64::*;

    /// [`super::quantize_scalar`] with AVX2: the same scale, the levels 8 per vector.
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize(x: &[f32; QK]) -> BlockQ4_0 {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        BlockQ4_0 {
            d: f32_to_f16_bits(d),
            qs: levels(x, id),
        }
    }

    /// [`super::levels_scalar`] 8 values per vector. `cvttps2dq` is the packed form of gcc's
    /// `cvttss2si` (0x8000_0000 for NaN and out-of-range values), so its low byte, sign-extended,
    /// is C's `(int8_t)`; `MIN(15, ·)` is signed; the saturating packs keep every value of
    /// [−128, 15] and so yield exactly the low bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn levels(x: &[f32; QK], id: f32) -> [u8; QK / 2] {
        let (idv, half) = (_mm256_set1_ps(id), _mm256_set1_ps(8.5));
        let mut t = [_mm256_setzero_si256(); 4];
        for (tk, x8) in t.iter_mut().zip(x.chunks_exact(8)) {
            let v = ld(x8.try_into().expect("8 values"));
            let c = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, idv), half));
            *tk = _mm256_min_epi32(low_byte_i8(c), _mm256_set1_epi32(15));
        }
        let b = pack_bytes(&t);
        let (lo, hi) = (_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
        let q = _mm_or_si128(
            lo,
            _mm_and_si128(_mm_slli_epi16::<4>(hi), _mm_set1_epi8(0xF0u8 as i8)),
        );
        let mut out = [0u8; QK / 2];
        // SAFETY: `out` is 16 bytes; storeu needs no alignment.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), q) };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::tests::edge_cases;

    #[test]
    fn simd_blocks_match_scalar() {
        for x in edge_cases(4 * QK) {
            for xb in x.chunks_exact(QK) {
                let xb: &[f32; QK] = xb.try_into().unwrap();
                assert_eq!(BlockQ4_0::quantize(xb), quantize_scalar(xb), "{xb:?}");
                #[cfg(target_arch = "x86_64")]
                if crate::lanes::simd_enabled() {
                    // SAFETY: AVX2 is available (checked just above).
                    let max = unsafe { crate::lanes::avx2::signed_absmax(xb) };
                    assert_eq!(max.to_bits(), signed_absmax(xb).to_bits(), "{xb:?}");
                    for id in [0.0, f32::INFINITY, -f32::INFINITY, f32::NAN, 3e9, -1e38] {
                        // SAFETY: as above.
                        let simd = unsafe { avx2::levels(xb, id) };
                        assert_eq!(simd, levels_scalar(xb, id), "id {id} of {xb:?}");
                    }
                }
            }
        }
    }
}
