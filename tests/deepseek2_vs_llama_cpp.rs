//! The strong check of the deepseek2 forward pass: the DeepSeek-V3 fixture (MLA with q/kv
//! low-rank projections, YaRN factor 40 with mscale_all_dim 1, grouped sigmoid routing with the
//! selection bias, shared expert, a dense leading layer), converted by `r1q convert`, must give the
//! same perplexity in our engine and in llama.cpp's `llama-perplexity` on the same token ids.
//!
//! llama-perplexity runs with an f32 KV cache and flash attention off, so both sides do f32
//! arithmetic and differ only in summation order; its default f16 cache is reported alongside for
//! information. Q8_0 is looser: llama.cpp also quantizes the activations inside each matmul.

mod llama_cpp;

use std::path::Path;

use verify::{Engine, EvalOptions, GgufSource, LogitPositions, WeightSource};

const CTX: usize = 128;
const CHUNKS: usize = 2;

/// Perplexity of `tokens` with llama-perplexity's chunking (REFERENCE §7.1: chunk k =
/// tokens[k·ctx, (k+1)·ctx), logits at positions ctx/2 … ctx−2 score the next token).
fn our_perplexity(gguf: &Path, tokens: &[u32]) -> f64 {
    let source = GgufSource::open(gguf).unwrap();
    let engine = Engine::new(&source).unwrap();
    let add_bos = source
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let bos = source
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_u32());
    let seqs: Vec<Vec<u32>> = (0..CHUNKS)
        .map(|k| {
            let mut c = tokens[k * CTX..(k + 1) * CTX].to_vec();
            if let (true, Some(b)) = (add_bos, bos) {
                c[0] = b;
            }
            c
        })
        .collect();
    let first = CTX / 2;
    let opts = EvalOptions {
        logit_positions: LogitPositions::Range(first..CTX - 1),
        ..EvalOptions::default()
    };
    let (mut sum, mut n) = (0f64, 0usize);
    engine
        .evaluate(&seqs, &opts, &mut |seq, pos, logits| {
            let target = tokens[seq * CTX + pos + 1] as usize;
            sum += verify::ops::log_sum_exp(logits) - f64::from(logits[target]);
            n += 1;
        })
        .unwrap();
    assert_eq!(n, CHUNKS * (CTX - 1 - first));
    (sum / n as f64).exp()
}

#[test]
fn deepseek_v3_perplexity_matches_llama_perplexity() {
    let Some(ppl_bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let Some(tok_bin) = fixtures::support::peer_bin("llama-tokenize") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = llama_cpp::eval_text(dir.path());
    let arch = fixtures::Arch::DeepseekV3;
    let model = dir.path().join(arch.to_string());
    fixtures::write_fixture(arch, &model, &fixtures::Options::default()).unwrap();
    let mut report = Vec::new();
    for (outtype, tol) in [("f32", 1e-3), ("q8_0", 1e-2)] {
        let gguf = dir.path().join(format!("{arch}-{outtype}.gguf"));
        llama_cpp::convert(&model, &gguf, outtype);
        let tokens = llama_cpp::llama_tokenize(&tok_bin, &gguf, &text);
        assert!(tokens.len() >= CTX * CHUNKS, "{} tokens", tokens.len());
        let f32_kv = ["-ctk", "f32", "-ctv", "f32", "-fa", "off"];
        let peer = llama_cpp::llama_perplexity(&ppl_bin, &gguf, &text, CTX, CHUNKS, &f32_kv);
        let peer_f16 = llama_cpp::llama_perplexity(&ppl_bin, &gguf, &text, CTX, CHUNKS, &[]);
        let ours = our_perplexity(&gguf, &tokens);
        let rel = (ours - peer.ppl).abs() / peer.ppl;
        eprintln!(
            "deepseek-v3 {outtype}: ours {ours:.6}, llama.cpp {:.6} (±{:?}; f16 KV cache {:.6}), rel {rel:.2e}",
            peer.ppl, peer.err, peer_f16.ppl
        );
        report.push((outtype, ours, peer.ppl, peer_f16.ppl, rel));
        assert!(
            ours.is_finite() && ours > 1.0,
            "{outtype}: our perplexity {ours}"
        );
        assert!(
            rel < tol,
            "deepseek-v3 {outtype}: ours {ours} vs llama.cpp {} ({rel:.2e} > {tol})",
            peer.ppl
        );
    }
    eprintln!("{report:?}");
}
