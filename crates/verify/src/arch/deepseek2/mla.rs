//! Multi-head latent attention in the **absorbed** form (REFERENCE §5.3), the form llama.cpp uses
//! for every current GGUF (`attn_k_b`/`attn_v_b` present).
//!
//! Why absorbed rather than the naive per-head expansion: it is what llama.cpp evaluates, it is
//! how the calibration statistics of `attn_k_b` (input q_nope per head) and `attn_v_b` (input the
//! latent attention output per head) are defined (§6.1), and attention runs over the 512-wide
//! latent once for all heads (MQA) instead of expanding keys and values per head.

use crate::backend::MqaJob;
use crate::engine::LayerCtx;
use crate::ops::{self, rope};
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

/// The sizes of one MLA layer: those of its absorbed attention core.
pub use crate::backend::MqaDims as MlaDims;

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

        // 1–2. The query projection (or its low-rank first half) and the latent with the
        // shared rope key {576, T}, both from h.
        let (q_first, w_first) = match &self.q {
            QProj::LowRank { a, .. } => (self.name("attn_q_a"), a),
            QProj::Direct(w) => (self.name("attn_q"), w),
        };
        let kv_name = self.name("attn_kv_a_mqa");
        let [first, mut kv]: [Mat; 2] = ctx
            .matmuls(h, &[(&q_first, w_first), (&kv_name, &self.kv_a)])
            .try_into()
            .expect("two products");
        // Queries {192, H, T}.
        let mut q = match &self.q {
            QProj::LowRank { a_norm, b, .. } => {
                let mut qa = first;
                ops::rms_norm(&mut qa, a_norm, self.eps);
                ctx.matmul(&self.name("attn_q_b"), &qa, b)
            }
            QProj::Direct(_) => first,
        };
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

        // 4–7. Absorb Q[h] = concat(k_b[h]ᵀ q_nope[h], q_pe[h]) {576, H, T}; MQA over the
        // latent (one K/V head shared by all H query heads); decompress per head with v_b.
        let (k_b, v_b) = (self.name("attn_k_b"), self.name("attn_v_b"));
        let o = ctx.absorbed_mqa(&MqaJob {
            names: [&k_b, &v_b],
            q: &q,
            k: &k,
            v: &v,
            k_b: &self.k_b,
            v_b: &self.v_b,
            dims: d,
            seqs,
            scale: self.yarn.kq_scale,
            keep_latent: false,
        });
        drop((q, k, v));
        ctx.matmul(&self.name("attn_output"), &o, &self.out)
    }
}
