//! Bad and unusual tokenizer input: each case its own test, each error naming the file and what
//! to do. Also the less common encodings the real families don't use (merge pairs, string special
//! tokens, chat_template.jinja).

mod tokenizer_common;

use std::path::{Path, PathBuf};

use convert::tokenizer::gguf_metadata;
use fixtures::{Arch, Options};
use serde_json::{json, Value};
use tokenizer_common::*;

/// A Qwen2 fixture directory (its tokenizer and config), and its config vocab_size.
fn qwen_fixture(tmp: &Path) -> (PathBuf, usize) {
    let dir = tmp.join("model");
    fixtures::write_fixture(Arch::Qwen2, &dir, &Options::default()).expect("fixture");
    let (_, vocab_size) = fixtures::tokenizer_for(Arch::Qwen2, &Options::default()).expect("tok");
    (dir, vocab_size)
}

fn edit_tokenizer(dir: &Path, f: impl FnOnce(&mut Value)) {
    let path = dir.join("tokenizer.json");
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    f(&mut v);
    std::fs::write(&path, v.to_string()).expect("write");
}

fn err_text(dir: &Path, vocab_size: usize, pre: Option<&str>) -> String {
    gguf_metadata(dir, vocab_size, pre)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn missing_tokenizer_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let msg = err_text(tmp.path(), 100, None);
    assert!(msg.contains("tokenizer.json"), "{msg}");
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
}

#[test]
fn invalid_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("tokenizer.json"), "{\"model\": {\"type\": ").expect("write");
    let msg = err_text(tmp.path(), 100, None);
    assert!(msg.contains("tokenizer.json"), "{msg}");
    assert!(msg.contains("not a valid tokenizer.json"), "{msg}");
}

#[test]
fn invalid_tokenizer_config_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, vocab_size) = qwen_fixture(tmp.path());
    std::fs::write(dir.join("tokenizer_config.json"), "{oops").expect("write");
    let msg = err_text(&dir, vocab_size, None);
    assert!(msg.contains("tokenizer_config.json"), "{msg}");
}

#[test]
fn not_bpe_model() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, vocab_size) = qwen_fixture(tmp.path());
    edit_tokenizer(&dir, |v| {
        v["model"] = json!({"type": "Unigram", "vocab": [["a", -1.0]], "unk_id": 0});
    });
    let msg = err_text(&dir, vocab_size, None);
    assert!(msg.contains("Unigram") && msg.contains("BPE"), "{msg}");
}

#[test]
fn unknown_pre_tokenizer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, vocab_size) = qwen_fixture(tmp.path());
    edit_tokenizer(&dir, |v| {
        v["pre_tokenizer"] = json!({"type": "Whitespace"});
    });
    let msg = err_text(&dir, vocab_size, None);
    assert!(msg.contains("unrecognised pre-tokenizer"), "{msg}");
    assert!(msg.contains("--tokenizer-pre"), "{msg}");
    assert!(msg.contains("deepseek-r1-qwen"), "{msg}");
}

#[test]
fn altered_regex_is_not_recognised() {
    // Digits in pairs (`\p{N}{1,2}`) is neither Qwen's single-digit nor Llama's {1,3} regex: the
    // comparison is exact, so a near-miss is refused rather than guessed.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, vocab_size) = qwen_fixture(tmp.path());
    edit_tokenizer(&dir, |v| {
        let r = &mut v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
        let s = r
            .as_str()
            .expect("regex")
            .replace("\\p{N}|", "\\p{N}{1,2}|");
        *r = Value::from(s);
    });
    let msg = err_text(&dir, vocab_size, None);
    assert!(msg.contains("--tokenizer-pre"), "{msg}");
}

#[test]
fn pre_override_accepted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, vocab_size) = qwen_fixture(tmp.path());
    edit_tokenizer(&dir, |v| {
        v["pre_tokenizer"] = json!({"type": "Whitespace"});
    });
    let md = gguf_metadata(&dir, vocab_size, Some("qwen2")).expect("override skips detection");
    assert_eq!(string(&md, "tokenizer.ggml.pre"), "qwen2");
}

#[test]
fn pre_override_unknown_name_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, vocab_size) = qwen_fixture(tmp.path());
    let msg = err_text(&dir, vocab_size, Some("qwen-2"));
    assert!(
        msg.contains("qwen-2") && msg.contains("deepseek-v3"),
        "{msg}"
    );
}

#[test]
fn more_tokens_than_vocab_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, _) = qwen_fixture(tmp.path());
    let (tok, _) = fixtures::tokenizer_for(Arch::Qwen2, &Options::default()).expect("tok");
    let small = tok.n_tokens - 1;
    let msg = err_text(&dir, small, None);
    assert!(msg.contains(&tok.n_tokens.to_string()), "{msg}");
    assert!(msg.contains(&small.to_string()), "{msg}");
}

/// A hand-written tokenizer directory: Llama-3 pre-tokenizer, merges as pairs with a space inside
/// a part, plain-string special tokens, chat template only in chat_template.jinja.
fn handmade(tmp: &Path) -> PathBuf {
    let dir = tmp.join("hand");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let llama = fixtures::tokenizer_for(Arch::Llama, &Options::default()).expect("tok");
    let real: Value = serde_json::from_str(&llama.0.tokenizer_json).expect("json");
    let tok = json!({
        "added_tokens": [
            {"id": 5, "content": "<s>", "special": true, "normalized": false},
            {"id": 6, "content": "</s>", "special": true, "normalized": false},
            {"id": 8, "content": "▁hi▁", "special": false, "normalized": false}
        ],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]},
        "pre_tokenizer": real["pre_tokenizer"],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "model": {
            "type": "BPE",
            "vocab": {"a": 0, "b": 1, "ab": 2, "a b": 3, "c": 4},
            "merges": [["a", "b"], ["a b", "c"]]
        }
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).expect("write");
    let cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).expect("write");
    std::fs::write(dir.join("chat_template.jinja"), "{{ messages }}").expect("write");
    dir
}

#[test]
fn merge_pairs_spaces_become_u0120() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = handmade(tmp.path());
    let md = gguf_metadata(&dir, 10, None).expect("handmade converts");
    assert_eq!(
        strings(&md, "tokenizer.ggml.merges"),
        ["a b", "a\u{120}b c"]
    );
}

#[test]
fn handmade_vocab_types_ids_and_template() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = handmade(tmp.path());
    let md = gguf_metadata(&dir, 10, None).expect("handmade converts");
    assert_eq!(string(&md, "tokenizer.ggml.pre"), "llama-bpe");
    assert_eq!(
        strings(&md, "tokenizer.ggml.tokens"),
        ["a", "b", "ab", "a b", "c", "<s>", "</s>", "[PAD7]", " hi ", "[PAD9]"]
    );
    assert_eq!(token_types(&md), [1, 1, 1, 1, 1, 3, 3, 5, 4, 5]);
    assert_eq!(u32_of(&md, "tokenizer.ggml.bos_token_id"), 5);
    assert_eq!(u32_of(&md, "tokenizer.ggml.eos_token_id"), 6);
    assert!(!has(&md, "tokenizer.ggml.padding_token_id"));
    // ByteLevel post-processor beats add_bos_token: true.
    assert!(!bool_of(&md, "tokenizer.ggml.add_bos_token"));
    assert_eq!(string(&md, "tokenizer.chat_template"), "{{ messages }}");
    assert!(bool_of(&md, "tokenizer.ggml.normalizer.lowercase"));
}

#[test]
fn template_processing_with_bos_sets_add_bos() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = handmade(tmp.path());
    edit_tokenizer(&dir, |v| {
        v["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}
        });
    });
    let md = gguf_metadata(&dir, 10, None).expect("converts");
    assert!(bool_of(&md, "tokenizer.ggml.add_bos_token"));
    assert!(!has(&md, "tokenizer.ggml.add_eos_token"));
}

#[test]
fn special_id_outside_vocab_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = handmade(tmp.path());
    std::fs::write(
        dir.join("config.json"),
        json!({"pad_token_id": 12}).to_string(),
    )
    .expect("write");
    let msg = err_text(&dir, 10, None);
    assert!(msg.contains("pad") && msg.contains("12"), "{msg}");
}
