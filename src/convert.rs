//! `r1q convert MODEL_DIR -o OUT.gguf`: an HF checkpoint (DeepSeek-R1 FP8, R1-Distill BF16) to
//! GGUF in one streaming pass, with a progress bar on a terminal and one summary line at the end.
//!
//! `--outtype f32|f16|bf16|q8_0` follows llama.cpp's converter (its tensor order and types);
//! any other llama-quantize mix (`Q4_K_M`, `IQ4_XS`, …) is the direct path: the f32 plan typed
//! and ordered by llama-quantize's rules, so the file equals `convert --outtype f32` followed by
//! `quantize … MIX` byte for byte.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use ::convert::arch::PlanOptions;
use ::convert::pipeline::{self, ExecOptions, Progress, Summary};
use ::convert::plan::Plan;
use ::convert::requantize::{self, mix::Mix};
use anyhow::{Context, Result};
use formats::checkpoint::Checkpoint;
use formats::ggml_type::GgmlType;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Output types `--outtype` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutType {
    /// 32-bit float: the exact dequantized values (FP8 × scale), twice the size of bf16.
    F32,
    /// IEEE half precision, llama.cpp's converter default.
    F16,
    /// bfloat16: lossless for BF16 checkpoints, DeepSeek's own FP8 → BF16 cast.
    Bf16,
    /// 8-bit blocks of 32 with an fp16 scale (llama.cpp's reference Q8_0).
    #[value(name = "q8_0")]
    Q8_0,
}

impl OutType {
    fn ggml(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Bf16 => GgmlType::BF16,
            OutType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

/// Arguments of `r1q convert`.
#[derive(clap::Args)]
pub struct Args {
    /// The Hugging Face checkpoint directory (config.json, tokenizer.json, safetensors shards),
    /// or a hub repo id (`org/name`, not an existing path): its config, tokenizer and safetensors
    /// are pulled into the HF cache first (see `r1q pull`).
    model_dir: PathBuf,
    /// The GGUF file to write (appears only when complete; written as OUT.partial meanwhile).
    #[arg(
        short,
        long,
        value_name = "OUT.gguf",
        required_unless_present = "dry_run"
    )]
    output: Option<PathBuf>,
    /// Type of the weight matrices: f32, f16, bf16 or q8_0 as llama.cpp's converter writes them
    /// (norms, biases and routers stay f32), or any llama-quantize mix (Q4_K_M, Q5_K_M, Q6_K,
    /// IQ4_XS, …; any case) quantized in the same pass, byte-identical to `--outtype f32` then
    /// `r1q quantize … MIX`. Default bf16: lossless for the BF16 distills, the same rounding as
    /// DeepSeek's FP8 → BF16 cast, and no f16 overflow or underflow risk (llama.cpp's converter
    /// defaults to f16).
    #[arg(long, value_name = "TYPE|MIX", default_value = "bf16")]
    outtype: String,
    #[command(flatten)]
    mix_args: crate::quantize::MixArgs,
    /// With a mix: round the FP8 × scale product (and every other quantized tensor) to bf16
    /// before quantizing, reproducing the common `--outtype bf16` + llama-quantize pipeline
    /// byte for byte. Default: quantize the exact f32 product (= `--outtype f32` + quantize).
    #[arg(long)]
    fp8_via_bf16: bool,
    /// Force `tokenizer.ggml.pre` (e.g. deepseek-v3, deepseek-r1-qwen, llama-bpe) when the
    /// pre-tokenizer is not recognised.
    #[arg(long, value_name = "NAME")]
    tokenizer_pre: Option<String>,
    /// Worker threads (default: all cores). Peak memory grows with it (about 40 MiB per thread).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// No progress bar (the summary line is still printed).
    #[arg(long, short)]
    quiet: bool,
    /// Print the plan (every tensor's name, type, shape and size; total size and bits per
    /// weight) and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The converter's own outtypes (any case); everything else is a mix.
fn converter_outtype(name: &str) -> Option<OutType> {
    match name.to_ascii_lowercase().as_str() {
        "f32" => Some(OutType::F32),
        "f16" => Some(OutType::F16),
        "bf16" => Some(OutType::Bf16),
        "q8_0" => Some(OutType::Q8_0),
        _ => None,
    }
}

/// Plans, then either prints the plan (`--dry-run`) or executes it.
pub fn run(args: &Args) -> Result<()> {
    let outtype = match converter_outtype(&args.outtype) {
        Some(t) if !args.mix_args.any() && !args.fp8_via_bf16 => t,
        _ => return run_mix(args, crate::quantize::parse_mix(&args.outtype)?),
    };
    let ckpt = Checkpoint::open(crate::pull::model_dir(&args.model_dir, args.quiet)?)?;
    let opts = PlanOptions {
        outtype: outtype.ggml(),
        tokenizer_pre: args.tokenizer_pre.clone(),
        name: None,
    };
    let plan = ::convert::arch::plan(&ckpt, &opts)?;
    if args.dry_run {
        return print_plan(&plan);
    }
    let Some(out) = &args.output else {
        anyhow::bail!("no output file: pass -o OUT.gguf");
    };
    pipeline::install_ctrlc_handler().map_err(anyhow::Error::msg)?;
    let bar = Bar::new(args.quiet);
    let exec = ExecOptions {
        threads: args.threads,
        ..ExecOptions::default()
    };
    let summary = pipeline::execute(&ckpt, &plan, out, &exec, &bar)?;
    bar.0.finish_and_clear();
    eprintln!(
        "{}",
        summary_line(&summary, &format!("{outtype:?}").to_lowercase())
    );
    Ok(())
}

/// The direct path: plan at f32, type and order it with llama-quantize's rules for `mix`, then
/// execute with the imatrix (and optional bf16 rounding) in one pass.
fn run_mix(args: &Args, mix: Mix) -> Result<()> {
    let ckpt = Checkpoint::open(crate::pull::model_dir(&args.model_dir, args.quiet)?)?;
    let opts = PlanOptions {
        outtype: GgmlType::F32,
        tokenizer_pre: args.tokenizer_pre.clone(),
        name: None,
    };
    let mut plan = ::convert::arch::plan(&ckpt, &opts)?;
    let imatrix = args.mix_args.load_imatrix()?;
    let report = requantize::apply_mix(
        &mut plan,
        mix,
        &args.mix_args.mix_options()?,
        imatrix.as_ref(),
    )?;
    for name in &report.without_weights {
        eprintln!(
            "r1q: note: no usable imatrix entry for {name}; quantized without importance weights"
        );
    }
    if args.dry_run {
        return print_plan(&plan);
    }
    let Some(out) = &args.output else {
        anyhow::bail!("no output file: pass -o OUT.gguf");
    };
    pipeline::install_ctrlc_handler().map_err(anyhow::Error::msg)?;
    let bar = Bar::new(args.quiet);
    let exec = ExecOptions {
        threads: args.threads,
        ..ExecOptions::default()
    };
    let extras = pipeline::Extras {
        imatrix: imatrix.as_ref(),
        fp8_via_bf16: args.fp8_via_bf16,
    };
    let summary = pipeline::execute_with(&ckpt, &plan, out, &exec, &extras, &bar)?;
    bar.0.finish_and_clear();
    eprintln!("{}", summary_line(&summary, mix.name()));
    Ok(())
}

/// The progress bar: bytes written, bytes/s and ETA, on stderr; hidden when stderr is not a
/// terminal or with `--quiet`.
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Bar {
    /// A bar on stderr, or a hidden one.
    pub(crate) fn new(quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} \
                 {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        Bar(bar)
    }
}

impl Progress for Bar {
    fn begin(&self, total_bytes: u64) {
        self.0.set_length(total_bytes);
    }
    fn advance(&self, bytes: u64, tensor: &str) {
        self.0.set_message(tensor.to_string());
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Bytes in GiB.
pub(crate) fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// This process's peak resident set (`VmHWM` of /proc/self/status), in KiB, where the OS has it.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The one line printed after a conversion; `peak RSS` lets users (and `cargo xtask bench
/// convert`) check the documented memory bound.
fn summary_line(s: &Summary, outtype: &str) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let rss = peak_rss_kib().map_or_else(String::new, |k| {
        format!(", peak RSS {:.1} MiB", k as f64 / 1024.0)
    });
    format!(
        "wrote {}: {} tensors, {:.3} GiB ({} weights), {:.3} s, {:.2} GB/s of checkpoint data{rss}",
        s.path.display(),
        s.tensors,
        gib(s.file_bytes),
        outtype,
        secs,
        s.source_bytes as f64 / secs / 1e9
    )
}

/// `--dry-run`: one line per tensor, then totals.
fn print_plan(plan: &Plan) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut bytes, mut params) = (0u64, 0u64);
    writeln!(
        out,
        "{:<48} {:>6} {:>24} {:>14}",
        "tensor", "type", "ne", "bytes"
    )?;
    for t in &plan.tensors {
        let n = t.ggml_type.nbytes(&t.dims).unwrap_or(0);
        bytes += n;
        params += t.dims.iter().product::<u64>();
        let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "{:<48} {:>6} {:>24} {:>14}",
            t.name,
            t.ggml_type.name(),
            dims.join("×"),
            n
        )?;
    }
    let bpw = if params == 0 {
        0.0
    } else {
        8.0 * bytes as f64 / params as f64
    };
    writeln!(
        out,
        "{}: {} tensors, {} parameters, {} bytes of tensor data ({:.3} GiB), {:.3} bits per weight; \
         {} metadata keys; {} checkpoint tensors skipped",
        plan.arch,
        plan.tensors.len(),
        params,
        bytes,
        gib(bytes),
        bpw,
        plan.metadata.len(),
        plan.skipped.len()
    )?;
    out.flush().context("writing the plan")
}
