//! Q2_K (REFERENCE §2.3, §2.6): 256 values per super-block in 16 groups of 16; 2-bit levels with a
//! 4-bit scale and 4-bit min per group and fp16 super-scales `d` and `dmin`.
//!
//! Without importance weights this is `quantize_row_q2_K_ref` (mean-absolute-deviation search
//! weighted by |x|, linear 4-bit sub-scales); with them `quantize_row_q2_K_impl` (weighted
//! least squares, sub-scales chosen by `make_qp_quants`). Both re-round every element against the
//! stored scales ("requantize").

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::k_scales::{f16_to_f32, pack_2bit, QK_K};
use crate::lanes::{make_qkx_groups, QkxParams};
use crate::search::{make_qp_quants, nearest_int};
use formats::ggml_type::GgmlType;

/// `block_q2_K`: `uint8_t scales[16]; uint8_t qs[64]; ggml_half d; ggml_half dmin;`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ2K {
    /// Low nibble: 4-bit group scale; high nibble: 4-bit group min.
    pub scales: [u8; QK_K / 16],
    /// 2-bit levels, four per byte (see [`pack_2bit`]).
    pub qs: [u8; QK_K / 4],
    /// Super-scale for the group scales, fp16 bits.
    pub d: u16,
    /// Super-scale for the group mins, fp16 bits.
    pub dmin: u16,
}

// Same size as the C struct: 16 + 64 + 2 + 2.
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

impl BlockQ2K {
    /// `quantize_row_q2_K_impl` for one super-block: `qw` holds the importance weights of these
    /// 256 columns (llama.cpp only takes this path when an imatrix is given).
    pub(crate) fn quantize_imatrix(x: &[f32], qw: &[f32]) -> Self {
        let (x, qw) = (&x[..QK_K], &qw[..QK_K]);
        let mut levels = [0u8; QK_K];
        let mut mins = [0f32; 16];
        let mut scales = [0f32; 16];
        let mut sw = [0f32; 16];

        let mut sumx2 = 0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        let mut weight = [0f32; QK_K];
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let q = &qw[16 * j..16 * j + 16];
            let ws = &mut weight[16 * j..16 * j + 16];
            for l in 0..16 {
                ws[l] = q[l] * (sigma2 + xs[l] * xs[l]).sqrt();
            }
            let mut s = 0f32;
            for &w in ws.iter() {
                s += w;
            }
            sw[j] = s;
        }
        // make_qkx3_quants(16, 3, …, -0.9, 0.05, 36, false) on the 16 groups, one per lane.
        let p = QkxParams {
            nmax: 3,
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        make_qkx_groups::<16, 2>(p, x, &weight, &mut levels, &mut scales, &mut mins);
        let mut ls = [0u8; 16];
        let mut lm = [0u8; 16];
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);
        let mut b = BlockQ2K {
            scales: [0; 16],
            qs: [0; 64],
            d: f32_to_f16_bits(dm),
            dmin: f32_to_f16_bits(mm),
        };
        for j in 0..16 {
            b.scales[j] = ls[j] | (lm[j] << 4);
        }
        b.requantize_and_pack(x, &mut levels);
        b
    }

    /// Re-rounds every element of a group with a non-zero stored scale against
    /// (d·s_g, dmin·m_g), then packs the levels.
    fn requantize_and_pack(&mut self, x: &[f32], levels: &mut [u8; QK_K]) {
        let dm = f16_to_f32(self.d);
        let mm = f16_to_f32(self.dmin);
        for j in 0..16 {
            let d = dm * f32::from(self.scales[j] & 0xF);
            if d == 0.0 {
                continue;
            }
            let m = mm * f32::from(self.scales[j] >> 4);
            for ii in 0..16 {
                let l = nearest_int((x[16 * j + ii] + m) / d);
                levels[16 * j + ii] = l.clamp(0, 3) as u8;
            }
        }
        pack_2bit(levels, &mut self.qs);
    }
}

impl Block for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 84;

    /// `quantize_row_q2_K_ref` for one super-block.
    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut levels = [0u8; QK_K];
        let mut weights = [0f32; QK_K];
        let mut mins = [0f32; 16];
        let mut scales = [0f32; 16];
        const Q4SCALE: f32 = 15.0;

        let mut max_scale = 0f32;
        let mut max_min = 0f32;
        for (w, &v) in weights.iter_mut().zip(x) {
            *w = v.abs();
        }
        // make_qkx2_quants(16, 3, …, -0.5, 0.1, 15, true) on the 16 groups, one per lane.
        let p = QkxParams {
            nmax: 3,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        make_qkx_groups::<16, 2>(p, x, &weights, &mut levels, &mut scales, &mut mins);
        for j in 0..16 {
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let mut b = BlockQ2K {
            scales: [0; 16],
            qs: [0; 64],
            d: 0,
            dmin: 0,
        };
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (sc, &s) in b.scales.iter_mut().zip(&scales) {
                *sc = nearest_int(iscale * s) as u8;
            }
            b.d = f32_to_f16_bits(max_scale / Q4SCALE);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (sc, &m) in b.scales.iter_mut().zip(&mins) {
                *sc |= (nearest_int(iscale * m) << 4) as u8;
            }
            b.dmin = f32_to_f16_bits(max_min / Q4SCALE);
        }
        b.requantize_and_pack(x, &mut levels);
        b
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for (g, out) in y[..QK_K].chunks_exact_mut(16).enumerate() {
            let sc = self.scales[g];
            let dl = d * f32::from(sc & 0xF);
            let ml = min * f32::from(sc >> 4);
            // Group g covers elements 16g..16g+16: half h, 32-element column block k.
            let (h, k, off) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let q = &self.qs[32 * h + off..32 * h + off + 16];
            for (o, &byte) in out.iter_mut().zip(q) {
                *o = dl * f32::from((byte >> (2 * k)) & 3) - ml;
            }
        }
    }

    fn read(bytes: &[u8]) -> Self {
        let mut b = BlockQ2K {
            scales: [0; 16],
            qs: [0; 64],
            d: 0,
            dmin: 0,
        };
        if bytes.len() >= Self::BYTES {
            b.scales.copy_from_slice(&bytes[..16]);
            b.qs.copy_from_slice(&bytes[16..80]);
            b.d = u16::from_le_bytes([bytes[80], bytes[81]]);
            b.dmin = u16::from_le_bytes([bytes[82], bytes[83]]);
        }
        b
    }

    fn write(&self, out: &mut [u8]) {
        if out.len() >= Self::BYTES {
            out[..16].copy_from_slice(&self.scales);
            out[16..80].copy_from_slice(&self.qs);
            out[80..82].copy_from_slice(&self.d.to_le_bytes());
            out[82..84].copy_from_slice(&self.dmin.to_le_bytes());
        }
    }
}
