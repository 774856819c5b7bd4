//! IQ4_NL (REFERENCE §2.3, §2.6): 32 values per block, one fp16 scale and 32 nibbles indexing the
//! non-linear table `kvalues_iq4nl`, y = d·T[q]. Also home of `quantize_row_iq4_nl_impl`, the
//! search IQ4_XS shares.
//!
//! llama-quantize reaches IQ4_NL through `quantize_iq4_nl`, which always calls the impl with
//! ntry = 7 (weights x² without an imatrix) — **not** `quantize_row_iq4_nl_ref` (ntry = −1), whose
//! bytes differ. Both [`Block::quantize`] and the weighted path here are the ntry = 7 search.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::iq4_lanes;
use crate::legacy::{block32, le_bytes, le_u16, pack_nibbles, put, signed_absmax};
use crate::search::{nearest_int, GROUP_MAX_EPS, KVALUES_IQ4NL};
use formats::ggml_type::GgmlType;

/// Elements per IQ4_NL block (`QK4_NL`) and per IQ4_XS sub-block.
pub(crate) const QK4_NL: usize = 32;

/// `block_iq4_nl`: `ggml_half d; uint8_t qs[QK4_NL/2];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockIq4Nl {
    /// Scale, fp16 bits.
    pub d: u16,
    /// Byte j: table index of element j (low nibble) and j + 16 (high nibble).
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 18);

/// What `quantize_row_iq4_nl_impl` stores for one super-block: the fp16 super-scale, the packed
/// 6-bit sub-block scales (IQ4_XS only; zero for IQ4_NL) and the packed table indices.
pub(crate) struct Iq4Packed<const HALF: usize> {
    pub d: u16,
    pub scales_h: u16,
    pub scales_l: [u8; 4],
    pub qs: [u8; HALF],
}

/// `quantize_row_iq4_nl_impl(super_block_size = 2·HALF, block_size = 32, …, ntry = 7)`, statement
/// for statement: σ² = 2·Σx²/n over the super-block; per 32-block weights qw·√(σ² + x²) (or x²
/// without `qw`), a start scale max/127 refined by least squares and by 15 trial scales
/// (t − 127)/max; then, for IQ4_XS (HALF = 128), 6-bit sub-scales against d = −max_scale/32 and
/// levels re-picked with the rounded scales; for IQ4_NL (HALF = 16), levels re-picked with
/// 1/scale (the unrounded f32 scale). The per-block search and level picks are
/// [`iq4_lanes`]'s (AVX2 or the scalar reference, same results).
pub(crate) fn quantize_iq4_impl<const HALF: usize>(
    x: &[f32],
    qw: Option<&[f32]>,
) -> Iq4Packed<HALF> {
    let n = 2 * HALF;
    let x = &x[..n];
    let nb = n / QK4_NL;

    let mut sigma2 = 0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / n as f32;

    let mut scales = [0f32; 8];
    let mut weight = [0f32; QK4_NL];
    let mut max_scale = 0f32;
    let mut amax_scale = 0f32;
    for ib in 0..nb {
        let xb = block32(&x[ib * QK4_NL..]);
        match qw {
            Some(q) => {
                let qb = &q[ib * QK4_NL..(ib + 1) * QK4_NL];
                for ((w, &v), &qv) in weight.iter_mut().zip(xb).zip(qb) {
                    *w = qv * (sigma2 + v * v).sqrt();
                }
            }
            None => {
                for (w, &v) in weight.iter_mut().zip(xb) {
                    *w = v * v;
                }
            }
        }
        let max = signed_absmax(xb);
        if max.abs() < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let d = iq4_lanes::search_scale(xb, &weight, max);
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    let mut out = Iq4Packed {
        d: 0,
        scales_h: 0,
        scales_l: [0; 4],
        qs: [0; HALF],
    };
    let mut levels = [[0u8; QK4_NL]; 8];
    if nb > 1 {
        let d = -max_scale / 32.0;
        out.d = f32_to_f16_bits(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let l = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            iq4_lanes::pick_levels(block32(&x[ib * QK4_NL..]), idl, &mut levels[ib]);
            let l = (l + 32) as u8;
            let (l_l, l_h) = (l & 0xf, l >> 4);
            if ib % 2 == 0 {
                out.scales_l[ib / 2] = l_l;
            } else {
                out.scales_l[ib / 2] |= l_l << 4;
            }
            out.scales_h |= u16::from(l_h) << (2 * (ib % 8));
        }
    } else {
        out.d = f32_to_f16_bits(scales[0]);
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        iq4_lanes::pick_levels(block32(x), id, &mut levels[0]);
    }
    for (qs, l) in out.qs.chunks_exact_mut(QK4_NL / 2).zip(&levels) {
        qs.copy_from_slice(&pack_nibbles(l));
    }
    out
}

/// Writes `d·T[q]` for the 32 elements of one block of 16 packed index bytes.
#[inline]
pub(crate) fn dequantize_iq4_block(d: f32, qs: &[u8], y: &mut [f32]) {
    let (lo, hi) = y.split_at_mut(16);
    for ((&q, a), b) in qs.iter().zip(lo).zip(hi) {
        *a = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xf)]);
        *b = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

impl BlockIq4Nl {
    /// Quantizes one block with importance weights `qw` (this block's slice of the imatrix
    /// row): the same ntry = 7 search with weights qw·√(σ² + x²) instead of x².
    pub(crate) fn quantize_imatrix(x: &[f32], qw: &[f32]) -> Self {
        let p = quantize_iq4_impl::<16>(x, Some(qw));
        BlockIq4Nl { d: p.d, qs: p.qs }
    }
}

impl Block for BlockIq4Nl {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const ELEMS: usize = QK4_NL;
    const BYTES: usize = 18;

    fn quantize(x: &[f32]) -> Self {
        let p = quantize_iq4_impl::<16>(x, None);
        BlockIq4Nl { d: p.d, qs: p.qs }
    }

    fn dequantize(&self, y: &mut [f32]) {
        dequantize_iq4_block(half::f16::from_bits(self.d).to_f32(), &self.qs, y);
    }

    fn read(bytes: &[u8]) -> Self {
        BlockIq4Nl {
            d: le_u16(bytes, 0),
            qs: le_bytes(bytes, 2),
        }
    }

    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.qs);
    }
}
