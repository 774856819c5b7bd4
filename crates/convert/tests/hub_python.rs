//! The cache is shared with the PyPI `huggingface_hub` (pinned in xtask's PY_REQUIREMENTS): its
//! `snapshot_download`, pointed at the same fake hub with `HF_ENDPOINT`, finds what r1q pulled
//! without a single download request, and r1q reuses a snapshot `huggingface_hub` downloaded.

mod hub_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use convert::hub::{self, HubConfig, NoProgress, PullOptions, RetryPolicy};
use hub_support::{Hub, COMMIT_MAIN, REPO};

/// The venv's Python if it has huggingface_hub (else SKIPPED, or a failure under
/// R1Q_REQUIRE_PEERS=1).
fn python_with_hf() -> Option<PathBuf> {
    let py = fixtures::support::python()?;
    let ok = Command::new(&py)
        .args(["-c", "import huggingface_hub"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !fixtures::support::peers_required(),
            "R1Q_REQUIRE_PEERS=1 but the venv lacks huggingface_hub: run `cargo xtask test`"
        );
        eprintln!("SKIPPED: the test venv has no huggingface_hub (run `cargo xtask test`)");
        return None;
    }
    Some(py)
}

fn snapshot_download(py: &Path, hub: &Hub, cache: &Path) -> String {
    let out = Command::new(py)
        .args([
            "-c",
            "import sys; from huggingface_hub import snapshot_download; print(snapshot_download(sys.argv[1]))",
            REPO,
        ])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("hf-home"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn config(hub: &Hub, cache: &Path) -> HubConfig {
    HubConfig {
        endpoint: hub.endpoint.clone(),
        token: None,
        cache_dir: cache.to_path_buf(),
        offline: false,
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            ..RetryPolicy::default()
        },
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
    }
}

#[test]
fn huggingface_hub_finds_what_r1q_pulled_without_downloading() {
    let Some(py) = python_with_hf() else { return };
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let snap = hub::pull(
        &config(&hub, cache.path()),
        &PullOptions::new(REPO),
        &NoProgress,
    )
    .unwrap();
    hub.clear_log();
    let path = snapshot_download(&py, &hub, cache.path());
    assert_eq!(Path::new(&path), snap.dir);
    assert!(
        hub.downloads().is_empty(),
        "huggingface_hub downloaded again: {:#?}",
        hub.downloads()
    );
}

#[test]
fn r1q_reuses_a_snapshot_huggingface_hub_downloaded() {
    let Some(py) = python_with_hf() else { return };
    let hub = Hub::start(hub_support::fixture_files());
    let cache = tempfile::tempdir().unwrap();
    let path = snapshot_download(&py, &hub, cache.path());
    assert!(path.ends_with(COMMIT_MAIN), "{path}");
    assert!(!hub.downloads().is_empty(), "python did download");
    hub.clear_log();
    let snap = hub::pull(
        &config(&hub, cache.path()),
        &PullOptions::new(REPO),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(snap.dir, Path::new(&path));
    assert_eq!(snap.downloaded, 0);
    assert!(
        hub.downloads().is_empty(),
        "r1q downloaded again: {:#?}",
        hub.downloads()
    );
    for f in hub.files(COMMIT_MAIN) {
        assert!(
            std::fs::read(snap.dir.join(&f.path)).unwrap() == *f.data,
            "{}",
            f.path
        );
    }
}
