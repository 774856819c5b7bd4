//! Deciding `tokenizer.ggml.pre` from the `pre_tokenizer` section of `tokenizer.json`.
//!
//! llama.cpp's converter hashes the token ids HF produces for a probe text (REFERENCE §4.6); that
//! needs the HF runtime. Instead we compare the pre-tokenizer's split regexes verbatim with the
//! ones llama.cpp hard-codes for each pre-type — the only thing the pre-type changes is that
//! split, so an exact match means identical tokenization. Anything else is refused with a hint to
//! pass `--tokenizer-pre`, rather than guessed.

use std::path::Path;

use formats::tokenizer_pre::{
    DEEPSEEK_V3_CJK, DEEPSEEK_V3_DIGITS, DEEPSEEK_V3_WORDS, LLAMA3, QWEN2,
};
use serde_json::Value;

use super::files::err;
use crate::error::Result;

/// The BOS text that makes llama.cpp's hash say `deepseek-r1-qwen` rather than `qwen2`.
const DEEPSEEK_BOS: &str = "<｜begin▁of▁sentence｜>";

/// The pre-tokenizer names r1q can detect, for messages.
pub const DETECTED: [&str; 4] = ["deepseek-v3", "deepseek-r1-qwen", "qwen2", "llama-bpe"];

/// Every `tokenizer.ggml.pre` string the vendored llama.cpp (llama-cpp-python 0.3.36,
/// `src/llama-vocab.cpp`) accepts for a BPE vocabulary; any other string makes llama.cpp refuse
/// the model ("unknown pre-tokenizer type"), so `--tokenizer-pre` is checked against this list.
pub const KNOWN: &[&str] = &[
    "default",
    "minicpm5",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "spark2_5",
    "youtu",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jais-2",
    "gemma4",
    "granite-embed-multi-311m",
    "sarvam-moe",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "whitespace",
    "refact",
    "command-r",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "qwen35",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "exaone4",
    "exaone-moe",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "granite-embed-multi-97m",
    "tiny_aya",
    "cohere2moe",
    "superbpe",
    "trillion",
    "granite-docling",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "seed-coder",
    "hunyuan",
    "hunyuan-dense",
    "hy_v4",
    "joyai-llm",
    "kimi-k2",
    "ufakzeka",
    "grok-2",
    "afmoe",
    "laguna",
    "minimax-m2",
    "solar-open",
    "mellum2",
];

fn hint() -> String {
    format!(
        "pass --tokenizer-pre NAME (one of {}) if you know which it is",
        DETECTED.join(", ")
    )
}

/// Checks a user-supplied `--tokenizer-pre` against [`KNOWN`].
pub fn validate_override(path: &Path, name: &str) -> Result<()> {
    if KNOWN.contains(&name) {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "--tokenizer-pre {name:?} is not a pre-tokenizer llama.cpp knows; for the DeepSeek \
                 families use one of {}",
                DETECTED.join(", ")
            ),
        ))
    }
}

/// The regex of a `Split` pre-tokenizer that isolates matches (the only kind these families
/// use), or `None` for anything else.
fn isolated_split_regex(v: &Value) -> Option<&str> {
    if v.get("type")?.as_str()? != "Split"
        || v.get("behavior")?.as_str()? != "Isolated"
        || v.get("invert").and_then(Value::as_bool).unwrap_or(false)
    {
        return None;
    }
    v.get("pattern")?.get("Regex")?.as_str()
}

/// Whether `v` is a `ByteLevel` pre-tokenizer that only maps bytes (no prefix space, no GPT-2
/// regex of its own — HF's default for `use_regex` is true, so it must be present and false).
fn is_plain_byte_level(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("ByteLevel")
        && v.get("add_prefix_space").and_then(Value::as_bool) == Some(false)
        && v.get("use_regex").and_then(Value::as_bool) == Some(false)
}

/// The `pre` string for a pre-tokenizer section; `bos` is the configured BOS text (it separates
/// `deepseek-r1-qwen` from `qwen2`, which tokenize text identically).
pub fn detect(path: &Path, pre_tokenizer: &Value, bos: Option<&str>) -> Result<&'static str> {
    let steps: Vec<&Value> = match pre_tokenizer.get("type").and_then(Value::as_str) {
        Some("Sequence") => pre_tokenizer
            .get("pretokenizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre_tokenizer],
        None => Vec::new(),
    };
    let splits = match steps.split_last() {
        Some((last, splits)) if is_plain_byte_level(last) => splits,
        _ => return Err(unrecognised(path, pre_tokenizer)),
    };
    let regexes: Option<Vec<&str>> = splits.iter().map(|s| isolated_split_regex(s)).collect();
    let name = match regexes.as_deref() {
        Some([DEEPSEEK_V3_DIGITS, DEEPSEEK_V3_CJK, DEEPSEEK_V3_WORDS]) => "deepseek-v3",
        Some([QWEN2]) if bos == Some(DEEPSEEK_BOS) => "deepseek-r1-qwen",
        Some([QWEN2]) => "qwen2",
        Some([LLAMA3]) => "llama-bpe",
        _ => return Err(unrecognised(path, pre_tokenizer)),
    };
    Ok(name)
}

fn unrecognised(path: &Path, pre_tokenizer: &Value) -> crate::ConvertError {
    let mut shown = pre_tokenizer.to_string();
    if shown.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    err(
        path,
        format!("unrecognised pre-tokenizer {shown}; {}", hint()),
    )
}
