//! The `deepseek2` block (DeepSeek-V2/V3/R1) as llama.cpp evaluates it (REFERENCE §5):
//! x → RMSNorm·attn_norm → MLA (absorbed) → + x → RMSNorm·ffn_norm → dense SwiGLU (leading
//! layers) or routed experts + shared expert → + residual.
//!
//! Written from the model definition (DeepSeek's `model.py`, HF `modeling_deepseek.py`) and the
//! facts of REFERENCE §5, with llama.cpp's choices where the two differ (YaRN and mscale² at every
//! context length, the f16-minimum clamp of the expert weight sum). Every tensor's dims are checked
//! against the metadata at load, with errors naming the tensor.

pub mod ffn;
pub mod mla;
pub mod router;
pub mod yarn;

use crate::config::{Deepseek2Params, ModelConfig, RopeScalingType};
use crate::engine::{Block, LayerCtx};
use crate::error::{Result, VerifyError};
use crate::ops;
use crate::source::WeightSource;
use crate::tensor::{Mat, SeqSpan};

use ffn::{DenseFfn, Moe};
use mla::{Mla, MlaDims, QProj};
use router::{Gating, RouterParams};
use yarn::{YarnInputs, YarnScales};

/// The FFN half of a block.
#[derive(Debug, Clone)]
pub enum Ffn<'s> {
    /// Layers below `leading_dense_block_count`.
    Dense(DenseFfn),
    /// Routed experts + shared expert.
    Moe(Box<Moe<'s>>),
}

/// One deepseek2 layer: its non-expert weights loaded as f32, its routed experts read from the
/// source `'s` when they receive tokens ([`Moe`]).
#[derive(Debug, Clone)]
pub struct Deepseek2Block<'s> {
    /// `attn_norm`.
    pub attn_norm: Vec<f32>,
    /// The attention.
    pub mla: Mla,
    /// `ffn_norm`.
    pub ffn_norm: Vec<f32>,
    /// The feed-forward network.
    pub ffn: Ffn<'s>,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// The deepseek2 keys, or an error saying they are missing (a config built for another arch).
fn params(config: &ModelConfig) -> Result<&Deepseek2Params> {
    config.deepseek2.as_ref().ok_or_else(|| {
        VerifyError::Invalid("deepseek2 block requested for a config without deepseek2 keys".into())
    })
}

/// The attention sizes implied by the metadata, refusing the legacy `attn_kv_b` layout (no
/// `key_length_mla`), which current converters never write.
pub fn mla_dims(config: &ModelConfig, origin: &str) -> Result<MlaDims> {
    let p = params(config)?;
    let missing = |key: &str| VerifyError::MissingKey {
        origin: origin.to_string(),
        key: format!(
            "deepseek2.attention.{key} (legacy attn_kv_b GGUFs are not supported; reconvert)"
        ),
    };
    let k_mla = p.key_length_mla.ok_or_else(|| missing("key_length_mla"))?;
    let v_mla = p
        .value_length_mla
        .ok_or_else(|| missing("value_length_mla"))?;
    if k_mla <= config.n_rot {
        return Err(VerifyError::BadKey {
            origin: origin.to_string(),
            key: "deepseek2.attention.key_length_mla".into(),
            problem: format!(
                "{k_mla} must exceed rope.dimension_count {} (it is qk_nope + qk_rope)",
                config.n_rot
            ),
        });
    }
    if p.kv_lora_rank == 0 || v_mla == 0 {
        return Err(VerifyError::BadKey {
            origin: origin.to_string(),
            key: "deepseek2.attention.kv_lora_rank".into(),
            problem: "kv_lora_rank and value_length_mla must be positive".into(),
        });
    }
    Ok(MlaDims {
        n_head: config.n_head,
        nope: k_mla - config.n_rot,
        rope: config.n_rot,
        kv_lora: p.kv_lora_rank,
        v_head: v_mla,
    })
}

/// The attention scale and rope for `config` (REFERENCE §5.4).
pub fn yarn_scales(config: &ModelConfig, dims: &MlaDims) -> YarnScales {
    let s = &config.rope_scaling;
    YarnScales::new(&YarnInputs {
        n_rot: config.n_rot,
        freq_base: config.rope_freq_base,
        yarn: s.kind == RopeScalingType::Yarn,
        factor: if s.kind == RopeScalingType::None {
            1.0
        } else {
            s.factor
        },
        n_ctx_orig: s.n_ctx_orig,
        yarn_log_multiplier_stored: s.yarn_log_multiplier,
        rope_attn_factor: s.attn_factor,
        key_length_mla: dims.q_head(),
    })
}

/// The router hyper-parameters, validated.
pub fn router_params(config: &ModelConfig, origin: &str) -> Result<RouterParams> {
    let p = params(config)?;
    let gating = match p.expert_gating_func {
        // llama.cpp's default for old V2 files without the key.
        None => Gating::Softmax,
        Some(code) => Gating::from_code(code).ok_or_else(|| VerifyError::BadKey {
            origin: origin.to_string(),
            key: "deepseek2.expert_gating_func".into(),
            problem: format!("{code} is not supported (expected 1 = softmax or 2 = sigmoid)"),
        })?,
    };
    let rp = RouterParams {
        n_expert: p.n_expert,
        n_used: p.n_expert_used,
        n_groups: p.n_expert_groups,
        n_groups_used: p.n_group_used,
        gating,
        norm_weights: p.expert_weights_norm,
        weights_scale: p.expert_weights_scale,
    };
    rp.validate().map_err(|problem| VerifyError::BadKey {
        origin: origin.to_string(),
        key: "deepseek2.expert_*".into(),
        problem,
    })?;
    Ok(rp)
}

/// Loads tensor `name` after checking its dims (ggml order) equal `dims`.
fn load(source: &dyn WeightSource, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
    let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    super::load_tensor(source, name, &dims)
}

/// Loads a weight with ggml dims `{cols, rows, (n)}` as a `[rows·n, cols]` matrix.
fn load_mat(source: &dyn WeightSource, name: &str, dims: &[usize]) -> Result<Mat> {
    let data = load(source, name, dims)?;
    let cols = dims.first().copied().unwrap_or(0);
    let rows = dims.iter().skip(1).product::<usize>();
    Ok(Mat::from_vec(rows, cols, data))
}

impl<'s> Deepseek2Block<'s> {
    /// Loads and validates layer `layer` (see [`Block::load`]); the routed experts' dims are
    /// checked here but their data is read during `forward`.
    pub fn load_layer(
        source: &'s dyn WeightSource,
        config: &ModelConfig,
        layer: usize,
    ) -> Result<Self> {
        let origin = source.description();
        let p = params(config)?;
        let d = mla_dims(config, &origin)?;
        let n_embd = config.n_embd;
        let t = |s: &str| format!("blk.{layer}.{s}");
        let vec = |name: &str, n: usize| load(source, &t(name), &[n]);

        let q = match p.q_lora_rank {
            Some(r) if r > 0 => QProj::LowRank {
                a: load_mat(source, &t("attn_q_a.weight"), &[n_embd, r])?,
                a_norm: vec("attn_q_a_norm.weight", r)?,
                b: load_mat(source, &t("attn_q_b.weight"), &[r, d.n_head * d.q_head()])?,
            },
            _ => QProj::Direct(load_mat(
                source,
                &t("attn_q.weight"),
                &[n_embd, d.n_head * d.q_head()],
            )?),
        };
        let mla = Mla {
            layer,
            dims: d,
            q,
            kv_a: load_mat(source, &t("attn_kv_a_mqa.weight"), &[n_embd, d.k_abs()])?,
            kv_a_norm: vec("attn_kv_a_norm.weight", d.kv_lora)?,
            k_b: load_mat(
                source,
                &t("attn_k_b.weight"),
                &[d.nope, d.kv_lora, d.n_head],
            )?,
            v_b: load_mat(
                source,
                &t("attn_v_b.weight"),
                &[d.kv_lora, d.v_head, d.n_head],
            )?,
            out: load_mat(
                source,
                &t("attn_output.weight"),
                &[d.n_head * d.v_head, n_embd],
            )?,
            eps: config.rms_eps,
            yarn: yarn_scales(config, &d),
        };

        let ffn = if layer < p.n_layer_dense_lead {
            Ffn::Dense(DenseFfn {
                gate: load_mat(source, &t("ffn_gate.weight"), &[n_embd, config.n_ff])?,
                up: load_mat(source, &t("ffn_up.weight"), &[n_embd, config.n_ff])?,
                down: load_mat(source, &t("ffn_down.weight"), &[config.n_ff, n_embd])?,
                prefix: t("ffn_"),
                suffix: "",
            })
        } else {
            let rp = router_params(config, &origin)?;
            let (ne, ff) = (rp.n_expert, p.n_ff_exp);
            let bias_name = t("exp_probs_b.bias");
            let bias = match source.tensor_dims(&bias_name) {
                Some(_) => Some(load(source, &bias_name, &[ne])?),
                None => None,
            };
            let shared = if p.n_expert_shared > 0 {
                let sf = ff * p.n_expert_shared;
                Some(DenseFfn {
                    gate: load_mat(source, &t("ffn_gate_shexp.weight"), &[n_embd, sf])?,
                    up: load_mat(source, &t("ffn_up_shexp.weight"), &[n_embd, sf])?,
                    down: load_mat(source, &t("ffn_down_shexp.weight"), &[sf, n_embd])?,
                    prefix: t("ffn_"),
                    suffix: "_shexp",
                })
            } else {
                None
            };
            if source.tensor_dims(&t("ffn_gate_up_exps.weight")).is_some()
                && source.tensor_dims(&t("ffn_gate_exps.weight")).is_none()
            {
                return Err(VerifyError::TensorData {
                    origin,
                    tensor: t("ffn_gate_up_exps.weight"),
                    problem: "fused gate/up experts are not supported yet (convert without --fuse-gate-up-exps)".into(),
                });
            }
            let exps = |s: &str| t(&format!("ffn_{s}_exps.weight"));
            for (name, dims) in [
                (exps("gate"), [n_embd, ff, ne]),
                (exps("up"), [n_embd, ff, ne]),
                (exps("down"), [ff, n_embd, ne]),
            ] {
                let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
                super::check_dims(source, &name, &dims)?;
            }
            Ffn::Moe(Box::new(Moe {
                layer,
                router: load_mat(source, &t("ffn_gate_inp.weight"), &[n_embd, ne])?,
                bias,
                params: rp,
                n_embd,
                n_ff: ff,
                source,
                shared,
            }))
        };
        Ok(Deepseek2Block {
            attn_norm: vec("attn_norm.weight", n_embd)?,
            mla,
            ffn_norm: vec("ffn_norm.weight", n_embd)?,
            ffn,
            eps: config.rms_eps,
        })
    }

    /// Activation floats per token at the block's peak (see [`Block::floats_per_token`]): the
    /// larger of the attention phase (residual, normed input, absorbed queries, latent K and V,
    /// the attention op's per-head outputs and their assembled copy, the decompressed heads and
    /// the output) and the FFN phase (dense: gate and up; MoE: each routed copy of the token with
    /// its gate/up rows, router logits, shared expert, output).
    pub fn peak_floats_per_token(config: &ModelConfig) -> usize {
        let e = config.n_embd;
        let Some(p) = config.deepseek2.as_ref() else {
            return 3 * e + 2 * config.n_ff;
        };
        let rope = config.n_rot;
        let kv = p.kv_lora_rank;
        let h = config.n_head;
        let v = p.value_length_mla.unwrap_or(0);
        let attn = 3 * e + h * (kv + rope) + (kv + rope) + kv + 2 * h * kv + h * v;
        let dense = 3 * e + 2 * config.n_ff;
        let moe = 3 * e
            + p.n_expert
            + p.n_expert_used * (e + 2 * p.n_ff_exp)
            + 2 * p.n_ff_exp * p.n_expert_shared
            + e;
        attn.max(dense).max(moe)
    }
}

impl<'s> Block<'s> for Deepseek2Block<'s> {
    fn load(source: &'s dyn WeightSource, config: &ModelConfig, layer: usize) -> Result<Self> {
        Deepseek2Block::load_layer(source, config, layer)
    }

    fn floats_per_token(config: &ModelConfig) -> usize {
        Deepseek2Block::peak_floats_per_token(config)
    }

    fn forward(&self, x: &mut Mat, seqs: &[SeqSpan], ctx: &mut LayerCtx<'_>) -> Result<()> {
        let mut h = x.clone();
        ops::rms_norm(&mut h, &self.attn_norm, self.eps);
        let attn = self.mla.forward(&h, seqs, ctx);
        drop(h);
        ops::add_assign(x, &attn);
        drop(attn);
        let mut h = x.clone();
        ops::rms_norm(&mut h, &self.ffn_norm, self.eps);
        let out = match &self.ffn {
            Ffn::Dense(f) => f.forward(&h, ctx),
            Ffn::Moe(m) => m.forward(&h, ctx)?,
        };
        drop(h);
        ops::add_assign(x, &out);
        Ok(())
    }
}
