//! imatrix files against llama.cpp and gguf-py: `llama-imatrix` from the peer, run on a converted
//! fixture, writes both formats; our reader loads them with the entries expected (per expert for
//! `*_exps`); our writers reproduce llama-imatrix's bytes when converting between the formats
//! (GGUF → dat exactly as `--output-format dat`; dat → GGUF exactly as `--in-file X.dat`); the
//! dat round trip keeps the weights llama-quantize derives to within f32 rounding (relative 1e-6:
//! the legacy file stores (Σx²/count)·ncall, so dividing by ncall again can differ in the last
//! bit); and the PyPI `gguf` package reads a GGUF imatrix written by r1q.

use std::path::{Path, PathBuf};
use std::process::Command;

use formats::gguf::GgufFile;
use formats::imatrix::{Imatrix, ImatrixFormat};

fn convert_f32(arch: fixtures::Arch, dir: &Path) -> PathBuf {
    let src = dir.join(format!("{arch}-hf"));
    fixtures::write_fixture(arch, &src, &fixtures::Options::default()).unwrap();
    let out = dir.join(format!("{arch}.f32.gguf"));
    let res = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args([
            "convert".as_ref(),
            src.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ])
        .args(["--outtype", "f32", "--quiet"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

fn calibration_text(dir: &Path) -> PathBuf {
    let p = dir.join("calib.txt");
    let shared = std::env::var_os("R1Q_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::support::workspace_root().join("../shared/data"))
        .join("text/calibration.txt");
    let text = std::fs::read_to_string(shared).unwrap_or_else(|_| {
        "It is a truth universally acknowledged, that a single man in possession of a good \
         fortune, must be in want of a wife. "
            .repeat(200)
    });
    std::fs::write(&p, text).unwrap();
    p
}

fn imatrix_tool(bin: &Path, args: &[&std::ffi::OsStr]) {
    let res = Command::new(bin)
        .args(args)
        .args(["-c", "128", "-b", "128", "-t", "2", "-ngl", "0"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "llama-imatrix failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn llama_imatrix_files_round_trip_through_r1q() {
    let Some(bin) = fixtures::support::peer_bin("llama-imatrix") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = calibration_text(d);
    for arch in [fixtures::Arch::DeepseekV3, fixtures::Arch::Qwen2] {
        let model = convert_f32(arch, d);
        let run = |fmt: &str| {
            let out = d.join(format!("{arch}.theirs.{fmt}"));
            imatrix_tool(
                &bin,
                &[
                    os("-m"),
                    model.as_os_str(),
                    os("-f"),
                    text.as_os_str(),
                    os("-o"),
                    out.as_os_str(),
                    os("--output-format"),
                    os(fmt),
                    os("--chunks"),
                    os("2"),
                    os("--no-ppl"),
                ],
            );
            out
        };
        let their_gguf = run("gguf");
        let their_dat = run("dat");
        let g = Imatrix::load(&their_gguf).unwrap();
        let l = Imatrix::load(&their_dat).unwrap();
        assert_eq!(g.format, ImatrixFormat::Gguf);
        assert_eq!(l.format, ImatrixFormat::Legacy);
        assert_eq!((g.chunk_count, g.chunk_size), (2, 128), "{arch}");
        assert_eq!(g.datasets, vec![text.display().to_string()]);

        // Entry names and sizes: one per weight matmul, ne[0]·ne[2] values, per-expert counts.
        let m = GgufFile::open(&model).unwrap();
        let n_expert = m
            .get("deepseek2.expert_count")
            .and_then(|v| v.as_u32())
            .unwrap_or(0) as usize;
        assert!(!g.entries.is_empty());
        for (name, e) in &g.entries {
            let t = m
                .tensor(name)
                .unwrap_or_else(|| panic!("{arch}: entry {name} is not a model tensor"));
            let ne2 = t.dims.get(2).copied().unwrap_or(1) as usize;
            assert_eq!(e.in_sum2.len(), t.dims[0] as usize * ne2, "{arch} {name}");
            let slices = if name.contains("_exps") { n_expert } else { 1 };
            assert_eq!(e.counts.len(), slices, "{arch} {name}");
        }
        let must: &[&str] = match arch {
            fixtures::Arch::DeepseekV3 => &[
                "blk.0.attn_q_a.weight",
                "blk.0.attn_q_b.weight",
                "blk.0.attn_kv_a_mqa.weight",
                "blk.0.attn_k_b.weight",
                "blk.0.attn_v_b.weight",
                "blk.0.attn_output.weight",
                "blk.0.ffn_down.weight",
                "blk.1.ffn_gate_exps.weight",
                "blk.1.ffn_down_exps.weight",
                "blk.1.ffn_up_shexp.weight",
            ],
            _ => &[
                "blk.0.attn_q.weight",
                "blk.0.attn_k.weight",
                "blk.0.attn_v.weight",
                "blk.1.ffn_down.weight",
            ],
        };
        for n in must {
            assert!(g.entries.contains_key(*n), "{arch}: no entry {n}");
        }
        assert!(!g.entries.contains_key("token_embd.weight"));

        // GGUF → dat: the bytes llama-imatrix writes with --output-format dat.
        let ours_dat = d.join(format!("{arch}.ours.dat"));
        g.save_dat(&ours_dat).unwrap();
        assert_eq!(
            std::fs::read(&ours_dat).unwrap(),
            std::fs::read(&their_dat).unwrap(),
            "{arch}: r1q's dat differs from llama-imatrix's"
        );
        assert_eq!(Imatrix::load(&ours_dat).unwrap(), l);

        // dat → GGUF: what llama-imatrix --in-file X.dat writes.
        let conv = d.join(format!("{arch}.theirs.from-dat.gguf"));
        imatrix_tool(
            &bin,
            &[
                os("-m"),
                model.as_os_str(),
                os("--in-file"),
                their_dat.as_os_str(),
                os("-o"),
                conv.as_os_str(),
                os("--output-format"),
                os("gguf"),
            ],
        );
        let ours_conv = l.to_gguf(128).unwrap();
        assert_eq!(ours_conv, Imatrix::load(&conv).unwrap(), "{arch}");

        // The weights survive gguf → dat within f32 rounding.
        for (name, e) in &g.entries {
            let (a, b) = (e.weights(), l.weights(name).unwrap());
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-6 * x.abs().max(y.abs()),
                    "{arch} {name}[{i}]: {x} vs {y}"
                );
            }
        }

        // GGUF written by r1q: reads back identical, and gguf-py reads it.
        let ours_gguf = d.join(format!("{arch}.ours.gguf"));
        g.save_gguf(&ours_gguf).unwrap();
        assert_eq!(Imatrix::load(&ours_gguf).unwrap(), g);
        if let Some(py) = fixtures::support::python() {
            let script = r#"
import sys, numpy as np, gguf
a, b = gguf.GGUFReader(sys.argv[1]), gguf.GGUFReader(sys.argv[2])
assert a.fields['general.type'].contents() == 'imatrix'
for k in ['imatrix.datasets', 'imatrix.chunk_count', 'imatrix.chunk_size']:
    assert a.fields[k].contents() == b.fields[k].contents(), k
ta = {t.name: t for t in a.tensors}
tb = {t.name: t for t in b.tensors}
assert sorted(ta) == sorted(tb)
for n in ta:
    assert list(ta[n].shape) == list(tb[n].shape), n
    assert ta[n].tensor_type == tb[n].tensor_type == gguf.GGMLQuantizationType.F32, n
    assert np.array_equal(ta[n].data, tb[n].data), n
print('OK', len(ta))
"#;
            let res = Command::new(py)
                .arg("-c")
                .arg(script)
                .arg(&ours_gguf)
                .arg(&their_gguf)
                .output()
                .unwrap();
            assert!(
                res.status.success() && String::from_utf8_lossy(&res.stdout).starts_with("OK"),
                "{arch}: gguf-py: {}{}",
                String::from_utf8_lossy(&res.stdout),
                String::from_utf8_lossy(&res.stderr)
            );
        }
    }
}
