//! End-to-end: `r1q convert` run as a user runs it — every fixture at every output type, the
//! dry run, one-line errors (missing checkpoint, missing output directory, a full disk simulated
//! with RLIMIT_FSIZE), nothing at the final name after a failure, and the peak RSS the binary
//! reports (its own VmHWM) within the pipeline's documented bound.

use std::path::Path;
use std::process::{Command, Output};

use formats::gguf::GgufFile;

fn r1q(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .output()
        .expect("running the r1q binary")
}

fn convert(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "convert".as_ref(),
        dir.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    r1q(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("r1q: error: ") && err.contains(needle),
        "{err}"
    );
}

fn nothing_at(out: &Path) {
    assert!(!out.exists(), "{} exists", out.display());
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists(), "partial left behind");
}

/// `peak RSS N MiB` from the summary line.
fn peak_rss_mib(out: &Output) -> f64 {
    let err = stderr(out);
    let at = err.find("peak RSS ").expect("summary has peak RSS") + "peak RSS ".len();
    err[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn converts_every_fixture_at_every_outtype() {
    for arch in fixtures::Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model");
        fixtures::write_fixture(arch, &src, &fixtures::Options::default()).unwrap();
        for t in ["f32", "f16", "bf16", "q8_0"] {
            let out = dir.path().join(format!("{t}.gguf"));
            let res = convert(&src, &out, &["--outtype", t, "--threads", "2"]);
            assert!(res.status.success(), "{arch} {t}: {}", stderr(&res));
            let line = stderr(&res);
            assert_eq!(line.lines().count(), 1, "{line}");
            assert!(line.starts_with("wrote "), "{line}");
            let g = GgufFile::open(&out).unwrap();
            assert!(!g.tensors().is_empty());
            // Memory: far below the bound for 2 threads (W = 4 chunks of ≤ 8 MiB f32 + outputs).
            let rss = peak_rss_mib(&res);
            assert!(rss < 4.0 * 21.0 + 64.0, "{arch} {t}: peak RSS {rss} MiB");
        }
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model");
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        &src,
        &fixtures::Options::default(),
    )
    .unwrap();
    let out = dir.path().join("x.gguf");
    let res = convert(&src, &out, &["--dry-run", "--outtype", "q8_0"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(text.contains("blk.1.attn_k_b.weight"), "{text}");
    assert!(text.contains("q8_0"), "{text}");
    assert!(text.contains("bits per weight"), "{text}");
    nothing_at(&out);
}

#[test]
fn errors_are_one_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model");
    fixtures::write_fixture(fixtures::Arch::Qwen2, &src, &fixtures::Options::default()).unwrap();

    let out = dir.path().join("no/such/dir/x.gguf");
    assert_one_line_error(&convert(&src, &out, &[]), "does not exist");
    nothing_at(&out);

    let out = dir.path().join("x.gguf");
    assert_one_line_error(&convert(&dir.path().join("nope"), &out, &[]), "nope");
    nothing_at(&out);

    let res = r1q(&[
        "convert".as_ref(),
        src.as_os_str(),
        "--outtype".as_ref(),
        "q4_k_x".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!res.status.success());
    nothing_at(&out);
}

#[test]
fn a_full_disk_is_an_error_and_leaves_nothing() {
    // RLIMIT_FSIZE of 512 KiB makes writes past it fail with EFBIG, like a full disk; SIGXFSZ is
    // ignored so the write returns the error instead of killing the process.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model");
    fixtures::write_fixture(fixtures::Arch::Llama, &src, &fixtures::Options::default()).unwrap();
    let out = dir.path().join("x.gguf");
    let res = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1024 && exec \"$0\" convert \"$1\" -o \"$2\" --outtype f32")
        .arg(env!("CARGO_BIN_EXE_r1q"))
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert_one_line_error(&res, "File too large");
    nothing_at(&out);
}

/// A qwen2 config.json that states `head_dim` gets `qwen2.attention.key_length/value_length`
/// (as llama.cpp's converter writes them), and the model evaluates exactly as without the key
/// (same per-head width); a `head_dim` the weights contradict is a one-line error naming the
/// tensor, with nothing written.
#[test]
fn qwen2_head_dim_is_written_when_stated() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model");
    fixtures::write_fixture(fixtures::Arch::Qwen2, &src, &fixtures::Options::default()).unwrap();
    let cfg_path = src.join("config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    let hd = cfg["hidden_size"].as_u64().unwrap() / cfg["num_attention_heads"].as_u64().unwrap();

    let plain = dir.path().join("plain.gguf");
    let res = convert(&src, &plain, &["--outtype", "f32"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let key = |g: &GgufFile, k: &str| g.get(k).and_then(|v| v.as_u64());
    let g = GgufFile::open(&plain).unwrap();
    assert_eq!(key(&g, "qwen2.attention.key_length"), None);

    let with_hd = |v: u64| {
        let mut c = cfg.clone();
        c["head_dim"] = v.into();
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    };
    with_hd(hd);
    let stated = dir.path().join("stated.gguf");
    let res = convert(&src, &stated, &["--outtype", "f32"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let g = GgufFile::open(&stated).unwrap();
    assert_eq!(key(&g, "qwen2.attention.key_length"), Some(hd));
    assert_eq!(key(&g, "qwen2.attention.value_length"), Some(hd));

    let text = dir.path().join("t.txt");
    let words: Vec<String> = (0..400).map(|i| format!("word{} the", i % 53)).collect();
    std::fs::write(&text, words.join(" ")).unwrap();
    let ppl = |model: &Path| {
        let o = r1q(&[
            "perplexity".as_ref(),
            "-c".as_ref(),
            "64".as_ref(),
            "-f".as_ref(),
            text.as_os_str(),
            model.as_os_str(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(ppl(&plain), ppl(&stated));

    with_hd(2 * hd);
    let bad = dir.path().join("bad.gguf");
    assert_one_line_error(&convert(&src, &bad, &["--outtype", "f32"]), "q_proj");
    nothing_at(&bad);
    std::fs::write(&cfg_path, original).unwrap();
}
