//! `cargo xtask fixture`: writes a deterministic fixture checkpoint (see the `fixtures` crate) and
//! prints a one-line summary.

use std::path::PathBuf;
use std::time::Instant;

use fixtures::{Arch, Options, Preset};

/// Arguments of `cargo xtask fixture`.
#[derive(clap::Args)]
pub struct Args {
    /// Model family: deepseek-v3, qwen2 or llama.
    #[arg(long)]
    arch: Arch,
    /// Output directory (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Seed of every weight; the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Size: tiny (a few MB) or bench (a few hundred MB).
    #[arg(long, default_value_t = Preset::Tiny)]
    preset: Preset,
    /// Use this real tokenizer.json (and the tokenizer_config.json beside it) instead of the
    /// generated one; embeddings and vocab_size are sized to it.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

/// Writes the fixture and prints `dir, shards, tensors, params, bytes`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = Options {
        seed: args.seed,
        preset: args.preset,
        tokenizer: args.tokenizer,
    };
    let start = Instant::now();
    let s = fixtures::write_fixture(args.arch, &args.out, &opts)?;
    println!(
        "{} {} fixture in {}: {} shards, {} tensors, {} params, {} bytes ({:.2} s)",
        args.preset,
        args.arch,
        s.dir.display(),
        s.shards.len(),
        s.n_tensors,
        s.n_params,
        s.bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
