//! Opening a model for evaluation, whether the user names a GGUF file or an HF checkpoint
//! directory, with its tokenizer and size facts for the tables.
//!
//! HF directories: `verify` may not depend on `convert` (DESIGN.md), so the root package adapts.
//! For now the directory is converted once to an F32 GGUF in a private temporary directory (the
//! exact dequantized values, FP8 × scale) and evaluated from there; a streaming adapter over
//! convert's row sources (`pipeline::source::RowSource`, crate-private today) would avoid that
//! copy for the full-size checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;

use ::verify::tokenize::Tokenizer;
use ::verify::GgufSource;
use anyhow::{bail, Context, Result};

/// A model ready for the engine.
pub struct Model {
    /// What the user named (GGUF file or checkpoint directory), for tables.
    pub path: PathBuf,
    /// The weights (a GGUF file; for HF directories the F32 conversion).
    pub source: GgufSource,
    /// The vocabulary's tokenizer (llama.cpp's ids).
    pub tokenizer: Tokenizer,
    /// Bytes of tensor data in the file the user named (for a directory: its safetensors).
    pub size_bytes: u64,
    /// Weights (tensor elements), for bits per weight.
    pub n_params: u64,
    /// Keeps the temporary conversion of an HF directory alive.
    _tmp: Option<tempfile::TempDir>,
}

impl Model {
    /// Bits per weight of the file the user named.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.size_bytes as f64 / self.n_params.max(1) as f64
    }

    /// The file name for tables.
    pub fn label(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Opens `path`: a GGUF file, or an HF checkpoint directory (converted to F32 on the side).
pub fn open_model(path: &Path) -> Result<Model> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (gguf, tmp, dir_bytes) = if meta.is_dir() {
        let tmp = tempfile::tempdir().context("creating a temporary directory")?;
        let out = tmp.path().join("base-f32.gguf");
        let exe = std::env::current_exe().context("locating the r1q executable")?;
        let res = Command::new(exe)
            .args(["convert", "--quiet", "--outtype", "f32", "-o"])
            .arg(&out)
            .arg(path)
            .output()
            .context("running r1q convert")?;
        if !res.status.success() {
            let err = String::from_utf8_lossy(&res.stderr);
            let line = err
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("r1q: error: ");
            bail!("{line}");
        }
        let bytes: u64 = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        (out, Some(tmp), Some(bytes))
    } else {
        (path.to_path_buf(), None, None)
    };
    let source = GgufSource::open(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(source.file())?;
    let file = source.file();
    let n_params: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    let size_bytes = dir_bytes.unwrap_or_else(|| file.tensors().iter().map(|t| t.nbytes).sum());
    Ok(Model {
        path: path.to_path_buf(),
        source,
        tokenizer,
        size_bytes,
        n_params,
        _tmp: tmp,
    })
}

/// Reads the evaluation text, naming the file on failure.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read text file {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Sets the global thread pool's size (`--threads`).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting the thread count")?;
    }
    Ok(())
}
