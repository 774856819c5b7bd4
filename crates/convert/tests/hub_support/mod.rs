//! A fake Hugging Face hub on 127.0.0.1 for the pull tests: the API endpoints r1q and
//! huggingface_hub use (`/api/models/{repo}/revision/{rev}`, `/api/models/{repo}/tree/{rev}`),
//! `resolve` URLs (small files served directly, LFS files redirected with 302 to a second
//! "CDN" port, as the hub does), Range requests, and fault injection: connections cut mid-file,
//! corrupted bytes, status codes with Retry-After, throttling, a required token. Every request
//! is logged (path, Range, whether an Authorization header came) so tests can count downloads.
//!
//! Threads only; every loop is bounded and the server stops when the [`Hub`] is dropped.
//! Shared by `crates/convert/tests/hub_*.rs` and the root `tests/pull_*.rs` (via `#[path]`).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use convert::hub::download::{git_blob_sha1, sha256_hex};

pub const REPO: &str = "test-org/tiny-qwen2";
pub const COMMIT_MAIN: &str = "1111111111111111111111111111111111111111";
pub const COMMIT_TAG: &str = "2222222222222222222222222222222222222222";
pub const TAG: &str = "v1.0";
pub const TOKEN: &str = "hf_test_secret";

/// One file of a commit.
#[derive(Clone)]
pub struct ServedFile {
    pub path: String,
    pub data: Arc<Vec<u8>>,
    pub lfs: bool,
    pub sha256: String,
    pub git_sha1: String,
}

impl ServedFile {
    pub fn new(path: &str, data: Vec<u8>, lfs: bool) -> ServedFile {
        let sha256 = sha256_hex(&data);
        let git_sha1 = if lfs {
            // The blob id of an LFS file is its pointer file's.
            let pointer = format!(
                "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {}\n",
                data.len()
            );
            git_blob_sha1(pointer.as_bytes())
        } else {
            git_blob_sha1(&data)
        };
        ServedFile {
            path: path.to_string(),
            data: Arc::new(data),
            lfs,
            sha256,
            git_sha1,
        }
    }
    /// The blob name in the cache.
    pub fn etag(&self) -> &str {
        if self.lfs {
            &self.sha256
        } else {
            &self.git_sha1
        }
    }
}

/// A logged request.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
    pub on_cdn: bool,
    pub at: Instant,
}

impl Req {
    /// A request that transfers file content (a resolve URL or the CDN).
    pub fn is_download(&self) -> bool {
        self.on_cdn || self.path.contains("/resolve/")
    }
}

/// Fault injection and behaviour switches, changed by tests while the server runs.
#[derive(Default)]
pub struct Faults {
    /// File path → (bytes to send before cutting the connection, times).
    pub cut_after: HashMap<String, (u64, u32)>,
    /// File path → times to flip one byte of the body.
    pub corrupt: HashMap<String, u32>,
    /// "api" or a file path → statuses to answer first (status, Retry-After seconds).
    pub statuses: HashMap<String, VecDeque<(u16, Option<u64>)>>,
    /// Bytes per second for file bodies (None: as fast as possible).
    pub throttle: Option<u64>,
    /// Require `Authorization: Bearer TOKEN` on the main host.
    pub require_token: bool,
}

pub struct State {
    /// revision (branch, tag or commit) → commit.
    pub revisions: HashMap<String, String>,
    /// commit → files.
    pub commits: HashMap<String, Vec<ServedFile>>,
    pub faults: Mutex<Faults>,
    pub log: Mutex<Vec<Req>>,
    cdn: Mutex<String>,
}

/// The running fake hub.
pub struct Hub {
    pub endpoint: String,
    pub cdn: String,
    pub state: Arc<State>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The files of a tiny Qwen2 fixture checkpoint (safetensors as LFS), plus a nested LFS file.
pub fn fixture_files() -> Vec<ServedFile> {
    let dir = tempfile::tempdir().expect("tempdir");
    fixtures::write_fixture(
        fixtures::Arch::Qwen2,
        dir.path(),
        &fixtures::Options::default(),
    )
    .expect("writing the fixture");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("read fixture dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(entry.path()).expect("read fixture file");
        let lfs = name.ends_with(".safetensors");
        files.push(ServedFile::new(&name, data, lfs));
    }
    // A nested LFS file big enough to cut in the middle (deterministic bytes).
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    files.push(ServedFile::new("extra/weights.bin", big, true));
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

impl Hub {
    /// Serves `files` at `main` (= COMMIT_MAIN); the tag `v1.0` (= COMMIT_TAG) has the same
    /// files except a different `config.json`.
    pub fn start(files: Vec<ServedFile>) -> Hub {
        let mut tag_files: Vec<ServedFile> = files
            .iter()
            .map(|f| {
                if f.path == "config.json" {
                    let mut data = (*f.data).clone();
                    data.extend_from_slice(b"\n");
                    ServedFile::new("config.json", data, false)
                } else {
                    f.clone()
                }
            })
            .collect();
        tag_files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut revisions = HashMap::new();
        revisions.insert("main".to_string(), COMMIT_MAIN.to_string());
        revisions.insert(COMMIT_MAIN.to_string(), COMMIT_MAIN.to_string());
        revisions.insert(TAG.to_string(), COMMIT_TAG.to_string());
        revisions.insert(COMMIT_TAG.to_string(), COMMIT_TAG.to_string());
        let mut commits = HashMap::new();
        commits.insert(COMMIT_MAIN.to_string(), files);
        commits.insert(COMMIT_TAG.to_string(), tag_files);
        let state = Arc::new(State {
            revisions,
            commits,
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            cdn: Mutex::new(String::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let main = TcpListener::bind("127.0.0.1:0").expect("bind");
        let cdn = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", main.local_addr().expect("addr"));
        let cdn_url = format!("http://{}", cdn.local_addr().expect("addr"));
        *state.cdn.lock().expect("lock") = cdn_url.clone();
        let threads = vec![
            serve(main, false, state.clone(), stop.clone()),
            serve(cdn, true, state.clone(), stop.clone()),
        ];
        Hub {
            endpoint,
            cdn: cdn_url,
            state,
            stop,
            threads,
        }
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.state.faults.lock().expect("faults lock")
    }

    pub fn log(&self) -> Vec<Req> {
        self.state.log.lock().expect("log lock").clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().expect("log lock").clear();
    }

    /// Requests that transferred file content.
    pub fn downloads(&self) -> Vec<Req> {
        self.log().into_iter().filter(|r| r.is_download()).collect()
    }

    pub fn files(&self, commit: &str) -> &[ServedFile] {
        self.state
            .commits
            .get(commit)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn file(&self, path: &str) -> &ServedFile {
        self.files(COMMIT_MAIN)
            .iter()
            .find(|f| f.path == path)
            .expect("no such served file")
    }
}

/// Accept loop (non-blocking, polls the stop flag); one thread per connection.
fn serve(
    listener: TcpListener,
    on_cdn: bool,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut conns: Vec<JoinHandle<()>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let state = state.clone();
                    let stop = stop.clone();
                    conns.push(std::thread::spawn(move || {
                        let _ = connection(stream, on_cdn, &state, &stop);
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
            conns.retain(|c| !c.is_finished());
        }
        for c in conns {
            let _ = c.join();
        }
    })
}

/// Up to 10 000 requests on one keep-alive connection.
fn connection(
    stream: TcpStream,
    on_cdn: bool,
    state: &State,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    for _ in 0..10_000 {
        // Wait for a request line, polling the stop flag (idle keep-alive connections).
        let mut line = String::new();
        let mut idle = 0;
        loop {
            if stop.load(Ordering::Relaxed) || idle > 300 {
                return Ok(());
            }
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    idle += 1;
                }
                Err(e) => return Err(e),
            }
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        for _ in 0..100 {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let req = Req {
            method: method.clone(),
            path: target.clone(),
            range: headers.get("range").cloned(),
            auth: headers.get("authorization").cloned(),
            on_cdn,
            at: Instant::now(),
        };
        state.log.lock().expect("log").push(req.clone());
        if !respond(&mut out, &req, state)? {
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn json(status: u16, v: serde_json::Value) -> Resp {
    Resp {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: v.to_string().into_bytes(),
    }
}

fn error(status: u16, code: &str, msg: &str) -> Resp {
    let mut r = json(status, serde_json::json!({"error": msg}));
    r.headers.push(("X-Error-Code".into(), code.into()));
    r.headers.push(("X-Error-Message".into(), msg.into()));
    r
}

/// Writes the response; returns false when the connection must close.
fn respond(out: &mut TcpStream, req: &Req, state: &State) -> std::io::Result<bool> {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let head = req.method == "HEAD";
    if req.on_cdn {
        // /blobs/<sha256>
        let sha = path.trim_start_matches("/blobs/");
        let file = state
            .commits
            .values()
            .flatten()
            .find(|f| f.lfs && f.sha256 == sha)
            .cloned();
        return match file {
            Some(f) => send_file(out, req, state, &f, vec![], head),
            None => write_resp(out, error(404, "EntryNotFound", "no such blob"), head),
        };
    }
    let resp = if let Some(rest) = path.strip_prefix("/api/models/") {
        if let Some(r) = take_status(state, "api") {
            return write_resp(out, r, head);
        }
        if let Some(r) = auth_check(state, req) {
            return write_resp(out, r, head);
        }
        api(state, rest, query)
    } else if let Some((repo, rest)) = split_resolve(path) {
        if repo != REPO {
            return write_resp(
                out,
                error(404, "RepoNotFound", "Repository not found"),
                head,
            );
        }
        if let Some(r) = auth_check(state, req) {
            return write_resp(out, r, head);
        }
        let Some((rev, file_path)) = rest.split_once('/') else {
            return write_resp(out, error(404, "EntryNotFound", "bad path"), head);
        };
        let rev = percent_decode(rev);
        let file_path = percent_decode(file_path);
        if let Some(r) = take_status(state, &file_path) {
            return write_resp(out, r, head);
        }
        let Some(commit) = state.revisions.get(&rev) else {
            return write_resp(out, error(404, "RevisionNotFound", "Invalid rev id"), head);
        };
        let Some(f) = state
            .commits
            .get(commit)
            .and_then(|fs| fs.iter().find(|f| f.path == file_path))
            .cloned()
        else {
            return write_resp(out, error(404, "EntryNotFound", "Entry not found"), head);
        };
        let mut headers = vec![
            ("X-Repo-Commit".to_string(), commit.clone()),
            ("ETag".to_string(), format!("\"{}\"", f.git_sha1)),
        ];
        if f.lfs {
            let cdn = state.cdn.lock().expect("cdn").clone();
            headers.push(("X-Linked-Etag".into(), format!("\"{}\"", f.sha256)));
            headers.push(("X-Linked-Size".into(), f.data.len().to_string()));
            headers.push(("Location".into(), format!("{cdn}/blobs/{}", f.sha256)));
            return write_resp(
                out,
                Resp {
                    status: 302,
                    headers,
                    body: vec![],
                },
                head,
            );
        }
        return send_file(out, req, state, &f, headers, head);
    } else {
        error(404, "RepoNotFound", "not found")
    };
    write_resp(out, resp, head)
}

fn split_resolve(path: &str) -> Option<(String, &str)> {
    let idx = path.find("/resolve/")?;
    Some((path[1..idx].to_string(), &path[idx + "/resolve/".len()..]))
}

fn take_status(state: &State, key: &str) -> Option<Resp> {
    let mut f = state.faults.lock().expect("faults");
    let (status, retry_after) = f.statuses.get_mut(key)?.pop_front()?;
    let mut r = error(status, "Injected", "injected failure");
    if let Some(s) = retry_after {
        r.headers.push(("Retry-After".into(), s.to_string()));
    }
    Some(r)
}

fn auth_check(state: &State, req: &Req) -> Option<Resp> {
    let required = state.faults.lock().expect("faults").require_token;
    if required && req.auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return Some(error(
            401,
            "GatedRepo",
            "Access to this model is restricted",
        ));
    }
    None
}

fn api(state: &State, rest: &str, query: &str) -> Resp {
    // {org}/{name}/revision/{rev} or {org}/{name}/tree/{rev}[/path]
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    let [org, name, kind, rev] = parts.as_slice() else {
        return error(404, "RepoNotFound", "Repository not found");
    };
    if format!("{org}/{name}") != REPO {
        return error(404, "RepoNotFound", "Repository not found");
    }
    let rev = percent_decode(rev);
    let Some(commit) = state.revisions.get(&rev) else {
        return error(404, "RevisionNotFound", "Invalid rev id");
    };
    let files = state.commits.get(commit).cloned().unwrap_or_default();
    match *kind {
        "revision" => {
            let blobs = query.contains("blobs=true");
            let siblings: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    let mut s = serde_json::json!({"rfilename": f.path});
                    if blobs {
                        s["size"] = f.data.len().into();
                        s["blobId"] = f.git_sha1.clone().into();
                        if f.lfs {
                            s["lfs"] = serde_json::json!({"sha256": f.sha256, "size": f.data.len(), "pointerSize": 130});
                        }
                    }
                    s
                })
                .collect();
            json(
                200,
                serde_json::json!({"id": REPO, "modelId": REPO, "sha": commit, "private": false, "siblings": siblings}),
            )
        }
        "tree" => {
            let entries: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    let mut e = serde_json::json!({"type": "file", "oid": f.git_sha1, "size": f.data.len(), "path": f.path});
                    if f.lfs {
                        e["lfs"] = serde_json::json!({"oid": f.sha256, "size": f.data.len(), "pointerSize": 130});
                    }
                    e
                })
                .collect();
            json(200, serde_json::Value::Array(entries))
        }
        _ => error(404, "EntryNotFound", "unknown API"),
    }
}

fn write_resp(out: &mut TcpStream, r: Resp, head: bool) -> std::io::Result<bool> {
    let mut text = format!("HTTP/1.1 {} X\r\n", r.status);
    for (k, v) in &r.headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", r.body.len()));
    out.write_all(text.as_bytes())?;
    if !head {
        out.write_all(&r.body)?;
    }
    out.flush()?;
    Ok(true)
}

/// A file body with Range support and the configured faults.
fn send_file(
    out: &mut TcpStream,
    req: &Req,
    state: &State,
    f: &ServedFile,
    mut headers: Vec<(String, String)>,
    head: bool,
) -> std::io::Result<bool> {
    let len = f.data.len() as u64;
    let start = req
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<u64>().ok());
    let (status, start) = match start {
        Some(s) if s < len => (206, s),
        Some(_) => {
            return write_resp(
                out,
                Resp {
                    status: 416,
                    headers,
                    body: vec![],
                },
                head,
            );
        }
        None => (200, 0),
    };
    if status == 206 {
        headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{}/{len}", len - 1),
        ));
    }
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let mut text = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in &headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", len - start));
    out.write_all(text.as_bytes())?;
    if head {
        out.flush()?;
        return Ok(true);
    }
    let (cut, corrupt, throttle) = {
        let mut faults = state.faults.lock().expect("faults");
        let cut = match faults.cut_after.get_mut(&f.path) {
            Some((n, times)) if *times > 0 => {
                *times -= 1;
                Some(*n)
            }
            _ => None,
        };
        let corrupt = match faults.corrupt.get_mut(&f.path) {
            Some(times) if *times > 0 => {
                *times -= 1;
                true
            }
            _ => false,
        };
        (cut, corrupt, faults.throttle)
    };
    let mut body = f.data[start as usize..].to_vec();
    if corrupt && !body.is_empty() {
        let mid = body.len() / 2;
        body[mid] ^= 0x5a;
    }
    let limit = cut
        .map(|n| n.saturating_sub(start).min(body.len() as u64) as usize)
        .unwrap_or(body.len());
    let chunk = 64 * 1024;
    let t0 = Instant::now();
    let mut sent = 0usize;
    while sent < limit {
        let end = (sent + chunk).min(limit);
        if out.write_all(&body[sent..end]).is_err() {
            return Ok(false);
        }
        sent = end;
        if let Some(bps) = throttle {
            let due = Duration::from_secs_f64(sent as f64 / bps as f64);
            let el = t0.elapsed();
            if due > el {
                std::thread::sleep((due - el).min(Duration::from_secs(2)));
            }
        }
    }
    out.flush()?;
    Ok(cut.is_none())
}

/// Reads a whole directory tree into (relative path → bytes), following symlinks.
pub fn read_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.path().is_dir() {
                if rel != ".cache" {
                    stack.push((e.path(), rel));
                }
            } else {
                out.insert(rel, std::fs::read(e.path()).expect("read"));
            }
        }
    }
    out
}

/// The `Read` import is used by tests that read partial files.
pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read");
    v
}
