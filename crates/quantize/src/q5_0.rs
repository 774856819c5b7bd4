//! Q5_0 (REFERENCE §2.3, §2.6): 32 values per block, one fp16 scale, 5-bit levels split into
//! nibbles (`qs`) and a 32-bit word of 5th bits (`qh`), y = d·(q − 16).
//!
//! Without importance weights `quantize_row_q5_0_ref`: d = max/−16 (max = signed element of
//! largest magnitude), q = min(31, trunc(x·(1/d) + 16.5)). With weights `quantize_row_q5_0_impl`:
//! w = qw·√(σ²_row + x²), d = `make_qx_quants(32, 16, x, L, 1, w)`.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::legacy::{
    block32, le_bytes, le_u16, le_u32, pack_high_bits, pack_nibbles, put, quantize_row_qx,
    signed_absmax, unpack, QK,
};
use crate::search::c_trunc_u8;
use formats::ggml_type::GgmlType;

/// `block_q5_0`: `ggml_half d; uint8_t qh[4]; uint8_t qs[QK5_0/2];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ5_0 {
    /// Scale, fp16 bits.
    pub d: u16,
    /// 5th bits, little-endian: bit e is bit 4 of element e.
    pub qh: [u8; 4],
    /// Low nibbles as Q4_0.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl BlockQ5_0 {
    /// Quantizes one whole row with importance weights `qw` (one per value) into `out` (the
    /// row's bytes), as `quantize_row_*_impl`: the weights depend on σ² of the whole row, which
    /// is why this works on rows rather than blocks.
    pub(crate) fn quantize_row_imatrix(x: &[f32], qw: &[f32], out: &mut [u8]) {
        quantize_row_qx(x, qw, out, 16, |d, l| Self::pack(d, &l.map(|v| v as u8)));
    }

    fn pack(d: f32, l: &[u8; QK]) -> Self {
        BlockQ5_0 {
            d: f32_to_f16_bits(d),
            qh: pack_high_bits(l).to_le_bytes(),
            qs: pack_nibbles(l),
        }
    }
}

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const ELEMS: usize = QK;
    const BYTES: usize = 22;

    fn quantize(x: &[f32]) -> Self {
        let x = block32(x);
        let max = signed_absmax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut l = [0u8; QK];
        for (q, &v) in l.iter_mut().zip(x) {
            *q = (c_trunc_u8(v * id + 16.5) as i8).min(31) as u8;
        }
        Self::pack(d, &l)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = half::f16::from_bits(self.d).to_f32();
        let l = unpack(&self.qs, u32::from_le_bytes(self.qh));
        for (o, &q) in y.iter_mut().zip(&l) {
            *o = (i32::from(q) - 16) as f32 * d;
        }
    }

    fn read(bytes: &[u8]) -> Self {
        BlockQ5_0 {
            d: le_u16(bytes, 0),
            qh: le_u32(bytes, 2).to_le_bytes(),
            qs: le_bytes(bytes, 6),
        }
    }

    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.qh);
        put(out, 6, &self.qs);
    }
}
