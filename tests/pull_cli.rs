//! `r1q pull` / `r1q convert ORG/NAME` run as a user runs them, against the fake hub of
//! `crates/convert/tests/hub_support` on 127.0.0.1: a `kill -9` mid-download then a rerun
//! (resumes, finished files not fetched again), two processes pulling at once (the lock; each
//! blob fetched once), one-line errors, and convert from a repo id.

#[path = "../crates/convert/tests/hub_support/mod.rs"]
mod hub_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hub_support::{Hub, COMMIT_MAIN, REPO};

fn r1q(hub: &Hub, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_r1q"));
    c.env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("hf-home"))
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy");
    c
}

fn snapshot(cache: &Path) -> std::path::PathBuf {
    cache
        .join("models--test-org--tiny-qwen2/snapshots")
        .join(COMMIT_MAIN)
}

fn assert_complete(hub: &Hub, cache: &Path) {
    for f in hub.files(COMMIT_MAIN) {
        let got = std::fs::read(snapshot(cache).join(&f.path)).unwrap_or_default();
        assert!(got == *f.data, "{} differs", f.path);
    }
}

#[test]
fn pull_prints_the_snapshot_and_logs_one_line_per_file() {
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let out = r1q(&hub, cache.path())
        .args(["pull", REPO])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        snapshot(cache.path()).to_str().unwrap()
    );
    for f in hub.files(COMMIT_MAIN) {
        assert!(err.contains(&format!("r1q: {} (", f.path)), "{err}");
    }
    assert_complete(&hub, cache.path());

    let quiet = r1q(&hub, cache.path())
        .args(["pull", REPO, "--quiet"])
        .output()
        .unwrap();
    assert!(
        quiet.status.success() && quiet.stderr.is_empty(),
        "{quiet:?}"
    );

    let missing = r1q(&hub, cache.path())
        .args(["pull", "test-org/missing"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("r1q: error: ") && err.contains("test-org/missing") && err.contains("404"),
        "{err}"
    );
}

#[test]
fn kill_9_mid_download_then_rerun_resumes_without_refetching_finished_files() {
    let hub = Hub::start(hub_support::fixture_files());
    hub.faults().throttle = Some(1_000_000);
    let cache = tempfile::tempdir().unwrap();
    let big = hub.file("extra/weights.bin").clone();
    let partial = cache
        .path()
        .join("models--test-org--tiny-qwen2/blobs")
        .join(format!("{}.incomplete", big.sha256));
    let mut child = r1q(&hub, cache.path())
        .args(["pull", REPO, "--jobs", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let done_before: Vec<String> = loop {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let done: Vec<String> = hub
            .files(COMMIT_MAIN)
            .iter()
            .filter(|f| snapshot(cache.path()).join(&f.path).exists())
            .map(|f| f.path.clone())
            .collect();
        if have >= 500_000 && !done.is_empty() {
            break done;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "download did not progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SIGKILL: no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let cut_at = std::fs::metadata(&partial).unwrap().len();
    assert!(cut_at > 0 && cut_at < big.data.len() as u64, "{cut_at}");

    hub.faults().throttle = None;
    hub.clear_log();
    let out = r1q(&hub, cache.path())
        .args(["pull", REPO])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_complete(&hub, cache.path());
    let log = hub.downloads();
    let big_reqs: Vec<_> = log
        .iter()
        .filter(|r| r.on_cdn && r.path.ends_with(&big.sha256))
        .collect();
    assert_eq!(big_reqs.len(), 1, "{log:#?}");
    let from: u64 = big_reqs[0]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .expect("the rerun resumed with a Range request");
    assert!(
        from >= cut_at.min(500_000) && from <= cut_at,
        "resumed at {from}, cut at {cut_at}"
    );
    for path in &done_before {
        let f = hub.file(path);
        let fetched = log.iter().any(|r| {
            r.path.ends_with(&format!("/{path}")) || (f.lfs && r.path.ends_with(&f.sha256))
        });
        assert!(
            !fetched,
            "{path} was finished before the kill but fetched again: {log:#?}"
        );
    }
}

#[test]
fn two_processes_pulling_the_same_repo_take_turns() {
    let hub = Hub::start(hub_support::fixture_files());
    hub.faults().throttle = Some(3_000_000);
    let cache = tempfile::tempdir().unwrap();
    let spawn = || {
        r1q(&hub, cache.path())
            .args(["pull", REPO])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn();
    let b = spawn();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert_complete(&hub, cache.path());
    let waited = [&a, &b]
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("waiting for"))
        .count();
    assert_eq!(waited, 1, "exactly one process waited for the lock");
    for f in hub.files(COMMIT_MAIN).iter().filter(|f| f.lfs) {
        let n = hub
            .log()
            .iter()
            .filter(|r| r.on_cdn && r.path.ends_with(&f.sha256))
            .count();
        assert_eq!(n, 1, "{} fetched {n} times", f.path);
    }
}

#[test]
fn convert_accepts_a_repo_id() {
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.gguf");
    let run = r1q(&hub, cache.path())
        .current_dir(work.path())
        .args(["convert", REPO, "--outtype", "f32", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Only what conversion needs was pulled.
    assert!(!snapshot(cache.path()).join("extra/weights.bin").exists());
    let direct = work.path().join("direct.gguf");
    let fixture = work.path().join("fixture");
    fixtures::write_fixture(
        fixtures::Arch::Qwen2,
        &fixture,
        &fixtures::Options::default(),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(["convert"])
        .arg(&fixture)
        .args(["--outtype", "f32", "-o"])
        .arg(&direct)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The same tensors, bytes for bytes, as converting the fixture directory itself (metadata
    // may differ: the name is taken from the directory).
    let (a, b) = (
        formats::gguf::GgufFile::open(&out).unwrap(),
        formats::gguf::GgufFile::open(&direct).unwrap(),
    );
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in a.tensors() {
        let u = b.tensor(&t.name).expect("same tensor names");
        assert!(a.tensor_data(t) == b.tensor_data(u), "{} differs", t.name);
    }
}
