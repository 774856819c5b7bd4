//! Checkpoints whose config.json and tensors disagree, or that r1q cannot map: each must fail
//! while planning (before any data moves) with an error naming the tensor or file and what was
//! expected.

mod plan_support;

use convert::arch::PlanOptions;
use formats::checkpoint::Checkpoint;
use formats::ggml_type::GgmlType;
use plan_support::*;

fn assert_has(err: &str, parts: &[&str]) {
    eprintln!("{err}");
    for p in parts {
        assert!(err.contains(p), "error {err:?} lacks {p:?}");
    }
}

#[test]
fn missing_expert() {
    let (_tmp, dir) = fixture(fixtures::Arch::DeepseekV3);
    let w = "model.layers.1.mlp.experts.5.up_proj.weight";
    let scale = format!("{w}_scale_inv");
    remove_tensors(&dir, &[w, &scale]);
    let err = plan_err(&dir);
    assert_has(&err, &[w, "missing", &dir.display().to_string()]);
}

#[test]
fn wrong_shape_in_tensor() {
    let (_tmp, dir) = fixture(fixtures::Arch::DeepseekV3);
    let name = "model.layers.0.self_attn.kv_a_layernorm.weight";
    let kv_lora = cu(&config(&dir), "kv_lora_rank");
    replace_tensor(&dir, name, |e| StEntry {
        shape: vec![kv_lora + 2],
        data: vec![0; (kv_lora + 2) * 2],
        ..e.clone()
    });
    let err = plan_err(&dir);
    assert_has(
        &err,
        &[
            name,
            &format!("has shape [{}]", kv_lora + 2),
            &format!("expected [{kv_lora}]"),
            ".safetensors",
        ],
    );
}

#[test]
fn config_disagrees_with_tensors() {
    let (_tmp, dir) = fixture(fixtures::Arch::DeepseekV3);
    let c = config(&dir);
    let (inter, h) = (cu(&c, "intermediate_size"), cu(&c, "hidden_size"));
    edit_config(&dir, |m| {
        drop(m.insert("intermediate_size".into(), (inter + 32).into()))
    });
    let err = plan_err(&dir);
    assert_has(
        &err,
        &[
            "model.layers.0.mlp.gate_proj.weight",
            &format!("has shape [{inter}, {h}]"),
            &format!("expected [{}, {h}] from config.json", inter + 32),
        ],
    );
}

#[test]
fn wrong_dtype() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    let name = "model.layers.0.mlp.up_proj.weight";
    replace_tensor(&dir, name, |e| StEntry {
        dtype: "I32".into(),
        data: vec![0; e.data.len() * 2],
        ..e.clone()
    });
    let err = plan_err(&dir);
    assert_has(&err, &[name, "dtype I32", "expected a float type"]);
}

#[test]
fn missing_bias() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    let name = "model.layers.1.self_attn.k_proj.bias";
    remove_tensors(&dir, &[name]);
    let err = plan_err(&dir);
    assert_has(&err, &[name, "missing"]);
}

#[test]
fn unexpected_extra_tensor() {
    for arch in fixtures::Arch::ALL {
        let (_tmp, dir) = fixture(arch);
        let name = "model.layers.0.self_attn.rotary_emb.inv_freq";
        add_shard(
            &dir,
            "model-extra.safetensors",
            &[StEntry {
                name: name.into(),
                dtype: "F32".into(),
                shape: vec![16],
                data: vec![0; 64],
            }],
        );
        let err = plan_err(&dir);
        assert_has(
            &err,
            &["unexpected tensor", name, "model-extra.safetensors"],
        );
    }
}

#[test]
fn unknown_model_type() {
    let (_tmp, dir) = fixture(fixtures::Arch::Llama);
    edit_config(&dir, |m| {
        drop(m.insert("model_type".into(), "mistral".into()))
    });
    let err = plan_err(&dir);
    assert_has(&err, &["config.json", "mistral"]);
}

#[test]
fn missing_config_json() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = plan_err(&dir);
    assert_has(&err, &["config.json: not found"]);
}

#[test]
fn unsupported_outtype() {
    let (_tmp, dir) = fixture(fixtures::Arch::Qwen2);
    let ckpt = Checkpoint::open(&dir).unwrap();
    let opts = PlanOptions {
        outtype: GgmlType::Q4_K,
        ..PlanOptions::default()
    };
    let err = convert::arch::plan(&ckpt, &opts).unwrap_err().to_string();
    assert_has(&err, &["q4_K", "not supported"]);
}

#[test]
fn llama_with_biases_is_refused() {
    let (_tmp, dir) = fixture(fixtures::Arch::Llama);
    edit_config(&dir, |m| {
        drop(m.insert("attention_bias".into(), true.into()))
    });
    let err = plan_err(&dir);
    assert_has(&err, &["attention_bias"]);
}
