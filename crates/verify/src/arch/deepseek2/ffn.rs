//! The feed-forward half of a deepseek2 block: dense SwiGLU for the leading layers, otherwise the
//! routed experts plus the shared expert (REFERENCE §5.2, §5.5).
//!
//! Experts are evaluated **grouped**: the tokens routed to expert e are gathered into one matrix
//! and pass through e's gate/up/down as three GEMMs, then are scattered back, weighted. This is
//! what makes layer-major evaluation of a 256-expert layer fast (one GEMM per expert over all
//! chunks' tokens instead of a matrix-vector product per token and expert), and it hands the
//! calibration observer exactly the rows llama-imatrix's `MUL_MAT_ID` sees for each expert.
//!
//! Experts are **streamed**: the block keeps only its router and shared expert resident; during
//! `forward` each expert that received tokens is dequantized from the source (its rows of the
//! stacked `*_exps` tensors), multiplied and dropped. All 256 experts of an R1 layer would be
//! ~45 GB as f32; one is 176 MB. The layer's experts run on the engine's backend
//! ([`crate::backend::Backend::moe_experts`]): on the CPU expert by expert
//! ([`crate::backend::Backend::expert_ffn`]: the source dequantizes each into reused host
//! buffers and `gemm_into` multiplies; up to [`crate::backend::Backend::experts_at_once`] in
//! parallel, one per thread, their outputs added in expert order so the sums and the
//! observer's calls are those of one expert at a time); CUDA uploads the layer's input once,
//! each expert's raw bytes, and gathers, multiplies and scatters on the GPU.

use std::fmt;

use crate::backend::{ExpertObserver, MoeJob};
use crate::engine::LayerCtx;
use crate::error::Result;
use crate::ops;
use crate::source::WeightSource;
use crate::tensor::Mat;

use super::router::{route, RouterParams};

/// A plain SwiGLU MLP: `down(silu(gate·x) ⊙ up·x)`.
#[derive(Debug, Clone)]
pub struct DenseFfn {
    /// `ffn_gate{suffix}` as `[n_ff, n_embd]`.
    pub gate: Mat,
    /// `ffn_up{suffix}` as `[n_ff, n_embd]`.
    pub up: Mat,
    /// `ffn_down{suffix}` as `[n_embd, n_ff]`.
    pub down: Mat,
    /// Tensor name prefix for the observer, e.g. `blk.0.ffn_` (names are `{prefix}gate{suffix}.weight`).
    pub prefix: String,
    /// `""` for the dense layers, `"_shexp"` for the shared expert.
    pub suffix: &'static str,
}

impl DenseFfn {
    fn name(&self, t: &str) -> String {
        format!("{}{t}{}.weight", self.prefix, self.suffix)
    }

    /// The gate and up projections as `(name, weight)`, for a caller that computes them
    /// together with other projections of the same input ([`LayerCtx::matmuls`]).
    pub fn gate_up(&self) -> [(String, &Mat); 2] {
        [(self.name("gate"), &self.gate), (self.name("up"), &self.up)]
    }

    /// `[T, n_embd]` → `[T, n_embd]`.
    pub fn forward(&self, x: &Mat, ctx: &LayerCtx<'_>) -> Mat {
        let [(gn, gw), (un, uw)] = self.gate_up();
        let [g, u]: [Mat; 2] = ctx
            .matmuls(x, &[(&gn, gw), (&un, uw)])
            .try_into()
            .expect("two products");
        self.finish(g, u, ctx)
    }

    /// `down(silu(g) ⊙ u)` from the gate and up products.
    pub fn finish(&self, mut g: Mat, u: Mat, ctx: &LayerCtx<'_>) -> Mat {
        ops::swiglu(&mut g, &u);
        drop(u);
        ctx.matmul(&self.name("down"), &g, &self.down)
    }
}

/// The routed experts of one MoE layer plus its shared expert. The experts stay in `source`
/// and are dequantized one at a time during [`Moe::forward`] (module docs).
#[derive(Clone)]
pub struct Moe<'s> {
    /// Layer index, for the tensor names.
    pub layer: usize,
    /// `ffn_gate_inp` as `[n_expert, n_embd]`.
    pub router: Mat,
    /// `exp_probs_b.bias` (`n_expert` values), added to the scores for selection only.
    pub bias: Option<Vec<f32>>,
    /// Routing hyper-parameters.
    pub params: RouterParams,
    /// Model width (`embedding_length`).
    pub n_embd: usize,
    /// Expert width (`expert_feed_forward_length`).
    pub n_ff: usize,
    /// Where `ffn_{gate,up,down}_exps` are read from. Their dims were checked at load:
    /// gate/up {n_embd, n_ff, n_expert} (expert e = rows `e·n_ff .. (e+1)·n_ff` of the
    /// `[n_expert·n_ff, n_embd]` view), down {n_ff, n_embd, n_expert} (rows `e·n_embd ..`).
    pub source: &'s dyn WeightSource,
    /// The shared expert(s) (`*_shexp`), absent when `expert_shared_count` is 0.
    pub shared: Option<DenseFfn>,
}

impl fmt::Debug for Moe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Moe")
            .field("layer", &self.layer)
            .field("router", &self.router)
            .field("bias", &self.bias)
            .field("params", &self.params)
            .field("n_embd", &self.n_embd)
            .field("n_ff", &self.n_ff)
            .field("source", &self.source.description())
            .field("shared", &self.shared)
            .finish()
    }
}

impl Moe<'_> {
    fn name(&self, tensor: &str) -> String {
        format!("blk.{}.{tensor}.weight", self.layer)
    }

    /// `[T, n_embd]` → `[T, n_embd]`: Σ over each token's experts of weight · expert(x), plus the
    /// shared expert. Fails only when an expert cannot be read from the source.
    pub fn forward(&self, x: &Mat, ctx: &LayerCtx<'_>) -> Result<Mat> {
        let (t, n_embd) = (x.rows, x.cols);
        // The router and the shared expert's gate and up read the same input: one call.
        let router = self.name("ffn_gate_inp");
        let (logits, shared_gu) = match &self.shared {
            Some(shared) => {
                let [(gn, gw), (un, uw)] = shared.gate_up();
                let [l, g, u]: [Mat; 3] = ctx
                    .matmuls(x, &[(&router, &self.router), (&gn, gw), (&un, uw)])
                    .try_into()
                    .expect("three products");
                (l, Some((g, u)))
            }
            None => (ctx.matmul(&router, x, &self.router), None),
        };
        let routing = route(&logits.data, t, self.bias.as_deref(), &self.params);
        drop(logits);

        let names = [
            self.name("ffn_gate_exps"),
            self.name("ffn_up_exps"),
            self.name("ffn_down_exps"),
        ];
        let by_expert = routing.by_expert(self.params.n_expert);
        let active: Vec<(usize, &[(usize, f32)])> = by_expert
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(e, l)| (e, l.as_slice()))
            .collect();
        let job = MoeJob {
            source: self.source,
            names: names.each_ref().map(String::as_str),
            n_embd,
            n_ff: self.n_ff,
            x,
            active: &active,
        };
        let mut observe = |e: usize, xe: &Mat, g: &Mat| {
            ctx.observe_expert(&names[0], e, xe);
            ctx.observe_expert(&names[1], e, xe);
            ctx.observe_expert(&names[2], e, g);
        };
        let observe: Option<&mut ExpertObserver<'_>> = if ctx.observing() {
            Some(&mut observe)
        } else {
            None
        };
        let mut y = ctx.backend().moe_experts(&job, observe)?;
        if let (Some(shared), Some((g, u))) = (&self.shared, shared_gu) {
            let s = shared.finish(g, u, ctx);
            ops::add_assign(&mut y, &s);
        }
        Ok(y)
    }
}
