//! Tokenizer → GGUF `tokenizer.*` metadata (placeholder until the tokenizer work lands).

use crate::error::Result;
use formats::gguf::GgufValue;
use std::path::Path;

/// The `tokenizer.*` keys for the checkpoint in `dir`, with the vocabulary padded to
/// `vocab_size`; `pre_override` forces `tokenizer.ggml.pre`.
pub fn gguf_metadata(
    dir: &Path,
    vocab_size: usize,
    pre_override: Option<&str>,
) -> Result<Vec<(String, GgufValue)>> {
    let _ = (dir, vocab_size, pre_override);
    Ok(Vec::new())
}
