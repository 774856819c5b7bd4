//! Rows of a GGUF file's tensors as the requantizing executor needs them: either copied as
//! stored (the tensor keeps its type) or dequantized to f32 and quantized to the new type with
//! its imatrix slice — llama-quantize's main loop, run on the shared chunked executor.

use std::sync::Arc;

use formats::ggml_type::GgmlType;
use formats::gguf::{GgufFile, TensorInfo};

use super::release::release_pages;
use super::weighted::{check_finite, quantize_chunk};
use super::{Bufs, RowsFactory, TensorRows};
use crate::error::{ConvertError, Result};

/// One output tensor of a requantization: its input and what to turn it into.
#[derive(Debug, Clone)]
pub(crate) struct GgufJob {
    /// Index of the input tensor in `GgufFile::tensors()`.
    pub input: usize,
    /// Output type.
    pub ggml_type: GgmlType,
    /// Importance weights (`ne[0]·ne[2]` floats), when the tensor is quantized with them.
    pub weights: Option<Arc<[f32]>>,
}

/// The [`RowsFactory`] over a GGUF input.
pub(crate) struct GgufRows<'a> {
    pub file: &'a GgufFile,
    pub jobs: &'a [GgufJob],
}

/// One tensor's producer.
struct GgufTensor<'a> {
    info: &'a TensorInfo,
    data: &'a [u8],
    job: &'a GgufJob,
    row_len: usize,
    in_row_bytes: usize,
    out_row_bytes: usize,
}

impl RowsFactory for GgufRows<'_> {
    fn open<'s>(&'s self, index: usize) -> Result<Box<dyn TensorRows + 's>> {
        let bad = |detail: String| ConvertError::Mapping {
            path: self.file.path().to_path_buf(),
            detail,
        };
        let job = self
            .jobs
            .get(index)
            .ok_or_else(|| bad(format!("no job {index}")))?;
        let info = self
            .file
            .tensors()
            .get(job.input)
            .ok_or_else(|| bad(format!("no input tensor {}", job.input)))?;
        let ne0 = info.dims.first().copied().unwrap_or(1);
        let row_size = |ty: GgmlType| {
            ty.row_size(ne0)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| ConvertError::Quantize {
                    tensor: info.name.clone(),
                    error: quantize::QuantizeError::RowLength {
                        ty,
                        n_per_row: usize::try_from(ne0).unwrap_or(usize::MAX),
                        block: ty.block_size(),
                    },
                })
        };
        Ok(Box::new(GgufTensor {
            info,
            data: self.file.tensor_data(info),
            job,
            row_len: usize::try_from(ne0).unwrap_or(usize::MAX),
            in_row_bytes: row_size(info.ggml_type)?,
            out_row_bytes: row_size(job.ggml_type)?,
        }))
    }
}

impl GgufTensor<'_> {
    fn input_rows(&self, start: usize, rows: usize) -> Result<&[u8]> {
        let a = start.saturating_mul(self.in_row_bytes);
        let b = start.saturating_add(rows).saturating_mul(self.in_row_bytes);
        self.data.get(a..b).ok_or_else(|| ConvertError::Mapping {
            path: std::path::PathBuf::new(),
            detail: format!(
                "tensor `{}`: rows {start}..{} lie outside its data",
                self.info.name,
                start + rows
            ),
        })
    }
}

impl TensorRows for GgufTensor<'_> {
    fn produce(&self, start: usize, rows: usize, bufs: &mut Bufs) -> Result<()> {
        let src = self.input_rows(start, rows)?;
        let in_ty = self.info.ggml_type;
        let quant = |error| ConvertError::Quantize {
            tensor: self.info.name.clone(),
            error,
        };
        let n = rows.saturating_mul(self.row_len);
        let same = in_ty == self.job.ggml_type;
        let Bufs { f32s, bytes } = bufs;
        // Validate what llama.cpp's loader validates (every tensor it reads): non-finite values.
        // A copied tensor of a type r1q cannot decode is copied unchecked. F32 input is read
        // in place from the mapping when aligned (no copy); anything else is decoded into the
        // chunk's buffer.
        let values: Option<&[f32]> = if !same || quantize::supports(in_ty) {
            match (in_ty == GgmlType::F32)
                .then(|| quantize::f32_view(src))
                .flatten()
            {
                Some(v) => Some(v),
                None => {
                    f32s.resize(n, 0.0);
                    quantize::dequantize_rows(in_ty, src, f32s).map_err(quant)?;
                    Some(&f32s[..])
                }
            }
        } else {
            None
        };
        if let Some(v) = values {
            check_finite(&self.info.name, v, start, self.row_len)?;
        }
        if same {
            bytes.clear();
            bytes.extend_from_slice(src);
            return Ok(());
        }
        let values = values.unwrap_or_default();
        bytes.resize(rows.saturating_mul(self.out_row_bytes), 0);
        let per_slice =
            usize::try_from(self.info.dims.get(1).copied().unwrap_or(1)).unwrap_or(usize::MAX);
        quantize_chunk(
            &self.info.name,
            self.job.ggml_type,
            values,
            self.row_len,
            start,
            per_slice,
            self.job.weights.as_deref(),
            bytes,
        )
    }

    fn release(&self, start: usize, rows: usize) {
        if let Ok(bytes) = self.input_rows(start, rows) {
            release_pages(bytes);
        }
    }
}
