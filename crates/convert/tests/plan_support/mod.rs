//! Shared helpers of the `plan_*` tests: fixture directories, a minimal safetensors
//! reader/writer to damage them (drop, replace or add a tensor), and independent oracles
//! (expected HF shapes, output types) computed from config.json.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use convert::arch::{self, PlanOptions};
use convert::plan::{Plan, Source};
use convert::ConvertError;
use formats::checkpoint::Checkpoint;
use formats::ggml_type::GgmlType;
use formats::gguf::GgufValue;
use serde_json::{json, Value};

/// Every outtype `convert` supports.
pub const OUTTYPES: [GgmlType; 4] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

/// A fresh fixture of `arch` in a temp dir (kept alive by the returned guard).
pub fn fixture(arch: fixtures::Arch) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(match arch {
        fixtures::Arch::DeepseekV3 => "DeepSeek-R1-tiny",
        fixtures::Arch::Qwen2 => "DeepSeek-R1-Distill-Qwen-tiny",
        fixtures::Arch::Llama => "DeepSeek-R1-Distill-Llama-tiny",
    });
    fixtures::write_fixture(arch, &dir, &fixtures::Options::default()).expect("fixture");
    (tmp, dir)
}

/// Opens `dir` and plans it; errors from either step as one `ConvertError`.
pub fn plan_dir(dir: &Path, outtype: GgmlType) -> Result<Plan, ConvertError> {
    let ckpt = Checkpoint::open(dir)?;
    let opts = PlanOptions {
        outtype,
        ..PlanOptions::default()
    };
    arch::plan(&ckpt, &opts)
}

/// The error text of a plan that must fail.
pub fn plan_err(dir: &Path) -> String {
    match plan_dir(dir, GgmlType::F16) {
        Ok(p) => panic!("plan succeeded with {} tensors", p.tensors.len()),
        Err(e) => e.to_string(),
    }
}

/// config.json as JSON.
pub fn config(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    serde_json::from_str(&text).expect("json")
}

/// Rewrites config.json with `f` applied.
pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v = config(dir);
    f(v.as_object_mut().expect("object"));
    std::fs::write(dir.join("config.json"), v.to_string()).expect("write config");
}

/// `config[key]` as usize.
pub fn cu(cfg: &Value, key: &str) -> usize {
    cfg[key].as_u64().unwrap_or_else(|| panic!("{key}")) as usize
}

/// Checkpoint tensor names each planned tensor reads.
pub fn source_names(s: &Source) -> Vec<String> {
    match s {
        Source::Tensor { name } | Source::PermuteRope { name, .. } | Source::KvB { name, .. } => {
            vec![name.clone()]
        }
        Source::Stack { names } => names.clone(),
        Source::Values(_) => vec![],
    }
}

/// Asserts the plan's invariants against the checkpoint: output names unique, every checkpoint
/// tensor used or skipped (never both), every source present.
pub fn check_coverage(plan: &Plan, dir: &Path) {
    let ckpt = Checkpoint::open(dir).expect("open");
    let all: BTreeSet<String> = ckpt.tensors().iter().map(|m| m.name.clone()).collect();
    let mut names = BTreeSet::new();
    let mut used = BTreeSet::new();
    for t in &plan.tensors {
        assert!(names.insert(t.name.clone()), "duplicate {}", t.name);
        for n in source_names(&t.source) {
            assert!(all.contains(&n), "{} reads absent {n}", t.name);
            used.insert(n);
        }
    }
    let skipped: BTreeSet<String> = plan.skipped.iter().map(|s| s.name.clone()).collect();
    assert_eq!(skipped.len(), plan.skipped.len(), "skipped twice");
    assert!(used.is_disjoint(&skipped), "used and skipped");
    let covered: BTreeSet<String> = used.union(&skipped).cloned().collect();
    assert_eq!(covered, all, "checkpoint tensors neither used nor skipped");
}

/// The type REFERENCE §4.3 gives `name` with `dims` under `outtype` (independent of the crate).
pub fn expected_type(name: &str, dims: &[u64], outtype: GgmlType) -> GgmlType {
    let f32_always = dims.len() == 1
        || name.ends_with("_norm.weight")
        || name.contains("ffn_gate_inp")
        || !name.ends_with(".weight");
    if f32_always {
        GgmlType::F32
    } else if outtype == GgmlType::Q8_0 && !dims[0].is_multiple_of(32) {
        GgmlType::F16
    } else {
        outtype
    }
}

/// Asserts every tensor's type follows §4.3.
pub fn check_types(plan: &Plan, outtype: GgmlType) {
    for t in &plan.tensors {
        assert_eq!(
            t.ggml_type,
            expected_type(&t.name, &t.dims, outtype),
            "{} {:?} under {outtype:?}",
            t.name,
            t.dims
        );
    }
}

/// The metadata as a map (asserting no key repeats).
pub fn kv_map(plan: &Plan) -> BTreeMap<String, GgufValue> {
    let mut m = BTreeMap::new();
    for (k, v) in &plan.metadata {
        assert!(m.insert(k.clone(), v.clone()).is_none(), "key {k} twice");
    }
    m
}

/// Asserts the metadata order: `general.architecture` first, llama.cpp's keys, then tokenizer
/// keys, then r1q's keys last.
pub fn check_kv_order(plan: &Plan, arch: &str) {
    let keys: Vec<&str> = plan.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.first(), Some(&"general.architecture"));
    assert_eq!(
        plan.metadata.first().map(|(_, v)| v.clone()),
        Some(GgufValue::String(arch.into()))
    );
    let rank = |k: &str| {
        if k.starts_with("r1q.") {
            2
        } else if k.starts_with("tokenizer.") {
            1
        } else {
            0
        }
    };
    let ranks: Vec<u8> = keys.iter().map(|k| rank(k)).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "key order {keys:?}");
    assert_eq!(plan.arch, arch);
}

/// Asserts the general.* and r1q.* keys every plan has.
pub fn check_general(plan: &Plan, dir: &Path, model_type: &str, outtype: GgmlType) {
    let kv = kv_map(plan);
    let s = |v: &str| GgufValue::String(v.into());
    assert_eq!(kv["general.type"], s("model"));
    let ftype = match outtype {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        _ => unreachable!(),
    };
    assert_eq!(kv["general.file_type"], GgufValue::U32(ftype));
    assert_eq!(kv["general.quantization_version"], GgufValue::U32(2));
    assert!(matches!(kv["general.name"], GgufValue::String(ref n) if n.starts_with("DeepSeek R1")));
    assert!(matches!(kv["general.size_label"], GgufValue::String(_)));
    assert_eq!(kv["r1q.version"], s(env!("CARGO_PKG_VERSION")));
    assert_eq!(kv["r1q.source.path"], s(&dir.display().to_string()));
    assert_eq!(kv["r1q.source.model_type"], s(model_type));
    // Every fixture's generation_config.json has R1's temperature 0.6 and top_p 0.95; gguf-py
    // writes them between general.type and general.name.
    assert_eq!(kv["general.sampling.temp"], GgufValue::F32(0.6));
    assert_eq!(kv["general.sampling.top_p"], GgufValue::F32(0.95));
    let keys: Vec<&str> = plan.metadata.iter().map(|(k, _)| k.as_str()).collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).expect(k);
    assert_eq!(
        &keys[at("general.type") + 1..at("general.name")],
        ["general.sampling.top_p", "general.sampling.temp"]
    );
}

/// One tensor in a hand-written safetensors file.
#[derive(Clone, Debug)]
pub struct StEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads every tensor of a safetensors file (test-sized files only).
pub fn read_st(path: &Path) -> Vec<StEntry> {
    let bytes = std::fs::read(path).expect("read shard");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for (name, e) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let off = &e["data_offsets"];
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        out.push(StEntry {
            name: name.clone(),
            dtype: e["dtype"].as_str().unwrap().to_string(),
            shape: e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            data: data[a..b].to_vec(),
        });
    }
    out
}

/// Writes `entries` as a safetensors file (data contiguous, in the given order).
pub fn write_st(path: &Path, entries: &[StEntry]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for e in entries {
        header.insert(
            e.name.clone(),
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [off, off + e.data.len()]}),
        );
        off += e.data.len();
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for e in entries {
        out.extend_from_slice(&e.data);
    }
    std::fs::write(path, out).expect("write shard");
}

/// The shard file holding `tensor`, from the index.
pub fn shard_of(dir: &Path, tensor: &str) -> PathBuf {
    let index = read_index(dir);
    let file = index["weight_map"][tensor]
        .as_str()
        .unwrap_or_else(|| panic!("{tensor} not in index"));
    dir.join(file)
}

fn read_index(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("model.safetensors.index.json")).expect("index");
    serde_json::from_str(&text).expect("index json")
}

fn write_index(dir: &Path, v: &Value) {
    std::fs::write(dir.join("model.safetensors.index.json"), v.to_string()).expect("index");
}

/// Removes tensors from their shards and from the index.
pub fn remove_tensors(dir: &Path, names: &[&str]) {
    let mut index = read_index(dir);
    for name in names {
        let shard = shard_of(dir, name);
        let entries: Vec<StEntry> = read_st(&shard)
            .into_iter()
            .filter(|e| e.name != *name)
            .collect();
        write_st(&shard, &entries);
        index["weight_map"].as_object_mut().unwrap().remove(*name);
    }
    write_index(dir, &index);
}

/// Replaces tensor `name` in its shard by `f(old)`.
pub fn replace_tensor(dir: &Path, name: &str, f: impl Fn(&StEntry) -> StEntry) {
    let shard = shard_of(dir, name);
    let entries: Vec<StEntry> = read_st(&shard)
        .into_iter()
        .map(|e| if e.name == name { f(&e) } else { e })
        .collect();
    write_st(&shard, &entries);
}

/// Adds `entries` in a new shard `file`, registered in the index.
pub fn add_shard(dir: &Path, file: &str, entries: &[StEntry]) {
    write_st(&dir.join(file), entries);
    let mut index = read_index(dir);
    let map = index["weight_map"].as_object_mut().unwrap();
    for e in entries {
        map.insert(e.name.clone(), Value::String(file.into()));
    }
    write_index(dir, &index);
}
