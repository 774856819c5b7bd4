//! `r1q`: DeepSeek-R1 (FP8 safetensors) and the R1 distills to GGUF — the command-line interface.
//!
//! This binary only parses arguments, shows progress and maps errors to one line and exit code 1;
//! the work lives in the library crates (`formats`, `quantize`, `convert`, `verify`).

mod convert;
mod demo;
mod hf_source;
mod imatrix;
mod inspect;
mod perplexity;
mod pull;
mod quantize;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Turns DeepSeek-R1 and its distills into GGUF files that llama.cpp runs, and proves what the
/// shrinking cost.
#[derive(Parser)]
#[command(name = "r1q", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the metadata, tensors and size of a GGUF file or an HF checkpoint (directory or
    /// .safetensors file).
    Inspect(inspect::Args),
    /// Convert an HF checkpoint (DeepSeek-R1 FP8, R1-Distill BF16) to GGUF in one streaming pass.
    Convert(convert::Args),
    /// Download a checkpoint from the Hugging Face hub into its shared cache: resumable,
    /// parallel, sha256-verified; prints the snapshot directory.
    Pull(pull::Args),
    /// Quantize a GGUF (F32/F16/BF16) to a llama-quantize mix (Q4_K_M, Q6_K, IQ4_XS, …) with the
    /// same tensor types and bytes as llama-quantize; optional imatrix and per-tensor overrides.
    Quantize(quantize::Args),
    /// Perplexity of a GGUF or HF checkpoint on a text, exactly as llama-perplexity measures it
    /// (and KL divergence against a base file, which `--save` writes in llama.cpp's format).
    Perplexity(perplexity::Args),
    /// One table of what quantization cost: size, bits per weight, PPL, ΔPPL, mean/p99 KLD and
    /// top-1 agreement of each QUANT against BASE, on the same text.
    Verify(verify::Args),
    /// Importance matrix of a model on a calibration text, as llama-imatrix collects it, layer by
    /// layer (GGUF or legacy .dat); `--stats FILE` summarizes an imatrix per tensor.
    Imatrix(imatrix::Args),
    /// The whole pipeline in seconds on a built-in tiny DeepSeek-V3 model: generate, convert to
    /// Q8_0 and the supported K-quant mixes, print the verify table.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Pull(args) => pull::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Perplexity(args) => perplexity::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Imatrix(args) => imatrix::run(&args),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `r1q inspect … | head` closes the pipe early: that is the reader's choice, not an error.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever the error chain holds: scripts read the last line of stderr.
            let line = format!("{err:#}").replace(['\n', '\r'], " ");
            eprintln!("r1q: error: {line}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
