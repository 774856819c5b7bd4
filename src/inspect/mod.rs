//! `r1q inspect PATH`: what a GGUF file or an HF checkpoint holds, for people (`--json` for scripts).

mod checkpoint;
mod gguf;
mod render;

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Arguments of `r1q inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, an HF checkpoint directory, or a single .safetensors file.
    path: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Print every element of long metadata arrays instead of a summary.
    #[arg(long)]
    full: bool,
}

/// Dispatches on what the path is: a directory or `.safetensors` is a checkpoint, a file starting
/// with the GGUF magic is GGUF.
pub fn run(args: &Args) -> Result<()> {
    let path = args.path.as_path();
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result =
        if meta.is_dir() || has_extension(path, "safetensors") || has_extension(path, "json") {
            checkpoint::inspect(path, args.json, &mut out)
        } else if starts_with_gguf_magic(path)? || has_extension(path, "gguf") {
            gguf::inspect(path, args.json, args.full, &mut out)
        } else {
            anyhow::bail!(
            "{}: neither a GGUF file (no GGUF magic) nor a checkpoint (directory or .safetensors)",
            path.display()
        )
        };
    result.and_then(|()| out.flush().map_err(Into::into))
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn starts_with_gguf_magic(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let n = file
        .read(&mut magic)
        .with_context(|| format!("{}: reading", path.display()))?;
    Ok(n == 4 && &magic == b"GGUF")
}
