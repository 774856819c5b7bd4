//! The CUDA backend (`--device cuda`, cargo feature `cuda`): cuBLAS SGEMM for every projection
//! the blocks route through [`crate::LayerCtx::matmul`], NVRTC-compiled kernels that dequantize
//! the raw stored bytes (F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1, Q2_K…Q6_K, IQ4_NL, IQ4_XS, and
//! HF FP8 E4M3 with 128×128 block scales) on the GPU.
//!
//! What runs where, per layer:
//! * GPU: dequantization of each layer weight (raw bytes uploaded, f32 produced on device and
//!   kept resident until the layer ends, then freed — so a model larger than GPU memory runs one
//!   layer at a time); every `ctx.matmul` / `ctx.expert_matmul` as one SGEMM over all tokens.
//! * CPU: RMSNorm, rope, attention (`ops::attention`), SwiGLU, routing, the residual adds, and
//!   the grouped MoE expert GEMMs that `arch/deepseek2/ffn.rs` runs through `gemm_into` on
//!   slices of the stacked expert tensor (their weights are still dequantized on the GPU).
//!   Activations therefore cross PCIe once per matmul (x up, y down): the blocks work on host
//!   [`crate::Mat`]s, and the dequantized weights are also copied back to the host because the
//!   blocks hold them. Keeping activations resident across a whole layer needs the blocks to
//!   be written against a device tensor type — the next step, not done here.
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
