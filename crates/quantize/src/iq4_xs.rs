//! IQ4_XS (REFERENCE §2.3, §2.6): 256 values per super-block in 8 sub-blocks of 32; an fp16
//! super-scale, eight 6-bit sub-scales (low nibbles in `scales_l`, high 2 bits in `scales_h`,
//! stored +32) and nibble indices into `kvalues_iq4nl`. y = d·(ls − 32)·T[q].
//!
//! Quantized by `quantize_row_iq4_nl_impl(256, 32, …, ntry = 7)` (see [`quantize_iq4_impl`]),
//! with weights x² without an imatrix, qw·√(σ² + x²) with one.

use crate::block::Block;
use crate::iq4_nl::{dequantize_iq4_block, quantize_iq4_impl, Iq4Packed, QK4_NL};
use crate::legacy::{le_bytes, le_u16, put};
use formats::ggml_type::GgmlType;

/// Elements per IQ4_XS super-block (`QK_K`).
const QK_K: usize = 256;

/// `block_iq4_xs`: `ggml_half d; uint16_t scales_h; uint8_t scales_l[QK_K/64];
/// uint8_t qs[QK_K/2];`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockIq4Xs {
    /// Super-scale, fp16 bits.
    pub d: u16,
    /// Bits 2b..2b+1: high 2 bits of sub-block b's stored scale.
    pub scales_h: u16,
    /// Nibble (b mod 2) of byte b/2: low 4 bits of sub-block b's stored scale.
    pub scales_l: [u8; QK_K / 64],
    /// Sub-block b: byte 16b + j holds elements 32b + j (low) and 32b + 16 + j (high).
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIq4Xs>() == 136);

impl From<Iq4Packed<{ QK_K / 2 }>> for BlockIq4Xs {
    fn from(p: Iq4Packed<{ QK_K / 2 }>) -> Self {
        BlockIq4Xs {
            d: p.d,
            scales_h: p.scales_h,
            scales_l: p.scales_l,
            qs: p.qs,
        }
    }
}

impl BlockIq4Xs {
    /// Quantizes one block with importance weights `qw` (this block's slice of the imatrix
    /// row): the same ntry = 7 search with weights qw·√(σ² + x²) instead of x².
    pub(crate) fn quantize_imatrix(x: &[f32], qw: &[f32]) -> Self {
        quantize_iq4_impl::<{ QK_K / 2 }>(x, Some(qw)).into()
    }
}

impl Block for BlockIq4Xs {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const ELEMS: usize = QK_K;
    const BYTES: usize = 136;

    fn quantize(x: &[f32]) -> Self {
        quantize_iq4_impl::<{ QK_K / 2 }>(x, None).into()
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = half::f16::from_bits(self.d).to_f32();
        for (ib, (yb, qs)) in y
            .chunks_exact_mut(QK4_NL)
            .zip(self.qs.chunks_exact(16))
            .enumerate()
        {
            let ls = i32::from((self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf)
                | (i32::from((self.scales_h >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            dequantize_iq4_block(dl, qs, yb);
        }
    }

    fn read(bytes: &[u8]) -> Self {
        BlockIq4Xs {
            d: le_u16(bytes, 0),
            scales_h: le_u16(bytes, 2),
            scales_l: le_bytes(bytes, 4),
            qs: le_bytes(bytes, 8),
        }
    }

    fn write(&self, out: &mut [u8]) {
        put(out, 0, &self.d.to_le_bytes());
        put(out, 2, &self.scales_h.to_le_bytes());
        put(out, 4, &self.scales_l);
        put(out, 8, &self.qs);
    }
}
