//! `cargo xtask gpu-check`: the one script to run on a machine with an NVIDIA GPU. It checks the
//! CUDA backend against the CPU path end to end and prints agreement and tokens/s for both.
//!
//! Two ways to run it: on a GPU machine with cargo, `cargo xtask gpu-check`; on one without a
//! Rust toolchain (the lent device machines), `cargo xtask gpu-check --bundle DIR` here first
//! ([`crate::gpu_bundle`]: prebuilt binaries, the text and `run.sh`), then `bash DIR/run.sh`
//! there, which runs this same check with `--prebuilt DIR`.
//!
//! Steps (each prints what it does; a failing step is reported and the rest still run):
//! 1. `nvidia-smi -L` (informational) and `cargo build --release --features cuda --bin r1q`
//!    (skipped with `--prebuilt`).
//! 2. `cargo test --release -p verify --features cuda --lib -- --ignored gpu_` (or the bundle's
//!    test binary): every NVRTC kernel on the device against the CPU reference, bit for bit, and
//!    cuBLAS against `ops::matmul`.
//! 3. Fixtures (deterministic, seed 0) under the work directory: the tiny deepseek-v3, qwen2 and
//!    llama checkpoints, each as the HF directory itself and converted to Q8_0 and Q4_K_M GGUFs
//!    (F16/BF16, FP8, Q8_0, Q4_K, Q6_K … weights), plus a large deepseek-v3 (`--large`, default
//!    the `gpu` preset: ~3.4 GB of FP8, 128 experts × 7 MoE layers) as its HF directory (FP8
//!    read directly) and as Q4_K_M.
//! 4. For each model: `r1q perplexity` with `--device cpu` and `--device cuda` (PPL must agree
//!    within `--ppl-tolerance`, relative), and for GGUFs `r1q imatrix` on both (every entry's
//!    values within `--imatrix-tolerance`, relative, same entries); wall time → tokens/s.
//!
//! Exit status 1 if any step failed or any comparison disagreed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fixtures::{Arch, Options, Preset};
use formats::imatrix::Imatrix;

use crate::gpu_bundle::{self, cargo};
use crate::test::workspace_root;

/// Arguments of `cargo xtask gpu-check`.
#[derive(clap::Args)]
pub struct Args {
    /// Evaluation text (default: ../shared/data/text/wiki-eval.txt, else a generated text).
    #[arg(long, value_name = "TEXT")]
    text: Option<PathBuf>,
    /// Chunk length in tokens.
    #[arg(short = 'c', long, default_value_t = 256)]
    ctx_size: usize,
    /// Chunks per run.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Largest relative PPL difference CUDA vs CPU that counts as agreement.
    #[arg(long, default_value_t = 1e-3)]
    ppl_tolerance: f64,
    /// Largest relative difference of an imatrix value CUDA vs CPU (sums of squares; f32 GEMMs
    /// in another order).
    #[arg(long, default_value_t = 1e-2)]
    imatrix_tolerance: f64,
    /// The large deepseek-v3 fixture: `gpu` (~3.4 GB FP8), `bench` (~300 MB) or `none`.
    #[arg(long, default_value = "gpu", value_name = "PRESET")]
    large: String,
    /// Use an already built target/release/r1q.
    #[arg(long)]
    skip_build: bool,
    /// Build the binaries here and write a bundle for a GPU machine without cargo into DIR
    /// (then run `bash DIR/run.sh` there); nothing else is done.
    #[arg(long, value_name = "DIR", conflicts_with = "prebuilt")]
    bundle: Option<PathBuf>,
    /// Run from a bundle made by `--bundle` (its r1q, kernel-test binary and text; no cargo).
    #[arg(long, value_name = "DIR")]
    prebuilt: Option<PathBuf>,
    /// Where fixtures and outputs go (default: target/gpu-check, or DIR/work with --prebuilt).
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
}

/// One perplexity (or imatrix) comparison for the summary.
struct Row {
    model: String,
    what: &'static str,
    cpu: Option<f64>,
    cuda: Option<f64>,
    agree: Option<bool>,
    note: String,
    cpu_tps: f64,
    cuda_tps: f64,
}

/// Runs the whole check.
pub fn run(args: Args) -> Result<()> {
    if let Some(dir) = &args.bundle {
        return gpu_bundle::make(dir);
    }
    let large = match args.large.as_str() {
        "none" => None,
        p => Some(
            p.parse::<Preset>()
                .map_err(|e| anyhow::anyhow!("--large: {e}"))?,
        ),
    };
    let root = workspace_root();
    let work = match (&args.work, &args.prebuilt) {
        (Some(w), _) => w.clone(),
        (None, Some(b)) => b.join("work"),
        (None, None) => root.join("target/gpu-check"),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut failures: Vec<String> = Vec::new();
    println!(
        "== gpu-check: the CUDA backend against the CPU path ({})",
        work.display()
    );

    step("GPU present (nvidia-smi -L)");
    match Command::new("nvidia-smi").arg("-L").output() {
        Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Err(e) => println!("   nvidia-smi not found ({e}); continuing — r1q will say if no GPU"),
    }

    let r1q = match &args.prebuilt {
        Some(b) => b.join(gpu_bundle::R1Q),
        None => root.join("target/release/r1q"),
    };
    if !args.skip_build && args.prebuilt.is_none() {
        step("cargo build --release --features cuda --bin r1q");
        cargo(
            &root,
            &["build", "--release", "--features", "cuda", "--bin", "r1q"],
        )?;
    }
    if !r1q.exists() {
        bail!(
            "{} is missing (build it or drop --skip-build)",
            r1q.display()
        );
    }

    step("kernels on the device vs the CPU reference (verify's tests -- --ignored gpu_)");
    // The tests skip (and pass) without a GPU; here a skip is a failure.
    let tests_args = ["--ignored", "--nocapture", "--test-threads", "1", "gpu_"];
    let mut kernels = match &args.prebuilt {
        Some(b) => Command::new(b.join(gpu_bundle::KERNEL_TESTS)),
        None => {
            let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.current_dir(&root)
                .args(gpu_bundle::KERNEL_TESTS_CARGO)
                .arg("--");
            c
        }
    };
    if let Err(e) = run_gpu_tests(kernels.args(tests_args)) {
        failures.push(format!("device kernel test: {e:#}"));
    }

    let text = match (&args.text, &args.prebuilt) {
        (Some(t), _) => t.clone(),
        (None, Some(b)) if b.join(gpu_bundle::TEXT).exists() => b.join(gpu_bundle::TEXT),
        _ => default_text(&root, &work)?,
    };
    println!("   text: {}", text.display());

    step("fixtures");
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    for arch in [Arch::DeepseekV3, Arch::Qwen2, Arch::Llama] {
        let dir = work.join(format!("{arch}-tiny"));
        fixture(arch, Preset::Tiny, &dir)?;
        models.push((format!("{arch} tiny HF"), dir.clone()));
        for ty in ["q8_0", "Q4_K_M"] {
            let out = work.join(format!("{arch}-tiny-{ty}.gguf"));
            convert(&r1q, &dir, &out, ty)?;
            models.push((format!("{arch} tiny {ty}"), out));
        }
    }
    if let Some(preset) = large {
        let dir = work.join(format!("deepseek-v3-{preset}"));
        let start = Instant::now();
        fixture(Arch::DeepseekV3, preset, &dir)?;
        println!("   ({:.1} s)", start.elapsed().as_secs_f64());
        let out = work.join(format!("deepseek-v3-{preset}-Q4_K_M.gguf"));
        let start = Instant::now();
        convert(&r1q, &dir, &out, "Q4_K_M")?;
        println!("   FP8 → Q4_K_M in {:.1} s", start.elapsed().as_secs_f64());
        models.push((format!("deepseek-v3 {preset} HF (FP8)"), dir));
        models.push((format!("deepseek-v3 {preset} Q4_K_M"), out));
    }

    let tokens = (args.ctx_size * args.chunks) as f64;
    let mut rows = Vec::new();
    for (label, path) in &models {
        step(&format!("perplexity {label}"));
        let mut r = Row {
            model: label.clone(),
            what: "PPL",
            cpu: None,
            cuda: None,
            agree: None,
            note: String::new(),
            cpu_tps: 0.0,
            cuda_tps: 0.0,
        };
        for device in ["cpu", "cuda"] {
            let start = Instant::now();
            let out = r1q_run(
                &r1q,
                &[
                    "perplexity".as_ref(),
                    path.as_os_str(),
                    "-f".as_ref(),
                    text.as_os_str(),
                    "-c".as_ref(),
                    args.ctx_size.to_string().as_ref(),
                    "--chunks".as_ref(),
                    args.chunks.to_string().as_ref(),
                    "--device".as_ref(),
                    device.as_ref(),
                ],
            );
            let secs = start.elapsed().as_secs_f64();
            match out.and_then(|o| parse_ppl(&o)) {
                Ok(ppl) => {
                    println!(
                        "   {device}: PPL {ppl:.6} in {secs:.2} s ({:.1} tokens/s)",
                        tokens / secs
                    );
                    if device == "cpu" {
                        (r.cpu, r.cpu_tps) = (Some(ppl), tokens / secs);
                    } else {
                        (r.cuda, r.cuda_tps) = (Some(ppl), tokens / secs);
                    }
                }
                Err(e) => {
                    println!("   {device}: FAILED: {e:#}");
                    let _ = write!(r.note, "{device} failed; ");
                }
            }
        }
        if let (Some(a), Some(b)) = (r.cpu, r.cuda) {
            let rel = (a - b).abs() / a.abs().max(f64::MIN_POSITIVE);
            r.agree = Some(rel <= args.ppl_tolerance);
            let _ = write!(r.note, "rel diff {rel:.2e}");
        }
        rows.push(r);

        if path.extension().is_some_and(|e| e == "gguf") {
            step(&format!("imatrix {label}"));
            rows.push(imatrix_row(&r1q, label, path, &text, &work, &args, tokens));
        }
    }

    println!(
        "\n== summary (tolerances: PPL {:.0e}, imatrix {:.0e})",
        args.ppl_tolerance, args.imatrix_tolerance
    );
    println!(
        "{:32} {:8} {:>14} {:>14} {:>10} {:>10}  {:6} note",
        "model", "what", "cpu", "cuda", "cpu tok/s", "cuda tok/s", "agree"
    );
    for r in &rows {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.6}"));
        let agree = match r.agree {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:32} {:8} {:>14} {:>14} {:>10.1} {:>10.1}  {:6} {}",
            r.model,
            r.what,
            f(r.cpu),
            f(r.cuda),
            r.cpu_tps,
            r.cuda_tps,
            agree,
            r.note
        );
        if r.agree != Some(true) {
            failures.push(format!("{} {}: {}", r.model, r.what, r.note));
        }
    }
    if failures.is_empty() {
        println!("\ngpu-check: all comparisons agree");
        Ok(())
    } else {
        bail!(
            "gpu-check: {} problem(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        )
    }
}

/// `r1q imatrix` on both devices; compares every entry's importance weights.
fn imatrix_row(
    r1q: &Path,
    label: &str,
    model: &Path,
    text: &Path,
    work: &Path,
    args: &Args,
    tokens: f64,
) -> Row {
    let mut r = Row {
        model: label.to_string(),
        what: "imatrix",
        cpu: None,
        cuda: None,
        agree: None,
        note: String::new(),
        cpu_tps: 0.0,
        cuda_tps: 0.0,
    };
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut files = Vec::new();
    for device in ["cpu", "cuda"] {
        let out = work.join(format!("{stem}.{device}.imatrix.gguf"));
        let start = Instant::now();
        let res = r1q_run(
            r1q,
            &[
                "imatrix".as_ref(),
                model.as_os_str(),
                "-f".as_ref(),
                text.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
                "-c".as_ref(),
                args.ctx_size.to_string().as_ref(),
                "--chunks".as_ref(),
                args.chunks.to_string().as_ref(),
                "--device".as_ref(),
                device.as_ref(),
            ],
        );
        let secs = start.elapsed().as_secs_f64();
        match res {
            Ok(_) => {
                println!(
                    "   {device}: {} in {secs:.2} s ({:.1} tokens/s)",
                    out.display(),
                    tokens / secs
                );
                if device == "cpu" {
                    r.cpu_tps = tokens / secs;
                } else {
                    r.cuda_tps = tokens / secs;
                }
                files.push(out);
            }
            Err(e) => {
                println!("   {device}: FAILED: {e:#}");
                let _ = write!(r.note, "{device} failed; ");
            }
        }
    }
    if let [a, b] = files.as_slice() {
        match compare_imatrix(a, b) {
            Ok((entries, worst)) => {
                r.cpu = Some(entries as f64);
                r.cuda = Some(worst);
                r.agree = Some(worst <= args.imatrix_tolerance);
                let _ = write!(
                    r.note,
                    "{entries} entries; cuda column = worst rel diff {worst:.2e}"
                );
            }
            Err(e) => {
                r.agree = Some(false);
                let _ = write!(r.note, "{e:#}");
            }
        }
    }
    r
}

/// (entries, worst relative difference of any importance weight) between two imatrix files
/// that must hold the same entries.
fn compare_imatrix(a: &Path, b: &Path) -> Result<(usize, f64)> {
    let (a, b) = (Imatrix::load(a)?, Imatrix::load(b)?);
    let (ka, kb): (Vec<_>, Vec<_>) = (a.entries.keys().collect(), b.entries.keys().collect());
    if ka != kb {
        bail!("the CPU and CUDA imatrix files name different tensors");
    }
    let mut worst = 0f64;
    for name in a.entries.keys() {
        let (wa, wb) = (
            a.weights(name).unwrap_or_default(),
            b.weights(name).unwrap_or_default(),
        );
        if wa.len() != wb.len() {
            bail!("{name}: {} vs {} values", wa.len(), wb.len());
        }
        for (x, y) in wa.iter().zip(&wb) {
            let rel = f64::from((x - y).abs()) / f64::from(x.abs()).max(1e-12);
            worst = worst.max(rel);
        }
    }
    Ok((a.entries.len(), worst))
}

fn step(what: &str) {
    println!("\n-- {what}");
}

/// Runs the `gpu_` tests, showing their output; fails on a non-zero exit or on any test that
/// skipped for want of a GPU.
fn run_gpu_tests(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    print!("{stdout}{stderr}");
    if !out.status.success() {
        bail!("the gpu_ tests failed ({})", out.status);
    }
    let skipped = format!("{stdout}{stderr}").matches("SKIP gpu test").count();
    if skipped > 0 {
        bail!("{skipped} gpu_ test(s) skipped: the CUDA backend did not open");
    }
    Ok(())
}

/// Runs r1q, echoing its stderr; returns stdout.
fn r1q_run(r1q: &Path, args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = Command::new(r1q)
        .args(args)
        .output()
        .with_context(|| format!("starting {}", r1q.display()))?;
    let err = String::from_utf8_lossy(&out.stderr);
    for line in err
        .lines()
        .filter(|l| l.contains("device") || l.starts_with("error"))
    {
        println!("   | {line}");
    }
    if !out.status.success() {
        bail!(
            "r1q {:?} failed ({}): {}",
            args.first(),
            out.status,
            err.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number after `Final estimate: PPL = `.
fn parse_ppl(stdout: &str) -> Result<f64> {
    let Some(rest) = stdout.split("Final estimate: PPL = ").nth(1) else {
        bail!("no `Final estimate: PPL = ` line in the output");
    };
    rest.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("unreadable PPL value")
}

fn fixture(arch: Arch, preset: Preset, dir: &Path) -> Result<()> {
    if dir.join("config.json").exists() {
        println!("   {arch} {preset}: {} (exists)", dir.display());
        return Ok(());
    }
    let opts = Options {
        seed: 0,
        preset,
        tokenizer: None,
    };
    let s = fixtures::write_fixture(arch, dir, &opts)?;
    println!("   {arch} {preset}: {} ({} bytes)", dir.display(), s.bytes);
    Ok(())
}

fn convert(r1q: &Path, dir: &Path, out: &Path, ty: &str) -> Result<()> {
    if out.exists() {
        return Ok(());
    }
    r1q_run(
        r1q,
        &[
            "convert".as_ref(),
            dir.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--outtype".as_ref(),
            ty.as_ref(),
            "--quiet".as_ref(),
        ],
    )
    .map(|_| println!("   {}", out.display()))
}

/// ../shared/data/text/wiki-eval.txt, or (absent) a generated text long enough for the chunks.
fn default_text(root: &Path, work: &Path) -> Result<PathBuf> {
    let shared = root.join("../shared/data/text/wiki-eval.txt");
    if shared.exists() {
        return Ok(shared);
    }
    let path = work.join("generated.txt");
    let mut s = String::new();
    for i in 0..20_000 {
        let _ = write!(
            s,
            "The {i}th line of a generated text, number {}, ends here. ",
            i * 7919 % 1000
        );
    }
    std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_final_ppl_line() {
        let out = "[1]12.5,[2]11.0,\nFinal estimate: PPL = 10.9876 +/- 0.12345\n";
        assert_eq!(parse_ppl(out).expect("ppl"), 10.9876);
        assert!(parse_ppl("nothing").is_err());
    }
}
