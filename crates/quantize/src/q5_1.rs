//! Q5_1 (REFERENCE §2.3, §2.6): 32 values per block, fp16 scale and minimum, 5-bit levels as
//! Q5_0 (`qh` + `qs`), y = d·q + m.
//!
//! Without importance weights `quantize_row_q5_1_ref`: d = (max − min)/31, m = min,
//! q = trunc((x − min)·(1/d) + 0.5) (no clamp in C). With weights `quantize_row_q5_1_impl`:
//! w = qw·√(σ²_row + x²), `make_qkx3_quants(32, 31, …, −0.9, 0.05, 36, squared error)`.

use crate::block::Block;
use crate::cast::f32_to_f16_bits;
use crate::legacy::{
    le_bytes, le_u16, le_u32, pack_high_bits, pack_nibbles, put, quantize_row_qkx, unpack, QK,
};
use crate::search::c_trunc_u8;
use formats::ggml_type::GgmlType;

/// `block_q5_1`: `ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[QK5_1/2];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockQ5_1 {
    /// Scale, fp16 bits.
    pub d: u16,
    /// Minimum, fp16 bits.
    pub m: u16,
    /// 5th bits, little-endian: bit e is bit 4 of element e.
    pub qh: [u8; 4],
    /// Low nibbles as Q4_0.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl BlockQ5_1 {
    /// Quantizes one whole row with importance weights `qw` (one per value) into `out` (the
    /// row's bytes), as `quantize_row_*_impl`: the weights depend on σ² of the whole row, which
    /// is why this works on rows rather than blocks.
    pub(crate) fn quantize_row_imatrix(x: &[f32], qw: &[f32], out: &mut [u8]) {
        quantize_row_qkx(x, qw, out, 31, |d, the_min, l| Self::pack(d, -the_min, l));
    }

    fn pack(d: f32, m: f32, l: &[u8; QK]) -> Self {
        BlockQ5_1 {
            d: f32_to_f16_bits(d),
            m: f32_to_f16_bits(m),
            qh: pack_high_bits(l).to_le_bytes(),
            qs: pack_nibbles(l),
        }
    }
}

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const ELEMS: usize = QK;
    const BYTES: usize = 24;

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
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut l = [0u8; QK];
        for (q, &v) in l.iter_mut().zip(x) {
            *q = c_trunc_u8((v - min) * id + 0.5);
        }
        Self::pack(d, min, &l)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = half::f16::from_bits(self.d).to_f32();
        let m = half::f16::from_bits(self.m).to_f32();
        let l = unpack(&self.qs, u32::from_le_bytes(self.qh));
        for (o, &q) in y.iter_mut().zip(&l) {
            *o = f32::from(q) * d + m;
        }
    }

    fn read(bytes: &[u8]) -> Self {
        BlockQ5_1 {
            d: le_u16(bytes, 0),
            m: le_u16(bytes, 2),
            qh: le_u32(bytes, 4).to_le_bytes(),
            qs: le_bytes(bytes, 8),
        }
    }

    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.m.to_le_bytes());
        put(out, 4, &self.qh);
        put(out, 8, &self.qs);
    }
}
