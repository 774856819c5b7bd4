//! `r1q perplexity MODEL -f TEXT`: llama-perplexity's perplexity (and KL-divergence) run with its
//! output format, so numbers and logs compare line by line.
//!
//! Modes as in llama-perplexity: plain (running `[k]X,` then `Final estimate: PPL = X +/- Y`);
//! `--kl-divergence-base FILE --save` also writes the base log-probabilities in llama.cpp's
//! format; `--kl-divergence-base FILE` alone compares against it (the file's tokens and n_ctx are
//! used, `-f` is not needed) and prints the running KLD table and the final statistics blocks.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use ::verify::kld::{self, BaseHeader, BaseReader, BaseWriter};
use ::verify::ppl::{self, ChunkPlan, Event, Mode};
use ::verify::{Device, Engine};
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::hf_source::{open_model, read_text, set_threads};

/// Arguments of `r1q perplexity`.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a GGUF file or an HF checkpoint directory.
    model: PathBuf,
    /// The evaluation text (UTF-8), tokenized once as a whole.
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    file: Option<PathBuf>,
    /// Chunk length in tokens (llama-perplexity's -c); the second half of each chunk is scored.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Evaluate at most N chunks (default: all ⌊tokens/ctx⌋).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// KL-divergence base file: compared against, or written with --save.
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Write the base file (llama.cpp's format) instead of comparing against it.
    #[arg(long, requires = "kl_divergence_base")]
    save: bool,
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

/// A layer progress bar on stderr, hidden when stderr is not a terminal.
pub fn layer_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} layers {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `r1q perplexity`.
pub fn run(args: &Args) -> Result<()> {
    set_threads(args.threads)?;
    let device: Device = args.device.parse()?;
    let model = open_model(&args.model)?;
    let engine = Engine::new_with_device(&model.source, device)?;
    if device != Device::Cpu {
        eprintln!("perplexity: device {}", engine.backend().describe());
    }
    let n_vocab = engine.config().n_vocab;
    let tok = &model.tokenizer;
    let bos = model.scoring_bos(n_vocab, "llama-perplexity")?;
    let compare = args.kl_divergence_base.is_some() && !args.save;

    let mut reader = None;
    let plan = if compare {
        let path = args
            .kl_divergence_base
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        let r = BaseReader::open(path)?;
        r.check_vocab(n_vocab)?;
        let plan = ChunkPlan::from_base(r.header(), bos)?;
        reader = Some(r);
        plan
    } else {
        let Some(file) = &args.file else {
            bail!("no text: pass -f TEXT (only a --kl-divergence-base comparison can do without)");
        };
        let text = read_text(file)?;
        let tokens = tok.encode(&text, true)?;
        ChunkPlan::new(&tokens, args.ctx_size, args.chunks, bos)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
    };
    let mut writer = match (&args.kl_divergence_base, args.save) {
        (Some(path), true) => Some(BaseWriter::create(
            path,
            BaseHeader {
                n_ctx: plan.n_ctx,
                n_vocab,
                n_chunk: plan.n_chunk,
                tokens: plan.tokens.clone(),
            },
        )?),
        _ => None,
    };
    eprintln!(
        "perplexity: calculating perplexity over {} chunks, n_ctx={}, {} tokens scored per chunk",
        plan.n_chunk,
        plan.n_ctx,
        plan.scored_per_chunk()
    );
    let mode = match (&mut writer, &mut reader) {
        (Some(w), _) => Mode::SaveBase(w),
        (None, Some(r)) => Mode::Compare(r),
        _ => Mode::Plain,
    };
    let bar = layer_bar(engine.config().n_layer as u64 + 1);
    bar.set_prefix(model.label());
    let mut printed_header = false;
    let mut stdout = std::io::stdout();
    let mut io_err: Option<std::io::Error> = None;
    let mut on_event = |e: Event<'_>| match e {
        Event::Layer(p) => {
            bar.set_position(p.layer as u64);
            if p.n_groups > 1 {
                bar.set_message(format!("group {}/{}", p.group + 1, p.n_groups));
            }
        }
        Event::Chunk { chunk, ppl, kld } => {
            let line = match kld {
                Some(acc) => {
                    let mut s = String::new();
                    if !printed_header {
                        printed_header = true;
                        s.push_str(kld::CHUNK_HEADER);
                        s.push('\n');
                    }
                    s.push_str(&acc.chunk_line(chunk));
                    s.push('\n');
                    s
                }
                None => ppl::chunk_text(chunk, ppl),
            };
            if let Err(err) = write!(stdout, "{line}").and_then(|_| stdout.flush()) {
                io_err.get_or_insert(err);
            }
        }
    };
    let outcome = ppl::run(&engine, &plan, mode, args.max_memory, &mut on_event)?;
    bar.finish_and_clear();
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if let Some(w) = writer {
        let path = w.finish()?;
        eprintln!(
            "perplexity: saved the base log-probabilities to {}",
            path.display()
        );
    }
    println!();
    match &outcome.kld {
        Some(stats) if stats.count >= 100 => print!("{}", stats.render()),
        Some(_) => eprintln!("perplexity: fewer than 100 tokens scored; no statistics"),
        None => println!("{}", ppl::final_text(&outcome.ppl)),
    }
    if let Some(line) = engine.backend().memory_report() {
        eprintln!("perplexity: {line}");
    }
    Ok(())
}
