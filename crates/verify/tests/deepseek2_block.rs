//! The deepseek2 block (absorbed MLA, grouped MoE) against a naive f64 implementation written
//! from DeepSeek's model definition (REFERENCE §5.6: kv_b expanded per head, ordinary MHA with
//! (nope + rope)-wide keys; softmax_scale · mscale²; YaRN frequencies from the formulas; MoE
//! token by token), on random small weights loaded through `WeightSource` + `ModelConfig` like
//! a GGUF. Also: what the calibration observer sees, and load-time shape errors.

use std::collections::HashMap;
use std::sync::Mutex;

use formats::gguf::GgufValue;
use verify::arch::deepseek2::yarn::{YarnInputs, YarnScales};
use verify::arch::deepseek2::Deepseek2Block;
use verify::error::{Result, VerifyError};
use verify::{Block, LayerCtx, LayerObserver, Mat, ModelConfig, SeqSpan, WeightSource};

#[path = "support/record_attention.rs"]
mod record_attention;
use record_attention::RecordAttention;

// Small dims with every role distinct.
const E: usize = 32; // n_embd
const H: usize = 3; // heads
const QL: usize = 20; // q_lora_rank
const R: usize = 24; // kv_lora_rank
const NOPE: usize = 8;
const ROPE: usize = 6;
const V: usize = 10;
const FF: usize = 40; // dense
const FFE: usize = 12; // expert
const NEXP: usize = 8;
const USED: usize = 3;
const GROUPS: usize = 4;
const GROUPS_USED: usize = 2;
const EPS: f32 = 1e-6;
const FACTOR: f32 = 40.0;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// Tensors and metadata in memory, GGUF-named.
struct MemSource {
    meta: Vec<(String, GgufValue)>,
    tensors: HashMap<String, (Vec<u64>, Vec<f32>)>,
}

impl WeightSource for MemSource {
    fn metadata(&self) -> &[(String, GgufValue)] {
        &self.meta
    }
    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.tensors.get(name).map(|t| t.0.clone())
    }
    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.tensors.get(name).map(|t| 4 * t.1.len() as u64)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensors
            .get(name)
            .map(|t| t.1.clone())
            .ok_or_else(|| self.missing(name))
    }
    fn description(&self) -> String {
        "memory".into()
    }
}

fn model(seed: u64) -> MemSource {
    let u = |v: u32| GgufValue::U32(v);
    let f = GgufValue::F32;
    let k = |s: &str| format!("deepseek2.{s}");
    let meta = vec![
        (
            "general.architecture".into(),
            GgufValue::String("deepseek2".into()),
        ),
        (k("block_count"), u(2)),
        (k("context_length"), u(163840)),
        (k("embedding_length"), u(E as u32)),
        (k("feed_forward_length"), u(FF as u32)),
        (k("attention.head_count"), u(H as u32)),
        (k("attention.head_count_kv"), u(1)),
        (k("rope.freq_base"), f(10000.0)),
        (k("attention.layer_norm_rms_epsilon"), f(EPS)),
        (k("expert_count"), u(NEXP as u32)),
        (k("expert_used_count"), u(USED as u32)),
        (k("expert_group_count"), u(GROUPS as u32)),
        (k("expert_group_used_count"), u(GROUPS_USED as u32)),
        (k("expert_gating_func"), u(2)),
        (k("rope.scaling.type"), GgufValue::String("yarn".into())),
        (k("rope.scaling.factor"), f(FACTOR)),
        (k("rope.scaling.original_context_length"), u(4096)),
        (k("rope.scaling.yarn_log_multiplier"), f(0.1)),
        (k("leading_dense_block_count"), u(1)),
        (k("vocab_size"), u(64)),
        (k("attention.q_lora_rank"), u(QL as u32)),
        (k("attention.kv_lora_rank"), u(R as u32)),
        (k("attention.key_length"), u((R + ROPE) as u32)),
        (k("attention.value_length"), u(R as u32)),
        (k("attention.key_length_mla"), u((NOPE + ROPE) as u32)),
        (k("attention.value_length_mla"), u(V as u32)),
        (k("expert_feed_forward_length"), u(FFE as u32)),
        (k("expert_shared_count"), u(1)),
        (k("expert_weights_scale"), f(2.5)),
        (k("expert_weights_norm"), GgufValue::Bool(true)),
        (k("rope.dimension_count"), u(ROPE as u32)),
    ];
    let mut rng = Rng(seed);
    let mut tensors = HashMap::new();
    let mut add = |name: String, dims: &[usize], scale: f32, offset: f32| {
        let n = dims.iter().product();
        let data: Vec<f32> = rng.vec(n, scale).iter().map(|x| x + offset).collect();
        tensors.insert(name, (dims.iter().map(|&d| d as u64).collect(), data));
    };
    for l in 0..2 {
        let t = |s: &str| format!("blk.{l}.{s}");
        let w = |fan_in: usize| 1.5 / (fan_in as f32).sqrt();
        add(t("attn_norm.weight"), &[E], 0.2, 1.0);
        add(t("attn_q_a.weight"), &[E, QL], w(E), 0.0);
        add(t("attn_q_a_norm.weight"), &[QL], 0.2, 1.0);
        add(
            t("attn_q_b.weight"),
            &[QL, H * (NOPE + ROPE)],
            w(QL) * 2.0,
            0.0,
        );
        add(t("attn_kv_a_mqa.weight"), &[E, R + ROPE], w(E) * 2.0, 0.0);
        add(t("attn_kv_a_norm.weight"), &[R], 0.2, 1.0);
        add(t("attn_k_b.weight"), &[NOPE, R, H], w(NOPE), 0.0);
        add(t("attn_v_b.weight"), &[R, V, H], w(R), 0.0);
        add(t("attn_output.weight"), &[H * V, E], w(H * V), 0.0);
        add(t("ffn_norm.weight"), &[E], 0.2, 1.0);
        if l == 0 {
            add(t("ffn_gate.weight"), &[E, FF], w(E), 0.0);
            add(t("ffn_up.weight"), &[E, FF], w(E), 0.0);
            add(t("ffn_down.weight"), &[FF, E], w(FF), 0.0);
        } else {
            add(t("ffn_gate_inp.weight"), &[E, NEXP], w(E) * 2.0, 0.0);
            add(t("exp_probs_b.bias"), &[NEXP], 0.3, 0.0);
            add(t("ffn_gate_exps.weight"), &[E, FFE, NEXP], w(E), 0.0);
            add(t("ffn_up_exps.weight"), &[E, FFE, NEXP], w(E), 0.0);
            add(t("ffn_down_exps.weight"), &[FFE, E, NEXP], w(FFE), 0.0);
            add(t("ffn_gate_shexp.weight"), &[E, FFE], w(E), 0.0);
            add(t("ffn_up_shexp.weight"), &[E, FFE], w(E), 0.0);
            add(t("ffn_down_shexp.weight"), &[FFE, E], w(FFE), 0.0);
        }
    }
    MemSource { meta, tensors }
}

// ---------------------------------------------------------------- the naive f64 reference

fn get<'a>(src: &'a MemSource, l: usize, s: &str) -> &'a [f32] {
    &src.tensors[&format!("blk.{l}.{s}")].1
}

/// y = W·x with W stored ggml-style {cols = x.len(), rows}.
fn mv(w: &[f32], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| f64::from(*a) * b).sum())
        .collect()
}

fn rms(x: &[f64], w: &[f32]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + f64::from(EPS)).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, w)| v * s * f64::from(*w))
        .collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// YaRN rotation from the formulas (DeepSeek `precompute_freqs_cis` with llama.cpp's ramp
/// bounds): unit magnitude, interpolated low frequencies, extrapolated high ones.
fn rope(x: &mut [f64], pos: usize) {
    let (base, n) = (10000f64, ROPE as f64);
    let corr = |b: f64| n * (4096.0 / (b * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
    let lo = corr(32.0).floor().max(0.0);
    let hi = corr(1.0).ceil().min(n - 1.0);
    for i in 0..ROPE / 2 {
        let ext = pos as f64 * base.powf(-2.0 * i as f64 / n);
        let ramp = 1.0 - ((i as f64 - lo) / (hi - lo).max(0.001)).clamp(0.0, 1.0);
        let theta = ext / f64::from(FACTOR) * (1.0 - ramp) + ext * ramp;
        let (c, s) = (theta.cos(), theta.sin());
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

/// Naive MLA for one sequence: kv_b expanded per head, MHA with (nope+rope)-wide keys.
fn naive_attention(src: &MemSource, l: usize, hs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let k_b = get(src, l, "attn_k_b.weight"); // [h][c][d]
    let v_b = get(src, l, "attn_v_b.weight"); // [h][v][c]
    let mscale = 1.0 + 0.1 * 1.0 * f64::from(FACTOR).ln();
    let scale = mscale * mscale / ((NOPE + ROPE) as f64).sqrt();
    let mut qs = Vec::new(); // per token: per head (q_nope, q_pe)
    let mut ks = Vec::new(); // per token: per head k_nope, shared k_pe
    let mut vs = Vec::new(); // per token: per head v
    for (pos, h) in hs.iter().enumerate() {
        let qa = rms(
            &mv(get(src, l, "attn_q_a.weight"), h),
            get(src, l, "attn_q_a_norm.weight"),
        );
        let q = mv(get(src, l, "attn_q_b.weight"), &qa);
        let kv = mv(get(src, l, "attn_kv_a_mqa.weight"), h);
        let c = rms(&kv[..R], get(src, l, "attn_kv_a_norm.weight"));
        let mut k_pe = kv[R..].to_vec();
        rope(&mut k_pe, pos);
        let mut qh = Vec::new();
        let mut kh = Vec::new();
        let mut vh = Vec::new();
        for head in 0..H {
            let qn = q[head * (NOPE + ROPE)..head * (NOPE + ROPE) + NOPE].to_vec();
            let mut qp = q[head * (NOPE + ROPE) + NOPE..(head + 1) * (NOPE + ROPE)].to_vec();
            rope(&mut qp, pos);
            // kv_b row (256h + d), column c = attn_k_b[d + NOPE·(c + R·h)].
            let kn: Vec<f64> = (0..NOPE)
                .map(|d| {
                    (0..R)
                        .map(|ci| f64::from(k_b[d + NOPE * (ci + R * head)]) * c[ci])
                        .sum()
                })
                .collect();
            let v: Vec<f64> = (0..V)
                .map(|j| {
                    (0..R)
                        .map(|ci| f64::from(v_b[ci + R * (j + V * head)]) * c[ci])
                        .sum()
                })
                .collect();
            qh.push((qn, qp));
            kh.push(kn);
            vh.push(v);
        }
        qs.push(qh);
        ks.push((kh, k_pe));
        vs.push(vh);
    }
    let wo = get(src, l, "attn_output.weight");
    (0..hs.len())
        .map(|i| {
            let mut o = vec![0f64; H * V];
            for head in 0..H {
                let (qn, qp) = &qs[i][head];
                let mut w: Vec<f64> = (0..=i)
                    .map(|j| {
                        let (kn, kp) = (&ks[j].0[head], &ks[j].1);
                        let dot: f64 = qn.iter().zip(kn).map(|(a, b)| a * b).sum::<f64>()
                            + qp.iter().zip(kp).map(|(a, b)| a * b).sum::<f64>();
                        dot * scale
                    })
                    .collect();
                let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                w.iter_mut().for_each(|x| *x = (*x - m).exp());
                let s: f64 = w.iter().sum();
                for (j, wj) in w.iter().enumerate() {
                    for d in 0..V {
                        o[head * V + d] += wj / s * vs[j][head][d];
                    }
                }
            }
            mv(wo, &o)
        })
        .collect()
}

fn naive_swiglu(g: &[f32], u: &[f32], d: &[f32], x: &[f64]) -> Vec<f64> {
    let a: Vec<f64> = mv(g, x)
        .iter()
        .zip(mv(u, x))
        .map(|(g, u)| silu(*g) * u)
        .collect();
    mv(d, &a)
}

fn naive_ffn(src: &MemSource, l: usize, x: &[f64]) -> Vec<f64> {
    if l == 0 {
        return naive_swiglu(
            get(src, l, "ffn_gate.weight"),
            get(src, l, "ffn_up.weight"),
            get(src, l, "ffn_down.weight"),
            x,
        );
    }
    let logits = mv(get(src, l, "ffn_gate_inp.weight"), x);
    let p: Vec<f64> = logits.iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect();
    let bias = get(src, l, "exp_probs_b.bias");
    let s: Vec<f64> = p.iter().zip(bias).map(|(p, b)| p + f64::from(*b)).collect();
    let per = NEXP / GROUPS;
    let mut gscore: Vec<(f64, usize)> = (0..GROUPS)
        .map(|g| {
            let mut v = s[g * per..(g + 1) * per].to_vec();
            v.sort_by(|a, b| b.partial_cmp(a).unwrap());
            (v[0] + v[1], g)
        })
        .collect();
    gscore.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    let kept: Vec<usize> = gscore[..GROUPS_USED].iter().map(|g| g.1).collect();
    let mut cand: Vec<(f64, usize)> = (0..NEXP)
        .filter(|e| kept.contains(&(e / per)))
        .map(|e| (s[e], e))
        .collect();
    cand.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    let chosen: Vec<usize> = cand[..USED].iter().map(|c| c.1).collect();
    let sum: f64 = chosen.iter().map(|&e| p[e]).sum();
    let (g, u, d) = (
        get(src, l, "ffn_gate_exps.weight"),
        get(src, l, "ffn_up_exps.weight"),
        get(src, l, "ffn_down_exps.weight"),
    );
    let mut y = naive_swiglu(
        get(src, l, "ffn_gate_shexp.weight"),
        get(src, l, "ffn_up_shexp.weight"),
        get(src, l, "ffn_down_shexp.weight"),
        x,
    );
    for &e in &chosen {
        let w = p[e] / sum * 2.5;
        let out = naive_swiglu(
            &g[e * FFE * E..(e + 1) * FFE * E],
            &u[e * FFE * E..(e + 1) * FFE * E],
            &d[e * E * FFE..(e + 1) * E * FFE],
            x,
        );
        y.iter_mut().zip(out).for_each(|(a, b)| *a += w * b);
    }
    y
}

fn naive_block(src: &MemSource, l: usize, xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let hs: Vec<Vec<f64>> = xs
        .iter()
        .map(|x| rms(x, get(src, l, "attn_norm.weight")))
        .collect();
    let att = naive_attention(src, l, &hs);
    xs.iter()
        .zip(att)
        .map(|(x, a)| {
            let x1: Vec<f64> = x.iter().zip(a).map(|(x, a)| x + a).collect();
            let f = naive_ffn(src, l, &rms(&x1, get(src, l, "ffn_norm.weight")));
            x1.iter().zip(f).map(|(x, f)| x + f).collect()
        })
        .collect()
}

// ---------------------------------------------------------------- observer

#[derive(Default)]
struct Recorder {
    dense: Mutex<Vec<(String, Mat)>>,
    experts: Mutex<Vec<(String, usize, usize)>>,
}

impl LayerObserver for Recorder {
    fn on_matmul(&self, _layer: usize, weight: &str, input: &Mat) {
        self.dense
            .lock()
            .unwrap()
            .push((weight.to_string(), input.clone()));
    }
    fn on_expert_matmul(&self, _layer: usize, weight: &str, expert: usize, input: &Mat) {
        self.experts
            .lock()
            .unwrap()
            .push((weight.to_string(), expert, input.rows));
    }
}

const SPANS: [SeqSpan; 2] = [SeqSpan { start: 0, len: 7 }, SeqSpan { start: 7, len: 14 }];

#[test]
fn block_matches_the_naive_model_definition() {
    let src = model(3);
    let config = ModelConfig::from_metadata(&src).unwrap();
    let t: usize = SPANS.iter().map(|s| s.len).sum();
    let mut rng = Rng(99);
    let x0 = Mat::from_vec(t, E, rng.vec(t * E, 1.0));
    for layer in 0..2 {
        let block = Deepseek2Block::load_layer(&src, &config, layer).unwrap();
        let rec = Recorder::default();
        let mut ctx = LayerCtx::new(layer, &config, Some(&rec));
        let mut x = x0.clone();
        block.forward(&mut x, &SPANS, &mut ctx).unwrap();
        let mut max_err = 0f64;
        let mut max_val = 0f64;
        for span in SPANS {
            let xs: Vec<Vec<f64>> = (0..span.len)
                .map(|i| {
                    x0.row(span.start + i)
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect()
                })
                .collect();
            let want = naive_block(&src, layer, &xs);
            for (i, w) in want.iter().enumerate() {
                // Compare the block's contribution (output − input), not the residual-dominated sum.
                for ((got, w), x) in x.row(span.start + i).iter().zip(w).zip(&xs[i]) {
                    max_err = max_err.max((f64::from(*got) - w).abs());
                    max_val = max_val.max((w - x).abs());
                }
            }
        }
        let rel = max_err / max_val;
        eprintln!(
            "layer {layer}: max |err| {max_err:.3e} of max |Δx| {max_val:.3e} (rel {rel:.2e})"
        );
        assert!(rel < 1e-5, "layer {layer}: relative error {rel:.2e}");

        // The observer saw what llama-imatrix sees.
        let dense = rec.dense.lock().unwrap();
        let shape = |name: &str| {
            dense
                .iter()
                .find(|(n, _)| n == &format!("blk.{layer}.{name}.weight"))
                .map(|(_, m)| (m.rows, m.cols))
        };
        assert_eq!(shape("attn_q_a"), Some((t, E)));
        assert_eq!(shape("attn_q_b"), Some((t, QL)));
        assert_eq!(shape("attn_kv_a_mqa"), Some((t, E)));
        assert_eq!(shape("attn_k_b"), Some((t, H * NOPE)));
        assert_eq!(shape("attn_v_b"), Some((t, H * R)));
        assert_eq!(shape("attn_output"), Some((t, H * V)));
        if layer == 0 {
            assert_eq!(shape("ffn_gate"), Some((t, E)));
            assert_eq!(shape("ffn_down"), Some((t, FF)));
        } else {
            assert_eq!(shape("ffn_gate_inp"), Some((t, E)));
            assert_eq!(shape("ffn_up_shexp"), Some((t, E)));
            assert_eq!(shape("ffn_down_shexp"), Some((t, FFE)));
            let ex = rec.experts.lock().unwrap();
            for name in ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"] {
                let full = format!("blk.1.{name}.weight");
                let rows: usize = ex.iter().filter(|e| e.0 == full).map(|e| e.2).sum();
                assert_eq!(rows, t * USED, "{name}: rows routed");
            }
        }
        // attn_k_b's input is q_nope, head h in columns h·NOPE.., as q_b's output has it.
        let (_, qa_in) = dense
            .iter()
            .find(|(n, _)| n.ends_with("attn_q_b.weight"))
            .unwrap();
        let (_, kb_in) = dense
            .iter()
            .find(|(n, _)| n.ends_with("attn_k_b.weight"))
            .unwrap();
        let q = verify::ops::matmul(
            qa_in,
            &Mat::from_vec(
                H * (NOPE + ROPE),
                QL,
                get(&src, layer, "attn_q_b.weight").to_vec(),
            ),
        );
        for r in 0..t {
            for head in 0..H {
                let a = &q.row(r)[head * (NOPE + ROPE)..head * (NOPE + ROPE) + NOPE];
                let b = &kb_in.row(r)[head * NOPE..(head + 1) * NOPE];
                for (a, b) in a.iter().zip(b) {
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0));
                }
            }
        }
    }
}

#[test]
fn yarn_scales_are_llama_cpp_s() {
    // DeepSeek-V3/R1: factor 40, mscale_all_dim 1 (stored 0.1), qk 192, n_rot 64.
    let s = YarnScales::new(&YarnInputs {
        n_rot: 64,
        freq_base: 10000.0,
        yarn: true,
        factor: 40.0,
        n_ctx_orig: 4096,
        yarn_log_multiplier_stored: 0.1,
        rope_attn_factor: 1.0,
        key_length_mla: 192,
    });
    let m = 1.0 + 0.1 * 40f64.ln();
    assert!(
        (f64::from(s.kq_scale) - m * m / 192f64.sqrt()).abs() < 1e-6,
        "{}",
        s.kq_scale
    );
    assert!((s.kq_scale - 0.135_233_8).abs() < 1e-6);
    assert!(
        (f64::from(s.attn_factor) - 1.0 / m).abs() < 1e-6,
        "{}",
        s.attn_factor
    );
    assert!((s.rope_magnitude - 1.0).abs() < 1e-6);
    assert_eq!(s.rope.corr_dims, [10.0, 23.0]);
    assert_eq!(s.rope.ext_factor, 1.0);
    assert!((s.rope.freq_scale - 1.0 / 40.0).abs() < 1e-9);

    // The rope's angles follow the YaRN formulas: θ_i = pos·base^(−2i/64), interpolated by
    // 1/40 below the ramp, extrapolated above it, mixed linearly in between.
    let mut cache = vec![0f32; 64];
    for pos in [1usize, 7, 100, 3000] {
        s.rope.cache(pos, &mut cache);
        for i in 0..32 {
            let ext = pos as f64 * 10000f64.powf(-2.0 * i as f64 / 64.0);
            let ramp = 1.0 - ((i as f64 - 10.0) / 13.0).clamp(0.0, 1.0);
            let theta = ext / 40.0 * (1.0 - ramp) + ext * ramp;
            let (c, sn) = (f64::from(cache[2 * i]), f64::from(cache[2 * i + 1]));
            // Unit magnitude, and the angle (f32 iteration of θ: allow ~1e-6 relative in θ).
            assert!(
                (c.hypot(sn) - 1.0).abs() < 1e-5,
                "pos {pos} pair {i}: |.| {}",
                c.hypot(sn)
            );
            let tol = 2e-6 * theta.abs().max(1.0) + 1e-5;
            assert!(
                (c - theta.cos()).abs() < tol,
                "pos {pos} pair {i}: cos {c} vs {}",
                theta.cos()
            );
            assert!(
                (sn - theta.sin()).abs() < tol,
                "pos {pos} pair {i}: sin {sn} vs {}",
                theta.sin()
            );
        }
    }

    // DeepSeek-V2: mscale = mscale_all_dim = 0.707 → attn_factor ratio 1, mscale² from 0.707.
    let v2 = YarnScales::new(&YarnInputs {
        n_rot: 64,
        freq_base: 10000.0,
        yarn: true,
        factor: 40.0,
        n_ctx_orig: 4096,
        yarn_log_multiplier_stored: 0.0707,
        rope_attn_factor: 1.0,
        key_length_mla: 192,
    });
    let m2 = 1.0 + 0.1 * 0.707 * 40f64.ln();
    assert!((f64::from(v2.kq_scale) - m2 * m2 / 192f64.sqrt()).abs() < 1e-5);
    assert!((v2.rope_magnitude - 1.0).abs() < 1e-6);

    // No scaling: plain 1/√192, unscaled rope.
    let plain = YarnScales::new(&YarnInputs {
        n_rot: 64,
        freq_base: 10000.0,
        yarn: false,
        factor: 1.0,
        n_ctx_orig: 4096,
        yarn_log_multiplier_stored: 0.0,
        rope_attn_factor: 1.0,
        key_length_mla: 192,
    });
    assert!((plain.kq_scale - 1.0 / 192f32.sqrt()).abs() < 1e-7);
    assert_eq!((plain.attn_factor, plain.rope.ext_factor), (1.0, 0.0));
}

#[test]
fn shapes_that_contradict_the_metadata_are_refused_by_name() {
    let src = model(5);
    let config = ModelConfig::from_metadata(&src).unwrap();
    // attn_k_b written as {kv_lora, nope, H} (the transpose) is refused, naming the tensor.
    let mut bad = model(5);
    let t = bad.tensors.get_mut("blk.0.attn_k_b.weight").unwrap();
    t.0 = vec![R as u64, NOPE as u64, H as u64];
    let err = Deepseek2Block::load_layer(&bad, &config, 0).unwrap_err();
    assert!(
        matches!(&err, VerifyError::TensorShape { tensor, .. } if tensor == "blk.0.attn_k_b.weight"),
        "{err}"
    );
    // One expert short.
    let mut bad = model(5);
    let t = bad.tensors.get_mut("blk.1.ffn_down_exps.weight").unwrap();
    t.0 = vec![FFE as u64, E as u64, NEXP as u64 - 1];
    let err = Deepseek2Block::load_layer(&bad, &config, 1).unwrap_err();
    assert!(
        err.to_string().contains("blk.1.ffn_down_exps.weight"),
        "{err}"
    );
    // A missing tensor.
    let mut bad = model(5);
    bad.tensors.remove("blk.1.ffn_gate_inp.weight");
    let err = Deepseek2Block::load_layer(&bad, &config, 1).unwrap_err();
    assert!(
        matches!(&err, VerifyError::MissingTensor { tensor, .. } if tensor == "blk.1.ffn_gate_inp.weight"),
        "{err}"
    );
    // A legacy file without the MLA key lengths.
    let mut legacy = model(5);
    legacy.meta.retain(|(k, _)| !k.ends_with("key_length_mla"));
    let lc = ModelConfig::from_metadata(&legacy).unwrap();
    let err = Deepseek2Block::load_layer(&legacy, &lc, 0).unwrap_err();
    assert!(err.to_string().contains("key_length_mla"), "{err}");
    // An unsupported gating function.
    let mut g = model(5);
    for (k, v) in g.meta.iter_mut() {
        if k.ends_with("expert_gating_func") {
            *v = GgufValue::U32(4);
        }
    }
    let gc = ModelConfig::from_metadata(&g).unwrap();
    let err = Deepseek2Block::load_layer(&g, &gc, 1).unwrap_err();
    assert!(err.to_string().contains("expert_gating_func"), "{err}");
    // The good model loads.
    assert!(Deepseek2Block::load_layer(&src, &config, 1).is_ok());
}

/// The CPU backend, but experts one at a time, each recorded: what a GPU backend's dispatch
/// looks like to the block.
#[derive(Default)]
struct OneExpertAtATime {
    experts: Mutex<Vec<(usize, usize)>>,
}

impl verify::Backend for OneExpertAtATime {
    fn device(&self) -> verify::Device {
        verify::Device::Cpu
    }
    fn describe(&self) -> String {
        "cpu, one expert at a time".into()
    }
    fn matmul(&self, _name: &str, x: &Mat, w: &Mat) -> Mat {
        verify::ops::matmul(x, w)
    }
    fn experts_at_once(&self, _active: usize) -> usize {
        1
    }
    fn expert_ffn(
        &self,
        job: &verify::backend::ExpertJob<'_>,
        out: &mut verify::backend::ExpertOut,
    ) -> Result<()> {
        assert_eq!(job.names[2], "blk.1.ffn_down_exps.weight");
        self.experts.lock().unwrap().push((job.expert, job.x.rows));
        verify::backend::expert_ffn_cpu(job, out)
    }
}

/// The MoE block runs every routed expert through the context's backend (`expert_ffn`), in
/// expert order, and the number of experts in flight does not change a bit of the output.
#[test]
fn experts_run_on_the_backend_and_waves_do_not_change_the_output() {
    let src = model(5);
    let config = ModelConfig::from_metadata(&src).unwrap();
    let t: usize = SPANS.iter().map(|s| s.len).sum();
    let x0 = Mat::from_vec(t, E, Rng(7).vec(t * E, 1.0));
    let block = Deepseek2Block::load_layer(&src, &config, 1).unwrap();
    let mut cpu = x0.clone();
    block
        .forward(&mut cpu, &SPANS, &mut LayerCtx::new(1, &config, None))
        .unwrap();
    let backend = OneExpertAtATime::default();
    let rec = Recorder::default();
    let mut ctx = LayerCtx::new(1, &config, Some(&rec)).with_backend(&backend);
    let mut one = x0.clone();
    block.forward(&mut one, &SPANS, &mut ctx).unwrap();
    assert_eq!(one, cpu, "one expert at a time changed the output");
    let calls = backend.experts.lock().unwrap();
    assert!(!calls.is_empty());
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
    assert_eq!(calls.iter().map(|c| c.1).sum::<usize>(), t * USED);
    // The observer saw each expert's rows for gate, up and down, as on the CPU path.
    let seen = rec.experts.lock().unwrap();
    for (e, n) in calls.iter() {
        for name in ["gate", "up", "down"] {
            let full = format!("blk.1.ffn_{name}_exps.weight");
            assert!(seen.contains(&(full, *e, *n)), "{name} of expert {e}");
        }
    }
}

/// MLA's absorbed attention runs through the context's backend as one MQA call (all H query
/// heads over the shared (kv_lora + rope)-wide key and kv_lora-wide value), and the output is
/// bit for bit the one without a backend.
#[test]
fn mla_attention_runs_on_the_backend_as_mqa() {
    let src = model(5);
    let config = ModelConfig::from_metadata(&src).unwrap();
    let t: usize = SPANS.iter().map(|s| s.len).sum();
    let x0 = Mat::from_vec(t, E, Rng(11).vec(t * E, 1.0));
    for layer in 0..2 {
        let block = Deepseek2Block::load_layer(&src, &config, layer).unwrap();
        let mut cpu = x0.clone();
        block
            .forward(&mut cpu, &SPANS, &mut LayerCtx::new(layer, &config, None))
            .unwrap();
        let backend = RecordAttention::default();
        let mut ctx = LayerCtx::new(layer, &config, None).with_backend(&backend);
        let mut got = x0.clone();
        block.forward(&mut got, &SPANS, &mut ctx).unwrap();
        assert_eq!(
            got, cpu,
            "layer {layer}: attention on the backend changed it"
        );
        let shapes = backend.shapes.lock().unwrap();
        assert_eq!(shapes.len(), 1, "layer {layer}");
        let (s, rows) = shapes[0];
        assert_eq!(rows, t);
        assert_eq!(
            (s.n_head, s.n_head_kv, s.head_dim_k, s.head_dim_v),
            (H, 1, R + ROPE, R)
        );
    }
}
