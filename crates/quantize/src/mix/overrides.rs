//! `--tensor-type NAME=TYPE` and the type names of `--output-tensor-type` /
//! `--token-embedding-type` (REFERENCE §3.8), parsed as llama-quantize parses them.

use formats::ggml_type::GgmlType;
use regex::Regex;

use super::MixError;

/// One `--tensor-type` rule: a regex searched anywhere in the tensor name, and the type it forces.
///
/// Exists so rules are compiled once and matched with llama-quantize's semantics (NAME lower-cased,
/// `std::regex_search`, i.e. unanchored; first matching rule wins).
#[derive(Debug, Clone)]
pub struct TensorTypeOverride {
    /// The compiled pattern (from the lower-cased NAME).
    pub pattern: Regex,
    /// The forced type.
    pub ggml_type: GgmlType,
}

impl TensorTypeOverride {
    /// Parses `NAME=TYPE` like `parse_tensor_type`: split at the first `=`, NAME non-empty and
    /// lower-cased, TYPE a ggml type name (any case). NAME is compiled with the `regex` crate,
    /// whose syntax agrees with ECMAScript for the patterns people write (literals, `.`, classes,
    /// alternation, anchors, repetition); look-around and back-references are rejected with an
    /// error instead of being silently misread.
    pub fn parse(arg: &str) -> Result<Self, MixError> {
        let bad = |why: String| MixError::BadOverride {
            arg: arg.to_owned(),
            why,
        };
        let (name, ty) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=TYPE".into()))?;
        if name.is_empty() {
            return Err(bad("missing tensor name".into()));
        }
        if ty.is_empty() {
            return Err(bad("missing quantization type".into()));
        }
        let ggml_type = parse_type(ty).ok_or_else(|| bad(format!("invalid ggml type '{ty}'")))?;
        let pattern = Regex::new(&name.to_ascii_lowercase()).map_err(|e| bad(e.to_string()))?;
        Ok(Self { pattern, ggml_type })
    }

    /// Whether the rule applies to `name` (unanchored search).
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.is_match(name)
    }
}

/// A ggml type name as llama-quantize's `parse_ggml_type` accepts it (case-insensitive).
pub fn parse_type(name: &str) -> Option<GgmlType> {
    GgmlType::from_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_llama_quantize() {
        let o = TensorTypeOverride::parse("FFN_DOWN=Q8_0").unwrap();
        assert_eq!(o.ggml_type, GgmlType::Q8_0);
        assert!(o.matches("blk.3.ffn_down_exps.weight"));
        assert!(!o.matches("blk.3.ffn_up.weight"));
        let o = TensorTypeOverride::parse(r"blk\.[0-2]\.attn_.*=q6_k").unwrap();
        assert!(o.matches("blk.1.attn_k_b.weight"));
        assert!(!o.matches("blk.10.attn_k_b.weight"));
        assert!(TensorTypeOverride::parse("ffn_down").is_err());
        assert!(TensorTypeOverride::parse("=q8_0").is_err());
        assert!(TensorTypeOverride::parse("ffn_down=").is_err());
        assert!(TensorTypeOverride::parse("ffn_down=q9_9").is_err());
        assert!(TensorTypeOverride::parse("(?=x)=q8_0").is_err());
    }
}
