//! An HF checkpoint directory read as the GGUF it would convert to, without writing it: GGUF
//! names, dims and metadata from the conversion plan at F32, and any tensor's rows as f32
//! straight from the mmap through the pipeline's own row sources (FP8 × block scale, stacked
//! experts, the `kv_b` split, the llama rotary permutation).
//!
//! Exists so a forward pass (`r1q perplexity DIR`, `r1q verify DIR …`) can evaluate a 671B
//! checkpoint from its safetensors ("stream, never stage"): the values are exactly those an
//! `--outtype f32` conversion writes, because they come from the same [`RowSource`] code, and
//! only the rows asked for are decoded (one expert of a stacked tensor, a few embedding rows).

use std::ops::Range;
use std::path::Path;

use formats::checkpoint::dtype::Dtype;
use formats::checkpoint::{expected_scale_shape, scale_name, Checkpoint};
use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

use crate::arch::PlanOptions;
use crate::error::{ConvertError, Result};
use crate::pipeline::source::RowSource;
use crate::plan::{Plan, PlannedTensor};

/// One checkpoint tensor's bytes as stored, whose rows are rows of a planned tensor unchanged
/// ([`HfTensors::stored_rows`]): what a device needs to dequantize them itself.
#[derive(Debug, Clone, Copy)]
pub struct StoredTensor<'a> {
    /// The element type of `data` (F32, F16, BF16 or F8_E4M3).
    pub dtype: Dtype,
    /// The whole checkpoint tensor, row-major `[rows, cols]`.
    pub data: &'a [u8],
    /// For F8_E4M3: the `_scale_inv` tensor's bytes (F32, `[⌈rows/B0⌉, ⌈cols/B1⌉]`) and the
    /// block `[B0, B1]`.
    pub fp8_scales: Option<(&'a [u8], [usize; 2])>,
    /// Rows of the checkpoint tensor.
    pub rows: usize,
    /// Its row length (= the planned tensor's `ne[0]`).
    pub cols: usize,
    /// The checkpoint row the requested planned rows start at.
    pub first_row: usize,
}

/// An opened checkpoint and its F32 conversion plan: the tensors under GGUF names, readable as
/// f32 rows on demand.
pub struct HfTensors {
    ckpt: Checkpoint,
    plan: Plan,
}

impl HfTensors {
    /// Opens the checkpoint in `dir` and plans its conversion at F32 (the exact dequantized
    /// values), with the tokenizer keys of `tokenizer.json`. Reads headers only.
    pub fn open(dir: &Path) -> Result<HfTensors> {
        let ckpt = Checkpoint::open(dir)?;
        let opts = PlanOptions {
            outtype: GgmlType::F32,
            ..PlanOptions::default()
        };
        let plan = crate::arch::plan(&ckpt, &opts)?;
        Ok(HfTensors { ckpt, plan })
    }

    /// The checkpoint directory.
    pub fn path(&self) -> &Path {
        self.ckpt.path()
    }

    /// The metadata an F32 conversion would write (GGUF keys, tokenizer included).
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.plan.metadata
    }

    /// Every output tensor's GGUF name, in file order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.plan.tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// Dims of tensor `name` (ggml order, innermost first), `None` if the plan has no such
    /// tensor.
    pub fn dims(&self, name: &str) -> Option<&[u64]> {
        self.planned(name).map(|t| t.dims.as_slice())
    }

    /// Bytes the checkpoint stores for the tensor's sources (FP8 scales not counted): the
    /// on-disk size a table reports for the HF model.
    pub fn stored_bytes(&self, name: &str) -> Option<u64> {
        let t = self.planned(name)?;
        let names: Vec<&str> = match &t.source {
            crate::plan::Source::Tensor { name }
            | crate::plan::Source::PermuteRope { name, .. } => vec![name],
            crate::plan::Source::Stack { names } => names.iter().map(String::as_str).collect(),
            // kv_b is split into two outputs: half of its bytes each.
            crate::plan::Source::KvB { name, .. } => {
                return self.ckpt.meta(name).map(|m| m.len / 2);
            }
            crate::plan::Source::Values(v) => return Some(4 * v.len() as u64),
        };
        names.iter().map(|n| self.ckpt.meta(n).map(|m| m.len)).sum()
    }

    /// The whole tensor `name` as f32, row-major (`ne[0]` contiguous).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.planned_or_err(name)?;
        self.read_rows_f32(name, 0..t.n_rows())
    }

    /// Rows `rows` of tensor `name` viewed as 2-D (`ne[0]` wide, higher dims flattened), as f32:
    /// expert e of a stacked `{in, out, n_expert}` tensor is rows `e·out .. (e+1)·out`.
    pub fn read_rows_f32(&self, name: &str, rows: Range<u64>) -> Result<Vec<f32>> {
        let t = self.planned_or_err(name)?;
        let n = rows.end.saturating_sub(rows.start);
        let len = usize::try_from(n.saturating_mul(t.row_len()))
            .map_err(|_| self.bad(t, format!("rows {rows:?} do not fit in memory")))?;
        let mut out = vec![0f32; len];
        self.read_rows_into(name, rows, &mut out)?;
        Ok(out)
    }

    /// [`HfTensors::read_rows_f32`] into `out` (exactly `rows.len() · ne[0]` values), so a
    /// caller reading expert after expert can reuse one buffer. The mmap pages read are released
    /// from the resident set afterwards (they stay in the page cache).
    pub fn read_rows_into(&self, name: &str, rows: Range<u64>, out: &mut [f32]) -> Result<()> {
        let t = self.planned_or_err(name)?;
        if rows.start > rows.end || rows.end > t.n_rows() {
            return Err(self.bad(
                t,
                format!("rows {rows:?} requested but it has {} rows", t.n_rows()),
            ));
        }
        let row_len = usize::try_from(t.row_len()).unwrap_or(usize::MAX);
        let (start, n) = (rows.start as usize, (rows.end - rows.start) as usize);
        if Some(out.len()) != n.checked_mul(row_len) {
            return Err(self.bad(
                t,
                format!("{} values asked for {n} rows of {row_len}", out.len()),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        // Rows inside one expert of a stacked tensor: open only that expert's checkpoint tensor
        // (opening the stack validates every expert, 256 of them for R1, on each read).
        if let Some((one, first)) = one_expert(t, start, n) {
            let src = RowSource::open(&self.ckpt, &one)?;
            src.fill(first, row_len, out)?;
            src.release(first, n);
            return Ok(());
        }
        let src = RowSource::open(&self.ckpt, t)?;
        src.fill(start, row_len, out)?;
        src.release(start, n);
        Ok(())
    }

    /// The stored checkpoint tensor behind rows `rows` of tensor `name`, when those rows are
    /// its rows unchanged: a tensor mapped 1:1, or rows within one expert of a stacked tensor
    /// (that expert's tensor). `None` for transformed tensors (the `kv_b` split, the rotary
    /// permutation, planner values), ranges spanning experts or beyond the tensor, dtypes other
    /// than F32/F16/BF16/F8_E4M3, and FP8 scales that are not F32 of the expected shape.
    pub fn stored_rows(&self, name: &str, rows: Range<u64>) -> Option<StoredTensor<'_>> {
        let t = self.planned(name)?;
        if rows.start > rows.end || rows.end > t.n_rows() {
            return None;
        }
        let (start, n) = (
            usize::try_from(rows.start).ok()?,
            usize::try_from(rows.end - rows.start).ok()?,
        );
        let (src, first_row, n_rows) = match &t.source {
            crate::plan::Source::Tensor { name } => (name.clone(), start, t.n_rows()),
            crate::plan::Source::Stack { .. } if n > 0 => {
                let (one, first) = one_expert(t, start, n)?;
                let per = one.n_rows();
                let crate::plan::Source::Tensor { name } = one.source else {
                    return None;
                };
                (name, first, per)
            }
            _ => return None,
        };
        let view = self.ckpt.tensor(&src).ok()?;
        let (r, c) = match view.shape {
            &[r, c] => (r, c),
            _ => return None,
        };
        if r as u64 != n_rows || c as u64 != t.row_len() {
            return None;
        }
        let fp8_scales = match view.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => None,
            Dtype::F8E4M3 => {
                let block = self.ckpt.fp8_block();
                let scale = self.ckpt.tensor(&scale_name(&src)).ok()?;
                let shape = expected_scale_shape(view.shape, block)?;
                if scale.dtype != Dtype::F32 || scale.shape != shape {
                    return None;
                }
                Some((scale.data, block))
            }
            _ => return None,
        };
        Some(StoredTensor {
            dtype: view.dtype,
            data: view.data,
            fp8_scales,
            rows: r,
            cols: c,
            first_row,
        })
    }

    fn planned(&self, name: &str) -> Option<&PlannedTensor> {
        self.plan.tensors.iter().find(|t| t.name == name)
    }

    fn planned_or_err(&self, name: &str) -> Result<&PlannedTensor> {
        self.planned(name).ok_or_else(|| ConvertError::Mapping {
            path: self.ckpt.path().to_path_buf(),
            detail: format!("no tensor `{name}` in the conversion plan"),
        })
    }

    fn bad(&self, t: &PlannedTensor, detail: String) -> ConvertError {
        ConvertError::Mapping {
            path: self.ckpt.path().to_path_buf(),
            detail: format!("tensor `{}` {:?}: {detail}", t.name, t.dims),
        }
    }
}

/// For rows `start..start+n` of a stacked-experts tensor that all belong to one expert: that
/// expert's checkpoint tensor as a plain 2-D planned tensor, and the first row within it.
fn one_expert(t: &PlannedTensor, start: usize, n: usize) -> Option<(PlannedTensor, usize)> {
    let crate::plan::Source::Stack { names } = &t.source else {
        return None;
    };
    let [width, per, _] = t.dims.as_slice() else {
        return None;
    };
    let per = usize::try_from(*per).ok().filter(|&p| p > 0)?;
    let e = start / per;
    if (start + n - 1) / per != e {
        return None;
    }
    let name = names.get(e)?.clone();
    let one = PlannedTensor {
        name: t.name.clone(),
        dims: vec![*width, per as u64],
        ggml_type: t.ggml_type,
        source: crate::plan::Source::Tensor { name },
    };
    Some((one, start - e * per))
}
