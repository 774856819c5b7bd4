//! `cargo xtask …`: the developer tasks of r1q that are not part of the shipped binary.

mod bench;
mod fixture;
mod gpu_bundle;
mod gpu_check;
mod peer;
mod real_model;
mod test;

use clap::{Parser, Subcommand};

/// Developer tasks: fixtures, the test suite with its Python venv, benchmarks.
#[derive(Parser)]
#[command(name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write a tiny, deterministic checkpoint in the exact layout of a real release.
    Fixture(fixture::Args),
    /// On a GPU machine: build with --features cuda and compare CUDA against the CPU path.
    GpuCheck(gpu_check::Args),
    /// Run the whole test suite after preparing what it needs (the Python venv under target/).
    Test(test::Args),
    /// Measure throughput and print a table.
    Bench(bench::Args),
    /// Build the llama.cpp peer tools (llama-quantize, …) used as the oracle in interop tests.
    Peer(peer::Args),
    /// Download and verify the real small model (Qwen2.5-Coder-0.5B Q4_K_M GGUF) for opt-in tests.
    RealModel(real_model::Args),
}

fn main() {
    let cli = Cli::parse();
    if matches!(cli.task, Task::Bench(_)) && cfg!(debug_assertions) {
        std::process::exit(rerun_in_release());
    }
    let result = match cli.task {
        Task::Fixture(args) => fixture::run(args),
        Task::GpuCheck(args) => gpu_check::run(args),
        Task::Test(args) => test::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Peer(args) => peer::run(args),
        Task::RealModel(args) => real_model::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// Benchmarks measure optimised code only: a debug-built xtask hands the same arguments to a
/// release build of itself and returns its exit code.
fn rerun_in_release() -> i32 {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .current_dir(test::workspace_root())
        .status();
    match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(err) => {
            eprintln!("error: starting a release build of xtask: {err}");
            1
        }
    }
}
