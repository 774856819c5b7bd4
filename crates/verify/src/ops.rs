//! The numerical building blocks of every architecture's forward pass, on [`Mat`] activations
//! (rows = tokens) and ggml-layout weights (rows = output features).
//!
//! Why here and not per architecture: llama, qwen2 and deepseek2 share every op, and each op is
//! written once as a clear scalar loop (the reference) with the hot ones (matmul, attention)
//! routed through the GEMM crate and parallelised with rayon over rows or heads. Numerics follow
//! ggml's CPU backend where it matters for parity with llama.cpp (f64 sums in RMSNorm and
//! softmax, f32 everywhere else).

pub mod attention;
pub mod gemm;
pub mod rope;

use rayon::prelude::*;

pub use attention::{attention, attention_naive, AttnShape};
pub use gemm::{gemm_into, MatRef, Rhs};
pub use rope::{rope, rope_neox, rope_norm, yarn_corr_dims, RopeMode, RopeParams};

use crate::tensor::Mat;

/// Rows per parallel piece for the element-wise ops.
const ROWS_PER_TASK: usize = 16;

/// `y = x · wᵀ`: x is `[T, in]` (activations), w is `[out, in]` (a ggml weight), y is `[T, out]`.
/// One multithreaded GEMM over all tokens. Panics (internal invariant) if `x.cols != w.cols`.
pub fn matmul(x: &Mat, w: &Mat) -> Mat {
    let mut y = Mat::zeros(x.rows, w.rows);
    matmul_into(x, w, &mut y);
    y
}

/// [`matmul`] into an existing `[T, out]` matrix (overwritten).
pub fn matmul_into(x: &Mat, w: &Mat, y: &mut Mat) {
    assert_eq!(x.cols, w.cols, "matmul: input widths differ");
    assert!(y.rows == x.rows && y.cols == w.rows, "matmul: output shape");
    gemm_into(
        &mut y.data,
        y.cols,
        view(x),
        view(w),
        Rhs::Transposed,
        false,
        true,
    );
}

/// The scalar reference of [`matmul`] (f64 accumulation), for tests.
pub fn matmul_naive(x: &Mat, w: &Mat) -> Mat {
    assert_eq!(x.cols, w.cols);
    let mut y = Mat::zeros(x.rows, w.rows);
    for t in 0..x.rows {
        for o in 0..w.rows {
            let s: f64 = x
                .row(t)
                .iter()
                .zip(w.row(o))
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            y.row_mut(t)[o] = s as f32;
        }
    }
    y
}

/// A whole-matrix view for [`gemm_into`].
pub fn view(m: &Mat) -> MatRef<'_> {
    MatRef {
        data: &m.data,
        rows: m.rows,
        cols: m.cols,
        row_stride: m.cols,
    }
}

/// Adds `bias` (length `x.cols`) to every row.
pub fn add_bias(x: &mut Mat, bias: &[f32]) {
    assert_eq!(bias.len(), x.cols, "add_bias: width");
    let cols = x.cols;
    x.data
        .par_chunks_mut(cols * ROWS_PER_TASK)
        .for_each(|rows| {
            for row in rows.chunks_mut(cols) {
                for (a, b) in row.iter_mut().zip(bias) {
                    *a += b;
                }
            }
        });
}

/// `x += y` element-wise (the residual connection).
pub fn add_assign(x: &mut Mat, y: &Mat) {
    assert!(x.rows == y.rows && x.cols == y.cols, "add_assign: shapes");
    x.data
        .par_chunks_mut(4096)
        .zip(y.data.par_chunks(4096))
        .for_each(|(a, b)| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}

/// RMSNorm of one vector in place: `v ← v / √(mean(v²) + eps) ⊙ weight` (ggml: the sum of
/// squares in f64, the mean and scale in f32). `weight` may be empty for no weight.
pub fn rms_norm_slice(v: &mut [f32], weight: &[f32], eps: f32) {
    let sum: f64 = v.iter().map(|x| f64::from(x * x)).sum();
    let mean = (sum / v.len().max(1) as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    if weight.is_empty() {
        v.iter_mut().for_each(|x| *x *= scale);
    } else {
        for (x, w) in v.iter_mut().zip(weight) {
            *x = (*x * scale) * w;
        }
    }
}

/// RMSNorm of every row in place with `weight` (length `x.cols`).
pub fn rms_norm(x: &mut Mat, weight: &[f32], eps: f32) {
    assert_eq!(weight.len(), x.cols, "rms_norm: weight width");
    let cols = x.cols;
    x.data
        .par_chunks_mut(cols * ROWS_PER_TASK)
        .for_each(|rows| {
            for row in rows.chunks_mut(cols) {
                rms_norm_slice(row, weight, eps);
            }
        });
}

/// SiLU of one value: `x · σ(x)` = `x / (1 + e^(−x))`.
#[inline]
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SiLU in place.
pub fn silu(x: &mut Mat) {
    x.data.par_chunks_mut(4096).for_each(|c| {
        c.iter_mut().for_each(|v| *v = silu_f32(*v));
    });
}

/// SwiGLU: `gate ← silu(gate) ⊙ up` (the input of `ffn_down`).
pub fn swiglu(gate: &mut Mat, up: &Mat) {
    assert!(
        gate.rows == up.rows && gate.cols == up.cols,
        "swiglu: shapes"
    );
    gate.data
        .par_chunks_mut(4096)
        .zip(up.data.par_chunks(4096))
        .for_each(|(g, u)| {
            for (g, u) in g.iter_mut().zip(u) {
                *g = silu_f32(*g) * u;
            }
        });
}

/// Softmax of one row in place (max-subtracted, f64 normaliser).
pub fn softmax_slice(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += f64::from(*x);
    }
    let inv = (1.0 / sum) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
}

/// Softmax of every row in place.
pub fn softmax(x: &mut Mat) {
    let cols = x.cols.max(1);
    x.data.par_chunks_mut(cols).for_each(softmax_slice);
}

/// Index of the first maximum (llama-perplexity's "same top" uses the first on ties); `None` for
/// an empty slice.
pub fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// `log Σ exp(v)` with the max subtracted first, the sum in f64 (llama-perplexity's
/// `log_softmax`: `max + ln Σ exp(x − max)`).
pub fn log_sum_exp(v: &[f32]) -> f64 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = v.iter().map(|&x| f64::from((x - max).exp())).sum();
    f64::from(max) + sum.ln()
}

/// Log-probabilities of a row of logits into `out` (same length).
pub fn log_softmax(v: &[f32], out: &mut [f32]) {
    let lse = log_sum_exp(v);
    for (o, &x) in out.iter_mut().zip(v) {
        *o = (f64::from(x) - lse) as f32;
    }
}

#[cfg(test)]
mod tests;
