//! The hub client: `r1q pull` and `r1q convert ORG/NAME` fetch checkpoints from the Hugging Face
//! hub (or a mirror) into huggingface_hub's own cache, so the Python tools and r1q share files.
//!
//! What it guarantees: a revision is pinned to a commit before anything is fetched; every LFS
//! file's sha256 (and every small file's git blob sha1) is computed while streaming and checked
//! before the file becomes visible under `snapshots/`; interrupted downloads resume with HTTP
//! `Range` from `blobs/<etag>.incomplete` (the bytes on disk are hashed first); transient
//! failures are retried ([`retry`]); 401/403/404 stop at once with what to do; a per-repo lock
//! keeps two r1q processes from writing the same files; free space is checked first.
//!
//! ## Why `ureq` and our own cache code, not `hf-hub`
//!
//! `hf-hub` 0.5 has the cache layout, `HF_ENDPOINT`, revision pinning and Range resume, but it
//! never verifies sha256, gives no per-chunk hook to hash while streaming (verifying afterwards
//! means reading 690 GB a second time), no control over which headers follow a redirect, no
//! per-file byte progress we can route to our own bars, and 1.0 dropped resume altogether (and
//! builds for 11 minutes). What this module needs on top of HTTP — the cache layout, a JSON
//! listing, Range, retries — is a few hundred lines, so it is `ureq` 3 (blocking, small,
//! rustls for https, gzip off so byte counts and ranges are exact) plus the code here.
//!
//! Environment (as huggingface_hub reads it): `HF_ENDPOINT`, `HF_TOKEN` (else
//! `HF_TOKEN_PATH` or `$HF_HOME/token`), `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`.
//!
//! Not for: uploading, datasets/spaces, Xet storage (the hub still serves every file over plain
//! HTTP `resolve` URLs).

pub mod api;
pub mod cache;
pub mod disk;
pub mod download;
pub mod error;
pub mod glob;
mod http;
pub mod retry;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use api::{RemoteFile, RepoId};
pub use cache::RepoCache;
pub use download::Outcome;
pub use error::HubError;
pub use retry::RetryPolicy;

/// Default number of files downloaded at once: enough to fill a fast link from the CDN (one
/// TCP stream rarely does), few enough not to thrash a spinning disk.
pub const DEFAULT_JOBS: usize = 6;

/// Where and how to talk to the hub; [`HubConfig::from_env`] reads what users already set.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// Bearer token, sent only to the endpoint's own origin.
    pub token: Option<String>,
    /// The hub cache root (`HF_HUB_CACHE`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: use only what is cached.
    pub offline: bool,
    /// Backoff policy.
    pub retry: RetryPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while waiting for a response or body bytes.
    pub read_timeout: Duration,
}

impl HubConfig {
    /// The configuration huggingface_hub would use in this environment.
    pub fn from_env() -> HubConfig {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let home = var("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        HubConfig {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            token,
            cache_dir,
            offline,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// What to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
    /// fnmatch patterns; a file must match one (if any are given).
    pub include: Vec<String>,
    /// fnmatch patterns; a file matching one is skipped.
    pub exclude: Vec<String>,
    /// Also place the files in this directory (hard links to the cache blobs where possible).
    pub local_dir: Option<PathBuf>,
    /// Files downloaded at once (≥ 1).
    pub jobs: usize,
}

impl PullOptions {
    /// Everything of `repo` at `main`, [`DEFAULT_JOBS`] at once.
    pub fn new(repo: &str) -> PullOptions {
        PullOptions {
            repo: repo.to_string(),
            revision: "main".to_string(),
            include: Vec::new(),
            exclude: Vec::new(),
            local_dir: None,
            jobs: DEFAULT_JOBS,
        }
    }
}

/// Receives progress from the download threads (the CLI draws bars or log lines from it).
/// Every method has an empty default.
pub trait Progress: Sync {
    /// The listing is known: `files` selected, `total` bytes, of which `cached` need no download.
    fn planned(&self, _files: usize, _total: u64, _cached: u64) {}
    /// Another process holds the repo lock; this one waits for it.
    fn waiting_for_lock(&self, _lock: &Path) {}
    /// A download starts (`resumed_from` bytes were already on disk).
    fn file_started(&self, _path: &str, _size: u64, _resumed_from: u64) {}
    /// `n` more bytes of `path` arrived.
    fn file_bytes(&self, _path: &str, _n: u64) {}
    /// `path` starts over at byte `at` (the server ignored Range, or the hash did not match).
    fn file_reset(&self, _path: &str, _at: u64) {}
    /// `path` is in the snapshot.
    fn file_done(&self, _path: &str, _size: u64, _outcome: Outcome) {}
    /// A request failed transiently and is retried after `wait`.
    fn retrying(&self, _what: &str, _attempt: u32, _wait: Duration, _why: &str) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// A pulled (or found) snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The commit the revision resolved to.
    pub commit: String,
    /// `snapshots/<commit>` in the cache — or `--local-dir` when one was given.
    pub dir: PathBuf,
    /// The files selected (paths in the repo).
    pub files: Vec<String>,
    /// Bytes downloaded by this run.
    pub downloaded: u64,
}

/// Pulls `opts.repo` at `opts.revision` into the cache (or, offline, finds it there).
pub fn pull(
    cfg: &HubConfig,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Snapshot, HubError> {
    let repo = RepoId::parse(&opts.repo)?;
    let cache = RepoCache::new(&cfg.cache_dir, &repo);
    let snapshot = if cfg.offline {
        offline(&cache, &repo, opts)?
    } else {
        online(cfg, &cache, &repo, opts, progress)?
    };
    match &opts.local_dir {
        Some(dir) => place_in_local_dir(&cache, &snapshot, dir),
        None => Ok(snapshot),
    }
}

fn select(
    files: Vec<RemoteFile>,
    repo: &RepoId,
    revision: &str,
    opts: &PullOptions,
) -> Result<Vec<RemoteFile>, HubError> {
    let total = files.len();
    let sample: Vec<String> = files.iter().take(8).map(|f| f.path.clone()).collect();
    let selected: Vec<RemoteFile> = files
        .into_iter()
        .filter(|f| glob::keep(&f.path, &opts.include, &opts.exclude))
        .collect();
    if selected.is_empty() && total > 0 {
        let patterns = opts
            .include
            .iter()
            .map(|p| format!("--include {p}"))
            .chain(opts.exclude.iter().map(|p| format!("--exclude {p}")))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(HubError::NothingMatched {
            repo: repo.to_string(),
            revision: revision.to_string(),
            patterns,
            available: format!(
                "{total} files: {}{}",
                sample.join(", "),
                if total > 8 { ", …" } else { "" }
            ),
        });
    }
    Ok(selected)
}

fn online(
    cfg: &HubConfig,
    cache: &RepoCache,
    repo: &RepoId,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Snapshot, HubError> {
    let client = http::Client::new(cfg);
    let info = api::repo_info(&client, repo, &opts.revision, progress)?;
    let files = select(info.files.clone(), repo, &opts.revision, opts)?;

    std::fs::create_dir_all(&cache.dir).map_err(|e| HubError::io(&cache.dir, e))?;
    let _lock = cache.lock(|p| progress.waiting_for_lock(p))?;
    cache.write_ref(&opts.revision, &info.commit)?;
    cache.write_tree(&info.commit, &info.files);

    let mut needed = 0u64;
    let mut pending = 0usize;
    let mut cached = 0u64;
    for f in &files {
        let left = download::remaining(cache, &info.commit, f)?;
        if left > 0 {
            pending += 1;
        }
        needed += left;
        cached += f.size - left.min(f.size);
    }
    let blobs = cache.dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
    disk::ensure_space(&blobs, needed, pending)?;
    progress.planned(files.len(), files.iter().map(|f| f.size).sum(), cached);

    let cancel = AtomicBool::new(false);
    let job = download::Job {
        client: &client,
        cache,
        repo,
        revision: &opts.revision,
        commit: &info.commit,
        progress,
        cancel: &cancel,
    };
    let queue = Mutex::new(files.iter().collect::<std::collections::VecDeque<_>>());
    let first_error: Mutex<Option<HubError>> = Mutex::new(None);
    let downloaded = std::sync::atomic::AtomicU64::new(0);
    let jobs = opts.jobs.clamp(1, 64).min(files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                let Some(file) = next else { return };
                match download::fetch(&job, file) {
                    Ok(outcome) => {
                        if let Outcome::Downloaded { resumed_from } = outcome {
                            downloaded.fetch_add(file.size - resumed_from, Ordering::Relaxed);
                        }
                        progress.file_done(&file.path, file.size, outcome);
                    }
                    Err(HubError::Cancelled) => return,
                    Err(e) => {
                        cancel.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or(None) {
        return Err(e);
    }
    Ok(Snapshot {
        dir: cache.snapshot_dir(&info.commit),
        commit: info.commit,
        files: files.into_iter().map(|f| f.path).collect(),
        downloaded: downloaded.into_inner(),
    })
}

/// HF_HUB_OFFLINE: the revision's snapshot from the cache, complete for the selection, or an
/// error saying what is missing.
fn offline(cache: &RepoCache, repo: &RepoId, opts: &PullOptions) -> Result<Snapshot, HubError> {
    let err = |detail: String| HubError::Offline {
        repo: repo.to_string(),
        revision: opts.revision.clone(),
        cache: cache.dir.clone(),
        detail,
    };
    let commit = if api::is_commit(&opts.revision) {
        opts.revision.clone()
    } else {
        cache
            .read_ref(&opts.revision)?
            .ok_or_else(|| err("was never resolved (no refs/ entry)".into()))?
    };
    let snap = cache.snapshot_dir(&commit);
    if !snap.is_dir() {
        return Err(err(format!("has no snapshot for commit {commit}")));
    }
    let listing = match cache.read_tree(&commit) {
        Some(files) => files,
        // No listing: what the snapshot holds is all we can know.
        None => walk(&snap)?
            .into_iter()
            .map(|path| RemoteFile {
                path,
                size: 0,
                sha256: None,
                blob_id: None,
            })
            .collect(),
    };
    let files = select(listing, repo, &opts.revision, opts).map_err(|e| err(e.to_string()))?;
    let missing: Vec<&str> = files
        .iter()
        .filter(|f| !std::fs::metadata(snap.join(&f.path)).is_ok_and(|m| m.is_file()))
        .map(|f| f.path.as_str())
        .collect();
    if files.is_empty() {
        return Err(err(format!("has an empty snapshot for commit {commit}")));
    }
    if !missing.is_empty() {
        return Err(err(format!(
            "is incomplete: {} of {} files missing ({}{})",
            missing.len(),
            files.len(),
            missing
                .iter()
                .take(3)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() > 3 { ", …" } else { "" }
        )));
    }
    Ok(Snapshot {
        dir: snap,
        commit,
        files: files.into_iter().map(|f| f.path).collect(),
        downloaded: 0,
    })
}

/// Relative paths of the files (or links to files) under `dir`.
fn walk(dir: &Path) -> Result<Vec<String>, HubError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| HubError::io(&d, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| HubError::io(&d, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                stack.push((path, rel));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `--local-dir`: each file hard-linked from its cache blob (no extra space; falls back to a
/// copy across filesystems), plus huggingface_hub's `.cache/huggingface/download/<path>.metadata`
/// (commit, etag, time) so its local-dir mode recognises the files.
fn place_in_local_dir(
    cache: &RepoCache,
    snap: &Snapshot,
    dir: &Path,
) -> Result<Snapshot, HubError> {
    for path in &snap.files {
        let src_link = cache.pointer_path(&snap.commit, path);
        let src = std::fs::canonicalize(&src_link).map_err(|e| HubError::io(&src_link, e))?;
        let dst = dir.join(path);
        let parent = dst.parent().unwrap_or(dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| HubError::io(&parent, e))?;
        let same = match (std::fs::metadata(&src), std::fs::metadata(&dst)) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.dev() == b.dev() && a.ino() == b.ino()
            }
            _ => false,
        };
        if !same {
            let tmp = parent.join(format!(".r1q-{}.tmp", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(&src, &tmp).is_err() {
                std::fs::copy(&src, &tmp).map_err(|e| HubError::io(&tmp, e))?;
            }
            std::fs::rename(&tmp, &dst).map_err(|e| HubError::io(&dst, e))?;
        }
        let etag = src
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let meta = dir
            .join(".cache/huggingface/download")
            .join(format!("{path}.metadata"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        cache::write_atomic(
            &meta,
            format!("{}\n{etag}\n{now}\n", snap.commit).as_bytes(),
        )?;
    }
    Ok(Snapshot {
        dir: dir.to_path_buf(),
        ..snap.clone()
    })
}

/// The files `r1q convert` needs from a repo: config, tokenizer, safetensors and their index
/// (not `original/` or other formats).
pub fn convert_patterns() -> Vec<String> {
    ["*.json", "*.safetensors", "tokenizer.model", "*.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// True if `arg` looks like a hub repo id (`org/name`) rather than a path: it does not exist on
/// disk, has exactly one `/`, and only repo-id characters.
pub fn looks_like_repo_id(arg: &Path) -> bool {
    if arg.exists() {
        return false;
    }
    let Some(s) = arg.to_str() else { return false };
    s.matches('/').count() == 1 && !s.starts_with('.') && RepoId::parse(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_check_names_sizes() {
        let dir = std::env::temp_dir();
        let err = disk::ensure_space(&dir, u64::MAX, 3)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("not enough free disk space")
                    && e.contains("3 file(s)")
                    && e.contains("HF_HUB_CACHE")),
            "{err:?}"
        );
        assert!(disk::ensure_space(&dir, 1, 1).is_ok());
    }
}
