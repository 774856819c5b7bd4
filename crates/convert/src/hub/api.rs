//! The one hub API call r1q makes: `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`
//! (huggingface_hub's `model_info(files_metadata=True)`), which pins the revision to a commit and
//! lists every file with its size, git blob id and, for LFS files, sha256.

use serde::Deserialize;

use super::error::HubError;
use super::http::{quote_path, Client, Target};
use super::Progress;

/// Largest API answer accepted (DeepSeek-R1's listing is ~30 kB).
const MAX_API_BYTES: u64 = 64 << 20;

/// A validated repo id, `name` or `org/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoId(String);

impl RepoId {
    /// Checks the characters the hub allows, so the id is safe as a URL part and a folder name.
    pub fn parse(repo: &str) -> Result<RepoId, HubError> {
        let bad = |detail: &str| HubError::InvalidRepoId {
            repo: repo.to_string(),
            detail: detail.to_string(),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.is_empty() || parts.len() > 2 {
            return Err(bad("at most one `/`"));
        }
        for part in &parts {
            if part.is_empty() || part.len() > 96 {
                return Err(bad("empty or too long part"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(bad("only letters, digits, `-`, `_` and `.` are allowed"));
            }
            if part.contains("--")
                || part.contains("..")
                || part.starts_with(['-', '.'])
                || part.ends_with(['-', '.'])
            {
                return Err(bad(
                    "`--` and `..` are not allowed, nor `-`/`.` at either end",
                ));
            }
        }
        Ok(RepoId(repo.to_string()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// huggingface_hub's cache folder name: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.0.replace('/', "--"))
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file of a repo at a commit, as the hub lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path in the repo (`/`-separated, validated: no `..`, no absolute paths).
    pub path: String,
    /// Size in bytes (of the LFS object for LFS files).
    pub size: u64,
    /// sha256 (lowercase hex) for LFS files; also their blob name in the cache.
    pub sha256: Option<String>,
    /// The git blob sha1: the blob name of small (non-LFS) files, and their checksum.
    pub blob_id: Option<String>,
}

impl RemoteFile {
    /// The name of this file's blob in the cache, as huggingface_hub names it (the ETag the hub
    /// sends: sha256 for LFS files, the git sha1 otherwise).
    pub fn etag(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.blob_id.as_deref())
    }
}

/// A revision pinned to a commit, and its files.
#[derive(Clone, Debug)]
pub struct RepoInfo {
    /// The 40-hex commit the revision resolved to.
    pub commit: String,
    /// Every file at that commit.
    pub files: Vec<RemoteFile>,
}

#[derive(Deserialize)]
struct ApiInfo {
    sha: Option<String>,
    siblings: Option<Vec<ApiSibling>>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<ApiLfs>,
}

#[derive(Deserialize)]
struct ApiLfs {
    sha256: Option<String>,
    size: Option<u64>,
}

/// True for a full commit id (40 lowercase hex digits), as huggingface_hub's `REGEX_COMMIT_HASH`.
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40
        && rev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Rejects file names that would escape the snapshot folder or are not plain relative paths.
pub(crate) fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err(format!("unsafe file name {path:?}"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("unsafe file name {path:?}"));
    }
    Ok(())
}

/// Resolves `revision` to a commit and lists the files there (with retries).
pub(crate) fn repo_info(
    client: &Client,
    repo: &RepoId,
    revision: &str,
    progress: &dyn Progress,
) -> Result<RepoInfo, HubError> {
    let url = format!(
        "{}/api/models/{}/revision/{}?blobs=true",
        client.endpoint,
        repo,
        quote_path(revision, false)
    );
    let target = Target {
        repo: repo.as_str(),
        revision,
        what: format!("repo `{repo}` at revision `{revision}`"),
    };
    let body = client.with_retries(progress, &url, || {
        let mut reply = client.get(&url, None, &target)?;
        if reply.status() != 200 {
            return Err(super::http::Failure::fatal(HubError::Http {
                url: reply.url.clone(),
                status: reply.status(),
                detail: ": unexpected status for the repo info".to_string(),
            }));
        }
        reply
            .response
            .body_mut()
            .with_config()
            .limit(MAX_API_BYTES)
            .read_to_vec()
            .map_err(|e| super::http::classify_transport(&url, e))
    })?;
    parse_repo_info(&url, &body)
}

/// Parses and validates the API answer.
pub(crate) fn parse_repo_info(url: &str, body: &[u8]) -> Result<RepoInfo, HubError> {
    let bad = |detail: String| HubError::BadResponse {
        url: url.to_string(),
        detail,
    };
    let info: ApiInfo = serde_json::from_slice(body)
        .map_err(|e| bad(format!("repo info is not the expected JSON: {e}")))?;
    let commit = info
        .sha
        .ok_or_else(|| bad("repo info has no `sha` (commit)".to_string()))?;
    if !is_commit(&commit) {
        return Err(bad(format!("`sha` {commit:?} is not a 40-hex commit id")));
    }
    let siblings = info
        .siblings
        .ok_or_else(|| bad("repo info has no `siblings` (file list)".to_string()))?;
    let mut files = Vec::with_capacity(siblings.len());
    for s in siblings {
        check_relative_path(&s.rfilename).map_err(&bad)?;
        let (sha256, lfs_size) = match s.lfs {
            Some(lfs) => (lfs.sha256, lfs.size),
            None => (None, None),
        };
        let size = lfs_size.or(s.size).ok_or_else(|| {
            bad(format!(
                "no size for `{}` (the endpoint must support `?blobs=true`)",
                s.rfilename
            ))
        })?;
        if let Some(h) = &sha256 {
            if !is_hex(h, 64) {
                return Err(bad(format!(
                    "lfs.sha256 {h:?} of `{}` is not 64 hex digits",
                    s.rfilename
                )));
            }
        }
        if let Some(h) = &s.blob_id {
            if !is_hex(h, 40) {
                return Err(bad(format!(
                    "blobId {h:?} of `{}` is not 40 hex digits",
                    s.rfilename
                )));
            }
        }
        if sha256.is_none() && s.blob_id.is_none() {
            return Err(bad(format!(
                "neither lfs.sha256 nor blobId for `{}`: cannot name or verify it",
                s.rfilename
            )));
        }
        files.push(RemoteFile {
            path: s.rfilename,
            size,
            sha256: sha256.map(|h| h.to_ascii_lowercase()),
            blob_id: s.blob_id.map(|h| h.to_ascii_lowercase()),
        });
    }
    Ok(RepoInfo { commit, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert_eq!(
            RepoId::parse("deepseek-ai/DeepSeek-R1")
                .map(|r| r.folder_name())
                .ok(),
            Some("models--deepseek-ai--DeepSeek-R1".to_string())
        );
        for bad in ["", "a/b/c", "../x", "a/..", "a b", "a--b/c", "/x", "x/"] {
            assert!(RepoId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_api_answers_are_errors() {
        let ok = br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"a.json","size":3,"blobId":"0123456789abcdef0123456789abcdef01234567"}]}"#;
        assert_eq!(
            parse_repo_info("u", ok).map(|i| i.files.len()).ok(),
            Some(1)
        );
        for body in [
            &b"not json"[..],
            br#"{"siblings":[]}"#,
            br#"{"sha":"main","siblings":[]}"#,
            br#"{"sha":"0123456789abcdef0123456789abcdef01234567"}"#,
            br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"../x","size":1,"blobId":"0123456789abcdef0123456789abcdef01234567"}]}"#,
            br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"x","blobId":"0123456789abcdef0123456789abcdef01234567"}]}"#,
            br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"x","size":1,"lfs":{"sha256":"../../etc"}}]}"#,
            br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"x","size":1}]}"#,
        ] {
            let err = parse_repo_info("http://h/api", body).err().map(|e| e.to_string());
            assert!(err.as_deref().is_some_and(|e| e.starts_with("http://h/api: bad response")), "{err:?}");
        }
    }
}
