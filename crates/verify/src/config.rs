//! The model hyper-parameters as llama.cpp loads them from GGUF metadata (REFERENCE §4.4, §4.7,
//! §4.8, §5.1), validated once so every block can trust them.

use formats::gguf::GgufValue;

use crate::error::{Result, VerifyError};
use crate::ops::RopeMode;
use crate::source::WeightSource;

/// The architectures with a forward pass here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// R1-Distill-Llama (and llama generally).
    Llama,
    /// R1-Distill-Qwen.
    Qwen2,
    /// DeepSeek-V3/R1.
    Deepseek2,
}

impl Arch {
    /// The `general.architecture` string.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Deepseek2 => "deepseek2",
        }
    }
}

/// `rope.scaling.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeScalingType {
    /// No key, or `none`.
    None,
    /// `linear`: θ·freq_scale.
    Linear,
    /// `yarn`.
    Yarn,
}

/// Rope scaling keys as stored (`<arch>.rope.scaling.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// `rope.scaling.type` (absent ⇒ None).
    pub kind: RopeScalingType,
    /// `rope.scaling.factor` (1 when absent).
    pub factor: f32,
    /// `rope.scaling.original_context_length` (default: `context_length`).
    pub n_ctx_orig: u32,
    /// `rope.scaling.yarn_beta_fast` if present.
    pub yarn_beta_fast: Option<f32>,
    /// `rope.scaling.yarn_beta_slow` if present.
    pub yarn_beta_slow: Option<f32>,
    /// `rope.scaling.yarn_log_multiplier` **as stored** (0.1 × mscale_all_dim), 0 when absent.
    pub yarn_log_multiplier: f32,
    /// `rope.scaling.attn_factor` (default 1).
    pub attn_factor: f32,
}

/// The `deepseek2.*` keys of REFERENCE §4.4 as stored (derivations such as YaRN's scales are the
/// deepseek2 module's job).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deepseek2Params {
    /// `leading_dense_block_count`: layers below this use the dense FFN.
    pub n_layer_dense_lead: usize,
    /// `expert_count`.
    pub n_expert: usize,
    /// `expert_used_count`.
    pub n_expert_used: usize,
    /// `expert_group_count` (default 0 = no group limit).
    pub n_expert_groups: usize,
    /// `expert_group_used_count` (default 0).
    pub n_group_used: usize,
    /// `expert_gating_func` (absent ⇒ `None`, which llama.cpp treats as softmax).
    pub expert_gating_func: Option<u32>,
    /// `expert_feed_forward_length`.
    pub n_ff_exp: usize,
    /// `expert_shared_count` (default 0).
    pub n_expert_shared: usize,
    /// `expert_weights_scale` (default 0 = no scaling).
    pub expert_weights_scale: f32,
    /// `expert_weights_norm` (default false).
    pub expert_weights_norm: bool,
    /// `attention.q_lora_rank` (absent for "lite" models: single `attn_q`).
    pub q_lora_rank: Option<usize>,
    /// `attention.kv_lora_rank`.
    pub kv_lora_rank: usize,
    /// `attention.key_length` (576 = kv_lora_rank + rope dims).
    pub key_length: usize,
    /// `attention.value_length` (512 = kv_lora_rank).
    pub value_length: usize,
    /// `attention.key_length_mla` (192); present ⇒ absorbed MLA with `attn_k_b`/`attn_v_b`.
    pub key_length_mla: Option<usize>,
    /// `attention.value_length_mla` (128).
    pub value_length_mla: Option<usize>,
    /// `vocab_size` if present.
    pub vocab_size: Option<usize>,
}

/// Every hyper-parameter a forward pass needs, read from metadata once.
///
/// Exists so blocks never parse metadata themselves and so tensor shapes can be validated
/// against one source of truth at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Arch,
    /// `<arch>.block_count`.
    pub n_layer: usize,
    /// `<arch>.embedding_length`.
    pub n_embd: usize,
    /// `<arch>.attention.head_count`.
    pub n_head: usize,
    /// `<arch>.attention.head_count_kv` (default `n_head`).
    pub n_head_kv: usize,
    /// `<arch>.attention.key_length` (default n_embd / n_head).
    pub head_dim_k: usize,
    /// `<arch>.attention.value_length` (default n_embd / n_head).
    pub head_dim_v: usize,
    /// `<arch>.feed_forward_length` (dense FFN width; deepseek2's leading dense layers).
    pub n_ff: usize,
    /// `<arch>.attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
    /// `<arch>.context_length` (default 0 when absent).
    pub n_ctx_train: u32,
    /// Pair convention of the architecture (llama/deepseek2 NORM, qwen2 NEOX).
    pub rope_mode: RopeMode,
    /// `<arch>.rope.freq_base` (default 10000).
    pub rope_freq_base: f32,
    /// `<arch>.rope.dimension_count` (default head_dim_k).
    pub n_rot: usize,
    /// Rope scaling keys.
    pub rope_scaling: RopeScaling,
    /// Per-pair divisors from the `rope_freqs.weight` tensor (llama3), n_rot/2 values.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Vocabulary size: `tokenizer.ggml.tokens` length, else `<arch>.vocab_size`, else the rows
    /// of `token_embd.weight`.
    pub n_vocab: usize,
    /// The deepseek2 keys (only for [`Arch::Deepseek2`]).
    pub deepseek2: Option<Deepseek2Params>,
}

/// Typed metadata access that turns absence and wrong types into [`VerifyError`]s naming the key.
struct Meta<'a> {
    source: &'a dyn WeightSource,
    prefix: &'static str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }
    fn bad(&self, key: &str, problem: String) -> VerifyError {
        VerifyError::BadKey {
            origin: self.source.description(),
            key: key.to_string(),
            problem,
        }
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        let key = self.key(k);
        match self.source.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.bad(
                        &key,
                        format!("expected an unsigned integer, found {}", show(v)),
                    )
                }),
        }
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?.ok_or_else(|| VerifyError::MissingKey {
            origin: self.source.description(),
            key: self.key(k),
        })
    }
    fn positive(&self, k: &str) -> Result<usize> {
        let v = self.usize(k)?;
        if v == 0 {
            return Err(self.bad(&self.key(k), "must be positive, found 0".into()));
        }
        Ok(v)
    }
    fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        let key = self.key(k);
        match self.source.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.bad(&key, format!("expected a float, found {}", show(v)))),
        }
    }
    fn opt_bool(&self, k: &str) -> Result<Option<bool>> {
        let key = self.key(k);
        match self.source.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(&key, format!("expected a bool, found {}", show(v)))),
        }
    }
    fn opt_str(&self, k: &str) -> Result<Option<&str>> {
        let key = self.key(k);
        match self.source.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(&key, format!("expected a string, found {}", show(v)))),
        }
    }
}

/// A short description of a metadata value for error messages.
fn show(v: &GgufValue) -> String {
    match v {
        GgufValue::String(s) => format!("string {s:?}"),
        GgufValue::Array(a) => format!("array of {} {}", a.len(), a.elem_type.name()),
        other => format!("{} {other:?}", other.value_type().name()),
    }
}

impl ModelConfig {
    /// Reads and validates the hyper-parameters of `source`'s model. Fails with
    /// [`VerifyError::UnsupportedArch`] for architectures without a forward pass here.
    pub fn from_metadata(source: &dyn WeightSource) -> Result<ModelConfig> {
        let origin = source.description();
        let arch_name = source
            .get("general.architecture")
            .ok_or_else(|| VerifyError::MissingKey {
                origin: origin.clone(),
                key: "general.architecture".into(),
            })?
            .as_str()
            .ok_or_else(|| VerifyError::BadKey {
                origin: origin.clone(),
                key: "general.architecture".into(),
                problem: "expected a string".into(),
            })?;
        let (arch, prefix, rope_mode) = match arch_name {
            "llama" => (Arch::Llama, "llama", RopeMode::Norm),
            "qwen2" => (Arch::Qwen2, "qwen2", RopeMode::Neox),
            "deepseek2" => (Arch::Deepseek2, "deepseek2", RopeMode::Norm),
            other => {
                return Err(VerifyError::UnsupportedArch {
                    origin,
                    arch: other.to_string(),
                    detail: " (supported: llama, qwen2, deepseek2)".into(),
                })
            }
        };
        let m = Meta { source, prefix };
        let n_layer = m.positive("block_count")?;
        let n_embd = m.positive("embedding_length")?;
        let n_head = m.positive("attention.head_count")?;
        let n_head_kv = m.opt_usize("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(m.bad(
                &m.key("attention.head_count_kv"),
                format!("{n_head_kv} does not divide head_count {n_head}"),
            ));
        }
        let default_hd = n_embd / n_head;
        let head_dim_k = m.opt_usize("attention.key_length")?.unwrap_or(default_hd);
        let head_dim_v = m.opt_usize("attention.value_length")?.unwrap_or(default_hd);
        let n_ff = m.usize("feed_forward_length")?;
        let rms_eps = m
            .opt_f32("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| VerifyError::MissingKey {
                origin: origin.clone(),
                key: m.key("attention.layer_norm_rms_epsilon"),
            })?;
        let n_ctx_train = m.opt_usize("context_length")?.unwrap_or(0) as u32;
        let rope_freq_base = m.opt_f32("rope.freq_base")?.unwrap_or(10000.0);
        let n_rot = m.opt_usize("rope.dimension_count")?.unwrap_or(head_dim_k);
        if n_rot % 2 != 0 || n_rot > head_dim_k {
            return Err(m.bad(
                &m.key("rope.dimension_count"),
                format!("{n_rot} must be even and at most the head width {head_dim_k}"),
            ));
        }
        let kind = match m.opt_str("rope.scaling.type")? {
            None | Some("none") => RopeScalingType::None,
            Some("linear") => RopeScalingType::Linear,
            Some("yarn") => RopeScalingType::Yarn,
            Some(other) => {
                return Err(m.bad(
                    &m.key("rope.scaling.type"),
                    format!("unsupported rope scaling {other:?} (expected none, linear or yarn)"),
                ))
            }
        };
        let rope_scaling = RopeScaling {
            kind,
            factor: m.opt_f32("rope.scaling.factor")?.unwrap_or(1.0),
            n_ctx_orig: m
                .opt_usize("rope.scaling.original_context_length")?
                .map_or(n_ctx_train, |v| v as u32),
            yarn_beta_fast: m.opt_f32("rope.scaling.yarn_beta_fast")?,
            yarn_beta_slow: m.opt_f32("rope.scaling.yarn_beta_slow")?,
            yarn_log_multiplier: m
                .opt_f32("rope.scaling.yarn_log_multiplier")?
                .unwrap_or(0.0),
            attn_factor: m.opt_f32("rope.scaling.attn_factor")?.unwrap_or(1.0),
        };
        let rope_freq_factors = match source.tensor_dims("rope_freqs.weight") {
            None => None,
            Some(dims) => {
                let want = vec![(n_rot / 2) as u64];
                if dims != want {
                    return Err(VerifyError::TensorShape {
                        origin,
                        tensor: "rope_freqs.weight".into(),
                        expected: want,
                        found: dims,
                    });
                }
                Some(source.load_f32("rope_freqs.weight")?)
            }
        };
        let vocab_key = m.opt_usize("vocab_size")?;
        let n_vocab = match source
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
        {
            Some(a) => a.len(),
            None => match vocab_key {
                Some(v) => v,
                None => source
                    .tensor_dims("token_embd.weight")
                    .and_then(|d| d.get(1).copied())
                    .map(|v| v as usize)
                    .ok_or_else(|| VerifyError::MissingKey {
                        origin: source.description(),
                        key: "tokenizer.ggml.tokens".into(),
                    })?,
            },
        };
        let deepseek2 = if arch == Arch::Deepseek2 {
            Some(Deepseek2Params {
                n_layer_dense_lead: m.usize("leading_dense_block_count")?,
                n_expert: m.usize("expert_count")?,
                n_expert_used: m.usize("expert_used_count")?,
                n_expert_groups: m.opt_usize("expert_group_count")?.unwrap_or(0),
                n_group_used: m.opt_usize("expert_group_used_count")?.unwrap_or(0),
                expert_gating_func: m.opt_usize("expert_gating_func")?.map(|v| v as u32),
                n_ff_exp: m.usize("expert_feed_forward_length")?,
                n_expert_shared: m.opt_usize("expert_shared_count")?.unwrap_or(0),
                expert_weights_scale: m.opt_f32("expert_weights_scale")?.unwrap_or(0.0),
                expert_weights_norm: m.opt_bool("expert_weights_norm")?.unwrap_or(false),
                q_lora_rank: m.opt_usize("attention.q_lora_rank")?,
                kv_lora_rank: m.usize("attention.kv_lora_rank")?,
                key_length: head_dim_k,
                value_length: head_dim_v,
                key_length_mla: m.opt_usize("attention.key_length_mla")?,
                value_length_mla: m.opt_usize("attention.value_length_mla")?,
                vocab_size: vocab_key,
            })
        } else {
            None
        };
        Ok(ModelConfig {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_ff,
            rms_eps,
            n_ctx_train,
            rope_mode,
            rope_freq_base,
            n_rot,
            rope_scaling,
            rope_freq_factors,
            n_vocab,
            deepseek2,
        })
    }

    /// The [`crate::ops::RopeParams`] llama.cpp uses for llama/qwen2 with these keys: ext_factor 1
    /// only for YaRN, freq_scale = 1/factor for linear and YaRN, beta_fast/slow defaults 32/1,
    /// the `rope_freqs` factors when present. (deepseek2 derives its own, see its yarn module.)
    pub fn rope_params(&self) -> crate::ops::RopeParams {
        let s = &self.rope_scaling;
        let freq_scale = match s.kind {
            RopeScalingType::None => 1.0,
            _ if s.factor > 0.0 => 1.0 / s.factor,
            _ => 1.0,
        };
        let ext_factor = if s.kind == RopeScalingType::Yarn {
            1.0
        } else {
            0.0
        };
        crate::ops::RopeParams {
            mode: self.rope_mode,
            n_rot: self.n_rot,
            freq_base: self.rope_freq_base,
            freq_scale,
            ext_factor,
            attn_factor: s.attn_factor,
            corr_dims: crate::ops::yarn_corr_dims(
                self.n_rot,
                s.n_ctx_orig as usize,
                self.rope_freq_base,
                s.yarn_beta_fast.unwrap_or(32.0),
                s.yarn_beta_slow.unwrap_or(1.0),
            ),
            freq_factors: self.rope_freq_factors.clone(),
        }
    }
}
