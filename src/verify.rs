//! `r1q verify BASE QUANT... -f TEXT`: one table saying what quantization cost — each model's
//! size, bits per weight, perplexity and its change, mean and p99 KL divergence from BASE and
//! how often its top-1 token agrees with BASE's.
//!
//! BASE is evaluated once (layer-major) and its log-probabilities at every scored position are
//! kept in a temporary KL-divergence base file (llama.cpp's format, ~n_vocab·2 bytes per
//! position); each QUANT is then evaluated against it, so memory never holds more than one model's
//! layer and one batch of logits.

use std::io::Write;
use std::path::{Path, PathBuf};

use ::verify::kld::{BaseHeader, BaseReader, BaseWriter};
use ::verify::ppl::{self, ChunkPlan, Event, Mode};
use ::verify::{Backend, Device, Engine, WeightSource};
use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::hf_source::{open_model, read_text, set_threads, Model};
use crate::perplexity::layer_bar;

/// Arguments of `r1q verify`.
#[derive(clap::Args)]
pub struct Args {
    /// The reference model: a GGUF file (e.g. F32/BF16) or an HF checkpoint directory.
    base: PathBuf,
    /// The quantized GGUF files to measure against BASE.
    #[arg(required = true)]
    quants: Vec<PathBuf>,
    /// The evaluation text (UTF-8).
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    file: PathBuf,
    /// Chunk length in tokens; the second half of each chunk is scored.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Evaluate at most N chunks.
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Print the table as JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
    /// Evaluate the chunks in groups whose peak memory stays below BYTES (default: 80 % of the
    /// memory available when the run starts, where one chunk fits; on CUDA also what the GPU
    /// offers for activations).
    #[arg(long, value_name = "BYTES")]
    max_memory: Option<u64>,
    /// Where the forward pass runs: cpu, cuda or cuda:N (cuda needs a build with --features
    /// cuda and an NVIDIA driver).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// File name.
    pub file: String,
    /// Tensor bytes.
    pub size_bytes: u64,
    /// Bits per weight.
    pub bpw: f64,
    /// Perplexity and its uncertainty.
    pub ppl: (f64, f64),
    /// PPL change relative to BASE, in percent (0 for BASE).
    pub delta_ppl_pct: f64,
    /// Mean KLD ± SE, p99 and median KLD, same-top-1 percentage (None for BASE).
    pub kld: Option<(f64, f64, f32, f32, f64)>,
}

/// The verify table: BASE first.
#[derive(Debug, Clone)]
pub struct Table {
    /// Chunk length.
    pub n_ctx: usize,
    /// Chunks evaluated.
    pub n_chunk: usize,
    /// Tokens scored per model.
    pub scored: usize,
    /// BASE, then each QUANT in order.
    pub rows: Vec<Row>,
}

/// Evaluates BASE once, then every QUANT against it, on `plan`'s chunks, on the CPU.
pub fn measure(
    base: &Model,
    quants: &[Model],
    plan: &ChunkPlan,
    max_memory: Option<u64>,
) -> Result<Table> {
    measure_on(base, quants, plan, max_memory, Device::Cpu)
}

/// [`measure`] with the forward passes on `device` (one backend shared by all models).
pub fn measure_on(
    base: &Model,
    quants: &[Model],
    plan: &ChunkPlan,
    max_memory: Option<u64>,
    device: Device,
) -> Result<Table> {
    let backend: std::sync::Arc<dyn Backend> = ::verify::backend::open(device)?;
    if device != Device::Cpu {
        eprintln!("verify: device {}", backend.describe());
    }
    let engine = Engine::new(&base.source)?.with_backend(backend.clone());
    let n_vocab = engine.config().n_vocab;
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let base_file = tmp.path().join("base.kld");
    let n_models = 1 + quants.len();
    let bar = layer_bar((engine.config().n_layer + 1) as u64);
    bar.set_prefix(format!("1/{n_models} {}", base.label()));
    let mut on_event = |e: Event<'_>| {
        if let Event::Layer(p) = e {
            bar.set_position(p.layer as u64);
        }
    };
    let mut writer = BaseWriter::create(
        &base_file,
        BaseHeader {
            n_ctx: plan.n_ctx,
            n_vocab,
            n_chunk: plan.n_chunk,
            tokens: plan.tokens.clone(),
        },
    )?;
    let out = ppl::run(
        &engine,
        plan,
        Mode::SaveBase(&mut writer),
        max_memory,
        &mut on_event,
    )?;
    writer.finish()?;
    let base_ppl = out.ppl.estimate().unwrap_or((out.ppl.ppl(), f64::NAN));
    let mut rows = vec![Row {
        file: base.label(),
        size_bytes: base.size_bytes,
        bpw: base.bits_per_weight(),
        ppl: base_ppl,
        delta_ppl_pct: 0.0,
        kld: None,
    }];
    for (i, q) in quants.iter().enumerate() {
        let engine = Engine::new(&q.source)?.with_backend(backend.clone());
        let nv = engine.config().n_vocab;
        if nv != n_vocab {
            bail!(
                "{}: vocabulary of {nv} tokens does not match the base model's {n_vocab} ({})",
                q.path.display(),
                base.path.display()
            );
        }
        // Same size is not enough: the same ids must mean the same tokens.
        let key = "tokenizer.ggml.tokens";
        if q.source.get(key) != base.source.get(key) {
            bail!(
                "{}: its vocabulary ({key}) differs from the base model's ({}); KL divergence needs the same tokens",
                q.path.display(),
                base.path.display()
            );
        }
        bar.reset();
        bar.set_length((engine.config().n_layer + 1) as u64);
        bar.set_prefix(format!("{}/{n_models} {}", i + 2, q.label()));
        let mut reader = BaseReader::open(&base_file)?;
        let mut on_event = |e: Event<'_>| {
            if let Event::Layer(p) = e {
                bar.set_position(p.layer as u64);
            }
        };
        let out = ppl::run(
            &engine,
            plan,
            Mode::Compare(&mut reader),
            max_memory,
            &mut on_event,
        )?;
        let Some(k) = out.kld else {
            bail!("internal: no KLD statistics for {}", q.path.display());
        };
        rows.push(Row {
            file: q.label(),
            size_bytes: q.size_bytes,
            bpw: q.bits_per_weight(),
            ppl: (k.ppl, k.ppl_unc),
            delta_ppl_pct: 100.0 * (k.ppl / base_ppl.0 - 1.0),
            kld: Some((
                k.mean_kld,
                k.mean_kld_unc,
                k.kld_percentile(0.99).unwrap_or(f32::NAN),
                k.kld_median,
                100.0 * k.same_top,
            )),
        });
    }
    bar.finish_and_clear();
    if let Some(line) = backend.memory_report() {
        eprintln!("verify: {line}");
    }
    Ok(Table {
        n_ctx: plan.n_ctx,
        n_chunk: plan.n_chunk,
        scored: plan.n_chunk * plan.scored_per_chunk(),
        rows,
    })
}

fn human_size(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

impl Table {
    /// The table as text, one model per line.
    pub fn render(&self) -> String {
        let w = self
            .rows
            .iter()
            .map(|r| r.file.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut s = format!(
            "{:w$}  {:>10}  {:>6}  {:>19}  {:>8}  {:>19}  {:>9}  {:>6}\n",
            "file", "size", "bpw", "PPL", "ΔPPL", "mean KLD", "p99 KLD", "top-1"
        );
        for r in &self.rows {
            let (kld, p99, top) = match r.kld {
                Some((m, se, p99, _, top)) => (
                    format!("{m:.6} ± {se:.6}"),
                    format!("{p99:.6}"),
                    format!("{top:.2}%"),
                ),
                None => ("(base)".into(), "-".into(), "-".into()),
            };
            s.push_str(&format!(
                "{:w$}  {:>10}  {:>6.3}  {:>19}  {:>7.3}%  {:>19}  {:>9}  {:>6}\n",
                r.file,
                human_size(r.size_bytes),
                r.bpw,
                format!("{:.4} ± {:.4}", r.ppl.0, r.ppl.1),
                r.delta_ppl_pct,
                kld,
                p99,
                top
            ));
        }
        s.push_str(&format!(
            "{} chunks of {} tokens, {} tokens scored per model\n",
            self.n_chunk, self.n_ctx, self.scored
        ));
        s
    }

    /// The table as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "file": r.file,
                    "size_bytes": r.size_bytes,
                    "bits_per_weight": r.bpw,
                    "ppl": r.ppl.0,
                    "ppl_err": r.ppl.1,
                    "delta_ppl_pct": r.delta_ppl_pct,
                });
                if let Some((m, se, p99, med, top)) = r.kld {
                    v["mean_kld"] = json!(m);
                    v["mean_kld_err"] = json!(se);
                    v["p99_kld"] = json!(p99);
                    v["median_kld"] = json!(med);
                    v["top1_agreement_pct"] = json!(top);
                }
                v
            })
            .collect();
        json!({
            "n_ctx": self.n_ctx,
            "n_chunk": self.n_chunk,
            "tokens_scored": self.scored,
            "base": rows.first(),
            "models": rows,
        })
    }
}

/// Prints the table (text or JSON) on stdout.
pub fn print(table: &Table, as_json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&table.to_json())?)?;
    } else {
        write!(out, "{}", table.render())?;
    }
    Ok(())
}

/// Tokenizes `text` with BASE's vocabulary and plans the chunks.
pub fn plan_text(
    base: &Model,
    text_path: &Path,
    n_ctx: usize,
    chunks: Option<usize>,
) -> Result<ChunkPlan> {
    let text = read_text(text_path)?;
    let tok = &base.tokenizer;
    let tokens = tok.encode(&text, true)?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    ChunkPlan::new(&tokens, n_ctx, chunks, bos)
        .map_err(|e| anyhow::anyhow!("{}: {e}", text_path.display()))
}

/// Runs `r1q verify`.
pub fn run(args: &Args) -> Result<()> {
    set_threads(args.threads)?;
    let device: Device = args.device.parse()?;
    // Cheap checks first: a missing text file fails before any model is opened.
    read_text(&args.file)?;
    let base = open_model(&args.base)?;
    let quants = args
        .quants
        .iter()
        .map(|p| open_model(p))
        .collect::<Result<Vec<_>>>()?;
    let plan = plan_text(&base, &args.file, args.ctx_size, args.chunks)?;
    let table = measure_on(&base, &quants, &plan, args.max_memory, device)?;
    print(&table, args.json)
}
