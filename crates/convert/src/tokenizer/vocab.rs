//! Token list, token types and merges, as llama.cpp's `TextModel.get_vocab_base` and gguf-py's
//! `SpecialVocab` (merges) compute them from an HF fast tokenizer — without the HF runtime.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::files::{err, AddedToken, TokenizerJson};
use crate::error::Result;

/// `llama_token_type` values written to `tokenizer.ggml.token_type` (INT32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    /// An ordinary BPE token.
    Normal = 1,
    /// A special token llama.cpp never produces from plain text (BOS, EOS, `<｜User｜>`, …).
    Control = 3,
    /// A non-special added token, matched verbatim in text (`<think>`).
    UserDefined = 4,
    /// An id the tokenizer does not define (`[PAD{i}]` filler up to `vocab_size`).
    Unused = 5,
}

/// The token strings and their types, both exactly `vocab_size` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    /// Token text by id (byte-level "Ġ" form; `[PAD{i}]` for undefined ids).
    pub tokens: Vec<String>,
    /// Token type by id.
    pub types: Vec<TokenType>,
}

/// Whether an added token "looks special" although not flagged `special` — llama.cpp's
/// `does_token_look_special`, which makes e.g. `<｜User｜>` (full-width bars) and `<|fim_pad|>`
/// CONTROL tokens.
pub fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// Builds the id → token table like `get_vocab_base`: the HF vocabulary is `model.vocab` with the
/// added tokens laid over it (content → id, added tokens winning, as `tokenizer.get_vocab()` does),
/// then reversed. Ids not defined become `[PAD{i}]`/UNUSED up to `vocab_size`. Added tokens are
/// CONTROL when `special` or [`looks_special`], else USER_DEFINED with `▁` turned into a space.
///
/// Not replicated: llama.cpp first round-trips non-normalized added tokens through HF
/// encode/decode; with a byte-level decoder that is the identity for the tokens these families
/// have (ASCII or characters outside the byte map), so it is skipped.
pub fn build(path: &Path, tok: &TokenizerJson, vocab_size: usize) -> Result<Vocab> {
    let map = tok
        .model
        .vocab
        .as_object()
        .ok_or_else(|| err(path, "model.vocab is not a token → id map"))?;
    // content → id, model vocab first, added tokens override (HF `get_vocab(with_added_tokens)`).
    let mut by_content: HashMap<&str, u64> = HashMap::with_capacity(map.len() + 1024);
    for (content, id) in map {
        let id = id.as_u64().ok_or_else(|| {
            err(
                path,
                format!("model.vocab[{content:?}] = {id} is not a token id"),
            )
        })?;
        by_content.insert(content.as_str(), id);
    }
    let mut added_by_id: HashMap<u64, &AddedToken> = HashMap::new();
    let mut added_by_content: HashMap<&str, &AddedToken> = HashMap::new();
    for t in &tok.added_tokens {
        by_content.insert(t.content.as_str(), t.id);
        added_by_id.insert(t.id, t);
        added_by_content.insert(t.content.as_str(), t);
    }

    let max_id = by_content.values().copied().max();
    if let Some(max_id) = max_id {
        if max_id >= vocab_size as u64 {
            return Err(err(
                path,
                format!(
                    "the tokenizer defines token ids up to {max_id} ({} tokens) but config.json's \
                     vocab_size is {vocab_size}; the embedding has no row for them",
                    max_id + 1
                ),
            ));
        }
    }

    let mut reverse: Vec<Option<&str>> = vec![None; vocab_size];
    for (&content, &id) in &by_content {
        let Some(slot) = usize::try_from(id).ok().and_then(|i| reverse.get_mut(i)) else {
            continue; // unreachable: checked against vocab_size above
        };
        match slot {
            None => *slot = Some(content),
            Some(other) => {
                // Two texts share an id: an added token at that id wins over the model's entry.
                let added_here = added_by_id.get(&id).map(|t| t.content.as_str());
                if added_here == Some(content) {
                    *slot = Some(content);
                } else if added_here != Some(*other) {
                    return Err(err(
                        path,
                        format!("token id {id} is used by both {other:?} and {content:?}"),
                    ));
                }
            }
        }
    }

    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (i, entry) in reverse.iter().enumerate() {
        let Some(content) = *entry else {
            tokens.push(format!("[PAD{i}]"));
            types.push(TokenType::Unused);
            continue;
        };
        let added = added_by_id
            .get(&(i as u64))
            .filter(|t| t.content == content)
            .or_else(|| added_by_content.get(content));
        match added {
            Some(t) if t.special || looks_special(content) => {
                tokens.push(content.to_owned());
                types.push(TokenType::Control);
            }
            Some(_) => {
                tokens.push(content.replace('▁', " "));
                types.push(TokenType::UserDefined);
            }
            None => {
                tokens.push(content.to_owned());
                types.push(TokenType::Normal);
            }
        }
    }
    Ok(Vocab { tokens, types })
}

/// `model.merges` as `"left right"` strings, the way gguf-py's `SpecialVocab` writes them: string
/// entries verbatim; `[left, right]` pairs (transformers ≥ 4.45) joined by one space with any
/// space inside a part encoded as U+0120 (`Ġ`) so the split stays unambiguous.
pub fn merges(path: &Path, tok: &TokenizerJson) -> Result<Vec<String>> {
    let list = match &tok.model.merges {
        Value::Null => return Ok(Vec::new()),
        Value::Array(list) => list,
        _ => return Err(err(path, "model.merges is not a list")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let merged = match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => {
                    let enc = |s: &str| s.replace(' ', "\u{120}");
                    format!("{} {}", enc(a), enc(b))
                }
                _ => {
                    return Err(err(
                        path,
                        format!("model.merges[{i}] is not a pair of strings: {m}"),
                    ))
                }
            },
            _ => {
                return Err(err(
                    path,
                    format!("model.merges[{i}] is neither \"a b\" nor [\"a\", \"b\"]: {m}"),
                ))
            }
        };
        out.push(merged);
    }
    Ok(out)
}
