//! R1-Distill-Qwen (`qwen2`) and R1-Distill-Llama (`llama`) plans: tensor list, shapes,
//! sources (q/k permutation for llama, biases for qwen2), types, metadata with exact GGUF types,
//! and llama3 `rope_freqs` against an independent f64 computation of REFERENCE §4.8.

mod plan_support;

use convert::plan::Source;
use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;
use plan_support::*;
use serde_json::Value;

/// (GGUF name, ne, checkpoint source) expected for a dense decoder, in the documented order.
fn expected(c: &Value, qwen: bool) -> Vec<(String, Vec<u64>, Option<String>)> {
    let (v, h, f, l) = (
        cu(c, "vocab_size") as u64,
        cu(c, "hidden_size") as u64,
        cu(c, "intermediate_size") as u64,
        cu(c, "num_hidden_layers"),
    );
    let heads = cu(c, "num_attention_heads") as u64;
    let kvh = cu(c, "num_key_value_heads") as u64;
    let hd = h / heads;
    let mut e = vec![
        (
            "token_embd.weight".to_string(),
            vec![h, v],
            Some("model.embed_tokens.weight".to_string()),
        ),
        (
            "output_norm.weight".into(),
            vec![h],
            Some("model.norm.weight".into()),
        ),
        (
            "output.weight".into(),
            vec![h, v],
            Some("lm_head.weight".into()),
        ),
    ];
    if !qwen {
        e.push(("rope_freqs.weight".into(), vec![hd / 2], None));
    }
    for i in 0..l {
        let b = |s: &str| format!("blk.{i}.{s}");
        let p = |s: &str| Some(format!("model.layers.{i}.{s}"));
        e.push((b("attn_norm.weight"), vec![h], p("input_layernorm.weight")));
        for (x, out) in [("q", heads * hd), ("k", kvh * hd), ("v", kvh * hd)] {
            e.push((
                b(&format!("attn_{x}.weight")),
                vec![h, out],
                p(&format!("self_attn.{x}_proj.weight")),
            ));
            if qwen {
                e.push((
                    b(&format!("attn_{x}.bias")),
                    vec![out],
                    p(&format!("self_attn.{x}_proj.bias")),
                ));
            }
        }
        e.push((
            b("attn_output.weight"),
            vec![heads * hd, h],
            p("self_attn.o_proj.weight"),
        ));
        e.push((
            b("ffn_norm.weight"),
            vec![h],
            p("post_attention_layernorm.weight"),
        ));
        e.push((b("ffn_gate.weight"), vec![h, f], p("mlp.gate_proj.weight")));
        e.push((b("ffn_up.weight"), vec![h, f], p("mlp.up_proj.weight")));
        e.push((b("ffn_down.weight"), vec![f, h], p("mlp.down_proj.weight")));
    }
    e
}

fn check_tensors(plan: &convert::plan::Plan, exp: &[(String, Vec<u64>, Option<String>)]) {
    let got: Vec<&str> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
    let want: Vec<&str> = exp.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(got, want);
    for (t, (_, ne, src)) in plan.tensors.iter().zip(exp) {
        assert_eq!(&t.dims, ne, "{}", t.name);
        assert_eq!(source_names(&t.source).first(), src.as_ref(), "{}", t.name);
    }
}

fn check_text_kv(plan: &convert::plan::Plan, c: &Value, arch: &str) {
    let kv = kv_map(plan);
    let u = |k: &str| GgufValue::U32(c[k].as_u64().unwrap() as u32);
    let f = |k: &str| GgufValue::F32(c[k].as_f64().unwrap() as f32);
    let want = [
        ("block_count", u("num_hidden_layers")),
        ("context_length", u("max_position_embeddings")),
        ("embedding_length", u("hidden_size")),
        ("feed_forward_length", u("intermediate_size")),
        ("attention.head_count", u("num_attention_heads")),
        ("attention.head_count_kv", u("num_key_value_heads")),
        ("rope.freq_base", f("rope_theta")),
        ("attention.layer_norm_rms_epsilon", f("rms_norm_eps")),
    ];
    for (k, v) in &want {
        let key = format!("{arch}.{k}");
        assert_eq!(kv.get(&key), Some(v), "{key}");
    }
}

#[test]
fn qwen2_plan() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    let c = config(&dir);
    let exp = expected(&c, true);
    assert_eq!(exp.len(), 3 + 12 * cu(&c, "num_hidden_layers"));
    for outtype in OUTTYPES {
        let plan = plan_dir(&dir, outtype).unwrap();
        check_tensors(&plan, &exp);
        assert!(plan
            .tensors
            .iter()
            .all(|t| matches!(t.source, Source::Tensor { .. })));
        check_coverage(&plan, &dir);
        check_types(&plan, outtype);
        for t in plan.tensors.iter().filter(|t| t.name.ends_with(".bias")) {
            assert_eq!(t.ggml_type, GgmlType::F32, "{}", t.name);
            assert_eq!(t.dims.len(), 1);
        }
        assert!(plan.skipped.is_empty());
        check_kv_order(&plan, "qwen2");
        check_general(&plan, &dir, "qwen2", outtype);
        check_text_kv(&plan, &c, "qwen2");
        let kv = kv_map(&plan);
        let arch_keys: Vec<&String> = kv.keys().filter(|k| k.starts_with("qwen2.")).collect();
        assert_eq!(arch_keys.len(), 8, "{arch_keys:?}");
        assert!(!kv.contains_key("qwen2.vocab_size"));
    }
}

/// REFERENCE §4.8 in f64, written independently of the crate.
fn llama3_factors(c: &Value) -> Vec<f64> {
    let rs = &c["rope_scaling"];
    let d = (cu(c, "hidden_size") / cu(c, "num_attention_heads")) as f64;
    let base = c["rope_theta"].as_f64().unwrap();
    let factor = rs["factor"].as_f64().unwrap();
    let low = rs["low_freq_factor"].as_f64().unwrap();
    let high = rs["high_freq_factor"].as_f64().unwrap();
    let l = rs["original_max_position_embeddings"].as_f64().unwrap();
    (0..(d as usize) / 2)
        .map(|i| {
            let f = base.powf(-2.0 * i as f64 / d);
            let lambda = 2.0 * std::f64::consts::PI / f;
            if lambda < l / high {
                1.0
            } else if lambda > l / low {
                factor
            } else {
                let s = (l / lambda - low) / (high - low);
                1.0 / ((1.0 - s) / factor + s)
            }
        })
        .collect()
}

#[test]
fn llama_plan() {
    let (_tmp, dir) = fixture(fixtures::Arch::Llama);
    let c = config(&dir);
    let exp = expected(&c, false);
    assert_eq!(exp.len(), 4 + 9 * cu(&c, "num_hidden_layers"));
    let heads = c["num_attention_heads"].as_u64().unwrap();
    let kvh = c["num_key_value_heads"].as_u64().unwrap();
    for outtype in OUTTYPES {
        let plan = plan_dir(&dir, outtype).unwrap();
        check_tensors(&plan, &exp);
        check_coverage(&plan, &dir);
        check_types(&plan, outtype);
        check_kv_order(&plan, "llama");
        check_general(&plan, &dir, "llama", outtype);
        check_text_kv(&plan, &c, "llama");
        for t in &plan.tensors {
            match (&t.source, t.name.as_str()) {
                (Source::PermuteRope { n_head, .. }, n) if n.ends_with("attn_q.weight") => {
                    assert_eq!(*n_head, heads)
                }
                (Source::PermuteRope { n_head, .. }, n) if n.ends_with("attn_k.weight") => {
                    assert_eq!(*n_head, kvh)
                }
                (Source::Values(v), "rope_freqs.weight") => {
                    assert_eq!(t.ggml_type, GgmlType::F32);
                    let want = llama3_factors(&c);
                    assert_eq!(v.len(), want.len());
                    assert!(want.contains(&1.0) && want.contains(&8.0));
                    assert!(want.iter().any(|&w| w > 1.0 && w < 8.0), "no smooth band");
                    for (i, (&g, &w)) in v.iter().zip(&want).enumerate() {
                        assert!(
                            ((g as f64) - w).abs() <= 1e-5 * w,
                            "rope_freqs[{i}] {g} vs {w}"
                        );
                    }
                }
                (Source::Tensor { .. }, n) => {
                    assert!(
                        !n.ends_with("attn_q.weight") && !n.ends_with("attn_k.weight"),
                        "{n}"
                    )
                }
                (s, n) => panic!("{n}: unexpected source {s:?}"),
            }
        }
        let kv = kv_map(&plan);
        assert_eq!(
            kv["llama.vocab_size"],
            GgufValue::U32(cu(&c, "vocab_size") as u32)
        );
        assert_eq!(
            kv["llama.rope.dimension_count"],
            GgufValue::U32((cu(&c, "hidden_size") / cu(&c, "num_attention_heads")) as u32)
        );
        assert!(
            !kv.keys().any(|k| k.starts_with("llama.rope.scaling")),
            "llama3 writes no scaling keys"
        );
        // key_length/value_length = head_dim, as transformers' LlamaConfig fills it in.
        let hd = (cu(&c, "hidden_size") / cu(&c, "num_attention_heads")) as u32;
        assert_eq!(kv["llama.attention.key_length"], GgufValue::U32(hd));
        assert_eq!(kv["llama.attention.value_length"], GgufValue::U32(hd));
        let arch_keys = kv.keys().filter(|k| k.starts_with("llama.")).count();
        assert_eq!(arch_keys, 12);
    }
}

#[test]
fn sampling_keys_follow_generation_config() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    let gen = dir.join("generation_config.json");
    std::fs::write(
        &gen,
        r#"{"temperature": 0.7, "top_k": 40, "top_p": null, "repetition_penalty": 1.1,
            "mirostat": 2.5, "sequence": "top_k;temperature"}"#,
    )
    .unwrap();
    let plan = plan_dir(&dir, GgmlType::F16).unwrap();
    let sampling: Vec<_> = plan
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("general.sampling."))
        .cloned()
        .collect();
    // gguf-py's order; null and a float where an int belongs give no key.
    let want = [
        ("sequence", GgufValue::String("top_k;temperature".into())),
        ("top_k", GgufValue::I32(40)),
        ("temp", GgufValue::F32(0.7)),
        ("penalty_repeat", GgufValue::F32(1.1)),
    ]
    .map(|(k, v)| (format!("general.sampling.{k}"), v));
    assert_eq!(sampling, want);
    std::fs::write(&gen, "not json").unwrap();
    let plan = plan_dir(&dir, GgmlType::F16).unwrap();
    assert!(!plan
        .metadata
        .iter()
        .any(|(k, _)| k.starts_with("general.sampling.")));
    std::fs::remove_file(&gen).unwrap();
    let plan = plan_dir(&dir, GgmlType::F16).unwrap();
    assert!(!plan
        .metadata
        .iter()
        .any(|(k, _)| k.starts_with("general.sampling.")));
}

#[test]
fn llama_without_llama3_scaling_has_no_rope_freqs() {
    let (_tmp, dir) = fixture(fixtures::Arch::Llama);
    edit_config(&dir, |m| drop(m.remove("rope_scaling")));
    let plan = plan_dir(&dir, GgmlType::F16).unwrap();
    assert!(!plan.tensors.iter().any(|t| t.name == "rope_freqs.weight"));
}

#[test]
fn qwen2_yarn_scaling_writes_scaling_keys() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    edit_config(&dir, |m| {
        drop(m.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
        ))
    });
    let plan = plan_dir(&dir, GgmlType::F16).unwrap();
    let kv = kv_map(&plan);
    assert_eq!(
        kv["qwen2.rope.scaling.type"],
        GgufValue::String("yarn".into())
    );
    assert_eq!(kv["qwen2.rope.scaling.factor"], GgufValue::F32(4.0));
    assert_eq!(
        kv["qwen2.rope.scaling.original_context_length"],
        GgufValue::U32(32768)
    );
}

#[test]
fn name_override_and_dense_size_label() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    let ckpt = formats::checkpoint::Checkpoint::open(&dir).unwrap();
    let opts = convert::arch::PlanOptions {
        name: Some("My Model".into()),
        ..Default::default()
    };
    let plan = convert::arch::plan(&ckpt, &opts).unwrap();
    let kv = kv_map(&plan);
    assert_eq!(kv["general.name"], GgufValue::String("My Model".into()));
    let total: u64 = plan
        .tensors
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    // Dense: the total in gguf-py's notation (tiny fixtures are in the millions).
    assert!(total > 1_000_000 && total < 100_000_000, "{total}");
    let want = format!("{:.1}M", total as f64 * 1e-6);
    let want = if total as f64 * 1e-6 >= 9.5 {
        format!("{:.0}M", total as f64 * 1e-6)
    } else {
        want
    };
    assert_eq!(kv["general.size_label"], GgufValue::String(want));
}
