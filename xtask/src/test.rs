//! `cargo xtask test`: the whole test suite, runnable on a fresh machine.
//!
//! The interop tests check our bytes against independent implementations (the PyPI `gguf` package,
//! numpy, HF `tokenizers`, and llama.cpp's own tools), so this task first makes sure a venv with
//! pinned versions of those exists under `target/venv` and that the llama.cpp peer is built (cached
//! under `~/.cache/r1q/peer/`, see `cargo xtask peer`), then runs `cargo test` over the workspace
//! with `R1Q_PYTHON` and `R1Q_PEER_BIN` pointing at them. Under CI (`CI` set) it also sets `R1Q_REQUIRE_PEERS=1`, which turns every "skipped:
//! peer missing" into a failure, so CI cannot pass by skipping.
//!
//! Last, the CUDA kernels' source goes through NVRTC (`cuda::tests::nvrtc_compiles_every_kernel`,
//! built with `--features cuda`): NVRTC needs no GPU, and NVIDIA's `nvidia-cuda-nvrtc` wheel in
//! the venv provides `libnvrtc.so`, so a kernel NVRTC rejects fails here instead of on the first
//! GPU machine.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python packages the interop tests use, pinned so results are reproducible.
const PY_REQUIREMENTS: &[&str] = &[
    "gguf==0.19.0",
    "huggingface_hub==2.4.0",
    "numpy==2.4.6",
    "tokenizers==0.23.3",
    // libnvrtc.so (CUDA 13) for compiling the CUDA kernels without a GPU.
    "nvidia-cuda-nvrtc==13.5.37",
];

/// Arguments of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments passed to `cargo test` (after `--workspace`), e.g. a test name filter.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cargo_args: Vec<String>,
}

/// Prepares the venv and runs the workspace's tests.
pub fn run(args: Args) -> Result<()> {
    let root = workspace_root();
    let python = ensure_venv(&root)?;
    let peer_bin = crate::peer::ensure_peer().context("building the llama.cpp peer")?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args(["test", "--workspace"])
        .args(&args.cargo_args)
        .env("R1Q_PYTHON", &python)
        .env("R1Q_PEER_BIN", &peer_bin);
    if std::env::var_os("CI").is_some() {
        cmd.env("R1Q_REQUIRE_PEERS", "1");
    }
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if args.cargo_args.is_empty() {
        nvrtc_test(&root)?;
    }
    Ok(())
}

/// The NVRTC compile test of the CUDA kernels, with the venv's `libnvrtc.so` on the loader path.
fn nvrtc_test(root: &Path) -> Result<()> {
    let lib = nvrtc_lib_dir(&root.join("target/venv"));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args([
        "test",
        "-p",
        "verify",
        "--features",
        "cuda",
        "--lib",
        "nvrtc_",
    ]);
    if let Some(lib) = &lib {
        let old = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        cmd.env("LD_LIBRARY_PATH", format!("{}:{old}", lib.display()));
    }
    if std::env::var_os("CI").is_some() {
        cmd.env("R1Q_REQUIRE_NVRTC", "1");
    }
    let status = cmd.status().context("running the NVRTC test")?;
    if !status.success() {
        bail!("the NVRTC compile test of the CUDA kernels failed ({status})");
    }
    Ok(())
}

/// `site-packages/nvidia/cu13/lib` of the venv (the `nvidia-cuda-nvrtc` wheel's library folder).
fn nvrtc_lib_dir(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13/lib"))
        .find(|p| p.join("libnvrtc.so.13").exists())
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Creates `target/venv` with [`PY_REQUIREMENTS`] unless a stamp says it already has exactly them;
/// returns the venv's interpreter.
fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("r1q-requirements.txt");
    let wanted = PY_REQUIREMENTS.join("\n");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!("xtask: preparing the test venv at {}", venv.display());
    let host = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run_checked(Command::new(&host).args(["-m", "venv"]).arg(&venv)).with_context(|| {
        format!("creating a venv with {host} (set PYTHON to another interpreter)")
    })?;
    run_checked(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PY_REQUIREMENTS),
    )
    .context("installing the test venv's Python packages")?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
