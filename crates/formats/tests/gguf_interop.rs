//! Interop with the PyPI `gguf` package (an independent implementation): files r1q writes are read
//! by `gguf.GGUFReader` exactly as intended, and files `gguf.GGUFWriter` writes are read by r1q
//! exactly as gguf-py reads them. Both sides are reduced to the same canonical JSON (see
//! tests/py/gguf_dump.py) and compared for equality. Skips visibly without the test venv.

use std::path::{Path, PathBuf};
use std::process::Command;

use formats::ggml_type::GgmlType;
use formats::gguf::{
    GgufArray, GgufFile, GgufValue, GgufValueType, GgufWriter, TensorDecl, ALIGNMENT_KEY,
};
use serde_json::{json, Value};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// Runs a helper script and parses its stdout as JSON.
fn run_py(python: &Path, name: &str, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: bad JSON: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canonical JSON form of a value (see gguf_dump.py).
fn canon(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F32(x) => json!(format!("f32:{:08x}", x.to_bits())),
        GgufValue::F64(x) => json!(format!("f64:{:016x}", x.to_bits())),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(s) => json!(s),
        GgufValue::Array(a) => Value::Array(a.values.iter().map(canon).collect()),
    }
}

fn kv_json(metadata: &[(String, GgufValue)]) -> Value {
    Value::Array(
        metadata
            .iter()
            .map(|(k, v)| {
                let elem = v.as_array().map(|a| a.elem_type.id());
                json!([k, v.value_type().id(), elem, canon(v)])
            })
            .collect(),
    )
}

/// r1q's reader, reduced to the canonical JSON.
fn dump_rust(f: &GgufFile) -> Value {
    let tensors: Vec<Value> = f
        .tensors()
        .iter()
        .map(|t| {
            json!([
                t.name,
                t.ggml_type.id(),
                t.dims,
                t.nbytes,
                f.data_offset() + t.offset,
                hex(f.tensor_data(t)),
            ])
        })
        .collect();
    json!({
        "version": f.version(),
        "alignment": f.alignment(),
        "data_offset": f.data_offset(),
        "kv": kv_json(f.metadata()),
        "tensors": tensors,
    })
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn every_value_type() -> Vec<(String, GgufValue)> {
    let kv = |k: &str, v: GgufValue| (k.to_string(), v);
    vec![
        kv("general.architecture", "llama".into()),
        kv("t.u8", GgufValue::U8(200)),
        kv("t.i8", GgufValue::I8(-7)),
        kv("t.u16", GgufValue::U16(65535)),
        kv("t.i16", GgufValue::I16(-32768)),
        kv("t.u32", GgufValue::U32(u32::MAX)),
        kv("t.i32", GgufValue::I32(i32::MIN)),
        kv("t.f32", GgufValue::F32(-0.1)),
        kv("t.bool_true", GgufValue::Bool(true)),
        kv("t.bool_false", GgufValue::Bool(false)),
        kv("general.name", "Ünïcödé ✓ 模型 🚀 \"quoted\"".into()),
        kv("t.empty_string", "".into()),
        kv("t.u64", GgufValue::U64(u64::MAX)),
        kv("t.i64", GgufValue::I64(i64::MIN)),
        kv("t.f64", GgufValue::F64(std::f64::consts::PI)),
        kv(
            "tokenizer.ggml.tokens",
            GgufArray::strings(["<s>", "", "Ġthe", "日本語", "\u{1F600}"]).into(),
        ),
        kv(
            "tokenizer.ggml.token_type",
            GgufArray::i32s([1, 3, -1]).into(),
        ),
        kv(
            "tokenizer.ggml.scores",
            GgufArray::f32s([0.0, -1.5, 1e-30]).into(),
        ),
        kv("t.u32s", GgufArray::u32s([0, 1, u32::MAX]).into()),
        kv(
            "t.u64s",
            GgufArray::new(GgufValueType::U64, vec![GgufValue::U64(u64::MAX)]).into(),
        ),
        kv(
            "t.i16s",
            GgufArray::new(
                GgufValueType::I16,
                vec![GgufValue::I16(-1), GgufValue::I16(2)],
            )
            .into(),
        ),
        kv(
            "t.f64s",
            GgufArray::new(
                GgufValueType::F64,
                vec![GgufValue::F64(-0.0), GgufValue::F64(1e300)],
            )
            .into(),
        ),
        kv(
            "t.bools",
            GgufArray::new(GgufValueType::Bool, vec![true.into(), false.into()]).into(),
        ),
        kv("t.empty_array", GgufArray::u32s([]).into()),
        kv(
            "t.empty_strings",
            GgufArray::strings(Vec::<String>::new()).into(),
        ),
    ]
}

fn rust_writes_python_reads(alignment: Option<u32>) {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r1q.gguf");
    let mut metadata = every_value_type();
    if let Some(a) = alignment {
        metadata.push((ALIGNMENT_KEY.to_string(), GgufValue::U32(a)));
    }
    let decls = vec![
        TensorDecl::new("f32_1d", vec![5], GgmlType::F32),
        TensorDecl::new("f32_2d", vec![7, 3], GgmlType::F32),
        TensorDecl::new("f16_3d", vec![4, 3, 2], GgmlType::F16),
        TensorDecl::new("bf16_4d", vec![8, 3, 1, 2], GgmlType::BF16),
        TensorDecl::new("q8_0_2d", vec![64, 3], GgmlType::Q8_0),
        TensorDecl::new("q8_0_4d", vec![32, 2, 2, 2], GgmlType::Q8_0),
        TensorDecl::new("blk.0.attn_q.weight", vec![96], GgmlType::Q8_0),
    ];
    let data: Vec<Vec<u8>> = decls
        .iter()
        .enumerate()
        .map(|(i, d)| bytes(i as u64 + 1, d.nbytes().unwrap() as usize))
        .collect();
    let mut w = GgufWriter::create(&path, &metadata, decls.clone()).unwrap();
    for (i, d) in data.iter().enumerate() {
        if i % 2 == 0 {
            w.write_tensor(d).unwrap();
        } else {
            // Exercise the chunked path with uneven chunks.
            w.begin_tensor().unwrap();
            for chunk in d.chunks(7) {
                w.write_chunk(chunk).unwrap();
            }
            w.end_tensor().unwrap();
        }
    }
    w.finish().unwrap();

    let py = run_py(&python, "gguf_dump.py", &[path.to_str().unwrap()]);
    let ours = GgufFile::open(&path).unwrap();
    assert_eq!(py, dump_rust(&ours), "gguf-py and r1q disagree");

    // And both agree with what was written.
    assert_eq!(py["version"], json!(3));
    assert_eq!(py["alignment"], json!(alignment.unwrap_or(32)));
    assert_eq!(py["kv"], kv_json(&metadata));
    let align = u64::from(alignment.unwrap_or(32));
    let data_offset = py["data_offset"].as_u64().unwrap();
    assert_eq!(data_offset % align, 0);
    let mut expected_offset = data_offset;
    let tensors = py["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), decls.len());
    for ((t, d), bytes) in tensors.iter().zip(&decls).zip(&data) {
        assert_eq!(
            t,
            &json!([
                d.name,
                d.ggml_type.id(),
                d.dims,
                bytes.len(),
                expected_offset,
                hex(bytes)
            ])
        );
        expected_offset += (bytes.len() as u64).next_multiple_of(align);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), expected_offset);
}

fn python_writes_rust_reads(alignment: Option<u32>) {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.gguf");
    let align_arg = alignment.map(|a| a.to_string());
    let mut args = vec![path.to_str().unwrap()];
    if let Some(a) = &align_arg {
        args.push(a);
    }
    let py = run_py(&python, "gguf_write.py", &args);
    let ours = GgufFile::open(&path).unwrap();
    assert_eq!(py, dump_rust(&ours), "gguf-py and r1q disagree");

    // Spot checks of conventions, independent of the dump code.
    assert_eq!(ours.alignment(), u64::from(alignment.unwrap_or(32)));
    assert_eq!(
        ours.get("t.u64").and_then(GgufValue::as_u64),
        Some(u64::MAX)
    );
    assert_eq!(
        ours.get("t.i32").and_then(GgufValue::as_i64),
        Some(-2_000_000_000)
    );
    assert_eq!(
        ours.get("general.name").and_then(GgufValue::as_str),
        Some("Ünïcödé ✓ 模型 🚀")
    );
    let strs = ours.get("t.strs").and_then(GgufValue::as_array).unwrap();
    assert_eq!(strs.as_strs().unwrap(), ["a", "", "Ġhello", "日本"]);
    let t = ours.tensor("f32_4d").unwrap();
    assert_eq!(
        t.dims,
        [8, 3, 1, 2],
        "numpy shape (2,1,3,8) is ne [8,3,1,2]"
    );
    let q = ours.tensor("q8_0").unwrap();
    assert_eq!(
        (q.ggml_type, q.dims.as_slice(), q.nbytes),
        (GgmlType::Q8_0, &[64u64, 2][..], 136)
    );
    let k = ours.tensor("q4_k").unwrap();
    assert_eq!(
        (k.ggml_type, k.dims.as_slice()),
        (GgmlType::Q4_K, &[256u64, 3][..])
    );
    assert_eq!(ours.tensor("bf16").unwrap().ggml_type, GgmlType::BF16);
}

#[test]
fn rust_writes_python_reads_default_alignment() {
    rust_writes_python_reads(None);
}

#[test]
fn rust_writes_python_reads_alignment_64() {
    rust_writes_python_reads(Some(64));
}

#[test]
fn python_writes_rust_reads_default_alignment() {
    python_writes_rust_reads(None);
}

#[test]
fn python_writes_rust_reads_alignment_64() {
    python_writes_rust_reads(Some(64));
}

/// Our type table against gguf-py's `GGMLQuantizationType` and `GGML_QUANT_SIZES`.
#[test]
fn ggml_type_table_matches_gguf_py() {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let py = run_py(&python, "ggml_quant_sizes.py", &[]);
    let py = py.as_object().unwrap();
    for (id, entry) in py {
        let id: u32 = id.parse().unwrap();
        let t = GgmlType::from_id(id).unwrap_or_else(|| panic!("gguf-py knows id {id}, we do not"));
        let name = entry[0].as_str().unwrap();
        assert!(
            t.name().eq_ignore_ascii_case(name),
            "id {id}: {name} vs {}",
            t.name()
        );
        assert_eq!(GgmlType::from_name(name), Some(t));
        let (block, size) = (entry[1].as_u64(), entry[2].as_u64());
        if t == GgmlType::Q8_1 {
            // gguf-py says 4 + 4 + 32 = 40 bytes (two f32); ggml's block_q8_1 is two fp16 + 32
            // int8 = 36 bytes (static_assert in ggml-common.h; REFERENCE §2.1). Q8_1 never
            // appears in model files. If gguf-py is ever fixed, this branch can go.
            assert_eq!((block, size), (Some(32), Some(40)));
            assert_eq!((t.block_size(), t.type_size()), (32, 36));
            continue;
        }
        assert_eq!(block, Some(t.block_size()), "{name} block size");
        assert_eq!(size, Some(t.type_size()), "{name} type size");
    }
    // Types gguf-py 0.19.0 does not know yet; every other type must be in its table.
    let newer_than_gguf_py = [GgmlType::Q2_0];
    for t in GgmlType::ALL {
        if !newer_than_gguf_py.contains(&t) {
            assert!(py.contains_key(&t.id().to_string()), "gguf-py lacks {t}");
        }
    }
}

/// A tokenizer-sized string array (130k entries) round-trips through the writer and reader.
#[test]
fn tokenizer_sized_array_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    let tokens: Vec<String> = (0..130_000).map(|i| format!("tok_{i}_Ġ")).collect();
    let metadata = vec![
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufArray::strings(tokens.clone()).into(),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            GgufArray::i32s((0..130_000).map(|i| i % 7)).into(),
        ),
    ];
    GgufWriter::create(&path, &metadata, vec![])
        .unwrap()
        .finish()
        .unwrap();
    let f = GgufFile::open(&path).unwrap();
    let got = f
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .unwrap();
    assert_eq!(
        got.as_strs().unwrap(),
        tokens.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(f.metadata(), &metadata[..]);
}
