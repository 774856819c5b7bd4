//! `cargo xtask bench convert`: end-to-end conversion throughput and peak memory of the shipped
//! binary, FP8 → bf16 and FP8 → q8_0, on the deepseek-v3 fixture at two sizes.
//!
//! Runs `r1q convert` (release build) as a child, so the numbers include everything a user pays
//! for (open, plan, tokenizer metadata, mmap reads, fsync, rename). Throughput is checkpoint bytes
//! (all shard files) per second of the conversion itself, as the binary reports it; peak RSS is the
//! child's own VmHWM, printed in its summary line. The two sizes show that peak memory follows the
//! pipeline's formula (threads and chunk size), not the model size.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Output types measured.
const OUTTYPES: [&str; 2] = ["bf16", "q8_0"];

/// The pipeline's default chunk (f32 bytes) and the kv_b scratch of the bench fixture, for the
/// bound column: W·(2.5·C + K) with W = 2·threads.
const CHUNK_BYTES: f64 = (8 << 20) as f64;

struct Run {
    secs: f64,
    rss_mib: f64,
    tensors: u64,
}

/// Builds the release binary, writes both fixtures and prints the table.
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
    let work = root.join("target/bench-convert");
    std::fs::create_dir_all(&work)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let w = 2.0 * threads as f64;
    let k = 128.0 * 256.0 * 4.0;
    let bound_mib = w * (2.5 * CHUNK_BYTES + k) / (1 << 20) as f64;

    println!(
        "`r1q convert` on the deepseek-v3 fixture (FP8 weights), {threads} threads, best of {reps}; \
         GB/s = checkpoint bytes (all shards) per second; peak RSS = the child's VmHWM. \
         Pipeline bound W·(2.5·C + K) = {bound_mib:.0} MiB + base (W = {w}, C = 8 MiB).\n"
    );
    println!(
        "| fixture | checkpoint MB | outtype | output MB | s | GB/s | tensors/s | peak RSS MiB |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for preset in [fixtures::Preset::Tiny, fixtures::Preset::Bench] {
        let dir = work.join(format!("deepseek-v3-{preset}"));
        let opts = fixtures::Options {
            preset,
            ..fixtures::Options::default()
        };
        let summary = fixtures::write_fixture(fixtures::Arch::DeepseekV3, &dir, &opts)?;
        for outtype in OUTTYPES {
            let out = work.join(format!("deepseek-v3-{preset}-{outtype}.gguf"));
            let mut best: Option<Run> = None;
            for _ in 0..reps {
                let r = convert_once(&bin, &dir, &out, outtype)?;
                if best.as_ref().is_none_or(|b| r.secs < b.secs) {
                    best = Some(Run {
                        rss_mib: best
                            .as_ref()
                            .map_or(r.rss_mib, |b| b.rss_mib.max(r.rss_mib)),
                        ..r
                    });
                }
            }
            let Some(r) = best else { continue };
            let out_bytes = std::fs::metadata(&out)?.len();
            println!(
                "| {preset} | {:.1} | {outtype} | {:.1} | {:.3} | {:.2} | {:.0} | {:.1} |",
                summary.bytes as f64 / 1e6,
                out_bytes as f64 / 1e6,
                r.secs,
                summary.bytes as f64 / r.secs / 1e9,
                r.tensors as f64 / r.secs,
                r.rss_mib
            );
            let _ = std::fs::remove_file(&out);
        }
    }
    Ok(())
}

/// One `r1q convert --quiet` child; parses its summary line.
fn convert_once(bin: &Path, dir: &Path, out: &PathBuf, outtype: &str) -> Result<Run> {
    let res = Command::new(bin)
        .arg("convert")
        .arg(dir)
        .arg("-o")
        .arg(out)
        .args(["--outtype", outtype, "--quiet"])
        .output()
        .context("running r1q convert")?;
    let line = String::from_utf8_lossy(&res.stderr).into_owned();
    if !res.status.success() {
        bail!("r1q convert failed: {line}");
    }
    let field = |after: &str, before: &str| -> Result<f64> {
        let at = line
            .find(after)
            .with_context(|| format!("no `{after}` in {line:?}"))?
            + after.len();
        let rest = line.get(at..).unwrap_or_default();
        let end = rest.find(before).unwrap_or(rest.len());
        rest.get(..end)
            .unwrap_or_default()
            .trim()
            .parse()
            .with_context(|| format!("parsing `{after}` in {line:?}"))
    };
    Ok(Run {
        secs: field("weights), ", " s,")?,
        rss_mib: field("peak RSS ", " MiB")?,
        tensors: field(": ", " tensors")? as u64,
    })
}
