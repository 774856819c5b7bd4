//! FP8 block dequantization (DeepSeek-V3/R1): w[r][c] = fp8(W[r][c]) · S[r / B0][c / B1] in f32.
//!
//! Every FP8 linear weight `X.weight` (F8_E4M3, [rows, cols]) has a sibling `X.weight_scale_inv`
//! (F32, [⌈rows/B0⌉, ⌈cols/B1⌉]); edge blocks are ragged when a dimension is not a multiple of the
//! block. The product is rounded once, in f32, exactly like DeepSeek's `weight_dequant` and
//! llama.cpp's `dequant_simple` (REFERENCE §4.1). DeepSeek's BF16 cast and a
//! `convert --outtype bf16` pipeline then round to bf16: apply [`super::round_to_bf16`] to a decoded
//! tile to reproduce those bytes.
//!
//! Decoding works on row ranges (tiles) into a caller buffer, so no whole-tensor temporary exists.

use rayon::prelude::*;

use super::dtype::{decode_to_f32, Dtype, FP8_E4M3_TO_F32};
use super::error::{CheckpointError, Result};
use super::TensorView;

/// Output elements per parallel work item in [`Fp8BlockDecoder::decode_rows_par`] (256 KiB of f32:
/// large enough to amortise scheduling, small enough to stay in L2).
const PAR_TILE_ELEMS: usize = 64 * 1024;

/// Name of the scale tensor of FP8 weight `weight` (DeepSeek naming: `X.weight` →
/// `X.weight_scale_inv`).
pub fn scale_name(weight: &str) -> String {
    format!("{weight}_scale_inv")
}

/// The scale shape an FP8 weight of `shape` needs with `block`: [⌈rows/B0⌉, ⌈cols/B1⌉]; `None`
/// unless the weight is 2-D and the block non-zero.
pub fn expected_scale_shape(shape: &[usize], block: [usize; 2]) -> Option<[usize; 2]> {
    match (shape, block) {
        (&[rows, cols], [b0, b1]) if b0 > 0 && b1 > 0 => {
            Some([rows.div_ceil(b0), cols.div_ceil(b1)])
        }
        _ => None,
    }
}

/// Checks that `scale` fits FP8 weight `weight` with `block`; the one place both
/// [`super::Checkpoint::validate`] and [`Fp8BlockDecoder::new`] get their messages from.
pub(crate) fn check_scale(
    weight: (&str, &[usize]),
    scale: &TensorView<'_>,
    block: [usize; 2],
) -> Result<[usize; 2]> {
    let (name, shape) = weight;
    let bad = |problem: String| CheckpointError::BadScale {
        path: scale.file.to_path_buf(),
        scale: scale.name.to_string(),
        problem,
    };
    let Some(expected) = expected_scale_shape(shape, block) else {
        return Err(bad(format!(
            "belongs to FP8 weight `{name}` of shape {shape:?}, which is not 2-D (or block {block:?} has a zero)"
        )));
    };
    if !scale.dtype.is_float() {
        return Err(bad(format!("has dtype {}, expected F32", scale.dtype)));
    }
    if scale.shape != expected {
        return Err(bad(format!(
            "has shape {:?}, expected {expected:?} for FP8 weight `{name}` {shape:?} in {}×{} blocks",
            scale.shape, block[0], block[1]
        )));
    }
    Ok(expected)
}

/// Decodes row ranges of one FP8 block-scaled weight into f32.
///
/// Exists so the converter and the forward pass dequantize DeepSeek weights tile by tile, straight
/// from the mmap, with one exact formula. The scales (a few thousand floats) are decoded once at
/// construction; the weight bytes are borrowed.
#[derive(Debug, Clone)]
pub struct Fp8BlockDecoder<'a> {
    weight: TensorView<'a>,
    rows: usize,
    cols: usize,
    block: [usize; 2],
    scale_cols: usize,
    scales: Vec<f32>,
}

impl<'a> Fp8BlockDecoder<'a> {
    /// Pairs an F8_E4M3 weight [rows, cols] with its scale [⌈rows/B0⌉, ⌈cols/B1⌉] (any float
    /// dtype; F32 in DeepSeek releases). Errors name the file and the tensor.
    pub fn new(weight: TensorView<'a>, scale: TensorView<'_>, block: [usize; 2]) -> Result<Self> {
        let request = |problem: String| CheckpointError::BadRequest {
            path: weight.file.to_path_buf(),
            tensor: weight.name.to_string(),
            problem,
        };
        if weight.dtype != Dtype::F8E4M3 {
            return Err(request(format!(
                "has dtype {}, expected F8_E4M3",
                weight.dtype
            )));
        }
        let [sr, sc] = check_scale((weight.name, weight.shape), &scale, block)?;
        let (rows, cols) = match weight.shape {
            &[r, c] => (r, c),
            _ => {
                return Err(request(format!(
                    "FP8 weight has shape {:?}, expected 2-D",
                    weight.shape
                )))
            }
        };
        if rows.checked_mul(cols) != Some(weight.data.len()) {
            return Err(request(format!(
                "has {} bytes, shape {:?} needs {}",
                weight.data.len(),
                weight.shape,
                rows.saturating_mul(cols)
            )));
        }
        let mut scales = vec![0f32; sr * sc];
        decode_to_f32(scale.dtype, scale.data, &mut scales).map_err(|source| {
            CheckpointError::Decode {
                path: scale.file.to_path_buf(),
                tensor: scale.name.to_string(),
                source,
            }
        })?;
        Ok(Fp8BlockDecoder {
            weight,
            rows,
            cols,
            block,
            scale_cols: sc,
            scales,
        })
    }

    /// Rows of the weight.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the weight (elements per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The block size [B0, B1].
    pub fn block(&self) -> [usize; 2] {
        self.block
    }

    /// Checks a request and returns the source bytes of the rows it covers.
    fn source(&self, start_row: usize, out_len: usize) -> Result<&'a [u8]> {
        let request = |problem: String| CheckpointError::BadRequest {
            path: self.weight.file.to_path_buf(),
            tensor: self.weight.name.to_string(),
            problem,
        };
        check_rows(self.rows, self.cols, start_row, out_len).map_err(request)?;
        let start = start_row * self.cols;
        self.weight
            .data
            .get(start..start + out_len)
            .ok_or_else(|| request("row range outside the tensor data".into()))
    }

    /// Decodes rows `start_row ..` into `out` (whose length, a multiple of `cols`, gives the row
    /// count), on the calling thread.
    pub fn decode_rows(&self, start_row: usize, out: &mut [f32]) -> Result<()> {
        let src = self.source(start_row, out.len())?;
        self.decode_checked(start_row, src, out);
        Ok(())
    }

    /// Like [`Fp8BlockDecoder::decode_rows`], split over rayon's pool in row tiles when the
    /// request is large; bit-identical output.
    pub fn decode_rows_par(&self, start_row: usize, out: &mut [f32]) -> Result<()> {
        let src = self.source(start_row, out.len())?;
        if out.len() <= PAR_TILE_ELEMS || self.cols == 0 {
            self.decode_checked(start_row, src, out);
            return Ok(());
        }
        let tile_rows = (PAR_TILE_ELEMS / self.cols).max(1);
        let tile = tile_rows * self.cols;
        out.par_chunks_mut(tile)
            .zip(src.par_chunks(tile))
            .enumerate()
            .for_each(|(t, (o, s))| self.decode_checked(start_row + t * tile_rows, s, o));
        Ok(())
    }

    /// The hot loop: `src` and `out` hold the same whole rows starting at `start_row`.
    fn decode_checked(&self, start_row: usize, src: &[u8], out: &mut [f32]) {
        if self.cols == 0 {
            return;
        }
        let [b0, b1] = self.block;
        let sc = self.scale_cols;
        for (i, (o_row, q_row)) in out
            .chunks_exact_mut(self.cols)
            .zip(src.chunks_exact(self.cols))
            .enumerate()
        {
            let br = (start_row + i) / b0;
            let srow = self.scales.get(br * sc..(br + 1) * sc).unwrap_or_default();
            for ((o, q), &s) in o_row.chunks_mut(b1).zip(q_row.chunks(b1)).zip(srow) {
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = FP8_E4M3_TO_F32[q as usize] * s;
                }
            }
        }
    }
}

/// Checks that `out_len` elements starting at row `start_row` are whole rows inside the tensor.
pub(crate) fn check_rows(
    rows: usize,
    cols: usize,
    start_row: usize,
    out_len: usize,
) -> std::result::Result<(), String> {
    if cols == 0 {
        return if out_len == 0 && start_row <= rows {
            Ok(())
        } else {
            Err(format!("rows are empty; cannot fill {out_len} values"))
        };
    }
    if !out_len.is_multiple_of(cols) {
        return Err(format!(
            "output length {out_len} is not a whole number of {cols}-element rows"
        ));
    }
    let n = out_len / cols;
    if start_row > rows || n > rows - start_row {
        return Err(format!(
            "rows {start_row}..{} requested, tensor has {rows}",
            start_row.saturating_add(n)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn view<'a>(name: &'a str, dtype: Dtype, shape: &'a [usize], data: &'a [u8]) -> TensorView<'a> {
        TensorView {
            name,
            dtype,
            shape,
            data,
            file: Path::new("/t/model.safetensors"),
        }
    }

    #[test]
    fn ragged_blocks_match_naive_formula() {
        let (rows, cols) = (300usize, 200usize);
        let q: Vec<u8> = (0..rows * cols).map(|i| (i * 7 + i / 13) as u8).collect();
        let s: Vec<f32> = (0..6).map(|i| 0.5 + i as f32 * 0.25).collect();
        let sb: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = [rows, cols];
        let d = Fp8BlockDecoder::new(
            view("w", Dtype::F8E4M3, &shape, &q),
            view("w_scale_inv", Dtype::F32, &[3, 2], &sb),
            [128, 128],
        )
        .unwrap();
        let mut all = vec![0f32; rows * cols];
        d.decode_rows(0, &mut all).unwrap();
        let mut par = vec![0f32; rows * cols];
        d.decode_rows_par(0, &mut par).unwrap();
        for r in 0..rows {
            for c in 0..cols {
                let want = FP8_E4M3_TO_F32[q[r * cols + c] as usize] * s[(r / 128) * 2 + c / 128];
                let got = all[r * cols + c];
                assert!(want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()));
                assert_eq!(got.to_bits(), par[r * cols + c].to_bits());
            }
        }
        // A tile in the middle, crossing a block boundary.
        let mut tile = vec![0f32; 5 * cols];
        d.decode_rows(126, &mut tile).unwrap();
        assert!(tile
            .iter()
            .zip(&all[126 * cols..131 * cols])
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn rejects_bad_scales_and_requests() {
        let q = vec![0u8; 300 * 200];
        let sb = vec![0u8; 4 * 4];
        let shape = [300, 200];
        let err = Fp8BlockDecoder::new(
            view("w", Dtype::F8E4M3, &shape, &q),
            view("w_scale_inv", Dtype::F32, &[2, 2], &sb),
            [128, 128],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("has shape [2, 2], expected [3, 2]"), "{err}");
        assert!(err.contains("/t/model.safetensors"), "{err}");
        let sb = vec![0u8; 6 * 4];
        let d = Fp8BlockDecoder::new(
            view("w", Dtype::F8E4M3, &shape, &q),
            view("w_scale_inv", Dtype::F32, &[3, 2], &sb),
            [128, 128],
        )
        .unwrap();
        let mut out = vec![0f32; 200 * 2];
        let err = d.decode_rows(299, &mut out).unwrap_err().to_string();
        assert!(
            err.contains("rows 299..301 requested, tensor has 300"),
            "{err}"
        );
        let err = d.decode_rows(0, &mut out[..199]).unwrap_err().to_string();
        assert!(err.contains("not a whole number"), "{err}");
    }
}
