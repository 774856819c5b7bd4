//! The real DeepSeek-R1 / R1-Distill tokenizers from ../shared/data/tokenizers give exactly the
//! vocabulary REFERENCE §4.5 lists (verified there against llama.cpp's own converter logic).
//! Skipped, with a visible message, when ../shared/data is absent.

mod tokenizer_common;

use std::path::PathBuf;

use tokenizer_common::*;

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

struct Expected {
    dir: &'static str,
    vocab_size: usize,
    hf_ids: usize,
    pad_entries: usize,
    control: usize,
    user_defined: &'static [(u32, &'static str)],
    bos: u32,
    eos: u32,
    pad: u32,
    merges: usize,
    pre: &'static str,
}

const CASES: [Expected; 3] = [
    Expected {
        dir: "deepseek-r1",
        vocab_size: 129280,
        hf_ids: 128815,
        pad_entries: 465,
        control: 816,
        user_defined: &[(128798, "<think>"), (128799, "</think>")],
        bos: 0,
        eos: 1,
        pad: 1,
        merges: 127741,
        pre: "deepseek-v3",
    },
    Expected {
        dir: "deepseek-r1-distill-qwen-7b",
        vocab_size: 152064,
        hf_ids: 151665,
        pad_entries: 399,
        control: 18,
        user_defined: &[
            (151648, "<think>"),
            (151649, "</think>"),
            (151657, "<tool_call>"),
            (151658, "</tool_call>"),
        ],
        bos: 151646,
        eos: 151643,
        pad: 151643,
        merges: 151387,
        pre: "deepseek-r1-qwen",
    },
    Expected {
        dir: "deepseek-r1-distill-llama-8b",
        vocab_size: 128256,
        hf_ids: 128256,
        pad_entries: 0,
        control: 254,
        user_defined: &[(128013, "<think>"), (128014, "</think>")],
        bos: 128000,
        eos: 128001,
        pad: 128001,
        merges: 280147,
        pre: "llama-bpe",
    },
];

fn tokenizer_dir(name: &str) -> Option<PathBuf> {
    let dir = fixtures::support::shared_data()?
        .join("tokenizers")
        .join(name);
    if dir.join("tokenizer.json").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: {} has no tokenizer.json", dir.display());
        None
    }
}

fn check(e: &Expected) {
    let Some(dir) = tokenizer_dir(e.dir) else {
        return;
    };
    let md = convert::tokenizer::gguf_metadata(&dir, e.vocab_size, None)
        .unwrap_or_else(|err| panic!("{}: {err}", e.dir));

    assert_eq!(string(&md, "tokenizer.ggml.model"), "gpt2");
    assert_eq!(string(&md, "tokenizer.ggml.pre"), e.pre, "{}", e.dir);

    let tokens = strings(&md, "tokenizer.ggml.tokens");
    let types = token_types(&md);
    assert_eq!(tokens.len(), e.vocab_size, "{}: token count", e.dir);
    assert_eq!(types.len(), e.vocab_size, "{}: token_type count", e.dir);

    let pads: Vec<usize> = (0..tokens.len())
        .filter(|&i| tokens[i].starts_with("[PAD"))
        .collect();
    assert_eq!(pads.len(), e.pad_entries, "{}: [PAD] entries", e.dir);
    for &i in &pads {
        assert!(i >= e.hf_ids, "{}: PAD at {i}, inside the HF ids", e.dir);
        assert_eq!(tokens[i], format!("[PAD{i}]"));
        assert_eq!(types[i], UNUSED);
    }
    let count = |t: i32| types.iter().filter(|&&x| x == t).count();
    assert_eq!(count(UNUSED), e.pad_entries, "{}: UNUSED", e.dir);
    assert_eq!(count(CONTROL), e.control, "{}: CONTROL", e.dir);
    assert_eq!(
        count(USER_DEFINED),
        e.user_defined.len(),
        "{}: USER_DEFINED",
        e.dir
    );
    assert_eq!(
        count(NORMAL),
        e.vocab_size - e.pad_entries - e.control - e.user_defined.len(),
        "{}: NORMAL",
        e.dir
    );
    for &(id, text) in e.user_defined {
        assert_eq!(tokens[id as usize], text, "{}: token {id}", e.dir);
        assert_eq!(
            types[id as usize], USER_DEFINED,
            "{}: type of {text}",
            e.dir
        );
    }
    // Full-width-bar tokens are CONTROL even where not flagged special (REFERENCE §4.5 note ¹).
    for (i, t) in tokens.iter().enumerate() {
        if t.starts_with("<｜") && t.ends_with("｜>") {
            assert_eq!(types[i], CONTROL, "{}: {t} ({i})", e.dir);
        }
    }
    assert_eq!(tokens[e.bos as usize], "<｜begin▁of▁sentence｜>");
    assert_eq!(tokens[e.eos as usize], "<｜end▁of▁sentence｜>");

    assert_eq!(
        u32_of(&md, "tokenizer.ggml.bos_token_id"),
        e.bos,
        "{}",
        e.dir
    );
    assert_eq!(
        u32_of(&md, "tokenizer.ggml.eos_token_id"),
        e.eos,
        "{}",
        e.dir
    );
    assert_eq!(
        u32_of(&md, "tokenizer.ggml.padding_token_id"),
        e.pad,
        "{}",
        e.dir
    );
    let merges = strings(&md, "tokenizer.ggml.merges");
    assert_eq!(merges.len(), e.merges, "{}: merges", e.dir);
    assert!(
        merges.iter().all(|m| m.split(' ').count() == 2),
        "{}",
        e.dir
    );

    // Parity decision: ByteLevel post-processor ⇒ false, over tokenizer_config's true.
    assert!(!bool_of(&md, "tokenizer.ggml.add_bos_token"), "{}", e.dir);
    assert!(!bool_of(&md, "tokenizer.ggml.add_eos_token"), "{}", e.dir);
    assert!(
        string(&md, "tokenizer.chat_template").contains("add_generation_prompt"),
        "{}",
        e.dir
    );
    assert_eq!(
        keys(&md),
        [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template",
        ],
        "{}: key order",
        e.dir
    );
}

#[test]
fn deepseek_r1_tokenizer() {
    check(&CASES[0]);
}

#[test]
fn deepseek_r1_distill_qwen_7b_tokenizer() {
    check(&CASES[1]);
}

#[test]
fn deepseek_r1_distill_llama_8b_tokenizer() {
    check(&CASES[2]);
}

/// The Qwen-1.5B distill's config says vocab_size 151936 (REFERENCE §4.5): same tokenizer, 271
/// `[PAD]` entries.
#[test]
fn qwen_tokenizer_padded_to_1_5b_vocab() {
    let Some(dir) = tokenizer_dir("deepseek-r1-distill-qwen-7b") else {
        return;
    };
    let md = convert::tokenizer::gguf_metadata(&dir, 151936, None).expect("converts");
    let tokens = strings(&md, "tokenizer.ggml.tokens");
    assert_eq!(tokens.len(), 151936);
    assert_eq!(tokens.iter().filter(|t| t.starts_with("[PAD")).count(), 271);
}

/// One vocab_size too small for the real R1 tokenizer: an error naming both numbers.
#[test]
fn real_tokenizer_larger_than_vocab_size() {
    let Some(dir) = tokenizer_dir("deepseek-r1") else {
        return;
    };
    let err = convert::tokenizer::gguf_metadata(&dir, 128814, None)
        .expect_err("128815 ids do not fit 128814 rows")
        .to_string();
    assert!(err.contains("128815") && err.contains("128814"), "{err}");
}
