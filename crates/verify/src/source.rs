//! Where the engine's weights come from: a GGUF file of any type `quantize` can dequantize, or
//! (through an implementation the root crate provides over convert's HF plan) an HF checkpoint.
//!
//! Why a trait: `verify` may not depend on `convert`, yet the same forward pass must read both,
//! so the HF → GGUF name/shape mapping lives with convert and is handed in as a `WeightSource`
//! that speaks GGUF names, dims and metadata.

use std::ops::Range;
use std::path::Path;

use formats::ggml_type::GgmlType;
use formats::gguf::{GgufFile, GgufValue, TensorInfo};

use crate::error::{Result, VerifyError};

/// A model's metadata and tensors under GGUF names, each tensor delivered as f32.
///
/// Dims are in ggml `ne` order (innermost first): a weight `[out, in]` has dims `[in, out]`.
pub trait WeightSource: Sync {
    /// Every metadata pair (GGUF keys).
    fn metadata(&self) -> &[(String, GgufValue)];
    /// The value of `key`.
    fn get(&self, key: &str) -> Option<&GgufValue>;
    /// Dims of tensor `name` (ggml order), `None` if absent.
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>>;
    /// Bytes tensor `name` occupies in the source (for sizes, bits per weight).
    fn tensor_bytes(&self, name: &str) -> Option<u64>;
    /// Every tensor name (GGUF naming), in source order; used to size each layer's weights.
    fn tensor_names(&self) -> Vec<String>;
    /// The whole tensor, dequantized to f32, row-major (`ne[0]` contiguous).
    fn load_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// Rows `rows` (indices along `ne[1]`) of a 2-D tensor, concatenated, as f32. The default
    /// loads the whole tensor; sources that can should read only those rows (token embeddings
    /// of a 129k-vocabulary model are 3.7 GB as f32).
    fn load_rows_f32(&self, name: &str, rows: &[u32]) -> Result<Vec<f32>> {
        let dims = self.tensor_dims(name).ok_or_else(|| self.missing(name))?;
        let (width, n_rows) = two_d(self, name, &dims)?;
        let all = self.load_f32(name)?;
        let mut out = Vec::with_capacity(rows.len() * width);
        for &r in rows {
            if r as usize >= n_rows {
                return Err(self.row_out_of_range(name, r, n_rows));
            }
            out.extend_from_slice(&all[r as usize * width..(r as usize + 1) * width]);
        }
        Ok(out)
    }
    /// Rows `rows` of tensor `name` viewed as 2-D (`ne[0]` wide, all higher dims flattened into
    /// rows), as f32. Exists so an MoE block can dequantize one expert of a 3-D
    /// `[in, out, n_expert]` tensor (rows `e·out .. (e+1)·out`) when it is needed instead of all
    /// experts at once (256 experts of R1 are ~45 GB per layer as f32). The default loads the
    /// whole tensor; [`GgufSource`] dequantizes only the range.
    fn load_row_range_f32(&self, name: &str, rows: Range<u64>) -> Result<Vec<f32>> {
        let dims = self.tensor_dims(name).ok_or_else(|| self.missing(name))?;
        let (width, n_rows) = flat_rows(&dims);
        check_range(self, name, &rows, n_rows)?;
        let all = self.load_f32(name)?;
        let (a, b) = (rows.start as usize * width, rows.end as usize * width);
        all.get(a..b)
            .map(<[f32]>::to_vec)
            .ok_or_else(|| VerifyError::TensorData {
                origin: self.description(),
                tensor: name.to_string(),
                problem: format!(
                    "source returned {} values, fewer than its dims say",
                    all.len()
                ),
            })
    }

    /// [`WeightSource::load_row_range_f32`] into `out` (exactly `rows.len() · ne[0]` values),
    /// so a block that dequantizes expert after expert reuses one buffer instead of allocating
    /// (and page-faulting) ~60 MB per R1 expert matrix. The default copies from
    /// `load_row_range_f32`; [`GgufSource`] dequantizes in place.
    fn load_row_range_into(&self, name: &str, rows: Range<u64>, out: &mut [f32]) -> Result<()> {
        let data = self.load_row_range_f32(name, rows)?;
        if data.len() != out.len() {
            return Err(VerifyError::TensorData {
                origin: self.description(),
                tensor: name.to_string(),
                problem: format!("{} values read for a {}-value slice", data.len(), out.len()),
            });
        }
        out.copy_from_slice(&data);
        Ok(())
    }

    /// The tensor's bytes as stored, for dequantization on a device
    /// ([`crate::backend::Backend::dequantize`]) without a host f32 copy. `None` (the default)
    /// when the source has no such bytes; the f32 loaders above are then used.
    fn raw(&self, name: &str) -> Option<crate::backend::RawTensor<'_>> {
        let _ = name;
        None
    }

    /// Rows `rows` of [`WeightSource::raw`] (the tensor viewed 2-D, `ne[0]` values per row,
    /// all higher dims flattened into rows) as stored, e.g. one expert of a stacked `*_exps`
    /// tensor for a device to upload and dequantize. The default cuts `raw(name)` with
    /// [`crate::backend::RawTensor::slice_rows`]; `None` when there are no raw bytes or they
    /// cannot be cut there (an FP8 range not starting on a scale block).
    fn raw_rows(&self, name: &str, rows: Range<u64>) -> Option<crate::backend::RawTensor<'_>> {
        let (width, n_rows) = flat_rows(&self.tensor_dims(name)?);
        if rows.end > n_rows {
            return None;
        }
        let rows = usize::try_from(rows.start).ok()?..usize::try_from(rows.end).ok()?;
        self.raw(name)?.slice_rows(width, rows)
    }

    /// One line naming the source for messages: `GGUF file /x/y.gguf`, `HF checkpoint /dir`.
    fn description(&self) -> String;

    /// The "tensor is missing" error for this source.
    fn missing(&self, name: &str) -> VerifyError {
        VerifyError::MissingTensor {
            origin: self.description(),
            tensor: name.to_string(),
        }
    }

    /// The "row index out of range" error (a token id beyond the embedding rows).
    fn row_out_of_range(&self, name: &str, row: u32, n_rows: usize) -> VerifyError {
        VerifyError::TensorData {
            origin: self.description(),
            tensor: name.to_string(),
            problem: format!("row {row} requested but the tensor has {n_rows} rows"),
        }
    }
}

/// (row width, row count) of a tensor viewed as 2-D: `ne[0]` wide, the other dims flattened.
pub(crate) fn flat_rows(dims: &[u64]) -> (usize, u64) {
    let width = dims.first().copied().unwrap_or(1) as usize;
    let rows = dims.iter().skip(1).product::<u64>();
    (width, rows)
}

/// Checks that `rows` lies within `n_rows`.
fn check_range<S: WeightSource + ?Sized>(
    s: &S,
    name: &str,
    rows: &Range<u64>,
    n_rows: u64,
) -> Result<()> {
    if rows.start > rows.end || rows.end > n_rows {
        return Err(VerifyError::TensorData {
            origin: s.description(),
            tensor: name.to_string(),
            problem: format!("rows {rows:?} requested but the tensor has {n_rows} rows"),
        });
    }
    Ok(())
}

/// (row width, row count) of a 2-D tensor, or a shape error.
fn two_d<S: WeightSource + ?Sized>(s: &S, name: &str, dims: &[u64]) -> Result<(usize, usize)> {
    match dims {
        [w, r] => Ok((*w as usize, *r as usize)),
        _ => Err(VerifyError::TensorData {
            origin: s.description(),
            tensor: name.to_string(),
            problem: format!("expected 2 dims, found {dims:?}"),
        }),
    }
}

/// A GGUF file as a [`WeightSource`]: metadata from the file, tensors dequantized with
/// `quantize::dequantize_rows` (F32/F16/BF16 and every quantized type it supports).
pub struct GgufSource {
    file: GgufFile,
    description: String,
}

impl GgufSource {
    /// Opens and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufSource> {
        let file = GgufFile::open(path)?;
        Ok(GgufSource::new(file))
    }

    /// Wraps an already open file.
    pub fn new(file: GgufFile) -> GgufSource {
        let description = format!("GGUF file {}", file.path().display());
        GgufSource { file, description }
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.file.tensor(name).ok_or_else(|| self.missing(name))
    }

    fn data_error(&self, name: &str, ty: GgmlType, problem: impl std::fmt::Display) -> VerifyError {
        VerifyError::TensorData {
            origin: self.description.clone(),
            tensor: name.to_string(),
            problem: format!("cannot dequantize {ty}: {problem}"),
        }
    }
}

impl WeightSource for GgufSource {
    fn metadata(&self) -> &[(String, GgufValue)] {
        self.file.metadata()
    }

    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.file.get(key)
    }

    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.file.tensor(name).map(|t| t.dims.clone())
    }

    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.file.tensor(name).map(|t| t.nbytes)
    }

    fn tensor_names(&self) -> Vec<String> {
        self.file.tensors().iter().map(|t| t.name.clone()).collect()
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let n = usize::try_from(info.n_elements())
            .map_err(|_| self.data_error(name, info.ggml_type, "too many elements"))?;
        let mut out = vec![0f32; n];
        let data = self.file.tensor_data(info);
        quantize::dequantize_rows(info.ggml_type, data, &mut out)
            .map_err(|e| self.data_error(name, info.ggml_type, e))?;
        // Layers are read once per pass: keep the mapped pages out of RSS (formats::pages).
        formats::pages::release_pages(data);
        Ok(out)
    }

    fn load_rows_f32(&self, name: &str, rows: &[u32]) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let (width, n_rows) = two_d(self, name, &info.dims)?;
        let ty = info.ggml_type;
        let row_bytes = ty.row_size(width as u64).ok_or_else(|| {
            self.data_error(name, ty, format!("row length {width} is not whole blocks"))
        })? as usize;
        let data = self.file.tensor_data(info);
        let mut out = vec![0f32; rows.len() * width];
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            if r >= n_rows {
                return Err(self.row_out_of_range(name, r as u32, n_rows));
            }
            let src = data
                .get(r * row_bytes..(r + 1) * row_bytes)
                .ok_or_else(|| self.data_error(name, ty, "data shorter than its dims"))?;
            quantize::dequantize_rows(ty, src, &mut out[i * width..(i + 1) * width])
                .map_err(|e| self.data_error(name, ty, e))?;
        }
        Ok(out)
    }

    fn load_row_range_f32(&self, name: &str, rows: Range<u64>) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let (width, _) = flat_rows(&info.dims);
        let n = rows.end.saturating_sub(rows.start) as usize * width;
        let mut out = vec![0f32; n];
        self.load_row_range_into(name, rows, &mut out)?;
        Ok(out)
    }

    fn load_row_range_into(&self, name: &str, rows: Range<u64>, out: &mut [f32]) -> Result<()> {
        let info = self.info(name)?;
        let (width, n_rows) = flat_rows(&info.dims);
        check_range(self, name, &rows, n_rows)?;
        let ty = info.ggml_type;
        let row_bytes = ty.row_size(width as u64).ok_or_else(|| {
            self.data_error(name, ty, format!("row length {width} is not whole blocks"))
        })? as usize;
        let (a, b) = (rows.start as usize, rows.end as usize);
        if out.len() != (b - a) * width {
            return Err(self.data_error(name, ty, "output slice does not match the rows"));
        }
        let src = self
            .file
            .tensor_data(info)
            .get(a * row_bytes..b * row_bytes)
            .ok_or_else(|| self.data_error(name, ty, "data shorter than its dims"))?;
        quantize::dequantize_rows(ty, src, out).map_err(|e| self.data_error(name, ty, e))?;
        formats::pages::release_pages(src);
        Ok(())
    }

    fn raw(&self, name: &str) -> Option<crate::backend::RawTensor<'_>> {
        let info = self.file.tensor(name)?;
        Some(crate::backend::RawTensor::Ggml {
            ty: info.ggml_type,
            data: self.file.tensor_data(info),
        })
    }

    fn description(&self) -> String {
        self.description.clone()
    }
}
