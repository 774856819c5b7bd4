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
    for_each_weighted_block, le_bytes, le_u16, pack_nibbles, put, signed_absmax, unpack, QK,
};
use crate::search::{c_trunc_u8, make_qx_quants};
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
        for_each_weighted_block(x, qw, out, Self::quantize_impl);
    }

    /// One block of `quantize_row_q4_0_impl` given its weights.
    fn quantize_impl(xb: &[f32], w: &[f32; QK]) -> Self {
        let mut l = [0i8; QK];
        let d = make_qx_quants(8, xb, &mut l, 1, Some(w));
        BlockQ4_0 {
            d: f32_to_f16_bits(d),
            qs: pack_nibbles(&l.map(|v| v as u8)),
        }
    }
}

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMS: usize = QK;
    const BYTES: usize = 18;

    fn quantize(x: &[f32]) -> Self {
        let max = signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            // MIN(15, (int8_t)(x*id + 8.5f)), stored through uint8_t
            let xi0 = (c_trunc_u8(x[j] * id + 8.5) as i8).min(15) as u8;
            let xi1 = (c_trunc_u8(x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            *q = xi0 | (xi1 << 4);
        }
        BlockQ4_0 {
            d: f32_to_f16_bits(d),
            qs,
        }
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
