//! Issue 5's quality order on the DeepSeek-V3 fixture: `r1q verify DIR f16 bf16 q8_0 q4_k_m
//! q2_k --json`, with the base being the HF directory itself (FP8 × scale, streamed), gives
//! finite mean KLDs, small for F16/BF16, and strictly increasing Q8_0 < Q4_K_M < Q2_K.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn r1q(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .args(paths)
        .output()
        .expect("running r1q")
}

#[test]
fn deepseek_v3_kld_increases_with_compression() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        &hf,
        &fixtures::Options::default(),
    )
    .unwrap();
    let types = ["f16", "bf16", "q8_0", "q4_k_m", "q2_k"];
    let mut files: Vec<PathBuf> = Vec::new();
    for t in types {
        let p = dir.path().join(format!("{t}.gguf"));
        let o = r1q(&["convert", "--quiet", "--outtype", t, "-o"], &[&p, &hf]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        files.push(p);
    }
    let text = dir.path().join("eval.txt");
    std::fs::write(&text, fixtures::tokenizer::CORPUS.repeat(3)).unwrap();
    let paths: Vec<&Path> = [text.as_path(), hf.as_path()]
        .into_iter()
        .chain(files.iter().map(PathBuf::as_path))
        .collect();
    let o = r1q(&["verify", "-c", "64", "--json", "-f"], &paths);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 1 + types.len(), "{v}");
    let kld: Vec<f64> = (1..models.len())
        .map(|i| models[i]["mean_kld"].as_f64().unwrap_or(f64::NAN))
        .collect();
    for (t, k) in types.iter().zip(&kld) {
        eprintln!("{t}: mean KLD {k:.6e}");
        assert!(k.is_finite() && *k >= -1e-6, "{t}: {v}");
    }
    let [f16, bf16, q8, q4, q2] = kld[..] else {
        panic!("{v}");
    };
    assert!(f16 < 1e-3 && bf16 < 1e-2, "F16/BF16 KLD small: {v}");
    assert!(q8 < q4 && q4 < q2, "Q8_0 < Q4_K_M < Q2_K: {v}");
}
