//! Q8_0 (REFERENCE §2.3, §2.6): 32 values per block, one fp16 scale and 32 signed bytes.
//!
//! Reference quantizer `quantize_row_q8_0_ref`: d = max|x|/127, id = 1/d (0 when d = 0),
//! q = roundf(x·id) — round half **away from zero** (not `nearest_int`'s half-to-even) — and the
//! scale is stored as fp16(d). Importance weights are ignored, as in llama.cpp.
//!
//! With AVX2 a block is one function of 8-value vectors (`roundf` as truncation plus a step
//! away from zero; the scalar one calls libm per value and was 1.1 GB/s); the scalar path stays
//! as its reference (`R1Q_NO_SIMD=1`).

use half::f16;

use crate::block::Block;
use formats::ggml_type::GgmlType;

/// Elements per Q8_0 block (`QK8_0`).
pub(crate) const QK8_0: usize = 32;

/// `block_q8_0`: `ggml_half d; int8_t qs[QK8_0];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ8_0 {
    /// Scale, fp16 bits.
    pub d: u16,
    /// Quantized values.
    pub qs: [i8; QK8_0],
}

// Same size as the C struct (2 + 32 bytes, no padding because the alignment is 2).
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    /// Quantizes whole blocks of `src` into `dst` (`Block::BYTES` each; sizes checked by the
    /// caller). Exists so the AVX2 path runs a whole piece in one function, without a runtime
    /// check and a call per 32 values.
    pub(crate) fn quantize_blocks(src: &[f32], dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if crate::lanes::simd_enabled() {
            // SAFETY: AVX2 is available (checked at run time just above).
            unsafe { avx2::quantize_blocks(src, dst) };
            return;
        }
        for (x, out) in src
            .chunks_exact(QK8_0)
            .zip(dst.chunks_exact_mut(Self::BYTES))
        {
            quantize_scalar(x.try_into().expect("a whole block")).write(out);
        }
    }
}

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 34;

    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK8_0] = x[..QK8_0].try_into().expect("a whole block");
        #[cfg(target_arch = "x86_64")]
        if crate::lanes::simd_enabled() {
            // SAFETY: AVX2 is available (checked at run time just above).
            return unsafe { avx2::quantize(x) };
        }
        quantize_scalar(x)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16::from_bits(self.d).to_f32();
        for (o, &q) in y.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
    }

    fn read(bytes: &[u8]) -> Self {
        let mut b = BlockQ8_0 {
            d: 0,
            qs: [0; QK8_0],
        };
        if let [d0, d1, rest @ ..] = bytes {
            b.d = u16::from_le_bytes([*d0, *d1]);
            for (q, &v) in b.qs.iter_mut().zip(rest) {
                *q = v as i8;
            }
        }
        b
    }

    fn write(&self, out: &mut [u8]) {
        if let [d0, d1, rest @ ..] = out {
            [*d0, *d1] = self.d.to_le_bytes();
            for (o, &q) in rest.iter_mut().zip(&self.qs) {
                *o = q as u8;
            }
        }
    }
}

/// `quantize_row_q8_0_ref` of one block, scalar (the reference of the AVX2 path). The maximum
/// ignores NaN (inputs are checked for NaN/Inf before they get here; C's `MAX` would not).
fn quantize_scalar(x: &[f32; QK8_0]) -> BlockQ8_0 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8_0];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = roundf_to_i8(v * id);
    }
    BlockQ8_0 {
        d: f16::from_f32(d).to_bits(),
        qs,
    }
}

/// C's `(int8_t) roundf(v)` as compiled for x86-64 (and as numpy computes it): `f32::round` is
/// `roundf` (half away from zero); the conversion goes through a 32-bit `cvttss2si`, which yields
/// 0x8000_0000 for NaN and out-of-range values, whose low byte is 0. That case is reached when
/// max|x| is so small that 1/d overflows to inf (subnormal blocks): ggml then stores 0s, and so
/// do we. For every finite |v| ≤ 127.5 this is the plain rounded value.
#[inline]
fn roundf_to_i8(v: f32) -> i8 {
    let r = v.round();
    if (-2_147_483_648.0..2_147_483_648.0).contains(&r) {
        (r as i32) as i8
    } else {
        0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8_0, QK8_0};
    use crate::block::Block;
    use crate::lanes::avx2::{hmax, ld, low_byte_i8, pack_bytes};
    use half::f16;
    use std::arch::x86_64::*;

    /// [`super::BlockQ8_0::quantize_blocks`]: [`quantize`] per block, written in place.
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize_blocks(src: &[f32], dst: &mut [u8]) {
        for (x, out) in src.chunks_exact(QK8_0).zip(dst.chunks_exact_mut(34)) {
            quantize(x.try_into().expect("a whole block")).write(out);
        }
    }

    /// [`super::quantize_scalar`] with AVX2: the same maximum (`maxps` keeps the running value
    /// when |v| is NaN, as `f32::max` does), scale and levels, 8 values per vector.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize(x: &[f32; QK8_0]) -> BlockQ8_0 {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for x8 in x.chunks_exact(8) {
            m = _mm256_max_ps(
                _mm256_andnot_ps(sign, ld(x8.try_into().expect("8 values"))),
                m,
            );
        }
        let d = hmax(m) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        BlockQ8_0 {
            d: f16::from_f32(d).to_bits(),
            qs: levels(x, id),
        }
    }

    /// `(int8_t) roundf(x·id)` per value. `roundf` (half away from zero) is truncation plus
    /// one step away from zero where the dropped fraction — exact, as `v − trunc(v)` always is —
    /// is at least ½; ±inf and NaN give a NaN fraction, stay unstepped and convert to
    /// 0x8000_0000, whose low byte 0 is what [`super::roundf_to_i8`] gives.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn levels(x: &[f32; QK8_0], id: f32) -> [i8; QK8_0] {
        let (idv, sign) = (_mm256_set1_ps(id), _mm256_set1_ps(-0.0));
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let mut t = [_mm256_setzero_si256(); 4];
        for (tk, x8) in t.iter_mut().zip(x.chunks_exact(8)) {
            let v = _mm256_mul_ps(ld(x8.try_into().expect("8 values")), idv);
            let tr = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, tr));
            let away = _mm256_or_ps(one, _mm256_and_ps(v, sign));
            let step = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), away);
            *tk = low_byte_i8(_mm256_cvttps_epi32(_mm256_add_ps(tr, step)));
        }
        let mut out = [0i8; QK8_0];
        // SAFETY: `out` is 32 bytes; storeu needs no alignment.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), pack_bytes(&t)) };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(x: &[f32]) -> (BlockQ8_0, Vec<f32>) {
        let b = BlockQ8_0::quantize(x);
        let mut bytes = [0u8; 34];
        b.write(&mut bytes);
        let back = BlockQ8_0::read(&bytes);
        assert_eq!(back, b);
        let mut y = vec![0f32; QK8_0];
        b.dequantize(&mut y);
        (b, y)
    }

    #[test]
    fn zeros_give_zero_scale_and_zero_values() {
        let (b, y) = roundtrip(&[0.0; QK8_0]);
        assert_eq!(b.d, 0);
        assert_eq!(b.qs, [0; QK8_0]);
        assert!(y.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn max_element_maps_to_127_and_ties_round_away_from_zero() {
        let mut x = [0f32; QK8_0];
        x[0] = 127.0; // d = 1 exactly, id = 1
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        x[4] = -0.5;
        x[5] = -127.0;
        let (b, y) = roundtrip(&x);
        assert_eq!(f16::from_bits(b.d).to_f32(), 1.0);
        assert_eq!(&b.qs[..6], &[127, 3, -3, 1, -1, -127]);
        assert_eq!(&y[..6], &[127.0, 3.0, -3.0, 1.0, -1.0, -127.0]);
    }

    #[test]
    fn subnormal_blocks_whose_inverse_scale_overflows_store_zeros_like_x86_c() {
        let mut x = [0f32; QK8_0];
        x[0] = 1e-42;
        x[1] = -5e-43;
        let (b, _) = roundtrip(&x);
        assert_eq!(b.qs, [0; QK8_0]);
        assert_eq!(roundf_to_i8(f32::NAN), 0);
        assert_eq!(roundf_to_i8(-127.5), -128);
        assert_eq!(roundf_to_i8(126.5), 127);
    }

    #[test]
    fn simd_blocks_match_scalar() {
        let mut rows = crate::lanes::tests::edge_cases(4 * QK8_0);
        // every tie k + ½ of the range (d = 1 exactly), and their neighbours
        let ties: Vec<f32> = (-128..127).map(|k| k as f32 + 0.5).collect();
        for f in [|v: f32| v, f32::next_up, f32::next_down] {
            let mut r: Vec<f32> = ties.iter().map(|&v| f(v)).collect();
            r.resize(r.len().next_multiple_of(QK8_0), 0.0);
            for b in r.chunks_exact_mut(QK8_0) {
                b[0] = 127.0;
            }
            rows.push(r);
        }
        rows.push(
            (0..4 * QK8_0)
                .map(|i| [f32::MAX, -f32::MAX, 1.0, -0.0][i % 4])
                .collect(),
        );
        rows.push((0..4 * QK8_0).map(|i| (i % 5) as f32 * 1e-38).collect());
        for x in rows {
            let mut row = vec![0u8; x.len() / QK8_0 * 34];
            BlockQ8_0::quantize_blocks(&x, &mut row);
            for (xb, ob) in x.chunks_exact(QK8_0).zip(row.chunks_exact(34)) {
                let xb: &[f32; QK8_0] = xb.try_into().unwrap();
                assert_eq!(BlockQ8_0::read(ob), quantize_scalar(xb), "{xb:?}");
            }
            for xb in x.chunks_exact(QK8_0) {
                let xb: &[f32; QK8_0] = xb.try_into().unwrap();
                assert_eq!(BlockQ8_0::quantize(xb), quantize_scalar(xb), "{xb:?}");
                #[cfg(target_arch = "x86_64")]
                if crate::lanes::simd_enabled() {
                    for id in [1.0, 0.0, f32::INFINITY, f32::NAN, 3e9, -1e38, 0.999_999_9] {
                        // SAFETY: AVX2 is available (checked just above).
                        let simd = unsafe { avx2::levels(xb, id) };
                        assert_eq!(simd, xb.map(|v| roundf_to_i8(v * id)), "id {id} {xb:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn scale_is_fp16_of_amax_over_127() {
        let x: Vec<f32> = (0..QK8_0).map(|i| (i as f32 - 15.3) * 0.37).collect();
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (b, _) = roundtrip(&x);
        assert_eq!(b.d, f16::from_f32(amax / 127.0).to_bits());
    }
}
