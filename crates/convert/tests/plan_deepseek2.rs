//! DeepSeek-V3/R1 → `deepseek2` plans: tensor list, shapes, sources and types against an
//! independent reading of REFERENCE §4.2/§4.3, every §4.4 key with its exact GGUF type, and the
//! real R1 config planned from headers alone (1086 tensors, `256x20B`).

mod plan_support;

use std::path::Path;

use convert::arch::{self, PlanOptions};
use convert::plan::{KvBPart, SkipReason, Source};
use formats::checkpoint::{Dtype, ModelConfig, TensorMeta};
use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;
use plan_support::*;
use serde_json::Value;

/// What the plan must contain for one output tensor: name, ne, and the checkpoint tensors it
/// reads (in order).
struct Expect {
    name: String,
    ne: Vec<u64>,
    hf: Vec<(String, Vec<usize>)>,
}

/// DeepSeek sizes from config.json.
struct Ds {
    v: usize,
    h: usize,
    f: usize,
    fe: usize,
    layers: usize,
    dense: usize,
    heads: usize,
    q_lora: Option<usize>,
    kv_lora: usize,
    nope: usize,
    rope: usize,
    vd: usize,
    experts: usize,
    shared: usize,
}

fn ds(c: &Value) -> Ds {
    Ds {
        v: cu(c, "vocab_size"),
        h: cu(c, "hidden_size"),
        f: cu(c, "intermediate_size"),
        fe: cu(c, "moe_intermediate_size"),
        layers: cu(c, "num_hidden_layers"),
        dense: cu(c, "first_k_dense_replace"),
        heads: cu(c, "num_attention_heads"),
        q_lora: c["q_lora_rank"].as_u64().map(|x| x as usize),
        kv_lora: cu(c, "kv_lora_rank"),
        nope: cu(c, "qk_nope_head_dim"),
        rope: cu(c, "qk_rope_head_dim"),
        vd: cu(c, "v_head_dim"),
        experts: cu(c, "n_routed_experts"),
        shared: cu(c, "n_shared_experts"),
    }
}

fn rev(s: &[usize]) -> Vec<u64> {
    s.iter().rev().map(|&d| d as u64).collect()
}

/// REFERENCE §4.2, written out independently of the crate, in the documented order.
fn expected(d: &Ds) -> Vec<Expect> {
    let one = |name: &str, hf: &str, shape: Vec<usize>| Expect {
        name: name.to_string(),
        ne: rev(&shape),
        hf: vec![(hf.to_string(), shape)],
    };
    let mut e = vec![
        one(
            "token_embd.weight",
            "model.embed_tokens.weight",
            vec![d.v, d.h],
        ),
        one("output_norm.weight", "model.norm.weight", vec![d.h]),
        one("output.weight", "lm_head.weight", vec![d.v, d.h]),
    ];
    let qh = d.nope + d.rope;
    for i in 0..d.layers {
        let b = |s: &str| format!("blk.{i}.{s}");
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let t = |g: &str, hf: &str, shape: Vec<usize>| one(&b(g), &p(hf), shape);
        e.push(t("attn_norm.weight", "input_layernorm.weight", vec![d.h]));
        match d.q_lora {
            Some(r) => {
                e.push(t(
                    "attn_q_a.weight",
                    "self_attn.q_a_proj.weight",
                    vec![r, d.h],
                ));
                e.push(t(
                    "attn_q_a_norm.weight",
                    "self_attn.q_a_layernorm.weight",
                    vec![r],
                ));
                e.push(t(
                    "attn_q_b.weight",
                    "self_attn.q_b_proj.weight",
                    vec![d.heads * qh, r],
                ));
            }
            None => e.push(t(
                "attn_q.weight",
                "self_attn.q_proj.weight",
                vec![d.heads * qh, d.h],
            )),
        }
        e.push(t(
            "attn_kv_a_mqa.weight",
            "self_attn.kv_a_proj_with_mqa.weight",
            vec![d.kv_lora + d.rope, d.h],
        ));
        e.push(t(
            "attn_kv_a_norm.weight",
            "self_attn.kv_a_layernorm.weight",
            vec![d.kv_lora],
        ));
        let kvb = vec![d.heads * (d.nope + d.vd), d.kv_lora];
        let (nope, r, vd, hh) = (d.nope as u64, d.kv_lora as u64, d.vd as u64, d.heads as u64);
        e.push(Expect {
            name: b("attn_k_b.weight"),
            ne: vec![nope, r, hh],
            hf: vec![(p("self_attn.kv_b_proj.weight"), kvb.clone())],
        });
        e.push(Expect {
            name: b("attn_v_b.weight"),
            ne: vec![r, vd, hh],
            hf: vec![(p("self_attn.kv_b_proj.weight"), kvb)],
        });
        e.push(t(
            "attn_output.weight",
            "self_attn.o_proj.weight",
            vec![d.h, d.heads * d.vd],
        ));
        e.push(t(
            "ffn_norm.weight",
            "post_attention_layernorm.weight",
            vec![d.h],
        ));
        if i < d.dense {
            e.push(t("ffn_gate.weight", "mlp.gate_proj.weight", vec![d.f, d.h]));
            e.push(t("ffn_up.weight", "mlp.up_proj.weight", vec![d.f, d.h]));
            e.push(t("ffn_down.weight", "mlp.down_proj.weight", vec![d.h, d.f]));
            continue;
        }
        e.push(t(
            "ffn_gate_inp.weight",
            "mlp.gate.weight",
            vec![d.experts, d.h],
        ));
        e.push(t(
            "exp_probs_b.bias",
            "mlp.gate.e_score_correction_bias",
            vec![d.experts],
        ));
        for (proj, shape) in [
            ("gate", vec![d.fe, d.h]),
            ("up", vec![d.fe, d.h]),
            ("down", vec![d.h, d.fe]),
        ] {
            e.push(Expect {
                name: b(&format!("ffn_{proj}_exps.weight")),
                ne: vec![shape[1] as u64, shape[0] as u64, d.experts as u64],
                hf: (0..d.experts)
                    .map(|x| {
                        (
                            p(&format!("mlp.experts.{x}.{proj}_proj.weight")),
                            shape.clone(),
                        )
                    })
                    .collect(),
            });
        }
        let fs = d.fe * d.shared;
        for (proj, shape) in [
            ("gate", vec![fs, d.h]),
            ("up", vec![fs, d.h]),
            ("down", vec![d.h, fs]),
        ] {
            e.push(t(
                &format!("ffn_{proj}_shexp.weight"),
                &format!("mlp.shared_experts.{proj}_proj.weight"),
                shape,
            ));
        }
    }
    e
}

/// Checks names, order, ne and sources of `plan` against `expected`.
fn check_tensors(plan: &convert::plan::Plan, exp: &[Expect], metas: &[TensorMeta]) {
    let got: Vec<&str> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
    let want: Vec<&str> = exp.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(got, want);
    for (t, e) in plan.tensors.iter().zip(exp) {
        assert_eq!(t.dims, e.ne, "{}", t.name);
        let reads = source_names(&t.source);
        let want: Vec<String> = e.hf.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(reads, want, "{}", t.name);
        for (n, shape) in &e.hf {
            let m = metas.iter().find(|m| &m.name == n).unwrap();
            assert_eq!(&m.shape, shape, "{n}");
        }
        match &t.source {
            Source::KvB {
                part,
                n_head,
                qk_nope,
                v_head,
                ..
            } => {
                let want_part = if t.name.ends_with("attn_k_b.weight") {
                    KvBPart::K
                } else {
                    KvBPart::V
                };
                assert_eq!(*part, want_part);
                assert_eq!(*n_head, *t.dims.last().unwrap());
                assert_eq!(
                    *qk_nope,
                    if want_part == KvBPart::K {
                        t.dims[0]
                    } else {
                        *qk_nope
                    }
                );
                assert_eq!(
                    *v_head,
                    if want_part == KvBPart::V {
                        t.dims[1]
                    } else {
                        *v_head
                    }
                );
            }
            Source::Stack { .. } => assert!(t.name.contains("_exps.")),
            Source::Tensor { .. } => {}
            other => panic!("{}: unexpected source {other:?}", t.name),
        }
    }
}

#[test]
fn fixture_plan_tensors_types_and_coverage() {
    let (_tmp, dir) = fixture(fixtures::Arch::DeepseekV3);
    let cfg = config(&dir);
    let d = ds(&cfg);
    let exp = expected(&d);
    let n_moe = d.layers - d.dense;
    assert_eq!(exp.len(), 3 + d.dense * 13 + n_moe * 18);
    let ckpt = formats::checkpoint::Checkpoint::open(&dir).unwrap();
    for outtype in OUTTYPES {
        let plan = plan_dir(&dir, outtype).unwrap();
        assert_eq!(plan.tensors.len(), 3 + d.dense * 13 + n_moe * 18);
        check_tensors(&plan, &exp, ckpt.tensors());
        check_coverage(&plan, &dir);
        check_types(&plan, outtype);
        check_kv_order(&plan, "deepseek2");
        check_general(&plan, &dir, "deepseek_v3", outtype);
        // Explicit spot checks of the F32 rules.
        let ty = |n: &str| plan.tensors.iter().find(|t| t.name == n).unwrap().ggml_type;
        assert_eq!(ty("blk.1.ffn_gate_inp.weight"), GgmlType::F32);
        assert_eq!(ty("blk.1.exp_probs_b.bias"), GgmlType::F32);
        assert_eq!(ty("blk.0.attn_kv_a_norm.weight"), GgmlType::F32);
        assert_eq!(ty("blk.1.ffn_gate_exps.weight"), outtype);
    }
    // Skipped: the MTP layer (index num_hidden_layers) whole, and each used FP8 weight's scale.
    let plan = plan_dir(&dir, GgmlType::BF16).unwrap();
    let mtp = format!("model.layers.{}.", d.layers);
    for s in &plan.skipped {
        if s.name.starts_with(&mtp) {
            assert_eq!(s.reason, SkipReason::MtpLayer, "{}", s.name);
        } else {
            assert_eq!(s.reason, SkipReason::Fp8Scale, "{}", s.name);
            assert!(s.name.ends_with("weight_scale_inv"), "{}", s.name);
        }
    }
    let n_mtp = ckpt
        .tensors()
        .iter()
        .filter(|m| m.name.starts_with(&mtp))
        .count();
    assert!(n_mtp > 0);
    assert_eq!(
        plan.skipped
            .iter()
            .filter(|s| s.reason == SkipReason::MtpLayer)
            .count(),
        n_mtp
    );
    let kv = kv_map(&plan);
    assert_eq!(
        kv["r1q.source.mtp_tensors_skipped"],
        GgufValue::U32(n_mtp as u32)
    );
}

/// Every §4.4 key with its exact type; values from config.json (`cfg`).
fn check_deepseek_kv(plan: &convert::plan::Plan, cfg: &Value) {
    let kv = kv_map(plan);
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let f = |k: &str| cfg[k].as_f64().unwrap() as f32;
    let d = ds(cfg);
    let rs = &cfg["rope_scaling"];
    let want: Vec<(&str, GgufValue)> = vec![
        ("block_count", GgufValue::U32(u("num_hidden_layers"))),
        (
            "context_length",
            GgufValue::U32(u("max_position_embeddings")),
        ),
        ("embedding_length", GgufValue::U32(u("hidden_size"))),
        (
            "feed_forward_length",
            GgufValue::U32(u("intermediate_size")),
        ),
        (
            "attention.head_count",
            GgufValue::U32(u("num_attention_heads")),
        ),
        ("attention.head_count_kv", GgufValue::U32(1)),
        ("rope.freq_base", GgufValue::F32(f("rope_theta"))),
        (
            "attention.layer_norm_rms_epsilon",
            GgufValue::F32(f("rms_norm_eps")),
        ),
        ("expert_count", GgufValue::U32(u("n_routed_experts"))),
        (
            "expert_used_count",
            GgufValue::U32(u("num_experts_per_tok")),
        ),
        ("expert_group_count", GgufValue::U32(u("n_group"))),
        ("expert_group_used_count", GgufValue::U32(u("topk_group"))),
        ("expert_gating_func", GgufValue::U32(2)),
        ("rope.scaling.type", GgufValue::String("yarn".into())),
        (
            "rope.scaling.factor",
            GgufValue::F32(rs["factor"].as_f64().unwrap() as f32),
        ),
        (
            "rope.scaling.original_context_length",
            GgufValue::U32(rs["original_max_position_embeddings"].as_u64().unwrap() as u32),
        ),
        (
            "rope.scaling.yarn_beta_fast",
            GgufValue::F32(rs["beta_fast"].as_f64().unwrap() as f32),
        ),
        (
            "rope.scaling.yarn_beta_slow",
            GgufValue::F32(rs["beta_slow"].as_f64().unwrap() as f32),
        ),
        (
            "rope.scaling.yarn_log_multiplier",
            GgufValue::F32((0.1 * rs["mscale_all_dim"].as_f64().unwrap()) as f32),
        ),
        (
            "leading_dense_block_count",
            GgufValue::U32(u("first_k_dense_replace")),
        ),
        ("vocab_size", GgufValue::U32(u("vocab_size"))),
        ("attention.q_lora_rank", GgufValue::U32(u("q_lora_rank"))),
        ("attention.kv_lora_rank", GgufValue::U32(u("kv_lora_rank"))),
        (
            "attention.key_length",
            GgufValue::U32((d.kv_lora + d.rope) as u32),
        ),
        ("attention.value_length", GgufValue::U32(d.kv_lora as u32)),
        (
            "attention.key_length_mla",
            GgufValue::U32((d.nope + d.rope) as u32),
        ),
        ("attention.value_length_mla", GgufValue::U32(d.vd as u32)),
        (
            "expert_feed_forward_length",
            GgufValue::U32(u("moe_intermediate_size")),
        ),
        ("expert_shared_count", GgufValue::U32(u("n_shared_experts"))),
        (
            "expert_weights_scale",
            GgufValue::F32(f("routed_scaling_factor")),
        ),
        ("expert_weights_norm", GgufValue::Bool(true)),
        (
            "rope.dimension_count",
            GgufValue::U32(u("qk_rope_head_dim")),
        ),
    ];
    for (k, v) in &want {
        let key = format!("deepseek2.{k}");
        assert_eq!(kv.get(&key), Some(v), "{key}");
    }
    let n_arch = kv.keys().filter(|k| k.starts_with("deepseek2.")).count();
    assert_eq!(n_arch, want.len(), "unexpected deepseek2.* keys");
}

#[test]
fn fixture_metadata_has_every_deepseek2_key() {
    let (_tmp, dir) = fixture(fixtures::Arch::DeepseekV3);
    let plan = plan_dir(&dir, GgmlType::Q8_0).unwrap();
    check_deepseek_kv(&plan, &config(&dir));
    let kv = kv_map(&plan);
    assert_eq!(
        kv["general.name"],
        GgufValue::String("DeepSeek R1 Tiny".into())
    );
}

/// The DeepSeek-R1 release config.json.
const R1_CONFIG: &str = r#"{
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "bos_token_id": 0,
  "eos_token_id": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
  "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
  "model_type": "deepseek_v3", "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8,
  "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true,
  "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
  "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
    "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
    "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280
}"#;

/// Header facts of a checkpoint with `d`'s shapes (plus `mtp` layers and FP8 scales), as the
/// release stores them: no data needed to plan.
fn synthetic_metas(d: &Ds, mtp: usize) -> Vec<TensorMeta> {
    let mut all: Vec<(String, Vec<usize>)> = Vec::new();
    let full = Ds {
        layers: d.layers + mtp,
        ..*d
    };
    for e in expected(&full) {
        for hf in e.hf {
            if !all.contains(&hf) {
                all.push(hf);
            }
        }
    }
    for k in d.layers..d.layers + mtp {
        let p = format!("model.layers.{k}.");
        all.push((format!("{p}embed_tokens.weight"), vec![d.v, d.h]));
        all.push((format!("{p}enorm.weight"), vec![d.h]));
        all.push((format!("{p}hnorm.weight"), vec![d.h]));
        all.push((format!("{p}eh_proj.weight"), vec![d.h, 2 * d.h]));
        all.push((format!("{p}shared_head.norm.weight"), vec![d.h]));
        all.push((format!("{p}shared_head.head.weight"), vec![d.v, d.h]));
    }
    let mut metas = Vec::new();
    for (name, shape) in all {
        let fp8 = shape.len() == 2 && name.contains("_proj.") && !name.contains("eh_proj");
        let dtype = if name.ends_with("e_score_correction_bias") {
            Dtype::F32
        } else if fp8 {
            Dtype::F8E4M3
        } else {
            Dtype::BF16
        };
        if fp8 {
            metas.push(meta(
                &format!("{name}_scale_inv"),
                Dtype::F32,
                vec![shape[0].div_ceil(128), shape[1].div_ceil(128)],
            ));
        }
        metas.push(meta(&name, dtype, shape));
    }
    metas.sort_by(|a, b| a.name.cmp(&b.name));
    metas
}

fn meta(name: &str, dtype: Dtype, shape: Vec<usize>) -> TensorMeta {
    let len = (shape.iter().product::<usize>() * dtype.size()) as u64;
    TensorMeta {
        name: name.to_string(),
        dtype,
        shape,
        file: "/nowhere/model-00001-of-00163.safetensors".into(),
        offset: 0,
        len,
    }
}

#[test]
fn real_r1_config_plans_1086_tensors_256x20b() {
    let config = ModelConfig::from_json_str(R1_CONFIG, Path::new("/r1/config.json")).unwrap();
    let cfg: Value = serde_json::from_str(R1_CONFIG).unwrap();
    let d = ds(&cfg);
    let metas = synthetic_metas(&d, 1);
    let opts = PlanOptions {
        outtype: GgmlType::Q8_0,
        ..PlanOptions::default()
    };
    let plan =
        arch::plan_from_headers(&config, &metas, Path::new("/models/DeepSeek-R1"), &opts).unwrap();
    assert_eq!(plan.tensors.len(), 1086);
    check_tensors(&plan, &expected(&d), &metas);
    check_types(&plan, GgmlType::Q8_0);
    check_deepseek_kv(&plan, &cfg);
    let kv = kv_map(&plan);
    assert_eq!(
        kv["general.size_label"],
        GgufValue::String("256x20B".into())
    );
    assert_eq!(kv["general.name"], GgufValue::String("DeepSeek R1".into()));
    assert_eq!(kv["deepseek2.block_count"], GgufValue::U32(61));
    assert_eq!(kv["deepseek2.attention.key_length"], GgufValue::U32(576));
    assert_eq!(
        kv["deepseek2.rope.scaling.yarn_log_multiplier"],
        GgufValue::F32(0.1)
    );
    // Total parameters as in REFERENCE (671B).
    let total: u64 = plan
        .tensors
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    assert_eq!(total, 671_026_419_200);
    let mtp = plan
        .skipped
        .iter()
        .filter(|s| s.reason == SkipReason::MtpLayer)
        .count();
    let scales = plan
        .skipped
        .iter()
        .filter(|s| s.reason == SkipReason::Fp8Scale)
        .count();
    assert_eq!(
        mtp,
        metas
            .iter()
            .filter(|m| m.name.starts_with("model.layers.61."))
            .count()
    );
    assert_eq!(
        scales,
        metas
            .iter()
            .filter(|m| m.name.ends_with("_scale_inv") && !m.name.starts_with("model.layers.61."))
            .count()
    );
}

#[test]
fn v2_lite_style_null_q_lora_maps_q_proj_to_attn_q() {
    let text = {
        let mut v: Value = serde_json::from_str(R1_CONFIG).unwrap();
        let m = v.as_object_mut().unwrap();
        m.insert("q_lora_rank".into(), Value::Null);
        m.insert("num_hidden_layers".into(), 4.into());
        m.insert("first_k_dense_replace".into(), 1.into());
        m.insert("n_shared_experts".into(), 2.into());
        v.to_string()
    };
    let config = ModelConfig::from_json_str(&text, Path::new("/v2/config.json")).unwrap();
    let cfg: Value = serde_json::from_str(&text).unwrap();
    let d = ds(&cfg);
    let metas = synthetic_metas(&d, 0);
    let plan = arch::plan_from_headers(&config, &metas, Path::new("/v2"), &PlanOptions::default())
        .unwrap();
    check_tensors(&plan, &expected(&d), &metas);
    let kv = kv_map(&plan);
    assert!(!kv.contains_key("deepseek2.attention.q_lora_rank"));
    assert!(plan.tensors.iter().any(|t| t.name == "blk.0.attn_q.weight"));
    // Shared experts are n_shared · moe_intermediate wide.
    let sh = plan
        .tensors
        .iter()
        .find(|t| t.name == "blk.1.ffn_gate_shexp.weight")
        .unwrap();
    assert_eq!(sh.dims, vec![7168, 4096]);
}

#[test]
fn tied_lm_head_is_skipped_not_written() {
    let (_tmp, dir) = fixture(fixtures::Arch::DeepseekV3);
    edit_config(&dir, |m| {
        drop(m.insert("tie_word_embeddings".into(), true.into()))
    });
    let plan = plan_dir(&dir, GgmlType::F16).unwrap();
    assert!(!plan.tensors.iter().any(|t| t.name == "output.weight"));
    assert!(plan
        .skipped
        .iter()
        .any(|s| s.name == "lm_head.weight" && s.reason == SkipReason::TiedEmbedding));
    check_coverage(&plan, &dir);
}
