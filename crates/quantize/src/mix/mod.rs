//! Per-tensor type choice for each llama-quantize mix (REFERENCE §3): which tensors stay as they
//! are, the mix heuristics with their order-dependent counters, the fallbacks for row lengths a
//! type cannot hold, and the command-line overrides — reproducing `llama_tensor_get_type` so a
//! plan made here equals llama-quantize's for the same tensor names, shapes and architecture.
//!
//! Layout: `ftype.rs` (the mixes), `category.rs` (quantizable set, categories, processing
//! order), `rules.rs` (heuristics), `fallback.rs` (row-length fallbacks), `overrides.rs`
//! (`--tensor-type` and type names); this file ties them together in llama-quantize's decision
//! order and sizes the result.

mod category;
mod fallback;
mod ftype;
mod overrides;
mod rules;

use formats::ggml_type::GgmlType;
use formats::gguf::{GgufFile, GgufValue};
use thiserror::Error;

pub use category::{allows_quantization, parse_block, processing_order, Category};
pub use fallback::fallback;
pub use ftype::Mix;
pub use overrides::{parse_type, TensorTypeOverride};
pub use rules::use_more_bits;

/// The model facts the heuristics read (llama.cpp's `hparams` and `model.type`).
///
/// Exists because the type choice depends on more than tensor names: the layer count used for
/// FFN layer fractions, the expert count (`== 8` bumps, per-name layer parsing when > 1) and the
/// GQA ratio of attn_v.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.architecture` (`deepseek2`, `qwen2`, `llama`, …).
    pub arch: String,
    /// `<arch>.block_count` (`n_layer_all`).
    pub n_layer: u32,
    /// `<arch>.expert_count` (0 for dense models).
    pub n_expert: u32,
    /// `<arch>.attention.head_count` of layer 0.
    pub n_head: u32,
    /// `<arch>.attention.head_count_kv` of layer 0 (defaults to `n_head`).
    pub n_head_kv: u32,
}

impl ModelInfo {
    /// Reads the facts from a GGUF file's metadata the way llama.cpp's loader does (per-layer
    /// arrays: layer 0; head_count_kv defaults to head_count; expert_count defaults to 0).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, MixError> {
        let missing = |key: String| MixError::Metadata {
            key,
            detail: "is missing or not an unsigned integer".into(),
        };
        let arch = file
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| missing("general.architecture".into()))?
            .to_owned();
        let first = |key: &str| -> Option<u32> {
            match file.get(key)? {
                GgufValue::Array(a) => a.values.first().and_then(GgufValue::as_u32),
                v => v.as_u32(),
            }
        };
        let n_layer = first(&format!("{arch}.block_count"))
            .ok_or_else(|| missing(format!("{arch}.block_count")))?;
        let n_head = first(&format!("{arch}.attention.head_count")).unwrap_or(0);
        let n_head_kv = first(&format!("{arch}.attention.head_count_kv")).unwrap_or(n_head);
        let n_expert = first(&format!("{arch}.expert_count")).unwrap_or(0);
        Ok(Self {
            arch,
            n_layer,
            n_expert,
            n_head,
            n_head_kv,
        })
    }

    /// `hparams.n_gqa()`: n_head / n_head_kv, 0 when n_head_kv is 0.
    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// `model.type == LLM_TYPE_70B`: 80-layer qwen2, or 80-layer dense llama with GQA.
    pub fn is_70b(&self) -> bool {
        match self.arch.as_str() {
            "qwen2" => self.n_layer == 80,
            "llama" => self.n_layer == 80 && self.n_expert != 8 && self.n_head != self.n_head_kv,
            _ => false,
        }
    }
}

/// One tensor as the chooser sees it: name, shape and current type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorShape {
    /// GGUF tensor name.
    pub name: String,
    /// Dimensions in ggml `ne` order (row length first).
    pub dims: Vec<u64>,
    /// The type it has now (kept for tensors that are not quantized).
    pub ggml_type: GgmlType,
}

/// The llama-quantize options that change the choice.
///
/// Exists to mirror `llama_model_quantize_params` (and the CLI flags of §3.8) in one value.
#[derive(Debug, Clone, Default)]
pub struct MixOptions {
    /// An imatrix is supplied (changes Q4_0/Q5_0/IQ4 ffn_down rules).
    pub has_imatrix: bool,
    /// `--pure`: no heuristics, every quantizable tensor gets the default type (then fallback).
    pub pure: bool,
    /// `--leave-output-tensor`: `output.weight` keeps its type.
    pub leave_output_tensor: bool,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--tensor-type` rules in command-line order (first match wins).
    pub tensor_type_overrides: Vec<TensorTypeOverride>,
}

/// Why a tensor got its type (for the printed plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Not quantizable (1-D, norm, router, …): keeps its type.
    Kept,
    /// `--token-embedding-type`.
    TokenEmbeddingType,
    /// `--output-tensor-type`.
    OutputTensorType,
    /// The mix is F32/F16/BF16: its type, no heuristics.
    FloatMix,
    /// `--tensor-type` rule number `.0` (0-based, command-line order).
    Override(usize),
    /// `--pure`: the mix default.
    Pure,
    /// The mix heuristics (which may leave the default).
    Mix,
}

/// The type chosen for one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Tensor name.
    pub name: String,
    /// Dimensions (as given).
    pub dims: Vec<u64>,
    /// The type it will be written as.
    pub ggml_type: GgmlType,
    /// What decided it.
    pub reason: Reason,
    /// The type chosen before the row-length fallback replaced it, if it did.
    pub fallback_from: Option<GgmlType>,
}

/// A plan that cannot be made.
///
/// Exists so the CLI can say which tensor or option is at fault, as llama-quantize does.
#[derive(Debug, Error)]
pub enum MixError {
    /// A `--tensor-type` argument is malformed.
    #[error("bad --tensor-type '{arg}': {why}")]
    BadOverride {
        /// The argument.
        arg: String,
        /// What was wrong.
        why: String,
    },
    /// An FFN tensor of an MoE model has no `blk.N.` prefix.
    #[error("failed to determine layer for tensor {tensor}")]
    NoLayer {
        /// The tensor.
        tensor: String,
    },
    /// An FFN tensor's block number is outside `[0, n_layer)`.
    #[error("bad layer {layer} for tensor {tensor}: must be in [0, {n_layer})")]
    BadLayer {
        /// The tensor.
        tensor: String,
        /// Its block number.
        layer: i64,
        /// The layer count.
        n_layer: i64,
    },
    /// The chosen type does not fit the row length and has no fallback.
    #[error("tensor {tensor}: row length {ncols} is not a multiple of {ty}'s block size and no fallback is defined for {ty}")]
    NoFallback {
        /// The tensor.
        tensor: String,
        /// Its row length.
        ncols: u64,
        /// The type.
        ty: GgmlType,
    },
    /// Required model metadata is missing.
    #[error("metadata key '{key}' {detail}")]
    Metadata {
        /// The key.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

/// The number of dimensions as ggml counts them (`ggml_n_dims`: trailing 1s do not count).
fn n_dims(dims: &[u64]) -> usize {
    let mut n = dims.len();
    while n > 1 && dims[n - 1] == 1 {
        n -= 1;
    }
    n.max(1)
}

/// Chooses every tensor's type as llama-quantize does for `mix` (`llama_tensor_get_type` over
/// the loader's order). The result is in processing order (block number, then name), which is
/// also the order llama-quantize writes tensors in.
pub fn choose_types(
    model: &ModelInfo,
    tensors: &[TensorShape],
    mix: Mix,
    opts: &MixOptions,
) -> Result<Vec<Choice>, MixError> {
    let order = processing_order(tensors.iter().map(|t| t.name.as_str()));
    let mut st = rules::State {
        has_tied_embeddings: true,
        has_imatrix: opts.has_imatrix,
        n_ffn: i64::from(model.n_layer),
        ..Default::default()
    };
    for t in tensors {
        let cat = Category::of(&t.name);
        if cat.is_attn_v() {
            st.n_attention_wv += 1;
        }
        if cat == Category::Output {
            st.has_tied_embeddings = false;
        }
    }
    let default_type = mix.default_type();
    let mut out = Vec::with_capacity(tensors.len());
    for i in order {
        let t = &tensors[i];
        let choice = |ty, reason, fallback_from| Choice {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: ty,
            reason,
            fallback_from,
        };
        let cat = Category::of(&t.name);
        if !allows_quantization(
            &model.arch,
            &t.name,
            n_dims(&t.dims),
            opts.leave_output_tensor,
        ) {
            out.push(choice(t.ggml_type, Reason::Kept, None));
            continue;
        }
        let first_override = || {
            opts.tensor_type_overrides
                .iter()
                .position(|o| o.matches(&t.name))
        };
        if let (Some(ty), Category::TokenEmbd) = (opts.token_embedding_type, cat) {
            // per_layer_token_embd may instead be named by a --tensor-type rule.
            let named = t.name == "per_layer_token_embd.weight" && first_override().is_some();
            if !named {
                out.push(choice(ty, Reason::TokenEmbeddingType, None));
                continue;
            }
        }
        if let (Some(ty), Category::Output) = (opts.output_tensor_type, cat) {
            out.push(choice(ty, Reason::OutputTensorType, None));
            continue;
        }
        if !default_type.is_quantized() {
            out.push(choice(default_type, Reason::FloatMix, None));
            continue;
        }
        let ncols = t.dims.first().copied().unwrap_or(1);
        let (chosen, reason) = if let Some(k) = first_override() {
            (opts.tensor_type_overrides[k].ggml_type, Reason::Override(k))
        } else if opts.pure {
            (default_type, Reason::Pure)
        } else {
            let ty = rules::heuristic_type(
                &mut st,
                model,
                mix,
                opts.output_tensor_type,
                &t.name,
                ncols,
                cat,
                default_type,
            )?;
            (ty, Reason::Mix)
        };
        let ty = fallback(chosen, ncols).map_err(|ty| MixError::NoFallback {
            tensor: t.name.clone(),
            ncols,
            ty,
        })?;
        out.push(choice(ty, reason, (ty != chosen).then_some(chosen)));
    }
    Ok(out)
}

/// Whether llama-quantize refuses to produce `ty` for this tensor without an imatrix
/// (`tensor_requires_imatrix`): the IQ1/IQ2/IQ3_XXS types, and Q2_K inside a Q2_K_S mix; never
/// for token_embd or output.
pub fn requires_imatrix(name: &str, ty: GgmlType, mix: Mix) -> bool {
    if matches!(
        name,
        "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight"
    ) {
        return false;
    }
    use GgmlType as T;
    match ty {
        T::IQ3_XXS | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ1_M | T::IQ1_S => true,
        T::Q2_K => mix == Mix::Q2_K_S,
        _ => false,
    }
}

/// Size of a plan: what `--dry-run` prints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanSize {
    /// Tensor data bytes (sum of `ggml_nbytes`, as llama-quantize's "quant size"; the file adds
    /// metadata and up to 31 bytes of alignment padding per tensor).
    pub bytes: u64,
    /// Elements over all tensors.
    pub n_elements: u64,
    /// 8 · bytes / n_elements.
    pub bits_per_weight: f64,
}

/// Totals a plan. `None` if some choice's type cannot hold its row length (never the case for a
/// plan from [`choose_types`]) or on overflow.
pub fn plan_size(choices: &[Choice]) -> Option<PlanSize> {
    let mut bytes = 0u64;
    let mut n_elements = 0u64;
    for c in choices {
        bytes = bytes.checked_add(c.ggml_type.nbytes(&c.dims)?)?;
        let n = c.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        n_elements = n_elements.checked_add(n)?;
    }
    let bits_per_weight = if n_elements == 0 {
        0.0
    } else {
        8.0 * bytes as f64 / n_elements as f64
    };
    Some(PlanSize {
        bytes,
        n_elements,
        bits_per_weight,
    })
}

#[cfg(test)]
mod tests;
