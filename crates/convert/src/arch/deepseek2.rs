//! DeepSeek-V3/R1 and V2 (`deepseek_v3`, `deepseek_v2`) → llama.cpp `deepseek2`
//! (REFERENCE §4.2, §4.4; `DeepseekV2Model` in llama.cpp's converter).
//!
//! Exists because this is the model r1q is for: MLA attention written in current llama.cpp's
//! absorbed layout (`attn_k_b`/`attn_v_b` split from `kv_b_proj`, `head_count_kv` = 1, the `*_mla`
//! key lengths), routed experts stacked into 3-D `ffn_*_exps`, the sigmoid router with its
//! `exp_probs_b` bias, YaRN keys, and the MTP layer dropped.
//!
//! Per block, in this order: `attn_norm`, `attn_q_a`, `attn_q_a_norm`, `attn_q_b` (or `attn_q`
//! when `q_lora_rank` is null, as in V2-Lite), `attn_kv_a_mqa`, `attn_kv_a_norm`, `attn_k_b`,
//! `attn_v_b`, `attn_output`, `ffn_norm`, then for dense blocks (N < `first_k_dense_replace`)
//! `ffn_gate`, `ffn_up`, `ffn_down`, and for MoE blocks `ffn_gate_inp`, `exp_probs_b.bias`
//! (`noaux_tc` routing only), `ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`, `ffn_gate_shexp`,
//! `ffn_up_shexp`, `ffn_down_shexp` (when `n_shared_experts` > 0).

use formats::checkpoint::{DeepseekV3Config, RopeScaling, ScoringFunc};

use super::{text_model_kv, ArchPlan, Ctx, Kv, SkipRule, TextParams};
use crate::error::Result;
use crate::plan::{KvBPart, Source};

/// llama.cpp's architecture name.
pub const ARCH: &str = "deepseek2";

/// Maps a DeepSeek checkpoint into `ctx` and returns the `deepseek2.*` keys.
pub(crate) fn map(c: &DeepseekV3Config, ctx: &mut Ctx<'_>) -> Result<ArchPlan> {
    if c.moe_layer_freq != 1 {
        return Err(ctx.error(format!(
            "config.json: moe_layer_freq {} is not supported (llama.cpp's deepseek2 makes every \
             block from first_k_dense_replace on an MoE block)",
            c.moe_layer_freq
        )));
    }
    if c.num_key_value_heads != c.num_attention_heads {
        return Err(ctx.error(format!(
            "config.json: num_key_value_heads {} differs from num_attention_heads {}; kv_b_proj \
             is split per attention head",
            c.num_key_value_heads, c.num_attention_heads
        )));
    }
    let h = c.hidden_size;
    let n_head = c.num_attention_heads;
    let q_head = c.qk_nope_head_dim + c.qk_rope_head_dim;

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
        match c.q_lora_rank {
            Some(r) => {
                ctx.tensor(
                    gg("attn_q_a.weight"),
                    &hf("self_attn.q_a_proj.weight"),
                    &[r, h],
                )?;
                ctx.tensor(
                    gg("attn_q_a_norm.weight"),
                    &hf("self_attn.q_a_layernorm.weight"),
                    &[r],
                )?;
                ctx.tensor(
                    gg("attn_q_b.weight"),
                    &hf("self_attn.q_b_proj.weight"),
                    &[n_head * q_head, r],
                )?;
            }
            None => {
                ctx.tensor(
                    gg("attn_q.weight"),
                    &hf("self_attn.q_proj.weight"),
                    &[n_head * q_head, h],
                )?;
            }
        }
        ctx.tensor(
            gg("attn_kv_a_mqa.weight"),
            &hf("self_attn.kv_a_proj_with_mqa.weight"),
            &[c.kv_lora_rank + c.qk_rope_head_dim, h],
        )?;
        ctx.tensor(
            gg("attn_kv_a_norm.weight"),
            &hf("self_attn.kv_a_layernorm.weight"),
            &[c.kv_lora_rank],
        )?;
        let kv_b = hf("self_attn.kv_b_proj.weight");
        ctx.require(
            &kv_b,
            &[n_head * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank],
        )?;
        let (nope, v, r, heads) = (
            c.qk_nope_head_dim as u64,
            c.v_head_dim as u64,
            c.kv_lora_rank as u64,
            n_head as u64,
        );
        for (name, part, dims) in [
            ("attn_k_b.weight", KvBPart::K, vec![nope, r, heads]),
            ("attn_v_b.weight", KvBPart::V, vec![r, v, heads]),
        ] {
            let source = Source::KvB {
                name: kv_b.clone(),
                part,
                n_head: heads,
                qk_nope: nope,
                v_head: v,
            };
            ctx.derived(gg(name), dims, source)?;
        }
        ctx.tensor(
            gg("attn_output.weight"),
            &hf("self_attn.o_proj.weight"),
            &[h, n_head * c.v_head_dim],
        )?;
        ctx.tensor(
            gg("ffn_norm.weight"),
            &hf("post_attention_layernorm.weight"),
            &[h],
        )?;

        if i < c.first_k_dense_replace {
            let f = c.intermediate_size;
            ctx.tensor(gg("ffn_gate.weight"), &hf("mlp.gate_proj.weight"), &[f, h])?;
            ctx.tensor(gg("ffn_up.weight"), &hf("mlp.up_proj.weight"), &[f, h])?;
            ctx.tensor(gg("ffn_down.weight"), &hf("mlp.down_proj.weight"), &[h, f])?;
            continue;
        }

        let n_exp = c.n_routed_experts;
        ctx.tensor(
            gg("ffn_gate_inp.weight"),
            &hf("mlp.gate.weight"),
            &[n_exp, h],
        )?;
        if c.topk_method == "noaux_tc" {
            ctx.tensor(
                gg("exp_probs_b.bias"),
                &hf("mlp.gate.e_score_correction_bias"),
                &[n_exp],
            )?;
        }
        let f = c.moe_intermediate_size;
        for (proj, out, shape) in [
            ("gate_proj", "ffn_gate_exps.weight", [f, h]),
            ("up_proj", "ffn_up_exps.weight", [f, h]),
            ("down_proj", "ffn_down_exps.weight", [h, f]),
        ] {
            let names = (0..n_exp)
                .map(|e| hf(&format!("mlp.experts.{e}.{proj}.weight")))
                .collect();
            ctx.stack(gg(out), names, shape)?;
        }
        if c.n_shared_experts > 0 {
            let fs = f * c.n_shared_experts;
            for (proj, out, shape) in [
                ("gate_proj", "ffn_gate_shexp.weight", [fs, h]),
                ("up_proj", "ffn_up_shexp.weight", [fs, h]),
                ("down_proj", "ffn_down_shexp.weight", [h, fs]),
            ] {
                ctx.tensor(
                    gg(out),
                    &hf(&format!("mlp.shared_experts.{proj}.weight")),
                    &shape,
                )?;
            }
        }
    }

    let kv = metadata(c, ctx)?;
    Ok(ArchPlan {
        name: ARCH,
        kv,
        skip: SkipRule {
            mtp_from_layer: Some(c.num_hidden_layers),
            tied_lm_head: c.tie_word_embeddings,
        },
    })
}

/// `expert_gating_func`: softmax 1, sigmoid 2 (llama.cpp `llama_expert_gating_func_type`).
pub fn gating_func(s: ScoringFunc) -> usize {
    match s {
        ScoringFunc::Softmax => 1,
        ScoringFunc::Sigmoid => 2,
    }
}

/// The `deepseek2.*` keys in `DeepseekV2Model.set_gguf_parameters`' order (REFERENCE §4.4).
fn metadata(
    c: &DeepseekV3Config,
    ctx: &Ctx<'_>,
) -> Result<Vec<(String, formats::gguf::GgufValue)>> {
    let mut kv = Kv::new(ARCH, ctx.dir);
    text_model_kv(
        &mut kv,
        &TextParams {
            block_count: c.num_hidden_layers,
            context_length: c.max_position_embeddings,
            embedding_length: c.hidden_size,
            feed_forward_length: c.intermediate_size,
            head_count: c.num_attention_heads,
            // MLA is written as MQA: one shared latent KV head.
            head_count_kv: 1,
            rope_scaling: c.rope_scaling.as_ref(),
            rope_theta: c.rope_theta,
            rms_norm_eps: c.rms_norm_eps,
            experts: Some((
                c.n_routed_experts,
                c.num_experts_per_tok,
                c.n_group,
                c.topk_group,
                gating_func(c.scoring_func),
            )),
            head_dim: None,
        },
        ctx.outtype(),
    )?;
    kv.u32("leading_dense_block_count", c.first_k_dense_replace)?;
    kv.u32("vocab_size", c.vocab_size)?;
    if let Some(r) = c.q_lora_rank {
        kv.u32("attention.q_lora_rank", r)?;
    }
    kv.u32("attention.kv_lora_rank", c.kv_lora_rank)?;
    kv.u32("attention.key_length", c.kv_lora_rank + c.qk_rope_head_dim)?;
    kv.u32("attention.value_length", c.kv_lora_rank)?;
    kv.u32(
        "attention.key_length_mla",
        c.qk_nope_head_dim + c.qk_rope_head_dim,
    )?;
    kv.u32("attention.value_length_mla", c.v_head_dim)?;
    kv.u32("expert_feed_forward_length", c.moe_intermediate_size)?;
    // expert_count: already written with the generic keys (the converter's second write only
    // overwrites the value in place).
    kv.u32("expert_shared_count", c.n_shared_experts)?;
    kv.f32("expert_weights_scale", c.routed_scaling_factor);
    if c.norm_topk_prob {
        kv.bool("expert_weights_norm", true);
    }
    kv.u32("rope.dimension_count", c.qk_rope_head_dim)?;
    if let Some(RopeScaling::Yarn(y)) = &c.rope_scaling {
        if let Some(m) = y.mscale_all_dim {
            // The loader divides by 0.1 (REFERENCE §4.4, TAG_DEEPSEEK2_YARN_LOG_MUL_FIX).
            kv.f32("rope.scaling.yarn_log_multiplier", 0.1 * m);
        }
    }
    Ok(kv.out)
}
