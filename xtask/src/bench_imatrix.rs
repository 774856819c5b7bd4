//! `cargo xtask bench imatrix`: `r1q imatrix` against the peer's `llama-imatrix` on the same GGUF
//! and the same text, with the same threads, in one run.
//!
//! Models: the bench-preset deepseek-v3 fixture (MLA + MoE, the architecture calibration is for)
//! converted to F32 and to Q8_0, and the real small model (Qwen2.5-Coder-0.5B Q4_K_M) when `cargo
//! xtask real-model` has cached it. Text: ../shared/data/text/calibration.txt (a repeated
//! paragraph without it). Both tools run as child processes with `-c 512`, the same `--chunks`
//! and `--no-ppl` (the statistics only); llama-imatrix with its defaults otherwise (default batch:
//! four chunks per decode, f16 KV cache), i.e. how people run it.
//!
//! tokens/s = evaluated tokens (chunks × ctx) per wall second of the whole process (load,
//! tokenize, evaluate, write), what a user waits for; ratio = r1q ÷ llama-imatrix (> 1: r1q
//! faster). Best of the repetitions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Chunk length of every run (llama-imatrix's default).
const CTX: usize = 512;

/// Chunks evaluated on the fixture GGUFs.
const FIXTURE_CHUNKS: usize = 4;

/// Chunks evaluated on the real model (`R1Q_BENCH_IMATRIX_CHUNKS` overrides).
const REAL_CHUNKS: usize = 4;

/// Builds the release binary, prepares the fixture GGUFs, runs both tools and prints the table.
pub fn run(reps: usize) -> Result<()> {
    let bin = super::bench_common::release_r1q()?;
    let li = super::bench_common::peer("llama-imatrix")?;
    let work = super::bench_common::work_dir("bench-imatrix")?;
    let text = calibration_text(&work)?;

    let cases = super::bench_common::fixture_and_real_cases(
        &bin,
        &work,
        fixtures::Arch::DeepseekV3,
        FIXTURE_CHUNKS,
        reps,
        "R1Q_BENCH_IMATRIX_CHUNKS",
        REAL_CHUNKS,
    )?;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "`imatrix -c {CTX} --no-ppl` on calibration.txt, r1q vs llama-imatrix (its defaults, -ngl 0), \
         {threads} threads each; tokens/s = chunks×ctx per wall second of the whole process; \
         ratio = r1q ÷ llama (> 1: r1q faster); best of the repetitions.\n"
    );
    println!("| model | GGUF MB | chunks | threads | reps | r1q tok/s | llama tok/s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let ts = threads.to_string();
    for case in &cases {
        let mb = std::fs::metadata(&case.gguf)?.len() as f64 / 1e6;
        let (c, n) = (CTX.to_string(), case.chunks.to_string());
        let out = work.join("out.imatrix.gguf");
        let ours = best(case.reps, || {
            let mut cmd = Command::new(&bin);
            cmd.arg("imatrix")
                .arg(&case.gguf)
                .arg("-f")
                .arg(&text)
                .arg("-o")
                .arg(&out)
                .args(["-c", &c, "--chunks", &n, "-t", &ts, "--no-ppl", "--quiet"]);
            cmd
        })?;
        let theirs = best(case.reps, || {
            let mut cmd = Command::new(&li);
            cmd.arg("-m")
                .arg(&case.gguf)
                .arg("-f")
                .arg(&text)
                .arg("-o")
                .arg(&out)
                .args(["-c", &c, "--chunks", &n, "-t", &ts, "-ngl", "0", "--no-ppl"]);
            cmd
        })?;
        let tps = |secs: f64| (case.chunks * CTX) as f64 / secs.max(1e-9);
        println!(
            "| {} | {mb:.0} | {} | {threads} | {} | {:.0} | {:.0} | {:.2} |",
            case.label,
            case.chunks,
            case.reps,
            tps(ours),
            tps(theirs),
            tps(ours) / tps(theirs)
        );
    }
    Ok(())
}

/// Best wall seconds of `reps` runs of the command `make` builds; a failed run is an error with
/// its stderr.
fn best(reps: usize, make: impl Fn() -> Command) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let mut cmd = make();
        let t = Instant::now();
        let res = cmd.output().context("running an imatrix tool")?;
        let secs = t.elapsed().as_secs_f64();
        if !res.status.success() {
            let err = String::from_utf8_lossy(&res.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            bail!("{:?} failed: {}", cmd.get_program(), tail.join(" | "));
        }
        best = best.min(secs);
    }
    Ok(best)
}

/// calibration.txt from ../shared/data, or (without it) a repeated paragraph written to `work`.
fn calibration_text(work: &Path) -> Result<PathBuf> {
    if let Some(data) = fixtures::support::shared_data() {
        let p = data.join("text/calibration.txt");
        if p.is_file() {
            return Ok(p);
        }
    }
    let p = work.join("calibration.txt");
    std::fs::write(
        &p,
        "It is a truth universally acknowledged, that a single man in possession of a good \
         fortune, must be in want of a wife. "
            .repeat(2000),
    )?;
    Ok(p)
}
