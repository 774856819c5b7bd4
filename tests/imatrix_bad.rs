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
    collect(&model, &t, &good, &[]);
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
    collect(&model, &t, &dat, &["--output-format", "dat"]);
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
    collect(&ds, &t, &im, &[]);
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

/// Runs `r1q imatrix` and expects success.
fn r1q_ok(args: &[&std::ffi::OsStr]) {
    let res = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// Collects an imatrix of `model` on `text` into `out` (`-c 64 -q --no-ppl` plus `extra`),
/// expecting success.
fn collect(model: &Path, text: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        os("imatrix"),
        model.as_os_str(),
        os("-f"),
        text.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-c"),
        os("64"),
        os("-q"),
        os("--no-ppl"),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    r1q_ok(&args);
}

/// `--in-file` inputs that cannot be added: a truncated file, an imatrix of another model (checked
/// against MODEL, with or without `-f`), two imatrices of different models; each names the file
/// and the tensor and writes nothing. A legacy .dat and a GGUF of the same model combine.
#[test]
fn in_file_truncated_or_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let qwen = fixture_f32(d, fixtures::Arch::Qwen2);
    let llama = fixture_f32(d, fixtures::Arch::Llama);
    let t = text(d, 600);
    let (q, q_dat, l) = (d.join("q.gguf"), d.join("q.dat"), d.join("l.gguf"));
    collect(&qwen, &t, &q, &["--chunks", "2"]);
    collect(
        &qwen,
        &t,
        &q_dat,
        &["--chunks", "2", "--output-format", "dat"],
    );
    collect(&llama, &t, &l, &["--chunks", "2"]);
    let out = d.join("out.gguf");

    // A .dat and a GGUF of the same model combine (checked against the model too).
    r1q_ok(&[
        os("imatrix"),
        qwen.as_os_str(),
        os("--in-file"),
        q.as_os_str(),
        os("--in-file"),
        q_dat.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-q"),
    ]);
    let m = formats::imatrix::Imatrix::load(&out).unwrap();
    assert_eq!(m.chunk_count, 4);
    std::fs::remove_file(&out).unwrap();

    let bytes = std::fs::read(&q).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = r1q_err(&[
        os("imatrix"),
        os("--in-file"),
        q.as_os_str(),
        os("--in-file"),
        cut.as_os_str(),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(e.contains("cut.gguf"), "{e}");
    assert!(!out.exists());

    // The llama fixture's tensors are wider than qwen2's: the first one named.
    for with_text in [false, true] {
        let mut args = vec![os("imatrix"), qwen.as_os_str()];
        if with_text {
            args.extend([os("-f"), t.as_os_str(), os("-c"), os("64")]);
        }
        args.extend([
            os("--in-file"),
            q.as_os_str(),
            os("--in-file"),
            l.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ]);
        let e = r1q_err(&args);
        assert!(
            e.contains("l.gguf") && e.contains("blk.") && e.contains("another model"),
            "{e}"
        );
        assert!(!out.exists());
    }
    // Options of an evaluation are refused, not ignored, when only combining.
    let e = r1q_err(&[
        os("imatrix"),
        os("--in-file"),
        q.as_os_str(),
        os("--chunks"),
        os("3"),
        os("--device"),
        os("cuda"),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(
        e.contains("--chunks, --device") && e.contains("-f TEXT"),
        "{e}"
    );
    assert!(!out.exists());
    // Without a model to check against, the two files disagree on an entry's size.
    let e = r1q_err(&[
        os("imatrix"),
        os("--in-file"),
        q.as_os_str(),
        os("--in-file"),
        l.as_os_str(),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(
        e.contains("l.gguf") && e.contains("entry 'blk.") && e.contains("values"),
        "{e}"
    );
    assert!(!out.exists());
}

/// A model whose embeddings are NaN for every token that chunk 0 does not use: chunk 0 is clean,
/// the first chunk c with another token poisons the sums. The run stops after the group holding
/// chunk c with one line naming the tensor and the chunks; with `--save-frequency 1` OUT keeps
/// the checkpoint of chunks 0..c (and the message says so), without it nothing is written.
#[test]
fn non_finite_sums_stop_the_run_and_keep_the_last_checkpoint() {
    use formats::gguf::{GgufFile, GgufWriter, TensorDecl};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clean = fixture_f32(d, fixtures::Arch::Qwen2);
    let t = d.join("two-part.txt");
    let text = format!(
        "{}{}",
        "the ".repeat(60),
        "Quick brown foxes jump over lazy dogs; zebras vex. ".repeat(20)
    );
    std::fs::write(&t, &text).unwrap();
    let file = GgufFile::open(&clean).unwrap();
    let tok = verify::tokenize::Tokenizer::from_gguf(&file).unwrap();
    let tokens = tok.encode(&text, true).unwrap();
    let mut chunk0: std::collections::HashSet<u32> = tokens[..64].iter().copied().collect();
    chunk0.extend(tok.bos());
    // The first chunk with a token chunk 0 lacks (BOS replaces each chunk's first token).
    let c = (1..4)
        .find(|&c| {
            tokens[c * 64 + 1..(c + 1) * 64]
                .iter()
                .any(|t| !chunk0.contains(t))
        })
        .expect("a chunk of other tokens among the first four");
    let model = d.join("nan.gguf");
    let decls = file
        .tensors()
        .iter()
        .map(|i| TensorDecl::new(i.name.clone(), i.dims.clone(), i.ggml_type))
        .collect();
    let mut w = GgufWriter::create(&model, file.metadata(), decls).unwrap();
    for info in file.tensors() {
        let mut data = file.tensor_data(info).to_vec();
        if info.name == "token_embd.weight" {
            let row = info.dims[0] as usize * 4;
            for (id, r) in data.chunks_mut(row).enumerate() {
                if !chunk0.contains(&(id as u32)) {
                    for v in r.chunks_mut(4) {
                        v.copy_from_slice(&f32::NAN.to_le_bytes());
                    }
                }
            }
        }
        w.write_tensor(&data).unwrap();
    }
    w.finish().unwrap();

    let out = d.join("out.gguf");
    let run = |extra: &[&str]| {
        let mut args = vec![
            os("imatrix"),
            model.as_os_str(),
            os("-f"),
            t.as_os_str(),
            os("-o"),
            out.as_os_str(),
            os("-c"),
            os("64"),
            os("--chunks"),
            os("4"),
            os("-q"),
            os("--no-ppl"),
        ];
        args.extend(extra.iter().map(|s| os(s)));
        r1q_err(&args)
    };
    let e = run(&[]);
    assert!(
        e.contains("non-finite activation sums in blk.0.") && e.contains("in chunks 0..4"),
        "{e}"
    );
    assert!(e.contains("nothing was written"), "{e}");
    assert!(!out.exists());

    let e = run(&["--save-frequency", "1"]);
    assert!(
        e.contains("non-finite activation sums in blk.0.")
            && e.contains(&format!("in chunks {c}..{}", c + 1)),
        "{e}"
    );
    assert!(
        e.contains(&format!("keeps the checkpoint of chunks 0..{c}"))
            && e.contains(&format!("--from-chunk {c}")),
        "{e}"
    );
    let kept = formats::imatrix::Imatrix::load(&out).unwrap();
    assert_eq!(kept.chunk_count as usize, c);
    assert!(d.join(format!("out.gguf.at_{c}")).exists());
    assert!(!d.join(format!("out.gguf.at_{}", c + 1)).exists());
}
