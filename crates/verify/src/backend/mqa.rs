//! MLA's absorbed attention core as one unit of work ([`super::Backend::absorbed_mqa`]), with
//! its reference: the per-head `attn_k_b` absorption of the queries, the multi-query attention
//! over the latent, and the per-head `attn_v_b` decompression.
//!
//! Why one call and not three: between those steps the activations are the widest of the whole
//! layer (R1: the absorbed queries are 128 heads × 576 = 73,728 floats per token, the latent
//! output 65,536), while what enters (the roped queries, 24,576, and the 1,088-wide latent K/V)
//! and what leaves (16,384) are small. A device that keeps the intermediate on board moves
//! about a ninth of the bytes a chain of separate calls moves across PCIe.

use crate::ops::{self, AttnShape};
use crate::tensor::{Mat, SeqSpan};

use super::head_matmul_cpu;

/// The sizes of one absorbed MLA attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqaDims {
    /// Query heads H (R1: 128), all sharing the one latent K/V head.
    pub n_head: usize,
    /// `qk_nope_head_dim` (128): the part of each query/key head without rope, which
    /// `attn_k_b` absorbs.
    pub nope: usize,
    /// `qk_rope_head_dim` (64, `n_rot`): the roped part; its key is shared by all heads.
    pub rope: usize,
    /// `kv_lora_rank` (512): the latent width, which is also the absorbed key/value width.
    pub kv_lora: usize,
    /// `v_head_dim` (128): each head's width after `attn_v_b`.
    pub v_head: usize,
}

impl MqaDims {
    /// Width of one query head before absorption (`key_length_mla`, 192).
    pub fn q_head(&self) -> usize {
        self.nope + self.rope
    }

    /// Width of one absorbed query/key head (`key_length`, 576).
    pub fn k_abs(&self) -> usize {
        self.kv_lora + self.rope
    }
}

/// One layer's absorbed attention ([`super::Backend::absorbed_mqa`]).
#[derive(Clone, Copy)]
pub struct MqaJob<'a> {
    /// GGUF names of `attn_k_b` and `attn_v_b` (a device may hold them from
    /// [`super::Backend::dequantize`]).
    pub names: [&'a str; 2],
    /// The roped queries `[T, H·(nope+rope)]`.
    pub q: &'a Mat,
    /// The normed latent with the roped shared key `[T, kv_lora+rope]`.
    pub k: &'a Mat,
    /// The normed latent `[T, kv_lora]` (the value).
    pub v: &'a Mat,
    /// `attn_k_b` `[H·kv_lora, nope]` (head h = rows `h·kv_lora ..`).
    pub k_b: &'a Mat,
    /// `attn_v_b` `[H·v_head, kv_lora]` (head h = rows `h·v_head ..`).
    pub v_b: &'a Mat,
    /// Sizes.
    pub dims: MqaDims,
    /// Which rows form each sequence.
    pub seqs: &'a [SeqSpan],
    /// Softmax scale of the scores.
    pub scale: f32,
    /// Whether the latent attention output (`attn_v_b`'s input) is wanted back: the imatrix
    /// observer needs it.
    pub keep_latent: bool,
}

impl MqaJob<'_> {
    /// The attention's shape: H query heads on one K/V head.
    pub fn shape(&self) -> AttnShape {
        let d = self.dims;
        AttnShape {
            n_head: d.n_head,
            n_head_kv: 1,
            head_dim_k: d.k_abs(),
            head_dim_v: d.kv_lora,
            scale: self.scale,
        }
    }

    /// Panics (internal invariant) unless the operands have the job's shapes.
    pub fn check(&self) {
        let d = self.dims;
        let t = self.q.rows;
        assert_eq!(self.q.cols, d.n_head * d.q_head(), "absorbed_mqa: q width");
        assert_eq!(
            (self.k.rows, self.k.cols),
            (t, d.k_abs()),
            "absorbed_mqa: k"
        );
        assert_eq!(
            (self.v.rows, self.v.cols),
            (t, d.kv_lora),
            "absorbed_mqa: v"
        );
        assert_eq!(
            (self.k_b.rows, self.k_b.cols),
            (d.n_head * d.kv_lora, d.nope),
            "absorbed_mqa: attn_k_b"
        );
        assert_eq!(
            (self.v_b.rows, self.v_b.cols),
            (d.n_head * d.v_head, d.kv_lora),
            "absorbed_mqa: attn_v_b"
        );
    }
}

/// What [`super::Backend::absorbed_mqa`] returns.
#[derive(Debug, Clone)]
pub struct MqaOut {
    /// The heads' outputs side by side `[T, H·v_head]` (`attn_output`'s input).
    pub o: Mat,
    /// The latent attention output `[T, H·kv_lora]` when [`MqaJob::keep_latent`].
    pub latent: Option<Mat>,
}

/// q_nope `[T, H·nope]`: each head's first `nope` query values (`attn_k_b`'s input, as the
/// observer sees it).
pub fn q_nope(q: &Mat, d: MqaDims) -> Mat {
    let mut out = Mat::zeros(q.rows, d.n_head * d.nope);
    for (dst, src) in out
        .data
        .chunks_exact_mut(d.nope)
        .zip(q.data.chunks_exact(d.q_head()))
    {
        dst.copy_from_slice(&src[..d.nope]);
    }
    out
}

/// The per-head product of [`super::Backend::head_matmul`]'s signature.
pub type HeadMatmulFn<'a> = dyn Fn(&str, &Mat, &Mat, usize, &mut Mat, usize) + 'a;

/// The attention of [`super::Backend::attention`]'s signature.
pub type AttentionFn<'a> = dyn Fn(&Mat, &Mat, &Mat, &[SeqSpan], &AttnShape) -> Mat + 'a;

/// The absorbed attention as separate steps through `head_matmul` and `attention`: absorb
/// (Q[h] = concat(k_b[h]ᵀ q_nope[h], q_pe[h])), MQA over the latent, decompress with v_b.
/// [`super::Backend::absorbed_mqa`]'s default runs it through the backend's own per-step
/// methods; [`absorbed_mqa_cpu`] through the CPU's.
pub fn absorbed_mqa_steps(
    job: &MqaJob<'_>,
    head_matmul: &HeadMatmulFn<'_>,
    attention: &AttentionFn<'_>,
) -> MqaOut {
    job.check();
    let d = job.dims;
    let (t, qh, ka) = (job.q.rows, d.q_head(), d.k_abs());
    let q_nope = q_nope(job.q, d);
    let mut q_abs = Mat::zeros(t, d.n_head * ka);
    head_matmul(job.names[0], &q_nope, job.k_b, d.n_head, &mut q_abs, ka);
    for (dst, src) in q_abs
        .data
        .chunks_exact_mut(ka)
        .zip(job.q.data.chunks_exact(qh))
    {
        dst[d.kv_lora..].copy_from_slice(&src[d.nope..]);
    }
    drop(q_nope);
    let latent = attention(&q_abs, job.k, job.v, job.seqs, &job.shape());
    drop(q_abs);
    let mut o = Mat::zeros(t, d.n_head * d.v_head);
    head_matmul(job.names[1], &latent, job.v_b, d.n_head, &mut o, d.v_head);
    MqaOut {
        o,
        latent: job.keep_latent.then_some(latent),
    }
}

/// [`absorbed_mqa_steps`] on the CPU ([`head_matmul_cpu`], [`ops::attention`]): the reference
/// every backend's `absorbed_mqa` must match.
pub fn absorbed_mqa_cpu(job: &MqaJob<'_>) -> MqaOut {
    absorbed_mqa_steps(
        job,
        &|_, x, w, heads, y, stride| head_matmul_cpu(x, w, heads, y, stride),
        &ops::attention,
    )
}
