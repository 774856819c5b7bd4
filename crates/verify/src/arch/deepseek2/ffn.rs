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
//! ~45 GB as f32; one is 176 MB. Experts are independent, so up to
//! [`crate::engine::experts_in_flight`] of them (one per thread) are dequantized and multiplied
//! in parallel, each in a reused buffer set; their outputs are added to the result in expert
//! order, so the sums (and the observer's calls) are the same as one expert at a time.

use std::fmt;

use rayon::prelude::*;

use crate::engine::{experts_in_flight, LayerCtx};
use crate::error::Result;
use crate::ops::{self, gemm_into, MatRef, Rhs};
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

/// One expert's weights and activations; one set per expert in flight, reused across experts
/// (`Vec`s keep their capacity, so after the first wave nothing is allocated).
struct ExpertBufs {
    /// The expert handled in this slot.
    expert: usize,
    /// gate `[n_ff, n_embd]`, up `[n_ff, n_embd]`, down `[n_embd, n_ff]`.
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    /// The routed tokens' inputs `[n, n_embd]`.
    x: Mat,
    /// silu(gate·x) ⊙ up·x `[n, n_ff]` (the down projection's input).
    g: Mat,
    /// up·x `[n, n_ff]`.
    u: Mat,
    /// The expert's output `[n, n_embd]`.
    y: Mat,
}

impl ExpertBufs {
    fn new() -> ExpertBufs {
        ExpertBufs {
            expert: 0,
            gate: Vec::new(),
            up: Vec::new(),
            down: Vec::new(),
            x: Mat::zeros(0, 0),
            g: Mat::zeros(0, 0),
            u: Mat::zeros(0, 0),
            y: Mat::zeros(0, 0),
        }
    }
}

/// Resizes `m` to `[rows, cols]` without shrinking its allocation (contents unspecified).
fn reshape(m: &mut Mat, rows: usize, cols: usize) {
    m.data.resize(rows * cols, 0.0);
    m.rows = rows;
    m.cols = cols;
}

impl Moe<'_> {
    fn name(&self, tensor: &str) -> String {
        format!("blk.{}.{tensor}.weight", self.layer)
    }

    /// Dequantizes expert `e` into `b` and runs it over the tokens in `list` (rows of `x`).
    fn run_expert(
        &self,
        b: &mut ExpertBufs,
        e: usize,
        list: &[(usize, f32)],
        x: &Mat,
        names: &[String; 3],
        parallel: bool,
    ) -> Result<()> {
        let (n, n_embd, n_ff) = (list.len(), self.n_embd, self.n_ff);
        let [gate_name, up_name, down_name] = names;
        b.expert = e;
        // Each of the three matrices holds n_ff·n_embd values.
        for (buf, name, rows) in [
            (&mut b.gate, gate_name, n_ff),
            (&mut b.up, up_name, n_ff),
            (&mut b.down, down_name, n_embd),
        ] {
            buf.resize(n_ff * n_embd, 0.0);
            let r = (e * rows) as u64..((e + 1) * rows) as u64;
            self.source.load_row_range_into(name, r, buf)?;
        }
        reshape(&mut b.x, n, n_embd);
        for (dst, &(tok, _)) in b.x.data.chunks_exact_mut(n_embd).zip(list) {
            dst.copy_from_slice(x.row(tok));
        }
        reshape(&mut b.g, n, n_ff);
        reshape(&mut b.u, n, n_ff);
        let gw = MatRef::slice(&b.gate, n_embd, 0, n_ff, 0, n_embd);
        let uw = MatRef::slice(&b.up, n_embd, 0, n_ff, 0, n_embd);
        let xv = ops::view(&b.x);
        // `dst = a · wᵀ`.
        let mm = |dst: &mut [f32], n_out, a, w| {
            gemm_into(dst, n_out, a, w, Rhs::Transposed, false, parallel);
        };
        mm(&mut b.g.data, n_ff, xv, gw);
        mm(&mut b.u.data, n_ff, xv, uw);
        ops::swiglu(&mut b.g, &b.u);
        reshape(&mut b.y, n, n_embd);
        let dw = MatRef::slice(&b.down, n_ff, 0, n_embd, 0, n_ff);
        let gv = ops::view(&b.g);
        mm(&mut b.y.data, n_embd, gv, dw);
        Ok(())
    }

    /// `[T, n_embd]` → `[T, n_embd]`: Σ over each token's experts of weight · expert(x), plus the
    /// shared expert. Fails only when an expert cannot be read from the source.
    pub fn forward(&self, x: &Mat, ctx: &LayerCtx<'_>) -> Result<Mat> {
        let (t, n_embd) = (x.rows, x.cols);
        let logits = ctx.matmul(&self.name("ffn_gate_inp"), x, &self.router);
        let routing = route(&logits.data, t, self.bias.as_deref(), &self.params);
        drop(logits);

        let mut y = Mat::zeros(t, n_embd);
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
        let slots = experts_in_flight(active.len());
        let mut bufs: Vec<ExpertBufs> = (0..slots).map(|_| ExpertBufs::new()).collect();
        // With fewer experts than threads, let each GEMM use the idle threads too.
        let parallel = active.len() < rayon::current_num_threads();
        for wave in active.chunks(slots) {
            bufs.par_iter_mut()
                .zip(wave.par_iter())
                .map(|(b, &(e, list))| self.run_expert(b, e, list, x, &names, parallel))
                .collect::<Result<()>>()?;
            // In expert order: the observer's calls and the additions are those of a
            // one-expert-at-a-time loop.
            for (b, &(_, list)) in bufs.iter().zip(wave) {
                ctx.observe_expert(&names[0], b.expert, &b.x);
                ctx.observe_expert(&names[1], b.expert, &b.x);
                ctx.observe_expert(&names[2], b.expert, &b.g);
                for (src, &(tok, w)) in b.y.data.chunks_exact(n_embd).zip(list) {
                    for (a, v) in y.row_mut(tok).iter_mut().zip(src) {
                        *a += w * v;
                    }
                }
            }
        }
        drop(bufs);
        if let Some(shared) = &self.shared {
            let s = shared.forward(x, ctx);
            ops::add_assign(&mut y, &s);
        }
        Ok(y)
    }
}
