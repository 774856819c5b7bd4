//! `r1q quantize` on bad input: each case fails with one line naming what is wrong (or, where
//! llama-quantize proceeds, proceeds the same way), and nothing is left at the output path.

mod quantize_support;

use std::collections::BTreeMap;
use std::path::Path;

use formats::ggml_type::GgmlType;
use formats::gguf::GgufFile;
use formats::imatrix::{Imatrix, ImatrixEntry, ImatrixFormat};
use quantize_support::*;

fn imatrix_with(path: &Path, entries: &[(&str, usize)]) {
    let entries: BTreeMap<String, ImatrixEntry> = entries
        .iter()
        .map(|(n, len)| {
            (
                n.to_string(),
                ImatrixEntry {
                    in_sum2: vec![2.0; *len],
                    counts: vec![1.0],
                    ncall: None,
                },
            )
        })
        .collect();
    Imatrix {
        entries,
        datasets: vec!["other.txt".into()],
        chunk_count: 1,
        chunk_size: 128,
        format: ImatrixFormat::Gguf,
    }
    .save_gguf(path)
    .unwrap();
}

#[test]
fn imatrix_with_other_names_warns_and_quantizes_without() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f32) = f32_gguf(dir.path(), fixtures::Arch::Llama, "llama");
    let im = dir.path().join("other.imatrix.gguf");
    imatrix_with(&im, &[("blk.0.some_other_model.weight", 64)]);
    let out = dir.path().join("o.gguf");
    let res = r1q_ok(&[
        "quantize",
        "--quiet",
        "--imatrix",
        p(&im),
        p(&f32),
        p(&out),
        "Q4_K_M",
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("no usable imatrix entry for blk.0.attn_q.weight"),
        "{err}"
    );
    // Same bytes as without an imatrix, except the quantize.imatrix.* keys.
    let plain = dir.path().join("plain.gguf");
    r1q_ok(&["quantize", "--quiet", p(&f32), p(&plain), "Q4_K_M"]);
    let (a, b) = (
        GgufFile::open(&out).unwrap(),
        GgufFile::open(&plain).unwrap(),
    );
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(a.tensor_data(ta), b.tensor_data(tb), "{}", ta.name);
    }
    assert_eq!(
        a.get("quantize.imatrix.entries_count")
            .and_then(|v| v.as_u32()),
        Some(1)
    );
    if let Some(lq) = fixtures::support::peer_bin("llama-quantize") {
        let theirs = dir.path().join("t.gguf");
        llama_quantize(&lq, &["--imatrix", p(&im)], &f32, &theirs, "Q4_K_M");
        assert_same_gguf(&out, &theirs, "imatrix with other names");
    }
}

#[test]
fn imatrix_entry_of_the_wrong_size_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f32) = f32_gguf(dir.path(), fixtures::Arch::Llama, "llama");
    let im = dir.path().join("wrong.imatrix.gguf");
    imatrix_with(&im, &[("blk.1.ffn_up.weight", 48)]);
    let out = dir.path().join("o.gguf");
    let err = r1q_err(&["quantize", "--imatrix", p(&im), p(&f32), p(&out), "Q4_K_M"]);
    assert!(
        err.contains("blk.1.ffn_up.weight") && err.contains("48"),
        "{err}"
    );
    assert!(!out.exists() && !dir.path().join("o.gguf.partial").exists());
    if let Some(lq) = fixtures::support::peer_bin("llama-quantize") {
        let log = llama_quantize_fails(
            &lq,
            &["--imatrix", p(&im)],
            &f32,
            &dir.path().join("t.gguf"),
            "Q4_K_M",
        );
        assert!(log.contains("imatrix size 48 is different"), "{log}");
    }
    // The direct path refuses it too.
    let model = dir.path().join("llama");
    let err = r1q_err(&[
        "convert",
        "--outtype",
        "Q4_K_M",
        "--imatrix",
        p(&im),
        "-o",
        p(&out),
        p(&model),
    ]);
    assert!(err.contains("blk.1.ffn_up.weight"), "{err}");
}

#[test]
fn rows_a_type_cannot_hold_fall_back_as_documented() {
    // DeepSeek's attn_k_b rows (qk_nope long) are not a multiple of 256: K-quants fall back
    // (REFERENCE §3.7: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0).
    let dir = tempfile::tempdir().unwrap();
    let (_, f32) = f32_gguf(dir.path(), fixtures::Arch::DeepseekV3, "ds");
    let out = dir.path().join("o.gguf");
    for (mix, want) in [
        ("Q4_K", GgmlType::Q5_0),
        ("Q5_K", GgmlType::Q5_1),
        ("Q6_K", GgmlType::Q8_0),
        ("Q2_K", GgmlType::Q4_0),
    ] {
        let res = r1q_ok(&["quantize", "--pure", p(&f32), p(&out), mix]);
        let plan = String::from_utf8_lossy(&res.stdout);
        assert!(plan.contains("fallback from"), "{plan}");
        let f = GgufFile::open(&out).unwrap();
        let kb = f
            .tensors()
            .iter()
            .find(|t| t.name.ends_with("attn_k_b.weight"))
            .unwrap();
        assert_ne!(kb.dims[0] % 256, 0);
        assert_eq!(kb.ggml_type, want, "{mix}");
    }
    // A forced type with no fallback chain is still written as llama-quantize would (F16).
    let res = r1q_ok(&[
        "quantize",
        "--dry-run",
        "--tensor-type",
        "attn_k_b=q4_k",
        p(&f32),
        "Q8_0",
    ]);
    let plan = String::from_utf8_lossy(&res.stdout);
    assert!(plan.contains("bits per weight"), "{plan}");
}

fn with_bad_value(dir: &Path, value: f32, at: usize) -> std::path::PathBuf {
    let (_, f32) = f32_gguf(dir, fixtures::Arch::Llama, "llama");
    let bad = dir.join(format!("bad{}.gguf", value.to_bits()));
    rewrite_gguf(&f32, &bad, |name, dims| {
        (name == "blk.1.ffn_up.weight").then(|| {
            let n = dims.iter().product::<u64>() as usize;
            let mut v = vec![0.5f32; n];
            v[at] = value;
            v
        })
    });
    bad
}

#[test]
fn nan_in_weights_is_refused_with_tensor_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let bad = with_bad_value(dir.path(), f32::NAN, 1234);
    let out = dir.path().join("o.gguf");
    let err = r1q_err(&["quantize", p(&bad), p(&out), "Q4_K_M"]);
    assert!(
        err.contains("blk.1.ffn_up.weight") && err.contains("NaN") && err.contains("element 1234"),
        "{err}"
    );
    assert!(!out.exists());
    if let Some(lq) = fixtures::support::peer_bin("llama-quantize") {
        let log = llama_quantize_fails(&lq, &[], &bad, &dir.path().join("t.gguf"), "Q4_K_M");
        assert!(log.contains("invalid data") || log.contains("nan"), "{log}");
    }
}

#[test]
fn inf_in_weights_is_refused_with_tensor_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let bad = with_bad_value(dir.path(), f32::NEG_INFINITY, 77);
    let out = dir.path().join("o.gguf");
    let err = r1q_err(&["quantize", p(&bad), p(&out), "Q8_0"]);
    assert!(
        err.contains("blk.1.ffn_up.weight") && err.contains("-inf") && err.contains("element 77"),
        "{err}"
    );
}

#[test]
fn requantizing_needs_allow_requantize() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f32) = f32_gguf(dir.path(), fixtures::Arch::Llama, "llama");
    let q8 = dir.path().join("q8.gguf");
    r1q_ok(&["quantize", "--quiet", p(&f32), p(&q8), "Q8_0"]);
    let out = dir.path().join("o.gguf");
    let err = r1q_err(&["quantize", p(&q8), p(&out), "Q4_K_M"]);
    assert!(
        err.contains("already quantized") && err.contains("--allow-requantize"),
        "{err}"
    );
    assert!(!out.exists());
    r1q_ok(&[
        "quantize",
        "--quiet",
        "--allow-requantize",
        p(&q8),
        p(&out),
        "Q4_K_M",
    ]);
    if let Some(lq) = fixtures::support::peer_bin("llama-quantize") {
        let theirs = dir.path().join("t.gguf");
        llama_quantize_fails(&lq, &[], &q8, &theirs, "Q4_K_M");
        llama_quantize(&lq, &["--allow-requantize"], &q8, &theirs, "Q4_K_M");
        assert_same_gguf(&out, &theirs, "requantized Q8_0 → Q4_K_M");
    }
}

#[test]
fn unknown_type_name_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f32) = f32_gguf(dir.path(), fixtures::Arch::Llama, "llama");
    let out = dir.path().join("o.gguf");
    let err = r1q_err(&["quantize", p(&f32), p(&out), "Q4_K_X"]);
    assert!(
        err.contains("Q4_K_X") && err.contains("Q4_K_M") && err.contains("IQ4_XS"),
        "{err}"
    );
    let err = r1q_err(&[
        "quantize",
        "--tensor-type",
        "ffn_down=q9_9",
        p(&f32),
        p(&out),
        "Q4_K_M",
    ]);
    assert!(err.contains("q9_9"), "{err}");
    // Aliases and case are accepted.
    r1q_ok(&["quantize", "--quiet", p(&f32), p(&out), "q4_k"]);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        f.get("general.file_type").and_then(|v| v.as_u32()),
        Some(15)
    );
}

#[test]
fn missing_input_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let err = r1q_err(&[
        "quantize",
        p(&missing),
        p(&dir.path().join("o.gguf")),
        "Q4_K_M",
    ]);
    assert!(err.contains("nope.gguf"), "{err}");
}

#[test]
fn types_that_need_an_imatrix_refuse_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f32) = f32_gguf(dir.path(), fixtures::Arch::Llama, "llama");
    let out = dir.path().join("o.gguf");
    let err = r1q_err(&["quantize", p(&f32), p(&out), "Q2_K_S"]);
    assert!(
        err.contains("requires an importance matrix") && err.contains("q2_K"),
        "{err}"
    );
    // --dry-run still sizes it.
    r1q_ok(&["quantize", "--dry-run", p(&f32), "Q4_K_M"]);
}
