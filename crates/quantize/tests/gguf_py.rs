//! Our codecs against the PyPI `gguf` package's (`gguf.quants.quantize` / `dequantize`), byte for
//! byte, on rows chosen to hit every rounding edge: outliers, zeros, constant rows, ±tiny and huge
//! magnitudes, exact .5 ties of x·id.
//!
//! Skipped (with a visible message) when the test venv is missing; `cargo xtask test` creates it.

use std::path::Path;
use std::process::Command;

use formats::ggml_type::GgmlType;

/// Deterministic xorshift values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Rows of 256 values, each a different hard case.
fn hard_rows() -> Vec<f32> {
    let n = 256;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    rows.push(noise(n, 1));
    let mut outlier = noise(n, 2);
    outlier[5] = 1e4;
    outlier[77] = -3e5;
    rows.push(outlier);
    rows.push(vec![0.0; n]);
    rows.push(vec![-0.0; n]);
    rows.push(vec![0.375; n]);
    rows.push(vec![-7.0; n]);
    rows.push(noise(n, 3).iter().map(|v| v * 1e-30).collect());
    rows.push(noise(n, 4).iter().map(|v| v * 1e-42).collect()); // f32 subnormals
    rows.push(noise(n, 5).iter().map(|v| v * 6e4).collect()); // near fp16 max
    rows.push(noise(n, 6).iter().map(|v| v * 1e30).collect()); // scale overflows fp16
                                                               // Ties: with max 127 per block, d = 1 and x·id = x, so k + 0.5 is an exact tie.
    rows.push(
        (0..n)
            .map(|i| {
                if i % 32 == 0 {
                    127.0
                } else {
                    (i % 32) as f32 - 16.5
                }
            })
            .collect(),
    );
    // Ties after scaling: max 254 → d = 2, id = 0.5; odd integers become k.5.
    rows.push(
        (0..n)
            .map(|i| {
                if i % 32 == 3 {
                    -254.0
                } else {
                    (i % 64) as f32 * 2.0 - 63.0
                }
            })
            .collect(),
    );
    // One non-zero per block, and values just under/over a tie.
    rows.push(
        (0..n)
            .map(|i| match i % 32 {
                0 => 1.0,
                1 => f32::from_bits(0.5f32.to_bits() - 1) / 127.0,
                2 => f32::from_bits(0.5f32.to_bits() + 1) / 127.0,
                _ => 0.0,
            })
            .collect(),
    );
    rows.concat()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs gguf-py on `input.f32` in `dir`: writes `<type>.q` (quantized) and `<type>.dq` (its own
/// dequantization of our bytes, read from `<type>.ours`).
const SCRIPT: &str = r#"
import sys, numpy as np
from gguf import quants, GGMLQuantizationType as T
d, n = sys.argv[1], int(sys.argv[2])
x = np.fromfile(f"{d}/input.f32", dtype=np.float32).reshape(-1, n)
for name in sys.argv[3:]:
    t = T[name]
    q = quants.quantize(x, t)
    np.ascontiguousarray(q).view(np.uint8).tofile(f"{d}/{name}.q")
    ours = np.fromfile(f"{d}/{name}.ours", dtype=np.uint8)
    if t == T.F16:
        ours = ours.view(np.float16)
    elif t == T.F32:
        ours = ours.view(np.float32)
    ours = ours.reshape(x.shape[0], -1)
    quants.dequantize(ours, t).astype(np.float32).tofile(f"{d}/{name}.dq")
"#;

fn run_python(python: &Path, dir: &Path, n: usize, types: &[&str]) {
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(dir)
        .arg(n.to_string())
        .args(types)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "gguf-py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bytes_match_gguf_py_on_hard_rows() {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let n = 256;
    let x = hard_rows();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.f32"), f32_bytes(&x)).unwrap();
    let types = [
        ("F32", GgmlType::F32),
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::BF16),
        ("Q8_0", GgmlType::Q8_0),
    ];
    let mut ours = Vec::new();
    for (name, ty) in types {
        let mut q = vec![0u8; ty.nbytes(&[n as u64, (x.len() / n) as u64]).unwrap() as usize];
        quantize::quantize_rows(ty, &x, n, None, &mut q).unwrap();
        std::fs::write(dir.path().join(format!("{name}.ours")), &q).unwrap();
        ours.push((name, ty, q));
    }
    let names: Vec<&str> = types.iter().map(|t| t.0).collect();
    run_python(&python, dir.path(), n, &names);
    for (name, ty, q) in ours {
        let theirs = std::fs::read(dir.path().join(format!("{name}.q"))).unwrap();
        assert_eq!(theirs.len(), q.len(), "{name}");
        if let Some(i) = theirs.iter().zip(&q).position(|(a, b)| a != b) {
            panic!(
                "{name}: first differing byte {i} (row {}): gguf-py {:#04x}, ours {:#04x}",
                i / ty.row_size(n as u64).unwrap() as usize,
                theirs[i],
                q[i]
            );
        }
        let dq = std::fs::read(dir.path().join(format!("{name}.dq"))).unwrap();
        let mut back = vec![0f32; x.len()];
        quantize::dequantize_rows(ty, &q, &mut back).unwrap();
        assert_eq!(dq, f32_bytes(&back), "{name}: dequantized values differ");
    }
}
