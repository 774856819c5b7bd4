//! `r1q imatrix MODEL -f TEXT -o OUT`: llama-imatrix's importance matrix, collected by the
//! layer-major engine (one layer resident at a time), written in llama.cpp's GGUF imatrix format
//! (default) or the legacy `.dat`; `r1q imatrix --stats FILE` prints llama-imatrix's
//! `--show-statistics` table for any imatrix file.
//!
//! Why `--stats` is a flag of this command rather than a separate `imatrix-stats` command: it is
//! where llama-imatrix users look for it (`--show-statistics`), and all imatrix work stays under
//! one command; clap still refuses the collection arguments with it and requires them without.
//!
//! Output streams as llama-imatrix: the running perplexity `[k]X,` and `Final estimate` on stdout
//! (unless `--no-ppl`); progress, the coverage report and notes on stderr (`--quiet` keeps only
//! errors there).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use ::verify::calibrate::{self, stats, ImatrixEvent, ImatrixOptions, ImatrixPlan};
use ::verify::{Device, Engine};
use anyhow::{bail, Context, Result};
use formats::imatrix::Imatrix;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::hf_source::{open_model, read_text, set_threads};

/// The file formats `-o` can be written in (llama-imatrix's `--output-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// llama.cpp's GGUF imatrix (raw Σx² and per-expert counts).
    Gguf,
    /// The legacy `.dat` (values pre-divided, one ncall per entry; zero-count entries dropped).
    Dat,
}

/// Arguments of `r1q imatrix`.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a GGUF file (any type) or an HF checkpoint directory.
    #[arg(required_unless_present = "stats")]
    model: Option<PathBuf>,
    /// The calibration text (UTF-8), tokenized once as a whole.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "TEXT",
        required_unless_present = "stats"
    )]
    file: Option<PathBuf>,
    /// Where to write the imatrix (atomically).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT",
        required_unless_present = "stats"
    )]
    output: Option<PathBuf>,
    /// Chunk length in tokens (llama-imatrix's -c); the text needs at least two chunks.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Evaluate at most N chunks (default: all ⌊tokens/ctx⌋).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Skip the first K chunks of the text.
    #[arg(long, value_name = "K", default_value_t = 0)]
    from_chunk: usize,
    /// File format of OUT.
    #[arg(long, value_enum, default_value_t = OutputFormat::Gguf)]
    output_format: OutputFormat,
    /// Also collect output.weight (never collected when the output is tied to token_embd).
    #[arg(long)]
    process_output: bool,
    /// Do not compute the running perplexity.
    #[arg(long)]
    no_ppl: bool,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
    /// Evaluate the chunks in groups whose peak memory stays below BYTES.
    #[arg(long, value_name = "BYTES")]
    max_memory: Option<u64>,
    /// Where the forward pass runs: cpu, cuda or cuda:N (cuda needs a build with --features
    /// cuda).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// No progress bar, notes or coverage report on stderr (errors only).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Print per-tensor statistics of an existing imatrix FILE (llama-imatrix
    /// --show-statistics) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["model", "file", "output", "chunks", "process_output", "no_ppl", "max_memory"])]
    stats: Option<PathBuf>,
}

/// Runs `r1q imatrix`.
pub fn run(args: &Args) -> Result<()> {
    if let Some(path) = &args.stats {
        return show_stats(path);
    }
    let (Some(model_path), Some(text_path), Some(out)) = (&args.model, &args.file, &args.output)
    else {
        bail!("r1q imatrix needs MODEL, -f TEXT and -o OUT (or --stats FILE)");
    };
    // The device seam (verify::backend): cpu always; cuda with the `cuda` feature and a driver,
    // otherwise one line saying which is missing.
    let device: Device = args.device.parse()?;
    set_threads(args.threads)?;
    let model = open_model(model_path)?;
    let engine = Engine::new_with_device(&model.source, device)?;
    let tok = &model.tokenizer;
    let n_vocab = engine.config().n_vocab;
    if tok.n_vocab() != n_vocab {
        bail!(
            "{}: the vocabulary has {} tokens but the model {} logits",
            model.path.display(),
            tok.n_vocab(),
            n_vocab
        );
    }
    if tok.add_eos() {
        bail!(
            "{}: the vocabulary appends EOS; llama-imatrix refuses such models too",
            model.path.display()
        );
    }
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let text = read_text(text_path)?;
    let tokens = tok.encode(&text, true)?;
    let plan = ImatrixPlan::new(&tokens, args.ctx_size, args.chunks, args.from_chunk, bos)
        .map_err(|e| anyhow::anyhow!("{}: {e}", text_path.display()))?;
    let note = |s: String| {
        if !args.quiet {
            eprintln!("{s}");
        }
    };
    if args.output_format == OutputFormat::Gguf && out.extension().is_none_or(|e| e != "gguf") {
        note(format!(
            "imatrix: note: writing the GGUF format to {} (not a .gguf name); use --output-format dat for the legacy format",
            out.display()
        ));
    }
    note(format!(
        "imatrix: computing over {} chunks of {} tokens ({} tokens) on {}",
        plan.n_chunk,
        plan.n_ctx,
        plan.tokens.len(),
        engine.backend().describe()
    ));

    let n_layer = engine.config().n_layer as u64 + 1;
    let bar = bar(n_layer, args.quiet);
    bar.set_prefix(model.label());
    let mut stdout = std::io::stdout();
    let mut io_err: Option<std::io::Error> = None;
    let mut on_event = |e: ImatrixEvent<'_>| match e {
        ImatrixEvent::Layer(p) => {
            bar.set_length(n_layer * p.n_groups as u64);
            bar.set_position(p.group as u64 * n_layer + p.layer as u64);
            if p.n_groups > 1 {
                bar.set_message(format!("group {}/{}", p.group + 1, p.n_groups));
            }
        }
        ImatrixEvent::Chunk { chunk, ppl } => {
            let line = ::verify::ppl::chunk_text(chunk, ppl);
            if let Err(err) = write!(stdout, "{line}").and_then(|_| stdout.flush()) {
                io_err.get_or_insert(err);
            }
        }
    };
    let opts = ImatrixOptions {
        process_output: args.process_output,
        compute_ppl: !args.no_ppl,
        max_memory: args.max_memory,
        dataset: text_path.display().to_string(),
    };
    let started = std::time::Instant::now();
    let outcome = calibrate::run_imatrix(&engine, &plan, &opts, &mut on_event)
        .with_context(|| format!("imatrix of {}", model.path.display()))?;
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if let Some(ppl) = &outcome.ppl {
        println!();
        println!("{}", ::verify::ppl::final_text(ppl));
    }
    let im = &outcome.imatrix;
    match args.output_format {
        OutputFormat::Gguf => im.save_gguf(out)?,
        OutputFormat::Dat => im.save_dat(out)?,
    }
    note(format!(
        "imatrix: {} entries from {} chunks ({} tokens, {:.1} tokens/s) written to {}",
        im.entries.len(),
        im.chunk_count,
        plan.tokens.len(),
        plan.tokens.len() as f64 / secs.max(1e-9),
        out.display()
    ));
    for line in coverage_lines(im, args.output_format) {
        note(line);
    }
    Ok(())
}

/// The end-of-run coverage report: per MoE layer, the experts no calibration token reached and
/// what llama-quantize does with them.
fn coverage_lines(im: &Imatrix, format: OutputFormat) -> Vec<String> {
    let cov = calibrate::coverage(im);
    if cov.is_empty() {
        let moe = im.entries.values().any(|e| e.counts.len() > 1);
        return if moe {
            vec!["imatrix: coverage: every expert of every MoE layer received tokens".into()]
        } else {
            Vec::new()
        };
    }
    let mut lines = vec![format!(
        "imatrix: coverage: {} MoE layer(s) have experts that received no tokens:",
        cov.len()
    )];
    for c in &cov {
        let list: Vec<String> = c.unused.iter().map(usize::to_string).collect();
        lines.push(format!(
            "  blk.{}: {} of {} experts unused: {}",
            c.layer,
            c.unused.len(),
            c.n_expert,
            list.join(", ")
        ));
    }
    lines.push(match format {
        OutputFormat::Gguf => "imatrix: llama-quantize gives a zero-count expert weights 1.0, i.e. quantizes it \
            without importance weighting (as if no imatrix); more or more varied text covers more experts"
            .into(),
        OutputFormat::Dat => "imatrix: the .dat format cannot record per-expert counts: a zero-count expert is \
            stored as all 1.0 (no importance weighting), the others divided by the entry's largest count; \
            prefer --output-format gguf for MoE models"
            .into(),
    });
    lines
}

/// `--stats FILE`: llama-imatrix's `--show-statistics` table on stdout.
fn show_stats(path: &std::path::Path) -> Result<()> {
    let im = Imatrix::load(path)?;
    let (tensors, layers) = stats::compute(&im);
    if tensors.is_empty() {
        bail!(
            "imatrix file {}: no entry has any activations (all counts are zero)",
            path.display()
        );
    }
    print!(
        "{}",
        stats::render(&path.display().to_string(), &tensors, &layers)
    );
    let skipped = im.entries.len() - tensors.len();
    if skipped > 0 {
        eprintln!("imatrix: {skipped} entries with all counts zero are not shown");
    }
    Ok(())
}

/// A layer progress bar on stderr, hidden when stderr is not a terminal or with `--quiet`.
fn bar(len: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} layers {msg} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
