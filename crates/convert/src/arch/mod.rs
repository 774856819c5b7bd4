//! Architecture mappings: a Hugging Face checkpoint (config.json + tensor headers) → a
//! [`Plan`] of GGUF tensors and metadata, following current llama.cpp's converter
//! (`convert_hf_to_gguf.py`, REFERENCE §4).
//!
//! Exists so that everything a conversion will write is decided, and every disagreement between
//! config.json and the tensors is found, before any tensor data is read: a 690 GB conversion must
//! not fail at 90 % because expert 17 of layer 40 is missing.
//!
//! Not for: reading or transforming tensor data (the pipeline executes the plan), tokenizer keys
//! (`crate::tokenizer`, called from here and appended).
//!
//! Every mapping is strict in both directions: each tensor the architecture needs must be present
//! with the shape config.json implies and a float dtype, and each checkpoint tensor must be used,
//! or deliberately skipped (MTP layers, FP8 scales, a tied `lm_head`) — an unknown tensor means
//! the checkpoint is not what we think it is, and llama.cpp would reject an extra tensor anyway.
//!
//! **Tensor order** (the same for all three families; llama.cpp accepts any order): the globals
//! `token_embd`, `output_norm`, `output` (when not tied), `rope_freqs` (llama3 only), then the
//! blocks in layer order `0..num_hidden_layers`, each block in a fixed order — attention
//! (norm, projections, output), then FFN (norm, then dense or MoE tensors). llama.cpp's Python
//! converter emits tensors in shard/alphabetical order instead; that order carries no meaning.

pub mod deepseek2;
pub mod general;
pub mod llama;
pub mod qwen2;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use formats::checkpoint::{Checkpoint, Dtype, ModelConfig, RopeScaling, TensorMeta};
use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

use crate::error::{ConvertError, Result};
use crate::plan::{Plan, PlannedTensor, SkipReason, Skipped, Source};

/// What the user chose for a conversion, beyond the checkpoint itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Type of the weight matrices (`--outtype`): F32, F16, BF16 or Q8_0. Norms, biases,
    /// routers and other 1-D tensors are F32 regardless, as in llama.cpp's converter.
    pub outtype: GgmlType,
    /// `--tokenizer-pre`: forces `tokenizer.ggml.pre` when the pre-tokenizer is not recognised.
    pub tokenizer_pre: Option<String>,
    /// `general.name` override; by default derived from the checkpoint directory's name.
    pub name: Option<String>,
}

impl Default for PlanOptions {
    /// F16, like `convert_hf_to_gguf.py`'s default `--outtype`.
    fn default() -> Self {
        PlanOptions {
            outtype: GgmlType::F16,
            tokenizer_pre: None,
            name: None,
        }
    }
}

/// Output types `convert` can write today (more arrive with the quantize work).
pub const SUPPORTED_OUTTYPES: [GgmlType; 4] =
    [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

/// Plans the conversion of `ckpt`: every output tensor, every metadata key (tokenizer keys
/// included), and every checkpoint tensor that is skipped and why. Dispatches on config.json's
/// `model_type`: `deepseek_v3`/`deepseek_v2` → `deepseek2`, `qwen2` → `qwen2`, `llama` → `llama`.
pub fn plan(ckpt: &Checkpoint, opts: &PlanOptions) -> Result<Plan> {
    let dir = checkpoint_dir(ckpt);
    let config = ckpt.config().ok_or_else(|| ConvertError::Mapping {
        path: dir.join(formats::checkpoint::CONFIG_FILE),
        detail: "not found; the architecture and its sizes come from config.json (point \
                 convert at the checkpoint directory, not at a .safetensors file)"
            .into(),
    })?;
    let mut plan = plan_from_headers(config, ckpt.tensors(), &dir, opts)?;
    let tokenizer =
        crate::tokenizer::gguf_metadata(&dir, vocab_size(config), opts.tokenizer_pre.as_deref())?;
    // Tokenizer keys go after llama.cpp's own keys and before r1q's provenance keys.
    let at = plan
        .metadata
        .iter()
        .position(|(k, _)| k.starts_with(general::R1Q_PREFIX))
        .unwrap_or(plan.metadata.len());
    plan.metadata.splice(at..at, tokenizer);
    // Sampling defaults go where gguf-py writes them: after `general.type`, before `general.name`.
    let at = plan
        .metadata
        .iter()
        .position(|(k, _)| k == "general.name")
        .unwrap_or(0);
    plan.metadata.splice(at..at, general::sampling(&dir));
    Ok(plan)
}

/// Plans from header facts alone — a parsed config and the tensor list — without reading
/// tokenizer files: everything [`plan`] produces except the `tokenizer.*` keys.
///
/// Exists so a plan can be built (and tested) for a checkpoint whose data is not on disk, e.g.
/// the real DeepSeek-R1 shapes, and so `--dry-run` can size a conversion before downloading.
pub fn plan_from_headers(
    config: &ModelConfig,
    tensors: &[TensorMeta],
    dir: &Path,
    opts: &PlanOptions,
) -> Result<Plan> {
    if !SUPPORTED_OUTTYPES.contains(&opts.outtype) {
        return Err(ConvertError::Mapping {
            path: dir.to_path_buf(),
            detail: format!(
                "output type {} is not supported by convert (use f32, f16, bf16 or q8_0)",
                opts.outtype.name()
            ),
        });
    }
    let mut ctx = Ctx::new(dir, tensors, opts.outtype);
    let arch = match config {
        ModelConfig::DeepseekV3(c) => deepseek2::map(c, &mut ctx)?,
        ModelConfig::Qwen2(c) => qwen2::map(c, &mut ctx)?,
        ModelConfig::Llama(c) => llama::map(c, &mut ctx)?,
    };
    let (tensors, skipped) = ctx.finish(arch.name, &arch.skip)?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => general::name_from_dir(dir),
    };
    let mut metadata = general::header(arch.name, &name, general::size_label(&tensors));
    metadata.extend(arch.kv);
    metadata.push(general::quantization_version());
    let mtp_tensors = skipped
        .iter()
        .filter(|s| s.reason == SkipReason::MtpLayer)
        .count();
    metadata.extend(general::provenance(dir, config.model_type(), mtp_tensors));
    Ok(Plan {
        arch: arch.name.to_string(),
        metadata,
        tensors,
        skipped,
    })
}

/// The vocabulary size config.json declares (the tokenizer pads to it).
pub fn vocab_size(config: &ModelConfig) -> usize {
    match config {
        ModelConfig::DeepseekV3(c) => c.vocab_size,
        ModelConfig::Qwen2(c) => c.vocab_size,
        ModelConfig::Llama(c) => c.vocab_size,
    }
}

/// The directory a checkpoint lives in (its path, or the parent of a single file).
fn checkpoint_dir(ckpt: &Checkpoint) -> PathBuf {
    let p = ckpt.path();
    if p.is_dir() {
        p.to_path_buf()
    } else {
        p.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// The GGUF type of one output tensor under `outtype`, by llama.cpp's `prepare_tensors` rules
/// (REFERENCE §4.3): 1-D tensors, `*_norm.weight`, routers (`ffn_gate_inp`) and anything not
/// ending `.weight` stay F32; other tensors get the outtype, except that Q8_0 falls back to F16
/// when the row length is not a multiple of 32 (the Python converter's QuantError fallback).
pub fn output_type(name: &str, dims: &[u64], outtype: GgmlType) -> GgmlType {
    if dims.len() <= 1
        || name.ends_with("_norm.weight")
        || name.contains("ffn_gate_inp")
        || !name.ends_with(".weight")
    {
        return GgmlType::F32;
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    if outtype.is_quantized() && ne0 % outtype.block_size() != 0 {
        return GgmlType::F16;
    }
    outtype
}

/// What an architecture module hands back besides the tensors it pushed into [`Ctx`].
pub(crate) struct ArchPlan {
    /// `general.architecture`.
    pub name: &'static str,
    /// Architecture keys (and `general.file_type`) in llama.cpp's converter order.
    pub kv: Vec<(String, GgufValue)>,
    /// Checkpoint tensors that are deliberately not converted.
    pub skip: SkipRule,
}

/// Which unused checkpoint tensors are skipped rather than rejected.
#[derive(Debug, Clone, Default)]
pub(crate) struct SkipRule {
    /// `model.layers.K.*` with K ≥ this are MTP layers (DeepSeek).
    pub mtp_from_layer: Option<usize>,
    /// `tie_word_embeddings`: `lm_head.weight` may be present and is skipped.
    pub tied_lm_head: bool,
}

impl SkipRule {
    fn reason(&self, name: &str, used: &HashSet<String>) -> Option<SkipReason> {
        if let Some(first) = self.mtp_from_layer {
            if layer_index(name).is_some_and(|k| k >= first) {
                return Some(SkipReason::MtpLayer);
            }
        }
        if self.tied_lm_head && name == "lm_head.weight" {
            return Some(SkipReason::TiedEmbedding);
        }
        if let Some(weight) = name.strip_suffix("_scale_inv") {
            if used.contains(weight) {
                return Some(SkipReason::Fp8Scale);
            }
        }
        None
    }
}

/// `K` of a `model.layers.K.…` name.
fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}

/// The float dtypes a mapped tensor may be stored in.
const FLOAT_DTYPES: [Dtype; 4] = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F8E4M3];

/// The mapping in progress: checks each needed checkpoint tensor against the shape config.json
/// implies, records it as used, and collects output tensors with their types.
pub(crate) struct Ctx<'a> {
    dir: &'a Path,
    metas: &'a [TensorMeta],
    outtype: GgmlType,
    used: HashSet<String>,
    out_names: HashSet<String>,
    tensors: Vec<PlannedTensor>,
}

impl<'a> Ctx<'a> {
    fn new(dir: &'a Path, metas: &'a [TensorMeta], outtype: GgmlType) -> Self {
        Ctx {
            dir,
            metas,
            outtype,
            used: HashSet::new(),
            out_names: HashSet::new(),
            tensors: Vec::new(),
        }
    }

    /// The outtype, for `general.file_type`.
    pub fn outtype(&self) -> GgmlType {
        self.outtype
    }

    /// A Mapping error about the checkpoint as a whole (or config.json).
    pub fn error(&self, detail: String) -> ConvertError {
        ConvertError::Mapping {
            path: self.dir.to_path_buf(),
            detail,
        }
    }

    fn meta(&self, name: &str) -> Option<&'a TensorMeta> {
        // `tensors()` is sorted by name; a linear scan would also do but this is O(log n).
        let metas = self.metas;
        match metas.binary_search_by(|m| m.name.as_str().cmp(name)) {
            Ok(i) => metas.get(i),
            Err(_) => metas.iter().find(|m| m.name == name),
        }
    }

    /// Checks that `hf` exists with `shape` (PyTorch order, from config.json) and a float dtype,
    /// and marks it used.
    pub fn require(&mut self, hf: &str, shape: &[usize]) -> Result<()> {
        let Some(m) = self.meta(hf) else {
            return Err(self.error(format!(
                "tensor `{hf}` is missing from the checkpoint; config.json implies it with shape \
                 {shape:?}"
            )));
        };
        if m.shape != shape {
            return Err(ConvertError::Mapping {
                path: m.file.clone(),
                detail: format!(
                    "tensor `{hf}` has shape {:?}, expected {shape:?} from config.json",
                    m.shape
                ),
            });
        }
        if !FLOAT_DTYPES.contains(&m.dtype) {
            return Err(ConvertError::Mapping {
                path: m.file.clone(),
                detail: format!(
                    "tensor `{hf}` has dtype {}, expected a float type (F32, F16, BF16 or \
                     F8_E4M3)",
                    m.dtype.name()
                ),
            });
        }
        self.used.insert(hf.to_string());
        Ok(())
    }

    /// Appends an output tensor, choosing its type by [`output_type`].
    fn push(&mut self, name: String, dims: Vec<u64>, source: Source) -> Result<()> {
        if !self.out_names.insert(name.clone()) {
            return Err(self.error(format!("output tensor `{name}` would be written twice")));
        }
        let ggml_type = output_type(&name, &dims, self.outtype);
        self.tensors.push(PlannedTensor {
            name,
            dims,
            ggml_type,
            source,
        });
        Ok(())
    }

    /// `hf` as is: shape [out, in] → ne {in, out} (or 1-D).
    pub fn tensor(&mut self, gguf: String, hf: &str, shape: &[usize]) -> Result<()> {
        self.require(hf, shape)?;
        let source = Source::Tensor {
            name: hf.to_string(),
        };
        self.push(gguf, ne(shape), source)
    }

    /// `hf` [out, in] with rows permuted for llama.cpp's rope layout (`n_head` heads).
    pub fn permuted(
        &mut self,
        gguf: String,
        hf: &str,
        shape: &[usize],
        n_head: usize,
    ) -> Result<()> {
        self.require(hf, shape)?;
        let source = Source::PermuteRope {
            name: hf.to_string(),
            n_head: n_head as u64,
        };
        self.push(gguf, ne(shape), source)
    }

    /// Tensors `names`, each [out, in], stacked → ne {in, out, n}.
    pub fn stack(&mut self, gguf: String, names: Vec<String>, shape: [usize; 2]) -> Result<()> {
        for n in &names {
            self.require(n, &shape)?;
        }
        let dims = vec![shape[1] as u64, shape[0] as u64, names.len() as u64];
        self.push(gguf, dims, Source::Stack { names })
    }

    /// An output tensor whose source has been checked by the caller (kv_b halves).
    pub fn derived(&mut self, gguf: String, dims: Vec<u64>, source: Source) -> Result<()> {
        self.push(gguf, dims, source)
    }

    /// A tensor computed by the converter itself (1-D f32 values).
    pub fn values(&mut self, gguf: String, values: Vec<f32>) -> Result<()> {
        let dims = vec![values.len() as u64];
        self.push(gguf, dims, Source::Values(values))
    }

    /// Classifies every checkpoint tensor not used by the mapping: skipped (with a reason) or an
    /// error naming it.
    fn finish(self, arch: &str, skip: &SkipRule) -> Result<(Vec<PlannedTensor>, Vec<Skipped>)> {
        let mut skipped = Vec::new();
        let mut unexpected = Vec::new();
        for m in self.metas {
            if self.used.contains(&m.name) {
                continue;
            }
            match skip.reason(&m.name, &self.used) {
                Some(reason) => skipped.push(Skipped {
                    name: m.name.clone(),
                    reason,
                }),
                None => unexpected.push(m),
            }
        }
        if let Some(first) = unexpected.first() {
            let more = match unexpected.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(ConvertError::Mapping {
                path: first.file.clone(),
                detail: format!(
                    "unexpected tensor `{}`{more}: not part of the {arch} mapping for this \
                     config.json (llama.cpp rejects extra tensors)",
                    first.name
                ),
            });
        }
        Ok((self.tensors, skipped))
    }
}

/// ggml `ne` of a PyTorch shape: reversed.
fn ne(shape: &[usize]) -> Vec<u64> {
    shape.iter().rev().map(|&d| d as u64).collect()
}

/// Metadata keys in write order, with the typed values llama.cpp's loader checks strictly.
pub(crate) struct Kv<'a> {
    arch: &'static str,
    dir: &'a Path,
    /// The keys so far.
    pub out: Vec<(String, GgufValue)>,
}

impl<'a> Kv<'a> {
    pub fn new(arch: &'static str, dir: &'a Path) -> Self {
        Kv {
            arch,
            dir,
            out: Vec::new(),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// `{arch}.{suffix}` as UINT32; a value that does not fit is a config error.
    pub fn u32(&mut self, suffix: &str, v: usize) -> Result<()> {
        let key = self.key(suffix);
        let v = u32::try_from(v).map_err(|_| ConvertError::Mapping {
            path: self.dir.join(formats::checkpoint::CONFIG_FILE),
            detail: format!("value {v} for `{key}` does not fit in a GGUF u32"),
        })?;
        self.out.push((key, GgufValue::U32(v)));
        Ok(())
    }

    /// `{arch}.{suffix}` as FLOAT32.
    pub fn f32(&mut self, suffix: &str, v: f64) {
        self.out.push((self.key(suffix), GgufValue::F32(v as f32)));
    }

    /// `{arch}.{suffix}` as BOOL.
    pub fn bool(&mut self, suffix: &str, v: bool) {
        self.out.push((self.key(suffix), GgufValue::Bool(v)));
    }

    /// `{arch}.{suffix}` as STRING.
    pub fn string(&mut self, suffix: &str, v: &str) {
        self.out
            .push((self.key(suffix), GgufValue::String(v.to_string())));
    }

    /// A full key (e.g. `general.file_type`).
    pub fn raw(&mut self, kv: (String, GgufValue)) {
        self.out.push(kv);
    }
}

/// The hyper-parameters `TextModel.set_gguf_parameters` writes for every family.
pub(crate) struct TextParams<'a> {
    pub block_count: usize,
    pub context_length: usize,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub rope_scaling: Option<&'a RopeScaling>,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// (expert_count, expert_used_count, group_count, group_used_count, gating_func).
    pub experts: Option<(usize, usize, usize, usize, usize)>,
    /// `head_dim` when config.json states it (→ key_length / value_length).
    pub head_dim: Option<usize>,
}

/// Writes `TextModel.set_gguf_parameters`' keys in its order, ending with `general.file_type`.
pub(crate) fn text_model_kv(kv: &mut Kv<'_>, p: &TextParams<'_>, outtype: GgmlType) -> Result<()> {
    kv.u32("block_count", p.block_count)?;
    kv.u32("context_length", p.context_length)?;
    kv.u32("embedding_length", p.embedding_length)?;
    kv.u32("feed_forward_length", p.feed_forward_length)?;
    kv.u32("attention.head_count", p.head_count)?;
    kv.u32("attention.head_count_kv", p.head_count_kv)?;
    match p.rope_scaling {
        Some(RopeScaling::Yarn(y)) => {
            kv.string("rope.scaling.type", "yarn");
            kv.f32("rope.scaling.factor", y.factor);
            if let Some(n) = y.original_max_position_embeddings {
                kv.u32("rope.scaling.original_context_length", n)?;
            }
            if let Some(b) = y.beta_fast {
                kv.f32("rope.scaling.yarn_beta_fast", b);
            }
            if let Some(b) = y.beta_slow {
                kv.f32("rope.scaling.yarn_beta_slow", b);
            }
        }
        Some(RopeScaling::Linear { factor }) => {
            kv.string("rope.scaling.type", "linear");
            kv.f32("rope.scaling.factor", *factor);
        }
        // Dynamic: handled per model class in llama.cpp (none of ours); llama3: rope_freqs.
        Some(RopeScaling::Dynamic { .. }) | Some(RopeScaling::Llama3(_)) | None => {}
    }
    kv.f32("rope.freq_base", p.rope_theta);
    kv.f32("attention.layer_norm_rms_epsilon", p.rms_norm_eps);
    if let Some((count, used, groups, groups_used, gating)) = p.experts {
        kv.u32("expert_count", count)?;
        kv.u32("expert_used_count", used)?;
        kv.u32("expert_group_count", groups)?;
        kv.u32("expert_group_used_count", groups_used)?;
        kv.u32("expert_gating_func", gating)?;
    }
    if let Some(d) = p.head_dim {
        kv.u32("attention.key_length", d)?;
        kv.u32("attention.value_length", d)?;
    }
    kv.raw(general::file_type(outtype));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_types_follow_prepare_tensors() {
        use GgmlType::*;
        let cases: [(&str, &[u64], GgmlType, GgmlType); 9] = [
            ("blk.0.attn_norm.weight", &[256], BF16, F32),
            ("blk.0.attn_q.bias", &[256], Q8_0, F32),
            ("blk.0.attn_q_a_norm.weight", &[192], F16, F32),
            ("blk.1.ffn_gate_inp.weight", &[256, 8], Q8_0, F32),
            ("blk.1.exp_probs_b.bias", &[8], BF16, F32),
            ("blk.0.ffn_down.weight", &[352, 256], Q8_0, Q8_0),
            ("blk.0.ffn_down.weight", &[100, 256], Q8_0, F16),
            ("blk.0.ffn_down.weight", &[100, 256], BF16, BF16),
            ("blk.1.ffn_up_exps.weight", &[256, 64, 8], F32, F32),
        ];
        for (name, dims, outtype, want) in cases {
            assert_eq!(output_type(name, dims, outtype), want, "{name} {dims:?}");
        }
    }
}
