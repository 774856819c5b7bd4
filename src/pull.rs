//! `r1q pull REPO_ID`: downloads a checkpoint from the Hugging Face hub into huggingface_hub's
//! cache (resumable, parallel, sha256-verified) and prints the snapshot directory on stdout, so
//! `r1q convert "$(r1q pull org/name)" …` works in scripts. The work is in `convert::hub`.
//!
//! Progress: on a terminal, a total bar (bytes, rate, ETA) and one bar per active file; otherwise
//! one line per finished file (and per retry); nothing but errors with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ::convert::hub::{self, error::human, HubConfig, Outcome, Progress, PullOptions};
use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `r1q pull`.
#[derive(clap::Args)]
pub struct Args {
    /// The repo on the hub, e.g. deepseek-ai/DeepSeek-R1 (HF_ENDPOINT selects a mirror; HF_TOKEN
    /// is sent for gated or private repos).
    repo_id: String,
    /// Branch, tag or commit to pull; pinned to a commit before anything is downloaded.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Only files matching this glob (fnmatch, like huggingface_hub's allow_patterns; `*`
    /// crosses `/`, a trailing `/` means a whole folder). Repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files matching this glob (like ignore_patterns). Repeatable.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Also place the files in DIR (hard links to the cache blobs, copies across filesystems).
    #[arg(long, value_name = "DIR")]
    local_dir: Option<PathBuf>,
    /// Files downloaded at once.
    #[arg(long, short = 'j', default_value_t = hub::DEFAULT_JOBS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    jobs: usize,
    /// No progress output, only errors (the snapshot path is still printed on stdout).
    #[arg(long, short)]
    quiet: bool,
}

/// Pulls and prints the snapshot (or --local-dir) path.
pub fn run(args: &Args) -> Result<()> {
    let cfg = HubConfig::from_env();
    let opts = PullOptions {
        repo: args.repo_id.clone(),
        revision: args.revision.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        local_dir: args.local_dir.clone(),
        jobs: args.jobs,
    };
    let ui = Ui::new(args.quiet);
    let t0 = std::time::Instant::now();
    let snap = hub::pull(&cfg, &opts, &ui)?;
    ui.finish();
    if !args.quiet {
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "r1q: {}@{} (commit {}): {} files, downloaded {} in {:.1} s ({}/s)",
            args.repo_id,
            args.revision,
            snap.commit,
            snap.files.len(),
            human(snap.downloaded),
            secs,
            human((snap.downloaded as f64 / secs) as u64)
        );
    }
    println!("{}", snap.dir.display());
    Ok(())
}

/// For `r1q convert ORG/NAME`: if `arg` is not a path but looks like a repo id, pulls what
/// conversion needs (config, tokenizer files, safetensors and their index) and returns the
/// snapshot directory; otherwise returns `arg` unchanged.
pub fn model_dir(arg: &Path, quiet: bool) -> Result<PathBuf> {
    if !hub::looks_like_repo_id(arg) {
        return Ok(arg.to_path_buf());
    }
    let cfg = HubConfig::from_env();
    let mut opts = PullOptions::new(&arg.to_string_lossy());
    opts.include = hub::convert_patterns();
    if !quiet {
        eprintln!(
            "r1q: {} is not a directory: pulling it from {} into {}",
            arg.display(),
            cfg.endpoint,
            cfg.cache_dir.display()
        );
    }
    let ui = Ui::new(quiet);
    let snap = hub::pull(&cfg, &opts, &ui).map_err(|e| {
        anyhow::anyhow!(
            "{} is neither a directory nor a pullable hub repo: {e}",
            arg.display()
        )
    })?;
    ui.finish();
    Ok(snap.dir)
}

/// Progress display: bars on a terminal, log lines otherwise, nothing when quiet.
struct Ui {
    mode: Mode,
}

enum Mode {
    Quiet,
    Lines,
    Bars {
        multi: MultiProgress,
        total: ProgressBar,
        files: Mutex<HashMap<String, ProgressBar>>,
    },
}

impl Ui {
    fn new(quiet: bool) -> Ui {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template(
                    "{prefix:>5} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            total.set_prefix("total");
            Mode::Bars {
                multi,
                total,
                files: Mutex::new(HashMap::new()),
            }
        } else {
            Mode::Lines
        };
        Ui { mode }
    }

    fn finish(&self) {
        if let Mode::Bars { total, .. } = &self.mode {
            total.finish_and_clear();
        }
    }
}

impl Progress for Ui {
    fn planned(&self, files: usize, total_bytes: u64, cached: u64) {
        match &self.mode {
            Mode::Bars { total, .. } => {
                total.set_length(total_bytes);
                total.set_position(cached);
            }
            Mode::Lines => eprintln!(
                "r1q: {files} files, {}, {} already in the cache",
                human(total_bytes),
                human(cached)
            ),
            Mode::Quiet => {}
        }
    }

    fn waiting_for_lock(&self, lock: &Path) {
        if !matches!(self.mode, Mode::Quiet) {
            eprintln!(
                "r1q: another r1q is pulling this repo; waiting for {}",
                lock.display()
            );
        }
    }

    fn file_started(&self, path: &str, size: u64, resumed_from: u64) {
        match &self.mode {
            Mode::Bars { multi, files, .. } => {
                let bar = multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>5} [{bar:30}] {bytes}/{total_bytes} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix("file");
                bar.set_message(path.to_string());
                bar.set_position(resumed_from);
                if let Ok(mut f) = files.lock() {
                    f.insert(path.to_string(), bar);
                }
            }
            Mode::Lines if resumed_from > 0 => eprintln!(
                "r1q: resuming {path} at {} of {}",
                human(resumed_from),
                human(size)
            ),
            _ => {}
        }
    }

    fn file_bytes(&self, path: &str, n: u64) {
        if let Mode::Bars { total, files, .. } = &self.mode {
            total.inc(n);
            if let Some(bar) = files.lock().ok().and_then(|f| f.get(path).cloned()) {
                bar.inc(n);
            }
        }
    }

    fn file_reset(&self, path: &str, at: u64) {
        if let Mode::Bars { total, files, .. } = &self.mode {
            if let Some(bar) = files.lock().ok().and_then(|f| f.get(path).cloned()) {
                let back = bar.position().saturating_sub(at);
                total.set_position(total.position().saturating_sub(back));
                bar.set_position(at);
            }
        }
    }

    fn file_done(&self, path: &str, size: u64, outcome: Outcome) {
        match &self.mode {
            Mode::Bars { multi, files, .. } => {
                if let Some(bar) = files.lock().ok().and_then(|mut f| f.remove(path)) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
            }
            Mode::Lines => {
                let how = match outcome {
                    Outcome::Cached => "already cached".to_string(),
                    Outcome::Linked => "blob reused from the cache".to_string(),
                    Outcome::Downloaded { resumed_from: 0 } => "downloaded, verified".to_string(),
                    Outcome::Downloaded { resumed_from } => {
                        format!("resumed at {}, verified", human(resumed_from))
                    }
                };
                eprintln!("r1q: {path} ({}): {how}", human(size));
            }
            Mode::Quiet => {}
        }
    }

    fn retrying(&self, what: &str, attempt: u32, wait: Duration, why: &str) {
        let line = format!(
            "r1q: {what}: {why}; retry {attempt} in {:.1} s",
            wait.as_secs_f64()
        );
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(line);
            }
            Mode::Lines => eprintln!("{line}"),
            Mode::Quiet => {}
        }
    }
}
