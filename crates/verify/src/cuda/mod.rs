//! The CUDA backend (`--device cuda`, cargo feature `cuda`): cuBLAS SGEMM for every projection
//! the blocks route through [`crate::LayerCtx::matmul`], NVRTC-compiled kernels that dequantize
//! the raw stored bytes (F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1, Q2_K…Q6_K, IQ4_NL, IQ4_XS, and
//! HF FP8 E4M3 with 128×128 block scales) on the GPU, and the routed MoE experts whole.
//!
//! What runs where, per layer:
//! * GPU: dequantization of each layer weight (raw bytes uploaded, f32 produced on device and
//!   kept resident until the layer ends, then freed — so a model larger than GPU memory runs one
//!   layer at a time); every `ctx.matmul` / `ctx.expert_matmul` as one SGEMM over all tokens.
//! * GPU: the routed MoE experts ([`crate::backend::Backend::expert_ffn`], ~97% of
//!   DeepSeek-R1's FLOPs). Per expert, only its rows of the stacked `*_exps` tensors go up, as
//!   stored ([`crate::WeightSource::raw_rows`]: a Q4_K expert crosses PCIe as Q4_K, not as
//!   f32), with the gathered tokens x; dequantization, `x·gateᵀ`, `x·upᵀ`, SwiGLU (the
//!   [`kernels::SWIGLU_KERNEL`]) and `g·downᵀ` run on the device, and only g (which the
//!   imatrix observer needs) and y come down. The expert's device buffers are freed when it
//!   is done. Experts run one at a time (`experts_at_once` = 1: the device serialises behind
//!   one lock and one stream anyway, and one R1 expert's GEMMs fill it); the CPU backend's
//!   parallel waves of experts are for the CPU only. A weight with no raw bytes (an HF tensor
//!   the conversion transforms, such as the `kv_b` split or the rotary permutation; an FP8
//!   range not starting on a scale block) or no kernel for its type is dequantized by the
//!   source on the host and uploaded as f32 — slower, same numbers. HF checkpoints offer their
//!   FP8 (with block scales) and BF16 tensors as stored, each expert of a stacked `*_exps`
//!   tensor included, so an R1 directory's experts also go up as FP8.
//! * CPU: RMSNorm, rope, attention (`ops::attention`), the dense and shared-expert SwiGLU,
//!   routing (gathering each expert's tokens, the weighted scatter-add of its output), the
//!   residual adds. Activations therefore cross PCIe once per matmul (x up, y down): the blocks
//!   work on host [`crate::Mat`]s, and the dequantized non-expert weights are also copied back
//!   to the host because the blocks hold them. Keeping activations resident across a whole
//!   layer needs the blocks to be written against a device tensor type — the next step, not
//!   done here; so is overlapping the next expert's upload with the current one's GEMMs (a
//!   second stream).
//!
//! Device errors: `matmul` and `dequantize` record the first one and fall back to the CPU
//! result, and [`crate::backend::Backend::end_layer`] reports it; `expert_ffn` returns it at
//! once (a recorded one included), so the run stops with that message, never a panic.
//!
//! This module's pure parts (the cuBLAS parameter mapping, launch geometry, the kernel source)
//! build and are tested without CUDA; the part that talks to the driver is `device.rs`, behind
//! `#[cfg(feature = "cuda")]`, and refuses cleanly (no panic) when `libcuda` is absent.

pub mod kernels;

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

#[cfg(test)]
mod tests;
