//! Causal multi-head attention with grouped K/V heads (GQA/MQA), per sequence span.
//!
//! The fast path multiplies per-head column slices with the GEMM (Q·Kᵀ for a block of queries,
//! then P·V), block by block so the score buffer stays `ATTN_Q_BLOCK × len`, parallel over
//! (sequence, head). [`attention_naive`] is the readable reference the tests compare against.

use rayon::prelude::*;

use super::gemm::{gemm_into, MatRef, Rhs};
use crate::tensor::{Mat, SeqSpan};

/// Queries per score block: the attention working set is this many rows of scores per thread.
pub const ATTN_Q_BLOCK: usize = 128;

/// Head layout and scale of one attention call.
///
/// `q` rows hold `n_head` heads of `head_dim_k`; `k` rows `n_head_kv` heads of `head_dim_k`;
/// `v` rows `n_head_kv` heads of `head_dim_v`. Query head h uses K/V head h / (n_head/n_head_kv)
/// (llama.cpp's broadcast: consecutive query heads share a K/V head).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`).
    pub n_head_kv: usize,
    /// Width of each query and key head.
    pub head_dim_k: usize,
    /// Width of each value (and output) head.
    pub head_dim_v: usize,
    /// Multiplies Q·Kᵀ before the softmax (1/√head_dim for standard attention).
    pub scale: f32,
}

impl AttnShape {
    /// Panics (internal invariant, as every op here) unless q, k and v have this shape's
    /// widths and the same number of rows.
    pub(crate) fn check(&self, q: &Mat, k: &Mat, v: &Mat) {
        assert!(self.n_head_kv > 0 && self.n_head.is_multiple_of(self.n_head_kv));
        assert!(
            q.cols == self.n_head * self.head_dim_k,
            "attention: q width"
        );
        assert!(
            k.cols == self.n_head_kv * self.head_dim_k,
            "attention: k width"
        );
        assert!(
            v.cols == self.n_head_kv * self.head_dim_v,
            "attention: v width"
        );
        assert!(
            q.rows == k.rows && k.rows == v.rows,
            "attention: row counts"
        );
    }
}

/// Causal attention: for each span and query position i, output head h =
/// Σ_{j ≤ i} softmax_j(scale · q_h(i)·k_g(j)) · v_g(j). Returns `[q.rows, n_head·head_dim_v]`;
/// rows outside every span are zero. Scores and softmax in f32 with an f64 normaliser sum.
pub fn attention(q: &Mat, k: &Mat, v: &Mat, seqs: &[SeqSpan], s: &AttnShape) -> Mat {
    s.check(q, k, v);
    let (dk, dv) = (s.head_dim_k, s.head_dim_v);
    let group = s.n_head / s.n_head_kv;
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|si| (0..s.n_head).map(move |h| (si, h)))
        .collect();
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(si, h)| {
            let span = seqs[si];
            let g = h / group;
            let len = span.len;
            let mut out = vec![0f32; len * dv];
            let mut scores = vec![0f32; ATTN_Q_BLOCK.min(len) * len];
            let mut r0 = 0;
            while r0 < len {
                let r1 = (r0 + ATTN_Q_BLOCK).min(len);
                let (bq, nk) = (r1 - r0, r1);
                let qv = MatRef::slice(&q.data, q.cols, span.start + r0, bq, h * dk, dk);
                let kv = MatRef::slice(&k.data, k.cols, span.start, nk, g * dk, dk);
                gemm_into(&mut scores, nk, qv, kv, Rhs::Transposed, false, false);
                causal_softmax(&mut scores[..bq * nk], nk, 1, r0, s.scale);
                let pv = MatRef {
                    data: &scores,
                    rows: bq,
                    cols: nk,
                    row_stride: nk,
                };
                let vv = MatRef::slice(&v.data, v.cols, span.start, nk, g * dv, dv);
                gemm_into(&mut out[r0 * dv..], dv, pv, vv, Rhs::Plain, false, false);
                r0 = r1;
            }
            out
        })
        .collect();
    let mut y = Mat::zeros(q.rows, s.n_head * dv);
    for (&(si, h), part) in tasks.iter().zip(&parts) {
        let span = seqs[si];
        for i in 0..span.len {
            y.row_mut(span.start + i)[h * dv..(h + 1) * dv]
                .copy_from_slice(&part[i * dv..(i + 1) * dv]);
        }
    }
    y
}

/// The causal softmax of a block of score rows `[rows, n]` (row-major, `scores.len() / n`
/// rows): row r belongs to query position `first + r / group` of its span (`group` consecutive
/// rows per query: the query heads sharing one K/V head, side by side), so it keeps columns
/// `0 ..= first + r / group` ([`softmax_scaled`]) and the rest become 0. The CUDA kernel
/// `r1q_causal_softmax` is this function in C (`cuda/kernels.rs`), tested against it.
pub(crate) fn causal_softmax(scores: &mut [f32], n: usize, group: usize, first: usize, scale: f32) {
    for (r, row) in scores.chunks_exact_mut(n).enumerate() {
        let n_valid = (first + r / group + 1).min(n);
        softmax_scaled(&mut row[..n_valid], scale);
        row[n_valid..].fill(0.0);
    }
}

/// `row ← softmax(scale · row)`: max-subtracted, f64 sum (as ggml's `soft_max` accumulates).
fn softmax_scaled(row: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for x in row.iter_mut() {
        *x *= scale;
        max = max.max(*x);
    }
    let mut sum = 0f64;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += f64::from(*x);
    }
    let inv = (1.0 / sum) as f32;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// The reference: triple loops, one query at a time, same result as [`attention`] up to
/// summation order.
pub fn attention_naive(q: &Mat, k: &Mat, v: &Mat, seqs: &[SeqSpan], s: &AttnShape) -> Mat {
    s.check(q, k, v);
    let (dk, dv) = (s.head_dim_k, s.head_dim_v);
    let group = s.n_head / s.n_head_kv;
    let mut y = Mat::zeros(q.rows, s.n_head * dv);
    for span in seqs {
        for i in 0..span.len {
            for h in 0..s.n_head {
                let g = h / group;
                let qi = &q.row(span.start + i)[h * dk..(h + 1) * dk];
                let mut w: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k.row(span.start + j)[g * dk..(g + 1) * dk];
                        let dot: f64 = qi.iter().zip(kj).map(|(a, b)| f64::from(a * b)).sum();
                        dot * f64::from(s.scale)
                    })
                    .collect();
                let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = w
                    .iter_mut()
                    .map(|x| {
                        *x = (*x - max).exp();
                        *x
                    })
                    .sum();
                let out = &mut y.row_mut(span.start + i)[h * dv..(h + 1) * dv];
                for (j, wj) in w.iter().enumerate() {
                    let vj = &v.row(span.start + j)[g * dv..(g + 1) * dv];
                    for (o, x) in out.iter_mut().zip(vj) {
                        *o += (wj / sum * f64::from(*x)) as f32;
                    }
                }
            }
        }
    }
    y
}
