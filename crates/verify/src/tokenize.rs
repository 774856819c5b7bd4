//! Text → token ids exactly as llama.cpp tokenizes a GGUF's vocabulary (`tokenizer.ggml.*`,
//! REFERENCE §4.5–4.6), built on HF `tokenizers`.
//!
//! Why it matters: perplexity and KL divergence are only comparable with llama-perplexity's when
//! both score the same token ids. llama.cpp's BPE path is: split out special tokens (CONTROL only
//! when parsing special text, USER_DEFINED always — `tokenizer_st_partition`), pre-tokenize each
//! remaining fragment with the regex list its `tokenizer.ggml.pre` names, byte-level encode, apply
//! the merges by rank. That is a `tokenizers` BPE over the GGUF's token strings and merges with the
//! family's Split sequence + ByteLevel(use_regex = false), the USER_DEFINED tokens as non-special
//! added tokens, the CONTROL tokens as special added tokens, and `encode_special_tokens` set when
//! special text must not be parsed. No normalizer: llama.cpp's BPE path does not normalize.
//!
//! Not for: decoding for display beyond a best-effort [`Tokenizer::decode`] (llama.cpp's
//! detokenizer has its own space rules), or SentencePiece vocabularies (`tokenizer.ggml.model`
//! `llama`), which no DeepSeek family uses.

use std::path::{Path, PathBuf};

use formats::gguf::GgufValue;
use formats::tokenizer_pre;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub mod token_type {
    /// An ordinary BPE token (byte-level text).
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A special token (`<｜begin▁of▁sentence｜>`): matched in text only when parsing special.
    pub const CONTROL: i32 = 3;
    /// An added, non-special token (`<think>`): always matched in text.
    pub const USER_DEFINED: i32 = 4;
    /// A placeholder id (`[PAD129000]`): never produced.
    pub const UNUSED: i32 = 5;
    /// A raw byte token (`<0x0A>`, SentencePiece vocabularies).
    pub const BYTE: i32 = 6;
}

/// The `tokenizer.ggml.pre` values this module knows, for messages.
pub const KNOWN_PRE: [&str; 7] = tokenizer_pre::NAMES;

/// The Split regexes (applied in order, each `Isolated`) of a pre-tokenizer name, and whether
/// llama.cpp sets `ignore_merges` (a word that is itself a token is emitted whole).
fn pre_regexes(pre: &str) -> Option<(&'static [&'static str], bool)> {
    tokenizer_pre::by_name(pre).map(|p| (p.regexes, p.ignore_merges))
}

/// Why a tokenizer could not be built or could not encode.
///
/// Exists so the CLI prints one line naming the model file (or tokenizer.json) and the key or
/// value that was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct TokenizeError {
    /// The model or tokenizer file.
    pub path: PathBuf,
    /// What was wrong.
    pub problem: TokenizeProblem,
}

/// The ways tokenizer metadata can be wrong.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeProblem {
    /// A required `tokenizer.ggml.*` key is absent.
    #[error("metadata key '{0}' is missing")]
    MissingKey(&'static str),
    /// A key has the wrong type or an impossible value.
    #[error("metadata key '{key}': {problem}")]
    BadKey {
        /// The key.
        key: &'static str,
        /// What is wrong, including what was expected.
        problem: String,
    },
    /// `tokenizer.ggml.model` is not a byte-level BPE (`gpt2`).
    #[error("tokenizer model '{0}' is not supported (only 'gpt2' byte-level BPE, which every DeepSeek family uses)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module does not implement.
    #[error("pre-tokenizer '{0}' is not supported (known: {known})", known = KNOWN_PRE.join(", "))]
    UnsupportedPre(String),
    /// A merge is not `"left right"`.
    #[error("merge {index} {text:?} is not two tokens separated by one space")]
    BadMerge {
        /// Index in `tokenizer.ggml.merges`.
        index: usize,
        /// The merge text.
        text: String,
    },
    /// The `tokenizers` library refused the vocabulary, or failed to encode/decode.
    #[error("{0}")]
    Library(String),
}

fn err(path: &Path, problem: TokenizeProblem) -> TokenizeError {
    TokenizeError {
        path: path.to_path_buf(),
        problem,
    }
}

/// A tokenizer that produces llama.cpp's token ids for one vocabulary.
///
/// Cheap to clone relative to building (the vocabulary is shared by value, though: cloning copies
/// it).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    n_vocab: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    parse_special: bool,
    pre: String,
    path: PathBuf,
    /// Whether long texts may be encoded in pieces ([`text_pieces`]): true for the GGUF
    /// families' regex pre-tokenizers when no added token's text holds a newline.
    piecewise: bool,
}

/// Texts at least this long are encoded in pieces, in parallel (a 1 MB calibration text took
/// ~0.5 s on one thread, 11 % of a short imatrix run).
const PIECEWISE_MIN_BYTES: usize = 256 * 1024;

/// The size a piece reaches before it ends at the next safe boundary.
const PIECE_BYTES: usize = 64 * 1024;

/// `text` cut into consecutive pieces of at least `piece` bytes (the last may be shorter), each
/// cut right after a `\n` that is followed by an alphabetic character.
///
/// Why such a cut changes no token: every pre-tokenizer regex of the GGUF families (GPT-2,
/// llama-bpe, qwen2, deepseek-v3) ends a pre-token at a newline followed by a letter — the
/// newline runs (`\s*[\r\n]+`, ` ?[punct]+[\r\n]*`, `\s+`) stop there and no pattern puts a
/// newline before letters in one match — and BPE merges never cross pre-tokens. So encoding
/// the pieces separately and concatenating gives the ids of the whole text (tested against
/// llama-tokenize on whole 1 MB texts).
fn text_pieces(text: &str, piece: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::with_capacity(text.len() / piece.max(1) + 1);
    let mut start = 0;
    let mut at = piece;
    while at < bytes.len() {
        let Some(nl) = bytes[at..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let cut = at + nl + 1;
        // A '\n' byte is always a whole character, so `cut` is a char boundary.
        if text[cut..].chars().next().is_some_and(char::is_alphabetic) {
            pieces.push(&text[start..cut]);
            start = cut;
            at = cut + piece;
        } else {
            at = cut;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab)
            .field("pre", &self.pre)
            .field("bos", &self.bos)
            .field("add_bos", &self.add_bos)
            .field("parse_special", &self.parse_special)
            .finish()
    }
}

/// Looks `key` up in a metadata list.
fn lookup<'a>(kv: &'a [(String, GgufValue)], key: &str) -> Option<&'a GgufValue> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.{model, pre, tokens, token_type,
    /// merges, bos_token_id, eos_token_id, add_bos_token, add_eos_token}`). `path` names the
    /// model in errors. Special text is not parsed ([`Tokenizer::with_parse_special`] changes
    /// that), like llama-perplexity.
    pub fn from_gguf_metadata(
        path: &Path,
        kv: &[(String, GgufValue)],
    ) -> Result<Tokenizer, TokenizeError> {
        let get =
            |key: &'static str| lookup(kv, key).ok_or(err(path, TokenizeProblem::MissingKey(key)));
        let bad = |key: &'static str, problem: String| {
            err(path, TokenizeProblem::BadKey { key, problem })
        };

        let model = get("tokenizer.ggml.model")?
            .as_str()
            .ok_or_else(|| bad("tokenizer.ggml.model", "expected a string".into()))?;
        if model != "gpt2" {
            return Err(err(
                path,
                TokenizeProblem::UnsupportedModel(model.to_string()),
            ));
        }
        // llama.cpp treats an absent `pre` as "default" (GPT-2 regex).
        let pre = match lookup(kv, "tokenizer.ggml.pre") {
            Some(v) => v
                .as_str()
                .ok_or_else(|| bad("tokenizer.ggml.pre", "expected a string".into()))?,
            None => "default",
        };
        let (regexes, ignore_merges) = pre_regexes(pre)
            .ok_or_else(|| err(path, TokenizeProblem::UnsupportedPre(pre.to_string())))?;

        let tokens = get("tokenizer.ggml.tokens")?
            .as_array()
            .and_then(|a| a.as_strs())
            .ok_or_else(|| {
                bad(
                    "tokenizer.ggml.tokens",
                    "expected an array of strings".into(),
                )
            })?;
        let n_vocab = tokens.len();
        if n_vocab == 0 {
            return Err(bad(
                "tokenizer.ggml.tokens",
                "the vocabulary is empty".into(),
            ));
        }
        let types: Vec<i64> = match lookup(kv, "tokenizer.ggml.token_type") {
            Some(v) => v.as_array().and_then(|a| a.as_i64s()).ok_or_else(|| {
                bad(
                    "tokenizer.ggml.token_type",
                    "expected an array of integers".into(),
                )
            })?,
            None => vec![i64::from(token_type::NORMAL); n_vocab],
        };
        if types.len() != n_vocab {
            return Err(bad(
                "tokenizer.ggml.token_type",
                format!("{} entries for {n_vocab} tokens", types.len()),
            ));
        }
        let merges_raw = match lookup(kv, "tokenizer.ggml.merges") {
            Some(v) => v.as_array().and_then(|a| a.as_strs()).ok_or_else(|| {
                bad(
                    "tokenizer.ggml.merges",
                    "expected an array of strings".into(),
                )
            })?,
            None => Vec::new(),
        };
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (index, m) in merges_raw.iter().enumerate() {
            // llama.cpp: `word.find(' ', 1)` — the first space after the first character.
            let split = m
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    err(
                        path,
                        TokenizeProblem::BadMerge {
                            index,
                            text: m.to_string(),
                        },
                    )
                })?;
            merges.push((m[..split].to_string(), m[split + 1..].to_string()));
        }

        let id_key = |key: &'static str| -> Result<Option<u32>, TokenizeError> {
            match lookup(kv, key) {
                None => Ok(None),
                Some(v) => {
                    let id = v
                        .as_u32()
                        .ok_or_else(|| bad(key, "expected an unsigned integer".into()))?;
                    if id as usize >= n_vocab {
                        return Err(bad(
                            key,
                            format!("id {id} is outside the vocabulary of {n_vocab}"),
                        ));
                    }
                    Ok(Some(id))
                }
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let flag = |key: &'static str, default: bool| -> Result<bool, TokenizeError> {
            match lookup(kv, key) {
                None => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(key, "expected a bool".into())),
            }
        };
        // llama.cpp's defaults when the key is absent (`llama_vocab::impl::load`): the llama-bpe
        // family adds BOS, the DeepSeek-V3 and Qwen families do not (REFERENCE §4.5).
        let default_bos = matches!(pre, "llama-bpe" | "llama3" | "llama-v3");
        let add_bos = flag("tokenizer.ggml.add_bos_token", default_bos)? && bos.is_some();
        let add_eos = flag("tokenizer.ggml.add_eos_token", false)? && eos.is_some();

        // The BPE vocabulary: every token string → id; on duplicates the last id wins, like
        // llama.cpp's `token_to_id[text] = id` loop.
        let mut vocab = Vocab::default();
        for (id, t) in tokens.iter().enumerate() {
            vocab.insert((*t).to_string(), id as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| {
                err(
                    path,
                    TokenizeProblem::Library(format!("building the BPE model: {e}")),
                )
            })?;

        let mut pres: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
        for r in regexes {
            let split = Split::new(
                SplitPattern::Regex((*r).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| {
                err(
                    path,
                    TokenizeProblem::Library(format!("pre-tokenizer regex: {e}")),
                )
            })?;
            pres.push(split.into());
        }
        pres.push(ByteLevel::new(false, true, false).into());

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(pres)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let mut special = Vec::new();
        let mut user = Vec::new();
        let mut newline_in_added = false;
        for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
            // llama.cpp matches CONTROL, USER_DEFINED and UNKNOWN texts verbatim, with no
            // lstrip/rstrip/single-word rules for these families.
            let is_special =
                ty == i64::from(token_type::CONTROL) || ty == i64::from(token_type::UNKNOWN);
            let is_user = ty == i64::from(token_type::USER_DEFINED);
            if (!is_special && !is_user) || t.is_empty() {
                continue;
            }
            // Only the id the vocabulary map resolves this text to can be emitted for it.
            if inner.token_to_id(t) != Some(id as u32) {
                continue;
            }
            newline_in_added |= t.contains('\n');
            let tok = AddedToken::from((*t).to_string(), is_special).normalized(false);
            if is_special {
                special.push(tok);
            } else {
                user.push(tok);
            }
        }
        let lib = |e: tokenizers::Error| {
            err(
                path,
                TokenizeProblem::Library(format!("adding special tokens: {e}")),
            )
        };
        inner.add_special_tokens(special).map_err(lib)?;
        inner.add_tokens(user).map_err(lib)?;

        let mut t = Tokenizer {
            inner,
            n_vocab,
            bos,
            eos,
            add_bos,
            add_eos,
            parse_special: true,
            pre: pre.to_string(),
            path: path.to_path_buf(),
            piecewise: !newline_in_added,
        };
        t.set_parse_special(false);
        Ok(t)
    }

    /// Builds the tokenizer of a GGUF file's metadata ([`Tokenizer::from_gguf_metadata`]).
    pub fn from_gguf(file: &formats::gguf::GgufFile) -> Result<Tokenizer, TokenizeError> {
        Tokenizer::from_gguf_metadata(file.path(), file.metadata())
    }

    /// Loads an HF `tokenizer.json` as HF defines it (its own normalizer, pre-tokenizer and added
    /// tokens). BOS handling follows its post-processor: `add_bos` is true iff encoding the empty
    /// text with special tokens yields one token; for the DeepSeek families (ByteLevel
    /// post-processor) that is false, which is also what convert writes (REFERENCE §4.5).
    ///
    /// For ids identical to a converted GGUF's, prefer building the GGUF metadata (convert's
    /// vocabulary) and [`Tokenizer::from_gguf_metadata`]: HF applies the Qwen distill's NFC
    /// normalizer, llama.cpp does not.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizeError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            err(
                path,
                TokenizeProblem::Library(format!("reading tokenizer.json: {e}")),
            )
        })?;
        let n_vocab = inner.get_vocab_size(true);
        let lib = |e: tokenizers::Error| err(path, TokenizeProblem::Library(e.to_string()));
        let with = inner.encode_fast("", true).map_err(lib)?;
        let (add_bos, bos) = match with.get_ids() {
            [b] => (true, Some(*b)),
            _ => (false, None),
        };
        let named = |s: &str| inner.token_to_id(s);
        let bos = bos.or_else(|| named("<｜begin▁of▁sentence｜>"));
        let eos = named("<｜end▁of▁sentence｜>");
        let mut t = Tokenizer {
            inner,
            n_vocab,
            bos,
            eos,
            add_bos,
            add_eos: false,
            parse_special: true,
            pre: "tokenizer.json".to_string(),
            path: path.to_path_buf(),
            // Arbitrary normalizers and pre-tokenizers: no safe cut is known.
            piecewise: false,
        };
        t.set_parse_special(false);
        Ok(t)
    }

    /// Returns the tokenizer with special-text parsing on or off: on, CONTROL token texts in the
    /// input become their ids (llama-tokenize's default); off, they are tokenized as ordinary
    /// text (llama-perplexity's and llama-imatrix's default). USER_DEFINED texts are matched
    /// either way, as in llama.cpp.
    pub fn with_parse_special(mut self, parse_special: bool) -> Tokenizer {
        self.set_parse_special(parse_special);
        self
    }

    fn set_parse_special(&mut self, parse_special: bool) {
        self.parse_special = parse_special;
        self.inner.set_encode_special_tokens(!parse_special);
    }

    /// Token ids of `text`. With `add_special`, BOS is prepended iff the vocabulary's
    /// `add_bos_token` (and EOS appended iff `add_eos_token`) — llama.cpp's `add_special`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizeError> {
        let one = |piece: &str| {
            self.inner
                .encode_fast(piece, false)
                .map_err(|e| TokenizeError {
                    path: self.path.clone(),
                    problem: TokenizeProblem::Library(format!("encoding: {e}")),
                })
        };
        let encodings = if self.piecewise && text.len() >= PIECEWISE_MIN_BYTES {
            use rayon::prelude::*;
            text_pieces(text, PIECE_BYTES)
                .into_par_iter()
                .map(one)
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![one(text)?]
        };
        let n: usize = encodings.iter().map(|e| e.len()).sum();
        let mut ids = Vec::with_capacity(n + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        for enc in &encodings {
            ids.extend_from_slice(enc.get_ids());
        }
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Text of `ids` (byte-level decoded; special tokens kept). Best effort, for showing samples.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// Vocabulary size (`tokenizer.ggml.tokens` length): the logits' length.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// The BOS id, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS id, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `add_special` prepends BOS (and perplexity overwrites each chunk's first token
    /// with it, REFERENCE §7.1).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `add_special` appends EOS (llama-perplexity refuses such vocabularies).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The pre-tokenizer name (`tokenizer.ggml.pre`), or `tokenizer.json` for HF tokenizers.
    pub fn pre(&self) -> &str {
        &self.pre
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use formats::gguf::GgufArray;

    /// Pieces cover the text exactly, each but the last reaches the piece size, and every cut
    /// sits right after a '\n' followed by a letter (CJK included), never inside "\n\n", before
    /// a space or before a digit.
    #[test]
    fn text_pieces_cut_only_after_a_newline_before_a_letter() {
        let mut text = String::new();
        for i in 0..400 {
            text.push_str(match i % 5 {
                0 => "Line of words.\n",
                1 => "\n\n  indented\n",
                2 => "12 numbers\n",
                3 => "你好 ünïcödé\n",
                _ => "tail without newline ",
            });
        }
        for piece in [1, 7, 64, 1000] {
            let pieces = text_pieces(&text, piece);
            assert_eq!(pieces.concat(), text, "piece {piece}");
            for (i, p) in pieces.iter().enumerate() {
                if i + 1 < pieces.len() {
                    assert!(p.len() >= piece, "piece {piece}: {p:?}");
                    assert!(p.ends_with('\n'), "{p:?}");
                    let next = pieces[i + 1].chars().next().unwrap();
                    assert!(next.is_alphabetic(), "{next:?} after a cut");
                }
            }
            assert!(pieces.len() > 1 || piece >= text.len());
        }
        assert_eq!(
            text_pieces("no newline at all", 4),
            vec!["no newline at all"]
        );
        assert_eq!(text_pieces("", 4), vec![""]);
    }

    /// A long text encodes to the same ids in pieces as whole (the parallel path is taken).
    #[test]
    fn long_texts_encode_the_same_in_pieces() {
        let t =
            Tokenizer::from_gguf_metadata(Path::new("m.gguf"), &metadata("qwen2", true)).unwrap();
        let unit = "ab ba\nab\n\nba  ab.\n12 ab\nba\n";
        let text = unit.repeat(PIECEWISE_MIN_BYTES / unit.len() + 10);
        assert!(t.piecewise && text.len() >= PIECEWISE_MIN_BYTES);
        let whole = t.inner.encode_fast(text.as_str(), false).unwrap();
        let ids = t.encode(&text, true).unwrap();
        assert_eq!(ids[0], t.bos().unwrap());
        assert_eq!(&ids[1..], whole.get_ids());
    }

    /// A byte-level vocabulary: the 256 GPT-2 byte characters, a few merges, a CONTROL BOS and a
    /// USER_DEFINED `<think>`.
    fn metadata(pre: &str, add_bos: bool) -> Vec<(String, GgufValue)> {
        let mut tokens = vec!["<｜begin▁of▁sentence｜>".to_string()];
        let mut types = vec![token_type::CONTROL];
        // GPT-2 bytes_to_unicode.
        let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
        pairs.sort();
        for (_, c) in pairs {
            tokens.push(char::from_u32(c).unwrap().to_string());
            types.push(token_type::NORMAL);
        }
        for m in ["t h", "Ġ th", "th e", "Ġth e"] {
            tokens.push(m.replace(' ', ""));
            types.push(token_type::NORMAL);
        }
        tokens.push("<think>".into());
        types.push(token_type::USER_DEFINED);
        tokens.push("[PAD300]".into());
        types.push(token_type::UNUSED);
        vec![
            (
                "tokenizer.ggml.model".into(),
                GgufValue::String("gpt2".into()),
            ),
            ("tokenizer.ggml.pre".into(), GgufValue::String(pre.into())),
            (
                "tokenizer.ggml.tokens".into(),
                GgufValue::Array(GgufArray::strings(tokens)),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::Array(GgufArray::i32s(types)),
            ),
            (
                "tokenizer.ggml.merges".into(),
                GgufValue::Array(GgufArray::strings(["t h", "Ġ th", "th e", "Ġth e"])),
            ),
            ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(0)),
            (
                "tokenizer.ggml.add_bos_token".into(),
                GgufValue::Bool(add_bos),
            ),
        ]
    }

    fn tok(pre: &str, add_bos: bool) -> Tokenizer {
        Tokenizer::from_gguf_metadata(Path::new("m.gguf"), &metadata(pre, add_bos)).unwrap()
    }

    #[test]
    fn merges_and_byte_level() {
        let t = tok("deepseek-v3", false);
        let the = t.inner.token_to_id("the").unwrap();
        let sp_the = t.inner.token_to_id("Ġthe").unwrap();
        let ids = t.encode("the the", true).unwrap();
        assert_eq!(ids, vec![the, sp_the]);
        assert_eq!(t.decode(&ids), "the the");
        assert_eq!(t.n_vocab(), 1 + 256 + 4 + 2);
    }

    #[test]
    fn bos_only_when_add_bos() {
        let t = tok("deepseek-v3", true);
        let ids = t.encode("the", true).unwrap();
        assert_eq!(ids.first(), Some(&0));
        assert_eq!(t.encode("the", false).unwrap().len(), 1);
    }

    #[test]
    fn control_text_parsed_only_when_asked_user_defined_always() {
        let t = tok("deepseek-v3", false);
        let think = t.inner.token_to_id("<think>").unwrap();
        let text = "<｜begin▁of▁sentence｜><think>";
        let plain = t.encode(text, false).unwrap();
        assert_ne!(plain.first(), Some(&0));
        assert_eq!(plain.last(), Some(&think));
        let parsed = t
            .clone()
            .with_parse_special(true)
            .encode(text, false)
            .unwrap();
        assert_eq!(parsed, vec![0, think]);
    }

    #[test]
    fn digits_split_by_family() {
        // deepseek-v3 and llama-bpe: runs of up to three digits; qwen2: single digits. Without
        // digit merges each digit is one byte token either way, so compare the pre-tokenizer.
        let t = tok("deepseek-r1-qwen", false);
        assert_eq!(t.encode("12345", false).unwrap().len(), 5);
    }

    #[test]
    fn bad_metadata_is_named() {
        let mut kv = metadata("deepseek-v3", false);
        kv.retain(|(k, _)| k != "tokenizer.ggml.tokens");
        let e = Tokenizer::from_gguf_metadata(Path::new("m.gguf"), &kv).unwrap_err();
        assert!(
            e.to_string().contains("m.gguf") && e.to_string().contains("tokenizer.ggml.tokens"),
            "{e}"
        );

        let mut kv = metadata("nonsense", false);
        kv.truncate(kv.len());
        let e = Tokenizer::from_gguf_metadata(Path::new("m.gguf"), &kv).unwrap_err();
        assert!(e.to_string().contains("nonsense"), "{e}");

        let mut kv = metadata("deepseek-v3", false);
        kv[0].1 = GgufValue::String("llama".into());
        let e = Tokenizer::from_gguf_metadata(Path::new("m.gguf"), &kv).unwrap_err();
        assert!(e.to_string().contains("'llama'"), "{e}");

        let mut kv = metadata("deepseek-v3", false);
        kv[4].1 = GgufValue::Array(GgufArray::strings(["nospace"]));
        let e = Tokenizer::from_gguf_metadata(Path::new("m.gguf"), &kv).unwrap_err();
        assert!(e.to_string().contains("merge 0"), "{e}");

        let mut kv = metadata("deepseek-v3", false);
        kv[5].1 = GgufValue::U32(100_000);
        let e = Tokenizer::from_gguf_metadata(Path::new("m.gguf"), &kv).unwrap_err();
        assert!(e.to_string().contains("bos_token_id"), "{e}");
    }
}
