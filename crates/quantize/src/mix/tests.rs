use super::*;
use GgmlType as T;

fn t(name: &str, dims: &[u64]) -> TensorShape {
    TensorShape {
        name: name.into(),
        dims: dims.to_vec(),
        ggml_type: T::F32,
    }
}

/// The tensors of DeepSeek-V3/R1 as r1q converts them (61 blocks, dense 0–2, 256 experts).
fn r1_tensors() -> Vec<TensorShape> {
    let mut v = vec![
        t("token_embd.weight", &[7168, 129280]),
        t("output_norm.weight", &[7168]),
        t("output.weight", &[7168, 129280]),
    ];
    for i in 0..61 {
        let b = |s: &str| format!("blk.{i}.{s}");
        v.push(t(&b("attn_norm.weight"), &[7168]));
        v.push(t(&b("attn_q_a.weight"), &[7168, 1536]));
        v.push(t(&b("attn_q_a_norm.weight"), &[1536]));
        v.push(t(&b("attn_q_b.weight"), &[1536, 24576]));
        v.push(t(&b("attn_kv_a_mqa.weight"), &[7168, 576]));
        v.push(t(&b("attn_kv_a_norm.weight"), &[512]));
        v.push(t(&b("attn_k_b.weight"), &[128, 512, 128]));
        v.push(t(&b("attn_v_b.weight"), &[512, 128, 128]));
        v.push(t(&b("attn_output.weight"), &[16384, 7168]));
        v.push(t(&b("ffn_norm.weight"), &[7168]));
        if i < 3 {
            v.push(t(&b("ffn_gate.weight"), &[7168, 18432]));
            v.push(t(&b("ffn_up.weight"), &[7168, 18432]));
            v.push(t(&b("ffn_down.weight"), &[18432, 7168]));
        } else {
            v.push(t(&b("ffn_gate_inp.weight"), &[7168, 256]));
            v.push(t(&b("exp_probs_b.bias"), &[256]));
            v.push(t(&b("ffn_gate_exps.weight"), &[7168, 2048, 256]));
            v.push(t(&b("ffn_up_exps.weight"), &[7168, 2048, 256]));
            v.push(t(&b("ffn_down_exps.weight"), &[2048, 7168, 256]));
            v.push(t(&b("ffn_gate_shexp.weight"), &[7168, 2048]));
            v.push(t(&b("ffn_up_shexp.weight"), &[7168, 2048]));
            v.push(t(&b("ffn_down_shexp.weight"), &[2048, 7168]));
        }
    }
    v
}

fn r1_model() -> ModelInfo {
    ModelInfo {
        arch: "deepseek2".into(),
        n_layer: 61,
        n_expert: 256,
        n_head: 128,
        n_head_kv: 1,
    }
}

/// REFERENCE §3.6, cell by cell.
fn expected_r1(mix: Mix, name: &str, has_imatrix: bool) -> T {
    let d = mix.default_type();
    if name.ends_with("_norm.weight") || name.ends_with(".bias") || name.contains("ffn_gate_inp") {
        return T::F32;
    }
    if name == "token_embd.weight" {
        return d;
    }
    if name == "output.weight" {
        return if mix == Mix::Q8_0 { T::Q8_0 } else { T::Q6_K };
    }
    let layer = parse_block(name).unwrap();
    if name.contains("attn_k_b") {
        return match mix {
            Mix::Q2_K | Mix::Q3_K_S | Mix::Q3_K_M | Mix::Q3_K_L | Mix::Q4_0 => T::Q4_0,
            Mix::Q4_K_S | Mix::Q4_K_M => T::Q5_0,
            Mix::Q5_K_S | Mix::Q5_K_M => T::Q5_1,
            Mix::Q6_K | Mix::Q8_0 => T::Q8_0,
            _ => unreachable!(),
        };
    }
    if name.contains("attn_output") {
        return match mix {
            Mix::Q2_K | Mix::Q3_K_S => T::Q3_K,
            Mix::Q3_K_M | Mix::Q4_K_S | Mix::Q4_K_M => T::Q4_K,
            Mix::Q3_K_L | Mix::Q5_K_S | Mix::Q5_K_M => T::Q5_K,
            _ => d,
        };
    }
    if name.contains("ffn_down") {
        let umb = use_more_bits(layer, 61);
        return match mix {
            Mix::Q2_K | Mix::Q3_K_S => T::Q3_K,
            Mix::Q3_K_M => {
                if layer <= 2 {
                    T::Q5_K
                } else {
                    T::Q4_K
                }
            }
            Mix::Q3_K_L => T::Q5_K,
            Mix::Q4_K_S => {
                if layer <= 6 {
                    T::Q5_K
                } else {
                    T::Q4_K
                }
            }
            Mix::Q4_K_M => {
                if umb {
                    T::Q6_K
                } else {
                    T::Q4_K
                }
            }
            Mix::Q5_K_S => T::Q5_K,
            Mix::Q5_K_M => {
                if umb {
                    T::Q6_K
                } else {
                    T::Q5_K
                }
            }
            Mix::Q4_0 if has_imatrix && layer <= 6 => T::Q4_1,
            _ => d,
        };
    }
    d
}

#[test]
fn deepseek_r1_plan_matches_reference_table() {
    let tensors = r1_tensors();
    let mixes = [
        Mix::Q2_K,
        Mix::Q3_K_S,
        Mix::Q3_K_M,
        Mix::Q3_K_L,
        Mix::Q4_K_S,
        Mix::Q4_K_M,
        Mix::Q5_K_S,
        Mix::Q5_K_M,
        Mix::Q6_K,
        Mix::Q8_0,
        Mix::Q4_0,
    ];
    for has_imatrix in [false, true] {
        let opts = MixOptions {
            has_imatrix,
            ..Default::default()
        };
        for mix in mixes {
            let plan = choose_types(&r1_model(), &tensors, mix, &opts).unwrap();
            assert_eq!(plan.len(), tensors.len());
            for c in &plan {
                assert_eq!(
                    c.ggml_type,
                    expected_r1(mix, &c.name, has_imatrix),
                    "{mix} {} (imatrix {has_imatrix})",
                    c.name
                );
            }
        }
    }
    // The only fallback in the real model is attn_k_b (ne[0] = 128).
    let plan = choose_types(&r1_model(), &tensors, Mix::Q4_K_M, &MixOptions::default()).unwrap();
    let fb: Vec<&str> = plan
        .iter()
        .filter(|c| c.fallback_from.is_some())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(fb.len(), 61);
    assert!(fb.iter().all(|n| n.ends_with("attn_k_b.weight")));
    // Q4_K_M of R1: about 4.8 bits per weight (the published 404 GB for 671B).
    let size = plan_size(&plan).unwrap();
    assert!(
        size.bits_per_weight > 4.5 && size.bits_per_weight < 5.0,
        "{size:?}"
    );
}

fn dense(
    arch: &str,
    n_layer: u32,
    n_head: u32,
    n_head_kv: u32,
    ncols: u64,
) -> (ModelInfo, Vec<TensorShape>) {
    let mut v = vec![
        t("token_embd.weight", &[ncols, 1000]),
        t("output.weight", &[ncols, 1000]),
        t("output_norm.weight", &[ncols]),
    ];
    for i in 0..n_layer {
        for (s, d) in [
            ("attn_q.weight", [ncols, ncols]),
            ("attn_k.weight", [ncols, ncols / 4]),
            ("attn_v.weight", [ncols, ncols / 4]),
            ("attn_output.weight", [ncols, ncols]),
            ("ffn_gate.weight", [ncols, 2 * ncols]),
            ("ffn_up.weight", [ncols, 2 * ncols]),
            ("ffn_down.weight", [2 * ncols, ncols]),
        ] {
            v.push(t(&format!("blk.{i}.{s}"), &d));
        }
        v.push(t(&format!("blk.{i}.attn_norm.weight"), &[ncols]));
    }
    let m = ModelInfo {
        arch: arch.into(),
        n_layer,
        n_expert: 0,
        n_head,
        n_head_kv,
    };
    (m, v)
}

fn ty_of(plan: &[Choice], name: &str) -> T {
    plan.iter().find(|c| c.name == name).unwrap().ggml_type
}

#[test]
fn attn_v_counters_and_gqa() {
    let (m, v) = dense("llama", 32, 32, 8, 4096);
    let p = choose_types(&m, &v, Mix::Q3_K_M, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.0.attn_v.weight"), T::Q5_K);
    assert_eq!(ty_of(&p, "blk.1.attn_v.weight"), T::Q5_K);
    assert_eq!(ty_of(&p, "blk.2.attn_v.weight"), T::Q4_K);
    assert_eq!(ty_of(&p, "blk.0.attn_output.weight"), T::Q4_K);
    assert_eq!(ty_of(&p, "blk.1.ffn_down.weight"), T::Q5_K); // 1 < 32/16
    assert_eq!(ty_of(&p, "blk.2.ffn_down.weight"), T::Q4_K);
    let p = choose_types(&m, &v, Mix::Q4_K_S, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.3.attn_v.weight"), T::Q5_K);
    assert_eq!(ty_of(&p, "blk.4.attn_v.weight"), T::Q4_K);
    let p = choose_types(&m, &v, Mix::Q2_K, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.9.attn_v.weight"), T::Q4_K); // gqa 4
    assert_eq!(ty_of(&p, "blk.9.ffn_down.weight"), T::Q3_K);
    assert_eq!(ty_of(&p, "blk.9.attn_output.weight"), T::Q3_K);
    let (m2, v2) = dense("llama", 32, 32, 16, 4096);
    let p = choose_types(&m2, &v2, Mix::Q2_K, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.9.attn_v.weight"), T::Q3_K); // gqa 2
    let p = choose_types(&m, &v, Mix::Q4_K_M, &MixOptions::default()).unwrap();
    for i in 0..32 {
        let want = if use_more_bits(i, 32) {
            T::Q6_K
        } else {
            T::Q4_K
        };
        assert_eq!(ty_of(&p, &format!("blk.{i}.attn_v.weight")), want);
        assert_eq!(ty_of(&p, &format!("blk.{i}.ffn_down.weight")), want);
    }
    // IQ4 mixes: ffn_down in the first eighth → Q5_K only without imatrix
    let p = choose_types(&m, &v, Mix::IQ4_XS, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.3.ffn_down.weight"), T::Q5_K);
    assert_eq!(ty_of(&p, "blk.4.ffn_down.weight"), T::IQ4_XS);
    assert_eq!(ty_of(&p, "blk.4.attn_v.weight"), T::Q5_K);
    let with = MixOptions {
        has_imatrix: true,
        ..Default::default()
    };
    let p = choose_types(&m, &v, Mix::IQ4_XS, &with).unwrap();
    assert_eq!(ty_of(&p, "blk.3.ffn_down.weight"), T::IQ4_XS);
    let p = choose_types(&m, &v, Mix::Q5_0, &with).unwrap();
    assert_eq!(ty_of(&p, "blk.3.ffn_down.weight"), T::Q5_1);
    assert_eq!(ty_of(&p, "output.weight"), T::Q6_K);
}

#[test]
fn seventy_b_bump_and_eight_experts() {
    let (m, v) = dense("llama", 80, 64, 8, 512);
    assert!(m.is_70b());
    let p = choose_types(&m, &v, Mix::Q4_K_S, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.50.attn_v.weight"), T::Q5_K);
    let (mut m, v) = dense("llama", 32, 32, 8, 512);
    m.n_expert = 8;
    let v: Vec<TensorShape> = v;
    let p = choose_types(&m, &v, Mix::Q4_K_M, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.5.attn_v.weight"), T::Q8_0);
    assert_eq!(ty_of(&p, "blk.5.attn_k.weight"), T::Q8_0);
    assert_eq!(ty_of(&p, "blk.5.attn_output.weight"), T::Q5_K);
    let p = choose_types(&m, &v, Mix::Q5_K_S, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "blk.5.attn_output.weight"), T::Q5_K);
}

#[test]
fn tied_embeddings_follow_the_output_rule() {
    let (m, mut v) = dense("qwen2", 28, 12, 2, 1536);
    v.retain(|t| t.name != "output.weight");
    let p = choose_types(&m, &v, Mix::Q4_K_M, &MixOptions::default()).unwrap();
    assert_eq!(ty_of(&p, "token_embd.weight"), T::Q6_K);
    let o = MixOptions {
        output_tensor_type: Some(T::Q8_0),
        ..Default::default()
    };
    let p = choose_types(&m, &v, Mix::Q4_K_M, &o).unwrap();
    assert_eq!(ty_of(&p, "token_embd.weight"), T::Q8_0);
}

#[test]
fn options_and_fallbacks() {
    let (m, v) = dense("llama", 4, 8, 2, 96); // rows of 96: not a multiple of 256
    let p = choose_types(&m, &v, Mix::Q4_K_M, &MixOptions::default()).unwrap();
    // output: 96 % 256 ≠ 0 → Q8_0 by the output rule
    assert_eq!(ty_of(&p, "output.weight"), T::Q8_0);
    assert_eq!(ty_of(&p, "token_embd.weight"), T::Q5_0); // Q4_K → Q5_0
    assert_eq!(ty_of(&p, "blk.3.attn_v.weight"), T::Q8_0); // Q6_K → Q8_0
    let c = p.iter().find(|c| c.name == "blk.3.attn_v.weight").unwrap();
    assert_eq!(c.fallback_from, Some(T::Q6_K));
    assert_eq!(ty_of(&p, "blk.0.attn_norm.weight"), T::F32);

    let pure = MixOptions {
        pure: true,
        ..Default::default()
    };
    let p = choose_types(&m, &v, Mix::Q8_0, &pure).unwrap();
    assert!(p
        .iter()
        .filter(|c| c.dims.len() == 2)
        .all(|c| c.ggml_type == T::Q8_0 && c.reason != Reason::Mix));

    let o = MixOptions {
        tensor_type_overrides: vec![
            TensorTypeOverride::parse("ffn_down=q8_0").unwrap(),
            TensorTypeOverride::parse("ffn=q6_k").unwrap(),
        ],
        token_embedding_type: Some(T::Q4_K),
        output_tensor_type: Some(T::F16),
        leave_output_tensor: false,
        ..Default::default()
    };
    let p = choose_types(&m, &v, Mix::Q4_K_M, &o).unwrap();
    assert_eq!(ty_of(&p, "blk.1.ffn_down.weight"), T::Q8_0);
    assert_eq!(ty_of(&p, "blk.1.ffn_up.weight"), T::Q8_0); // q6_K → fallback Q8_0
                                                           // --token-embedding-type / --output-tensor-type skip the fallback check
    assert_eq!(ty_of(&p, "token_embd.weight"), T::Q4_K);
    assert_eq!(ty_of(&p, "output.weight"), T::F16);

    let leave = MixOptions {
        leave_output_tensor: true,
        ..Default::default()
    };
    let p = choose_types(&m, &v, Mix::Q4_K_M, &leave).unwrap();
    assert_eq!(ty_of(&p, "output.weight"), T::F32);

    // float mixes: everything quantizable gets the float type, norms keep theirs
    let p = choose_types(&m, &v, Mix::BF16, &o).unwrap();
    assert_eq!(ty_of(&p, "blk.1.ffn_down.weight"), T::BF16);
    assert_eq!(ty_of(&p, "token_embd.weight"), T::Q4_K);

    // an override to a type with no fallback fails with the tensor's name
    let bad = MixOptions {
        tensor_type_overrides: vec![TensorTypeOverride::parse("attn_q=nvfp4").unwrap()],
        ..Default::default()
    };
    let err = choose_types(&m, &v, Mix::Q4_K_M, &bad).unwrap_err();
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
}

#[test]
fn moe_layer_must_be_parseable() {
    let m = ModelInfo {
        arch: "deepseek2".into(),
        n_layer: 2,
        n_expert: 4,
        n_head: 4,
        n_head_kv: 1,
    };
    let v = vec![t("blk.5.ffn_down_exps.weight", &[256, 256, 4])];
    assert!(matches!(
        choose_types(&m, &v, Mix::Q4_K_M, &MixOptions::default()),
        Err(MixError::BadLayer { .. })
    ));
    let v = vec![t("mtp.ffn_down.weight", &[256, 256])];
    assert!(matches!(
        choose_types(&m, &v, Mix::Q4_K_M, &MixOptions::default()),
        Err(MixError::NoLayer { .. })
    ));
}

#[test]
fn requires_imatrix_rule() {
    assert!(requires_imatrix(
        "blk.0.ffn_up.weight",
        T::Q2_K,
        Mix::Q2_K_S
    ));
    assert!(!requires_imatrix("blk.0.ffn_up.weight", T::Q2_K, Mix::Q2_K));
    assert!(!requires_imatrix(
        "token_embd.weight",
        T::IQ2_XS,
        Mix::Q2_K_S
    ));
}
