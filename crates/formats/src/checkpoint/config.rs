//! `config.json` of a Hugging Face checkpoint → a typed config per architecture.
//!
//! Exists so the converter and the forward pass read hyper-parameters from one validated place:
//! a missing required field, a field of the wrong JSON type, or values that contradict each other
//! fail here with the file and the field named, not deep inside a conversion. Unknown fields are
//! ignored (releases carry many that r1q doesn't need).
//!
//! Structural sizes (hidden size, layer and head counts, ranks, expert counts) are required: a
//! default would silently build the wrong model. Knobs with a well-known default in transformers
//! or llama.cpp's converter (rms_norm_eps, rope_theta, n_shared_experts, …) take that default.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::{CheckpointError, Result};

/// A parsed `config.json`, one variant per family r1q converts, chosen by `model_type`.
// One config per checkpoint: boxing the big variant would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `model_type` "deepseek_v3" (DeepSeek-V3/R1) or "deepseek_v2" (V2, V2-Lite).
    DeepseekV3(DeepseekV3Config),
    /// `model_type` "qwen2" (R1-Distill-Qwen).
    Qwen2(Qwen2Config),
    /// `model_type` "llama" (R1-Distill-Llama).
    Llama(LlamaConfig),
}

/// Hyper-parameters of DeepSeek-V3/R1 (and V2), every field of the R1 release `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekV3Config {
    /// "deepseek_v3" or "deepseek_v2": the defaults of absent routing fields differ.
    pub model_type: String,
    /// Vocabulary size (129280 for R1).
    pub vocab_size: usize,
    /// Model width (7168).
    pub hidden_size: usize,
    /// Dense MLP width of the first `first_k_dense_replace` layers (18432).
    pub intermediate_size: usize,
    /// Width of each routed/shared expert (2048).
    pub moe_intermediate_size: usize,
    /// Transformer blocks, MTP layers excluded (61).
    pub num_hidden_layers: usize,
    /// Multi-token-prediction layers stored after the main ones (1); default 0.
    pub num_nextn_predict_layers: usize,
    /// Attention heads (128).
    pub num_attention_heads: usize,
    /// KV heads as written in the config (128; the GGUF forces 1); default = heads.
    pub num_key_value_heads: usize,
    /// Shared experts per MoE layer (1); default 0.
    pub n_shared_experts: usize,
    /// Routed experts per MoE layer (256).
    pub n_routed_experts: usize,
    /// Multiplier of the routed experts' output (2.5); default 1.0.
    pub routed_scaling_factor: f64,
    /// Rank of the compressed KV (512).
    pub kv_lora_rank: usize,
    /// Rank of the compressed Q (1536); `None` when null (V2-Lite has no Q compression).
    pub q_lora_rank: Option<usize>,
    /// Rotary part of each head's query/key (64).
    pub qk_rope_head_dim: usize,
    /// Value head dimension (128).
    pub v_head_dim: usize,
    /// Non-rotary part of each head's query/key (128).
    pub qk_nope_head_dim: usize,
    /// Expert selection method ("noaux_tc" for V3/R1, "greedy"/"group_limited_greedy" for V2).
    pub topk_method: String,
    /// Expert groups (8); default 1 (no grouping) when absent or null.
    pub n_group: usize,
    /// Groups kept per token (4); default 1 when absent or null.
    pub topk_group: usize,
    /// Experts per token (8).
    pub num_experts_per_tok: usize,
    /// Every how many layers an MoE layer appears (1).
    pub moe_layer_freq: usize,
    /// Leading dense layers (3).
    pub first_k_dense_replace: usize,
    /// Whether the top-k routing weights are renormalised (true for R1).
    pub norm_topk_prob: bool,
    /// Router scoring: sigmoid (V3/R1) or softmax (V2).
    pub scoring_func: ScoringFunc,
    /// MLP activation ("silu").
    pub hidden_act: String,
    /// Context length (163840).
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon (1e-6).
    pub rms_norm_eps: f64,
    /// RoPE base (10000).
    pub rope_theta: f64,
    /// YaRN parameters (R1: factor 40 over 4096).
    pub rope_scaling: Option<RopeScaling>,
    /// Whether `lm_head` shares `embed_tokens` (false).
    pub tie_word_embeddings: bool,
    /// BOS token id (0).
    pub bos_token_id: Option<u32>,
    /// EOS token id(s) (1); empty when absent.
    pub eos_token_id: Vec<u32>,
    /// Stored dtype as declared ("bfloat16" even for the FP8 release).
    pub torch_dtype: Option<String>,
    /// FP8 block quantization of the weights (R1: e4m3, 128×128 blocks).
    pub quantization_config: Option<QuantizationConfig>,
}

/// Router scoring function of a DeepSeek MoE layer (llama.cpp `expert_gating_func`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringFunc {
    /// Softmax over the experts (V2).
    Softmax,
    /// Independent sigmoid per expert (V3/R1).
    Sigmoid,
}

/// `quantization_config` of an FP8 checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationConfig {
    /// "fp8" (the only method r1q reads).
    pub quant_method: String,
    /// "e4m3".
    pub fmt: Option<String>,
    /// "dynamic" (activations are not pre-scaled; irrelevant for conversion).
    pub activation_scheme: Option<String>,
    /// Block size [rows, cols] of `weight_scale_inv`; [128, 128] when absent.
    pub weight_block_size: [usize; 2],
}

/// The block size DeepSeek uses when `weight_block_size` is absent.
pub const DEFAULT_FP8_BLOCK: [usize; 2] = [128, 128];

/// `rope_scaling` variants r1q understands.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// YaRN (DeepSeek-V3/R1, long-context Qwen2).
    Yarn(YarnScaling),
    /// Llama 3.1 frequency-dependent scaling (R1-Distill-Llama).
    Llama3(Llama3Scaling),
    /// Linear position interpolation.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Dynamic NTK scaling.
    Dynamic {
        /// Scale factor.
        factor: f64,
    },
}

/// YaRN parameters (`type`/`rope_type` "yarn").
#[derive(Debug, Clone, PartialEq)]
pub struct YarnScaling {
    /// Context extension factor (40).
    pub factor: f64,
    /// Pre-extension context (4096).
    pub original_max_position_embeddings: Option<usize>,
    /// β_fast (32).
    pub beta_fast: Option<f64>,
    /// β_slow (1).
    pub beta_slow: Option<f64>,
    /// mscale (1.0).
    pub mscale: Option<f64>,
    /// mscale_all_dim (1.0; GGUF stores 0.1× it as yarn_log_multiplier).
    pub mscale_all_dim: Option<f64>,
}

/// Llama 3 rope scaling (`rope_type` "llama3"); drives the `rope_freqs.weight` tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3Scaling {
    /// Scale factor (8).
    pub factor: f64,
    /// Low-frequency factor (1).
    pub low_freq_factor: f64,
    /// High-frequency factor (4).
    pub high_freq_factor: f64,
    /// Pre-extension context (8192).
    pub original_max_position_embeddings: usize,
}

/// Hyper-parameters of R1-Distill-Qwen (`qwen2`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// KV heads (GQA); default = heads.
    pub num_key_value_heads: usize,
    /// Per-head dimension when stated (llama.cpp's converter then writes `key_length` /
    /// `value_length`); otherwise hidden / heads (see [`Qwen2Config::head_dim`]).
    pub head_dim: Option<usize>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon; default 1e-6.
    pub rms_norm_eps: f64,
    /// RoPE base; default 10000.
    pub rope_theta: f64,
    /// Whether `lm_head` shares `embed_tokens`; default false.
    pub tie_word_embeddings: bool,
    /// Sliding-window size (unused unless `use_sliding_window`).
    pub sliding_window: Option<usize>,
    /// Whether sliding-window attention is on; default false.
    pub use_sliding_window: bool,
    /// Layers below this use full attention when sliding windows are on.
    pub max_window_layers: Option<usize>,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// EOS token id(s); empty when absent.
    pub eos_token_id: Vec<u32>,
    /// Stored dtype as declared ("bfloat16").
    pub torch_dtype: Option<String>,
    /// Optional rope scaling.
    pub rope_scaling: Option<RopeScaling>,
}

/// Hyper-parameters of R1-Distill-Llama (`llama`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// KV heads (GQA); default = heads.
    pub num_key_value_heads: usize,
    /// Per-head dimension when stated; otherwise hidden / heads (see [`LlamaConfig::head_dim`]).
    pub head_dim: Option<usize>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon; default 1e-6.
    pub rms_norm_eps: f64,
    /// RoPE base; default 10000.
    pub rope_theta: f64,
    /// Whether q/k/v/o carry biases; default false.
    pub attention_bias: bool,
    /// Whether the MLP carries biases; default false.
    pub mlp_bias: bool,
    /// Whether `lm_head` shares `embed_tokens`; default false.
    pub tie_word_embeddings: bool,
    /// MLP activation ("silu").
    pub hidden_act: String,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// EOS token id(s); empty when absent.
    pub eos_token_id: Vec<u32>,
    /// Stored dtype as declared ("bfloat16").
    pub torch_dtype: Option<String>,
    /// Llama 3 scaling for R1-Distill-Llama.
    pub rope_scaling: Option<RopeScaling>,
}

impl LlamaConfig {
    /// The per-head dimension: `head_dim` when stated, else hidden_size / num_attention_heads.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

impl Qwen2Config {
    /// The per-head dimension: `head_dim` when stated, else hidden_size / num_attention_heads
    /// (as transformers' Qwen2 attention takes it).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

impl DeepseekV3Config {
    /// FP8 block size of `weight_scale_inv`: the config's, or [128, 128].
    pub fn fp8_block(&self) -> [usize; 2] {
        self.quantization_config
            .as_ref()
            .map_or(DEFAULT_FP8_BLOCK, |q| q.weight_block_size)
    }
}

impl ModelConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ModelConfig::from_json_str(&text, path)
    }

    /// Parses and validates JSON text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text).map_err(|e| CheckpointError::ConfigJson {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(CheckpointError::ConfigJson {
                path: path.to_path_buf(),
                detail: "top level is not an object".into(),
            });
        };
        let f = Fields {
            map: &map,
            path,
            prefix: "",
        };
        let model_type: String = f.req("model_type")?;
        let config = match model_type.as_str() {
            "deepseek_v3" | "deepseek_v2" => {
                ModelConfig::DeepseekV3(parse_deepseek(&f, model_type)?)
            }
            "qwen2" => ModelConfig::Qwen2(parse_qwen2(&f)?),
            "llama" => ModelConfig::Llama(parse_llama(&f)?),
            _ => {
                return Err(CheckpointError::UnknownModelType {
                    path: path.to_path_buf(),
                    model_type,
                })
            }
        };
        Ok(config)
    }

    /// The `model_type` this config was read from ("deepseek_v3", "deepseek_v2", "qwen2",
    /// "llama").
    pub fn model_type(&self) -> &str {
        match self {
            ModelConfig::DeepseekV3(c) => &c.model_type,
            ModelConfig::Qwen2(_) => "qwen2",
            ModelConfig::Llama(_) => "llama",
        }
    }

    /// FP8 block size for `weight_scale_inv` tensors: the DeepSeek config's, else [128, 128].
    pub fn fp8_block(&self) -> [usize; 2] {
        match self {
            ModelConfig::DeepseekV3(c) => c.fp8_block(),
            _ => DEFAULT_FP8_BLOCK,
        }
    }
}

/// Typed access to the fields of one JSON object, with errors that name file and field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    prefix: &'a str,
}

impl Fields<'_> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn convert<T: DeserializeOwned>(&self, key: &str, v: &Value) -> Result<T> {
        T::deserialize(v).map_err(|e| CheckpointError::ConfigField {
            path: self.path(),
            field: self.name(key),
            detail: e.to_string(),
        })
    }

    /// A required field; null counts as missing.
    fn req<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        match self.map.get(key) {
            None | Some(Value::Null) => Err(CheckpointError::ConfigMissing {
                path: self.path(),
                field: self.name(key),
            }),
            Some(v) => self.convert(key, v),
        }
    }

    /// An optional field; absent and null are `None`.
    fn opt<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.convert(key, v).map(Some),
        }
    }

    fn or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// An int or a list of ints (`eos_token_id`).
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v @ Value::Array(_)) => self.convert(key, v),
            Some(v) => self.convert::<u32>(key, v).map(|id| vec![id]),
        }
    }

    /// A nested object, or `None`.
    fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(CheckpointError::ConfigField {
                path: self.path(),
                field: self.name(key),
                detail: format!("expected an object, found {}", json_kind(other)),
            }),
        }
    }

    fn invalid(&self, key: &str, detail: String) -> CheckpointError {
        CheckpointError::ConfigField {
            path: self.path(),
            field: self.name(key),
            detail,
        }
    }

    fn inconsistent(&self, detail: String) -> CheckpointError {
        CheckpointError::ConfigInconsistent {
            path: self.path(),
            detail,
        }
    }

    /// Errors unless every listed field is non-zero.
    fn nonzero(&self, fields: &[(&str, usize)]) -> Result<()> {
        for &(key, v) in fields {
            if v == 0 {
                return Err(self.invalid(key, "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_rope_scaling(f: &Fields<'_>) -> Result<Option<RopeScaling>> {
    let Some(map) = f.object("rope_scaling")? else {
        return Ok(None);
    };
    let prefix = format!("{}rope_scaling.", f.prefix);
    let r = Fields {
        map,
        path: f.path,
        prefix: &prefix,
    };
    let kind: Option<String> = match r.opt("rope_type")? {
        Some(t) => Some(t),
        None => r.opt("type")?,
    };
    let Some(kind) = kind else {
        return Err(r.invalid(
            "type",
            "rope_scaling has neither `type` nor `rope_type`".into(),
        ));
    };
    let scaling = match kind.as_str() {
        "default" => return Ok(None),
        "yarn" => RopeScaling::Yarn(YarnScaling {
            factor: r.req("factor")?,
            original_max_position_embeddings: r.opt("original_max_position_embeddings")?,
            beta_fast: r.opt("beta_fast")?,
            beta_slow: r.opt("beta_slow")?,
            mscale: r.opt("mscale")?,
            mscale_all_dim: r.opt("mscale_all_dim")?,
        }),
        "llama3" => RopeScaling::Llama3(Llama3Scaling {
            factor: r.req("factor")?,
            low_freq_factor: r.req("low_freq_factor")?,
            high_freq_factor: r.req("high_freq_factor")?,
            original_max_position_embeddings: r.req("original_max_position_embeddings")?,
        }),
        "linear" => RopeScaling::Linear {
            factor: r.req("factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: r.req("factor")?,
        },
        other => {
            return Err(r.invalid(
                "type",
                format!("unsupported rope scaling type \"{other}\" (expected yarn, llama3, linear or dynamic)"),
            ))
        }
    };
    let factor = match &scaling {
        RopeScaling::Yarn(y) => y.factor,
        RopeScaling::Llama3(l) => l.factor,
        RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => *factor,
    };
    if !(factor.is_finite() && factor > 0.0) {
        return Err(r.invalid(
            "factor",
            format!("must be a positive number, found {factor}"),
        ));
    }
    if let RopeScaling::Llama3(l) = &scaling {
        if l.high_freq_factor <= l.low_freq_factor {
            return Err(r.inconsistent(format!(
                "rope_scaling.high_freq_factor {} must exceed low_freq_factor {}",
                l.high_freq_factor, l.low_freq_factor
            )));
        }
    }
    Ok(Some(scaling))
}

fn parse_quantization(f: &Fields<'_>) -> Result<Option<QuantizationConfig>> {
    let Some(map) = f.object("quantization_config")? else {
        return Ok(None);
    };
    let q = Fields {
        map,
        path: f.path,
        prefix: "quantization_config.",
    };
    let quant_method: String = q.req("quant_method")?;
    if quant_method != "fp8" {
        return Err(q.invalid(
            "quant_method",
            format!("unsupported quantization \"{quant_method}\" (only fp8 checkpoints are read)"),
        ));
    }
    let fmt: Option<String> = q.opt("fmt")?;
    if let Some(fmt) = &fmt {
        if fmt != "e4m3" {
            return Err(q.invalid(
                "fmt",
                format!("unsupported FP8 format \"{fmt}\" (expected e4m3)"),
            ));
        }
    }
    let weight_block_size: [usize; 2] = q.or("weight_block_size", DEFAULT_FP8_BLOCK)?;
    if weight_block_size.contains(&0) {
        return Err(q.invalid(
            "weight_block_size",
            format!("{weight_block_size:?} has a zero dimension"),
        ));
    }
    Ok(Some(QuantizationConfig {
        quant_method,
        fmt,
        activation_scheme: q.opt("activation_scheme")?,
        weight_block_size,
    }))
}

fn check_heads(f: &Fields<'_>, heads: usize, kv_heads: usize) -> Result<()> {
    if !heads.is_multiple_of(kv_heads) {
        return Err(f.inconsistent(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )));
    }
    Ok(())
}

fn positive(f: &Fields<'_>, key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(f.invalid(key, format!("must be a positive number, found {v}")));
    }
    Ok(())
}

fn parse_deepseek(f: &Fields<'_>, model_type: String) -> Result<DeepseekV3Config> {
    let v3 = model_type == "deepseek_v3";
    let num_attention_heads: usize = f.req("num_attention_heads")?;
    let scoring: String = f.or(
        "scoring_func",
        if v3 { "sigmoid" } else { "softmax" }.to_string(),
    )?;
    let scoring_func = match scoring.as_str() {
        "sigmoid" => ScoringFunc::Sigmoid,
        "softmax" => ScoringFunc::Softmax,
        other => {
            return Err(f.invalid(
                "scoring_func",
                format!("unsupported value \"{other}\" (expected sigmoid or softmax)"),
            ))
        }
    };
    let c = DeepseekV3Config {
        vocab_size: f.req("vocab_size")?,
        hidden_size: f.req("hidden_size")?,
        intermediate_size: f.req("intermediate_size")?,
        moe_intermediate_size: f.req("moe_intermediate_size")?,
        num_hidden_layers: f.req("num_hidden_layers")?,
        num_nextn_predict_layers: f.or("num_nextn_predict_layers", 0)?,
        num_attention_heads,
        num_key_value_heads: f.or("num_key_value_heads", num_attention_heads)?,
        n_shared_experts: f.or("n_shared_experts", 0)?,
        n_routed_experts: f.req("n_routed_experts")?,
        routed_scaling_factor: f.or("routed_scaling_factor", 1.0)?,
        kv_lora_rank: f.req("kv_lora_rank")?,
        q_lora_rank: f.opt("q_lora_rank")?,
        qk_rope_head_dim: f.req("qk_rope_head_dim")?,
        v_head_dim: f.req("v_head_dim")?,
        qk_nope_head_dim: f.req("qk_nope_head_dim")?,
        topk_method: f.or(
            "topk_method",
            if v3 { "noaux_tc" } else { "greedy" }.to_string(),
        )?,
        n_group: f.or("n_group", 1)?,
        topk_group: f.or("topk_group", 1)?,
        num_experts_per_tok: f.req("num_experts_per_tok")?,
        moe_layer_freq: f.or("moe_layer_freq", 1)?,
        first_k_dense_replace: f.or("first_k_dense_replace", 0)?,
        norm_topk_prob: f.or("norm_topk_prob", v3)?,
        scoring_func,
        hidden_act: f.or("hidden_act", "silu".to_string())?,
        max_position_embeddings: f.req("max_position_embeddings")?,
        rms_norm_eps: f.or("rms_norm_eps", 1e-6)?,
        rope_theta: f.or("rope_theta", 10000.0)?,
        rope_scaling: parse_rope_scaling(f)?,
        tie_word_embeddings: f.or("tie_word_embeddings", false)?,
        bos_token_id: f.opt("bos_token_id")?,
        eos_token_id: f.ids("eos_token_id")?,
        torch_dtype: f.opt("torch_dtype")?,
        quantization_config: parse_quantization(f)?,
        model_type,
    };
    f.nonzero(&[
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("num_key_value_heads", c.num_key_value_heads),
        ("n_routed_experts", c.n_routed_experts),
        ("num_experts_per_tok", c.num_experts_per_tok),
        ("kv_lora_rank", c.kv_lora_rank),
        ("qk_rope_head_dim", c.qk_rope_head_dim),
        ("v_head_dim", c.v_head_dim),
        ("n_group", c.n_group),
        ("topk_group", c.topk_group),
        ("moe_layer_freq", c.moe_layer_freq),
        ("max_position_embeddings", c.max_position_embeddings),
    ])?;
    if c.q_lora_rank == Some(0) {
        return Err(f.invalid("q_lora_rank", "must be greater than 0 or null".into()));
    }
    positive(f, "rms_norm_eps", c.rms_norm_eps)?;
    positive(f, "rope_theta", c.rope_theta)?;
    check_heads(f, c.num_attention_heads, c.num_key_value_heads)?;
    if c.num_experts_per_tok > c.n_routed_experts {
        return Err(f.inconsistent(format!(
            "num_experts_per_tok {} exceeds n_routed_experts {}",
            c.num_experts_per_tok, c.n_routed_experts
        )));
    }
    if !c.n_routed_experts.is_multiple_of(c.n_group) {
        return Err(f.inconsistent(format!(
            "n_routed_experts {} is not divisible by n_group {}",
            c.n_routed_experts, c.n_group
        )));
    }
    if c.topk_group > c.n_group {
        return Err(f.inconsistent(format!(
            "topk_group {} exceeds n_group {}",
            c.topk_group, c.n_group
        )));
    }
    if c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group) {
        return Err(f.inconsistent(format!(
            "num_experts_per_tok {} exceeds the {} experts in topk_group {} of {} groups",
            c.num_experts_per_tok,
            c.topk_group * (c.n_routed_experts / c.n_group),
            c.topk_group,
            c.n_group
        )));
    }
    if c.first_k_dense_replace > c.num_hidden_layers {
        return Err(f.inconsistent(format!(
            "first_k_dense_replace {} exceeds num_hidden_layers {}",
            c.first_k_dense_replace, c.num_hidden_layers
        )));
    }
    Ok(c)
}

fn parse_qwen2(f: &Fields<'_>) -> Result<Qwen2Config> {
    let num_attention_heads: usize = f.req("num_attention_heads")?;
    let c = Qwen2Config {
        vocab_size: f.req("vocab_size")?,
        hidden_size: f.req("hidden_size")?,
        intermediate_size: f.req("intermediate_size")?,
        num_hidden_layers: f.req("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads: f.or("num_key_value_heads", num_attention_heads)?,
        head_dim: f.opt("head_dim")?,
        max_position_embeddings: f.req("max_position_embeddings")?,
        rms_norm_eps: f.or("rms_norm_eps", 1e-6)?,
        rope_theta: f.or("rope_theta", 10000.0)?,
        tie_word_embeddings: f.or("tie_word_embeddings", false)?,
        sliding_window: f.opt("sliding_window")?,
        use_sliding_window: f.or("use_sliding_window", false)?,
        max_window_layers: f.opt("max_window_layers")?,
        bos_token_id: f.opt("bos_token_id")?,
        eos_token_id: f.ids("eos_token_id")?,
        torch_dtype: f.opt("torch_dtype")?,
        rope_scaling: parse_rope_scaling(f)?,
    };
    f.nonzero(&[
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("num_key_value_heads", c.num_key_value_heads),
        ("max_position_embeddings", c.max_position_embeddings),
    ])?;
    positive(f, "rms_norm_eps", c.rms_norm_eps)?;
    positive(f, "rope_theta", c.rope_theta)?;
    check_head_dim(f, c.head_dim, c.hidden_size, c.num_attention_heads)?;
    check_heads(f, c.num_attention_heads, c.num_key_value_heads)?;
    Ok(c)
}

/// A stated `head_dim` must be positive; without one, the heads must divide the width.
fn check_head_dim(
    f: &Fields<'_>,
    head_dim: Option<usize>,
    hidden: usize,
    heads: usize,
) -> Result<()> {
    match head_dim {
        Some(0) => Err(f.invalid("head_dim", "must be greater than 0".into())),
        Some(_) => Ok(()),
        None => check_divisible_heads(f, hidden, heads),
    }
}

fn check_divisible_heads(f: &Fields<'_>, hidden: usize, heads: usize) -> Result<()> {
    if !hidden.is_multiple_of(heads) {
        return Err(f.inconsistent(format!(
            "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )));
    }
    Ok(())
}

fn parse_llama(f: &Fields<'_>) -> Result<LlamaConfig> {
    let num_attention_heads: usize = f.req("num_attention_heads")?;
    let c = LlamaConfig {
        vocab_size: f.req("vocab_size")?,
        hidden_size: f.req("hidden_size")?,
        intermediate_size: f.req("intermediate_size")?,
        num_hidden_layers: f.req("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads: f.or("num_key_value_heads", num_attention_heads)?,
        head_dim: f.opt("head_dim")?,
        max_position_embeddings: f.req("max_position_embeddings")?,
        rms_norm_eps: f.or("rms_norm_eps", 1e-6)?,
        rope_theta: f.or("rope_theta", 10000.0)?,
        attention_bias: f.or("attention_bias", false)?,
        mlp_bias: f.or("mlp_bias", false)?,
        tie_word_embeddings: f.or("tie_word_embeddings", false)?,
        hidden_act: f.or("hidden_act", "silu".to_string())?,
        bos_token_id: f.opt("bos_token_id")?,
        eos_token_id: f.ids("eos_token_id")?,
        torch_dtype: f.opt("torch_dtype")?,
        rope_scaling: parse_rope_scaling(f)?,
    };
    f.nonzero(&[
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("num_key_value_heads", c.num_key_value_heads),
        ("max_position_embeddings", c.max_position_embeddings),
    ])?;
    positive(f, "rms_norm_eps", c.rms_norm_eps)?;
    positive(f, "rope_theta", c.rope_theta)?;
    check_head_dim(f, c.head_dim, c.hidden_size, c.num_attention_heads)?;
    check_heads(f, c.num_attention_heads, c.num_key_value_heads)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DeepSeek-R1 release `config.json` (auto_map and initializer fields included, which are
    /// ignored).
    pub(crate) const R1_CONFIG: &str = r#"{
      "architectures": ["DeepseekV3ForCausalLM"],
      "attention_bias": false, "attention_dropout": 0.0,
      "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
      "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
      "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
      "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
      "max_position_embeddings": 163840, "model_type": "deepseek_v3",
      "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
      "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128,
      "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
      "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
      "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
        "quant_method": "fp8", "weight_block_size": [128, 128]},
      "rms_norm_eps": 1e-06,
      "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
        "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
      "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
      "seq_aux": true, "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
      "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": true,
      "v_head_dim": 128, "vocab_size": 129280
    }"#;

    const LLAMA_CONFIG: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
      "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
      "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
      "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "vocab_size": 128256
    }"#;

    const QWEN_CONFIG: &str = r#"{
      "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151643,
      "hidden_act": "silu", "hidden_size": 1536, "intermediate_size": 8960,
      "max_position_embeddings": 131072, "max_window_layers": 21, "model_type": "qwen2",
      "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
      "rms_norm_eps": 1e-06, "rope_theta": 10000, "sliding_window": 4096,
      "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_sliding_window": false,
      "vocab_size": 151936
    }"#;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(text, Path::new("/x/config.json"))
    }

    fn edit(base: &str, f: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut v: Value = serde_json::from_str(base).unwrap();
        f(v.as_object_mut().unwrap());
        v.to_string()
    }

    #[test]
    fn parses_r1_release_config() {
        let ModelConfig::DeepseekV3(c) = parse(R1_CONFIG).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(c.hidden_size, 7168);
        assert_eq!(c.q_lora_rank, Some(1536));
        assert_eq!(c.eos_token_id, vec![1]);
        assert_eq!(c.scoring_func, ScoringFunc::Sigmoid);
        assert_eq!(c.fp8_block(), [128, 128]);
        let Some(RopeScaling::Yarn(y)) = &c.rope_scaling else {
            panic!("no yarn")
        };
        assert_eq!(y.factor, 40.0);
        assert_eq!(y.original_max_position_embeddings, Some(4096));
        assert_eq!(y.mscale_all_dim, Some(1.0));
    }

    #[test]
    fn parses_v2_lite_with_null_q_lora_rank() {
        let text = edit(R1_CONFIG, |m| {
            m.insert("model_type".into(), "deepseek_v2".into());
            m.insert("q_lora_rank".into(), Value::Null);
            m.remove("scoring_func");
            m.remove("quantization_config");
            m.insert("eos_token_id".into(), serde_json::json!([1, 2]));
        });
        let ModelConfig::DeepseekV3(c) = parse(&text).unwrap() else {
            panic!()
        };
        assert_eq!(c.q_lora_rank, None);
        assert_eq!(c.scoring_func, ScoringFunc::Softmax);
        assert_eq!(c.eos_token_id, vec![1, 2]);
        assert_eq!(c.model_type, "deepseek_v2");
    }

    #[test]
    fn parses_llama_and_qwen2() {
        let ModelConfig::Llama(l) = parse(LLAMA_CONFIG).unwrap() else {
            panic!()
        };
        assert_eq!(l.head_dim(), 128);
        assert!(
            matches!(l.rope_scaling, Some(RopeScaling::Llama3(ref s)) if s.original_max_position_embeddings == 8192)
        );
        let ModelConfig::Qwen2(q) = parse(QWEN_CONFIG).unwrap() else {
            panic!()
        };
        assert_eq!(q.num_key_value_heads, 2);
        assert_eq!(q.max_window_layers, Some(21));
        assert_eq!((q.head_dim, q.head_dim()), (None, 128));
        let stated = edit(QWEN_CONFIG, |m| {
            drop(m.insert("head_dim".into(), 96.into()))
        });
        let ModelConfig::Qwen2(q) = parse(&stated).unwrap() else {
            panic!()
        };
        assert_eq!((q.head_dim, q.head_dim()), (Some(96), 96));
    }

    #[test]
    fn errors_name_the_field_and_file() {
        let cases: Vec<(String, &str)> = vec![
            (
                edit(R1_CONFIG, |m| drop(m.remove("hidden_size"))),
                "missing required field `hidden_size`",
            ),
            (
                edit(R1_CONFIG, |m| {
                    drop(m.insert("num_hidden_layers".into(), "61".into()))
                }),
                "field `num_hidden_layers`",
            ),
            (
                edit(R1_CONFIG, |m| {
                    drop(m.insert("model_type".into(), "mistral".into()))
                }),
                "unsupported model_type \"mistral\"",
            ),
            (
                edit(R1_CONFIG, |m| {
                    drop(m.insert("num_experts_per_tok".into(), 300.into()))
                }),
                "num_experts_per_tok 300 exceeds n_routed_experts 256",
            ),
            (
                edit(R1_CONFIG, |m| drop(m.insert("n_group".into(), 7.into()))),
                "not divisible by n_group 7",
            ),
            (
                edit(R1_CONFIG, |m| drop(m.insert("topk_group".into(), 9.into()))),
                "topk_group 9 exceeds n_group 8",
            ),
            (
                edit(R1_CONFIG, |m| {
                    drop(m.insert(
                        "rope_scaling".into(),
                        serde_json::json!({"type": "yarn", "factor": "x"}),
                    ))
                }),
                "field `rope_scaling.factor`",
            ),
            (
                edit(R1_CONFIG, |m| {
                    drop(m.insert("rope_scaling".into(), serde_json::json!({"type": "yarn"})))
                }),
                "missing required field `rope_scaling.factor`",
            ),
            (
                edit(R1_CONFIG, |m| {
                    drop(m.insert(
                        "quantization_config".into(),
                        serde_json::json!({"quant_method": "gptq"}),
                    ))
                }),
                "unsupported quantization \"gptq\"",
            ),
            (
                edit(LLAMA_CONFIG, |m| {
                    drop(m.insert("hidden_size".into(), 4097.into()))
                }),
                "hidden_size 4097 is not divisible by num_attention_heads 32",
            ),
            (
                edit(QWEN_CONFIG, |m| {
                    drop(m.insert("num_key_value_heads".into(), 5.into()))
                }),
                "not a multiple of num_key_value_heads 5",
            ),
            (
                edit(QWEN_CONFIG, |m| drop(m.insert("head_dim".into(), 0.into()))),
                "field `head_dim`",
            ),
            (
                edit(LLAMA_CONFIG, |m| {
                    drop(m.insert("head_dim".into(), 0.into()))
                }),
                "field `head_dim`",
            ),
            ("[1]".to_string(), "top level is not an object"),
            ("{".to_string(), "invalid JSON"),
        ];
        for (text, expect) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("/x/config.json"), "{err}");
            assert!(err.contains(expect), "{err} lacks {expect}");
        }
    }
}
