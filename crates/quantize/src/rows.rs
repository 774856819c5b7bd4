//! Type dispatch for whole rows: the one API the pipeline, verify and the CLI call.
//!
//! Sizes are checked here once; the per-type files only ever see whole blocks. Large inputs are
//! split into row groups across rayon's pool (the caller's pool when called from inside one).

use formats::ggml_type::GgmlType;
use rayon::prelude::*;

use crate::block::Block;
use crate::cast;
use crate::iq4_nl::BlockIq4Nl;
use crate::iq4_xs::BlockIq4Xs;
use crate::q2_k::BlockQ2K;
use crate::q3_k::BlockQ3K;
use crate::q4_0::BlockQ4_0;
use crate::q4_1::BlockQ4_1;
use crate::q4_k::BlockQ4K;
use crate::q5_0::BlockQ5_0;
use crate::q5_1::BlockQ5_1;
use crate::q5_k::BlockQ5K;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;

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
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::IQ4_NL
            | GgmlType::IQ4_XS
    )
}

/// Below this many elements a call stays on the calling thread: splitting costs more than it
/// saves, and the pipeline already runs many chunks at once.
const PAR_MIN_ELEMS: usize = 1 << 18;

/// Elements per parallel piece (a whole number of rows is taken, at least one).
const PAR_PIECE_ELEMS: usize = 1 << 16;

/// Quantizes `src` (whole rows of `n_per_row` values) into `dst` (exactly
/// `rows · row_size(n_per_row)` bytes), with optional per-column importance weights
/// (`n_per_row` values, shared by every row). F32, F16, BF16 and Q8_0 ignore the weights, as
/// llama.cpp does; the K-quants use llama.cpp's `*_ref` quantizer without them and `*_impl` with.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantizeError> {
    if !supports(ty) {
        return Err(QuantizeError::Unsupported {
            ty,
            direction: "quantize",
        });
    }
    let row_bytes = check_rows(ty, src.len(), n_per_row, dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(QuantizeError::Size(format!(
                "{} importance weights for rows of {n_per_row}",
                w.len()
            )));
        }
    }
    if n_per_row == 0 || src.is_empty() {
        return Ok(());
    }
    let one = |s: &[f32], d: &mut [u8]| match ty {
        GgmlType::F32 => cast::quantize_f32(s, d),
        GgmlType::F16 => cast::quantize_f16(s, d),
        GgmlType::BF16 => cast::quantize_bf16(s, d),
        t if t == BlockQ8_0::TYPE => BlockQ8_0::quantize_blocks(s, d),
        // K-quants: `quantize_row_qN_K_ref` without an imatrix, `quantize_row_qN_K_impl` with.
        GgmlType::Q2_K => match imatrix {
            None => quantize_blocks::<BlockQ2K>(s, d),
            Some(w) => quantize_blocks_weighted(s, d, w, BlockQ2K::quantize_imatrix),
        },
        GgmlType::Q3_K => match imatrix {
            None => quantize_blocks::<BlockQ3K>(s, d),
            Some(w) => quantize_blocks_weighted(s, d, w, BlockQ3K::quantize_imatrix),
        },
        GgmlType::Q4_K => match imatrix {
            None => quantize_blocks::<BlockQ4K>(s, d),
            Some(w) => quantize_blocks_weighted(s, d, w, BlockQ4K::quantize_imatrix),
        },
        GgmlType::Q5_K => match imatrix {
            None => quantize_blocks::<BlockQ5K>(s, d),
            Some(w) => quantize_blocks_weighted(s, d, w, BlockQ5K::quantize_imatrix),
        },
        GgmlType::Q6_K => match imatrix {
            None => quantize_blocks::<BlockQ6K>(s, d),
            Some(w) => quantize_blocks_weighted(s, d, w, BlockQ6K::quantize_imatrix),
        },
        // Legacy: `quantize_row_*_ref` without an imatrix, `quantize_row_*_impl` (σ² of the
        // whole row) with.
        GgmlType::Q4_0 => match imatrix {
            None => quantize_blocks::<BlockQ4_0>(s, d),
            Some(w) => quantize_rows_weighted(s, d, w, BlockQ4_0::quantize_row_imatrix),
        },
        GgmlType::Q4_1 => match imatrix {
            None => quantize_blocks::<BlockQ4_1>(s, d),
            Some(w) => quantize_rows_weighted(s, d, w, BlockQ4_1::quantize_row_imatrix),
        },
        GgmlType::Q5_0 => match imatrix {
            None => quantize_blocks::<BlockQ5_0>(s, d),
            Some(w) => quantize_rows_weighted(s, d, w, BlockQ5_0::quantize_row_imatrix),
        },
        GgmlType::Q5_1 => match imatrix {
            None => quantize_blocks::<BlockQ5_1>(s, d),
            Some(w) => quantize_rows_weighted(s, d, w, BlockQ5_1::quantize_row_imatrix),
        },
        // IQ4: `quantize_row_iq4_nl_impl` with ntry = 7 either way (weights x² or the imatrix).
        GgmlType::IQ4_NL => match imatrix {
            None => quantize_blocks::<BlockIq4Nl>(s, d),
            Some(w) => quantize_blocks_weighted(s, d, w, BlockIq4Nl::quantize_imatrix),
        },
        GgmlType::IQ4_XS => match imatrix {
            None => quantize_blocks::<BlockIq4Xs>(s, d),
            Some(w) => quantize_blocks_weighted(s, d, w, BlockIq4Xs::quantize_imatrix),
        },
        // `supports` was checked above.
        _ => {}
    };
    if src.len() < PAR_MIN_ELEMS {
        one(src, dst);
    } else {
        let rows_per = (PAR_PIECE_ELEMS / n_per_row).max(1);
        src.par_chunks(rows_per * n_per_row)
            .zip(dst.par_chunks_mut(rows_per * row_bytes))
            .for_each(|(s, d)| one(s, d));
    }
    Ok(())
}

/// Dequantizes whole rows of `ty` in `src` into `dst` (one f32 per element).
pub fn dequantize_rows(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantizeError> {
    if !supports(ty) {
        return Err(QuantizeError::Unsupported {
            ty,
            direction: "dequantize",
        });
    }
    let (block, bytes) = (ty.block_size() as usize, ty.type_size() as usize);
    let blocks = dst.len() / block.max(1);
    if !dst.len().is_multiple_of(block.max(1)) || blocks.checked_mul(bytes) != Some(src.len()) {
        return Err(QuantizeError::Size(format!(
            "{} bytes of {ty} cannot hold {} values",
            src.len(),
            dst.len()
        )));
    }
    let one = |s: &[u8], d: &mut [f32]| match ty {
        GgmlType::F32 => cast::dequantize_f32(s, d),
        GgmlType::F16 => cast::dequantize_f16(s, d),
        GgmlType::BF16 => cast::dequantize_bf16(s, d),
        t if t == BlockQ8_0::TYPE => dequantize_blocks::<BlockQ8_0>(s, d),
        GgmlType::Q2_K => dequantize_blocks::<BlockQ2K>(s, d),
        GgmlType::Q3_K => dequantize_blocks::<BlockQ3K>(s, d),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4K>(s, d),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5K>(s, d),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6K>(s, d),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(s, d),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(s, d),
        GgmlType::Q5_0 => dequantize_blocks::<BlockQ5_0>(s, d),
        GgmlType::Q5_1 => dequantize_blocks::<BlockQ5_1>(s, d),
        GgmlType::IQ4_NL => dequantize_blocks::<BlockIq4Nl>(s, d),
        GgmlType::IQ4_XS => dequantize_blocks::<BlockIq4Xs>(s, d),
        // `supports` was checked above.
        _ => {}
    };
    if dst.len() < PAR_MIN_ELEMS {
        one(src, dst);
    } else {
        let blocks_per = (PAR_PIECE_ELEMS / block).max(1);
        src.par_chunks(blocks_per * bytes)
            .zip(dst.par_chunks_mut(blocks_per * block))
            .for_each(|(s, d)| one(s, d));
    }
    Ok(())
}

/// Checks `src_len` is whole rows whose blocks fit `dst_len` exactly; returns bytes per row.
fn check_rows(
    ty: GgmlType,
    src_len: usize,
    n_per_row: usize,
    dst_len: usize,
) -> Result<usize, QuantizeError> {
    let block = ty.block_size();
    if block == 0 || !(n_per_row as u64).is_multiple_of(block) {
        return Err(QuantizeError::RowLength {
            ty,
            n_per_row,
            block,
        });
    }
    if n_per_row == 0 {
        return if src_len == 0 && dst_len == 0 {
            Ok(0)
        } else {
            Err(QuantizeError::Size(format!(
                "{src_len} values in rows of length 0"
            )))
        };
    }
    if !src_len.is_multiple_of(n_per_row) {
        return Err(QuantizeError::Size(format!(
            "{src_len} values are not whole rows of {n_per_row}"
        )));
    }
    let row_bytes = ty
        .row_size(n_per_row as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| QuantizeError::Size(format!("row of {n_per_row} {ty} overflows")))?;
    let rows = src_len / n_per_row;
    if rows.checked_mul(row_bytes) != Some(dst_len) {
        return Err(QuantizeError::Size(format!(
            "{rows} rows of {n_per_row} {ty} need {} bytes, destination has {dst_len}",
            rows.saturating_mul(row_bytes)
        )));
    }
    Ok(row_bytes)
}

/// Quantizes whole blocks of `B` (sizes already checked).
fn quantize_blocks<B: Block>(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(B::ELEMS)
        .zip(dst.chunks_exact_mut(B::BYTES))
    {
        B::quantize(x).write(out);
    }
}

/// Quantizes whole rows of `B` with per-column importance weights `qw` (one row's worth, shared
/// by every row; sizes already checked): block k of a row gets `qw[k·ELEMS..(k+1)·ELEMS]`, as
/// the `quantize_row_*_impl` functions index `quant_weights + QK_K·i`.
fn quantize_blocks_weighted<B: Block>(
    src: &[f32],
    dst: &mut [u8],
    qw: &[f32],
    quantize: fn(&[f32], &[f32]) -> B,
) {
    let row_bytes = qw.len() / B::ELEMS * B::BYTES;
    if row_bytes == 0 {
        return;
    }
    for (row, out) in src
        .chunks_exact(qw.len())
        .zip(dst.chunks_exact_mut(row_bytes))
    {
        for ((x, w), o) in row
            .chunks_exact(B::ELEMS)
            .zip(qw.chunks_exact(B::ELEMS))
            .zip(out.chunks_exact_mut(B::BYTES))
        {
            quantize(x, w).write(o);
        }
    }
}

/// Quantizes whole rows with per-column importance weights `qw` through `quantize_row`, for
/// types whose `*_impl` looks at the whole row (the legacy types' σ²); sizes already checked.
fn quantize_rows_weighted(
    src: &[f32],
    dst: &mut [u8],
    qw: &[f32],
    quantize_row: fn(&[f32], &[f32], &mut [u8]),
) {
    if qw.is_empty() || src.is_empty() {
        return;
    }
    let row_bytes = dst.len() / (src.len() / qw.len());
    for (row, out) in src
        .chunks_exact(qw.len())
        .zip(dst.chunks_exact_mut(row_bytes))
    {
        quantize_row(row, qw, out);
    }
}

/// Dequantizes whole blocks of `B` (sizes already checked).
fn dequantize_blocks<B: Block>(src: &[u8], dst: &mut [f32]) {
    for (bytes, y) in src
        .chunks_exact(B::BYTES)
        .zip(dst.chunks_exact_mut(B::ELEMS))
    {
        B::read(bytes).dequantize(y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect()
    }

    #[test]
    fn rejects_bad_sizes_and_unsupported_types() {
        let src = ramp(64);
        let mut dst = vec![0u8; 68];
        assert!(matches!(
            quantize_rows(GgmlType::Q8_0, &src, 48, None, &mut dst),
            Err(QuantizeError::RowLength { .. })
        ));
        assert!(matches!(
            quantize_rows(GgmlType::Q8_0, &src, 64, None, &mut dst[..60]),
            Err(QuantizeError::Size(_))
        ));
        assert!(matches!(
            quantize_rows(GgmlType::Q8_0, &src, 64, Some(&[1.0; 3]), &mut dst),
            Err(QuantizeError::Size(_))
        ));
        assert!(matches!(
            quantize_rows(GgmlType::IQ2_XXS, &src, 64, None, &mut dst),
            Err(QuantizeError::Unsupported { .. })
        ));
        assert!(matches!(
            dequantize_rows(GgmlType::Q8_0, &dst[..67], &mut vec![0f32; 64]),
            Err(QuantizeError::Size(_))
        ));
        quantize_rows(GgmlType::Q8_0, &src, 64, Some(&[1.0; 64]), &mut dst).unwrap();
    }

    #[test]
    fn parallel_split_gives_the_same_bytes_as_one_call_per_row() {
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let n = 4096;
            let rows = 2 * PAR_MIN_ELEMS / n + 3;
            let src = ramp(n * rows);
            let rb = ty.row_size(n as u64).unwrap() as usize;
            let mut whole = vec![0u8; rb * rows];
            quantize_rows(ty, &src, n, None, &mut whole).unwrap();
            let mut by_row = vec![0u8; rb * rows];
            for (s, d) in src.chunks(n).zip(by_row.chunks_mut(rb)) {
                quantize_rows(ty, s, n, None, d).unwrap();
            }
            assert_eq!(whole, by_row, "{ty}");
            let mut back = vec![0f32; n * rows];
            dequantize_rows(ty, &whole, &mut back).unwrap();
            let mut back_row = vec![0f32; n];
            dequantize_rows(ty, &whole[rb..2 * rb], &mut back_row).unwrap();
            assert_eq!(&back[n..2 * n], &back_row[..]);
            if ty == GgmlType::F32 {
                assert_eq!(back, src);
            }
        }
    }

    #[test]
    fn q8_0_dequantized_error_is_within_half_a_step() {
        let src = ramp(256);
        let mut q = vec![0u8; 8 * 34];
        quantize_rows(GgmlType::Q8_0, &src, 256, None, &mut q).unwrap();
        let mut back = vec![0f32; 256];
        dequantize_rows(GgmlType::Q8_0, &q, &mut back).unwrap();
        for (blk, (x, y)) in src.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in x.iter().zip(y) {
                assert!(
                    (a - b).abs() <= amax / 127.0 * 0.51,
                    "block {blk}: {a} vs {b}"
                );
            }
        }
    }
}
