//! `r1q imatrix` against llama-imatrix on the same GGUF and text, for every fixture architecture
//! (deepseek-v3 with MLA and MoE, qwen2, llama): the same entry names and sizes, the same counts
//! exactly (per expert for the `*_exps` stacks), Σx² within 1e-4 relative per column (both
//! sum f32 squares; the activations differ only by f32 rounding of two forward passes); and
//! quantizing the fixture with either imatrix gives the same bytes for ≥ 99.9 % of the blocks,
//! or — since llama.cpp's quantizers flip ~1 % of blocks when an imatrix moves by one ulp — at
//! least as many as llama-imatrix's own imatrix nudged by one ulp does (minus 0.5 points).
//! Both formats r1q writes are accepted by `r1q quantize --imatrix` and by the peer's
//! `llama-quantize --imatrix`.
//!
//! llama-imatrix runs with `-c 128 -b 128` (one chunk per decode), an f32 KV cache and flash
//! attention off (`-ctk f32 -ctv f32 -fa off`), so its attention is plain f32 like ours.

mod llama_cpp;

use std::path::{Path, PathBuf};
use std::process::Command;

use formats::gguf::GgufFile;
use formats::imatrix::{Imatrix, ImatrixFormat};

/// Relative tolerance per column of Σx².
const REL_TOL: f64 = 1e-4;

fn fixture_f32(arch: fixtures::Arch, dir: &Path) -> PathBuf {
    let src = dir.join(format!("{arch}-hf"));
    fixtures::write_fixture(arch, &src, &fixtures::Options::default()).unwrap();
    let out = dir.join(format!("{arch}.f32.gguf"));
    llama_cpp::convert(&src, &out, "f32");
    out
}

/// The first 20,000 characters of ../shared/data's calibration text, or a built-in paragraph.
fn calibration_text(dir: &Path) -> PathBuf {
    let p = dir.join("calib.txt");
    let text = fixtures::support::shared_data()
        .and_then(|d| std::fs::read_to_string(d.join("text/calibration.txt")).ok())
        .map(|t| t.chars().take(20_000).collect::<String>())
        .unwrap_or_else(|| {
            "It is a truth universally acknowledged, that a single man in possession of a good \
             fortune, must be in want of a wife. However little known the feelings or views of \
             such a man may be on his first entering a neighbourhood, this truth is so well fixed \
             in the minds of the surrounding families, that he is considered as the rightful \
             property of some one or other of their daughters. "
                .repeat(40)
        });
    std::fs::write(&p, text).unwrap();
    p
}

fn r1q(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .output()
        .expect("running r1q")
}

fn ok(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn llama_imatrix(bin: &Path, model: &Path, text: &Path, out: &Path) {
    let res = Command::new(bin)
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .arg("-o")
        .arg(out)
        .args([
            "-c", "128", "-b", "128", "--chunks", "2", "-t", "2", "-ngl", "0",
        ])
        .args(["-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-ppl"])
        .output()
        .unwrap();
    ok(res, "llama-imatrix");
}

fn r1q_imatrix(model: &Path, text: &Path, out: &Path, format: &str) {
    ok(
        r1q(&[
            os("imatrix"),
            model.as_os_str(),
            os("-f"),
            text.as_os_str(),
            os("-o"),
            out.as_os_str(),
            os("-c"),
            os("128"),
            os("--chunks"),
            os("2"),
            os("--output-format"),
            os(format),
            os("--quiet"),
        ]),
        "r1q imatrix",
    );
}

/// Largest relative difference per column; panics on a difference of names, sizes, counts or
/// chunk bookkeeping, or on a column beyond [`REL_TOL`].
fn compare(arch: &str, ours: &Imatrix, theirs: &Imatrix) -> f64 {
    assert_eq!(ours.datasets, theirs.datasets, "{arch}: datasets");
    assert_same(arch, ours, theirs, REL_TOL)
}

fn quantize_r1q(model: &Path, imatrix: &Path, out: &Path) {
    ok(
        r1q(&[
            os("quantize"),
            os("--pure"),
            os("--imatrix"),
            imatrix.as_os_str(),
            model.as_os_str(),
            out.as_os_str(),
            os("Q4_K"),
        ]),
        "r1q quantize --imatrix",
    );
}

fn quantize_peer(bin: &Path, model: &Path, imatrix: &Path, out: &Path) {
    let res = Command::new(bin)
        .args(["--pure", "--imatrix"])
        .arg(imatrix)
        .arg(model)
        .arg(out)
        .args(["Q4_K", "2"])
        .output()
        .unwrap();
    ok(res, "llama-quantize --imatrix");
}

/// `im` with every other non-zero Σx² moved up by one ulp: the smallest change an imatrix can
/// undergo, to measure how much of the quantized output depends on the last bit.
fn nudge(im: &Imatrix) -> Imatrix {
    let mut out = im.clone();
    for e in out.entries.values_mut() {
        for v in e.in_sum2.iter_mut().step_by(2) {
            if *v > 0.0 {
                *v = f32::from_bits(v.to_bits() + 1);
            }
        }
    }
    out
}

/// (identical blocks, all blocks) over every quantized tensor of two GGUFs with the same plan.
fn same_blocks(a: &Path, b: &Path) -> (u64, u64) {
    let (fa, fb) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    let (mut same, mut all) = (0u64, 0u64);
    for ta in fa.tensors() {
        let tb = fb.tensor(&ta.name).unwrap();
        assert_eq!(ta.ggml_type, tb.ggml_type, "{}: types differ", ta.name);
        let (da, db) = (fa.tensor_data(ta), fb.tensor_data(tb));
        assert_eq!(da.len(), db.len(), "{}", ta.name);
        if !ta.ggml_type.is_quantized() {
            continue;
        }
        let bs = ta.ggml_type.type_size() as usize;
        for (x, y) in da.chunks(bs).zip(db.chunks(bs)) {
            all += 1;
            same += u64::from(x == y);
        }
    }
    (same, all)
}

#[test]
fn r1q_imatrix_equals_llama_imatrix_on_every_fixture_architecture() {
    let Some(peer) = fixtures::support::peer_bin("llama-imatrix") else {
        return;
    };
    let Some(lq) = fixtures::support::peer_bin("llama-quantize") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = calibration_text(d);
    for arch in [
        fixtures::Arch::DeepseekV3,
        fixtures::Arch::Qwen2,
        fixtures::Arch::Llama,
    ] {
        let model = fixture_f32(arch, d);
        let theirs = d.join(format!("{arch}.theirs.gguf"));
        llama_imatrix(&peer, &model, &text, &theirs);
        let ours = d.join(format!("{arch}.ours.gguf"));
        r1q_imatrix(&model, &text, &ours, "gguf");
        let (a, b) = (
            Imatrix::load(&ours).unwrap(),
            Imatrix::load(&theirs).unwrap(),
        );
        assert_eq!(a.format, ImatrixFormat::Gguf);
        let worst = compare(&arch.to_string(), &a, &b);

        // The legacy format: what llama-imatrix --output-format dat writes from the same sums.
        let ours_dat = d.join(format!("{arch}.ours.dat"));
        r1q_imatrix(&model, &text, &ours_dat, "dat");
        let l = Imatrix::load(&ours_dat).unwrap();
        assert_eq!(l.format, ImatrixFormat::Legacy);
        assert_eq!(
            l,
            a.to_legacy().unwrap(),
            "{arch}: dat is to_legacy of the GGUF"
        );

        // Quantizing with either imatrix. llama.cpp's quantizers are chaotic in the last bits of
        // the weights: llama-quantize itself changes ~1 % of these fixtures' Q4_K blocks when
        // every other column of ITS OWN imatrix moves by one ulp (the noise floor measured
        // here), so identical bytes for ≥ 99.9 % of blocks would need bit-identical activations.
        // Asserted: r1q's imatrix is no further from llama-imatrix's than that one-ulp nudge.
        let (q_ours, q_theirs, q_nudged) = (
            d.join(format!("{arch}.q4k.ours.gguf")),
            d.join(format!("{arch}.q4k.theirs.gguf")),
            d.join(format!("{arch}.q4k.nudged.gguf")),
        );
        let nudged_im = d.join(format!("{arch}.theirs-nudged.gguf"));
        nudge(&b).save_gguf(&nudged_im).unwrap();
        quantize_r1q(&model, &ours, &q_ours);
        quantize_r1q(&model, &theirs, &q_theirs);
        quantize_r1q(&model, &nudged_im, &q_nudged);
        let (same, all) = same_blocks(&q_ours, &q_theirs);
        let (same_n, all_n) = same_blocks(&q_nudged, &q_theirs);
        let pct = 100.0 * same as f64 / all.max(1) as f64;
        let floor = 100.0 * same_n as f64 / all_n.max(1) as f64;
        eprintln!(
            "{arch}: max relative difference {worst:.3e}; identical Q4_K blocks {same}/{all} ({pct:.3} %); \
             llama-imatrix's own imatrix nudged by 1 ulp: {same_n}/{all_n} ({floor:.3} %)"
        );
        assert!(all > 0, "{arch}: nothing quantized");
        assert!(
            pct >= 99.9 || (pct >= 98.5 && pct >= floor - 0.5),
            "{arch}: only {pct:.3} % identical blocks (one-ulp noise floor {floor:.3} %)"
        );

        // Both formats are accepted by r1q quantize and llama-quantize.
        let q_dat = d.join(format!("{arch}.q4k.ours-dat.gguf"));
        quantize_r1q(&model, &ours_dat, &q_dat);
        for (im, tag) in [(&ours, "gguf"), (&ours_dat, "dat")] {
            let q_peer = d.join(format!("{arch}.q4k.peer-{tag}.gguf"));
            quantize_peer(&lq, &model, im, &q_peer);
            let ours_q = if tag == "gguf" { &q_ours } else { &q_dat };
            let (same, all) = same_blocks(ours_q, &q_peer);
            assert_eq!(
                same, all,
                "{arch}: llama-quantize with r1q's {tag} imatrix differs from r1q quantize"
            );
        }
    }
}

/// The running perplexity llama-imatrix prints is the same number (it is llama-perplexity's
/// estimate over the same chunks), and `--process-output` adds output.weight with the same sums.
#[test]
fn running_perplexity_and_process_output_match_llama_imatrix() {
    let Some(peer) = fixtures::support::peer_bin("llama-imatrix") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = calibration_text(d);
    let model = fixture_f32(fixtures::Arch::Qwen2, d);
    let theirs = d.join("theirs.gguf");
    let res = Command::new(&peer)
        .arg("-m")
        .arg(&model)
        .arg("-f")
        .arg(&text)
        .arg("-o")
        .arg(&theirs)
        .args([
            "-c", "128", "-b", "128", "--chunks", "2", "-t", "2", "-ngl", "0",
        ])
        .args([
            "-ctk",
            "f32",
            "-ctv",
            "f32",
            "-fa",
            "off",
            "--process-output",
        ])
        .output()
        .unwrap();
    let res = ok(res, "llama-imatrix --process-output");
    let ours = d.join("ours.gguf");
    let out = ok(
        r1q(&[
            os("imatrix"),
            model.as_os_str(),
            os("-f"),
            text.as_os_str(),
            os("-o"),
            ours.as_os_str(),
            os("-c"),
            os("128"),
            os("--chunks"),
            os("2"),
            os("--process-output"),
        ]),
        "r1q imatrix --process-output",
    );
    let (a, b) = (
        Imatrix::load(&ours).unwrap(),
        Imatrix::load(&theirs).unwrap(),
    );
    assert!(a.entries.contains_key("output.weight"));
    compare("qwen2 --process-output", &a, &b);

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("[1]"), "{stdout}");
    let peer_log = format!(
        "{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let final_ppl = |s: &str| -> Option<f64> {
        s.split("Final estimate: PPL = ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let ours_ppl = final_ppl(&stdout).expect("r1q prints the final estimate");
    // The peer's logger sometimes loses its last lines (REFERENCE §8); compare when present.
    if let Some(p) = final_ppl(&peer_log) {
        assert!(
            (ours_ppl - p).abs() <= 1e-3 * p,
            "PPL r1q {ours_ppl} vs llama-imatrix {p}"
        );
    }
}

/// `--stats` prints one row per tensor with llama-imatrix's columns and the per-layer averages.
#[test]
fn stats_summarize_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = calibration_text(d);
    let model = fixture_f32(fixtures::Arch::DeepseekV3, d);
    let ours = d.join("ours.gguf");
    r1q_imatrix(&model, &text, &ours, "gguf");
    let out = ok(
        r1q(&[os("imatrix"), os("--stats"), ours.as_os_str()]),
        "r1q imatrix --stats",
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let im = Imatrix::load(&ours).unwrap();
    assert!(
        s.contains(&format!("({} tensors)", im.entries.len())),
        "{s}"
    );
    for col in ["Σ(Act²)", "% Active", "Entropy", "ZD", "CosSim"] {
        assert!(s.contains(col), "missing column {col}: {s}");
    }
    assert!(s.contains("ffn_down_exps") && s.contains("attn_k_b"), "{s}");
    assert!(s.contains("Computing weighted average statistics per layer"));
}

/// r1q imatrix with `-c 128 --no-ppl --quiet` and `extra` arguments.
fn r1q_imatrix_args(model: &Path, text: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        os("imatrix"),
        model.as_os_str(),
        os("-f"),
        text.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-c"),
        os("128"),
        os("--no-ppl"),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    ok(r1q(&args), "r1q imatrix")
}

/// llama-imatrix combining `inputs` without a text. It insists on `-m` (never loaded), takes
/// several inputs only comma-separated (a repeated `--in-file` keeps the last one), and takes the
/// chunk size from `-c`.
fn llama_combine(bin: &Path, model: &Path, inputs: &[&Path], out: &Path) {
    let list: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let res = Command::new(bin)
        .arg("-m")
        .arg(model)
        .arg("--in-file")
        .arg(list.join(","))
        .arg("-o")
        .arg(out)
        .args(["-c", "128"])
        .output()
        .unwrap();
    ok(res, "llama-imatrix --in-file … (combine only)");
}

/// Same entries, counts and chunk bookkeeping; Σx² within `rel` per column (0: bit-identical).
/// Returns the largest relative difference.
fn assert_same(what: &str, a: &Imatrix, b: &Imatrix, rel: f64) -> f64 {
    let mut worst = 0f64;
    assert_eq!(
        a.entries.keys().collect::<Vec<_>>(),
        b.entries.keys().collect::<Vec<_>>(),
        "{what}: entry names"
    );
    assert_eq!(
        (a.chunk_count, a.chunk_size),
        (b.chunk_count, b.chunk_size),
        "{what}: chunk bookkeeping"
    );
    for (name, x) in &a.entries {
        let y = &b.entries[name];
        assert_eq!(x.counts, y.counts, "{what} {name}: counts");
        assert_eq!(x.in_sum2.len(), y.in_sum2.len(), "{what} {name}: size");
        for (i, (&u, &v)) in x.in_sum2.iter().zip(&y.in_sum2).enumerate() {
            let (u, v) = (f64::from(u), f64::from(v));
            let d = (u - v).abs() / u.abs().max(v.abs()).max(f64::MIN_POSITIVE);
            assert!(d <= rel, "{what} {name}[{i}]: {u} vs {v} (relative {d:e})");
            worst = worst.max(d);
        }
    }
    worst
}

/// A long calibration split in two (`--from-chunk`) and merged with `--in-file`: r1q's merge is
/// llama-imatrix's merge of the same two files bit for bit (GGUF + GGUF and GGUF + .dat), equals a
/// single run over all chunks within f32 rounding with exact counts, and a run resumed from the
/// first half with `-f` equals llama-imatrix doing the same (it adds this run's x² onto the loaded
/// sums).
#[test]
fn split_runs_merge_like_llama_imatrix_and_like_one_run() {
    let Some(peer) = fixtures::support::peer_bin("llama-imatrix") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = calibration_text(d);
    let model = fixture_f32(fixtures::Arch::DeepseekV3, d);
    let (a, b, b_dat, all) = (
        d.join("a.gguf"),
        d.join("b.gguf"),
        d.join("b.dat"),
        d.join("all.gguf"),
    );
    r1q_imatrix_args(&model, &text, &a, &["--chunks", "2"]);
    r1q_imatrix_args(&model, &text, &b, &["--from-chunk", "2", "--chunks", "2"]);
    r1q_imatrix_args(
        &model,
        &text,
        &b_dat,
        &[
            "--from-chunk",
            "2",
            "--chunks",
            "2",
            "--output-format",
            "dat",
        ],
    );
    r1q_imatrix_args(&model, &text, &all, &["--chunks", "4"]);

    for (second, tag) in [(&b, "gguf+gguf"), (&b_dat, "gguf+dat")] {
        let ours = d.join(format!("merged-{tag}.gguf"));
        ok(
            r1q(&[
                os("imatrix"),
                os("--in-file"),
                a.as_os_str(),
                os("--in-file"),
                second.as_os_str(),
                os("-o"),
                ours.as_os_str(),
            ]),
            "r1q imatrix --in-file a --in-file b",
        );
        let theirs = d.join(format!("peer-{tag}.gguf"));
        llama_combine(&peer, &model, &[&a, second], &theirs);
        let (m, p) = (
            Imatrix::load(&ours).unwrap(),
            Imatrix::load(&theirs).unwrap(),
        );
        assert_same(&format!("merge {tag} vs llama-imatrix"), &m, &p, 0.0);
        assert_eq!(m.datasets, p.datasets, "{tag}: datasets");
        assert_eq!(m.chunk_count, 4, "{tag}");
        if tag == "gguf+gguf" {
            // Two halves summed separately vs one running sum: f32 rounding only.
            let one = Imatrix::load(&all).unwrap();
            assert_same("merge vs one run", &m, &one, 1e-5);
            assert_eq!(m.datasets.len(), 2);
        }
    }

    // Resuming: chunks 2..4 collected on top of a.gguf, by r1q and by llama-imatrix.
    let ours = d.join("resumed.gguf");
    r1q_imatrix_args(
        &model,
        &text,
        &ours,
        &[
            "--in-file",
            a.to_str().unwrap(),
            "--from-chunk",
            "2",
            "--chunks",
            "2",
        ],
    );
    let theirs = d.join("resumed-peer.gguf");
    let res = Command::new(&peer)
        .arg("-m")
        .arg(&model)
        .arg("-f")
        .arg(&text)
        .arg("-o")
        .arg(&theirs)
        .arg("--in-file")
        .arg(&a)
        .args(["--from-chunk", "2", "--chunks", "2"])
        .args(["-c", "128", "-b", "128", "-t", "2", "-ngl", "0"])
        .args(["-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-ppl"])
        .output()
        .unwrap();
    ok(res, "llama-imatrix --in-file --from-chunk");
    let (r, p) = (
        Imatrix::load(&ours).unwrap(),
        Imatrix::load(&theirs).unwrap(),
    );
    compare("resumed run", &r, &p);
    assert_same(
        "resumed vs one run",
        &r,
        &Imatrix::load(&all).unwrap(),
        1e-5,
    );
}

/// `--save-frequency 2` over 5 chunks: groups of ≤ 2 chunks, OUT rewritten after each, snapshots
/// OUT.at_2 and OUT.at_4 kept, each identical to a run limited to that many chunks (the sums of a
/// group are complete once it has passed every layer); resuming from a checkpoint with
/// `--in-file … --from-chunk` gives the same file as the uninterrupted run.
#[test]
fn save_frequency_checkpoints_equal_shorter_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = calibration_text(d);
    let model = fixture_f32(fixtures::Arch::DeepseekV3, d);
    let out = d.join("run.gguf");
    let res = r1q_imatrix_args(
        &model,
        &text,
        &out,
        &["--chunks", "5", "--save-frequency", "2"],
    );
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("--from-chunk 2 --chunks 3")
            && stderr.contains("--from-chunk 4 --chunks 1"),
        "{stderr}"
    );
    let full = Imatrix::load(&out).unwrap();
    assert_eq!(full.chunk_count, 5);
    assert!(
        !d.join("run.gguf.at_5").exists(),
        "5 is not a multiple of 2"
    );
    for k in [2usize, 4] {
        let snap = Imatrix::load(d.join(format!("run.gguf.at_{k}"))).unwrap();
        assert_eq!(snap.chunk_count as usize, k);
        let short = d.join(format!("short-{k}.gguf"));
        r1q_imatrix_args(&model, &text, &short, &["--chunks", &k.to_string(), "-q"]);
        let short = Imatrix::load(&short).unwrap();
        assert_same(&format!("at_{k} vs --chunks {k}"), &snap, &short, 0.0);
        assert_eq!(snap.datasets, short.datasets);
    }
    // Resume after "an interruption" past chunk 4.
    let resumed = d.join("resumed.gguf");
    let at4 = d.join("run.gguf.at_4");
    r1q_imatrix_args(
        &model,
        &text,
        &resumed,
        &[
            "--in-file",
            at4.to_str().unwrap(),
            "--from-chunk",
            "4",
            "--chunks",
            "1",
            "-q",
        ],
    );
    assert_same(
        "resumed vs uninterrupted",
        &Imatrix::load(&resumed).unwrap(),
        &full,
        0.0,
    );
}
