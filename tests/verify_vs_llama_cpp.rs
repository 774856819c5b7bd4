//! The strong check of verify's forward pass: on the same GGUF and the same token ids, our
//! layer-major engine and llama.cpp's `llama-perplexity` must give the same perplexity
//! (REFERENCE §7.1 methodology: chunks of n_ctx, logits for the second half, token p+1 scored
//! from position p).
//!
//! Tokens come from the peer's `llama-tokenize` (tokenization is tested separately), so this
//! isolates the forward pass. llama-perplexity runs with an f32 KV cache (`-ctk f32 -ctv f32`,
//! flash attention off): with the default f16 cache its K/V are rounded to f16, a difference of
//! ~1e-4 relative that is llama.cpp's, not ours.

mod llama_cpp;

const CTX: usize = 128;
const CHUNKS: usize = 2;

#[test]
fn perplexity_matches_llama_perplexity() {
    let Some(ppl_bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let Some(tok_bin) = fixtures::support::peer_bin("llama-tokenize") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = llama_cpp::eval_text(dir.path());
    let mut report = Vec::new();
    for arch in [fixtures::Arch::Qwen2, fixtures::Arch::Llama] {
        let model = dir.path().join(arch.to_string());
        fixtures::write_fixture(arch, &model, &fixtures::Options::default()).unwrap();
        // F32: the same arithmetic up to summation order. Q8_0: llama.cpp also quantizes the
        // activations to Q8_0 inside each matmul, we keep them f32: a looser bound.
        for (outtype, tol) in [("f32", 1e-5), ("q8_0", 1e-2)] {
            let gguf = dir.path().join(format!("{arch}-{outtype}.gguf"));
            llama_cpp::convert(&model, &gguf, outtype);
            let tokens = llama_cpp::llama_tokenize(&tok_bin, &gguf, &text);
            assert!(tokens.len() >= CTX * CHUNKS, "{} tokens", tokens.len());
            let peer = llama_cpp::llama_perplexity(
                &ppl_bin,
                &gguf,
                &text,
                CTX,
                CHUNKS,
                &["-ctk", "f32", "-ctv", "f32", "-fa", "off"],
            );
            let ours = llama_cpp::engine_perplexity(&gguf, &tokens, CTX, CHUNKS);
            let rel = (ours - peer.ppl).abs() / peer.ppl;
            eprintln!(
                "{arch} {outtype}: ours {ours:.6}, llama.cpp {:.6} (±{:?}), rel {rel:.2e}",
                peer.ppl, peer.err
            );
            report.push((arch, outtype, ours, peer.ppl, rel));
            assert!(
                rel < tol,
                "{arch} {outtype}: ours {ours} vs llama.cpp {} ({rel:.2e} > {tol})",
                peer.ppl
            );
        }
    }
    eprintln!("{report:?}");
}

/// Timing, not a check (DESIGN: measured, not asserted): tokens/s of our engine and of
/// llama-perplexity on the bench-preset qwen2 fixture at F32, same text, 2 threads. Run with
/// `cargo test --release --test verify_vs_llama_cpp -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_bench_qwen2() {
    let Some(ppl_bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let Some(tok_bin) = fixtures::support::peer_bin("llama-tokenize") else {
        return;
    };
    let (ctx, chunks) = (512, 4);
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let body = match fixtures::support::shared_data() {
        Some(d) => std::fs::read_to_string(d.join("text/wiki-eval.txt")).unwrap(),
        None => "The quick brown fox jumps over the lazy dog. ".repeat(3000),
    };
    std::fs::write(&text, body.chars().take(60_000).collect::<String>()).unwrap();
    let model = dir.path().join("qwen2");
    let opts = fixtures::Options {
        preset: fixtures::Preset::Bench,
        ..fixtures::Options::default()
    };
    fixtures::write_fixture(fixtures::Arch::Qwen2, &model, &opts).unwrap();
    for outtype in ["f32", "q8_0"] {
        let gguf = dir.path().join(format!("qwen2-{outtype}.gguf"));
        llama_cpp::convert(&model, &gguf, outtype);
        let tokens = llama_cpp::llama_tokenize(&tok_bin, &gguf, &text);
        assert!(tokens.len() >= ctx * chunks, "{} tokens", tokens.len());
        let n = (ctx * chunks) as f64;
        let t = std::time::Instant::now();
        let ours = llama_cpp::engine_perplexity(&gguf, &tokens, ctx, chunks);
        let ours_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let peer = llama_cpp::llama_perplexity(&ppl_bin, &gguf, &text, ctx, chunks, &[]);
        let peer_s = t.elapsed().as_secs_f64();
        eprintln!(
            "qwen2 bench {outtype}: r1q {:.0} tok/s ({ours_s:.2} s, PPL {ours:.4}); \
             llama-perplexity {:.0} tok/s ({peer_s:.2} s wall incl. load, PPL {:.4}, f16 KV)",
            n / ours_s,
            n / peer_s,
            peer.ppl
        );
    }
}
