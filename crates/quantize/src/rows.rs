//! Type dispatch for whole rows: the one API the pipeline, verify and the CLI call.

use formats::ggml_type::GgmlType;

/// Why rows could not be (de)quantized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantizeError {
    /// r1q has no codec for this type (yet).
    #[error("no {direction} codec for ggml type {ty}")]
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// "quantize" or "dequantize".
        direction: &'static str,
    },
    /// The row length is not a multiple of the type's block size.
    #[error("row length {n_per_row} is not a multiple of {ty}'s block size {block}")]
    RowLength {
        /// The type asked for.
        ty: GgmlType,
        /// The row length given.
        n_per_row: usize,
        /// The type's block size.
        block: u64,
    },
    /// Source, destination or importance weights have the wrong length.
    #[error("buffer size mismatch: {0}")]
    Size(String),
}

/// Whether [`quantize_rows`] and [`dequantize_rows`] handle `ty`.
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0)
}

/// Quantizes `src` (whole rows of `n_per_row` values) into `dst` (exactly
/// `rows · row_size(n_per_row)` bytes), with optional per-column importance weights
/// (`n_per_row` values, shared by every row).
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantizeError> {
    let _ = (src, n_per_row, imatrix, dst);
    Err(QuantizeError::Unsupported { ty, direction: "quantize" })
}

/// Dequantizes whole rows of `ty` in `src` into `dst` (one f32 per element).
pub fn dequantize_rows(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantizeError> {
    let _ = (src, dst);
    Err(QuantizeError::Unsupported { ty, direction: "dequantize" })
}
