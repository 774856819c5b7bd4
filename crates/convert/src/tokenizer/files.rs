//! Reading the HF tokenizer files of a checkpoint directory: `tokenizer.json` (required),
//! `tokenizer_config.json` and `config.json` (optional), each parsed once.
//!
//! `tokenizer.json` is parsed into typed structs except for the sections whose shape varies by
//! type (`normalizer`, `pre_tokenizer`, `post_processor`) and the model's `vocab`/`merges`, which
//! stay `serde_json::Value` so a non-BPE model (whose `vocab` is a list) gets a clear "not BPE"
//! error rather than a serde type error.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ConvertError, Result};

/// Name of the HF fast-tokenizer file.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// Name of the HF tokenizer config (special tokens, `add_*_token`, chat template).
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
/// Name of the model config, consulted for `*_token_id` fallbacks like gguf-py's `SpecialVocab`.
pub const CONFIG_JSON: &str = "config.json";

/// The parts of `tokenizer.json` the GGUF metadata needs.
#[derive(Debug, Deserialize)]
pub struct TokenizerJson {
    /// Added tokens (special and not), with explicit ids.
    #[serde(default)]
    pub added_tokens: Vec<AddedToken>,
    /// The normalizer section (`null` when absent).
    #[serde(default)]
    pub normalizer: Value,
    /// The pre-tokenizer section (`null` when absent).
    #[serde(default)]
    pub pre_tokenizer: Value,
    /// The post-processor section (`null` when absent).
    #[serde(default)]
    pub post_processor: Value,
    /// The model section.
    pub model: Model,
}

/// One entry of `added_tokens`.
#[derive(Debug, Clone, Deserialize)]
pub struct AddedToken {
    /// The token id.
    pub id: u64,
    /// The token text.
    pub content: String,
    /// Whether HF treats it as a special token (skipped when decoding).
    #[serde(default)]
    pub special: bool,
    /// Whether the normalizer runs on it before matching (HF's default for added tokens is true).
    #[serde(default = "default_true")]
    pub normalized: bool,
}

fn default_true() -> bool {
    true
}

/// The `model` section of `tokenizer.json`.
#[derive(Debug, Deserialize)]
pub struct Model {
    /// `BPE`, `Unigram`, `WordPiece`, `WordLevel`; may be absent in old files.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// token → id (a map for BPE).
    #[serde(default)]
    pub vocab: Value,
    /// Merges, either `"a b"` strings or `["a", "b"]` pairs.
    #[serde(default)]
    pub merges: Value,
}

/// Everything read from a checkpoint directory for the tokenizer metadata.
#[derive(Debug)]
pub struct Files {
    /// Path of `tokenizer.json` (for error messages).
    pub tokenizer_path: PathBuf,
    /// Parsed `tokenizer.json`.
    pub tokenizer: TokenizerJson,
    /// Path of `tokenizer_config.json` (for error messages).
    pub config_path: PathBuf,
    /// Parsed `tokenizer_config.json`, `None` when absent.
    pub tokenizer_config: Option<Value>,
    /// Parsed `config.json`, `None` when absent.
    pub model_config: Option<Value>,
}

/// A tokenizer error about `path`.
pub fn err(path: &Path, detail: impl Into<String>) -> ConvertError {
    ConvertError::Tokenizer {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| ConvertError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = read(path)?;
    let v =
        serde_json::from_slice(&bytes).map_err(|e| err(path, format!("not valid JSON: {e}")))?;
    Ok(Some(v))
}

/// Reads and parses the tokenizer files of `dir`. A missing `tokenizer.json` is an error (r1q
/// converts only checkpoints with an HF fast tokenizer); the other two files are optional.
pub fn load(dir: &Path) -> Result<Files> {
    let tokenizer_path = dir.join(TOKENIZER_JSON);
    if !tokenizer_path.is_file() {
        return Err(err(
            dir,
            format!(
                "no {TOKENIZER_JSON} in this directory; r1q needs the Hugging Face fast-tokenizer \
                 file that the release ships beside config.json"
            ),
        ));
    }
    let bytes = read(&tokenizer_path)?;
    let tokenizer: TokenizerJson = serde_json::from_slice(&bytes)
        .map_err(|e| err(&tokenizer_path, format!("not a valid tokenizer.json: {e}")))?;
    drop(bytes);
    let config_path = dir.join(TOKENIZER_CONFIG_JSON);
    let tokenizer_config = read_optional_json(&config_path)?;
    if let Some(c) = &tokenizer_config {
        if !c.is_object() {
            return Err(err(&config_path, "expected a JSON object"));
        }
    }
    let model_config = read_optional_json(&dir.join(CONFIG_JSON))?;
    Ok(Files {
        tokenizer_path,
        tokenizer,
        config_path,
        tokenizer_config,
        model_config,
    })
}
