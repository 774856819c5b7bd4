//! The conversion plan: every output tensor (in file order) with its GGUF name, shape, type and
//! where its values come from, plus every metadata key — decided before any data moves.
//!
//! Exists so that what will be written can be printed, checked and sized (`--dry-run`, tests
//! comparing against llama.cpp's converter) without touching tensor data, and so the pipeline is
//! one generic executor instead of per-architecture write loops.

use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;

/// Everything a conversion will write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `general.architecture` of the output (`deepseek2`, `qwen2`, `llama`).
    pub arch: String,
    /// Metadata in write order (`general.architecture` first, as llama.cpp's converter does).
    pub metadata: Vec<(String, GgufValue)>,
    /// Output tensors in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Checkpoint tensors deliberately not converted, with the reason (MTP layers, FP8 scales
    /// consumed by their weight, a tied `lm_head`), so `inspect`/`--dry-run` can say so.
    pub skipped: Vec<Skipped>,
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// GGUF name, e.g. `blk.3.ffn_gate_exps.weight`.
    pub name: String,
    /// ggml `ne`, innermost first (a PyTorch [out, in] weight is `[in, out]`).
    pub dims: Vec<u64>,
    /// Type written to the file.
    pub ggml_type: GgmlType,
    /// How the f32 values of this tensor are produced, row by row.
    pub source: Source,
}

impl PlannedTensor {
    /// Row length (`ne[0]`): the unit the pipeline decodes, transforms and quantizes.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of `ne[1..]`).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// A checkpoint tensor left out of the output, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Checkpoint tensor name.
    pub name: String,
    /// Why it is not converted, for people.
    pub reason: SkipReason,
}

/// Why a checkpoint tensor is not converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A DeepSeek multi-token-prediction layer (index ≥ `num_hidden_layers`); llama.cpp's
    /// converter drops them too.
    MtpLayer,
    /// An FP8 block scale (`*_scale_inv`), folded into its weight during dequantization.
    Fp8Scale,
    /// `lm_head.weight` when `tie_word_embeddings` is true.
    TiedEmbedding,
}

/// Where an output tensor's f32 values come from. Row `r` of the output is row `r` of the
/// result in ggml order (`ne[0]` contiguous values).
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A checkpoint tensor as is (1-D, or 2-D [out, in] → ne {in, out}); any stored dtype,
    /// FP8 dequantized with its block scales.
    Tensor {
        /// Checkpoint tensor name.
        name: String,
    },
    /// 2-D checkpoint tensors of identical shape [out, in] stacked along a new outer axis in the
    /// given order → ne {in, out, n}: DeepSeek's routed experts.
    Stack {
        /// Checkpoint tensor names, expert 0 first.
        names: Vec<String>,
    },
    /// One half of DeepSeek's `kv_b_proj` [H·(nope+v), kv_lora_rank], split per head for MLA
    /// absorption (REFERENCE §4.2).
    KvB {
        /// Checkpoint name of `kv_b_proj.weight`.
        name: String,
        /// Which half.
        part: KvBPart,
        /// Number of heads H (config `num_attention_heads` / `num_key_value_heads` before the
        /// MQA override).
        n_head: u64,
        /// `qk_nope_head_dim`.
        qk_nope: u64,
        /// `v_head_dim`.
        v_head: u64,
    },
    /// Llama q/k projection rows permuted from HF's half-split rotary layout to llama.cpp's
    /// adjacent pairs (REFERENCE §4.8).
    PermuteRope {
        /// Checkpoint tensor name.
        name: String,
        /// Heads of this projection (n_head for q, n_head_kv for k).
        n_head: u64,
    },
    /// Values computed by the converter itself (e.g. llama3's `rope_freqs.weight`).
    Values(Vec<f32>),
}

/// The two halves of `kv_b_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBPart {
    /// `attn_k_b`: per head the first `qk_nope` rows, transposed → ne {qk_nope, kv_lora_rank, H}.
    K,
    /// `attn_v_b`: per head the last `v_head` rows → ne {kv_lora_rank, v_head, H}.
    V,
}
