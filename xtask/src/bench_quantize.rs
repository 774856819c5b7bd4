//! `cargo xtask bench quantize`: `r1q quantize --pure` against the peer's `llama-quantize --pure`
//! on the same F32 GGUF (the bench-preset qwen2 fixture converted to f32), per type, at one
//! thread and at all threads, in the same run; checks the two outputs are byte-identical.
//!
//! Both run as child processes (release r1q), so the numbers include everything a user pays for
//! (open, plan, mmap reads, write, fsync for r1q). MB/s = f32 input tensor bytes per second of
//! wall time; ratio = r1q MB/s ÷ llama-quantize MB/s at the same thread count.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Types measured (llama-quantize TYPE names; with --pure every weight matrix gets that type).
const TYPES: [&str; 9] = [
    "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL",
];

/// Builds the release binary, prepares the F32 GGUF, runs both tools and prints the table.
pub fn run(reps: usize) -> Result<()> {
    let root = crate::test::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "--release", "--bin", "r1q"])
        .current_dir(&root)
        .status()
        .context("building r1q")?;
    if !status.success() {
        bail!("cargo build --release --bin r1q failed");
    }
    let bin = root.join("target/release/r1q");
    let Some(lq) = fixtures::support::peer_bin("llama-quantize") else {
        bail!("the llama.cpp peer is not built: run `cargo xtask peer` first");
    };
    let work = root.join("target/bench-quantize");
    std::fs::create_dir_all(&work)?;
    let model = work.join("qwen2-bench");
    let f32 = work.join("qwen2-bench.f32.gguf");
    if !f32.is_file() {
        let opts = fixtures::Options {
            preset: fixtures::Preset::Bench,
            ..fixtures::Options::default()
        };
        fixtures::write_fixture(fixtures::Arch::Qwen2, &model, &opts)?;
        let res = Command::new(&bin)
            .args(["convert", "--quiet", "--outtype", "f32", "-o"])
            .arg(&f32)
            .arg(&model)
            .output()?;
        if !res.status.success() {
            bail!("r1q convert: {}", String::from_utf8_lossy(&res.stderr));
        }
    }
    let input = formats::gguf::GgufFile::open(&f32)?;
    let in_bytes: u64 = input.tensors().iter().map(|t| t.nbytes).sum();
    drop(input);
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ours, theirs) = (work.join("r1q.gguf"), work.join("llama.gguf"));

    println!(
        "`quantize --pure` of the bench qwen2 fixture at f32 ({:.0} MB of tensors), best of {reps}; \
         MB/s = f32 input bytes per wall second of the whole process.\n",
        in_bytes as f64 / 1e6
    );
    println!("| type | threads | r1q MB/s | llama-quantize MB/s | ratio | identical |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut threads = vec![1];
    if all > 1 {
        threads.push(all);
    }
    for ty in TYPES {
        for &t in &threads {
            let ts = t.to_string();
            let r = best(reps, || {
                run_tool(
                    Command::new(&bin)
                        .args(["quantize", "--quiet", "--pure", "--threads", &ts])
                        .arg(&f32)
                        .arg(&ours)
                        .arg(ty),
                )
            })?;
            let l = best(reps, || {
                run_tool(
                    Command::new(&lq)
                        .arg("--pure")
                        .arg(&f32)
                        .arg(&theirs)
                        .arg(ty)
                        .arg(&ts),
                )
            })?;
            let same = same_file(&ours, &theirs)?;
            let mbs = |d: Duration| in_bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6;
            println!(
                "| {ty} | {t} | {:.0} | {:.0} | {:.2} | {} |",
                mbs(r),
                mbs(l),
                mbs(r) / mbs(l),
                if same { "yes" } else { "NO" }
            );
            if !same {
                bail!("{ty} at {t} threads: r1q and llama-quantize outputs differ");
            }
        }
    }
    Ok(())
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let res = cmd.output()?;
    if !res.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(())
}

fn best(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}
