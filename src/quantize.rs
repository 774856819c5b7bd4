//! `r1q quantize IN.gguf OUT.gguf TYPE`: GGUF → GGUF as llama-quantize does it (same tensor
//! order, types, bytes and metadata), plus the mix options `convert --outtype MIX` shares.

use std::io::Write;
use std::path::PathBuf;

use ::convert::pipeline::{self, ExecOptions, ImatrixWeights};
use ::convert::requantize::mix::{parse_type, Choice, Mix, MixOptions, Reason, TensorTypeOverride};
use ::convert::requantize::{self, QuantizeOptions, RequantPlan};
use anyhow::{bail, Context, Result};
use formats::ggml_type::GgmlType;
use formats::gguf::GgufFile;

use crate::convert::{gib, peak_rss_kib, Bar};

/// The per-tensor type options of llama-quantize, shared by `quantize` and `convert --outtype
/// MIX`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MixArgs {
    /// Importance matrix (llama-imatrix's GGUF or legacy .dat): weights the quantization error
    /// per input column; recorded in the quantize.imatrix.* keys.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Every quantizable tensor gets the mix's default type (no per-tensor heuristics; the
    /// row-length fallback still applies).
    #[arg(long)]
    pub pure: bool,
    /// Keep output.weight in its input type.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// Type of output.weight (a ggml type name, e.g. q8_0).
    #[arg(long, value_name = "TYPE")]
    pub output_tensor_type: Option<String>,
    /// Type of token_embd.weight (a ggml type name).
    #[arg(long, value_name = "TYPE")]
    pub token_embedding_type: Option<String>,
    /// Force TYPE on tensors whose name matches REGEX (searched anywhere, lower-cased; first
    /// matching rule wins). Repeatable.
    #[arg(long, value_name = "REGEX=TYPE")]
    pub tensor_type: Vec<String>,
}

impl MixArgs {
    /// The chooser's options (has_imatrix is set by the planner).
    pub fn mix_options(&self) -> Result<MixOptions> {
        let ty = |flag: &str, s: &Option<String>| -> Result<Option<GgmlType>> {
            s.as_deref()
                .map(|name| {
                    parse_type(name).with_context(|| {
                        format!("{flag} {name}: not a ggml type name (e.g. q4_k, q6_k, q8_0, f16)")
                    })
                })
                .transpose()
        };
        Ok(MixOptions {
            has_imatrix: false,
            pure: self.pure,
            leave_output_tensor: self.leave_output_tensor,
            output_tensor_type: ty("--output-tensor-type", &self.output_tensor_type)?,
            token_embedding_type: ty("--token-embedding-type", &self.token_embedding_type)?,
            tensor_type_overrides: self
                .tensor_type
                .iter()
                .map(|a| TensorTypeOverride::parse(a))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether any option that only a mix understands was given.
    pub fn any(&self) -> bool {
        self.imatrix.is_some()
            || self.pure
            || self.leave_output_tensor
            || self.output_tensor_type.is_some()
            || self.token_embedding_type.is_some()
            || !self.tensor_type.is_empty()
    }

    /// Loads the imatrix, if one was given.
    pub fn load_imatrix(&self) -> Result<Option<ImatrixWeights>> {
        self.imatrix
            .as_deref()
            .map(ImatrixWeights::load)
            .transpose()
            .map_err(Into::into)
    }
}

/// A mix as llama-quantize's TYPE argument names it: a name or alias (Q4_K = Q4_K_M, …), any
/// case, or its numeric `llama_ftype`.
pub fn parse_mix(name: &str) -> Result<Mix> {
    if let Some(m) = Mix::from_name(name) {
        return Ok(m);
    }
    if let Some(m) = name.parse::<u32>().ok().and_then(Mix::from_ftype) {
        return Ok(m);
    }
    let names: Vec<&str> = Mix::ALL.iter().map(|m| m.name()).collect();
    bail!(
        "unknown quantization type '{name}': expected one of {} (or the aliases Q3_K, Q4_K, Q5_K; any case)",
        names.join(", ")
    )
}

/// Arguments of `r1q quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF to quantize (F32, F16 or BF16; quantized input needs --allow-requantize).
    #[arg(value_name = "IN.gguf")]
    input: PathBuf,
    /// The GGUF to write (appears only when complete), then the TYPE. With --dry-run the output
    /// may be left out: `r1q quantize IN.gguf TYPE --dry-run`.
    #[arg(value_name = "OUT.gguf")]
    output_or_type: String,
    /// The mix: Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_XS, … (llama-quantize's names, any case).
    #[arg(value_name = "TYPE")]
    mix: Option<String>,
    #[command(flatten)]
    mix_args: MixArgs,
    /// Quantize tensors that are already quantized (quality suffers twice).
    #[arg(long)]
    allow_requantize: bool,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the plan (every tensor's type and size, total size and bits per weight) and write
    /// nothing.
    #[arg(long)]
    dry_run: bool,
    /// No progress bar and no plan listing (the summary line is still printed).
    #[arg(long, short)]
    quiet: bool,
}

/// Plans, then prints the plan (`--dry-run`) or executes it.
pub fn run(args: &Args) -> Result<()> {
    let (output, mix_name) = match &args.mix {
        Some(m) => (Some(PathBuf::from(&args.output_or_type)), m.as_str()),
        None if args.dry_run => (None, args.output_or_type.as_str()),
        None => bail!("missing TYPE: r1q quantize IN.gguf OUT.gguf TYPE"),
    };
    let mix = parse_mix(mix_name)?;
    let mix_options = args.mix_args.mix_options()?;
    let file = GgufFile::open(&args.input)?;
    let imatrix = args.mix_args.load_imatrix()?;
    let opts = QuantizeOptions {
        mix,
        mix_options,
        allow_requantize: args.allow_requantize,
    };
    let plan = requantize::plan_requantize(&file, &opts, imatrix.as_ref())?;
    for name in plan.without_weights() {
        eprintln!(
            "r1q: note: no usable imatrix entry for {name}; quantized without importance weights"
        );
    }
    if args.dry_run {
        return print_plan(&plan, true);
    }
    if !args.quiet {
        print_plan(&plan, false)?;
    }
    let Some(out) = output else {
        bail!("no output file: r1q quantize IN.gguf OUT.gguf TYPE");
    };
    pipeline::install_ctrlc_handler().map_err(anyhow::Error::msg)?;
    let bar = Bar::new(args.quiet);
    let exec = ExecOptions {
        threads: args.threads,
        ..ExecOptions::default()
    };
    let summary = requantize::requantize(&file, &plan, &out, &exec, &bar)?;
    bar.0.finish_and_clear();
    let secs = summary.elapsed.as_secs_f64().max(1e-9);
    let rss = peak_rss_kib().map_or_else(String::new, |k| {
        format!(", peak RSS {:.1} MiB", k as f64 / 1024.0)
    });
    let bpw = plan.size().map_or(0.0, |s| s.bits_per_weight);
    eprintln!(
        "wrote {}: {} tensors, {:.3} GiB ({mix}, {bpw:.3} bits per weight), {secs:.3} s, {:.1} MB/s of input{rss}",
        summary.path.display(),
        summary.tensors,
        gib(summary.file_bytes),
        summary.source_bytes as f64 / secs / 1e6,
    );
    Ok(())
}

fn reason(c: &Choice) -> String {
    let r = match &c.reason {
        Reason::Kept => "kept".to_string(),
        Reason::TokenEmbeddingType => "--token-embedding-type".into(),
        Reason::OutputTensorType => "--output-tensor-type".into(),
        Reason::FloatMix => "float mix".into(),
        Reason::Override(k) => format!("--tensor-type #{}", k + 1),
        Reason::Pure => "pure".into(),
        Reason::Mix => "mix".into(),
    };
    match c.fallback_from {
        Some(f) => format!("{r}, fallback from {f}"),
        None => r,
    }
}

/// One line per tensor (name, input → output type, ne, bytes, why), then totals.
fn print_plan(plan: &RequantPlan, totals: bool) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(
        out,
        "{:<40} {:>7}   {:<7} {:>22} {:>12}  why",
        "tensor", "in", "out", "ne", "bytes"
    )?;
    for t in &plan.tensors {
        let c = &t.choice;
        let dims: Vec<String> = c.dims.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "{:<40} {:>7} → {:<7} {:>22} {:>12}  {}",
            c.name,
            t.input_type.name(),
            c.ggml_type.name(),
            dims.join("×"),
            c.ggml_type.nbytes(&c.dims).unwrap_or(0),
            reason(c)
        )?;
    }
    if totals {
        print_totals(&mut out, plan.mix, plan.size(), plan.input_bytes)?;
    }
    out.flush().context("writing the plan")
}

/// The totals line of a plan: size, GiB and bits per weight of the result.
pub fn print_totals(
    out: &mut impl Write,
    mix: Mix,
    size: Option<::convert::requantize::mix::PlanSize>,
    input_bytes: u64,
) -> Result<()> {
    let Some(s) = size else {
        bail!("the plan's size overflows");
    };
    writeln!(
        out,
        "{mix}: {} parameters, {} bytes of tensor data ({:.3} GiB), {:.3} bits per weight (input {:.3} GiB)",
        s.n_elements,
        s.bytes,
        gib(s.bytes),
        s.bits_per_weight,
        gib(input_bytes)
    )?;
    Ok(())
}
