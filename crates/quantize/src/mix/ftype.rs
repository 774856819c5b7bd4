//! The mixes (`llama_ftype`, REFERENCE §1.5) r1q offers, their llama-quantize names and default
//! types (`llama_ftype_get_default_type`).

use formats::ggml_type::GgmlType;

/// A quantization mix as named on the llama-quantize command line.
///
/// Exists so the CLI, the type chooser and the metadata writer (`general.file_type`) agree on one
/// list; the numbers are llama.cpp's `llama_ftype` values.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mix {
    /// All F32 (ftype 0).
    F32,
    /// F16 (1).
    F16,
    /// Q4_0 (2).
    Q4_0,
    /// Q4_1 (3).
    Q4_1,
    /// Q8_0 (7).
    Q8_0,
    /// Q5_0 (8).
    Q5_0,
    /// Q5_1 (9).
    Q5_1,
    /// Q2_K (10).
    Q2_K,
    /// Q3_K_S (11).
    Q3_K_S,
    /// Q3_K_M (12).
    Q3_K_M,
    /// Q3_K_L (13).
    Q3_K_L,
    /// Q4_K_S (14).
    Q4_K_S,
    /// Q4_K_M (15).
    Q4_K_M,
    /// Q5_K_S (16).
    Q5_K_S,
    /// Q5_K_M (17).
    Q5_K_M,
    /// Q6_K (18).
    Q6_K,
    /// Q2_K_S (21; llama-quantize requires an imatrix for it).
    Q2_K_S,
    /// IQ4_NL (25).
    IQ4_NL,
    /// IQ4_XS (30).
    IQ4_XS,
    /// BF16 (32).
    BF16,
}

impl Mix {
    /// Every mix, in ftype order.
    pub const ALL: [Mix; 20] = [
        Mix::F32,
        Mix::F16,
        Mix::Q4_0,
        Mix::Q4_1,
        Mix::Q8_0,
        Mix::Q5_0,
        Mix::Q5_1,
        Mix::Q2_K,
        Mix::Q3_K_S,
        Mix::Q3_K_M,
        Mix::Q3_K_L,
        Mix::Q4_K_S,
        Mix::Q4_K_M,
        Mix::Q5_K_S,
        Mix::Q5_K_M,
        Mix::Q6_K,
        Mix::Q2_K_S,
        Mix::IQ4_NL,
        Mix::IQ4_XS,
        Mix::BF16,
    ];

    /// The name llama-quantize prints and accepts ("Q4_K_M", "IQ4_XS", "BF16", …).
    pub fn name(self) -> &'static str {
        match self {
            Mix::F32 => "F32",
            Mix::F16 => "F16",
            Mix::Q4_0 => "Q4_0",
            Mix::Q4_1 => "Q4_1",
            Mix::Q8_0 => "Q8_0",
            Mix::Q5_0 => "Q5_0",
            Mix::Q5_1 => "Q5_1",
            Mix::Q2_K => "Q2_K",
            Mix::Q3_K_S => "Q3_K_S",
            Mix::Q3_K_M => "Q3_K_M",
            Mix::Q3_K_L => "Q3_K_L",
            Mix::Q4_K_S => "Q4_K_S",
            Mix::Q4_K_M => "Q4_K_M",
            Mix::Q5_K_S => "Q5_K_S",
            Mix::Q5_K_M => "Q5_K_M",
            Mix::Q6_K => "Q6_K",
            Mix::Q2_K_S => "Q2_K_S",
            Mix::IQ4_NL => "IQ4_NL",
            Mix::IQ4_XS => "IQ4_XS",
            Mix::BF16 => "BF16",
        }
    }

    /// The mix named `name`, ignoring ASCII case, including llama-quantize's aliases Q3_K
    /// (= Q3_K_M), Q4_K (= Q4_K_M) and Q5_K (= Q5_K_M).
    pub fn from_name(name: &str) -> Option<Mix> {
        let alias = match name.to_ascii_uppercase().as_str() {
            "Q3_K" => Some(Mix::Q3_K_M),
            "Q4_K" => Some(Mix::Q4_K_M),
            "Q5_K" => Some(Mix::Q5_K_M),
            _ => None,
        };
        alias.or_else(|| {
            Self::ALL
                .iter()
                .copied()
                .find(|m| m.name().eq_ignore_ascii_case(name))
        })
    }

    /// The `llama_ftype` value written as `general.file_type`.
    pub fn ftype(self) -> u32 {
        match self {
            Mix::F32 => 0,
            Mix::F16 => 1,
            Mix::Q4_0 => 2,
            Mix::Q4_1 => 3,
            Mix::Q8_0 => 7,
            Mix::Q5_0 => 8,
            Mix::Q5_1 => 9,
            Mix::Q2_K => 10,
            Mix::Q3_K_S => 11,
            Mix::Q3_K_M => 12,
            Mix::Q3_K_L => 13,
            Mix::Q4_K_S => 14,
            Mix::Q4_K_M => 15,
            Mix::Q5_K_S => 16,
            Mix::Q5_K_M => 17,
            Mix::Q6_K => 18,
            Mix::Q2_K_S => 21,
            Mix::IQ4_NL => 25,
            Mix::IQ4_XS => 30,
            Mix::BF16 => 32,
        }
    }

    /// The mix whose `llama_ftype` is `ftype` (for reading `general.file_type`).
    pub fn from_ftype(ftype: u32) -> Option<Mix> {
        Self::ALL.iter().copied().find(|m| m.ftype() == ftype)
    }

    /// The type every quantizable tensor starts from (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            Mix::F32 => GgmlType::F32,
            Mix::F16 => GgmlType::F16,
            Mix::BF16 => GgmlType::BF16,
            Mix::Q4_0 => GgmlType::Q4_0,
            Mix::Q4_1 => GgmlType::Q4_1,
            Mix::Q5_0 => GgmlType::Q5_0,
            Mix::Q5_1 => GgmlType::Q5_1,
            Mix::Q8_0 => GgmlType::Q8_0,
            Mix::Q2_K | Mix::Q2_K_S => GgmlType::Q2_K,
            Mix::Q3_K_S | Mix::Q3_K_M | Mix::Q3_K_L => GgmlType::Q3_K,
            Mix::Q4_K_S | Mix::Q4_K_M => GgmlType::Q4_K,
            Mix::Q5_K_S | Mix::Q5_K_M => GgmlType::Q5_K,
            Mix::Q6_K => GgmlType::Q6_K,
            Mix::IQ4_NL => GgmlType::IQ4_NL,
            Mix::IQ4_XS => GgmlType::IQ4_XS,
        }
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aliases_and_ftypes() {
        assert_eq!(Mix::from_name("q4_k_m"), Some(Mix::Q4_K_M));
        assert_eq!(Mix::from_name("Q4_K"), Some(Mix::Q4_K_M));
        assert_eq!(Mix::from_name("q3_k"), Some(Mix::Q3_K_M));
        assert_eq!(Mix::from_name("Q5_K"), Some(Mix::Q5_K_M));
        assert_eq!(Mix::from_name("bf16"), Some(Mix::BF16));
        assert_eq!(Mix::from_name("Q4_K_X"), None);
        for m in Mix::ALL {
            assert_eq!(Mix::from_name(m.name()), Some(m));
            assert_eq!(Mix::from_ftype(m.ftype()), Some(m));
        }
        assert_eq!(Mix::Q4_K_M.ftype(), 15);
        assert_eq!(Mix::IQ4_XS.ftype(), 30);
        assert_eq!(Mix::Q2_K_S.default_type(), GgmlType::Q2_K);
    }
}
