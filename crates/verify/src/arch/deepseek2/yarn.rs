//! The attention scale and YaRN rope parameters of `deepseek2` exactly as llama.cpp derives them
//! (REFERENCE §5.4: `llama_context` constructor, `deepseek2.cpp` graph, ggml `rope_yarn`).
//!
//! Why this needs care: llama.cpp splits DeepSeek's single `softmax_scale · mscale²` across two
//! places. The context computes an `attn_factor` that the rope multiplies into cos/sin, cancelled
//! so the rotation has magnitude 1, and the graph folds the YaRN magnitude correction (squared)
//! into `kq_scale`. Both apply at **every** context length, even far below
//! `original_context_length` — unlike DeepSeek's own `model.py` at short `max_seq_len`. All values
//! are computed in f32 with the same operations, so they are bit-identical to llama.cpp's.

use crate::ops::{yarn_corr_dims, RopeMode, RopeParams};

/// The inputs: deepseek2 metadata as llama.cpp reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnInputs {
    /// `rope.dimension_count` (`n_rot`, qk_rope_head_dim).
    pub n_rot: usize,
    /// `rope.freq_base`.
    pub freq_base: f32,
    /// Whether `rope.scaling.type` is `yarn` (then `ext_factor` = 1, else 0).
    pub yarn: bool,
    /// `rope.scaling.factor` (1 when absent or when the scaling type is `none`).
    pub factor: f32,
    /// `rope.scaling.original_context_length` (default: `context_length`).
    pub n_ctx_orig: u32,
    /// `rope.scaling.yarn_log_multiplier` **as stored** (0.1 × mscale_all_dim); the loader divides
    /// it by 0.1.
    pub yarn_log_multiplier_stored: f32,
    /// `rope.scaling.attn_factor` (default 1).
    pub rope_attn_factor: f32,
    /// `attention.key_length_mla` (qk_nope + qk_rope): the softmax scale is 1/√ of this, not of
    /// the 576-wide absorbed key.
    pub key_length_mla: usize,
}

/// What the forward pass uses.
#[derive(Debug, Clone, PartialEq)]
pub struct YarnScales {
    /// Multiplies Q·Kᵀ before the softmax: `mscale² / √key_length_mla`.
    pub kq_scale: f32,
    /// The `attn_factor` llama.cpp passes to `ggml_rope_ext` (0.730520 for V3/R1).
    pub attn_factor: f32,
    /// What cos/sin are actually multiplied by inside `rope_yarn`: `attn_factor`, times
    /// `1 + 0.1·ln(1/freq_scale)` when `ext_factor ≠ 0` (exactly 1 for V3/R1).
    pub rope_magnitude: f32,
    /// The rope of q_pe and k_pe: NORM pairs, YaRN frequencies, `attn_factor` above.
    pub rope: RopeParams,
}

/// llama.cpp's defaults for deepseek2 (hparams `yarn_beta_fast`/`yarn_beta_slow`; the deepseek2
/// loader never reads the GGUF's beta keys).
pub const BETA_FAST: f32 = 32.0;
/// See [`BETA_FAST`].
pub const BETA_SLOW: f32 = 1.0;

/// llama-context's `get_mscale`.
fn get_mscale(scale: f32, mscale: f32) -> f32 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl YarnScales {
    /// Derives every factor from the metadata, step by step as llama.cpp does (see the module doc).
    pub fn new(inp: &YarnInputs) -> YarnScales {
        let freq_scale = if inp.factor > 0.0 {
            1.0 / inp.factor
        } else {
            1.0
        };
        let ext_factor = if inp.yarn { 1.0f32 } else { 0.0 };
        // [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]: the converter stores 0.1 × mscale_all_dim.
        let log_mul = inp.yarn_log_multiplier_stored / 0.1;
        let mut attn_factor = 1.0f32;
        if ext_factor != 0.0 {
            let factor = 1.0 / freq_scale;
            if log_mul != 0.0 {
                let mscale = if log_mul != 1.0 { log_mul } else { 1.0 };
                attn_factor = get_mscale(factor, mscale) / get_mscale(factor, log_mul);
            } else {
                attn_factor = get_mscale(factor, 1.0);
            }
            attn_factor *= 1.0 / (1.0 + 0.1 * factor.ln());
        }
        attn_factor *= inp.rope_attn_factor;

        let inv_fs_ln = (1.0 / freq_scale).ln();
        let attn_factor_org = attn_factor * (1.0 + 0.1 * inv_fs_ln);
        let mscale = attn_factor_org * (1.0 + 0.1 * log_mul * inv_fs_ln);
        let kq_scale = mscale * mscale / (inp.key_length_mla as f32).sqrt();
        let rope_magnitude = if ext_factor != 0.0 {
            attn_factor * (1.0 + 0.1 * inv_fs_ln)
        } else {
            attn_factor
        };
        YarnScales {
            kq_scale,
            attn_factor,
            rope_magnitude,
            rope: RopeParams {
                mode: RopeMode::Norm,
                n_rot: inp.n_rot,
                freq_base: inp.freq_base,
                freq_scale,
                ext_factor,
                attn_factor,
                corr_dims: yarn_corr_dims(
                    inp.n_rot,
                    inp.n_ctx_orig as usize,
                    inp.freq_base,
                    BETA_FAST,
                    BETA_SLOW,
                ),
                freq_factors: None,
            },
        }
    }
}
