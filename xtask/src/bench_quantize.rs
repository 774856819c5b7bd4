//! `cargo xtask bench quantize`: `r1q quantize --pure` against the peer's `llama-quantize --pure`
//! on the same F32 GGUF (the bench-preset qwen2 fixture converted to f32), per type, at one
//! thread and at all threads, in the same run; checks the two outputs are byte-identical.
//!
//! Both run as child processes (release r1q), so the numbers include everything a user pays for
//! (open, plan, mmap reads, write, fsync for r1q). MB/s = f32 input tensor bytes per second of
//! wall time; ratio = r1q MB/s ÷ llama-quantize MB/s at the same thread count.
//!
//! The IQ4 types, which llama-quantize quantizes at about 15 MB/s, are timed on a one-layer cut
//! of the same fixture (first decoder layer, embeddings and output; `block_count` = 1), so the
//! whole table finishes in a few minutes; both tools still get the same input.
//!
//! `R1Q_BENCH_R1Q=PATH` times another r1q binary (an older build, to compare before and after a
//! change) instead of building the current one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use formats::gguf::{GgufFile, GgufValue, GgufWriter, TensorDecl};

use super::{bench_common, best};

/// Types measured (llama-quantize TYPE names; with --pure every weight matrix gets that type).
const TYPES: [&str; 9] = [
    "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL",
];

/// Types timed on the one-layer cut (llama-quantize is slow on them).
const ONE_LAYER: [&str; 2] = ["IQ4_XS", "IQ4_NL"];

/// Builds the release binary, prepares the F32 GGUFs, runs both tools and prints the table.
pub fn run(reps: usize) -> Result<()> {
    let bin = match std::env::var_os("R1Q_BENCH_R1Q") {
        Some(other) => PathBuf::from(other),
        None => bench_common::release_r1q()?,
    };
    let lq = bench_common::peer("llama-quantize")?;
    let work = bench_common::work_dir("bench-quantize")?;
    let full = bench_common::bench_fixture_gguf(&bin, &work, fixtures::Arch::Qwen2, "f32")?;
    let cut = work.join("qwen2-bench.layer0.f32.gguf");
    if !cut.is_file() {
        first_layer_only(&full, &cut)?;
    }
    let (full_bytes, cut_bytes) = (tensor_bytes(&full)?, tensor_bytes(&cut)?);
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ours, theirs) = (work.join("r1q.gguf"), work.join("llama.gguf"));

    println!(
        "`quantize --pure` of the bench qwen2 fixture at f32 ({:.0} MB of tensors; {} on its \
         first layer only, {:.0} MB), best of {reps}; MB/s = f32 input bytes per wall second of \
         the whole process.\n",
        full_bytes as f64 / 1e6,
        ONE_LAYER.join(" and "),
        cut_bytes as f64 / 1e6,
    );
    println!("| type | threads | r1q MB/s | llama-quantize MB/s | ratio | identical |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut threads = vec![1];
    if all > 1 {
        threads.push(all);
    }
    for ty in TYPES {
        let (input, in_bytes) = if ONE_LAYER.contains(&ty) {
            (&cut, cut_bytes)
        } else {
            (&full, full_bytes)
        };
        for &t in &threads {
            let ts = t.to_string();
            let r = best(reps, || {
                run_tool(
                    Command::new(&bin)
                        .args(["quantize", "--quiet", "--pure", "--threads", &ts])
                        .arg(input)
                        .arg(&ours)
                        .arg(ty),
                )
            })?;
            let l = best(reps, || {
                run_tool(
                    Command::new(&lq)
                        .arg("--pure")
                        .arg(input)
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

/// Bytes of tensor data in the GGUF at `path`.
fn tensor_bytes(path: &Path) -> Result<u64> {
    let f = GgufFile::open(path)?;
    Ok(f.tensors().iter().map(|t| t.nbytes).sum())
}

/// Writes `src` cut to its first decoder layer as a valid one-layer model: every metadata key
/// kept but `<arch>.block_count` = 1, every tensor kept but those of layers 1 and up.
fn first_layer_only(src: &Path, dst: &Path) -> Result<()> {
    let f = GgufFile::open(src)?;
    let arch = f
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .context("no general.architecture")?;
    let key = format!("{arch}.block_count");
    let meta: Vec<(String, GgufValue)> = f
        .metadata()
        .iter()
        .map(|(k, v)| match v {
            GgufValue::U32(_) if *k == key => (k.clone(), GgufValue::U32(1)),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let keep: Vec<_> = f
        .tensors()
        .iter()
        .filter(|t| !t.name.starts_with("blk.") || t.name.starts_with("blk.0."))
        .collect();
    let decls = keep
        .iter()
        .map(|t| TensorDecl::new(t.name.clone(), t.dims.clone(), t.ggml_type))
        .collect();
    let mut w = GgufWriter::create(dst, &meta, decls)?;
    for t in keep {
        w.write_tensor(f.tensor_data(t))?;
    }
    w.finish()?;
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

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}
