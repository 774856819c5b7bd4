//! What the pre-tokenizer named X is: the `tokenizer.ggml.pre` names of the DeepSeek families
//! (and GPT-2's default) with the Split regexes llama.cpp applies for each, verbatim as in
//! `src/llama-vocab.cpp` (llama-cpp-python 0.3.36) and the families' `tokenizer.json`.
//!
//! Data only. Exists here, below both users, because convert (which recognises a
//! `tokenizer.json` pre-tokenizer by comparing its regexes with these) and verify (which
//! tokenizes with the regexes a GGUF's `pre` names) must agree on the same strings; a copy in
//! each would drift.

/// DeepSeek-V3/R1 (`deepseek-v3`): digits in runs of up to three.
pub const DEEPSEEK_V3_DIGITS: &str = "\\p{N}{1,3}";
/// DeepSeek-V3/R1: CJK ideographs, hiragana and katakana runs.
pub const DEEPSEEK_V3_CJK: &str = "[一-龥぀-ゟ゠-ヿ]+";
/// DeepSeek-V3/R1: punctuation, letters and whitespace (contains literal CR/LF characters).
pub const DEEPSEEK_V3_WORDS: &str = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
/// Qwen2 / R1-Distill-Qwen (`deepseek-r1-qwen`, `qwen2`): like Llama 3 but single digits.
pub const QWEN2: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/// Llama 3 / R1-Distill-Llama (`llama-bpe`): digits in runs of up to three.
pub const LLAMA3: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/// GPT-2 (`gpt-2`, `default`).
pub const GPT2: &str =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/// One pre-tokenizer: the `tokenizer.ggml.pre` names that mean it, its Split regexes (applied
/// in order, each `Isolated`, then byte-level mapping) and whether llama.cpp sets
/// `ignore_merges` (a word that is itself a token is emitted whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizer {
    /// Names (`tokenizer.ggml.pre` values) that select it, the canonical one first.
    pub names: &'static [&'static str],
    /// The Split regexes, in order.
    pub regexes: &'static [&'static str],
    /// llama.cpp's `ignore_merges` for it.
    pub ignore_merges: bool,
}

/// Every pre-tokenizer r1q knows.
pub const PRE_TOKENIZERS: [PreTokenizer; 4] = [
    PreTokenizer {
        names: &["deepseek-v3"],
        regexes: &[DEEPSEEK_V3_DIGITS, DEEPSEEK_V3_CJK, DEEPSEEK_V3_WORDS],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["deepseek-r1-qwen", "qwen2"],
        regexes: &[QWEN2],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["llama-bpe", "llama3", "llama-v3"],
        regexes: &[LLAMA3],
        ignore_merges: true,
    },
    PreTokenizer {
        names: &["gpt-2", "default"],
        regexes: &[GPT2],
        ignore_merges: false,
    },
];

/// The names a user or a GGUF may give, for messages (`default` is implied by an absent key).
pub const NAMES: [&str; 7] = [
    "deepseek-v3",
    "deepseek-r1-qwen",
    "qwen2",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "gpt-2",
];

/// The pre-tokenizer named `name`, if known.
pub fn by_name(name: &str) -> Option<&'static PreTokenizer> {
    PRE_TOKENIZERS.iter().find(|p| p.names.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_resolves() {
        for n in NAMES.iter().chain(&["default"]) {
            assert!(by_name(n).is_some(), "{n}");
        }
        assert!(by_name("unknown").is_none());
        assert_eq!(by_name("qwen2").map(|p| p.regexes), Some(&[QWEN2][..]));
    }
}
