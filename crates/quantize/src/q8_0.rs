//! Q8_0 (REFERENCE §2.3, §2.6): 32 values per block, one fp16 scale and 32 signed bytes.
//!
//! Reference quantizer `quantize_row_q8_0_ref`: d = max|x|/127, id = 1/d (0 when d = 0),
//! q = roundf(x·id) — round half **away from zero** (not `nearest_int`'s half-to-even) — and the
//! scale is stored as fp16(d). Importance weights are ignored, as in llama.cpp.

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

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 34;

    fn quantize(x: &[f32]) -> Self {
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
    fn scale_is_fp16_of_amax_over_127() {
        let x: Vec<f32> = (0..QK8_0).map(|i| (i as f32 - 15.3) * 0.37).collect();
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (b, _) = roundtrip(&x);
        assert_eq!(b.d, f16::from_f32(amax / 127.0).to_bits());
    }
}
