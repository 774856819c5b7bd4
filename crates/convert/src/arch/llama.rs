//! R1-Distill-Llama (`llama`) → llama.cpp `llama` (REFERENCE §4.8; `LlamaModel`).
//!
//! Exists because Llama needs two things the others don't: q/k rows permuted from HF's
//! half-split rotary layout to llama.cpp's adjacent pairs, and, for `rope_type` llama3, the
//! extra `rope_freqs.weight` tensor of per-frequency divisors instead of rope-scaling keys.
//!
//! Tensor order: `token_embd`, `output_norm`, `output`, `rope_freqs` (llama3 only), then per
//! block `attn_norm`, `attn_q`, `attn_k`, `attn_v`, `attn_output`, `ffn_norm`, `ffn_gate`,
//! `ffn_up`, `ffn_down`.

use formats::checkpoint::{Llama3Scaling, LlamaConfig, RopeScaling};

use super::{text_model_kv, ArchPlan, Ctx, Kv, SkipRule, TextParams};
use crate::error::Result;

/// llama.cpp's architecture name.
pub const ARCH: &str = "llama";

/// Maps a Llama checkpoint into `ctx` and returns the `llama.*` keys.
pub(crate) fn map(c: &LlamaConfig, ctx: &mut Ctx<'_>) -> Result<ArchPlan> {
    if c.attention_bias || c.mlp_bias {
        return Err(ctx.error(
            "config.json: attention_bias / mlp_bias are true; Llama checkpoints with biases are \
             not supported (R1-Distill-Llama has none)"
                .into(),
        ));
    }
    let h = c.hidden_size;
    let hd = c.head_dim();
    let q = c.num_attention_heads * hd;
    let kvd = c.num_key_value_heads * hd;

    ctx.tensor(
        "token_embd.weight".into(),
        "model.embed_tokens.weight",
        &[c.vocab_size, h],
    )?;
    ctx.tensor("output_norm.weight".into(), "model.norm.weight", &[h])?;
    if !c.tie_word_embeddings {
        ctx.tensor("output.weight".into(), "lm_head.weight", &[c.vocab_size, h])?;
    }
    if let Some(RopeScaling::Llama3(s)) = &c.rope_scaling {
        ctx.values("rope_freqs.weight".into(), rope_freqs(s, c.rope_theta, hd))?;
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}.");
        let b = format!("blk.{i}.");
        let hf = |s: &str| format!("{p}{s}");
        let gg = |s: &str| format!("{b}{s}");
        ctx.tensor(gg("attn_norm.weight"), &hf("input_layernorm.weight"), &[h])?;
        ctx.permuted(
            gg("attn_q.weight"),
            &hf("self_attn.q_proj.weight"),
            &[q, h],
            c.num_attention_heads,
        )?;
        ctx.permuted(
            gg("attn_k.weight"),
            &hf("self_attn.k_proj.weight"),
            &[kvd, h],
            c.num_key_value_heads,
        )?;
        ctx.tensor(
            gg("attn_v.weight"),
            &hf("self_attn.v_proj.weight"),
            &[kvd, h],
        )?;
        ctx.tensor(
            gg("attn_output.weight"),
            &hf("self_attn.o_proj.weight"),
            &[h, q],
        )?;
        ctx.tensor(
            gg("ffn_norm.weight"),
            &hf("post_attention_layernorm.weight"),
            &[h],
        )?;
        let f = c.intermediate_size;
        ctx.tensor(gg("ffn_gate.weight"), &hf("mlp.gate_proj.weight"), &[f, h])?;
        ctx.tensor(gg("ffn_up.weight"), &hf("mlp.up_proj.weight"), &[f, h])?;
        ctx.tensor(gg("ffn_down.weight"), &hf("mlp.down_proj.weight"), &[h, f])?;
    }

    let mut kv = Kv::new(ARCH, ctx.dir);
    text_model_kv(
        &mut kv,
        &TextParams {
            block_count: c.num_hidden_layers,
            context_length: c.max_position_embeddings,
            embedding_length: h,
            feed_forward_length: c.intermediate_size,
            head_count: c.num_attention_heads,
            head_count_kv: c.num_key_value_heads,
            rope_scaling: c.rope_scaling.as_ref(),
            rope_theta: c.rope_theta,
            rms_norm_eps: c.rms_norm_eps,
            experts: None,
            // transformers' LlamaConfig fills `head_dim` (hidden/heads) when config.json lacks
            // it, so the Python converter always writes key_length/value_length for llama.
            head_dim: Some(hd),
        },
        ctx.outtype(),
    )?;
    kv.u32("vocab_size", c.vocab_size)?;
    kv.u32("rope.dimension_count", hd)?;
    Ok(ArchPlan {
        name: ARCH,
        kv: kv.out,
        skip: SkipRule {
            mtp_from_layer: None,
            tied_lm_head: c.tie_word_embeddings,
        },
    })
}

/// llama3 `rope_freqs.weight` ({head_dim/2}, REFERENCE §4.8): for each rotary frequency
/// f_i = base^(−2i/d) with wavelength λ = 2π/f_i, the divisor 1 (λ < L/high), `factor`
/// (λ > L/low), or 1/((1 − s)/factor + s) with s = (L/λ − low)/(high − low) in between.
///
/// Computed in f32 step by step as `LlamaModel.generate_extra_tensors` does with float32 torch
/// tensors, so the values match the Python converter's to the last bit where `powf` agrees.
pub fn rope_freqs(s: &Llama3Scaling, base: f64, head_dim: usize) -> Vec<f32> {
    let dim = head_dim as f32;
    let base = base as f32;
    let factor = s.factor as f32;
    let low = s.low_freq_factor as f32;
    let high = s.high_freq_factor as f32;
    let old_ctx = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
    let high_freq_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0f32 / base.powf((2 * i) as f32 / dim);
            let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
            if f64::from(wavelen) < high_freq_wavelen {
                1.0
            } else if f64::from(wavelen) > low_freq_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}
