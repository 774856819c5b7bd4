//! Q4_1 (REFERENCE §2.3, §2.6): 32 values per block, fp16 scale and minimum, 32 unsigned
//! nibbles, y = d·q + m.
//!
//! Without importance weights `quantize_row_q4_1_ref`: d = (max − min)/15, m = min,
//! q = min(15, trunc((x − min)·(1/d) + 0.5)). With weights `quantize_row_q4_1_impl`:
//! w = qw·√(σ²_row + x²), `make_qkx3_quants(32, 15, …, −0.9, 0.05, 36, squared error)`, m = −the_min.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::legacy::{le_bytes, le_u16, pack_nibbles, put, quantize_row_qkx, unpack, QK};
use crate::search::c_trunc_u8;
use formats::ggml_type::GgmlType;

/// `block_q4_1`: `ggml_half d; ggml_half m; uint8_t qs[QK4_1/2];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ4_1 {
    /// Scale, fp16 bits.
    pub d: u16,
    /// Minimum (added after scaling), fp16 bits.
    pub m: u16,
    /// Byte j: element j in the low nibble, element j + 16 in the high nibble.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl BlockQ4_1 {
    /// Quantizes one whole row with importance weights `qw` (one per value) into `out` (the
    /// row's bytes), as `quantize_row_*_impl`: the weights depend on σ² of the whole row, which
    /// is why this works on rows rather than blocks.
    pub(crate) fn quantize_row_imatrix(x: &[f32], qw: &[f32], out: &mut [u8]) {
        quantize_row_qkx(x, qw, out, 15, |d, the_min, l| BlockQ4_1 {
            d: f32_to_f16_bits(d),
            m: f32_to_f16_bits(-the_min),
            qs: pack_nibbles(l),
        });
    }
}

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const ELEMS: usize = QK;
    const BYTES: usize = 20;

    fn quantize(x: &[f32]) -> Self {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let xi0 = (c_trunc_u8((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let xi1 = (c_trunc_u8((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            *q = xi0 | (xi1 << 4);
        }
        BlockQ4_1 {
            d: f32_to_f16_bits(d),
            m: f32_to_f16_bits(min),
            qs,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = half::f16::from_bits(self.d).to_f32();
        let m = half::f16::from_bits(self.m).to_f32();
        for (o, &q) in y.iter_mut().zip(&unpack(&self.qs, 0)) {
            *o = f32::from(q) * d + m;
        }
    }

    fn read(bytes: &[u8]) -> Self {
        BlockQ4_1 {
            d: le_u16(bytes, 0),
            m: le_u16(bytes, 2),
            qs: le_bytes(bytes, 4),
        }
    }

    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.m.to_le_bytes());
        put(out, 4, &self.qs);
    }
}
