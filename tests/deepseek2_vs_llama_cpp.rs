//! The strong check of the deepseek2 forward pass: the DeepSeek-V3 fixture (MLA with q/kv
//! low-rank projections, YaRN factor 40 with mscale_all_dim 1, grouped sigmoid routing with the
//! selection bias, shared expert, a dense leading layer), converted by `r1q convert`, must give the
//! same perplexity in our engine and in llama.cpp's `llama-perplexity` on the same token ids.
//!
//! llama-perplexity runs with an f32 KV cache and flash attention off, so both sides do f32
//! arithmetic and differ only in summation order; its default f16 cache is reported alongside for
//! information. Q8_0 is looser: llama.cpp also quantizes the activations inside each matmul.

mod llama_cpp;

const CTX: usize = 128;
const CHUNKS: usize = 2;

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
        let ours = llama_cpp::engine_perplexity(&gguf, &tokens, CTX, CHUNKS);
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
