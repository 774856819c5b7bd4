//! Q5_K (REFERENCE §2.3, §2.6): as Q4_K with 5-bit levels (4 low bits in `qs`, the fifth in
//! `qh`): 256 values per super-block in 8 sub-blocks of 32, 6-bit sub-block scales and mins
//! (12-byte packing of `k_scales.rs`), fp16 `d` and `dmin`.
//!
//! Without importance weights this is `quantize_row_q5_K_ref` (`make_qkx2_quants` weighted by
//! rms + |x|, rmin −0.5, 15 steps, linear 6-bit sub-scales); with them `quantize_row_q5_K_impl`
//! (`make_qkx3_quants` with imatrix weights, sub-scales by `make_qp_quants`). Both requantize.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::k_scales::{f16_to_f32, get_scale_min_k4, pack_scale_min_k4, QK_K};
use crate::lanes::{make_qkx_groups, QkxParams};
use crate::search::{make_qp_quants, nearest_int};
use formats::ggml_type::GgmlType;

/// `block_q5_K`: `ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qh[32];
/// uint8_t qs[128];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ5K {
    /// Super-scale for the sub-block scales, fp16 bits.
    pub d: u16,
    /// Super-scale for the sub-block mins, fp16 bits.
    pub dmin: u16,
    /// Eight 6-bit scales and eight 6-bit mins (see [`get_scale_min_k4`]).
    pub scales: [u8; 12],
    /// Fifth bit of each level: `qh[e % 32]` bit `e / 32`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits of each level: `qs[32c + e % 32]`, low nibble for the first 32 of each 64.
    pub qs: [u8; QK_K / 2],
}

// Same size as the C struct: 2 + 2 + 12 + 32 + 128.
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl BlockQ5K {
    /// `quantize_row_q5_K_impl` for one super-block with the importance weights `qw` of these
    /// 256 columns.
    pub(crate) fn quantize_imatrix(x: &[f32], qw: &[f32]) -> Self {
        let (x, qw) = (&x[..QK_K], &qw[..QK_K]);
        let mut levels = [0u8; QK_K];
        let mut sw = [0f32; 8];
        let mut mins = [0f32; 8];
        let mut scales = [0f32; 8];

        let mut sum_x2 = 0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        let sigma2 = 2.0 * sum_x2 / QK_K as f32;
        let mut weights = [0f32; QK_K];
        for j in 0..8 {
            let xs = &x[32 * j..32 * j + 32];
            let q = &qw[32 * j..32 * j + 32];
            let ws = &mut weights[32 * j..32 * j + 32];
            for l in 0..32 {
                ws[l] = q[l] * (sigma2 + xs[l] * xs[l]).sqrt();
            }
            let mut sumw = 0f32;
            for &w in ws.iter() {
                sumw += w;
            }
            sw[j] = sumw;
        }
        // make_qkx3_quants(32, 31, …, -0.9, 0.05, 36, false) on the 8 sub-blocks, one per lane.
        let p = QkxParams {
            nmax: 31,
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        make_qkx_groups::<32, 1>(p, x, &weights, &mut levels, &mut scales, &mut mins);
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
        let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
        let mut b = BlockQ5K {
            d: f32_to_f16_bits(d_block),
            dmin: f32_to_f16_bits(m_block),
            scales: [0; 12],
            qh: [0; 32],
            qs: [0; 128],
        };
        // Unlike Q4_K, the C code clamps these to 63 (which matters only for wrapped negatives).
        for j in 0..8 {
            pack_scale_min_k4(j, ls[j].min(63), lm[j].min(63), &mut b.scales);
        }
        b.requantize_and_pack(x, &mut levels);
        b
    }

    /// Re-rounds every sub-block with a non-zero stored scale against (d·sc, dmin·m), then
    /// splits the levels into `qs` nibbles and `qh` bits.
    fn requantize_and_pack(&mut self, x: &[f32], levels: &mut [u8; QK_K]) {
        let dd = f16_to_f32(self.d);
        let dmm = f16_to_f32(self.dmin);
        for (j, (xs, ls)) in x[..QK_K]
            .chunks_exact(32)
            .zip(levels.chunks_exact_mut(32))
            .enumerate()
        {
            let (sc, m) = get_scale_min_k4(j, &self.scales);
            let d = dd * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            let dm = dmm * f32::from(m);
            for (l, &v) in ls.iter_mut().zip(xs) {
                *l = nearest_int((v + dm) / d).clamp(0, 31) as u8;
            }
        }
        self.qh = [0; 32];
        let (mut m1, mut m2) = (1u8, 2u8);
        for (c, q) in self.qs.chunks_exact_mut(32).enumerate() {
            for (j, o) in q.iter_mut().enumerate() {
                // Branch-free form of `if l > 15 { l -= 16; qh[j] |= m; }`.
                let l1 = levels[64 * c + j];
                let h1 = u8::from(l1 > 15);
                let l2 = levels[64 * c + j + 32];
                let h2 = u8::from(l2 > 15);
                self.qh[j] |= (m1 * h1) | (m2 * h2);
                *o = l1.wrapping_sub(16 * h1) | (l2.wrapping_sub(16 * h2) << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

impl Block for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 176;

    /// `quantize_row_q5_K_ref` for one super-block.
    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut levels = [0u8; QK_K];
        let mut weights = [0f32; QK_K];
        let mut mins = [0f32; 8];
        let mut scales = [0f32; 8];
        let mut max_scale = 0f32;
        let mut max_min = 0f32;
        for (xs, ws) in x.chunks_exact(32).zip(weights.chunks_exact_mut(32)) {
            let mut sum_x2 = 0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, &v) in ws.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
        }
        // make_qkx2_quants(32, 31, …, -0.5, 0.1, 15, false) on the 8 sub-blocks, one per lane.
        let p = QkxParams {
            nmax: 31,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        make_qkx_groups::<32, 1>(p, x, &weights, &mut levels, &mut scales, &mut mins);
        for j in 0..8 {
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut b = BlockQ5K {
            d: f32_to_f16_bits(max_scale / 63.0),
            dmin: f32_to_f16_bits(max_min / 63.0),
            scales: [0; 12],
            qh: [0; 32],
            qs: [0; 128],
        };
        for j in 0..8 {
            // C stores nearest_int into a uint8_t, then clamps.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            pack_scale_min_k4(j, ls, lm, &mut b.scales);
        }
        b.requantize_and_pack(x, &mut levels);
        b
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for (j, out) in y[..QK_K].chunks_exact_mut(32).enumerate() {
            let (sc, m) = get_scale_min_k4(j, &self.scales);
            let d1 = d * f32::from(sc);
            let m1 = min * f32::from(m);
            let q = &self.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            // The fifth bit of sub-block j is bit j of qh.
            for ((o, &byte), &h) in out.iter_mut().zip(q).zip(&self.qh) {
                let hi = if h & (1 << j) != 0 { 16 } else { 0 };
                *o = d1 * f32::from(((byte >> shift) & 0xF) + hi) - m1;
            }
        }
    }

    fn read(bytes: &[u8]) -> Self {
        let mut b = BlockQ5K {
            d: 0,
            dmin: 0,
            scales: [0; 12],
            qh: [0; 32],
            qs: [0; 128],
        };
        if bytes.len() >= Self::BYTES {
            b.d = u16::from_le_bytes([bytes[0], bytes[1]]);
            b.dmin = u16::from_le_bytes([bytes[2], bytes[3]]);
            b.scales.copy_from_slice(&bytes[4..16]);
            b.qh.copy_from_slice(&bytes[16..48]);
            b.qs.copy_from_slice(&bytes[48..176]);
        }
        b
    }

    fn write(&self, out: &mut [u8]) {
        if out.len() >= Self::BYTES {
            out[0..2].copy_from_slice(&self.d.to_le_bytes());
            out[2..4].copy_from_slice(&self.dmin.to_le_bytes());
            out[4..16].copy_from_slice(&self.scales);
            out[16..48].copy_from_slice(&self.qh);
            out[48..176].copy_from_slice(&self.qs);
        }
    }
}
