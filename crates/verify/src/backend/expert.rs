//! One routed MoE expert as a unit of work ([`super::Backend::expert_ffn`]) and the per-head
//! products of MLA ([`super::Backend::head_matmul`]), with their CPU references.

use std::ops::Range;

use crate::error::Result;
use crate::ops::{self, gemm_into, MatRef, Rhs};
use crate::source::WeightSource;
use crate::tensor::Mat;

/// One routed expert of an MoE layer over the tokens routed to it ([`Backend::expert_ffn`]):
/// `g = silu(x · gateᵀ) ⊙ (x · upᵀ)` and `y = g · downᵀ`.
///
/// The stacked tensors are read as 2-D views: gate/up `[n_expert·n_ff, n_embd]` (expert e =
/// rows `e·n_ff .. (e+1)·n_ff`), down `[n_expert·n_embd, n_ff]` (rows `e·n_embd ..`).
#[derive(Clone, Copy)]
pub struct ExpertJob<'a> {
    /// Where the stacked expert tensors are read from.
    pub source: &'a dyn WeightSource,
    /// GGUF names of `ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps` (in that order).
    pub names: [&'a str; 3],
    /// The expert index e.
    pub expert: usize,
    /// Model width.
    pub n_embd: usize,
    /// Expert width.
    pub n_ff: usize,
    /// The routed tokens' inputs, gathered: `[n, n_embd]`.
    pub x: &'a Mat,
    /// Whether the CPU GEMMs may use all threads (false while several experts run at once).
    pub parallel: bool,
}

impl ExpertJob<'_> {
    /// `[rows, cols]` of expert weight `i` (0 gate, 1 up, 2 down).
    pub fn shape(&self, i: usize) -> (usize, usize) {
        if i == 2 {
            (self.n_embd, self.n_ff)
        } else {
            (self.n_ff, self.n_embd)
        }
    }

    /// The rows of weight `i`'s 2-D view that hold this expert.
    pub fn rows(&self, i: usize) -> Range<u64> {
        let per = self.shape(i).0 as u64;
        let e = self.expert as u64;
        e * per..(e + 1) * per
    }
}

/// What [`Backend::expert_ffn`] produces, plus the host buffers the CPU path reuses from expert
/// to expert (`Vec`s keep their capacity: after the first expert nothing is allocated).
#[derive(Debug, Clone)]
pub struct ExpertOut {
    /// `silu(x · gateᵀ) ⊙ (x · upᵀ)` `[n, n_ff]`: the down projection's input, which the
    /// calibration observer sees for `ffn_down_exps`.
    pub g: Mat,
    /// The expert's output `[n, n_embd]`.
    pub y: Mat,
    /// gate, up, down as host f32 (the CPU path; a device backend's fallback for weights it
    /// has no raw bytes for).
    pub(crate) weights: [Vec<f32>; 3],
    /// `x · upᵀ` `[n, n_ff]` (the CPU path).
    u: Mat,
}

impl Default for ExpertOut {
    fn default() -> ExpertOut {
        ExpertOut {
            g: Mat::zeros(0, 0),
            y: Mat::zeros(0, 0),
            weights: Default::default(),
            u: Mat::zeros(0, 0),
        }
    }
}

/// The CPU reference of [`Backend::expert_ffn`] (and its default): each weight dequantized by
/// the source into the reused host buffers (`load_row_range_into`), three `gemm_into` on
/// slices of them, [`ops::swiglu`] between.
pub fn expert_ffn_cpu(job: &ExpertJob<'_>, out: &mut ExpertOut) -> Result<()> {
    let (n, n_embd, n_ff) = (job.x.rows, job.n_embd, job.n_ff);
    // Each of the three matrices holds n_ff·n_embd values.
    for (i, buf) in out.weights.iter_mut().enumerate() {
        buf.resize(n_ff * n_embd, 0.0);
        job.source
            .load_row_range_into(job.names[i], job.rows(i), buf)?;
    }
    let [gate, up, down] = &out.weights;
    out.g.reshape(n, n_ff);
    out.u.reshape(n, n_ff);
    let gw = MatRef::slice(gate, n_embd, 0, n_ff, 0, n_embd);
    let uw = MatRef::slice(up, n_embd, 0, n_ff, 0, n_embd);
    let xv = ops::view(job.x);
    // `dst = a · wᵀ`.
    let mm = |dst: &mut [f32], n_out, a, w| {
        gemm_into(dst, n_out, a, w, Rhs::Transposed, false, job.parallel);
    };
    mm(&mut out.g.data, n_ff, xv, gw);
    mm(&mut out.u.data, n_ff, xv, uw);
    ops::swiglu(&mut out.g, &out.u);
    out.y.reshape(n, n_embd);
    let dw = MatRef::slice(down, n_ff, 0, n_embd, 0, n_ff);
    mm(&mut out.y.data, n_embd, ops::view(&out.g), dw);
    Ok(())
}

/// The CPU reference of [`Backend::head_matmul`] (and its default): one multithreaded
/// `gemm_into` per head on column slices of x and row slices of w, straight into y's columns.
pub fn head_matmul_cpu(x: &Mat, w: &Mat, heads: usize, y: &mut Mat, col_stride: usize) {
    check_head_matmul(x, w, heads, y, col_stride);
    let (inp, out) = (w.cols, w.rows / heads.max(1));
    for head in 0..heads {
        let xv = MatRef::slice(&x.data, x.cols, 0, x.rows, head * inp, inp);
        let wv = MatRef::slice(&w.data, inp, head * out, out, 0, inp);
        gemm_into(
            &mut y.data[head * col_stride..],
            y.cols,
            xv,
            wv,
            Rhs::Transposed,
            false,
            true,
        );
    }
}

/// Panics (internal invariant) unless x, w and y fit [`Backend::head_matmul`]'s layout.
pub(crate) fn check_head_matmul(x: &Mat, w: &Mat, heads: usize, y: &Mat, col_stride: usize) {
    assert!(
        heads > 0 && w.rows.is_multiple_of(heads),
        "head_matmul: {} weight rows for {heads} heads",
        w.rows
    );
    let out = w.rows / heads;
    assert_eq!(x.cols, heads * w.cols, "head_matmul: input width");
    assert_eq!(x.rows, y.rows, "head_matmul: row counts");
    assert!(
        col_stride >= out && (heads - 1) * col_stride + out <= y.cols,
        "head_matmul: output columns"
    );
}
