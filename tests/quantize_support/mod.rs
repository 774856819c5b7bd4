//! Helpers shared by the `quantize_*` end-to-end tests: fixture GGUFs, running r1q and the
//! llama.cpp peer, synthetic rows, and a tensor-by-tensor GGUF comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use formats::gguf::{GgufFile, GgufWriter, TensorDecl};

/// Every mix `r1q quantize` and llama-quantize share (TYPE names as llama-quantize spells them).
pub const MIXES: [&str; 19] = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M",
    "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
];

/// One mix per ggml type r1q can produce: with `--pure` every quantizable tensor gets that type.
pub const PURE_TYPES: [&str; 15] = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K", "IQ4_NL", "IQ4_XS",
];

/// The pure types whose quantizer uses importance weights (REFERENCE §2.7).
pub const IMATRIX_TYPES: [&str; 11] = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
];

pub const ARCHS: [(fixtures::Arch, &str); 3] = [
    (fixtures::Arch::DeepseekV3, "deepseek-v3"),
    (fixtures::Arch::Qwen2, "qwen2"),
    (fixtures::Arch::Llama, "llama"),
];

/// Runs the r1q binary.
pub fn r1q(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .output()
        .expect("running the r1q binary")
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Runs r1q and asserts success.
pub fn r1q_ok(args: &[&str]) -> Output {
    let out = r1q(args);
    assert!(
        out.status.success(),
        "r1q {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs r1q and asserts failure; returns stderr.
pub fn r1q_err(args: &[&str]) -> String {
    let out = r1q(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "r1q {args:?} should fail; stderr: {err}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code of r1q {args:?}: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
    err
}

/// Writes the fixture checkpoint of `arch` under `dir` and converts it to an F32 GGUF.
pub fn f32_gguf(dir: &Path, arch: fixtures::Arch, name: &str) -> (PathBuf, PathBuf) {
    let model = dir.join(name);
    fixtures::write_fixture(arch, &model, &fixtures::Options::default()).unwrap();
    let out = dir.join(format!("{name}.f32.gguf"));
    r1q_ok(&[
        "convert",
        "--quiet",
        "--outtype",
        "f32",
        "-o",
        p(&out),
        p(&model),
    ]);
    (model, out)
}

/// Runs the peer's llama-quantize (`llama-quantize [flags] IN OUT TYPE 2`), asserting success.
pub fn llama_quantize(bin: &Path, flags: &[&str], input: &Path, out: &Path, ty: &str) {
    let res = Command::new(bin)
        .args(flags)
        .arg(input)
        .arg(out)
        .arg(ty)
        .arg("2")
        .output()
        .expect("running llama-quantize");
    assert!(
        res.status.success(),
        "llama-quantize {flags:?} {ty} failed:\n{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
}

/// Runs the peer's llama-quantize expecting failure; returns its output.
pub fn llama_quantize_fails(
    bin: &Path,
    flags: &[&str],
    input: &Path,
    out: &Path,
    ty: &str,
) -> String {
    let res = Command::new(bin)
        .args(flags)
        .arg(input)
        .arg(out)
        .arg(ty)
        .arg("2")
        .output()
        .expect("running llama-quantize");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(
        !res.status.success(),
        "llama-quantize {flags:?} {ty} should fail:\n{all}"
    );
    all
}

/// An imatrix from the peer's llama-imatrix on `model` (two 128-token chunks).
pub fn llama_imatrix(bin: &Path, model: &Path, dir: &Path, out: &Path) {
    let text = match fixtures::support::shared_data() {
        Some(data) => std::fs::read_to_string(data.join("text/calibration.txt"))
            .map(|t| t.chars().take(12_000).collect::<String>())
            .unwrap_or_default(),
        None => String::new(),
    };
    let text = if text.len() < 4000 {
        "It is a truth universally acknowledged, that a single man in possession of a good \
         fortune, must be in want of a wife. The quick brown fox jumps over the lazy dog. "
            .repeat(60)
    } else {
        text
    };
    let tf = dir.join("calib.txt");
    std::fs::write(&tf, text).unwrap();
    let res = Command::new(bin)
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(&tf)
        .arg("-o")
        .arg(out)
        .args([
            "-c", "128", "-b", "128", "--chunks", "2", "-t", "2", "-ngl", "0",
        ])
        .output()
        .expect("running llama-imatrix");
    assert!(
        res.status.success() && out.is_file(),
        "llama-imatrix failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// Asserts two GGUF files are identical: same tensors in the same order with the same type,
/// shape and data bytes, the same metadata keys, values and order, and finally the same bytes.
pub fn assert_same_gguf(ours: &Path, theirs: &Path, what: &str) {
    let a = GgufFile::open(ours).unwrap();
    let b = GgufFile::open(theirs).unwrap();
    let names = |f: &GgufFile| {
        f.tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b), "{what}: tensor order");
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(
            (ta.ggml_type, &ta.dims),
            (tb.ggml_type, &tb.dims),
            "{what}: type/shape of {}",
            ta.name
        );
        let (da, db) = (a.tensor_data(ta), b.tensor_data(tb));
        if da != db {
            let first = da.iter().zip(db).position(|(x, y)| x != y).unwrap_or(0);
            panic!(
                "{what}: tensor {} ({}) differs from llama-quantize's at byte {first} of {}",
                ta.name,
                ta.ggml_type,
                da.len()
            );
        }
    }
    let keys = |f: &GgufFile| {
        f.metadata()
            .iter()
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&a), keys(&b), "{what}: metadata keys and their order");
    for ((k, va), (_, vb)) in a.metadata().iter().zip(b.metadata()) {
        assert_eq!(va, vb, "{what}: metadata value of {k}");
    }
    assert!(
        std::fs::read(ours).unwrap() == std::fs::read(theirs).unwrap(),
        "{what}: files differ although tensors and metadata agree (header layout)"
    );
}

/// Deterministic hard rows: outliers, zeros, constant rows, tiny and huge magnitudes,
/// subnormals, alternating signs, one hot, and a ramp.
pub fn hard_rows(n_rows: usize, row_len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rnd = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0
    };
    let mut out = Vec::with_capacity(n_rows * row_len);
    for r in 0..n_rows {
        for c in 0..row_len {
            let g = rnd();
            let v = match r % 10 {
                0 => 0.0,
                1 => 0.25,
                2 => g * 1e-20,
                3 => g * 3e4,
                4 => {
                    if c % 97 == 5 {
                        g * 500.0
                    } else {
                        g * 0.01
                    }
                }
                5 => f32::from_bits(1 + (c as u32 % 1000)) * if c % 2 == 0 { 1.0 } else { -1.0 },
                6 => {
                    if c % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
                7 => {
                    if c == r % row_len {
                        7.0
                    } else {
                        0.0
                    }
                }
                8 => (c as f32 / row_len as f32) - 0.3,
                _ => g,
            };
            out.push(v);
        }
    }
    out
}

/// Copies the F32 GGUF `src` to `dst`, replacing the data of every tensor `pick` returns rows
/// for (row-major, `ne[0]` per row) — a loadable model holding synthetic rows.
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    mut pick: impl FnMut(&str, &[u64]) -> Option<Vec<f32>>,
) {
    let f = GgufFile::open(src).unwrap();
    let decls: Vec<TensorDecl> = f
        .tensors()
        .iter()
        .map(|t| TensorDecl::new(t.name.clone(), t.dims.clone(), t.ggml_type))
        .collect();
    let mut w = GgufWriter::create(dst, f.metadata(), decls).unwrap();
    for t in f.tensors() {
        match pick(&t.name, &t.dims) {
            Some(vals) => {
                assert_eq!(t.ggml_type, formats::ggml_type::GgmlType::F32, "{}", t.name);
                let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
                assert_eq!(bytes.len() as u64, t.nbytes, "{}", t.name);
                w.write_tensor(&bytes).unwrap();
            }
            None => w.write_tensor(f.tensor_data(t)).unwrap(),
        }
    }
    w.finish().unwrap();
}
