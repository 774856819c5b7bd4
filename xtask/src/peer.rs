//! `cargo xtask peer`: builds the llama.cpp tools that interop tests use as the oracle.
//!
//! The source is the llama.cpp tree vendored in the PyPI sdist `llama-cpp-python==0.3.36` (PyPI is
//! the one source every machine of this project reaches). Everything lives in a cache outside the
//! checkout ([`fixtures::support::peer_dir`], `~/.cache/r1q/peer/0.3.36/` by default), so a fresh
//! clone (CI) reuses an earlier build:
//!
//! ```text
//! sdist/      the downloaded .tar.gz (sha256-pinned)
//! src/        the unpacked sdist (renamed into place only once complete)
//! build/      the cmake build tree; build/bin holds the tools
//! peer.stamp  written only after a successful build: version, cmake flags, targets, oracle hash
//! ```
//!
//! Besides the cmake targets, `build/bin` gets `r1q-quant-oracle` ([`ORACLE_BIN`]): our own small C
//! driver (`xtask/oracle/quant_oracle.c`, embedded in this binary) compiled together with the
//! tree's `ggml/src/ggml-quants.c`, so the codec tests can ask llama.cpp's reference quantizers for
//! their exact bytes row by row without a GGUF round trip.
//!
//! A matching stamp makes [`ensure_peer`] return at once without running anything. An interrupted
//! or failed build leaves no stamp and resumes incrementally on the next call.

use anyhow::{bail, Context, Result};
use fixtures::support::{peer_dir, ORACLE_BIN, PEER_BIN_SUBDIR, PEER_STAMP, PEER_VERSION};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// sha256 of `llama_cpp_python-0.3.36.tar.gz` on PyPI: pip refuses any other bytes.
const SDIST_SHA256: &str = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";

/// cmake cache flags: a portable (AVX2, not `-march=native`) release build of static binaries
/// without libssl/libcurl, so the cached tools run on any x86-64-v3 machine without
/// `LD_LIBRARY_PATH`. Recorded in the stamp: changing them triggers a rebuild.
const CMAKE_FLAGS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
];

/// The tools the interop tests run. `llama-cli` needs `LLAMA_BUILD_SERVER=ON` in this tree, so
/// `llama-completion`/`llama-simple` generate text instead. Targets the tree lacks are skipped.
const TARGETS: &[&str] = &[
    "llama-quantize",
    "llama-perplexity",
    "llama-imatrix",
    "llama-tokenize",
    "llama-gguf-split",
    "llama-simple",
    "llama-completion",
];

/// Our C driver around ggml's quantizers (see the module doc); embedded so the stamp's hash and the
/// compiled program always agree.
const ORACLE_SOURCE: &str = include_str!("../oracle/quant_oracle.c");

/// How the oracle is compiled: like ggml-base on x86-64 (no `-march`, so no FMA or F16C; no
/// `-ffast-math`), plus `-ffp-contract=off` so no compiler may fuse a multiply-add the reference
/// code writes as two roundings (REFERENCE §2.2), and `-DNDEBUG` as in cmake's Release build:
/// with asserts on, `nearest_int`'s range assert aborts on degenerate rows (a block of 1e30 next
/// to 0s in the Q4_1 `_impl` search) where llama-quantize goes on and writes bytes. Recorded in
/// the stamp.
const ORACLE_CFLAGS: &[&str] = &["-O2", "-DNDEBUG", "-ffp-contract=off", "-std=gnu11"];

/// Arguments of `cargo xtask peer`.
#[derive(clap::Args)]
pub struct Args {
    /// Print only the bin dir on stdout (building first if needed; progress goes to stderr), for
    /// scripts: `export R1Q_PEER_BIN=$(cargo xtask peer --print-bin-dir)`.
    #[arg(long)]
    print_bin_dir: bool,
}

/// Builds the peer unless the cache already holds a matching build, then prints its bin dir.
pub fn run(args: Args) -> Result<()> {
    let bin = ensure_peer()?;
    if args.print_bin_dir {
        println!("{}", bin.display());
    } else {
        println!("peer: the tools are in {}", bin.display());
    }
    Ok(())
}

/// Makes sure the llama.cpp peer tools are built in the cache and returns their directory, so the
/// test runner and benchmarks can hand it to tests (`R1Q_PEER_BIN`). Returns at once, running
/// nothing, when the stamp matches; otherwise downloads, unpacks, configures and builds whatever
/// is missing (about 15 minutes on 2 cores from scratch).
pub fn ensure_peer() -> Result<PathBuf> {
    let dir = peer_dir().context(
        "neither R1Q_PEER_DIR nor HOME is set: set R1Q_PEER_DIR to a directory for the llama.cpp peer",
    )?;
    let stamp = dir.join(PEER_STAMP);
    let bin = dir.join(PEER_BIN_SUBDIR);
    let wanted = stamp_text();
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted)
        && bin.join("llama-quantize").is_file()
        && bin.join(ORACLE_BIN).is_file()
    {
        return Ok(bin);
    }
    match std::fs::remove_file(&stamp) {
        Ok(()) => eprintln!(
            "peer: the stamp at {} is stale; rebuilding",
            stamp.display()
        ),
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", stamp.display())),
    }
    let cmake = find_tool("cmake").context(
        "cmake not found: install it (Debian/Ubuntu, as root: `apt-get update && apt-get install -y \
         cmake ninja-build`) and rerun `cargo xtask peer`",
    )?;
    eprintln!("peer: cache at {}", dir.display());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sdist = ensure_sdist(&dir)?;
    let source = ensure_source(&dir, &sdist)?;
    let build = dir.join("build");
    configure(&cmake, &source, &build)?;
    let targets = existing_targets(&cmake, &build)?;
    compile(&cmake, &build, &targets)?;
    check_binaries(&bin, &targets)?;
    build_oracle(&dir, &source, &bin)?;
    write_atomically(&stamp, &wanted)?;
    Ok(bin)
}

/// What the stamp must say for a cached build to be reused.
fn stamp_text() -> String {
    format!(
        "llama-cpp-python {PEER_VERSION}\nsdist sha256 {SDIST_SHA256}\ncmake {}\ntargets {}\n\
         oracle {ORACLE_BIN} fnv1a64 {:016x} cflags {}\n",
        CMAKE_FLAGS.join(" "),
        TARGETS.join(" "),
        fnv1a64(ORACLE_SOURCE.as_bytes()),
        ORACLE_CFLAGS.join(" ")
    )
}

/// FNV-1a, 64-bit: enough to notice an edited harness in the stamp (not a security hash).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Compiles [`ORACLE_SOURCE`] with the tree's `ggml-quants.c` into `bin/r1q-quant-oracle` (via a
/// `.partial` file and rename). Uses `$CC` if set, else `gcc`; a few seconds.
fn build_oracle(dir: &Path, source: &Path, bin: &Path) -> Result<()> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let work = dir.join("build/r1q-oracle");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let harness = work.join("quant_oracle.c");
    std::fs::write(&harness, ORACLE_SOURCE)
        .with_context(|| format!("writing {}", harness.display()))?;
    let ggml = source.join("ggml");
    let out = bin.join(ORACLE_BIN);
    let partial = out.with_extension("partial");
    eprintln!("peer: compiling {ORACLE_BIN} with {cc}…");
    let mut cmd = Command::new(&cc);
    cmd.args(ORACLE_CFLAGS)
        .arg("-I")
        .arg(ggml.join("include"))
        .arg("-I")
        .arg(ggml.join("src"))
        .arg("-I")
        .arg(ggml.join("src/ggml-cpu"))
        .arg(&harness)
        .arg(ggml.join("src/ggml-quants.c"))
        .arg("-lm")
        .arg("-o")
        .arg(&partial);
    run_captured(&mut cmd).with_context(|| {
        format!("compiling {ORACLE_BIN} failed (is a C compiler installed? set CC to choose one)")
    })?;
    std::fs::rename(&partial, &out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))
}

/// `Ok(tool)` when `tool --version` runs; an error saying why not otherwise.
fn find_tool(tool: &str) -> Result<String> {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(tool.to_string()),
        Ok(out) => bail!("`{tool} --version` failed ({})", out.status),
        Err(err) if err.kind() == ErrorKind::NotFound => bail!("`{tool}` is not on PATH"),
        Err(err) => Err(err).with_context(|| format!("starting `{tool} --version`")),
    }
}

/// The sdist tarball in `dir/sdist/`, downloaded with pip (hash-checked) unless already there.
/// pip writes into `sdist.partial/`, renamed into place only when complete.
fn ensure_sdist(dir: &Path) -> Result<PathBuf> {
    let name = format!("llama_cpp_python-{PEER_VERSION}.tar.gz");
    let final_dir = dir.join("sdist");
    let tarball = final_dir.join(&name);
    if tarball.is_file() {
        return Ok(tarball);
    }
    eprintln!("peer: downloading llama-cpp-python {PEER_VERSION} (sdist) from PyPI…");
    let partial = dir.join("sdist.partial");
    remove_dir_if_present(&partial)?;
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let req = partial.join("requirements.txt");
    std::fs::write(
        &req,
        format!("llama-cpp-python=={PEER_VERSION} --hash=sha256:{SDIST_SHA256}\n"),
    )
    .with_context(|| format!("writing {}", req.display()))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"])
        .args(["--disable-pip-version-check", "--require-hashes", "-r"])
        .arg(&req)
        .arg("-d")
        .arg(&partial);
    run_captured(&mut cmd).with_context(|| {
        format!(
            "downloading the sdist with `{python} -m pip` failed: check that PyPI is reachable \
             (or that pip is installed; set PYTHON for another interpreter), or put {name} \
             (sha256 {SDIST_SHA256}) into {} by hand",
            final_dir.display()
        )
    })?;
    let got = partial.join(&name);
    if !got.is_file() {
        bail!("pip reported success but {} is missing", got.display());
    }
    std::fs::create_dir_all(&final_dir)
        .with_context(|| format!("creating {}", final_dir.display()))?;
    std::fs::rename(&got, &tarball)
        .with_context(|| format!("moving {} to {}", got.display(), tarball.display()))?;
    remove_dir_if_present(&partial)?;
    Ok(tarball)
}

/// The llama.cpp tree inside the unpacked sdist under `dir/src/`; unpacks into `src.partial/` and
/// renames, so an existing `src/` is always complete.
fn ensure_source(dir: &Path, tarball: &Path) -> Result<PathBuf> {
    let rel = format!("llama_cpp_python-{PEER_VERSION}/vendor/llama.cpp");
    let src = dir.join("src");
    let tree = src.join(&rel);
    if tree.join("CMakeLists.txt").is_file() {
        return Ok(tree);
    }
    eprintln!("peer: unpacking {}…", tarball.display());
    remove_dir_if_present(&src)?;
    let partial = dir.join("src.partial");
    remove_dir_if_present(&partial)?;
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    run_captured(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(&partial),
    )
    .with_context(|| format!("unpacking {} (is `tar` installed?)", tarball.display()))?;
    if !partial.join(&rel).join("CMakeLists.txt").is_file() {
        bail!(
            "{} does not contain {rel}/CMakeLists.txt; delete it and rerun",
            tarball.display()
        );
    }
    std::fs::rename(&partial, &src)
        .with_context(|| format!("moving {} to {}", partial.display(), src.display()))?;
    Ok(tree)
}

/// Runs the cmake configure step (cheap when the build tree is already configured with the same
/// flags). Uses Ninja when present; a build tree made by another generator is started afresh,
/// since cmake refuses to switch generators in place.
fn configure(cmake: &str, source: &Path, build: &Path) -> Result<()> {
    let ninja = find_tool("ninja").is_ok();
    let generator = if ninja { "Ninja" } else { "Unix Makefiles" };
    if !ninja {
        eprintln!("peer: ninja not found, using make (`apt-get install ninja-build` is faster)");
    }
    let cache = build.join("CMakeCache.txt");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        let previous = text
            .lines()
            .find_map(|l| l.strip_prefix("CMAKE_GENERATOR:INTERNAL="));
        if previous.is_some_and(|g| g != generator) {
            eprintln!("peer: the build tree was made by another generator; starting it afresh");
            remove_dir_if_present(build)?;
        }
    }
    eprintln!("peer: configuring ({generator})…");
    let mut cmd = Command::new(cmake);
    cmd.arg("-S")
        .arg(source)
        .arg("-B")
        .arg(build)
        .args(["-G", generator])
        .args(CMAKE_FLAGS);
    run_captured(&mut cmd).context("cmake configure of the llama.cpp peer failed")
}

/// The [`TARGETS`] this tree defines (asked from the configured build system); missing ones are
/// reported and skipped.
fn existing_targets(cmake: &str, build: &Path) -> Result<Vec<&'static str>> {
    let out = Command::new(cmake)
        .arg("--build")
        .arg(build)
        .args(["--target", "help"])
        .output()
        .context("listing the build's targets")?;
    if !out.status.success() {
        bail!(
            "`cmake --build {} --target help` failed ({}): {}",
            build.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let names = target_names(&listed);
    let mut found = Vec::new();
    for &t in TARGETS {
        if names.contains(&t) {
            found.push(t);
        } else {
            eprintln!("peer: this llama.cpp tree has no target {t}; skipping it");
        }
    }
    if found.is_empty() {
        bail!(
            "none of the peer targets ({}) exist in this tree",
            TARGETS.join(", ")
        );
    }
    Ok(found)
}

/// The target names in the output of `cmake --build … --target help`: Ninja lists `name: phony`,
/// Makefiles list `... name`.
fn target_names(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("... ").split([':', ' ']).next())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Builds `targets` with one job per CPU, streaming the build's output to stderr (stdout stays
/// free for `--print-bin-dir`).
fn compile(cmake: &str, build: &Path, targets: &[&str]) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!(
        "peer: building {} (about 15 minutes on 2 cores)…",
        targets.join(" ")
    );
    let mut cmd = Command::new(cmake);
    cmd.arg("--build")
        .arg(build)
        .args(["-j", &jobs.to_string(), "--target"])
        .args(targets);
    let started = std::time::Instant::now();
    run_streamed(&mut cmd).with_context(|| {
        format!(
            "building the llama.cpp peer failed; rerun `cargo xtask peer` to resume (the build \
             tree {} is incremental)",
            build.display()
        )
    })?;
    eprintln!("peer: built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every built tool must exist and, where `ldd` is available, resolve all its shared libraries
/// (the build is static, so only system libraries should be listed).
fn check_binaries(bin: &Path, targets: &[&str]) -> Result<()> {
    for t in targets {
        let path = bin.join(t);
        if !path.is_file() {
            bail!("the build succeeded but {} is missing", path.display());
        }
        if let Ok(out) = Command::new("ldd").arg(&path).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().find(|l| l.contains("not found")) {
                bail!(
                    "{} needs a library that is not found: {}",
                    path.display(),
                    line.trim()
                );
            }
        }
    }
    Ok(())
}

/// Runs `cmd` with its output captured; on failure the error carries the output's last lines.
fn run_captured(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        bail!(
            "{:?} failed ({}):\n{}",
            cmd.get_program(),
            out.status,
            tail(&text, 30)
        );
    }
    Ok(())
}

/// Runs `cmd` with its stdout copied line by line to our stderr (its stderr inherited); on failure
/// the error repeats the last stdout lines, where compilers' errors usually end up under cmake.
fn run_streamed(cmd: &mut Command) -> Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let mut last: VecDeque<String> = VecDeque::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if last.len() == 30 {
                last.pop_front();
            }
            last.push_back(line);
        }
    }
    let status = child.wait().context("waiting for the build")?;
    if !status.success() {
        let lines: Vec<String> = last.into();
        bail!(
            "{:?} failed ({status}):\n{}",
            cmd.get_program(),
            lines.join("\n")
        );
    }
    Ok(())
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Writes `path` via `path.partial` + rename, so a crash never leaves a half-written stamp.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_records_version_flags_and_targets() {
        let s = stamp_text();
        assert!(s.contains(PEER_VERSION));
        assert!(s.contains("-DBUILD_SHARED_LIBS=OFF"));
        assert!(s.contains("llama-quantize"));
        assert!(s.contains(ORACLE_BIN));
        assert!(s.contains("-ffp-contract=off"));
    }

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn target_names_from_ninja_and_make() {
        let ninja = "llama-quantize: phony\nbuild.ninja: RERUN_CMAKE\n";
        assert_eq!(target_names(ninja), ["llama-quantize", "build.ninja"]);
        let make = "The following are some of the valid targets for this Makefile:\n... all\n\
                    ... llama-quantize\n";
        assert!(target_names(make).contains(&"llama-quantize"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
