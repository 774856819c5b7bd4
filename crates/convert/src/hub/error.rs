//! [`HubError`]: why a pull failed, as one line that names the repo, file or URL and what to do.
//!
//! Causes are part of each message (fields named `error`, not `source`), like
//! [`crate::ConvertError`]: a `{:#}` rendering of the chain would otherwise print them twice.

use std::path::PathBuf;

/// Why a pull (or an offline look-up in the cache) failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repo id is not `name` or `org/name` with the hub's characters.
    #[error("`{repo}` is not a hub repo id ({detail}); expected `org/name`, e.g. deepseek-ai/DeepSeek-R1")]
    InvalidRepoId {
        /// What the user gave.
        repo: String,
        /// What is wrong with it.
        detail: String,
    },
    /// HTTP 404: the repo, the revision or a file does not exist (or is private and no token was
    /// sent — the hub answers 404 then).
    #[error("{url}: not found (HTTP 404{code}): {what}; check the repo id `{repo}` and the revision `{revision}` (a private repo also answers 404 without HF_TOKEN)")]
    NotFound {
        /// Repo id.
        repo: String,
        /// Revision as given (branch, tag or commit).
        revision: String,
        /// The URL that answered 404.
        url: String,
        /// `, X-Error-Code: …` when the hub said which part was missing, else empty.
        code: String,
        /// What was being looked up (the repo/revision, or a file at a commit).
        what: String,
    },
    /// HTTP 401/403: the repo is gated or private and the token is missing, invalid or not yet
    /// granted access.
    #[error("{url}: access denied (HTTP {status}{code}) for `{repo}`: {advice}")]
    Unauthorized {
        /// Repo id.
        repo: String,
        /// The URL that refused.
        url: String,
        /// 401 or 403.
        status: u16,
        /// `, X-Error-Code: …` when the hub gave one, else empty.
        code: String,
        /// What to do: accept the licence on the hub, set HF_TOKEN, or check its scope.
        advice: String,
    },
    /// An HTTP status that retrying cannot fix, or a transient one that outlasted every retry.
    #[error("{url}: HTTP {status}{detail}")]
    Http {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// `: …` with the hub's message and how many attempts were made, or empty.
        detail: String,
    },
    /// The connection failed (refused, reset, timed out, cut mid-body) on every attempt.
    #[error(
        "{url}: {error} (gave up after {attempts} attempts; check the network or HF_ENDPOINT)"
    )]
    Network {
        /// The URL.
        url: String,
        /// The last failure.
        error: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The server answered something r1q cannot use: bad JSON, missing fields, a wrong
    /// Content-Length or Content-Range, too many redirects, unsafe file names.
    #[error("{url}: bad response: {detail}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// A downloaded file's hash differs from what the hub lists, on every attempt; nothing was
    /// kept.
    #[error("{repo}/{file}: {algo} mismatch after {attempts} downloads: expected {expected}, got {actual}; nothing was kept in the cache")]
    Checksum {
        /// Repo id.
        repo: String,
        /// Path of the file in the repo.
        file: String,
        /// `sha256` (LFS files) or `git sha1` (small files).
        algo: &'static str,
        /// Hash listed by the hub.
        expected: String,
        /// Hash of what arrived.
        actual: String,
        /// How many complete downloads were tried.
        attempts: u32,
    },
    /// Reading or writing the cache (or `--local-dir`) failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The disk holding the cache lacks room for what remains to be downloaded.
    #[error("not enough free disk space in {}: {} needed for {files} file(s), {} available; free {} or point HF_HUB_CACHE (or --local-dir) at a larger disk", dir.display(), human(*needed), human(*available), human(needed.saturating_sub(*available)))]
    DiskFull {
        /// The directory checked.
        dir: PathBuf,
        /// Bytes still to download there.
        needed: u64,
        /// Bytes available to this user.
        available: u64,
        /// How many files are still to download.
        files: usize,
    },
    /// `HF_HUB_OFFLINE` is set and the cache cannot answer: the revision was never pulled, or
    /// its snapshot lacks files.
    #[error("HF_HUB_OFFLINE is set and {repo}@{revision} {detail} in {}; pull it once online (unset HF_HUB_OFFLINE)", cache.display())]
    Offline {
        /// Repo id.
        repo: String,
        /// Revision as given.
        revision: String,
        /// The repo's cache folder.
        cache: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// `--include`/`--exclude` left nothing to download.
    #[error("{repo}@{revision}: no file matches the include/exclude patterns ({patterns}); the repo has {available}")]
    NothingMatched {
        /// Repo id.
        repo: String,
        /// Revision.
        revision: String,
        /// The patterns given.
        patterns: String,
        /// A sample of the repo's files.
        available: String,
    },
    /// The pull stopped because another file failed first (only seen for the other files).
    #[error("cancelled")]
    Cancelled,
}

impl HubError {
    /// Shorthand for [`HubError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        HubError::Io {
            path: path.into(),
            error,
        }
    }
}

/// Bytes as GB/MB/KB with one decimal, for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, scale) in UNITS {
        if bytes as f64 >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale);
        }
    }
    format!("{bytes} B")
}
