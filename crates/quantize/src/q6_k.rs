//! Q6_K (REFERENCE §2.3, §2.6): 256 values per super-block in 16 groups of 16; 6-bit signed
//! levels (4 low bits in `ql`, 2 high bits in `qh`), int8 group scales and one fp16 super-scale.
//!
//! Without importance weights this is `quantize_row_q6_K_ref` (`make_qx_quants` weighted by x²
//! per group); with them `quantize_row_q6_K_impl`, identical except that the group search gets
//! the raw imatrix weights (no σ² term). Both requantize.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::k_scales::{f16_to_f32, QK_K};
use crate::lanes::make_qx_groups;
use crate::search::{nearest_int, GROUP_MAX_EPS};
use formats::ggml_type::GgmlType;

/// `block_q6_K`: `uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d;`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ6K {
    /// Low 4 bits of each level (REFERENCE §2.3 for the order).
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of each level.
    pub qh: [u8; QK_K / 4],
    /// Signed 8-bit group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-scale, fp16 bits.
    pub d: u16,
}

// Same size as the C struct: 128 + 64 + 16 + 2.
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

const ZERO: BlockQ6K = BlockQ6K {
    ql: [0; 128],
    qh: [0; 64],
    scales: [0; 16],
    d: 0,
};

impl BlockQ6K {
    /// `quantize_row_q6_K_impl` for one super-block with the importance weights `qw` of these
    /// 256 columns.
    pub(crate) fn quantize_imatrix(x: &[f32], qw: &[f32]) -> Self {
        Self::quantize_with(&x[..QK_K], Some(&qw[..QK_K]))
    }

    /// The shared body of ref (`qw = None`, weights x²) and impl.
    fn quantize_with(x: &[f32], qw: Option<&[f32]>) -> Self {
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let mut max_scale = 0f32;
        let mut max_abs_scale = 0f32;
        // make_qx_quants(16, 32, …, 1, qw) on the 16 groups, one per lane; `qw = NULL` weighs
        // by x².
        let mut sq = [0f32; QK_K];
        let w = match qw {
            Some(q) => &q[..QK_K],
            None => {
                for (w, &v) in sq.iter_mut().zip(x) {
                    *w = v * v;
                }
                &sq[..]
            }
        };
        make_qx_groups::<16, 2>(32, &x[..QK_K], w, &mut levels, &mut scales);
        for &scale in &scales {
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            return ZERO;
        }
        let mut b = ZERO;
        let iscale = -128.0f32 / max_scale;
        b.d = f32_to_f16_bits(1.0 / iscale);
        for (s, &v) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * v).min(127) as i8;
        }
        let dd = f16_to_f32(b.d);
        for ((xs, ls), &sc) in x[..QK_K]
            .chunks_exact(16)
            .zip(levels.chunks_exact_mut(16))
            .zip(&b.scales)
        {
            let d = dd * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            for (l, &v) in ls.iter_mut().zip(xs) {
                *l = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for h in 0..2 {
            let (ql, qh) = (
                &mut b.ql[64 * h..64 * h + 64],
                &mut b.qh[32 * h..32 * h + 32],
            );
            let lv = &levels[128 * h..128 * h + 128];
            for l in 0..32 {
                let (a, bb, c, e) = (
                    lv[l] as u8,
                    lv[l + 32] as u8,
                    lv[l + 64] as u8,
                    lv[l + 96] as u8,
                );
                ql[l] = (a & 0xF) | ((c & 0xF) << 4);
                ql[l + 32] = (bb & 0xF) | ((e & 0xF) << 4);
                qh[l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
            }
        }
        b
    }
}

impl Block for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 210;

    /// `quantize_row_q6_K_ref` for one super-block.
    fn quantize(x: &[f32]) -> Self {
        Self::quantize_with(&x[..QK_K], None)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (g, out) in y[..QK_K].chunks_exact_mut(16).enumerate() {
            let ds = d * f32::from(self.scales[g]);
            // Group g: half h, 32-column block k, offset within the 32.
            let (h, k, off) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            for (i, o) in out.iter_mut().enumerate() {
                let l = off + i;
                let low = (self.ql[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0xF;
                let high = (self.qh[32 * h + l] >> (2 * k)) & 3;
                let q = i32::from(low | (high << 4)) - 32;
                *o = ds * q as f32;
            }
        }
    }

    fn read(bytes: &[u8]) -> Self {
        let mut b = ZERO;
        if bytes.len() >= Self::BYTES {
            b.ql.copy_from_slice(&bytes[..128]);
            b.qh.copy_from_slice(&bytes[128..192]);
            for (s, &v) in b.scales.iter_mut().zip(&bytes[192..208]) {
                *s = v as i8;
            }
            b.d = u16::from_le_bytes([bytes[208], bytes[209]]);
        }
        b
    }

    fn write(&self, out: &mut [u8]) {
        if out.len() >= Self::BYTES {
            out[..128].copy_from_slice(&self.ql);
            out[128..192].copy_from_slice(&self.qh);
            for (o, &s) in out[192..208].iter_mut().zip(&self.scales) {
                *o = s as u8;
            }
            out[208..210].copy_from_slice(&self.d.to_le_bytes());
        }
    }
}
