//! The generated fixtures' tokenizers (whose pre-tokenizer sections are copied from the real
//! families): the pre-type is detected per family, the token list is padded to config.json's
//! vocab_size, and the special ids match what the fixture generator recorded.

mod tokenizer_common;

use fixtures::{Arch, Options};
use tokenizer_common::*;

fn check(arch: Arch, expected_pre: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    fixtures::write_fixture(arch, &dir, &Options::default()).expect("fixture");
    let (tok, vocab_size) = fixtures::tokenizer_for(arch, &Options::default()).expect("tokenizer");
    assert!(vocab_size > tok.n_tokens, "fixture exercises padding");

    let md = convert::tokenizer::gguf_metadata(&dir, vocab_size, None)
        .unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert_eq!(string(&md, "tokenizer.ggml.pre"), expected_pre, "{arch}");
    let tokens = strings(&md, "tokenizer.ggml.tokens");
    let types = token_types(&md);
    assert_eq!(tokens.len(), vocab_size, "{arch}");
    assert_eq!(types.len(), vocab_size, "{arch}");
    for (i, t) in tokens.iter().enumerate().skip(tok.n_tokens) {
        assert_eq!(t, &format!("[PAD{i}]"), "{arch}");
        assert_eq!(types[i], 5, "{arch}: UNUSED");
    }
    assert!(
        tokens[..tok.n_tokens]
            .iter()
            .all(|t| !t.starts_with("[PAD")),
        "{arch}: no gaps in a generated tokenizer"
    );
    assert_eq!(
        u32_of(&md, "tokenizer.ggml.bos_token_id") as u64,
        tok.bos_id,
        "{arch}"
    );
    assert_eq!(
        u32_of(&md, "tokenizer.ggml.eos_token_id") as u64,
        tok.eos_id,
        "{arch}"
    );
    // All three tokenizer_configs pad with EOS.
    assert_eq!(
        u32_of(&md, "tokenizer.ggml.padding_token_id") as u64,
        tok.eos_id,
        "{arch}"
    );
    assert_eq!(types[tok.bos_id as usize], 3, "{arch}: BOS is CONTROL");
    assert_eq!(types[tok.eos_id as usize], 3, "{arch}: EOS is CONTROL");
    let think = tokens
        .iter()
        .position(|t| t == "<think>")
        .expect("<think> present");
    assert_eq!(types[think], 4, "{arch}: <think> is USER_DEFINED");
    assert!(!strings(&md, "tokenizer.ggml.merges").is_empty(), "{arch}");
    assert!(!bool_of(&md, "tokenizer.ggml.add_bos_token"), "{arch}");
    assert!(has(&md, "tokenizer.chat_template"), "{arch}");
}

#[test]
fn deepseek_v3_fixture_tokenizer() {
    check(Arch::DeepseekV3, "deepseek-v3");
}

#[test]
fn qwen2_fixture_tokenizer() {
    check(Arch::Qwen2, "deepseek-r1-qwen");
}

#[test]
fn llama_fixture_tokenizer() {
    check(Arch::Llama, "llama-bpe");
}
