//! FP8 block dequantization checked bit for bit against an independent numpy implementation
//! (tests/py/fp8_decode.py, which parses the safetensors header itself and decodes e4m3 from its
//! bit layout). Skips with a visible message when the test venv is absent.

use std::path::{Path, PathBuf};
use std::process::Command;

use formats::checkpoint::{Checkpoint, Dtype};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/fp8_decode.py")
}

/// Runs the numpy decoder on `shard`, writing `<name>.f32` files into `out`; returns how many.
fn numpy_decode(python: &Path, shard: &Path, block: [usize; 2], out: &Path) -> usize {
    let output = Command::new(python)
        .arg(script())
        .arg(shard)
        .arg(block[0].to_string())
        .arg(block[1].to_string())
        .arg(out)
        .output()
        .expect("running python");
    assert!(
        output.status.success(),
        "fp8_decode.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("count printed by fp8_decode.py")
}

/// Compares every FP8 weight of `ckpt` with numpy's decoding; returns how many were compared.
fn compare_all(python: &Path, ckpt: &Checkpoint) -> usize {
    let out = tempfile::tempdir().unwrap();
    let block = ckpt.fp8_block();
    let mut expected = 0;
    for shard in ckpt.shard_files() {
        expected += numpy_decode(python, shard, block, out.path());
    }
    let mut compared = 0;
    for meta in ckpt.tensors().iter().filter(|m| m.dtype == Dtype::F8E4M3) {
        let want_bytes = std::fs::read(out.path().join(format!("{}.f32", meta.name)))
            .unwrap_or_else(|e| panic!("numpy output for {}: {e}", meta.name));
        let want: Vec<f32> = want_bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut got = vec![0f32; meta.numel()];
        ckpt.f32_rows(&meta.name, 0, &mut got).unwrap();
        assert_eq!(got.len(), want.len(), "{}", meta.name);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
            assert!(same, "{} element {i}: ours {g:e}, numpy {w:e}", meta.name);
        }
        // Tiles decoded separately (crossing block boundaries) agree with the whole tensor.
        let dec = ckpt.row_decoder(&meta.name).unwrap();
        let cols = dec.cols();
        let tile_rows = 37;
        let mut row = 0;
        while row < dec.rows() {
            let n = tile_rows.min(dec.rows() - row);
            let mut tile = vec![0f32; n * cols];
            dec.decode_rows(row, &mut tile).unwrap();
            let whole = &got[row * cols..(row + n) * cols];
            assert!(tile
                .iter()
                .zip(whole)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            row += n;
        }
        compared += 1;
    }
    assert_eq!(
        compared, expected,
        "numpy decoded a different set of tensors"
    );
    compared
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn all_codes_ragged_blocks_match_numpy() {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // Every one of the 256 codes, in a pattern that puts each code in several blocks.
    let (r1, c1) = (300usize, 200usize);
    let w1: Vec<u8> = (0..r1 * c1).map(|i| (i * 7 + i / c1) as u8).collect();
    // Scales: ordinary, tiny (products underflow into subnormals), huge (products overflow to
    // infinity), negative.
    let s1 = f32_bytes(&[1.0, 1.234e-4, 3.5, -2.0, 1.0e-38, 7.0e36]);
    let (r2, c2) = (129usize, 257usize);
    let w2: Vec<u8> = (0..r2 * c2).map(|i| (i * 131 + 17) as u8).collect();
    let s2 = f32_bytes(&[0.5, 0.25, 0.125, 3.0e-3, 1.7e-5, 9.9]);
    let bf: Vec<u8> = vec![0x80, 0x3f, 0x00, 0x40];
    let views = vec![
        (
            "a.weight",
            safetensors::Dtype::F8_E4M3,
            vec![r1, c1],
            w1.as_slice(),
        ),
        (
            "a.weight_scale_inv",
            safetensors::Dtype::F32,
            vec![3, 2],
            s1.as_slice(),
        ),
        (
            "b.weight",
            safetensors::Dtype::F8_E4M3,
            vec![r2, c2],
            w2.as_slice(),
        ),
        (
            "b.weight_scale_inv",
            safetensors::Dtype::F32,
            vec![2, 3],
            s2.as_slice(),
        ),
        (
            "norm.weight",
            safetensors::Dtype::BF16,
            vec![2],
            bf.as_slice(),
        ),
    ];
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = views
        .into_iter()
        .map(|(n, d, s, b)| (n, safetensors::tensor::TensorView::new(d, s, b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();

    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(compare_all(&python, &ckpt), 2);
    let mut norm = [0f32; 2];
    ckpt.f32_rows("norm.weight", 0, &mut norm).unwrap();
    assert_eq!(norm, [1.0, 2.0]);
}

#[test]
fn deepseek_fixture_fp8_tensors_match_numpy() {
    let Some(python) = fixtures::support::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        dir.path(),
        &fixtures::Options::default(),
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let n = compare_all(&python, &ckpt);
    assert!(n > 0, "the deepseek-v3 fixture has no FP8 tensors");
    eprintln!("compared {n} FP8 tensors of the deepseek-v3 fixture with numpy");
}
