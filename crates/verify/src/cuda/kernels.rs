//! The GPU kernels: CUDA C compiled at run time by NVRTC (no nvcc at build time). One
//! dequantization kernel (`extern "C" __global__`) per stored type, each a grid-stride loop
//! writing one f32 per element from the raw bytes (REFERENCE §2.3 for the ggml blocks, §4.1 for
//! FP8), the SwiGLU of the routed experts ([`SWIGLU_KERNEL`]) and the causal softmax of the
//! attention scores ([`CAUSAL_SOFTMAX_KERNEL`]), and the gather and weighted scatter-add of the
//! routed experts' rows ([`GATHER_KERNEL`], [`SCATTER_ADD_KERNEL`]).
//!
//! Why the per-element functions are separate `__device__` functions with no CUDA built-ins:
//! the same source compiles as plain C on the host (`R1Q_HOST_TWIN`), so the tests run the
//! kernels' exact arithmetic on the CPU against `quantize::dequantize_rows` and the FP8 table
//! (`cuda/tests.rs`) — the kernels are checked bit for bit without a GPU. The kernels are
//! compiled with `--fmad=false` so the device rounds like the reference (no contracted
//! multiply-adds). One exception to "bit for bit on the device": the `expf` of SwiGLU and of the
//! softmax is the host libm's in the twin (the same function Rust's `f32::exp` calls, so the
//! twin is bit-identical) but CUDA's own on the GPU, documented to within 2 ulp — so the
//! device's g and attention probabilities may differ from the CPU's in the last bits.

use formats::ggml_type::GgmlType;

/// One dequantization kernel: which type it reads and its block geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// The stored type.
    pub ty: GgmlType,
    /// The `extern "C"` kernel name in [`SOURCE`].
    pub kernel: &'static str,
    /// The host-twin element function `<elem>(const u8 *block, int e)`.
    pub elem: &'static str,
    /// Elements per block.
    pub block: u32,
    /// Bytes per block.
    pub bytes: u32,
}

/// Every ggml type with a GPU kernel (all types `quantize::dequantize_rows` supports).
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        ty: GgmlType::F32,
        kernel: "r1q_dequant_f32",
        elem: "elem_f32",
        block: 1,
        bytes: 4,
    },
    KernelSpec {
        ty: GgmlType::F16,
        kernel: "r1q_dequant_f16",
        elem: "elem_f16",
        block: 1,
        bytes: 2,
    },
    KernelSpec {
        ty: GgmlType::BF16,
        kernel: "r1q_dequant_bf16",
        elem: "elem_bf16",
        block: 1,
        bytes: 2,
    },
    KernelSpec {
        ty: GgmlType::Q8_0,
        kernel: "r1q_dequant_q8_0",
        elem: "elem_q8_0",
        block: 32,
        bytes: 34,
    },
    KernelSpec {
        ty: GgmlType::Q4_0,
        kernel: "r1q_dequant_q4_0",
        elem: "elem_q4_0",
        block: 32,
        bytes: 18,
    },
    KernelSpec {
        ty: GgmlType::Q4_1,
        kernel: "r1q_dequant_q4_1",
        elem: "elem_q4_1",
        block: 32,
        bytes: 20,
    },
    KernelSpec {
        ty: GgmlType::Q5_0,
        kernel: "r1q_dequant_q5_0",
        elem: "elem_q5_0",
        block: 32,
        bytes: 22,
    },
    KernelSpec {
        ty: GgmlType::Q5_1,
        kernel: "r1q_dequant_q5_1",
        elem: "elem_q5_1",
        block: 32,
        bytes: 24,
    },
    KernelSpec {
        ty: GgmlType::Q2_K,
        kernel: "r1q_dequant_q2_k",
        elem: "elem_q2_k",
        block: 256,
        bytes: 84,
    },
    KernelSpec {
        ty: GgmlType::Q3_K,
        kernel: "r1q_dequant_q3_k",
        elem: "elem_q3_k",
        block: 256,
        bytes: 110,
    },
    KernelSpec {
        ty: GgmlType::Q4_K,
        kernel: "r1q_dequant_q4_k",
        elem: "elem_q4_k",
        block: 256,
        bytes: 144,
    },
    KernelSpec {
        ty: GgmlType::Q5_K,
        kernel: "r1q_dequant_q5_k",
        elem: "elem_q5_k",
        block: 256,
        bytes: 176,
    },
    KernelSpec {
        ty: GgmlType::Q6_K,
        kernel: "r1q_dequant_q6_k",
        elem: "elem_q6_k",
        block: 256,
        bytes: 210,
    },
    KernelSpec {
        ty: GgmlType::IQ4_NL,
        kernel: "r1q_dequant_iq4_nl",
        elem: "elem_iq4_nl",
        block: 32,
        bytes: 18,
    },
    KernelSpec {
        ty: GgmlType::IQ4_XS,
        kernel: "r1q_dequant_iq4_xs",
        elem: "elem_iq4_xs",
        block: 256,
        bytes: 136,
    },
];

/// The kernel for `ty`, if there is one.
pub fn kernel_for(ty: GgmlType) -> Option<&'static KernelSpec> {
    KERNELS.iter().find(|k| k.ty == ty)
}

/// The FP8 E4M3 block-scaled kernel (`weight` × `weight_scale_inv`, REFERENCE §4.1).
pub const FP8_KERNEL: &str = "r1q_dequant_fp8_block";

/// The SwiGLU kernel of the routed experts: `g[i] = silu(g[i]) · u[i]` in place, silu(x) =
/// x / (1 + e⁻ˣ), the formula of `ops::swiglu`.
pub const SWIGLU_KERNEL: &str = "r1q_swiglu";

/// The causal softmax of the attention scores, one thread per score row, in place: row r of a
/// compact `[rows, n]` block keeps columns `0 ..= first + r / group`, scaled, max-subtracted,
/// exponentiated, normalised by the f64 sum of its values in column order (`1/sum` rounded to
/// f32, then multiplied), and the masked tail becomes 0 — `ops::attention`'s
/// `causal_softmax` step for step.
///
/// Why one thread per row rather than a parallel reduction: the sum's order is then the CPU's,
/// so the twin (host C) is bit-identical to the Rust code and the GPU differs only through its
/// `expf`; the softmax touches each score once per pass, which is small next to the
/// `dk`-deep GEMMs on either side (dk = 576 for R1).
pub const CAUSAL_SOFTMAX_KERNEL: &str = "r1q_causal_softmax";

/// Gathers the rows routed to one expert from the layer's input on the device: `dst[r, :] =
/// x[idx[r], :]` (u32 token indices).
pub const GATHER_KERNEL: &str = "r1q_gather_rows";

/// Adds one expert's weighted output into the layer's sum on the device: `acc[idx[r], :] +=
/// w[r] · y[r, :]`, each product rounded before the sum, as `backend::scatter_add`; experts
/// are added one launch at a time in expert order, so the sum's order is the CPU's too.
pub const SCATTER_ADD_KERNEL: &str = "r1q_scatter_add_rows";

/// Threads per block of every dequantization launch.
pub const THREADS: u32 = 256;

/// The most blocks one launch uses; larger tensors are covered by the grid-stride loop.
pub const MAX_GRID: u32 = 1 << 16;

/// `(grid, threads)` for `n` elements (`None` for an empty launch): one thread per element up
/// to [`MAX_GRID`] blocks, the rest by striding.
pub fn launch_dims(n: u64) -> Option<(u32, u32)> {
    if n == 0 {
        return None;
    }
    let blocks = n.div_ceil(u64::from(THREADS)).min(u64::from(MAX_GRID)) as u32;
    Some((blocks, THREADS))
}

/// The CUDA C source of every kernel. Compiles under NVRTC (device) and, with `R1Q_HOST_TWIN`
/// defined, as C99 on the host (the element functions only; link with `-lm` for `expf`).
pub const SOURCE: &str = r#"
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#ifdef R1Q_HOST_TWIN
#include <math.h>
#include <string.h>
#define R1Q_FN static
static float r1q_bits_to_f32(u32 b) { float f; memcpy(&f, &b, 4); return f; }
#else
#define R1Q_FN __device__ __forceinline__
#define r1q_bits_to_f32(b) __uint_as_float(b)
#endif

R1Q_FN u32 ld_u16(const u8 *p) { return (u32)p[0] | ((u32)p[1] << 8); }
R1Q_FN u32 ld_u32(const u8 *p) { return ld_u16(p) | (ld_u16(p + 2) << 16); }

/* IEEE half -> float, exact (subnormals included). */
R1Q_FN float f16_to_f32(u32 h) {
    u32 sign = (h & 0x8000u) << 16;
    u32 exp = (h >> 10) & 0x1fu;
    u32 man = h & 0x3ffu;
    if (exp == 0) {
        float f = (float)man * 5.9604644775390625e-8f; /* man * 2^-24, exact */
        return sign ? -f : f;
    }
    if (exp == 31) return r1q_bits_to_f32(sign | 0x7f800000u | (man << 13));
    return r1q_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}
R1Q_FN float bf16_to_f32(u32 h) { return r1q_bits_to_f32(h << 16); }
R1Q_FN float ld_f16(const u8 *p) { return f16_to_f32(ld_u16(p)); }

/* F8 E4M3 (e4m3fn): bias 7, no infinities, S.1111.111 = NaN. */
R1Q_FN float fp8_e4m3_to_f32(u32 b) {
    u32 sign = (b & 0x80u) << 24;
    u32 exp = (b >> 3) & 0xfu;
    u32 man = b & 0x7u;
    if (exp == 15 && man == 7) return r1q_bits_to_f32(sign | 0x7fc00000u);
    if (exp == 0) {
        float f = (float)man * 0.001953125f; /* man/8 * 2^-6 */
        return sign ? -f : f;
    }
    return r1q_bits_to_f32(sign | ((exp + 120u) << 23) | (man << 20));
}

/* kvalues_iq4nl */
R1Q_FN float iq4nl_value(u32 i) {
    const signed char t[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    return (float)t[i & 15u];
}

/* Nibble of element e (0..31) of a 32-element group stored as 16 bytes (Q4_0 order). */
R1Q_FN u32 nib32(const u8 *qs, int e) { return e < 16 ? (qs[e] & 0xfu) : (qs[e - 16] >> 4); }

R1Q_FN float elem_f32(const u8 *b, int e) { (void)e; return r1q_bits_to_f32(ld_u32(b)); }
R1Q_FN float elem_f16(const u8 *b, int e) { (void)e; return ld_f16(b); }
R1Q_FN float elem_bf16(const u8 *b, int e) { (void)e; return bf16_to_f32(ld_u16(b)); }

/* Q8_0: d f16 | qs[32] i8 */
R1Q_FN float elem_q8_0(const u8 *b, int e) { return ld_f16(b) * (float)(i8)b[2 + e]; }

/* Q4_0: d | qs[16]; y = d (q - 8) */
R1Q_FN float elem_q4_0(const u8 *b, int e) { return ld_f16(b) * (float)((int)nib32(b + 2, e) - 8); }

/* Q4_1: d | m | qs[16]; y = d q + m */
R1Q_FN float elem_q4_1(const u8 *b, int e) { return ld_f16(b) * (float)nib32(b + 4, e) + ld_f16(b + 2); }

/* Q5_0: d | qh u32 | qs[16]; q = nibble | bit e of qh << 4; y = d (q - 16) */
R1Q_FN float elem_q5_0(const u8 *b, int e) {
    u32 q = nib32(b + 6, e) | (((ld_u32(b + 2) >> e) & 1u) << 4);
    return ld_f16(b) * (float)((int)q - 16);
}

/* Q5_1: d | m | qh u32 | qs[16]; y = d q + m */
R1Q_FN float elem_q5_1(const u8 *b, int e) {
    u32 q = nib32(b + 8, e) | (((ld_u32(b + 4) >> e) & 1u) << 4);
    return ld_f16(b) * (float)q + ld_f16(b + 2);
}

/* 2-bit field of element e (0..255) in a 64-byte K-quant qs array. */
R1Q_FN u32 two_bits(const u8 *qs, int e) {
    int h = e / 128, r = e % 128;
    return (qs[32 * h + r % 32] >> (2 * (r / 32))) & 3u;
}

/* Q2_K: scales[16] | qs[64] | d | dmin; y = (d s_g) q - (dmin m_g) */
R1Q_FN float elem_q2_k(const u8 *b, int e) {
    u32 sc = b[e / 16];
    float dl = ld_f16(b + 80) * (float)(sc & 0xfu);
    float ml = ld_f16(b + 82) * (float)(sc >> 4);
    return dl * (float)two_bits(b + 16, e) - ml;
}

/* Q3_K: hmask[32] | qs[64] | scales[12] | d; y = (d (s_g - 32)) (low2 - 4 if hmask bit clear) */
R1Q_FN float elem_q3_k(const u8 *b, int e) {
    const u8 *sc = b + 96;
    int g = e / 16;
    u32 low = g < 8 ? (sc[g] & 0xfu) : (sc[g - 8] >> 4);
    u32 high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3u;
    int s = (int)(low | (high << 4)) - 32;
    int hbit = (b[e % 32] >> (e / 32)) & 1;
    int q = (int)two_bits(b + 32, e) - (hbit ? 0 : 4);
    float dl = ld_f16(b + 108) * (float)s;
    return dl * (float)q;
}

/* get_scale_min_k4: six-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
R1Q_FN u32 k4_scale(const u8 *s, int j) {
    return j < 4 ? (s[j] & 63u) : ((s[j + 4] & 0xfu) | ((s[j - 4] >> 6) << 4));
}
R1Q_FN u32 k4_min(const u8 *s, int j) {
    return j < 4 ? (s[j + 4] & 63u) : ((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
}
/* Nibble of element e (0..255) in a 128-byte K-quant qs array. */
R1Q_FN u32 k_nib(const u8 *qs, int e) {
    u32 byte = qs[32 * (e / 64) + e % 32];
    return (e % 64) < 32 ? (byte & 0xfu) : (byte >> 4);
}

/* Q4_K: d | dmin | scales[12] | qs[128]; y = (d sc_j) q - (dmin m_j) */
R1Q_FN float elem_q4_k(const u8 *b, int e) {
    int j = e / 32;
    float d1 = ld_f16(b) * (float)k4_scale(b + 4, j);
    float m1 = ld_f16(b + 2) * (float)k4_min(b + 4, j);
    return d1 * (float)k_nib(b + 16, e) - m1;
}

/* Q5_K: d | dmin | scales[12] | qh[32] | qs[128]; fifth bit: qh[e % 32] bit e/32 */
R1Q_FN float elem_q5_k(const u8 *b, int e) {
    int j = e / 32;
    float d1 = ld_f16(b) * (float)k4_scale(b + 4, j);
    float m1 = ld_f16(b + 2) * (float)k4_min(b + 4, j);
    u32 q = k_nib(b + 48, e) + (((b[16 + e % 32] >> (e / 32)) & 1u) << 4);
    return d1 * (float)q - m1;
}

/* Q6_K: ql[128] | qh[64] | scales[16] i8 | d; y = (d scales[g]) (q - 32) */
R1Q_FN float elem_q6_k(const u8 *b, int e) {
    int h = e / 128, r = e % 128, l = r % 32, k = r / 32;
    u32 lb = b[64 * h + l + 32 * (k % 2)];
    u32 low = k < 2 ? (lb & 0xfu) : (lb >> 4);
    u32 high = (b[128 + 32 * h + l] >> (2 * k)) & 3u;
    int q = (int)(low | (high << 4)) - 32;
    float ds = ld_f16(b + 208) * (float)(i8)b[192 + e / 16];
    return ds * (float)q;
}

/* IQ4_NL: d | qs[16]; y = d T[nibble] */
R1Q_FN float elem_iq4_nl(const u8 *b, int e) { return ld_f16(b) * iq4nl_value(nib32(b + 2, e)); }

/* IQ4_XS: d | scales_h u16 | scales_l[4] | qs[128]; dl = d (ls_b - 32); y = dl T[nibble] */
R1Q_FN float elem_iq4_xs(const u8 *b, int e) {
    int sb = e / 32;
    u32 ls = ((b[4 + sb / 2] >> (4 * (sb % 2))) & 0xfu) | (((ld_u16(b + 2) >> (2 * sb)) & 3u) << 4);
    float dl = ld_f16(b) * (float)((int)ls - 32);
    return dl * iq4nl_value(nib32(b + 8 + 16 * sb, e % 32));
}

/* FP8 block-scaled element (r, c) of a weight whose byte there is `byte`; `scales` is the
   row-major [ceil(rows/b0), ceil(cols/b1)] grid. */
R1Q_FN float fp8_block_value(u32 byte, const float *scales, u64 r, u64 c, u64 scale_cols,
                             u64 b0, u64 b1) {
    return fp8_e4m3_to_f32(byte) * scales[(r / b0) * scale_cols + c / b1];
}

/* SwiGLU of one element: silu(g) * u with silu(x) = x / (1 + e^-x), as ops::swiglu (and in
   the same order: the quotient first, then the product). */
R1Q_FN float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* Causal softmax of score row r (n floats) of a block whose row r is query position
   first + r / group of its span: columns 0 ..= that position are scaled, max-subtracted,
   exponentiated and normalised by the f64 sum (column order), the rest set to 0. Same
   steps as ops::attention's causal_softmax / softmax_scaled. */
R1Q_FN void causal_softmax_row(float *row, u64 r, u64 n, u64 group, u64 first, float scale) {
    u64 valid = first + r / group + 1, j;
    float max = r1q_bits_to_f32(0xff800000u); /* -inf */
    double sum = 0.0;
    float inv;
    if (valid > n) valid = n;
    for (j = 0; j < valid; j++) {
        float x = row[j] * scale;
        row[j] = x;
        max = fmaxf(max, x);
    }
    for (j = 0; j < valid; j++) {
        float e = expf(row[j] - max);
        row[j] = e;
        sum += (double)e;
    }
    inv = (float)(1.0 / sum);
    for (j = 0; j < valid; j++) row[j] *= inv;
    for (j = valid; j < n; j++) row[j] = 0.0f;
}

/* Element i of the rows routed to one expert, gathered: dst[i] for dst = x[idx[r], :] row by
   row, cols wide. */
R1Q_FN float gather_elem(const float *x, const u32 *idx, u64 i, u64 cols) {
    return x[(u64)idx[i / cols] * cols + i % cols];
}

/* Element i of one expert's weighted output added into the layer's sum: acc[idx[r], c] +=
   w[r] * y[r, c] for i = r * cols + c, the product rounded before the sum (--fmad=false), as
   backend::scatter_add. */
R1Q_FN void scatter_add_elem(float *acc, const float *y, const u32 *idx, const float *w, u64 i,
                             u64 cols) {
    u64 r = i / cols;
    float *a = acc + (u64)idx[r] * cols + i % cols;
    *a = *a + w[r] * y[i];
}

#ifndef R1Q_HOST_TWIN
#define R1Q_DEQUANT(NAME, QK, BYTES)                                                        \
extern "C" __global__ void r1q_dequant_##NAME(const u8 *src, float *dst, u64 n) {           \
    u64 stride = (u64)gridDim.x * blockDim.x;                                               \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)            \
        dst[i] = elem_##NAME(src + (i / QK) * BYTES, (int)(i % QK));                        \
}
R1Q_DEQUANT(f32, 1, 4)
R1Q_DEQUANT(f16, 1, 2)
R1Q_DEQUANT(bf16, 1, 2)
R1Q_DEQUANT(q8_0, 32, 34)
R1Q_DEQUANT(q4_0, 32, 18)
R1Q_DEQUANT(q4_1, 32, 20)
R1Q_DEQUANT(q5_0, 32, 22)
R1Q_DEQUANT(q5_1, 32, 24)
R1Q_DEQUANT(q2_k, 256, 84)
R1Q_DEQUANT(q3_k, 256, 110)
R1Q_DEQUANT(q4_k, 256, 144)
R1Q_DEQUANT(q5_k, 256, 176)
R1Q_DEQUANT(q6_k, 256, 210)
R1Q_DEQUANT(iq4_nl, 32, 18)
R1Q_DEQUANT(iq4_xs, 256, 136)

/* Rows row0.. of an FP8 weight: `src` holds those rows only, `scales` the whole scale grid. */
extern "C" __global__ void r1q_dequant_fp8_block(const u8 *src, const float *scales, float *dst,
                                                 u64 n, u64 cols, u64 row0, u64 scale_cols,
                                                 u64 b0, u64 b1) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 r = i / cols, c = i % cols;
        dst[i] = fp8_block_value(src[i], scales, row0 + r, c, scale_cols, b0, b1);
    }
}

/* g = silu(g) * u over n elements, in place (the routed experts' activation). */
extern "C" __global__ void r1q_swiglu(float *g, const float *u, u64 n) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        g[i] = swiglu_value(g[i], u[i]);
}

/* dst = the rows idx[0..rows) of x, cols wide (an expert's routed tokens). */
extern "C" __global__ void r1q_gather_rows(const float *x, const u32 *idx, float *dst, u64 rows,
                                           u64 cols) {
    u64 stride = (u64)gridDim.x * blockDim.x, n = rows * cols;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = gather_elem(x, idx, i, cols);
}

/* acc[idx[r], :] += w[r] * y[r, :] for r < rows; the idx of one launch are distinct (a token
   is routed to an expert at most once), so no two threads touch the same float. */
extern "C" __global__ void r1q_scatter_add_rows(float *acc, const float *y, const u32 *idx,
                                                const float *w, u64 rows, u64 cols) {
    u64 stride = (u64)gridDim.x * blockDim.x, n = rows * cols;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        scatter_add_elem(acc, y, idx, w, i, cols);
}

/* The causal softmax of a compact [rows, n] score block, one thread per row. */
extern "C" __global__ void r1q_causal_softmax(float *s, u64 rows, u64 n, u64 group, u64 first,
                                              float scale) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 r = (u64)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride)
        causal_softmax_row(s + r * n, r, n, group, first, scale);
}
#endif
"#;
