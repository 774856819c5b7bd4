//! HF checkpoint directories are evaluated in place ("stream, never stage"): on every fixture
//! the directory (FP8 × block scale, BF16, stacked experts, kv_b split, rotary permutation, all
//! decoded on demand through convert's row sources) and its `--outtype f32` GGUF give the same
//! logits through the engine, and `r1q perplexity DIR` / `r1q verify DIR …` write no GGUF.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use verify::{Engine, EvalOptions};

#[allow(dead_code)]
#[path = "../src/hf_source.rs"]
mod hf_source;

fn r1q(args: &[&str], paths: &[&Path], tmpdir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_r1q"));
    cmd.args(args).args(paths);
    if let Some(t) = tmpdir {
        cmd.env("TMPDIR", t);
    }
    cmd.output().expect("running r1q")
}

fn convert(model: &Path, out: &Path, outtype: &str) {
    let o = r1q(
        &["convert", "--quiet", "--outtype", outtype, "-o"],
        &[out, model],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn text(dir: &Path) -> PathBuf {
    let p = dir.join("eval.txt");
    std::fs::write(&p, fixtures::tokenizer::CORPUS.repeat(3)).unwrap();
    p
}

/// Every position's logits of `seqs` through the engine over `source`.
fn logits(source: &dyn verify::WeightSource, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    logits_on(&Engine::new(source).unwrap(), seqs)
}

fn logits_on(engine: &Engine<'_>, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    engine
        .evaluate(seqs, &EvalOptions::default(), &mut |_, _, l| {
            out.push(l.to_vec())
        })
        .unwrap();
    out
}

#[test]
fn hf_directory_and_its_f32_gguf_give_the_same_logits() {
    for arch in [
        fixtures::Arch::DeepseekV3,
        fixtures::Arch::Qwen2,
        fixtures::Arch::Llama,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let hf = dir.path().join("hf");
        fixtures::write_fixture(arch, &hf, &fixtures::Options::default()).unwrap();
        let gguf = dir.path().join("f32.gguf");
        convert(&hf, &gguf, "f32");

        let a = hf_source::open_model(&hf).unwrap();
        let b = hf_source::open_model(&gguf).unwrap();
        let text = fixtures::tokenizer::CORPUS;
        let ids_a = a.tokenizer.encode(text, true).unwrap();
        let ids_b = b.tokenizer.encode(text, true).unwrap();
        assert_eq!(ids_a, ids_b, "{arch}: tokenizers differ");
        assert!(ids_a.len() >= 40, "{arch}: {} tokens", ids_a.len());
        let seqs: Vec<Vec<u32>> = vec![ids_a[..40].to_vec(), ids_a[40..].to_vec()];
        let la = logits(&a.source, &seqs);
        let lb = logits(&b.source, &seqs);
        assert_eq!(la.len(), lb.len());
        let (mut max_diff, mut max_abs) = (0f32, 0f32);
        for (x, y) in la.iter().zip(&lb) {
            for (p, q) in x.iter().zip(y) {
                assert!(p.is_finite() && q.is_finite(), "{arch}: non-finite logit");
                max_diff = max_diff.max((p - q).abs());
                max_abs = max_abs.max(q.abs());
            }
        }
        let rel = max_diff / max_abs.max(f32::MIN_POSITIVE);
        eprintln!(
            "{arch}: HF vs F32 GGUF logits max rel diff {rel:.3e} (max |logit| {max_abs:.3})"
        );
        assert!(rel <= 1e-5, "{arch}: max relative difference {rel:.3e}");
    }
}

/// Every `*.gguf*` file under `dir`, recursively.
fn ggufs_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            ggufs_under(&p, found);
        } else if p.to_string_lossy().contains(".gguf") {
            found.push(p);
        }
    }
}

/// The tiny deepseek-v3 checkpoint (FP8 weights, stacked experts), written to `dir/hf`.
fn deepseek_dir(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        &hf,
        &fixtures::Options::default(),
    )
    .unwrap();
    hf
}

#[test]
fn perplexity_and_verify_on_a_directory_write_no_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let hf = deepseek_dir(dir.path());
    let q8 = dir.path().join("q8_0.gguf");
    convert(&hf, &q8, "q8_0");
    let text = text(dir.path());

    // perplexity: with TMPDIR pointing nowhere any temporary file would fail the run.
    let nowhere = dir.path().join("no-such-tmp");
    let o = r1q(
        &["perplexity", "-c", "64", "-f"],
        &[&text, &hf],
        Some(&nowhere),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!nowhere.exists());

    // verify keeps its base logits in a temporary file; watch TMPDIR for GGUFs while it runs.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(["verify", "-c", "64", "-f"])
        .args([&text, &hf, &q8])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let status = loop {
        ggufs_under(&tmp, &mut seen);
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    assert!(status.success(), "r1q verify failed");
    assert!(seen.is_empty(), "temporary GGUFs: {seen:?}");
}

/// The engine's CPU ops, but weights dequantized from the raw bytes the source offers
/// (`BackendSource` + the CPU reference of `Backend::dequantize`): the path `--device cuda`
/// takes, with the CPU in place of the kernels.
struct RawDequantizingCpu;

impl verify::Backend for RawDequantizingCpu {
    fn device(&self) -> verify::Device {
        verify::Device::Cpu
    }
    fn describe(&self) -> String {
        "cpu from raw bytes".into()
    }
    fn matmul(&self, _name: &str, x: &verify::Mat, w: &verify::Mat) -> verify::Mat {
        verify::ops::matmul(x, w)
    }
    fn dequantizes(&self) -> bool {
        true
    }
}

/// An HF directory offers its stored bytes (FP8 with block scales, BF16) for every tensor that
/// is a checkpoint tensor unchanged and for each expert of a stacked one; dequantized, they are
/// the values the directory's f32 loads give, bit for bit, and a model evaluated from them gives
/// the same logits.
#[test]
fn hf_raw_bytes_are_the_f32_values() {
    use verify::backend::{dequantize_cpu, RawTensor};
    use verify::WeightSource;

    let dir = tempfile::tempdir().unwrap();
    let model = hf_source::open_model(&deepseek_dir(dir.path())).unwrap();
    let src = &model.source;
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    // Whole FP8 tensors offered raw; experts offered raw, and of those FP8.
    let (mut fp8, mut experts, mut fp8_experts) = (0, 0, 0);
    for name in src.tensor_names() {
        let dims = src.tensor_dims(&name).unwrap();
        let width = dims[0] as usize;
        let n_rows: u64 = dims[1..].iter().product();
        if let Some(raw) = src.raw(&name) {
            fp8 += usize::from(matches!(raw, RawTensor::Fp8Block { .. }));
            let mut got = vec![0f32; n_rows as usize * width];
            dequantize_cpu(raw, width, 0..n_rows as usize, &mut got).unwrap();
            assert_eq!(bits(&got), bits(&src.load_f32(&name).unwrap()), "{name}");
        }
        if name.contains("_exps") {
            let per = dims[1];
            assert!(
                src.raw(&name).is_none(),
                "{name}: a stack is not one tensor"
            );
            for e in 0..dims[2] {
                let rows = e * per..(e + 1) * per;
                let raw = src.raw_rows(&name, rows.clone()).expect("expert raw rows");
                experts += 1;
                if let RawTensor::Fp8Block { block, .. } = raw {
                    fp8_experts += 1;
                    // Inside a scale block: not expressible as its own FP8 tensor.
                    let r = e * per + 1..e * per + 2;
                    assert!(block[0] > 1 && src.raw_rows(&name, r).is_none());
                }
                let mut got = vec![0f32; per as usize * width];
                dequantize_cpu(raw, width, 0..per as usize, &mut got).unwrap();
                let want = src.load_row_range_f32(&name, rows).unwrap();
                assert_eq!(bits(&got), bits(&want), "{name} expert {e}");
            }
            // Rows spanning two experts are not one stored tensor.
            assert!(src.raw_rows(&name, per - 1..per + 1).is_none());
        }
    }
    eprintln!("raw: {fp8} whole FP8 tensors, {experts} experts ({fp8_experts} FP8)");
    assert!(fp8 > 0 && fp8_experts > 0 && fp8_experts == experts);

    let text = fixtures::tokenizer::CORPUS;
    let ids = model.tokenizer.encode(text, true).unwrap();
    let seqs: Vec<Vec<u32>> = vec![ids[..40].to_vec(), ids[40..].to_vec()];
    let plain = logits(src, &seqs);
    let engine = Engine::new(src)
        .unwrap()
        .with_backend(std::sync::Arc::new(RawDequantizingCpu));
    let from_raw = logits_on(&engine, &seqs);
    assert_eq!(from_raw, plain, "logits from raw bytes differ");
}
