//! R1-Distill-Qwen (`qwen2`) → llama.cpp `qwen2` (REFERENCE §4.7; `Qwen2Model`).
//!
//! Exists as the plain dense GQA decoder with q/k/v biases: no permutation (rope type NEOX),
//! biases kept as F32 1-D tensors, no `vocab_size` key.
//!
//! Per block, in this order: `attn_norm`, `attn_q.weight`, `attn_q.bias`, `attn_k.weight`,
//! `attn_k.bias`, `attn_v.weight`, `attn_v.bias`, `attn_output`, `ffn_norm`, `ffn_gate`, `ffn_up`,
//! `ffn_down`.

use formats::checkpoint::Qwen2Config;

use super::{text_model_kv, ArchPlan, Ctx, Kv, SkipRule, TextParams};
use crate::error::Result;

/// llama.cpp's architecture name.
pub const ARCH: &str = "qwen2";

/// Maps a Qwen2 checkpoint into `ctx` and returns the `qwen2.*` keys.
pub(crate) fn map(c: &Qwen2Config, ctx: &mut Ctx<'_>) -> Result<ArchPlan> {
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
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}.");
        let b = format!("blk.{i}.");
        let hf = |s: &str| format!("{p}{s}");
        let gg = |s: &str| format!("{b}{s}");
        ctx.tensor(gg("attn_norm.weight"), &hf("input_layernorm.weight"), &[h])?;
        for (x, out) in [("q", q), ("k", kvd), ("v", kvd)] {
            ctx.tensor(
                gg(&format!("attn_{x}.weight")),
                &hf(&format!("self_attn.{x}_proj.weight")),
                &[out, h],
            )?;
            ctx.tensor(
                gg(&format!("attn_{x}.bias")),
                &hf(&format!("self_attn.{x}_proj.bias")),
                &[out],
            )?;
        }
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
            // Written only when config.json states it, as the Python converter does.
            head_dim: c.head_dim,
        },
        ctx.outtype(),
    )?;
    Ok(ArchPlan {
        name: ARCH,
        kv: kv.out,
        skip: SkipRule {
            mtp_from_layer: None,
            tied_lm_head: c.tie_word_embeddings,
        },
    })
}
