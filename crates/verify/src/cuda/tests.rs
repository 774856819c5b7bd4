//! CPU twins of the CUDA backend: the cuBLAS parameter mapping checked by emulating
//! column-major SGEMM, the launch geometry, the kernel table, and the kernels' own C source run
//! on the host (compiled with the system C compiler, skipped with a message when there is none)
//! against `quantize::dequantize_rows` and the FP8 table, bit for bit.

use std::path::Path;
use std::process::Command;

use formats::ggml_type::GgmlType;

use super::kernels::{launch_dims, KERNELS, MAX_GRID, SOURCE, THREADS};
use super::{
    attention_plan, attn_query_block, gemm_params, head_matmul_plan, mqa_plan, row_major_batched,
    AttnStep, BatchedGemm, GemmParams, Op, Operand, ATTN_SCORES_BYTES,
};
use crate::backend::tests::{fp8_bytes, fp8_raw, values, FP8_SHAPE};
use crate::backend::{absorbed_mqa_cpu, dequantize_cpu, scatter_add, MoeJob, MqaDims, MqaJob};
use crate::ops::{self, AttnShape};
use crate::tensor::{Mat, SeqSpan};

/// Column-major SGEMM as the BLAS reference defines it (α = 1, β = 0), in f64.
fn sgemm_emulated(p: &GemmParams, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let (lda, ldb, ldc) = (p.lda as usize, p.ldb as usize, p.ldc as usize);
    let op_a = |i: usize, l: usize| match p.transa {
        Op::N => a[i + l * lda],
        Op::T => a[l + i * lda],
    };
    let op_b = |l: usize, j: usize| match p.transb {
        Op::N => b[l + j * ldb],
        Op::T => b[j + l * ldb],
    };
    for j in 0..n {
        for i in 0..m {
            let s: f64 = (0..k)
                .map(|l| f64::from(op_a(i, l)) * f64::from(op_b(l, j)))
                .sum();
            c[i + j * ldc] = s as f32;
        }
    }
}

#[test]
fn gemm_mapping_computes_x_times_w_transposed() {
    for &(t, inp, out) in &[(1, 1, 1), (3, 5, 7), (8, 16, 4), (5, 3, 11), (17, 64, 9)] {
        let x = Mat::from_vec(t, inp, values(t * inp, 7 + t as u64));
        let w = Mat::from_vec(out, inp, values(out * inp, 99 + out as u64));
        let p = gemm_params(t, inp, out).expect("fits i32");
        assert_eq!((p.transa, p.transb), (Op::T, Op::N));
        assert_eq!((p.m, p.n, p.k), (out as i32, t as i32, inp as i32));
        // A = w's buffer, B = x's buffer, C = y's buffer, all as the engine stores them.
        let mut y = vec![0f32; t * out];
        sgemm_emulated(&p, &w.data, &x.data, &mut y);
        let want = ops::matmul_naive(&x, &w);
        assert_eq!(y, want.data, "T={t} in={inp} out={out}");
        // Every leading dimension covers its operand exactly (no overlap, no gap).
        assert_eq!(p.lda as usize * out, w.data.len());
        assert_eq!(p.ldb as usize * t, x.data.len());
        assert_eq!(p.ldc as usize * t, y.len());
    }
}

#[test]
fn gemm_mapping_refuses_dimensions_beyond_i32() {
    assert!(gemm_params(1 << 31, 16, 16).is_err());
    assert!(gemm_params(16, 16, usize::MAX).is_err());
    assert!(gemm_params(i32::MAX as usize, 1, 1).is_ok());
}

/// The largest `|got − want| / (1 + |want|)`: f32 reassociation error, relative where values
/// are large and absolute near zero.
fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0f32, f32::max)
}

/// An attention case over `t` tokens: H query heads on G K/V heads, scale 1/√dk, and
/// pseudo-random q, k, v (seeded from `seed`).
fn attn_case(
    t: usize,
    (h, g, dk, dv): (usize, usize, usize, usize),
    seed: u64,
) -> (AttnShape, Mat, Mat, Mat) {
    let shape = AttnShape {
        n_head: h,
        n_head_kv: g,
        head_dim_k: dk,
        head_dim_v: dv,
        scale: 1.0 / (dk as f32).sqrt(),
    };
    let q = Mat::from_vec(t, h * dk, values(t * h * dk, seed + h as u64));
    let k = Mat::from_vec(t, g * dk, values(t * g * dk, seed + 1 + g as u64));
    let v = Mat::from_vec(t, g * dv, values(t * g * dv, seed + 2 + dv as u64));
    (shape, q, k, v)
}

/// Runs one [`BatchedGemm`] on host buffers with the SGEMM emulation, after checking that
/// its extents lie inside them (what the device code checks before the cuBLAS call).
fn batched_emulated(g: &BatchedGemm, lhs: &[f32], rhs: &[f32], out: &mut [f32]) {
    let [el, er, eo] = g.extents();
    assert!(
        el <= lhs.len() && er <= rhs.len() && eo <= out.len(),
        "{g:?} reaches beyond its buffers"
    );
    for b in 0..g.batch {
        sgemm_emulated(
            &g.params,
            &rhs[g.rhs.offset + b * g.rhs.stride..],
            &lhs[g.lhs.offset + b * g.lhs.stride..],
            &mut out[g.out.offset + b * g.out.stride..],
        );
    }
}

/// An attention plan's steps run on host buffers: the emulated SGEMMs with the CPU's causal
/// softmax between them, as the device runs them with its kernel.
fn attention_emulated(
    steps: &[AttnStep],
    scores_len: usize,
    scale: f32,
    (q, k, v): (&[f32], &[f32], &[f32]),
    y: &mut [f32],
) {
    let mut sc = vec![f32::NAN; scores_len];
    for st in steps {
        batched_emulated(&st.scores, q, k, &mut sc);
        let m = &st.softmax;
        let block = &mut sc[..m.rows * m.n];
        ops::attention::causal_softmax(block, m.n, m.group, m.first, scale);
        batched_emulated(&st.pv, &sc, v, y);
    }
}

/// The device attention plan, executed on the host (emulated cuBLAS calls at the plan's
/// offsets, leading dimensions and strides, the CPU's causal softmax between), is
/// `ops::attention`: MQA (one SGEMM per step, heads folded into rows), GQA (batched over the
/// group's heads), MHA, with the score buffer bounded so spans split into query blocks, and
/// tokens outside every span left zero.
#[test]
fn attention_plan_emulated_is_ops_attention() {
    let seqs = [SeqSpan { start: 1, len: 5 }, SeqSpan { start: 7, len: 9 }];
    let t = 17;
    // (n_head, n_head_kv, dk, dv, max_scores)
    for (h, g, dk, dv, max_scores) in [
        (4, 1, 12, 8, usize::MAX),
        (4, 1, 12, 8, 30),
        (6, 2, 8, 5, usize::MAX),
        (6, 3, 8, 5, 40),
        (3, 3, 4, 6, 1),
    ] {
        let (shape, q, k, v) = attn_case(t, (h, g, dk, dv), 1);
        let (steps, scores_len) = attention_plan(t, &seqs, &shape, max_scores).expect("plan");
        let group = h / g;
        let blocks: usize = seqs
            .iter()
            .map(|s| s.len.div_ceil(attn_query_block(s.len, group, max_scores)))
            .sum();
        assert_eq!(steps.len(), blocks * g);
        if max_scores == usize::MAX {
            assert_eq!(blocks, seqs.len());
        } else {
            assert!(blocks > seqs.len(), "the bound splits the spans");
            assert!(scores_len <= max_scores.max(group * 9), "{scores_len}");
        }
        let mut y = vec![0f32; t * h * dv];
        for st in &steps {
            if g == 1 {
                assert_eq!(st.scores.batch, 1, "MQA: one SGEMM");
                assert_eq!(st.scores.params.n as usize, st.softmax.rows);
            }
        }
        attention_emulated(
            &steps,
            scores_len,
            shape.scale,
            (&q.data, &k.data, &v.data),
            &mut y,
        );
        let want = ops::attention(&q, &k, &v, &seqs, &shape);
        let err = max_rel_err(&y, &want.data);
        assert!(err < 1e-5, "H={h} G={g} bound {max_scores}: {err}");
        for r in [0, 6, 16] {
            assert!(y[r * h * dv..(r + 1) * h * dv].iter().all(|&x| x == 0.0));
        }
    }
    // Spans beyond the tokens and impossible shapes have no plan.
    let shape = AttnShape {
        n_head: 4,
        n_head_kv: 3,
        head_dim_k: 8,
        head_dim_v: 8,
        scale: 1.0,
    };
    assert!(attention_plan(t, &seqs, &shape, usize::MAX).is_err());
    let shape = AttnShape {
        n_head_kv: 1,
        ..shape
    };
    assert!(attention_plan(15, &seqs, &shape, usize::MAX).is_err());
    assert_eq!(attention_plan(0, &[], &shape, 1), Ok((Vec::new(), 0)));
    let empty = [SeqSpan { start: 99, len: 0 }];
    assert_eq!(attention_plan(0, &empty, &shape, 1), Ok((Vec::new(), 0)));
}

/// The device plan of `Backend::absorbed_mqa` — absorb by a batched SGEMM reading the heads'
/// nope slices in place, the rope slices moved by an identity SGEMM, the attention plan,
/// decompress — executed with the SGEMM emulation, is the CPU reference (the separate steps),
/// both the heads' output and the latent the observer sees; and with no rope dimensions there
/// is no copy step.
#[test]
fn mqa_plan_emulated_is_absorbed_mqa_cpu() {
    let seqs = [SeqSpan { start: 0, len: 4 }, SeqSpan { start: 5, len: 6 }];
    let t = 12;
    for (h, nope, rope, kv_lora, v_head) in [(4, 6, 4, 8, 5), (3, 5, 0, 7, 4)] {
        let dims = MqaDims {
            n_head: h,
            nope,
            rope,
            kv_lora,
            v_head,
        };
        let (qh, ka) = (dims.q_head(), dims.k_abs());
        let q = Mat::from_vec(t, h * qh, values(t * h * qh, 31));
        let k = Mat::from_vec(t, ka, values(t * ka, 32));
        let mut v = Mat::zeros(t, kv_lora);
        for (dst, src) in v
            .data
            .chunks_exact_mut(kv_lora)
            .zip(k.data.chunks_exact(ka))
        {
            dst.copy_from_slice(&src[..kv_lora]);
        }
        let k_b = Mat::from_vec(h * kv_lora, nope, values(h * kv_lora * nope, 33));
        let v_b = Mat::from_vec(h * v_head, kv_lora, values(h * v_head * kv_lora, 34));
        let job = MqaJob {
            names: ["k_b", "v_b"],
            q: &q,
            k: &k,
            v: &v,
            k_b: &k_b,
            v_b: &v_b,
            dims,
            seqs: &seqs,
            scale: 0.3,
            keep_latent: true,
        };
        let want = absorbed_mqa_cpu(&job);

        let plan = mqa_plan(t, (h, nope, rope, kv_lora, v_head)).expect("plan");
        assert_eq!(plan.rope_copy.is_some(), rope > 0);
        let mut q_abs = vec![f32::NAN; t * h * ka];
        batched_emulated(&plan.absorb, &q.data, &k_b.data, &mut q_abs);
        if let Some(copy) = &plan.rope_copy {
            let mut identity = vec![0f32; rope * rope];
            identity.iter_mut().step_by(rope + 1).for_each(|x| *x = 1.0);
            batched_emulated(copy, &q.data, &identity, &mut q_abs);
        }
        assert!(
            q_abs.iter().all(|x| x.is_finite()),
            "every q_abs value written"
        );
        let shape = job.shape();
        let (steps, scores_len) = attention_plan(t, &seqs, &shape, usize::MAX).expect("plan");
        let mut latent = vec![0f32; t * h * kv_lora];
        attention_emulated(
            &steps,
            scores_len,
            shape.scale,
            (&q_abs, &k.data, &v.data),
            &mut latent,
        );
        let mut o = vec![0f32; t * h * v_head];
        batched_emulated(&plan.decompress, &latent, &v_b.data, &mut o);

        let want_latent = want.latent.expect("kept");
        assert!(
            max_rel_err(&latent, &want_latent.data) < 1e-5,
            "latent, rope {rope}"
        );
        let err = max_rel_err(&o, &want.o.data);
        assert!(err < 1e-5, "output, rope {rope}: {err}");
    }
}

/// `head_matmul`'s one batched SGEMM, executed with the SGEMM emulation, is the CPU's
/// per-head loop (within f32 summation order), at a column stride equal to and wider than a
/// head's output; the columns between heads are not touched.
#[test]
fn head_matmul_plan_emulated_is_the_per_head_loop() {
    let (t, heads, inp, out) = (9, 4, 6, 5);
    let x = Mat::from_vec(t, heads * inp, values(t * heads * inp, 91));
    let w = Mat::from_vec(heads * out, inp, values(heads * out * inp, 92));
    for col_stride in [out, out + 3] {
        let cols = (heads - 1) * col_stride + out;
        let plan =
            head_matmul_plan(t, (heads, inp, out), x.cols, (cols, col_stride)).expect("plan");
        assert_eq!(plan.batch, heads);
        let mut got = vec![-3.0f32; t * cols];
        batched_emulated(&plan, &x.data, &w.data, &mut got);
        let mut want = Mat::from_vec(t, cols, vec![-3.0; t * cols]);
        crate::backend::head_matmul_cpu(&x, &w, heads, &mut want, col_stride);
        let err = max_rel_err(&got, &want.data);
        assert!(err < 1e-5, "col_stride {col_stride}: {err}");
        let untouched = |v: &[f32]| {
            (0..t * cols)
                .filter(|i| i % cols % col_stride >= out)
                .all(|c| v[c] == -3.0)
        };
        assert!(untouched(&got) && untouched(&want.data));
    }
    assert!(head_matmul_plan(t, (heads, inp, out), x.cols, (3 * out + 4, out + 1)).is_err());
    assert!(head_matmul_plan(t, (0, inp, out), x.cols, (out, out)).is_err());
}

#[test]
fn attention_query_blocks_bound_the_score_buffer() {
    let limit = ATTN_SCORES_BYTES / 4;
    // R1 (128 heads on one latent K/V head): 512 tokens in one block, 4096 in blocks of 512.
    assert_eq!(attn_query_block(512, 128, limit), 512);
    assert_eq!(attn_query_block(4096, 128, limit), 512);
    assert_eq!(attn_query_block(7, 1, limit), 7);
    // Never empty, even when one query's scores alone exceed the bound.
    assert_eq!(attn_query_block(1000, 128, 10), 1);
    assert_eq!(attn_query_block(0, 4, 10), 1);
}

#[test]
fn batched_gemm_refuses_empty_or_inconsistent_shapes() {
    let o = |ld| Operand {
        offset: 0,
        ld,
        stride: 0,
    };
    assert!(row_major_batched((2, 3, 4), o(4), (o(4), true), o(3), 1).is_ok());
    assert!(row_major_batched((2, 3, 4), o(4), (o(3), false), o(3), 1).is_ok());
    assert!(row_major_batched((0, 3, 4), o(4), (o(4), true), o(3), 1).is_err());
    assert!(row_major_batched((2, 3, 4), o(4), (o(4), true), o(3), 0).is_err());
    assert!(row_major_batched((2, 3, 4), o(3), (o(4), true), o(3), 1).is_err());
    assert!(row_major_batched((2, 3, 4), o(4), (o(2), false), o(3), 1).is_err());
    assert!(row_major_batched((2, 3, 4), o(4), (o(4), true), o(2), 1).is_err());
    assert!(row_major_batched((1 << 31, 3, 4), o(4), (o(4), true), o(3), 1).is_err());
}

#[test]
fn launch_geometry_covers_every_element() {
    assert_eq!(launch_dims(0), None);
    assert_eq!(launch_dims(1), Some((1, THREADS)));
    assert_eq!(launch_dims(256), Some((1, THREADS)));
    assert_eq!(launch_dims(257), Some((2, THREADS)));
    // A 256-expert R1 stack (3.7 G elements) is capped and covered by the grid-stride loop.
    let n = 256u64 * 2048 * 7168;
    let (grid, threads) = launch_dims(n).expect("non-empty");
    assert_eq!(grid, MAX_GRID);
    let stride = u64::from(grid) * u64::from(threads);
    assert!(stride * n.div_ceil(stride) >= n);
}

#[test]
fn kernel_table_matches_the_ggml_type_table() {
    for k in KERNELS {
        assert_eq!(u64::from(k.block), k.ty.block_size(), "{}", k.ty);
        assert_eq!(u64::from(k.bytes), k.ty.type_size(), "{}", k.ty);
        assert!(
            quantize::supports(k.ty),
            "{} has a kernel but no CPU reference",
            k.ty
        );
        let short = k.kernel.trim_start_matches("r1q_dequant_");
        assert_eq!(k.elem, format!("elem_{short}"));
        let launch = format!("R1Q_DEQUANT({short}, {}, {})", k.block, k.bytes);
        assert!(
            SOURCE.contains(&launch),
            "missing `{launch}` in the kernel source"
        );
        assert!(SOURCE.contains(&format!("float {}(const u8 *b, int e)", k.elem)));
    }
    assert!(SOURCE.contains(&format!("void {}(", super::kernels::FP8_KERNEL)));
    assert!(SOURCE.contains(&format!("void {}(float *g", super::kernels::SWIGLU_KERNEL)));
    assert!(SOURCE.contains(&format!(
        "void {}(float *s",
        super::kernels::CAUSAL_SOFTMAX_KERNEL
    )));
    assert!(SOURCE.contains(&format!(
        "void {}(const float *x",
        super::kernels::GATHER_KERNEL
    )));
    assert!(SOURCE.contains(&format!(
        "void {}(float *acc",
        super::kernels::SCATTER_ADD_KERNEL
    )));
}

/// The host C twin: the kernel source with `R1Q_HOST_TWIN`, plus a driver that applies one
/// element function to a file of blocks (mode = index into KERNELS), the FP8 block decoder
/// (mode = -1), SwiGLU (mode = -2), the causal softmax of attention scores (mode = -3) or an
/// expert's gather and weighted scatter-add (mode = -4).
fn harness_source() -> String {
    let table: Vec<&str> = KERNELS.iter().map(|k| k.elem).collect();
    format!(
        r#"#define R1Q_HOST_TWIN 1
{SOURCE}
#include <stdio.h>
#include <stdlib.h>
typedef float (*elem_fn)(const u8 *, int);
static const elem_fn FNS[] = {{ {fns} }};
static u8 *slurp(const char *path, long *len) {{
    FILE *f = fopen(path, "rb"); if (!f) return 0;
    fseek(f, 0, SEEK_END); *len = ftell(f); fseek(f, 0, SEEK_SET);
    u8 *p = malloc(*len + 1); if (fread(p, 1, *len, f) != (size_t)*len) return 0; fclose(f);
    return p;
}}
int main(int argc, char **argv) {{
    if (argc != 9) return 2;
    int mode = atoi(argv[1]);
    u64 a = strtoull(argv[2], 0, 10), b = strtoull(argv[3], 0, 10);
    u64 c = strtoull(argv[4], 0, 10), d = strtoull(argv[5], 0, 10);
    long len = 0, slen = 0;
    u8 *src = slurp(argv[6], &len);
    u8 *sc = slurp(argv[7], &slen);
    if (!src || !sc) return 3;
    FILE *out = fopen(argv[8], "wb"); if (!out) return 4;
    if (mode >= 0) {{ /* a = block, b = bytes, c = n elements */
        for (u64 i = 0; i < c; i++) {{
            float v = FNS[mode](src + (i / a) * b, (int)(i % a));
            fwrite(&v, 4, 1, out);
        }}
    }} else if (mode == -2) {{ /* SwiGLU: src = g, sc = u (c floats each) */
        float *g = (float *)malloc(len + 4), *u = (float *)malloc(slen + 4);
        memcpy(g, src, len); memcpy(u, sc, slen);
        if ((u64)len < 4 * c || (u64)slen < 4 * c) return 5;
        for (u64 i = 0; i < c; i++) {{
            float v = swiglu_value(g[i], u[i]);
            fwrite(&v, 4, 1, out);
        }}
    }} else if (mode == -3) {{ /* causal softmax: a = rows, b = n, c = group, d = first;
                                 src = scores [a, b], sc = the scale (one float) */
        float *s = (float *)malloc(len + 4), scale;
        memcpy(s, src, len);
        if ((u64)len < 4 * a * b || slen < 4) return 5;
        memcpy(&scale, sc, 4);
        for (u64 r = 0; r < a; r++) causal_softmax_row(s + r * b, r, b, c, d, scale);
        fwrite(s, 4, a * b, out);
    }} else if (mode == -4) {{ /* gather + scatter-add: a = rows, b = cols, c = tokens;
                                 src = y [a, b]; sc = idx u32[a] | w f32[a] | acc f32[c, b] |
                                 x f32[c, b]; out = gathered [a, b] then acc [c, b] */
        const u32 *idx = (const u32 *)sc;
        const float *w = (const float *)(sc + 4 * a);
        float *acc = (float *)malloc(4 * c * b + 4);
        const float *x = (const float *)(sc + 8 * a + 4 * c * b);
        if ((u64)len < 4 * a * b || (u64)slen < 8 * a + 8 * c * b) return 5;
        memcpy(acc, sc + 8 * a, 4 * c * b);
        for (u64 i = 0; i < a * b; i++) {{ float v = gather_elem(x, idx, i, b); fwrite(&v, 4, 1, out); }}
        for (u64 i = 0; i < a * b; i++) scatter_add_elem(acc, (const float *)src, idx, w, i, b);
        fwrite(acc, 4, c * b, out);
    }} else {{ /* FP8: a = rows, b = cols, c = b0, d = b1 */
        float *scales = (float *)malloc(slen + 4); memcpy(scales, sc, slen);
        u64 scale_cols = (b + d - 1) / d;
        for (u64 r = 0; r < a; r++) for (u64 col = 0; col < b; col++) {{
            float v = fp8_block_value(src[r * b + col], scales, r, col, scale_cols, c, d);
            fwrite(&v, 4, 1, out);
        }}
    }}
    fclose(out);
    return 0;
}}
"#,
        fns = table.join(", ")
    )
}

/// Compiles the twin into `dir`, or `None` (with a message) when no C compiler is present.
fn build_twin(dir: &Path) -> Option<std::path::PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = dir.join("twin.c");
    let exe = dir.join("twin");
    std::fs::write(&src, harness_source()).expect("write twin.c");
    // -ffp-contract=off: no fused multiply-adds, like the reference and `--fmad=false`.
    let status = Command::new(&cc)
        .args([
            "-std=c99",
            "-O1",
            "-ffp-contract=off",
            "-Wall",
            "-Werror",
            "-Wno-unused-function",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .arg("-lm")
        .status();
    match status {
        Ok(s) if s.success() => Some(exe),
        Ok(s) => panic!("the kernel source does not compile as C ({cc}: {s})"),
        Err(e) => {
            eprintln!("SKIP host twin of the CUDA kernels: no C compiler `{cc}` ({e})");
            None
        }
    }
}

fn run_twin(exe: &Path, dir: &Path, args: [u64; 5], mode: i64, src: &[u8], sc: &[u8]) -> Vec<f32> {
    let (a, b) = (dir.join("src.bin"), dir.join("sc.bin"));
    let o = dir.join("out.bin");
    std::fs::write(&a, src).expect("write");
    std::fs::write(&b, sc).expect("write");
    let status = Command::new(exe)
        .arg(mode.to_string())
        .args(args[..4].iter().map(u64::to_string))
        .arg(&a)
        .arg(&b)
        .arg(&o)
        .status()
        .expect("run twin");
    assert!(status.success(), "twin failed: {status}");
    let _ = args[4];
    std::fs::read(&o)
        .expect("read out")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{what}: element {i}: kernel {g:e} vs reference {w:e}");
    }
}

/// Every kernel's element function, run on the host, equals the CPU reference bit for bit on
/// blocks quantized from varied values (and, for the float types, on special values).
#[test]
fn kernel_source_matches_reference_dequantizers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = build_twin(dir.path()) else {
        return;
    };
    let (rows, width) = (6usize, 512usize);
    let mut x = values(rows * width, 12345);
    // Spread magnitudes (tiny to large) so scales cover subnormal-to-big f16 ranges.
    for (i, v) in x.iter_mut().enumerate() {
        *v *= [1e-6f32, 1e-3, 1.0, 30.0, 1000.0, 0.25][i / width % 6];
    }
    for (mode, k) in KERNELS.iter().enumerate() {
        let row_bytes = k.ty.row_size(width as u64).expect("whole blocks") as usize;
        let mut raw = vec![0u8; rows * row_bytes];
        match k.ty {
            GgmlType::F32 => {
                raw = x.iter().flat_map(|v| v.to_le_bytes()).collect();
                raw[..16].copy_from_slice(&[
                    0, 0, 0x80, 0x7f, 0, 0, 0xc0, 0x7f, 1, 0, 0, 0, 0, 0, 0, 0x80,
                ]);
            }
            GgmlType::F16 | GgmlType::BF16 => {
                // Every 16-bit pattern once (subnormals, infinities, NaNs), cycling.
                for (i, c) in raw.chunks_exact_mut(2).enumerate() {
                    c.copy_from_slice(&((i * 37) as u16).to_le_bytes());
                }
            }
            ty => quantize::quantize_rows(ty, &x, width, None, &mut raw).expect("quantize"),
        }
        let mut want = vec![0f32; rows * width];
        quantize::dequantize_rows(k.ty, &raw, &mut want).expect("reference");
        let n = (rows * width) as u64;
        let got = run_twin(
            &exe,
            dir.path(),
            [u64::from(k.block), u64::from(k.bytes), n, 0, 0],
            mode as i64,
            &raw,
            &[0],
        );
        same_bits(&got, &want, &k.ty.to_string());
    }
}

/// The FP8 kernel's arithmetic equals the CPU reference (the E4M3 table × block scale) on every
/// code, with ragged edge blocks.
#[test]
fn fp8_kernel_source_matches_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = build_twin(dir.path()) else {
        return;
    };
    let (rows, cols, block) = FP8_SHAPE;
    let (data, scales) = fp8_bytes(1e-3);
    let raw = fp8_raw(&data, &scales);
    let mut want = vec![0f32; rows * cols];
    dequantize_cpu(raw, cols, 0..rows, &mut want).expect("reference");
    let args = [
        rows as u64,
        cols as u64,
        block[0] as u64,
        block[1] as u64,
        0,
    ];
    let got = run_twin(&exe, dir.path(), args, -1, &data, &scales);
    same_bits(&got, &want, "fp8 block");
}

/// The SwiGLU kernel's arithmetic equals `ops::swiglu` bit for bit: the same formula in the same
/// order, and the twin's `expf` is the host libm's, which Rust's `f32::exp` calls too. (On the
/// GPU, CUDA's `expf` may differ by up to 2 ulp; the GPU test allows for that.) Covers the
/// ranges where e⁻ˣ underflows and overflows, and signed zeros, infinities and NaN.
#[test]
fn swiglu_kernel_source_matches_ops_swiglu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = build_twin(dir.path()) else {
        return;
    };
    let n = 4096;
    let mut g = values(n, 31);
    for (i, v) in g.iter_mut().enumerate() {
        *v *= [1e-4f32, 0.5, 1.0, 4.0, 20.0, 60.0, 120.0][i % 7];
    }
    g[..8].copy_from_slice(&[
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        88.8,
        -104.0,
    ]);
    let u = values(n, 47);
    let to_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|f| f.to_le_bytes()).collect() };
    let mut want = Mat::from_vec(1, n, g.clone());
    ops::swiglu(&mut want, &Mat::from_vec(1, n, u.clone()));
    let got = run_twin(
        &exe,
        dir.path(),
        [0, 0, n as u64, 0, 0],
        -2,
        &to_bytes(&g),
        &to_bytes(&u),
    );
    same_bits(&got, &want.data, "swiglu");
}

/// The gather and scatter-add kernels' element functions, run as host C over a routed list
/// with tokens out of order and gaps: the gathered rows are `MoeJob::gather`'s and the sum
/// after the scatter is `backend::scatter_add`'s, bit for bit (products rounded before the
/// sums; untouched tokens keep their values).
#[test]
fn gather_and_scatter_kernels_match_the_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = build_twin(dir.path()) else {
        return;
    };
    let (tokens, cols) = (9, 13);
    let list: Vec<(usize, f32)> = [7usize, 0, 3, 8, 5]
        .iter()
        .zip(values(5, 71))
        .map(|(&t, w)| (t, w + 0.5))
        .collect();
    let rows = list.len();
    let x = Mat::from_vec(tokens, cols, values(tokens * cols, 72));
    let y = Mat::from_vec(rows, cols, values(rows * cols, 73));
    let acc0 = values(tokens * cols, 74);

    let mut gathered = Mat::zeros(0, 0);
    let source = crate::backend::tests::expert_source();
    let active = [(0usize, list.as_slice())];
    let job = MoeJob {
        source: &source,
        names: ["g", "u", "d"],
        n_embd: cols,
        n_ff: 1,
        x: &x,
        active: &active,
    };
    job.gather(&list, &mut gathered);
    let mut acc = Mat::from_vec(tokens, cols, acc0.clone());
    scatter_add(&mut acc, &y, &list);

    let mut sc: Vec<u8> = list
        .iter()
        .flat_map(|&(t, _)| (t as u32).to_le_bytes())
        .collect();
    sc.extend(list.iter().flat_map(|&(_, w)| w.to_le_bytes()));
    sc.extend(acc0.iter().flat_map(|v| v.to_le_bytes()));
    sc.extend(x.data.iter().flat_map(|v| v.to_le_bytes()));
    let src: Vec<u8> = y.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let args = [rows as u64, cols as u64, tokens as u64, 0, 0];
    let got = run_twin(&exe, dir.path(), args, -4, &src, &sc);
    assert_eq!(got.len(), rows * cols + tokens * cols);
    same_bits(&got[..rows * cols], &gathered.data, "gather");
    same_bits(&got[rows * cols..], &acc.data, "scatter-add");
    assert_eq!(acc.row(1), &acc0[cols..2 * cols], "token 1 was not routed");
}

/// The causal-softmax kernel's arithmetic equals `ops::attention`'s `causal_softmax` bit for
/// bit (same steps, f64 sum in column order; the twin's `expf` is the host libm's, as Rust's
/// `f32::exp`): a triangle from a row of one element, rows grouped by head with masked tails
/// starting mid-block, a valid count clamped at the row, large and very negative scores, −∞
/// and NaN entries.
#[test]
fn causal_softmax_kernel_source_matches_ops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(exe) = build_twin(dir.path()) else {
        return;
    };
    let to_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|f| f.to_le_bytes()).collect() };
    // (rows, n, group, first, scale, magnitude)
    let cases: [(usize, usize, usize, usize, f32, f32); 6] = [
        (9, 9, 1, 0, 0.125, 1.0),
        (12, 7, 3, 3, 0.0417, 50.0),
        (16, 37, 16, 36, 1.0, 1e4),
        (10, 6, 2, 4, 0.3, 2.0),
        (5, 300, 1, 250, 0.0625, -3e3),
        (4, 1, 4, 0, 2.0, 1.0),
    ];
    for (ci, &(rows, n, group, first, scale, mag)) in cases.iter().enumerate() {
        let mut x: Vec<f32> = values(rows * n, 60 + ci as u64)
            .iter()
            .map(|v| v * mag.abs() + if mag < 0.0 { mag } else { 0.0 })
            .collect();
        if ci == 1 {
            x[n] = f32::NEG_INFINITY; // row 1, column 0: weight 0, the rest normal
            x[2 * n + 1] = f32::NAN; // row 2 becomes NaN (as on the CPU)
        }
        let mut want = x.clone();
        crate::ops::attention::causal_softmax(&mut want, n, group, first, scale);
        let args = [rows as u64, n as u64, group as u64, first as u64, 0];
        let got = run_twin(
            &exe,
            dir.path(),
            args,
            -3,
            &to_bytes(&x),
            &scale.to_le_bytes(),
        );
        same_bits(&got, &want, &format!("causal softmax case {ci}"));
        // The masked tails really are zero and each kept part sums to about 1.
        for (r, row) in want.chunks_exact(n).enumerate() {
            let valid = (first + r / group + 1).min(n);
            assert!(row[valid..].iter().all(|&v| v == 0.0), "case {ci} row {r}");
            let sum: f32 = row[..valid].iter().sum();
            assert!(
                sum.is_nan() || (sum - 1.0).abs() < 1e-4,
                "case {ci} row {r}: {sum}"
            );
        }
    }
}

/// A `[rows, cols]` F32 weight of [`values`] (`seed`) dequantized on `backend` under `name`, so
/// the backend holds it resident for the layer (until `end_layer`) and recognises the returned
/// `Mat` as that weight.
#[cfg(feature = "cuda")]
fn resident_f32(
    backend: &super::CudaBackend,
    name: &str,
    (rows, cols): (usize, usize),
    seed: u64,
) -> Mat {
    use crate::backend::{Backend, RawTensor};
    let bytes: Vec<u8> = values(rows * cols, seed)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let raw = RawTensor::Ggml {
        ty: GgmlType::F32,
        data: &bytes,
    };
    let mut w = vec![0f32; rows * cols];
    backend
        .dequantize(name, raw, cols, 0..rows, &mut w)
        .expect("device f32");
    Mat::from_vec(rows, cols, w)
}

/// GPU 0 for the `gpu_` tests, or `None` with a SKIP line when no GPU can be opened (no
/// driver, no device: CI and this machine).
#[cfg(feature = "cuda")]
fn open_gpu() -> Option<super::CudaBackend> {
    super::CudaBackend::new(0)
        .map_err(|e| eprintln!("SKIP gpu test: {e}"))
        .ok()
}

/// On a GPU machine (`cargo xtask gpu-check` runs it with `--ignored`): every kernel on the
/// device equals the CPU reference bit for bit, and cuBLAS's products (one weight, or several
/// sharing their input) match `ops::matmul` within f32 reassociation error. Skips with a
/// message when no GPU can be opened.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU; run by `cargo xtask gpu-check`"]
fn gpu_kernels_and_gemm_match_cpu() {
    use crate::backend::{Backend, Device, RawTensor};
    let Some(backend) = open_gpu() else {
        return;
    };
    eprintln!("gpu: {}", backend.describe());
    assert_eq!(backend.device(), Device::Cuda(0));
    let (rows, width) = (64usize, 1024usize);
    let x = values(rows * width, 77);
    for k in KERNELS {
        let row_bytes = k.ty.row_size(width as u64).expect("whole blocks") as usize;
        let mut raw = vec![0u8; rows * row_bytes];
        match k.ty {
            GgmlType::F32 => raw = x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 | GgmlType::BF16 => {
                for (i, c) in raw.chunks_exact_mut(2).enumerate() {
                    c.copy_from_slice(&((i * 37) as u16).to_le_bytes());
                }
            }
            ty => quantize::quantize_rows(ty, &x, width, None, &mut raw).expect("quantize"),
        }
        let t = RawTensor::Ggml {
            ty: k.ty,
            data: &raw,
        };
        for r in [0..rows, 5..17] {
            let n = r.len() * width;
            let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
            backend
                .dequantize("t", t, width, r.clone(), &mut got)
                .expect("device dequantize");
            dequantize_cpu(t, width, r.clone(), &mut want).expect("reference");
            same_bits(&got, &want, &format!("{} rows {r:?}", k.ty));
        }
        backend.end_layer().expect("no device error");
    }
    // FP8 with ragged blocks, a row range starting inside a scale block.
    let (fr, fc, _) = FP8_SHAPE;
    let (data, scales) = fp8_bytes(1.0);
    let t = fp8_raw(&data, &scales);
    for r in [0..fr, 100..260] {
        let n = r.len() * fc;
        let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
        backend
            .dequantize("fp8", t, fc, r.clone(), &mut got)
            .expect("device fp8");
        dequantize_cpu(t, fc, r.clone(), &mut want).expect("reference");
        same_bits(&got, &want, &format!("fp8 rows {r:?}"));
    }
    backend.end_layer().expect("no device error");
    // GEMM: resident weight (dequantized above under its name) and uploaded weight.
    let w = resident_f32(&backend, "w", (96, 320), 3);
    let xm = Mat::from_vec(37, 320, values(37 * 320, 9));
    let want = ops::matmul_naive(&xm, &w);
    for name in ["w", "not-resident"] {
        let got = backend.matmul(name, &xm, &w);
        let err = max_rel_err(&got.data, &want.data);
        assert!(
            err < 1e-4,
            "{name}: GEMM differs from the reference by {err}"
        );
    }
    // Several products of one input (x uploaded once): each as the reference, in order.
    let w2 = Mat::from_vec(40, 320, values(40 * 320, 4));
    let want2 = ops::matmul_naive(&xm, &w2);
    let got = backend.matmuls(&xm, &[("w", &w), ("w2", &w2)]);
    assert_eq!(got.len(), 2);
    assert!(max_rel_err(&got[0].data, &want.data) < 1e-4, "matmuls 0");
    assert!(max_rel_err(&got[1].data, &want2.data) < 1e-4, "matmuls 1");
    backend.end_layer().expect("no device error");
}

/// On a GPU machine (`cargo xtask gpu-check` runs it with `--ignored`): a routed expert on the
/// device (raw rows uploaded and dequantized there, three SGEMMs, the SwiGLU kernel) gives the
/// CPU path's g and y within f32 reassociation error (and CUDA's `expf`, within 2 ulp), also
/// when a weight has no raw bytes and goes up as host f32. Skips when no GPU can be opened.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU; run by `cargo xtask gpu-check`"]
fn gpu_expert_ffn_matches_cpu() {
    use crate::backend::tests::{expert_job, expert_source, EXPS, N_EMBD};
    use crate::backend::{expert_ffn_cpu, Backend, ExpertOut};
    use crate::source::WeightSource;

    let Some(backend) = open_gpu() else {
        return;
    };
    assert_eq!(backend.experts_at_once(64), 1);
    let src = expert_source();
    let mut hide = expert_source();
    hide.no_raw = Some(EXPS[2]);
    let (mut got, mut want) = (ExpertOut::default(), ExpertOut::default());
    let rel = |a: &Mat, b: &Mat| {
        assert_eq!((a.rows, a.cols), (b.rows, b.cols));
        max_rel_err(&a.data, &b.data)
    };
    for (source, e, n) in [
        (&src as &dyn WeightSource, 2, 37),
        (&src, 0, 1),
        (&hide, 1, 9),
    ] {
        let x = Mat::from_vec(n, N_EMBD, values(n * N_EMBD, 500 + n as u64));
        let job = expert_job(source, e, &x, true);
        backend.expert_ffn(&job, &mut got).expect("device expert");
        expert_ffn_cpu(&job, &mut want).expect("cpu expert");
        let (eg, ey) = (rel(&got.g, &want.g), rel(&got.y, &want.y));
        eprintln!("expert {e}, {n} tokens: g {eg:.2e}, y {ey:.2e}");
        assert!(eg < 1e-4 && ey < 1e-4, "expert {e}: g {eg}, y {ey}");
    }
    backend.end_layer().expect("no device error");
}

/// On a GPU machine (`cargo xtask gpu-check` runs it with `--ignored`): `CudaBackend::attention`
/// (cuBLAS products around the causal-softmax kernel) gives `ops::attention`'s output within
/// 1e-4 of 1 + |reference| per element (f32 reassociation in cuBLAS, CUDA's `expf` within
/// 2 ulp), with the rows outside every span exactly zero: MQA as MLA uses it (16 heads of
/// dk 96 on one K/V head of dv 64), GQA and MHA, over two spans of 37 and 64 tokens with gap
/// rows — once with the default score bound (one block per span) and once with a bound that
/// splits the spans into query blocks. Skips when no GPU can be opened.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU; run by `cargo xtask gpu-check`"]
fn gpu_attention_matches_cpu() {
    use crate::backend::Backend;

    let Some(backend) = open_gpu() else {
        return;
    };
    let seqs = [
        SeqSpan { start: 0, len: 37 },
        SeqSpan { start: 39, len: 64 },
    ];
    let t = 105;
    for (h, g, dk, dv) in [(16, 1, 96, 64), (8, 2, 64, 64), (6, 6, 32, 48)] {
        let (shape, q, k, v) = attn_case(t, (h, g, dk, dv), 21);
        let want = ops::attention(&q, &k, &v, &seqs, &shape);
        let whole = backend.attention(&q, &k, &v, &seqs, &shape);
        backend.end_layer().expect("no device error");
        let blocked = backend
            .attention_device((&q, &k, &v), &seqs, &shape, (h / g) * 64 * 5)
            .expect("device attention in query blocks");
        for (label, got) in [("one block per span", &whole), ("query blocks", &blocked)] {
            assert_eq!((got.rows, got.cols), (want.rows, want.cols));
            let err = max_rel_err(&got.data, &want.data);
            eprintln!("attention H={h} G={g} dk={dk} dv={dv}, {label}: {err:.2e}");
            assert!(err < 1e-4, "H={h} G={g} {label}: {err}");
            for r in [37, 38, 103, 104] {
                assert!(got.row(r).iter().all(|&x| x == 0.0), "row {r} {label}");
            }
        }
    }
}

/// On a GPU machine (`cargo xtask gpu-check` runs it with `--ignored`): `CudaBackend::head_matmul`
/// (one strided-batched SGEMM over the heads) gives the CPU's per-head products within 1e-4 of
/// 1 + |reference|, with the weight resident (dequantized under its name) or uploaded, at an
/// R1-like layout (`attn_k_b`: outputs at a stride wider than a head, the columns between
/// them kept; `attn_v_b`: heads side by side). Skips when no GPU can be opened.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU; run by `cargo xtask gpu-check`"]
fn gpu_head_matmul_matches_cpu() {
    use crate::backend::{head_matmul_cpu, Backend};

    let Some(backend) = open_gpu() else {
        return;
    };
    let (t, heads) = (37, 16);
    // (inp, out, col_stride): k_b-like (nope 32 → latent 64, next to a 16-wide rope part) and
    // v_b-like (latent 64 → 32).
    for (inp, out, col_stride) in [(32, 64, 80), (64, 32, 32)] {
        let x = Mat::from_vec(t, heads * inp, values(t * heads * inp, 93));
        let w = resident_f32(&backend, "w_b", (heads * out, inp), 94);
        let cols = (heads - 1) * col_stride + out;
        let fill = values(t * cols, 95);
        let mut want = Mat::from_vec(t, cols, fill.clone());
        head_matmul_cpu(&x, &w, heads, &mut want, col_stride);
        for name in ["w_b", "not-resident"] {
            let mut got = Mat::from_vec(t, cols, fill.clone());
            backend.head_matmul(name, &x, &w, heads, &mut got, col_stride);
            let err = max_rel_err(&got.data, &want.data);
            eprintln!("head_matmul {inp}→{out} stride {col_stride} ({name}): {err:.2e}");
            assert!(err < 1e-4, "{name}: {err}");
        }
        backend.end_layer().expect("no device error");
    }
}

/// On a GPU machine: `absorbed_mqa` on the device (the wide intermediates on board) matches
/// the CPU reference — the heads' output and the latent the observer gets — with `attn_k_b` /
/// `attn_v_b` resident (dequantized under their names) or uploaded, over two spans, and with
/// the latent left on the device when not asked for.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU; run by `cargo xtask gpu-check`"]
fn gpu_absorbed_mqa_matches_cpu() {
    use crate::backend::Backend;

    let Some(backend) = open_gpu() else {
        return;
    };
    let seqs = [
        SeqSpan { start: 0, len: 29 },
        SeqSpan { start: 29, len: 40 },
    ];
    let t = 69;
    let dims = MqaDims {
        n_head: 16,
        nope: 32,
        rope: 16,
        kv_lora: 64,
        v_head: 32,
    };
    let (h, qh, ka) = (dims.n_head, dims.q_head(), dims.k_abs());
    let q = Mat::from_vec(t, h * qh, values(t * h * qh, 101));
    let k = Mat::from_vec(t, ka, values(t * ka, 102));
    let mut v = Mat::zeros(t, dims.kv_lora);
    for (dst, src) in v
        .data
        .chunks_exact_mut(dims.kv_lora)
        .zip(k.data.chunks_exact(ka))
    {
        dst.copy_from_slice(&src[..dims.kv_lora]);
    }
    let k_b = resident_f32(&backend, "k_b", (h * dims.kv_lora, dims.nope), 103);
    let v_b = resident_f32(&backend, "v_b", (h * dims.v_head, dims.kv_lora), 104);
    for (names, keep_latent) in [(["k_b", "v_b"], true), (["other", "else"], false)] {
        let job = MqaJob {
            names,
            q: &q,
            k: &k,
            v: &v,
            k_b: &k_b,
            v_b: &v_b,
            dims,
            seqs: &seqs,
            scale: 1.0 / (ka as f32).sqrt(),
            keep_latent,
        };
        let want = absorbed_mqa_cpu(&MqaJob {
            keep_latent: true,
            ..job
        });
        let got = backend.absorbed_mqa(&job);
        let err = max_rel_err(&got.o.data, &want.o.data);
        eprintln!("absorbed_mqa ({names:?}): output {err:.2e}");
        assert!(err < 1e-4, "{names:?}: {err}");
        match (&got.latent, &want.latent) {
            (Some(g), Some(w)) if keep_latent => {
                let err = max_rel_err(&g.data, &w.data);
                eprintln!("absorbed_mqa ({names:?}): latent {err:.2e}");
                assert!(err < 1e-4, "latent: {err}");
            }
            (None, _) if !keep_latent => {}
            _ => panic!(
                "latent returned {} with keep_latent {keep_latent}",
                got.latent.is_some()
            ),
        }
        backend.end_layer().expect("no device error");
    }
}

/// On a GPU machine: `moe_experts` on the device (the layer input up once, each expert's
/// tokens gathered and its weighted output added on board, the sum down once) matches the
/// CPU's expert-by-expert reference for a layer of three quantized experts (Q4_K, Q8_0,
/// Q6_K) with overlapping, out-of-order token lists, and the observer sees the same experts
/// in the same order with the same inputs and, within f32 reassociation, the same g.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU; run by `cargo xtask gpu-check`"]
fn gpu_moe_experts_matches_cpu() {
    use crate::backend::tests::{expert_source, EXPS, N_EMBD, N_FF};
    use crate::backend::{moe_experts_steps, Backend, CpuBackend};

    let Some(backend) = open_gpu() else {
        return;
    };
    let source = expert_source();
    let t = 41;
    let x = Mat::from_vec(t, N_EMBD, values(t * N_EMBD, 111));
    let lists: Vec<Vec<(usize, f32)>> = vec![
        (0..t).step_by(3).map(|r| (r, 0.25)).collect(),
        (0..t)
            .rev()
            .step_by(2)
            .map(|r| (r, 0.5 + r as f32 / 100.0))
            .collect(),
        vec![(40, 1.0), (0, -0.75), (17, 0.125)],
    ];
    let active: Vec<(usize, &[(usize, f32)])> = lists
        .iter()
        .enumerate()
        .map(|(e, l)| (e, l.as_slice()))
        .collect();
    let job = MoeJob {
        source: &source,
        names: EXPS,
        n_embd: N_EMBD,
        n_ff: N_FF,
        x: &x,
        active: &active,
    };
    type Seen = Vec<(usize, Vec<f32>, Vec<f32>)>;
    let run = |b: &dyn Backend, observed: bool| -> (Mat, Seen) {
        let mut seen = Vec::new();
        let mut f = |e: usize, xe: &Mat, g: &Mat| seen.push((e, xe.data.clone(), g.data.clone()));
        let y = if observed {
            b.moe_experts(&job, Some(&mut f))
        } else {
            b.moe_experts(&job, None)
        }
        .expect("moe_experts");
        (y, seen)
    };
    let (want, want_seen) = (
        moe_experts_steps(&CpuBackend, &job, None).expect("cpu"),
        run(&CpuBackend, true).1,
    );
    for observed in [false, true] {
        let (got, seen) = run(&backend, observed);
        let err = max_rel_err(&got.data, &want.data);
        eprintln!("moe_experts (observed {observed}): {err:.2e}");
        assert!(err < 1e-3, "observed {observed}: {err}");
        if observed {
            assert_eq!(seen.len(), want_seen.len());
            for ((e, xe, g), (we, wxe, wg)) in seen.iter().zip(&want_seen) {
                assert_eq!((e, xe), (we, wxe), "expert order and gathered inputs");
                assert!(max_rel_err(g, wg) < 1e-3, "g of expert {e}");
            }
        } else {
            assert!(seen.is_empty());
        }
        backend.end_layer().expect("no device error");
    }
}

/// NVRTC (which needs no GPU: pip's `nvidia-cuda-nvrtc` wheel is enough, and `cargo xtask test`
/// provides it) accepts the kernel source with the backend's options, and the PTX defines every
/// kernel the backend loads. Without this, a source NVRTC rejects would only show on a GPU
/// machine, as `--device cuda` failing to open. Skips when `libnvrtc` cannot be loaded, unless
/// `R1Q_REQUIRE_NVRTC` is set (CI sets it).
#[cfg(feature = "cuda")]
#[test]
fn nvrtc_compiles_every_kernel() {
    // SAFETY: only tries to dlopen the library by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        assert!(
            std::env::var_os("R1Q_REQUIRE_NVRTC").is_none(),
            "R1Q_REQUIRE_NVRTC is set but libnvrtc.so cannot be loaded (LD_LIBRARY_PATH?)"
        );
        eprintln!("SKIP nvrtc test: libnvrtc.so not found");
        return;
    }
    let ptx = super::device::compile_kernels().unwrap_or_else(|e| panic!("{e}"));
    let text = ptx.to_src();
    for name in super::device::kernel_names() {
        assert!(
            text.contains(&format!(".entry {name}(")),
            "kernel {name} missing from the PTX"
        );
    }
}
