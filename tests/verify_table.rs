//! `r1q verify` and `r1q demo` end to end: the table's order and values on a fixture, `--json`,
//! and one-line errors for bad inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn r1q(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .args(paths)
        .output()
        .expect("running r1q")
}

fn convert(model: &Path, out: &Path, outtype: &str) {
    let o = r1q(
        &["convert", "--quiet", "--outtype", outtype, "-o"],
        &[out, model],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn text(dir: &Path) -> PathBuf {
    let p = dir.join("eval.txt");
    std::fs::write(&p, fixtures::tokenizer::CORPUS.repeat(3)).unwrap();
    p
}

fn one_line_error(o: &Output, want: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("r1q: error: ") && lines[0].contains(want),
        "{err}"
    );
}

#[test]
fn verify_table_orders_types_and_json_parses() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("hf");
    fixtures::write_fixture(fixtures::Arch::Llama, &model, &fixtures::Options::default()).unwrap();
    let mut files = Vec::new();
    for t in ["f32", "f16", "bf16", "q8_0"] {
        let p = dir.path().join(format!("{t}.gguf"));
        convert(&model, &p, t);
        files.push(p);
    }
    let text = text(dir.path());
    let paths: Vec<&Path> = std::iter::once(text.as_path())
        .chain(files.iter().map(PathBuf::as_path))
        .collect();
    let o = r1q(&["verify", "-c", "64", "--json", "-f"], &paths);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 4);
    let kld = |i: usize| models[i]["mean_kld"].as_f64().unwrap();
    let top = |i: usize| models[i]["top1_agreement_pct"].as_f64().unwrap();
    eprintln!("f16 {:e} bf16 {:e} q8_0 {:e}", kld(1), kld(2), kld(3));
    for i in 1..4 {
        assert!(
            kld(i).is_finite() && kld(i) >= -1e-6 && kld(i) < 0.05,
            "{v}"
        );
        assert!(top(i) > 80.0, "{v}");
    }
    assert!(kld(1) < 1e-4, "f16 ~ 0: {v}");
    assert!(kld(3) >= kld(1), "q8_0 ≥ f16: {v}");
    // The text table: header, one line per model, a summary line.
    let o = r1q(&["verify", "-c", "64", "-f"], &paths);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.starts_with("file") && s.contains("q8_0.gguf") && s.contains("(base)"),
        "{s}"
    );

    // A base with another vocabulary: one line, exit 1.
    let other = dir.path().join("ds");
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        &other,
        &fixtures::Options::default(),
    )
    .unwrap();
    let ds = dir.path().join("ds.gguf");
    convert(&other, &ds, "q8_0");
    let o = r1q(&["verify", "-c", "64", "-f"], &[&text, &files[0], &ds]);
    one_line_error(&o, "vocabulary");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("hf");
    fixtures::write_fixture(fixtures::Arch::Qwen2, &model, &fixtures::Options::default()).unwrap();
    let gguf = dir.path().join("m.gguf");
    convert(&model, &gguf, "f32");
    let text = text(dir.path());
    let missing = dir.path().join("nope.txt");
    one_line_error(&r1q(&["perplexity", "-f"], &[&missing, &gguf]), "nope.txt");
    one_line_error(
        &r1q(&["verify", "-f"], &[&missing, &gguf, &gguf]),
        "nope.txt",
    );
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Just a few words.").unwrap();
    one_line_error(
        &r1q(&["perplexity", "-c", "512", "-f"], &[&short, &gguf]),
        "needs at least 1024",
    );
    for case in fixtures::bad::kld::cases() {
        let d = dir.path().join(case.name);
        let path = case.materialize(&d).unwrap();
        let o = r1q(&["perplexity", "--kl-divergence-base"], &[&path, &gguf]);
        one_line_error(&o, case.expect);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&case.open),
            "{}",
            case.name
        );
    }
    // A good base file of this model compared with --chunks beyond it still works.
    let base = dir.path().join("base.kld");
    let o = r1q(
        &[
            "perplexity",
            "-c",
            "64",
            "--chunks",
            "2",
            "--save",
            "--kl-divergence-base",
        ],
        &[&base, &gguf, Path::new("-f"), &text],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = r1q(&["perplexity", "--kl-divergence-base"], &[&base, &gguf]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("chunk             PPL") && s.contains("   2 "),
        "{s}"
    );
}

#[test]
fn demo_prints_the_table() {
    let o = r1q(&["demo"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("deepseek-v3-q8_0.gguf") && s.contains("(base)"),
        "{s}"
    );
}
