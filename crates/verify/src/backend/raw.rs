//! Tensors as stored (ggml blocks, FP8 with block scales) and their CPU dequantization, the
//! reference every device kernel is checked against.

use std::ops::Range;

use formats::ggml_type::GgmlType;

/// A tensor's bytes exactly as stored, for dequantization on a device (no host f32 copy).
#[derive(Debug, Clone, Copy)]
pub enum RawTensor<'a> {
    /// ggml blocks (any type the backend supports), rows of `ne[0]` values, row-major.
    Ggml {
        /// The block type.
        ty: GgmlType,
        /// The whole tensor's bytes.
        data: &'a [u8],
    },
    /// An HF FP8 E4M3 weight `[rows, cols]` with its `weight_scale_inv` (REFERENCE §4.1):
    /// w[r][c] = fp8(data[r·cols + c]) · scale[r / block[0]][c / block[1]].
    Fp8Block {
        /// `rows · cols` E4M3 bytes.
        data: &'a [u8],
        /// `⌈rows/block[0]⌉ · ⌈cols/block[1]⌉` little-endian f32 scales, row-major.
        scales: &'a [u8],
        /// Output features.
        rows: usize,
        /// Input features (row length).
        cols: usize,
        /// Scale block (`[128, 128]` for DeepSeek-V3/R1).
        block: [usize; 2],
    },
}

impl<'a> RawTensor<'a> {
    /// Rows `rows` of this tensor (viewed 2-D, `width` values per row) as a tensor of their own,
    /// e.g. one expert of a stacked `*_exps` tensor, so a device uploads only those bytes.
    ///
    /// ggml blocks: a row range of a row-major tensor is the byte range
    /// `row_size(width) · rows`. FP8: the rows and their rows of the scale grid; the start must
    /// lie on a scale-block boundary (a multiple of `block[0]`), otherwise the slice's first
    /// scale row would cover rows before it, which [`RawTensor::Fp8Block`] cannot say. `None`
    /// when the bytes cannot be cut there (row length not whole blocks, range beyond the data,
    /// misaligned FP8 start, sizes that contradict the shape).
    pub fn slice_rows(self, width: usize, rows: Range<usize>) -> Option<RawTensor<'a>> {
        if rows.start > rows.end {
            return None;
        }
        match self {
            RawTensor::Ggml { ty, data } => {
                let data = ggml_rows(ty, data, width, &rows).ok()?;
                Some(RawTensor::Ggml { ty, data })
            }
            RawTensor::Fp8Block {
                data,
                scales,
                rows: n_rows,
                cols,
                block,
            } => {
                check_fp8(data, scales, n_rows, cols, block).ok()?;
                if cols != width || rows.end > n_rows || !rows.start.is_multiple_of(block[0]) {
                    return None;
                }
                let scale_row_bytes = 4 * cols.div_ceil(block[1]);
                let first = rows.start / block[0];
                let n_scale_rows = rows.len().div_ceil(block[0]);
                Some(RawTensor::Fp8Block {
                    data: data.get(rows.start * cols..rows.end * cols)?,
                    scales: scales
                        .get(first * scale_row_bytes..(first + n_scale_rows) * scale_row_bytes)?,
                    rows: rows.len(),
                    cols,
                    block,
                })
            }
        }
    }
}

/// The CPU reference of [`Backend::dequantize`]: `quantize::dequantize_rows` for ggml blocks,
/// the E4M3 table times the block scale for FP8 (REFERENCE §4.1). The GPU kernels are tested
/// against this.
pub fn dequantize_cpu(
    raw: RawTensor<'_>,
    width: usize,
    rows: Range<usize>,
    out: &mut [f32],
) -> std::result::Result<(), String> {
    let n_rows = rows.end.saturating_sub(rows.start);
    if out.len() != n_rows * width {
        return Err(format!(
            "output holds {} values, rows {rows:?} × {width} need {}",
            out.len(),
            n_rows * width
        ));
    }
    match raw {
        RawTensor::Ggml { ty, data } => {
            let src = ggml_rows(ty, data, width, &rows)?;
            quantize::dequantize_rows(ty, src, out).map_err(|e| e.to_string())
        }
        RawTensor::Fp8Block {
            data,
            scales,
            rows: n,
            cols,
            block,
        } => {
            check_fp8(data, scales, n, cols, block)?;
            if cols != width || rows.end > n {
                return Err(format!(
                    "FP8 tensor is [{n}, {cols}], rows {rows:?} × {width} requested"
                ));
            }
            let scale_cols = cols.div_ceil(block[1]);
            for (i, r) in rows.enumerate() {
                let dst = &mut out[i * cols..(i + 1) * cols];
                let src = &data[r * cols..(r + 1) * cols];
                for (c, (d, &b)) in dst.iter_mut().zip(src).enumerate() {
                    let s = (r / block[0]) * scale_cols + c / block[1];
                    let sb = [
                        scales[4 * s],
                        scales[4 * s + 1],
                        scales[4 * s + 2],
                        scales[4 * s + 3],
                    ];
                    let fp8 = formats::checkpoint::dtype::fp8_e4m3_to_f32(b);
                    *d = fp8 * f32::from_le_bytes(sb);
                }
            }
            Ok(())
        }
    }
}

/// The bytes of rows `rows` of a row-major ggml tensor of `width`-value rows: `row_size(width)
/// · rows`, with every size checked (a row length that is not whole blocks, a range beyond the
/// data or one whose byte offsets overflow is an error, never a panic).
pub fn ggml_rows<'a>(
    ty: GgmlType,
    data: &'a [u8],
    width: usize,
    rows: &Range<usize>,
) -> std::result::Result<&'a [u8], String> {
    let row_bytes = ty
        .row_size(width as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("row length {width} is not whole {ty} blocks"))?;
    rows.start
        .checked_mul(row_bytes)
        .zip(rows.end.checked_mul(row_bytes))
        .and_then(|(a, b)| data.get(a..b))
        .ok_or_else(|| format!("rows {rows:?} lie beyond the tensor's data"))
}

/// Checks an FP8 tensor's byte counts against its shape and block.
pub fn check_fp8(
    data: &[u8],
    scales: &[u8],
    rows: usize,
    cols: usize,
    block: [usize; 2],
) -> std::result::Result<(), String> {
    if block[0] == 0 || block[1] == 0 {
        return Err(format!("FP8 scale block {block:?} has a zero side"));
    }
    let n_scales = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
    if data.len() != rows * cols || scales.len() != 4 * n_scales {
        return Err(format!(
            "FP8 tensor [{rows}, {cols}] with block {block:?} needs {} bytes and {n_scales} scales, found {} bytes and {} scale bytes",
            rows * cols,
            data.len(),
            scales.len()
        ));
    }
    Ok(())
}
