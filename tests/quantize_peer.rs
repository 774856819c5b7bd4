//! `r1q quantize` and `r1q convert --outtype MIX` against the llama.cpp peer's llama-quantize:
//! the same F32 GGUF quantized by both gives identical files (tensor bytes, types, order and
//! metadata) for every type, on every fixture architecture and on synthetic hard rows, with and
//! without an imatrix from llama-imatrix; every mix's per-tensor plan is the same; the direct
//! path equals convert-then-quantize. Skips (visibly) without the peer.

mod quantize_support;

use std::path::{Path, PathBuf};

use formats::ggml_type::GgmlType;
use quantize_support::*;

fn peer(tool: &str) -> Option<PathBuf> {
    fixtures::support::peer_bin(tool)
}

/// Quantizes `input` with both tools and asserts identical output.
fn both(lq: &Path, dir: &Path, input: &Path, ty: &str, flags: &[&str], what: &str) {
    let ours = dir.join("ours.gguf");
    let theirs = dir.join("theirs.gguf");
    let mut args = vec!["quantize", "--quiet", "--threads", "2"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[p(input), p(&ours), ty]);
    r1q_ok(&args);
    llama_quantize(lq, flags, input, &theirs, ty);
    assert_same_gguf(&ours, &theirs, &format!("{what} {ty} {flags:?}"));
}

#[test]
fn pure_every_type_is_byte_identical_on_every_fixture() {
    let Some(lq) = peer("llama-quantize") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (arch, name) in ARCHS {
        let (_, f32) = f32_gguf(dir.path(), arch, name);
        for ty in PURE_TYPES {
            both(&lq, dir.path(), &f32, ty, &["--pure"], name);
        }
    }
}

/// The llama fixture with hard rows in a 2-D weight of each shape class (incl. the embedding,
/// whose rows are the vocabulary) — every codec's edge cases through the whole CLI.
fn synthetic(dir: &Path) -> PathBuf {
    let (_, f32) = f32_gguf(dir, fixtures::Arch::Llama, "llama");
    let out = dir.join("synthetic.f32.gguf");
    let mut seed = 0;
    rewrite_gguf(&f32, &out, |name, dims| {
        let hit = name == "token_embd.weight"
            || name == "output.weight"
            || name.starts_with("blk.0.")
            || name.starts_with("blk.1.ffn_down");
        if !hit || dims.len() < 2 {
            return None;
        }
        seed += 1;
        let (n, rows) = (dims[0] as usize, dims[1..].iter().product::<u64>() as usize);
        Some(hard_rows(rows, n, seed))
    });
    out
}

#[test]
fn pure_every_type_is_byte_identical_on_synthetic_rows() {
    let Some(lq) = peer("llama-quantize") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic(dir.path());
    for ty in PURE_TYPES {
        both(&lq, dir.path(), &input, ty, &["--pure"], "synthetic");
    }
    // The mix heuristics on the same rows.
    for ty in ["Q4_K_M", "Q3_K_S", "Q2_K"] {
        both(&lq, dir.path(), &input, ty, &[], "synthetic");
    }
}

#[test]
fn with_imatrix_every_type_is_byte_identical() {
    let (Some(lq), Some(li)) = (peer("llama-quantize"), peer("llama-imatrix")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // deepseek-v3: 3-D expert stacks use one slice per expert; llama: dense.
    for (arch, name) in [ARCHS[0], ARCHS[2]] {
        let (_, f32) = f32_gguf(dir.path(), arch, name);
        let im = dir.path().join(format!("{name}.imatrix.gguf"));
        llama_imatrix(&li, &f32, dir.path(), &im);
        let flags = ["--pure", "--imatrix", p(&im)];
        for ty in IMATRIX_TYPES {
            both(&lq, dir.path(), &f32, ty, &flags, name);
        }
        // Mixes whose type choice depends on the imatrix (Q4_0/Q5_0 ffn_down, IQ4 mixes).
        for ty in ["Q4_K_M", "Q4_0", "Q5_0", "IQ4_XS", "Q2_K_S"] {
            both(&lq, dir.path(), &f32, ty, &["--imatrix", p(&im)], name);
        }
        // The legacy .dat form of the same statistics.
        let dat = dir.path().join(format!("{name}.imatrix.dat"));
        formats::imatrix::Imatrix::load(&im)
            .unwrap()
            .save_dat(&dat)
            .unwrap();
        for ty in ["Q4_K", "IQ4_NL"] {
            both(
                &lq,
                dir.path(),
                &f32,
                ty,
                &["--pure", "--imatrix", p(&dat)],
                name,
            );
        }
    }
    // Synthetic rows with an imatrix made on the original weights.
    let input = synthetic(dir.path());
    let im = dir.path().join("llama.imatrix.gguf");
    for ty in IMATRIX_TYPES {
        both(
            &lq,
            dir.path(),
            &input,
            ty,
            &["--pure", "--imatrix", p(&im)],
            "synthetic",
        );
    }
}

/// (name, type, shape) of every tensor as `r1q inspect --json` reports it.
fn inspect_types(file: &Path) -> Vec<(String, String, String)> {
    let out = r1q_ok(&["inspect", "--json", p(file)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["type"].as_str().unwrap().to_string(),
                t["shape"].to_string(),
            )
        })
        .collect()
}

#[test]
fn every_mix_plans_like_llama_quantize_on_every_fixture() {
    let Some(lq) = peer("llama-quantize") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("o.gguf"), dir.path().join("t.gguf"));
    for (arch, name) in ARCHS {
        let (_, f32) = f32_gguf(dir.path(), arch, name);
        for mix in MIXES {
            r1q_ok(&["quantize", "--quiet", p(&f32), p(&ours), mix]);
            llama_quantize(&lq, &[], &f32, &theirs, mix);
            assert_eq!(
                inspect_types(&ours),
                inspect_types(&theirs),
                "{name} {mix}: per-tensor types"
            );
            assert_same_gguf(&ours, &theirs, &format!("{name} {mix}"));
        }
        // Overrides as llama-quantize applies them.
        let flags = [
            "--output-tensor-type",
            "q8_0",
            "--token-embedding-type",
            "q5_k",
            "--tensor-type",
            "ffn_down=q6_k",
            "--tensor-type",
            "attn_.*=q5_0",
        ];
        r1q_ok(
            &[
                &["quantize", "--quiet"][..],
                &flags,
                &[p(&f32), p(&ours), "Q4_K_M"],
            ]
            .concat(),
        );
        llama_quantize(&lq, &flags, &f32, &theirs, "Q4_K_M");
        assert_same_gguf(&ours, &theirs, &format!("{name} overrides"));
        r1q_ok(&[
            "quantize",
            "--quiet",
            "--leave-output-tensor",
            p(&f32),
            p(&ours),
            "Q3_K_M",
        ]);
        llama_quantize(&lq, &["--leave-output-tensor"], &f32, &theirs, "Q3_K_M");
        assert_same_gguf(&ours, &theirs, &format!("{name} --leave-output-tensor"));
    }
}

#[test]
fn direct_path_equals_convert_then_quantize_and_llama_quantize() {
    let lq = peer("llama-quantize");
    let dir = tempfile::tempdir().unwrap();
    for (arch, name) in [ARCHS[0], ARCHS[1]] {
        let (model, f32) = f32_gguf(dir.path(), arch, name);
        let direct = dir.path().join(format!("{name}.direct.gguf"));
        let two_step = dir.path().join(format!("{name}.two.gguf"));
        for mix in ["Q4_K_M", "Q6_K", "IQ4_XS"] {
            r1q_ok(&[
                "convert",
                "--quiet",
                "--outtype",
                mix,
                "-o",
                p(&direct),
                p(&model),
            ]);
            r1q_ok(&["quantize", "--quiet", p(&f32), p(&two_step), mix]);
            assert_same_gguf(
                &direct,
                &two_step,
                &format!("{name} {mix}: direct vs two-step"),
            );
            if let Some(lq) = &lq {
                let theirs = dir.path().join("theirs.gguf");
                llama_quantize(lq, &[], &f32, &theirs, mix);
                assert_same_gguf(&direct, &theirs, &format!("{name} {mix}: direct vs llama"));
            }
        }
        // --fp8-via-bf16 = the community pipeline: convert --outtype bf16, then llama-quantize.
        let bf16 = dir.path().join(format!("{name}.bf16.gguf"));
        r1q_ok(&[
            "convert",
            "--quiet",
            "--outtype",
            "bf16",
            "-o",
            p(&bf16),
            p(&model),
        ]);
        r1q_ok(&[
            "convert",
            "--quiet",
            "--outtype",
            "Q4_K_M",
            "--fp8-via-bf16",
            "-o",
            p(&direct),
            p(&model),
        ]);
        r1q_ok(&["quantize", "--quiet", p(&bf16), p(&two_step), "Q4_K_M"]);
        assert_same_gguf(
            &direct,
            &two_step,
            &format!("{name}: --fp8-via-bf16 vs bf16 + quantize"),
        );
        if let Some(lq) = &lq {
            let theirs = dir.path().join("theirs.gguf");
            llama_quantize(lq, &[], &bf16, &theirs, "Q4_K_M");
            assert_same_gguf(
                &direct,
                &theirs,
                &format!("{name}: --fp8-via-bf16 vs llama"),
            );
        }
    }
    // The FP8 rounding choice matters for DeepSeek: the two direct files differ.
    let model = dir.path().join("deepseek-v3");
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    r1q_ok(&[
        "convert",
        "--quiet",
        "--outtype",
        "Q8_0",
        "--pure",
        "-o",
        p(&a),
        p(&model),
    ]);
    r1q_ok(&[
        "convert",
        "--quiet",
        "--outtype",
        "Q8_0",
        "--pure",
        "--fp8-via-bf16",
        "-o",
        p(&b),
        p(&model),
    ]);
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // And the mix metadata is written.
    let f = formats::gguf::GgufFile::open(&a).unwrap();
    assert_eq!(f.get("general.file_type").and_then(|v| v.as_u32()), Some(7));
    assert!(f.tensors().iter().any(|t| t.ggml_type == GgmlType::Q8_0));
}
