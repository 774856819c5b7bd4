//! Rotary position embedding exactly as ggml computes it (`ggml_rope_cache_init`, `rope_yarn`,
//! `ggml_rope_yarn_corr_dims` in ggml-cpu): one general routine with per-pair frequency factors
//! (llama3 `rope_freqs`) and YaRN parameters, in both pair conventions.

use rayon::prelude::*;

use crate::tensor::{Mat, SeqSpan};

/// Which elements form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// ggml `LLAMA_ROPE_TYPE_NORM`: adjacent pairs (2i, 2i+1) — llama (on q/k permuted by the
    /// converter) and deepseek2.
    Norm,
    /// ggml `LLAMA_ROPE_TYPE_NEOX`: pairs (i, i + n_rot/2) — qwen2 (HF's rotate_half layout).
    Neox,
}

/// Everything that determines the rotation of pair i at position p.
///
/// θ_i(p) = p · base^(−2i/n_rot) / ff_i (computed iteratively in f32 like ggml), then YaRN:
/// θ = θ·freq_scale·(1 − ramp_i·ext) + θ·ramp_i·ext, with ramp_i = 1 − clamp((i − lo)/max(0.001,
/// hi − lo), 0, 1); cos/sin are multiplied by `attn_factor`, and additionally by
/// 1 + 0.1·ln(1/freq_scale) when `ext_factor ≠ 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    /// Pair convention.
    pub mode: RopeMode,
    /// Rotated dimensions per head (even); the rest of the head is left unchanged.
    pub n_rot: usize,
    /// `rope.freq_base`.
    pub freq_base: f32,
    /// 1/scaling factor for linear and YaRN scaling; 1 without scaling.
    pub freq_scale: f32,
    /// YaRN extrapolation mix: 1 for YaRN, 0 otherwise.
    pub ext_factor: f32,
    /// Magnitude multiplier of cos/sin (1 except for YaRN models; see deepseek2's yarn.rs).
    pub attn_factor: f32,
    /// YaRN ramp bounds in pair indices ([`yarn_corr_dims`]); unused when `ext_factor` is 0.
    pub corr_dims: [f32; 2],
    /// Per-pair divisors of θ (`rope_freqs.weight`, n_rot/2 values); `None` = all 1.
    pub freq_factors: Option<Vec<f32>>,
}

impl RopeParams {
    /// Plain rope (no scaling, no factors): what qwen2 and llama without `rope_freqs` use.
    pub fn plain(mode: RopeMode, n_rot: usize, freq_base: f32) -> RopeParams {
        RopeParams {
            mode,
            n_rot,
            freq_base,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            corr_dims: [0.0, 0.0],
            freq_factors: None,
        }
    }

    /// (cos, sin) of every pair at position `pos`, interleaved: `out[2i] = cos`, `out[2i+1] =
    /// sin` (ggml's cache layout). `out.len()` must be `n_rot`.
    pub fn cache(&self, pos: usize, out: &mut [f32]) {
        let theta_scale = self.freq_base.powf(-2.0 / self.n_rot as f32);
        let mut theta = pos as f32;
        for i in 0..self.n_rot / 2 {
            let ff = self
                .freq_factors
                .as_ref()
                .and_then(|f| f.get(i).copied())
                .unwrap_or(1.0);
            let (c, s) = self.yarn(theta / ff, i);
            out[2 * i] = c;
            out[2 * i + 1] = s;
            theta *= theta_scale;
        }
    }

    /// ggml `rope_yarn` for pair index `i`.
    fn yarn(&self, theta_extrap: f32, i: usize) -> (f32, f32) {
        let theta_interp = self.freq_scale * theta_extrap;
        let mut theta = theta_interp;
        let mut mscale = self.attn_factor;
        if self.ext_factor != 0.0 {
            let [lo, hi] = self.corr_dims;
            let y = (i as f32 - lo) / (hi - lo).max(0.001);
            let ramp_mix = (1.0 - y.clamp(0.0, 1.0)) * self.ext_factor;
            theta = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            mscale *= 1.0 + 0.1 * (1.0 / self.freq_scale).ln();
        }
        (theta.cos() * mscale, theta.sin() * mscale)
    }
}

/// ggml `ggml_rope_yarn_corr_dims`: the YaRN ramp bounds [⌊corr(beta_fast)⌋, ⌈corr(beta_slow)⌉]
/// clamped to [0, n_rot − 1], with corr(b) = n_rot·ln(n_ctx_orig/(2πb))/(2·ln base).
pub fn yarn_corr_dims(
    n_rot: usize,
    n_ctx_orig: usize,
    freq_base: f32,
    beta_fast: f32,
    beta_slow: f32,
) -> [f32; 2] {
    let corr = |b: f32| {
        n_rot as f32 * (n_ctx_orig as f32 / (b * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * freq_base.ln())
    };
    let start = corr(beta_fast).floor();
    let end = corr(beta_slow).ceil();
    [start.max(0.0), end.min(n_rot as f32 - 1.0)]
}

/// Rotates, in place, dims `offset .. offset + n_rot` of each of the `n_head` heads (each
/// `head_stride` wide, starting at column 0) of every row of `x`; a row's position is its index
/// within its sequence span. Rows outside every span are left alone.
///
/// Panics (internal invariant) if the heads do not fit the row or `n_rot` is odd.
pub fn rope(
    x: &mut Mat,
    seqs: &[SeqSpan],
    n_head: usize,
    head_stride: usize,
    offset: usize,
    p: &RopeParams,
) {
    assert!(p.n_rot.is_multiple_of(2), "rope: odd n_rot");
    assert!(offset + p.n_rot <= head_stride && n_head * head_stride <= x.cols);
    let max_len = seqs.iter().map(|s| s.len).max().unwrap_or(0);
    let mut cache = vec![0f32; max_len * p.n_rot];
    cache
        .par_chunks_mut(p.n_rot.max(1))
        .enumerate()
        .for_each(|(pos, c)| p.cache(pos, c));
    let cols = x.cols;
    for s in seqs {
        let rows = &mut x.data[s.start * cols..(s.start + s.len) * cols];
        rows.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(pos, row)| {
                let c = &cache[pos * p.n_rot..(pos + 1) * p.n_rot];
                for h in 0..n_head {
                    let base = h * head_stride + offset;
                    rotate(&mut row[base..base + p.n_rot], c, p.mode);
                }
            });
    }
}

/// Rotates one head slice of `n_rot` values with the interleaved (cos, sin) cache.
fn rotate(v: &mut [f32], cache: &[f32], mode: RopeMode) {
    let half = v.len() / 2;
    for i in 0..half {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let (a, b) = match mode {
            RopeMode::Norm => (2 * i, 2 * i + 1),
            RopeMode::Neox => (i, i + half),
        };
        let (x0, x1) = (v[a], v[b]);
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
}

/// [`rope`] with adjacent pairs, for callers that think in these terms.
pub fn rope_norm(
    x: &mut Mat,
    seqs: &[SeqSpan],
    n_head: usize,
    head_stride: usize,
    offset: usize,
    p: &RopeParams,
) {
    let p = RopeParams {
        mode: RopeMode::Norm,
        ..p.clone()
    };
    rope(x, seqs, n_head, head_stride, offset, &p);
}

/// [`rope`] with pairs (i, i + n_rot/2).
pub fn rope_neox(
    x: &mut Mat,
    seqs: &[SeqSpan],
    n_head: usize,
    head_stride: usize,
    offset: usize,
    p: &RopeParams,
) {
    let p = RopeParams {
        mode: RopeMode::Neox,
        ..p.clone()
    };
    rope(x, seqs, n_head, head_stride, offset, &p);
}
