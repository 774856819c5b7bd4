//! Multi-head latent attention in the **absorbed** form (REFERENCE §5.3), the form llama.cpp uses
//! for every current GGUF (`attn_k_b`/`attn_v_b` present).
//!
//! Why absorbed rather than the naive per-head expansion: it is what llama.cpp evaluates, it is
//! how the calibration statistics of `attn_k_b` (input q_nope per head) and `attn_v_b` (input the
//! latent attention output per head) are defined (§6.1), and attention runs over the 512-wide
//! latent once for all heads (MQA) instead of expanding keys and values per head.

use crate::engine::LayerCtx;
use crate::ops::{self, rope, AttnShape};
use crate::tensor::{Mat, SeqSpan};

use super::yarn::YarnScales;

/// How queries are produced.
#[derive(Debug, Clone)]
pub enum QProj {
    /// `attn_q_a` → RMSNorm(`attn_q_a_norm`) → `attn_q_b` (V3/R1: q_lora_rank 1536).
    LowRank {
        /// `attn_q_a` as `[q_lora_rank, n_embd]`.
        a: Mat,
        /// `attn_q_a_norm`, `q_lora_rank` values.
        a_norm: Vec<f32>,
        /// `attn_q_b` as `[n_head·(nope+rope), q_lora_rank]`.
        b: Mat,
    },
    /// `attn_q` as `[n_head·(nope+rope), n_embd]` ("lite" models without q_lora_rank).
    Direct(Mat),
}

/// The sizes of one MLA layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaDims {
    /// Attention heads (H).
    pub n_head: usize,
    /// `qk_nope_head_dim` (128): the part of each query/key head without rope.
    pub nope: usize,
    /// `qk_rope_head_dim` (64, `n_rot`): the roped part; its key is shared by all heads.
    pub rope: usize,
    /// `kv_lora_rank` (512): the latent width, which is also the absorbed key/value width.
    pub kv_lora: usize,
    /// `v_head_dim` (128).
    pub v_head: usize,
}

impl MlaDims {
    /// Width of one query head before absorption (`key_length_mla`, 192).
    pub fn q_head(&self) -> usize {
        self.nope + self.rope
    }
    /// Width of one absorbed query/key head (`key_length`, 576).
    pub fn k_abs(&self) -> usize {
        self.kv_lora + self.rope
    }
}

/// The weights of one MLA layer, in the engine's `[out, in]` layout.
#[derive(Debug, Clone)]
pub struct Mla {
    /// Layer index, for the observer's tensor names.
    pub layer: usize,
    /// Sizes.
    pub dims: MlaDims,
    /// Query projection.
    pub q: QProj,
    /// `attn_kv_a_mqa` as `[kv_lora + rope, n_embd]`.
    pub kv_a: Mat,
    /// `attn_kv_a_norm`, `kv_lora` values.
    pub kv_a_norm: Vec<f32>,
    /// `attn_k_b` {nope, kv_lora, H}: rows `h·kv_lora .. (h+1)·kv_lora` (width `nope`) are head h.
    pub k_b: Mat,
    /// `attn_v_b` {kv_lora, v_head, H}: rows `h·v_head .. (h+1)·v_head` (width `kv_lora`) are
    /// head h.
    pub v_b: Mat,
    /// `attn_output` as `[n_embd, H·v_head]`.
    pub out: Mat,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Softmax scale and rope.
    pub yarn: YarnScales,
}

impl Mla {
    fn name(&self, tensor: &str) -> String {
        format!("blk.{}.{tensor}.weight", self.layer)
    }

    /// Attention of the normalised hidden states `h` (`[T, n_embd]`, all sequences) → the
    /// `attn_output` projection `[T, n_embd]` (the caller adds the residual).
    ///
    /// The observer sees, besides the plain projections, `attn_k_b`'s input as one `[T, H·nope]`
    /// matrix (q_nope of head h in columns `h·nope ..`) and `attn_v_b`'s as `[T, H·kv_lora]`
    /// (the latent output of head h in columns `h·kv_lora ..`): for a 3-D weight {ncols, nrows,
    /// H} an input row holds the H slices side by side, which is how ggml's `MUL_MAT` presents
    /// them to llama-imatrix (slice h of each token row; count += tokens).
    pub fn forward(&self, h: &Mat, seqs: &[SeqSpan], ctx: &LayerCtx<'_>) -> Mat {
        let d = self.dims;
        let t = h.rows;
        let (qh, ka) = (d.q_head(), d.k_abs());
        if t == 0 {
            return Mat::zeros(0, self.out.rows);
        }

        // 1. Queries {192, H, T}.
        let mut q = match &self.q {
            QProj::LowRank { a, a_norm, b } => {
                let mut qa = ctx.matmul(&self.name("attn_q_a"), h, a);
                ops::rms_norm(&mut qa, a_norm, self.eps);
                ctx.matmul(&self.name("attn_q_b"), &qa, b)
            }
            QProj::Direct(w) => ctx.matmul(&self.name("attn_q"), h, w),
        };
        // 2. Latent and shared rope key {576, T}.
        let mut kv = ctx.matmul(&self.name("attn_kv_a_mqa"), h, &self.kv_a);
        // 3. Rope on q_pe (the last `rope` dims of each head) and k_pe; norm the latent.
        rope(&mut q, seqs, d.n_head, qh, d.nope, &self.yarn.rope);
        rope(&mut kv, seqs, 1, ka, d.kv_lora, &self.yarn.rope);
        let mut k = kv; // [T, kv_lora + rope]: K = concat(c, k_pe) once c is normed in place.
        for row in k.data.chunks_exact_mut(ka) {
            ops::rms_norm_slice(&mut row[..d.kv_lora], &self.kv_a_norm, self.eps);
        }
        let mut v = Mat::zeros(t, d.kv_lora);
        for (dst, src) in v
            .data
            .chunks_exact_mut(d.kv_lora)
            .zip(k.data.chunks_exact(ka))
        {
            dst.copy_from_slice(&src[..d.kv_lora]);
        }

        // 4. Absorb: Q[h] = concat(k_b[h]ᵀ q_nope[h], q_pe[h]) {576, H, T}.
        let mut q_nope = Mat::zeros(t, d.n_head * d.nope);
        for (dst, src) in q_nope
            .data
            .chunks_exact_mut(d.nope)
            .zip(q.data.chunks_exact(qh))
        {
            dst.copy_from_slice(&src[..d.nope]);
        }
        let mut q_abs = Mat::zeros(t, d.n_head * ka);
        let k_b = self.name("attn_k_b");
        ctx.head_matmul(&k_b, &q_nope, &self.k_b, d.n_head, &mut q_abs, ka);
        for (dst, src) in q_abs.data.chunks_exact_mut(ka).zip(q.data.chunks_exact(qh)) {
            dst[d.kv_lora..].copy_from_slice(&src[d.nope..]);
        }
        drop((q, q_nope));

        // 5–6. MQA over the latent: one K/V head shared by all H query heads.
        let shape = AttnShape {
            n_head: d.n_head,
            n_head_kv: 1,
            head_dim_k: ka,
            head_dim_v: d.kv_lora,
            scale: self.yarn.kq_scale,
        };
        let o_lat = ctx.attention(&q_abs, &k, &v, seqs, &shape);
        drop((q_abs, k, v));

        // 7. Decompress per head with v_b, then attn_output over the concatenation.
        let mut o = Mat::zeros(t, d.n_head * d.v_head);
        let v_b = self.name("attn_v_b");
        ctx.head_matmul(&v_b, &o_lat, &self.v_b, d.n_head, &mut o, d.v_head);
        drop(o_lat);
        ctx.matmul(&self.name("attn_output"), &o, &self.out)
    }
}
