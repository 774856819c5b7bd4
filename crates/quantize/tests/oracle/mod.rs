//! Shared by the codec test files (`mod oracle;`): llama.cpp's own quantizers as the oracle, the
//! PyPI `gguf` package as an independent dequantizer, and generators of rows that hit every edge
//! of the reference algorithms.
//!
//! The oracle is `r1q-quant-oracle` (`xtask/oracle/quant_oracle.c` compiled against llama.cpp's
//! `ggml-quants.c` by `cargo xtask peer`); see [`fixtures::support::quant_oracle`]. Every helper
//! returns `None` (after a visible SKIPPED message) when its peer is missing, unless
//! `R1Q_REQUIRE_PEERS=1`, where a missing peer fails the test.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use formats::ggml_type::GgmlType;

/// Bytes llama.cpp produces for `rows` (whole rows of `n_per_row`) through the function
/// `ggml_quantize_chunk` dispatches to (`quantize_<type>`), with `imatrix` (`n_per_row` weights) as
/// its `quant_weights`. `None` when the oracle is not built.
pub fn oracle_quantize(
    ty: GgmlType,
    rows: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Option<Vec<u8>> {
    let oracle = fixtures::support::quant_oracle()?;
    assert!(n_per_row > 0 && rows.len().is_multiple_of(n_per_row));
    if let Some(w) = imatrix {
        assert_eq!(w.len(), n_per_row, "imatrix length");
    }
    let mut req = header(0, ty, n_per_row, rows.len() / n_per_row, imatrix.is_some());
    req.extend(f32_bytes(rows));
    if let Some(w) = imatrix {
        req.extend(f32_bytes(w));
    }
    let out = run_oracle(&oracle, &req, ty);
    let want = ty.row_size(n_per_row as u64).unwrap() as usize * (rows.len() / n_per_row);
    assert_eq!(out.len(), want, "oracle output size for {ty}");
    Some(out)
}

/// llama.cpp's `dequantize_row_<type>` of `blocks` (whole rows of `n_per_row` elements). `None`
/// when the oracle is not built.
pub fn oracle_dequantize(ty: GgmlType, blocks: &[u8], n_per_row: usize) -> Option<Vec<f32>> {
    let oracle = fixtures::support::quant_oracle()?;
    let row_bytes = ty.row_size(n_per_row as u64).unwrap() as usize;
    assert!(row_bytes > 0 && blocks.len().is_multiple_of(row_bytes));
    let mut req = header(1, ty, n_per_row, blocks.len() / row_bytes, false);
    req.extend_from_slice(blocks);
    let out = run_oracle(&oracle, &req, ty);
    assert_eq!(out.len(), 4 * n_per_row * (blocks.len() / row_bytes));
    Some(
        out.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Runs the named tests of the current test binary again in a child process with
/// `R1Q_NO_SIMD=1`, so the scalar reference paths meet the oracle too: the SIMD choice is made
/// once per process, so the SIMD and scalar runs cannot share one. Does nothing inside that child.
pub fn rerun_with_scalar_paths(tests: &[&str]) {
    if std::env::var_os("R1Q_NO_SIMD").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .env("R1Q_NO_SIMD", "1")
        .args(["--exact", "--nocapture", "--test-threads", "1"])
        .args(tests)
        .output()
        .expect("rerun the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "with R1Q_NO_SIMD=1:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ran = format!("{} passed", tests.len());
    assert!(
        stdout.contains(&ran),
        "expected {ran} with R1Q_NO_SIMD=1:\n{stdout}"
    );
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

/// The oracle's request header (format documented in `xtask/oracle/quant_oracle.c`).
fn header(mode: u32, ty: GgmlType, n_per_row: usize, n_rows: usize, imatrix: bool) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"R1QO");
    h.extend_from_slice(&mode.to_le_bytes());
    let mut name = [0u8; 16];
    name[..ty.name().len()].copy_from_slice(ty.name().as_bytes());
    h.extend_from_slice(&name);
    h.extend_from_slice(&(n_per_row as u64).to_le_bytes());
    h.extend_from_slice(&(n_rows as u64).to_le_bytes());
    h.extend_from_slice(&u32::from(imatrix).to_le_bytes());
    h
}

fn run_oracle(oracle: &Path, req: &[u8], ty: GgmlType) -> Vec<u8> {
    let mut child = Command::new(oracle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start r1q-quant-oracle");
    // Write from another thread: the oracle's output can exceed the pipe buffer before it has
    // read all its input.
    let mut stdin = child.stdin.take().unwrap();
    let req = req.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&req));
    let out = child.wait_with_output().expect("wait for r1q-quant-oracle");
    writer.join().unwrap().expect("write the oracle's request");
    assert!(
        out.status.success(),
        "r1q-quant-oracle failed for {ty} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Little-endian bytes of `v`.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `gguf.quants.dequantize` of `blocks` (whole rows of `n_per_row`) by the PyPI `gguf` package in
/// the test venv, cast to f32. `None` when the venv is missing.
pub fn gguf_py_dequantize(ty: GgmlType, blocks: &[u8], n_per_row: usize) -> Option<Vec<f32>> {
    let python = fixtures::support::python()?;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("blocks.bin");
    let output = dir.path().join("values.f32");
    std::fs::write(&input, blocks).unwrap();
    let script = r#"
import sys, numpy as np
from gguf import quants, GGMLQuantizationType as T
t = T[sys.argv[1]]
n = int(sys.argv[2])
q = np.fromfile(sys.argv[3], dtype=np.uint8)
rows = q.size // quants.quant_shape_to_byte_shape((n,), t)[0]
q = q.reshape(rows, -1)
quants.dequantize(q, t).astype(np.float32).tofile(sys.argv[4])
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(ty.name().to_ascii_uppercase())
        .arg(n_per_row.to_string())
        .arg(&input)
        .arg(&output)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "gguf-py dequantize of {ty} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&output).unwrap();
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Panics at the first differing byte, naming the row, block and byte within the block.
pub fn assert_same_bytes(what: &str, ty: GgmlType, n_per_row: usize, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        let row_bytes = ty.row_size(n_per_row as u64).unwrap() as usize;
        let bb = ty.type_size() as usize;
        let (row, in_row) = (i / row_bytes, i % row_bytes);
        let (block, byte) = (in_row / bb, in_row % bb);
        let start = i - byte;
        panic!(
            "{what}: {ty} differs at byte {i} (row {row}, block {block}, byte {byte}):\n  ours   {:02x?}\n  theirs {:02x?}",
            &ours[start..start + bb],
            &theirs[start..start + bb]
        );
    }
}

/// Panics at the first value whose bits differ (so -0.0 ≠ 0.0 and NaN payloads count).
pub fn assert_same_bits(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    if let Some(i) = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!(
            "{what}: value {i} differs: ours {} ({:#010x}), theirs {} ({:#010x})",
            ours[i],
            ours[i].to_bits(),
            theirs[i],
            theirs[i].to_bits()
        );
    }
}

/// A small deterministic generator (xorshift64*), so every failure reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box–Muller, in f64).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
    /// Heavy-tailed (Student-t with 3 degrees of freedom), like trained weights.
    pub fn heavy(&mut self) -> f32 {
        let z = self.normal();
        let chi2: f32 = (0..3).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / 3.0).sqrt().max(1e-3)
    }
}

/// One test row of length `n` (a multiple of 32) per kind: `(name, values)`. The kinds hit every
/// edge of the reference algorithms: heavy tails with outliers, zeros (±0), constant rows (where
/// max = min), tiny (1e-30, subnormal) and huge (1e30, beyond fp16) magnitudes, exact .5 ties of
/// x·id for each type's scale, a single spike, alternating signs, negative-only and
/// positive-only rows, and blocks whose largest magnitude is below `GROUP_MAX_EPS`.
pub fn test_rows(n: usize) -> Vec<(String, Vec<f32>)> {
    assert!(n.is_multiple_of(32) && n > 0);
    let mut rows: Vec<(String, Vec<f32>)> = Vec::new();
    let mut add = |name: &str, v: Vec<f32>| {
        debug_assert_eq!(v.len(), n);
        rows.push((name.to_string(), v));
    };
    for seed in 0..3u64 {
        let mut r = Rng::new(100 + seed);
        let mut v: Vec<f32> = (0..n).map(|_| r.heavy() * 0.02).collect();
        // outliers: a few per row, both signs, up to 100× the spread
        for k in 0..(n / 64).max(1) {
            let i = (r.next_u64() as usize) % n;
            v[i] = if k % 2 == 0 { 2.0 } else { -3.5 } * (1.0 + r.uniform());
        }
        add(&format!("heavy-tailed+outliers/{seed}"), v);
    }
    let mut r = Rng::new(7);
    add("gaussian", (0..n).map(|_| r.normal()).collect());
    add("uniform[0,1)", (0..n).map(|_| r.uniform()).collect());
    add("zeros", vec![0.0; n]);
    add("negative zeros", vec![-0.0; n]);
    add("constant 0.375", vec![0.375; n]);
    add("constant -7", vec![-7.0; n]);
    add("constant 1e-3", vec![1e-3; n]);
    add("tiny 1e-30", (0..n).map(|_| r.normal() * 1e-30).collect());
    add("subnormal", (0..n).map(|_| r.normal() * 1e-42).collect());
    add(
        "below GROUP_MAX_EPS",
        (0..n).map(|_| r.normal() * 1e-16).collect(),
    );
    add("near fp16 max", (0..n).map(|_| r.normal() * 3e4).collect());
    add("huge 1e30", (0..n).map(|_| r.normal() * 1e30).collect());
    // Mixed scales: one block tiny, the next huge, the next ordinary.
    add(
        "mixed block scales",
        (0..n)
            .map(|i| r.normal() * [1e-20f32, 1e20, 1.0, 1e-3][(i / 32) % 4])
            .collect(),
    );
    // Ties: half-integers with a block extreme that makes d a power of two (or 1), so x·id is
    // exactly k + 0.5 for the legacy types (max −8 / −16, min 0 with max 15 / 31), IQ4 (127) and
    // the K-quants' sub-block searches.
    for (name, extreme, span) in [
        ("ties max -8", -8.0f32, 7.0f32),
        ("ties max -16", -16.0, 15.0),
        ("ties max 127", 127.0, 60.0),
        ("ties max -4", -4.0, 3.0),
        ("ties max -32", -32.0, 31.0),
    ] {
        add(
            name,
            (0..n)
                .map(|i| match i % 32 {
                    0 => extreme,
                    j => ((j as f32 * 7.0) % (2.0 * span)) - span + 0.5,
                })
                .collect(),
        );
    }
    add(
        "ties min 0 max 15",
        (0..n)
            .map(|i| match i % 32 {
                0 => 0.0,
                1 => 15.0,
                j => (j % 15) as f32 + 0.5,
            })
            .collect(),
    );
    add(
        "ties min 0 max 31",
        (0..n)
            .map(|i| match i % 32 {
                0 => 0.0,
                1 => 31.0,
                j => (j % 31) as f32 + 0.5,
            })
            .collect(),
    );
    add(
        "just off ties",
        (0..n)
            .map(|i| match i % 32 {
                0 => -8.0,
                j if j % 2 == 0 => f32::from_bits((j as f32 / 4.0 + 0.5).to_bits() + 1),
                j => f32::from_bits((j as f32 / 4.0 + 0.5).to_bits() - 1),
            })
            .collect(),
    );
    let mut spike = vec![0.0; n];
    spike[n / 3] = 1.5;
    add("single spike", spike);
    let mut spike = vec![1e-4; n];
    spike[n - 1] = -250.0;
    add("single negative spike on a floor", spike);
    add(
        "alternating signs",
        (0..n)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } * (1.0 + (i % 7) as f32 * 0.1))
            .collect(),
    );
    add(
        "negative only",
        (0..n).map(|_| -r.uniform() - 0.01).collect(),
    );
    add(
        "positive only",
        (0..n).map(|_| r.uniform() * 3.0 + 0.5).collect(),
    );
    add(
        "ramp",
        (0..n)
            .map(|i| (i as f32 - n as f32 / 2.0) / n as f32)
            .collect(),
    );
    rows
}

/// Importance weights for rows of `n`: random positive (like an imatrix of squared activations,
/// spanning several orders of magnitude).
pub fn imatrix_positive(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed ^ 0xA5A5);
    (0..n).map(|_| (r.normal() * 2.0).exp() * 0.1).collect()
}

/// Importance weights with zeros: about a quarter of the columns (and one whole 32-block) weigh
/// nothing, as for never-activated columns, which drives the weighted searches into their
/// degenerate branches (Σw = 0).
pub fn imatrix_with_zeros(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed ^ 0x5A5A);
    let mut w: Vec<f32> = (0..n)
        .map(|_| {
            if r.uniform() < 0.25 {
                0.0
            } else {
                r.uniform() * 5.0
            }
        })
        .collect();
    let b = (n / 32 / 2) * 32;
    w[b..b + 32].fill(0.0);
    w
}

/// The imatrix variants every codec test runs: none, random positive, and with zeros.
pub fn imatrix_variants(n: usize) -> Vec<(&'static str, Option<Vec<f32>>)> {
    vec![
        ("no imatrix", None),
        ("imatrix positive", Some(imatrix_positive(n, n as u64))),
        ("imatrix with zeros", Some(imatrix_with_zeros(n, n as u64))),
    ]
}

/// Quantizes every [`test_rows`] kind of every length in `lengths` (as one multi-row call) with
/// each [`imatrix_variants`] entry, with us and with the oracle, and requires identical bytes
/// row by row and bit-identical dequantization. Returns the number of rows compared, or `None`
/// when the oracle is not built.
pub fn check_against_oracle(ty: GgmlType, lengths: &[usize]) -> Option<usize> {
    let mut compared = 0;
    for &n in lengths {
        let (names, rows): (Vec<String>, Vec<Vec<f32>>) = test_rows(n).into_iter().unzip();
        let x = rows.concat();
        let row_bytes = ty.row_size(n as u64).unwrap() as usize;
        for (label, imatrix) in imatrix_variants(n) {
            let theirs = oracle_quantize(ty, &x, n, imatrix.as_deref())?;
            let mut ours = vec![0u8; theirs.len()];
            quantize::quantize_rows(ty, &x, n, imatrix.as_deref(), &mut ours).unwrap();
            for (r, name) in names.iter().enumerate() {
                let span = r * row_bytes..(r + 1) * row_bytes;
                assert_same_bytes(
                    &format!("{ty} n={n} {label} row {name:?}"),
                    ty,
                    n,
                    &ours[span.clone()],
                    &theirs[span],
                );
            }
            let back_theirs = oracle_dequantize(ty, &theirs, n)?;
            let mut back = vec![0f32; x.len()];
            quantize::dequantize_rows(ty, &ours, &mut back).unwrap();
            assert_same_bits(&format!("{ty} n={n} {label} dequant"), &back, &back_theirs);
            compared += names.len();
        }
    }
    Some(compared)
}

/// Our dequantization of our own quantization of every [`test_rows`] kind (length `n`, without
/// and with an imatrix) against `gguf.quants.dequantize`, bit for bit. Returns the number of rows
/// compared, or `None` when the venv is missing.
pub fn check_dequant_against_gguf_py(ty: GgmlType, n: usize) -> Option<usize> {
    let mut all_q = Vec::new();
    let mut all_back = Vec::new();
    let mut rows_n = 0;
    for (_, imatrix) in imatrix_variants(n) {
        let x: Vec<f32> = test_rows(n).into_iter().flat_map(|(_, v)| v).collect();
        let mut q = vec![0u8; ty.row_size(n as u64).unwrap() as usize * (x.len() / n)];
        quantize::quantize_rows(ty, &x, n, imatrix.as_deref(), &mut q).unwrap();
        let mut back = vec![0f32; x.len()];
        quantize::dequantize_rows(ty, &q, &mut back).unwrap();
        rows_n += x.len() / n;
        all_q.extend(q);
        all_back.extend(back);
    }
    let theirs = gguf_py_dequantize(ty, &all_q, n)?;
    assert_same_bits(
        &format!("{ty} n={n} dequant vs gguf-py"),
        &all_back,
        &theirs,
    );
    Some(rows_n)
}
