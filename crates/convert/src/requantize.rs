//! GGUF → GGUF requantization as `llama-quantize` does it, and the same type choice applied to
//! a conversion plan (the direct path `convert --outtype Q4_K_M`).
//!
//! Exists so `r1q quantize` and `r1q convert --outtype MIX` produce llama-quantize's bytes:
//! tensors in its processing order (block number, then name: the loader's `weights_map`), each
//! tensor's type from [`quantize::mix::choose_types`], values dequantized to f32 and quantized
//! with the tensor's imatrix slice (per expert), metadata = input KV with
//! `general.quantization_version` and `general.file_type` moved to the end, `split.*` dropped and
//! the `quantize.imatrix.*` keys appended (REFERENCE §3.1, §1.5). Data flows through the shared
//! chunked executor of [`crate::pipeline`], so memory stays bounded by the chunks in flight.
//!
//! Not for: the type rules themselves (`quantize::mix`) or the codecs (`quantize`).

use std::path::Path;
use std::time::Instant;

use formats::ggml_type::GgmlType;
use formats::gguf::{GgufFile, GgufValue, TensorDecl};
use quantize::mix::{self as mixmod, Choice, Mix, MixOptions, ModelInfo, TensorShape};

use crate::error::{ConvertError, Result};
use crate::pipeline::gguf_source::{GgufJob, GgufRows};
use crate::pipeline::weighted::is_token_embd;
use crate::pipeline::{self, ExecOptions, ImatrixWeights, Lookup, Progress, Summary};
use crate::plan::Plan;

/// The mix API (`Mix`, `MixOptions`, `TensorTypeOverride`, …), re-exported so front ends need
/// only this crate.
pub use quantize::mix;

/// Keys llama-quantize removes from the copied KV (`LLM_KV_SPLIT_*`).
pub const SPLIT_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

/// `GGML_QNT_VERSION`, written as `general.quantization_version`.
pub const QNT_VERSION: u32 = 2;

/// What to quantize to and how, beyond the files.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// The mix (`TYPE`).
    pub mix: Mix,
    /// `--pure`, `--leave-output-tensor`, `--output-tensor-type`, `--token-embedding-type`,
    /// `--tensor-type` (its `has_imatrix` is set from the imatrix given to the planner).
    pub mix_options: MixOptions,
    /// `--allow-requantize`: quantize tensors whose input type is already a block type.
    pub allow_requantize: bool,
}

/// One output tensor of a requantization plan.
#[derive(Debug, Clone, PartialEq)]
pub struct RequantTensor {
    /// The type choice (name, dims, new type, reason, fallback).
    pub choice: Choice,
    /// Its type in the input file.
    pub input_type: GgmlType,
    /// Its index in the input file's tensor list.
    pub input_index: usize,
    /// What its imatrix lookup found (`None` without an imatrix or when it is not quantized).
    pub imatrix: Option<Lookup>,
}

impl RequantTensor {
    /// Whether the data is transformed (llama-quantize: `cur_type != new_type`); otherwise the
    /// bytes are copied as stored.
    pub fn is_quantized(&self) -> bool {
        self.input_type != self.choice.ggml_type
    }
}

/// Everything a requantization will write, decided before any data moves.
#[derive(Debug, Clone)]
pub struct RequantPlan {
    /// The model facts the heuristics used.
    pub model: ModelInfo,
    /// The mix.
    pub mix: Mix,
    /// Output tensors in write (processing) order.
    pub tensors: Vec<RequantTensor>,
    /// Output metadata in write order.
    pub metadata: Vec<(String, GgufValue)>,
    /// Input tensor bytes.
    pub input_bytes: u64,
}

impl RequantPlan {
    /// Tensors quantized without importance weights although an imatrix was given (no entry;
    /// llama-quantize: "did not find weights for …"), and `token_embd` with a wrong-sized entry.
    pub fn without_weights(&self) -> Vec<&str> {
        self.tensors
            .iter()
            .filter(|t| matches!(t.imatrix, Some(Lookup::Missing | Lookup::WrongSize { .. })))
            .map(|t| t.choice.name.as_str())
            .collect()
    }

    /// Output size (tensor data) and bits per weight.
    pub fn size(&self) -> Option<mixmod::PlanSize> {
        let choices: Vec<Choice> = self.tensors.iter().map(|t| t.choice.clone()).collect();
        mixmod::plan_size(&choices)
    }
}

/// llama-quantize's output KV: `input` with `general.quantization_version` = 2 and
/// `general.file_type` = the mix's ftype moved to the end (gguf_set_val removes, then appends),
/// `split.*` removed, then the `quantize.imatrix.*` keys.
pub fn quantized_metadata(
    input: &[(String, GgufValue)],
    mix: Mix,
    imatrix: Option<&ImatrixWeights>,
) -> Vec<(String, GgufValue)> {
    let extra: Vec<(String, GgufValue)> = [
        (
            "general.quantization_version".to_string(),
            GgufValue::from(QNT_VERSION),
        ),
        (
            "general.file_type".to_string(),
            GgufValue::from(mix.ftype()),
        ),
    ]
    .into_iter()
    .chain(imatrix.map(ImatrixWeights::metadata).unwrap_or_default())
    .collect();
    let mut out: Vec<(String, GgufValue)> = input
        .iter()
        .filter(|(k, _)| !SPLIT_KEYS.contains(&k.as_str()) && !extra.iter().any(|(e, _)| e == k))
        .cloned()
        .collect();
    out.extend(extra);
    out
}

/// The model facts of a planned conversion's metadata, read like [`ModelInfo::from_gguf`]
/// (per-layer arrays: layer 0; `head_count_kv` defaults to `head_count`).
pub fn model_info(arch: &str, metadata: &[(String, GgufValue)]) -> Result<ModelInfo> {
    let get = |key: &str| -> Option<u32> {
        let v = metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)?;
        match v {
            GgufValue::Array(a) => a.values.first().and_then(GgufValue::as_u32),
            v => v.as_u32(),
        }
    };
    let n_layer = get(&format!("{arch}.block_count")).ok_or_else(|| ConvertError::Mapping {
        path: Default::default(),
        detail: format!("plan has no {arch}.block_count"),
    })?;
    let n_head = get(&format!("{arch}.attention.head_count")).unwrap_or(0);
    Ok(ModelInfo {
        arch: arch.to_string(),
        n_layer,
        n_expert: get(&format!("{arch}.expert_count")).unwrap_or(0),
        n_head,
        n_head_kv: get(&format!("{arch}.attention.head_count_kv")).unwrap_or(n_head),
    })
}

fn mix_err(path: &Path, e: mixmod::MixError) -> ConvertError {
    ConvertError::Mapping {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Refuses a choice llama-quantize refuses: a type that needs an imatrix without one.
fn check_required(path: &Path, mix: Mix, c: &Choice, has_weights: bool) -> Result<()> {
    if !has_weights && mixmod::requires_imatrix(&c.name, c.ggml_type, mix) {
        return Err(ConvertError::Mapping {
            path: path.to_path_buf(),
            detail: format!(
                "this quantization requires an importance matrix: tensor `{}` → {} \
                 (pass --imatrix FILE)",
                c.name, c.ggml_type
            ),
        });
    }
    Ok(())
}

/// Plans the requantization of `file`: every tensor's new type (processing order), the imatrix
/// lookups (a wrong-sized entry is an error naming it, except for `token_embd`), the output
/// metadata; refuses already-quantized input without `allow_requantize`, types r1q has no codec
/// for, and types that require an imatrix without one.
pub fn plan_requantize(
    file: &GgufFile,
    opts: &QuantizeOptions,
    imatrix: Option<&ImatrixWeights>,
) -> Result<RequantPlan> {
    let path = file.path();
    let model = ModelInfo::from_gguf(file).map_err(|e| mix_err(path, e))?;
    let shapes: Vec<TensorShape> = file
        .tensors()
        .iter()
        .map(|t| TensorShape {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
        })
        .collect();
    let mut mix_options = opts.mix_options.clone();
    mix_options.has_imatrix = imatrix.is_some_and(|w| !w.is_empty());
    let choices = mixmod::choose_types(&model, &shapes, opts.mix, &mix_options)
        .map_err(|e| mix_err(path, e))?;
    let mut tensors = Vec::with_capacity(choices.len());
    let mut input_bytes = 0u64;
    for choice in choices {
        let (input_index, info) = file
            .tensors()
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == choice.name)
            .ok_or_else(|| ConvertError::Mapping {
                path: path.to_path_buf(),
                detail: format!("tensor `{}` vanished from the plan", choice.name),
            })?;
        input_bytes = input_bytes.saturating_add(info.nbytes);
        let mut t = RequantTensor {
            input_type: info.ggml_type,
            input_index,
            imatrix: None,
            choice,
        };
        if t.is_quantized() {
            t.imatrix = imatrix.map(|w| w.lookup(&t.choice.name, &t.choice.dims));
            if let (Some(w), Some(Lookup::WrongSize { .. })) = (imatrix, &t.imatrix) {
                if !is_token_embd(&t.choice.name) {
                    w.for_tensor(&t.choice.name, &t.choice.dims)?;
                }
            }
            let has = matches!(t.imatrix, Some(Lookup::Found(_)));
            check_required(path, opts.mix, &t.choice, has)?;
            if t.input_type.is_quantized() && !opts.allow_requantize {
                return Err(ConvertError::Mapping {
                    path: path.to_path_buf(),
                    detail: format!(
                        "tensor `{}` is already quantized ({}); requantizing loses quality \
                         twice — pass --allow-requantize to do it anyway, or start from an \
                         F32/F16/BF16 GGUF",
                        t.choice.name, t.input_type
                    ),
                });
            }
            for (ty, direction) in [
                (t.input_type, "dequantize"),
                (t.choice.ggml_type, "quantize"),
            ] {
                if !quantize::supports(ty) {
                    return Err(ConvertError::Quantize {
                        tensor: t.choice.name.clone(),
                        error: quantize::QuantizeError::Unsupported { ty, direction },
                    });
                }
            }
        }
        tensors.push(t);
    }
    Ok(RequantPlan {
        model,
        mix: opts.mix,
        tensors,
        metadata: quantized_metadata(file.metadata(), opts.mix, imatrix),
        input_bytes,
    })
}

/// Executes `plan` for `file` into `out` (atomically, via `out.partial`), on the shared chunked
/// executor: copied tensors stream through as stored, the others are dequantized, checked for
/// non-finite values and quantized with their imatrix slice.
pub fn requantize(
    file: &GgufFile,
    plan: &RequantPlan,
    out: &Path,
    exec: &ExecOptions,
    progress: &dyn Progress,
) -> Result<Summary> {
    let began = Instant::now();
    if std::fs::canonicalize(out).ok() == std::fs::canonicalize(file.path()).ok() && out.exists() {
        return Err(ConvertError::Mapping {
            path: out.to_path_buf(),
            detail: "input and output files are the same".into(),
        });
    }
    let decls: Vec<TensorDecl> = plan
        .tensors
        .iter()
        .map(|t| {
            TensorDecl::new(
                t.choice.name.clone(),
                t.choice.dims.clone(),
                t.choice.ggml_type,
            )
        })
        .collect();
    let jobs: Vec<GgufJob> = plan
        .tensors
        .iter()
        .map(|t| GgufJob {
            input: t.input_index,
            ggml_type: t.choice.ggml_type,
            weights: match &t.imatrix {
                Some(Lookup::Found(w)) => Some(w.clone()),
                _ => None,
            },
        })
        .collect();
    let params = plan
        .tensors
        .iter()
        .map(|t| t.choice.dims.iter().product::<u64>())
        .fold(0u64, u64::saturating_add);
    let factory = GgufRows { file, jobs: &jobs };
    let total = pipeline::stream(decls, &plan.metadata, out, exec, progress, &factory)?;
    Ok(Summary {
        path: out.to_path_buf(),
        tensors: plan.tensors.len(),
        params,
        tensor_bytes: total,
        file_bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
        source_bytes: plan.input_bytes,
        elapsed: began.elapsed(),
    })
}

/// What [`apply_mix`] decided besides the plan edits.
#[derive(Debug, Clone)]
pub struct MixReport {
    /// Every tensor's choice, in the (new) write order.
    pub choices: Vec<Choice>,
    /// Tensors quantized without importance weights although an imatrix was given.
    pub without_weights: Vec<String>,
}

/// Turns a conversion plan made with outtype F32 into the direct quantizing path's plan: the
/// tensors reordered into llama-quantize's processing order and typed by `choose_types` for
/// `mix`, the metadata transformed as llama-quantize would transform the f32 GGUF's. Executing
/// it (with `pipeline::execute_with` and the same imatrix) writes the bytes that `convert
/// --outtype f32` followed by `quantize … MIX` would.
pub fn apply_mix(
    plan: &mut Plan,
    mix: Mix,
    options: &MixOptions,
    imatrix: Option<&ImatrixWeights>,
) -> Result<MixReport> {
    let path = Path::new("<plan>");
    if let Some(t) = plan.tensors.iter().find(|t| t.ggml_type != GgmlType::F32) {
        return Err(ConvertError::Mapping {
            path: path.to_path_buf(),
            detail: format!(
                "apply_mix needs an F32 plan; tensor `{}` is {}",
                t.name, t.ggml_type
            ),
        });
    }
    let model = model_info(&plan.arch, &plan.metadata)?;
    let shapes: Vec<TensorShape> = plan
        .tensors
        .iter()
        .map(|t| TensorShape {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
        })
        .collect();
    let mut options = options.clone();
    options.has_imatrix = imatrix.is_some_and(|w| !w.is_empty());
    let choices =
        mixmod::choose_types(&model, &shapes, mix, &options).map_err(|e| mix_err(path, e))?;
    let mut old: Vec<Option<crate::plan::PlannedTensor>> = std::mem::take(&mut plan.tensors)
        .into_iter()
        .map(Some)
        .collect();
    let mut without_weights = Vec::new();
    for c in &choices {
        let slot = old
            .iter_mut()
            .find(|t| t.as_ref().is_some_and(|t| t.name == c.name))
            .and_then(Option::take)
            .ok_or_else(|| ConvertError::Mapping {
                path: path.to_path_buf(),
                detail: format!("tensor `{}` vanished from the plan", c.name),
            })?;
        let mut t = slot;
        t.ggml_type = c.ggml_type;
        let mut has = false;
        if t.ggml_type != GgmlType::F32 {
            if let Some(w) = imatrix {
                has = w.for_tensor(&t.name, &t.dims)?.is_some();
                if !has {
                    without_weights.push(t.name.clone());
                }
            }
            check_required(path, mix, c, has)?;
        }
        plan.tensors.push(t);
    }
    plan.metadata = quantized_metadata(&plan.metadata, mix, imatrix);
    Ok(MixReport {
        choices,
        without_weights,
    })
}
