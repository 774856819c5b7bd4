//! The ggml tensor type table (REFERENCE §2.1): ids, names, block sizes and bytes per block.
//!
//! Every size computation in the workspace (GGUF tensor infos, quantization plans, size budgets)
//! goes through this one table so that a wrong number can only be wrong in one place.

use std::fmt;

/// A ggml tensor element type as stored in GGUF tensor infos (`enum ggml_type` in `ggml.h`).
///
/// Exists so that tensor types are never passed around as bare integers: every id that current
/// llama.cpp knows is a variant; removed ids (4, 5, 31–33, 36–38) and ids ≥ 43 are not.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE float.
    F16 = 1,
    /// 4-bit, 32-element blocks, one fp16 scale.
    Q4_0 = 2,
    /// 4-bit, 32-element blocks, fp16 scale and minimum.
    Q4_1 = 3,
    /// 5-bit, 32-element blocks, one fp16 scale.
    Q5_0 = 6,
    /// 5-bit, 32-element blocks, fp16 scale and minimum.
    Q5_1 = 7,
    /// 8-bit, 32-element blocks, one fp16 scale.
    Q8_0 = 8,
    /// 8-bit activation format with scale and sum (never in model files).
    Q8_1 = 9,
    /// 2-bit K-quant, 256-element super-blocks.
    Q2_K = 10,
    /// 3-bit K-quant.
    Q3_K = 11,
    /// 4-bit K-quant.
    Q4_K = 12,
    /// 5-bit K-quant.
    Q5_K = 13,
    /// 6-bit K-quant.
    Q6_K = 14,
    /// 8-bit K activation format (never in model files).
    Q8_K = 15,
    /// 2.0625-bit i-quant.
    IQ2_XXS = 16,
    /// 2.3125-bit i-quant.
    IQ2_XS = 17,
    /// 3.0625-bit i-quant.
    IQ3_XXS = 18,
    /// 1.5625-bit i-quant.
    IQ1_S = 19,
    /// 4.5-bit non-linear quant, 32-element blocks.
    IQ4_NL = 20,
    /// 3.4375-bit i-quant.
    IQ3_S = 21,
    /// 2.5625-bit i-quant.
    IQ2_S = 22,
    /// 4.25-bit non-linear quant, 256-element super-blocks.
    IQ4_XS = 23,
    /// 8-bit signed integer.
    I8 = 24,
    /// 16-bit signed integer.
    I16 = 25,
    /// 32-bit signed integer.
    I32 = 26,
    /// 64-bit signed integer.
    I64 = 27,
    /// 64-bit IEEE float.
    F64 = 28,
    /// 1.75-bit i-quant.
    IQ1_M = 29,
    /// bfloat16.
    BF16 = 30,
    /// Ternary 1.6875-bit quant.
    TQ1_0 = 34,
    /// Ternary 2.0625-bit quant.
    TQ2_0 = 35,
    /// Microscaling FP4, 32-element blocks, e8m0 scale.
    MXFP4 = 39,
    /// NVIDIA FP4, 64-element blocks.
    NVFP4 = 40,
    /// 1.125-bit quant, 128-element blocks.
    Q1_0 = 41,
    /// 2.25-bit quant, 64-element blocks.
    Q2_0 = 42,
}

/// (type, ggml_type_name, block size in elements, bytes per block), in id order.
const TABLE: &[(GgmlType, &str, u64, u64)] = &[
    (GgmlType::F32, "f32", 1, 4),
    (GgmlType::F16, "f16", 1, 2),
    (GgmlType::Q4_0, "q4_0", 32, 18),
    (GgmlType::Q4_1, "q4_1", 32, 20),
    (GgmlType::Q5_0, "q5_0", 32, 22),
    (GgmlType::Q5_1, "q5_1", 32, 24),
    (GgmlType::Q8_0, "q8_0", 32, 34),
    (GgmlType::Q8_1, "q8_1", 32, 36),
    (GgmlType::Q2_K, "q2_K", 256, 84),
    (GgmlType::Q3_K, "q3_K", 256, 110),
    (GgmlType::Q4_K, "q4_K", 256, 144),
    (GgmlType::Q5_K, "q5_K", 256, 176),
    (GgmlType::Q6_K, "q6_K", 256, 210),
    (GgmlType::Q8_K, "q8_K", 256, 292),
    (GgmlType::IQ2_XXS, "iq2_xxs", 256, 66),
    (GgmlType::IQ2_XS, "iq2_xs", 256, 74),
    (GgmlType::IQ3_XXS, "iq3_xxs", 256, 98),
    (GgmlType::IQ1_S, "iq1_s", 256, 50),
    (GgmlType::IQ4_NL, "iq4_nl", 32, 18),
    (GgmlType::IQ3_S, "iq3_s", 256, 110),
    (GgmlType::IQ2_S, "iq2_s", 256, 82),
    (GgmlType::IQ4_XS, "iq4_xs", 256, 136),
    (GgmlType::I8, "i8", 1, 1),
    (GgmlType::I16, "i16", 1, 2),
    (GgmlType::I32, "i32", 1, 4),
    (GgmlType::I64, "i64", 1, 8),
    (GgmlType::F64, "f64", 1, 8),
    (GgmlType::IQ1_M, "iq1_m", 256, 56),
    (GgmlType::BF16, "bf16", 1, 2),
    (GgmlType::TQ1_0, "tq1_0", 256, 54),
    (GgmlType::TQ2_0, "tq2_0", 256, 66),
    (GgmlType::MXFP4, "mxfp4", 32, 17),
    (GgmlType::NVFP4, "nvfp4", 64, 36),
    (GgmlType::Q1_0, "q1_0", 128, 18),
    (GgmlType::Q2_0, "q2_0", 64, 18),
];

impl GgmlType {
    /// Every type, in id order (for exhaustive tests and listings).
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// `GGML_TYPE_COUNT` of the llama.cpp we follow: every valid id is below it.
    pub const COUNT: u32 = 43;

    /// The type with GGUF id `id`; `None` for removed ids (4, 5, 31–33, 36–38) and ids ≥ 43, which
    /// a reader must reject.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self as u32
    }

    fn entry(self) -> &'static (GgmlType, &'static str, u64, u64) {
        // TABLE has one entry per variant in the same order as ALL; the search cannot fail, but
        // stay panic-free regardless by falling back to the first entry.
        TABLE.iter().find(|e| e.0 == self).unwrap_or(&TABLE[0])
    }

    /// The name `ggml_type_name` returns ("f32", "q4_K", "iq2_xxs", …).
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// The type whose `ggml_type_name` equals `name`, ignoring ASCII case (as
    /// `llama-quantize --tensor-type` does).
    pub fn from_name(name: &str) -> Option<Self> {
        TABLE
            .iter()
            .find(|e| e.1.eq_ignore_ascii_case(name))
            .map(|e| e.0)
    }

    /// Elements per block (1 for the plain float and integer types).
    pub fn block_size(self) -> u64 {
        self.entry().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().3
    }

    /// Storage cost in bits per weight: 8 · type_size / block_size.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.type_size() as f64 / self.block_size() as f64
    }

    /// Whether the type is quantized in blocks (block size > 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of one row of `ne0` elements; `None` when `ne0` is not a multiple of the block size
    /// (or the size overflows u64).
    pub fn row_size(self, ne0: u64) -> Option<u64> {
        let block = self.block_size();
        if !ne0.is_multiple_of(block) {
            return None;
        }
        (ne0 / block).checked_mul(self.type_size())
    }

    /// Bytes of a tensor with dimensions `dims` (ne order, innermost first; an empty slice is one
    /// element). `None` when the row length is not a multiple of the block size or on overflow.
    pub fn nbytes(self, dims: &[u64]) -> Option<u64> {
        let (ne0, rest) = match dims.split_first() {
            Some((first, rest)) => (*first, rest),
            None => (1, &[][..]),
        };
        rest.iter()
            .try_fold(self.row_size(ne0)?, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_enum_order_and_ids() {
        assert_eq!(TABLE.len(), GgmlType::ALL.len());
        for (entry, ty) in TABLE.iter().zip(GgmlType::ALL) {
            assert_eq!(entry.0, ty);
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
            assert!(ty.id() < GgmlType::COUNT);
        }
    }

    #[test]
    fn removed_and_out_of_range_ids_are_none() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 44, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
        let valid = (0..GgmlType::COUNT)
            .filter(|&i| GgmlType::from_id(i).is_some())
            .count();
        assert_eq!(valid, 35);
    }

    #[test]
    fn sizes_match_reference_table() {
        // (id, name, block, bytes) straight from REFERENCE §2.1.
        let reference: &[(u32, &str, u64, u64)] = &[
            (0, "f32", 1, 4),
            (1, "f16", 1, 2),
            (30, "bf16", 1, 2),
            (2, "q4_0", 32, 18),
            (3, "q4_1", 32, 20),
            (6, "q5_0", 32, 22),
            (7, "q5_1", 32, 24),
            (8, "q8_0", 32, 34),
            (9, "q8_1", 32, 36),
            (10, "q2_K", 256, 84),
            (11, "q3_K", 256, 110),
            (12, "q4_K", 256, 144),
            (13, "q5_K", 256, 176),
            (14, "q6_K", 256, 210),
            (15, "q8_K", 256, 292),
            (16, "iq2_xxs", 256, 66),
            (17, "iq2_xs", 256, 74),
            (18, "iq3_xxs", 256, 98),
            (19, "iq1_s", 256, 50),
            (20, "iq4_nl", 32, 18),
            (21, "iq3_s", 256, 110),
            (22, "iq2_s", 256, 82),
            (23, "iq4_xs", 256, 136),
            (29, "iq1_m", 256, 56),
            (34, "tq1_0", 256, 54),
            (35, "tq2_0", 256, 66),
            (39, "mxfp4", 32, 17),
            (40, "nvfp4", 64, 36),
            (41, "q1_0", 128, 18),
            (42, "q2_0", 64, 18),
            (24, "i8", 1, 1),
            (25, "i16", 1, 2),
            (26, "i32", 1, 4),
            (27, "i64", 1, 8),
            (28, "f64", 1, 8),
        ];
        assert_eq!(reference.len(), GgmlType::ALL.len());
        for &(id, name, block, bytes) in reference {
            let t = GgmlType::from_id(id).unwrap_or_else(|| panic!("id {id} missing"));
            assert_eq!(t.name(), name);
            assert_eq!(t.block_size(), block, "{name}");
            assert_eq!(t.type_size(), bytes, "{name}");
        }
    }

    #[test]
    fn bits_per_weight() {
        assert_eq!(GgmlType::Q4_K.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q6_K.bits_per_weight(), 6.5625);
        assert_eq!(GgmlType::IQ2_XS.bits_per_weight(), 2.3125);
        assert_eq!(GgmlType::Q1_0.bits_per_weight(), 1.125);
        assert_eq!(GgmlType::F32.bits_per_weight(), 32.0);
    }

    #[test]
    fn names_round_trip_case_insensitively() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_uppercase()), Some(t));
        }
        assert_eq!(GgmlType::from_name("Q4_k"), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_name("q4_2"), None);
        assert_eq!(GgmlType::from_name(""), None);
        assert_eq!(GgmlType::Q4_K.to_string(), "q4_K");
    }

    #[test]
    fn row_size_and_nbytes() {
        assert_eq!(GgmlType::Q4_K.row_size(7168), Some(28 * 144));
        assert_eq!(GgmlType::Q4_K.row_size(100), None);
        assert_eq!(GgmlType::Q8_0.row_size(0), Some(0));
        assert_eq!(GgmlType::F16.nbytes(&[7168, 18432]), Some(7168 * 18432 * 2));
        assert_eq!(GgmlType::F32.nbytes(&[]), Some(4));
        assert_eq!(GgmlType::Q8_0.nbytes(&[]), None);
        assert_eq!(
            GgmlType::Q8_0.nbytes(&[64, 3, 2, 5]),
            Some(2 * 34 * 3 * 2 * 5)
        );
        assert_eq!(GgmlType::Q8_0.nbytes(&[33, 2]), None);
        assert_eq!(GgmlType::F32.nbytes(&[u64::MAX, 2]), None);
        assert_eq!(GgmlType::F64.nbytes(&[1 << 32, 1 << 32]), None);
        assert_eq!(GgmlType::F32.nbytes(&[0, u64::MAX]), Some(0));
    }
}
