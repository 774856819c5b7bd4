//! End-to-end: `r1q inspect` run as a user runs it, on fixture checkpoints, on GGUF files, and on
//! every malformed input the readers know of.

use formats::ggml_type::GgmlType;
use formats::gguf::{GgufArray, GgufValue, GgufWriter, TensorDecl};
use std::path::Path;
use std::process::{Command, Output};

fn r1q(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .output()
        .expect("running the r1q binary")
}

fn inspect(path: &Path, json: bool) -> Output {
    let mut args = vec![std::ffi::OsStr::new("inspect"), path.as_os_str()];
    if json {
        args.push(std::ffi::OsStr::new("--json"));
    }
    r1q(&args)
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "r1q failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON document")
}

#[test]
fn inspect_every_fixture_checkpoint() {
    for arch in [
        fixtures::Arch::DeepseekV3,
        fixtures::Arch::Qwen2,
        fixtures::Arch::Llama,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let summary = fixtures::write_fixture(arch, dir.path(), &fixtures::Options::default())
            .expect("writing the fixture");

        let json = stdout_json(&inspect(dir.path(), true));
        assert_eq!(
            json["totals"]["tensors"], summary.n_tensors as u64,
            "{arch:?}"
        );
        assert_eq!(
            json["shards"].as_array().unwrap().len(),
            summary.shards.len()
        );
        let bytes: u64 = json["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(json["totals"]["bytes"], bytes);
        let expected_type = match arch {
            fixtures::Arch::DeepseekV3 => "deepseek_v3",
            fixtures::Arch::Qwen2 => "qwen2",
            fixtures::Arch::Llama => "llama",
        };
        assert_eq!(json["model_type"], expected_type);
        if arch == fixtures::Arch::DeepseekV3 {
            assert_eq!(json["mtp_layers"], 1, "the fixture has one MTP layer");
            assert!(json["mtp_tensors"].as_u64().unwrap() > 0);
        } else {
            assert_eq!(json["mtp_layers"], 0);
        }

        let text = inspect(dir.path(), false);
        assert!(text.status.success());
        let stdout = String::from_utf8(text.stdout).unwrap();
        assert!(stdout.contains(expected_type), "{stdout}");
        assert!(
            stdout.contains(&format!("total: {} tensors", summary.n_tensors)),
            "{stdout}"
        );
        if arch == fixtures::Arch::DeepseekV3 {
            assert!(stdout.contains("F8_E4M3"), "{stdout}");
            assert!(
                stdout.contains("multi-token-prediction layers: 1"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn inspect_single_safetensors_shard() {
    let dir = tempfile::tempdir().unwrap();
    let summary = fixtures::write_fixture(
        fixtures::Arch::Qwen2,
        dir.path(),
        &fixtures::Options::default(),
    )
    .unwrap();
    let shard = &summary.shards[0];
    let json = stdout_json(&inspect(shard, true));
    let n = json["totals"]["tensors"].as_u64().unwrap();
    assert!(
        n > 0 && (n as usize) < summary.n_tensors,
        "one shard holds part of the tensors"
    );
}

fn write_gguf(path: &Path) {
    let tokens: Vec<String> = (0..1000).map(|i| format!("tok{i}")).collect();
    let metadata = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        ("general.file_type".to_string(), GgufValue::U32(7)),
        ("llama.rope.freq_base".to_string(), GgufValue::F32(500000.0)),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::Array(GgufArray::strings(tokens)),
        ),
    ];
    let tensors = vec![
        TensorDecl::new("token_embd.weight", vec![64, 1000], GgmlType::Q8_0),
        TensorDecl::new("output_norm.weight", vec![64], GgmlType::F32),
    ];
    let mut w = GgufWriter::create(path, &metadata, tensors).unwrap();
    w.write_tensor(&vec![0u8; 2 * 34 * 1000]).unwrap();
    w.write_tensor(&vec![0u8; 64 * 4]).unwrap();
    w.finish().unwrap();
}

#[test]
fn inspect_gguf_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_gguf(&path);

    let json = stdout_json(&inspect(&path, true));
    assert_eq!(json["format"], "gguf");
    assert_eq!(json["version"], 3);
    assert_eq!(json["metadata"]["general.architecture"]["value"], "llama");
    assert_eq!(json["metadata"]["general.file_type"]["type"], "UINT32");
    assert_eq!(
        json["metadata"]["tokenizer.ggml.tokens"]["type"],
        "[STRING; 1000]"
    );
    assert_eq!(
        json["metadata"]["tokenizer.ggml.tokens"]["value"][999],
        "tok999"
    );
    assert_eq!(json["tensors"][0]["type"], "q8_0");
    assert_eq!(json["tensors"][0]["shape"], serde_json::json!([64, 1000]));
    assert_eq!(json["tensors"][0]["bytes"], 68_000);
    assert_eq!(json["totals"]["parameters"], 64_000 + 64);
    let bpw = json["totals"]["bits_per_weight"].as_f64().unwrap();
    assert!((bpw - (68_256.0 * 8.0 / 64_064.0)).abs() < 1e-9);

    let text = inspect(&path, false);
    assert!(text.status.success());
    let stdout = String::from_utf8(text.stdout).unwrap();
    assert!(stdout.contains("GGUF v3"), "{stdout}");
    assert!(
        stdout.contains("… 992 more"),
        "long arrays are summarised: {stdout}"
    );
    assert!(
        !stdout.contains("tok999"),
        "long arrays are summarised: {stdout}"
    );
    assert!(stdout.contains("total: 2 tensors"), "{stdout}");
}

/// Every malformed input: exit status 1, one line on stderr naming the file and the problem,
/// nothing on stdout, no panic.
#[test]
fn bad_inputs_fail_with_one_line() {
    let cases = fixtures::bad::gguf::cases()
        .into_iter()
        .chain(fixtures::bad::safetensors::cases());
    let mut n = 0;
    for case in cases {
        n += 1;
        let dir = tempfile::tempdir().unwrap();
        let path = case.materialize(dir.path()).unwrap();
        let out = inspect(&path, false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", case.name);
        assert_eq!(
            stderr.lines().count(),
            1,
            "{}: one line: {stderr}",
            case.name
        );
        assert!(!stderr.contains("panicked"), "{}: {stderr}", case.name);
        assert!(
            stderr.contains(case.expect),
            "{}: expected {:?} in {stderr}",
            case.name,
            case.expect
        );
        let named = case
            .files
            .iter()
            .any(|(rel, _)| stderr.contains(rel.rsplit('/').next().unwrap_or(rel)));
        assert!(named, "{}: the error names the file: {stderr}", case.name);
        assert!(out.stdout.is_empty(), "{}: nothing on stdout", case.name);
    }
    assert!(n >= 20, "all malformed-input cases are exercised ({n})");
}

#[test]
fn missing_path_and_unknown_file_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = inspect(&dir.path().join("nope.gguf"), false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.gguf"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);

    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "hello").unwrap();
    let out = inspect(&other, false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.txt") && stderr.contains("neither"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = r1q(&[std::ffi::OsStr::new("inspect")]);
    assert_eq!(out.status.code(), Some(2), "clap's usage-error convention");
    let out = r1q(&[std::ffi::OsStr::new("frobnicate")]);
    assert_eq!(out.status.code(), Some(2));
}
