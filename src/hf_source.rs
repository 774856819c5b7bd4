//! Opening a model for evaluation, whether the user names a GGUF file or an HF checkpoint
//! directory, with its tokenizer and size facts for the tables.
//!
//! HF directories are streamed, never staged (DESIGN.md): `verify` may not depend on `convert`,
//! so this root-crate glue implements `verify`'s [`WeightSource`] over convert's
//! [`HfTensors`] (the F32 conversion plan, read row by row from the safetensors mmap). Every
//! value is the one `r1q convert --outtype f32` would write, and nothing is written to disk.
//! Tensors that are a checkpoint tensor unchanged (and each expert of a stacked one) are also
//! offered as stored bytes (`raw`, `raw_rows`: FP8 with its block scales, BF16, F16, F32), so a
//! device backend dequantizes them itself instead of receiving host f32.

use std::ops::Range;
use std::path::{Path, PathBuf};

use ::verify::backend::RawTensor;
use ::verify::error::{Result as VResult, VerifyError};
use ::verify::tokenize::Tokenizer;
use ::verify::{GgufSource, WeightSource};
use anyhow::{bail, Context, Result};
use convert::tensors::{HfTensors, StoredTensor};
use formats::checkpoint::dtype::Dtype;
use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

/// An HF checkpoint directory as a [`WeightSource`]: GGUF names, dims and metadata from
/// convert's F32 plan, tensors decoded on demand (one expert, a few embedding rows).
pub struct HfSource {
    tensors: HfTensors,
    description: String,
}

impl HfSource {
    /// Opens and plans `dir` (headers only).
    pub fn open(dir: &Path) -> Result<HfSource> {
        let tensors = HfTensors::open(dir)?;
        let description = format!("HF checkpoint {}", dir.display());
        Ok(HfSource {
            tensors,
            description,
        })
    }

    /// A convert error on tensor `name` as the engine's one-line error.
    fn error(&self, name: &str, e: convert::ConvertError) -> VerifyError {
        VerifyError::TensorData {
            origin: self.description.clone(),
            tensor: name.to_string(),
            problem: e.to_string(),
        }
    }
}

impl WeightSource for HfSource {
    fn metadata(&self) -> &[(String, GgufValue)] {
        self.tensors.metadata()
    }

    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.tensors
            .metadata()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.tensors.dims(name).map(<[u64]>::to_vec)
    }

    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.tensors.stored_bytes(name)
    }

    fn tensor_names(&self) -> Vec<String> {
        self.tensors.tensor_names()
    }

    fn load_f32(&self, name: &str) -> VResult<Vec<f32>> {
        if self.tensors.dims(name).is_none() {
            return Err(self.missing(name));
        }
        self.tensors.read_f32(name).map_err(|e| self.error(name, e))
    }

    fn load_rows_f32(&self, name: &str, rows: &[u32]) -> VResult<Vec<f32>> {
        let dims = self.tensor_dims(name).ok_or_else(|| self.missing(name))?;
        let (width, n_rows) = match dims.as_slice() {
            [w, r] => (*w as usize, *r),
            _ => {
                return Err(VerifyError::TensorData {
                    origin: self.description.clone(),
                    tensor: name.to_string(),
                    problem: format!("expected 2 dims, found {dims:?}"),
                })
            }
        };
        let mut out = vec![0f32; rows.len() * width];
        for (&r, dst) in rows.iter().zip(out.chunks_exact_mut(width.max(1))) {
            if u64::from(r) >= n_rows {
                return Err(self.row_out_of_range(name, r, n_rows as usize));
            }
            let range = u64::from(r)..u64::from(r) + 1;
            self.tensors
                .read_rows_into(name, range, dst)
                .map_err(|e| self.error(name, e))?;
        }
        Ok(out)
    }

    fn load_row_range_f32(&self, name: &str, rows: Range<u64>) -> VResult<Vec<f32>> {
        if self.tensors.dims(name).is_none() {
            return Err(self.missing(name));
        }
        self.tensors
            .read_rows_f32(name, rows)
            .map_err(|e| self.error(name, e))
    }

    fn load_row_range_into(&self, name: &str, rows: Range<u64>, out: &mut [f32]) -> VResult<()> {
        if self.tensors.dims(name).is_none() {
            return Err(self.missing(name));
        }
        self.tensors
            .read_rows_into(name, rows, out)
            .map_err(|e| self.error(name, e))
    }

    /// A tensor that is one checkpoint tensor unchanged (F32/F16/BF16, or FP8 with its
    /// `weight_scale_inv`), as stored, so `--device cuda` dequantizes it on the GPU.
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let (_, n_rows) = flat_dims(self.tensors.dims(name)?);
        let s = self.tensors.stored_rows(name, 0..n_rows)?;
        if s.first_row != 0 || s.rows as u64 != n_rows {
            return None;
        }
        stored_raw(&s)
    }

    /// Also one expert of a stacked `*_exps` tensor: the rows of that expert's checkpoint
    /// tensor (FP8 ranges starting on a scale block only, as [`RawTensor::slice_rows`] cuts).
    fn raw_rows(&self, name: &str, rows: Range<u64>) -> Option<RawTensor<'_>> {
        let s = self.tensors.stored_rows(name, rows.clone())?;
        let n = usize::try_from(rows.end - rows.start).ok()?;
        stored_raw(&s)?.slice_rows(s.cols, s.first_row..s.first_row + n)
    }

    fn description(&self) -> String {
        self.description.clone()
    }
}

/// `(ne[0], rows)` of a tensor viewed 2-D (higher dims flattened into rows).
fn flat_dims(dims: &[u64]) -> (u64, u64) {
    (
        dims.first().copied().unwrap_or(1),
        dims.iter().skip(1).product(),
    )
}

/// A stored checkpoint tensor as the engine's [`RawTensor`]: F32/F16/BF16 bytes are the ggml
/// types of the same names (little-endian, row-major), FP8 the block-scaled form.
fn stored_raw<'a>(s: &StoredTensor<'a>) -> Option<RawTensor<'a>> {
    let ggml = |ty| RawTensor::Ggml { ty, data: s.data };
    match (s.dtype, s.fp8_scales) {
        (Dtype::F32, None) => Some(ggml(GgmlType::F32)),
        (Dtype::F16, None) => Some(ggml(GgmlType::F16)),
        (Dtype::BF16, None) => Some(ggml(GgmlType::BF16)),
        (Dtype::F8E4M3, Some((scales, block))) => Some(RawTensor::Fp8Block {
            data: s.data,
            scales,
            rows: s.rows,
            cols: s.cols,
            block,
        }),
        _ => None,
    }
}

/// Where a model's weights come from.
pub enum Source {
    /// A GGUF file.
    Gguf(Box<GgufSource>),
    /// An HF checkpoint directory, streamed.
    Hf(Box<HfSource>),
}

impl Source {
    fn inner(&self) -> &dyn WeightSource {
        match self {
            Source::Gguf(s) => s.as_ref(),
            Source::Hf(s) => s.as_ref(),
        }
    }
}

impl WeightSource for Source {
    fn metadata(&self) -> &[(String, GgufValue)] {
        self.inner().metadata()
    }
    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.inner().get(key)
    }
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.inner().tensor_dims(name)
    }
    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.inner().tensor_bytes(name)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.inner().tensor_names()
    }
    fn load_f32(&self, name: &str) -> VResult<Vec<f32>> {
        self.inner().load_f32(name)
    }
    fn load_rows_f32(&self, name: &str, rows: &[u32]) -> VResult<Vec<f32>> {
        self.inner().load_rows_f32(name, rows)
    }
    fn load_row_range_f32(&self, name: &str, rows: Range<u64>) -> VResult<Vec<f32>> {
        self.inner().load_row_range_f32(name, rows)
    }
    fn load_row_range_into(&self, name: &str, rows: Range<u64>, out: &mut [f32]) -> VResult<()> {
        self.inner().load_row_range_into(name, rows, out)
    }
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        self.inner().raw(name)
    }
    fn raw_rows(&self, name: &str, rows: Range<u64>) -> Option<RawTensor<'_>> {
        self.inner().raw_rows(name, rows)
    }
    fn description(&self) -> String {
        self.inner().description()
    }
}

/// A model ready for the engine.
pub struct Model {
    /// What the user named (GGUF file or checkpoint directory), for tables.
    pub path: PathBuf,
    /// The weights: the GGUF file, or the HF directory read in place.
    pub source: Source,
    /// The vocabulary's tokenizer (llama.cpp's ids).
    pub tokenizer: Tokenizer,
    /// Bytes of tensor data in the file the user named (for a directory: its safetensors).
    pub size_bytes: u64,
    /// Weights (tensor elements), for bits per weight.
    pub n_params: u64,
}

impl Model {
    /// Bits per weight of the file the user named.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.size_bytes as f64 / self.n_params.max(1) as f64
    }

    /// The BOS id llama.cpp's chunked scoring (perplexity, imatrix) puts at each chunk's start,
    /// after checking that the vocabulary fits the engine's `n_vocab` logits and does not append
    /// EOS (which llama-perplexity and llama-imatrix refuse; `tool` names the one whose rule it is).
    pub fn scoring_bos(&self, n_vocab: usize, tool: &str) -> Result<Option<u32>> {
        let tok = &self.tokenizer;
        if tok.n_vocab() != n_vocab {
            bail!(
                "{}: the vocabulary has {} tokens but the model {} logits",
                self.path.display(),
                tok.n_vocab(),
                n_vocab
            );
        }
        if tok.add_eos() {
            bail!(
                "{}: the vocabulary appends EOS; {tool} refuses such models too",
                self.path.display()
            );
        }
        Ok(if tok.add_bos() { tok.bos() } else { None })
    }

    /// The file name for tables.
    pub fn label(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Opens `path`: a GGUF file, or an HF checkpoint directory (planned at F32 and read in place;
/// the tokenizer is the one convert would write into the GGUF, so ids match the F32 GGUF's).
pub fn open_model(path: &Path) -> Result<Model> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (source, size_bytes) = if meta.is_dir() {
        let hf = HfSource::open(path)?;
        let bytes: u64 = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        (Source::Hf(Box::new(hf)), bytes)
    } else {
        let g = GgufSource::open(path)?;
        let bytes = g.file().tensors().iter().map(|t| t.nbytes).sum();
        (Source::Gguf(Box::new(g)), bytes)
    };
    let tokenizer = Tokenizer::from_gguf_metadata(path, source.metadata())?;
    let n_params: u64 = source
        .tensor_names()
        .iter()
        .filter_map(|n| source.tensor_dims(n))
        .map(|d| d.iter().product::<u64>())
        .sum();
    Ok(Model {
        path: path.to_path_buf(),
        source,
        tokenizer,
        size_bytes,
        n_params,
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
