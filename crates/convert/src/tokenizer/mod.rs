//! HF tokenizer (`tokenizer.json` + `tokenizer_config.json`) → GGUF `tokenizer.*` metadata, the
//! way llama.cpp's `convert_hf_to_gguf.py` writes it for the three DeepSeek families
//! (`_set_vocab_gpt2`, REFERENCE §4.5–4.6), without the Python/HF runtime.
//!
//! - [`files`]: reading and parsing the files once;
//! - [`vocab`]: token list, token types, merges (`get_vocab_base`);
//! - [`pre`]: `tokenizer.ggml.pre` from the pre-tokenizer regexes (instead of the probe hash);
//! - [`special`]: special ids, `add_*_token`, chat template (gguf-py `SpecialVocab`).

pub mod files;
pub mod pre;
pub mod special;
pub mod vocab;

use std::path::Path;

use formats::gguf::{GgufArray, GgufValue};

use crate::error::Result;
use files::err;

/// `tokenizer.ggml.model` for byte-level BPE (all three families).
pub const MODEL_GPT2: &str = "gpt2";

/// The `tokenizer.*` keys for the checkpoint in `dir`, in llama.cpp's order: `model`, `pre`,
/// `tokens`, `token_type`, `merges`, the special-token ids, `add_*_token`, `chat_template`.
///
/// `vocab_size` is config.json's (the embedding's row count): the token list is padded to it
/// with `[PAD{i}]`/UNUSED entries, and a tokenizer defining more ids is an error, because llama.cpp
/// requires one token per embedding row. `pre_override` (the CLI's `--tokenizer-pre`) skips
/// detection; it must be a name llama.cpp accepts ([`pre::KNOWN`]).
///
/// Deliberate parity decision: `add_bos_token`/`add_eos_token` follow the vendored gguf-py
/// `SpecialVocab`, where a `ByteLevel` post-processor means false and wins over
/// tokenizer_config.json — so all three DeepSeek families get `add_bos_token = false`, like a GGUF
/// from current llama.cpp (see [`special::collect`], REFERENCE §4.5).
pub fn gguf_metadata(
    dir: &Path,
    vocab_size: usize,
    pre_override: Option<&str>,
) -> Result<Vec<(String, GgufValue)>> {
    let files = files::load(dir)?;
    let tpath = files.tokenizer_path.as_path();
    let tok = &files.tokenizer;
    if let Some(kind) = tok.model.kind.as_deref() {
        if kind != "BPE" {
            return Err(err(
                tpath,
                format!(
                    "model type {kind:?} is not supported; r1q converts byte-level BPE tokenizers \
                     (model type \"BPE\") only"
                ),
            ));
        }
    }
    if vocab_size == 0 {
        return Err(err(tpath, "vocab_size is 0"));
    }

    let special = special::collect(&files)?;
    let pre = match pre_override {
        Some(name) => {
            pre::validate_override(tpath, name)?;
            name.to_owned()
        }
        None => pre::detect(tpath, &tok.pre_tokenizer, special.bos_content.as_deref())?.to_owned(),
    };
    let vocab = vocab::build(tpath, tok, vocab_size)?;
    let merges = vocab::merges(tpath, tok)?;

    let mut out: Vec<(String, GgufValue)> = Vec::with_capacity(16);
    out.push(("tokenizer.ggml.model".into(), MODEL_GPT2.into()));
    out.push(("tokenizer.ggml.pre".into(), pre.into()));
    out.push((
        "tokenizer.ggml.tokens".into(),
        GgufArray::strings(vocab.tokens).into(),
    ));
    out.push((
        "tokenizer.ggml.token_type".into(),
        GgufArray::i32s(vocab.types.iter().map(|&t| t as i32)).into(),
    ));
    if !merges.is_empty() {
        out.push((
            "tokenizer.ggml.merges".into(),
            GgufArray::strings(merges).into(),
        ));
    }
    out.extend(special.entries(tpath, vocab_size)?);
    Ok(out)
}
