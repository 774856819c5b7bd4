//! `r1q imatrix MODEL -f TEXT -o OUT`: llama-imatrix's importance matrix, collected by the
//! layer-major engine (one layer resident at a time), written in llama.cpp's GGUF imatrix format
//! (default) or the legacy `.dat`; `r1q imatrix --stats FILE` prints llama-imatrix's
//! `--show-statistics` table for any imatrix file.
//!
//! Why `--stats` is a flag of this command rather than a separate `imatrix-stats` command: it is
//! where llama-imatrix users look for it (`--show-statistics`), and all imatrix work stays under
//! one command; clap still refuses the collection arguments with it and requires them without.
//!
//! `--in-file FILE` (repeatable) adds earlier imatrices (GGUF or `.dat`) to what the run collects,
//! as llama-imatrix does; without `-f TEXT` the inputs are only combined into OUT (checked against
//! MODEL when one is given). With `--from-chunk` this splits a long calibration across runs or
//! machines: chunks 0–99 on one, 100–199 on another, then `--in-file a --in-file b -o all`.
//!
//! Checkpoints. The engine is layer-major, so statistics are complete only after a whole group of
//! chunks has passed every layer. Whenever a run has more than one group (`--max-memory`,
//! `--save-frequency N`), OUT is rewritten atomically after each group with everything so far,
//! so an interrupted run leaves a valid imatrix of the chunks done (stderr says which
//! `--in-file OUT --from-chunk K` resumes). `--save-frequency N` also keeps snapshots named
//! `OUT.at_K` (K = chunks so far, inputs included, a multiple of N): llama-imatrix's name for
//! the same flag, so scripts written for it find them. Overwriting OUT is the resume point
//! (one file, always the latest); the `.at_K` files are what `--save-frequency` means in
//! llama-imatrix (watching the statistics converge), each as large as OUT.
//!
//! Output streams as llama-imatrix: the running perplexity `[k]X,` and `Final estimate` on stdout
//! (unless `--no-ppl`); progress, the coverage report and notes on stderr (`--quiet` keeps only
//! errors there).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use ::verify::calibrate::{self, stats, ImatrixEvent, ImatrixOptions, ImatrixPlan};
use ::verify::{Device, Engine};
use anyhow::{bail, Context, Result};
use formats::imatrix::{Imatrix, ImatrixError, ImatrixFormat};
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
    /// The model: a GGUF file (any type) or an HF checkpoint directory. Optional when only
    /// combining --in-file inputs (then, if given, the inputs are checked against it).
    #[arg(required_unless_present_any = ["stats", "in_file"])]
    model: Option<PathBuf>,
    /// The calibration text (UTF-8), tokenized once as a whole. Without it, --in-file inputs are
    /// only combined into OUT.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "TEXT",
        required_unless_present_any = ["stats", "in_file"],
        requires = "model"
    )]
    file: Option<PathBuf>,
    /// An earlier imatrix (GGUF or legacy .dat) whose sums and counts are added to this run's
    /// (llama-imatrix --in-file); repeatable, or several separated by commas as llama-imatrix
    /// takes them (it keeps only the last of a repeated --in-file; r1q adds them all).
    #[arg(long = "in-file", value_name = "FILE", value_delimiter = ',')]
    in_file: Vec<PathBuf>,
    /// Where to write the imatrix (atomically).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT",
        required_unless_present = "stats"
    )]
    output: Option<PathBuf>,
    /// Chunk length in tokens (llama-imatrix's -c; default 512); the text needs at least two
    /// chunks. When only combining, the default is the --in-file inputs' chunk size.
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
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
    /// Evaluate the chunks in groups whose peak memory stays below BYTES (default: 80 % of the
    /// memory available when the run starts, where one chunk fits; on CUDA also what the GPU
    /// offers for activations).
    #[arg(long, value_name = "BYTES")]
    max_memory: Option<u64>,
    /// Evaluate at most N chunks per group; after each group rewrite OUT (a checkpoint) and,
    /// every N chunks, keep a snapshot OUT.at_K (K chunks so far, as llama-imatrix names them).
    #[arg(long, value_name = "N", requires = "file", value_parser = clap::value_parser!(u64).range(1..))]
    save_frequency: Option<u64>,
    /// Where the forward pass runs: cpu, cuda or cuda:N (cuda needs a build with --features
    /// cuda).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// No progress bar, notes or coverage report on stderr (errors only).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Print per-tensor statistics of an existing imatrix FILE (llama-imatrix
    /// --show-statistics) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["model", "file", "output", "chunks", "process_output", "no_ppl", "max_memory", "in_file", "save_frequency"])]
    stats: Option<PathBuf>,
}

/// llama-imatrix's default chunk length (`-c`).
const DEFAULT_CTX: usize = 512;

/// Runs `r1q imatrix`.
pub fn run(args: &Args) -> Result<()> {
    if let Some(path) = &args.stats {
        return show_stats(path);
    }
    let Some(out) = &args.output else {
        bail!("r1q imatrix needs -o OUT (or --stats FILE)");
    };
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
    let inputs = args
        .in_file
        .iter()
        .map(|p| Ok((p.clone(), Imatrix::load(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let ctx_size = chunk_size(args, &inputs, &note)?;
    let Some(text_path) = &args.file else {
        let unused = evaluation_only_options(args);
        if !unused.is_empty() {
            bail!(
                "{} only apply when evaluating a text (-f TEXT); without -f the --in-file inputs are only combined",
                unused.join(", ")
            );
        }
        return combine(args, out, ctx_size, &inputs, &note);
    };
    let Some(model_path) = &args.model else {
        bail!("r1q imatrix -f TEXT needs MODEL");
    };
    // The device seam (verify::backend): cpu always; cuda with the `cuda` feature and a driver,
    // otherwise one line saying which is missing.
    let device: Device = args.device.parse()?;
    set_threads(args.threads)?;
    let model = open_model(model_path)?;
    let initial = if inputs.is_empty() {
        None
    } else {
        Some(add_inputs(&inputs, ctx_size, Some(&model.source))?)
    };
    let engine = Engine::new_with_device(&model.source, device)?;
    let tok = &model.tokenizer;
    let bos = model.scoring_bos(engine.config().n_vocab, "llama-imatrix")?;
    let text = read_text(text_path)?;
    let tokens = tok.encode(&text, true)?;
    let plan = ImatrixPlan::new(&tokens, ctx_size, args.chunks, args.from_chunk, bos)
        .map_err(|e| anyhow::anyhow!("{}: {e}", text_path.display()))?;
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
    let mut io_err: Option<anyhow::Error> = None;
    // The chunks of the text in the last checkpoint written to OUT.
    let mut saved: Option<std::ops::Range<usize>> = None;
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
                io_err.get_or_insert(err.into());
            }
        }
        ImatrixEvent::Checkpoint { imatrix, chunks } => {
            if io_err.is_some() {
                return;
            }
            match save(imatrix, out, args.output_format, args.save_frequency) {
                Ok(()) => {
                    bar.suspend(|| {
                        note(format!(
                            "imatrix: checkpoint: {} holds chunks {}..{} of the text ({} chunks in all); \
                             if interrupted, resume with {}",
                            out.display(),
                            chunks.start,
                            chunks.end,
                            imatrix.chunk_count,
                            resume_hint(args, out, &chunks)
                        ))
                    });
                    saved = Some(chunks);
                }
                Err(e) => {
                    io_err.get_or_insert(e);
                }
            }
        }
    };
    let opts = ImatrixOptions {
        process_output: args.process_output,
        compute_ppl: !args.no_ppl,
        max_memory: args.max_memory,
        dataset: text_path.display().to_string(),
        initial,
        save_frequency: args.save_frequency.map(|n| n as usize),
    };
    let started = std::time::Instant::now();
    let result = calibrate::run_imatrix(&engine, &plan, &opts, &mut on_event);
    bar.finish_and_clear();
    let outcome = result
        .map_err(|e| {
            let left = match &saved {
                Some(c) => format!(
                    "; {} keeps the checkpoint of chunks {}..{} (resume with {})",
                    out.display(),
                    c.start,
                    c.end,
                    resume_hint(args, out, c)
                ),
                None => format!("; nothing was written to {}", out.display()),
            };
            anyhow::anyhow!("{e}{left}")
        })
        .with_context(|| format!("imatrix of {}", model.path.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = io_err {
        return Err(e);
    }
    if let Some(ppl) = &outcome.ppl {
        println!();
        println!("{}", ::verify::ppl::final_text(ppl));
    }
    let im = &outcome.imatrix;
    save(im, out, args.output_format, args.save_frequency)?;
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
    if let Some(line) = engine.backend().memory_report() {
        note(format!("imatrix: {line}"));
    }
    Ok(())
}

/// The arguments that continue a run whose checkpoint OUT holds chunks `done` of the text:
/// OUT as the only `--in-file` (it already includes the earlier inputs), the next chunk, and
/// what is left of `--chunks`.
fn resume_hint(args: &Args, out: &Path, done: &std::ops::Range<usize>) -> String {
    let rest = args
        .chunks
        .map(|c| format!(" --chunks {}", c.saturating_sub(done.len())))
        .unwrap_or_default();
    let instead = if args.in_file.is_empty() {
        ""
    } else {
        " in place of the earlier --in-file inputs, which it includes"
    };
    format!(
        "--in-file {} --from-chunk {}{rest}{instead}",
        out.display(),
        done.end
    )
}

/// The chunk size of this run: `-c`; without it, when only combining, the one chunk size the
/// GGUF inputs share (an error when they differ), else llama-imatrix's 512. A GGUF input of
/// another chunk size gets a note: its sums still add up (they are per token), but its chunk
/// count and `--from-chunk` count in chunks of a different length.
fn chunk_size(args: &Args, inputs: &[(PathBuf, Imatrix)], note: &dyn Fn(String)) -> Result<usize> {
    let sized: Vec<(&PathBuf, usize)> = inputs
        .iter()
        .filter(|(_, im)| im.format == ImatrixFormat::Gguf)
        .map(|(p, im)| (p, im.chunk_size as usize))
        .collect();
    let n = match (args.ctx_size, &args.file, sized.first()) {
        (Some(c), _, _) => c,
        (None, None, Some(&(first, c))) => {
            if let Some((p, other)) = sized.iter().find(|(_, s)| *s != c) {
                bail!(
                    "--in-file {} has chunks of {c} tokens but {} of {other}; pass -c to choose the chunk size of OUT",
                    first.display(),
                    p.display()
                );
            }
            c
        }
        _ => DEFAULT_CTX,
    };
    if n == 0 {
        bail!("the context (-c) must be at least 1 token");
    }
    for (p, c) in sized.iter().filter(|(_, c)| *c != n) {
        note(format!(
            "imatrix: note: --in-file {} was collected with chunks of {c} tokens, this run uses {n}; \
             its sums are added as they are, chunk counts are in chunks of {n}",
            p.display()
        ));
    }
    Ok(n)
}

/// The inputs added up (llama-imatrix's `load_imatrix` per `--in-file`, in order), each first
/// checked against `model` when there is one; errors name the file and the entry.
fn add_inputs(
    inputs: &[(PathBuf, Imatrix)],
    ctx_size: usize,
    model: Option<&dyn ::verify::WeightSource>,
) -> Result<Imatrix> {
    let mut sum = Imatrix::empty(u32::try_from(ctx_size).context("-c is too large")?);
    for (path, im) in inputs {
        if let Some(source) = model {
            calibrate::check_imatrix(source, im)
                .map_err(|e| anyhow::anyhow!("imatrix file {}: {e}", path.display()))?;
        }
        sum.add(im)
            .map_err(|p| ImatrixError::new(path.clone(), p))?;
    }
    Ok(sum)
}

/// The options given that only an evaluation of a text uses, so that a combine-only run refuses
/// them instead of ignoring them silently.
fn evaluation_only_options(args: &Args) -> Vec<&'static str> {
    [
        ("--chunks", args.chunks.is_some()),
        ("--from-chunk", args.from_chunk != 0),
        ("--process-output", args.process_output),
        ("--no-ppl", args.no_ppl),
        ("--max-memory", args.max_memory.is_some()),
        ("--device", args.device != "cpu"),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect()
}

/// `--in-file …` without `-f`: the inputs combined into OUT (llama-imatrix does the same when
/// it has no prompt).
fn combine(
    args: &Args,
    out: &Path,
    ctx_size: usize,
    inputs: &[(PathBuf, Imatrix)],
    note: &dyn Fn(String),
) -> Result<()> {
    let model = args.model.as_deref().map(open_model).transpose()?;
    let source = model
        .as_ref()
        .map(|m| &m.source as &dyn ::verify::WeightSource);
    let im = add_inputs(inputs, ctx_size, source)?;
    save(&im, out, args.output_format, None)?;
    note(format!(
        "imatrix: {} entries from {} chunks of {} input file(s) written to {}",
        im.entries.len(),
        im.chunk_count,
        inputs.len(),
        out.display()
    ));
    for line in coverage_lines(&im, args.output_format) {
        note(line);
    }
    Ok(())
}

/// Writes `im` to OUT atomically in `format`, and with `--save-frequency N` also the snapshot
/// `OUT.at_K` when its chunk count K is a multiple of N.
fn save(im: &Imatrix, out: &Path, format: OutputFormat, every: Option<u64>) -> Result<()> {
    let write = |path: &Path| match format {
        OutputFormat::Gguf => im.save_gguf(path),
        OutputFormat::Dat => im.save_dat(path),
    };
    write(out)?;
    let k = u64::from(im.chunk_count);
    if every.is_some_and(|n| k > 0 && k.is_multiple_of(n)) {
        let mut at = out.as_os_str().to_owned();
        at.push(format!(".at_{k}"));
        write(Path::new(&at))?;
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
