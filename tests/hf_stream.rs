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
    let engine = Engine::new(source).unwrap();
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

#[test]
fn perplexity_and_verify_on_a_directory_write_no_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        &hf,
        &fixtures::Options::default(),
    )
    .unwrap();
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
