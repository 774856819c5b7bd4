//! The deepseek2 MoE router against a deliberately naive implementation of REFERENCE §5.5
//! (repeated arg-max instead of sorting, groups ranked by counting), on random scores, on exact
//! ties, and on hand-made cases where the group limit or the selection bias changes the choice.

use verify::arch::deepseek2::router::{route, Gating, RouterParams};

/// REFERENCE §5.5's clamp, 6.103515625e-5 (the smallest normal f16).
const F16_MIN_NORMAL: f32 = 1.0 / 16384.0;

/// A tiny deterministic generator (splitmix64), so the test needs no dependency.
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
}

/// Index of the first maximum among `allowed` entries (lower index wins ties).
fn argmax(v: &[f32], allowed: &[bool]) -> usize {
    let mut best = usize::MAX;
    for i in 0..v.len() {
        if allowed[i] && (best == usize::MAX || v[i] > v[best]) {
            best = i;
        }
    }
    best
}

/// One token, straight from the prose of REFERENCE §5.5.
fn naive(logits: &[f32], bias: Option<&[f32]>, p: &RouterParams) -> (Vec<u32>, Vec<f32>) {
    let n = p.n_expert;
    let probs: Vec<f32> = match p.gating {
        Gating::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        Gating::Softmax => {
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = logits.iter().map(|&x| f64::from((x - m).exp())).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|&x| (x / s) as f32).collect()
        }
    };
    let sel: Vec<f32> = (0..n)
        .map(|i| probs[i] + bias.map_or(0.0, |b| b[i]))
        .collect();
    let mut allowed = vec![true; n];
    if p.n_groups > 1 {
        let per = n / p.n_groups;
        let scores: Vec<f32> = (0..p.n_groups)
            .map(|g| {
                let mut v: Vec<f32> = sel[g * per..(g + 1) * per].to_vec();
                v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                v[0] + v[1]
            })
            .collect();
        for g in 0..p.n_groups {
            // Rank = how many groups beat this one (higher score, or equal score and lower index).
            let rank = (0..p.n_groups)
                .filter(|&h| scores[h] > scores[g] || (scores[h] == scores[g] && h < g))
                .count();
            if rank >= p.n_groups_used {
                allowed[g * per..(g + 1) * per].fill(false);
            }
        }
    }
    let mut experts = Vec::new();
    for _ in 0..p.n_used {
        let e = argmax(&sel, &allowed);
        allowed[e] = false;
        experts.push(e as u32);
    }
    let mut w: Vec<f32> = experts.iter().map(|&e| probs[e as usize]).collect();
    if p.norm_weights {
        let s: f32 = w.iter().sum::<f32>().max(F16_MIN_NORMAL);
        w.iter_mut().for_each(|x| *x /= s);
    }
    if p.weights_scale != 0.0 && p.weights_scale != 1.0 {
        w.iter_mut().for_each(|x| *x *= p.weights_scale);
    }
    (experts, w)
}

fn v3_like(n_expert: usize, n_groups: usize, n_groups_used: usize, n_used: usize) -> RouterParams {
    RouterParams {
        n_expert,
        n_used,
        n_groups,
        n_groups_used,
        gating: Gating::Sigmoid,
        norm_weights: true,
        weights_scale: 2.5,
    }
}

fn check(logits: &[f32], tokens: usize, bias: Option<&[f32]>, p: &RouterParams) {
    p.validate().unwrap();
    let r = route(logits, tokens, bias, p);
    assert_eq!(r.tokens(), tokens);
    for t in 0..tokens {
        let row = &logits[t * p.n_expert..(t + 1) * p.n_expert];
        let (e, w) = naive(row, bias, p);
        let k = p.n_used;
        assert_eq!(&r.experts[t * k..(t + 1) * k], &e[..], "token {t}: experts");
        for (a, b) in r.weights[t * k..(t + 1) * k].iter().zip(&w) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "token {t}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn random_scores_match_the_naive_router() {
    let mut rng = Rng(7);
    for &(n, g, gu, k) in &[(256, 8, 4, 8), (8, 4, 2, 3), (64, 8, 4, 8), (16, 1, 1, 4)] {
        let tokens = 50;
        let logits: Vec<f32> = (0..tokens * n).map(|_| rng.uniform() * 4.0).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.uniform() * 0.5).collect();
        let p = v3_like(n, g, gu, k);
        check(&logits, tokens, Some(&bias), &p);
        check(&logits, tokens, None, &p);
        let soft = RouterParams {
            gating: Gating::Softmax,
            norm_weights: false,
            weights_scale: 1.0,
            ..p
        };
        check(&logits, tokens, Some(&bias), &soft);
    }
}

#[test]
fn exact_ties_go_to_the_lower_index() {
    let p = v3_like(16, 4, 2, 3);
    // All scores equal: groups 0 and 1 are kept, experts 0, 1, 2 chosen, weights 2.5/3 each.
    let logits = vec![0.0f32; 16];
    let r = route(&logits, 1, None, &p);
    assert_eq!(r.experts, vec![0, 1, 2]);
    for w in &r.weights {
        assert!((w - 2.5 / 3.0).abs() < 1e-6);
    }
    // Quantised scores with many ties, against the naive version.
    let mut rng = Rng(11);
    let tokens = 40;
    let logits: Vec<f32> = (0..tokens * 16)
        .map(|_| (rng.uniform() * 2.0).round())
        .collect();
    check(&logits, tokens, None, &p);
}

#[test]
fn the_group_limit_excludes_a_strong_expert_in_a_weak_group() {
    // Group 0 holds the single best expert but its top-2 sum is the lowest: it must be skipped.
    let p = v3_like(16, 4, 2, 2);
    let mut logits = vec![-6.0f32; 16];
    logits[0] = 6.0; // group 0: 6, -6, -6, -6 → top-2 sum ≈ 1.0025
    logits[4..8].copy_from_slice(&[1.0, 1.0, 0.0, 0.0]); // group 1 ≈ 1.46
    logits[8..12].copy_from_slice(&[0.5, 0.5, 0.5, 0.5]); // group 2 ≈ 1.25
    logits[12..16].copy_from_slice(&[0.2, 0.1, 0.0, 0.0]); // group 3 ≈ 1.07
    let r = route(&logits, 1, None, &p);
    assert_eq!(r.experts, vec![4, 5]);
    check(&logits, 1, None, &p);
    // Without groups expert 0 wins.
    let flat = RouterParams { n_groups: 1, ..p };
    assert_eq!(route(&logits, 1, None, &flat).experts[0], 0);
}

#[test]
fn the_bias_selects_but_does_not_weight() {
    let p = RouterParams {
        n_groups: 1,
        n_groups_used: 1,
        norm_weights: false,
        weights_scale: 1.0,
        ..v3_like(4, 1, 1, 1)
    };
    let logits = [2.0f32, 0.0, 0.0, 0.0];
    let bias = [0.0f32, 0.0, 0.9, 0.0];
    let r = route(&logits, 1, Some(&bias), &p);
    // sigmoid(2) = 0.881 < 0.5 + 0.9: expert 2 is chosen, with its unbiased weight 0.5.
    assert_eq!(r.experts, vec![2]);
    assert!((r.weights[0] - 0.5).abs() < 1e-7);
}

#[test]
fn tiny_weight_sums_are_clamped() {
    assert_eq!(
        verify::arch::deepseek2::router::MIN_WEIGHT_SUM,
        F16_MIN_NORMAL
    );
    let p = RouterParams {
        n_groups: 1,
        n_groups_used: 1,
        weights_scale: 1.0,
        ..v3_like(4, 1, 1, 2)
    };
    let logits = [-30.0f32; 4];
    let r = route(&logits, 1, None, &p);
    let s = 1.0 / (1.0 + 30f32.exp());
    for w in &r.weights {
        assert!((w - s / F16_MIN_NORMAL).abs() < 1e-9, "{w}");
    }
}

#[test]
fn bad_parameters_are_refused() {
    assert!(v3_like(16, 3, 2, 2).validate().is_err()); // 16 not divisible by 3
    assert!(v3_like(16, 16, 2, 2).validate().is_err()); // 1 expert per group
    assert!(v3_like(16, 4, 5, 2).validate().is_err()); // more groups kept than exist
    assert!(v3_like(16, 4, 1, 5).validate().is_err()); // 5 experts from one group of 4
    assert!(v3_like(16, 4, 2, 0).validate().is_err());
    assert!(v3_like(16, 4, 2, 8).validate().is_ok());
}
