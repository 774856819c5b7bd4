//! Our tokenizer metadata against an independent reference: tests/py/tokenizer_reference.py runs
//! llama.cpp's `get_vocab_base` logic on the HF `tokenizers` runtime, the probe-hash
//! `get_vocab_base_pre`, and gguf-py's own `SpecialVocab` (merges, ids, add flags, template).
//! Needs the test venv (`fixtures::support::python()`); skipped with a message otherwise.

mod tokenizer_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use fixtures::{Arch, Options};
use serde_json::Value;
use tokenizer_common::*;

fn reference(python: &Path, dir: &Path, vocab_size: usize, out: &Path) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/tokenizer_reference.py");
    let status = Command::new(python)
        .arg(&script)
        .arg(dir)
        .arg(vocab_size.to_string())
        .arg(out)
        .status()
        .expect("run python");
    assert!(
        status.success(),
        "reference script failed for {}",
        dir.display()
    );
    serde_json::from_str(&std::fs::read_to_string(out).expect("read")).expect("json")
}

fn compare(dir: &Path, vocab_size: usize, expect_hash_pre: bool) {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = reference(&python, dir, vocab_size, &tmp.path().join("ref.json"));
    let md = convert::tokenizer::gguf_metadata(dir, vocab_size, None).expect("converts");
    let name = dir.display();

    let ref_strings = |k: &str| -> Vec<String> {
        r[k].as_array()
            .expect("list")
            .iter()
            .map(|v| v.as_str().expect("str").to_owned())
            .collect()
    };
    let ours = strings(&md, "tokenizer.ggml.tokens");
    let theirs = ref_strings("tokens");
    assert_eq!(ours.len(), theirs.len(), "{name}: token count");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "{name}: token {i}");
    }
    let ref_types: Vec<i32> = r["types"]
        .as_array()
        .expect("types")
        .iter()
        .map(|v| v.as_i64().expect("int") as i32)
        .collect();
    let our_types = token_types(&md);
    for (i, (a, b)) in our_types.iter().zip(&ref_types).enumerate() {
        assert_eq!(a, b, "{name}: type of token {i} ({:?})", ours[i]);
    }
    assert_eq!(
        strings(&md, "tokenizer.ggml.merges"),
        ref_strings("merges"),
        "{name}: merges"
    );

    if expect_hash_pre {
        assert_eq!(
            Some(string(&md, "tokenizer.ggml.pre")),
            r["pre"].as_str(),
            "{name}: pre (probe hash)"
        );
    }

    let key = |typ: &str| match typ {
        "bos" => "tokenizer.ggml.bos_token_id",
        "eos" => "tokenizer.ggml.eos_token_id",
        "unk" => "tokenizer.ggml.unknown_token_id",
        "sep" => "tokenizer.ggml.seperator_token_id",
        "pad" => "tokenizer.ggml.padding_token_id",
        "mask" => "tokenizer.ggml.mask_token_id",
        "eot" => "tokenizer.ggml.eot_token_id",
        "eom" => "tokenizer.ggml.eom_token_id",
        other => panic!("unexpected special type {other}"),
    };
    let ids = r["special_token_ids"].as_object().expect("ids");
    let our_id_keys: Vec<&str> = keys(&md)
        .into_iter()
        .filter(|k| k.ends_with("_token_id"))
        .collect();
    let their_id_keys: Vec<&str> = ids.keys().filter(|t| *t != "cls").map(|t| key(t)).collect();
    assert_eq!(
        our_id_keys, their_id_keys,
        "{name}: special id keys in order"
    );
    for (typ, id) in ids.iter().filter(|(t, _)| *t != "cls") {
        assert_eq!(
            u32_of(&md, key(typ)) as u64,
            id.as_u64().expect("id"),
            "{name}: {typ}"
        );
    }

    if r["bytelevel_rule"].as_bool() == Some(true) {
        for (typ, v) in r["add_special_token"].as_object().expect("add") {
            let k = format!("tokenizer.ggml.add_{typ}_token");
            assert_eq!(Some(bool_of(&md, &k)), v.as_bool(), "{name}: {k}");
        }
    } else {
        eprintln!(
            "NOTE: the venv's gguf ({}) predates the vendored ByteLevel rule; add_*_token not \
             compared (ours: false by the parity decision, REFERENCE §4.5)",
            r["gguf_version"]
        );
    }
    assert_eq!(
        string(&md, "tokenizer.chat_template"),
        r["chat_template"].as_str().expect("template"),
        "{name}: chat_template"
    );
}

fn real(name: &str, vocab_size: usize) {
    let Some(data) = fixtures::support::shared_data() else {
        return;
    };
    compare(&data.join("tokenizers").join(name), vocab_size, true);
}

fn fixture(arch: Arch) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    fixtures::write_fixture(arch, &dir, &Options::default()).expect("fixture");
    let (_, vocab_size) = fixtures::tokenizer_for(arch, &Options::default()).expect("tok");
    compare(&dir, vocab_size, false);
}

#[test]
fn python_reference_deepseek_r1() {
    real("deepseek-r1", 129280);
}

#[test]
fn python_reference_distill_qwen_7b() {
    real("deepseek-r1-distill-qwen-7b", 152064);
}

#[test]
fn python_reference_distill_llama_8b() {
    real("deepseek-r1-distill-llama-8b", 128256);
}

#[test]
fn python_reference_fixture_deepseek_v3() {
    fixture(Arch::DeepseekV3);
}

#[test]
fn python_reference_fixture_qwen2() {
    fixture(Arch::Qwen2);
}

#[test]
fn python_reference_fixture_llama() {
    fixture(Arch::Llama);
}
