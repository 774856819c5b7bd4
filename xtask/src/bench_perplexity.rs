//! `cargo xtask bench perplexity`: `r1q perplexity` against the peer's `llama-perplexity` on the
//! same GGUF and the same text, at the same thread counts, in one run.
//!
//! Models: the bench-preset qwen2 fixture converted to F32 and to Q8_0 (random weights, but the
//! shapes of a small real model), and the real small model (Qwen2.5-Coder-0.5B Q4_K_M) when
//! `cargo xtask real-model` has cached it. Text: ../shared/data/text/wiki-eval.txt (a repeated
//! sentence without it). Both tools run as child processes with `-c 512` and the same `--chunks`;
//! llama-perplexity with an f32 KV cache and flash attention off (the configuration in which the
//! two agree on PPL, REFERENCE §7.1) and `-b 512`, one sequence per decode: its default batch
//! (2048, n_seq = 4) was slower here (each sequence's attention spans the whole 2048-entry KV
//! cache under a mask, and the logits buffer holds 4 × 512 × n_vocab floats: 1.5 GiB peak RSS on
//! the 0.5B model), so `-b 512` is the peer at its best.
//!
//! tokens/s = evaluated tokens (chunks × ctx) per wall second of the whole process (load,
//! tokenize, evaluate), i.e. what a user waits for; ratio = r1q ÷ llama-perplexity at the same
//! threads (> 1: r1q faster). Peak RSS = the child's VmHWM (`/usr/bin/time -v` when installed,
//! else /proc/PID/status polled every 5 ms).
//!
//! Chunk counts are kept small so the whole run takes minutes on 2 cores: 8 chunks on the fixture,
//! 4 on the real model (`R1Q_BENCH_PPL_CHUNKS` overrides the real model's). Layer-major evaluation
//! dequantizes each layer once per run, so more chunks favour r1q slightly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Chunk length of every run (llama-perplexity's default).
const CTX: usize = 512;

/// Chunks evaluated on the fixture GGUFs.
const FIXTURE_CHUNKS: usize = 8;

/// Chunks evaluated on the real model unless `R1Q_BENCH_PPL_CHUNKS` says otherwise.
const REAL_CHUNKS: usize = 4;

/// One child run: wall time, peak RSS, and what it reported.
struct Sample {
    secs: f64,
    rss_mib: f64,
    chunks: usize,
    ppl: f64,
}

/// Builds the release binary, prepares the fixture GGUFs, runs both tools and prints the table.
pub fn run(reps: usize) -> Result<()> {
    let bin = super::bench_common::release_r1q()?;
    let lp = super::bench_common::peer("llama-perplexity")?;
    let work = super::bench_common::work_dir("bench-perplexity")?;
    let text = eval_text(&work)?;

    let cases = super::bench_common::fixture_and_real_cases(
        &bin,
        &work,
        fixtures::Arch::Qwen2,
        FIXTURE_CHUNKS,
        reps,
        "R1Q_BENCH_PPL_CHUNKS",
        REAL_CHUNKS,
    )?;

    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1];
    if all > 1 {
        threads.push(all);
    }
    let rss = if Path::new("/usr/bin/time").is_file() {
        "/usr/bin/time -v"
    } else {
        "/proc VmHWM polling"
    };
    println!(
        "`perplexity -c {CTX}` on wiki-eval.txt, r1q vs llama-perplexity (-b {CTX} -ctk f32 -ctv f32 \
         -fa off), best of the repetitions shown; tokens/s = chunks×ctx per wall second of \
         the whole process; ratio = r1q ÷ llama (> 1: r1q faster); peak RSS by {rss}.\n"
    );
    println!(
        "| model | GGUF MB | chunks | threads | reps | r1q tok/s | llama tok/s | ratio | r1q peak RSS MiB | llama peak RSS MiB | PPL r1q / llama |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for case in &cases {
        let mb = std::fs::metadata(&case.gguf)?.len() as f64 / 1e6;
        let (c, n) = (CTX.to_string(), case.chunks.to_string());
        for &t in &threads {
            let ts = t.to_string();
            let ours = best(case.reps, || {
                let mut cmd = Command::new(&bin);
                cmd.arg("perplexity")
                    .arg(&case.gguf)
                    .arg("-f")
                    .arg(&text)
                    .args(["-c", &c, "--chunks", &n, "-t", &ts]);
                measure_retrying(&cmd)
            })?;
            let theirs = best(case.reps, || {
                let mut cmd = Command::new(&lp);
                cmd.arg("-m")
                    .arg(&case.gguf)
                    .arg("-f")
                    .arg(&text)
                    .args(["-c", &c, "-b", &c, "--chunks", &n, "-t", &ts, "-ngl", "0"])
                    .args(["-ctk", "f32", "-ctv", "f32", "-fa", "off"]);
                measure_retrying(&cmd)
            })?;
            if ours.chunks != theirs.chunks {
                bail!(
                    "{}: r1q evaluated {} chunks, llama-perplexity {}",
                    case.label,
                    ours.chunks,
                    theirs.chunks
                );
            }
            let tps = |s: &Sample| (s.chunks * CTX) as f64 / s.secs.max(1e-9);
            println!(
                "| {} | {mb:.0} | {} | {t} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.4} / {:.4} |",
                case.label,
                ours.chunks,
                case.reps,
                tps(&ours),
                tps(&theirs),
                tps(&ours) / tps(&theirs),
                ours.rss_mib,
                theirs.rss_mib,
                ours.ppl,
                theirs.ppl
            );
        }
    }
    Ok(())
}

/// wiki-eval.txt from ../shared/data, or (without it) a repeated English sentence written to `work`.
fn eval_text(work: &Path) -> Result<PathBuf> {
    if let Some(data) = fixtures::support::shared_data() {
        let p = data.join("text/wiki-eval.txt");
        if p.is_file() {
            return Ok(p);
        }
    }
    let p = work.join("eval.txt");
    std::fs::write(
        &p,
        "The quick brown fox jumps over the lazy dog. ".repeat(4000),
    )?;
    Ok(p)
}

/// The fastest of `reps` samples (peak RSS: the largest seen).
fn best(reps: usize, mut f: impl FnMut() -> Result<Sample>) -> Result<Sample> {
    let mut out: Option<Sample> = None;
    for _ in 0..reps.max(1) {
        let s = f()?;
        out = Some(match out {
            Some(b) if b.secs <= s.secs => Sample {
                rss_mib: b.rss_mib.max(s.rss_mib),
                ..b
            },
            Some(b) => Sample {
                rss_mib: b.rss_mib.max(s.rss_mib),
                ..s
            },
            None => s,
        });
    }
    out.context("no repetitions")
}

/// [`measure`], run again (up to 5 times) when the child succeeded but its output lacks the PPL:
/// llama-perplexity's logger sometimes exits without flushing its last lines (REFERENCE §8).
fn measure_retrying(cmd: &Command) -> Result<Sample> {
    let mut last = None;
    for _ in 0..5 {
        let mut again = Command::new(cmd.get_program());
        again.args(cmd.get_args());
        match measure(again)? {
            Ok(sample) => return Ok(sample),
            Err(log) => last = Some(log),
        }
    }
    bail!(
        "no PPL in 5 runs of {:?}:\n{}",
        cmd.get_args().collect::<Vec<_>>(),
        last.unwrap_or_default()
    )
}

/// Runs `cmd` to completion, timing it and recording its peak RSS; parses the chunk count and the
/// final PPL (llama-perplexity sometimes exits without flushing its last log lines: then the last
/// running `[N]X,` estimate, the same number, is used).
///
/// `Ok(Err(log))` when the child succeeded but its output has no PPL or chunk count.
fn measure(cmd: Command) -> Result<std::result::Result<Sample, String>> {
    let time = Path::new("/usr/bin/time");
    let (mut cmd, via_time) = if time.is_file() {
        let mut wrapped = Command::new(time);
        wrapped
            .arg("-v")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        (wrapped, true)
    } else {
        (cmd, false)
    };
    let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take().context("no stdout pipe")?;
    let mut se = child.stderr.take().context("no stderr pipe")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut so, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut se, &mut s);
        s
    });
    let mut polled_kib = 0u64;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if !via_time {
            polled_kib = polled_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = start.elapsed().as_secs_f64();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let log = format!("{stdout}\n{stderr}");
    if !status.success() {
        bail!("{what} failed ({status}):\n{log}");
    }
    let kib = if via_time {
        after(&log, "Maximum resident set size (kbytes):").unwrap_or(0.0) as u64
    } else {
        polled_kib
    };
    let Some(chunks) = after(&log, "calculating perplexity over").map(|n| n as usize) else {
        return Ok(Err(log));
    };
    let Some(ppl) = after(&log, "Final estimate: PPL =").or_else(|| last_running(&log, chunks))
    else {
        return Ok(Err(log));
    };
    Ok(Ok(Sample {
        secs,
        rss_mib: kib as f64 / 1024.0,
        chunks,
        ppl,
    }))
}

/// VmHWM of a live process in KiB, from /proc/PID/status.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The number right after the first occurrence of `key` in `log`.
fn after(log: &str, key: &str) -> Option<f64> {
    let at = log.find(key)? + key.len();
    log.get(at..)?
        .split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

/// The running estimate `[n]X,` after the last chunk.
fn last_running(log: &str, n: usize) -> Option<f64> {
    let rest = log.rsplit(&format!("[{n}]")).next()?;
    rest.split(',').next()?.trim().parse().ok()
}
