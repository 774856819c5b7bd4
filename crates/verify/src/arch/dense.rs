//! The dense decoder block of `llama` and `qwen2` (REFERENCE §4.7–4.8), from the model
//! definitions: pre-norm attention with GQA and rope, then a pre-norm SwiGLU FFN.
//!
//! x += attn_output · Attn(rope(q), rope(k), v) with q/k/v = W·RMSNorm(x)·attn_norm (+ bias for
//! qwen2); x += ffn_down · (silu(ffn_gate·h) ⊙ ffn_up·h) with h = RMSNorm(x)·ffn_norm.
//! Rope: llama NORM (adjacent pairs; the converter permuted q/k from HF's half-split layout) with
//! `rope_freqs` factors when that tensor exists; qwen2 NEOX. Scale 1/√head_dim.

use crate::arch::{load_matrix, load_optional_vector, load_vector};
use crate::config::{Arch, ModelConfig};
use crate::engine::{Block, LayerCtx};
use crate::error::Result;
use crate::ops::{self, AttnShape, RopeParams};
use crate::source::WeightSource;
use crate::tensor::{Mat, SeqSpan};

/// One projection: the weight, its optional bias and its GGUF name (for the observer).
struct Linear {
    name: String,
    w: Mat,
    bias: Option<Vec<f32>>,
}

impl Linear {
    fn load(
        source: &dyn WeightSource,
        prefix: &str,
        tensor: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let name = format!("{prefix}{tensor}.weight");
        let w = load_matrix(source, &name, out, inp)?;
        let bias = if bias {
            load_optional_vector(source, &format!("{prefix}{tensor}.bias"), out)?
        } else {
            None
        };
        Ok(Linear { name, w, bias })
    }

    fn apply(&self, ctx: &LayerCtx<'_>, x: &Mat) -> Mat {
        let y = ctx.matmul(&self.name, x, &self.w);
        self.with_bias(y)
    }

    fn with_bias(&self, mut y: Mat) -> Mat {
        if let Some(b) = &self.bias {
            ops::add_bias(&mut y, b);
        }
        y
    }

    /// Several projections of the same input ([`LayerCtx::matmuls`]: a device uploads x once).
    fn apply_all<const N: usize>(ctx: &LayerCtx<'_>, x: &Mat, ls: [&Linear; N]) -> [Mat; N] {
        let ws = ls.map(|l| (l.name.as_str(), &l.w));
        let ys = ctx.matmuls(x, &ws);
        let mut ys = ys.into_iter();
        ls.map(|l| l.with_bias(ys.next().expect("one product per projection")))
    }
}

/// A llama/qwen2 layer with its weights dequantized to f32.
pub struct DenseBlock {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    rope: RopeParams,
    attn: AttnShape,
    eps: f32,
}

impl Block<'_> for DenseBlock {
    fn load(source: &dyn WeightSource, c: &ModelConfig, layer: usize) -> Result<DenseBlock> {
        let p = format!("blk.{layer}.");
        let (nq, nk, nv) = (
            c.n_head * c.head_dim_k,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
        );
        let bias = c.arch == Arch::Qwen2;
        Ok(DenseBlock {
            attn_norm: load_vector(source, &format!("{p}attn_norm.weight"), c.n_embd)?,
            q: Linear::load(source, &p, "attn_q", nq, c.n_embd, bias)?,
            k: Linear::load(source, &p, "attn_k", nk, c.n_embd, bias)?,
            v: Linear::load(source, &p, "attn_v", nv, c.n_embd, bias)?,
            o: Linear::load(
                source,
                &p,
                "attn_output",
                c.n_embd,
                c.n_head * c.head_dim_v,
                false,
            )?,
            ffn_norm: load_vector(source, &format!("{p}ffn_norm.weight"), c.n_embd)?,
            gate: Linear::load(source, &p, "ffn_gate", c.n_ff, c.n_embd, false)?,
            up: Linear::load(source, &p, "ffn_up", c.n_ff, c.n_embd, false)?,
            down: Linear::load(source, &p, "ffn_down", c.n_embd, c.n_ff, false)?,
            rope: c.rope_params(),
            attn: AttnShape {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim_k: c.head_dim_k,
                head_dim_v: c.head_dim_v,
                scale: 1.0 / (c.head_dim_k as f32).sqrt(),
            },
            eps: c.rms_eps,
        })
    }

    fn floats_per_token(c: &ModelConfig) -> usize {
        let nq = c.n_head * c.head_dim_k;
        let nkv = c.n_head_kv * (c.head_dim_k + c.head_dim_v);
        let nqv = c.n_head * c.head_dim_v;
        3 * c.n_embd + (nq + nkv + 2 * nqv).max(2 * c.n_ff)
    }

    fn forward(&self, x: &mut Mat, seqs: &[SeqSpan], ctx: &mut LayerCtx<'_>) -> Result<()> {
        // Attention.
        let mut h = x.clone();
        ops::rms_norm(&mut h, &self.attn_norm, self.eps);
        let [mut q, mut k, v] = Linear::apply_all(ctx, &h, [&self.q, &self.k, &self.v]);
        drop(h);
        let a = &self.attn;
        ops::rope(&mut q, seqs, a.n_head, a.head_dim_k, 0, &self.rope);
        ops::rope(&mut k, seqs, a.n_head_kv, a.head_dim_k, 0, &self.rope);
        let att = ctx.attention(&q, &k, &v, seqs, a);
        drop((q, k, v));
        let o = self.o.apply(ctx, &att);
        drop(att);
        ops::add_assign(x, &o);
        drop(o);

        // Feed-forward.
        let mut h = x.clone();
        ops::rms_norm(&mut h, &self.ffn_norm, self.eps);
        let [mut g, u] = Linear::apply_all(ctx, &h, [&self.gate, &self.up]);
        drop(h);
        ops::swiglu(&mut g, &u);
        drop(u);
        let d = self.down.apply(ctx, &g);
        drop(g);
        ops::add_assign(x, &d);
        Ok(())
    }
}
