//! The feed-forward half of a deepseek2 block: dense SwiGLU for the leading layers, otherwise the
//! routed experts plus the shared expert (REFERENCE §5.2, §5.5).
//!
//! Experts are evaluated **grouped**: the tokens routed to expert e are gathered into one matrix
//! and pass through e's gate/up/down as three GEMMs, then are scattered back, weighted. This is
//! what makes layer-major evaluation of a 256-expert layer fast (one GEMM per expert over all
//! chunks' tokens instead of a matrix-vector product per token and expert), and it hands the
//! calibration observer exactly the rows llama-imatrix's `MUL_MAT_ID` sees for each expert.

use crate::engine::LayerCtx;
use crate::ops::{self, gemm_into, MatRef, Rhs};
use crate::tensor::Mat;

use super::router::{route, RouterParams};

/// Shows expert `e`'s input rows to the observer without a weight matrix of its own (the experts
/// stay one stacked tensor, multiplied through slices): `LayerCtx` reports on `expert_matmul`
/// only, so a zero-row weight makes that call a no-op product.
fn observe_expert(ctx: &LayerCtx<'_>, name: &str, e: usize, x: &Mat) {
    let none = Mat::zeros(0, x.cols);
    let _ = ctx.expert_matmul(name, e, x, &none);
}

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
    /// `[T, n_embd]` → `[T, n_embd]`.
    pub fn forward(&self, x: &Mat, ctx: &LayerCtx<'_>) -> Mat {
        let name = |t: &str| format!("{}{t}{}.weight", self.prefix, self.suffix);
        let mut g = ctx.matmul(&name("gate"), x, &self.gate);
        let u = ctx.matmul(&name("up"), x, &self.up);
        ops::swiglu(&mut g, &u);
        drop(u);
        ctx.matmul(&name("down"), &g, &self.down)
    }
}

/// The routed experts of one MoE layer plus its shared expert.
#[derive(Debug, Clone)]
pub struct Moe {
    /// Layer index, for the observer's tensor names.
    pub layer: usize,
    /// `ffn_gate_inp` as `[n_expert, n_embd]`.
    pub router: Mat,
    /// `exp_probs_b.bias` (`n_expert` values), added to the scores for selection only.
    pub bias: Option<Vec<f32>>,
    /// Routing hyper-parameters.
    pub params: RouterParams,
    /// Expert width (`expert_feed_forward_length`).
    pub n_ff: usize,
    /// `ffn_gate_exps` {n_embd, n_ff, n_expert} as `[n_expert·n_ff, n_embd]`: expert e is rows
    /// `e·n_ff .. (e+1)·n_ff`.
    pub gate: Mat,
    /// `ffn_up_exps`, same layout as `gate`.
    pub up: Mat,
    /// `ffn_down_exps` {n_ff, n_embd, n_expert} as `[n_expert·n_embd, n_ff]`.
    pub down: Mat,
    /// The shared expert(s) (`*_shexp`), absent when `expert_shared_count` is 0.
    pub shared: Option<DenseFfn>,
}

impl Moe {
    fn name(&self, tensor: &str) -> String {
        format!("blk.{}.{tensor}.weight", self.layer)
    }

    /// `[T, n_embd]` → `[T, n_embd]`: Σ over each token's experts of weight · expert(x), plus the
    /// shared expert.
    pub fn forward(&self, x: &Mat, ctx: &LayerCtx<'_>) -> Mat {
        let (t, n_embd, n_ff) = (x.rows, x.cols, self.n_ff);
        let logits = ctx.matmul(&self.name("ffn_gate_inp"), x, &self.router);
        let routing = route(&logits.data, t, self.bias.as_deref(), &self.params);
        drop(logits);

        let mut y = Mat::zeros(t, n_embd);
        let (gate_name, up_name, down_name) = (
            self.name("ffn_gate_exps"),
            self.name("ffn_up_exps"),
            self.name("ffn_down_exps"),
        );
        let n_expert = self.params.n_expert;
        for (e, list) in routing.by_expert(n_expert).iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let n = list.len();
            let mut xe = Mat::zeros(n, n_embd);
            for (dst, &(tok, _)) in xe.data.chunks_exact_mut(n_embd).zip(list) {
                dst.copy_from_slice(x.row(tok));
            }
            observe_expert(ctx, &gate_name, e, &xe);
            observe_expert(ctx, &up_name, e, &xe);
            let mut g = Mat::zeros(n, n_ff);
            let mut u = Mat::zeros(n, n_ff);
            let gw = MatRef::slice(&self.gate.data, n_embd, e * n_ff, n_ff, 0, n_embd);
            let uw = MatRef::slice(&self.up.data, n_embd, e * n_ff, n_ff, 0, n_embd);
            gemm_into(
                &mut g.data,
                n_ff,
                ops::view(&xe),
                gw,
                Rhs::Transposed,
                false,
                true,
            );
            gemm_into(
                &mut u.data,
                n_ff,
                ops::view(&xe),
                uw,
                Rhs::Transposed,
                false,
                true,
            );
            ops::swiglu(&mut g, &u);
            observe_expert(ctx, &down_name, e, &g);
            let dw = MatRef::slice(&self.down.data, n_ff, e * n_embd, n_embd, 0, n_ff);
            // Reuse xe as the expert's output.
            gemm_into(
                &mut xe.data,
                n_embd,
                ops::view(&g),
                dw,
                Rhs::Transposed,
                false,
                true,
            );
            for (src, &(tok, w)) in xe.data.chunks_exact(n_embd).zip(list) {
                for (a, b) in y.row_mut(tok).iter_mut().zip(src) {
                    *a += w * b;
                }
            }
        }
        if let Some(shared) = &self.shared {
            let s = shared.forward(x, ctx);
            ops::add_assign(&mut y, &s);
        }
        y
    }
}
