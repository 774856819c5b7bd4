//! End-to-end against the llama.cpp peer (`cargo xtask peer`): what `r1q convert` writes must load
//! and run in llama.cpp itself, and its vocabulary must tokenize exactly as HF `tokenizers` does.

use std::process::Command;

mod llama_cpp;

use llama_cpp::{convert, eval_text, llama_perplexity, llama_tokenize};

#[test]
fn llama_cpp_runs_every_fixture_at_every_outtype() {
    let Some(ppl_bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = eval_text(dir.path());
    for arch in [
        fixtures::Arch::DeepseekV3,
        fixtures::Arch::Qwen2,
        fixtures::Arch::Llama,
    ] {
        let model = dir.path().join(arch.to_string());
        fixtures::write_fixture(arch, &model, &fixtures::Options::default()).unwrap();
        let mut results = Vec::new();
        for outtype in ["f32", "f16", "bf16", "q8_0"] {
            let gguf = dir.path().join(format!("{arch}-{outtype}.gguf"));
            convert(&model, &gguf, outtype);
            let ppl = llama_perplexity(&ppl_bin, &gguf, &text, 128, 2, &[]).ppl;
            assert!(ppl.is_finite() && ppl > 1.0, "{arch} {outtype}: PPL {ppl}");
            results.push((outtype, ppl));
            std::fs::remove_file(&gguf).unwrap();
        }
        // The four files hold the same weights at different precision: their perplexities must
        // agree closely (a wrong transform — a transposed split, unpermuted rope — would not).
        let base = results[0].1;
        for (outtype, ppl) in &results {
            let rel = (ppl - base).abs() / base;
            assert!(rel < 0.02, "{arch}: {outtype} PPL {ppl} vs f32 {base}");
        }
        eprintln!("{arch}: {results:?}");
    }
}

/// The real tokenizers placed into a fixture: `llama-tokenize` on the converted file gives the
/// same ids as HF `tokenizers` (through the venv's Python binding of the same Rust crate) on the
/// first 100 kB of wiki-eval.txt.
#[test]
fn llama_tokenize_matches_hf_tokenizers_on_real_vocabularies() {
    let Some(tok_bin) = fixtures::support::peer_bin("llama-tokenize") else {
        return;
    };
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let Some(data) = fixtures::support::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wiki = std::fs::read(data.join("text/wiki-eval.txt")).unwrap();
    let mut cut = 100_000.min(wiki.len());
    while std::str::from_utf8(&wiki[..cut]).is_err() {
        cut -= 1;
    }
    let text = dir.path().join("wiki-100k.txt");
    std::fs::write(&text, &wiki[..cut]).unwrap();

    for (arch, family) in [
        (fixtures::Arch::DeepseekV3, "deepseek-r1"),
        (fixtures::Arch::Qwen2, "deepseek-r1-distill-qwen-7b"),
        (fixtures::Arch::Llama, "deepseek-r1-distill-llama-8b"),
    ] {
        let tokenizer = data.join("tokenizers").join(family).join("tokenizer.json");
        let model = dir.path().join(family);
        let opts = fixtures::Options {
            tokenizer: Some(tokenizer.clone()),
            ..fixtures::Options::default()
        };
        fixtures::write_fixture(arch, &model, &opts).unwrap();
        let gguf = dir.path().join(format!("{family}.gguf"));
        convert(&model, &gguf, "f16");
        std::fs::remove_dir_all(&model).unwrap();

        let ours: Vec<i64> = llama_tokenize(&tok_bin, &gguf, &text)
            .into_iter()
            .map(i64::from)
            .collect();

        let script = "import sys, json\nfrom tokenizers import Tokenizer\n\
                      t = Tokenizer.from_file(sys.argv[1])\n\
                      s = open(sys.argv[2], encoding='utf-8').read()\n\
                      print(json.dumps(t.encode(s, add_special_tokens=False).ids))\n";
        let out = Command::new(&python)
            .args(["-c", script])
            .arg(&tokenizer)
            .arg(&text)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hf: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();

        assert!(hf.len() > 15_000, "{family}: {} tokens", hf.len());
        let first_diff = ours.iter().zip(&hf).position(|(a, b)| a != b);
        assert_eq!(
            (ours.len(), first_diff),
            (hf.len(), None),
            "{family}: llama-tokenize and HF tokenizers disagree"
        );
        std::fs::remove_file(&gguf).unwrap();
    }
}
