//! Setup shared by the benchmarks that run the `r1q` binary against a peer tool: the release
//! binary, the peer tool, and bench-preset fixtures converted to GGUF (cached under target/).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Builds `r1q` in release (benchmarks measure optimised code) and returns its path.
pub fn release_r1q() -> Result<PathBuf> {
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
    Ok(root.join("target/release/r1q"))
}

/// The peer's `tool`, or an error saying how to build it.
pub fn peer(tool: &str) -> Result<PathBuf> {
    match fixtures::support::peer_bin(tool) {
        Some(path) => Ok(path),
        None => bail!("the llama.cpp peer is not built: run `cargo xtask peer` first"),
    }
}

/// A fresh (or reused) working directory `target/<name>`.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let work = crate::test::workspace_root().join("target").join(name);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// The bench-preset fixture of `arch` converted by `bin` to `outtype`, in `work`; generated and
/// converted only when not already there, so repeated benchmark runs skip the setup.
pub fn bench_fixture_gguf(
    bin: &Path,
    work: &Path,
    arch: fixtures::Arch,
    outtype: &str,
) -> Result<PathBuf> {
    let model = work.join(format!("{arch}-bench"));
    let gguf = work.join(format!("{arch}-bench.{outtype}.gguf"));
    if gguf.is_file() {
        return Ok(gguf);
    }
    if !model.join("config.json").is_file() {
        let opts = fixtures::Options {
            preset: fixtures::Preset::Bench,
            ..fixtures::Options::default()
        };
        fixtures::write_fixture(arch, &model, &opts)?;
    }
    let res = Command::new(bin)
        .args(["convert", "--quiet", "--outtype", outtype, "-o"])
        .arg(&gguf)
        .arg(&model)
        .output()
        .context("running r1q convert")?;
    if !res.status.success() {
        bail!("r1q convert: {}", String::from_utf8_lossy(&res.stderr));
    }
    Ok(gguf)
}

/// A positive chunk count from the environment variable `var`, else `default`.
pub fn chunks_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// One model a bench measures: a bench-fixture GGUF or the real model.
pub struct Case {
    /// Row label.
    pub label: String,
    /// The GGUF both tools read.
    pub gguf: PathBuf,
    /// Chunks per run.
    pub chunks: usize,
    /// Repetitions (best kept).
    pub reps: usize,
}

/// The cases of a peer bench: `arch`'s bench fixture as F32 and Q8_0 (`fixture_chunks`, `reps`
/// repetitions), then the real model when it is present (`real_chunks`, overridable by
/// `chunks_var`; one repetition: minutes per run on 2 cores).
pub fn fixture_and_real_cases(
    bin: &Path,
    work: &Path,
    arch: fixtures::Arch,
    fixture_chunks: usize,
    reps: usize,
    chunks_var: &str,
    real_chunks: usize,
) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for outtype in ["f32", "q8_0"] {
        cases.push(Case {
            label: format!("{arch} bench fixture {}", outtype.to_uppercase()),
            gguf: bench_fixture_gguf(bin, work, arch, outtype)?,
            chunks: fixture_chunks,
            reps,
        });
    }
    if let Some(real) = fixtures::support::real_model() {
        cases.push(Case {
            label: "Qwen2.5-Coder-0.5B Q4_K_M".into(),
            gguf: real,
            chunks: chunks_from_env(chunks_var, real_chunks),
            reps: 1,
        });
    }
    Ok(cases)
}
