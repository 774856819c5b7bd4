//! `r1q demo`: the whole pipeline on a built-in model in seconds — generate the DeepSeek-V3
//! fixture (FP8, release layout) in a temporary directory, convert it to Q8_0 (and the K-quant
//! mixes the quantize crate supports), and print the verify table against the HF checkpoint.
//!
//! The evaluation text is what the base model samples itself (temperature 1, a fixed seed) unless
//! `-f TEXT` is given: a tiny random model has high perplexity on English, but on its own samples
//! the differences the quantization makes are what the table shows.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ::verify::ppl::ChunkPlan;
use ::verify::{Engine, EvalOptions, LogitPositions};
use anyhow::{bail, Context, Result};

use crate::hf_source::open_model;
use crate::verify::{measure, plan_text, print};

/// Arguments of `r1q demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Evaluate on this text instead of the base model's own samples.
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    file: Option<PathBuf>,
    /// Keep the fixture and the GGUF files in DIR (created) instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Chunk length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 128)]
    ctx_size: usize,
    /// Print the table as JSON.
    #[arg(long)]
    json: bool,
}

/// Sampled sequences, each `len` tokens long.
const SAMPLE_SEQS: usize = 4;

/// A xorshift64* generator: deterministic samples without a dependency.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Which token ids the sampler may pick: ordinary text (NORMAL, USER_DEFINED, BYTE in
/// `tokenizer.ggml.token_type`; all ids when the metadata has no token types) whose text on its
/// own is printable — never padding (`[PAD…]`, UNUSED) or control tokens, nor the byte-level
/// pieces that decode to a control byte or half a UTF-8 character — so the sampled text reads
/// like (random) words.
fn sampleable(
    source: &dyn ::verify::source::WeightSource,
    tokenizer: &::verify::tokenize::Tokenizer,
    n_vocab: usize,
) -> Vec<bool> {
    let types = source
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .and_then(|a| a.as_i64s());
    (0..n_vocab)
        .map(|i| {
            let ordinary = types
                .as_ref()
                .is_none_or(|t| matches!(t.get(i), Some(1 | 4 | 6)));
            let text = tokenizer.decode(&[i as u32]);
            ordinary && !text.is_empty() && !text.chars().any(|c| c == '\u{FFFD}' || c.is_control())
        })
        .collect()
}

/// Samples `SAMPLE_SEQS` sequences of `len` tokens from `engine` at temperature 1 (all sequences
/// advance together, one layer-major evaluation per step), only among the `allowed` ids.
fn sample(engine: &Engine<'_>, allowed: &[bool], starts: &[u32], len: usize) -> Result<Vec<u32>> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut seqs: Vec<Vec<u32>> = starts.iter().map(|&s| vec![s]).collect();
    while seqs.iter().any(|s| s.len() < len) {
        let cur = seqs.first().map_or(0, Vec::len);
        let opts = EvalOptions {
            logit_positions: LogitPositions::Range(cur - 1..cur),
            ..EvalOptions::default()
        };
        let mut next = vec![0u32; seqs.len()];
        let mut draws: Vec<f64> = (0..seqs.len()).map(|_| rng.next_f64()).collect();
        engine.evaluate(&seqs, &opts, &mut |si, _pos, logits| {
            let ok = |i: usize| allowed.get(i).copied().unwrap_or(true);
            let max = logits
                .iter()
                .enumerate()
                .filter(|&(i, _)| ok(i))
                .map(|(_, &l)| l)
                .fold(f32::NEG_INFINITY, f32::max);
            let weight = |i: usize, l: f32| if ok(i) { f64::from(l - max).exp() } else { 0.0 };
            let total: f64 = logits.iter().enumerate().map(|(i, &l)| weight(i, l)).sum();
            let mut r = draws.get(si).copied().unwrap_or(0.0) * total;
            let mut pick = (0..logits.len()).rev().find(|&i| ok(i)).unwrap_or(0);
            for (i, &l) in logits.iter().enumerate() {
                if !ok(i) {
                    continue;
                }
                r -= weight(i, l);
                if r <= 0.0 {
                    pick = i;
                    break;
                }
            }
            if let Some(n) = next.get_mut(si) {
                *n = pick as u32;
            }
            if let Some(d) = draws.get_mut(si) {
                *d = 0.0;
            }
        })?;
        for (s, n) in seqs.iter_mut().zip(next) {
            s.push(n);
        }
    }
    Ok(seqs.concat())
}

fn convert(dir: &std::path::Path, model: &std::path::Path, outtype: &str) -> Result<PathBuf> {
    let out = dir.join(format!("deepseek-v3-{}.gguf", outtype.to_ascii_lowercase()));
    let exe = std::env::current_exe().context("locating the r1q executable")?;
    let res = Command::new(exe)
        .args(["convert", "--quiet", "--outtype", outtype, "-o"])
        .arg(&out)
        .arg(model)
        .output()
        .context("running r1q convert")?;
    if !res.status.success() {
        bail!(
            "converting the fixture to {outtype}: {}",
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `r1q demo`.
pub fn run(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let tmp;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let model_dir = dir.join("deepseek-v3-fixture");
    let summary = fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        &model_dir,
        &fixtures::Options::default(),
    )?;
    eprintln!(
        "demo: DeepSeek-V3 fixture ({} tensors, {} parameters, FP8 with block scales) in {}",
        summary.n_tensors,
        summary.n_params,
        model_dir.display()
    );
    let mut outtypes = vec!["q8_0"];
    for mix in ["Q4_K_M", "Q2_K"] {
        let supported = quantize::mix::Mix::from_name(mix)
            .is_some_and(|m| quantize::supports(m.default_type()));
        if supported {
            outtypes.push(mix);
        } else {
            eprintln!("demo: {mix} not available in this build's quantize crate; skipped");
        }
    }
    let mut quants = Vec::new();
    for t in &outtypes {
        let path = convert(&dir, &model_dir, t)?;
        quants.push(open_model(&path)?);
    }
    let base = open_model(&model_dir)?;
    let plan = match &args.file {
        Some(f) => plan_text(&base, f, args.ctx_size, None)?,
        None => {
            let engine = Engine::new(&base.source)?;
            let len = (3 * args.ctx_size).div_ceil(SAMPLE_SEQS).max(2);
            // Start each sample from a different ordinary token.
            let n_vocab = engine.config().n_vocab as u32;
            let starts: Vec<u32> = (0..SAMPLE_SEQS as u32)
                .map(|i| (300 + 37 * i) % n_vocab)
                .collect();
            let allowed = sampleable(&base.source, &base.tokenizer, n_vocab as usize);
            let tokens = sample(&engine, &allowed, &starts, len)?;
            eprintln!(
                "demo: the base model sampled {} tokens ({} sequences); e.g. {:?}",
                tokens.len(),
                SAMPLE_SEQS,
                base.tokenizer.decode(tokens.get(..24).unwrap_or(&tokens))
            );
            let bos = if base.tokenizer.add_bos() {
                base.tokenizer.bos()
            } else {
                None
            };
            ChunkPlan::new(&tokens, args.ctx_size, None, bos)?
        }
    };
    let table = measure(&base, &quants, &plan, None)?;
    print(&table, args.json)?;
    eprintln!("demo: done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
