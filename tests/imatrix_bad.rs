//! `r1q imatrix` on bad input: each case one clear line on stderr naming the file (or flag) and
//! what was wrong, exit code 1, and no output file left behind.

mod llama_cpp;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_f32(dir: &Path, arch: fixtures::Arch) -> PathBuf {
    let src = dir.join(format!("{arch}-hf"));
    fixtures::write_fixture(arch, &src, &fixtures::Options::default()).unwrap();
    let out = dir.join(format!("{arch}.f32.gguf"));
    llama_cpp::convert(&src, &out, "f32");
    out
}

fn text(dir: &Path, words: usize) -> PathBuf {
    let p = dir.join(format!("text-{words}.txt"));
    let t: Vec<String> = (0..words).map(|i| format!("word{} the", i % 97)).collect();
    std::fs::write(&p, t.join(" ")).unwrap();
    p
}

/// Runs r1q, expects exit 1 and returns the single stderr line.
fn r1q_err(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .output()
        .expect("running r1q");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line: {stderr}");
    assert!(lines[0].starts_with("r1q: error: "), "{stderr}");
    lines[0].to_string()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn text_shorter_than_two_chunks_names_the_token_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_f32(dir.path(), fixtures::Arch::Qwen2);
    let short = text(dir.path(), 20);
    let out = dir.path().join("x.gguf");
    let e = r1q_err(&[
        os("imatrix"),
        model.as_os_str(),
        os("-f"),
        short.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-c"),
        os("512"),
        os("-q"),
    ]);
    assert!(e.contains("text-20.txt"), "{e}");
    assert!(
        e.contains("tokenizes to only") && e.contains("at least 1024"),
        "{e}"
    );
    assert!(!out.exists());

    // --from-chunk past the end is refused the same way.
    let long = text(dir.path(), 400);
    let e = r1q_err(&[
        os("imatrix"),
        model.as_os_str(),
        os("-f"),
        long.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-c"),
        os("64"),
        os("--from-chunk"),
        os("100"),
    ]);
    assert!(e.contains("after skipping 100 chunks"), "{e}");
}

/// `--device cuda` in a build without the `cuda` feature names the rebuild; with the feature
/// (no GPU here) it names what is missing; an unknown device lists the valid ones.
#[test]
fn device_cuda_without_the_feature_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_f32(dir.path(), fixtures::Arch::Qwen2);
    let t = text(dir.path(), 400);
    let out = dir.path().join("x.gguf");
    let args = |dev: &'static str| {
        vec![
            os("imatrix"),
            model.as_os_str(),
            os("-f"),
            t.as_os_str(),
            os("-o"),
            out.as_os_str(),
            os("-c"),
            os("64"),
            os("--device"),
            os(dev),
        ]
    };
    if !cfg!(feature = "cuda") {
        let e = r1q_err(&args("cuda"));
        assert!(e.contains("built without CUDA support"), "{e}");
        assert!(e.contains("--features cuda"), "{e}");
        assert!(!out.exists());
    }
    let e = r1q_err(&args("tpu"));
    assert!(e.contains("unknown device 'tpu'"), "{e}");
    assert!(!out.exists());
}

#[test]
fn stats_of_a_truncated_or_foreign_file_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = fixture_f32(d, fixtures::Arch::Qwen2);
    let t = text(d, 600);
    let good = d.join("good.gguf");
    let res = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args([os("imatrix"), model.as_os_str(), os("-f"), t.as_os_str()])
        .args([
            os("-o"),
            good.as_os_str(),
            os("-c"),
            os("64"),
            os("-q"),
            os("--no-ppl"),
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let bytes = std::fs::read(&good).unwrap();
    for (name, cut) in [("trunc.gguf", bytes.len() / 2), ("head.gguf", 40)] {
        let p = d.join(name);
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = r1q_err(&[os("imatrix"), os("--stats"), p.as_os_str()]);
        assert!(e.contains(name), "{e}");
        assert!(
            e.contains("past the end") || e.contains("truncated") || e.contains("impossible for a"),
            "{e}"
        );
    }
    // A legacy .dat cut inside an entry.
    let dat = d.join("good.dat");
    let res = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args([os("imatrix"), model.as_os_str(), os("-f"), t.as_os_str()])
        .args([
            os("-o"),
            dat.as_os_str(),
            os("-c"),
            os("64"),
            os("-q"),
            os("--no-ppl"),
        ])
        .args([os("--output-format"), os("dat")])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let bytes = std::fs::read(&dat).unwrap();
    let cut = d.join("cut.dat");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = r1q_err(&[os("imatrix"), os("--stats"), cut.as_os_str()]);
    // (formats::imatrix reports a cut inside an entry as a bad length or as truncated.)
    assert!(
        e.contains("cut.dat") && (e.contains("truncated") || e.contains("bad length")),
        "{e}"
    );
    // A model given where an imatrix belongs.
    let e = r1q_err(&[os("imatrix"), os("--stats"), model.as_os_str()]);
    assert!(e.contains("is this a model file?"), "{e}");
}

/// An imatrix collected on one model, given to `r1q quantize` for another: the first entry of
/// the wrong size is named (entries of other names only warn, see tests/quantize_bad.rs).
#[test]
fn imatrix_of_another_model_is_refused_by_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = fixture_f32(d, fixtures::Arch::DeepseekV3);
    let qwen = fixture_f32(d, fixtures::Arch::Qwen2);
    let t = text(d, 600);
    let im = d.join("ds.imatrix.gguf");
    let res = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args([os("imatrix"), ds.as_os_str(), os("-f"), t.as_os_str()])
        .args([
            os("-o"),
            im.as_os_str(),
            os("-c"),
            os("64"),
            os("-q"),
            os("--no-ppl"),
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let out = d.join("q.gguf");
    let e = r1q_err(&[
        os("quantize"),
        os("--imatrix"),
        im.as_os_str(),
        qwen.as_os_str(),
        out.as_os_str(),
        os("Q4_K_M"),
    ]);
    assert!(
        e.contains("ds.imatrix.gguf") && e.contains("another model"),
        "{e}"
    );
    assert!(!out.exists());
}
