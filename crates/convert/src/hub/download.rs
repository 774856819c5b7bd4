//! One file: from the cache if it is there, else streamed into `blobs/<etag>.incomplete` while
//! hashing, resumed with `Range` after a cut (the bytes already on disk are hashed first, so the
//! hash always covers the whole file), verified, renamed into `blobs/`, linked into `snapshots/`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::api::{RemoteFile, RepoId};
use super::cache::{Pointer, RepoCache};
use super::error::HubError;
use super::http::{quote_path, Client, Failure, Target};
use super::Progress;

/// Read/write/hash chunk.
const CHUNK: usize = 1 << 20;

/// What [`fetch`] did for one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already in the snapshot.
    Cached,
    /// The blob was in the cache (another revision had it); only the link was made.
    Linked,
    /// Downloaded (`resumed_from` bytes were already on disk from an earlier run).
    Downloaded {
        /// Bytes that came from an earlier `.incomplete` file.
        resumed_from: u64,
    },
}

/// Everything a download thread shares.
pub(crate) struct Job<'a> {
    pub client: &'a Client,
    pub cache: &'a RepoCache,
    pub repo: &'a RepoId,
    pub revision: &'a str,
    pub commit: &'a str,
    pub progress: &'a dyn Progress,
    pub cancel: &'a AtomicBool,
}

/// Where `file` stands in the cache before any download: what is left to fetch.
pub(crate) fn remaining(
    cache: &RepoCache,
    commit: &str,
    file: &RemoteFile,
) -> Result<u64, HubError> {
    if cache.pointer(commit, file)? == Pointer::Ready {
        return Ok(0);
    }
    let Some(etag) = file.etag() else {
        return Ok(file.size);
    };
    if cache.blob_ready(etag, file.size) {
        return Ok(0);
    }
    let partial = fs::metadata(cache.incomplete_path(etag))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(file
        .size
        .saturating_sub(if partial <= file.size { partial } else { 0 }))
}

/// Makes `snapshots/<commit>/<file.path>` available, downloading if needed.
pub(crate) fn fetch(job: &Job, file: &RemoteFile) -> Result<Outcome, HubError> {
    if job.cache.pointer(job.commit, file)? == Pointer::Ready {
        return Ok(Outcome::Cached);
    }
    let Some(etag) = file.etag() else {
        return Err(HubError::BadResponse {
            url: file.path.clone(),
            detail: "no etag".into(),
        });
    };
    if job.cache.blob_ready(etag, file.size) {
        job.cache.link(job.commit, &file.path, etag)?;
        return Ok(Outcome::Linked);
    }
    let resumed_from = download(job, file, etag)?;
    job.cache.link(job.commit, &file.path, etag)?;
    Ok(Outcome::Downloaded { resumed_from })
}

/// The running checksum of a file.
enum Check {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Check {
    fn new(file: &RemoteFile) -> Check {
        if file.sha256.is_some() {
            Check::Sha256(Sha256::new())
        } else {
            // git's blob id: sha1("blob <size>\0" + content).
            let mut h = Sha1::new();
            h.update(format!("blob {}\0", file.size).as_bytes());
            Check::GitSha1(h)
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Check::Sha256(h) => h.update(data),
            Check::GitSha1(h) => h.update(data),
        }
    }
    fn algo(&self) -> &'static str {
        match self {
            Check::Sha256(_) => "sha256",
            Check::GitSha1(_) => "git sha1",
        }
    }
    fn finish(self) -> String {
        match self {
            Check::Sha256(h) => hex(&h.finalize()),
            Check::GitSha1(h) => hex(&h.finalize()),
        }
    }
}

/// sha256 of `data` as lowercase hex (the LFS oid and blob name of a large file).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// git's blob id of `data` (`sha1("blob <len>\0" + data)`): the ETag and blob name the hub
/// gives a small, non-LFS file.
pub fn git_blob_sha1(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The open `.incomplete` file and what is known about it.
struct Partial<'p> {
    path: &'p Path,
    file: File,
    have: u64,
    check: Check,
}

impl Partial<'_> {
    fn restart(&mut self, remote: &RemoteFile) -> Result<(), HubError> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .map_err(|e| HubError::io(self.path, e))?;
        self.have = 0;
        self.check = Check::new(remote);
        Ok(())
    }
}

/// Downloads `file` into `blobs/<etag>`; returns how many bytes an earlier run had left.
fn download(job: &Job, remote: &RemoteFile, etag: &str) -> Result<u64, HubError> {
    let part_path = job.cache.incomplete_path(etag);
    let blobs = part_path
        .parent()
        .unwrap_or(job.cache.dir.as_path())
        .to_path_buf();
    fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part_path)
        .map_err(|e| HubError::io(&part_path, e))?;
    let len = file
        .metadata()
        .map_err(|e| HubError::io(&part_path, e))?
        .len();
    let mut part = Partial {
        path: &part_path,
        file,
        have: 0,
        check: Check::new(remote),
    };
    if len > remote.size {
        part.restart(remote)?;
    } else if len > 0 {
        hash_prefix(&mut part, len)?;
    }
    let resumed_from = part.have;
    job.progress
        .file_started(&remote.path, remote.size, resumed_from);

    let url = format!(
        "{}/{}/resolve/{}/{}",
        job.client.endpoint,
        job.repo,
        job.commit,
        quote_path(&remote.path, true)
    );
    let target = Target {
        repo: job.repo.as_str(),
        revision: job.revision,
        what: format!("file `{}` at commit {}", remote.path, job.commit),
    };
    let policy = &job.client.retry;
    let mut failures = 0u32;
    let mut full_downloads = 0u32;
    loop {
        if part.have == remote.size {
            full_downloads += 1;
            let expected = remote
                .sha256
                .as_deref()
                .or(remote.blob_id.as_deref())
                .unwrap_or("");
            let check = std::mem::replace(&mut part.check, Check::new(remote));
            let algo = check.algo();
            let actual = check.finish();
            if actual == expected {
                part.file
                    .sync_all()
                    .map_err(|e| HubError::io(&part_path, e))?;
                let blob = job.cache.blob_path(etag);
                fs::rename(&part_path, &blob).map_err(|e| HubError::io(&blob, e))?;
                return Ok(resumed_from);
            }
            if full_downloads > policy.checksum_retries {
                drop(part);
                let _ = fs::remove_file(&part_path);
                return Err(HubError::Checksum {
                    repo: job.repo.to_string(),
                    file: remote.path.clone(),
                    algo,
                    expected: expected.to_string(),
                    actual,
                    attempts: full_downloads,
                });
            }
            job.progress.retrying(
                &remote.path,
                full_downloads,
                Duration::ZERO,
                &format!("{algo} mismatch (expected {expected}, got {actual}); downloading again"),
            );
            part.restart(remote)?;
            job.progress.file_reset(&remote.path, 0);
            continue;
        }
        if job.cancel.load(Ordering::Relaxed) {
            return Err(HubError::Cancelled);
        }
        let before = part.have;
        match stream_once(job, &url, &target, remote, &mut part) {
            Ok(()) => {}
            Err(Failure::Fatal(e)) => return Err(*e),
            Err(fail @ Failure::Transient { .. }) => {
                if part.have > before {
                    failures = 0;
                }
                failures += 1;
                if failures >= policy.max_attempts {
                    return Err(fail.into_error(failures));
                }
                if let Failure::Transient {
                    error, retry_after, ..
                } = &fail
                {
                    let wait = policy.delay(failures, *retry_after);
                    job.progress.retrying(&remote.path, failures, wait, error);
                    sleep_unless_cancelled(wait, job.cancel);
                }
            }
        }
    }
}

/// Hashes the first `len` bytes already on disk (a resumed download is verified end to end).
fn hash_prefix(part: &mut Partial, len: u64) -> Result<(), HubError> {
    let mut buf = vec![0u8; CHUNK];
    part.file
        .seek(SeekFrom::Start(0))
        .map_err(|e| HubError::io(part.path, e))?;
    let mut left = len;
    while left > 0 {
        let want = (left.min(CHUNK as u64)) as usize;
        let n = part
            .file
            .read(&mut buf[..want])
            .map_err(|e| HubError::io(part.path, e))?;
        if n == 0 {
            break;
        }
        part.check.update(&buf[..n]);
        left -= n as u64;
    }
    part.have = len - left;
    part.file
        .set_len(part.have)
        .and_then(|()| part.file.seek(SeekFrom::Start(part.have)).map(|_| ()))
        .map_err(|e| HubError::io(part.path, e))
}

/// One request for the rest of the file; appends what arrives.
fn stream_once(
    job: &Job,
    url: &str,
    target: &Target,
    remote: &RemoteFile,
    part: &mut Partial,
) -> Result<(), Failure> {
    let mut reply = job.client.get(url, Some(part.have), target)?;
    let bad = |url: &str, detail: String| {
        Failure::fatal(HubError::BadResponse {
            url: url.to_string(),
            detail,
        })
    };
    match reply.status() {
        206 => {
            let range = reply.header("content-range").unwrap_or("");
            let start = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.trim().parse::<u64>().ok());
            if start != Some(part.have) {
                return Err(bad(
                    &reply.url,
                    format!(
                        "asked for bytes {}- of `{}`, got Content-Range {range:?}",
                        part.have, remote.path
                    ),
                ));
            }
        }
        200 => {
            if part.have > 0 {
                // The server ignored the Range: take the whole body from the start.
                part.restart(remote).map_err(Failure::fatal)?;
                job.progress.file_reset(&remote.path, 0);
            }
        }
        416 => {
            part.restart(remote).map_err(Failure::fatal)?;
            job.progress.file_reset(&remote.path, 0);
            return Err(Failure::Transient {
                url: reply.url.clone(),
                error: "HTTP 416 (range not satisfiable) on resume; starting the file over".into(),
                status: Some(416),
                retry_after: None,
            });
        }
        s => {
            return Err(bad(
                &reply.url,
                format!("unexpected HTTP {s} for a download"),
            ))
        }
    }
    let want = remote.size - part.have;
    if let Some(len) = reply.header("content-length") {
        match len.trim().parse::<u64>() {
            Ok(n) if n == want => {}
            _ => {
                return Err(bad(
                    &reply.url,
                    format!(
                    "Content-Length {len:?} for `{}`, expected {want} (file size {} per the hub)",
                    remote.path, remote.size
                ),
                ))
            }
        }
    }
    let final_url = reply.url.clone();
    let mut reader = reply.response.body_mut().as_reader();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Failure::Transient {
                    url: final_url,
                    error: format!(
                        "connection lost after {} of {} bytes: {e}",
                        part.have, remote.size
                    ),
                    status: None,
                    retry_after: None,
                })
            }
        };
        if n == 0 {
            if part.have < remote.size {
                return Err(Failure::Transient {
                    url: final_url,
                    error: format!("body ended after {} of {} bytes", part.have, remote.size),
                    status: None,
                    retry_after: None,
                });
            }
            return Ok(());
        }
        let data = buf.get(..n).unwrap_or(&[]);
        if part.have + n as u64 > remote.size {
            part.restart(remote).map_err(Failure::fatal)?;
            return Err(bad(
                &final_url,
                format!(
                    "more than the {} bytes the hub lists for `{}`",
                    remote.size, remote.path
                ),
            ));
        }
        part.file
            .write_all(data)
            .map_err(|e| Failure::fatal(HubError::io(part.path, e)))?;
        part.check.update(data);
        part.have += n as u64;
        job.progress.file_bytes(&remote.path, n as u64);
        if job.cancel.load(Ordering::Relaxed) {
            return Err(Failure::fatal(HubError::Cancelled));
        }
        if part.have == remote.size {
            return Ok(());
        }
    }
}

fn sleep_unless_cancelled(wait: Duration, cancel: &AtomicBool) {
    let end = std::time::Instant::now() + wait;
    while !cancel.load(Ordering::Relaxed) {
        let now = std::time::Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}
