//! huggingface_hub's cache layout, exactly, so the Python tools and r1q share one copy:
//!
//! ```text
//! $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
//! ├── .locks/models--ORG--NAME/r1q-pull.lock      (r1q's per-repo lock)
//! └── models--ORG--NAME/
//!     ├── blobs/<etag>                 verified content; the etag is the sha256 for LFS files,
//!     │                                the git blob sha1 for small files (what the hub's
//!     │                                X-Linked-Etag / ETag headers say)
//!     ├── blobs/<etag>.incomplete      a partial download, resumed with HTTP Range
//!     ├── snapshots/<commit>/<path>    relative symlink → ../../blobs/<etag>
//!     ├── refs/<branch or tag>         the commit it pointed to when last resolved
//!     └── trees/<commit>.json          the file listing (huggingface_hub ≥ 1.x reads it to
//!                                      tell a complete snapshot from a partial one offline)
//! ```
//!
//! A blob is renamed into `blobs/` only after its hash matched, and a snapshot link is made only
//! to such a blob: nothing unverified is ever reachable from `snapshots/`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::api::{check_relative_path, is_commit, RemoteFile, RepoId};
use super::error::HubError;

/// The cache folder of one repo.
#[derive(Clone, Debug)]
pub struct RepoCache {
    /// The hub cache root (`HF_HUB_CACHE`).
    pub root: PathBuf,
    /// `root/models--ORG--NAME`.
    pub dir: PathBuf,
    folder: String,
}

/// Where a file's snapshot link stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pointer {
    /// Resolves to content of the listed size.
    Ready,
    /// Absent (a dangling or wrong-sized link was removed).
    Missing,
}

impl RepoCache {
    /// The cache folder of `repo` under `root`.
    pub fn new(root: &Path, repo: &RepoId) -> RepoCache {
        let folder = repo.folder_name();
        RepoCache {
            root: root.to_path_buf(),
            dir: root.join(&folder),
            folder,
        }
    }

    /// `blobs/<etag>`.
    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// `blobs/<etag>.incomplete`.
    pub fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// `snapshots/<commit>`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// `snapshots/<commit>/<path>`.
    pub fn pointer_path(&self, commit: &str, path: &str) -> PathBuf {
        self.snapshot_dir(commit).join(path)
    }

    /// The commit a branch or tag pointed to when last resolved (`refs/<revision>`).
    pub fn read_ref(&self, revision: &str) -> Result<Option<String>, HubError> {
        if check_relative_path(revision).is_err() {
            return Ok(None);
        }
        let path = self.dir.join("refs").join(revision);
        match fs::read_to_string(&path) {
            Ok(s) => {
                let commit = s.trim().to_string();
                if is_commit(&commit) {
                    Ok(Some(commit))
                } else {
                    Err(HubError::io(
                        &path,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("not a commit id: {commit:?}"),
                        ),
                    ))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HubError::io(path, e)),
        }
    }

    /// Records `refs/<revision>` → commit (atomically; skipped when already so, or when the
    /// revision is itself a commit).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit || is_commit(revision) || check_relative_path(revision).is_err() {
            return Ok(());
        }
        if self.read_ref(revision).ok().flatten().as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        write_atomic(&path, commit.as_bytes())
    }

    /// Checks `snapshots/<commit>/<path>`; removes a link that points nowhere or at content of
    /// the wrong size, so it is made again.
    pub(crate) fn pointer(&self, commit: &str, file: &RemoteFile) -> Result<Pointer, HubError> {
        let path = self.pointer_path(commit, &file.path);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(Pointer::Missing);
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == file.size => Ok(Pointer::Ready),
            _ => {
                fs::remove_file(&path).map_err(|e| HubError::io(&path, e))?;
                Ok(Pointer::Missing)
            }
        }
    }

    /// True if `blobs/<etag>` exists with the listed size (blobs are only ever renamed there
    /// after verification).
    pub(crate) fn blob_ready(&self, etag: &str, size: u64) -> bool {
        fs::metadata(self.blob_path(etag)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Makes `snapshots/<commit>/<path>` a relative symlink to `blobs/<etag>` (atomically: a
    /// temporary link renamed over the final name).
    pub(crate) fn link(&self, commit: &str, path: &str, etag: &str) -> Result<(), HubError> {
        let pointer = self.pointer_path(commit, path);
        let parent = pointer.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| HubError::io(&parent, e))?;
        let depth = path.split('/').count() + 1;
        let target = format!("{}blobs/{etag}", "../".repeat(depth));
        let tmp = parent.join(format!(
            ".{}.r1q-link-{}",
            pointer.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        symlink(Path::new(&target), &tmp).map_err(|e| HubError::io(&tmp, e))?;
        fs::rename(&tmp, &pointer).map_err(|e| HubError::io(&pointer, e))
    }

    /// Writes `trees/<commit>.json` in huggingface_hub's tree-cache format (format_version 1),
    /// so its offline mode can tell whether the snapshot is complete. Best effort.
    pub fn write_tree(&self, commit: &str, files: &[RemoteFile]) {
        let mut map = serde_json::Map::new();
        for f in files {
            let mut e = serde_json::Map::new();
            e.insert("size".into(), f.size.into());
            e.insert(
                "blob_id".into(),
                f.blob_id.clone().unwrap_or_default().into(),
            );
            if let Some(sha) = &f.sha256 {
                e.insert("lfs_sha256".into(), sha.clone().into());
                e.insert("lfs_size".into(), f.size.into());
            }
            map.insert(f.path.clone(), e.into());
        }
        let doc = serde_json::json!({"format_version": 1, "files": map});
        let path = self.dir.join("trees").join(format!("{commit}.json"));
        if path.exists() {
            return;
        }
        if let Ok(text) = serde_json::to_vec_pretty(&doc) {
            let _ = write_atomic(&path, &text);
        }
    }

    /// Reads `trees/<commit>.json` (written by r1q or huggingface_hub); `None` if absent or not
    /// understood.
    pub fn read_tree(&self, commit: &str) -> Option<Vec<RemoteFile>> {
        let path = self.dir.join("trees").join(format!("{commit}.json"));
        let text = fs::read(path).ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&text).ok()?;
        if doc.get("format_version")?.as_u64()? != 1 {
            return None;
        }
        let mut files = Vec::new();
        for (path, e) in doc.get("files")?.as_object()? {
            check_relative_path(path).ok()?;
            let sha256 = e
                .get("lfs_sha256")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let size = e
                .get("lfs_size")
                .and_then(|v| v.as_u64())
                .or_else(|| e.get("size").and_then(|v| v.as_u64()))?;
            let blob_id = e
                .get("blob_id")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            files.push(RemoteFile {
                path: path.clone(),
                size,
                sha256,
                blob_id,
            });
        }
        Some(files)
    }

    /// Takes the per-repo lock (`.locks/models--ORG--NAME/r1q-pull.lock`), waiting for another
    /// r1q process that holds it; `on_wait` is called once if it has to wait.
    pub fn lock(&self, on_wait: impl FnOnce(&Path)) -> Result<RepoLock, HubError> {
        let dir = self.root.join(".locks").join(&self.folder);
        fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        let path = dir.join("r1q-pull.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| HubError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait(&path);
                file.lock().map_err(|e| HubError::io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(HubError::io(&path, e)),
        }
        Ok(RepoLock { _file: file })
    }
}

/// Holds the per-repo lock until dropped (the OS releases it if the process dies).
#[derive(Debug)]
pub struct RepoLock {
    _file: File,
}

/// Writes a small file atomically (temporary file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.r1q-tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        HubError::io(path, e)
    })
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the hub cache needs symlinks (Unix)",
    ))
}
