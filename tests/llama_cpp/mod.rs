//! Running the llama.cpp peer's tools from tests: `llama-perplexity` (with REFERENCE §8 item
//! 11's retry when its logger loses the last lines) and `llama-tokenize`, plus `r1q convert`.
//! Shared by the end-to-end tests that compare our numbers with llama.cpp's.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use verify::WeightSource;

/// Converts the HF checkpoint `model` to `out` at `outtype` with the r1q binary.
pub fn convert(model: &Path, out: &Path, outtype: &str) {
    let res = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(["convert", "--quiet", "--outtype", outtype, "-o"])
        .arg(out)
        .arg(model)
        .output()
        .expect("running the r1q binary");
    assert!(
        res.status.success(),
        "r1q convert {outtype} failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// English prose for perplexity runs (the first 12,000 characters of wiki-eval.txt, or a
/// repeated sentence without ../shared/data), written to `dir/eval.txt`.
pub fn eval_text(dir: &Path) -> PathBuf {
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

/// What `llama-perplexity` reported.
#[derive(Debug, Clone, Copy)]
pub struct PeerPpl {
    /// The final estimate (or the last chunk's running estimate when the final line was lost).
    pub ppl: f64,
    /// Its ± uncertainty, when the final line was printed.
    pub err: Option<f64>,
}

/// Runs `llama-perplexity -m model -f text -c ctx -b ctx --chunks chunks -t 2 -ngl 0 extra…`.
/// The peer logs through an asynchronous logger it never flushes at exit (a leaked singleton in
/// common/log.cpp), so a run that exits 0 can lose its last lines — the final estimate and even
/// the last `[N]X,` (seen on a loaded machine for every one of ten tries). The first run takes
/// the final estimate or the running `[N]` value; later runs evaluate one chunk more, so that
/// `[N]` is printed while chunk N+1 is decoded and always arrives (the text must hold N+1
/// chunks for that).
pub fn llama_perplexity(
    bin: &Path,
    model: &Path,
    text: &Path,
    ctx: usize,
    chunks: usize,
    extra: &[&str],
) -> PeerPpl {
    let mut last = String::new();
    for attempt in 0..4 {
        let run_chunks = if attempt == 0 { chunks } else { chunks + 1 };
        let (c, n) = (ctx.to_string(), run_chunks.to_string());
        let out = Command::new(bin)
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(text)
            .args(["-c", &c, "-b", &c, "--chunks", &n, "-t", "2", "-ngl", "0"])
            .args(extra)
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
        if run_chunks == chunks {
            if let Some(p) = final_estimate(&all) {
                return p;
            }
        }
        if let Some(ppl) = last_chunk(&all, chunks) {
            return PeerPpl { ppl, err: None };
        }
        last = all;
    }
    panic!("llama-perplexity never printed the estimate after chunk {chunks}:\n{last}");
}

fn last_chunk(log: &str, n_chunks: usize) -> Option<f64> {
    let rest = log.split(&format!("[{n_chunks}]")).nth(1)?;
    rest.split(',').next()?.trim().parse().ok()
}

fn final_estimate(log: &str) -> Option<PeerPpl> {
    let rest = log.split("Final estimate: PPL = ").nth(1)?;
    let mut words = rest.split_whitespace();
    let ppl = words.next()?.parse().ok()?;
    let err = match (words.next(), words.next()) {
        (Some("+/-"), Some(e)) => e.parse().ok(),
        _ => None,
    };
    Some(PeerPpl { ppl, err })
}

/// Token ids of `text` as `llama-tokenize --ids` gives them for `model` (no BOS added by the
/// tool beyond what the vocabulary's add_bos says, as llama-perplexity tokenizes).
pub fn llama_tokenize(bin: &Path, model: &Path, text: &Path) -> Vec<u32> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["--ids", "--no-escape", "--log-disable"])
        .output()
        .expect("running llama-tokenize");
    assert!(
        out.status.success(),
        "llama-tokenize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
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

/// Perplexity of `tokens` with llama-perplexity's chunking (REFERENCE §7.1: chunk k =
/// tokens[k·ctx, (k+1)·ctx), BOS over its first token when add_bos, logits at positions
/// ctx/2 … ctx−2 score the next token), computed by our engine: the number to hold against
/// llama-perplexity's on the same token ids.
pub fn engine_perplexity(gguf: &Path, tokens: &[u32], ctx: usize, chunks: usize) -> f64 {
    let source = verify::GgufSource::open(gguf).unwrap();
    let engine = verify::Engine::new(&source).unwrap();
    let add_bos = source
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let bos = source
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_u32());
    let seqs: Vec<Vec<u32>> = (0..chunks)
        .map(|k| {
            let mut c = tokens[k * ctx..(k + 1) * ctx].to_vec();
            if let (true, Some(b)) = (add_bos, bos) {
                c[0] = b;
            }
            c
        })
        .collect();
    let first = ctx / 2;
    let opts = verify::EvalOptions {
        logit_positions: verify::LogitPositions::Range(first..ctx - 1),
        ..verify::EvalOptions::default()
    };
    let (mut sum, mut n) = (0f64, 0usize);
    engine
        .evaluate(&seqs, &opts, &mut |seq, pos, logits| {
            let target = tokens[seq * ctx + pos + 1] as usize;
            let lse = verify::ops::log_sum_exp(logits);
            sum += lse - f64::from(logits[target]);
            n += 1;
        })
        .unwrap();
    assert_eq!(n, chunks * (ctx - 1 - first));
    (sum / n as f64).exp()
}
