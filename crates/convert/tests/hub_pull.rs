//! `convert::hub::pull` against a fake hub on 127.0.0.1 (see `hub_support`): the cache layout,
//! the token never reaching the CDN, resume after a cut, hash mismatches, retries with
//! Retry-After, fast 404/401, revisions, offline mode, include/exclude and --local-dir.

mod hub_support;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use convert::hub::{self, HubConfig, Outcome, Progress, PullOptions, RetryPolicy};
use hub_support::{Hub, COMMIT_MAIN, COMMIT_TAG, REPO, TAG, TOKEN};

fn config(hub: &Hub, cache: &Path) -> HubConfig {
    HubConfig {
        endpoint: hub.endpoint.clone(),
        token: Some(TOKEN.to_string()),
        cache_dir: cache.to_path_buf(),
        offline: false,
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
    }
}

/// Records outcomes and retries.
#[derive(Default)]
struct Rec {
    done: Mutex<Vec<(String, Outcome)>>,
    retries: Mutex<Vec<(String, Duration, String)>>,
}

impl Progress for Rec {
    fn file_done(&self, path: &str, _size: u64, outcome: Outcome) {
        self.done.lock().unwrap().push((path.to_string(), outcome));
    }
    fn retrying(&self, what: &str, _attempt: u32, wait: Duration, why: &str) {
        self.retries
            .lock()
            .unwrap()
            .push((what.to_string(), wait, why.to_string()));
    }
}

impl Rec {
    fn outcome(&self, path: &str) -> Option<Outcome> {
        self.done
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, o)| *o)
    }
}

fn repo_dir(cache: &Path) -> std::path::PathBuf {
    cache.join("models--test-org--tiny-qwen2")
}

/// Every served file of `commit` is in the snapshot, byte for byte, as a relative symlink to
/// its blob, and no partial file is left.
fn assert_snapshot_complete(hub: &Hub, cache: &Path, commit: &str) {
    let repo = repo_dir(cache);
    for f in hub.files(commit) {
        let link = repo.join("snapshots").join(commit).join(&f.path);
        let target =
            std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        let depth = f.path.split('/').count() + 1;
        assert_eq!(
            target.to_str().unwrap(),
            format!("{}blobs/{}", "../".repeat(depth), f.etag()),
            "{}",
            f.path
        );
        assert_eq!(std::fs::read(&link).unwrap(), *f.data, "{}", f.path);
    }
    let partials: Vec<_> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("incomplete"))
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
}

#[test]
fn pull_fills_the_hf_cache_layout_and_keeps_the_token_off_the_cdn() {
    let hub = Hub::start(hub_support::fixture_files());
    hub.faults().require_token = true;
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let rec = Rec::default();
    let snap = hub::pull(&cfg, &PullOptions::new(REPO), &rec).unwrap();
    assert_eq!(snap.commit, COMMIT_MAIN);
    assert_eq!(
        snap.dir,
        repo_dir(cache.path()).join("snapshots").join(COMMIT_MAIN)
    );
    assert_snapshot_complete(&hub, cache.path(), COMMIT_MAIN);
    assert_eq!(
        std::fs::read_to_string(repo_dir(cache.path()).join("refs/main")).unwrap(),
        COMMIT_MAIN
    );
    assert!(repo_dir(cache.path())
        .join(format!("trees/{COMMIT_MAIN}.json"))
        .is_file());

    let log = hub.log();
    let cdn: Vec<_> = log.iter().filter(|r| r.on_cdn).collect();
    let lfs = hub.files(COMMIT_MAIN).iter().filter(|f| f.lfs).count();
    assert_eq!(cdn.len(), lfs, "one CDN request per LFS file: {log:#?}");
    assert!(
        cdn.iter().all(|r| r.auth.is_none()),
        "token leaked to the CDN: {cdn:#?}"
    );
    assert!(
        log.iter()
            .filter(|r| !r.on_cdn)
            .all(|r| r.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{log:#?}"
    );

    // Again: everything is cached, nothing is downloaded.
    hub.clear_log();
    let rec = Rec::default();
    let again = hub::pull(&cfg, &PullOptions::new(REPO), &rec).unwrap();
    assert_eq!(again.downloaded, 0);
    assert!(hub.downloads().is_empty(), "{:#?}", hub.downloads());
    assert!(rec
        .done
        .lock()
        .unwrap()
        .iter()
        .all(|(_, o)| *o == Outcome::Cached));
}

#[test]
fn a_connection_cut_mid_file_resumes_from_the_offset() {
    let hub = Hub::start(hub_support::fixture_files());
    let big = "extra/weights.bin";
    hub.faults()
        .cut_after
        .insert(big.to_string(), (1_234_567, 1));
    let cache = tempfile::tempdir().unwrap();
    let rec = Rec::default();
    hub::pull(&config(&hub, cache.path()), &PullOptions::new(REPO), &rec).unwrap();
    assert_snapshot_complete(&hub, cache.path(), COMMIT_MAIN);
    let sha = hub.file(big).sha256.clone();
    let ranges: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|r| r.on_cdn && r.path.ends_with(&sha))
        .map(|r| r.range)
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=1234567-".to_string())]);
    assert!(rec
        .retries
        .lock()
        .unwrap()
        .iter()
        .any(|(w, _, why)| w == big && why.contains("1234567")));
}

#[test]
fn a_partial_file_from_an_earlier_run_is_hashed_and_resumed() {
    let hub = Hub::start(hub_support::fixture_files());
    let big = hub.file("extra/weights.bin").clone();
    let cache = tempfile::tempdir().unwrap();
    let blobs = repo_dir(cache.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        blobs.join(format!("{}.incomplete", big.sha256)),
        &big.data[..1_000_000],
    )
    .unwrap();
    let rec = Rec::default();
    hub::pull(&config(&hub, cache.path()), &PullOptions::new(REPO), &rec).unwrap();
    assert_eq!(
        rec.outcome("extra/weights.bin"),
        Some(Outcome::Downloaded {
            resumed_from: 1_000_000
        })
    );
    assert_snapshot_complete(&hub, cache.path(), COMMIT_MAIN);
    let ranges: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|r| r.path.ends_with(&big.sha256) && r.on_cdn)
        .map(|r| r.range)
        .collect();
    assert_eq!(ranges, vec![Some("bytes=1000000-".to_string())]);
}

#[test]
fn a_corrupted_byte_is_detected_and_the_file_downloaded_again() {
    let hub = Hub::start(hub_support::fixture_files());
    let big = "extra/weights.bin";
    hub.faults().corrupt.insert(big.to_string(), 1);
    let cache = tempfile::tempdir().unwrap();
    let rec = Rec::default();
    hub::pull(&config(&hub, cache.path()), &PullOptions::new(REPO), &rec).unwrap();
    assert_snapshot_complete(&hub, cache.path(), COMMIT_MAIN);
    let sha = hub.file(big).sha256.clone();
    assert_eq!(
        hub.log()
            .iter()
            .filter(|r| r.on_cdn && r.path.ends_with(&sha))
            .count(),
        2
    );
    assert!(rec
        .retries
        .lock()
        .unwrap()
        .iter()
        .any(|(_, _, why)| why.contains("sha256 mismatch")));
}

#[test]
fn persistent_corruption_fails_with_both_hashes_and_leaves_nothing() {
    let hub = Hub::start(hub_support::fixture_files());
    let big = hub.file("extra/weights.bin").clone();
    hub.faults().corrupt.insert(big.path.clone(), u32::MAX);
    let cache = tempfile::tempdir().unwrap();
    let mut opts = PullOptions::new(REPO);
    opts.include = vec!["extra/*".into()];
    let err = hub::pull(&config(&hub, cache.path()), &opts, &Rec::default())
        .expect_err("must fail")
        .to_string();
    let mut corrupted = (*big.data).clone();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0x5a;
    let actual = convert::hub::download::sha256_hex(&corrupted);
    assert!(
        err.contains(REPO)
            && err.contains("extra/weights.bin")
            && err.contains(&big.sha256)
            && err.contains(&actual),
        "{err}"
    );
    let repo = repo_dir(cache.path());
    assert!(!repo
        .join("snapshots")
        .join(COMMIT_MAIN)
        .join("extra/weights.bin")
        .exists());
    let blobs: Vec<_> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
}

#[test]
fn status_429_with_retry_after_and_500_are_retried() {
    let hub = Hub::start(hub_support::fixture_files());
    hub.faults()
        .statuses
        .insert("api".into(), [(429, Some(1))].into());
    hub.faults()
        .statuses
        .insert("config.json".into(), [(500, None), (503, None)].into());
    let cache = tempfile::tempdir().unwrap();
    let rec = Rec::default();
    let t0 = Instant::now();
    hub::pull(&config(&hub, cache.path()), &PullOptions::new(REPO), &rec).unwrap();
    assert_snapshot_complete(&hub, cache.path(), COMMIT_MAIN);
    let log = hub.log();
    let api: Vec<_> = log.iter().filter(|r| r.path.starts_with("/api/")).collect();
    assert_eq!(api.len(), 2);
    let waited = api[1].at - api[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 not honoured: {waited:?}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(1));
    let config_reqs = log
        .iter()
        .filter(|r| r.path.ends_with("/config.json"))
        .count();
    assert_eq!(config_reqs, 3);
    let retries = rec.retries.lock().unwrap();
    assert!(
        retries
            .iter()
            .any(|(_, w, why)| why.contains("429") && *w >= Duration::from_secs(1)),
        "{retries:?}"
    );
    assert!(
        retries
            .iter()
            .any(|(w, _, why)| w == "config.json" && why.contains("500")),
        "{retries:?}"
    );
}

#[test]
fn not_found_and_unauthorized_fail_fast_with_what_to_do() {
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());

    let t0 = Instant::now();
    let err = hub::pull(
        &cfg,
        &PullOptions::new("test-org/no-such-model"),
        &Rec::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("test-org/no-such-model")
            && err.contains("404")
            && err.contains("RepoNotFound"),
        "{err}"
    );

    let mut opts = PullOptions::new(REPO);
    opts.revision = "no-such-branch".into();
    let err = hub::pull(&cfg, &opts, &Rec::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no-such-branch") && err.contains("404") && err.contains("revision"),
        "{err}"
    );

    hub.faults().require_token = true;
    let mut anon = cfg.clone();
    anon.token = None;
    let err = hub::pull(&anon, &PullOptions::new(REPO), &Rec::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("401")
            && err.contains("HF_TOKEN")
            && err.contains(REPO)
            && err.contains("licence"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // One request each: no retries.
    assert_eq!(hub.log().len(), 3, "{:#?}", hub.log());
}

#[test]
fn a_revision_can_be_a_branch_a_tag_or_a_commit() {
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let repo = repo_dir(cache.path());

    let main = hub::pull(&cfg, &PullOptions::new(REPO), &Rec::default()).unwrap();
    assert_eq!(main.commit, COMMIT_MAIN);

    hub.clear_log();
    let rec = Rec::default();
    let mut opts = PullOptions::new(REPO);
    opts.revision = TAG.into();
    let tag = hub::pull(&cfg, &opts, &rec).unwrap();
    assert_eq!(tag.commit, COMMIT_TAG);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs").join(TAG)).unwrap(),
        COMMIT_TAG
    );
    assert_snapshot_complete(&hub, cache.path(), COMMIT_TAG);
    // Only the changed config.json is downloaded; the shared blobs are linked.
    let downloads = hub.downloads();
    assert_eq!(downloads.len(), 1, "{downloads:#?}");
    assert!(downloads[0].path.ends_with("/config.json"));
    assert_eq!(rec.outcome("extra/weights.bin"), Some(Outcome::Linked));

    let mut opts = PullOptions::new(REPO);
    opts.revision = COMMIT_TAG.into();
    hub.clear_log();
    let by_commit = hub::pull(&cfg, &opts, &Rec::default()).unwrap();
    assert_eq!(by_commit.commit, COMMIT_TAG);
    assert!(hub.downloads().is_empty());
    assert!(
        !repo.join("refs").join(COMMIT_TAG).exists(),
        "a commit is not a ref"
    );
}

#[test]
fn offline_uses_a_complete_cache_and_names_what_an_incomplete_one_lacks() {
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let mut offline = cfg.clone();
    offline.offline = true;

    let err = hub::pull(&offline, &PullOptions::new(REPO), &Rec::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("never resolved"),
        "{err}"
    );

    let mut some = PullOptions::new(REPO);
    some.include = vec!["*.json".into()];
    hub::pull(&cfg, &some, &Rec::default()).unwrap();
    hub.clear_log();
    let snap = hub::pull(&offline, &some, &Rec::default()).unwrap();
    assert_eq!(snap.commit, COMMIT_MAIN);
    assert!(snap.files.iter().all(|f| f.ends_with(".json")) && !snap.files.is_empty());

    let err = hub::pull(&offline, &PullOptions::new(REPO), &Rec::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("incomplete") && err.contains("missing"),
        "{err}"
    );
    assert!(
        hub.log().is_empty(),
        "offline made requests: {:#?}",
        hub.log()
    );
}

#[test]
fn include_exclude_and_local_dir() {
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let cfg = config(&hub, cache.path());
    let mut opts = PullOptions::new(REPO);
    opts.include = vec!["*.json".into(), "extra/".into()];
    opts.exclude = vec!["tokenizer*".into()];
    opts.local_dir = Some(local.path().join("model"));
    let snap = hub::pull(&cfg, &opts, &Rec::default()).unwrap();
    assert_eq!(snap.dir, local.path().join("model"));
    let got = hub_support::read_tree(&snap.dir);
    let want: std::collections::BTreeMap<String, Vec<u8>> = hub
        .files(COMMIT_MAIN)
        .iter()
        .filter(|f| {
            (f.path.ends_with(".json") || f.path.starts_with("extra/"))
                && !f.path.starts_with("tokenizer")
        })
        .map(|f| (f.path.clone(), (*f.data).clone()))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(got == want);
    let meta = std::fs::read_to_string(
        snap.dir
            .join(".cache/huggingface/download/config.json.metadata"),
    )
    .unwrap();
    assert!(
        meta.starts_with(&format!(
            "{COMMIT_MAIN}\n{}\n",
            hub.file("config.json").git_sha1
        )),
        "{meta}"
    );

    let mut none = PullOptions::new(REPO);
    none.include = vec!["*.gguf".into()];
    let err = hub::pull(&cfg, &none, &Rec::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no file matches") && err.contains("--include *.gguf"),
        "{err}"
    );
}

#[test]
fn bad_server_answers_are_clear_errors() {
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    // A cut on every try: gives up with the byte count in the message.
    hub.faults()
        .cut_after
        .insert("extra/weights.bin".into(), (0, u32::MAX));
    let mut opts = PullOptions::new(REPO);
    opts.include = vec!["extra/*".into()];
    let mut cfg = config(&hub, cache.path());
    cfg.retry.max_attempts = 3;
    let err = hub::pull(&cfg, &opts, &Rec::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("gave up after 3 attempts") && err.contains("0 of 3000000 bytes"),
        "{err}"
    );
    // A dangling snapshot link is replaced.
    hub.faults().cut_after.clear();
    let link = repo_dir(cache.path())
        .join("snapshots")
        .join(COMMIT_MAIN)
        .join("extra/weights.bin");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("../../../blobs/nowhere", &link).unwrap();
    hub::pull(&cfg, &opts, &Rec::default()).unwrap();
    assert_eq!(
        std::fs::read(&link).unwrap(),
        *hub.file("extra/weights.bin").data
    );
}
