//! The CUDA backend (`--device cuda`, cargo feature `cuda`): cuBLAS SGEMM for every projection
//! the blocks route through [`crate::LayerCtx::matmul`], the causal attention
//! ([`crate::LayerCtx::attention`]), NVRTC-compiled kernels that dequantize the raw stored
//! bytes (F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1, Q2_K…Q6_K, IQ4_NL, IQ4_XS, and HF FP8 E4M3 with
//! 128×128 block scales) on the GPU, and the routed MoE experts whole.
//!
//! What runs where, per layer:
//! * GPU: dequantization of each layer weight (raw bytes uploaded, f32 produced on device and
//!   kept resident until the layer ends, then freed — so a model larger than GPU memory runs one
//!   layer at a time); every `ctx.matmul` / `ctx.matmuls` as one SGEMM over all tokens.
//! * GPU: the routed MoE experts ([`crate::backend::Backend::moe_experts`], ~97% of
//!   DeepSeek-R1's FLOPs). The layer's input goes up once and the weighted sum of the experts'
//!   outputs is accumulated on the device and comes down once. Per expert only its rows of the
//!   stacked `*_exps` tensors go up, as stored ([`crate::WeightSource::raw_rows`]: a Q4_K
//!   expert crosses PCIe as Q4_K, not as f32), with its token indices and routing weights; the
//!   [`kernels::GATHER_KERNEL`] collects its tokens' rows, dequantization, `x·gateᵀ`, `x·upᵀ`,
//!   SwiGLU (the [`kernels::SWIGLU_KERNEL`]) and `g·downᵀ` run on the device, and the
//!   [`kernels::SCATTER_ADD_KERNEL`] adds its weighted output into the sum (experts in
//!   ascending order, products rounded before the sums: the CPU's order). g (the down
//!   projection's input) comes down only for the imatrix observer. The expert's device buffers
//!   are freed when it is done. Experts run one at a time (the device serialises behind one
//!   lock and one stream anyway, and one R1 expert's GEMMs fill it); the CPU backend's parallel
//!   waves of experts are for the CPU only. A weight with no raw bytes (an HF tensor the
//!   conversion transforms, such as the `kv_b` split or the rotary permutation; an FP8 range
//!   not starting on a scale block) or no kernel for its type is dequantized by the source on
//!   the host and uploaded as f32 — slower, same numbers. HF checkpoints offer their FP8 (with
//!   block scales) and BF16 tensors as stored, each expert of a stacked `*_exps` tensor
//!   included, so an R1 directory's experts also go up as FP8.
//! * GPU: the causal attention of every block ([`crate::backend::Backend::attention`]: MLA's
//!   absorbed MQA — R1's 128 query heads on one 576/512-wide latent K/V head, ~19 GFLOP per
//!   512-token chunk per layer — and the dense blocks' GQA). q, k and v go up once; per span,
//!   block of queries and K/V group ([`attention_plan`]) one SGEMM gives the scores of all the
//!   group's heads (with one K/V head the block's queries of all heads are one contiguous
//!   `[len·H, dk]` matrix; with several, a strided batch over the group's heads), the
//!   [`kernels::CAUSAL_SOFTMAX_KERNEL`] masks and normalises them as `ops::attention` does
//!   (same steps, f64 sum in column order, one thread per row), and a second SGEMM writes
//!   P·V into the resident output, which comes down once. The score buffer is bounded by
//!   [`ATTN_SCORES_BYTES`] (longer spans go in blocks of queries).
//! * GPU: MLA's attention core whole ([`crate::backend::Backend::absorbed_mqa`], [`mqa_plan`]):
//!   the roped queries `[T, H·192]` and the latent K/V go up; the `attn_k_b` absorption (one
//!   strided-batched SGEMM reading each head's nope slice in place), the rope slices' move into
//!   the absorbed queries (an identity SGEMM: exact), the attention steps above and the
//!   `attn_v_b` decompression run on board, and only the heads' output `[T, H·128]` comes down
//!   — plus the latent output `[T, H·512]` when the imatrix observer needs it. For R1 that is
//!   25,664 floats up and 16,384 down per token and layer instead of the 230,464 up and
//!   155,648 down of separate per-head products and attention (the absorbed queries went up
//!   twice and down once, the latent output down and up). The dense blocks' GQA still uses
//!   [`crate::backend::Backend::attention`]; [`crate::backend::Backend::head_matmul`] (one
//!   strided-batched SGEMM over all heads, [`head_matmul_plan`]) remains for other callers.
//! * CPU: RMSNorm, rope, the dense and shared-expert SwiGLU, routing (the choice of experts from
//!   the router's logits), the residual adds. Other activations therefore cross PCIe once per
//!   product (input up — once for projections that share it, [`crate::backend::Backend::matmuls`]:
//!   MLA's `attn_q_a` and `attn_kv_a_mqa`, q/k/v, an FFN's gate and up, the MoE router with the
//!   shared expert's gate and up — output down): the blocks
//!   work on host [`crate::Mat`]s, and the dequantized non-expert weights are also copied back to
//!   the host because the blocks hold them. Per R1 MoE layer and token that is now about 67k
//!   floats up and 69k down, 0.54 MB (plus 8 × 2,048 floats of g when calibrating), where it was
//!   2.5 MB when the attention core's intermediates, each routed expert's rows and each
//!   projection's input crossed separately; against ~11 GB of FP8 expert weights per layer read
//!   once per group of tokens, activations stay below the weights' PCIe bytes up to ~21k tokens
//!   per group. The end-of-run report prints what actually moved. Keeping the residual stream
//!   resident across a whole layer needs the blocks to be written against a device tensor type —
//!   not done here; nor is overlapping the next expert's upload with the current one's GEMMs (a
//!   second stream).
//!
//! Device errors: `matmul`, `head_matmul`, `attention` and `dequantize` record the first one
//! and fall back to the CPU result, and [`crate::backend::Backend::end_layer`] reports it; `expert_ffn`
//! returns it at once (a recorded one included), so the run stops with that message, never a
//! panic.
//!
//! This module's pure parts (the cuBLAS parameter mapping, the attention plan, launch
//! geometry, the kernel source) build and are tested without CUDA: the attention plan by
//! running its GEMMs through an SGEMM emulation on the host against `ops::attention`, the
//! kernels as host C against the Rust code. The part that talks to the driver is `device.rs`,
//! behind `#[cfg(feature = "cuda")]`, and refuses cleanly (no panic) when `libcuda` is absent.

pub mod kernels;

use crate::ops::AttnShape;
use crate::tensor::SeqSpan;

#[cfg(feature = "cuda")]
mod device;

#[cfg(feature = "cuda")]
pub use device::CudaBackend;

/// Whether a cuBLAS operand is used as stored or transposed (`cublasOperation_t` N / T).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `CUBLAS_OP_N`.
    N,
    /// `CUBLAS_OP_T`.
    T,
}

/// The column-major SGEMM call `C(m×n) = op(A)(m×k) · op(B)(k×n)` (α = 1, β = 0) that computes
/// the engine's row-major `y[T, out] = x[T, in] · w[out, in]ᵀ`.
///
/// Why this mapping: a row-major `[r, c]` buffer is, read column-major, the `c × r` transpose
/// with leading dimension `c`. So y's buffer is `Yᶜ = yᵀ` (out × T, ld = out), x's is `xᵀ`
/// (in × T, ld = in) and w's is `wᵀ` (in × out, ld = in). `yᵀ = w · xᵀ = op_T(wᵀ) · xᵀ`: A is
/// w's buffer with `transa = T`, B is x's buffer with `transb = N`, m = out, n = T, k = in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmParams {
    /// Operation on A (w's buffer).
    pub transa: Op,
    /// Operation on B (x's buffer).
    pub transb: Op,
    /// Rows of C (= out).
    pub m: i32,
    /// Columns of C (= tokens).
    pub n: i32,
    /// The inner dimension (= in).
    pub k: i32,
    /// Leading dimension of A.
    pub lda: i32,
    /// Leading dimension of B.
    pub ldb: i32,
    /// Leading dimension of C.
    pub ldc: i32,
}

/// The [`GemmParams`] for `tokens × inp` activations and an `out × inp` weight, or an error if
/// a dimension exceeds cuBLAS's 32-bit integers.
pub fn gemm_params(tokens: usize, inp: usize, out: usize) -> Result<GemmParams, String> {
    let int = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| format!("{what} = {v} exceeds cuBLAS's i32 dimensions"))
    };
    let (m, n, k) = (int(out, "out")?, int(tokens, "tokens")?, int(inp, "in")?);
    Ok(GemmParams {
        transa: Op::T,
        transb: Op::N,
        m,
        n,
        k,
        lda: k.max(1),
        ldb: k.max(1),
        ldc: m.max(1),
    })
}

/// The most bytes one attention score buffer may take on the device: a span whose queries of
/// all heads of a K/V group against all its keys would need more is done in blocks of queries
/// ([`attn_query_block`]). R1 at 512 tokens needs 512·128·512·4 = 128 MiB: one block.
pub const ATTN_SCORES_BYTES: usize = 1 << 30;

/// A row-major operand of a strided-batched product: element (i, j) of batch member b is at
/// `offset + b·stride + i·ld + j` of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    /// First element.
    pub offset: usize,
    /// Floats between consecutive rows.
    pub ld: usize,
    /// Floats between consecutive batch members (0: one matrix shared by all).
    pub stride: usize,
}

/// A strided-batched SGEMM computing, for each batch member, the row-major
/// `out[m, n] = lhs[m, k] · rhsᵀ` (rhs stored `[n, k]`) or `lhs · rhs` (rhs stored `[k, n]`).
///
/// In cuBLAS's column-major terms (the mapping of [`GemmParams`]): A is rhs's buffer (`transa`
/// T when rhs is stored `[n, k]`, N when `[k, n]`), B is lhs's buffer (`transb` N), C is out's;
/// cuBLAS's m, n are the row-major n, m.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchedGemm {
    /// The column-major call (A = rhs, B = lhs, C = out).
    pub params: GemmParams,
    /// Batch members.
    pub batch: usize,
    /// The row-major left factor (cuBLAS's B).
    pub lhs: Operand,
    /// The row-major right factor (cuBLAS's A).
    pub rhs: Operand,
    /// The product (cuBLAS's C).
    pub out: Operand,
}

impl BatchedGemm {
    /// One past the last float each operand touches (lhs, rhs, out): the buffers must hold
    /// at least this many.
    pub fn extents(&self) -> [usize; 3] {
        let p = &self.params;
        let (rows_n, rows_m, k) = (p.m as usize, p.n as usize, p.k as usize);
        let end = |o: &Operand, rows: usize, cols: usize| {
            o.offset + (self.batch - 1) * o.stride + (rows - 1) * o.ld + cols
        };
        let rhs = match p.transa {
            Op::T => end(&self.rhs, rows_n, k),
            Op::N => end(&self.rhs, k, rows_n),
        };
        [
            end(&self.lhs, rows_m, k),
            rhs,
            end(&self.out, rows_m, rows_n),
        ]
    }
}

/// The [`BatchedGemm`] for row-major `out[m, n] = lhs[m, k] · rhsᵀ` (`rhs_transposed`, rhs
/// stored `[n, k]`) or `lhs · rhs` (rhs stored `[k, n]`), `batch` times. Errors: an empty
/// dimension or batch, a leading dimension shorter than its row, or sizes beyond cuBLAS's
/// 32-bit integers.
pub fn row_major_batched(
    (m, n, k): (usize, usize, usize),
    lhs: Operand,
    (rhs, rhs_transposed): (Operand, bool),
    out: Operand,
    batch: usize,
) -> Result<BatchedGemm, String> {
    if m == 0 || n == 0 || k == 0 || batch == 0 {
        return Err(format!("empty product: {m}×{k} by {k}×{n}, batch {batch}"));
    }
    let rhs_row = if rhs_transposed { k } else { n };
    if lhs.ld < k || rhs.ld < rhs_row || out.ld < n {
        return Err(format!(
            "leading dimensions {}, {}, {} shorter than rows of {k}, {rhs_row}, {n}",
            lhs.ld, rhs.ld, out.ld
        ));
    }
    let int = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| format!("{what} = {v} exceeds cuBLAS's i32 dimensions"))
    };
    int(batch, "batch")?;
    let params = GemmParams {
        transa: if rhs_transposed { Op::T } else { Op::N },
        transb: Op::N,
        m: int(n, "n")?,
        n: int(m, "m")?,
        k: int(k, "k")?,
        lda: int(rhs.ld, "rhs ld")?,
        ldb: int(lhs.ld, "lhs ld")?,
        ldc: int(out.ld, "out ld")?,
    };
    Ok(BatchedGemm {
        params,
        batch,
        lhs,
        rhs,
        out,
    })
}

/// The one strided-batched SGEMM of `Backend::head_matmul`: for each head h < `heads`,
/// `y[:, h·col_stride ..][..out] = x[:, h·inp ..][..inp] · w_hᵀ` over `rows` tokens, with w
/// `[heads·out, inp]` (head h = rows `h·out ..`), x `x_cols` and y `y_cols` wide (lhs = x's
/// buffer, rhs = w's, out = y's). MLA's `attn_k_b` (R1: 128 heads of 128 → 512) and
/// `attn_v_b` (512 → 128) each become one call instead of a loop over heads.
pub fn head_matmul_plan(
    rows: usize,
    (heads, inp, out): (usize, usize, usize),
    x_cols: usize,
    (y_cols, col_stride): (usize, usize),
) -> Result<BatchedGemm, String> {
    if heads > 0 && (heads - 1) * col_stride + out > y_cols {
        return Err(format!(
            "{heads} heads of {out} at stride {col_stride} do not fit {y_cols} columns"
        ));
    }
    let at = |ld, stride| Operand {
        offset: 0,
        ld,
        stride,
    };
    row_major_batched(
        (rows, out, inp),
        at(x_cols, inp),
        (at(inp, out * inp), true),
        at(y_cols, col_stride),
        heads,
    )
}

/// The strided-batched SGEMMs around the attention of `Backend::absorbed_mqa`, all on device
/// buffers: the roped queries q `[rows, H·(nope+rope)]` go up once and the absorbed queries
/// q_abs `[rows, H·(kv_lora+rope)]` and the latent output `[rows, H·kv_lora]` never leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqaPlan {
    /// `q_abs[:, h·ka ..][..kv_lora] = q[:, h·qh ..][..nope] · k_b_hᵀ` (lhs q, rhs `attn_k_b`
    /// `[H·kv_lora, nope]`, out q_abs): the heads' nope slices read in place, no copy.
    pub absorb: BatchedGemm,
    /// `q_abs[:, h·ka + kv_lora ..][..rope] = q[:, h·qh + nope ..][..rope] · I` (lhs q, rhs a
    /// `[rope, rope]` identity shared by all heads, out q_abs): the roped slices moved into
    /// place by cuBLAS (exact: each output is one product by 1 plus products by 0). `None`
    /// without rope dimensions.
    pub rope_copy: Option<BatchedGemm>,
    /// `o[:, h·v_head ..] = latent[:, h·kv_lora ..] · v_b_hᵀ` (lhs the latent output, rhs
    /// `attn_v_b` `[H·v_head, kv_lora]`, out o).
    pub decompress: BatchedGemm,
}

/// The [`MqaPlan`] of `rows` tokens: `(n_head, nope, rope, kv_lora, v_head)` as
/// `backend::MqaDims` names them.
pub fn mqa_plan(
    rows: usize,
    (heads, nope, rope, kv_lora, v_head): (usize, usize, usize, usize, usize),
) -> Result<MqaPlan, String> {
    let (qh, ka) = (nope + rope, kv_lora + rope);
    let at = |offset, ld, stride| Operand { offset, ld, stride };
    let absorb = row_major_batched(
        (rows, kv_lora, nope),
        at(0, heads * qh, qh),
        (at(0, nope, kv_lora * nope), true),
        at(0, heads * ka, ka),
        heads,
    )?;
    let rope_copy = if rope == 0 {
        None
    } else {
        Some(row_major_batched(
            (rows, rope, rope),
            at(nope, heads * qh, qh),
            (at(0, rope, 0), true),
            at(kv_lora, heads * ka, ka),
            heads,
        )?)
    };
    let decompress = head_matmul_plan(
        rows,
        (heads, kv_lora, v_head),
        heads * kv_lora,
        (heads * v_head, v_head),
    )?;
    Ok(MqaPlan {
        absorb,
        rope_copy,
        decompress,
    })
}

/// Queries per block of a span of `len` tokens whose score rows for one K/V group are
/// `group` query heads wide, so that `block · group · len` scores fit in `max_scores` floats
/// (at least one query, at most the span).
pub fn attn_query_block(len: usize, group: usize, max_scores: usize) -> usize {
    (max_scores / (group * len).max(1)).clamp(1, len.max(1))
}

/// The causal softmax of a compact score buffer `[rows, n]`: row r keeps columns
/// `0 ..= first + r / group` (the kernel `r1q_causal_softmax`, `ops::attention`'s
/// `causal_softmax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxRows {
    /// Rows.
    pub rows: usize,
    /// Columns (keys).
    pub n: usize,
    /// Consecutive rows per query position (the query heads of one K/V group).
    pub group: usize,
    /// Position in its span of the first row's query.
    pub first: usize,
}

/// One block of queries of one span against one K/V group: `scores = q · kᵀ` (lhs = q's
/// buffer, rhs = k's, out = the score buffer), the causal softmax of the scores, then
/// `y = P · v` (lhs = the score buffer, rhs = v's, out = y's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnStep {
    /// `q · kᵀ` into the score buffer, rows (query i, head of the group) side by side.
    pub scores: BatchedGemm,
    /// The causal softmax over the score rows (the scale applied there, as the CPU does).
    pub softmax: SoftmaxRows,
    /// `P · v` into the output rows of the block's queries and the group's heads.
    pub pv: BatchedGemm,
}

/// The device plan of `ops::attention` over `t` tokens: the [`AttnStep`]s and the score
/// buffer's size in floats (each step's scores at most `max_scores`, unless one query of
/// one group alone needs more).
///
/// Layouts (row-major, as the engine stores them): q `[t, H·dk]`, k `[t, G·dk]`, v `[t, G·dv]`,
/// y `[t, H·dv]`, H = `n_head`, G = `n_head_kv`, query head h reading K/V head h / (H/G).
/// Scores of a block of `bq` queries and group g are `[bq·(H/G), nk]`: row (i, j) is query i,
/// head g·(H/G) + j, over the `nk` = (block end) keys causality lets the block see. With one
/// K/V head (MQA, MLA's absorbed attention) the block's queries of all heads are one
/// contiguous `[bq·H, dk]` matrix (ld dk), so each product is ONE SGEMM; with several, each
/// product is a batch over the group's heads (q's head columns at stride dk, the shared K/V
/// block at stride 0, y's head columns at stride dv).
pub fn attention_plan(
    t: usize,
    seqs: &[SeqSpan],
    s: &AttnShape,
    max_scores: usize,
) -> Result<(Vec<AttnStep>, usize), String> {
    let (h, g_n, dk, dv) = (s.n_head, s.n_head_kv, s.head_dim_k, s.head_dim_v);
    if g_n == 0 || !h.is_multiple_of(g_n) || dk == 0 || dv == 0 {
        return Err(format!("attention shape {s:?} has no device plan"));
    }
    let group = h / g_n;
    // MQA: fold the heads into the rows, one product per step.
    let (batch, fold) = if g_n == 1 { (1, h) } else { (group, 1) };
    let (qc, kc, vc, yc) = (h * dk, g_n * dk, g_n * dv, h * dv);
    let (mut steps, mut scores_len) = (Vec::new(), 0);
    // Empty spans touch nothing (as on the CPU), wherever they start.
    for span in seqs.iter().filter(|s| s.len > 0) {
        if span.start + span.len > t {
            return Err(format!("span {span:?} lies beyond the {t} tokens"));
        }
        let bq_max = attn_query_block(span.len, group, max_scores);
        let mut r0 = 0;
        while r0 < span.len {
            let r1 = (r0 + bq_max).min(span.len);
            let (bq, nk) = (r1 - r0, r1);
            let row0 = span.start + r0;
            scores_len = scores_len.max(bq * group * nk);
            for g in 0..g_n {
                let at = |offset, ld, stride| Operand { offset, ld, stride };
                let q = at(row0 * qc + g * group * dk, qc / fold, dk);
                let k = at(span.start * kc + g * dk, kc, 0);
                let sc = at(0, group * nk / fold, nk);
                let v = at(span.start * vc + g * dv, vc, 0);
                let y = at(row0 * yc + g * group * dv, yc / fold, dv);
                let m = bq * fold;
                steps.push(AttnStep {
                    scores: row_major_batched((m, nk, dk), q, (k, true), sc, batch)?,
                    softmax: SoftmaxRows {
                        rows: bq * group,
                        n: nk,
                        group,
                        first: r0,
                    },
                    pv: row_major_batched((m, dv, nk), sc, (v, false), y, batch)?,
                });
            }
            r0 = r1;
        }
    }
    Ok((steps, scores_len))
}

#[cfg(test)]
mod tests;
