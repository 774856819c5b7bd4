//! `cargo xtask gpu-check --bundle DIR`: everything `gpu-check` needs, built here, for a GPU
//! machine that has CUDA but no Rust toolchain and no network (the device machines lent to a
//! session are such machines: their image holds the CUDA toolkit and PyTorch, not cargo).
//!
//! The bundle holds stripped release binaries — `r1q` built with `--features cuda`, the `verify`
//! unit-test binary built with `--features cuda` (whose `--ignored gpu_` tests check every NVRTC
//! kernel and cuBLAS on the device against the CPU reference), and `xtask` itself, which
//! generates the fixtures and drives the comparison there — plus the evaluation text and
//! `run.sh`, which finds cuBLAS and NVRTC (the toolkit's or a pip wheel's), puts them on
//! `LD_LIBRARY_PATH` for cudarc's run-time loading, and runs `xtask gpu-check --prebuilt`.
//! Binaries built on this Debian 12 machine (glibc 2.36) run on any newer x86-64 Linux.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::test::workspace_root;

/// File names inside a bundle (also what `--prebuilt` looks for).
pub const R1Q: &str = "r1q";
/// The `verify` unit-test binary built with `--features cuda`.
pub const KERNEL_TESTS: &str = "verify-cuda-tests";
/// The xtask binary (fixtures and the check's driver).
pub const XTASK: &str = "xtask";
/// The evaluation text copied into the bundle.
pub const TEXT: &str = "wiki-eval.txt";
/// The entry point on the GPU machine.
pub const RUN_SH: &str = "run.sh";
/// The cargo arguments that build (and, followed by `--` and filters, run) the `verify` unit
/// tests with the CUDA backend, whose `gpu_` tests need a GPU.
pub const KERNEL_TESTS_CARGO: [&str; 7] = [
    "test",
    "--release",
    "-p",
    "verify",
    "--features",
    "cuda",
    "--lib",
];

/// Builds the binaries and writes the bundle into `dir` (replacing an earlier one).
pub fn make(dir: &Path) -> Result<()> {
    let root = workspace_root();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("-- cargo build --release --features cuda --bin r1q, and xtask");
    cargo(
        &root,
        &["build", "--release", "--features", "cuda", "--bin", "r1q"],
    )?;
    cargo(&root, &["build", "--release", "-p", "xtask"])?;
    println!("-- cargo test --release -p verify --features cuda --lib --no-run");
    let tests = test_binary(&root)?;
    let release = root.join("target/release");
    for (from, name) in [
        (release.join("r1q"), R1Q),
        (release.join("xtask"), XTASK),
        (tests, KERNEL_TESTS),
    ] {
        let to = dir.join(name);
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        strip(&to);
    }
    let text = root.join("../shared/data/text/wiki-eval.txt");
    if text.exists() {
        std::fs::copy(&text, dir.join(TEXT))
            .with_context(|| format!("copying {}", text.display()))?;
    }
    let run = dir.join(RUN_SH);
    std::fs::write(&run, RUN_SCRIPT).with_context(|| format!("writing {}", run.display()))?;
    make_executable(&run)?;
    let bytes: u64 = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "bundle: {} ({:.1} MiB). On the GPU machine, from the repository root:\n  bash {}/{RUN_SH} [gpu-check options]",
        dir.display(),
        bytes as f64 / (1 << 20) as f64,
        dir.strip_prefix(&root).unwrap_or(dir).display()
    );
    Ok(())
}

/// What `run.sh` does on the GPU machine: cuBLAS/NVRTC onto the loader path, then the check.
const RUN_SCRIPT: &str = r#"#!/usr/bin/env bash
# Written by `cargo xtask gpu-check --bundle`. Runs the GPU check with the prebuilt binaries
# beside this script; needs the NVIDIA driver and cuBLAS + NVRTC (CUDA 13 or 12), no Rust.
set -u
B=$(cd "$(dirname "$0")" && pwd)
# cudarc dlopens libcublas/libnvrtc by name: put every directory holding them on the path
# (the CUDA toolkit's lib64, or pip's nvidia-cublas / nvidia-cuda-nvrtc wheels).
for d in $(find /usr/local /opt /usr/lib /usr/lib64 \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' \) \
           -printf '%h\n' 2>/dev/null | sort -u); do
  LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
chmod +x "$B/r1q" "$B/xtask" "$B/verify-cuda-tests"
exec "$B/xtask" gpu-check --prebuilt "$B" "$@"
"#;

/// The path of the `verify` lib test executable, from cargo's JSON messages.
fn test_binary(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(KERNEL_TESTS_CARGO)
        .args(["--no-run", "--message-format=json"])
        .current_dir(root)
        .output()
        .with_context(|| format!("starting {cargo}"))?;
    if !out.status.success() {
        bail!(
            "cargo test --no-run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "verify")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for verify's unit tests")
}

/// Strips debug info (best effort: an unstripped binary works, it is only larger).
fn strip(path: &Path) {
    match Command::new("strip").arg(path).status() {
        Ok(s) if s.success() => {}
        _ => println!("   (could not strip {}; left as is)", path.display()),
    }
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut p = std::fs::metadata(path)?.permissions();
    p.set_mode(0o755);
    std::fs::set_permissions(path, p).with_context(|| format!("chmod {}", path.display()))
}

/// Runs cargo with `args` in `root`, failing on a non-zero exit.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
