//! The pipeline's output, read back with `formats::gguf::GgufFile`, against independent
//! computations: every fixture at f32/f16/bf16/q8_0; f32 tensors equal the checkpoint decode
//! (FP8 × scale) bit for bit at the places each transform puts them (index formulas written out
//! here, not shared with the pipeline); other types equal `quantize_rows` of the f32 output; the
//! same bytes whatever the chunk size, window and thread count; gguf-py reads every file.

use std::path::Path;

use convert::arch::{plan, PlanOptions};
use convert::pipeline::{execute, ExecOptions, NoProgress};
use convert::plan::{KvBPart, Source};
use formats::checkpoint::Checkpoint;
use formats::ggml_type::GgmlType;
use formats::gguf::GgufFile;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn decode_all(ckpt: &Checkpoint, name: &str) -> Vec<f32> {
    let m = ckpt.meta(name).unwrap();
    let mut v = vec![0f32; m.numel()];
    ckpt.f32_rows(name, 0, &mut v).unwrap();
    v
}

fn convert(ckpt: &Checkpoint, ty: GgmlType, out: &Path, exec: &ExecOptions) -> convert::plan::Plan {
    let opts = PlanOptions {
        outtype: ty,
        ..PlanOptions::default()
    };
    let p = plan(ckpt, &opts).unwrap();
    execute(ckpt, &p, out, exec, &NoProgress).unwrap();
    p
}

/// The f32 values tensor `source` must have, computed element by element from the checkpoint.
fn expected(ckpt: &Checkpoint, source: &Source, dims: &[u64]) -> Vec<f32> {
    match source {
        Source::Tensor { name } => decode_all(ckpt, name),
        Source::Values(v) => v.clone(),
        Source::Stack { names } => {
            let (cols, rows) = (dims[0] as usize, dims[1] as usize);
            let mut out = vec![f32::NAN; cols * rows * names.len()];
            for (e, name) in names.iter().enumerate() {
                let w = decode_all(ckpt, name);
                for r in 0..rows {
                    for c in 0..cols {
                        out[c + cols * (r + rows * e)] = w[r * cols + c];
                    }
                }
            }
            out
        }
        Source::KvB {
            name,
            part,
            n_head,
            qk_nope,
            v_head,
        } => {
            let w = decode_all(ckpt, name);
            let (h_n, nope, v) = (*n_head as usize, *qk_nope as usize, *v_head as usize);
            let rank = ckpt.meta(name).unwrap().shape[1];
            let kv = |r: usize, c: usize| w[r * rank + c];
            let mut out = vec![f32::NAN; h_n * rank * if *part == KvBPart::K { nope } else { v }];
            for h in 0..h_n {
                for c in 0..rank {
                    match part {
                        // attn_k_b[d + nope·(c + rank·h)] = kv_b[(nope+v)·h + d][c]
                        KvBPart::K => {
                            for d in 0..nope {
                                out[d + nope * (c + rank * h)] = kv((nope + v) * h + d, c);
                            }
                        }
                        // attn_v_b[c + rank·(j + v·h)] = kv_b[(nope+v)·h + nope + j][c]
                        KvBPart::V => {
                            for j in 0..v {
                                out[c + rank * (j + v * h)] = kv((nope + v) * h + nope + j, c);
                            }
                        }
                    }
                }
            }
            out
        }
        Source::PermuteRope { name, n_head } => {
            let w = decode_all(ckpt, name);
            let cols = dims[0] as usize;
            let rows = dims[1] as usize;
            let d = rows / *n_head as usize;
            let mut out = vec![f32::NAN; w.len()];
            for h in 0..*n_head as usize {
                for j in 0..2 {
                    for i in 0..d / 2 {
                        // row j·(d/2) + i of a head moves to row 2i + j
                        let (src, dst) = (h * d + j * (d / 2) + i, h * d + 2 * i + j);
                        out[dst * cols..(dst + 1) * cols]
                            .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                    }
                }
            }
            out
        }
    }
}

#[test]
fn every_fixture_at_every_type_matches_independent_computation() {
    for arch in fixtures::Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        fixtures::write_fixture(arch, dir.path(), &fixtures::Options::default()).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let f32_path = dir.path().join("out-f32.gguf");
        let p32 = convert(&ckpt, GgmlType::F32, &f32_path, &ExecOptions::default());
        let g32 = GgufFile::open(&f32_path).unwrap();
        let mut kinds = std::collections::HashSet::new();
        for t in &p32.tensors {
            let info = g32.tensor(&t.name).unwrap();
            assert_eq!(info.dims, t.dims, "{}", t.name);
            let got = f32s(g32.tensor_data(info));
            let want = expected(&ckpt, &t.source, &t.dims);
            assert_eq!(got.len(), want.len(), "{}", t.name);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{arch} {} element {i}", t.name);
            }
            kinds.insert(std::mem::discriminant(&t.source));
        }
        eprintln!("{arch}: {} source kinds checked", kinds.len());
        for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let path = dir.path().join(format!("out-{}.gguf", ty.name()));
            let p = convert(&ckpt, ty, &path, &ExecOptions::default());
            let g = GgufFile::open(&path).unwrap();
            for t in &p.tensors {
                let info = g.tensor(&t.name).unwrap();
                assert_eq!(info.ggml_type, t.ggml_type);
                let src = f32s(g32.tensor_data(g32.tensor(&t.name).unwrap()));
                let mut want = vec![0u8; t.ggml_type.nbytes(&t.dims).unwrap() as usize];
                quantize::quantize_rows(t.ggml_type, &src, t.row_len() as usize, None, &mut want)
                    .unwrap();
                assert!(
                    g.tensor_data(info) == want.as_slice(),
                    "{arch} {ty} {}",
                    t.name
                );
            }
        }
    }
}

#[test]
fn bytes_do_not_depend_on_chunking_window_or_threads() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        dir.path(),
        &fixtures::Options::default(),
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    convert(&ckpt, GgmlType::Q8_0, &a, &ExecOptions::default());
    let tiny = ExecOptions {
        threads: Some(3),
        chunk_bytes: 3000, // a few rows, never a whole kv_b head: chunks split heads and experts
        window: Some(1),
        interrupt: None,
    };
    convert(&ckpt, GgmlType::Q8_0, &b, &tiny);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    let wide = ExecOptions {
        threads: Some(4),
        chunk_bytes: 1 << 12,
        window: Some(16),
        interrupt: None,
    };
    convert(&ckpt, GgmlType::Q8_0, &b, &wide);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

const READ_ALL: &str = r#"
import sys, numpy as np
from gguf import GGUFReader, quants
for path in sys.argv[1:]:
    r = GGUFReader(path)
    assert len(r.tensors) > 0
    for t in r.tensors:
        v = quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(v).all(), (path, t.name)
    print(path, len(r.tensors), len(r.fields))
"#;

#[test]
fn gguf_py_reads_every_output() {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for arch in fixtures::Arch::ALL {
        let src = dir.path().join(arch.to_string());
        fixtures::write_fixture(arch, &src, &fixtures::Options::default()).unwrap();
        let ckpt = Checkpoint::open(&src).unwrap();
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let out = dir.path().join(format!("{arch}-{}.gguf", ty.name()));
            convert(&ckpt, ty, &out, &ExecOptions::default());
            paths.push(out);
        }
    }
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(READ_ALL)
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gguf-py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 12);
}
