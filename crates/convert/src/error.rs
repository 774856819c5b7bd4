//! The one error type of the convert crate: every variant names the file (or tensor, or key) and
//! what was wrong, so the CLI can print it as one line.
//!
//! Causes are part of each message and deliberately not exposed as `source()` (fields are named
//! `error`, not `source`): a `{:#}` rendering of the chain would otherwise print them twice. The
//! formats crate's errors follow the same rule.

use std::path::PathBuf;

/// Why a conversion could not be planned or carried out.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the checkpoint (shards, index, config.json) failed.
    #[error(transparent)]
    Checkpoint(#[from] formats::checkpoint::CheckpointError),
    /// Writing (or re-reading) the GGUF failed.
    #[error(transparent)]
    Gguf(#[from] formats::gguf::GgufError),
    /// A tensor could not be quantized to the requested type.
    #[error("tensor `{tensor}`: {error}")]
    Quantize {
        /// GGUF tensor name.
        tensor: String,
        /// The codec's complaint.
        error: quantize::QuantizeError,
    },
    /// config.json and the tensors disagree, or a tensor the architecture needs is missing or
    /// has the wrong shape or dtype.
    #[error("{}: {detail}", path.display())]
    Mapping {
        /// The checkpoint directory (or the file at fault).
        path: PathBuf,
        /// What disagrees, naming the tensor and the expected value.
        detail: String,
    },
    /// The tokenizer files are missing, malformed or not recognised.
    #[error("{}: {detail}", path.display())]
    Tokenizer {
        /// The tokenizer file (or the directory where it was expected).
        path: PathBuf,
        /// What was wrong, and what to do about it.
        detail: String,
    },
    /// An I/O error outside the GGUF writer (e.g. reading tokenizer files).
    #[error("{}: {error}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A weight to be quantized is NaN or infinite (llama.cpp's `ggml_validate_row_data`
    /// refuses such input too).
    #[error("tensor `{tensor}` has invalid data: {value} at element {index} (row {row})")]
    NonFinite {
        /// GGUF tensor name.
        tensor: String,
        /// Index of the first bad element in the whole tensor (row-major, ggml order).
        index: u64,
        /// Its row.
        row: u64,
        /// The value (NaN or ±inf).
        value: f32,
    },
    /// The importance matrix cannot be used: unreadable, non-finite, or an entry whose size
    /// does not match its tensor.
    #[error("imatrix {}: {detail}", path.display())]
    Imatrix {
        /// The imatrix file.
        path: PathBuf,
        /// What was wrong, naming the entry.
        detail: String,
    },
    /// The user interrupted the conversion (Ctrl-C); nothing was left at the output path.
    #[error("interrupted; nothing was written to {}", path.display())]
    Interrupted {
        /// The output path that was not created.
        path: PathBuf,
    },
}

/// Result of the convert crate.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;
