//! Importance weights and input validation shared by both quantizing paths (`convert --outtype
//! MIX` from a checkpoint, `requantize` from a GGUF): each tensor's imatrix slice looked up and
//! size-checked as llama-quantize does (REFERENCE §6.5), rows quantized with the slice of their
//! expert, and non-finite inputs refused naming the tensor and the first bad element.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::ggml_type::GgmlType;
use formats::imatrix::Imatrix;

use crate::error::{ConvertError, Result};

/// Options of the quantizing paths beyond [`super::ExecOptions`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Per-tensor importance weights (`--imatrix`).
    pub imatrix: Option<&'a ImatrixWeights>,
    /// Round every value of a tensor written in a non-F32 type to bf16 before quantizing
    /// (`--fp8-via-bf16`): reproduces the community pipeline `convert --outtype bf16` then
    /// `llama-quantize` (REFERENCE §4.1, §8 item 9). Off: the exact f32 FP8×scale product is
    /// quantized, as `convert --outtype f32` then `llama-quantize` would.
    pub fp8_via_bf16: bool,
}

/// What a tensor's imatrix lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Weights of the right size (`ne[0]·ne[2]`): slice `r / ne[1]` for row `r`.
    Found(Arc<[f32]>),
    /// No entry for this tensor: llama-quantize prints a message and quantizes without.
    Missing,
    /// An entry of the wrong size: fatal in llama-quantize, except for `token_embd`.
    WrongSize {
        /// Floats in the entry.
        got: usize,
        /// `ne[0]·ne[2]`.
        want: u64,
    },
}

/// The importance weights of every imatrix entry, derived once the way llama-quantize derives
/// them (GGUF: Σx²/count per slice; legacy: value/ncall), with the file's bookkeeping for the
/// `quantize.imatrix.*` keys.
///
/// Exists so both quantizing paths share one lookup with llama-quantize's size rule and one set
/// of output keys.
#[derive(Debug, Clone)]
pub struct ImatrixWeights {
    path: PathBuf,
    weights: HashMap<String, Arc<[f32]>>,
    datasets: Vec<String>,
    chunk_count: u32,
}

impl ImatrixWeights {
    /// Loads `path` (GGUF or legacy `.dat`) and derives every entry's weights; a non-finite
    /// weight is an error naming the entry (llama-quantize: "imatrix contains non-finite value").
    pub fn load(path: &Path) -> Result<Self> {
        let im = Imatrix::load(path).map_err(|e| ConvertError::Imatrix {
            path: path.to_path_buf(),
            detail: e.problem.to_string(),
        })?;
        Self::from_imatrix(path, &im)
    }

    /// The weights of an already loaded imatrix; `path` is what `quantize.imatrix.file` records.
    pub fn from_imatrix(path: &Path, im: &Imatrix) -> Result<Self> {
        let mut weights = HashMap::with_capacity(im.entries.len());
        for (name, entry) in &im.entries {
            let w = entry.weights();
            if let Some(v) = w.iter().find(|v| !v.is_finite()) {
                return Err(ConvertError::Imatrix {
                    path: path.to_path_buf(),
                    detail: format!("entry `{name}` contains the non-finite value {v}"),
                });
            }
            weights.insert(name.clone(), Arc::from(w));
        }
        Ok(ImatrixWeights {
            path: path.to_path_buf(),
            weights,
            datasets: im.datasets.clone(),
            chunk_count: im.chunk_count,
        })
    }

    /// Number of entries (`quantize.imatrix.entries_count`).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether the file has no entries.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The entry for `name`, checked against the tensor's shape `dims` (ggml `ne`).
    pub fn lookup(&self, name: &str, dims: &[u64]) -> Lookup {
        let Some(w) = self.weights.get(name) else {
            return Lookup::Missing;
        };
        let want = dims
            .first()
            .copied()
            .unwrap_or(1)
            .saturating_mul(dims.get(2).copied().unwrap_or(1));
        if w.len() as u64 == want {
            Lookup::Found(Arc::clone(w))
        } else {
            Lookup::WrongSize { got: w.len(), want }
        }
    }

    /// The weights for a tensor being quantized, as llama-quantize applies them: found → used;
    /// missing → none; wrong size → an error naming the entry, except for `token_embd` (whose
    /// entry, if any, is ignored).
    pub fn for_tensor(&self, name: &str, dims: &[u64]) -> Result<Option<Arc<[f32]>>> {
        match self.lookup(name, dims) {
            Lookup::Found(w) => Ok(Some(w)),
            Lookup::Missing => Ok(None),
            Lookup::WrongSize { .. } if is_token_embd(name) => Ok(None),
            Lookup::WrongSize { got, want } => Err(ConvertError::Imatrix {
                path: self.path.clone(),
                detail: format!(
                    "entry `{name}` has {got} values but the tensor needs {want} \
                     (ne[0]·ne[2] of {dims:?}); is the imatrix for another model?"
                ),
            }),
        }
    }

    /// The keys llama-quantize adds with an imatrix, in its order: `quantize.imatrix.file`
    /// (string, the path as given, at most 127 bytes), `.dataset` (the first dataset, if any),
    /// `.entries_count` (u32), `.chunks_count` (u32, when > 0).
    pub fn metadata(&self) -> Vec<(String, formats::gguf::GgufValue)> {
        use formats::gguf::GgufValue;
        let mut kv = vec![(
            "quantize.imatrix.file".to_string(),
            GgufValue::from(truncate_127(&self.path.to_string_lossy())),
        )];
        if let Some(d) = self.datasets.first() {
            kv.push((
                "quantize.imatrix.dataset".into(),
                GgufValue::from(truncate_127(d)),
            ));
        }
        kv.push((
            "quantize.imatrix.entries_count".into(),
            GgufValue::from(u32::try_from(self.weights.len()).unwrap_or(u32::MAX)),
        ));
        if self.chunk_count > 0 {
            kv.push((
                "quantize.imatrix.chunks_count".into(),
                GgufValue::from(self.chunk_count),
            ));
        }
        kv
    }
}

/// `strncpy(…, 127)` of a KV override value: at most 127 bytes (cut at a char boundary).
fn truncate_127(s: &str) -> String {
    let mut end = s.len().min(127);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

/// llama-quantize's `tensor_name_match_token_embd`.
pub fn is_token_embd(name: &str) -> bool {
    name == "token_embd.weight" || name == "per_layer_token_embd.weight"
}

/// Refuses non-finite values like llama.cpp's `ggml_validate_row_data` on load, naming the
/// tensor and the first bad element (index into the whole tensor, row-major).
pub(crate) fn check_finite(
    name: &str,
    values: &[f32],
    start_row: usize,
    row_len: usize,
) -> Result<()> {
    if let Some(i) = quantize::first_non_finite(values) {
        let v = values[i];
        let index = start_row.saturating_mul(row_len).saturating_add(i);
        return Err(ConvertError::NonFinite {
            tensor: name.to_string(),
            index: index as u64,
            row: (index / row_len.max(1)) as u64,
            value: v,
        });
    }
    Ok(())
}

/// Quantizes rows `start..` (as many as `src` holds) of a tensor to `ty`; with `weights`
/// (`n_slices · row_len` floats) row `r` uses slice `r / per_slice` (its expert or head), like
/// llama-quantize's `imatrix_for_row`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_chunk(
    name: &str,
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    start: usize,
    per_slice: usize,
    weights: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<()> {
    let quant = |error| ConvertError::Quantize {
        tensor: name.to_string(),
        error,
    };
    let Some(w) = weights else {
        return quantize::quantize_rows(ty, src, row_len, None, dst).map_err(quant);
    };
    let rows = src.len().checked_div(row_len).unwrap_or(0);
    let row_bytes = dst.len().checked_div(rows.max(1)).unwrap_or(0);
    let per = per_slice.max(1);
    let mut r = 0;
    while r < rows {
        let global = start + r;
        let slice = global / per;
        let n = (per - global % per).min(rows - r);
        let ws = w
            .get(slice * row_len..(slice + 1) * row_len)
            .ok_or_else(|| {
                quant(quantize::QuantizeError::Size(format!(
                    "no importance weights for slice {slice} of {} values",
                    w.len()
                )))
            })?;
        let s = src
            .get(r * row_len..(r + n) * row_len)
            .ok_or_else(|| quant(quantize::QuantizeError::Size("source rows".into())))?;
        let d = dst
            .get_mut(r * row_bytes..(r + n) * row_bytes)
            .ok_or_else(|| quant(quantize::QuantizeError::Size("output rows".into())))?;
        quantize::quantize_rows(ty, s, row_len, Some(ws), d).map_err(quant)?;
        r += n;
    }
    Ok(())
}
