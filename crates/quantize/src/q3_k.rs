//! Q3_K (REFERENCE §2.3, §2.6): 256 values per super-block in 16 groups of 16; 3-bit signed
//! levels (2 low bits in `qs`, the high bit in `hmask`), signed 6-bit group scales and one fp16
//! super-scale.
//!
//! Without importance weights this is `quantize_row_q3_K_ref` (`make_q3_quants` per group, linear
//! 6-bit scales); with them `quantize_row_q3_K_impl` (weighted `make_qx_quants` for the groups and
//! again for the scales). Both requantize against the stored scales.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::k_scales::{f16_to_f32, pack_2bit, QK_K};
use crate::lanes::make_q3_groups;
use crate::search::{make_qx_quants, nearest_int};
use formats::ggml_type::GgmlType;

/// `block_q3_K`: `uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; ggml_half d;`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ3K {
    /// High bit of each level: `hmask[e % 32]` bit `e / 32`.
    pub hmask: [u8; QK_K / 8],
    /// Low two bits of each level (see [`pack_2bit`]).
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit group scales (+32), packed as in REFERENCE §2.3.
    pub scales: [u8; 12],
    /// Super-scale, fp16 bits.
    pub d: u16,
}

// Same size as the C struct: 32 + 64 + 12 + 2.
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

/// Stores the 6-bit value `l` (0..64) of group `j` into the packed `scales` (which start zeroed).
#[inline]
fn pack_scale(j: usize, l: i32, scales: &mut [u8; 12]) {
    if j < 8 {
        scales[j] = (l & 0xF) as u8;
    } else {
        scales[j - 8] |= ((l & 0xF) << 4) as u8;
    }
    let hi = l >> 4;
    scales[j % 4 + 8] |= (hi << (2 * (j / 4))) as u8;
}

/// The signed scale (stored − 32) of group `j`.
#[inline]
fn unpack_scale(j: usize, scales: &[u8; 12]) -> i8 {
    let lo = if j < 8 {
        scales[j] & 0xF
    } else {
        scales[j - 8] >> 4
    };
    let hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i8 - 32
}

impl BlockQ3K {
    /// `quantize_row_q3_K_impl` for one super-block with the importance weights `qw` of these
    /// 256 columns.
    pub(crate) fn quantize_imatrix(x: &[f32], qw: &[f32]) -> Self {
        let (x, qw) = (&x[..QK_K], &qw[..QK_K]);
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let mut weight = [0f32; 16];
        let mut sw = [0f32; 16];
        let mut ls = [0i8; 16];

        let mut sumx2 = 0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let q = &qw[16 * j..16 * j + 16];
            for l in 0..16 {
                weight[l] = q[l] * (sigma2 + xs[l] * xs[l]).sqrt();
            }
            let mut sumw = 0f32;
            for &w in &weight {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(4, xs, &mut levels[16 * j..16 * j + 16], 1, Some(&weight));
        }
        let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
        let mut b = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: 0,
        };
        for (j, &l) in ls.iter().enumerate() {
            pack_scale(j, i32::from(l), &mut b.scales);
        }
        b.d = f32_to_f16_bits(d_block);
        b.requantize_and_pack(x, &mut levels);
        b
    }

    /// Re-rounds every group with a non-zero stored scale against d·s_g, then splits the levels
    /// into `hmask` and `qs`.
    fn requantize_and_pack(&mut self, x: &[f32], levels: &mut [i8; QK_K]) {
        let dall = f16_to_f32(self.d);
        for (j, (xs, ls)) in x[..QK_K]
            .chunks_exact(16)
            .zip(levels.chunks_exact_mut(16))
            .enumerate()
        {
            let d = dall * f32::from(unpack_scale(j, &self.scales));
            if d == 0.0 {
                continue;
            }
            for (l, &v) in ls.iter_mut().zip(xs) {
                *l = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
            }
        }
        // Branch-free: bit j / 32 of hmask[j % 32] is set for levels above 3, which then lose 4.
        self.hmask = [0; 32];
        let mut low = [0u8; QK_K];
        for (k, (ls, lo)) in levels
            .chunks_exact(32)
            .zip(low.chunks_exact_mut(32))
            .enumerate()
        {
            for ((&l, o), h) in ls.iter().zip(lo.iter_mut()).zip(self.hmask.iter_mut()) {
                let hi = u8::from(l > 3);
                *h |= hi << k;
                *o = (l as u8).wrapping_sub(4 * hi);
            }
        }
        pack_2bit(&low, &mut self.qs);
    }
}

impl Block for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 110;

    /// `quantize_row_q3_K_ref` for one super-block.
    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let mut max_scale = 0f32;
        let mut amax = 0f32;
        // make_q3_quants(16, 4, …, true) on the 16 groups, one per lane.
        make_q3_groups::<16, 2>(4, x, &mut levels, &mut scales);
        for &s in &scales {
            let scale = s.abs();
            if scale > amax {
                amax = scale;
                max_scale = s;
            }
        }
        let mut b = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: 0,
        };
        // C tests `if (max_scale)`: true for NaN too.
        if max_scale != 0.0 {
            let iscale = -32.0f32 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                // C stores nearest_int into an int8_t before clamping.
                let l = i32::from(nearest_int(iscale * s) as i8);
                pack_scale(j, l.clamp(-32, 31) + 32, &mut b.scales);
            }
            b.d = f32_to_f16_bits(1.0 / iscale);
        }
        b.requantize_and_pack(x, &mut levels);
        b
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d_all = f16_to_f32(self.d);
        for (g, out) in y[..QK_K].chunks_exact_mut(16).enumerate() {
            let dl = d_all * f32::from(unpack_scale(g, &self.scales));
            let (h, k, off) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            for (i, o) in out.iter_mut().enumerate() {
                let l = off + i;
                let low = i32::from((self.qs[32 * h + l] >> (2 * k)) & 3);
                // hmask bit index is e / 32 = 4h + k.
                let hbit = self.hmask[l] & (1 << (4 * h + k)) != 0;
                *o = dl * (low - if hbit { 0 } else { 4 }) as f32;
            }
        }
    }

    fn read(bytes: &[u8]) -> Self {
        let mut b = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: 0,
        };
        if bytes.len() >= Self::BYTES {
            b.hmask.copy_from_slice(&bytes[..32]);
            b.qs.copy_from_slice(&bytes[32..96]);
            b.scales.copy_from_slice(&bytes[96..108]);
            b.d = u16::from_le_bytes([bytes[108], bytes[109]]);
        }
        b
    }

    fn write(&self, out: &mut [u8]) {
        if out.len() >= Self::BYTES {
            out[..32].copy_from_slice(&self.hmask);
            out[32..96].copy_from_slice(&self.qs);
            out[96..108].copy_from_slice(&self.scales);
            out[108..110].copy_from_slice(&self.d.to_le_bytes());
        }
    }
}
