//! End-to-end against the llama.cpp peer (`cargo xtask peer`): what `r1q convert` writes must load
//! and run in llama.cpp itself, and its vocabulary must tokenize exactly as HF `tokenizers` does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn r1q(args: &[&str], extra: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .args(extra)
        .output()
        .expect("running the r1q binary")
}

fn convert(model: &Path, out: &Path, outtype: &str) {
    let o = out.to_str().unwrap();
    let res = r1q(
        &["convert", "--quiet", "--outtype", outtype, "-o", o],
        &[model],
    );
    assert!(
        res.status.success(),
        "r1q convert {outtype} failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// English prose for perplexity runs; the tiny fixture vocabularies turn it into a few thousand
/// tokens, well above the 2 × 128 that two chunks of 128 need.
fn eval_text(dir: &Path) -> PathBuf {
    let text = match fixtures::support::shared_data() {
        Some(data) => {
            let full = std::fs::read_to_string(data.join("text/wiki-eval.txt")).unwrap();
            full.chars().take(12_000).collect::<String>()
        }
        None => "The quick brown fox jumps over the lazy dog. ".repeat(300),
    };
    let path = dir.join("eval.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs llama-perplexity and returns the final estimate. The peer sometimes exits 0 without
/// flushing its logger (REFERENCE §8 item 11): then the running estimate after the last chunk,
/// which it prints on stdout as `[2]X,`, is the same number; a run with neither is retried.
fn llama_perplexity(bin: &Path, model: &Path, text: &Path) -> f64 {
    let mut last = String::new();
    for _ in 0..10 {
        let out = Command::new(bin)
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(text)
            .args([
                "-c", "128", "-b", "128", "--chunks", "2", "-t", "2", "-ngl", "0",
            ])
            .output()
            .expect("running llama-perplexity");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "llama-perplexity failed on {}:\n{all}",
            model.display()
        );
        if let Some(ppl) = final_estimate(&all).or_else(|| last_chunk(&all, 2)) {
            return ppl;
        }
        last = all;
    }
    panic!("llama-perplexity never printed its final estimate:\n{last}");
}

fn last_chunk(log: &str, n_chunks: usize) -> Option<f64> {
    let rest = log.split(&format!("[{n_chunks}]")).nth(1)?;
    rest.split(',').next()?.trim().parse().ok()
}

fn final_estimate(log: &str) -> Option<f64> {
    let rest = log.split("Final estimate: PPL = ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

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
            let ppl = llama_perplexity(&ppl_bin, &gguf, &text);
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

        let out = Command::new(&tok_bin)
            .arg("-m")
            .arg(&gguf)
            .arg("-f")
            .arg(&text)
            .args(["--ids", "--no-escape", "--log-disable"])
            .output()
            .expect("running llama-tokenize");
        assert!(
            out.status.success(),
            "llama-tokenize: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = parse_ids(&String::from_utf8_lossy(&out.stdout));

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

fn parse_ids(stdout: &str) -> Vec<i64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with('['))
        .expect("llama-tokenize --ids prints one [..] line");
    line.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("an integer token id"))
        .collect()
}
