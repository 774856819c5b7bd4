//! `r1q perplexity` and the verify crate's tokenizer / KL-divergence file against the llama.cpp
//! peer: same token ids as llama-tokenize, same PPL as llama-perplexity, base files readable both
//! ways, and the same KLD statistics.

mod llama_cpp;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use verify::kld::{decode_record, BaseReader};
use verify::tokenize::Tokenizer;

fn r1q(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .args(paths)
        .output()
        .expect("running r1q")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn final_ppl(out: &str) -> f64 {
    let rest = out
        .split("Final estimate: PPL = ")
        .nth(1)
        .expect("a final line");
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn fixture_gguf(dir: &Path, arch: fixtures::Arch, outtype: &str) -> PathBuf {
    let model = dir.join(format!("{arch}-hf"));
    if !model.exists() {
        fixtures::write_fixture(arch, &model, &fixtures::Options::default()).unwrap();
    }
    let gguf = dir.join(format!("{arch}-{outtype}.gguf"));
    llama_cpp::convert(&model, &gguf, outtype);
    gguf
}

/// The format: one running `[k]X,` per chunk, then the final line; and without the peer, the
/// numbers are finite and the chunk count follows ⌊tokens/ctx⌋ or --chunks.
#[test]
fn prints_llama_perplexity_format() {
    let dir = tempfile::tempdir().unwrap();
    let text = llama_cpp::eval_text(dir.path());
    let gguf = fixture_gguf(dir.path(), fixtures::Arch::Qwen2, "f32");
    let out = r1q(
        &["perplexity", "-c", "128", "--chunks", "3", "-f"],
        &[&text, &gguf],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = stdout(&out);
    assert!(
        s.contains("[1]") && s.contains("[2]") && s.contains("[3]") && !s.contains("[4]"),
        "{s}"
    );
    let p = final_ppl(&s);
    assert!(p.is_finite() && p > 1.0, "{s}");
}

/// Our PPL equals llama-perplexity's (f32 KV cache) for every fixture architecture.
#[test]
fn ppl_matches_llama_perplexity() {
    let Some(bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = llama_cpp::eval_text(dir.path());
    for arch in fixtures::Arch::ALL {
        let gguf = fixture_gguf(dir.path(), arch, "f32");
        let out = r1q(
            &["perplexity", "-c", "128", "--chunks", "2", "-f"],
            &[&text, &gguf],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = final_ppl(&stdout(&out));
        let peer = llama_cpp::llama_perplexity(
            &bin,
            &gguf,
            &text,
            128,
            2,
            &["-ctk", "f32", "-ctv", "f32", "-fa", "off"],
        );
        let rel = (ours - peer.ppl).abs() / peer.ppl;
        eprintln!(
            "{arch}: r1q PPL {ours} llama-perplexity {} (rel {rel:.2e})",
            peer.ppl
        );
        assert!(rel < 1e-3, "{arch}: {ours} vs {}", peer.ppl);
    }
}

/// Our ids from the GGUF metadata equal llama-tokenize's on the fixtures' own vocabularies and on
/// the three real tokenizers (the whole 1.2 MB wiki-eval.txt, so long enough that r1q encodes it
/// in parallel pieces), with and without special parsing.
#[test]
fn token_ids_match_llama_tokenize() {
    let Some(bin) = fixtures::support::peer_bin("llama-tokenize") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(fixtures::Arch, Option<PathBuf>)> =
        fixtures::Arch::ALL.iter().map(|&a| (a, None)).collect();
    let mut text =
        "Hello <think>world</think> <｜begin▁of▁sentence｜> 12345 ünïcödé 你好 \n\n  x".to_string();
    if let Some(data) = fixtures::support::shared_data() {
        for (arch, fam) in [
            (fixtures::Arch::DeepseekV3, "deepseek-r1"),
            (fixtures::Arch::Qwen2, "deepseek-r1-distill-qwen-7b"),
            (fixtures::Arch::Llama, "deepseek-r1-distill-llama-8b"),
        ] {
            cases.push((
                arch,
                Some(data.join("tokenizers").join(fam).join("tokenizer.json")),
            ));
        }
        let wiki = std::fs::read_to_string(data.join("text/wiki-eval.txt")).unwrap();
        text.push_str(&wiki);
    }
    let text_path = dir.path().join("text.txt");
    std::fs::write(&text_path, &text).unwrap();
    for (i, (arch, tok)) in cases.into_iter().enumerate() {
        let model = dir.path().join(format!("m{i}"));
        let opts = fixtures::Options {
            tokenizer: tok.clone(),
            ..fixtures::Options::default()
        };
        fixtures::write_fixture(arch, &model, &opts).unwrap();
        let gguf = dir.path().join(format!("m{i}.gguf"));
        llama_cpp::convert(&model, &gguf, "f16");
        std::fs::remove_dir_all(&model).unwrap();
        let file = formats::gguf::GgufFile::open(&gguf).unwrap();
        let ours = Tokenizer::from_gguf(&file)
            .unwrap()
            .with_parse_special(true);
        let ids = ours.encode(&text, true).unwrap();
        let peer = llama_cpp::llama_tokenize(&bin, &gguf, &text_path);
        let first_diff = ids.iter().zip(&peer).position(|(a, b)| a != b);
        assert_eq!(
            (ids.len(), first_diff),
            (peer.len(), None),
            "{arch} {tok:?}"
        );
        // Without special parsing (llama-perplexity's way): CONTROL text is ordinary text.
        let plain = ours
            .clone()
            .with_parse_special(false)
            .encode(&text, true)
            .unwrap();
        let out = Command::new(&bin)
            .arg("-m")
            .arg(&gguf)
            .arg("-f")
            .arg(&text_path)
            .args([
                "--ids",
                "--no-escape",
                "--log-disable",
                "--no-parse-special",
            ])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let line = s.lines().find(|l| l.starts_with('[')).unwrap();
        let peer_plain: Vec<u32> = line
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| x.trim().parse().unwrap())
            .collect();
        assert_eq!(plain, peer_plain, "{arch} {tok:?} (no special parsing)");
        eprintln!(
            "{arch} {:?}: {} ids identical",
            tok.map(|t| t.parent().map(|p| p.to_path_buf())),
            ids.len()
        );
        std::fs::remove_file(&gguf).unwrap();
    }
}

/// The chunk whose running KLD line is compared; the base files hold one chunk more.
const COMPARED_CHUNK: usize = 2;

/// The ten numbers of the running line `N  PPL ± u  ln-ratio ± u  KLD ± u  Δp ± u %  top ± u %`
/// printed after chunk `n`, when the whole line is in `out`.
fn chunk_line(out: &str, n: usize) -> Option<[f64; 10]> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&n.to_string()))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter(|w| *w != "±" && *w != "%")
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    nums.try_into().ok()
}

/// The number after `key` (and its colon) in llama-perplexity's summary.
fn grab(s: &str, key: &str) -> f64 {
    let rest = s
        .split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("{key} missing in:\n{s}"));
    rest.trim_start_matches([' ', ':'])
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap()
}

fn rel(x: f64, y: f64) -> f64 {
    (x - y).abs() / y.abs().max(1e-12)
}

/// llama-perplexity's base file is read by ours; ours for the same model and text has the same
/// header and tokens, log-probabilities within a quantization step or two; and our KLD
/// statistics against llama.cpp's base file equal what llama-perplexity prints for a Q8_0 model.
#[test]
fn kld_base_file_and_statistics_match_llama_perplexity() {
    let Some(bin) = fixtures::support::peer_bin("llama-perplexity") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = llama_cpp::eval_text(dir.path());
    let f32 = fixture_gguf(dir.path(), fixtures::Arch::Qwen2, "f32");
    let q8 = fixture_gguf(dir.path(), fixtures::Arch::Qwen2, "q8_0");
    let theirs = dir.path().join("llama.kld");
    let n_chunks = (COMPARED_CHUNK + 1).to_string();
    let kv = ["-ctk", "f32", "-ctv", "f32", "-fa", "off"];
    let c = |s: &Path| s.to_str().unwrap().to_string();
    let out = Command::new(&bin)
        .arg("-m")
        .arg(&f32)
        .arg("-f")
        .arg(&text)
        .args([
            "-c", "128", "-b", "128", "--chunks", &n_chunks, "-t", "2", "-ngl", "0",
        ])
        .args(kv)
        .args(["--kl-divergence-base", &c(&theirs)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = dir.path().join("r1q.kld");
    let o = r1q(
        &[
            "perplexity",
            "-c",
            "128",
            "--chunks",
            &n_chunks,
            "--save",
            "--kl-divergence-base",
            &c(&ours),
            "-f",
        ],
        &[&text, &f32],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut a = BaseReader::open(&theirs).unwrap();
    let mut b = BaseReader::open(&ours).unwrap();
    assert_eq!(a.header(), b.header(), "header and tokens");
    assert_eq!(
        std::fs::metadata(&theirs).unwrap().len(),
        std::fs::metadata(&ours).unwrap().len()
    );
    let n_vocab = a.header().n_vocab;
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    let mut worst = 0f32;
    for _ in 0..(COMPARED_CHUNK + 1) * 63 {
        a.next_record(&mut ra).unwrap();
        b.next_record(&mut rb).unwrap();
        let (la, lb) = (decode_record(&ra, n_vocab), decode_record(&rb, n_vocab));
        for (x, y) in la.iter().zip(&lb) {
            if *x > -15.0 {
                worst = worst.max((x - y).abs());
            }
        }
    }
    eprintln!("largest log-prob difference (p > e^-15): {worst:e}");
    assert!(worst < 1e-3, "{worst}");

    // KLD against llama.cpp's base file, ours vs llama-perplexity's: for the F32 model (same
    // logits to ~1e-7, so the statistics code is what is compared) tightly; for Q8_0 loosely,
    // since llama.cpp's Q8_0 matmuls also quantize the activations to Q8_0 (ggml vec_dot_type)
    // while our engine multiplies dequantized weights by f32 activations.
    //
    // llama-perplexity logs through an asynchronous logger it never flushes at exit (a leaked
    // singleton, common/log.cpp), so its last lines (the summary, even the last chunk line) can be
    // lost on a run that exits 0; on some machines every run loses them. So the base file holds
    // one chunk more than the chunk whose running line is compared: that line is printed while
    // the next chunk is decoded and always arrives. The summary, when it arrives, is compared too.
    for (model, tols) in [
        (&f32, [1e-5, 1e-6, 0.05, 1.0]),
        (&q8, [2e-3, 1e-6, 0.6, 5.0]),
    ] {
        let o = r1q(
            &["perplexity", "--kl-divergence-base", &c(&theirs)],
            &[model],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ours_out = stdout(&o);
        let mut peer = None;
        let mut last = String::new();
        for _ in 0..5 {
            let out = Command::new(&bin)
                .arg("-m")
                .arg(model)
                .args(["-c", "128", "-b", "128", "-t", "2", "-ngl", "0"])
                .args(kv)
                .args(["--kl-divergence", "--kl-divergence-base", &c(&theirs)])
                .output()
                .unwrap();
            last = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "llama-perplexity failed:\n{last}");
            if chunk_line(&stdout(&out), COMPARED_CHUNK).is_some() {
                peer = Some(stdout(&out));
                break;
            }
        }
        let peer_out = peer.unwrap_or_else(|| panic!("no chunk {COMPARED_CHUNK} line in:\n{last}"));

        // The running line after the compared chunk, at the precision both print it.
        let ours_line = chunk_line(&ours_out, COMPARED_CHUNK).expect("our chunk line");
        let peer_line = chunk_line(&peer_out, COMPARED_CHUNK).unwrap();
        eprintln!(
            "{}: chunk {COMPARED_CHUNK} r1q {ours_line:?}\n{:>w$} llama {peer_line:?}",
            model.display(),
            "",
            w = model.display().to_string().len() + 9
        );
        let [p, _, ln, _, k, _, _, _, t, _] = ours_line;
        let [pp, _, lnp, _, kp, _, _, _, tp, _] = peer_line;
        assert!(rel(p, pp) < tols[0] + 1e-4 / pp, "PPL(Q) {p} vs {pp}");
        assert!((ln - lnp).abs() < tols[0] + 1e-5, "ln ratio {ln} vs {lnp}");
        assert!(
            (k - kp).abs() < tols[2] * kp.abs() + 1e-5,
            "KLD {k} vs {kp}"
        );
        assert!((t - tp).abs() <= tols[3], "same top {t} vs {tp}");

        // The summary over all chunks, when the peer's logger delivered it.
        if !peer_out.contains("Same top p:") {
            eprintln!("{}: llama-perplexity's summary was lost (unflushed logger); compared chunk {COMPARED_CHUNK} only", model.display());
            continue;
        }
        let g = |k| (grab(&ours_out, k), grab(&peer_out, k));
        let (q, qp) = g("Mean PPL(Q)");
        let (b, bp) = g("Mean PPL(base)");
        let (k, kp) = g("Mean    KLD:");
        let (t, tp) = g("Same top p:");
        eprintln!(
            "{}: PPL(Q) {q} vs {qp}; PPL(base) {b} vs {bp}; mean KLD {k:e} vs {kp:e}; same top {t}% vs {tp}%",
            model.display()
        );
        assert!(rel(q, qp) < tols[0], "PPL(Q) {q} vs {qp}");
        assert!(rel(b, bp) < tols[1], "PPL(base) {b} vs {bp}");
        assert!(
            (k - kp).abs() < tols[2] * kp.abs() + 2e-6,
            "KLD {k} vs {kp}"
        );
        assert!((t - tp).abs() <= tols[3], "same top {t} vs {tp}");
    }
}
