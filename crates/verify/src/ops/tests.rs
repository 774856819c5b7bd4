//! Ops against naive reference loops.

use super::*;
use crate::tensor::SeqSpan;

/// Deterministic pseudo-random values in [-1, 1).
fn rand_mat(rows: usize, cols: usize, seed: u64) -> Mat {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Mat::from_vec(rows, cols, data)
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn matmul_matches_triple_loop() {
    for (t, inp, out) in [
        (1, 1, 1),
        (3, 5, 7),
        (37, 64, 19),
        (130, 256, 300),
        (600, 96, 80),
    ] {
        let x = rand_mat(t, inp, 1);
        let w = rand_mat(out, inp, 2);
        let y = matmul(&x, &w);
        let r = matmul_naive(&x, &w);
        assert_eq!((y.rows, y.cols), (t, out));
        assert!(max_rel_diff(&y.data, &r.data) < 1e-5, "{t}x{inp}x{out}");
    }
}

#[test]
fn gemm_plain_and_accumulate() {
    let a = rand_mat(9, 13, 3);
    let b = rand_mat(13, 6, 4); // [k, n]
    let mut bt = Mat::zeros(6, 13);
    for i in 0..13 {
        for j in 0..6 {
            bt.row_mut(j)[i] = b.row(i)[j];
        }
    }
    let r = matmul_naive(&a, &bt);
    let mut y = Mat::from_vec(9, 6, vec![1.0; 54]);
    gemm_into(&mut y.data, 6, view(&a), view(&b), Rhs::Plain, true, false);
    let want: Vec<f32> = r.data.iter().map(|v| v + 1.0).collect();
    assert!(max_rel_diff(&y.data, &want) < 1e-5);
}

fn spans(lens: &[usize]) -> Vec<SeqSpan> {
    let mut start = 0;
    lens.iter()
        .map(|&len| {
            let s = SeqSpan { start, len };
            start += len;
            s
        })
        .collect()
}

#[test]
fn attention_matches_naive_softmax_attention() {
    // GQA (8 query heads over 2 K/V heads), MQA with wider keys than values (MLA-like), and
    // sequences longer than one query block.
    for (lens, nh, nkv, dk, dv) in [
        (vec![5usize, 1, 9], 8, 2, 16, 16),
        (vec![300, 140], 4, 1, 24, 8),
        (vec![7], 3, 3, 4, 4),
    ] {
        let t: usize = lens.iter().sum();
        let q = rand_mat(t, nh * dk, 5);
        let k = rand_mat(t, nkv * dk, 6);
        let v = rand_mat(t, nkv * dv, 7);
        let s = AttnShape {
            n_head: nh,
            n_head_kv: nkv,
            head_dim_k: dk,
            head_dim_v: dv,
            scale: 1.0 / (dk as f32).sqrt() * 3.0,
        };
        let sp = spans(&lens);
        let fast = attention(&q, &k, &v, &sp, &s);
        let slow = attention_naive(&q, &k, &v, &sp, &s);
        assert!(max_rel_diff(&fast.data, &slow.data) < 1e-5, "{lens:?}");
    }
}

#[test]
fn attention_first_position_is_its_own_value() {
    let q = rand_mat(2, 4, 1);
    let k = rand_mat(2, 4, 2);
    let v = rand_mat(2, 4, 3);
    let s = AttnShape {
        n_head: 1,
        n_head_kv: 1,
        head_dim_k: 4,
        head_dim_v: 4,
        scale: 0.5,
    };
    let y = attention(&q, &k, &v, &spans(&[1, 1]), &s);
    assert_eq!(y.data, v.data);
}

/// The rope formula written out directly in f64 for one head, both conventions.
fn rope_formula(v: &[f32], pos: usize, p: &RopeParams) -> Vec<f32> {
    let n = p.n_rot;
    let mut out = v.to_vec();
    for i in 0..n / 2 {
        let ff = p.freq_factors.as_ref().map_or(1.0, |f| f64::from(f[i]));
        let theta_extrap =
            pos as f64 * f64::from(p.freq_base).powf(-2.0 * i as f64 / n as f64) / ff;
        let theta_interp = f64::from(p.freq_scale) * theta_extrap;
        let (mut theta, mut m) = (theta_interp, f64::from(p.attn_factor));
        if p.ext_factor != 0.0 {
            let [lo, hi] = p.corr_dims;
            let y = (i as f64 - f64::from(lo)) / f64::from((hi - lo).max(0.001));
            let ramp = (1.0 - y.clamp(0.0, 1.0)) * f64::from(p.ext_factor);
            theta = theta_interp * (1.0 - ramp) + theta_extrap * ramp;
            m *= 1.0 + 0.1 * (1.0 / f64::from(p.freq_scale)).ln();
        }
        let (a, b) = match p.mode {
            RopeMode::Norm => (2 * i, 2 * i + 1),
            RopeMode::Neox => (i, i + n / 2),
        };
        let (x0, x1) = (f64::from(v[a]), f64::from(v[b]));
        out[a] = ((x0 * theta.cos() - x1 * theta.sin()) * m) as f32;
        out[b] = ((x0 * theta.sin() + x1 * theta.cos()) * m) as f32;
    }
    out
}

#[test]
fn rope_matches_the_formula() {
    let (n_head, hd) = (3, 24);
    let lens = [20usize, 7];
    let t: usize = lens.iter().sum();
    let sp = spans(&lens);
    let mut yarn = RopeParams::plain(RopeMode::Norm, 16, 10000.0);
    yarn.freq_scale = 1.0 / 40.0;
    yarn.ext_factor = 1.0;
    yarn.attn_factor = 0.7305;
    yarn.corr_dims = yarn_corr_dims(16, 4096, 10000.0, 32.0, 1.0);
    let mut factors = RopeParams::plain(RopeMode::Norm, 24, 500000.0);
    factors.freq_factors = Some((0..12).map(|i| 1.0 + i as f32 * 0.7).collect());
    for (offset, p) in [
        (0, RopeParams::plain(RopeMode::Norm, 24, 10000.0)),
        (0, RopeParams::plain(RopeMode::Neox, 24, 10000.0)),
        (4, RopeParams::plain(RopeMode::Neox, 16, 1e6)),
        (8, yarn),
        (0, factors),
    ] {
        let x0 = rand_mat(t, n_head * hd, 9);
        let mut x = x0.clone();
        rope(&mut x, &sp, n_head, hd, offset, &p);
        for s in &sp {
            for pos in 0..s.len {
                for h in 0..n_head {
                    let base = h * hd;
                    let row0 = &x0.row(s.start + pos)[base..base + hd];
                    let got = &x.row(s.start + pos)[base..base + hd];
                    let mut want = row0.to_vec();
                    let rot = rope_formula(&row0[offset..offset + p.n_rot], pos, &p);
                    want[offset..offset + p.n_rot].copy_from_slice(&rot);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 2e-5 * (1.0 + w.abs()),
                            "{p:?} pos {pos}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn yarn_corr_dims_of_deepseek_v3() {
    // REFERENCE §5.4: corr(32) = 10.47 → 10, corr(1) = 22.51 → 23.
    assert_eq!(yarn_corr_dims(64, 4096, 10000.0, 32.0, 1.0), [10.0, 23.0]);
}

#[test]
fn rms_norm_swiglu_softmax_helpers() {
    let mut x = Mat::from_vec(1, 4, vec![1.0, -2.0, 3.0, -4.0]);
    rms_norm(&mut x, &[1.0, 2.0, 1.0, 1.0], 0.0);
    let r = (30.0f32 / 4.0).sqrt();
    assert!((x.data[1] - (-4.0 / r)).abs() < 1e-6);
    let mut g = Mat::from_vec(1, 2, vec![0.0, 2.0]);
    swiglu(&mut g, &Mat::from_vec(1, 2, vec![5.0, 3.0]));
    assert!((g.data[1] - 3.0 * 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    assert_eq!(g.data[0], 0.0);
    let mut s = Mat::from_vec(1, 3, vec![1.0, 2.0, 3.0]);
    softmax(&mut s);
    assert!((s.data.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
    assert_eq!(argmax(&[]), None);
    let mut lp = [0.0; 3];
    log_softmax(&[1.0, 2.0, 3.0], &mut lp);
    assert!((lp.iter().map(|x| x.exp()).sum::<f32>() - 1.0).abs() < 1e-6);
    let mut b = Mat::zeros(2, 2);
    add_bias(&mut b, &[1.0, 2.0]);
    assert_eq!(b.data, vec![1.0, 2.0, 1.0, 2.0]);
}
